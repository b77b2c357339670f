#!/usr/bin/env python3
"""Export a pixel-space GLAD bundle (onnx/README.md, `space: pixel`): no VAE, an unconditional
diffusers UNet2DModel on 3xRxR images in [-1,1], EfficientNet-Lite0 (ImageNet) backbones.

    python3 scripts/export_pixel_bundle.py --out onnx/pixel64 [--seed 0] [--resolution 64] \
        [--backbone-resolution 128]

Why pixel space: no VAE weights are obtainable here (NOTES.md, "Models and data"), and
training a VAE as well as the UNet costs time that a short run does not have. A pixel UNet
trains directly on the images (resized to R by `train`).

Models:
  unet.onnx             sample [B,3,R,R] float32, timestep int64 [B] -> noise_pred [B,3,R,R]
                        UNet2DModel, block_out_channels (32,64,64), layers_per_block 1,
                        GroupNorm 8 groups, no attention, seeded random init (export_bundle.reinit_:
                        distinct norm weights, so the exporter's initializer merging cannot tie
                        them), conv_out rescaled so noise_pred has unit std at init.
  backbone              EfficientNet-Lite0 at S = --backbone-resolution (final map): stride8, stride16;
                        at S = 128 the bundle points at ../effnet-lite0/effnet_lite0.onnx (the same
                        export, shared), else backbone.onnx
  adp_backbone.onnx     EfficientNet-Lite0 at R for ADP, input in [-1,1] (ADP feeds the x0
                        predictions as decoded; converted in graph); its stride-16 grid R/16 is
                        resampled onto the RxR pixel grid for SAFF
Scheduler: DDPM linear betas 1e-4..0.02 over 1000 steps (the pixel-space DDPM schedule; the
scaled_linear schedule of Stable Diffusion is for VAE latents).

Every model: dynamo exporter, opset 18, dynamic batch, checked against torch at batch 1 and 3.
"""
import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_bundle as eb  # noqa: E402

F32 = np.float32


class PixelUnet(nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep):
        return self.unet(sample, timestep, return_dict=False)[0]


def make_unet(seed, R):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    unet = UNet2DModel(
        sample_size=R, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3,
        layers_per_block=1, norm_num_groups=8,
    ).eval()
    eb.reinit_(unet, gen)
    with torch.no_grad():
        z = torch.randn((4, 3, R, R), generator=torch.Generator().manual_seed(seed + 1))
        t = torch.tensor([999, 500, 100, 1])
        s = 1.0 / float(unet(z, t).sample.std())
        unet.conv_out.weight.mul_(s)
        unet.conv_out.bias.mul_(s)
        e = unet(z, t).sample
    n = sum(p.numel() for p in unet.parameters())
    eb.log(f"pixel unet: {n:,} parameters; noise_pred std {e.std():.3f} at init")
    return unet, n


MANIFEST = """format: 1
name: {name}
description: {description}
resolution: {R}
space: pixel
models:
  unet:
    file: unet.onnx
    sample: sample
    timestep: timestep
    timestep_type: int64
    output: noise_pred
  backbone:
    file: {backbone_file}
    input: image
    layout: feature_map
    outputs: [stride8, stride16]
    patch: 8
    resolution: {S}
  adp_backbone:
    file: adp_backbone.onnx
    input: image
    layout: feature_map
    outputs: [stride8, stride16]
    patch: 8
    resolution: {R}
scheduler:
  beta_schedule: linear
  beta_start: 0.0001
  beta_end: 0.02
  train_timesteps: 1000
  steps_offset: 1
  set_alpha_to_one: false
defaults:
  denoise_step: {T}
  steps: {K}
  guidance: 1.0
  tau: {tau}
  min_step: {min_step}
  v: 0.0
provenance:
{provenance}
"""


def effnet(resolution, dst, threads):
    here = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, os.path.join(here, "export_effnet_backbone.py"), "--out", d,
                        "--resolution", str(resolution), "--threads", str(threads)], check=True)
        shutil.copy(os.path.join(d, "effnet_lite0.onnx"), dst)


