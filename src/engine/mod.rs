//! The engine: a validated bundle plus resolved GLAD parameters; a batch of preprocessed
//! images in, a batch of inspections out. It knows no sources or sinks.

mod noise;
mod onnx_models;
pub mod spec;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ndarray::{Array2, Array3, ArrayView4, Axis};

pub use noise::NoiseSource;
pub use onnx_models::{ModelTimes, OnnxModels};
pub use spec::{
    noise_source, resolve_scoring, resolve_verdict, EngineFacts, EngineSpec, ScoringPath, VerdictRule, VerdictSpec, AUTO_CPU_MIN_TOKENS,
};

use crate::bundle::Bundle;
use crate::glad::bank::FeatureBank;
use crate::glad::features::Layout;
use crate::glad::maps::blur_radius;
use crate::glad::reconstruct::{AdpStop, Noise, Reconstruction};
use crate::glad::schedule::{AlphaBar, SchedulerConfig};
use crate::glad::{anomaly_maps, reconstruct, AnomalyMap, Checked, MapReference, Models, Params};

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
    /// The normal-patch bank, loaded when `params.reference` is `bank` or `union`.
    bank: Option<FeatureBank>,
    /// The scoring graphs when the min-cosine maps and ADP scores run in ONNX Runtime
    /// (`runtime.scoring`, resolved by [`resolve_scoring`]) and what they are used for;
    /// `None`: glad's Rust code.
    scoring: Option<(crate::runtime::ScoringGraphs, ScoringPath)>,
}

/// The bundle's models with the engine's scoring path.
fn scored<'a>(bundle: &'a mut Bundle, scoring: &'a mut Option<(crate::runtime::ScoringGraphs, ScoringPath)>) -> OnnxModels<'a> {
    let scoring = scoring.as_mut().map(|(g, p)| (g, *p == ScoringPath::Onnx));
    OnnxModels::new(bundle).with_scoring(scoring)
}

/// T must lie inside the scheduler's train timesteps (checked for every parameter set run).
fn check_denoise_step(bundle: &Bundle, ab: &AlphaBar, p: &Params) -> Result<()> {
    if p.denoise_step >= ab.len() {
        bail!(
            "key `denoise_step`: {} must be below `scheduler.train_timesteps` ({}) of {}",
            p.denoise_step,
            ab.len(),
            bundle.dir.join(crate::bundle::Manifest::FILE).display()
        );
    }
    Ok(())
}

/// True when `engine` runs exactly its bundle's default parameters with the default noise
/// (seed 0, no noise folder): the settings `glad calibrate --write-bundle` requires.
pub fn runs_bundle_defaults(engine: &Engine, noise: &crate::config::NoiseConfig) -> bool {
    let m = &engine.bundle.manifest;
    let noise_default = noise.dir.is_none() && noise.seed == 0;
    noise_default && m.defaults.resolve(m.models.backbone.resolution).is_ok_and(|d| d == engine.params)
}

/// The bundle's own calibration threshold, when `engine` runs the settings it was made with:
/// those it recorded, or (a calibration without a record) the bundle's defaults. `None` when
/// the bundle has no calibration or the settings differ.
pub fn bundle_threshold(engine: &Engine, noise: &crate::config::NoiseConfig) -> Option<f32> {
    let cal = engine.bundle.manifest.calibration.as_ref()?;
    let same = match &cal.settings {
        Some(rec) => {
            let now = crate::config::CalibratedWith {
                bundle: engine.bundle.manifest.name.clone(),
                params: engine.params.clone(),
                noise: noise.clone(),
            };
            rec.differences(&now).is_empty()
        }
        None => runs_bundle_defaults(engine, noise),
    };
    same.then_some(cal.threshold)
}

/// Where a bundle's feature bank lives (written by `glad bank`).
pub fn bank_dir(bundle: &Bundle) -> std::path::PathBuf {
    bundle.dir.join("bank")
}

