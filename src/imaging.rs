//! Images in and out: decoding any format the `image` crate reads into RGB, GLAD's
//! preprocessing, and heatmap overlays.

use std::path::Path;
use std::sync::RwLock;

use anyhow::{bail, Context, Result};
use image::{imageops::FilterType, DynamicImage, Rgb, RgbImage};
use ndarray::{Array2, Array3, ArrayView2, ArrayView3};
use serde::{Deserialize, Serialize};

/// Limits on what a decoder may allocate (the `limits:` config keys). An image over them is
/// refused before any pixel buffer is allocated, so a small file declaring huge dimensions
/// (a decompression bomb) costs nothing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageLimits {
    /// Largest accepted width and height, in pixels.
    pub max_image_side: u32,
    /// Largest accepted file size, and the most a decode may allocate (decoded pixels plus the
    /// RGB conversion), in bytes.
    pub max_image_bytes: u64,
}

impl ImageLimits {
    pub const DEFAULT: ImageLimits = ImageLimits { max_image_side: 16384, max_image_bytes: 512 << 20 };
    /// Range checks of the keys (`limits.max_image_side` 1..=65535, `limits.max_image_bytes` 1 KiB..=64 GiB).
    pub fn check(&self) -> std::result::Result<(), String> {
        if !(1..=65535).contains(&self.max_image_side) {
            return Err(format!("key `limits.max_image_side`: must be in 1..=65535, got {}", self.max_image_side));
        }
        if !(1024..=64 << 30).contains(&self.max_image_bytes) {
            return Err(format!("key `limits.max_image_bytes`: must be in 1024..=68719476736 (64 GiB), got {}", self.max_image_bytes));
        }
        Ok(())
    }
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits::DEFAULT
    }
}

static LIMITS: RwLock<ImageLimits> = RwLock::new(ImageLimits::DEFAULT);

/// Sets the limits every later [`load_rgb`] / [`load_luma`] in this process applies (the CLI
/// does so from the config's `limits:`).
pub fn set_limits(limits: ImageLimits) {
    *LIMITS.write().unwrap_or_else(|e| e.into_inner()) = limits;
}

/// The limits in force.
pub fn limits() -> ImageLimits {
    *LIMITS.read().unwrap_or_else(|e| e.into_inner())
}

/// Reads `path` for decoding: only a regular file (a FIFO or a device is refused without being
/// opened), at most `max_image_bytes` long.
fn read_image_file(path: &Path, limits: &ImageLimits) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!("{}: no such file or folder", path.display()),
        _ => anyhow::anyhow!("{}: cannot open: {e}", path.display()),
    })?;
    if meta.is_dir() {
        bail!("{}: is a directory, not an image file", path.display());
    }
    if !meta.is_file() {
        bail!("{}: not a regular file (a FIFO, socket or device is never read)", path.display());
    }
    if meta.len() > limits.max_image_bytes {
        bail!("{}: file is {} bytes, over `limits.max_image_bytes` ({})", path.display(), meta.len(), limits.max_image_bytes);
    }
    std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))
}

/// Whether a JPEG's data is complete: after the last start-of-scan marker (`FF DA`) there must be
/// an end-of-image marker (`FF D9`). Entropy-coded data never contains `FF DA` or `FF D9` (its
/// `FF` bytes are stuffed), so a file cut anywhere inside its last scan lacks the EOI; the image
/// crate's decoder would fill the rest of the frame with grey and return Ok.
pub fn jpeg_is_complete(data: &[u8]) -> bool {
    let last = |pat: [u8; 2], from: usize| data.get(from..).and_then(|d| d.windows(2).rposition(|w| w == pat)).map(|p| p + from);
    match last([0xFF, 0xDA], 0) {
        Some(sos) => last([0xFF, 0xD9], sos + 2).is_some(),
        None => false,
    }
}

/// Whether a PNG's chunk stream reaches its `IEND` chunk (walks the chunk lengths).
pub fn png_is_complete(data: &[u8]) -> bool {
    let mut pos = 8usize;
    while let Some(head) = data.get(pos..pos + 8) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if &head[4..8] == b"IEND" {
            return data.len() >= pos + 12;
        }
        pos = match pos.checked_add(12).and_then(|p| p.checked_add(len)) {
            Some(p) => p,
            None => return false,
        };
    }
    false
}

