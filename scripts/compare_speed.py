#!/usr/bin/env python3
"""Side-by-side speed of the Rust runtime (`glad inspect`) and the Python numpy + onnxruntime
reference (scripts/glad_reference.py) on the same bundle, images, noise and thread count.

    cargo build --release && python3 scripts/compare_speed.py --images 6 --threads 1

Prints each one's engine time per image (model sessions already created, image decoding
excluded on both sides), their ratio, and the share of the Rust engine's wall time spent
outside ONNX Runtime calls (from `times_ms` in glad's JSON lines). Both use the parity case's
parameters (T=750, K=25, tau from the case, sampled latent, the case's noise), so both do the
same ADP work; the script checks that they agree on every image's adp_step.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import yaml
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import glad_reference  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=os.path.join(ROOT, "onnx/tiny"))
    ap.add_argument("--case", default=os.path.join(ROOT, "tests/golden/parity/adp_threshold"))
    ap.add_argument("--images", type=int, default=6, help="images to time (the case's images, repeated)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads, both sides")
    ap.add_argument("--batch", type=int, default=1, help="images per engine call, both sides")
    ap.add_argument("--glad", default=os.path.join(ROOT, "target/release/glad"))
    a = ap.parse_args()

    case = yaml.safe_load(open(os.path.join(a.case, "case.yaml")))
    base = np.load(os.path.join(a.case, "images.npy"))
    idx = [i % base.shape[0] for i in range(a.images)]
    tmp = tempfile.mkdtemp(prefix="glad-compare-")
    # Same inputs on both sides: 8-bit PNGs at the bundle resolution (no resize), read back.
    files = []
    for k, i in enumerate(idx):
        u8 = np.clip(np.round((base[i].transpose(1, 2, 0) + 1) / 2 * 255), 0, 255).astype(np.uint8)
        p = os.path.join(tmp, f"img{k:03d}.png")
        Image.fromarray(u8).save(p)
        files.append(p)
    images = np.stack([(np.asarray(Image.open(p).convert("RGB"), np.float32).transpose(2, 0, 1) / 255 - 0.5) / 0.5 for p in files])
    vae = np.load(os.path.join(a.case, "vae_noise.npy"))[idx]
    eps = np.load(os.path.join(a.case, "eps.npy"))[idx]
    noise_dir = os.path.join(tmp, "noise")
    os.makedirs(noise_dir)
    np.save(os.path.join(noise_dir, "vae_noise.npy"), vae)
    np.save(os.path.join(noise_dir, "eps.npy"), eps)
    params = dict(case)
    params["object_mask"] = "ones"

    # Python reference, `batch` images per call (sessions created once, outside the timing).
    bd = glad_reference.Bundle(a.bundle, a.threads)
    glad_reference.inspect(a.bundle, images[:1], vae[:1], eps[:1], params, bundle=bd)  # warm-up
    py_ms, py_steps = [], []
    for k in range(0, a.images, a.batch):
        sl = slice(k, min(k + a.batch, a.images))
        t0 = time.perf_counter()
        out = glad_reference.inspect(a.bundle, images[sl], vae[sl], eps[sl], params, bundle=bd)
        n = sl.stop - sl.start
        py_ms += [(time.perf_counter() - t0) * 1e3 / n] * n
        py_steps += [int(s) for s in out["adp_step"]]

    # Rust runtime (its JSON lines carry the engine time per image: the batch's share).
    cmd = [a.glad, "inspect", *files, "--bundle", a.bundle, "--noise-dir", noise_dir, "--threads", str(a.threads),
           "--batch", str(a.batch), "--tau", str(case["tau"]), "--denoise-step", str(case["denoise_step"]),
           "--steps", str(case["steps"]), "--latent", "sample", "--out", os.path.join(tmp, "out")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, RUST_LOG="warn"))
    if r.returncode != 0:
        sys.exit(f"glad failed ({r.returncode}): {r.stderr.strip()}")
    lines = [json.loads(l) for l in r.stdout.splitlines()]
    rs_ms = [l["times_ms"]["engine_ms"] for l in lines]
    rs_ort = [l["times_ms"]["onnxruntime_ms"] for l in lines]
    order = sorted(range(len(lines)), key=lambda i: lines[i]["path"])  # workers may finish out of order
    lines = [lines[i] for i in order]
    rs_ms = [l["times_ms"]["engine_ms"] for l in lines]
    rs_ort = [l["times_ms"]["onnxruntime_ms"] for l in lines]
    rs_steps = [l["adp_step"] for l in lines]
    if rs_steps != py_steps:
        sys.exit(f"adp_step differs: rust {rs_steps} python {py_steps}")
    py, rs = float(np.mean(py_ms)), float(np.mean(rs_ms))
    outside = 1 - sum(rs_ort) / sum(rs_ms)
    print(f"images {a.images}, batch {a.batch}, threads {a.threads}, bundle {os.path.relpath(a.bundle, ROOT)}, adp_steps {rs_steps}")
    print(f"python reference  {py:9.1f} ms/image")
    print(f"rust runtime      {rs:9.1f} ms/image")
    print(f"ratio             {py / rs:9.2f}x  (python / rust)")
    print(f"rust outside ORT  {100 * outside:9.2f} %  of engine wall time")


if __name__ == "__main__":
    main()
