//! The metrics of GLAD's table, computed exactly as the reference does.
//!
//! Image level: AUROC, AP, F1-max of the image scores. Pixel level: the same three on all
//! pixels of all test images, plus PRO (area under the per-region-overlap curve up to
//! FPR 0.3).
//!
//! The reference (GLAD's `main.py::test` and `utilize/utilize.py::compute_pro`) uses
//! scikit-learn's `roc_auc_score`, `average_precision_score` and `precision_recall_curve`
//! and a numpy/scikit-image PRO; the functions here reproduce those numbers (golden tests
//! against scikit-learn 1.9.1 and scikit-image 0.26.0: `tests/golden/metrics/`, written by
//! `scripts/metrics_golden.py`).
//!
//! Conventions shared by all functions:
//! - Scores are `f32` (the reference's maps and scores are float32) and are compared as
//!   `f32`; ties are exact `f32` equality, and `-0.0` ties with `+0.0` (as in numpy).
//! - A positive label (`true`) is an anomalous image or pixel.
//! - `None` means the metric is undefined for these data: an empty input, a class that
//!   is absent (scikit-learn returns NaN or a degenerate value with a warning there), a
//!   NaN score, or, for PRO, the cases listed at [`pro_auc`].
//! - Inconsistent inputs (slices or shapes of different lengths) are programming errors
//!   and panic.
//!
//! Cost: the three curve metrics share one pass ([`CurveMetrics`]): the scores become
//! order-preserving `u32` keys, positives and negatives are sorted separately
//! (`sort_unstable`, O(n log n)) and merged from the top. PRO needs no sort: every pixel is
//! binned once by the number of thresholds below it, so the whole curve costs one pass over
//! the pixels plus O(thresholds x regions).

use ndarray::ArrayView2;

/// AUROC, AP and F1-max of one score/label set, computed together from one sort.
///
/// With the scores sorted in decreasing order and tied scores grouped, let `(TP_i, FP_i)`
/// be the cumulative counts after the i-th group (one point per distinct score, the
/// `_binary_clf_curve` of scikit-learn), `P` and `N` the numbers of positives and
/// negatives, `R_i = TP_i / P` and `Prec_i = TP_i / (TP_i + FP_i)`:
///
/// - `auroc`: the trapezoidal area under the ROC curve through (0, 0) and the points
///   `(FP_i / N, TP_i / P)`, i.e. `sum_i (FP_i - FP_{i-1}) (TP_i + TP_{i-1}) / (2 P N)`,
///   accumulated in integers and divided once (scikit-learn's `roc_auc_score`; its
///   `drop_intermediate` only removes collinear points and does not change the area);
/// - `average_precision`: `sum_i (R_i - R_{i-1}) Prec_i` with `R_0 = 0` (scikit-learn's
///   `average_precision_score`: a step sum, no interpolation);
/// - `f1_max`: the maximum over the points of `precision_recall_curve` (including its final
///   point P = 1, R = 0) of `2 Prec R / (Prec + R)`, with 0 where `Prec + R = 0` (GLAD takes
///   `np.max` over the finite values; the NaN points it skips are exactly those where
///   `Prec + R = 0`, so the maximum is the same).
///
/// Constant scores form one group: AUROC 0.5, AP = P / (P + N), F1-max = 2p / (1 + p) with
/// p = P / (P + N), as in scikit-learn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurveMetrics {
    pub auroc: f64,
    pub average_precision: f64,
    pub f1_max: f64,
    /// Number of positive samples (anomalous images or pixels).
    pub positives: u64,
    /// Number of negative samples.
    pub negatives: u64,
}

impl CurveMetrics {
    /// The three metrics of `scores` against `labels` (`true` = anomalous).
    ///
    /// `None` if the input is empty, a class is absent, or a score is NaN.
    /// Panics if the lengths differ.
    pub fn compute(scores: &[f32], labels: &[bool]) -> Option<Self> {
        assert_eq!(scores.len(), labels.len(), "scores and labels differ in length");
        Self::from_pairs(scores.iter().copied().zip(labels.iter().copied()), scores.len())
    }

