//! One engine's recipe and the one place its rules live: bundle, preset, overrides, noise and
//! threshold/calibration give a ready engine and its verdict rule. `glad inspect`, `eval`,
//! `tune`, `calibrate`, `bank`, `info`, the station (`run`, `serve`) and a reload all build
//! their engines and thresholds here.
//!
//! Parameters: bundle defaults < preset < config `glad` < command line (each later layer wins
//! key by key). Noise: a folder of .npy noise wins over the seed. Threshold: `--threshold`,
//! else a calibration (refused when it was made with other settings), else `threshold`, else
//! the bundle's own calibration while the settings it was made with are in force; every
//! threshold passes `config::check::check_threshold` wherever it comes from.

use std::path::PathBuf;

use anyhow::{bail, Result};

use super::{Engine, NoiseSource};
use crate::bundle::{Bundle, Manifest};
use crate::config::{check_threshold, preset, CalibratedWith, Calibration, NoiseConfig};
use crate::glad::{ParamOverrides, Params};
use crate::runtime::{ProviderKind, RuntimeConfig, Scoring};

/// The noise source of a noise config: the folder of .npy noise, else the seeded generator.
pub fn noise_source(n: &NoiseConfig) -> Result<NoiseSource> {
    match &n.dir {
        Some(dir) => NoiseSource::from_dir(dir),
        None => Ok(NoiseSource::Seeded(n.seed)),
    }
}

/// The verdict inputs of one engine, before resolution.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VerdictSpec {
    /// A threshold given on the command line: wins over everything.
    pub flag: Option<f32>,
    /// A calibration (`glad calibrate`), with where it came from for messages.
    pub calibration: Option<(Calibration, String)>,
    /// A configured threshold (config `threshold`, a camera's `threshold`), with its key.
    pub threshold: Option<(f32, String)>,
}

/// A verdict rule: scores above `threshold` are anomalous; no threshold, no verdicts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VerdictRule {
    pub threshold: Option<f32>,
}

impl VerdictRule {
    /// `Some(true)`: anomalous; `None`: no threshold in force.
    pub fn anomalous(&self, score: f32) -> Option<bool> {
        self.threshold.map(|t| score > t)
    }
}

/// Everything that decides an engine and its verdicts.
#[derive(Debug, Clone)]
pub struct EngineSpec {
    pub bundle_dir: PathBuf,
    pub runtime: RuntimeConfig,
    /// A preset `dataset/class` (above the bundle's defaults).
    pub preset: Option<String>,
    /// Overrides above the preset, lowest first, each with how its keys are named in messages:
    /// `{}` stands for the key; a label starting with `--` names command-line flags.
    pub layers: Vec<(String, ParamOverrides)>,
    pub noise: NoiseConfig,
    pub verdict: VerdictSpec,
    /// Public keys of which one must have signed the bundle (empty: any bundle that verifies).
    pub trusted_keys: Vec<PathBuf>,
}

/// How a command-line parameter is named in messages: `--denoise-step`.
pub fn flag_name(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

impl EngineSpec {
    pub fn load_bundle(&self) -> Result<Bundle> {
        Bundle::load_trusted(&self.bundle_dir, &self.runtime, &self.trusted_keys)
    }

    /// Every layer of parameters, lowest first, with its naming.
    fn all_layers(&self, bundle: &Bundle) -> Result<Vec<(String, ParamOverrides)>> {
        let mut v = vec![(format!("{}: key `defaults.{{}}`", bundle.dir.join(Manifest::FILE).display()), bundle.manifest.defaults.clone())];
        if let Some(p) = &self.preset {
            v.push((format!("preset {p}: key `{{}}`"), preset(p)?));
        }
        v.extend(self.layers.iter().cloned());
        Ok(v)
    }

    /// The merged overrides (bundle defaults < preset < layers).
    pub fn overrides(&self, bundle: &Bundle) -> Result<ParamOverrides> {
        Ok(self.all_layers(bundle)?.iter().fold(ParamOverrides::default(), |acc, (_, o)| acc.merged(o)))
    }

    /// The resolved parameters; an error names the file and key (or flag) of the bad value.
    pub fn params(&self, bundle: &Bundle) -> Result<Params> {
        let layers = self.all_layers(bundle)?;
        let merged = layers.iter().fold(ParamOverrides::default(), |acc, (_, o)| acc.merged(o));
        let what = |k: &str| -> String {
            match layers.iter().rev().find(|(_, o)| o.is_set(k)) {
                Some((label, _)) if label.starts_with("--") => flag_name(k),
                Some((label, _)) => label.replace("{}", k),
                None => format!("`{k}` (default)"),
            }
        };
        merged.resolve_named(bundle.manifest.models.backbone.resolution, &what)
    }

    /// Loads the bundle and builds the engine, with the scoring path of `runtime.scoring`.
    pub fn engine(&self) -> Result<Engine> {
        let bundle = self.load_bundle()?;
        let params = self.params(&bundle)?;
        let path = resolve_scoring(self.runtime.scoring, &bundle, &params);
        let mut engine = Engine::new(bundle, params)?;
        if path != ScoringPath::Rust {
            engine.set_scoring(self.runtime.load_scoring()?, path);
        }
        Ok(engine)
    }

    pub fn noise_source(&self) -> Result<NoiseSource> {
        noise_source(&self.noise)
    }

    /// What a calibration made with `engine` now would record.
    pub fn calibrated_with(&self, engine: &Engine) -> CalibratedWith {
        CalibratedWith { bundle: engine.bundle.manifest.name.clone(), params: engine.params.clone(), noise: self.noise.clone() }
    }

    /// The verdict rule of `engine` (see the module notes for the order and the checks).
    pub fn verdict(&self, engine: &Engine) -> Result<VerdictRule> {
        resolve_verdict(&self.verdict, &EngineFacts::of(engine, &self.noise))
    }
}

/// What computes the min-cosine maps and the ADP scores of an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoringPath {
    /// glad's Rust code (matrixmultiply GEMM) for every map and ADP score.
    Rust,
    /// The ONNX scoring graphs (onnx/scoring) for every map and ADP score.
    Onnx,
    /// `auto` on the CPU with `symmetric: true`: the ONNX graph for final-map pairs of at least
    /// [`AUTO_CPU_MIN_TOKENS`] tokens on both sides (one GEMM gives `m1` and `m2`, Rust needs
    /// two), glad's Rust code for everything else.
    OnnxSymmetric,
}

