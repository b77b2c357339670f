#!/usr/bin/env python3
"""Build data/unseen: three texture classes held out of every pretraining set, in the layout
and with the defects of data/textures (scripts/make_texture_dataset.py).

    python3 scripts/make_unseen_dataset.py [--out data/unseen] [--seed 7100] [--sources DIR]

The classes are procedural 512x512 8-bit grayscale textures drawn here with numpy (no
third-party image), one of each kind:

- knit (a periodic pattern): stockinette, columns of V-shaped stitches whose two legs are
  twisted yarn loops interlocking with the row below, with small per-stitch jitter, a slow
  waviness of the fabric and yarn-shade variation;
- granite (a stochastic texture): a mosaic of mineral grains, Voronoi cells of a jittered
  seed cloud with a domain warp, each a quartz, feldspar or dark-mica grain with its own
  shade and inner speckle, darker grain boundaries and a few bright glints;
- perforated (a structured surface): a matte sheet-metal plate with a staggered lattice of
  round through-holes, each with a bevel lit from the top left and a dark interior, on
  a fine isotropic grain and a broad lighting gradient.

None of these generators, nor any of their families (stitches, Voronoi grains, holes), is
used by scripts/make_pretrain_set.py: the base pretrained on that set has never seen them.

Per class the files are made exactly as make_texture_dataset.py makes them (its crop regions,
counts and defect functions, imported from it): train/good 000..199 (rows 0..299, columns
0..383), validation/good 000..039 (rows 0..299, columns 384..511), test/good 000..007 and
test/{scratch,stain,paste,hole} 000..003 (rows 320..511) with ground_truth/<defect>/
NNN_mask.png; a paste defect takes its patch from another held-out class. All 128x128 8-bit
grayscale PNGs. --sources DIR also writes the three 512x512 source textures there.

Everything is drawn from numpy's PCG64 generator: each class texture from the seed
(--seed, class index), test crops from --seed and train/validation crops from --seed + 1 as
in make_texture_dataset.py, so a rerun with the same seed, numpy and Pillow writes
byte-identical files.
"""
import argparse
import os
import shutil
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_texture_dataset as mtd  # noqa: E402

CLASSES = ["knit", "granite", "perforated"]
KINDS = {"knit": "periodic pattern", "granite": "stochastic texture", "perforated": "structured surface"}
N = 512
SEED = 7100


def smooth(rng, cells, size=N):
    """Value noise (~N(0,1)): a cells x cells random grid upsampled bicubically to size."""
    g = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    im = Image.fromarray(g, mode="F").resize((size, size), Image.BICUBIC, box=(1.0, 1.0, 1.0 + cells, 1.0 + cells))
    return np.asarray(im, dtype=np.float64)


def knit(rng):
    W = 16.0  # stitch width (px)
    H = 13.0  # row height
    yy, xx = np.mgrid[0:N, 0:N].astype(np.float64)
    # slow waviness of the fabric
    x = xx + 2.0 * smooth(rng, 4)
    y = yy + 2.0 * smooth(rng, 4)
    ncol, nrow = int(N / W) + 4, int(N / H) + 4
    jit = rng.normal(0, 0.05, (nrow, ncol, 2, 2))  # per stitch and leg: centre offset (x, y) in stitch units
    shade = 1.0 + 0.06 * rng.standard_normal((nrow, ncol))  # yarn shade per stitch
    rowt = 0.04 * rng.standard_normal(nrow)  # row offset (tension), in row heights
    best = np.zeros((N, N))
    lit = np.zeros((N, N))
    c0 = np.floor(x / W).astype(int)
    r0 = np.floor(y / H).astype(int)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            c, r = c0 + dc, r0 + dr
            ci, ri = np.clip(c + 2, 0, ncol - 1), np.clip(r + 2, 0, nrow - 1)
            for leg, sgn in enumerate((-1.0, 1.0)):
                # leg centre: a quarter stitch left/right of the column centre, a little below the row centre
                cx = (c + 0.5 + sgn * 0.24 + jit[ri, ci, leg, 0]) * W
                cy = (r + 0.55 + rowt[ri] + jit[ri, ci, leg, 1]) * H
                # legs lean in towards the bottom: the left one runs down to the right, a V
                ex, ey = -sgn * np.sin(np.deg2rad(30.0)), np.cos(np.deg2rad(30.0))
                u = ((x - cx) * ex + (y - cy) * ey) / (0.68 * H)  # along the leg
                v = ((x - cx) * ey - (y - cy) * ex) / (0.27 * W)  # across the leg
                d = u * u + v * v
                h = np.sqrt(np.clip(1.0 - d, 0.0, 1.0))  # yarn height profile
                twist = 0.8 + 0.2 * np.cos(2 * np.pi * (u * 2.6 + v * 0.8))  # plies of the yarn
                val = h * twist * shade[ri, ci]
                # the lower row's legs lie over the upper's where they cross
                take = h + 0.02 * dr > best
                best = np.where(take, h + 0.02 * dr, best)
                lit = np.where(take, val * (0.85 + 0.15 * v * -sgn), lit)
    a = 38 + 185 * lit + 6 * rng.standard_normal((N, N)) + 8 * smooth(rng, 8)
    return np.clip(a, 0, 255)


