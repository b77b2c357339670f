//! The `glad` subcommands: argument parsing and wiring only.

pub mod bank;
pub mod calibrate;
pub mod cameras;
pub mod eval;
pub mod info;
pub mod inspect;
pub mod pack;
pub mod run;
pub mod serve;
pub mod teach;
pub mod tune;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::bundle::Bundle;
use crate::config::{self, CalibratedWith, Config, NoiseConfig};
use crate::engine::{Engine, EngineSpec, NoiseSource, VerdictSpec};
use crate::glad::{LatentMode, ParamOverrides};

/// Options every subcommand that loads a bundle takes.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// YAML config (see config/default.yaml for every key).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Model bundle folder (onnx/<name>); overrides the config's `bundle`.
    #[arg(long, short = 'b', value_name = "DIR")]
    pub bundle: Option<PathBuf>,
    /// Per-class GLAD settings, `dataset/class` (mvtec/carpet, mpdd/tubes, visa/pcb1, pcbbank/pcb5).
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    /// Intra-op threads for ONNX Runtime (0 = all cores, at most 1024); overrides `runtime.threads`.
    #[arg(long, value_name = "N", value_parser = parse_threads)]
    pub threads: Option<usize>,
    /// Where the min-cosine maps and ADP scores run: rust, onnx (the scoring graphs) or auto
    /// (onnx on CUDA/TensorRT; on the CPU onnx only for symmetric layers of >= 1024 tokens);
    /// overrides `runtime.scoring`.
    #[arg(long, value_name = "PATH", value_parser = parse_scoring)]
    pub scoring: Option<crate::runtime::Scoring>,
    /// ONNX Runtime's memory plan: fast (its arena, memory pattern and pre-packed weights) or
    /// lean (none of them, for short memory); overrides `runtime.memory`.
    #[arg(long, value_name = "PLAN", value_parser = parse_memory)]
    pub memory: Option<crate::runtime::MemoryMode>,
}

/// `--memory`: `fast` or `lean`, as `runtime.memory`.
pub fn parse_memory(s: &str) -> Result<crate::runtime::MemoryMode, String> {
    match s {
        "fast" => Ok(crate::runtime::MemoryMode::Fast),
        "lean" => Ok(crate::runtime::MemoryMode::Lean),
        _ => Err(format!("must be fast or lean, got `{s}`")),
    }
}

/// `--scoring`: the rule of `runtime.scoring`.
pub fn parse_scoring(s: &str) -> Result<crate::runtime::Scoring, String> {
    config::check_scoring(s)
}

/// GLAD parameters settable on the command line (they win over config, preset and bundle).
#[derive(Debug, Clone, Default, Args)]
pub struct ParamArgs {
    /// ADP threshold tau (0 turns ADP off), in [0, 100].
    #[arg(long, value_parser = parse_finite)]
    pub tau: Option<f32>,
    /// T: start of the DDIM grid.
    #[arg(long, value_name = "T")]
    pub denoise_step: Option<usize>,
    /// K: number of DDIM steps.
    #[arg(long, value_name = "K")]
    pub steps: Option<usize>,
    /// Latent from the VAE: `sample` (the reference) or `mean` (deterministic).
    #[arg(long, value_parser = parse_latent)]
    pub latent: Option<LatentMode>,
    /// Score ADP at every N-th DDIM step only (1: every step, exact GLAD).
    #[arg(long, value_name = "N")]
    pub adp_every: Option<usize>,
    /// Seed of the noise generator; overrides `noise.seed`.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Folder with vae_noise.npy and eps.npy to use instead of the generator.
    #[arg(long, value_name = "DIR")]
    pub noise_dir: Option<PathBuf>,
}

fn parse_usize(s: &str) -> Result<usize, String> {
    s.parse::<usize>().map_err(|e| format!("`{s}` is not a whole number: {e}"))
}

/// `--batch`: the rule of `inspect.batch` (1..=256).
pub fn parse_batch(s: &str) -> Result<usize, String> {
    config::check_batch(parse_usize(s)?)
}

/// `--workers`: the rule of `inspect.workers` (1..=64).
pub fn parse_workers(s: &str) -> Result<usize, String> {
    config::check_workers(parse_usize(s)?)
}

/// `--threads`: the rule of `runtime.threads` (0..=1024).
pub fn parse_threads(s: &str) -> Result<usize, String> {
    config::check_threads(parse_usize(s)?)
}

/// `--threshold`: finite, above 0.
pub fn parse_threshold(s: &str) -> Result<f32, String> {
    config::check_threshold(s.parse::<f32>().map_err(|e| format!("`{s}` is not a number: {e}"))?)
}

/// A float flag that must be finite (the range is checked with the config rule of its key).
pub fn parse_finite(s: &str) -> Result<f32, String> {
    let v = s.parse::<f32>().map_err(|e| format!("`{s}` is not a number: {e}"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("must be a finite number, got {v}"))
    }
}

