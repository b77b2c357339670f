//! Anomaly synthesis of GLAD's ATP (GLAD.md, "ATP training", step 1; DRAEM's recipe with
//! GLAD's threshold 0.3):
//!
//! - with p = 0.5 the sample stays normal (`xa = x`, empty mask);
//! - Perlin noise at scales `2^a x 2^b` (a, b uniform in {0..5}), rotated by an angle uniform
//!   in [-90, 90] (bilinear, zero outside), `> 0.3`, times the foreground mask;
//! - anomaly source: with p = 0.5 a texture image resized to R (when textures are given), else
//!   the image cut into an 8x8 grid of tiles and shuffled; then 3 distinct augmenters out of
//!   the ten imgaug ones DRAEM lists, applied in the drawn order;
//! - `beta ~ U(0, 0.8)`, `xa = x (1-M) + (1-beta) src M + beta x M`.
//!
//! Everything is drawn from the caller's generator in a fixed order, so a sample is a
//! function of the image and the generator's state.

use anyhow::Result;
use image::{Rgb, RgbImage};
use ndarray::{Array2, Array3, Zip};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::imaging;

pub const PERLIN_THRESHOLD: f32 = 0.3;
/// Perlin scales are `2^a` with `a` in `0..=PERLIN_MAX_EXP`.
pub const PERLIN_MAX_EXP: u32 = 5;
pub const BETA_MAX: f32 = 0.8;
/// Tiles per side of the self-shuffle source.
pub const GRID: u32 = 8;
pub const P_NORMAL: f64 = 0.5;
pub const P_TEXTURE: f64 = 0.5;

/// DRAEM's augmenters (imgaug), reimplemented on `RgbImage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Augmenter {
    /// GammaContrast((0.5, 2.0), per_channel=True): `255 (v/255)^g`, one g per channel.
    Gamma,
    /// MultiplyAndAddToBrightness(mul=(0.8, 1.2), add=(-30, 30)) on the luma (YCrCb Y).
    MultiplyAdd,
    /// pillike.EnhanceSharpness(factor 0..2): blend with PIL's SMOOTH-filtered image.
    Sharpness,
    /// AddToHueAndSaturation((-50, 50), per_channel=True): hue by `v/255 * 360` degrees, saturation by `v` (of 255).
    HueSaturation,
    /// Solarize(p=0.5, threshold=(32, 128)): invert values at or above the threshold, half of the time.
    Solarize,
    /// Posterize (1..8 bits): keep the top bits.
    Posterize,
    /// Invert: `255 - v`.
    Invert,
    /// pillike.Autocontrast(cutoff 0..20 %): per channel, as PIL's ImageOps.autocontrast.
    Autocontrast,
    /// pillike.Equalize: per channel, as PIL's ImageOps.equalize.
    Equalize,
    /// Affine(rotate=(-45, 45)): bilinear, black outside.
    Rotate,
}

pub const AUGMENTERS: [Augmenter; 10] = [
    Augmenter::Gamma,
    Augmenter::MultiplyAdd,
    Augmenter::Sharpness,
    Augmenter::HueSaturation,
    Augmenter::Solarize,
    Augmenter::Posterize,
    Augmenter::Invert,
    Augmenter::Autocontrast,
    Augmenter::Equalize,
    Augmenter::Rotate,
];

/// Where the anomaly's pixels came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Texture image number `i` of the texture source.
    Texture(usize),
    /// The image's own 8x8 tiles, shuffled.
    Shuffle,
}

/// Texture images for the anomaly source (DTD in the reference).
pub trait TextureSource {
    fn count(&self) -> usize;
    /// Texture `i` resized to `r x r`.
    fn load(&self, i: usize, r: u32) -> Result<RgbImage>;
}

/// One synthesised sample.
#[derive(Debug, Clone)]
pub struct Synthesis {
    /// `xa`, `[3, R, R]` in [-1, 1] (GLAD's preprocessing of the blend).
    pub image: Array3<f32>,
    /// `M`, `[R, R]`, 0 or 1.
    pub mask: Array2<f32>,
    pub beta: f32,
    /// `false`: drawn normal (p = 0.5); `image` is `x` and the mask is empty.
    pub anomalous: bool,
    pub source: Option<Source>,
    pub augmenters: Vec<Augmenter>,
    /// Perlin scales `(2^a, 2^b)` and rotation in degrees.
    pub perlin: Option<(u32, u32, f32)>,
}

