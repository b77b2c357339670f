//! GLAD's parameters: the reference's defaults, overridable by a bundle's defaults, a preset,
//! a config file and the command line, in that order.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::maps::ObjectMask;

/// How the input latent is taken from the encoder's distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LatentMode {
    /// `mean + std * n` as the reference does (n from the noise source).
    #[default]
    Sample,
    /// The deterministic mean (what a station usually wants).
    Mean,
}

/// What each input patch of the final map is compared with (`glad.reference`). GLAD compares
/// with the reconstruction only; the other two are named options beyond the paper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MapReference {
    /// GLAD: the patches of the input's own reconstruction.
    #[default]
    Reconstruction,
    /// The memory bank of the class's normal training patches only (the feature baseline).
    Bank,
    /// The union of both: a normal region the reconstruction failed to reproduce still finds
    /// its match in the bank, while a defect the reconstruction removed finds none in either.
    Union,
}

/// Every GLAD parameter, resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Params {
    /// `T`: where the DDIM grid starts (`ratio = T // K`).
    pub denoise_step: usize,
    /// The step the input latents are noised to: `T` (MVTec, MPDD) or `T - 1` (VisA, PCB-Bank).
    pub noise_step: usize,
    /// `K`: number of DDIM steps.
    pub steps: usize,
    /// Classifier-free guidance scale `w`.
    pub guidance: f32,
    /// ADP threshold `tau`; 0 turns ADP off (plain DDIM from T).
    pub tau: f32,
    /// A still-searching sample stops at the first grid step `t < min_step`.
    pub min_step: usize,
    /// Weight of the pixel term of the final map (0 for MVTec and MPDD).
    pub v: f32,
    /// Add the symmetric term `m2` (reference: transistor, pcb1, pcb4).
    pub symmetric: bool,
    pub latent: LatentMode,
    /// Image score: mean of the `top_k` largest map values.
    pub top_k: usize,
    /// ADP score: mean of the `adp_top_k` largest ADP map values.
    pub adp_top_k: usize,
    pub blur_sigma: f32,
    /// `S`: resolution of the final-map backbone; must match the backbone model.
    pub backbone_resolution: usize,
    pub object_mask: ObjectMask,
    pub reference: MapReference,
}

/// A partial set of parameters (bundle defaults, presets, config files). Unknown keys are
/// rejected so a typo never silently falls back to a default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamOverrides {
    pub denoise_step: Option<usize>,
    /// Noise step relative to T: 0 (MVTec) or -1 (VisA). Exclusive with nothing; resolved last.
    pub noise_offset: Option<i64>,
    pub steps: Option<usize>,
    pub guidance: Option<f32>,
    pub tau: Option<f32>,
    pub min_step: Option<usize>,
    pub v: Option<f32>,
    pub symmetric: Option<bool>,
    pub latent: Option<LatentMode>,
    pub top_k: Option<usize>,
    pub adp_top_k: Option<usize>,
    pub blur_sigma: Option<f32>,
    pub backbone_resolution: Option<usize>,
    pub object_mask: Option<ObjectMask>,
    pub reference: Option<MapReference>,
}

impl ParamOverrides {
    /// `other`'s values win where set.
    pub fn merged(&self, other: &ParamOverrides) -> ParamOverrides {
        macro_rules! pick {
            ($($f:ident),*) => { ParamOverrides { $($f: other.$f.or(self.$f)),* } };
        }
        pick!(
            denoise_step,
            noise_offset,
            steps,
            guidance,
            tau,
            min_step,
            v,
            symmetric,
            latent,
            top_k,
            adp_top_k,
            blur_sigma,
            backbone_resolution,
            object_mask,
            reference
        )
    }

    /// Fills the gaps with the reference's MVTec defaults and checks the result.
    pub fn resolve(&self, default_backbone_resolution: usize) -> Result<Params> {
        let denoise_step = self.denoise_step.unwrap_or(750);
        let offset = self.noise_offset.unwrap_or(0);
        let noise_step = denoise_step as i64 + offset;
        if !(0..=denoise_step as i64).contains(&noise_step) {
            bail!("noise_offset {offset} puts the noise step outside [0, denoise_step {denoise_step}]");
        }
        let p = Params {
            denoise_step,
            noise_step: noise_step as usize,
            steps: self.steps.unwrap_or(25),
            guidance: self.guidance.unwrap_or(9.0),
            tau: self.tau.unwrap_or(0.32),
            min_step: self.min_step.unwrap_or(350),
            v: self.v.unwrap_or(0.0),
            symmetric: self.symmetric.unwrap_or(false),
            latent: self.latent.unwrap_or_default(),
            top_k: self.top_k.unwrap_or(250),
            adp_top_k: self.adp_top_k.unwrap_or(10),
            blur_sigma: self.blur_sigma.unwrap_or(6.0),
            backbone_resolution: self.backbone_resolution.unwrap_or(default_backbone_resolution),
            object_mask: self.object_mask.unwrap_or_default(),
            reference: self.reference.unwrap_or_default(),
        };
        if p.steps == 0 || p.steps > p.denoise_step {
            bail!("steps must be in 1..=denoise_step ({}), got {}", p.denoise_step, p.steps);
        }
        if p.tau < 0.0 || !p.tau.is_finite() {
            bail!("tau must be >= 0 (0 turns ADP off), got {}", p.tau);
        }
        if p.top_k == 0 || p.adp_top_k == 0 {
            bail!("top_k and adp_top_k must be at least 1");
        }
        Ok(p)
    }
}
