//! The ATP sample (GLAD.md, "ATP training", steps 2-5): latents of the normal and the
//! synthesised image, a timestep, the interpolated latent, the noised input and the target.
//!
//! The target is the reference code's (`predict_eps(alphas_cumprod, synthesis_features,
//! supervise_input, ...)` in GLAD's main.py): `y = (sqrt(ab) zs + sqrt(1-ab) eps - sqrt(ab) zn)
//! / sqrt(1-ab) = eps + sqrt(ab)/sqrt(1-ab) (zs - zn)`, the noise whose x0-prediction from
//! `zt` is exactly the normal latent `zn`. GLAD.md's step 5 has `zs` and `zn` swapped, a
//! target whose x0-prediction is `2 zs - zn`: it teaches the UNet to double an anomaly.
//!
//! The horizon `H` (beyond GLAD, which has `H = N`, the scheduler's train timesteps) is the
//! timestep at which the anomaly is fully present: `t ~ U{0..H-1}` and `alpha = t / H`. GLAD
//! models a trajectory from pure noise at N, so at a start step T far below N its UNet has
//! only learnt to remove `T/N` of an anomaly, while at inference the anomaly is all there at
//! T. With `H` at the largest start step inference uses, the UNet learns to remove the whole
//! anomaly from T and spends every sample on the timesteps inference visits.

use anyhow::{ensure, Result};
use ndarray::{Array4, ArrayView4, Zip};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::glad::schedule::AlphaBar;

/// One batch of UNet inputs and targets.
#[derive(Debug, Clone)]
pub struct AtpBatch {
    /// `zt = sqrt(ab[t]) zs + sqrt(1 - ab[t]) eps`, `[B, C, h, w]`.
    pub zt: Array4<f32>,
    /// `t` per sample, uniform in `{0, ..., horizon - 1}`.
    pub t: Vec<i64>,
    /// `y = eps + sqrt(ab[t]) / sqrt(1 - ab[t]) * (zs - zn)`, computed in float64.
    pub target: Array4<f32>,
}

/// `mean + std * n` per element with `n ~ N(0, 1)` from `rng`, times `scale` (a sampled latent).
pub fn sample_latent(mean: ArrayView4<'_, f32>, std: ArrayView4<'_, f32>, scale: f32, rng: &mut ChaCha8Rng) -> Array4<f32> {
    let mut z = Array4::<f32>::zeros(mean.raw_dim());
    Zip::from(&mut z).and(mean).and(std).for_each(|z, &m, &s| {
        let n: f32 = rng.sample(StandardNormal);
        *z = (m + s * n) * scale;
    });
    z
}

/// Checks a horizon against the scheduler: `1..=N`.
pub fn check_horizon(horizon: usize, ab: &AlphaBar) -> Result<()> {
    ensure!((1..=ab.len()).contains(&horizon), "--horizon {horizon}: must be in 1..={} (the bundle's scheduler.train_timesteps)", ab.len());
    Ok(())
}

/// Draws `t` (per sample, below `horizon`) and `eps` from `rng` and builds the batch. `zn`,
/// `za` are the (scaled) latents of the normal and the synthesised images.
pub fn draw(zn: ArrayView4<'_, f32>, za: ArrayView4<'_, f32>, ab: &AlphaBar, horizon: usize, rng: &mut ChaCha8Rng) -> Result<AtpBatch> {
    check_horizon(horizon, ab)?;
    let b = zn.shape()[0];
    let t: Vec<i64> = (0..b).map(|_| rng.random_range(0..horizon as i64)).collect();
    let eps = Array4::from_shape_simple_fn(zn.raw_dim(), || rng.sample::<f32, _>(StandardNormal));
    build(zn, za, &t, eps.view(), ab, horizon)
}