/// Synthesises an anomalous copy of `x` (square, already at the training resolution).
/// `foreground` (`[R, R]`, 0..1) limits where anomalies may appear; `None` = everywhere.
pub fn synthesize(
    x: &RgbImage,
    textures: Option<&dyn TextureSource>,
    foreground: Option<&Array2<f32>>,
    rng: &mut ChaCha8Rng,
) -> Result<Synthesis> {
    let r = x.width();
    anyhow::ensure!(x.height() == r, "anomaly synthesis needs a square image, got {}x{}", x.width(), x.height());
    let xt = imaging::preprocess(x, r as usize);
    if rng.random_bool(P_NORMAL) {
        return Ok(Synthesis {
            image: xt,
            mask: Array2::zeros((r as usize, r as usize)),
            beta: 0.0,
            anomalous: false,
            source: None,
            augmenters: Vec::new(),
            perlin: None,
        });
    }
    let (sa, sb) = (1u32 << rng.random_range(0..=PERLIN_MAX_EXP), 1u32 << rng.random_range(0..=PERLIN_MAX_EXP));
    let noise = perlin(r as usize, r as usize, sa as usize, sb as usize, rng);
    let angle = rng.random_range(-90.0f32..=90.0);
    let noise = rotate_plane(&noise, angle);
    let mut mask = noise.mapv(|v| if v > PERLIN_THRESHOLD { 1.0f32 } else { 0.0 });
    if let Some(fg) = foreground {
        anyhow::ensure!(fg.dim() == mask.dim(), "foreground mask is {:?}, expected {:?}", fg.dim(), mask.dim());
        Zip::from(&mut mask).and(fg).for_each(|m, &f| *m *= f);
    }

    let n_tex = textures.map_or(0, |t| t.count());
    let (src, source) = if n_tex > 0 && rng.random_bool(P_TEXTURE) {
        let i = rng.random_range(0..n_tex);
        (textures.expect("count > 0").load(i, r)?, Source::Texture(i))
    } else {
        (shuffle_tiles(x, GRID, rng), Source::Shuffle)
    };
    let mut order = AUGMENTERS.to_vec();
    order.shuffle(rng);
    order.truncate(3);
    let mut src = src;
    for a in &order {
        src = augment(&src, *a, rng);
    }
    let beta = rng.random_range(0.0f32..BETA_MAX);
    let st = imaging::preprocess(&src, r as usize);
    let image = blend(&xt, &st, &mask, beta);
    let anomalous = mask.iter().any(|&m| m > 0.0);
    Ok(Synthesis { image, mask, beta, anomalous, source: Some(source), augmenters: order, perlin: Some((sa, sb, angle)) })
}

/// `xa = x (1-M) + (1-beta) src M + beta x M`, per pixel and channel.
pub fn blend(x: &Array3<f32>, src: &Array3<f32>, mask: &Array2<f32>, beta: f32) -> Array3<f32> {
    let mut out = x.clone();
    for ((c, y, xx), v) in out.indexed_iter_mut() {
        let m = mask[[y, xx]];
        let xv = x[[c, y, xx]];
        *v = xv * (1.0 - m) + (1.0 - beta) * src[[c, y, xx]] * m + beta * xv * m;
    }
    out
}

fn fade(t: f32) -> f32 {
    ((6.0 * t - 15.0) * t + 10.0) * t * t * t
}

/// 2-D Perlin noise of size `h x w` with `ry x rx` lattice cells (DRAEM's `rand_perlin_2d_np`:
/// random gradient angles at the lattice points, quintic fade, scaled by sqrt(2)).
pub fn perlin(h: usize, w: usize, ry: usize, rx: usize, rng: &mut ChaCha8Rng) -> Array2<f32> {
    let grads: Vec<(f32, f32)> = (0..(ry + 1) * (rx + 1))
        .map(|_| {
            let a = rng.random::<f32>() * std::f32::consts::TAU;
            (a.cos(), a.sin())
        })
        .collect();
    let g = |iy: usize, ix: usize| grads[iy * (rx + 1) + ix];
    Array2::from_shape_fn((h, w), |(y, x)| {
        let gy = y as f32 * ry as f32 / h as f32;
        let gx = x as f32 * rx as f32 / w as f32;
        let (iy, ix) = ((gy.floor() as usize).min(ry - 1), (gx.floor() as usize).min(rx - 1));
        let (fy, fx) = (gy - iy as f32, gx - ix as f32);
        let dot = |(a, b): (f32, f32), dy: f32, dx: f32| a * dy + b * dx;
        let n00 = dot(g(iy, ix), fy, fx);
        let n10 = dot(g(iy + 1, ix), fy - 1.0, fx);
        let n01 = dot(g(iy, ix + 1), fy, fx - 1.0);
        let n11 = dot(g(iy + 1, ix + 1), fy - 1.0, fx - 1.0);
        let (ty, tx) = (fade(fy), fade(fx));
        let lerp = |a: f32, b: f32, t: f32| a + t * (b - a);
        std::f32::consts::SQRT_2 * lerp(lerp(n00, n10, ty), lerp(n01, n11, ty), tx)
    })
}