/// Decodes an encoded image (`name` is used in messages) under `limits`, applies its EXIF
/// orientation, and refuses a file that did not decode completely (a truncated JPEG or PNG).
pub fn decode(data: &[u8], name: &Path, limits: &ImageLimits) -> Result<DynamicImage> {
    use image::ImageDecoder;
    let bad = |e: image::ImageError| match e {
        image::ImageError::Limits(e) => anyhow::anyhow!(
            "{}: cannot decode image: {e}: over the limits (`limits.max_image_side` {}, `limits.max_image_bytes` {})",
            name.display(),
            limits.max_image_side,
            limits.max_image_bytes
        ),
        e => anyhow::anyhow!("{}: cannot decode image: {e}", name.display()),
    };
    let reader = image::ImageReader::new(std::io::Cursor::new(data))
        .with_guessed_format()
        .with_context(|| format!("{}: cannot read", name.display()))?;
    let format = reader.format();
    let mut lim = image::Limits::default();
    lim.max_image_width = Some(limits.max_image_side);
    lim.max_image_height = Some(limits.max_image_side);
    lim.max_alloc = Some(limits.max_image_bytes);
    let mut reader = reader;
    reader.limits(lim);
    if reader.format().is_none() {
        bail!("{}: cannot decode image: unknown format (png, jpeg, bmp or tiff expected)", name.display());
    }
    let mut decoder = reader.into_decoder().map_err(bad)?;
    let (w, h) = decoder.dimensions();
    let side = limits.max_image_side;
    if w == 0 || h == 0 {
        bail!("{}: image is {w}x{h}", name.display());
    }
    if w > side || h > side {
        bail!("{}: image is {w}x{h}, over `limits.max_image_side` ({side})", name.display());
    }
    // The decoded buffer plus the 8-bit RGB copy made from it.
    let need = decoder.total_bytes().saturating_add(w as u64 * h as u64 * 3);
    if need > limits.max_image_bytes {
        bail!("{}: image is {w}x{h} ({need} bytes to decode), over `limits.max_image_bytes` ({})", name.display(), limits.max_image_bytes);
    }
    match format {
        Some(image::ImageFormat::Jpeg) if !jpeg_is_complete(data) => {
            bail!("{}: truncated JPEG (no end-of-image marker after the last scan)", name.display())
        }
        Some(image::ImageFormat::Png) if !png_is_complete(data) => bail!("{}: truncated PNG (no IEND chunk)", name.display()),
        _ => {}
    }
    // EXIF orientation first, as the reference's `ImageOps.exif_transpose`.
    let orientation = decoder.orientation().map_err(bad)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(bad)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// Decodes `path`, applies its EXIF orientation and converts it to 8-bit RGB explicitly:
/// grayscale and palettes are expanded, alpha is dropped (not composited, as PIL's
/// `convert("RGB")`), 16-bit channels are scaled to 8 bits (`round(v / 257)`; PIL would clamp
/// them at 255, which destroys a 16-bit image). Every image glad reads goes through [`decode`]
/// with the process's [`limits`].
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let limits = limits();
    Ok(to_rgb(decode(&read_image_file(path, &limits)?, path, &limits)?))
}

/// Decodes `path` (as [`load_rgb`]) to 8-bit grayscale: ground-truth masks.
pub fn load_luma(path: &Path) -> Result<image::GrayImage> {
    let limits = limits();
    Ok(decode(&read_image_file(path, &limits)?, path, &limits)?.to_luma8())
}

/// Decodes an encoded image held in memory (a camera's MJPEG frame, a replayed file) through
/// the same [`decode`] as files: the process's [`limits`], truncation checks, EXIF orientation.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage> {
    let limits = limits();
    Ok(to_rgb(decode(bytes, Path::new("frame"), &limits)?))
}

/// The checks [`decode`] makes on an encoded image's size, for raw frames (YUYV, RGB) whose
/// size the source declares: not empty, within `limits.max_image_side` and
/// `limits.max_image_bytes`.
pub fn check_raw_size(w: u32, h: u32, bytes_per_pixel: u64) -> Result<()> {
    let limits = limits();
    if w == 0 || h == 0 {
        bail!("frame is {w}x{h}");
    }
    let side = limits.max_image_side;
    if w > side || h > side {
        bail!("frame is {w}x{h}, over `limits.max_image_side` ({side})");
    }
    let need = w as u64 * h as u64 * (bytes_per_pixel + 3);
    if need > limits.max_image_bytes {
        bail!("frame is {w}x{h} ({need} bytes to convert), over `limits.max_image_bytes` ({})", limits.max_image_bytes);
    }
    Ok(())
}

