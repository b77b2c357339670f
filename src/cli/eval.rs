//! `glad eval`: the paper's metrics on an MVTec-layout dataset.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use ndarray::{Array2, Array4, Axis};
use serde::Serialize;

use super::inspect::progress;
use super::{CommonArgs, ParamArgs, Settings};
use crate::engine::OnnxModels;
use crate::eval::dataset::{self, Sample, TestSet};
use crate::eval::metrics;
use crate::glad::bank::FeatureBank;
use crate::imaging;
use crate::pipeline::{self, Inspected};

#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// Dataset root in the MVTec layout (<class>/test/<defect>, <class>/ground_truth/<defect>).
    #[arg(long, value_name = "ROOT")]
    pub dataset: PathBuf,
    /// Class folder name, or `all` for every class under ROOT.
    #[arg(long, default_value = "all")]
    pub class: String,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub params: ParamArgs,
    /// Output folder: metrics.json, per_image.csv and gallery/<class>/ heatmaps.
    #[arg(long, short = 'o', default_value = "out/eval", value_name = "DIR")]
    pub out: PathBuf,
    /// Images per engine call (1..=256).
    #[arg(long, value_name = "N", value_parser = super::parse_batch)]
    pub batch: Option<usize>,
    /// Score with the feature-only baseline instead of GLAD: the bundle's backbone, each test
    /// patch against its nearest patch in <class>/train/good, no diffusion.
    #[arg(long)]
    pub baseline: bool,
    /// Add an `adp_trace` column to per_image.csv: `t:score` at every ADP step, `;`-separated.
    #[arg(long)]
    pub trace_adp: bool,
}

/// The seven metrics of the paper's table; `None` where undefined (one class only).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Metrics {
    pub image_auroc: Option<f64>,
    pub image_ap: Option<f64>,
    pub image_f1_max: Option<f64>,
    pub pixel_auroc: Option<f64>,
    pub pixel_ap: Option<f64>,
    pub pixel_f1_max: Option<f64>,
    pub pro: Option<f64>,
}

