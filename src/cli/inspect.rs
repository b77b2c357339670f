//! `glad inspect`: one JSON line per image on stdout, a heatmap overlay PNG per image.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::{CommonArgs, ParamArgs, Settings};
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
    /// Images per engine call; overrides `inspect.batch`.
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    /// Engines working in parallel; overrides `inspect.workers`.
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Verdict threshold; overrides the config's threshold and calibration.
    #[arg(long)]
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

const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

/// Files named directly, plus the images under named folders, sorted per folder.
pub fn collect_images(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("{}: cannot list folder", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if p.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str())) {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    for p in inputs {
        if p.is_dir() {
            walk(p, &mut files)?;
        } else if p.exists() {
            files.push(p.clone());
        } else {
            bail!("{}: no such file or folder", p.display());
        }
    }
    Ok(files)
}

/// Output stem for an input: its path with separators turned into `__`, so images of the same
/// name in different folders do not collide.
pub fn output_stem(path: &Path) -> String {
    let s = path.with_extension("");
    let parts: Vec<String> = s
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(p) => Some(p.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    parts.join("__")
}

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
    let files = collect_images(&args.inputs)?;
    if files.is_empty() {
        bail!("no images found in {:?}", args.inputs);
    }
    let workers = args.workers.unwrap_or(settings.config.inspect.workers);
    let mut engines = settings.engines(if args.sequential { 1 } else { workers })?;
    let noise = settings.noise()?;
    let threshold = settings.threshold(args.threshold, &engines[0])?;
    let calibration = settings.config.calibration.clone();
    let batch = args.batch.unwrap_or(settings.config.inspect.batch);
    let save_rec = args.save_reconstruction || settings.config.inspect.save_reconstruction;
    let save_map = args.save_map || settings.config.inspect.save_map;
    std::fs::create_dir_all(&args.out).with_context(|| format!("{}: cannot create output folder", args.out.display()))?;
    tracing::info!(images = files.len(), batch, workers, params = ?engines[0].params, "inspecting");

    let pb = progress(files.len(), "inspect");
    let mut failures: Vec<String> = Vec::new();
    let out_dir = args.out.clone();
    let stdout = std::io::stdout();
    let sink = |item: Inspected| {
        let line = match write_outputs(&item, &out_dir, threshold, save_rec, save_map, args.trace_adp) {
            Ok(v) => v,
            Err(e) => {
                let msg = format!("{e:#}");
                failures.push(msg.clone());
                json!({ "path": item.path, "ok": false, "error": msg })
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
        eprintln!("{} of {} images failed:", failures.len(), files.len());
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
        "path": item.path,
        "ok": true,
        "score": insp.score,
        "verdict": threshold.map(|t| if insp.score > t { "anomalous" } else { "normal" }),
        "normalized_score": threshold.map(|t| insp.score / t),
        "adp_step": insp.adp.map(|a| a.step),
        "adp_score": insp.adp.map(|a| a.score),
        "adp_stop": insp.adp.map(|a| if a.on_threshold { "threshold" } else { "min_step" }),
        "heatmap": heatmap,
        "times_ms": times,
    });
    if save_rec {
        let p = out.join(format!("{stem}.reconstruction.png"));
        imaging::save_png(&imaging::tensor_to_rgb(insp.reconstruction.view()), &p)?;
        let raw = out.join(format!("{stem}.reconstruction.npy"));
        imaging::save_npy(&insp.reconstruction, &raw)?;
        v["reconstruction"] = json!(p);
        v["reconstruction_npy"] = json!(raw);
    }
    if trace_adp {
        v["adp_trace"] = json!(insp.adp_trace);
    }
    if save_map {
        let p = out.join(format!("{stem}.map.npy"));
        imaging::save_npy(&insp.map, &p)?;
        v["map"] = json!(p);
    }
    Ok(v)
}