def adp_effnet(R, dst, atol, rtol, seed):
    """EfficientNet-Lite0 for ADP at R: ADP feeds the x0 predictions as decoded, in [-1,1]
    (onnx/README.md), so this graph maps [-1,1] to the network's (p - 127) / 128 on
    p = (x + 1) * 127.5 (nearly the identity), not from ImageNet normalisation."""
    import export_effnet_backbone as ee

    model = ee.Backbone(ee.load_net(R)).eval()
    with torch.no_grad():
        model.pre.scale.fill_(127.5 / 128.0)
        model.pre.shift.fill_(0.5 / 128.0)

    def img(b, rng):
        return {"image": rng.uniform(-1, 1, (b, 3, R, R)).astype(F32)}

    role = eb.Role("adp_backbone", model, ["image"], ["stride8", "stride16"], img)
    eb.export_onnx(model, role, dst)
    eb.check_report(dst, eb.verify(model, role, dst, atol, rtol, seed), atol, rtol)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=int, default=64, help="R: the image side the UNet works at")
    p.add_argument("--backbone-resolution", type=int, default=128, help="S: final-map backbone input side")
    p.add_argument("--denoise-step", type=int, default=400)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--tau", type=float, default=0.32)
    p.add_argument("--min-step", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--rtol", type=float, default=1e-5)
    args = p.parse_args()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    R, S, out = args.resolution, args.backbone_resolution, args.out
    assert R % 16 == 0 and S % 16 == 0
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):
        if f.endswith((".onnx", ".npy", ".yaml", ".data", ".bin")):
            os.remove(os.path.join(out, f))
    unet, nparams = make_unet(args.seed, R)

    def unet_in(b, rng):
        ts = np.array([500, 20, 999, 1, 721, 31][:b] + [int(x) for x in rng.integers(0, 1000, max(0, b - 6))], np.int64)
        return {"sample": rng.standard_normal((b, 3, R, R)).astype(F32), "timestep": ts}

    role = eb.Role("unet", PixelUnet(unet).eval(), ["sample", "timestep"], ["noise_pred"], unet_in)
    eb.export_roles([role], out, args.atol, args.rtol, args.seed)
    shared = os.path.join(os.path.dirname(os.path.normpath(out)), "effnet-lite0", "effnet_lite0.onnx")
    if S == 128 and os.path.exists(shared):  # the committed onnx/effnet-lite0 export (same command, S = 128)
        backbone_file = "../effnet-lite0/effnet_lite0.onnx"
        eb.log(f"final-map backbone: {shared} (shared, not copied)")
    else:
        backbone_file = "backbone.onnx"
        effnet(S, os.path.join(out, backbone_file), args.threads)
    adp_effnet(R, os.path.join(out, "adp_backbone.onnx"), args.atol, args.rtol, args.seed)
    command = "python3 scripts/export_pixel_bundle.py " + " ".join(sys.argv[1:])
    prov = {
        "weights": f"unet: random, torch.Generator seed {args.seed} (export_bundle.reinit_), {nparams} parameters; "
                   "backbones: ImageNet EfficientNet-Lite0 (scripts/export_effnet_backbone.py)",
        "command": command, "torch": torch.__version__, "opset": eb.OPSET,
    }
    name = os.path.basename(os.path.normpath(out))
    with open(os.path.join(out, "bundle.yaml"), "w") as f:
        f.write(MANIFEST.format(
            name=name, R=R, S=S, backbone_file=backbone_file, T=args.denoise_step, K=args.steps, tau=args.tau, min_step=args.min_step,
            description=f"pixel-space UNet2DModel at {R}x{R} (seed {args.seed}, untrained unless provenance says so) "
                        f"+ EfficientNet-Lite0 backbones (final map at {S}, ADP at {R})",
            provenance="\n".join(f"  {k}: {json.dumps(v)}" for k, v in prov.items())))
    eb.log(f"bundle {out}: {eb.dir_size(out) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
