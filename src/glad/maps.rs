//! Pixel-grid operations of GLAD's final anomaly map (GLAD.md, "Final anomaly map and score"):
//! bilinear resizing with align_corners=True, ImageNet normalisation, the Gaussian blur and
//! the reference's Otsu object mask.

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, Axis};
use serde::{Deserialize, Serialize};

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Source coordinate weights for one axis of an align_corners=True bilinear resize.
fn axis_weights(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32)> {
    (0..n_out)
        .map(|o| {
            let pos = if n_out > 1 { o as f64 * (n_in - 1) as f64 / (n_out - 1) as f64 } else { 0.0 };
            let i0 = (pos.floor() as usize).min(n_in - 1);
            let i1 = (i0 + 1).min(n_in - 1);
            (i0, i1, (pos - i0 as f64) as f32)
        })
        .collect()
}

/// Bilinear resize with align_corners=True (torch's `F.interpolate(..., align_corners=True)`).
pub fn resize_align_corners(src: ArrayView2<'_, f32>, out_h: usize, out_w: usize) -> Array2<f32> {
    let (h, w) = src.dim();
    if (h, w) == (out_h, out_w) {
        return src.to_owned();
    }
    let wy = axis_weights(h, out_h);
    let wx = axis_weights(w, out_w);
    // rows first: [h, out_w], then columns.
    let mut tmp = Array2::<f32>::zeros((h, out_w));
    for y in 0..h {
        for (ox, &(x0, x1, f)) in wx.iter().enumerate() {
            tmp[[y, ox]] = src[[y, x0]] * (1.0 - f) + src[[y, x1]] * f;
        }
    }
    let mut out = Array2::<f32>::zeros((out_h, out_w));
    for (oy, &(y0, y1, f)) in wy.iter().enumerate() {
        for ox in 0..out_w {
            out[[oy, ox]] = tmp[[y0, ox]] * (1.0 - f) + tmp[[y1, ox]] * f;
        }
    }
    out
}

/// `resize_align_corners` on every channel of a `[C, H, W]` image.
pub fn resize_image_align_corners(src: ArrayView3<'_, f32>, out: usize) -> Array3<f32> {
    let (c, h, w) = src.dim();
    if (h, w) == (out, out) {
        return src.to_owned();
    }
    let mut dst = Array3::<f32>::zeros((c, out, out));
    for ch in 0..c {
        dst.index_axis_mut(Axis(0), ch).assign(&resize_align_corners(src.index_axis(Axis(0), ch), out, out));
    }
    dst
}

/// `[-1,1]` image → `(v+1)/2` → ImageNet-normalised, in place.
pub fn imagenet_normalise(img: &mut Array3<f32>) {
    for (ch, mut plane) in img.axis_iter_mut(Axis(0)).enumerate() {
        let (m, s) = (IMAGENET_MEAN[ch % 3], IMAGENET_STD[ch % 3]);
        plane.mapv_inplace(|v| ((v + 1.0) / 2.0 - m) / s);
    }
}

/// Normalised 1-D Gaussian kernel of radius `int(4*sigma + 0.5)` (scipy's `truncate=4`).
pub fn gaussian_kernel(sigma: f32) -> Vec<f32> {
    let radius = (4.0 * sigma as f64 + 0.5) as i64;
    let k: Vec<f64> = (-radius..=radius).map(|x| (-0.5 * (x as f64 / sigma as f64).powi(2)).exp()).collect();
    let sum: f64 = k.iter().sum();
    k.iter().map(|v| (v / sum) as f32).collect()
}

/// How a blur pads the map's border. The reference uses two different rules (GLAD.md,
/// "Final anomaly map and score", steps 5 and 6), so the choice is explicit at every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Border {
    /// torch / kornia / numpy `reflect`: the edge sample is not repeated (`x2 x1 | x0 x1 x2`).
    /// The final map's blur (kornia `gaussian_blur2d(border_type="reflect")`). Like torch, it
    /// needs a map wider than the kernel radius.
    Reflect,
    /// SciPy's `reflect` (torch `symmetric`): the edge sample is repeated (`x1 x0 | x0 x1`),
    /// periodic for kernels wider than the map. The object mask's blurs
    /// (`scipy.ndimage.gaussian_filter` in the reference's dataset code).
    Symmetric,
}

