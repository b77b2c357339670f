#!/usr/bin/env python3
"""Export a GLAD model bundle (onnx/<name>/, format: onnx/README.md).

Subcommands
-----------
full  --sd DIR --dino PTH --out onnx/NAME [--fp16] [--resolution 512] [--verify-batches 1,3]
      A diffusers-format Stable Diffusion v1.x folder (vae/, unet/, text_encoder/,
      tokenizer/) and a DINO ViT checkpoint in the `dino_vitbase8_pretrain.pth` layout.
      The prompt embeddings ("a photo of sks" = cond, "" = uncond) are computed once
      with the CLIP text encoder and saved as [1,77,768] float32 .npy.
      With --fp16, float16 copies of the models (float32 inputs/outputs, float16
      inside) are exported to onnx/NAME-fp16/, run on a test input, and any NaN/Inf is
      reported (and the model is not written) instead of being shipped silently.

synthetic-sd14  --out onnx/synthetic-sd14 [--seed 0] [--resolution 512] [--verify-batches 1]
      Full-size models for timing, no download: Stable Diffusion v1.4's published
      UNet2DConditionModel and AutoencoderKL configs (CompVis/stable-diffusion-v1-4,
      unet/config.json and vae/config.json) and DINO ViT-B/8 (patch 8, dim 768, depth 12,
      12 heads), with seeded random weights (reinit_, as tiny) and random [1,77,768] prompt
      embeddings, exported exactly as `full` exports (the UNet's 3.4 GB of weights go to
      external data, unet.onnx.data). About 4.2 GB; never committed. Its scores mean
      nothing: it is for speed (scripts/device-check.sh).

tiny  --out onnx/tiny --seed 0 [--goldens tests/golden/models]
      The same export code path on seeded, randomly initialised small models:
      R = 128, latent 4x16x16, a small UNet2DConditionModel (cross-attention dim 32),
      random prompt embeddings [1,77,32], a 12-block ViT (patch 8, dim 64, 2 heads)
      whose position embedding is sized for the 224 grid (28x28) so the bicubic
      interpolation path is exercised. With --goldens it also writes the golden
      model inputs/outputs for the Rust tests.

Every model is exported with torch.onnx.export(dynamo=True), opset 18, a dynamic batch
dimension, one file (external data `<file>.data` only for a model over 2 GB, which
protobuf cannot hold: the SD UNet); checked with onnx.checker and run with ONNX
Runtime (CPU, float32) at batch 1 and batch 3 against torch: the script fails when the
max abs difference exceeds --atol + --rtol * max|torch output|.

Model IO (onnx/README.md):
  vae_encoder.onnx  image [B,3,R,R]                      -> mean, logvar [B,4,R/8,R/8]
  unet.onnx         sample [B,4,h,w], timestep int64 [B],
                    encoder_hidden_states [B,77,D]        -> noise_pred [B,4,h,w]
  vae_decoder.onnx  latent [B,4,h,w] (already / scaling)  -> image [B,3,R,R]
  dino.onnx         image [B,3,R,R]                      -> block3, block6, block9, block12 [B,1+N,C]
"""
import argparse
import copy
import logging
import math
import os
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

F32 = np.float32
OPSET = 18
# protobuf's 2 GB limit: larger models keep their weights in `<file>.data` beside the graph
EXTERNAL_DATA_BYTES = 1 << 31

