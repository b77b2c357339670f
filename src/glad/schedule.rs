//! DDIM scheduler math (eta = 0) as Stable Diffusion v1.4's scheduler config defines it, with
//! GLAD's truncated timestep grid (GLAD.md, "Scheduler").

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    SquaredcosCapV2,
}

/// The scheduler part of a bundle manifest (diffusers' `scheduler_config.json` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    pub beta_schedule: BetaSchedule,
    #[serde(default = "default_beta_start")]
    pub beta_start: f64,
    #[serde(default = "default_beta_end")]
    pub beta_end: f64,
    #[serde(default = "default_train_timesteps")]
    pub train_timesteps: usize,
    #[serde(default = "one")]
    pub steps_offset: usize,
    #[serde(default)]
    pub set_alpha_to_one: bool,
}
fn default_beta_start() -> f64 {
    0.00085
}
fn default_beta_end() -> f64 {
    0.012
}
fn default_train_timesteps() -> usize {
    1000
}
fn one() -> usize {
    1
}

impl SchedulerConfig {
    /// Stable Diffusion v1.4's scheduler.
    pub fn sd14() -> Self {
        SchedulerConfig {
            beta_schedule: BetaSchedule::ScaledLinear,
            beta_start: 0.00085,
            beta_end: 0.012,
            train_timesteps: 1000,
            steps_offset: 1,
            set_alpha_to_one: false,
        }
    }
}

impl SchedulerConfig {
    /// Range checks, naming the key: betas finite in (0, 1) with start <= end, 2..=100000
    /// train timesteps, `steps_offset` below them.
    pub fn check(&self) -> Result<()> {
        for (k, v) in [("beta_start", self.beta_start), ("beta_end", self.beta_end)] {
            if !v.is_finite() || v <= 0.0 || v >= 1.0 {
                bail!("key `scheduler.{k}`: must be a finite number in (0, 1), got {v}");
            }
        }
        if self.beta_start > self.beta_end {
            bail!("key `scheduler.beta_start`: {} is above `scheduler.beta_end` {}", self.beta_start, self.beta_end);
        }
        if !(2..=100_000).contains(&self.train_timesteps) {
            bail!("key `scheduler.train_timesteps`: must be in 2..=100000, got {}", self.train_timesteps);
        }
        if self.steps_offset >= self.train_timesteps {
            bail!(
                "key `scheduler.steps_offset`: must be below `scheduler.train_timesteps` ({}), got {}",
                self.train_timesteps,
                self.steps_offset
            );
        }
        Ok(())
    }
}

/// `ab[t]` over all train timesteps, in float32 as the reference computes it.
#[derive(Debug, Clone)]
pub struct AlphaBar {
    ab: Vec<f32>,
    final_ab: f32,
}

fn linspace(a: f64, b: f64, n: usize) -> impl Iterator<Item = f64> {
    let step = if n > 1 { (b - a) / (n - 1) as f64 } else { 0.0 };
    (0..n).map(move |i| a + step * i as f64)
}

impl AlphaBar {
    pub fn new(cfg: &SchedulerConfig) -> Result<Self> {
        let n = cfg.train_timesteps;
        if n < 2 {
            bail!("key `scheduler.train_timesteps`: must be at least 2, got {n}");
        }
        let betas: Vec<f32> = match cfg.beta_schedule {
            BetaSchedule::Linear => linspace(cfg.beta_start, cfg.beta_end, n).map(|b| b as f32).collect(),
            // linspace of the square roots, squared in float32 (diffusers: `torch.linspace(...) ** 2`).
            BetaSchedule::ScaledLinear => linspace(cfg.beta_start.sqrt(), cfg.beta_end.sqrt(), n)
                .map(|b| {
                    let b = b as f32;
                    b * b
                })
                .collect(),
            // diffusers' betas_for_alpha_bar with the cosine alpha-bar, in float64, capped at 0.999.
            BetaSchedule::SquaredcosCapV2 => {
                let abar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
                (0..n)
                    .map(|i| {
                        let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                        (1.0 - abar(t2) / abar(t1)).min(0.999) as f32
                    })
                    .collect()
            }
        };
        // alphas = 1 - betas in float32; torch's CPU cumprod accumulates in float64 and rounds
        // each entry to float32 (bit-exact with the reference this way).
        let mut ab = Vec::with_capacity(n);
        let mut acc = 1.0f64;
        for b in betas {
            acc *= (1.0f32 - b) as f64;
            ab.push(acc as f32);
        }
        let final_ab = if cfg.set_alpha_to_one { 1.0 } else { ab[0] };
        Ok(AlphaBar { ab, final_ab })
    }

    pub fn len(&self) -> usize {
        self.ab.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ab.is_empty()
    }

    /// `ab[t]`; `t < 0` is the step after the last one (`ab[0]`, or 1 with `set_alpha_to_one`).
    pub fn at(&self, t: i64) -> f32 {
        if t < 0 {
            self.final_ab
        } else {
            self.ab[t as usize]
        }
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.ab
    }
}

/// One step of GLAD's grid: the UNet is called at `t`; the DDIM update goes to `prev_t`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub t: i64,
    pub ab: f32,
    pub ab_prev: f32,
}

/// GLAD's truncated DDIM grid: the reference sets the train-timestep count to `T` before
/// building a "leading" grid, so `ratio = T // K` and the timesteps are
/// `[(K-1)*ratio, ..., ratio, 0] + steps_offset` (721, 691, ..., 31, 1 for T=750, K=25).
/// The first UNet call is at 721 though the latents were noised to 750: the reference does so.
pub fn glad_grid(ab: &AlphaBar, cfg: &SchedulerConfig, denoise_step: usize, steps: usize) -> Result<Vec<Step>> {
    if steps == 0 {
        bail!("steps (K) must be at least 1");
    }
    if denoise_step >= ab.len() {
        bail!("denoise_step {denoise_step} must be below the scheduler's {} train timesteps", ab.len());
    }
    let ratio = denoise_step / steps;
    if ratio == 0 {
        bail!("denoise_step {denoise_step} must be at least steps {steps} (ratio T // K is 0)");
    }
    let first = (steps - 1) * ratio + cfg.steps_offset;
    if first >= ab.len() {
        bail!(
            "key `scheduler.steps_offset`: {} puts the first grid step {first} beyond the scheduler's {} train timesteps",
            cfg.steps_offset,
            ab.len()
        );
    }
    Ok((0..steps)
        .rev()
        .map(|i| {
            let t = (i * ratio + cfg.steps_offset) as i64;
            Step { t, ab: ab.at(t), ab_prev: ab.at(t - ratio as i64) }
        })
        .collect())
}

/// `sqrt(ab) x0 + sqrt(1 - ab) eps`, elementwise (also the DDIM update, with `ab_prev` and `e`).
#[inline]
pub fn mix(ab: f32, x0: f32, eps: f32) -> f32 {
    ab.sqrt() * x0 + (1.0 - ab).sqrt() * eps
}

/// `x0 = (z - sqrt(1 - ab) e) / sqrt(ab)`, elementwise.
#[inline]
pub fn predict_x0(ab: f32, z: f32, e: f32) -> f32 {
    (z - (1.0 - ab).sqrt() * e) / ab.sqrt()
}
