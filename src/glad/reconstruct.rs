//! Reconstruction of a batch with ADP and SAFF (GLAD.md, "Reconstruction with ADP and SAFF").
//! Every sample carries its own ADP state; the batch shares the UNet calls.

use anyhow::{ensure, Result};
use ndarray::{concatenate, s, Array2, Array4, ArrayView4, Axis, Zip};

use super::maps::resize_align_corners;
use super::schedule::{glad_grid, mix, predict_x0, AlphaBar, SchedulerConfig};
use super::{LatentMode, Models, Params};

/// The noise a reconstruction consumes: `n` samples the VAE latent (`latent: sample`), `eps`
/// noises the latents (and re-noises them for ADP). Both `[B, C, h, w]`.
#[derive(Debug, Clone)]
pub struct Noise {
    pub vae: Array4<f32>,
    pub eps: Array4<f32>,
}

/// Where and why a sample stopped searching.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdpStop {
    /// The grid timestep at which the sample stopped.
    pub step: i64,
    /// Its ADP score at that step.
    pub score: f32,
    /// true: `score > tau` (SAFF fused); false: `t < min_step` (x0 replaced by xa).
    pub on_threshold: bool,
}

#[derive(Debug, Clone)]
pub struct Reconstruction {
    /// Decoded reconstruction `[B, 3, R, R]`, never clamped.
    pub images: Array4<f32>,
    /// Per sample; `None` when ADP is off (`tau = 0`).
    pub adp: Vec<Option<AdpStop>>,
    /// Per sample, `(t, ADP score)` at every step where its score was computed (empty when
    /// ADP is off): what `tau` and `min_step` are tuned from.
    pub adp_trace: Vec<Vec<(i64, f32)>>,
    /// The input latents `z0` (scaled), kept for diagnostics.
    pub z0: Array4<f32>,
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// GLAD's reconstruction of the batch `x` (`[B, 3, R, R]` in [-1, 1]).
pub fn reconstruct<M: Models>(
    models: &mut M,
    sched: &SchedulerConfig,
    ab: &AlphaBar,
    p: &Params,
    x: ArrayView4<'_, f32>,
    noise: &Noise,
) -> Result<Reconstruction> {
    let b = x.shape()[0];
    let scale = models.scaling_factor();

    // 1. z0 = E(x) * scaling (sampled or mean).
    let (mean, std) = models.encode(x)?;
    ensure!(noise.eps.dim() == mean.dim(), "noise `eps` has shape {:?}, the latents {:?}", noise.eps.shape(), mean.shape());
    let z0 = match p.latent {
        LatentMode::Mean => mean.mapv(|m| m * scale),
        LatentMode::Sample => {
            ensure!(noise.vae.dim() == mean.dim(), "noise `vae` has shape {:?}, the latents {:?}", noise.vae.shape(), mean.shape());
            let mut z = mean;
            Zip::from(&mut z).and(&std).and(&noise.vae).for_each(|m, &s, &n| *m = (*m + s * n) * scale);
            z
        }
    };
    // 2. z = sqrt(ab[noise_step]) z0 + sqrt(1 - ab[noise_step]) eps.
    let ab_n = ab.at(p.noise_step as i64);
    let mut z = Zip::from(&z0).and(&noise.eps).map_collect(|&z0, &e| mix(ab_n, z0, e));

    let mut adp: Vec<Option<AdpStop>> = vec![None; b];
    let mut adp_trace: Vec<Vec<(i64, f32)>> = vec![Vec::new(); b];
    let adp_on = p.tau > 0.0;
    let (lat_h, lat_w) = (z.shape()[2], z.shape()[3]);

    // 3. The DDIM grid.
    for (index, step) in glad_grid(ab, sched, p.denoise_step, p.steps)?.into_iter().enumerate() {
        let (e_u, e_c) = models.eps_pair(z.view(), step.t)?;
        let e = Zip::from(&e_u).and(&e_c).map_collect(|&u, &c| u + p.guidance * (c - u));
        let mut x0 = Zip::from(&z).and(&e).map_collect(|&z, &e| predict_x0(step.ab, z, e));

        let searching: Vec<usize> = (0..b).filter(|&i| adp[i].is_none()).collect();
        // `adp_every` > 1 skips the score on the other steps, but never below min_step.
        let adp_now = index % p.adp_every.max(1) == 0 || step.t < p.min_step as i64;
        if adp_on && adp_now && !searching.is_empty() {
            // za: the input latents re-noised to t with the same eps; xa from the guided e.
            let sel = |a: &Array4<f32>| a.select(Axis(0), &searching);
            let (z0_s, eps_s, e_s) = (sel(&z0), sel(&noise.eps), sel(&e));
            let xa = Zip::from(&z0_s).and(&eps_s).and(&e_s).map_collect(|&z0, &eps, &e| predict_x0(step.ab, mix(step.ab, z0, eps), e));
            let x0_s = sel(&x0);
            // Decode [xa; x0] in one call, run the backbone on both in one call.
            let pair = concatenate(Axis(0), &[xa.view(), x0_s.view()])?.mapv(|v| v / scale);
            let decoded = models.decode(pair.view())?;
            let tokens = models.adp_tokens(decoded.view())?;
            let n = searching.len();
            ensure!(tokens.len() == 2 * n, "ADP backbone returned {} images for {}", tokens.len(), 2 * n);
            for (k, &i) in searching.iter().enumerate() {
                let (pa, pr) = (&tokens[k], &tokens[n + k]);
                let (map, score) = models.adp_score(pa, pr, p.adp_top_k)?;
                adp_trace[i].push((step.t, score));
                let on_threshold = score > p.tau;
                if !(on_threshold || step.t < p.min_step as i64) {
                    continue;
                }
                adp[i] = Some(AdpStop { step: step.t, score, on_threshold });
                let mut x0_i = x0.slice_mut(s![i, .., .., ..]);
                let xa_i = xa.slice(s![k, .., .., ..]);
                if on_threshold {
                    // SAFF: x0 = m x0 + (1 - m) xa with m = sigmoid(map), one value per latent
                    // position, broadcast over channels.
                    let grid = Array2::from_shape_vec(pa.grid, map)?;
                    let m = resize_align_corners(grid.view(), lat_h, lat_w).mapv(sigmoid);
                    for c in 0..x0_i.shape()[0] {
                        Zip::from(x0_i.index_axis_mut(Axis(0), c))
                            .and(xa_i.index_axis(Axis(0), c))
                            .and(&m)
                            .for_each(|x0, &xa, &m| *x0 = m * *x0 + (1.0 - m) * xa);
                    }
                } else {
                    x0_i.assign(&xa_i);
                }
            }
        }
        // DDIM update with the guided e (not re-derived from the fused x0).
        Zip::from(&mut z).and(&x0).and(&e).for_each(|z, &x0, &e| *z = mix(step.ab_prev, x0, e));
    }
    // 4. rec = D(z / scaling).
    let images = models.decode(z.mapv(|v| v / scale).view())?;
    Ok(Reconstruction { images, adp, adp_trace, z0 })
}
