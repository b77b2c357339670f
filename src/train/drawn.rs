//! Drawn defects: scratches, stains and holes painted onto the image itself, for `glad tune`'s
//! validation set (beyond GLAD). DRAEM's synthesis (`synth`) pastes foreign or shuffled texture
//! through Perlin masks; on a texture an autoencoder reconstructs such pastes poorly, so a
//! validation set of pastes alone rewards reconstructions that merely copy the input. The
//! families here are the generic surface defects of an inspection line: thin lines, soft
//! brightness changes, flat blobs. Sizes are fractions of the side `r`, so they scale with the
//! bundle's resolution.

use anyhow::{ensure, Result};
use image::RgbImage;
use ndarray::{Array2, Array3};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// One of the drawn families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 1-3 straight or once-bent lines, 1.5-5% of the side wide, near-white or near-black.
    Scratch,
    /// 1-2 elliptic blobs with a Gaussian falloff, brighter or darker by 0.15-0.35 (of the
    /// [0, 1] range) at the centre; the mask is where the weight is at least 0.35.
    Stain,
    /// An irregular blob (radius 6-16% of the side) filled with a flat dark or bright value.
    Hole,
}

pub const KINDS: [Kind; 3] = [Kind::Scratch, Kind::Stain, Kind::Hole];

/// A drawn defect: the image in [-1, 1] (`[3, r, r]`, GLAD's preprocessing) and its 0/1 mask.
#[derive(Debug, Clone)]
pub struct Drawn {
    pub image: Array3<f32>,
    pub mask: Array2<f32>,
    pub kind: Kind,
}

