//! Frame bytes → RGB: MJPEG through the project's one image decoder (`imaging`), YUYV by
//! hand (BT.601, limited range), RGB as is.

use anyhow::{bail, Result};
use image::RgbImage;

use super::{Frame, PixelFormat};

/// The size in a JPEG's header (SOF), without decoding.
pub fn jpeg_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    crate::imaging::encoded_dimensions(bytes)
}

#[inline]
fn clamp8(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// YUYV (YUV 4:2:2, Y0 U Y1 V) → RGB with the BT.601 limited-range matrix, in integers
/// (the coefficients scaled by 256, as libv4l does).
pub fn yuyv_to_rgb(bytes: &[u8], w: u32, h: u32) -> Result<RgbImage> {
    if w % 2 != 0 {
        bail!("YUYV width {w} is odd");
    }
    let need = (w as usize) * (h as usize) * 2;
    if bytes.len() != need {
        bail!("YUYV {w}x{h} needs {need} bytes, the frame has {}", bytes.len());
    }
    let mut out = vec![0u8; need / 2 * 3];
    for (src, dst) in bytes.chunks_exact(4).zip(out.chunks_exact_mut(6)) {
        let (y0, u, y1, v) = (src[0] as i32, src[1] as i32 - 128, src[2] as i32, src[3] as i32 - 128);
        for (k, y) in [y0, y1].into_iter().enumerate() {
            let c = 298 * (y - 16);
            dst[3 * k] = clamp8((c + 409 * v + 128) >> 8);
            dst[3 * k + 1] = clamp8((c - 100 * u - 208 * v + 128) >> 8);
            dst[3 * k + 2] = clamp8((c + 516 * u + 128) >> 8);
        }
    }
    Ok(RgbImage::from_raw(w, h, out).expect("sized above"))
}

/// RGB → YUYV (BT.601 limited range), averaging the chroma of each pixel pair: for
/// recordings and the fake device.
pub fn rgb_to_yuyv(img: &RgbImage) -> Vec<u8> {
    let (w, h) = img.dimensions();
    let mut out = Vec::with_capacity((w * h * 2) as usize);
    for y in 0..h {
        for x in (0..w - w % 2).step_by(2) {
            let yuv = |p: &image::Rgb<u8>| {
                let (r, g, b) = (p[0] as i32, p[1] as i32, p[2] as i32);
                let yy = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16;
                let u = ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128;
                let v = ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128;
                (yy, u, v)
            };
            let (y0, u0, v0) = yuv(img.get_pixel(x, y));
            let (y1, u1, v1) = yuv(img.get_pixel(x + 1, y));
            out.extend_from_slice(&[clamp8(y0), clamp8((u0 + u1) / 2), clamp8(y1), clamp8((v0 + v1) / 2)]);
        }
    }
    out
}

/// Decodes a frame to RGB: encoded frames through `imaging`'s one decoder (limits,
/// truncation, EXIF orientation), raw ones after `imaging`'s size checks (no empty frame, no
/// frame over the limits) and an exact byte count.
pub fn decode_frame(frame: &Frame) -> Result<RgbImage> {
    if frame.bytes.is_empty() {
        bail!("empty frame (0 bytes)");
    }
    match frame.format {
        PixelFormat::Mjpeg | PixelFormat::Encoded => crate::imaging::decode_rgb(&frame.bytes),
        PixelFormat::Yuyv { w, h } => {
            crate::imaging::check_raw_size(w, h, 2)?;
            yuyv_to_rgb(&frame.bytes, w, h)
        }
        PixelFormat::Rgb { w, h } => {
            crate::imaging::check_raw_size(w, h, 3)?;
            let need = w as u64 * h as u64 * 3;
            if frame.bytes.len() as u64 != need {
                bail!("RGB {w}x{h} needs {need} bytes, the frame has {}", frame.bytes.len());
            }
            Ok(RgbImage::from_raw(w, h, frame.bytes.to_vec()).expect("sized above"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuyv_round_trip_is_close_and_primaries_are_right() {
        // Pure colours in pairs (chroma is shared by a pair).
        let img = RgbImage::from_fn(8, 2, |x, y| match (x / 2, y) {
            (0, _) => image::Rgb([255, 0, 0]),
            (1, _) => image::Rgb([0, 255, 0]),
            (2, _) => image::Rgb([0, 0, 255]),
            _ => image::Rgb([128, 128, 128]),
        });
        let yuyv = rgb_to_yuyv(&img);
        assert_eq!(yuyv.len(), 8 * 2 * 2);
        let back = yuyv_to_rgb(&yuyv, 8, 2).unwrap();
        for (a, b) in img.pixels().zip(back.pixels()) {
            for c in 0..3 {
                assert!((a[c] as i32 - b[c] as i32).abs() <= 3, "{a:?} vs {b:?}");
            }
        }
        // Black and white at the limits of the limited range.
        let bw = yuyv_to_rgb(&[16, 128, 235, 128], 2, 1).unwrap();
        assert_eq!(bw.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(bw.get_pixel(1, 0).0, [255, 255, 255]);
        assert!(yuyv_to_rgb(&[0; 6], 2, 1).is_err());
    }
}