# Stable Diffusion v1.4's published configs (CompVis/stable-diffusion-v1-4, unet/config.json and
# vae/config.json; keys left out are diffusers' defaults, which they match).
SD14_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8,
)
SD14_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
)
# DINO ViT-B/8 (dino_vitbase8_pretrain.pth): patch 8, dim 768, depth 12, 12 heads, MLP 3072, pos grid 28x28.
VITB8 = dict(patch_size=8, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, pos_grid=224 // 8)
CLIP_TOKENS, CLIP_DIM = 77, 768  # CLIP ViT-L/14 text encoder output of SD v1.x
PROMPT_COND = "a photo of sks"
PROMPT_UNCOND = ""


def log(*a):
    print(*a, flush=True)


# ----------------------------------------------------------------------------------------
# DINO ViT (mirrors facebookresearch/dino vision_transformer.py, inference only)
# ----------------------------------------------------------------------------------------
class PatchEmbed(nn.Module):
    def __init__(self, patch_size, in_chans, embed_dim):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_hidden):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DinoViT(nn.Module):
    """DINO's VisionTransformer; forward returns the raw outputs (CLS included) of the
    blocks listed in `extract` (1-based), by default 3, 6, 9, 12."""

    def __init__(self, patch_size=8, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
                 pos_grid=28, extract=(3, 6, 9, 12)):
        super().__init__()
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + pos_grid * pos_grid, embed_dim))
        hidden = int(embed_dim * mlp_ratio)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)  # in the checkpoint; not applied to the outputs
        self.extract = tuple(extract)
        assert max(self.extract) <= depth

    def interpolate_pos_encoding(self, x, w, h):
        npatch = x.shape[1] - 1
        N = self.pos_embed.shape[1] - 1
        if npatch == N and w == h:
            return self.pos_embed
        class_pos_embed = self.pos_embed[:, 0]
        patch_pos_embed = self.pos_embed[:, 1:]
        dim = x.shape[-1]
        w0 = w // self.patch_embed.patch_size
        h0 = h // self.patch_embed.patch_size
        # DINO's quirk: add a small number to avoid floating point error in the interpolation
        w0, h0 = w0 + 0.1, h0 + 0.1
        g = int(math.sqrt(N))
        patch_pos_embed = F.interpolate(
            patch_pos_embed.reshape(1, g, g, dim).permute(0, 3, 1, 2),
            scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)),
            mode="bicubic",
        )
        assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)

    def prepare_tokens(self, x):
        B, _, w, h = x.shape
        x = self.patch_embed(x)
        cls_tokens = self.cls_token.expand(B, -1, -1)
        x = torch.cat((cls_tokens, x), dim=1)
        return x + self.interpolate_pos_encoding(x, w, h)

    def forward(self, image):
        x = self.prepare_tokens(image)
        outs = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i + 1 in self.extract:
                outs.append(x)
        return tuple(outs)


