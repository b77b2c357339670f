#!/usr/bin/env python3
"""Build the broad pretraining image set of the latent diffusion base (onnx/ldm64-base).

    python3 scripts/make_pretrain_set.py [--out .work/pretrain-set] [--seed 1234] [--scale 1.0]

Two kinds of source, every image written as a 64x64 8-bit PNG (mode L for gray sources, RGB
for colour ones; `train_ldm.py --data-dir` reads both as RGB in [-1, 1], gray repeated), in
`<out>/<source>/<nnnnn>.png` (`skimage-<file>` or `gen-<family>`), plus `<out>/manifest.json` (sources, licences, counts, recipe):

1. Photographs and textures shipped inside the scikit-image wheel (`skimage/data/*`, read as
   files: nothing is downloaded), each with an explicit licence or public-domain statement in
   its scikit-image loader docstring (copied into the manifest). Files whose docstring states
   no licence (moon, page, logo, color, chessboard, phantom, motorcycle, lfw_subset, ...) are
   left out and listed in the manifest with that reason. brick, grass and gravel (the three
   classes of data/textures) are cropped only from the rows and columns their train crops use
   (rows 0..299, columns 0..383), so pretraining never sees a pixel of their validation or
   test crops. Each crop: a random side of 24 px up to 3/4 of the usable region (log-uniform,
   so many scales), a random rotation (uniform, or a multiple of 90 degrees), random flips,
   resized to 64 px with PIL's antialiased bilinear filter; then an intensity curve (gamma
   0.6-1.7, contrast 0.6-1.4, a brightness shift of +-0.1) and, for colour sources, a gray
   conversion with p = 0.3.
2. Procedural textures drawn with numpy at 128 px and reduced to 64 px the same way, six
   families: `weave` (plain, twill, basket and satin weaves: over/under thread cells),
   `grid` (line grids, cross-hatches and checkers), `noise` (value-noise and gradient-noise
   fBm, ridged, turbulence, marble and wood-ring fields), `brushed` (directional streaks of
   anisotropically blurred noise with a few long scratches), `machined` (turning marks:
   concentric grooves, and face-milling arcs), `text` (random words in PIL's default font,
   several sizes, colours and angles). The same intensity curve and flips follow.

Held out of pretraining, in every form: the three classes of data/unseen
(scripts/make_unseen_dataset.py): `knit` (a periodic stitch pattern; its generator, V-shaped
interlocking loops, is not one of the weave or grid generators), `granite` (a stochastic
mineral-grain mosaic made from Voronoi cells; nothing here uses Voronoi cells or grains) and
`perforated` (a plate with a staggered lattice of bevelled round holes; no generator here
draws holes or dot lattices). This script does not import that script, and the manifest
records the families it drew.

Everything comes from numpy's PCG64 generator seeded with --seed (one stream per source,
seeded with (seed, source index)), so a rerun with the same seed, numpy and Pillow writes the
same files. --scale multiplies every count (e.g. 0.02 for a quick check).
"""
import argparse
import json
import math
import os
import re
import shutil

import numpy as np
from PIL import Image, ImageDraw, ImageFont

OUT = 64  # the model's resolution
GEN = 128  # procedural textures are drawn at this size, then reduced to OUT
SEED = 1234

