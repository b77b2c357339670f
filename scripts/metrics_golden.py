#!/usr/bin/env python3
"""Golden values for src/eval/metrics.rs.

    python3 scripts/metrics_golden.py [--out tests/golden/metrics] [--seed 7]

Writes
- image.json: score/label sets (random, ties, constant scores, -0.0 vs 0.0, perfect,
  inverted, a larger float32 set, one-class sets) with scikit-learn's roc_auc_score,
  average_precision_score and F1-max from precision_recall_curve (GLAD's formula:
  2PR/(P+R), max over the finite values);
- pixel.json: sets of 32x32 float32 maps and boolean masks (several 8-connected regions,
  single pixels, diagonal touches, an all-good image, quantised maps with many ties, a
  constant map) with the same three curve metrics on the flattened pixels and PRO.

PRO is computed by `pro_reference` below, a transcription of GLAD's
utilize/utilize.py::compute_pro (AprilGAN-style): thresholds np.arange(min, max,
(max-min)/num_th), prediction map > th, per-region overlap over skimage.measure.label
regions (default connectivity = 8 for 2-D), FPR over all negatives, keep fpr < max_fpr,
fpr / max(fpr), sklearn.metrics.auc. GLAD ran it under numpy 1.x (it pins scikit-learn
1.3.0, scipy 1.11.1, torch 2.0.1), where the thresholds are float64 and are rounded to
float32 in the comparison with the float32 maps; under numpy 2 the same code builds a
float32 grid instead. `thresholds_numpy1` reproduces the numpy 1.x grid (checked
against numpy 1.26.4: see tests/golden/metrics/README.md); the golden "pro" uses it, and
"pro_numpy2" records what the verbatim code gives under numpy 2.
"""
import argparse
import json
import math
import os
import statistics
import warnings

import numpy as np
from skimage import measure
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

F32 = np.float32


def curve_metrics(labels, scores):
    """(auroc, ap, f1_max) as GLAD computes them; None when a class is absent."""
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=F32)
    if labels.min() == labels.max():
        return None, None, None
    a = roc_auc_score(labels, scores)
    ap = average_precision_score(labels, scores)
    p, r, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = (2 * p * r) / (p + r)
    f1m = np.max(f1[np.isfinite(f1)])
    return float(a), float(ap), float(f1m)


def thresholds_numpy1(min_th, max_th, num_th):
    """np.arange(min_th, max_th, (max_th - min_th) / num_th) for float32 scalars under
    numpy 1.x: max_th - min_th is float32, dividing the float32 scalar by a Python int
    gives float64, arange's length is ceil(f32 range / f64 step), element 1 is
    start + step in float64 and element i >= 2 is start + i * (element1 - start)."""
    r = F32(max_th - min_th)
    delta = float(r) / num_th
    if delta == 0:
        raise ValueError("constant maps")
    n = math.ceil(float(r) / delta)
    start = float(min_th)
    out = []
    if n >= 1:
        out.append(start)
    if n >= 2:
        second = start + delta
        out.append(second)
        d = second - start
        out.extend(start + i * d for i in range(2, n))
    return np.array(out, dtype=np.float64)


