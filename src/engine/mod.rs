//! The engine: a validated bundle plus resolved GLAD parameters; a batch of preprocessed
//! images in, a batch of inspections out. It knows no sources or sinks.

mod noise;
mod onnx_models;

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ndarray::{Array2, Array3, ArrayView4, Axis};

pub use noise::NoiseSource;
pub use onnx_models::{ModelTimes, OnnxModels};

use crate::bundle::Bundle;
use crate::glad::reconstruct::{AdpStop, Noise};
use crate::glad::schedule::{AlphaBar, SchedulerConfig};
use crate::glad::{anomaly_maps, reconstruct, Checked, Models, Params};

/// Per-batch timing of each stage.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StageTimes {
    /// ONNX Runtime time per model role.
    pub models: ModelTimes,
    /// Reconstruction (encode, UNet steps, ADP, decode), wall time.
    pub reconstruct: Duration,
    /// Final anomaly map and score, wall time.
    pub anomaly_map: Duration,
}

/// The result of inspecting one image.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub score: f32,
    /// `None` when ADP is off.
    pub adp: Option<AdpStop>,
    /// `[S, S]` anomaly map.
    pub map: Array2<f32>,
    /// `[3, R, R]` reconstruction in about [-1, 1].
    pub reconstruction: Array3<f32>,
}

pub struct Engine {
    pub bundle: Bundle,
    pub params: Params,
    ab: AlphaBar,
}

impl Engine {
    pub fn new(bundle: Bundle, params: Params) -> Result<Engine> {
        let s = bundle.manifest.models.backbone.resolution;
        if params.backbone_resolution != s {
            bail!(
                "backbone_resolution {} differs from the bundle's backbone resolution {s} ({}): export the backbone at that size",
                params.backbone_resolution,
                bundle.dir.join(&bundle.manifest.models.backbone.file).display()
            );
        }
        let ab = AlphaBar::new(&bundle.manifest.scheduler)?;
        if params.denoise_step >= ab.len() {
            bail!(
                "key `denoise_step`: {} must be below `scheduler.train_timesteps` ({}) of {}",
                params.denoise_step,
                ab.len(),
                bundle.dir.join(crate::bundle::Manifest::FILE).display()
            );
        }
        Ok(Engine { bundle, params, ab })
    }

    /// `(channels, side)` of the latents a noise source must provide.
    pub fn latent_shape(&self) -> (usize, usize) {
        self.bundle.latent_shape()
    }

    pub fn resolution(&self) -> usize {
        self.bundle.manifest.resolution
    }

    /// Inspects a batch `[B, 3, R, R]` in [-1, 1] with the given noise.
    pub fn inspect(&mut self, x: ArrayView4<'_, f32>, noise: &Noise) -> Result<(Vec<Inspection>, StageTimes)> {
        let r = self.resolution();
        if x.shape()[1..] != [3, r, r] {
            bail!("input batch has shape {:?}, expected [B,3,{r},{r}]", x.shape());
        }
        let sched = self.bundle.manifest.scheduler.clone();
        let latent = self.latent_shape();
        let mut models = OnnxModels::new(&mut self.bundle);
        let (out, reconstruct, anomaly_map) = inspect_with(&mut models, &sched, &self.ab, &self.params, latent, x, noise)?;
        let times = StageTimes { models: models.times.clone(), reconstruct, anomaly_map };
        Ok((out, times))
    }
}

/// GLAD on a batch with any [`Models`] (checked by [`Checked`]: a wrong shape, a wrong batch,
/// NaN or Inf from a model is an error of this batch): the inspections, and the wall times of
/// the reconstruction and of the anomaly maps. `latent` is `(channels, side)`.
pub fn inspect_with<M: Models>(
    models: &mut M,
    sched: &SchedulerConfig,
    ab: &AlphaBar,
    params: &Params,
    latent: (usize, usize),
    x: ArrayView4<'_, f32>,
    noise: &Noise,
) -> Result<(Vec<Inspection>, Duration, Duration)> {
    let mut checked = Checked::new(models, latent, x.shape()[2]);
    let t0 = Instant::now();
    let rec = reconstruct(&mut checked, sched, ab, params, x, noise)?;
    let t1 = Instant::now();
    let maps = anomaly_maps(&mut checked, params, x, rec.images.view())?;
    let t2 = t1.elapsed();
    let out = maps
        .into_iter()
        .zip(rec.adp)
        .zip(rec.images.axis_iter(Axis(0)))
        .map(|((m, adp), img)| Inspection { score: m.score, adp, map: m.map, reconstruction: img.to_owned() })
        .collect();
    Ok((out, t1 - t0, t2))
}
