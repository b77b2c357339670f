//! `glad inspect`: one JSON line per image on stdout, a heatmap overlay PNG per image.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::{CommonArgs, ParamArgs, Settings};
use crate::files as walk;
use crate::imaging;
use crate::pipeline::{self, Inspected};

#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// Image files or folders (searched recursively for png, jpg, jpeg, bmp, tif, tiff).
    #[arg(required = true, value_name = "PATH")]
    pub inputs: Vec<PathBuf>,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub params: ParamArgs,
    /// Output folder for heatmaps (and reconstructions and maps when asked).
    #[arg(long, short = 'o', default_value = "out", value_name = "DIR")]
    pub out: PathBuf,
    /// Images per engine call (1..=256); overrides `inspect.batch`.
    #[arg(long, value_name = "N", value_parser = super::parse_batch)]
    pub batch: Option<usize>,
    /// Engines working in parallel (1..=64); overrides `inspect.workers`.
    #[arg(long, value_name = "N", value_parser = super::parse_workers)]
    pub workers: Option<usize>,
    /// Verdict threshold (finite, above 0); overrides the config's threshold and calibration.
    #[arg(long, value_parser = super::parse_threshold)]
    pub threshold: Option<f32>,
    /// Also write the reconstruction: a PNG (clamped to [-1,1]) and the raw decoder output as
    /// `.npy` (`[3,R,R]` float32, unclamped).
    #[arg(long)]
    pub save_reconstruction: bool,
    /// Add `adp_trace: [[t, score], ...]` to each JSON line: the ADP score at every step it was
    /// computed (what tau and min_step are tuned from).
    #[arg(long)]
    pub trace_adp: bool,
    /// Also write the raw anomaly map as .npy.
    #[arg(long)]
    pub save_map: bool,
    /// Run decode, engine and output one after another instead of overlapping them.
    #[arg(long)]
    pub sequential: bool,
}

pub use crate::files::output_stem;

pub fn progress(n: usize, what: &str) -> ProgressBar {
    let pb = if n > 1 { ProgressBar::new(n as u64) } else { ProgressBar::hidden() };
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

pub fn run(args: InspectArgs) -> Result<bool> {
    let mut settings = Settings::new(&args.common, args.params.clone())?;
    if let Some(b) = args.batch {
        settings.config.inspect.batch = b; // TensorRT profiles cover the batch actually run
    }
    let walk = walk::images(&args.inputs);
    if walk.is_empty() {
        bail!("no images found in {:?}", args.inputs);
    }
    let files = walk.files.clone();
    let workers = args.workers.unwrap_or(settings.config.inspect.workers);
    let mut engines = settings.engines(if args.sequential { 1 } else { workers })?;
    let noise = settings.noise()?;
    let threshold = settings.threshold(args.threshold, &engines[0])?;
    let calibration = settings.config.calibration.clone().filter(|_| args.threshold.is_none());
    let batch = args.batch.unwrap_or(settings.config.inspect.batch);
    let save_rec = args.save_reconstruction || settings.config.inspect.save_reconstruction;
    let save_map = args.save_map || settings.config.inspect.save_map;
    std::fs::create_dir_all(&args.out).with_context(|| format!("{}: cannot create output folder", args.out.display()))?;
    tracing::info!(images = files.len(), batch, workers, params = ?engines[0].params, "inspecting");

    let stdout = std::io::stdout();
    let mut failures: Vec<String> = Vec::new();
    for p in &walk.problems {
        let _ = writeln!(stdout.lock(), "{}", json!({ "path": p.path.to_string_lossy(), "ok": false, "error": p.error }));
        failures.push(p.error.clone());
    }
    let pb = progress(files.len(), "inspect");
    let out_dir = args.out.clone();
    let sink = |item: Inspected| {
        let line = match write_outputs(&item, &out_dir, threshold, save_rec, save_map, args.trace_adp) {
            Ok(v) => v,
            Err(e) => {
                let msg = format!("{e:#}");
                failures.push(msg.clone());
                json!({ "path": item.path.to_string_lossy(), "ok": false, "error": msg })
            }
        };
        let _ = writeln!(stdout.lock(), "{line}");
        pb.inc(1);
    };
    pipeline::run(&mut engines, &noise, &files, batch, !args.sequential, sink)?;
    pb.finish_and_clear();
    if let Some(c) = calibration {
        tracing::info!(threshold = c.threshold, rule = %c.rule, "verdicts against the station calibration");
    }
    if !failures.is_empty() {
        eprintln!("{} of {} images failed:", failures.len(), walk.len());
        for f in &failures {
            eprintln!("  {f}");
        }
        return Ok(false);
    }
    Ok(true)
}

/// Writes an image's files and returns its JSON line; an error means the image failed.
fn write_outputs(
    item: &Inspected,
    out: &Path,
    threshold: Option<f32>,
    save_rec: bool,
    save_map: bool,
    trace_adp: bool,
) -> Result<serde_json::Value> {
    let (insp, times) = match &item.result {
        Ok(v) => v,
        Err(e) => bail!("{e:#}"),
    };
    if !insp.score.is_finite() {
        bail!("{}: the anomaly score is {} (the models produced non-finite values)", item.path.display(), insp.score);
    }
    let stem = output_stem(&item.path);
    let image = item.image.as_ref().expect("inspected images were decoded");
    let (lo, hi) = imaging::heat_range(&insp.map, threshold);
    let heatmap = out.join(format!("{stem}.heatmap.png"));
    imaging::save_png(&imaging::heatmap_overlay(image, insp.map.view(), lo, hi), &heatmap)?;
    let mut v = json!({
        "path": item.path.to_string_lossy(),
        "ok": true,
        "score": insp.score,
        "verdict": threshold.map(|t| if insp.score > t { "anomalous" } else { "normal" }),
        "normalized_score": threshold.map(|t| insp.score / t),
        "adp_step": insp.adp.map(|a| a.step),
        "adp_score": insp.adp.map(|a| a.score),
        "adp_stop": insp.adp.map(|a| if a.on_threshold { "threshold" } else { "min_step" }),
        "heatmap": heatmap.to_string_lossy(),
        "times_ms": times,
    });
    if save_rec {
        let p = out.join(format!("{stem}.reconstruction.png"));
        imaging::save_png(&imaging::tensor_to_rgb(insp.reconstruction.view()), &p)?;
        let raw = out.join(format!("{stem}.reconstruction.npy"));
        imaging::save_npy(&insp.reconstruction, &raw)?;
        v["reconstruction"] = json!(p.to_string_lossy());
        v["reconstruction_npy"] = json!(raw.to_string_lossy());
    }
    if trace_adp {
        v["adp_trace"] = json!(insp.adp_trace);
    }
    if save_map {
        let p = out.join(format!("{stem}.map.npy"));
        imaging::save_npy(&insp.map, &p)?;
        v["map"] = json!(p.to_string_lossy());
    }
    Ok(v)
}
