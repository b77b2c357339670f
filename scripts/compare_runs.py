#!/usr/bin/env python3
"""Compares `glad inspect --save-map` runs on the same images against a first (reference) run:
ms per image per stage (from `times_ms`), ADP-step agreement, max |score| and max |map|
deviation. Used for the int8 and `adp_every` measurements in README.md (Performance).

  glad inspect IMAGES --bundle A --out RUN_A --save-map > RUN_A/lines.jsonl
  glad inspect IMAGES --bundle B --out RUN_B --save-map > RUN_B/lines.jsonl
  python scripts/compare_runs.py RUN_A RUN_B [...]
"""
import json
import os
import sys

import numpy as np

STAGES = ("encode", "unet", "decode", "adp_backbone", "backbone", "reconstruct", "anomaly_map", "engine")


def load(run):
    lines = [json.loads(line) for line in open(os.path.join(run, "lines.jsonl")) if line.strip()]
    return {d["path"]: d for d in lines if d.get("ok")}


def ms(d):
    """ms of each stage of one image's `times_ms` (batch 1)."""
    return {s: d["times_ms"][s + "_ms"] for s in STAGES if s + "_ms" in d["times_ms"]}


def main(runs):
    ref = load(runs[0])
    for run in runs:
        cur = load(run)
        paths = sorted(set(ref) & set(cur))
        stage = {k: np.mean([ms(cur[p])[k] for p in paths]) for k in ms(cur[paths[0]])}
        same_step = sum(ref[p]["adp_step"] == cur[p]["adp_step"] for p in paths)
        ds = max(abs(ref[p]["score"] - cur[p]["score"]) for p in paths)
        rel = max(abs(ref[p]["score"] - cur[p]["score"]) / abs(ref[p]["score"]) for p in paths)
        dm = 0.0
        for p in paths:
            a, b = (np.load(d[p]["map"]) for d in (ref, cur))
            dm = max(dm, float(np.abs(a - b).max()))
        print(f"{run}: {len(paths)} images")
        print("  ms/image  " + "  ".join(f"{k} {v:.1f}" for k, v in stage.items()))
        print(f"  ADP step equal {same_step}/{len(paths)}; max |score diff| {ds:.3g} (rel {rel:.3g}); max |map diff| {dm:.3g}")


if __name__ == "__main__":
    main(sys.argv[1:])