    /// Pixel-level metrics: every pixel of every map, labelled by its mask, as one set
    /// (the reference's `masks.ravel()`, `preds.ravel()`), without copying the maps into
    /// one flat buffer first.
    ///
    /// `None` as for [`CurveMetrics::compute`]. Panics if the numbers of maps and masks
    /// differ or a map and its mask differ in shape.
    pub fn from_maps(maps: &[ArrayView2<f32>], masks: &[ArrayView2<bool>]) -> Option<Self> {
        check_shapes(maps, masks);
        let n: usize = maps.iter().map(|m| m.len()).sum();
        let pairs = maps.iter().zip(masks).flat_map(|(m, k)| m.iter().copied().zip(k.iter().copied()));
        Self::from_pairs(pairs, n)
    }

    fn from_pairs(pairs: impl Iterator<Item = (f32, bool)>, len_hint: usize) -> Option<Self> {
        let mut pos: Vec<u32> = Vec::new();
        let mut neg: Vec<u32> = Vec::with_capacity(len_hint);
        for (s, l) in pairs {
            if s.is_nan() {
                return None;
            }
            if l {
                pos.push(order_key(s));
            } else {
                neg.push(order_key(s));
            }
        }
        if pos.is_empty() || neg.is_empty() {
            return None;
        }
        pos.sort_unstable();
        neg.sort_unstable();
        Some(Self::from_sorted(&pos, &neg))
    }

    /// Walks both ascending key lists from the top (largest score first), one group of
    /// tied scores at a time.
    fn from_sorted(pos: &[u32], neg: &[u32]) -> Self {
        let np = pos.len() as u64;
        let nn = neg.len() as u64;
        let (mut i, mut j) = (pos.len(), neg.len());
        let (mut tp, mut fp) = (0u64, 0u64);
        let mut auc2: u128 = 0; // sum of (FP_i - FP_{i-1}) (TP_i + TP_{i-1})
        let mut ap = 0.0f64;
        let mut prev_recall = 0.0f64;
        let mut f1_max = 0.0f64; // the final (P = 1, R = 0) point of the PR curve has F1 0
        while i > 0 || j > 0 {
            let key = match (i > 0, j > 0) {
                (true, true) => pos[i - 1].max(neg[j - 1]),
                (true, false) => pos[i - 1],
                _ => neg[j - 1],
            };
            let (tp0, fp0) = (tp, fp);
            while i > 0 && pos[i - 1] == key {
                i -= 1;
                tp += 1;
            }
            while j > 0 && neg[j - 1] == key {
                j -= 1;
                fp += 1;
            }
            auc2 += (fp - fp0) as u128 * (tp + tp0) as u128;
            let precision = tp as f64 / (tp + fp) as f64;
            let recall = tp as f64 / np as f64;
            if tp > tp0 {
                ap += (recall - prev_recall) * precision;
                prev_recall = recall;
            }
            let denom = precision + recall;
            if denom > 0.0 {
                f1_max = f1_max.max(2.0 * precision * recall / denom);
            }
        }
        let auroc = auc2 as f64 / (2 * np as u128 * nn as u128) as f64;
        CurveMetrics {
            auroc,
            // scikit-learn clips a rounding -0.0 to 0.0
            average_precision: ap.max(0.0),
            f1_max,
            positives: np,
            negatives: nn,
        }
    }
}

/// Area under the ROC curve, tie-aware: scikit-learn's `roc_auc_score` (see
/// [`CurveMetrics`] for the formula). Constant scores give 0.5.
///
/// `None` if the input is empty, one class is absent, or a score is NaN.
/// Computing several of AUROC/AP/F1-max on the same data? Use [`CurveMetrics::compute`]
/// once instead: each of these functions sorts the scores.
pub fn auroc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    CurveMetrics::compute(scores, labels).map(|m| m.auroc)
}

