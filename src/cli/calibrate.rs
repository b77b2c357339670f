//! `glad calibrate`: a verdict threshold from normal images only.
//!
//! Rule: `threshold = max(normal scores) * (1 + margin)` (margin 0.1 by default). A station
//! has few normal images and no defects to balance against, so a quantile of a small sample
//! is unstable and would flag the calibration images themselves; the maximum with a margin
//! accepts every calibration image and leaves room for normal variation. The distribution
//! (mean, std, quantiles) is printed so the margin can be judged.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::inspect::progress;
use super::{CommonArgs, ParamArgs, Settings};
use crate::config::Calibration;
use crate::files as walk;
use crate::pipeline::{self, Inspected};

/// Fewer normal images than this get a warning: the maximum of a handful of scores is a poor
/// threshold.
pub const MIN_NORMAL_IMAGES: usize = 5;
/// Largest `--margin`.
pub const MAX_MARGIN: f32 = 10.0;

#[derive(Debug, Clone, Args)]
pub struct CalibrateArgs {
    /// Folder (or files) of normal images from the station.
    #[arg(long, required = true, num_args = 1.., value_name = "PATH")]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub params: ParamArgs,
    /// Relative margin above the largest normal score, in [0, 10].
    #[arg(long, default_value_t = 0.1, value_parser = super::parse_finite)]
    pub margin: f32,
    /// Station config to write: the --config file (or defaults) with `bundle` and `calibration` set.
    #[arg(long, default_value = "station.yaml", value_name = "FILE")]
    pub write: PathBuf,
    /// Also store the calibration in the bundle's bundle.yaml, so `glad inspect --bundle DIR`
    /// gives verdicts without a config; only with the bundle's default settings.
    #[arg(long)]
    pub write_bundle: bool,
}

fn quantile(sorted: &[f32], q: f32) -> f32 {
    let pos = q * (sorted.len() - 1) as f32;
    let (i, f) = (pos.floor() as usize, pos - pos.floor());
    let j = (i + 1).min(sorted.len() - 1);
    sorted[i] * (1.0 - f) + sorted[j] * f
}

pub fn calibration(scores: &[f32], margin: f32) -> Result<Calibration> {
    if scores.is_empty() {
        bail!("no normal image could be scored");
    }
    if !margin.is_finite() || !(0.0..=MAX_MARGIN).contains(&margin) {
        bail!("--margin: must be a finite number in [0, {MAX_MARGIN}], got {margin}");
    }
    if let Some(bad) = scores.iter().find(|s| !s.is_finite() || **s < 0.0) {
        bail!("a normal score is {bad}: no threshold can be computed from it");
    }
    let n = scores.len() as f32;
    let mean = scores.iter().sum::<f32>() / n;
    let std = (scores.iter().map(|s| (s - mean).powi(2)).sum::<f32>() / n).sqrt();
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let threshold = max * (1.0 + margin);
    if !(threshold.is_finite() && threshold > 0.0) {
        bail!("the threshold would be {threshold} (largest normal score {max}, margin {margin}): it must be finite and above 0");
    }
    Ok(Calibration {
        threshold,
        rule: format!("max of {} normal scores x (1 + {margin})", scores.len()),
        normal_count: scores.len(),
        normal_mean: mean,
        normal_std: std,
        normal_max: max,
        settings: None,
    })
}

pub fn run(args: CalibrateArgs) -> Result<bool> {
    let settings = Settings::new(&args.common, args.params.clone())?;
    let walk = walk::images(&args.images);
    if walk.is_empty() {
        bail!("no images found in {:?}", args.images);
    }
    let files = walk.files.clone();
    let mut engines = settings.engines(settings.config.inspect.workers)?;
    if args.write_bundle && !crate::engine::runs_bundle_defaults(&engines[0], &settings.noise_config()) {
        bail!("--write-bundle: a bundle's calibration must be made with its default settings and noise; drop the preset, `glad:` keys, parameter flags and --seed");
    }
    let noise = settings.noise()?;
    let pb = progress(files.len(), "calibrate");
    let mut scores = Vec::new();
    let mut failures = walk.messages();
    pipeline::run(&mut engines, &noise, &files, settings.config.inspect.batch, true, |item: Inspected| {
        pb.inc(1);
        match &item.result {
            Ok((insp, _)) if insp.score.is_finite() => scores.push(insp.score),
            Ok((insp, _)) => failures.push(format!("{}: non-finite score {}", item.path.display(), insp.score)),
            Err(e) => failures.push(format!("{e:#}")),
        }
    })?;
    pb.finish_and_clear();
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("failed: {f}");
        }
        bail!(
            "{} of {} normal images failed; {} was not written (a threshold from the others would not cover them)",
            failures.len(),
            walk.len(),
            args.write.display()
        );
    }
    if scores.len() < MIN_NORMAL_IMAGES {
        tracing::warn!(
            images = scores.len(),
            "calibrating on fewer than {MIN_NORMAL_IMAGES} normal images: the threshold is the maximum of very few scores"
        );
    }
    let mut cal = calibration(&scores, args.margin)?;
    cal.settings = Some(settings.calibrated_with(&engines[0]));
    let mut sorted = scores.clone();
    sorted.sort_by(f32::total_cmp);
    println!("normal images  {}", cal.normal_count);
    println!("score mean     {:.6}  std {:.6}", cal.normal_mean, cal.normal_std);
    println!(
        "score min      {:.6}  p50 {:.6}  p90 {:.6}  p99 {:.6}  max {:.6}",
        sorted[0],
        quantile(&sorted, 0.5),
        quantile(&sorted, 0.9),
        quantile(&sorted, 0.99),
        cal.normal_max
    );
    println!("threshold      {:.6}  ({})", cal.threshold, cal.rule);
    let mut station = settings.config.clone();
    station.bundle = Some(settings.bundle_dir.clone());
    station.preset = settings.preset.clone();
    // The command-line settings go into the station config, so `inspect --config` scores as
    // the calibration did.
    station.glad = station.glad.merged(&settings.cli_overrides());
    station.noise = settings.noise_config();
    if args.write_bundle {
        let path = engines[0].bundle.dir.join("bundle.yaml");
        crate::bundle::edit::write_block(&path, "calibration", &cal)?;
        eprintln!("wrote the calibration into {}", path.display());
    }
    station.calibration = Some(cal);
    let text = format!(
        "# Station config written by `glad calibrate` from {} normal images; `glad inspect --config {}` uses its threshold.\n{}",
        scores.len(),
        args.write.display(),
        serde_yaml::to_string(&station)?
    );
    crate::imaging::write_atomic(&args.write, text.as_bytes())
        .with_context(|| format!("{}: cannot write station config", args.write.display()))?;
    eprintln!("wrote {}", args.write.display());
    Ok(true)
}
