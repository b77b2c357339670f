//! The YAML configuration: typed, unknown keys rejected, every error naming the file and key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::yaml::parse_yaml;

pub mod check;
use crate::glad::{ParamOverrides, Params};
use crate::imaging::ImageLimits;
use crate::runtime::RuntimeConfig;
pub use check::{check_batch, check_scoring, check_threads, check_threshold, check_workers, MAX_BATCH, MAX_THREADS, MAX_WORKERS};

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

/// Everything a calibration's scores depended on: `inspect` refuses to apply its threshold
/// under other settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibratedWith {
    /// The bundle manifest's `name`.
    pub bundle: String,
    /// The resolved GLAD parameters.
    pub params: Params,
    /// The noise source: the seed, or the folder of .npy noise (which wins).
    pub noise: NoiseConfig,
}

impl CalibratedWith {
    /// The keys that differ from `now`, as `key (calibrated A, now B)`.
    pub fn differences(&self, now: &CalibratedWith) -> Vec<String> {
        let flat = |c: &CalibratedWith| -> BTreeMap<String, serde_json::Value> {
            let mut m = BTreeMap::new();
            m.insert("bundle".to_string(), serde_json::json!(c.bundle));
            if let Ok(serde_json::Value::Object(p)) = serde_json::to_value(&c.params) {
                m.extend(p.into_iter().map(|(k, v)| (format!("glad.{k}"), v)));
            }
            match &c.noise.dir {
                Some(d) => m.insert("noise.dir".to_string(), serde_json::json!(d.to_string_lossy())),
                None => m.insert("noise.seed".to_string(), serde_json::json!(c.noise.seed)),
            };
            m
        };
        let (a, b) = (flat(self), flat(now));
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        let show = |v: Option<&serde_json::Value>| v.map_or("unset".to_string(), |v| v.to_string());
        keys.into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| format!("{k} (calibrated {}, now {})", show(a.get(k)), show(b.get(k))))
            .collect()
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
    /// The settings the scores were computed with (absent in configs of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<CalibratedWith>,
}

impl Calibration {
    /// The checks of a calibration wherever it comes from (a config, a station's calibration
    /// file, a bundle manifest): a threshold by [`check_threshold`], finite statistics.
    /// `key` is where it sits (`calibration`); errors name `key `calibration.threshold``.
    pub fn check(&self, key: &str) -> std::result::Result<(), String> {
        check_threshold(self.threshold).map_err(|e| format!("key `{key}.threshold`: {e}"))?;
        // Scores are distances (never negative), so are their mean, spread and maximum; a
        // negative or absurd statistic would make the score and drift alarms fire on every frame.
        for (k, v) in [("normal_mean", self.normal_mean), ("normal_std", self.normal_std), ("normal_max", self.normal_max)] {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("key `{key}.{k}`: must be a finite number of at least 0, got {v}"));
            }
        }
        if self.normal_max < self.normal_mean {
            return Err(format!(
                "key `{key}.normal_max`: the largest normal score ({}) cannot be below their mean ({})",
                self.normal_max, self.normal_mean
            ));
        }
        if self.normal_count == 0 {
            return Err(format!("key `{key}.normal_count`: must be at least 1"));
        }
        Ok(())
    }
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
    /// What an image decode may allocate (decompression bombs are refused before decoding).
    pub limits: ImageLimits,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read config", path.display()))?;
        let c: Config = parse_yaml(path, &text)?;
        c.check().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(c)
    }

    /// Range checks of every key a type cannot express: `key `...`: what was expected`.
    pub fn check(&self) -> std::result::Result<(), String> {
        let key = |k: &str, r: std::result::Result<usize, String>| r.map(|_| ()).map_err(|e| format!("key `{k}`: {e}"));
        key("inspect.batch", check_batch(self.inspect.batch))?;
        key("inspect.workers", check_workers(self.inspect.workers))?;
        key("runtime.threads", check_threads(self.runtime.threads))?;
        if let Some(t) = self.threshold {
            check_threshold(t).map_err(|e| format!("key `threshold`: {e}"))?;
        }
        if let Some(c) = &self.calibration {
            c.check("calibration")?;
        }
        self.glad.check(&|k| format!("key `glad.{k}`")).map_err(|e| e.to_string())?;
        self.limits.check()?;
        Ok(())
    }

    /// The verdict threshold: the calibration's, else `threshold`.
    pub fn threshold(&self) -> Option<f32> {
        self.calibration.as_ref().map(|c| c.threshold).or(self.threshold)
    }
}

const PRESETS: &[(&str, &str)] = &[
    ("mvtec", include_str!("../../config/presets/mvtec.yaml")),
    ("mpdd", include_str!("../../config/presets/mpdd.yaml")),
    ("visa", include_str!("../../config/presets/visa.yaml")),
    ("pcbbank", include_str!("../../config/presets/pcbbank.yaml")),
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
    let what = |k: &str| format!("preset {name}: key `{k}`");
    file.common.check(&what)?;
    class_params.check(&what)?;
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
