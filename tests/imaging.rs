//! Image loading and preprocessing against PIL (tests/golden/preprocess, scripts/resize_golden.py).

use std::path::{Path, PathBuf};

use glad_edge::imaging::{load_rgb, preprocess};
use ndarray::{Array3, ArrayD, Ix3};

fn g(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/preprocess").join(name)
}

fn npy<T: ndarray_npy::ReadableElement>(name: &str) -> ArrayD<T> {
    ndarray_npy::read_npy(g(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn hwc(img: &image::RgbImage) -> Array3<u8> {
    Array3::from_shape_fn((img.height() as usize, img.width() as usize, 3), |(y, x, c)| img.get_pixel(x as u32, y as u32)[c])
}

/// Conversions that involve no resampling match PIL exactly.
#[test]
fn conversions_match_pil_exactly() {
    for (png, want) in [
        ("rgba.png", "rgba_rgb.npy"),
        ("gray8.png", "gray8_rgb.npy"),
        ("palette.png", "palette_rgb.npy"),
        ("exif_orient6.png", "exif_orient6_rgb.npy"),
    ] {
        let got = hwc(&load_rgb(&g(png)).unwrap());
        let want = npy::<u8>(want).into_dimensionality::<Ix3>().unwrap();
        assert_eq!(got, want, "{png}");
    }
}

/// 16-bit gray is scaled to 8 bits (round(v / 257)), not clamped as PIL does.
#[test]
fn sixteen_bit_is_scaled() {
    let raw = image::open(g("gray16.png")).unwrap().into_luma16();
    let got = load_rgb(&g("gray16.png")).unwrap();
    for (p, q) in raw.pixels().zip(got.pixels()) {
        let want = (p[0] as f64 / 257.0).round() as u8;
        assert_eq!(q.0, [want; 3]);
    }
}

/// Resizing to R with the antialiasing bilinear filter: within one 8-bit step of PIL's BILINEAR
/// (both round to 8 bits; their filter windows differ in the last bits), and the mean
/// absolute difference below 0.5/255.
#[test]
fn preprocess_matches_pil_bilinear() {
    for (png, want) in [("input.png", "expected.npy"), ("input_up.png", "expected_up.npy")] {
        let got = preprocess(&load_rgb(&g(png)).unwrap(), 128);
        let want = npy::<f32>(want).into_dimensionality::<Ix3>().unwrap();
        let diff = (&got - &want).mapv(f32::abs);
        let (max, mean) = (diff.fold(0.0f32, |a, &v| a.max(v)), diff.mean().unwrap());
        // [-1,1] scale: one 8-bit step is 2/255.
        assert!(max <= 2.0 / 255.0 + 1e-6, "{png}: max diff {max}");
        assert!(mean <= 0.5 * 2.0 / 255.0, "{png}: mean diff {mean}");
        eprintln!("{png}: max {:.3} mean {:.3} (8-bit steps)", max * 127.5, mean * 127.5);
    }
}