# file in skimage/data -> (loader in skimage.data, crops); the licence comes from the loader's docstring
PHOTOS = {
    "astronaut.png": ("astronaut", 240),
    "camera.png": ("camera", 240),
    "cell.png": ("cell", 200),
    "chelsea.png": ("chelsea", 240),
    "clock_motion.png": ("clock", 160),
    "coffee.png": ("coffee", 280),
    "coins.png": ("coins", 200),
    "horse.png": ("horse", 80),
    "hubble_deep_field.jpg": ("hubble_deep_field", 280),
    "ihc.png": ("immunohistochemistry", 280),
    "microaneurysms.png": ("microaneurysms", 60),
    "retina.jpg": ("retina", 240),
    "rocket.jpg": ("rocket", 240),
    "text.png": ("text", 160),
    # the data/textures classes: only their train region (see TRAIN_REGION)
    "brick.png": ("brick", 400),
    "grass.png": ("grass", 400),
    "gravel.png": ("gravel", 400),
}
TRAIN_REGION = {"brick.png": (0, 300, 0, 384), "grass.png": (0, 300, 0, 384), "gravel.png": (0, 300, 0, 384)}
# present in the wheel but without a licence statement in scikit-image's documentation
EXCLUDED = {
    "moon.png": "skimage.data.moon's docstring states no licence or source",
    "page.png": "skimage.data.page's docstring states no licence or source",
    "logo.png": "skimage.data.logo's docstring states no licence",
    "color.png": "skimage.data.colorwheel's docstring states no licence",
    "chessboard_GRAY.png": "skimage.data.checkerboard's docstring states no licence",
    "chessboard_RGB.png": "test file without a loader docstring",
    "phantom.png": "skimage.data.shepp_logan_phantom's docstring states no licence",
    "motorcycle_left.png": "skimage.data.stereo_motorcycle (Middlebury 2014): no licence stated",
    "motorcycle_right.png": "skimage.data.stereo_motorcycle (Middlebury 2014): no licence stated",
    "lfw_subset.npy": "skimage.data.lfw_subset (LFW faces): no licence stated",
    "motorcycle_disp.npz": "disparity map, not an image",
    "no_time_for_that_tiny.gif": "test file without a loader docstring",
    "multipage.tif": "test file without a loader docstring",
    "multipage_rgb.tif": "test file without a loader docstring",
    "lbpcascade_frontalface_opencv.xml": "not an image",
}
FAMILIES = {"weave": 600, "grid": 450, "noise": 700, "brushed": 450, "machined": 400, "text": 450}
HELD_OUT = ("knit", "granite", "perforated")


# ----------------------------------------------------------------------------------------
# Licences as scikit-image documents them
# ----------------------------------------------------------------------------------------
def licence_text(loader):
    """The sentences of skimage.data.<loader>'s docstring that state its licence or source."""
    import skimage.data

    lines = [ln.strip() for ln in (getattr(skimage.data, loader).__doc__ or "").splitlines()]
    keep, section = [], None
    for i, ln in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if ln and set(nxt) == {"-"}:
            section = ln  # a numpydoc section title
            continue
        if set(ln) == {"-"} or ln.startswith(".. versionchanged") or section in ("Returns", "References", "Examples"):
            continue  # underlines, version notes, and sections that state no licence
        keep.append(ln)
    text = " ".join(" ".join(keep).split())
    sentences = re.split(r"(?<=[.])\s+", text)
    keep = [s for s in sentences if re.search(r"CC0|public domain|copyright|licen[cs]e|downloaded from|courtesy", s, re.I)]
    return " ".join(keep)


def licence_kind(text):
    if re.search(r"CC0", text):
        return "CC0"
    if re.search(r"public domain", text, re.I):
        return "public domain"
    if re.search(r"no (known )?copyright restrictions", text, re.I):
        return "no known copyright restrictions"
    return None


# ----------------------------------------------------------------------------------------
# Shared augmentation
# ----------------------------------------------------------------------------------------
def intensity(rng, a):
    """Gamma, contrast around the mean and a brightness shift on [0, 1] values."""
    g = math.exp(rng.uniform(math.log(0.6), math.log(1.7)))
    c = rng.uniform(0.6, 1.4)
    s = rng.uniform(-0.1, 0.1)
    a = np.clip(a, 0.0, 1.0) ** g
    m = a.mean()
    return np.clip((a - m) * c + m + s, 0.0, 1.0)


def flips(rng, a):
    if rng.random() < 0.5:
        a = a[:, ::-1]
    if rng.random() < 0.5:
        a = a[::-1, :]
    return np.ascontiguousarray(a)


def to_image(a):
    a = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(a, mode="L" if a.ndim == 2 else "RGB")


def resize(a, size=OUT):
    """[H,W] or [H,W,3] floats in [0, 1] -> size x size, PIL's bilinear (antialiased when reducing)."""
    if a.ndim == 2:
        im = Image.fromarray(a.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.float64)
    return np.stack([resize(a[..., k], size) for k in range(a.shape[2])], axis=-1)


