//! The `glad` subcommands: argument parsing and wiring only.

pub mod calibrate;
pub mod cameras;
pub mod eval;
pub mod info;
pub mod inspect;
pub mod run;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::bundle::Bundle;
use crate::config::{self, Config};
use crate::engine::{Engine, NoiseSource};
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
    /// Intra-op threads for ONNX Runtime (0 = all cores); overrides `runtime.threads`.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

/// GLAD parameters settable on the command line (they win over config, preset and bundle).
#[derive(Debug, Clone, Default, Args)]
pub struct ParamArgs {
    /// ADP threshold tau (0 turns ADP off).
    #[arg(long)]
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
    /// Seed of the noise generator; overrides `noise.seed`.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Folder with vae_noise.npy and eps.npy to use instead of the generator.
    #[arg(long, value_name = "DIR")]
    pub noise_dir: Option<PathBuf>,
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
        let bundle_dir = common
            .bundle
            .clone()
            .or_else(|| config.bundle.clone())
            .context("no model bundle: pass --bundle DIR or set `bundle` in the config")?;
        let preset = common.preset.clone().or_else(|| config.preset.clone());
        Ok(Settings { config, config_path: common.config.clone(), bundle_dir, preset, params })
    }

    pub fn load_bundle(&self) -> Result<Bundle> {
        Bundle::load(&self.bundle_dir, &self.config.runtime)
    }

    /// bundle defaults < preset < config `glad` < command line.
    pub fn overrides(&self, bundle: &Bundle) -> Result<ParamOverrides> {
        let mut o = bundle.manifest.defaults.clone();
        if let Some(p) = &self.preset {
            o = o.merged(&config::preset(p)?);
        }
        o = o.merged(&self.config.glad);
        let cli = ParamOverrides {
            tau: self.params.tau,
            denoise_step: self.params.denoise_step,
            steps: self.params.steps,
            latent: self.params.latent,
            ..Default::default()
        };
        Ok(o.merged(&cli))
    }

    pub fn engine(&self) -> Result<Engine> {
        let bundle = self.load_bundle()?;
        let params = self.overrides(&bundle)?.resolve(bundle.manifest.models.backbone.resolution)?;
        Engine::new(bundle, params)
    }

    /// `n` engines with their own sessions, for `n` pipeline workers.
    pub fn engines(&self, n: usize) -> Result<Vec<Engine>> {
        (0..n.max(1)).map(|_| self.engine()).collect()
    }

    pub fn noise(&self) -> Result<NoiseSource> {
        match self.params.noise_dir.as_ref().or(self.config.noise.dir.as_ref()) {
            Some(dir) => NoiseSource::from_dir(dir),
            None => Ok(NoiseSource::Seeded(self.params.seed.unwrap_or(self.config.noise.seed))),
        }
    }
}