def load_dino(path, num_heads=None):
    sd = torch.load(path, map_location="cpu", weights_only=False)
    for k in ("teacher", "student", "model", "state_dict"):
        if isinstance(sd, dict) and k in sd and isinstance(sd[k], dict):
            sd = sd[k]
            break
    sd = {k.replace("module.", "").replace("backbone.", ""): v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    dim = sd["cls_token"].shape[-1]
    patch = sd["patch_embed.proj.weight"].shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    n = sd["pos_embed"].shape[1] - 1
    grid = int(round(math.sqrt(n)))
    assert grid * grid == n, f"pos_embed holds {n} patches, not a square grid"
    hidden = sd["blocks.0.mlp.fc1.weight"].shape[0]
    heads = num_heads or max(1, dim // 64)
    model = DinoViT(patch, dim, depth, heads, hidden / dim, grid)
    model.load_state_dict(sd, strict=True)
    log(f"DINO: dim {dim}, patch {patch}, depth {depth}, heads {heads}, mlp {hidden}, pos grid {grid}x{grid}")
    return model.eval()


# ----------------------------------------------------------------------------------------
# Wrappers with the bundle's IO
# ----------------------------------------------------------------------------------------
class VaeEncoder(nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.encoder = vae.encoder
        self.quant_conv = vae.quant_conv  # None when the config disables it

    def forward(self, image):
        h = self.encoder(image)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        mean, logvar = torch.chunk(h, 2, dim=1)
        logvar = torch.clamp(logvar, -30.0, 20.0)  # as diffusers' DiagonalGaussianDistribution
        return mean, logvar


class VaeDecoder(nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.post_quant_conv = vae.post_quant_conv
        self.decoder = vae.decoder

    def forward(self, latent):
        z = latent
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


class Unet(nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


class Fp16(nn.Module):
    """float32 in, float16 inside, float32 out (integer inputs pass through)."""

    def __init__(self, module):
        super().__init__()
        self.m = copy.deepcopy(module).half()

    def run(self, *args):
        args = [a.half() if a.is_floating_point() else a for a in args]
        out = self.m(*args)
        if isinstance(out, tuple):
            return tuple(o.float() for o in out)
        return out.float()


class Fp16In1(Fp16):
    def forward(self, a):
        return self.run(a)


class Fp16In3(Fp16):
    def forward(self, a, b, c):
        return self.run(a, b, c)


class Role:
    """One model of the bundle: wrapper module, IO names, example-input maker."""

    def __init__(self, name, module, inputs, outputs, make_inputs):
        self.name = name
        self.module = module
        self.inputs = inputs
        self.outputs = outputs
        self.make_inputs = make_inputs  # (batch, rng) -> dict name -> np array

    @property
    def file(self):
        return f"{self.name}.onnx"


def build_roles(vae, unet, dino, resolution, cond, uncond):
    R = resolution
    lc = vae.config.latent_channels
    h = R // 8
    L, D = cond.shape[1], cond.shape[2]

    def img(b, rng):
        return {"image": rng.uniform(-1, 1, (b, 3, R, R)).astype(F32)}

    def lat(b, rng):
        return {"latent": rng.standard_normal((b, lc, h, h)).astype(F32)}

    def unet_in(b, rng):
        ts = np.array([500, 20, 999, 1, 721, 31][:b] + [int(x) for x in rng.integers(0, 1000, max(0, b - 6))], np.int64)
        ehs = np.concatenate([uncond, cond] * ((b + 1) // 2), axis=0)[:b].astype(F32)
        return {"sample": rng.standard_normal((b, lc, h, h)).astype(F32), "timestep": ts,
                "encoder_hidden_states": ehs}

    roles = [
        Role("vae_encoder", VaeEncoder(vae).eval(), ["image"], ["mean", "logvar"], img),
        Role("unet", Unet(unet).eval(), ["sample", "timestep", "encoder_hidden_states"], ["noise_pred"], unet_in),
        Role("vae_decoder", VaeDecoder(vae).eval(), ["latent"], ["image"], lat),
        Role("dino", dino.eval(), ["image"], [f"block{i}" for i in dino.extract], img),
    ]
    assert L > 0 and D > 0
    return roles


# ----------------------------------------------------------------------------------------
# Export and verification
# ----------------------------------------------------------------------------------------
def ort_session(path, threads=1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def param_bytes(module):
    return sum(p.numel() * p.element_size() for p in module.parameters())


def export_onnx(module, role, path):
    import onnx

    from torch.export import Dim

    rng = np.random.default_rng(1234)
    ex = role.make_inputs(2, rng)
    args = tuple(torch.from_numpy(ex[n]) for n in role.inputs)
    batch = Dim("batch", min=1, max=1024)
    dyn = tuple({0: batch} for _ in args)  # positional, one spec per forward argument
    external = param_bytes(module) >= EXTERNAL_DATA_BYTES
    t0 = time.time()
    with torch.no_grad():
        prog = torch.onnx.export(
            module, args, dynamo=True, opset_version=OPSET, dynamic_shapes=dyn,
            input_names=role.inputs, output_names=role.outputs, external_data=external, verbose=False,
        )
    prog.save(path, external_data=external)
    # external data: load the graph only (the weights stay in <file>.data, referenced by name)
    model = onnx.load(path, load_external_data=not external)
    # drop the exporter's per-node debug metadata (stack traces with local paths): smaller,
    # byte-reproducible files
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, path)
    drop_stale_external_data(path, external)
    # a path, not the proto, so the checker can follow external data past protobuf's 2 GB
    onnx.checker.check_model(path if external else model, full_check=True)
    got_in = [i.name for i in model.graph.input]
    got_out = [o.name for o in model.graph.output]
    assert got_in == role.inputs, f"{path}: inputs {got_in}, expected {role.inputs}"
    assert got_out == role.outputs, f"{path}: outputs {got_out}, expected {role.outputs}"
    for vi in list(model.graph.input) + list(model.graph.output):
        d0 = vi.type.tensor_type.shape.dim[0]
        assert d0.dim_param and not d0.dim_value, f"{path}: {vi.name}: batch dimension is not dynamic"
    size = os.path.getsize(path) + (os.path.getsize(path + ".data") if os.path.exists(path + ".data") else 0)
    log(f"  exported {path} ({size / 1e6:.2f} MB{', external data ' + os.path.basename(path) + '.data' if external else ''}, "
        f"{len(model.graph.node)} nodes, opset {model.opset_import[0].version}) in {time.time() - t0:.1f} s")


def drop_stale_external_data(path, external):
    """Removes `<path>.data` when the model at `path` keeps its weights inside the file.

    torch writes external data on its own above 1536 MiB (its _LARGE_MODEL_THRESHOLD): an fp16
    SD UNet (about 1.7 GB) comes out as unet.onnx + unet.onnx.data although it is below the 2 GB
    limit; `export_onnx` loads it with its weights and saves one file, so the .data file beside
    it is no longer referenced. A previous export into the same folder leaves one as well."""
    stale = path + ".data"
    if not external and os.path.exists(stale):
        os.remove(stale)
        log(f"  removed {stale}: {os.path.basename(path)} holds its weights itself")


def torch_run(module, role, feeds):
    with torch.no_grad():
        out = module(*[torch.from_numpy(feeds[n]) for n in role.inputs])
    if not isinstance(out, tuple):
        out = (out,)
    return [o.float().numpy() for o in out]


def verify(module, role, path, atol, rtol, seed, batches=(1, 3), ref_module=None, threads=1):
    """Runs ORT and torch at the given batch sizes; returns {batch: {output: maxdiff}}."""
    sess = ort_session(path, threads)
    report = {}
    for b in batches:
        rng = np.random.default_rng(seed + 100 + b)
        feeds = role.make_inputs(b, rng)
        ort_out = sess.run(role.outputs, feeds)
        ref = torch_run(ref_module or module, role, feeds)
        report[b] = {}
        for name, o, r in zip(role.outputs, ort_out, ref):
            assert o.shape == r.shape, f"{path}: {name}: ORT shape {o.shape} != torch {r.shape}"
            nan = int(np.count_nonzero(~np.isfinite(o)))
            d = float(np.max(np.abs(o.astype(np.float64) - r))) if nan == 0 else float("nan")
            scale = float(np.max(np.abs(r)))
            report[b][name] = (d, scale, nan)
    return report


def check_report(path, report, atol, rtol, what="torch vs ORT"):
    ok = True
    for b, outs in report.items():
        for name, (d, scale, nan) in outs.items():
            bound = atol + rtol * scale
            flag = "ok" if (nan == 0 and d <= bound) else "FAIL"
            ok &= flag == "ok"
            log(f"    batch {b} {name:>10}: max|diff| {d:.3e} (bound {bound:.1e}, max|ref| {scale:.3g}"
                f"{', %d non-finite' % nan if nan else ''}) {flag}")
    if not ok:
        raise SystemExit(f"{path}: {what} difference over the bound")


def print_io(path):
    sess = ort_session(path)
    for kind, vals in (("in ", sess.get_inputs()), ("out", sess.get_outputs())):
        for v in vals:
            log(f"    {kind} {v.name:<22} {v.type:<16} {v.shape}")


def export_roles(roles, out, atol, rtol, seed, batches=(1, 3), threads=1):
    diffs = {}
    for role in roles:
        path = os.path.join(out, role.file)
        log(f"[{role.name}]")
        export_onnx(role.module, role, path)
        print_io(path)
        rep = verify(role.module, role, path, atol, rtol, seed, batches=batches, threads=threads)
        check_report(path, rep, atol, rtol)
        diffs[role.name] = rep
    return diffs


def export_fp16(roles, out, seed):
    """float16 copies; reports NaN/Inf and the difference to the float32 torch model.

    Two runs per model on one seeded batch-1 input: torch in float16 (on CUDA when there is
    one, else CPU: every intermediate tensor is stored in float16, so an overflow shows) and
    the exported ONNX model in ONNX Runtime (CUDA EP when available). ORT's CPU EP runs
    float16 ops that lack a float16 kernel in float32 (it inserts Casts), so on CPU an
    overflow may not show there: the torch float16 run is the check that counts."""
    import onnxruntime as ort

    os.makedirs(out, exist_ok=True)
    cuda = torch.cuda.is_available()
    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    problems = []
    for f in os.listdir(out):  # a fresh fp16 bundle: no files of an earlier export (external data included)
        if f.endswith((".onnx", ".npy", ".yaml", ".data", ".bin")):
            os.remove(os.path.join(out, f))
    for role in roles:
        path = os.path.join(out, role.file)
        log(f"[{role.name} fp16]")
        m16 = (Fp16In1 if len(role.inputs) == 1 else Fp16In3)(role.module).eval()
        feeds = role.make_inputs(1, np.random.default_rng(seed + 7))
        ref = torch_run(role.module, role, feeds)
        bad = []
        try:
            export_onnx(m16, role, path)
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            so.log_severity_level = 3
            sess = ort.InferenceSession(path, so, providers=providers)
            got = sess.run(role.outputs, feeds)
            dev = "cuda" if cuda else "cpu"
            mt = m16.to(dev)
            with torch.no_grad():
                t16 = mt(*[torch.from_numpy(feeds[n]).to(dev) for n in role.inputs])
            m16.to("cpu")
            t16 = [t.float().cpu().numpy() for t in (t16 if isinstance(t16, tuple) else (t16,))]
        except Exception as e:  # noqa: BLE001 - report and carry on with the other models
            problems.append(f"{role.name}: fp16 export/run failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
            log("    " + problems[-1])
            if os.path.exists(path):
                os.remove(path)
            continue
        log(f"    ORT on {sess.get_providers()[0]}, torch float16 on {dev}")
        for name, r, g, t in zip(role.outputs, ref, got, t16):
            for what, x in (("ORT fp16", g), ("torch fp16", t)):
                nan = int(np.count_nonzero(~np.isfinite(x)))
                d = float(np.max(np.abs(x.astype(np.float64) - r))) if nan == 0 else float("nan")
                log(f"    batch 1 {name:>10}: max|{what} - fp32 torch| {d:.3e} (max|ref| {float(np.abs(r).max()):.3g})"
                    f"{'  NON-FINITE VALUES: %d' % nan if nan else ''}")
                if nan:
                    bad.append(f"{role.name}.{name}: {nan} NaN/Inf values in the {what} output")
        if bad:
            problems += bad
            os.remove(path)
            log(f"    removed {path}: it produces NaN/Inf")
    return problems


# ----------------------------------------------------------------------------------------
# Manifest and goldens
# ----------------------------------------------------------------------------------------
MANIFEST = """\
format: 1
name: {name}
description: {description}
resolution: {R}
space: latent
latent:
  channels: {lc}
  factor: 8
  scaling_factor: {scaling}
models:
  vae_encoder:
    file: vae_encoder.onnx
    input: image
    output: mean_logvar
    outputs: [mean, logvar]
  unet:
    file: unet.onnx
    sample: sample
    timestep: timestep
    timestep_type: int64
    context: encoder_hidden_states
    output: noise_pred
  vae_decoder:
    file: vae_decoder.onnx
    input: latent
    output: image
  backbone:
    file: dino.onnx
    input: image
    layout: tokens
    outputs: [{dino_outputs}]
    patch: {patch}
    resolution: {R}
prompt:
  cond: cond.npy
  uncond: uncond.npy
scheduler:
  beta_schedule: scaled_linear
  beta_start: 0.00085
  beta_end: 0.012
  train_timesteps: 1000
  steps_offset: 1
  set_alpha_to_one: false
defaults:
  denoise_step: 750
  steps: 25
  guidance: 9.0
  tau: 0.32
  min_step: 350
  v: 0.0
provenance:
{provenance}
"""


def write_manifest(out, name, description, R, lc, scaling, dino, provenance):
    prov = "\n".join(f"  {k}: {v}" for k, v in provenance.items())
    text = MANIFEST.format(name=name, description=description, R=R, lc=lc, scaling=scaling,
                           dino_outputs=", ".join(f"block{i}" for i in dino.extract),
                           patch=dino.patch_embed.patch_size, provenance=prov)
    with open(os.path.join(out, "bundle.yaml"), "w") as f:
        f.write(text)


def write_goldens(roles, out, gdir, seed, command):
    """Batch-2 inputs/outputs of every model, computed by ORT (CPU, float32)."""
    os.makedirs(gdir, exist_ok=True)
    rng = np.random.default_rng(seed)
    R = None
    lines = []
    for role in roles:
        sess = ort_session(os.path.join(out, role.file))
        feeds = role.make_inputs(2, rng)
        if role.name == "unet":
            feeds["timestep"] = np.array([500, 20], np.int64)
        outs = sess.run(role.outputs, feeds)
        for n in role.inputs:
            np.save(os.path.join(gdir, f"{role.name}.{n}.npy"), feeds[n])
            lines.append(f"| `{role.name}.{n}.npy` | input | {list(feeds[n].shape)} | {feeds[n].dtype} |")
        for n, o in zip(role.outputs, outs):
            np.save(os.path.join(gdir, f"{role.name}.{n}.npy"), o)
            lines.append(f"| `{role.name}.{n}.npy` | output | {list(o.shape)} | {o.dtype} |")
        if role.name == "vae_encoder":
            R = feeds["image"].shape[-1]
    with open(os.path.join(gdir, "README.md"), "w") as f:
        f.write(f"""# Golden model inputs and outputs

Made by `{command}` (scripts/export_bundle.py) for the bundle `{out}`:
for each model (role) of the bundle, `<role>.<tensor>.npy` holds every input and every
output at batch 2. Outputs were computed by ONNX Runtime (CPU execution provider,
float32, 1 intra-op thread) from seeded inputs (numpy `default_rng({seed})`, drawn in the
order of the table): images uniform in [-1, 1] at {R}x{R}, latents and UNet samples
N(0, 1), timesteps int64 [500, 20], encoder_hidden_states = the bundle's
[uncond, cond] prompt embeddings.

| file | kind | shape | dtype |
|---|---|---|---|
""" + "\n".join(lines) + "\n\nRegenerating them re-exports the bundle; they only change if the exporter does.\n")
    log(f"goldens: {len(lines)} tensors in {gdir}")


def dir_size(d):
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if os.path.isfile(os.path.join(d, f)))


# ----------------------------------------------------------------------------------------
# tiny: seeded random models
# ----------------------------------------------------------------------------------------
def reinit_(module, gen, std_overrides=None):
    """Re-initialises every parameter with a seeded normal (diffusers zero-inits some layers):
    matrices/kernels N(0, 1/fan_in), 1-D weights (norm scales) 1 + N(0, 0.1^2),
    biases and other 1-D tensors N(0, 0.02^2). Parameters are visited in sorted name order."""
    std_overrides = std_overrides or {}
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name in std_overrides:
                p.copy_(noise * std_overrides[name])
            elif p.ndim >= 2:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(noise / math.sqrt(fan_in))
            elif name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.02 * noise)


def tiny_models(seed, R=128):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    assert R % 8 == 0
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64), layers_per_block=1, latent_channels=4,
        norm_num_groups=8, sample_size=R, scaling_factor=0.18215,
    ).eval()
    unet = UNet2DConditionModel(
        sample_size=R // 8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1, cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    ).eval()
    dino = DinoViT(patch_size=8, embed_dim=64, depth=12, num_heads=2, mlp_ratio=4.0, pos_grid=224 // 8).eval()
    reinit_(vae, gen)
    reinit_(unet, gen)
    reinit_(dino, gen, {"pos_embed": 0.5, "cls_token": 0.5})
    cond = torch.randn((1, 77, 32), generator=gen).numpy().astype(F32)
    uncond = torch.randn((1, 77, 32), generator=gen).numpy().astype(F32)
    calibrate_(vae, unet, dino, cond, uncond, R, seed, "tiny")
    return vae, unet, dino, cond, uncond


def calibrate_(vae, unet, dino, cond, uncond, R, seed, tag, batch=4):
    """Output scales of seeded random models: decoder image roughly within [-1.5, 1.5], noise
    prediction ~ unit std (rescales the last convolutions in place); logs the statistics."""
    assert batch % 2 == 0 or batch == 1
    with torch.no_grad():
        g2 = torch.Generator().manual_seed(seed + 1)
        z = torch.randn((batch, 4, R // 8, R // 8), generator=g2)
        img = VaeDecoder(vae)(z)
        s = 1.2 / float(img.abs().max())
        vae.decoder.conv_out.weight.mul_(s)
        vae.decoder.conv_out.bias.mul_(s)
        ehs = torch.from_numpy(np.concatenate([uncond, cond] * max(1, batch // 2))[:batch])
        ts = torch.tensor([999, 500, 100, 1] * ((batch + 3) // 4))[:batch]
        e = unet(z, ts, ehs).sample
        s = 1.0 / float(e.std())
        unet.conv_out.weight.mul_(s)
        unet.conv_out.bias.mul_(s)
        img = VaeDecoder(vae)(z)
        e = unet(z, ts, ehs).sample
        mean, logvar = VaeEncoder(vae)(img)
        feats = dino(img)
    log(f"{tag}: decoder output range [{img.min():.3f}, {img.max():.3f}] std {img.std():.3f}; "
        f"noise_pred std {e.std():.3f}, per-sample std {[round(float(v), 3) for v in e.flatten(1).std(1)]}")
    log(f"{tag}: encoder mean std {mean.std():.3f}, logvar range [{logvar.min():.2f}, {logvar.max():.2f}]; "
        f"dino block12 std {feats[-1].std():.3f}")
    for n, m in (("vae", vae), ("unet", unet), ("dino", dino)):
        log(f"{tag}: {n} {sum(p.numel() for p in m.parameters()):,} parameters")


# ----------------------------------------------------------------------------------------
# synthetic-sd14: full-size architectures, seeded random weights
# ----------------------------------------------------------------------------------------
def synthetic_sd14_models(seed, R=512):
    """SD v1.4 UNet and VAE and DINO ViT-B/8 from their published configs, seeded random
    weights initialised like tiny's (reinit_) and calibrated the same way (at batch 2)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    assert R % 8 == 0
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    vae = AutoencoderKL(**{**SD14_VAE, "sample_size": R}).eval()
    unet = UNet2DConditionModel(**{**SD14_UNET, "sample_size": R // 8}).eval()
    dino = DinoViT(**VITB8).eval()
    reinit_(vae, gen)
    reinit_(unet, gen)
    reinit_(dino, gen, {"pos_embed": 0.5, "cls_token": 0.5})
    cond = torch.randn((1, CLIP_TOKENS, CLIP_DIM), generator=gen).numpy().astype(F32)
    uncond = torch.randn((1, CLIP_TOKENS, CLIP_DIM), generator=gen).numpy().astype(F32)
    calibrate_(vae, unet, dino, cond, uncond, R, seed, "synthetic-sd14", batch=2)
    return vae, unet, dino, cond, uncond


# ----------------------------------------------------------------------------------------
# full: Stable Diffusion folder + DINO checkpoint
# ----------------------------------------------------------------------------------------
def full_models(sd_dir, dino_path, dino_heads):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    vae = AutoencoderKL.from_pretrained(os.path.join(sd_dir, "vae"), torch_dtype=torch.float32).eval()
    unet = UNet2DConditionModel.from_pretrained(os.path.join(sd_dir, "unet"), torch_dtype=torch.float32).eval()
    tok = CLIPTokenizer.from_pretrained(os.path.join(sd_dir, "tokenizer"))
    te = CLIPTextModel.from_pretrained(os.path.join(sd_dir, "text_encoder"), torch_dtype=torch.float32).eval()
    embs = []
    with torch.no_grad():
        for prompt in (PROMPT_COND, PROMPT_UNCOND):  # as diffusers' StableDiffusionPipeline.encode_prompt
            ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids
            embs.append(te(ids)[0].float().numpy().astype(F32))
    del te
    dino = load_dino(dino_path, dino_heads)
    return vae, unet, dino, embs[0], embs[1]


# ----------------------------------------------------------------------------------------
def run(args, vae, unet, dino, cond, uncond, description, provenance, goldens=None, command=""):
    R = args.resolution
    assert R % 8 == 0 and R % dino.patch_embed.patch_size == 0
    if R // dino.patch_embed.patch_size != R // 8:
        log(f"WARNING: DINO grid {R // dino.patch_embed.patch_size} != latent grid {R // 8}: SAFF needs them equal")
    out = args.out
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):  # a fresh bundle: no stale files (incl. orphaned external data)
        if f.endswith((".onnx", ".npy", ".yaml", ".data", ".bin")):
            os.remove(os.path.join(out, f))
    if os.path.isdir(os.path.join(out, "train")):
        log(f"NOTE: {out}/train (ATP training graphs) now belongs to the old UNet: regenerate it with "
            f"scripts/export_train_graph.py --bundle {out}")
    np.save(os.path.join(out, "cond.npy"), cond.astype(F32))
    np.save(os.path.join(out, "uncond.npy"), uncond.astype(F32))
    log(f"prompt embeddings: cond {cond.shape} uncond {uncond.shape}")
    roles = build_roles(vae, unet, dino, R, cond, uncond)
    batches = tuple(int(b) for b in str(getattr(args, "verify_batches", "1,3")).split(",") if b)
    diffs = export_roles(roles, out, args.atol, args.rtol, args.seed, batches=batches, threads=args.threads)
    name = os.path.basename(os.path.normpath(out))
    write_manifest(out, name, description, R, vae.config.latent_channels, vae.config.scaling_factor, dino, provenance)
    log(f"bundle {out}: {dir_size(out) / 1e6:.2f} MB")
    for f in sorted(os.listdir(out)):
        log(f"  {f:<20} {os.path.getsize(os.path.join(out, f)) / 1e6:8.3f} MB")
    if goldens:
        write_goldens(roles, out, goldens, args.seed, command)
    problems = []
    if args.fp16:
        out16 = out.rstrip("/") + "-fp16"
        problems = export_fp16(roles, out16, args.seed)
        if problems:
            log(f"fp16 bundle {out16} NOT completed (no bundle.yaml): ")
            for p in problems:
                log("  - " + p)
        else:
            for f in ("cond.npy", "uncond.npy"):
                shutil.copy(os.path.join(out, f), os.path.join(out16, f))
            write_manifest(out16, name + "-fp16", description + " (float16 weights and compute, float32 IO)",
                           R, vae.config.latent_channels, vae.config.scaling_factor, dino, provenance)
            log(f"fp16 bundle {out16}: {dir_size(out16) / 1e6:.2f} MB")
    log("summary of torch vs ORT max abs differences:")
    for r, rep in diffs.items():
        for b, outs in rep.items():
            log(f"  {r:<12} batch {b}: " + ", ".join(f"{n} {d:.2e}" for n, (d, _, _) in outs.items()))
    if problems:
        raise SystemExit(2)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("full", "tiny", "synthetic-sd14"):
        s = sub.add_parser(name)
        s.add_argument("--out", required=True)
        s.add_argument("--fp16", action="store_true", help="also export float16 copies to <out>-fp16 and report NaNs")
        s.add_argument("--threads", type=int, default=1, help="torch threads")
        s.add_argument("--atol", type=float, default=1e-4, help="bound: atol + rtol * max|torch output|")
        s.add_argument("--rtol", type=float, default=1e-5)
        s.add_argument("--goldens", default=None, help="folder for golden model inputs/outputs (batch 2)")
        if name == "full":
            s.add_argument("--sd", required=True, help="diffusers-format SD v1.x folder")
            s.add_argument("--dino", required=True, help="DINO ViT checkpoint (dino_vitbase8_pretrain.pth layout)")
            s.add_argument("--dino-heads", type=int, default=None, help="attention heads (default dim // 64)")
            s.add_argument("--resolution", type=int, default=512)
            s.add_argument("--seed", type=int, default=0, help="seed of the verification inputs")
            s.add_argument("--verify-batches", default="1,3",
                           help="batch sizes of the torch vs ORT check, comma-separated (default 1,3; 1 alone "
                                "saves minutes on a CPU with the full-size UNet)")
        elif name == "synthetic-sd14":
            s.add_argument("--seed", type=int, default=0, help="seed of the weights and verification inputs")
            s.add_argument("--resolution", type=int, default=512)
            s.add_argument("--verify-batches", default="1",
                           help="batch sizes of the torch vs ORT check, comma-separated (default 1: the "
                                "full-size UNet at batch 3 takes minutes on a CPU)")
        else:
            s.add_argument("--seed", type=int, default=0)
            s.add_argument("--resolution", type=int, default=128)
    args = p.parse_args()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" noise
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    command = "python3 scripts/export_bundle.py " + " ".join(sys.argv[1:])
    if args.cmd == "synthetic-sd14":
        vae, unet, dino, cond, uncond = synthetic_sd14_models(args.seed, args.resolution)
        desc = (f"SD v1.4 UNet/VAE + DINO ViT-B/8 architectures at {args.resolution} px with seeded random weights, "
                f"for timing only (scripts/export_bundle.py synthetic-sd14 --seed {args.seed})")
        prov = {"weights": f"random, torch.Generator seed {args.seed} (scripts/export_bundle.py reinit_), "
                           "configs SD14_UNET / SD14_VAE / VITB8",
                "command": f"'{command}'",
                "torch": torch.__version__, "opset": OPSET}
    elif args.cmd == "tiny":
        vae, unet, dino, cond, uncond = tiny_models(args.seed, args.resolution)
        desc = f"seeded random tiny SD-style models for tests (scripts/export_bundle.py tiny --seed {args.seed})"
        prov = {"weights": f"random, torch.Generator seed {args.seed} (scripts/export_bundle.py reinit_)",
                "command": f"'{command}'",
                "torch": torch.__version__, "opset": OPSET}
    else:
        vae, unet, dino, cond, uncond = full_models(args.sd, args.dino, args.dino_heads)
        desc = f"Stable Diffusion {os.path.basename(os.path.normpath(args.sd))} + DINO " \
               f"{os.path.basename(args.dino)} at {args.resolution} (scripts/export_bundle.py full)"
        prov = {"sd": f"'{os.path.abspath(args.sd)}'", "dino": f"'{os.path.abspath(args.dino)}'",
                "prompts": f"'cond \"{PROMPT_COND}\", uncond \"\"'", "command": f"'{command}'",
                "torch": torch.__version__, "opset": OPSET}
    run(args, vae, unet, dino, cond, uncond, desc, prov, args.goldens, command)


if __name__ == "__main__":
    main()
