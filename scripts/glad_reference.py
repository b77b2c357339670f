#!/usr/bin/env python3
"""Independent reference of the GLAD engine: numpy + onnxruntime only.

Written from /work/shared/GLAD.md (the sections are mirrored below) and onnx/README.md
(the bundle manifest). It is the oracle the Rust engine's parity tests are built from
(scripts/make_parity_goldens.py), so it favours plain, readable code over speed.

Deliberate choices (see also tests/golden/parity/README.md):
- everything is float32 like the reference, except: alpha-bar is the cumulative product
  accumulated in float64 and rounded to float32 per entry (that is what torch.cumprod does
  on CPU for a float32 tensor: checked bit-exact against torch), the Gaussian kernel is
  float64 (as scipy), and the ADP token comparison stays float32 (the reference casts it
  to float16);
- the pixel term uses per-image maxima (the reference: maxima over the whole test batch);
- the object mask is all ones (texture classes).

Library use:  inspect(bundle_dir, images, vae_noise, eps, params) -> dict
CLI:          python3 scripts/glad_reference.py --bundle onnx/tiny \
                  --case tests/golden/parity/adp_threshold --threads 1
"""
import argparse
import math
import os
import sys
import time

import numpy as np
import onnxruntime as ort
import yaml

F32 = np.float32
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], F32).reshape(1, 3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], F32).reshape(1, 3, 1, 1)


# ----------------------------------------------------------------------------------------
# Scheduler (DDIM, eta = 0)
# ----------------------------------------------------------------------------------------
def make_betas(schedule, beta_start, beta_end, n):
    """Betas as diffusers builds them, float32."""
    if schedule == "linear":
        return np.linspace(beta_start, beta_end, n).astype(F32)
    if schedule == "scaled_linear":  # torch.linspace(sqrt(a), sqrt(b), n, float32) ** 2
        return np.linspace(beta_start**0.5, beta_end**0.5, n).astype(F32) ** 2
    if schedule == "squaredcos_cap_v2":  # betas_for_alpha_bar(cosine), float64, cap 0.999
        abar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.array([min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)]).astype(F32)
    raise ValueError(f"unknown beta_schedule {schedule!r}")


def alphas_cumprod(sched):
    """ab over ALL train timesteps (float32 output; torch.cumprod accumulates in float64 on CPU)."""
    betas = make_betas(sched.get("beta_schedule", "scaled_linear"), sched.get("beta_start", 0.00085),
                       sched.get("beta_end", 0.012), sched.get("train_timesteps", 1000))
    alphas = (F32(1) - betas).astype(F32)
    return np.cumprod(alphas.astype(np.float64)).astype(F32)


def ddim_grid(T, K, steps_offset=1):
    """GLAD's truncated grid: ratio = T // K, [(K-1)*ratio, ..., ratio, 0] + steps_offset."""
    ratio = T // K
    return (np.arange(K - 1, -1, -1, dtype=np.int64) * ratio + steps_offset), ratio


def ab_prev_of(ab, t, ratio, set_alpha_to_one=False):
    prev = t - ratio
    if prev >= 0:
        return ab[prev]
    return F32(1.0) if set_alpha_to_one else ab[0]


# ----------------------------------------------------------------------------------------
# Image helpers: align_corners bilinear resize, ImageNet normalisation, blur, top-k
# ----------------------------------------------------------------------------------------
def _axis_weights(n_in, n_out):
    """align_corners=True source indices and weights (float32 like torch's CPU kernel)."""
    scale = F32((n_in - 1) / (n_out - 1)) if n_out > 1 else F32(0)
    src = scale * np.arange(n_out, dtype=F32)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = (src - i0.astype(F32)).astype(F32)
    return i0, i1, lam


