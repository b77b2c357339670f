//! `glad` end to end: info, inspect on images of every kind, failures reported with a
//! non-zero exit status, calibration applied by inspect.

use std::path::{Path, PathBuf};
use std::process::Command;

use image::{GrayImage, ImageBuffer, Luma, Rgb, RgbImage, Rgba, RgbaImage};

fn glad() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_glad"));
    c.current_dir(env!("CARGO_MANIFEST_DIR")).env("RUST_LOG", "warn");
    c
}

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("onnx/tiny")
}

/// Writes a small set of images of different kinds; returns their folder.
fn image_set(dir: &Path) -> PathBuf {
    let d = dir.join("images");
    std::fs::create_dir_all(d.join("sub")).unwrap();
    RgbImage::from_fn(200, 150, |x, y| Rgb([(x % 256) as u8, (y * 2 % 256) as u8, ((x + y) % 256) as u8])).save(d.join("rgb.png")).unwrap();
    GrayImage::from_fn(128, 128, |x, y| Luma([((x * y) % 256) as u8])).save(d.join("gray.png")).unwrap();
    RgbaImage::from_fn(64, 96, |x, y| Rgba([x as u8, y as u8, 100, 50])).save(d.join("sub/rgba.png")).unwrap();
    ImageBuffer::<Luma<u16>, Vec<u16>>::from_fn(100, 100, |x, y| Luma([(x * 600 + y * 10) as u16])).save(d.join("sub/deep16.png")).unwrap();
    RgbImage::from_fn(128, 128, |x, _| Rgb([x as u8, 0, 0])).save(d.join("sub/photo.jpg")).unwrap();
    d
}

fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect()
}

