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
    // A missing path is reported like an undecodable image (the others would go on).
    let out = glad().args(["inspect", "/no/such/image.png", "--bundle"]).arg(tiny()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let lines = json_lines(&out.stdout);
    assert_eq!(lines[0]["ok"], false);
    assert!(lines[0]["error"].as_str().unwrap().contains("/no/such/image.png: no such file or folder"), "{lines:?}");
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

// ---- Reliability (issue 10): each test fails on the code before the fix. ----

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A 60-byte PNG declaring `w x h` RGB pixels: a decompression bomb for large sizes.
pub fn bomb_png(w: u32, h: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut v, b"IHDR", &ihdr);
    png_chunk(&mut v, b"IDAT", &[0x78, 0x9c, 0x63, 0x60, 0x00, 0x00]);
    png_chunk(&mut v, b"IEND", &[]);
    v
}

fn good_png(path: &Path, shade: u8) {
    RgbImage::from_fn(128, 128, |x, y| Rgb([shade, ((x + y) % 32) as u8 + 90, 110])).save(path).unwrap();
}

fn inspect_args(inputs: &[&Path], out: &Path, extra: &[&str]) -> std::process::Output {
    let mut c = glad();
    c.arg("inspect");
    for i in inputs {
        c.arg(i);
    }
    c.arg("--bundle").arg(tiny()).arg("--out").arg(out).args(["--steps", "2", "--tau", "0"]).args(extra);
    c.output().unwrap()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn by_name<'a>(lines: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    lines.iter().find(|l| l["path"].as_str().unwrap().ends_with(name)).unwrap_or_else(|| panic!("no line for {name}: {lines:?}"))
}

#[test]
fn decompression_bomb_is_refused_and_the_rest_continue() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("in");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("a_bomb.png"), bomb_png(100_000, 100_000)).unwrap();
    good_png(&d.join("b_good.png"), 100);
    let o = inspect_args(&[&d], &tmp.path().join("out"), &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let lines = json_lines(&o.stdout);
    let bomb = by_name(&lines, "a_bomb.png");
    assert_eq!(bomb["ok"], false);
    assert!(bomb["error"].as_str().unwrap().contains("limits.max_image_side"), "{bomb}");
    assert_eq!(by_name(&lines, "b_good.png")["ok"], true);
    // The limits are config keys.
    let cfg = tmp.path().join("c.yaml");
    std::fs::write(&cfg, "limits:\n  max_image_side: 100\n").unwrap();
    let o = inspect_args(&[&d.join("b_good.png")], &tmp.path().join("out"), &["--config", cfg.to_str().unwrap()]);
    let lines = json_lines(&o.stdout);
    let e = lines[0]["error"].as_str().unwrap();
    assert!(e.contains("b_good.png") && e.contains("`limits.max_image_side` 100"), "{e}");
    std::fs::write(&cfg, "limits:\n  max_image_bytes: 0\n").unwrap();
    let o = inspect_args(&[&d.join("b_good.png")], &tmp.path().join("out"), &["--config", cfg.to_str().unwrap()]);
    assert!(stderr(&o).contains("key `limits.max_image_bytes`"), "{}", stderr(&o));
}

#[test]
fn non_finite_or_negative_thresholds_and_margins_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("a.png");
    good_png(&img, 100);
    for bad in ["NaN", "inf", "-1", "0"] {
        let o = inspect_args(&[&img], &tmp.path().join("out"), &[&format!("--threshold={bad}")]);
        assert!(!o.status.success() && o.stdout.is_empty(), "--threshold {bad} accepted");
        assert!(stderr(&o).contains("--threshold"), "{}", stderr(&o));
    }
    let cfg = tmp.path().join("c.yaml");
    for bad in [".nan", ".inf", "-0.5"] {
        std::fs::write(&cfg, format!("threshold: {bad}\n")).unwrap();
        let o = inspect_args(&[&img], &tmp.path().join("out"), &["--config", cfg.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1));
        let e = stderr(&o);
        assert!(e.contains("c.yaml") && e.contains("key `threshold`"), "{e}");
    }
    let o = glad()
        .args(["calibrate", "--images"])
        .arg(&img)
        .arg("--bundle")
        .arg(tiny())
        .args(["--steps", "2", "--margin", "NaN", "--write"])
        .arg(tmp.path().join("s.yaml"))
        .output()
        .unwrap();
    assert!(!o.status.success() && stderr(&o).contains("--margin"), "{}", stderr(&o));
    assert!(!tmp.path().join("s.yaml").exists());
}

