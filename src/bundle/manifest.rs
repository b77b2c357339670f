//! The `bundle.yaml` manifest (format documented in onnx/README.md).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::glad::features::Layout;
use crate::glad::schedule::SchedulerConfig;
use crate::glad::ParamOverrides;
use crate::yaml::parse_yaml;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Space {
    Latent,
    Pixel,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatentSpec {
    pub channels: usize,
    pub factor: usize,
    pub scaling_factor: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncoderOutput {
    /// Two outputs: mean and log-variance (std = exp(0.5 logvar)).
    MeanLogvar,
    /// Two outputs: mean and standard deviation.
    MeanStd,
    /// One output `[B, 2C, h, w]`: mean then log-variance, as diffusers' `moments`.
    Moments,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderSpec {
    pub file: PathBuf,
    pub input: String,
    pub output: EncoderOutput,
    pub outputs: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestepType {
    Int64,
    Float32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnetSpec {
    pub file: PathBuf,
    pub sample: String,
    pub timestep: String,
    pub timestep_type: TimestepType,
    #[serde(default)]
    pub context: Option<String>,
    pub output: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderSpec {
    pub file: PathBuf,
    pub input: String,
    pub output: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackboneSpec {
    pub file: PathBuf,
    pub input: String,
    pub layout: Layout,
    pub outputs: Vec<String>,
    /// Grid stride (ViT patch size); for a CNN, the stride of the first output.
    pub patch: usize,
    /// Input resolution of the model.
    pub resolution: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsSpec {
    #[serde(default)]
    pub vae_encoder: Option<EncoderSpec>,
    pub unet: UnetSpec,
    #[serde(default)]
    pub vae_decoder: Option<DecoderSpec>,
    pub backbone: BackboneSpec,
    #[serde(default)]
    pub adp_backbone: Option<BackboneSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSpec {
    pub cond: PathBuf,
    pub uncond: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub resolution: usize,
    pub space: Space,
    #[serde(default)]
    pub latent: Option<LatentSpec>,
    pub models: ModelsSpec,
    #[serde(default)]
    pub prompt: Option<PromptSpec>,
    pub scheduler: SchedulerConfig,
    #[serde(default)]
    pub defaults: ParamOverrides,
    /// A verdict threshold from the bundle's own normal validation images (`glad calibrate
    /// --write-bundle`), valid for the defaults above; used when no config gives one.
    #[serde(default)]
    pub calibration: Option<crate::config::Calibration>,
    /// Free-form provenance (how the weights were made); shown by `glad info`.
    #[serde(default)]
    pub provenance: Option<serde_yaml::Value>,
}

impl Manifest {
    pub const FILE: &'static str = "bundle.yaml";

    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(Self::FILE);
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read the bundle manifest", path.display()))?;
        let m: Manifest = parse_yaml(&path, &text)?;
        if m.format != 1 {
            anyhow::bail!("{}: key `format`: unsupported bundle format {}, expected 1", path.display(), m.format);
        }
        m.check().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(m)
    }

    /// Range checks of the values the types cannot express (before any model is loaded, so a
    /// 0 never reaches a division).
    pub fn check(&self) -> Result<()> {
        use anyhow::bail;
        let r = self.resolution;
        if !(1..=crate::glad::params::MAX_RESOLUTION).contains(&r) {
            bail!("key `resolution`: must be in 1..={}, got {r}", crate::glad::params::MAX_RESOLUTION);
        }
        if let Some(l) = &self.latent {
            if !(1..=4096).contains(&l.channels) {
                bail!("key `latent.channels`: must be in 1..=4096, got {}", l.channels);
            }
            if l.factor == 0 || r % l.factor != 0 {
                bail!("key `latent.factor`: must divide the resolution {r} (and be at least 1), got {}", l.factor);
            }
            if !l.scaling_factor.is_finite() || l.scaling_factor <= 0.0 {
                bail!("key `latent.scaling_factor`: must be a finite number above 0, got {}", l.scaling_factor);
            }
        }
        for (key, b) in [("models.backbone", Some(&self.models.backbone)), ("models.adp_backbone", self.models.adp_backbone.as_ref())] {
            let Some(b) = b else { continue };
            if !(1..=crate::glad::params::MAX_RESOLUTION).contains(&b.resolution) {
                bail!("key `{key}.resolution`: must be in 1..={}, got {}", crate::glad::params::MAX_RESOLUTION, b.resolution);
            }
            if b.patch == 0 || b.resolution % b.patch != 0 {
                bail!("key `{key}.patch`: must divide the resolution {} (and be at least 1), got {}", b.resolution, b.patch);
            }
        }
        self.scheduler.check()?;
        self.defaults.check(&|k| format!("key `defaults.{k}`"))?;
        if let Some(c) = &self.calibration {
            c.check("calibration").map_err(|e| anyhow::anyhow!(e))?;
        }
        Ok(())
    }
}