/// Crops `width x height` at `(x, y)` out of `img`; a rectangle outside the image is an error.
pub fn crop(img: RgbImage, x: u32, y: u32, width: u32, height: u32) -> Result<RgbImage> {
    let (w, h) = img.dimensions();
    if x as u64 + width as u64 > w as u64 || y as u64 + height as u64 > h as u64 {
        bail!("ROI {width}x{height}+{x}+{y} is outside the {w}x{h} frame");
    }
    Ok(image::imageops::crop_imm(&img, x, y, width, height).to_image())
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

/// Panels side by side at `side` x `side` each, 4 px apart on a dark background, in the order
/// given (the evaluation gallery's input | reconstruction | heatmap | ground truth, as
/// anomalib's visualiser lays them out).
pub fn panels(images: &[&RgbImage], side: u32) -> RgbImage {
    const GAP: u32 = 4;
    let n = images.len() as u32;
    let mut out = RgbImage::from_pixel(n * side + n.saturating_sub(1) * GAP, side, Rgb([24, 24, 24]));
    for (i, img) in images.iter().enumerate() {
        let scaled =
            if img.dimensions() == (side, side) { (*img).clone() } else { image::imageops::resize(*img, side, side, FilterType::Triangle) };
        image::imageops::replace(&mut out, &scaled, (i as u32 * (side + GAP)) as i64, 0);
    }
    out
}

/// A boolean mask as a white-on-black image.
pub fn mask_to_rgb(mask: &Array2<bool>) -> RgbImage {
    let (h, w) = mask.dim();
    RgbImage::from_fn(w as u32, h as u32, |x, y| if mask[[y as usize, x as usize]] { Rgb([255, 255, 255]) } else { Rgb([0, 0, 0]) })
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

/// Cheap statistics of a frame for drift monitoring, on its luma (0-255).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct FrameStats {
    /// Mean luma.
    pub brightness: f64,
    /// Standard deviation of the luma.
    pub contrast: f64,
    /// Variance of the 4-neighbour Laplacian of the luma (falls when the image blurs).
    pub sharpness: f64,
}

/// Samples at most about 65,536 points on a regular grid (the Laplacian's neighbours are the
/// adjacent pixels, so the measure keeps the full resolution's sharpness).
pub fn frame_stats(img: &RgbImage) -> FrameStats {
    let (w, h) = img.dimensions();
    if w < 3 || h < 3 {
        return FrameStats::default();
    }
    let luma = |x: u32, y: u32| {
        let p = img.get_pixel(x, y).0;
        0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2])
    };
    let stride = (((u64::from(w) * u64::from(h)) as f64 / 65536.0).sqrt().ceil() as u32).max(1);
    let (mut n, mut sum, mut sq, mut lsum, mut lsq) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let mut y = 1;
    while y + 1 < h {
        let mut x = 1;
        while x + 1 < w {
            let c = luma(x, y);
            let lap = 4.0 * c - luma(x - 1, y) - luma(x + 1, y) - luma(x, y - 1) - luma(x, y + 1);
            n += 1.0;
            sum += c;
            sq += c * c;
            lsum += lap;
            lsq += lap * lap;
            x += stride;
        }
        y += stride;
    }
    let mean = sum / n;
    let lmean = lsum / n;
    FrameStats { brightness: mean, contrast: (sq / n - mean * mean).max(0.0).sqrt(), sharpness: (lsq / n - lmean * lmean).max(0.0) }
}

pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    let mut buf = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut buf), image::ImageFormat::Png)
        .map_err(|e| anyhow::anyhow!("{}: cannot encode PNG: {e}", path.display()))?;
    write_atomic(path, &buf)
}

pub fn save_npy<D: ndarray::Dimension>(a: &ndarray::Array<f32, D>, path: &Path) -> Result<()> {
    use ndarray_npy::WriteNpyExt;
    let mut buf = Vec::new();
    a.write_npy(&mut buf).map_err(|e| anyhow::anyhow!("{}: cannot encode .npy: {e}", path.display()))?;
    write_atomic(path, &buf)
}

pub use crate::files::write_atomic;

#[cfg(test)]
mod panel_tests {
    use super::*;

    #[test]
    fn panels_sit_side_by_side_with_gaps() {
        let red = RgbImage::from_pixel(8, 8, Rgb([255, 0, 0]));
        let blue = RgbImage::from_pixel(16, 16, Rgb([0, 0, 255]));
        let p = panels(&[&red, &blue], 8);
        assert_eq!(p.dimensions(), (20, 8));
        assert_eq!(p.get_pixel(0, 0), &Rgb([255, 0, 0]));
        assert_eq!(p.get_pixel(9, 3), &Rgb([24, 24, 24]));
        assert_eq!(p.get_pixel(12, 7), &Rgb([0, 0, 255]));
        let m = mask_to_rgb(&Array2::from_shape_fn((2, 2), |(y, x)| y == x));
        assert_eq!((m.get_pixel(0, 0), m.get_pixel(1, 0)), (&Rgb([255, 255, 255]), &Rgb([0, 0, 0])));
    }
}