#[test]
fn calibration_records_its_settings_and_inspect_refuses_others() {
    let tmp = tempfile::tempdir().unwrap();
    let normal = tmp.path().join("normal");
    std::fs::create_dir_all(&normal).unwrap();
    for i in 0..2u8 {
        good_png(&normal.join(format!("{i}.png")), 100 + i);
    }
    let station = tmp.path().join("s.yaml");
    let o = glad()
        .args(["calibrate", "--images"])
        .arg(&normal)
        .arg("--bundle")
        .arg(tiny())
        .args(["--steps", "3", "--tau", "0", "--seed", "7", "--write"])
        .arg(&station)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("fewer than 5 normal images"), "{}", stderr(&o));
    let cfg = glad_edge::config::Config::load(&station).unwrap();
    assert_eq!((cfg.glad.steps, cfg.glad.tau, cfg.noise.seed), (Some(3), Some(0.0), 7));
    let rec = cfg.calibration.unwrap().settings.unwrap();
    assert_eq!((rec.params.steps, rec.params.tau, rec.params.denoise_step, rec.noise.seed), (3, 0.0, 750, 7));
    assert_eq!(rec.bundle, "tiny");
    // Same settings (from the station config alone): accepted, verdicts given.
    let run = |extra: &[&str]| {
        glad()
            .arg("inspect")
            .arg(normal.join("0.png"))
            .arg("--config")
            .arg(&station)
            .arg("--out")
            .arg(tmp.path().join("o"))
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json_lines(&o.stdout)[0]["verdict"], "normal");
    // Other settings: refused, naming the keys.
    let o = run(&["--steps", "4", "--seed", "1"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("glad.steps (calibrated 3, now 4)") && e.contains("noise.seed (calibrated 7, now 1)"), "{e}");
    assert!(o.stdout.is_empty());
    // An explicit --threshold is not the calibration's.
    assert!(run(&["--steps", "4", "--threshold", "1"]).status.success());
}

#[test]
fn calibrate_refuses_to_write_when_images_failed() {
    let tmp = tempfile::tempdir().unwrap();
    let normal = tmp.path().join("normal");
    std::fs::create_dir_all(&normal).unwrap();
    good_png(&normal.join("0.png"), 100);
    std::fs::write(normal.join("1.png"), b"broken").unwrap();
    let station = tmp.path().join("s.yaml");
    let o = glad()
        .args(["calibrate", "--images"])
        .arg(&normal)
        .arg("--bundle")
        .arg(tiny())
        .args(["--steps", "2", "--write"])
        .arg(&station)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("1 of 2 normal images failed"), "{}", stderr(&o));
    assert!(!station.exists());
}

fn train_cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_train"));
    c.current_dir(env!("CARGO_MANIFEST_DIR")).env("RUST_LOG", "warn");
    c
}

#[test]
fn train_out_inside_the_bundle_or_over_an_earlier_output_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("B");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(bundle.join("bundle.yaml"), "format: 1\n").unwrap();
    for out in [bundle.join("sub"), bundle.join("sub/deeper"), bundle.clone()] {
        let o = train_cmd().arg("--bundle").arg(&bundle).args(["--images", "x", "--out"]).arg(&out).output().unwrap();
        assert!(!o.status.success());
        assert!(stderr(&o).contains("must not be the input bundle"), "{}", stderr(&o));
    }
    assert_eq!(std::fs::read_dir(&bundle).unwrap().count(), 1, "nothing written into the bundle");
    let earlier = tmp.path().join("earlier");
    std::fs::create_dir_all(&earlier).unwrap();
    std::fs::write(earlier.join("bundle.yaml"), "provenance:\n  training:\n    tool: glad-edge train\n").unwrap();
    let o = train_cmd().arg("--bundle").arg(&bundle).args(["--images", "x", "--out"]).arg(&earlier).output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("pass --force to replace it"), "{}", stderr(&o));
    // With --force the check passes (and loading the fake bundle fails next).
    let o = train_cmd().arg("--bundle").arg(&bundle).args(["--images", "x", "--force", "--out"]).arg(&earlier).output().unwrap();
    assert!(!stderr(&o).contains("--force"), "{}", stderr(&o));
}

