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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// ADP scores a still-searching sample at every `adp_every`-th grid step only (and at
    /// every step below `min_step`, where it stops). 1: every step, as GLAD does.
    #[serde(default = "one")]
    pub adp_every: usize,
}

fn one() -> usize {
    1
}

impl Params {
    /// Every resolved value as overrides (`glad tune` changes only what a grid point names).
    pub fn to_overrides(&self) -> ParamOverrides {
        ParamOverrides {
            denoise_step: Some(self.denoise_step),
            noise_offset: Some(self.noise_step as i64 - self.denoise_step as i64),
            steps: Some(self.steps),
            guidance: Some(self.guidance),
            tau: Some(self.tau),
            min_step: Some(self.min_step),
            v: Some(self.v),
            symmetric: Some(self.symmetric),
            latent: Some(self.latent),
            top_k: Some(self.top_k),
            adp_top_k: Some(self.adp_top_k),
            blur_sigma: Some(self.blur_sigma),
            backbone_resolution: Some(self.backbone_resolution),
            object_mask: Some(self.object_mask),
            reference: Some(self.reference),
            adp_every: Some(self.adp_every),
        }
    }
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
    pub adp_every: Option<usize>,
}

/// Largest `blur_sigma` (its kernel and row padding grow with it).
pub const MAX_BLUR_SIGMA: f32 = 64.0;
/// Largest `denoise_step`, `min_step` and `steps` (a scheduler has at most 100000 train steps).
pub const MAX_STEP: usize = 100_000;
/// Largest `top_k` / `adp_top_k`.
pub const MAX_TOP_K: usize = 1 << 24;
/// Largest `adp_every`.
pub const MAX_ADP_EVERY: usize = 1000;
/// Largest `backbone_resolution`.
pub const MAX_RESOLUTION: usize = 8192;

fn check_float(v: Option<f32>, lo: f32, hi: f32, key: &str, what: &dyn Fn(&str) -> String) -> Result<()> {
    match v {
        Some(x) if !x.is_finite() || x < lo || x > hi => bail!("{}: must be a finite number in [{lo}, {hi}], got {x}", what(key)),
        _ => Ok(()),
    }
}

fn check_int(v: Option<usize>, lo: usize, hi: usize, key: &str, what: &dyn Fn(&str) -> String) -> Result<()> {
    match v {
        Some(x) if x < lo || x > hi => bail!("{}: must be in {lo}..={hi}, got {x}", what(key)),
        _ => Ok(()),
    }
}

impl ParamOverrides {
    /// Range checks of every value that is set, each on its own; `what(key)` names where the
    /// value came from (`file: key `glad.tau``, `--tau`). Relations between keys are checked by
    /// [`ParamOverrides::resolve_named`].
    pub fn check(&self, what: &dyn Fn(&str) -> String) -> Result<()> {
        check_int(self.denoise_step, 1, MAX_STEP, "denoise_step", what)?;
        if let Some(o) = self.noise_offset {
            if !(-(MAX_STEP as i64)..=0).contains(&o) {
                bail!("{}: must be 0 or negative (0: MVTec, -1: VisA), got {o}", what("noise_offset"));
            }
        }
        check_int(self.steps, 1, MAX_STEP, "steps", what)?;
        check_float(self.guidance, 0.0, 100.0, "guidance", what)?;
        check_float(self.tau, 0.0, 100.0, "tau", what)?;
        check_int(self.min_step, 0, MAX_STEP, "min_step", what)?;
        check_float(self.v, 0.0, 100.0, "v", what)?;
        check_int(self.top_k, 1, MAX_TOP_K, "top_k", what)?;
        check_int(self.adp_top_k, 1, MAX_TOP_K, "adp_top_k", what)?;
        check_float(self.blur_sigma, 0.0, MAX_BLUR_SIGMA, "blur_sigma", what)?;
        check_int(self.backbone_resolution, 1, MAX_RESOLUTION, "backbone_resolution", what)?;
        check_int(self.adp_every, 1, MAX_ADP_EVERY, "adp_every", what)?;
        Ok(())
    }

    /// Whether `key` is set here (`key` as in the YAML).
    pub fn is_set(&self, key: &str) -> bool {
        serde_json::to_value(self).ok().and_then(|v| v.get(key).map(|x| !x.is_null())).unwrap_or(false)
    }

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
            reference,
            adp_every
        )
    }

    /// Fills the gaps with the reference's MVTec defaults and checks the result.
    pub fn resolve(&self, default_backbone_resolution: usize) -> Result<Params> {
        self.resolve_named(default_backbone_resolution, &|k| format!("key `{k}`"))
    }

    /// [`ParamOverrides::resolve`], naming each key in errors with `what(key)` (where its value
    /// came from).
    pub fn resolve_named(&self, default_backbone_resolution: usize, what: &dyn Fn(&str) -> String) -> Result<Params> {
        self.check(what)?;
        let denoise_step = self.denoise_step.unwrap_or(750);
        let offset = self.noise_offset.unwrap_or(0);
        let noise_step = denoise_step as i64 + offset;
        if !(0..=denoise_step as i64).contains(&noise_step) {
            bail!(
                "{}: {offset} puts the noise step outside [0, denoise_step {denoise_step}] ({})",
                what("noise_offset"),
                what("denoise_step")
            );
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
            adp_every: self.adp_every.unwrap_or(1),
        };
        if p.steps > p.denoise_step {
            bail!("{}: must be in 1..=denoise_step ({}, {}), got {}", what("steps"), p.denoise_step, what("denoise_step"), p.steps);
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolved_params_round_trip_through_overrides() {
        let o = ParamOverrides {
            denoise_step: Some(450),
            noise_offset: Some(-1),
            v: Some(2.0),
            reference: Some(MapReference::Union),
            ..Default::default()
        };
        let p = o.resolve(256).unwrap();
        assert_eq!(p.to_overrides().resolve(999).unwrap(), p);
    }

    #[test]
    fn errors_name_the_key_and_its_origin() {
        let what = |k: &str| format!("s.yaml: key `glad.{k}`");
        let e = ParamOverrides { denoise_step: Some(0), ..Default::default() }.resolve_named(8, &what).unwrap_err().to_string();
        assert!(e.contains("key `glad.denoise_step`") && e.contains("got 0"), "{e}");
        let e = ParamOverrides { steps: Some(0), ..Default::default() }.resolve_named(8, &what).unwrap_err().to_string();
        assert!(e.contains("key `glad.steps`"), "{e}");
        let e = ParamOverrides { denoise_step: Some(10), steps: Some(20), ..Default::default() }
            .resolve_named(8, &what)
            .unwrap_err()
            .to_string();
        assert!(e.contains("key `glad.steps`") && e.contains("denoise_step (10"), "{e}");
        for (name, o) in [
            ("tau", ParamOverrides { tau: Some(f32::NAN), ..Default::default() }),
            ("guidance", ParamOverrides { guidance: Some(f32::INFINITY), ..Default::default() }),
            ("v", ParamOverrides { v: Some(-1.0), ..Default::default() }),
            ("blur_sigma", ParamOverrides { blur_sigma: Some(1e12), ..Default::default() }),
            ("adp_every", ParamOverrides { adp_every: Some(0), ..Default::default() }),
        ] {
            let e = o.resolve_named(8, &what).unwrap_err().to_string();
            assert!(e.contains(&format!("key `glad.{name}`")), "{e}");
        }
        assert!(ParamOverrides::default().resolve(8).is_ok());
    }
}
