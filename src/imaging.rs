//! Images in and out: decoding any format the `image` crate reads into RGB, GLAD's
//! preprocessing, and heatmap overlays.

use std::path::Path;

use anyhow::{Context, Result};
use image::{imageops::FilterType, DynamicImage, Rgb, RgbImage};
use ndarray::{Array2, Array3, ArrayView2, ArrayView3};

/// Decodes `path`, applies its EXIF orientation and converts it to 8-bit RGB explicitly:
/// grayscale and palettes are expanded, alpha is dropped (not composited, as PIL's
/// `convert("RGB")`), 16-bit channels are scaled to 8 bits (`round(v / 257)`; PIL would clamp
/// them at 255, which destroys a 16-bit image).
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    use image::ImageDecoder;
    let bad = |e: image::ImageError| anyhow::anyhow!("{}: cannot decode image: {e}", path.display());
    let mut decoder = image::ImageReader::open(path)
        .with_context(|| format!("{}: cannot open", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("{}: cannot read", path.display()))?
        .into_decoder()
        .map_err(bad)?;
    // EXIF orientation first, as the reference's `ImageOps.exif_transpose`.
    let orientation = decoder.orientation().map_err(bad)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(bad)?;
    img.apply_orientation(orientation);
    Ok(to_rgb(img))
}

/// Decodes an encoded image held in memory (a camera's MJPEG frame, a replayed file) the
/// same way as `load_rgb`, without EXIF orientation (camera frames carry none).
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage> {
    let img = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .context("cannot read image bytes")?
        .decode()
        .map_err(|e| anyhow::anyhow!("cannot decode image: {e}"))?;
    Ok(to_rgb(img))
}

/// The `(width, height)` in an encoded image's header, without decoding the pixels.
pub fn encoded_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().ok()?.into_dimensions().ok()
}

pub fn to_rgb(img: DynamicImage) -> RgbImage {
    match img {
        DynamicImage::ImageRgb8(i) => i,
        other => other.to_rgb8(),
    }
}

/// Resizes to `r x r` with a bilinear (triangle) filter whose support widens when shrinking,
/// as PIL's `Image.BILINEAR` does. No-op at the same size.
pub fn resize(img: &RgbImage, r: usize) -> RgbImage {
    if img.width() as usize == r && img.height() as usize == r {
        img.clone()
    } else {
        image::imageops::resize(img, r as u32, r as u32, FilterType::Triangle)
    }
}

/// GLAD's input tensor: resize to `r`, `(v/255 - 0.5) / 0.5`, CHW float32 in [-1, 1].
pub fn preprocess(img: &RgbImage, r: usize) -> Array3<f32> {
    let img = resize(img, r);
    Array3::from_shape_fn((3, r, r), |(c, y, x)| (img.get_pixel(x as u32, y as u32)[c] as f32 / 255.0 - 0.5) / 0.5)
}

/// `[3, H, W]` in about [-1, 1] → RGB, clamped.
pub fn tensor_to_rgb(t: ArrayView3<'_, f32>) -> RgbImage {
    let (_, h, w) = t.dim();
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let px = |c: usize| (((t[[c, y as usize, x as usize]] + 1.0) / 2.0) * 255.0).round().clamp(0.0, 255.0) as u8;
        Rgb([px(0), px(1), px(2)])
    })
}

/// The anomaly map coloured with the turbo colour map over `[lo, hi]`, blended half and half
/// over `base` (resized to the map's size).
pub fn heatmap_overlay(base: &RgbImage, map: ArrayView2<'_, f32>, lo: f32, hi: f32) -> RgbImage {
    let (h, w) = map.dim();
    let base = if base.dimensions() == (w as u32, h as u32) {
        base.clone()
    } else {
        image::imageops::resize(base, w as u32, h as u32, FilterType::Triangle)
    };
    let span = (hi - lo).max(1e-12);
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let v = ((map[[y as usize, x as usize]] - lo) / span).clamp(0.0, 1.0);
        let c = colorous::TURBO.eval_continuous(v as f64);
        let b = base.get_pixel(x, y);
        let mix = |a: u8, m: u8| ((a as u16 + m as u16) / 2) as u8;
        Rgb([mix(b[0], c.r), mix(b[1], c.g), mix(b[2], c.b)])
    })
}

/// The colour range of a heatmap: `[0, threshold * 2]` when a threshold is known (so equal
/// colours mean equal scores across images), else the map's own min and max.
pub fn heat_range(map: &Array2<f32>, threshold: Option<f32>) -> (f32, f32) {
    match threshold {
        Some(t) if t > 0.0 => (0.0, 2.0 * t),
        _ => {
            let lo = map.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = map.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            (lo, hi)
        }
    }
}

pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
    }
    img.save(path).map_err(|e| anyhow::anyhow!("{}: cannot write PNG: {e}", path.display()))
}

pub fn save_npy(a: &Array2<f32>, path: &Path) -> Result<()> {
    ndarray_npy::write_npy(path, a).map_err(|e| anyhow::anyhow!("{}: cannot write .npy: {e}", path.display()))
}
