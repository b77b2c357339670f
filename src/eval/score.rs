//! Scoring a test set: the paper's seven metrics from scored images, ground-truth masks,
//! the gallery of heatmaps, and the feature-only baseline. `glad eval` and `glad tune` use it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use ndarray::{Array2, Array4, Axis};
use serde::Serialize;

use super::dataset::{self, Sample, TestSet};
use super::metrics;
use crate::engine::{Engine, OnnxModels};
use crate::glad::bank::FeatureBank;
use crate::imaging;

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
    pub fn values(&self) -> [Option<f64>; 7] {
        [self.image_auroc, self.image_ap, self.image_f1_max, self.pixel_auroc, self.pixel_ap, self.pixel_f1_max, self.pro]
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassResult {
    pub class: String,
    pub images: usize,
    pub failed: usize,
    pub metrics: Metrics,
    /// Input against reconstruction (`None` for the baseline, which reconstructs nothing).
    pub fidelity: Option<super::fidelity::Fidelity>,
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
pub fn mask_or_warn(sample: &Sample, side: usize, image: (u32, u32), notes: &mut Vec<String>) -> Option<Array2<bool>> {
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

/// A synthetic anomaly mask (`> 0.5` as defect) resized (nearest) to `s x s`.
pub fn mask_at(mask: &Array2<f32>, s: usize) -> Array2<bool> {
    let (h, w) = mask.dim();
    let img =
        image::GrayImage::from_fn(w as u32, h as u32, |x, y| image::Luma([if mask[[y as usize, x as usize]] > 0.5 { 255 } else { 0 }]));
    let img = image::imageops::resize(&img, s as u32, s as u32, image::imageops::FilterType::Nearest);
    Array2::from_shape_fn((s, s), |(y, x)| img.get_pixel(x as u32, y as u32)[0] > 127)
}

/// Side of each gallery panel, in pixels.
pub const PANEL: u32 = 192;

/// `gallery/<class>/<defect>__<name>` (named as inspect names outputs, so unique; `.png` added
/// unless the input is one): panels
/// input | reconstruction (when there is one) | heatmap over the input, colours spanning the
/// map's range | ground truth (black for a normal image).
pub fn save_gallery(
    gallery: &Path,
    sample: &Sample,
    img: &image::RgbImage,
    map: &Array2<f32>,
    rec: Option<ndarray::ArrayView3<'_, f32>>,
    mask: Option<&Array2<bool>>,
) -> Result<()> {
    let rel = Path::new(&sample.defect).join(sample.path.file_name().unwrap_or_default());
    // a PNG input keeps its own name (`stain__000.png`); any other gets `.png` added, so
    // `000.jpg` and `000.png` still differ
    let stem = crate::files::output_stem(&rel);
    let name = if stem.to_ascii_lowercase().ends_with(".png") { stem } else { format!("{stem}.png") };
    imaging::save_png(&gallery_panels(img, map, rec, mask), &gallery.join(name))
}

/// The gallery's panels of one image (see [`save_gallery`]).
pub fn gallery_panels(
    img: &image::RgbImage,
    map: &Array2<f32>,
    rec: Option<ndarray::ArrayView3<'_, f32>>,
    mask: Option<&Array2<bool>>,
) -> image::RgbImage {
    let (lo, hi) = imaging::heat_range(map, None);
    let heat = imaging::heatmap_overlay(img, map.view(), lo, hi);
    let truth = mask.map_or_else(|| imaging::mask_to_rgb(&Array2::from_elem(map.dim(), false)), imaging::mask_to_rgb);
    let rec = rec.map(imaging::tensor_to_rgb);
    let mut panels = vec![img];
    panels.extend(rec.as_ref());
    panels.push(&heat);
    panels.push(&truth);
    imaging::panels(&panels, PANEL)
}

/// The feature-only baseline on one class: a bank from train/good, then nearest-patch maps.
#[allow(clippy::too_many_arguments)]
pub fn run_baseline(
    mut engine: Engine,
    root: &Path,
    set: &TestSet,
    batch: usize,
    gallery: &Path,
    failures: &mut Vec<String>,
    notes: &mut Vec<String>,
    tick: &dyn Fn(),
) -> Result<Vec<Scored>> {
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
    let mut scored = Vec::new();
    for chunk in set.samples.chunks(batch.max(1)) {
        let mut ok = Vec::new();
        for sample in chunk {
            tick();
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
            save_gallery(gallery, sample, &img, &m.map, None, mask.as_ref())?;
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
    Ok(scored)
}