# ----------------------------------------------------------------------------------------
# Photographs
# ----------------------------------------------------------------------------------------
def load_photo(path):
    im = Image.open(path)
    if im.mode in ("RGBA", "LA", "P"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im).convert("RGB")
    if im.mode not in ("L", "RGB"):
        im = im.convert("RGB")
    a = np.asarray(im, dtype=np.float64) / 255.0
    if a.ndim == 3 and np.allclose(a[..., 0], a[..., 1]) and np.allclose(a[..., 0], a[..., 2]):
        a = a[..., 0]
    return a


def photo_crop(rng, a, region):
    """A randomly scaled, rotated, flipped crop of `a` inside region (y0, y1, x0, x1), at OUT px."""
    y0, y1, x0, x1 = region
    h, w = y1 - y0, x1 - x0
    lo, hi = 24.0, 0.75 * min(h, w)
    side = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    ang = rng.uniform(0.0, 360.0) if rng.random() < 0.6 else 90.0 * int(rng.integers(0, 4))
    r = math.radians(ang)
    need = side * (abs(math.cos(r)) + abs(math.sin(r))) + 4
    if need > min(h, w):  # rotated box does not fit: shrink the crop
        side *= (min(h, w) - 1) / need
        need = min(h, w) - 1
    n = int(math.ceil(need))
    cy = y0 + int(rng.integers(0, h - n + 1))
    cx = x0 + int(rng.integers(0, w - n + 1))
    box = a[cy:cy + n, cx:cx + n]
    chans = [box] if box.ndim == 2 else [box[..., k] for k in range(3)]
    out = []
    for ch in chans:
        im = Image.fromarray(ch.astype(np.float32), mode="F").rotate(ang, resample=Image.BICUBIC)
        c0 = (n - side) / 2
        im = im.resize((OUT, OUT), Image.BILINEAR, box=(c0, c0, c0 + side, c0 + side))
        out.append(np.asarray(im, dtype=np.float64))
    img = out[0] if len(out) == 1 else np.stack(out, axis=-1)
    img = flips(rng, img)
    if img.ndim == 3 and rng.random() < 0.3:
        img = img @ np.array([0.299, 0.587, 0.114])
    return intensity(rng, img)


# ----------------------------------------------------------------------------------------
# Procedural families (numpy)
# ----------------------------------------------------------------------------------------
YY, XX = np.mgrid[0:GEN, 0:GEN].astype(np.float64)


def rotated(rng, ang=None):
    a = rng.uniform(0, np.pi) if ang is None else ang
    c, s = math.cos(a), math.sin(a)
    u = (XX - GEN / 2) * c + (YY - GEN / 2) * s
    v = -(XX - GEN / 2) * s + (YY - GEN / 2) * c
    return u, v


def smooth_noise(rng, cells, size=GEN):
    """Value noise: a cells x cells random grid upsampled bicubically to size (values ~N(0,1))."""
    g = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    im = Image.fromarray(g, mode="F")
    im = im.resize((size, size), Image.BICUBIC, box=(1.0, 1.0, 1.0 + cells, 1.0 + cells))
    return np.asarray(im, dtype=np.float64)


def gradient_noise(rng, cells, size=GEN):
    """Perlin-like gradient noise with random unit gradients on a cells x cells lattice."""
    ang = rng.uniform(0, 2 * np.pi, (cells + 1, cells + 1))
    gx, gy = np.cos(ang), np.sin(ang)
    t = np.linspace(0, cells, size, endpoint=False)
    y, x = np.meshgrid(t, t, indexing="ij")
    i, j = y.astype(int), x.astype(int)
    fy, fx = y - i, x - j

    def dot(di, dj):
        return gy[i + di, j + dj] * (fy - di) + gx[i + di, j + dj] * (fx - dj)

    def fade(f):
        return f * f * f * (f * (f * 6 - 15) + 10)

    uy, ux = fade(fy), fade(fx)
    a = dot(0, 0) * (1 - ux) + dot(0, 1) * ux
    b = dot(1, 0) * (1 - ux) + dot(1, 1) * ux
    return (a * (1 - uy) + b * uy) * 2.0