/// Index into `[0, n)` across the border `b`.
fn border_index(i: i64, n: i64, b: Border) -> usize {
    match b {
        Border::Symmetric => {
            let period = 2 * n;
            let mut r = i.rem_euclid(period);
            if r >= n {
                r = period - 1 - r;
            }
            r as usize
        }
        Border::Reflect => {
            // Callers guarantee the radius is below n (checked in `gaussian_blur`), so one
            // reflection suffices; n = 1 has no neighbour to reflect to.
            if n == 1 {
                return 0;
            }
            let period = 2 * (n - 1);
            let mut r = i.rem_euclid(period);
            if r >= n {
                r = period - r;
            }
            r as usize
        }
    }
}

/// The radius `int(4*sigma + 0.5)` of the blur kernel (0 when the blur is off).
pub fn blur_radius(sigma: f32) -> usize {
    if sigma <= 0.0 {
        0
    } else {
        (4.0 * sigma as f64 + 0.5) as usize
    }
}

/// Separable Gaussian blur with the given border; `sigma <= 0` leaves the map unchanged.
/// `Border::Reflect` refuses a map whose side is not larger than the kernel radius, as
/// torch's reflect padding does (the reference cannot run there).
pub fn gaussian_blur(map: &Array2<f32>, sigma: f32, border: Border) -> anyhow::Result<Array2<f32>> {
    if sigma <= 0.0 {
        return Ok(map.clone());
    }
    let r = blur_radius(sigma);
    let (h, w) = map.dim();
    if border == Border::Reflect && h.min(w) <= r {
        anyhow::bail!(
            "the anomaly map is {h}x{w}, but a blur with sigma {sigma} pads {r} pixels by reflection and needs a side above {r} \
             (as torch/kornia): use a backbone resolution of at least {} or a smaller blur_sigma",
            r + 1
        );
    }
    let k = gaussian_kernel(sigma);
    // Each pass filters along rows and writes its result transposed, so the second pass
    // filters the columns and transposes back.
    Ok(convolve_rows_transposed(&convolve_rows_transposed(map, &k, border), &k, border))
}

/// 1-D convolution of every row with `k`, returned transposed. Each row is copied once into a
/// buffer padded across the border, so the inner loop is a plain dot product the compiler
/// vectorises.
fn convolve_rows_transposed(src: &Array2<f32>, k: &[f32], border: Border) -> Array2<f32> {
    let r = k.len() / 2;
    let (h, w) = src.dim();
    let mut out = Array2::<f32>::zeros((w, h));
    let mut padded = vec![0.0f32; w + 2 * r];
    for (y, row) in src.rows().into_iter().enumerate() {
        for (i, p) in padded.iter_mut().enumerate() {
            *p = row[border_index(i as i64 - r as i64, w as i64, border)];
        }
        for x in 0..w {
            let window = &padded[x..x + k.len()];
            out[[x, y]] = window.iter().zip(k).fold(0.0f32, |acc, (v, kv)| acc + kv * v);
        }
    }
    out
}

/// The reference's object (foreground) mask modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectMask {
    /// All ones (texture classes).
    #[default]
    None,
    /// Mode 1 (screw, capsule, MPDD brackets black/brown): keep the dark side of Otsu.
    Dark,
    /// Mode 2 (bracket_white): keep the bright side.
    Bright,
    /// Mode 3: everything (Otsu, then the blurs, on an all-ones mask).
    All,
}

/// Otsu's threshold on an 8-bit histogram: the level maximising the between-class variance
/// (pixels `<= level` are the dark class), as OpenCV's THRESH_OTSU.
pub fn otsu_level(gray: &[u8]) -> u8 {
    let mut hist = [0u64; 256];
    for &g in gray {
        hist[g as usize] += 1;
    }
    let total = gray.len() as f64;
    let sum_all: f64 = hist.iter().enumerate().map(|(i, &c)| i as f64 * c as f64).sum();
    let (mut w0, mut sum0, mut best, mut best_var) = (0.0f64, 0.0f64, 0u8, -1.0f64);
    for (t, &c) in hist.iter().enumerate() {
        w0 += c as f64;
        sum0 += t as f64 * c as f64;
        let w1 = total - w0;
        if w0 == 0.0 || w1 == 0.0 {
            continue;
        }
        let (m0, m1) = (sum0 / w0, (sum_all - sum0) / w1);
        let var = w0 * w1 * (m0 - m1) * (m0 - m1);
        if var > best_var {
            best_var = var;
            best = t as u8;
        }
    }
    best
}

