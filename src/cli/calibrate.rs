//! `glad calibrate`: a verdict threshold from normal images only, with the false-alarm rate it
//! guarantees.
//!
//! Two rules:
//! - default: `threshold = max(normal scores) * (1 + margin)` (margin 0.1). It accepts every
//!   calibration image and leaves room for normal variation;
//! - `--false-alarm-rate R`: the order statistic of the normal scores whose false-alarm rate is
//!   at most R with probability `--confidence` (0.95), distribution-free (`eval::threshold`).
//!
//! Either way the command states the false-alarm rate the threshold guarantees at that
//! confidence, and with `--defects` the share of those defect images it flags.

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
    /// Relative margin above the largest normal score, in [0, 10] (the default rule).
    #[arg(long, default_value_t = 0.1, value_parser = super::parse_finite)]
    pub margin: f32,
    /// Pick the threshold for this false-alarm rate instead, in (0, 0.5]: the order statistic
    /// of the normal scores whose rate is at most this with probability --confidence.
    #[arg(long, value_name = "RATE", value_parser = super::parse_finite)]
    pub false_alarm_rate: Option<f32>,
    /// Confidence of the stated false-alarm rate, in [0.5, 0.999].
    #[arg(long, default_value_t = 0.95, value_name = "C", value_parser = super::parse_finite)]
    pub confidence: f32,
    /// Images of defects (a folder or files): reports how many the threshold flags.
    #[arg(long, num_args = 1.., value_name = "PATH")]
    pub defects: Vec<PathBuf>,
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

/// The order-statistic calibration (`--false-alarm-rate`): the k-th smallest normal score.
pub fn calibration_for_rate(scores: &[f32], rate: f32, confidence: f32) -> Result<Calibration> {
    use crate::eval::threshold::{guaranteed_rate, images_needed, rank_for_rate};
    let mut cal = calibration(scores, 0.0)?;
    if !(rate > 0.0 && rate <= 0.5) {
        bail!("--false-alarm-rate: must be in (0, 0.5], got {rate}");
    }
    if !(0.5..=0.999).contains(&confidence) {
        bail!("--confidence: must be in [0.5, 0.999], got {confidence}");
    }
    let n = scores.len();
    let Some(k) = rank_for_rate(n, f64::from(rate), f64::from(confidence)) else {
        bail!(
            "--false-alarm-rate {rate}: {n} normal images cannot guarantee it at confidence {confidence} (that needs at least {}); \
             the smallest rate {n} images guarantee is {:.4}: add normal images or ask for at least that",
            images_needed(f64::from(rate), f64::from(confidence)),
            guaranteed_rate(n, n, f64::from(confidence))
        );
    };
    let mut sorted = scores.to_vec();
    sorted.sort_by(f32::total_cmp);
    cal.threshold = sorted[k - 1];
    if !(cal.threshold.is_finite() && cal.threshold > 0.0) {
        bail!("the threshold would be {} (normal score {k} of {n}): it must be finite and above 0", cal.threshold);
    }
    cal.rule = format!("order statistic: normal score {k} of {n} (ascending); false-alarm rate <= {rate} with confidence {confidence}");
    Ok(cal)
}

pub fn run(args: CalibrateArgs) -> Result<bool> {
    if !(0.5..=0.999).contains(&args.confidence) {
        bail!("--confidence: must be in [0.5, 0.999], got {}", args.confidence);
    }
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
    let mut cal = match args.false_alarm_rate {
        Some(rate) => calibration_for_rate(&scores, rate, args.confidence)?,
        None => calibration(&scores, args.margin)?,
    };
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
    // What the threshold guarantees: the rank of the largest normal score at or below it.
    let rank = sorted.iter().filter(|&&s| s <= cal.threshold).count();
    let confidence = f64::from(args.confidence);
    if rank == 0 {
        println!("false alarms   every normal image scores above the threshold");
    } else {
        let guaranteed = crate::eval::threshold::guaranteed_rate(sorted.len(), rank, confidence);
        println!(
            "false alarms   {} of {} normal images above it; rate <= {:.4} with confidence {} (order statistic {rank} of {})",
            sorted.len() - rank,
            sorted.len(),
            guaranteed,
            args.confidence,
            sorted.len()
        );
    }
    if !args.defects.is_empty() {
        let dwalk = walk::images(&args.defects);
        if dwalk.is_empty() {
            bail!("--defects: no images found in {:?}", args.defects);
        }
        let mut flagged = 0usize;
        let mut scored = 0usize;
        let mut dfail = dwalk.messages();
        pipeline::run(&mut engines, &noise, &dwalk.files, settings.config.inspect.batch, true, |item: Inspected| match &item.result {
            Ok((insp, _)) if insp.score.is_finite() => {
                scored += 1;
                flagged += usize::from(insp.score > cal.threshold);
            }
            Ok((insp, _)) => dfail.push(format!("{}: non-finite score {}", item.path.display(), insp.score)),
            Err(e) => dfail.push(format!("{e:#}")),
        })?;
        for f in &dfail {
            eprintln!("failed: {f}");
        }
        let share = if scored == 0 { 0.0 } else { flagged as f64 / scored as f64 };
        println!("defects        {flagged} of {scored} flagged ({:.1} %) at this threshold", 100.0 * share);
    }
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