/// Draws a defect of a random family onto `x` (square). Everything comes from `rng`.
pub fn draw(x: &RgbImage, rng: &mut ChaCha8Rng) -> Result<Drawn> {
    let r = x.width() as usize;
    ensure!(x.height() as usize == r && r >= 8, "drawn defects need a square image of at least 8x8, got {}x{}", x.width(), x.height());
    let kind = KINDS[rng.random_range(0..KINDS.len())];
    // [0, 1] per channel
    let mut v = Array3::from_shape_fn((3, r, r), |(c, y, xx)| x.get_pixel(xx as u32, y as u32)[c] as f32 / 255.0);
    let rf = r as f32;
    let mut mask = Array2::<f32>::zeros((r, r));
    match kind {
        Kind::Scratch => {
            let value = if rng.random_bool(0.5) { rng.random_range(0.88..0.98) } else { rng.random_range(0.02..0.12) };
            let mut cov = Array2::<f32>::zeros((r, r));
            for _ in 0..rng.random_range(1..=3) {
                let width = rng.random_range(0.015..0.05) * rf;
                let (mut px, mut py) = (rng.random_range(0.1..0.9) * rf, rng.random_range(0.1..0.9) * rf);
                let mut angle: f32 = rng.random_range(0.0..std::f32::consts::PI * 2.0);
                let segments = if rng.random_bool(0.5) { 2 } else { 1 };
                for _ in 0..segments {
                    let len = rng.random_range(0.2..0.5) * rf;
                    let (qx, qy) = (px + len * angle.cos(), py + len * angle.sin());
                    for ((y, xx), c) in cov.indexed_iter_mut() {
                        let d = segment_distance(xx as f32 + 0.5, y as f32 + 0.5, px, py, qx, qy);
                        *c = c.max((width / 2.0 + 0.5 - d).clamp(0.0, 1.0));
                    }
                    (px, py) = (qx, qy);
                    angle += rng.random_range(-0.6..0.6);
                }
            }
            paint(&mut v, &cov, value);
            mask.zip_mut_with(&cov, |m, &c| *m = (c >= 0.5) as u8 as f32);
        }
        Kind::Stain => {
            let sign = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
            let amp = sign * rng.random_range(0.15..0.35);
            let mut weight = Array2::<f32>::zeros((r, r));
            for _ in 0..rng.random_range(1..=2) {
                let (cx, cy) = (rng.random_range(0.15..0.85) * rf, rng.random_range(0.15..0.85) * rf);
                let (ra, rb) = (rng.random_range(0.08..0.2) * rf, rng.random_range(0.08..0.2) * rf);
                let th: f32 = rng.random_range(0.0..std::f32::consts::PI);
                for ((y, xx), w) in weight.indexed_iter_mut() {
                    let q = ellipse_radius(xx as f32 + 0.5 - cx, y as f32 + 0.5 - cy, ra, rb, th);
                    // weight 1 at the centre, exp(-1/2) at the ellipse, 0.35 a little outside it
                    *w = w.max((-0.5 * q * q).exp());
                }
            }
            for c in 0..3 {
                for ((y, xx), w) in weight.indexed_iter() {
                    let p = &mut v[[c, y, xx]];
                    *p = (*p + amp * w).clamp(0.0, 1.0);
                }
            }
            mask.zip_mut_with(&weight, |m, &w| *m = (w >= 0.35) as u8 as f32);
        }
        Kind::Hole => {
            let value = if rng.random_bool(0.75) { rng.random_range(0.0..0.05) } else { rng.random_range(0.9..1.0) };
            let (cx, cy) = (rng.random_range(0.2..0.8) * rf, rng.random_range(0.2..0.8) * rf);
            let r0 = rng.random_range(0.06..0.16) * rf;
            // the outline wobbles with two harmonics of random phase
            let (k1, k2) = (rng.random_range(2..=3) as f32, rng.random_range(4..=6) as f32);
            let (a1, a2) = (rng.random_range(0.05..0.25), rng.random_range(0.0..0.12));
            let (p1, p2): (f32, f32) = (rng.random_range(0.0..6.3), rng.random_range(0.0..6.3));
            let mut cov = Array2::<f32>::zeros((r, r));
            for ((y, xx), c) in cov.indexed_iter_mut() {
                let (dx, dy) = (xx as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                let th = dy.atan2(dx);
                let edge = r0 * (1.0 + a1 * (k1 * th + p1).sin() + a2 * (k2 * th + p2).sin());
                *c = (edge + 0.5 - (dx * dx + dy * dy).sqrt()).clamp(0.0, 1.0);
            }
            paint(&mut v, &cov, value);
            mask.zip_mut_with(&cov, |m, &c| *m = (c >= 0.5) as u8 as f32);
        }
    }
    Ok(Drawn { image: v.mapv(|p| (p - 0.5) / 0.5), mask, kind })
}

/// `v = v (1 - cov) + value cov` on every channel.
fn paint(v: &mut Array3<f32>, cov: &Array2<f32>, value: f32) {
    for c in 0..3 {
        for ((y, x), &k) in cov.indexed_iter() {
            let p = &mut v[[c, y, x]];
            *p = *p * (1.0 - k) + value * k;
        }
    }
}

/// Distance from `(x, y)` to the segment `(ax, ay)-(bx, by)`.
fn segment_distance(x: f32, y: f32, ax: f32, ay: f32, bx: f32, by: f32) -> f32 {
    let (dx, dy) = (bx - ax, by - ay);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 { (((x - ax) * dx + (y - ay) * dy) / len2).clamp(0.0, 1.0) } else { 0.0 };
    let (px, py) = (ax + t * dx - x, ay + t * dy - y);
    (px * px + py * py).sqrt()
}

/// The offset `(dx, dy)` in units of an ellipse with radii `ra`, `rb`, rotated by `th`: 1 on it.
fn ellipse_radius(dx: f32, dy: f32, ra: f32, rb: f32, th: f32) -> f32 {
    let (c, s) = (th.cos(), th.sin());
    let (u, w) = (dx * c + dy * s, -dx * s + dy * c);
    ((u / ra).powi(2) + (w / rb).powi(2)).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn gray(r: u32, v: u8) -> RgbImage {
        RgbImage::from_pixel(r, r, image::Rgb([v, v, v]))
    }

    #[test]
    fn each_family_changes_the_image_inside_its_mask_only() {
        let x = gray(64, 128);
        let base = (128.0 / 255.0 - 0.5) / 0.5;
        let mut seen = Vec::new();
        for seed in 0..60 {
            let d = draw(&x, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
            assert_eq!(d.image.dim(), (3, 64, 64));
            let area = d.mask.sum();
            assert!(area >= 1.0, "seed {seed}: {:?} with an empty mask", d.kind);
            assert!(d.mask.iter().all(|&m| m == 0.0 || m == 1.0));
            // inside the mask the paint is well away from the background (scratch and hole:
            // at least half coverage of a value >= 0.38 away; stain: weight >= 0.35 of >= 0.15)
            let min_inside = d
                .mask
                .indexed_iter()
                .filter(|(_, &m)| m == 1.0)
                .map(|((y, x), _)| (d.image[[0, y, x]] - base).abs())
                .fold(f32::INFINITY, f32::min);
            assert!(min_inside > 2.0 * 0.05 - 1e-6, "seed {seed}: {:?} barely visible inside its mask ({min_inside})", d.kind);
            // outside: untouched except the soft rim (scratch/hole: 1 px ramp; stain: falloff)
            let changed_far = d.mask.indexed_iter().filter(|((y, x), &m)| {
                let near = (y.saturating_sub(3)..(y + 4).min(64))
                    .any(|yy| (x.saturating_sub(3)..(x + 4).min(64)).any(|xx| d.mask[[yy, xx]] == 1.0));
                m == 0.0 && !near && (d.image[[0, *y, *x]] - base).abs() > 2.0 * 0.36
            });
            assert_eq!(changed_far.count(), 0, "seed {seed}: {:?} changed pixels far from its mask", d.kind);
            seen.push(d.kind);
        }
        for k in KINDS {
            assert!(seen.contains(&k), "{k:?} never drawn in 60 seeds");
        }
        // seeded: the same generator state gives the same defect
        let a = draw(&x, &mut ChaCha8Rng::seed_from_u64(7)).unwrap();
        let b = draw(&x, &mut ChaCha8Rng::seed_from_u64(7)).unwrap();
        assert_eq!(a.image, b.image);
        assert!(draw(&RgbImage::new(64, 32), &mut ChaCha8Rng::seed_from_u64(0)).unwrap_err().to_string().contains("square"));
    }

    #[test]
    fn geometry_helpers() {
        assert!((segment_distance(0.0, 1.0, -1.0, 0.0, 1.0, 0.0) - 1.0).abs() < 1e-6);
        assert!((segment_distance(3.0, 0.0, -1.0, 0.0, 1.0, 0.0) - 2.0).abs() < 1e-6);
        assert!((ellipse_radius(2.0, 0.0, 2.0, 1.0, 0.0) - 1.0).abs() < 1e-6);
        assert!((ellipse_radius(0.0, 2.0, 2.0, 1.0, std::f32::consts::FRAC_PI_2) - 1.0).abs() < 1e-5);
    }
}
