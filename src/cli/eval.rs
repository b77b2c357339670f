//! `glad eval`: the paper's metrics on an MVTec-layout dataset.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use ndarray::{Array2, Array3, Axis};

use super::inspect::progress;
use super::{CommonArgs, ParamArgs, Settings};
use crate::eval::dataset::{self, TestSet};
use crate::eval::fidelity::Fidelity;
use crate::eval::score::{compute_metrics, mask_or_warn, run_baseline, save_gallery, trace_cell, ClassResult, Scored};
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

/// An inspected image's input and reconstruction `[3, R, R]` and its defect mask.
type FidelityPair = (Array3<f32>, Array3<f32>, Option<Array2<bool>>);

/// Inspects one class's test set; images that fail are reported and left out. Also measures
/// the reconstruction's fidelity (input against reconstruction, on normals and around defects).
fn run_class(
    settings: &Settings,
    set: &TestSet,
    batch: usize,
    gallery: &Path,
    failures: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Result<(Vec<Scored>, Fidelity)> {
    let mut engines = settings.engines(settings.config.inspect.workers)?;
    let noise = settings.noise()?;
    let s = engines[0].params.backbone_resolution;
    let files: Vec<PathBuf> = set.samples.iter().map(|x| x.path.clone()).collect();
    let pb = progress(files.len(), &format!("eval {}", set.class));
    let mut scored: BTreeMap<usize, Scored> = BTreeMap::new();
    let mut local_failures = Vec::new();
    let mut local_notes = Vec::new();
    let r = engines[0].resolution();
    // (input, reconstruction, mask) of every inspected image, for the fidelity report
    let mut pairs: Vec<FidelityPair> = Vec::new();
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
            save_gallery(gallery, sample, img, &insp.map, Some(insp.reconstruction.view()), mask.as_ref())?;
            if !sample.label || mask.is_some() {
                pairs.push((imaging::preprocess(img, r), insp.reconstruction.clone(), mask.clone()));
            }
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
    let mut fidelity = Fidelity::default();
    for chunk in pairs.chunks(batch.max(1)) {
        let x = ndarray::stack(Axis(0), &chunk.iter().map(|p| p.0.view()).collect::<Vec<_>>())?;
        let rec = ndarray::stack(Axis(0), &chunk.iter().map(|p| p.1.view()).collect::<Vec<_>>())?;
        let tx = engines[0].backbone_tokens(x.view())?;
        let tr = engines[0].backbone_tokens(rec.view())?;
        for ((a, b), p) in tx.iter().zip(&tr).zip(chunk) {
            fidelity.add(a, b, p.2.as_ref())?;
        }
    }
    Ok((scored.into_values().collect(), fidelity))
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
        // A class that cannot run (a missing bundle, an unreadable folder) is reported with the
        // others; the metrics of the classes already done are kept and written.
        let mut failures = Vec::new();
        let mut notes = Vec::new();
        let outcome = (|| -> Result<(TestSet, Vec<Scored>, Option<Fidelity>)> {
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
            let gallery = args.out.join("gallery").join(class);
            let (scored, fidelity) = if args.baseline {
                let pb = progress(set.samples.len(), &format!("baseline {}", set.class));
                let s = run_baseline(settings.engine()?, &args.dataset, &set, batch, &gallery, &mut failures, &mut notes, &|| pb.inc(1))?;
                pb.finish_and_clear();
                (s, None)
            } else {
                let (s, f) = run_class(&settings, &set, batch, &gallery, &mut failures, &mut notes)?;
                (s, Some(f))
            };
            Ok((set, scored, fidelity))
        })();
        let (set, scored, fidelity) = match outcome {
            Ok(v) => v,
            Err(e) => {
                let msg = format!("class `{class}`: {e:#}");
                eprintln!("error: {msg}");
                results.push(ClassResult {
                    class: class.clone(),
                    images: 0,
                    failed: 0,
                    metrics: Default::default(),
                    fidelity: None,
                    problems: vec![msg.clone()],
                });
                all_failures.push(msg);
                all_failed_classes.push(class.clone());
                continue;
            }
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
        if let Some(f) = &fidelity {
            println!("{class}: {}", f.summary());
        }
        results.push(ClassResult { class: class.clone(), images: scored.len(), failed: failures.len(), metrics, fidelity, problems });
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
