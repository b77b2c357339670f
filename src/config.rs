//! The YAML configuration: typed, unknown keys rejected, every error naming the file and key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::bundle::parse_yaml;
use crate::glad::ParamOverrides;
use crate::runtime::RuntimeConfig;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NoiseConfig {
    /// Seed of the ChaCha8 generator (see `engine::NoiseSource`).
    pub seed: u64,
    /// Folder with `vae_noise.npy` and `eps.npy`; replaces the generator.
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InspectConfig {
    /// Images per engine call.
    pub batch: usize,
    /// Engines inspecting batches in parallel (each loads its own sessions; they share the
    /// ONNX Runtime thread pool). Small models that cannot keep the cores busy gain from 2.
    pub workers: usize,
    /// Write the reconstruction PNG beside the heatmap.
    pub save_reconstruction: bool,
    /// Write the raw anomaly map as .npy.
    pub save_map: bool,
}

impl Default for InspectConfig {
    fn default() -> Self {
        InspectConfig { batch: 1, workers: 1, save_reconstruction: false, save_map: false }
    }
}

/// A station's calibration, written by `glad calibrate` from normal images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// Scores above it are anomalous.
    pub threshold: f32,
    /// The rule that produced it.
    pub rule: String,
    pub normal_count: usize,
    pub normal_mean: f32,
    pub normal_std: f32,
    pub normal_max: f32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Bundle folder (relative paths are relative to the working directory).
    pub bundle: Option<PathBuf>,
    /// `dataset/class`, e.g. `mvtec/carpet` (config/presets/).
    pub preset: Option<String>,
    /// GLAD parameters; win over the preset and the bundle's defaults.
    pub glad: ParamOverrides,
    pub runtime: RuntimeConfig,
    pub noise: NoiseConfig,
    pub inspect: InspectConfig,
    /// Verdict threshold without a calibration (a calibration's threshold wins).
    pub threshold: Option<f32>,
    pub calibration: Option<Calibration>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read config", path.display()))?;
        let c: Config = parse_yaml(path, &text)?;
        if c.inspect.batch == 0 {
            bail!("{}: key `inspect.batch`: must be at least 1", path.display());
        }
        if c.inspect.workers == 0 {
            bail!("{}: key `inspect.workers`: must be at least 1", path.display());
        }
        Ok(c)
    }

    /// The verdict threshold: the calibration's, else `threshold`.
    pub fn threshold(&self) -> Option<f32> {
        self.calibration.as_ref().map(|c| c.threshold).or(self.threshold)
    }
}

const PRESETS: &[(&str, &str)] = &[
    ("mvtec", include_str!("../config/presets/mvtec.yaml")),
    ("mpdd", include_str!("../config/presets/mpdd.yaml")),
    ("visa", include_str!("../config/presets/visa.yaml")),
    ("pcbbank", include_str!("../config/presets/pcbbank.yaml")),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PresetFile {
    common: ParamOverrides,
    classes: BTreeMap<String, ParamOverrides>,
}

/// The parameters of a preset `dataset/class` (built into the binary from config/presets/).
pub fn preset(name: &str) -> Result<ParamOverrides> {
    let (dataset, class) = name.split_once('/').with_context(|| format!("preset `{name}`: expected dataset/class, e.g. mvtec/carpet"))?;
    let (_, text) = PRESETS.iter().find(|(d, _)| *d == dataset).with_context(|| {
        let names: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
        format!("preset `{name}`: unknown dataset `{dataset}` (known: {})", names.join(", "))
    })?;
    let file: PresetFile = parse_yaml(Path::new(&format!("config/presets/{dataset}.yaml")), text)?;
    let class_params = file.classes.get(class).with_context(|| {
        let names: Vec<&str> = file.classes.keys().map(String::as_str).collect();
        format!("preset `{name}`: unknown class `{class}` (known: {})", names.join(", "))
    })?;
    Ok(file.common.merged(class_params))
}

/// All preset names, `dataset/class`.
pub fn preset_names() -> Vec<String> {
    PRESETS
        .iter()
        .flat_map(|(d, text)| {
            let file: PresetFile = serde_yaml::from_str(text).expect("built-in presets parse (tested)");
            file.classes.into_keys().map(move |c| format!("{d}/{c}"))
        })
        .collect()
}