/// The deterministic part: `alpha = t / H` (H = the horizon; GLAD: the train timesteps N),
/// `zs = alpha za + (1 - alpha) zn`, `zt = sqrt(ab[t]) zs + sqrt(1 - ab[t]) eps`,
/// `y = eps + sqrt(ab[t]) / sqrt(1 - ab[t]) (zs - zn)`, all in float64, cast to float32 at the end.
pub fn build(
    zn: ArrayView4<'_, f32>,
    za: ArrayView4<'_, f32>,
    t: &[i64],
    eps: ArrayView4<'_, f32>,
    ab: &AlphaBar,
    horizon: usize,
) -> Result<AtpBatch> {
    check_horizon(horizon, ab)?;
    ensure!(
        zn.shape() == za.shape() && zn.shape() == eps.shape(),
        "ATP: latent shapes differ: {:?}, {:?}, {:?}",
        zn.shape(),
        za.shape(),
        eps.shape()
    );
    ensure!(t.len() == zn.shape()[0], "ATP: {} timesteps for a batch of {}", t.len(), zn.shape()[0]);
    let h = horizon as f64;
    let mut zt = Array4::<f32>::zeros(zn.raw_dim());
    let mut target = Array4::<f32>::zeros(zn.raw_dim());
    for (i, &ti) in t.iter().enumerate() {
        ensure!((0..horizon as i64).contains(&ti), "ATP: timestep {ti} outside [0, {horizon})");
        let a = ab.at(ti) as f64;
        let alpha = ti as f64 / h;
        let (sa, s1a) = (a.sqrt(), (1.0 - a).sqrt());
        Zip::from(zt.slice_mut(ndarray::s![i, .., .., ..]))
            .and(target.slice_mut(ndarray::s![i, .., .., ..]))
            .and(zn.slice(ndarray::s![i, .., .., ..]))
            .and(za.slice(ndarray::s![i, .., .., ..]))
            .and(eps.slice(ndarray::s![i, .., .., ..]))
            .for_each(|zt, y, &zn, &za, &e| {
                let (zn, za, e) = (zn as f64, za as f64, e as f64);
                let zs = alpha * za + (1.0 - alpha) * zn;
                *zt = (sa * zs + s1a * e) as f32;
                *y = (e + sa / s1a * (zs - zn)) as f32;
            });
    }
    Ok(AtpBatch { zt, t: t.to_vec(), target })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::glad::schedule::SchedulerConfig;
    use rand::SeedableRng;

    #[test]
    fn target_matches_the_closed_form() {
        let ab = AlphaBar::new(&SchedulerConfig::sd14()).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let shape = (3, 2, 3, 3);
        let zn = Array4::from_shape_simple_fn(shape, || rng.sample::<f32, _>(StandardNormal));
        let za = Array4::from_shape_simple_fn(shape, || rng.sample::<f32, _>(StandardNormal));
        let eps = Array4::from_shape_simple_fn(shape, || rng.sample::<f32, _>(StandardNormal));
        let t = [0i64, 500, 999];
        let b = build(zn.view(), za.view(), &t, eps.view(), &ab, 1000).unwrap();
        for (i, &ti) in t.iter().enumerate() {
            let a = ab.at(ti) as f64;
            let alpha = ti as f64 / 1000.0;
            for ((_, c, y, x), &e) in eps.indexed_iter().filter(|((j, ..), _)| *j == i) {
                let (n, an) = (zn[[i, c, y, x]] as f64, za[[i, c, y, x]] as f64);
                let zs = alpha * an + (1.0 - alpha) * n;
                let zt = a.sqrt() * zs + (1.0 - a).sqrt() * e as f64;
                // the reference's predict_eps: (sqrt(ab) zs + sqrt(1-ab) eps - sqrt(ab) zn) / sqrt(1-ab)
                let y1 = (a.sqrt() * zs + (1.0 - a).sqrt() * e as f64 - a.sqrt() * n) / (1.0 - a).sqrt();
                assert!((b.zt[[i, c, y, x]] as f64 - zt).abs() < 1e-6);
                assert!((b.target[[i, c, y, x]] as f64 - y1).abs() < 1e-5 * y1.abs().max(1.0), "t={ti}");
                // what it is for: the x0-prediction of zt with noise y is the normal latent
                if ti > 0 {
                    let x0 = (zt - (1.0 - a).sqrt() * b.target[[i, c, y, x]] as f64) / a.sqrt();
                    assert!((x0 - n).abs() < 1e-4 * n.abs().max(1.0), "t={ti}: x0 {x0} vs zn {n}");
                }
            }
        }
        // t = 0: alpha = 0 so zs = zn and the target is eps exactly.
        assert_eq!(b.target.slice(ndarray::s![0, .., .., ..]), eps.slice(ndarray::s![0, .., .., ..]));
        // with za = zn the target is eps for every t (a normal sample).
        let b2 = build(zn.view(), zn.view(), &t, eps.view(), &ab, 1000).unwrap();
        assert!(b2.target.iter().zip(eps.iter()).all(|(a, b)| (a - b).abs() < 1e-6));
    }

    #[test]
    fn draw_is_seeded_and_covers_the_range() {
        let ab = AlphaBar::new(&SchedulerConfig::sd14()).unwrap();
        let z = Array4::<f32>::zeros((64, 1, 1, 1));
        let a = draw(z.view(), z.view(), &ab, 1000, &mut ChaCha8Rng::seed_from_u64(9)).unwrap();
        let b = draw(z.view(), z.view(), &ab, 1000, &mut ChaCha8Rng::seed_from_u64(9)).unwrap();
        assert_eq!(a.t, b.t);
        assert_eq!(a.zt, b.zt);
        assert!(a.t.iter().all(|t| (0..1000).contains(t)));
        assert!(a.t.iter().any(|&t| t < 500) && a.t.iter().any(|&t| t >= 500));
    }

    #[test]
    fn horizon_makes_the_anomaly_whole_at_its_end() {
        let ab = AlphaBar::new(&SchedulerConfig::sd14()).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let shape = (2, 1, 2, 2);
        let zn = Array4::from_shape_simple_fn(shape, || rng.sample::<f32, _>(StandardNormal));
        let za = Array4::from_shape_simple_fn(shape, || rng.sample::<f32, _>(StandardNormal));
        let eps = Array4::from_shape_simple_fn(shape, || rng.sample::<f32, _>(StandardNormal));
        // t = 150 with horizon 300: alpha = 0.5, against 0.15 with GLAD's horizon 1000.
        let t = [150i64, 299];
        let b = build(zn.view(), za.view(), &t, eps.view(), &ab, 300).unwrap();
        for (i, &ti) in t.iter().enumerate() {
            let a = ab.at(ti) as f64;
            let alpha = ti as f64 / 300.0;
            for ((_, c, y, x), &e) in eps.indexed_iter().filter(|((j, ..), _)| *j == i) {
                let zs = alpha * za[[i, c, y, x]] as f64 + (1.0 - alpha) * zn[[i, c, y, x]] as f64;
                let want = e as f64 + a.sqrt() / (1.0 - a).sqrt() * (zs - zn[[i, c, y, x]] as f64);
                assert!((b.target[[i, c, y, x]] as f64 - want).abs() < 1e-5 * want.abs().max(1.0));
                assert!((b.zt[[i, c, y, x]] as f64 - (a.sqrt() * zs + (1.0 - a).sqrt() * e as f64)).abs() < 1e-6);
            }
        }
        // draws stay below the horizon; a timestep at or past it and a horizon of 0 or past N are refused
        let z = Array4::<f32>::zeros((64, 1, 1, 1));
        let d = draw(z.view(), z.view(), &ab, 300, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
        assert!(d.t.iter().all(|t| (0..300).contains(t)) && d.t.iter().any(|&t| t >= 150));
        assert!(build(zn.view(), za.view(), &[300, 0], eps.view(), &ab, 300).unwrap_err().to_string().contains("outside [0, 300)"));
        for bad in [0, 1001] {
            let e = draw(z.view(), z.view(), &ab, bad, &mut ChaCha8Rng::seed_from_u64(1)).unwrap_err().to_string();
            assert!(e.contains(&format!("--horizon {bad}: must be in 1..=1000")), "{e}");
        }
    }

    #[test]
    fn sampled_latent_is_mean_plus_std_noise_scaled() {
        let mean = Array4::from_elem((1, 1, 1, 4), 2.0f32);
        let std = Array4::<f32>::zeros((1, 1, 1, 4));
        let z = sample_latent(mean.view(), std.view(), 0.5, &mut ChaCha8Rng::seed_from_u64(0));
        assert!(z.iter().all(|&v| v == 1.0));
    }
}
