#!/usr/bin/env python3
"""Build a small MVTec-layout anomaly-detection dataset from scikit-image's CC0 textures.

    python3 scripts/make_texture_dataset.py [--out data/textures] [--seed 20240607] [--test-repeat K]

Sources: skimage/data/brick.png, grass.png, gravel.png (512x512, 8-bit grayscale), read
straight from the installed scikit-image package (no download function is called). The
licence of these three files is stated in their loader docstrings
(skimage.data.brick/grass/gravel): "licensed under the Creative Commons CC0 License".

Per class (brick, grass, gravel), all 128x128 8-bit grayscale PNGs:

- train/good/000..199.png: crops whose top-left corner lies in rows [0, TRAIN_ROWS - 128]
  (so only rows 0..TRAIN_ROWS-1 are ever used) and columns [0, VAL_COL0 - 128] (columns
  0..VAL_COL0-1), random horizontal/vertical flips;
- validation/good/000..039.png: held-out normal crops from the same rows but the column band
  VAL_COL0..511, so disjoint in pixels from every train and test crop (for choosing
  parameters and calibrating without touching test/);
- test/good/000..007.png: crops from rows [TEST_ROW0, 511] (disjoint from the train rows),
  same flips;
- test/<defect>/000..003.png for defect in scratch, stain, paste, hole: test-region crops
  with a synthetic defect, and ground_truth/<defect>/000_mask.png.. (0/255 masks):
    scratch: 1-3 thin (1-2.5 px) anti-aliased straight or bent lines, bright or dark;
             mask = line coverage >= 0.5;
    stain:   1-2 soft blobs (Gaussian falloff with a noisy elliptic outline) darkening or
             brightening the texture by 45-80 gray levels at the centre; mask = blob
             weight >= 0.35;
    paste:   an elliptic patch (22-44 px) cut from another class's texture, pasted with a
             1 px soft edge; mask = ellipse;
    hole:    an irregular blob filled with a flat near-black value (0-12, +-2 noise),
             1 px soft edge; mask = blob.

--test-repeat K (K > 1) makes a larger check set instead: the same train/ and validation/, and
K times as many test crops (K x 8 good, K x 4 per defect) from the same rows, drawn by a third
generator seeded with --seed + 2, so they are other crops than those of the default test/.

Everything is drawn from numpy's PCG64 generator seeded with --seed, so a rerun with the
same seed, numpy and Pillow writes byte-identical files. test/ is the same as in the first
version of this set (24 train crops over all columns): the generator still makes those 24
draws, in the same order, before each class's test crops, and discards them; train/ and
validation/ come from a second generator seeded with --seed + 1.
"""
import argparse
import os
import shutil

import numpy as np
from PIL import Image
import skimage.data

CLASSES = ["brick", "grass", "gravel"]
DEFECTS = ["scratch", "stain", "paste", "hole"]
SIZE = 128
N_TRAIN = 200
N_TRAIN_V1 = 24  # draws of the first version, replayed so test/ stays byte-identical
N_VAL = 40
VAL_COL0 = 384  # validation crops use columns 384..511, train crops 0..383
N_TEST_GOOD = 8
N_DEFECT = 4
TRAIN_ROWS = 300  # train crops use rows 0..299
TEST_ROW0 = 320  # test crops use rows 320..511
SEED = 20240607


def load_textures():
    d = os.path.dirname(skimage.data.__file__)
    out = {}
    for c in CLASSES:
        im = Image.open(os.path.join(d, c + ".png"))
        a = np.asarray(im)
        assert a.dtype == np.uint8 and a.shape == (512, 512), (c, a.shape, a.dtype)
        out[c] = a.astype(np.float64)
    return out


def crop(rng, tex, row_lo, row_hi, col_lo=0, col_hi=None):
    """A SIZE x SIZE crop whose rows lie in [row_lo, row_hi] and columns in [col_lo, col_hi],
    random flips."""
    col_hi = tex.shape[1] - 1 if col_hi is None else col_hi
    y = int(rng.integers(row_lo, row_hi - SIZE + 2))
    x = int(rng.integers(col_lo, col_hi - SIZE + 2))
    c = tex[y:y + SIZE, x:x + SIZE].copy()
    if rng.random() < 0.5:
        c = c[:, ::-1]
    if rng.random() < 0.5:
        c = c[::-1, :]
    return np.ascontiguousarray(c)


