//! Property-based fuzzing (stable Rust, proptest) of everything that reads outside input: the
//! config and manifest parsers with their range checks, parameter resolution, and the image
//! decode path (random bytes and mutated valid PNG, JPEG, BMP and TIFF files). Every case is
//! either accepted or refused with an error; a panic (or an abort) fails the test. Bounded:
//! a few thousand cases, well under a minute in release.

use std::io::Cursor;
use std::path::Path;

use glad_edge::bundle::Manifest;
use glad_edge::config::Config;
use glad_edge::glad::ParamOverrides;
use glad_edge::imaging::{self, ImageLimits};
use glad_edge::yaml::parse_yaml;
use image::{ImageFormat, Rgb, RgbImage};
use proptest::prelude::*;

fn cfg(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// `base` with the bytes at `edits` replaced, then cut to `cut` (when shorter), then `tail` appended.
fn mutate(base: &[u8], edits: &[(usize, u8)], cut: Option<usize>, tail: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for &(i, b) in edits {
        if !v.is_empty() {
            let n = v.len();
            v[i % n] = b;
        }
    }
    if let Some(c) = cut {
        v.truncate(c % (v.len() + 1));
    }
    v.extend_from_slice(tail);
    v
}

fn encoded(format: ImageFormat) -> Vec<u8> {
    let img = RgbImage::from_fn(24, 20, |x, y| Rgb([(x * 10) as u8, (y * 12) as u8, ((x * y) % 256) as u8]));
    let mut buf = Vec::new();
    img.write_to(&mut Cursor::new(&mut buf), format).unwrap();
    buf
}

const LIMITS: ImageLimits = ImageLimits { max_image_side: 1024, max_image_bytes: 16 << 20 };

fn decode(bytes: &[u8]) {
    if let Ok(img) = imaging::decode(bytes, Path::new("fuzz"), &LIMITS) {
        assert!(img.width() >= 1 && img.width() <= 1024 && img.height() >= 1 && img.height() <= 1024);
        let _ = imaging::to_rgb(img);
    }
}

const DEFAULT_CONFIG: &str = include_str!("../config/default.yaml");
const TINY_MANIFEST: &str = include_str!("../onnx/tiny/bundle.yaml");

/// Text edits: replace a byte range of `base` with a snippet of YAML that often matters.
fn yaml_mutate(base: &str, at: usize, len: usize, snippet: usize) -> String {
    const SNIPPETS: &[&str] = &[
        ".nan",
        ".inf",
        "-.inf",
        "-1",
        "0",
        "1e39",
        "18446744073709551616",
        "null",
        "[]",
        "{}",
        "\"x\"",
        ": :",
        "- ",
        "\n  ",
        "\t",
        "&a",
        "*a",
        "!!binary",
        "~",
        "1.0e-45",
        "true",
        "'",
        "\"",
        "#",
        "999999999999",
        "0x10",
    ];
    let bytes = base.as_bytes();
    let at = at % (bytes.len() + 1);
    let end = (at + len % 16).min(bytes.len());
    let mut v = bytes[..at].to_vec();
    v.extend_from_slice(SNIPPETS[snippet % SNIPPETS.len()].as_bytes());
    v.extend_from_slice(&bytes[end..]);
    String::from_utf8_lossy(&v).into_owned()
}

fn parse_config(text: &str) {
    if let Ok(c) = parse_yaml::<Config>(Path::new("fuzz.yaml"), text) {
        if c.check().is_ok() {
            assert!((1..=256).contains(&c.inspect.batch) && (1..=64).contains(&c.inspect.workers));
            if let Some(t) = c.threshold() {
                assert!(t.is_finite() && t > 0.0);
            }
            if let Ok(p) = c.glad.resolve(224) {
                assert!(p.tau.is_finite() && p.guidance.is_finite() && p.blur_sigma <= 64.0);
            }
        }
    }
}

fn parse_manifest(text: &str) {
    if let Ok(m) = parse_yaml::<Manifest>(Path::new("bundle.yaml"), text) {
        if m.check().is_ok() {
            if let Some(l) = &m.latent {
                assert!(l.factor >= 1 && m.resolution % l.factor == 0);
            }
            if let Ok(ab) = glad_edge::glad::schedule::AlphaBar::new(&m.scheduler) {
                for (t, k) in [(750, 25), (1, 1), (m.scheduler.train_timesteps - 1, 3)] {
                    if let Ok(grid) = glad_edge::glad::schedule::glad_grid(&ab, &m.scheduler, t, k) {
                        assert!(grid.iter().all(|s| s.ab.is_finite()));
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(cfg(4000))]

    #[test]
    fn random_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode(&bytes);
    }

    #[test]
    fn random_bytes_behind_image_magic_never_panic(magic in 0usize..4, bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let head: &[u8] = [&b"\x89PNG\r\n\x1a\n"[..], &[0xFF, 0xD8, 0xFF, 0xE0][..], &b"BM"[..], &b"II*\0"[..]][magic];
        let mut v = head.to_vec();
        v.extend_from_slice(&bytes);
        decode(&v);
    }

    #[test]
    fn mutated_images_never_panic(
        format in 0usize..4,
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in prop::option::of(any::<usize>()),
        tail in prop::collection::vec(any::<u8>(), 0..4),
    ) {
        thread_local!(static BASES: Vec<Vec<u8>> = [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::Bmp, ImageFormat::Tiff].into_iter().map(encoded).collect());
        let base = BASES.with(|b| b[format].clone());
        decode(&mutate(&base, &edits, cut, &tail));
    }

    #[test]
    fn mutated_configs_never_panic(at in any::<usize>(), len in any::<usize>(), snippet in any::<usize>(), at2 in any::<usize>(), s2 in any::<usize>()) {
        let once = yaml_mutate(DEFAULT_CONFIG, at, len, snippet);
        parse_config(&once);
        parse_config(&yaml_mutate(&once, at2, 3, s2));
    }

    #[test]
    fn random_config_text_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        parse_config(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn mutated_manifests_never_panic(at in any::<usize>(), len in any::<usize>(), snippet in any::<usize>(), at2 in any::<usize>(), s2 in any::<usize>()) {
        let once = yaml_mutate(TINY_MANIFEST, at, len, snippet);
        parse_manifest(&once);
        parse_manifest(&yaml_mutate(&once, at2, 3, s2));
    }

    #[test]
    fn arbitrary_parameters_resolve_or_are_refused(
        ints in prop::collection::vec(prop::option::of(any::<usize>()), 6),
        floats in prop::collection::vec(prop::option::of(any::<f32>()), 4),
        offset in prop::option::of(any::<i64>()),
        small in prop::collection::vec(prop::option::of(0usize..2000), 6),
    ) {
        for ints in [&ints, &small] {
            let o = ParamOverrides {
                denoise_step: ints[0], steps: ints[1], min_step: ints[2], top_k: ints[3], adp_top_k: ints[4],
                backbone_resolution: ints[5], guidance: floats[0], tau: floats[1], v: floats[2], blur_sigma: floats[3],
                noise_offset: offset.map(|o| o % 3), ..Default::default()
            };
            if let Ok(p) = o.resolve(224) {
                prop_assert!(p.steps >= 1 && p.steps <= p.denoise_step && p.noise_step <= p.denoise_step);
                prop_assert!(p.tau.is_finite() && p.guidance.is_finite() && p.v.is_finite() && p.blur_sigma.is_finite());
            }
        }
    }
}

#[test]
fn crafted_bombs_and_truncations_are_refused() {
    // A PNG header declaring 100000 x 100000 pixels.
    let mut png = encoded(ImageFormat::Png);
    png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    assert!(imaging::decode(&png, Path::new("bomb.png"), &ImageLimits::default()).is_err());
    let jpg = encoded(ImageFormat::Jpeg);
    assert!(imaging::decode(&jpg, Path::new("ok.jpg"), &ImageLimits::default()).is_ok());
    for cut in [jpg.len() - 2, jpg.len() / 2, jpg.len() * 9 / 10] {
        let e = imaging::decode(&jpg[..cut], Path::new("cut.jpg"), &ImageLimits::default()).unwrap_err();
        assert!(format!("{e:#}").contains("cut.jpg"), "{e:#}");
    }
    // Trailing bytes after the end-of-image marker are fine.
    let mut padded = jpg.clone();
    padded.extend_from_slice(&[0, 0, 0]);
    assert!(imaging::decode(&padded, Path::new("pad.jpg"), &ImageLimits::default()).is_ok());
    let png = encoded(ImageFormat::Png);
    for cut in [png.len() - 1, png.len() - 12, png.len() / 2] {
        assert!(imaging::decode(&png[..cut], Path::new("cut.png"), &ImageLimits::default()).is_err(), "cut at {cut}");
    }
}

/// The station's frame decoders (issue 10, once the station landed): MJPEG (random bytes and
/// mutated valid JPEGs), YUYV and RGB with arbitrary declared sizes and byte counts. Each
/// frame decodes to an image of its declared size or is refused; never a panic.
#[test]
fn frame_decoders_accept_or_refuse_every_frame() {
    use glad_edge::sources::decode::decode_frame;
    use glad_edge::sources::{Frame, PixelFormat};
    let jpeg = encoded(ImageFormat::Jpeg);
    let frame = |format, bytes: Vec<u8>| Frame {
        camera: "cam0".into(),
        seq: 0,
        t_capture: std::time::SystemTime::now(),
        format,
        bytes: bytes.into(),
    };
    proptest!(cfg(3000), |(kind in 0u8..3, w in 0u32..70_000, h in 0u32..70_000, small in any::<bool>(),
                          edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
                          cut in proptest::option::of(any::<usize>()), raw in proptest::collection::vec(any::<u8>(), 0..256))| {
        let (w, h) = if small { (w % 9, h % 9) } else { (w, h) };
        let (format, bytes) = match kind {
            0 => (PixelFormat::Mjpeg, if raw.len() % 2 == 0 { mutate(&jpeg, &edits, cut, &[]) } else { raw.clone() }),
            1 => (PixelFormat::Yuyv { w, h }, if small { vec![7u8; (w * h * 2) as usize] } else { raw.clone() }),
            _ => (PixelFormat::Rgb { w, h }, if small { vec![9u8; (w * h * 3) as usize] } else { raw.clone() }),
        };
        if let Ok(img) = decode_frame(&frame(format, bytes)) {
            if let PixelFormat::Yuyv { w, h } | PixelFormat::Rgb { w, h } = format {
                prop_assert_eq!(img.dimensions(), (w, h));
            }
        }
    });
}