def fbm(rng, base, octaves, persistence, kind):
    out, amp, tot = np.zeros((GEN, GEN)), 1.0, 0.0
    for o in range(octaves):
        cells = min(GEN // 2, base * 2 ** o)
        n = smooth_noise(rng, cells) if kind == "value" else gradient_noise(rng, cells)
        out += amp * n
        tot += amp
        amp *= persistence
    return out / tot


def norm01(a):
    lo, hi = np.percentile(a, 1), np.percentile(a, 99)
    return np.clip((a - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def fam_weave(rng):
    kinds = {
        "plain": np.array([[1, 0], [0, 1]]),
        "twill": np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 1]]),
        "basket": np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]),
        "satin": np.array([[1 if (3 * r) % 5 == c else 0 for c in range(5)] for r in range(5)]),
    }
    pat = kinds[list(kinds)[int(rng.integers(0, len(kinds)))]]
    p = rng.uniform(5, 18)
    u, v = rotated(rng, None if rng.random() < 0.5 else 0.0)
    u, v = u / p, v / p
    i, j = np.floor(u).astype(int), np.floor(v).astype(int)
    fu, fv = u - i, v - j
    width = rng.uniform(0.65, 0.95)
    warp_up = pat[i % pat.shape[0], j % pat.shape[1]] == 1
    # across-thread profiles: a warp thread runs along v (across = fu), a weft along u (across = fv)
    prof_warp = np.clip(1 - np.abs(2 * fu - 1) / width, 0, 1) ** 0.5
    prof_weft = np.clip(1 - np.abs(2 * fv - 1) / width, 0, 1) ** 0.5
    bend_warp = 0.75 + 0.25 * np.sin(np.pi * fv)
    bend_weft = 0.75 + 0.25 * np.sin(np.pi * fu)
    cw = rng.uniform(0.45, 1.0)
    cf = rng.uniform(0.2, 0.9)
    jit_w = 1 + 0.08 * rng.standard_normal(512)[i % 512]
    jit_f = 1 + 0.08 * rng.standard_normal(512)[j % 512]
    warp = cw * jit_w * prof_warp * bend_warp
    weft = cf * jit_f * prof_weft * bend_weft
    a = np.where(warp_up, warp, weft)
    gap = np.where(warp_up, prof_warp, prof_weft) == 0
    a = np.where(gap, rng.uniform(0.0, 0.25), a)
    a = a + 0.05 * smooth_noise(rng, 32) + 0.04 * rng.standard_normal(a.shape)
    if rng.random() < 0.5:  # coloured yarns
        tint = rng.uniform(0.4, 1.0, 3)
        tint2 = rng.uniform(0.4, 1.0, 3)
        rgb = np.where(warp_up[..., None], a[..., None] * tint, a[..., None] * tint2)
        return norm01(rgb)
    return norm01(a)


def fam_grid(rng):
    u, v = rotated(rng, None if rng.random() < 0.5 else 0.0)
    kind = rng.choice(["lines", "hatch", "checker"])
    if kind == "checker":
        p = rng.uniform(6, 40)
        a = ((np.floor(u / p) + np.floor(v / p)) % 2).astype(np.float64)
        lo, hi = sorted(rng.uniform(0, 1, 2))
        a = lo + (hi - lo) * a
    else:
        px, py = rng.uniform(5, 32), rng.uniform(5, 32)
        if rng.random() < 0.5:
            py = px
        w = rng.uniform(0.6, 4.0)

        def line(c, p):
            d = np.abs((c / p) % 1.0 - 0.5) * p  # distance to the line at the middle of each period
            return np.clip(w / 2 + 0.5 - (p / 2 - d), 0, 1)

        a = np.maximum(line(u, px), line(v, py))
        if kind == "hatch":  # a second, diagonal family of lines
            u2, v2 = rotated(rng, rng.uniform(0.3, 1.2))
            a = np.maximum(a, line(u2, rng.uniform(6, 30)))
        bg, fg = rng.uniform(0, 1, 2)
        a = bg + (fg - bg) * a
    a = a + 0.04 * smooth_noise(rng, 16) + 0.03 * rng.standard_normal(a.shape)
    return np.clip(a, 0, 1)