/// Bilinear sample of `a` at (y, x); 0 outside.
fn sample_plane(a: &Array2<f32>, y: f32, x: f32) -> f32 {
    let (h, w) = a.dim();
    let (y0, x0) = (y.floor(), x.floor());
    let (fy, fx) = (y - y0, x - x0);
    let at = |yy: f32, xx: f32| {
        if yy < 0.0 || xx < 0.0 || yy >= h as f32 || xx >= w as f32 {
            0.0
        } else {
            a[[yy as usize, xx as usize]]
        }
    };
    let top = at(y0, x0) * (1.0 - fx) + at(y0, x0 + 1.0) * fx;
    let bot = at(y0 + 1.0, x0) * (1.0 - fx) + at(y0 + 1.0, x0 + 1.0) * fx;
    top * (1.0 - fy) + bot * fy
}

/// Source coordinates of output pixel (y, x) when rotating by `deg` about the centre.
fn rotate_source(y: usize, x: usize, h: usize, w: usize, cos: f32, sin: f32) -> (f32, f32) {
    let (cy, cx) = ((h as f32 - 1.0) / 2.0, (w as f32 - 1.0) / 2.0);
    let (dy, dx) = (y as f32 - cy, x as f32 - cx);
    (cy + dy * cos - dx * sin, cx + dy * sin + dx * cos)
}

/// `a` rotated by `deg` degrees about its centre (bilinear, 0 outside), as imgaug's Affine.
pub fn rotate_plane(a: &Array2<f32>, deg: f32) -> Array2<f32> {
    let (h, w) = a.dim();
    let (sin, cos) = deg.to_radians().sin_cos();
    Array2::from_shape_fn((h, w), |(y, x)| {
        let (sy, sx) = rotate_source(y, x, h, w, cos, sin);
        sample_plane(a, sy, sx)
    })
}

/// The image cut into `grid x grid` tiles, shuffled (a remainder strip, if any, stays put).
pub fn shuffle_tiles(img: &RgbImage, grid: u32, rng: &mut ChaCha8Rng) -> RgbImage {
    let (tw, th) = (img.width() / grid, img.height() / grid);
    let mut order: Vec<u32> = (0..grid * grid).collect();
    order.shuffle(rng);
    let mut out = img.clone();
    if tw == 0 || th == 0 {
        return out;
    }
    for (dst, &src) in order.iter().enumerate() {
        let (dx, dy) = ((dst as u32 % grid) * tw, (dst as u32 / grid) * th);
        let (sx, sy) = ((src % grid) * tw, (src / grid) * th);
        for y in 0..th {
            for x in 0..tw {
                out.put_pixel(dx + x, dy + y, *img.get_pixel(sx + x, sy + y));
            }
        }
    }
    out
}