def granite(rng):
    from scipy.spatial import cKDTree

    g = 6.5  # mean grain spacing (px)
    n = int((N + 40) ** 2 / g ** 2)
    pts = rng.uniform(-20, N + 20, (n, 2))
    yy, xx = np.mgrid[0:N, 0:N].astype(np.float64)
    wy = yy + 3.5 * smooth(rng, 40)
    wx = xx + 3.5 * smooth(rng, 40)
    d, idx = cKDTree(pts).query(np.stack([wy.ravel(), wx.ravel()], 1), k=2)
    d = d.reshape(N, N, 2)
    idx = idx[:, 0].reshape(N, N)
    phase = rng.choice(3, size=n, p=[0.38, 0.48, 0.14])  # quartz, feldspar, mica
    base = np.choose(phase, [rng.normal(138, 10, n), rng.normal(182, 12, n), rng.normal(52, 12, n)])
    speck = np.choose(phase, [np.full(n, 9.0), np.full(n, 6.0), np.full(n, 12.0)])
    a = base[idx] + speck[idx] * rng.standard_normal((N, N)) + 5 * smooth(rng, 64)
    edge = np.clip(1.0 - (d[..., 1] - d[..., 0]) / 1.2, 0, 1)  # within ~1 px of a boundary
    a = a - 16 * edge
    glint = (rng.random((N, N)) < 0.002) & (phase[idx] == 2)
    a = np.where(glint, 235, a)
    return np.clip(a + 8 * smooth(rng, 3), 0, 255)


def perforated(rng):
    P = 21.0  # hole pitch (px), staggered rows at 60 degrees
    R = 6.6  # hole radius
    rot = np.deg2rad(rng.uniform(-3, 3))
    yy, xx = np.mgrid[0:N, 0:N].astype(np.float64)
    x = xx * np.cos(rot) + yy * np.sin(rot)
    y = -xx * np.sin(rot) + yy * np.cos(rot)
    rh = P * np.sqrt(3) / 2
    dist = np.full((N, N), 1e9)
    dx = np.zeros((N, N))
    dy = np.zeros((N, N))
    r0 = np.floor(y / rh).astype(int)
    nj = 64
    jit = rng.normal(0, 0.25, (nj, nj, 2))
    for dr in (-1, 0, 1, 2):
        r = r0 + dr
        off = (r % 2) * 0.5 * P
        c = np.round((x - off) / P)
        for dc in (-1, 0, 1):
            cc = c + dc
            hx = cc * P + off + jit[r % nj, cc.astype(int) % nj, 0]
            hy = r * rh + jit[r % nj, cc.astype(int) % nj, 1]
            ex, ey = x - hx, y - hy
            dd = np.hypot(ex, ey)
            take = dd < dist
            dist = np.where(take, dd, dist)
            dx = np.where(take, ex, dx)
            dy = np.where(take, ey, dy)
    plate = 150 + 9 * smooth(rng, 6) + 5 * rng.standard_normal((N, N)) + 3 * smooth(rng, 96)
    plate = plate + 18 * (xx + yy) / (2 * N)  # lighting gradient
    # bevel: 1.6 px ring outside the hole edge, brighter where its normal faces the top-left light
    ang = np.arctan2(dy, dx)
    ring = np.clip(1.0 - np.abs(dist - (R + 0.8)) / 1.6, 0, 1)
    bevel = 55 * np.cos(ang - np.deg2rad(225.0))
    inside = np.clip(R + 0.5 - dist, 0, 1)  # anti-aliased hole interior
    hole = 22 + 10 * (dist / R) + 4 * rng.standard_normal((N, N))
    a = plate + ring * bevel
    a = a * (1 - inside) + hole * inside
    return np.clip(a, 0, 255)


