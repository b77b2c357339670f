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
use crate::glad::maps::blur_radius;
use crate::glad::reconstruct::{AdpStop, Noise};
use crate::glad::schedule::AlphaBar;
use crate::glad::{anomaly_maps, reconstruct, Params};

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
    /// `(t, ADP score)` at every step the score was computed.
    pub adp_trace: Vec<(i64, f32)>,
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
        let radius = blur_radius(params.blur_sigma);
        if radius > 0 && s <= radius {
            bail!(
                "the anomaly map is {s}x{s} (the backbone resolution), but blur_sigma {} pads {radius} pixels by reflection \
                 and needs a side above {radius}, as the reference's kornia blur does: lower blur_sigma or export the backbone larger",
                params.blur_sigma
            );
        }
        let ab = AlphaBar::new(&bundle.manifest.scheduler)?;
        if params.denoise_step >= ab.len() {
            bail!("denoise_step {} must be below the scheduler's {} train timesteps", params.denoise_step, ab.len());
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
        let mut models = OnnxModels::new(&mut self.bundle);
        let t0 = Instant::now();
        let rec = reconstruct(&mut models, &sched, &self.ab, &self.params, x, noise)?;
        let t1 = Instant::now();
        let maps = anomaly_maps(&mut models, &self.params, x, rec.images.view())?;
        let times = StageTimes { models: models.times.clone(), reconstruct: t1 - t0, anomaly_map: t1.elapsed() };
        let out = maps
            .into_iter()
            .zip(rec.adp.into_iter().zip(rec.adp_trace))
            .zip(rec.images.axis_iter(Axis(0)))
            .map(|((m, (adp, adp_trace)), img)| Inspection { score: m.score, adp, adp_trace, map: m.map, reconstruction: img.to_owned() })
            .collect();
        Ok((out, times))
    }
}