fn clamp8(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

fn map_lut(img: &RgbImage, luts: &[[u8; 256]; 3]) -> RgbImage {
    let mut out = img.clone();
    for p in out.pixels_mut() {
        for c in 0..3 {
            p[c] = luts[c][p[c] as usize];
        }
    }
    out
}

fn histograms(img: &RgbImage) -> [[u64; 256]; 3] {
    let mut h = [[0u64; 256]; 3];
    for p in img.pixels() {
        for c in 0..3 {
            h[c][p[c] as usize] += 1;
        }
    }
    h
}

/// Applies one augmenter with its random parameters.
pub fn augment(img: &RgbImage, a: Augmenter, rng: &mut ChaCha8Rng) -> RgbImage {
    match a {
        Augmenter::Gamma => {
            let mut luts = [[0u8; 256]; 3];
            for lut in luts.iter_mut() {
                let g = rng.random_range(0.5f32..=2.0);
                for (v, o) in lut.iter_mut().enumerate() {
                    *o = clamp8(255.0 * (v as f32 / 255.0).powf(g));
                }
            }
            map_lut(img, &luts)
        }
        Augmenter::MultiplyAdd => {
            let mul = rng.random_range(0.8f32..=1.2);
            let add = rng.random_range(-30i32..=30) as f32;
            let mut out = img.clone();
            for p in out.pixels_mut() {
                // Only the luma changes, so every channel moves by the change of Y.
                let y = 0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32;
                let dy = (y * mul + add).clamp(0.0, 255.0) - y;
                for c in 0..3 {
                    p[c] = clamp8(p[c] as f32 + dy);
                }
            }
            out
        }
        Augmenter::Sharpness => {
            let f = rng.random_range(0.0f32..=2.0);
            let (w, h) = img.dimensions();
            let mut out = img.clone();
            for y in 1..h.saturating_sub(1) {
                for x in 1..w.saturating_sub(1) {
                    let mut acc = [0f32; 3];
                    for (dy, dx) in (0..3).flat_map(|dy| (0..3).map(move |dx| (dy, dx))) {
                        let k = if dy == 1 && dx == 1 { 5.0 } else { 1.0 };
                        let q = img.get_pixel(x + dx - 1, y + dy - 1);
                        for c in 0..3 {
                            acc[c] += k * q[c] as f32;
                        }
                    }
                    let p = img.get_pixel(x, y);
                    let o = out.get_pixel_mut(x, y);
                    for c in 0..3 {
                        let smooth = acc[c] / 13.0;
                        o[c] = clamp8(smooth + f * (p[c] as f32 - smooth));
                    }
                }
            }
            out
        }
        Augmenter::HueSaturation => {
            let dh = rng.random_range(-50i32..=50) as f32 / 255.0 * 360.0;
            let ds = rng.random_range(-50i32..=50) as f32 / 255.0;
            let mut out = img.clone();
            for p in out.pixels_mut() {
                let (h, s, v) = rgb_to_hsv(p[0], p[1], p[2]);
                let h = (h + dh).rem_euclid(360.0);
                let s = (s + ds).clamp(0.0, 1.0);
                *p = hsv_to_rgb(h, s, v);
            }
            out
        }
        Augmenter::Solarize => {
            let apply = rng.random_bool(0.5);
            let thr = rng.random_range(32.0f32..=128.0);
            let mut lut = [0u8; 256];
            for (v, o) in lut.iter_mut().enumerate() {
                *o = if apply && v as f32 >= thr { 255 - v as u8 } else { v as u8 };
            }
            map_lut(img, &[lut; 3])
        }
        Augmenter::Posterize => {
            let bits = rng.random_range(1u32..=8);
            let keep = !((1u32 << (8 - bits)) - 1) as u8;
            let mut lut = [0u8; 256];
            for (v, o) in lut.iter_mut().enumerate() {
                *o = v as u8 & keep;
            }
            map_lut(img, &[lut; 3])
        }
        Augmenter::Invert => {
            let mut lut = [0u8; 256];
            for (v, o) in lut.iter_mut().enumerate() {
                *o = 255 - v as u8;
            }
            map_lut(img, &[lut; 3])
        }
        Augmenter::Autocontrast => {
            let cutoff = rng.random_range(0u64..=20);
            let hist = histograms(img);
            let mut luts = [[0u8; 256]; 3];
            for (c, lut) in luts.iter_mut().enumerate() {
                let mut h = hist[c];
                let n: u64 = h.iter().sum();
                let mut cut = n * cutoff / 100;
                for b in h.iter_mut() {
                    let take = cut.min(*b);
                    *b -= take;
                    cut -= take;
                    if cut == 0 {
                        break;
                    }
                }
                let mut cut = n * cutoff / 100;
                for b in h.iter_mut().rev() {
                    let take = cut.min(*b);
                    *b -= take;
                    cut -= take;
                    if cut == 0 {
                        break;
                    }
                }
                let lo = h.iter().position(|&b| b > 0);
                let hi = h.iter().rposition(|&b| b > 0);
                for (v, o) in lut.iter_mut().enumerate() {
                    *o = match (lo, hi) {
                        (Some(lo), Some(hi)) if hi > lo => {
                            let scale = 255.0 / (hi - lo) as f32;
                            (((v as f32 - lo as f32) * scale) as i32).clamp(0, 255) as u8
                        }
                        _ => v as u8,
                    };
                }
            }
            map_lut(img, &luts)
        }
        Augmenter::Equalize => {
            let hist = histograms(img);
            let mut luts = [[0u8; 256]; 3];
            for (c, lut) in luts.iter_mut().enumerate() {
                let h = &hist[c];
                let nonzero: Vec<u64> = h.iter().copied().filter(|&b| b > 0).collect();
                let step = if nonzero.len() <= 1 { 0 } else { (nonzero.iter().sum::<u64>() - nonzero[nonzero.len() - 1]) / 255 };
                let mut n = step / 2;
                for (v, o) in lut.iter_mut().enumerate() {
                    *o = n.checked_div(step).map_or(v as u8, |q| q.min(255) as u8);
                    n += h[v];
                }
            }
            map_lut(img, &luts)
        }
        Augmenter::Rotate => {
            let deg = rng.random_range(-45.0f32..=45.0);
            let (w, h) = img.dimensions();
            let planes: Vec<Array2<f32>> = (0..3)
                .map(|c| Array2::from_shape_fn((h as usize, w as usize), |(y, x)| img.get_pixel(x as u32, y as u32)[c] as f32))
                .collect();
            let (sin, cos) = deg.to_radians().sin_cos();
            RgbImage::from_fn(w, h, |x, y| {
                let (sy, sx) = rotate_source(y as usize, x as usize, h as usize, w as usize, cos, sin);
                Rgb([0, 1, 2].map(|c| clamp8(sample_plane(&planes[c], sy, sx))))
            })
        }
    }
}

/// RGB (0..255) to HSV: hue in degrees, saturation and value in [0, 1].
fn rgb_to_hsv(r: u8, g: u8, b: u8) -> (f32, f32, f32) {
    let (r, g, b) = (r as f32 / 255.0, g as f32 / 255.0, b as f32 / 255.0);
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let d = max - min;
    let h = if d == 0.0 {
        0.0
    } else if max == r {
        60.0 * ((g - b) / d).rem_euclid(6.0)
    } else if max == g {
        60.0 * ((b - r) / d + 2.0)
    } else {
        60.0 * ((r - g) / d + 4.0)
    };
    let s = if max == 0.0 { 0.0 } else { d / max };
    (h, s, max)
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> Rgb<u8> {
    let c = v * s;
    let hp = h / 60.0;
    let x = c * (1.0 - (hp.rem_euclid(2.0) - 1.0).abs());
    let (r, g, b) = match hp as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    Rgb([clamp8((r + m) * 255.0), clamp8((g + m) * 255.0), clamp8((b + m) * 255.0)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn test_image(r: u32) -> RgbImage {
        // ramps plus a hash pattern (a pure ramp is a fixed point of smoothing)
        RgbImage::from_fn(r, r, |x, y| {
            let h = (x.wrapping_mul(73_856_093) ^ y.wrapping_mul(19_349_663)) % 64;
            Rgb([((x * 7 + h) % 256) as u8, ((y * 5 + 2 * h) % 256) as u8, (((x + y) * 3 + h) % 256) as u8])
        })
    }

    struct Flat;
    impl TextureSource for Flat {
        fn count(&self) -> usize {
            2
        }
        fn load(&self, i: usize, r: u32) -> Result<RgbImage> {
            Ok(RgbImage::from_pixel(r, r, Rgb([200, 40 * i as u8, 10])))
        }
    }

    #[test]
    fn perlin_is_bounded_and_varies() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for (ry, rx) in [(1, 1), (4, 2), (32, 32)] {
            let p = perlin(64, 64, ry, rx, &mut rng);
            let (lo, hi) = p.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            assert!(lo >= -1.5 && hi <= 1.5, "{ry}x{rx}: [{lo}, {hi}]");
            assert!(hi - lo > 0.2, "{ry}x{rx}: flat noise [{lo}, {hi}]");
        }
        // lattice points are zeros of Perlin noise
        let p = perlin(64, 64, 4, 4, &mut rng);
        assert_eq!(p[[0, 0]], 0.0);
        assert!(p[[16, 32]].abs() < 1e-6);
    }

    #[test]
    fn rotation_by_zero_is_identity_and_by_90_permutes() {
        let a = Array2::from_shape_fn((5, 5), |(y, x)| (y * 5 + x) as f32);
        assert_eq!(rotate_plane(&a, 0.0), a);
        let r = rotate_plane(&a, 90.0);
        for y in 0..5 {
            for x in 0..5 {
                assert!((r[[y, x]] - a[[4 - x, y]]).abs() < 1e-4 || (r[[y, x]] - a[[x, 4 - y]]).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn tiles_are_a_permutation() {
        let img = test_image(64);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let s = shuffle_tiles(&img, 8, &mut rng);
        assert_ne!(s, img);
        let mut a: Vec<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        let mut b: Vec<[u8; 3]> = s.pixels().map(|p| p.0).collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    #[test]
    fn augmenters_keep_size_and_change_something() {
        let img = test_image(32);
        for a in AUGMENTERS {
            let mut changed = false;
            for seed in 0..8 {
                let out = augment(&img, a, &mut ChaCha8Rng::seed_from_u64(seed));
                assert_eq!(out.dimensions(), img.dimensions());
                changed |= out != img;
            }
            assert!(changed, "{a:?} never changed the image");
        }
        // exact ones
        let inv = augment(&img, Augmenter::Invert, &mut ChaCha8Rng::seed_from_u64(0));
        assert_eq!(inv.get_pixel(3, 4)[0], 255 - img.get_pixel(3, 4)[0]);
        let flat = RgbImage::from_pixel(8, 8, Rgb([10, 20, 30]));
        assert_eq!(augment(&flat, Augmenter::Equalize, &mut ChaCha8Rng::seed_from_u64(0)), flat);
    }

    #[test]
    fn hsv_roundtrip() {
        for (r, g, b) in [(0u8, 0u8, 0u8), (255, 0, 0), (12, 200, 77), (90, 90, 91), (255, 255, 255), (3, 140, 250)] {
            let (h, s, v) = rgb_to_hsv(r, g, b);
            assert_eq!(hsv_to_rgb(h, s, v), Rgb([r, g, b]));
        }
    }

    #[test]
    fn blend_follows_the_formula_per_pixel() {
        let img = test_image(64);
        let tex = Flat;
        let x = imaging::preprocess(&img, 64);
        let mut seen = 0;
        for seed in 0..40u64 {
            let s = synthesize(&img, Some(&tex), None, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
            if !s.anomalous {
                continue;
            }
            seen += 1;
            assert!((0.0..BETA_MAX).contains(&s.beta));
            assert_eq!(s.augmenters.len(), 3);
            let mut distinct = s.augmenters.clone();
            distinct.dedup();
            assert_eq!(distinct.len(), 3);
            // Recover src from a masked pixel and check every masked/unmasked pixel.
            for ((c, y, xx), &v) in s.image.indexed_iter() {
                let m = s.mask[[y, xx]];
                if m == 0.0 {
                    assert_eq!(v, x[[c, y, xx]]);
                } else {
                    // v = (1-beta) src + beta x  =>  src in [-1, 1]
                    let src = (v - s.beta * x[[c, y, xx]]) / (1.0 - s.beta);
                    assert!((-1.0 - 1e-4..=1.0 + 1e-4).contains(&src), "src {src}");
                }
            }
        }
        assert!(seen >= 10);
        // And blend() itself on hand values: x = 0.5, src = -1, beta = 0.25, M = 1:
        // 0.5*0 + 0.75*(-1)*1 + 0.25*0.5*1 = -0.625; M = 0 keeps 0.5.
        let xa = Array3::from_elem((1, 1, 2), 0.5f32);
        let src = Array3::from_elem((1, 1, 2), -1.0f32);
        let m = Array2::from_shape_vec((1, 2), vec![1.0, 0.0]).unwrap();
        let out = blend(&xa, &src, &m, 0.25);
        assert_eq!(out.as_slice().unwrap(), &[-0.625, 0.5]);
    }

    #[test]
    fn foreground_limits_the_mask() {
        let img = test_image(64);
        let fg = Array2::from_shape_fn((64, 64), |(_, x)| if x < 32 { 1.0 } else { 0.0 });
        for seed in 0..20u64 {
            let s = synthesize(&img, None, Some(&fg), &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
            assert!(s.mask.indexed_iter().all(|((_, x), &m)| x < 32 || m == 0.0));
            assert!(s.source != Some(Source::Texture(0)) && s.source != Some(Source::Texture(1)));
        }
    }
}
