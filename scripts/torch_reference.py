#!/usr/bin/env python3
"""GLAD's reference pipeline on torch models: the side-by-side run of `cargo bench --bench
full_size`.

The GLAD equations are those of scripts/glad_reference.py (its reconstruct and anomaly_map,
written from GLAD.md); the four networks run in torch, as the paper's code runs them, rebuilt
from the bundle's provenance: `export_bundle.py synthetic-sd14 --seed N` or `tiny --seed N`
re-creates the very weights the bundle's ONNX files were exported from (seeded), and the
rebuilt prompt embeddings must equal the bundle's cond.npy / uncond.npy, which proves it.

    python3 scripts/torch_reference.py --bundle DIR --inputs DIR [--threads 1] [--batch 1]

DIR of --inputs holds images.npy ([N,3,R,R] in [-1, 1]), vae_noise.npy and eps.npy ([N,C,h,w])
and params.json (the engine's resolved parameters, serde names). Prints one JSON line per
image (adp_step, score) and a last line with the times: milliseconds per image in total and
per model role (torch), excluding model construction.
"""
import argparse
import contextlib
import json
import os
import re
import sys
import time
from collections import defaultdict

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import export_bundle as eb  # noqa: E402
import glad_reference as gr  # noqa: E402

F32 = np.float32


def rebuild(bundle_dir, cfg):
    """The torch modules a bundle was exported from, from its recorded command."""
    text = json.dumps(cfg.get("provenance", {})) + " " + str(cfg.get("description", ""))
    m = re.search(r"export_bundle\.py (synthetic-sd14|tiny)\b.*?--seed (\d+)", text)
    if not m:
        sys.exit(f"{bundle_dir}/bundle.yaml: provenance names no `export_bundle.py synthetic-sd14|tiny --seed N`; "
                 "only seeded bundles can be rebuilt in torch")
    kind, seed = m.group(1), int(m.group(2))
    R = int(cfg["resolution"])
    with contextlib.redirect_stdout(sys.stderr):  # the builders log; stdout carries the JSON lines
        models = eb.synthetic_sd14_models(seed, R) if kind == "synthetic-sd14" else eb.tiny_models(seed, R)
    for name, got in (("cond", models[3]), ("uncond", models[4])):
        want = np.load(os.path.join(bundle_dir, cfg["prompt"][name]))
        if want.shape != got.shape or not np.array_equal(want.astype(F32), got.astype(F32)):
            sys.exit(f"{bundle_dir}/{cfg['prompt'][name]}: differs from the rebuilt {kind} --seed {seed} embeddings; "
                     "the torch models would not be the bundle's")
    return models


class TorchBundle(gr.Bundle):
    """A bundle's manifest, prompts and scheduler, with its networks in torch (float32)."""

    def __init__(self, bundle_dir, threads=1):
        super().__init__(bundle_dir, threads, sessions=False)
        torch.set_num_threads(threads)
        vae, unet, dino, cond, uncond = rebuild(bundle_dir, self.cfg)
        # the export's own wrappers (in eval mode) and IO names: the modules the ONNX files came from
        self.roles = {"backbone" if r.name == "dino" else r.name: r
                      for r in eb.build_roles(vae, unet, dino, self.R, cond, uncond)}
        self.ms = defaultdict(float)
        self.stage = None

    def features(self, role, img, last_only=False):
        # ADP's pass (last layer only) is timed apart from the final map's, as the engine does
        self.stage = "adp_backbone" if last_only else role
        return super().features(role, img, last_only)

    def _run(self, role, feeds, names=None):
        net = self.roles["backbone" if role == "adp_backbone" else role]  # one DINO serves both
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = net.module(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in net.inputs))
        self.ms[self.stage if net.name == "dino" else role] += (time.perf_counter() - t0) * 1e3
        by_name = dict(zip(net.outputs, (o.numpy() for o in (out if isinstance(out, tuple) else (out,)))))
        return [by_name[n] for n in (names or by_name)]

    def unet(self, z, t, ctx):
        u = self.m["unet"]
        feeds = {"sample": z.astype(F32), "timestep": np.full((z.shape[0],), t, np.int64),
                 "encoder_hidden_states": ctx.astype(F32)}
        assert (u["sample"], u["timestep"], u["context"]) == ("sample", "timestep", "encoder_hidden_states")
        return self._run("unet", feeds)[0].astype(F32)


def reference_params(p):
    """The engine's resolved parameters (serde names) as glad_reference's keys."""
    if p.get("object_mask", "none") != "none":
        sys.exit("params.json: object_mask must be none (the reference implements texture classes)")
    if p.get("reference", "reconstruction") != "reconstruction" or int(p.get("adp_every", 1)) != 1:
        sys.exit("params.json: the reference runs GLAD as published (reference: reconstruction, adp_every: 1)")
    q = dict(p)
    q["resolution"] = p["backbone_resolution"]
    q["object_mask"] = "ones"
    return q


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--inputs", required=True, help="folder with images.npy, vae_noise.npy, eps.npy, params.json")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--batch", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_interop_threads(1)
    load = lambda n: np.load(os.path.join(a.inputs, n)).astype(F32)  # noqa: E731
    images, vae, eps = load("images.npy"), load("vae_noise.npy"), load("eps.npy")
    with open(os.path.join(a.inputs, "params.json")) as f:
        params = reference_params(json.load(f))
    t0 = time.perf_counter()
    bd = TorchBundle(a.bundle, a.threads)
    build_s = time.perf_counter() - t0
    if images.shape[-1] != bd.R:
        sys.exit(f"{a.inputs}/images.npy: side {images.shape[-1]}, the bundle's resolution is {bd.R}")
    total = 0.0
    for k in range(0, images.shape[0], a.batch):
        sl = slice(k, min(k + a.batch, images.shape[0]))
        t0 = time.perf_counter()
        out = gr.inspect(a.bundle, images[sl], vae[sl], eps[sl], params, bundle=bd)
        total += time.perf_counter() - t0
        for i in range(sl.stop - sl.start):
            print(json.dumps({"index": k + i, "adp_step": int(out["adp_step"][i]), "score": float(out["score"][i])}))
    n = images.shape[0]
    print(json.dumps({"ms_per_image": total * 1e3 / n, "model_ms_per_image": {r: v / n for r, v in bd.ms.items()},
                      "build_s": build_s, "torch": torch.__version__, "threads": a.threads, "batch": a.batch}))


if __name__ == "__main__":
    main()