/// The object mask of a `[3, R, R]` image in `[-1, 1]`: grayscale (BT.601 weights), Otsu,
/// keep one side, blur sigma, `> 0` → 1, blur sigma again, at the image's own resolution.
/// Both blurs repeat the edge (`Border::Symmetric`): the reference makes this mask in its
/// dataset code with `scipy.ndimage.gaussian_filter`, not with the final map's kornia blur.
/// `None` gives `None` (all ones).
pub fn object_mask(img: ArrayView3<'_, f32>, mode: ObjectMask, sigma: f32) -> Option<Array2<f32>> {
    if mode == ObjectMask::None {
        return None;
    }
    let (_, h, w) = img.dim();
    let to8 = |v: f32| (((v + 1.0) / 2.0) * 255.0).round().clamp(0.0, 255.0);
    let gray: Vec<u8> = (0..h * w)
        .map(|i| {
            let (y, x) = (i / w, i % w);
            (0.299 * to8(img[[0, y, x]]) + 0.587 * to8(img[[1, y, x]]) + 0.114 * to8(img[[2, y, x]])).round() as u8
        })
        .collect();
    let level = otsu_level(&gray);
    let keep = |g: u8| match mode {
        ObjectMask::Dark => g <= level,
        ObjectMask::Bright => g > level,
        ObjectMask::All | ObjectMask::None => true,
    };
    let mask = Array2::from_shape_fn((h, w), |(y, x)| if keep(gray[y * w + x]) { 1.0 } else { 0.0 });
    let blur = |m: &Array2<f32>| gaussian_blur(m, sigma, Border::Symmetric).expect("the symmetric border takes any size");
    let grown = blur(&mask).mapv(|v| if v > 0.0 { 1.0 } else { 0.0 });
    Some(blur(&grown))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_has_scipy_radius_and_unit_sum() {
        let k = gaussian_kernel(6.0);
        assert_eq!(k.len(), 49);
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn symmetric_border_repeats_edge() {
        let f = |i| border_index(i, 4, Border::Symmetric);
        assert_eq!([f(-1), f(-2), f(4), f(5), f(-5)], [0, 1, 3, 2, 3]);
    }

    #[test]
    fn reflect_border_skips_edge_like_numpy() {
        // numpy.pad([0,1,2,3], 3, mode="reflect") = [3,2,1, 0,1,2,3, 2,1,0]
        let f = |i| border_index(i, 4, Border::Reflect);
        let padded: Vec<usize> = (-3..7).map(f).collect();
        assert_eq!(padded, vec![3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
    }

    #[test]
    fn reflect_blur_refuses_maps_not_wider_than_the_radius() {
        let m = Array2::from_elem((24, 24), 1.0f32);
        let e = gaussian_blur(&m, 6.0, Border::Reflect).unwrap_err().to_string();
        assert!(e.contains("24x24") && e.contains("needs a side above 24"), "{e}");
        assert!(gaussian_blur(&Array2::from_elem((25, 25), 1.0f32), 6.0, Border::Reflect).is_ok());
        assert!(gaussian_blur(&m, 6.0, Border::Symmetric).is_ok());
    }

    #[test]
    fn blur_keeps_constants_and_align_corners_keeps_corners() {
        let m = Array2::from_elem((10, 7), 2.5f32);
        for border in [Border::Reflect, Border::Symmetric] {
            let b = gaussian_blur(&Array2::from_elem((30, 27), 2.5f32), 6.0, border).unwrap();
            assert!(b.iter().all(|v| (v - 2.5).abs() < 1e-5));
        }
        let _ = m;
        let src = ndarray::array![[0.0f32, 1.0], [2.0, 3.0]];
        let r = resize_align_corners(src.view(), 3, 5);
        assert_eq!(r[[0, 0]], 0.0);
        assert_eq!(r[[2, 4]], 3.0);
        assert!((r[[1, 2]] - 1.5).abs() < 1e-6);
    }

    #[test]
    fn otsu_splits_two_levels() {
        let mut g = vec![20u8; 50];
        g.extend(vec![200u8; 50]);
        let t = otsu_level(&g);
        assert!((20..200).contains(&t));
    }
}