/// A copy of onnx/tiny's top-level files with `bundle.yaml` edited by `edit`.
fn tiny_copy(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let b = dir.join("bundle");
    std::fs::create_dir_all(&b).unwrap();
    for e in std::fs::read_dir(tiny()).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, b.join(p.file_name().unwrap())).unwrap();
        }
    }
    let text = std::fs::read_to_string(b.join("bundle.yaml")).unwrap();
    std::fs::write(b.join("bundle.yaml"), edit(text)).unwrap();
    b
}

#[test]
fn inputs_that_used_to_panic_get_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    // A file name that is not UTF-8.
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let d = tmp.path().join("in");
        std::fs::create_dir_all(&d).unwrap();
        good_png(&d.join(std::ffi::OsStr::from_bytes(b"bad\xffname.png")), 100);
        let o = inspect_args(&[&d], &tmp.path().join("out"), &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        let lines = json_lines(&o.stdout);
        assert_eq!(lines[0]["ok"], true, "{lines:?}");
        assert!(PathBuf::from(lines[0]["heatmap"].as_str().unwrap()).is_file());
    }
    // latent.factor 0 in a manifest.
    let b = tiny_copy(tmp.path(), |t| t.replace("factor: 8", "factor: 0"));
    let o = glad().args(["info", "--bundle"]).arg(&b).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("bundle.yaml: key `latent.factor`"), "{}", stderr(&o));
    // A huge --batch.
    let img = tmp.path().join("a.png");
    good_png(&img, 100);
    for bad in ["18446744073709551615", "1000000000", "0", "257"] {
        let o = inspect_args(&[&img], &tmp.path().join("out"), &["--batch", bad]);
        assert!(!o.status.success() && o.stdout.is_empty(), "--batch {bad}");
        assert!(
            stderr(&o).contains("--batch") && (stderr(&o).contains("1..=256") || stderr(&o).contains("whole number")),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn sizes_are_bounded_alike_on_flags_and_config_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("a.png");
    good_png(&img, 100);
    for (flag, bad, limit) in [("--workers", "0", "1..=64"), ("--workers", "65", "1..=64"), ("--threads", "5000", "0..=1024")] {
        let o = inspect_args(&[&img], &tmp.path().join("out"), &[flag, bad]);
        assert!(!o.status.success(), "{flag} {bad}");
        assert!(stderr(&o).contains(flag) && stderr(&o).contains(limit), "{}", stderr(&o));
    }
    let cfg = tmp.path().join("c.yaml");
    for (yaml, key, limit) in [
        ("inspect:\n  batch: 1000000000\n", "inspect.batch", "1..=256"),
        ("inspect:\n  workers: 0\n", "inspect.workers", "1..=64"),
        ("glad:\n  blur_sigma: 1.0e12\n", "glad.blur_sigma", "64"),
        ("glad:\n  blur_sigma: .nan\n", "glad.blur_sigma", "finite"),
        ("glad:\n  guidance: .inf\n", "glad.guidance", "finite"),
        ("glad:\n  v: -1\n", "glad.v", "finite"),
        ("glad:\n  tau: .nan\n", "glad.tau", "finite"),
        ("glad:\n  steps: 0\n", "glad.steps", "1..="),
        ("glad:\n  denoise_step: 0\n", "glad.denoise_step", "1..="),
    ] {
        std::fs::write(&cfg, yaml).unwrap();
        let o = inspect_args(&[&img], &tmp.path().join("out"), &["--config", cfg.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{yaml}");
        let e = stderr(&o);
        assert!(e.contains("c.yaml") && e.contains(&format!("key `{key}`")) && e.contains(limit), "{yaml}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "{e}");
    }
}

#[test]
fn parameter_and_bundle_errors_name_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("a.png");
    good_png(&img, 100);
    let o = inspect_args(&[&img], &tmp.path().join("out"), &["--denoise-step", "0"]);
    assert!(stderr(&o).contains("--denoise-step") && !stderr(&o).contains("--steps"), "{}", stderr(&o));
    let o = glad().arg("inspect").arg(&img).arg("--bundle").arg(tiny()).args(["--denoise-step", "10", "--steps", "20"]).output().unwrap();
    let e = stderr(&o);
    assert!(e.contains("--steps: must be in 1..=denoise_step (10, --denoise-step)"), "{e}");
    // Bundle defaults and the scheduler.
    let b = tiny_copy(tmp.path(), |t| t.replace("  guidance: 9.0", "  guidance: .nan"));
    let o = glad().args(["info", "--bundle"]).arg(&b).output().unwrap();
    assert!(stderr(&o).contains("bundle.yaml: key `defaults.guidance`"), "{}", stderr(&o));
    let b2 = tmp.path().join("b2");
    std::fs::create_dir_all(&b2).unwrap();
    let b = tiny_copy(&b2, |t| t.replace("beta_end: 0.012", "beta_end: 2.0"));
    let o = glad().args(["info", "--bundle"]).arg(&b).output().unwrap();
    assert!(stderr(&o).contains("bundle.yaml: key `scheduler.beta_end`"), "{}", stderr(&o));
    // A directory given as a model file.
    let b3 = tmp.path().join("b3");
    std::fs::create_dir_all(&b3).unwrap();
    let b = tiny_copy(&b3, |t| t);
    std::fs::remove_file(b.join("unet.onnx")).unwrap();
    std::fs::create_dir_all(b.join("unet.onnx")).unwrap();
    let o = glad().args(["info", "--bundle"]).arg(&b).output().unwrap();
    assert!(stderr(&o).contains("unet.onnx is a directory"), "{}", stderr(&o));
}

#[test]
fn truncated_jpeg_and_png_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("in");
    std::fs::create_dir_all(&d).unwrap();
    let img = RgbImage::from_fn(128, 128, |x, y| Rgb([(x * 7 % 256) as u8, (y * 13 % 256) as u8, ((x ^ y) % 256) as u8]));
    img.save(d.join("full.jpg")).unwrap();
    let jpg = std::fs::read(d.join("full.jpg")).unwrap();
    std::fs::write(d.join("cut.jpg"), &jpg[..jpg.len() * 2 / 3]).unwrap();
    img.save(d.join("full.png")).unwrap();
    let png = std::fs::read(d.join("full.png")).unwrap();
    std::fs::write(d.join("cut.png"), &png[..png.len() * 2 / 3]).unwrap();
    let o = inspect_args(&[&d], &tmp.path().join("out"), &[]);
    assert_eq!(o.status.code(), Some(2));
    let lines = json_lines(&o.stdout);
    assert_eq!(by_name(&lines, "full.jpg")["ok"], true);
    assert_eq!(by_name(&lines, "full.png")["ok"], true);
    for cut in ["cut.jpg", "cut.png"] {
        let l = by_name(&lines, cut);
        assert_eq!(l["ok"], false, "{l}");
        assert!(l.get("verdict").is_none());
    }
    assert!(by_name(&lines, "cut.jpg")["error"].as_str().unwrap().contains("truncated JPEG"));
}

#[test]
fn output_names_are_unique_per_input() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("in");
    for sub in ["a", "a__b"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    good_png(&d.join("part.png"), 10);
    RgbImage::from_pixel(128, 128, Rgb([200, 10, 10])).save(d.join("part.jpg")).unwrap();
    good_png(&d.join("a/b__c.png"), 30);
    good_png(&d.join("a__b/c.png"), 40);
    let o = inspect_args(&[&d], &tmp.path().join("out"), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = json_lines(&o.stdout);
    let heat: std::collections::BTreeSet<&str> = lines.iter().map(|l| l["heatmap"].as_str().unwrap()).collect();
    assert_eq!(heat.len(), 4, "{heat:?}");
    assert_eq!(std::fs::read_dir(tmp.path().join("out")).unwrap().count(), 4);
    use glad_edge::cli::inspect::output_stem;
    assert_eq!(output_stem(Path::new("data/x/part.png")), "data__x__part.png");
    assert_ne!(output_stem(Path::new("x_/y.png")), output_stem(Path::new("x/_y.png")));
    assert_ne!(output_stem(Path::new("/d/a.png")), output_stem(Path::new("d/a.png")));
    assert_eq!(output_stem(Path::new("a__b/c.png")), output_stem(Path::new("a__b/c.png")));
}

#[cfg(unix)]
#[test]
fn fifos_symlink_loops_and_missing_paths_neither_hang_nor_repeat_nor_stop_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("in");
    std::fs::create_dir_all(d.join("sub")).unwrap();
    good_png(&d.join("a.png"), 50);
    good_png(&d.join("sub/b.png"), 60);
    let fifo = std::ffi::CString::new(d.join("pipe.png").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    std::os::unix::fs::symlink(&d, d.join("sub/loop")).unwrap();
    let missing = tmp.path().join("missing.png");
    let mut child = glad()
        .arg("inspect")
        .arg(&d)
        .arg(&missing)
        .arg("--bundle")
        .arg(tiny())
        .arg("--out")
        .arg(tmp.path().join("out"))
        .args(["--steps", "2", "--tau", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed().as_secs() > 300 {
            child.kill().unwrap();
            panic!("inspect hung");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let lines = json_lines(&o.stdout);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(by_name(&lines, "a.png")["ok"], true);
    assert_eq!(by_name(&lines, "sub/b.png")["ok"], true);
    let m = by_name(&lines, "missing.png");
    assert_eq!(m["ok"], false);
    assert!(m["error"].as_str().unwrap().contains("no such file or folder"), "{m}");
    assert!(stderr(&o).contains("pipe.png") && stderr(&o).contains("not a regular file"), "{}", stderr(&o));
}

/// On a full disk no 0-byte or partial heatmap is left behind (needs root for the tmpfs).
#[cfg(target_os = "linux")]
#[test]
fn full_disk_leaves_no_partial_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let ok =
        Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"]).arg(&mnt).status().map(|s| s.success()).unwrap_or(false);
    if !ok {
        eprintln!("skipped: cannot mount a tmpfs (not root?)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let d = tmp.path().join("in");
    std::fs::create_dir_all(&d).unwrap();
    for i in 0..6u8 {
        // Noise compresses badly: a ~50 kB heatmap each, so the disk fills on the second.
        RgbImage::from_fn(128, 128, |x, y| {
            Rgb([(x * 31 + y * 17 + i as u32 * 5) as u8 ^ (y * 7) as u8, (x * y) as u8, (x ^ (y * 3)) as u8])
        })
        .save(d.join(format!("{i}.png")))
        .unwrap();
    }
    let o = inspect_args(&[&d], &mnt, &["--save-reconstruction", "--save-map"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let lines = json_lines(&o.stdout);
    assert_eq!(lines.len(), 6);
    assert!(lines.iter().any(|l| l["ok"] == false), "the disk never filled: {lines:?}");
    for e in std::fs::read_dir(&mnt).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with('.'), "temporary file left: {name}");
        assert!(e.metadata().unwrap().len() > 0, "0-byte file left: {name}");
        if name.ends_with(".png") {
            image::open(e.path()).unwrap_or_else(|err| panic!("{name} is partial: {err}"));
        }
    }
}

#[test]
fn nan_from_the_models_is_reported_as_nan_on_that_frame_only() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("a.png");
    good_png(&img, 100);
    let noise = tmp.path().join("noise");
    std::fs::create_dir_all(&noise).unwrap();
    // Image 0 gets NaN noise (so the UNet sees and returns NaN), image 1 finite noise.
    let mut eps = ndarray::Array4::<f32>::from_elem((2, 4, 16, 16), 0.1);
    eps[[0, 0, 0, 0]] = f32::NAN;
    ndarray_npy::write_npy(noise.join("eps.npy"), &eps).unwrap();
    ndarray_npy::write_npy(noise.join("vae_noise.npy"), &ndarray::Array4::<f32>::zeros((2, 4, 16, 16))).unwrap();
    let o = glad()
        .arg("inspect")
        .arg(&img)
        .arg(&img)
        .arg("--bundle")
        .arg(tiny())
        .arg("--out")
        .arg(tmp.path().join("out"))
        .args(["--steps", "2", "--tau", "0", "--noise-dir"])
        .arg(&noise)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let lines = json_lines(&o.stdout);
    assert_eq!(lines.len(), 2);
    let bad: Vec<&serde_json::Value> = lines.iter().filter(|l| l["ok"] == false).collect();
    assert_eq!(bad.len(), 1, "{lines:?}");
    let e = bad[0]["error"].as_str().unwrap();
    assert!(e.contains("model unet") && e.contains("`noise_pred` contains NaN"), "{e}");
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
