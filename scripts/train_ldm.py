#!/usr/bin/env python3
"""Pretrain a small latent diffusion model on the normal train images of every texture class and
export it as a GLAD bundle (onnx/README.md, `space: latent`): the way GLAD starts from Stable
Diffusion, at a size one CPU core trains. Per class, `train` then ATP-fine-tunes its UNet.

    python3 scripts/train_ldm.py ae     --work DIR [--steps N] [--minutes M]
    python3 scripts/train_ldm.py unet   --work DIR [--steps N] [--minutes M]
    python3 scripts/train_ldm.py export --work DIR --out onnx/ldm64
    python3 scripts/train_ldm.py sample --work DIR        # reconstruction check on validation normals
    python3 scripts/train_ldm.py recover --work DIR --out onnx/ldm64   # checkpoints from a bundle
    python3 scripts/train_ldm.py atp-bench --work DIR --batch 8 --steps 20   # torch's step time, vs `train`
    python3 scripts/train_ldm.py fidelity --work DIR [--eval data/unseen] [--json F]   # per-class PSNR table

--data-dir FOLDER (ae, unet) pretrains on every PNG under FOLDER instead of --data's train
normals: the broad set of scripts/make_pretrain_set.py (64 px, gray or RGB), as
`scripts/texture_bundles.sh pretrain-broad` does for onnx/ldm64-base. The UNet's latents are
then each image and its horizontal flip (the set holds its own crops, scales and rotations).
Each ae/unet run appends what it did (steps, seconds, steps/s, data) to DIR/runs.json, and
`recover` writes DIR/origin.json; `export` copies both, and the set's manifest summary, into
the bundle's provenance. A stage resumed from weights without optimiser state (`recover`)
warms its learning rate up again (ae 200, unet 500 steps).

Each stage resumes from its checkpoint in DIR (`ae.pt`, `unet.pt`: weights, EMA, optimiser, step
and RNG states) and stops at --steps (a total, not an increment) or after --minutes, saving on
the way (--save-every) and at the end, so a run interrupted anywhere continues where it stopped.

Models (R = 64, the bundle resolution; images are the 128 px crops resized to 64 with an
antialiased triangle filter, as `glad` resizes them):
  autoencoder   factor 4, 4 latent channels (a KL autoencoder as in latent diffusion: mean and
                log-variance, KL weight 1e-6), GroupNorm/SiLU residual blocks (32, 64, 128 channels).
                Loss: L1 + 0.5 x (1 - cosine) of EfficientNet-Lite0 ImageNet features (stride 8 and
                16) of input and reconstruction, the features GLAD's final map compares, so the
                autoencoder is faithful where the score looks. Trained on random 32 px crops
                (fully convolutional: a crop costs a quarter of a full image).
  unet          diffusers UNet2DModel over 4x16x16 latents, unconditional, epsilon prediction,
                Stable Diffusion's scaled_linear betas (0.00085..0.012, 1000 steps), AdamW with an
                EMA of the weights (the EMA is exported). Latents are precomputed (every image, its
                flips and mildly rescaled crops) and scaled to unit variance (`scaling_factor`).
Export: vae_encoder.onnx (image -> mean, logvar), vae_decoder.onnx (latent / scaling_factor ->
image), unet.onnx (sample, timestep -> noise_pred); the backbones are the committed
EfficientNet-Lite0 exports (../effnet-lite0 for the final map at 128 px, ../pixel64's ADP
backbone at 64 px, input in [-1,1]). Then `scripts/export_train_graph.py --bundle OUT --batch 8`
writes the ATP training graphs `train` uses.
"""
import argparse
import glob
import json
import logging
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

R = 64
FACTOR = 4
LATENT = 4
CLASSES = ("brick", "grass", "gravel")
F32 = np.float32


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------
def load_split(data, split, classes=CLASSES):
    """[N,3,128,128] float32 in [-1,1] (grayscale repeated), sorted by class then file."""
    from PIL import Image

    xs = []
    for c in classes:
        files = sorted(glob.glob(os.path.join(data, c, split, "good", "*.png")))
        if not files:
            raise SystemExit(f"error: no images in {os.path.join(data, c, split, 'good')}")
        for f in files:
            a = np.asarray(Image.open(f).convert("RGB"), dtype=F32) / 127.5 - 1.0
            xs.append(a.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(xs))


def load_folder(folder):
    """Every PNG under `folder` (recursive, sorted by path) as [N,3,R,R] float32 in [-1,1]
    (grayscale repeated; images of another size resized with `to_r`): a pretraining set such
    as scripts/make_pretrain_set.py writes."""
    from PIL import Image

    files = sorted(glob.glob(os.path.join(folder, "**", "*.png"), recursive=True))
    if not files:
        raise SystemExit(f"error: no PNG images under {folder}")
    xs = []
    for f in files:
        a = torch.from_numpy(np.asarray(Image.open(f).convert("RGB"), dtype=F32) / 127.5 - 1.0).permute(2, 0, 1)
        xs.append(a if a.shape[-1] == R and a.shape[-2] == R else to_r(a[None])[0])
    return torch.stack(xs)


def train_images(args):
    """The stage's training images at R px: --data-dir's images, else the train normals of
    every class of --data (128 px crops resized to R)."""
    if args.data_dir:
        return load_folder(args.data_dir)
    return to_r(load_split(args.data, "train"))


def eval_sets(args):
    """(name, dataset folder, class) of every class with validation normals: those of --data
    (brick, grass, gravel) and of each --eval folder."""
    out = [(c, args.data, c) for c in CLASSES]
    for d in args.eval or []:
        for c in sorted(os.listdir(d)):
            if os.path.isdir(os.path.join(d, c, "validation", "good")):
                out.append((c, d, c))
    return out