/// Average precision: scikit-learn's `average_precision_score`, the step sum
/// `sum_i (R_i - R_{i-1}) Prec_i` over distinct thresholds, ties grouped (see
/// [`CurveMetrics`]). Constant scores give the prevalence P / (P + N).
///
/// `None` if the input is empty, one class is absent (scikit-learn gives 0.0 with a warning
/// without positives and 1.0 without negatives), or a score is NaN.
pub fn average_precision(scores: &[f32], labels: &[bool]) -> Option<f64> {
    CurveMetrics::compute(scores, labels).map(|m| m.average_precision)
}

/// Maximum F1 over the points of scikit-learn's `precision_recall_curve` (one per distinct
/// score, ties grouped, plus its final P = 1, R = 0 point), F1 = 2PR/(P+R) and 0 where
/// P + R = 0; as GLAD's `best_f1_scores_*` (see [`CurveMetrics`]).
///
/// `None` if the input is empty, one class is absent, or a score is NaN.
pub fn f1_max(scores: &[f32], labels: &[bool]) -> Option<f64> {
    CurveMetrics::compute(scores, labels).map(|m| m.f1_max)
}

/// A per-region-overlap curve: one point per threshold, in increasing threshold order.
#[derive(Debug, Clone, PartialEq)]
pub struct ProCurve {
    /// The thresholds (see [`pro_curve`] for how they are built); non-decreasing.
    pub thresholds: Vec<f32>,
    /// False-positive rate at each threshold: negative pixels with `map > th`, over all
    /// negative pixels of all images. Non-increasing.
    pub fpr: Vec<f64>,
    /// PRO at each threshold: the mean, over every connected ground-truth region of every
    /// image, of the fraction of the region's pixels with `map > th`.
    pub pro: Vec<f64>,
    /// Number of connected ground-truth regions (8-connectivity) over all images.
    pub regions: usize,
}

impl ProCurve {
    /// The normalised area under the curve up to `max_fpr`, as GLAD's `compute_pro`:
    /// keep the points with `fpr < max_fpr` (strictly), divide their FPRs by the largest
    /// kept FPR (not a min-max rescale: the smallest kept FPR is not moved to 0), and take
    /// scikit-learn's `auc` (trapezoids over the points in threshold order, sign fixed for
    /// the decreasing FPR).
    ///
    /// `None` where the reference fails or returns NaN: fewer than 2 points kept
    /// (`auc` raises), or the largest kept FPR is 0 (0/0).
    pub fn auc(&self, max_fpr: f64) -> Option<f64> {
        let (x, y): (Vec<f64>, Vec<f64>) = self.fpr.iter().zip(&self.pro).filter(|(f, _)| **f < max_fpr).map(|(f, p)| (*f, *p)).unzip();
        if x.len() < 2 {
            return None;
        }
        let fmax = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if fmax <= 0.0 {
            return None;
        }
        let x: Vec<f64> = x.iter().map(|f| f / fmax).collect();
        // sklearn.metrics.auc: direction -1 when x is non-increasing, error when not monotonic
        let dx = x.windows(2).map(|w| w[1] - w[0]);
        let direction = if dx.clone().any(|d| d < 0.0) {
            if dx.clone().all(|d| d <= 0.0) {
                -1.0
            } else {
                return None;
            }
        } else {
            1.0
        };
        let area: f64 = x.windows(2).zip(y.windows(2)).map(|(xw, yw)| (xw[1] - xw[0]) * (yw[1] + yw[0]) / 2.0).sum();
        Some(direction * area)
    }
}