impl Metrics {
    fn values(&self) -> [Option<f64>; 7] {
        [self.image_auroc, self.image_ap, self.image_f1_max, self.pixel_auroc, self.pixel_ap, self.pixel_f1_max, self.pro]
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassResult {
    pub class: String,
    pub images: usize,
    pub failed: usize,
    pub metrics: Metrics,
    pub problems: Vec<String>,
}

/// One inspected test image.
#[derive(Debug, Clone)]
pub struct Scored {
    pub path: PathBuf,
    pub defect: String,
    pub label: bool,
    pub score: f32,
    pub adp_step: Option<i64>,
    /// `(t, ADP score)` per step (empty for the baseline or with ADP off).
    pub adp_trace: Vec<(i64, f32)>,
    pub map: Array2<f32>,
    pub mask: Option<Array2<bool>>,
}

/// An ADP trace as one CSV cell: `t:score` pairs separated by `;` (no commas, no quoting).
pub fn trace_cell(trace: &[(i64, f32)]) -> String {
    trace.iter().map(|(t, s)| format!("{t}:{s}")).collect::<Vec<_>>().join(";")
}

/// Loads a ground-truth mask, resized (nearest) to `side`, `> 127` as defect. A mask whose size
/// differs from its image's (`image`, when known) is resized with a warning.
pub fn load_mask(path: &Path, side: usize, image: Option<(u32, u32)>) -> Result<Array2<bool>> {
    let img = imaging::load_luma(path).map_err(|e| anyhow::anyhow!("cannot decode mask: {e:#}"))?;
    if let Some((w, h)) = image {
        if img.dimensions() != (w, h) {
            tracing::warn!(
                "{}: mask is {}x{}, its image {w}x{h}; resized to the map (nearest neighbour)",
                path.display(),
                img.width(),
                img.height()
            );
        }
    }
    let img = if img.dimensions() == (side as u32, side as u32) {
        img
    } else {
        image::imageops::resize(&img, side as u32, side as u32, image::imageops::FilterType::Nearest)
    };
    Ok(Array2::from_shape_fn((side, side), |(y, x)| img.get_pixel(x as u32, y as u32)[0] > 127))
}

/// [`load_mask`], an undecodable mask treated as a missing one (the image stays in the
/// image-level metrics, out of the pixel metrics) with a warning kept in `notes`.
fn mask_or_warn(sample: &Sample, side: usize, image: (u32, u32), notes: &mut Vec<String>) -> Option<Array2<bool>> {
    let path = sample.mask.as_deref()?;
    match load_mask(path, side, Some(image)) {
        Ok(m) => Some(m),
        Err(e) => {
            let msg = format!("{}: {e:#}; treated as a missing mask (left out of the pixel metrics)", sample.path.display());
            tracing::warn!("{msg}");
            notes.push(msg);
            None
        }
    }
}

/// Image- and pixel-level metrics of scored images. Anomalous images without a mask are left
/// out of the pixel metrics; normal images count as all-normal pixels.
pub fn compute_metrics(scored: &[Scored]) -> Metrics {
    let scores: Vec<f32> = scored.iter().map(|s| s.score).collect();
    let labels: Vec<bool> = scored.iter().map(|s| s.label).collect();
    let normal_masks: Vec<Array2<bool>> = scored.iter().map(|s| Array2::from_elem(s.map.dim(), false)).collect();
    let (mut maps, mut masks) = (Vec::new(), Vec::new());
    for (s, empty) in scored.iter().zip(&normal_masks) {
        match (&s.mask, s.label) {
            (Some(m), _) => masks.push(m.view()),
            (None, false) => masks.push(empty.view()),
            (None, true) => continue,
        }
        maps.push(s.map.view());
    }
    let image = metrics::CurveMetrics::compute(&scores, &labels);
    let pixel = metrics::CurveMetrics::from_maps(&maps, &masks);
    Metrics {
        image_auroc: image.as_ref().map(|m| m.auroc),
        image_ap: image.as_ref().map(|m| m.average_precision),
        image_f1_max: image.as_ref().map(|m| m.f1_max),
        pixel_auroc: pixel.as_ref().map(|m| m.auroc),
        pixel_ap: pixel.as_ref().map(|m| m.average_precision),
        pixel_f1_max: pixel.as_ref().map(|m| m.f1_max),
        pro: metrics::pro_auc(&maps, &masks, 0.3, 200),
    }
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("   -  ".into(), |v| format!("{v:.4}"))
}

fn print_row(name: &str, images: &str, v: &[Option<f64>]) {
    let cells: Vec<String> = v.iter().map(|&x| format!("{:>7}", fmt(x))).collect();
    println!("{name:<14} {images:>6} {}", cells.join(" "));
}

pub fn print_table(results: &[ClassResult]) {
    println!(
        "{:<14} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}",
        "class", "images", "I-AUROC", "I-AP", "I-F1", "P-AUROC", "P-AP", "P-F1", "PRO"
    );
    for r in results {
        print_row(&r.class, &r.images.to_string(), &r.metrics.values());
    }
    if results.len() > 1 {
        let mean: Vec<Option<f64>> = (0..7)
            .map(|k| {
                let vals: Vec<f64> = results.iter().filter_map(|r| r.metrics.values()[k]).collect();
                (!vals.is_empty()).then(|| vals.iter().sum::<f64>() / vals.len() as f64)
            })
            .collect();
        print_row("mean", "", &mean);
    }
}

/// `gallery/<class>/<defect>__<name>.heatmap.png` (named as inspect names outputs, so unique):
/// the heatmap over the image, colours spanning the map's range.
fn save_gallery(gallery: &Path, sample: &Sample, img: &image::RgbImage, map: &Array2<f32>) -> Result<()> {
    let (lo, hi) = imaging::heat_range(map, None);
    let rel = Path::new(&sample.defect).join(sample.path.file_name().unwrap_or_default());
    let name = format!("{}.heatmap.png", super::inspect::output_stem(&rel));
    imaging::save_png(&imaging::heatmap_overlay(img, map.view(), lo, hi), &gallery.join(name))
}

/// Inspects one class's test set; images that fail are reported and left out.
fn run_class(
    settings: &Settings,
    set: &TestSet,
    batch: usize,
    gallery: &Path,
    failures: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Result<Vec<Scored>> {
    let mut engines = settings.engines(settings.config.inspect.workers)?;
    let noise = settings.noise()?;
    let s = engines[0].params.backbone_resolution;
    let files: Vec<PathBuf> = set.samples.iter().map(|x| x.path.clone()).collect();
    let pb = progress(files.len(), &format!("eval {}", set.class));
    let mut scored: BTreeMap<usize, Scored> = BTreeMap::new();
    let mut local_failures = Vec::new();
    let mut local_notes = Vec::new();
    pipeline::run(&mut engines, &noise, &files, batch, true, |item: Inspected| {
        pb.inc(1);
        let sample = &set.samples[item.index];
        let outcome = (|| -> Result<Scored> {
            let (insp, _) = item.result.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            if !insp.score.is_finite() {
                bail!("{}: the anomaly score is {}", item.path.display(), insp.score);
            }
            let img = item.image.as_ref().expect("inspected images were decoded");
            let mask = mask_or_warn(sample, s, img.dimensions(), &mut local_notes);
            save_gallery(gallery, sample, img, &insp.map)?;
            Ok(Scored {
                path: item.path.clone(),
                defect: sample.defect.clone(),
                label: sample.label,
                score: insp.score,
                adp_step: insp.adp.map(|a| a.step),
                adp_trace: insp.adp_trace.clone(),
                map: insp.map.clone(),
                mask,
            })
        })();
        match outcome {
            Ok(s) => {
                scored.insert(item.index, s);
            }
            Err(e) => local_failures.push(format!("{e:#}")),
        }
    })?;
    pb.finish_and_clear();
    failures.extend(local_failures);
    notes.extend(local_notes);
    Ok(scored.into_values().collect())
}

/// The feature-only baseline on one class: a bank from train/good, then nearest-patch maps.
fn run_baseline(
    settings: &Settings,
    root: &Path,
    set: &TestSet,
    batch: usize,
    gallery: &Path,
    failures: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Result<Vec<Scored>> {
    let mut engine = settings.engine()?;
    let (r, s) = (engine.resolution(), engine.params.backbone_resolution);
    let params = engine.params.clone();
    let mut models = OnnxModels::new(&mut engine.bundle);
    let load = |p: &Path| imaging::load_rgb(p).map(|img| (imaging::preprocess(&img, r), img));
    let train = dataset::train_good(root, &set.class)?;
    if train.is_empty() {
        bail!("{}: no normal training images for the baseline's feature bank", root.join(&set.class).join("train/good").display());
    }
    let mut normal = Array4::<f32>::zeros((train.len(), 3, r, r));
    for (i, p) in train.iter().enumerate() {
        normal.index_axis_mut(Axis(0), i).assign(&load(p)?.0);
    }
    let bank = FeatureBank::fit(&mut models, &params, normal.view(), batch.max(4))?;
    let pb = progress(set.samples.len(), &format!("baseline {}", set.class));
    let mut scored = Vec::new();
    for chunk in set.samples.chunks(batch.max(1)) {
        let mut ok = Vec::new();
        for sample in chunk {
            pb.inc(1);
            match load(&sample.path) {
                Ok((t, img)) => {
                    let mask = mask_or_warn(sample, s, img.dimensions(), notes);
                    ok.push((sample, t, img, mask))
                }
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
        if ok.is_empty() {
            continue;
        }
        let mut x = Array4::<f32>::zeros((ok.len(), 3, r, r));
        for (i, (_, t, _, _)) in ok.iter().enumerate() {
            x.index_axis_mut(Axis(0), i).assign(t);
        }
        for ((sample, _, img, mask), m) in ok.into_iter().zip(bank.maps(&mut models, &params, x.view())?) {
            save_gallery(gallery, sample, &img, &m.map)?;
            scored.push(Scored {
                path: sample.path.clone(),
                defect: sample.defect.clone(),
                label: sample.label,
                score: m.score,
                adp_step: None,
                adp_trace: Vec::new(),
                map: m.map,
                mask,
            });
        }
    }
    pb.finish_and_clear();
    Ok(scored)
}

pub fn run(args: EvalArgs) -> Result<bool> {
    let mut base = Settings::new(&args.common, args.params.clone())?;
    if let Some(b) = args.batch {
        base.config.inspect.batch = b; // TensorRT profiles cover the batch actually run
    }
    let classes = if args.class == "all" { dataset::classes(&args.dataset)? } else { vec![args.class.clone()] };
    std::fs::create_dir_all(&args.out).with_context(|| format!("{}: cannot create output folder", args.out.display()))?;
    let csv_path = args.out.join("per_image.csv");
    let mut csv = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["class", "path", "defect", "label", "score", "adp_step"];
    if args.trace_adp {
        header.push("adp_trace");
    }
    csv.write_record(&header)?;
    let batch = args.batch.unwrap_or(base.config.inspect.batch);
    let mut results = Vec::new();
    let mut all_failures = Vec::new();
    let mut all_failed_classes = Vec::new();
    for class in &classes {
        let set = dataset::test_set(&args.dataset, class)?;
        for p in &set.problems {
            eprintln!("warning: {p}");
        }
        // `{class}` in the bundle path picks a per-class bundle; a dataset-only preset gets the class.
        let mut settings =
            Settings { bundle_dir: PathBuf::from(base.bundle_dir.to_string_lossy().replace("{class}", class)), ..base.clone() };
        if let Some(p) = &settings.preset {
            if !p.contains('/') {
                settings.preset = Some(format!("{p}/{class}"));
            }
        }
        let mut failures = Vec::new();
        let mut notes = Vec::new();
        let gallery = args.out.join("gallery").join(class);
        let scored = if args.baseline {
            run_baseline(&settings, &args.dataset, &set, batch, &gallery, &mut failures, &mut notes)?
        } else {
            run_class(&settings, &set, batch, &gallery, &mut failures, &mut notes)?
        };
        for s in &scored {
            let mut row = vec![
                class.clone(),
                s.path.to_string_lossy().into_owned(),
                s.defect.clone(),
                (s.label as u8).to_string(),
                s.score.to_string(),
                s.adp_step.map_or(String::new(), |v| v.to_string()),
            ];
            if args.trace_adp {
                row.push(trace_cell(&s.adp_trace));
            }
            csv.write_record(&row)?;
        }
        if scored.is_empty() {
            all_failed_classes.push(class.clone());
        }
        let metrics = compute_metrics(&scored);
        let mut problems = set.problems.clone();
        problems.extend(notes);
        problems.extend(failures.iter().cloned());
        results.push(ClassResult { class: class.clone(), images: scored.len(), failed: failures.len(), metrics, problems });
        all_failures.extend(failures);
    }
    print_table(&results);
    let json_path = args.out.join("metrics.json");
    imaging::write_atomic(&json_path, serde_json::to_string_pretty(&results)?.as_bytes())?;
    let csv_bytes = csv.into_inner().map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", csv_path.display()))?;
    imaging::write_atomic(&csv_path, &csv_bytes)?;
    eprintln!("wrote {}, {} and {}", json_path.display(), csv_path.display(), args.out.join("gallery").display());
    if !all_failures.is_empty() {
        eprintln!("{} images failed and were left out:", all_failures.len());
        for f in &all_failures {
            eprintln!("  {f}");
        }
    }
    if !all_failed_classes.is_empty() {
        eprintln!("every image failed in: {}", all_failed_classes.join(", "));
        return Ok(false);
    }
    Ok(true)
}