def resize_ac(a, out_h, out_w):
    """Bilinear resize with align_corners=True over the last two axes of a float32 array."""
    a = np.asarray(a, F32)
    h0, h1, lh = _axis_weights(a.shape[-2], out_h)
    w0, w1, lw = _axis_weights(a.shape[-1], out_w)
    a = a[..., w0] * (F32(1) - lw) + a[..., w1] * lw  # width first
    a = a[..., h0, :] * (F32(1) - lh)[:, None] + a[..., h1, :] * lh[:, None]
    return a.astype(F32)


def imagenet_normalise(x):
    """[-1,1] -> [0,1] -> ImageNet mean/std."""
    return (((x + F32(1)) / F32(2) - IMAGENET_MEAN) / IMAGENET_STD).astype(F32)


def gaussian_blur(m, sigma, border="reflect"):
    """Separable Gaussian blur of each image of [..., H, W] (GLAD.md, final map step 5): radius
    int(4*sigma+0.5), normalised float64 kernel, rows (axis -2) first then columns, rounded to
    float32 after each pass.

    border="reflect" is the final map's rule: kornia's gaussian_blur2d(border_type="reflect"),
    which pads like torch and numpy.pad(mode="reflect"): the edge sample is NOT repeated
    (x2 x1 | x0 x1 x2). torch refuses that padding when the side is not above the radius, so
    such maps are refused here too. border="symmetric" (numpy's name; SciPy calls it
    "reflect") repeats the edge: the rule of scipy.ndimage.gaussian_filter, which the
    reference's dataset code uses for the object mask (step 6)."""
    if sigma <= 0:
        return m.astype(F32)
    r = int(4.0 * sigma + 0.5)
    if border == "reflect" and min(m.shape[-2:]) <= r:
        raise ValueError(f"map {m.shape[-2:]} is not larger than the blur radius {r} (torch refuses reflect padding)")
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * x * x / (sigma * sigma))
    k /= k.sum()
    out = np.asarray(m, F32)
    for axis in (-2, -1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (r, r)
        p = np.pad(out.astype(np.float64), pad, mode=border)
        win = np.lib.stride_tricks.sliding_window_view(p, 2 * r + 1, axis=axis)
        out = (win @ k).astype(F32)
    return out


def topk_mean(a, k):
    """Mean of the k largest values of each row of [B, N]."""
    k = min(k, a.shape[1])
    return np.sort(a, axis=1)[:, -k:].mean(axis=1, dtype=np.float64).astype(F32)


def sigmoid(x):
    return (F32(1) / (F32(1) + np.exp(-x))).astype(F32)


def l2_normalise(t):
    return (t / np.linalg.norm(t, axis=-1, keepdims=True)).astype(F32)


# ----------------------------------------------------------------------------------------
# Bundle: the ONNX models of onnx/<name>/bundle.yaml
# ----------------------------------------------------------------------------------------
class Bundle:
    def __init__(self, bundle_dir, threads=1, sessions=True):
        """sessions=False reads the manifest, prompts and scheduler only (a subclass brings the
        models: scripts/torch_reference.py)."""
        self.dir = bundle_dir
        with open(os.path.join(bundle_dir, "bundle.yaml")) as f:
            self.cfg = yaml.safe_load(f)
        c = self.cfg
        assert c.get("space", "latent") == "latent", "the reference implements latent bundles only"
        self.R = int(c["resolution"])
        self.scaling = F32(c["latent"]["scaling_factor"])
        self.lat = self.R // int(c["latent"]["factor"])
        m = c["models"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sessions = {}
        for role in ("vae_encoder", "unet", "vae_decoder", "backbone", "adp_backbone"):
            if m.get(role) and sessions:
                path = os.path.join(bundle_dir, m[role]["file"])
                self.sessions[role] = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.m = m
        self.adp_role = "adp_backbone" if m.get("adp_backbone") else "backbone"
        self.S = int(m["backbone"]["resolution"])
        self.cond = np.load(os.path.join(bundle_dir, c["prompt"]["cond"])).astype(F32)
        self.uncond = np.load(os.path.join(bundle_dir, c["prompt"]["uncond"])).astype(F32)
        s = c.get("scheduler", {})
        self.ab = alphas_cumprod(s)
        self.steps_offset = int(s.get("steps_offset", 1))
        self.set_alpha_to_one = bool(s.get("set_alpha_to_one", False))

    def _run(self, role, feeds, names=None):
        return self.sessions[role].run(names, feeds)

    def encode(self, x):
        """-> (mean, std) of the latent distribution."""
        e = self.m["vae_encoder"]
        outs = self._run("vae_encoder", {e["input"]: x.astype(F32)}, e["outputs"])
        kind = e.get("output", "mean_logvar")
        if kind == "moments":  # [B,2C,h,w], mean first (diffusers DiagonalGaussianDistribution)
            mean, logvar = np.split(outs[0], 2, axis=1)
        else:
            mean, second = outs
            if kind == "mean_std":
                return mean.astype(F32), second.astype(F32)
            logvar = second
        logvar = np.clip(logvar.astype(F32), -30.0, 20.0)  # as diffusers' DiagonalGaussianDistribution
        return mean.astype(F32), np.exp(F32(0.5) * logvar).astype(F32)

    def unet(self, z, t, ctx):
        u = self.m["unet"]
        sess = self.sessions["unet"]
        tin = next(i for i in sess.get_inputs() if i.name == u["timestep"])
        dtype = np.int64 if u.get("timestep_type", "int64") == "int64" else F32
        ts = np.full((z.shape[0],), t, dtype=dtype)
        if len(tin.shape) == 0:
            ts = ts[0]
        elif tin.shape[0] == 1:
            ts = ts[:1]
        return self._run("unet", {u["sample"]: z.astype(F32), u["timestep"]: ts,
                                  u["context"]: ctx}, [u["output"]])[0].astype(F32)

    def decode(self, latent):
        d = self.m["vae_decoder"]
        return self._run("vae_decoder", {d["input"]: latent.astype(F32)}, [d["output"]])[0].astype(F32)

    def features(self, role, img, last_only=False):
        """Token sets [B,N,C] (CLS dropped, L2-normalised) and the grid side, per layer."""
        b = self.m[role]
        names = list(b["outputs"])[-1:] if last_only else list(b["outputs"])
        outs = self._run(role, {b["input"]: img.astype(F32)}, names)
        res = []
        for o in outs:
            if b.get("layout", "tokens") == "tokens":
                tok = o[:, 1:, :]
            else:  # feature_map [B,C,h,w]
                tok = o.reshape(o.shape[0], o.shape[1], -1).transpose(0, 2, 1)
            g = int(round(math.sqrt(tok.shape[1])))
            assert g * g == tok.shape[1], f"{role}: {tok.shape[1]} tokens is not a square grid"
            res.append((l2_normalise(tok.astype(F32)), g))
        return res


def _min_cos_dist(pa, pb):
    """d[b,i,j] = 1 - <pa_i, pb_j> (float32)."""
    return (F32(1) - np.einsum("bic,bjc->bij", pa, pb)).astype(F32)


# ----------------------------------------------------------------------------------------
# Reconstruction with ADP and SAFF (one batch; every sample has its own state)
# ----------------------------------------------------------------------------------------
def reconstruct(bd, x, vae_noise, eps, p, log=None):
    B, sf, ab = x.shape[0], bd.scaling, bd.ab
    T, K = int(p["denoise_step"]), int(p["steps"])
    w, tau, min_step = F32(p["guidance"]), float(p["tau"]), int(p["min_step"])
    adp_k = int(p.get("adp_top_k", 10))
    # 1. z0 = E(x) * 0.18215 (sampled or mean)
    mean, std = bd.encode(x)
    z0 = (mean + std * vae_noise if p.get("latent", "sample") == "sample" else mean) * sf
    z0 = z0.astype(F32)
    # 2. z = sqrt(ab[n]) z0 + sqrt(1-ab[n]) eps, n = noise_step (T, or T-1 for VisA style)
    n = int(p.get("noise_step", T))
    z = (np.sqrt(ab[n]) * z0 + np.sqrt(F32(1) - ab[n]) * eps).astype(F32)
    timesteps, ratio = ddim_grid(T, K, bd.steps_offset)
    ctx = np.concatenate([np.repeat(bd.uncond, B, 0), np.repeat(bd.cond, B, 0)]).astype(F32)
    searching = np.ones(B, bool)
    adp_step = np.full(B, -1, np.int64)
    adp_score = np.full(B, np.nan, F32)
    adp_reason = ["none"] * B
    trajectory = []  # (t, scores [B]) for every step ADP ran
    # 3. the grid
    for t in timesteps:
        a = ab[t]
        a_prev = ab_prev_of(ab, int(t), ratio, bd.set_alpha_to_one)
        sa, s1a = np.sqrt(a), np.sqrt(F32(1) - a)
        # classifier-free guidance: batch [z, z] with [uncond, cond]
        e_u, e_c = np.split(bd.unet(np.concatenate([z, z]), int(t), ctx), 2)
        e = (e_u + w * (e_c - e_u)).astype(F32)
        x0 = ((z - s1a * e) / sa).astype(F32)
        # ADP
        if tau > 0 and searching.any():
            za = (sa * z0 + s1a * eps).astype(F32)          # same eps as step 2
            xa = ((za - s1a * e) / sa).astype(F32)          # guided e predicted at z
            imgs = bd.decode(np.concatenate([xa, x0]) / sf)  # one decoder call, 2B
            (tok, g), = bd.features(bd.adp_role, imgs, last_only=True)  # as decoded
            amap = _min_cos_dist(tok[:B], tok[B:]).min(axis=2)  # [B, N] over recon patches
            score = topk_mean(amap, adp_k)
            trajectory.append((int(t), score.copy()))
            grid = amap.reshape(B, 1, g, g)
            if g != bd.lat:  # coarser CNN backbone: resample the map onto the latent grid
                grid = resize_ac(grid, bd.lat, bd.lat)
            m = sigmoid(grid)  # broadcast over the latent channels
            for i in np.flatnonzero(searching):
                if score[i] > tau:  # SAFF
                    x0[i] = m[i] * x0[i] + (F32(1) - m[i]) * xa[i]
                    adp_reason[i] = "threshold"
                elif t < min_step:
                    x0[i] = xa[i]
                    adp_reason[i] = "min_step"
                else:
                    continue
                searching[i] = False
                adp_step[i], adp_score[i] = t, score[i]
            if log:
                log(f"  t={int(t):4d} adp scores " + " ".join(f"{s:.5f}" for s in score))
        # DDIM update with the guided e
        z = (np.sqrt(a_prev) * x0 + np.sqrt(F32(1) - a_prev) * e).astype(F32)
    # 4. rec = D(z / 0.18215), never clamped
    rec = bd.decode(z / sf)
    return dict(z0=z0, timesteps=timesteps, rec=rec, adp_step=adp_step, adp_score=adp_score,
                adp_reason=adp_reason, trajectory=trajectory)


# ----------------------------------------------------------------------------------------
# Final anomaly map and score
# ----------------------------------------------------------------------------------------
def anomaly_map(bd, x, rec, p):
    B, S = x.shape[0], int(p.get("resolution", bd.S))
    xs = imagenet_normalise(resize_ac(x, S, S))
    rs = imagenet_normalise(resize_ac(rec, S, S))
    amap = np.zeros((B, S, S), F32)
    for tok, g in bd.features("backbone", np.concatenate([xs, rs])):
        d = _min_cos_dist(tok[:B], tok[B:])  # [B, Nx, Nrec]
        amap += resize_ac(d.min(axis=2).reshape(B, g, g), S, S)
        if p.get("symmetric", False):
            amap += resize_ac(d.min(axis=1).reshape(B, g, g), S, S)
    v = float(p.get("v", 0.0))
    if v > 0:  # pixel term, per-image maxima
        dpx = np.abs(xs - rs).mean(axis=1)
        ratio = amap.reshape(B, -1).max(1) / dpx.reshape(B, -1).max(1)
        amap = (amap + F32(v) * ratio[:, None, None].astype(F32) * dpx).astype(F32)
    amap = gaussian_blur(amap, float(p.get("blur_sigma", 6.0)), border="reflect")  # kornia's rule
    amap = amap * np.ones_like(amap)  # object mask: all ones (texture classes)
    score = topk_mean(amap.reshape(B, -1), int(p.get("top_k", 250)))
    return amap, score


def inspect(bundle_dir, images, vae_noise, eps, params, threads=1, log=None, bundle=None):
    """Run GLAD on one batch; returns every intermediate the parity goldens hold."""
    bd = bundle or Bundle(bundle_dir, threads)
    t0 = time.perf_counter()
    out = reconstruct(bd, images.astype(F32), vae_noise.astype(F32), eps.astype(F32), params, log)
    t1 = time.perf_counter()
    out["map"], out["score"] = anomaly_map(bd, images.astype(F32), out["rec"], params)
    t2 = time.perf_counter()
    out["seconds"] = dict(reconstruct=t1 - t0, map=t2 - t1, total=t2 - t0,
                          per_image=(t2 - t0) / images.shape[0])
    return out


# ----------------------------------------------------------------------------------------
# CLI: run a parity case and check it against its golden files
# ----------------------------------------------------------------------------------------
TOLERANCES = {  # name: (atol, rtol)
    "z0": (1e-4, 1e-4), "adp_score": (1e-4, 1e-4), "rec": (1e-3, 1e-3),
    "map": (1e-3, 1e-3), "score": (1e-4, 1e-4),
}


def check_case(out, case_dir):
    ok = True
    for name in ("timesteps", "adp_step"):
        g = np.load(os.path.join(case_dir, f"{name}.npy"))
        same = np.array_equal(g, np.asarray(out[name]))
        ok &= same
        print(f"  {name:10s} {'ok' if same else 'MISMATCH'} {np.asarray(out[name]).tolist()}")
    for name, (atol, rtol) in TOLERANCES.items():
        g = np.load(os.path.join(case_dir, f"{name}.npy"))
        diff = float(np.max(np.abs(g - out[name])))
        good = bool(np.allclose(out[name], g, atol=atol, rtol=rtol))
        ok &= good
        print(f"  {name:10s} {'ok' if good else 'MISMATCH'} max|diff| {diff:.3e}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=None, help="bundle folder (default: the case's bundle)")
    ap.add_argument("--case", required=True, help="tests/golden/parity/<case>")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    with open(os.path.join(a.case, "case.yaml")) as f:
        params = yaml.safe_load(f)
    bundle = a.bundle or params["bundle"]
    ld = lambda n: np.load(os.path.join(a.case, f"{n}.npy"))
    images, vae_noise, eps = ld("images"), ld("vae_noise"), ld("eps")
    t = time.perf_counter()
    bd = Bundle(bundle, a.threads)
    load_s = time.perf_counter() - t
    out = inspect(bundle, images, vae_noise, eps, params, log=print if a.verbose else None, bundle=bd)
    s = out["seconds"]
    print(f"case {a.case}: B={images.shape[0]} load {load_s:.2f}s reconstruct {s['reconstruct']:.2f}s "
          f"map {s['map']:.2f}s -> {s['per_image']:.3f}s per image ({a.threads} thread(s))")
    print(f"  adp_step {out['adp_step'].tolist()} reasons {out['adp_reason']} score {out['score'].tolist()}")
    ok = check_case(out, a.case)
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