YY, XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)


def seg_distance(p0, p1):
    """Distance of every pixel centre to the segment p0-p1 ((x, y) points)."""
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    L2 = dx * dx + dy * dy
    t = np.clip(((XX - x0) * dx + (YY - y0) * dy) / L2, 0.0, 1.0)
    px, py = x0 + t * dx, y0 + t * dy
    return np.hypot(XX - px, YY - py)


def defect_scratch(rng, img):
    cover = np.zeros_like(img)
    n = int(rng.integers(1, 4))
    for _ in range(n):
        width = rng.uniform(1.0, 2.5)
        length = rng.uniform(35, 90)
        ang = rng.uniform(0, np.pi)
        cx, cy = rng.uniform(25, SIZE - 25, size=2)
        p0 = np.array([cx - 0.5 * length * np.cos(ang), cy - 0.5 * length * np.sin(ang)])
        p1 = np.array([cx + 0.5 * length * np.cos(ang), cy + 0.5 * length * np.sin(ang)])
        pts = [p0, p1]
        if rng.random() < 0.5:  # bent scratch: move the midpoint sideways
            mid = 0.5 * (p0 + p1) + rng.uniform(-8, 8) * np.array([-np.sin(ang), np.cos(ang)])
            pts = [p0, mid, p1]
        d = np.min([seg_distance(a, b) for a, b in zip(pts[:-1], pts[1:])], axis=0)
        # anti-aliased coverage: 1 inside, linear 1 px ramp at the edge
        a = np.clip(width / 2 + 0.5 - d, 0.0, 1.0)
        cover = np.maximum(cover, a)
    value = rng.uniform(225, 250) if rng.random() < 0.5 else rng.uniform(5, 30)
    out = img * (1 - cover) + value * cover
    return out, cover >= 0.5


def noisy_ellipse_radius(rng, cx, cy, rx, ry, rot, wobble):
    """Normalised radius r (1 on the outline) of an ellipse with a wobbly outline."""
    c, s = np.cos(rot), np.sin(rot)
    u = ((XX - cx) * c + (YY - cy) * s) / rx
    v = (-(XX - cx) * s + (YY - cy) * c) / ry
    r = np.hypot(u, v)
    th = np.arctan2(v, u)
    mod = np.ones_like(r)
    for k in (2, 3, 5):
        mod += wobble * rng.uniform(-1, 1) * np.cos(k * th + rng.uniform(0, 2 * np.pi)) / k
    return r / mod


def defect_stain(rng, img):
    out = img.copy()
    mask = np.zeros(img.shape, bool)
    for _ in range(int(rng.integers(1, 3))):
        rx, ry = rng.uniform(10, 24, size=2)
        cx, cy = rng.uniform(28, SIZE - 28, size=2)
        r = noisy_ellipse_radius(rng, cx, cy, rx, ry, rng.uniform(0, np.pi), 0.35)
        w = np.exp(-1.5 * r ** 2)  # soft falloff; 0.22 at the outline
        amp = rng.uniform(45, 80) * (-1 if rng.random() < 0.7 else 1)
        out = out + amp * w
        mask |= w >= 0.35
    return out, mask


def defect_paste(rng, img, others):
    src = others[int(rng.integers(0, len(others)))]
    rx, ry = rng.uniform(11, 22, size=2)
    cx, cy = rng.uniform(26, SIZE - 26, size=2)
    r = noisy_ellipse_radius(rng, cx, cy, rx, ry, rng.uniform(0, np.pi), 0.0)
    sy = int(rng.integers(0, 512 - SIZE + 1))
    sx = int(rng.integers(0, 512 - SIZE + 1))
    patch = src[sy:sy + SIZE, sx:sx + SIZE]
    # 1 px soft edge around the outline (distance in pixels ~ (1 - r) * min radius)
    a = np.clip((1 - r) * min(rx, ry) + 0.5, 0.0, 1.0)
    out = img * (1 - a) + patch * a
    return out, a >= 0.5