def pro_reference(masks, amaps, num_th=200, max_fpr=0.3, grid="numpy1"):
    """GLAD's compute_pro (utilize/utilize.py), pandas replaced by lists.

    masks: int array [N,H,W] of 0/1; amaps: float32 [N,H,W]."""
    min_th = amaps.min()
    max_th = amaps.max()
    if grid == "numpy1":
        # numpy 1.x compares the float32 array with a float64 scalar in float32.
        ths = [F32(t) for t in thresholds_numpy1(min_th, max_th, num_th)]
    else:
        delta = (max_th - min_th) / num_th  # float32 under numpy 2
        ths = list(np.arange(min_th, max_th, delta))
    binary_amaps = np.zeros_like(amaps)
    rows = []
    regions = []
    for mask in masks:
        regions.append([(r.coords[:, 0], r.coords[:, 1], r.area)
                        for r in measure.regionprops(measure.label(mask))])
    for th in ths:
        binary_amaps[amaps <= th] = 0
        binary_amaps[amaps > th] = 1
        pros = []
        for binary_amap, regs in zip(binary_amaps, regions):
            for ys, xs, area in regs:
                tp_pixels = binary_amap[ys, xs].sum()
                pros.append(tp_pixels / area)
        inverse_masks = 1 - masks
        fp_pixels = np.logical_and(inverse_masks, binary_amaps).sum()
        fpr = fp_pixels / inverse_masks.sum()
        rows.append((statistics.mean(pros), fpr, th))
    pro = np.array([r[0] for r in rows])
    fpr = np.array([r[1] for r in rows])
    keep = fpr < max_fpr
    fpr = fpr[keep]
    fpr = fpr / fpr.max()
    return float(auc(fpr, pro[keep])), len(ths), int(keep.sum())


def f32_list(a):
    return [float(v) for v in np.asarray(a, dtype=F32).ravel()]


def image_sets(rng):
    sets = []

    def add(name, scores, labels, note):
        scores = np.asarray(scores, dtype=F32)
        labels = np.asarray(labels, dtype=bool)
        a, ap, f1 = curve_metrics(labels, scores)
        sets.append({"name": name, "note": note, "scores": f32_list(scores),
                     "labels": [bool(v) for v in labels],
                     "auroc": a, "average_precision": ap, "f1_max": f1})

    n = 40
    add("random", rng.random(n), rng.random(n) < 0.4, "uniform scores, 40% positives")
    s = np.round(rng.random(60) * 8) / 8
    y = rng.random(60) < (0.2 + 0.6 * s)
    add("ties", s, y, "scores on a 1/8 grid: many ties across both classes")
    add("constant", np.full(25, 0.5), rng.random(25) < 0.3,
        "all scores equal: AUROC 0.5, AP = prevalence, F1-max = 2p/(1+p)")
    s = np.array([0.0, -0.0, 0.0, -0.0, 0.25, 0.25, -0.5, 1.0, -0.0, 0.0])
    y = np.array([1, 0, 0, 1, 1, 0, 0, 1, 0, 1], bool)
    add("signed_zero", s, y, "-0.0 and +0.0 are one tied score, as in numpy")
    s = rng.random(30)
    add("perfect", s, s > 0.6, "positives score strictly higher")
    add("inverted", s, s < 0.3, "positives score strictly lower")
    s = rng.normal(0, 1, 2000).astype(F32)
    s[::7] = np.round(s[::7], 1)
    y = rng.random(2000) < 1 / (1 + np.exp(-2 * s))
    add("large", s, y, "2000 float32 normal scores, every 7th rounded to 0.1 (ties)")
    add("one_positive", [0.1, 0.9, 0.3, 0.2], [False, False, True, False], "a single positive")
    add("all_negative", [0.1, 0.9, 0.3], [False, False, False],
        "one class absent: null (sklearn: AUROC nan, AP 0.0 with a warning)")
    add("all_positive", [0.1, 0.9, 0.3], [True, True, True],
        "one class absent: null (sklearn: AUROC nan, AP 1.0)")
    return sets