GENERATORS = {"knit": knit, "granite": granite, "perforated": perforated}


def textures(seed):
    return {c: GENERATORS[c](np.random.default_rng([seed, i])) for i, c in enumerate(CLASSES)}


def make(out, seed, sources=None):
    tex = textures(seed)
    if sources:
        os.makedirs(sources, exist_ok=True)
        for c, t in tex.items():
            mtd.save_u8(os.path.join(sources, f"{c}.png"), t)
    rng = np.random.default_rng(seed)
    rng_train = np.random.default_rng(seed + 1)
    if os.path.exists(out):
        for c in CLASSES:
            shutil.rmtree(os.path.join(out, c), ignore_errors=True)
    counts = {}
    for c in CLASSES:
        t = tex[c]
        others = [tex[o] for o in CLASSES if o != c]
        base = os.path.join(out, c)
        d = os.path.join(base, "train", "good")
        os.makedirs(d)
        for i in range(mtd.N_TRAIN):
            mtd.save_u8(os.path.join(d, f"{i:03d}.png"), mtd.crop(rng_train, t, 0, mtd.TRAIN_ROWS - 1, 0, mtd.VAL_COL0 - 1))
        d = os.path.join(base, "validation", "good")
        os.makedirs(d)
        for i in range(mtd.N_VAL):
            mtd.save_u8(os.path.join(d, f"{i:03d}.png"), mtd.crop(rng_train, t, 0, mtd.TRAIN_ROWS - 1, mtd.VAL_COL0, 511))
        d = os.path.join(base, "test", "good")
        os.makedirs(d)
        for i in range(mtd.N_TEST_GOOD):
            mtd.save_u8(os.path.join(d, f"{i:03d}.png"), mtd.crop(rng, t, mtd.TEST_ROW0, 511))
        for defect in mtd.DEFECTS:
            d = os.path.join(base, "test", defect)
            g = os.path.join(base, "ground_truth", defect)
            os.makedirs(d)
            os.makedirs(g)
            for i in range(mtd.N_DEFECT):
                img = mtd.crop(rng, t, mtd.TEST_ROW0, 511)
                for _attempt in range(100):
                    if defect == "scratch":
                        o, mask = mtd.defect_scratch(rng, img)
                    elif defect == "stain":
                        o, mask = mtd.defect_stain(rng, img)
                    elif defect == "paste":
                        o, mask = mtd.defect_paste(rng, img, others)
                    else:
                        o, mask = mtd.defect_hole(rng, img)
                    if mask.sum() >= 20:
                        break
                else:
                    raise RuntimeError(f"{c}/{defect}/{i}: empty mask")
                mtd.save_u8(os.path.join(d, f"{i:03d}.png"), o)
                mtd.save_u8(os.path.join(g, f"{i:03d}_mask.png"), mask.astype(np.uint8) * 255)
        counts[c] = (mtd.N_TRAIN, mtd.N_VAL, mtd.N_TEST_GOOD, mtd.N_DEFECT * len(mtd.DEFECTS))
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/unseen")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--sources", help="also write the 512x512 source textures into this folder")
    args = ap.parse_args()
    counts = make(args.out, args.seed, args.sources)
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(args.out) for f in fs)
    for c, (a, v, b, n) in counts.items():
        print(f"{c} ({KINDS[c]}): train/good {a}, validation/good {v}, test/good {b}, test defects {n}")
    print(f"total {total / 1e6:.2f} MB under {args.out}")


if __name__ == "__main__":
    main()