/// The PRO curve of `maps` against `masks` at `num_thresholds` thresholds (GLAD's 200).
///
/// Thresholds: GLAD's `np.arange(min_th, max_th, (max_th - min_th) / num_th)` over the
/// minimum and maximum of all map values, as numpy 1.x (which the reference ran on) builds
/// it for float32 `min_th`, `max_th`: `r = max - min` in f32, `step = r / num_th` in f64,
/// length `ceil(r / step)` (so `num_th` or, through rounding, `num_th + 1` thresholds, the
/// last one below the maximum), `th[0] = min`, `th[1] = min + step`,
/// `th[i] = min + i * (th[1] - th[0])` in f64; each is rounded to f32 for the comparison,
/// because numpy 1.x compares the float32 maps with a float64 scalar in float32. (Numpy 2
/// builds the grid in float32 and always gets `num_th` points; the PRO values differ by
/// far less than 1e-6 in the golden cases.) Prediction: `map > th`.
///
/// Regions: the 8-connected components of each mask (scikit-image's `measure.label`
/// default for 2-D; GLAD's masks are 0/1, so "nonzero" and `true` agree).
///
/// `None` if there are no pixels, a map value is NaN, all map values are equal (numpy
/// cannot build the grid), `num_thresholds` is 0, no mask has a region (the reference's
/// `mean` of nothing raises) or no pixel is negative. Panics if the numbers of maps and
/// masks differ or a map and its mask differ in shape.
pub fn pro_curve(maps: &[ArrayView2<f32>], masks: &[ArrayView2<bool>], num_thresholds: usize) -> Option<ProCurve> {
    check_shapes(maps, masks);
    let mut lo = f32::INFINITY;
    let mut hi = f32::NEG_INFINITY;
    for m in maps {
        for &v in m.iter() {
            if v.is_nan() {
                return None;
            }
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    if lo >= hi {
        return None; // no pixels, or constant maps
    }
    let thresholds = numpy1_threshold_grid(lo, hi, num_thresholds)?;
    let n = thresholds.len();
    let bins = n + 1;
    // a fast first guess of the bin; exactness comes from the corrections in `bin_of`
    let start = thresholds[0] as f64;
    let scale = (n as f64 - 1.0).max(1.0) / (thresholds[n - 1] as f64 - start).max(f64::MIN_POSITIVE);

    let mut neg_hist = vec![0u64; bins];
    let mut region_hist: Vec<u64> = Vec::new(); // regions x bins
    let mut region_area: Vec<u64> = Vec::new();
    let mut labels: Vec<u32> = Vec::new();
    let mut mask_buf: Vec<bool> = Vec::new();
    let mut stack: Vec<usize> = Vec::new();
    for (map, mask) in maps.iter().zip(masks) {
        let (h, w) = map.dim();
        mask_buf.clear();
        mask_buf.extend(mask.iter().copied());
        let count = label_8(&mask_buf, h, w, &mut labels, &mut stack);
        let base = region_area.len();
        region_area.resize(base + count, 0);
        region_hist.resize((base + count) * bins, 0);
        for (idx, &v) in map.iter().enumerate() {
            let k = bin_of(&thresholds, v, start, scale);
            let l = labels[idx];
            if l == 0 {
                neg_hist[k] += 1;
            } else {
                let r = base + l as usize - 1;
                region_hist[r * bins + k] += 1;
                region_area[r] += 1;
            }
        }
    }
    let regions = region_area.len();
    let negatives: u64 = neg_hist.iter().sum();
    if regions == 0 || negatives == 0 {
        return None;
    }
    // A pixel in bin k (k thresholds below it) is predicted positive at thresholds 0..k.
    let mut fpr = vec![0.0; n];
    let mut acc = 0u64;
    for i in (0..n).rev() {
        acc += neg_hist[i + 1];
        fpr[i] = acc as f64 / negatives as f64;
    }
    let mut pro_sum = vec![0.0f64; n];
    for (r, &area) in region_area.iter().enumerate() {
        let hist = &region_hist[r * bins..(r + 1) * bins];
        let mut tp = 0u64;
        for i in (0..n).rev() {
            tp += hist[i + 1];
            pro_sum[i] += tp as f64 / area as f64;
        }
    }
    let pro = pro_sum.iter().map(|s| s / regions as f64).collect();
    Some(ProCurve { thresholds, fpr, pro, regions })
}

/// PRO-AUC as GLAD's `compute_pro` (MVTec-AD style, as in AprilGAN): the curve of
/// [`pro_curve`] with `num_thresholds` thresholds (GLAD: 200), integrated up to `max_fpr`
/// (GLAD: 0.3) by [`ProCurve::auc`]: points with `fpr < max_fpr`, FPR divided by the
/// largest kept FPR, trapezoids. The result lies in [0, 1].
///
/// `None` in the cases listed at [`pro_curve`] and [`ProCurve::auc`].
pub fn pro_auc(maps: &[ArrayView2<f32>], masks: &[ArrayView2<bool>], max_fpr: f64, num_thresholds: usize) -> Option<f64> {
    pro_curve(maps, masks, num_thresholds)?.auc(max_fpr)
}

/// numpy 1.x's `np.arange(lo, hi, (hi - lo) / num)` for float32 scalars `lo < hi`, each
/// element rounded to f32 (see [`pro_curve`]). `None` if `num` is 0 or the range is not
/// finite.
fn numpy1_threshold_grid(lo: f32, hi: f32, num: usize) -> Option<Vec<f32>> {
    let r = (hi - lo) as f64; // the subtraction happens in f32
    if num == 0 || !r.is_finite() || r <= 0.0 {
        return None;
    }
    let step = r / num as f64;
    if step <= 0.0 {
        return None;
    }
    let len = (r / step).ceil() as usize;
    let start = lo as f64;
    let second = start + step;
    let d = second - start;
    let mut out = Vec::with_capacity(len);
    for i in 0..len {
        let t = match i {
            0 => start,
            1 => second,
            _ => start + i as f64 * d,
        };
        out.push(t as f32);
    }
    Some(out)
}

/// Number of thresholds strictly below `v` (`v > th` in f32); `th` is non-decreasing.
#[inline]
fn bin_of(th: &[f32], v: f32, start: f64, scale: f64) -> usize {
    let n = th.len();
    let g = ((v as f64 - start) * scale).ceil();
    let mut k = if g <= 0.0 {
        0
    } else if g >= n as f64 {
        n
    } else {
        g as usize
    };
    while k > 0 && v <= th[k - 1] {
        k -= 1;
    }
    while k < n && v > th[k] {
        k += 1;
    }
    k
}

/// Labels the 8-connected components of a row-major `h x w` mask: `labels[i]` is 0 for
/// background and 1..=count for the components, numbered in raster order of their first
/// pixel (as scikit-image). Returns the count.
fn label_8(mask: &[bool], h: usize, w: usize, labels: &mut Vec<u32>, stack: &mut Vec<usize>) -> usize {
    labels.clear();
    labels.resize(h * w, 0);
    let mut count = 0u32;
    for seed in 0..h * w {
        if !mask[seed] || labels[seed] != 0 {
            continue;
        }
        count += 1;
        labels[seed] = count;
        stack.clear();
        stack.push(seed);
        while let Some(p) = stack.pop() {
            let (y, x) = (p / w, p % w);
            let y0 = y.saturating_sub(1);
            let y1 = (y + 1).min(h - 1);
            let x0 = x.saturating_sub(1);
            let x1 = (x + 1).min(w - 1);
            for yy in y0..=y1 {
                for xx in x0..=x1 {
                    let q = yy * w + xx;
                    if mask[q] && labels[q] == 0 {
                        labels[q] = count;
                        stack.push(q);
                    }
                }
            }
        }
    }
    count as usize
}

/// An order-preserving `u32` key of a non-NaN `f32` (-0.0 and +0.0 map to one key).
#[inline]
fn order_key(v: f32) -> u32 {
    let b = (v + 0.0).to_bits(); // -0.0 + 0.0 == +0.0
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

fn check_shapes(maps: &[ArrayView2<f32>], masks: &[ArrayView2<bool>]) {
    assert_eq!(maps.len(), masks.len(), "numbers of maps and masks differ");
    for (i, (m, k)) in maps.iter().zip(masks).enumerate() {
        assert_eq!(m.dim(), k.dim(), "map {i} and its mask differ in shape");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, Array3, Axis};
    use serde_json::Value;

    fn golden(name: &str) -> Value {
        let path = format!("{}/tests/golden/metrics/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&text).unwrap()
    }

    fn f32s(v: &Value) -> Vec<f32> {
        v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
    }

    fn opt(v: &Value) -> Option<f64> {
        v.as_f64()
    }

    fn close(got: Option<f64>, want: Option<f64>, tol: f64, what: &str) {
        match (got, want) {
            (Some(g), Some(w)) => assert!((g - w).abs() <= tol, "{what}: got {g}, want {w}"),
            (None, None) => {}
            _ => panic!("{what}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn image_level_goldens() {
        let g = golden("image.json");
        let sets = g["sets"].as_array().unwrap();
        assert!(sets.len() >= 8);
        for s in sets {
            let name = s["name"].as_str().unwrap();
            let scores = f32s(&s["scores"]);
            let labels: Vec<bool> = s["labels"].as_array().unwrap().iter().map(|x| x.as_bool().unwrap()).collect();
            close(auroc(&scores, &labels), opt(&s["auroc"]), 1e-9, &format!("{name} auroc"));
            close(average_precision(&scores, &labels), opt(&s["average_precision"]), 1e-9, &format!("{name} ap"));
            close(f1_max(&scores, &labels), opt(&s["f1_max"]), 1e-9, &format!("{name} f1"));
        }
    }

    struct PixelSet {
        name: String,
        maps: Array3<f32>,
        masks: Array3<bool>,
        v: Value,
    }

    fn pixel_sets() -> Vec<PixelSet> {
        let g = golden("pixel.json");
        g["sets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let shape: Vec<usize> = s["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
                let sh = (shape[0], shape[1], shape[2]);
                let maps = Array3::from_shape_vec(sh, f32s(&s["maps"])).unwrap();
                let masks: Vec<bool> = s["masks"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() != 0).collect();
                let masks = Array3::from_shape_vec(sh, masks).unwrap();
                PixelSet { name: s["name"].as_str().unwrap().to_string(), maps, masks, v: s.clone() }
            })
            .collect()
    }

    #[test]
    fn pixel_level_goldens() {
        let sets = pixel_sets();
        assert!(sets.len() >= 4);
        for s in &sets {
            let maps: Vec<ArrayView2<f32>> = s.maps.axis_iter(Axis(0)).collect();
            let masks: Vec<ArrayView2<bool>> = s.masks.axis_iter(Axis(0)).collect();
            let m = CurveMetrics::from_maps(&maps, &masks);
            let flat = CurveMetrics::compute(s.maps.as_slice().unwrap(), s.masks.as_slice().unwrap());
            assert_eq!(m, flat, "{}: from_maps and compute differ", s.name);
            let name = &s.name;
            close(m.map(|m| m.auroc), opt(&s.v["auroc"]), 1e-9, &format!("{name} auroc"));
            close(m.map(|m| m.average_precision), opt(&s.v["average_precision"]), 1e-9, &format!("{name} ap"));
            close(m.map(|m| m.f1_max), opt(&s.v["f1_max"]), 1e-9, &format!("{name} f1"));
            for p in s.v["pro"].as_array().unwrap() {
                let max_fpr = p["max_fpr"].as_f64().unwrap();
                let num = p["num_thresholds"].as_u64().unwrap() as usize;
                let what = format!("{name} pro(max_fpr {max_fpr}, {num} thresholds)");
                close(pro_auc(&maps, &masks, max_fpr, num), opt(&p["pro"]), 1e-6, &what);
                if let Some(nth) = p.get("pro_thresholds").and_then(|x| x.as_u64()) {
                    let c = pro_curve(&maps, &masks, num).unwrap();
                    assert_eq!(c.thresholds.len() as u64, nth, "{what}: threshold count");
                    let kept = c.fpr.iter().filter(|f| **f < max_fpr).count() as u64;
                    assert_eq!(kept, p["pro_kept"].as_u64().unwrap(), "{what}: kept points");
                }
            }
        }
    }

    #[test]
    fn constant_scores_and_missing_classes() {
        let s = [0.5f32; 5];
        let l = [true, false, false, true, false];
        assert_eq!(auroc(&s, &l), Some(0.5));
        assert_eq!(average_precision(&s, &l), Some(0.4));
        let f = f1_max(&s, &l).unwrap();
        assert!((f - 2.0 * 0.4 / 1.4).abs() < 1e-15);
        assert_eq!(auroc(&[0.1, 0.2], &[true, true]), None);
        assert_eq!(average_precision(&[0.1, 0.2], &[false, false]), None);
        assert_eq!(f1_max(&[], &[]), None);
        assert_eq!(auroc(&[0.1, f32::NAN], &[true, false]), None);
    }

    #[test]
    fn infinities_and_signed_zero_order() {
        let vals = [f32::NEG_INFINITY, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, f32::INFINITY];
        for w in vals.windows(2) {
            assert!(order_key(w[0]) <= order_key(w[1]), "{} {}", w[0], w[1]);
        }
        assert_eq!(order_key(-0.0), order_key(0.0));
        assert!(order_key(-1e-30) < order_key(0.0));
        assert_eq!(auroc(&[f32::INFINITY, f32::NEG_INFINITY], &[true, false]), Some(1.0));
    }

    #[test]
    fn labelling_is_8_connected() {
        #[rustfmt::skip]
        let m = [
            1, 0, 0, 1, 1,
            0, 1, 0, 0, 0,
            0, 0, 0, 0, 1,
            1, 1, 0, 1, 0,
        ];
        let mask: Vec<bool> = m.iter().map(|&x| x == 1).collect();
        let (mut labels, mut stack) = (Vec::new(), Vec::new());
        let n = label_8(&mask, 4, 5, &mut labels, &mut stack);
        // {(0,0),(1,1)} diagonal, {(0,3),(0,4)}, {(2,4),(3,3)} diagonal, {(3,0),(3,1)}
        assert_eq!(n, 4);
        assert_eq!(labels[0], labels[6]);
        assert_eq!(labels[3], labels[4]);
        assert_eq!(labels[14], labels[18]);
        assert_eq!(labels[15], labels[16]);
        assert_eq!(labels[0], 1);
        assert_eq!(labels[3], 2);
        let ring = Array2::from_shape_fn((5, 5), |(y, x)| y == 0 || y == 4 || x == 0 || x == 4);
        let n = label_8(ring.as_slice().unwrap(), 5, 5, &mut labels, &mut stack);
        assert_eq!(n, 1);
    }

    #[test]
    fn threshold_grid_matches_numpy1() {
        // np.arange(np.float32(0), np.float32(1), np.float32(1) / 200) under numpy 1.26.4:
        // 200 values 0, 0.005, ..., 0.995 (f64), compared as f32
        let g = numpy1_threshold_grid(0.0, 1.0, 200).unwrap();
        assert_eq!(g.len(), 200);
        assert_eq!(g[0], 0.0);
        assert_eq!(g[199], (199.0f64 * 0.005) as f32);
        assert!(g.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(numpy1_threshold_grid(1.0, 1.0, 200), None);
        assert_eq!(numpy1_threshold_grid(0.0, 1.0, 0), None);
    }

    #[test]
    fn bins_match_a_linear_scan() {
        let th = numpy1_threshold_grid(-0.37, 2.9, 200).unwrap();
        let start = th[0] as f64;
        let scale = (th.len() as f64 - 1.0) / (th[th.len() - 1] as f64 - start);
        let mut probes: Vec<f32> = th.clone();
        probes.extend(th.iter().map(|t| f32::from_bits(t.to_bits() + 1)));
        probes.extend(th.iter().map(|t| f32::from_bits(t.to_bits().wrapping_sub(1))));
        probes.extend([-10.0, -0.37, 2.9, 100.0, 0.0, -0.0]);
        for v in probes {
            let want = th.iter().filter(|t| v > **t).count();
            assert_eq!(bin_of(&th, v, start, scale), want, "v = {v}");
        }
    }

    #[test]
    fn pro_edge_cases() {
        let mask = Array2::from_shape_fn((16, 16), |(y, x)| (4..8).contains(&y) && (4..9).contains(&x));
        // a perfect map: FPR is 0 at every threshold, 0/0 in the reference (NaN) -> None
        let perfect = mask.mapv(|b| if b { 1.0f32 } else { 0.0 });
        assert_eq!(pro_auc(&[perfect.view()], &[mask.view()], 0.3, 200), None);
        // regions all above a spread background: PRO 1 at every kept point -> area 1
        let map = Array2::from_shape_fn((16, 16), |(y, x)| if mask[[y, x]] { 1.0f32 } else { ((y * 16 + x) % 50) as f32 / 100.0 });
        let p = pro_auc(&[map.view()], &[mask.view()], 0.3, 200).unwrap();
        assert!((p - 1.0).abs() < 1e-12, "{p}");
        // no region anywhere
        let empty = Array2::from_elem((16, 16), false);
        assert_eq!(pro_auc(&[map.view()], &[empty.view()], 0.3, 200), None);
        // every threshold has FPR >= max_fpr: nothing kept
        assert_eq!(pro_auc(&[map.view()], &[mask.view()], 0.0, 200), None);
    }

    /// Timing on a synthetic 100 x 512 x 512 set (26.2 M pixels):
    /// `cargo test --release --lib eval::metrics -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timing_100_maps_512() {
        use std::time::Instant;
        let (n, h, w) = (100usize, 512usize, 512usize);
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut rnd = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        let mut maps = Array3::<f32>::zeros((n, h, w));
        let mut masks = Array3::<bool>::from_elem((n, h, w), false);
        for i in 0..n {
            let (cy, cx, r) = (64 + (i * 37) % 384, 64 + (i * 91) % 384, 10 + (i % 40));
            for y in 0..h {
                for x in 0..w {
                    let d2 = (y as i64 - cy as i64).pow(2) + (x as i64 - cx as i64).pow(2);
                    let inside = i % 3 != 0 && d2 <= (r * r) as i64;
                    masks[[i, y, x]] = inside;
                    maps[[i, y, x]] = rnd() + if inside { 0.6 } else { 0.0 };
                }
            }
        }
        let mv: Vec<ArrayView2<f32>> = maps.axis_iter(Axis(0)).collect();
        let kv: Vec<ArrayView2<bool>> = masks.axis_iter(Axis(0)).collect();
        let t = Instant::now();
        let m = CurveMetrics::from_maps(&mv, &kv).unwrap();
        let t_curve = t.elapsed();
        let t = Instant::now();
        let p = pro_auc(&mv, &kv, 0.3, 200).unwrap();
        let t_pro = t.elapsed();
        eprintln!(
            "100x512x512: AUROC/AP/F1 {:.4}/{:.4}/{:.4} in {:.2?}; PRO {:.4} in {:.2?}",
            m.auroc, m.average_precision, m.f1_max, t_curve, p, t_pro
        );
    }
}