impl std::fmt::Display for ScoringPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ScoringPath::Rust => "rust",
            ScoringPath::Onnx => "onnx",
            ScoringPath::OnnxSymmetric => "onnx for symmetric maps of >= 1024 tokens, else rust",
        })
    }
}

/// Fewest tokens (on both sides) for which CPU `auto` scores a symmetric final-map layer in
/// ONNX Runtime.
pub const AUTO_CPU_MIN_TOKENS: usize = 1024;

/// The rule of `runtime.scoring: auto`, from one-thread CPU measurements at 768 channels
/// (benches/kernels.rs `scoring_768ch`, README Performance): the ONNX graph costs 0.96x,
/// 0.44x and 0.55x the Rust time of the symmetric pair (two GEMMs) at 64, 1024 and 4096
/// tokens, but 1.9x, 0.87x and 1.14x the Rust time of `m1` alone. So `auto` is `onnx` when the
/// backbone runs on CUDA or TensorRT (the GEMM runs on the device), and on the CPU the graph
/// only for symmetric layers of at least 1024 tokens; `rust` and `onnx` force one path.
pub fn resolve_scoring(cfg: Scoring, bundle: &Bundle, params: &Params) -> ScoringPath {
    match cfg {
        Scoring::Rust => ScoringPath::Rust,
        Scoring::Onnx => ScoringPath::Onnx,
        Scoring::Auto => match bundle.backbone.provider() {
            ProviderKind::Cuda | ProviderKind::Tensorrt => ScoringPath::Onnx,
            ProviderKind::Cpu if params.symmetric => ScoringPath::OnnxSymmetric,
            ProviderKind::Cpu => ScoringPath::Rust,
        },
    }
}

/// What the threshold rule needs to know about a built engine (kept by the station, whose
/// engines live on their own threads, to resolve reloaded thresholds).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineFacts {
    /// The settings a calibration made now would record.
    pub now: CalibratedWith,
    /// The bundle's own calibration threshold, when its settings are in force.
    pub bundle_threshold: Option<f32>,
    /// The bundle has a calibration (applied or not).
    pub bundle_calibrated: bool,
}

impl EngineFacts {
    pub fn of(engine: &Engine, noise: &NoiseConfig) -> EngineFacts {
        EngineFacts {
            now: CalibratedWith { bundle: engine.bundle.manifest.name.clone(), params: engine.params.clone(), noise: noise.clone() },
            bundle_threshold: super::bundle_threshold(engine, noise),
            bundle_calibrated: engine.bundle.manifest.calibration.is_some(),
        }
    }
}

/// The threshold rule of [`EngineSpec::verdict`] (a station reload resolves new thresholds
/// with it against the engine it keeps).
pub fn resolve_verdict(v: &VerdictSpec, facts: &EngineFacts) -> Result<VerdictRule> {
    if let Some(t) = v.flag {
        let t = check_threshold(t).map_err(|e| anyhow::anyhow!("--threshold: {e}"))?;
        return Ok(VerdictRule { threshold: Some(t) });
    }
    if let Some((cal, from)) = &v.calibration {
        cal.check("calibration").map_err(|e| anyhow::anyhow!("{from}: {e}"))?;
        match &cal.settings {
            None => tracing::warn!("{from}: the calibration records no settings (an older config): its threshold is applied unchecked"),
            Some(rec) => {
                let diff = rec.differences(&facts.now);
                if !diff.is_empty() {
                    bail!(
                        "{from}: key `calibration.settings`: the threshold was calibrated with other settings than those in force: {}; use the calibrated settings, recalibrate, or pass --threshold",
                        diff.join(", ")
                    );
                }
            }
        }
        return Ok(VerdictRule { threshold: Some(cal.threshold) });
    }
    if let Some((t, key)) = &v.threshold {
        let t = check_threshold(*t).map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
        return Ok(VerdictRule { threshold: Some(t) });
    }
    let t = facts.bundle_threshold;
    if t.is_none() && facts.bundle_calibrated {
        tracing::warn!(
            "the bundle's calibration is not applied: the GLAD settings or the noise differ from those it was made with (calibrate again)"
        );
    }
    Ok(VerdictRule { threshold: t })
}