#[test]
fn info_lists_models_and_version() {
    let out = glad().args(["info", "--bundle"]).arg(tiny()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = String::from_utf8_lossy(&out.stdout);
    for want in ["bundle      tiny", "onnxruntime 1.31", "unet", "noise_pred float32[?,4,16,16]", "on cpu", "\"tau\":0.32"] {
        assert!(s.contains(want), "missing `{want}` in:\n{s}");
    }
}

#[test]
fn inspect_converts_every_kind_and_writes_heatmaps() {
    let tmp = tempfile::tempdir().unwrap();
    let images = image_set(tmp.path());
    let out_dir = tmp.path().join("out");
    let out = glad()
        .arg("inspect")
        .arg(&images)
        .arg("--bundle")
        .arg(tiny())
        .arg("--out")
        .arg(&out_dir)
        .args(["--steps", "5", "--batch", "2", "--save-reconstruction", "--save-map", "--threshold", "1.0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 5);
    for l in &lines {
        assert_eq!(l["ok"], true, "{l}");
        let score = l["score"].as_f64().unwrap();
        assert!(score.is_finite() && score > 0.0, "{l}");
        assert_eq!(l["verdict"], if score > 1.0 { "anomalous" } else { "normal" });
        assert!(l["adp_step"].as_i64().is_some(), "{l}");
        for key in ["heatmap", "reconstruction", "map"] {
            let p = PathBuf::from(l[key].as_str().unwrap());
            assert!(p.is_file(), "{key}: {}", p.display());
        }
        let heat = image::open(l["heatmap"].as_str().unwrap()).unwrap();
        assert_eq!((heat.width(), heat.height()), (128, 128));
        assert!(l["times_ms"]["unet_ms"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn undecodable_image_is_reported_and_the_rest_continue() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("mixed");
    std::fs::create_dir_all(&d).unwrap();
    RgbImage::from_pixel(128, 128, Rgb([120, 130, 140])).save(d.join("a_good.png")).unwrap();
    std::fs::write(d.join("b_broken.png"), b"not a png at all").unwrap();
    RgbImage::from_pixel(128, 128, Rgb([10, 20, 30])).save(d.join("c_good.png")).unwrap();
    let out = glad()
        .arg("inspect")
        .arg(&d)
        .arg("--bundle")
        .arg(tiny())
        .arg("--out")
        .arg(tmp.path().join("out"))
        .args(["--steps", "3", "--threshold", "0.5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "some images failed → exit 2");
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 3);
    let broken = lines.iter().find(|l| l["path"].as_str().unwrap().ends_with("b_broken.png")).unwrap();
    assert_eq!(broken["ok"], false);
    assert!(broken.get("verdict").is_none(), "a failed frame never gets a verdict: {broken}");
    assert!(broken["error"].as_str().unwrap().contains("b_broken.png"), "{broken}");
    assert_eq!(lines.iter().filter(|l| l["ok"] == true).count(), 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 of 3 images failed") && err.contains("b_broken.png"), "{err}");
}

#[test]
fn bad_arguments_give_one_line_errors() {
    let out = glad().args(["inspect", "/no/such/image.png", "--bundle"]).arg(tiny()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/no/such/image.png: no such file or folder"), "{err}");
    let out = glad().args(["info", "--bundle", "/no/bundle"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/no/bundle/bundle.yaml") && err.trim().lines().count() == 1, "{err}");
}

#[test]
fn calibration_threshold_is_applied_by_inspect() {
    let tmp = tempfile::tempdir().unwrap();
    let normal = tmp.path().join("normal");
    std::fs::create_dir_all(&normal).unwrap();
    for i in 0..3u8 {
        RgbImage::from_fn(128, 128, |x, y| Rgb([100 + i * 5, ((x + y) % 20) as u8 + 100, 110]))
            .save(normal.join(format!("{i}.png")))
            .unwrap();
    }
    let station = tmp.path().join("station.yaml");
    let out = glad()
        .args(["calibrate", "--images"])
        .arg(&normal)
        .arg("--bundle")
        .arg(tiny())
        .args(["--steps", "3", "--margin", "0.1", "--write"])
        .arg(&station)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("threshold") && text.contains("normal images  3"), "{text}");
    let cfg = glad_edge::config::Config::load(&station).unwrap();
    let cal = cfg.calibration.clone().unwrap();
    assert!((cal.threshold - cal.normal_max * 1.1).abs() < 1e-5);
    // inspect with the station config: the calibration images are normal, a very different one is scored against it.
    let odd = tmp.path().join("odd.png");
    RgbImage::from_fn(128, 128, |x, y| Rgb([if (x / 8 + y / 8) % 2 == 0 { 255 } else { 0 }, 0, 255])).save(&odd).unwrap();
    let out = glad()
        .arg("inspect")
        .arg(&normal)
        .arg(&odd)
        .arg("--config")
        .arg(&station)
        .args(["--steps", "3", "--out"])
        .arg(tmp.path().join("o"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 4);
    for l in &lines[..3] {
        assert_eq!(l["verdict"], "normal", "{l}");
        assert!(l["normalized_score"].as_f64().unwrap() < 1.0);
    }
    let s = lines[3]["score"].as_f64().unwrap() as f32;
    assert_eq!(lines[3]["verdict"], if s > cal.threshold { "anomalous" } else { "normal" });
}

/// Issue 16: `--save-reconstruction` writes the raw decoder output as `[3,R,R]` float32 .npy
/// (equal to the PNG within 8-bit rounding where it is inside [-1,1]), and `--trace-adp` puts
/// one `[t, score]` per ADP step into the JSON line, ending at `adp_step` with `adp_score`.
#[test]
fn raw_reconstruction_and_adp_trace() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("part.png");
    RgbImage::from_fn(128, 128, |x, y| Rgb([(x * 2) as u8, (y * 2) as u8, 90])).save(&img).unwrap();
    let out_dir = tmp.path().join("out");
    let out = glad()
        .arg("inspect")
        .arg(&img)
        .arg("--bundle")
        .arg(tiny())
        .arg("--out")
        .arg(&out_dir)
        .args(["--steps", "6", "--tau", "0.5", "--save-reconstruction", "--trace-adp"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = &json_lines(&out.stdout)[0];
    let raw: ndarray::Array3<f32> = ndarray_npy::read_npy(line["reconstruction_npy"].as_str().unwrap()).unwrap();
    assert_eq!(raw.shape(), &[3, 128, 128]);
    let png = image::open(line["reconstruction"].as_str().unwrap()).unwrap().to_rgb8();
    let (x, y) = (40usize, 70usize);
    let v = raw[[0, y, x]];
    if v.abs() < 1.0 {
        let want = ((v + 1.0) / 2.0 * 255.0).round();
        assert!(
            (png.get_pixel(x as u32, y as u32)[0] as f32 - want).abs() <= 1.0,
            "png {} vs raw {want}",
            png.get_pixel(x as u32, y as u32)[0]
        );
    }
    let trace = line["adp_trace"].as_array().unwrap();
    assert!(!trace.is_empty(), "{line}");
    let steps: Vec<i64> = trace.iter().map(|p| p[0].as_i64().unwrap()).collect();
    assert!(steps.windows(2).all(|w| w[0] > w[1]), "trace steps descend: {steps:?}");
    assert_eq!(*steps.last().unwrap(), line["adp_step"].as_i64().unwrap());
    let last_score = trace.last().unwrap()[1].as_f64().unwrap();
    assert!((last_score - line["adp_score"].as_f64().unwrap()).abs() < 1e-6);
}