def record_run(work, entry):
    """Appends one stage run (what, steps, time, speed) to WORK/runs.json (the export's provenance);
    a run that did no step (the stage was already at its total) is not recorded."""
    if entry["to_step"] == entry["from_step"]:
        return
    path = os.path.join(work, "runs.json")
    runs = json.load(open(path)) if os.path.exists(path) else []
    runs.append(entry)
    with open(path + ".tmp", "w") as f:
        json.dump(runs, f, indent=1)
    os.replace(path + ".tmp", path)


def to_r(x, r=R):
    """The runtime's resize (image's Triangle filter = antialiased bilinear)."""
    return F.interpolate(x, size=(r, r), mode="bilinear", antialias=True, align_corners=False)


# ----------------------------------------------------------------------------------------
# Autoencoder
# ----------------------------------------------------------------------------------------
class Res(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(8, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.n2, self.c2 = nn.GroupNorm(8, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.c1(F.silu(self.n1(x)))
        h = self.c2(F.silu(self.n2(h)))
        return self.skip(x) + h


class Encoder(nn.Module):
    def __init__(self, ch=(32, 64, 128)):
        super().__init__()
        self.inp = nn.Conv2d(3, ch[0], 3, padding=1)
        self.r0 = Res(ch[0], ch[0])
        self.d0 = nn.Conv2d(ch[0], ch[1], 3, stride=2, padding=1)
        self.r1 = Res(ch[1], ch[1])
        self.d1 = nn.Conv2d(ch[1], ch[2], 3, stride=2, padding=1)
        self.r2 = Res(ch[2], ch[2])
        self.r3 = Res(ch[2], ch[2])
        self.no = nn.GroupNorm(8, ch[2])
        self.out = nn.Conv2d(ch[2], 2 * LATENT, 3, padding=1)

    def forward(self, x):
        h = self.r0(self.inp(x))
        h = self.r1(self.d0(h))
        h = self.r3(self.r2(self.d1(h)))
        m = self.out(F.silu(self.no(h)))
        mean, logvar = m[:, :LATENT], m[:, LATENT:].clamp(-30.0, 20.0)
        return mean, logvar


class Decoder(nn.Module):
    def __init__(self, ch=(32, 64, 128)):
        super().__init__()
        self.inp = nn.Conv2d(LATENT, ch[2], 3, padding=1)
        self.r0 = Res(ch[2], ch[2])
        self.r1 = Res(ch[2], ch[2])
        self.u0 = nn.Conv2d(ch[2], ch[1], 3, padding=1)
        self.r2 = Res(ch[1], ch[1])
        self.u1 = nn.Conv2d(ch[1], ch[0], 3, padding=1)
        self.r3 = Res(ch[0], ch[0])
        self.no = nn.GroupNorm(8, ch[0])
        self.out = nn.Conv2d(ch[0], 3, 3, padding=1)

    def forward(self, z):
        h = self.r1(self.r0(self.inp(z)))
        h = self.r2(self.u0(F.interpolate(h, scale_factor=2.0, mode="nearest")))
        h = self.r3(self.u1(F.interpolate(h, scale_factor=2.0, mode="nearest")))
        return self.out(F.silu(self.no(h)))


class AutoEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc, self.dec = Encoder(), Decoder()


class Features(nn.Module):
    """EfficientNet-Lite0 (ImageNet) stride-8/16 features of [-1,1] images, frozen."""

    def __init__(self):
        super().__init__()
        import export_effnet_backbone as ee

        self.net = ee.Backbone(ee.load_net(128)).eval()
        with torch.no_grad():  # [-1,1] -> (p - 127) / 128 on p = (x + 1) * 127.5, as the ADP backbone
            self.net.pre.scale.fill_(127.5 / 128.0)
            self.net.pre.shift.fill_(0.5 / 128.0)
        for p in self.net.parameters():
            p.requires_grad_(False)

    def forward(self, x):
        return self.net(x)


def feature_loss(feats, x, y):
    loss = 0.0
    for a, b in zip(feats(x), feats(y)):
        loss = loss + (1.0 - F.cosine_similarity(a, b, dim=1)).mean()
    return loss


def random_crops(x, batch, crop, gen):
    """`batch` random `crop`-px crops of the images `x`, each flipped at random both ways."""
    idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
    oy = torch.randint(0, R - crop + 1, (batch,), generator=gen)
    ox = torch.randint(0, R - crop + 1, (batch,), generator=gen)
    flip = torch.rand((batch, 2), generator=gen) < 0.5
    b = []
    for i in range(batch):
        c = x[idx[i], :, oy[i]:oy[i] + crop, ox[i]:ox[i] + crop]
        if flip[i, 0]:
            c = c.flip(-1)
        if flip[i, 1]:
            c = c.flip(-2)
        b.append(c)
    return torch.stack(b)


def save(path, obj):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def stage_ae(args):
    path = os.path.join(args.work, "ae.pt")
    ae = AutoEncoder()
    opt = torch.optim.AdamW(ae.parameters(), lr=args.lr or 1e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    step, warm0 = 0, None
    if os.path.exists(path):
        ck = torch.load(path, weights_only=False)
        ae.load_state_dict(ck["model"])
        if ck["opt"] is not None:
            opt.load_state_dict(ck["opt"])
        else:  # weights without optimiser state (`recover`): warm the learning rate up again
            warm0 = ck["step"]
        gen.set_state(ck["gen"])
        step = ck["step"]
        log(f"ae: resumed at step {step}")
    x = train_images(args)
    feats = Features()
    lr = args.lr or 1e-3
    step0 = step
    n = sum(p.numel() for p in ae.parameters())
    log(f"ae: {n:,} parameters, {x.shape[0]} images at {R} px, batch {args.batch}, crops {args.crop}")
    t0, last, hist = time.time(), time.time(), []
    while step < args.steps and (time.time() - t0) < args.minutes * 60:
        b = random_crops(x, args.batch, args.crop, gen)
        mean, logvar = ae.enc(b)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen)
        y = ae.dec(z)
        l1 = (y - b).abs().mean()
        pl = feature_loss(feats, F.interpolate(b, scale_factor=2.0, mode="bilinear"),
                          F.interpolate(y, scale_factor=2.0, mode="bilinear"))
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        loss = l1 + 0.5 * pl + 1e-6 * kl
        if warm0 is not None:
            for gp in opt.param_groups:
                gp["lr"] = lr * min(1.0, (step - warm0 + 1) / 200)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        hist.append((l1.item(), pl.item()))
        if step % args.log_every == 0:
            a = np.mean(hist[-args.log_every:], axis=0)
            log(f"ae step {step}: l1 {a[0]:.4f} feat {a[1]:.4f} ({args.log_every / (time.time() - last):.2f} steps/s)")
            last = time.time()
        if step % args.save_every == 0:
            save(path, {"model": ae.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(), "step": step})
    save(path, {"model": ae.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(), "step": step})
    secs = time.time() - t0
    log(f"ae: stopped at step {step} after {secs:.0f} s")
    record_run(args.work, {"stage": "ae", "data": args.data_dir or f"{args.data}/*/train/good", "images": int(x.shape[0]),
                           "from_step": step0, "to_step": step, "seconds": round(secs), "batch": args.batch,
                           "crop": args.crop, "lr": lr, "threads": args.threads,
                           "steps_per_s": round((step - step0) / max(secs, 1e-9), 3)})
    ae.eval()
    for c, (l1, fd) in fidelity(ae, eval_sets(args)).items():
        log(f"ae {LATENT} latent channels, step {step}: {c} validation L1 {l1:.4f} feature distance {fd:.4f}")


def fidelity(ae, sets, n=16):
    """Per class, the autoencoder's L1 and feature distance (the sum over the two backbone
    layers of 1 - cosine at the same position, at 128 px) on the first `n` validation normals.
    `sets`: a dataset folder (its classes CLASSES) or (name, folder, class) triples (`eval_sets`)."""
    if isinstance(sets, str):
        sets = [(c, sets, c) for c in CLASSES]
    feats = Features()
    out = {}
    with torch.no_grad():
        for name, data, c in sets:
            xv = to_r(load_split(data, "validation", (c,)))[:n]
            r = ae.dec(ae.enc(xv)[0])
            out[name] = (float((r - xv).abs().mean()), float(feature_loss(feats, to_r(xv, 128), to_r(r, 128))))
    return out


def load_ae(work):
    ae = AutoEncoder().eval()
    ae.load_state_dict(torch.load(os.path.join(work, "ae.pt"), weights_only=False)["model"])
    for p in ae.parameters():
        p.requires_grad_(False)
    return ae


# ----------------------------------------------------------------------------------------
# Latent UNet
# ----------------------------------------------------------------------------------------
def make_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=R // FACTOR, in_channels=LATENT, out_channels=LATENT, layers_per_block=1,
        block_out_channels=(64, 128, 128),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=16, attention_head_dim=32,
    )


def alphas_cumprod():
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0)


def latents(args, ae):
    """(mean, std) latents of every train image, its flips and mildly rescaled crops; cached."""
    path = os.path.join(args.work, "latents.pt")
    aestep = torch.load(os.path.join(args.work, "ae.pt"), weights_only=False)["step"]
    if os.path.exists(path):
        lat = torch.load(path, weights_only=False)
        if lat.get("ae_step", aestep) == aestep and lat.get("data_dir") == args.data_dir:
            return lat
        log(f"latents: {path} belongs to another autoencoder step or data; encoding again")
    if args.data_dir:
        return latents_folder(args, ae, path, aestep)
    x128 = load_split(args.data, "train")
    g = torch.Generator().manual_seed(args.seed + 7)
    views = [x128]
    for _ in range(2):
        crops = []
        for i in range(x128.shape[0]):
            s = int(torch.randint(104, 129, (1,), generator=g))
            oy, ox = (int(v) for v in torch.randint(0, 128 - s + 1, (2,), generator=g))
            crops.append(F.interpolate(x128[i:i + 1, :, oy:oy + s, ox:ox + s], size=(128, 128), mode="bilinear",
                                       antialias=True, align_corners=False)[0])
        views.append(torch.stack(crops))
    means, stds = [], []
    with torch.no_grad():
        for v in views:
            for fl in ((), (-1,), (-2,), (-1, -2)):
                xv = to_r(v.flip(fl) if fl else v)
                for i in range(0, xv.shape[0], 50):
                    m, lv = ae.enc(xv[i:i + 50])
                    means.append(m)
                    stds.append(torch.exp(0.5 * lv))
    mean, std = torch.cat(means), torch.cat(stds)
    z = mean + std * torch.randn(mean.shape, generator=g)
    scale = float(1.0 / z.std())
    out = {"mean": mean, "std": std, "scale": scale, "ae_step": aestep, "data_dir": None}
    save(path, out)
    log(f"latents: {mean.shape[0]} views, latent std {z.std():.4f} -> scaling_factor {scale:.5f}, "
        f"mean posterior std {std.mean():.4f}")
    return out


def latents_folder(args, ae, path, aestep):
    """(mean, std) latents of every --data-dir image and its horizontal flip (the set already
    holds its own scales, rotations and flips); cached."""
    x = load_folder(args.data_dir)
    g = torch.Generator().manual_seed(args.seed + 7)
    means, stds = [], []
    with torch.no_grad():
        for xv in (x, x.flip(-1)):
            for i in range(0, xv.shape[0], 64):
                m, lv = ae.enc(xv[i:i + 64])
                means.append(m)
                stds.append(torch.exp(0.5 * lv))
    mean, std = torch.cat(means), torch.cat(stds)
    z = mean + std * torch.randn(mean.shape, generator=g)
    scale = float(1.0 / z.std())
    out = {"mean": mean, "std": std, "scale": scale, "ae_step": aestep, "data_dir": args.data_dir}
    save(path, out)
    log(f"latents: {mean.shape[0]} views of {args.data_dir}, latent std {z.std():.4f} -> scaling_factor {scale:.5f}, "
        f"mean posterior std {std.mean():.4f}")
    return out


def stage_unet(args):
    import copy

    path = os.path.join(args.work, "unet.pt")
    ae = load_ae(args.work)
    lat = latents(args, ae)
    unet = make_unet()
    ema = copy.deepcopy(unet)
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr or 3e-4, weight_decay=0.01)
    gen = torch.Generator().manual_seed(args.seed)
    step, warm0 = 0, 0
    if os.path.exists(path):
        ck = torch.load(path, weights_only=False)
        unet.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        if ck["opt"] is not None:
            opt.load_state_dict(ck["opt"])
        else:  # weights without optimiser state (`recover`): warm the learning rate up again
            warm0 = ck["step"]
        gen.set_state(ck["gen"])
        step = ck["step"]
        log(f"unet: resumed at step {step}")
    ab = alphas_cumprod().float()
    mean, std, scale = lat["mean"], lat["std"], lat["scale"]
    step0 = step
    n = sum(p.numel() for p in unet.parameters())
    log(f"unet: {n:,} parameters, {mean.shape[0]} latent views, batch {args.batch}")
    unet.train()
    t0, last, hist = time.time(), time.time(), []

    def state():
        return {"model": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                "step": step, "scale": scale}

    while step < args.steps and (time.time() - t0) < args.minutes * 60:
        idx = torch.randint(0, mean.shape[0], (args.batch,), generator=gen)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * scale
        t = torch.randint(0, 1000, (args.batch,), generator=gen)
        eps = torch.randn(z0.shape, generator=gen)
        a = ab[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        warm = min(1.0, (step - warm0 + 1) / 500)
        for gp in opt.param_groups:
            gp["lr"] = (args.lr or 3e-4) * warm
        pred = unet(zt, t).sample
        loss = F.mse_loss(pred, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        d = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.mul_(d).add_(p.detach(), alpha=1 - d)
        step += 1
        hist.append(loss.item())
        if step % args.log_every == 0:
            log(f"unet step {step}: loss {np.mean(hist[-args.log_every:]):.4f} "
                f"({args.log_every / (time.time() - last):.2f} steps/s)")
            last = time.time()
        if step % args.save_every == 0:
            save(path, state())
    save(path, state())
    secs = time.time() - t0
    log(f"unet: stopped at step {step} after {secs:.0f} s")
    record_run(args.work, {"stage": "unet", "data": args.data_dir or f"{args.data}/*/train/good",
                           "latent_views": int(mean.shape[0]), "scaling_factor": round(scale, 6), "from_step": step0,
                           "to_step": step, "seconds": round(secs), "batch": args.batch, "lr": args.lr or 3e-4,
                           "ema": args.ema, "threads": args.threads,
                           "steps_per_s": round((step - step0) / max(secs, 1e-9), 3)})


def load_unet(work):
    ck = torch.load(os.path.join(work, "unet.pt"), weights_only=False)
    unet = make_unet().eval()
    unet.load_state_dict(ck["ema"])
    return unet, ck["scale"], ck["step"]


# ----------------------------------------------------------------------------------------
# Check: DDIM reconstruction of validation normals from T (GLAD without ADP/SAFF)
# ----------------------------------------------------------------------------------------
def stage_sample(args):
    ae = load_ae(args.work)
    unet, scale, step = load_unet(args.work)
    feats = Features()
    ab = alphas_cumprod().float()
    x = to_r(load_split(args.data, "validation"))[:: max(1, args.every)]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        m, lv = ae.enc(x)
        ae_rec = ae.dec(m)
        log(f"unet step {step}: autoencoder on {x.shape[0]} validation normals: L1 {(ae_rec - x).abs().mean():.4f}, "
            f"feature distance {feature_loss(feats, to_r(x, 128), to_r(ae_rec, 128)):.4f}")
        for T in (100, 200, 300, 400, 600):
            z0 = m * scale
            ts = list(range(T, 0, -max(1, T // 20)))
            z = ab[T].sqrt() * z0 + (1 - ab[T]).sqrt() * torch.randn(z0.shape, generator=g)
            for i, t in enumerate(ts):
                e = unet(z, torch.full((z.shape[0],), t)).sample
                x0 = (z - (1 - ab[t]).sqrt() * e) / ab[t].sqrt()
                tp = ts[i + 1] if i + 1 < len(ts) else 0
                abp = ab[tp] if tp > 0 else ab[0]
                z = abp.sqrt() * x0 + (1 - abp).sqrt() * e
            rec = ae.dec(z / scale)
            log(f"  T {T}: L1 {(rec - x).abs().mean():.4f} feature distance "
                f"{feature_loss(feats, to_r(x, 128), to_r(rec, 128)):.4f}")


def ddim_reconstruct(unet, ab, z0, T, g, steps=20):
    """Noises the scaled latents z0 to step T (noise from `g`) and denoises them with `steps`
    deterministic DDIM steps, as `sample` does (GLAD without ADP/SAFF)."""
    ts = list(range(T, 0, -max(1, T // steps)))
    z = ab[T].sqrt() * z0 + (1 - ab[T]).sqrt() * torch.randn(z0.shape, generator=g)
    for i, t in enumerate(ts):
        e = unet(z, torch.full((z.shape[0],), t)).sample
        x0 = (z - (1 - ab[t]).sqrt() * e) / ab[t].sqrt()
        tp = ts[i + 1] if i + 1 < len(ts) else 0
        abp = ab[tp] if tp > 0 else ab[0]
        z = abp.sqrt() * x0 + (1 - abp).sqrt() * e
    return z


def psnr(x, y):
    """PSNR in dB of images in [-1, 1] (peak 1 on the [0, 1] scale), over the whole batch."""
    mse01 = float(((x - y) / 2).pow(2).mean())
    return 10.0 * math.log10(1.0 / max(mse01, 1e-12)), mse01


def stage_fidelity(args):
    """Reconstruction fidelity of the base in --work on the validation normals of every class
    of --data and of each --eval dataset (the first --n per class, at R px): the autoencoder's
    round trip (encoder mean -> decoder) and DDIM reconstructions from T 100 and 300 (20 steps,
    the same noise for every model: a generator seeded with --seed and the class index). Prints
    one JSON object per class and writes them all to --json if given."""
    ae = load_ae(args.work)
    unet, scale, ustep = load_unet(args.work)
    aestep = torch.load(os.path.join(args.work, "ae.pt"), weights_only=False)["step"]
    feats = Features()
    ab = alphas_cumprod().float()
    rows = []
    with torch.no_grad():
        for k, (name, data, c) in enumerate(eval_sets(args)):
            x = to_r(load_split(data, "validation", (c,)))[:args.n]
            m, _ = ae.enc(x)
            r = ae.dec(m)
            p, mse = psnr(r, x)
            row = {"class": name, "dataset": data, "images": int(x.shape[0]), "ae_step": aestep, "unet_step": ustep,
                   "ae_psnr": round(p, 3), "ae_mse": round(mse, 6), "ae_l1": round(float((r - x).abs().mean()), 5),
                   "ae_feat": round(float(feature_loss(feats, to_r(x, 128), to_r(r, 128))), 5)}
            for T in (100, 300):
                g = torch.Generator().manual_seed(args.seed * 1000 + k)
                rec = ae.dec(ddim_reconstruct(unet, ab, m * scale, T, g) / scale)
                p, mse = psnr(rec, x)
                row.update({f"ddim{T}_psnr": round(p, 3), f"ddim{T}_mse": round(mse, 6),
                            f"ddim{T}_l1": round(float((rec - x).abs().mean()), 5),
                            f"ddim{T}_feat": round(float(feature_loss(feats, to_r(x, 128), to_r(rec, 128))), 5)})
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"work": args.work, "rows": rows}, f, indent=1)


# ----------------------------------------------------------------------------------------
# The ATP step in torch, for comparison with `train` on the same UNet
# ----------------------------------------------------------------------------------------
def stage_atp_bench(args):
    """Times torch forward + backward + AdamW of the exported UNet at --batch on --threads: the
    step `train` runs through ONNX Runtime (the ATP target only changes the regression target)."""
    unet, _, _ = load_unet(args.work)
    unet.train()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(0)
    h = R // FACTOR
    times = []
    for i in range(args.steps):
        z = torch.randn((args.batch, LATENT, h, h), generator=g)
        y = torch.randn(z.shape, generator=g)
        t = torch.randint(0, 1000, (args.batch,), generator=g)
        t0 = time.perf_counter()
        loss = F.mse_loss(unet(z, t).sample, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    t = float(np.median(times[2:] if len(times) > 4 else times))
    with torch.no_grad():
        z = torch.randn((args.batch, LATENT, h, h), generator=g)
        t0 = time.perf_counter()
        for _ in range(5):
            unet(z, torch.randint(0, 1000, (args.batch,), generator=g))
        fwd = (time.perf_counter() - t0) / 5
    print(json.dumps({"batch": args.batch, "threads": args.threads, "step_s": t, "steps_per_s": 1.0 / t,
                      "forward_s": fwd, "torch": torch.__version__}))


# ----------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------
class EncoderRole(nn.Module):
    def __init__(self, ae):
        super().__init__()
        self.enc = ae.enc

    def forward(self, image):
        return self.enc(image)


class DecoderRole(nn.Module):
    def __init__(self, ae):
        super().__init__()
        self.dec = ae.dec

    def forward(self, latent):
        return self.dec(latent)


MANIFEST = """format: 1
name: {name}
description: latent diffusion at {R} px (KL autoencoder factor {FACTOR}, {LATENT} channels; UNet2DModel {params} parameters) pretrained on {trained_on} + EfficientNet-Lite0 backbones (final map at 128, ADP at {R})
resolution: {R}
space: latent
latent:
  channels: {LATENT}
  factor: {FACTOR}
  scaling_factor: {scale}
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
    output: noise_pred
  vae_decoder:
    file: vae_decoder.onnx
    input: latent
    output: image
  backbone:
    file: ../effnet-lite0/effnet_lite0.onnx
    input: image
    layout: feature_map
    outputs: [stride8, stride16]
    patch: 8
    resolution: 128
  adp_backbone:
    file: ../pixel64/adp_backbone.onnx   # EfficientNet-Lite0 at R = 64, input in [-1,1]
    input: image
    layout: feature_map
    outputs: [stride8, stride16]
    patch: 8
    resolution: {R}
scheduler:
  beta_schedule: scaled_linear
  beta_start: 0.00085
  beta_end: 0.012
  train_timesteps: 1000
  steps_offset: 1
  set_alpha_to_one: false
defaults:
  denoise_step: 300
  steps: 20
  guidance: 1.0
  tau: 0.0
  min_step: 100
  v: 1.0
provenance:
{provenance}
"""


def stage_export(args):
    import export_bundle as eb
    from export_pixel_bundle import PixelUnet  # (sample, timestep) -> noise_pred, as for pixel bundles

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    ae = load_ae(args.work)
    unet, scale, ustep = load_unet(args.work)
    aestep = torch.load(os.path.join(args.work, "ae.pt"), weights_only=False)["step"]
    out = args.out
    os.makedirs(out, exist_ok=True)
    h = R // FACTOR

    def img(b, rng):
        return {"image": rng.uniform(-1, 1, (b, 3, R, R)).astype(F32)}

    def lat(b, rng):
        return {"latent": rng.standard_normal((b, LATENT, h, h)).astype(F32)}

    def unet_in(b, rng):
        ts = np.array([500, 20, 999, 1, 721, 31][:b] + [int(x) for x in rng.integers(0, 1000, max(0, b - 6))], np.int64)
        return {"sample": rng.standard_normal((b, LATENT, h, h)).astype(F32), "timestep": ts}

    roles = [
        eb.Role("vae_encoder", EncoderRole(ae).eval(), ["image"], ["mean", "logvar"], img),
        eb.Role("unet", PixelUnet(unet).eval(), ["sample", "timestep"], ["noise_pred"], unet_in),
        eb.Role("vae_decoder", DecoderRole(ae).eval(), ["latent"], ["image"], lat),
    ]
    eb.export_roles(roles, out, 1e-4, 1e-4, 0)
    params = sum(p.numel() for p in unet.parameters())
    trained_on = "the normal train images of brick, grass and gravel"
    data = "data/textures/{brick,grass,gravel}/train/good"
    origin_path = os.path.join(args.work, "origin.json")
    origin = json.load(open(origin_path)) if os.path.exists(origin_path) else None
    manifest = None
    if args.data_dir:
        manifest = json.load(open(os.path.join(args.data_dir, "manifest.json")))
        trained_on = (f"a broad set of {manifest['total']} images (scikit-image's openly licensed photographs and "
                      f"textures, procedural textures; {', '.join(manifest['held_out'])} held out)")
        data = f"{args.data_dir} (scripts/make_pretrain_set.py --seed {manifest['seed']})"
    prov = {
        "weights": f"scripts/train_ldm.py: autoencoder {aestep} steps, UNet {ustep} steps (EMA) "
                   + (f"continued from {origin['bundle']} ({origin['weights']}) " if origin else "")
                   + f"on {data}; backbones: ImageNet EfficientNet-Lite0",
        "command": "python3 scripts/train_ldm.py export " + " ".join(sys.argv[2:]),
        "torch": torch.__version__, "opset": eb.OPSET,
    }
    if manifest:
        prov["pretrain_set"] = {
            "script": "scripts/make_pretrain_set.py", "seed": manifest["seed"], "images": manifest["total"],
            "size": manifest["size"], "held_out": manifest["held_out"],
            "photos": {k: {"file": v["file"], "licence": v["licence"], "images": v["images"]}
                       for k, v in manifest["photos"].items()},
            "procedural": {k: v["images"] for k, v in manifest["procedural"].items()},
        }
    runs_path = os.path.join(args.work, "runs.json")
    if os.path.exists(runs_path):
        prov["runs"] = json.load(open(runs_path))
    name = os.path.basename(os.path.normpath(out))
    with open(os.path.join(out, "bundle.yaml"), "w") as f:
        f.write(MANIFEST.format(name=name, R=R, FACTOR=FACTOR, LATENT=LATENT, scale=f"{scale:.6f}", params=f"{params:,}",
                                trained_on=trained_on,
                                provenance="\n".join(f"  {k}: {json.dumps(v)}" for k, v in prov.items())))
    log(f"bundle {out}: {eb.dir_size(out) / 1e6:.2f} MB")


# ----------------------------------------------------------------------------------------
# Per-class decoder: the shared autoencoder's decoder fine-tuned on one class's normals
# ----------------------------------------------------------------------------------------
def stage_decoder(args):
    """Fine-tunes only the decoder on the train normals of --class (the encoder, and so the
    latent space the UNet was trained on, stays as it is): the per-class bundle decodes its own
    texture more faithfully, which is what the final map compares in normal regions."""
    if not args.cls:
        raise SystemExit("error: decoder needs --class (one of " + ", ".join(CLASSES) + ")")
    path = os.path.join(args.work, f"decoder-{args.cls}.pt")
    ae = load_ae(args.work)
    for p in ae.dec.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(ae.dec.parameters(), lr=args.lr or 2e-4, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    step = 0
    if os.path.exists(path):
        ck = torch.load(path, weights_only=False)
        ae.dec.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        gen.set_state(ck["gen"])
        step = ck["step"]
        log(f"decoder {args.cls}: resumed at step {step}")
    x = to_r(load_split(args.data, "train", (args.cls,)))
    feats = Features()

    def val():
        return fidelity(ae, [(args.cls, args.data, args.cls)])[args.cls]

    l1, fd = val()
    log(f"decoder {args.cls}: {x.shape[0]} images, batch {args.batch}, crops {args.crop}; "
        f"validation L1 {l1:.4f} feature distance {fd:.4f} at step {step}")
    t0, last, hist = time.time(), time.time(), []

    def state():
        return {"model": ae.dec.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(), "step": step,
                "class": args.cls}

    while step < args.steps and (time.time() - t0) < args.minutes * 60:
        b = random_crops(x, args.batch, args.crop, gen)
        with torch.no_grad():
            mean, logvar = ae.enc(b)
            z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen)
        y = ae.dec(z)
        l1 = (y - b).abs().mean()
        pl = feature_loss(feats, F.interpolate(b, scale_factor=2.0, mode="bilinear"),
                          F.interpolate(y, scale_factor=2.0, mode="bilinear"))
        loss = l1 + 0.5 * pl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        hist.append((l1.item(), pl.item()))
        if step % args.log_every == 0:
            a = np.mean(hist[-args.log_every:], axis=0)
            log(f"decoder {args.cls} step {step}: l1 {a[0]:.4f} feat {a[1]:.4f} "
                f"({args.log_every / (time.time() - last):.2f} steps/s)")
            last = time.time()
        if step % args.save_every == 0:
            save(path, state())
    save(path, state())
    l1, fd = val()
    log(f"decoder {args.cls}: stopped at step {step} after {time.time() - t0:.0f} s; "
        f"validation L1 {l1:.4f} feature distance {fd:.4f}")


def stage_export_decoder(args):
    """Writes the per-class decoder (stage `decoder`) as --out/vae_decoder.onnx, checked against
    torch, and records it in --out/bundle.yaml's provenance."""
    import export_bundle as eb

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    ck = torch.load(os.path.join(args.work, f"decoder-{args.cls}.pt"), weights_only=False)
    ae = load_ae(args.work)
    ae.dec.load_state_dict(ck["model"])
    h = R // FACTOR

    def lat(b, rng):
        return {"latent": rng.standard_normal((b, LATENT, h, h)).astype(F32)}

    eb.export_roles([eb.Role("vae_decoder", DecoderRole(ae).eval(), ["latent"], ["image"], lat)], args.out, 1e-4, 1e-4, 0)
    manifest = os.path.join(args.out, "bundle.yaml")
    text = open(manifest).read()
    line = (f"  decoder: 'scripts/train_ldm.py decoder: the base autoencoder''s decoder fine-tuned {ck['step']} steps "
            f"on data/textures/{args.cls}/train/good (encoder unchanged)'\n")
    lines = [l for l in text.splitlines(keepends=True) if not l.startswith("  decoder: ")]
    at = next((i + 1 for i, l in enumerate(lines) if l.startswith("provenance:")), None)
    if at is None:
        raise SystemExit(f"error: {manifest} has no provenance section")
    lines.insert(at, line)
    with open(manifest, "w") as f:
        f.write("".join(lines))
    log(f"{args.out}/vae_decoder.onnx: decoder {args.cls} at step {ck['step']}")


def _exec_order(module, sd, example):
    """state_dict keys sorted by the first call of their owning module in a forward pass (the
    graph's order), so unnamed initializers can be matched in order."""
    calls, hooks = [], []
    for name, mod in module.named_modules():
        hooks.append(mod.register_forward_pre_hook(lambda m, a, name=name: calls.append(name)))
    with torch.no_grad():
        example()
    for h in hooks:
        h.remove()
    first = {}
    for i, n in enumerate(calls):
        first.setdefault(n, i)

    def key(k):
        return first.get(k.rsplit(".", 1)[0], -1)

    return {k: sd[k] for k in sorted(sd, key=key)}


def _load_initializers(module, files, prefix_strip, example=None):
    """Loads `module`'s parameters from the initializers of the ONNX `files`: by name (after a
    prefix in `prefix_strip`), else the next unnamed GroupNorm scale/shift or MatMul weight."""
    import onnx
    from onnx import numpy_helper

    sd = module.state_dict()
    if example is not None:
        sd = _exec_order(module, sd, example)
    named, ordered = {}, []
    for f in files:
        m = onnx.load(f)
        inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        named.update({k: v for k, v in inits.items()})
        seen = set()
        gn_in = {i for n in m.graph.node if n.name.startswith("node_group_norm") for i in n.input}
        for n in m.graph.node:
            if n.op_type in ("Mul", "Add", "MatMul") and len(n.input) > 1:
                i = n.input[1]
                if i in inits and not any(i.startswith(p) for p in prefix_strip) and i not in seen and inits[i].ndim >= 1 and inits[i].size > 1:
                    if n.op_type == "MatMul" or n.name.startswith("node_group_norm") or (n.op_type == "Mul" and n.output[0] in gn_in):
                        seen.add(i)
                        ordered.append((i, n.op_type, inits[i]))
    out = {}
    q = list(ordered)
    for k, v in sd.items():
        for p in prefix_strip:
            if p + k in named:
                out[k] = torch.from_numpy(np.array(named[p + k]))
                break
        else:
            if not q:
                raise SystemExit(f"error: {files[0]}: no initializer left for parameter {k}")
            name, op, a = q.pop(0)
            if op == "MatMul":
                a = a.T
            a = a.reshape(v.shape)
            out[k] = torch.from_numpy(np.array(a))
    if q:
        raise SystemExit(f"error: {files[0]}: {len(q)} unnamed initializers match no parameter")
    module.load_state_dict(out)
    return module


def stage_recover(args):
    """Rebuilds the checkpoints ae.pt and unet.pt from an exported bundle (--out), so training
    continues from a committed bundle when the torch checkpoints are gone. The ONNX exporter
    keeps parameter names except for GroupNorm scales/shifts and attention projections, which it
    stores unnamed (projections transposed); those are matched in the order the forward pass
    uses their modules, and the rebuilt models are checked against ONNX Runtime. The optimiser
    state is not in a bundle: it starts afresh (the EMA weights become the model's)."""
    import re
    import onnxruntime as ort

    b = args.out
    ae = AutoEncoder()
    _load_initializers(ae.enc, [os.path.join(b, "vae_encoder.onnx")], ["enc."])
    _load_initializers(ae.dec, [os.path.join(b, "vae_decoder.onnx")], ["dec."])
    u = make_unet()
    h = R // FACTOR
    _load_initializers(u, [os.path.join(b, "unet.onnx")], ["unet."],
                       lambda: u(torch.zeros(1, LATENT, h, h), torch.tensor([10])))
    ae.eval()
    u.eval()
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 3, R, R)).astype(F32)
    z = rng.standard_normal((2, LATENT, h, h)).astype(F32)
    ts = np.array([500, 20], np.int64)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    with torch.no_grad():
        checks = {
            "vae_encoder": (ort.InferenceSession(os.path.join(b, "vae_encoder.onnx"), so).run(None, {"image": x})[0],
                            ae.enc(torch.from_numpy(x))[0].numpy()),
            "vae_decoder": (ort.InferenceSession(os.path.join(b, "vae_decoder.onnx"), so).run(None, {"latent": z})[0],
                            ae.dec(torch.from_numpy(z)).numpy()),
            "unet": (ort.InferenceSession(os.path.join(b, "unet.onnx"), so).run(None, {"sample": z, "timestep": ts})[0],
                     u(torch.from_numpy(z), torch.from_numpy(ts)).sample.numpy()),
        }
    for name, (a, c) in checks.items():
        d = float(np.abs(a - c).max())
        log(f"recover: {name} torch vs ONNX Runtime max |diff| {d:.2e}")
        if not d < 1e-4:
            raise SystemExit(f"error: {b}/{name}.onnx: rebuilt torch model differs by {d:.2e} (expected < 1e-4)")
    with open(os.path.join(b, "bundle.yaml")) as f:
        text = f.read()
    steps = re.search(r"autoencoder (\d+) steps, UNet (\d+) steps", text)
    scale = re.search(r"scaling_factor: ([0-9.eE+-]+)", text)
    if not (steps and scale):
        raise SystemExit(f"error: {b}/bundle.yaml: expected provenance.weights with the step counts and latent.scaling_factor")
    gen = torch.Generator().manual_seed(args.seed + int(steps.group(2)))
    save(os.path.join(args.work, "ae.pt"), {"model": ae.state_dict(), "opt": None, "gen": gen.get_state(),
                                            "step": int(steps.group(1))})
    save(os.path.join(args.work, "unet.pt"), {"model": u.state_dict(), "ema": u.state_dict(), "opt": None,
                                              "gen": gen.get_state(), "step": int(steps.group(2)),
                                              "scale": float(scale.group(1))})
    with open(os.path.join(args.work, "origin.json"), "w") as f:
        json.dump({"bundle": os.path.normpath(b), "ae_step": int(steps.group(1)), "unet_step": int(steps.group(2)),
                   "weights": re.search(r"weights: (.*)", text).group(1).strip().strip('"')}, f, indent=1)
    log(f"recover: {args.work}/ae.pt (step {steps.group(1)}) and unet.pt (step {steps.group(2)}) from {b}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["ae", "unet", "decoder", "sample", "fidelity", "export", "export-decoder", "atp-bench",
                                     "recover"])
    p.add_argument("--work", required=True, help="checkpoint folder")
    p.add_argument("--data", default="data/textures")
    p.add_argument("--data-dir", help="ae, unet: pretrain on every PNG under this folder (e.g. .work/pretrain-set, "
                                      "scripts/make_pretrain_set.py) instead of --data's train normals")
    p.add_argument("--eval", action="append", metavar="DATASET",
                   help="ae, sample, fidelity: also report the validation normals of every class of this dataset "
                        "(e.g. data/unseen); repeatable")
    p.add_argument("--class", dest="cls", choices=CLASSES, help="decoder, export-decoder: the class")
    p.add_argument("--latent-channels", type=int, default=4,
                   help="latent channels of the autoencoder (and so of the UNet); a checkpoint folder keeps one value")
    p.add_argument("--out", help="bundle folder (export)")
    p.add_argument("--steps", type=int, default=2000, help="total steps of the stage")
    p.add_argument("--minutes", type=float, default=1e9, help="stop (and save) after this many minutes")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=32, help="autoencoder training crop side")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--every", type=int, default=4, help="sample: every n-th validation image")
    p.add_argument("--n", type=int, default=40, help="fidelity: validation normals per class (the first n)")
    p.add_argument("--json", help="fidelity: also write the rows to this JSON file")
    args = p.parse_args()
    globals()["LATENT"] = args.latent_channels
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    os.makedirs(args.work, exist_ok=True)
    if args.stage in ("export", "export-decoder", "recover") and not args.out:
        raise SystemExit(f"error: {args.stage} needs --out (the bundle folder)")
    {"ae": stage_ae, "unet": stage_unet, "sample": stage_sample, "export": stage_export, "atp-bench": stage_atp_bench,
     "recover": stage_recover, "decoder": stage_decoder, "export-decoder": stage_export_decoder,
     "fidelity": stage_fidelity}[args.stage](args)


if __name__ == "__main__":
    main()