def defect_hole(rng, img):
    rx, ry = rng.uniform(8, 20, size=2)
    cx, cy = rng.uniform(24, SIZE - 24, size=2)
    r = noisy_ellipse_radius(rng, cx, cy, rx, ry, rng.uniform(0, np.pi), 0.4)
    a = np.clip((1 - r) * min(rx, ry) + 0.5, 0.0, 1.0)
    fill = rng.uniform(0, 12) + rng.normal(0, 2, size=img.shape)
    out = img * (1 - a) + fill * a
    return out, a >= 0.5


def save_u8(path, a):
    Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L").save(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/textures")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--test-repeat", type=int, default=1, metavar="K",
                    help="K > 1: K times the test crops, drawn apart from the default test set")
    args = ap.parse_args()
    if args.test_repeat < 1:
        ap.error(f"--test-repeat: expected an integer >= 1, got {args.test_repeat}")
    k = args.test_repeat

    tex = load_textures()
    rng = np.random.default_rng(args.seed)
    rng_train = np.random.default_rng(args.seed + 1)
    rng_check = np.random.default_rng(args.seed + 2) if k > 1 else None
    if os.path.exists(args.out):
        for c in CLASSES:
            shutil.rmtree(os.path.join(args.out, c), ignore_errors=True)
    counts = {}
    for c in CLASSES:
        t = tex[c]
        others = [tex[o] for o in CLASSES if o != c]
        base = os.path.join(args.out, c)
        d = os.path.join(base, "train", "good")
        os.makedirs(d)
        for _ in range(N_TRAIN_V1):
            crop(rng, t, 0, TRAIN_ROWS - 1)  # the first version's train draws (see the docstring)
        for i in range(N_TRAIN):
            save_u8(os.path.join(d, f"{i:03d}.png"), crop(rng_train, t, 0, TRAIN_ROWS - 1, 0, VAL_COL0 - 1))
        d = os.path.join(base, "validation", "good")
        os.makedirs(d)
        for i in range(N_VAL):
            save_u8(os.path.join(d, f"{i:03d}.png"), crop(rng_train, t, 0, TRAIN_ROWS - 1, VAL_COL0, 511))
        # the default test/ keeps its draws from rng; a check set draws apart from them
        rt = rng_check if rng_check is not None else rng
        d = os.path.join(base, "test", "good")
        os.makedirs(d)
        for i in range(N_TEST_GOOD * k):
            save_u8(os.path.join(d, f"{i:03d}.png"), crop(rt, t, TEST_ROW0, 511))
        for defect in DEFECTS:
            d = os.path.join(base, "test", defect)
            g = os.path.join(base, "ground_truth", defect)
            os.makedirs(d)
            os.makedirs(g)
            for i in range(N_DEFECT * k):
                img = crop(rt, t, TEST_ROW0, 511)
                for _attempt in range(100):
                    if defect == "scratch":
                        out, mask = defect_scratch(rt, img)
                    elif defect == "stain":
                        out, mask = defect_stain(rt, img)
                    elif defect == "paste":
                        out, mask = defect_paste(rt, img, others)
                    else:
                        out, mask = defect_hole(rt, img)
                    if mask.sum() >= 20:
                        break
                else:
                    raise RuntimeError(f"{c}/{defect}/{i}: empty mask")
                save_u8(os.path.join(d, f"{i:03d}.png"), out)
                save_u8(os.path.join(g, f"{i:03d}_mask.png"), mask.astype(np.uint8) * 255)
        counts[c] = (N_TRAIN, N_VAL, N_TEST_GOOD * k, N_DEFECT * k * len(DEFECTS))
    total = 0
    for root, _, files in os.walk(args.out):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    for c, (a, v, b, n) in counts.items():
        print(f"{c}: train/good {a}, validation/good {v}, test/good {b}, test defects {n}")
    print(f"total {total / 1e6:.2f} MB under {args.out}")


if __name__ == "__main__":
    main()