/// The channel count of each final-map backbone layer, from the model's declared outputs.
pub fn backbone_channels(bundle: &Bundle) -> Result<Vec<usize>> {
    let spec = &bundle.manifest.models.backbone;
    spec.outputs
        .iter()
        .map(|name| {
            let out = bundle.backbone.output(name).with_context(|| format!("backbone output `{name}` missing"))?;
            let axis = match spec.layout {
                Layout::Tokens => 2,
                Layout::FeatureMap => 1,
            };
            match out.shape.get(axis) {
                Some(&c) if c > 0 => Ok(c as usize),
                _ => bail!("backbone output `{name}` has no static channel count ({:?})", out.shape),
            }
        })
        .collect()
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
        check_denoise_step(&bundle, &ab, &params)?;
        let bank = match params.reference {
            MapReference::Reconstruction => None,
            _ => Some(FeatureBank::load(&bank_dir(&bundle), &backbone_channels(&bundle)?)?),
        };
        Ok(Engine { bundle, params, ab, bank, scoring: None })
    }

    /// Scores with `graphs` (the ONNX scoring graphs) as `path` says; `ScoringPath::Rust`
    /// drops them.
    pub fn set_scoring(&mut self, graphs: crate::runtime::ScoringGraphs, path: ScoringPath) {
        self.scoring = (path != ScoringPath::Rust).then_some((graphs, path));
    }

    /// What computes the maps and ADP scores.
    pub fn scoring(&self) -> ScoringPath {
        self.scoring.as_ref().map_or(ScoringPath::Rust, |(_, p)| *p)
    }

    /// Runs one black image through every model (the first run allocates and optimises), so
    /// the first real frame is not slow.
    pub fn warm_up(&mut self) -> Result<()> {
        let r = self.resolution();
        let noise = NoiseSource::Seeded(0).draw(&[0], self.latent_shape())?;
        self.inspect(ndarray::Array4::<f32>::zeros((1, 3, r, r)).view(), &noise).context("warm-up")?;
        Ok(())
    }

    /// `(channels, side)` of the latents a noise source must provide.
    pub fn latent_shape(&self) -> (usize, usize) {
        self.bundle.latent_shape()
    }

    pub fn resolution(&self) -> usize {
        self.bundle.manifest.resolution
    }

    /// The reconstruction half of `inspect` with other parameters `p` (same bundle), for
    /// callers that score one reconstruction several ways (`glad tune`).
    pub fn reconstruct_with(&mut self, p: &Params, x: ArrayView4<'_, f32>, noise: &Noise) -> Result<Reconstruction> {
        check_denoise_step(&self.bundle, &self.ab, p)?;
        let sched = self.bundle.manifest.scheduler.clone();
        let latent = self.latent_shape();
        let mut models = scored(&mut self.bundle, &mut self.scoring);
        reconstruct(&mut Checked::new(&mut models, latent, x.shape()[2]), &sched, &self.ab, p, x, noise)
    }

    /// The map half of `inspect`: maps of `x` against `rec` with parameters `p`.
    pub fn maps_with(
        &mut self,
        p: &Params,
        x: ArrayView4<'_, f32>,
        rec: ArrayView4<'_, f32>,
        bank: Option<&FeatureBank>,
    ) -> Result<Vec<AnomalyMap>> {
        let latent = self.latent_shape();
        let mut models = scored(&mut self.bundle, &mut self.scoring);
        anomaly_maps(&mut Checked::new(&mut models, latent, x.shape()[2]), p, x, rec, bank)
    }

    /// The final-map backbone's normalised tokens of images `[B, 3, R, R]` in [-1, 1], prepared
    /// as the final map prepares them (resize to S, ImageNet normalisation): per image, per layer.
    pub fn backbone_tokens(&mut self, x: ArrayView4<'_, f32>) -> Result<Vec<Vec<crate::glad::features::Tokens>>> {
        let s = self.params.backbone_resolution;
        let latent = self.latent_shape();
        let mut models = scored(&mut self.bundle, &mut self.scoring);
        Checked::new(&mut models, latent, x.shape()[2]).map_tokens(crate::glad::bank::backbone_batch(x, s).view())
    }

    /// The bundle's feature bank (loaded when the map reference is `bank` or `union`).
    pub fn bank(&self) -> Option<&FeatureBank> {
        self.bank.as_ref()
    }

    /// Inspects a batch `[B, 3, R, R]` in [-1, 1] with the given noise.
    pub fn inspect(&mut self, x: ArrayView4<'_, f32>, noise: &Noise) -> Result<(Vec<Inspection>, StageTimes)> {
        self.inspect_with_bank(x, noise, None)
    }

    /// `inspect` against another feature bank (the bundle's bank with a feedback overlay);
    /// `None` uses the bundle's own.
    pub fn inspect_with_bank(
        &mut self,
        x: ArrayView4<'_, f32>,
        noise: &Noise,
        bank: Option<&FeatureBank>,
    ) -> Result<(Vec<Inspection>, StageTimes)> {
        let r = self.resolution();
        if x.shape()[1..] != [3, r, r] {
            bail!("input batch has shape {:?}, expected [B,3,{r},{r}]", x.shape());
        }
        let sched = self.bundle.manifest.scheduler.clone();
        let latent = self.latent_shape();
        let mut models = scored(&mut self.bundle, &mut self.scoring);
        let (out, reconstruct, anomaly_map) =
            inspect_with(&mut models, &sched, &self.ab, &self.params, latent, x, noise, bank.or(self.bank.as_ref()))?;
        let times = StageTimes { models: models.times.clone(), reconstruct, anomaly_map };
        Ok((out, times))
    }
}

/// GLAD on a batch with any [`Models`] (checked by [`Checked`]: a wrong shape, a wrong batch,
/// NaN or Inf from a model is an error of this batch): the inspections, and the wall times of
/// the reconstruction and of the anomaly maps. `latent` is `(channels, side)`.
// The arguments are the engine's parts, taken apart so fake models can run the same code.
#[allow(clippy::too_many_arguments)]
pub fn inspect_with<M: Models>(
    models: &mut M,
    sched: &SchedulerConfig,
    ab: &AlphaBar,
    params: &Params,
    latent: (usize, usize),
    x: ArrayView4<'_, f32>,
    noise: &Noise,
    bank: Option<&FeatureBank>,
) -> Result<(Vec<Inspection>, Duration, Duration)> {
    let mut checked = Checked::new(models, latent, x.shape()[2]);
    let t0 = Instant::now();
    let rec = reconstruct(&mut checked, sched, ab, params, x, noise)?;
    let t1 = Instant::now();
    let maps = anomaly_maps(&mut checked, params, x, rec.images.view(), bank)?;
    let t2 = t1.elapsed();
    let out = maps
        .into_iter()
        .zip(rec.adp.into_iter().zip(rec.adp_trace))
        .zip(rec.images.axis_iter(Axis(0)))
        .map(|((m, (adp, adp_trace)), img)| Inspection { score: m.score, adp, adp_trace, map: m.map, reconstruction: img.to_owned() })
        .collect();
    Ok((out, t1 - t0, t2))
}