def fam_noise(rng):
    kind = rng.choice(["fbm", "ridged", "turbulence", "marble", "wood", "smooth"])
    base = int(rng.integers(2, 9))
    oct_ = int(rng.integers(3, 7))
    per = rng.uniform(0.35, 0.7)
    n = fbm(rng, base, oct_, per, "value" if rng.random() < 0.5 else "gradient")
    if kind == "ridged":
        n = 1 - np.abs(n)
    elif kind == "turbulence":
        n = np.abs(n)
    elif kind == "marble":
        u, _ = rotated(rng)
        n = np.sin(u * rng.uniform(0.05, 0.3) + rng.uniform(2, 8) * n)
    elif kind == "wood":
        cx, cy = rng.uniform(-GEN, 2 * GEN, 2)
        r = np.hypot(XX - cx, YY - cy)
        n = np.sin(r * rng.uniform(0.15, 0.6) + rng.uniform(1, 5) * n)
    elif kind == "smooth":
        n = smooth_noise(rng, int(rng.integers(2, 6)))
    a = norm01(n)
    if rng.random() < 0.3:
        c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        return c0 + (c1 - c0) * a[..., None]
    return a


def fam_brushed(rng):
    big = int(GEN * 1.5)
    n = rng.standard_normal((big, big))
    L = int(rng.integers(12, big))
    k = np.ones(L) / L
    # blur along rows (the brushing direction) by a moving average, lightly across
    n = np.apply_along_axis(lambda r: np.convolve(np.concatenate([r, r[:L]]), k, "valid")[:big], 1, n)
    n = n / n.std()
    for _ in range(int(rng.integers(0, 4))):  # a few long scratches along the direction
        row = int(rng.integers(0, big))
        n[row:row + int(rng.integers(1, 3))] += rng.choice([-1, 1]) * rng.uniform(1.5, 3.5)
    im = Image.fromarray(n.astype(np.float32), mode="F").rotate(rng.uniform(0, 180), resample=Image.BILINEAR)
    c = (big - GEN) // 2
    a = np.asarray(im, dtype=np.float64)[c:c + GEN, c:c + GEN]
    a = a * rng.uniform(0.05, 0.2) + rng.uniform(0.35, 0.75)
    a = a + 0.15 * (smooth_noise(rng, 2) * rng.uniform(0.2, 1.0))  # uneven sheen
    return np.clip(a, 0, 1)


def fam_machined(rng):
    p = rng.uniform(1.8, 8.0)
    if rng.random() < 0.5:  # turning: concentric grooves about a centre, often off the image
        cx, cy = rng.uniform(-2 * GEN, 3 * GEN, 2)
        r = np.hypot(XX - cx, YY - cy)
    else:  # face milling: arcs of a cutter advancing by `feed` along u
        u, v = rotated(rng)
        feed = rng.uniform(4, 20)
        R = rng.uniform(60, 300)
        k = np.round(u / feed)
        r = np.hypot(u - k * feed + R, v)  # distance to the nearest cutter centre's arc
        p = feed / rng.uniform(1, 3)
    prof = 0.5 + 0.5 * np.sin(2 * np.pi * r / p + 0.3 * gradient_noise(rng, 4))
    prof = prof ** rng.uniform(0.5, 2.0)
    th = np.arctan2(YY - GEN / 2, XX - GEN / 2)
    sheen = 0.15 * np.cos(2 * th + rng.uniform(0, np.pi))
    a = rng.uniform(0.35, 0.6) + rng.uniform(0.1, 0.3) * prof + sheen * rng.uniform(0, 1)
    a = a + 0.03 * rng.standard_normal(a.shape)
    return np.clip(a, 0, 1)


LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def fam_text(rng):
    big = int(GEN * 1.5)
    bg, fg = rng.uniform(0, 1, 2)
    if abs(bg - fg) < 0.3:
        fg = 1.0 - bg
    im = Image.new("F", (big, big), float(bg))
    d = ImageDraw.Draw(im)
    size = int(rng.integers(7, 34))
    font = ImageFont.load_default(size=size)
    y = -int(rng.integers(0, size))
    while y < big:
        words = []
        for _ in range(int(rng.integers(3, 12))):
            words.append("".join(LETTERS[int(rng.integers(0, len(LETTERS)))] for _ in range(int(rng.integers(1, 9)))))
        d.text((int(rng.integers(-size, size)), y), " ".join(words), fill=float(fg), font=font)
        y += int(size * rng.uniform(1.1, 1.8))
    ang = rng.uniform(-30, 30) if rng.random() < 0.7 else 90.0 * int(rng.integers(0, 4))
    im = im.rotate(ang, resample=Image.BICUBIC, fillcolor=float(bg))
    c = (big - GEN) // 2
    a = np.asarray(im, dtype=np.float64)[c:c + GEN, c:c + GEN]
    a = a + 0.03 * smooth_noise(rng, 8) + 0.02 * rng.standard_normal(a.shape)
    return np.clip(a, 0, 1)


GENERATORS = {"weave": fam_weave, "grid": fam_grid, "noise": fam_noise, "brushed": fam_brushed,
              "machined": fam_machined, "text": fam_text}


def procedural(rng, family):
    a = GENERATORS[family](rng)
    a = resize(a)
    return intensity(rng, flips(rng, a))


# ----------------------------------------------------------------------------------------
def main():
    import skimage.data

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".work/pretrain-set")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every count")
    args = ap.parse_args()
    data = os.path.dirname(skimage.data.__file__)
    present = sorted(os.listdir(data))
    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    os.makedirs(args.out)
    manifest = {"seed": args.seed, "scale": args.scale, "size": OUT, "format": "PNG, L (gray) or RGB, 8-bit",
                "held_out": list(HELD_OUT), "photos": {}, "procedural": {}, "excluded": {}, "total": 0}
    import skimage
    manifest["scikit_image"] = skimage.__version__
    manifest["numpy"] = np.__version__
    manifest["pillow"] = __import__("PIL").__version__
    sources = [(f, "photo") for f in PHOTOS if f in present] + [(f, "procedural") for f in FAMILIES]
    for f in present:
        if f in EXCLUDED:
            manifest["excluded"][f] = EXCLUDED[f]
        elif f not in PHOTOS and not f.endswith((".py", ".pyi", ".txt")) and f != "__pycache__":
            manifest["excluded"][f] = "not listed: no licence statement checked"
    for f in PHOTOS:
        if f not in present:
            manifest["excluded"][f] = "not shipped in this scikit-image wheel"
    for si, (src, kind) in enumerate(sources):
        rng = np.random.default_rng([args.seed, si])
        if kind == "photo":
            loader, n = PHOTOS[src]
            name = "skimage-" + os.path.splitext(src)[0]
            lic = licence_text(loader)
            if licence_kind(lic) is None:
                manifest["excluded"][src] = f"no licence statement found in skimage.data.{loader}"
                continue
            a = load_photo(os.path.join(data, src))
            region = TRAIN_REGION.get(src, (0, a.shape[0], 0, a.shape[1]))
            n = max(1, int(round(n * args.scale)))
            d = os.path.join(args.out, name)
            os.makedirs(d)
            for i in range(n):
                to_image(photo_crop(rng, a, region)).save(os.path.join(d, f"{i:05d}.png"))
            manifest["photos"][name] = {"file": f"skimage/data/{src}", "loader": f"skimage.data.{loader}",
                                        "licence": licence_kind(lic), "statement": lic, "size": list(a.shape[:2]),
                                        "channels": 1 if a.ndim == 2 else 3, "region_rows_cols": list(region),
                                        "images": n}
        else:
            n = max(1, int(round(FAMILIES[src] * args.scale)))
            d = os.path.join(args.out, "gen-" + src)
            os.makedirs(d)
            for i in range(n):
                to_image(procedural(rng, src)).save(os.path.join(d, f"{i:05d}.png"))
            manifest["procedural"]["gen-" + src] = {"generator": f"scripts/make_pretrain_set.py fam_{src}", "licence":
                                           "generated (no third-party content; PIL's default font for text)",
                                           "images": n}
        manifest["total"] += n
        print(f"{src}: {n}", flush=True)
    with open(os.path.join(args.out, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)
    print(f"total {manifest['total']} images under {args.out}")


if __name__ == "__main__":
    main()