fn parse_latent(s: &str) -> Result<LatentMode, String> {
    match s {
        "sample" => Ok(LatentMode::Sample),
        "mean" => Ok(LatentMode::Mean),
        _ => Err(format!("expected `sample` or `mean`, got `{s}`")),
    }
}

/// A config plus the command line, resolved.
#[derive(Clone)]
pub struct Settings {
    pub config: Config,
    pub config_path: Option<PathBuf>,
    pub bundle_dir: PathBuf,
    pub preset: Option<String>,
    pub params: ParamArgs,
}

impl Settings {
    pub fn new(common: &CommonArgs, params: ParamArgs) -> Result<Settings> {
        let mut config = match &common.config {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        if let Some(t) = common.threads {
            config.runtime.threads = t;
        }
        if let Some(s) = common.scoring {
            config.runtime.scoring = s;
        }
        if let Some(m) = common.memory {
            config.runtime.memory = m;
        }
        crate::imaging::set_limits(config.limits);
        let bundle_dir = common
            .bundle
            .clone()
            .or_else(|| config.bundle.clone())
            .context("no model bundle: pass --bundle DIR or set `bundle` in the config")?;
        let preset = common.preset.clone().or_else(|| config.preset.clone());
        let settings = Settings { config, config_path: common.config.clone(), bundle_dir, preset, params };
        settings.cli_overrides().check(&flag_name)?;
        Ok(settings)
    }

    /// The engine recipe of this config and command line (`engine::EngineSpec` holds the
    /// rules: parameter layers, noise, threshold), with `--threshold` as `flag`.
    pub fn spec(&self, flag: Option<f32>) -> EngineSpec {
        let mut runtime = self.config.runtime.clone();
        if runtime.execution.tensorrt.max_batch == 0 {
            // TensorRT profiles cover the batches this command runs.
            runtime.execution.tensorrt.max_batch = self.config.inspect.batch;
        }
        let cfg = self.config_path.as_ref().map_or("config".to_string(), |p| p.display().to_string());
        EngineSpec {
            bundle_dir: self.bundle_dir.clone(),
            runtime,
            preset: self.preset.clone(),
            layers: vec![(format!("{cfg}: key `glad.{{}}`"), self.config.glad.clone()), ("--{}".to_string(), self.cli_overrides())],
            noise: self.noise_config(),
            verdict: VerdictSpec {
                flag,
                calibration: self.config.calibration.clone().map(|c| (c, cfg.clone())),
                threshold: self.config.threshold.map(|t| (t, format!("{cfg}: key `threshold`"))),
            },
            trusted_keys: Vec::new(),
        }
    }

    pub fn load_bundle(&self) -> Result<Bundle> {
        self.spec(None).load_bundle()
    }

    /// The GLAD parameters set on the command line.
    pub fn cli_overrides(&self) -> ParamOverrides {
        ParamOverrides {
            tau: self.params.tau,
            denoise_step: self.params.denoise_step,
            steps: self.params.steps,
            latent: self.params.latent,
            adp_every: self.params.adp_every,
            ..Default::default()
        }
    }

    /// bundle defaults < preset < config `glad` < command line.
    pub fn overrides(&self, bundle: &Bundle) -> Result<ParamOverrides> {
        self.spec(None).overrides(bundle)
    }

    /// The resolved parameters; an error names the file and key (or flag) of the bad value.
    pub fn params(&self, bundle: &Bundle) -> Result<crate::glad::Params> {
        self.spec(None).params(bundle)
    }

    pub fn engine(&self) -> Result<Engine> {
        self.spec(None).engine()
    }

    /// `n` engines with their own sessions, for `n` pipeline workers.
    pub fn engines(&self, n: usize) -> Result<Vec<Engine>> {
        let spec = self.spec(None);
        (0..n.max(1)).map(|_| spec.engine()).collect()
    }

    /// The verdict threshold (`EngineSpec::verdict`): `--threshold`, else the config's
    /// calibration (refused when made with other settings) or threshold, else the bundle's.
    pub fn threshold(&self, cli: Option<f32>, engine: &Engine) -> Result<Option<f32>> {
        Ok(self.spec(cli).verdict(engine)?.threshold)
    }

    /// The noise source in force: `--noise-dir`, `noise.dir`, else the seed.
    pub fn noise_config(&self) -> NoiseConfig {
        NoiseConfig {
            seed: self.params.seed.unwrap_or(self.config.noise.seed),
            dir: self.params.noise_dir.clone().or_else(|| self.config.noise.dir.clone()),
        }
    }

    pub fn noise(&self) -> Result<NoiseSource> {
        crate::engine::noise_source(&self.noise_config())
    }

    /// What a calibration made now would record.
    pub fn calibrated_with(&self, engine: &Engine) -> CalibratedWith {
        self.spec(None).calibrated_with(engine)
    }
}

use crate::engine::spec::flag_name;