def blob(h, w, cy, cx, ry, rx):
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def pixel_masks(rng):
    H = W = 32
    masks = np.zeros((6, H, W), bool)
    # 0: two blobs and a single pixel
    masks[0] |= blob(H, W, 8, 8, 4, 5)
    masks[0] |= blob(H, W, 22, 20, 5, 3)
    masks[0, 30, 2] = True
    # 1: diagonal-touching pixels (one region under 8-connectivity) plus a line at the border
    for i in range(6):
        masks[1, 10 + i, 10 + i] = True
    masks[1, 0, 5:25] = True
    masks[1, 1, 5:25] = True
    # 2: no anomaly (good image)
    # 3: a large region and two small ones
    masks[3] |= blob(H, W, 16, 16, 10, 12)
    masks[3, 2:4, 28:30] = True
    masks[3, 29, 29] = True
    # 4: ring (region with a hole) and a region touching the corner
    masks[4] |= blob(H, W, 15, 15, 8, 8) & ~blob(H, W, 15, 15, 4, 4)
    masks[4, 28:32, 28:32] = True
    # 5: random sparse pixels: many tiny 8-connected regions
    masks[5] = rng.random((H, W)) < 0.04
    return masks


def pixel_sets(rng):
    masks = pixel_masks(rng)
    N, H, W = masks.shape
    base = np.stack([np.clip(rng.normal(0.3, 0.12, (H, W)), 0, None) for _ in range(N)])
    smooth = base + 0.45 * masks * rng.random((N, H, W))
    # partial detections: some anomalous pixels look normal, some normal pixels look anomalous
    smooth = smooth + 0.3 * (rng.random((N, H, W)) < 0.03)
    smooth = smooth.astype(F32)
    quant = (np.round(smooth * 16) / 16).astype(F32)
    weak = (base + 0.08 * masks).astype(F32)
    sets = []
    configs = [
        ("smooth", smooth, masks, "continuous float32 maps, 6 images incl. a good one"),
        ("quantised", quant, masks, "maps rounded to 1/16: heavy ties, thresholds near values"),
        ("weak", weak, masks, "weak separation: many thresholds above FPR 0.3"),
        ("constant_map", np.full((2, 8, 8), 0.25, F32), masks[:2, :8, :8],
         "constant maps: curve metrics of constant scores, PRO null (empty threshold grid)"),
        ("no_regions", smooth[2:3], masks[2:3], "no anomalous pixel: everything null"),
    ]
    for name, maps, msk, note in configs:
        labels = msk.ravel()
        a, ap, f1 = curve_metrics(labels, maps.ravel())
        entry = {"name": name, "note": note, "shape": list(maps.shape),
                 "maps": f32_list(maps), "masks": [int(v) for v in msk.ravel()],
                 "auroc": a, "average_precision": ap, "f1_max": f1, "pro": []}
        for max_fpr, num_th in [(0.3, 200), (0.1, 50), (1.0, 200)]:
            rec = {"max_fpr": max_fpr, "num_thresholds": num_th}
            for grid, key in [("numpy1", "pro"), ("numpy2", "pro_numpy2")]:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        v, nth, nkeep = pro_reference(msk.astype(np.int_), maps, num_th, max_fpr, grid)
                    rec[key] = None if not np.isfinite(v) else v
                    rec[key + "_thresholds"] = nth
                    rec[key + "_kept"] = nkeep
                except (ValueError, statistics.StatisticsError, ZeroDivisionError) as e:
                    rec[key] = None
                    rec[key + "_error"] = f"{type(e).__name__}: {e}"
            entry["pro"].append(rec)
        sets.append(entry)
    return sets


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/golden/metrics")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    os.makedirs(args.out, exist_ok=True)
    img = image_sets(rng)
    pix = pixel_sets(rng)
    with open(os.path.join(args.out, "image.json"), "w") as f:
        json.dump({"seed": args.seed, "sets": img}, f)
    with open(os.path.join(args.out, "pixel.json"), "w") as f:
        json.dump({"seed": args.seed, "sets": pix}, f)
    for s in img:
        print(f"image {s['name']:13s} auroc={s['auroc']} ap={s['average_precision']} f1={s['f1_max']}")
    for s in pix:
        print(f"pixel {s['name']:13s} auroc={s['auroc']} ap={s['average_precision']} f1={s['f1_max']}")
        for r in s["pro"]:
            print("      ", {k: v for k, v in r.items()})


if __name__ == "__main__":
    main()
