//! `glad teach`: one command from a folder of good images (of mixed sizes) to a closed,
//! calibrated bundle with a report; an interrupted teach resumes after its last finished
//! stage; and `glad calibrate --false-alarm-rate` picks and states its order statistic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn glad(args: &[&dyn AsRef<std::ffi::OsStr>], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_glad"));
    c.current_dir(env!("CARGO_MANIFEST_DIR")).env("RUST_LOG", "warn,glad_edge=info");
    for (k, v) in env {
        c.env(k, v);
    }
    for a in args {
        c.arg(a);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// 20 brick normals; every third one twice the model's size (a larger camera frame).
fn good_images(dir: &Path) -> PathBuf {
    let d = dir.join("good");
    std::fs::create_dir_all(&d).unwrap();
    for i in 0..20 {
        let src = repo(&format!("data/textures/brick/train/good/{i:03}.png"));
        let img = image::open(&src).unwrap();
        let img = if i % 3 == 0 { img.resize_exact(128, 128, image::imageops::FilterType::Triangle) } else { img };
        img.save(d.join(format!("{i:03}.png"))).unwrap();
    }
    d
}

#[test]
fn teach_makes_a_closed_calibrated_bundle_and_resumes_after_an_interruption() {
    let tmp = tempfile::tempdir().unwrap();
    let good = good_images(tmp.path());
    let out = tmp.path().join("part");
    let args: Vec<&dyn AsRef<std::ffi::OsStr>> =
        vec![&"teach", &good, &"--out", &out, &"--base", &"onnx/tiny", &"--minutes", &"1", &"--max-steps", &"6", &"--threads", &"2"];
    // Killed right after the training stage.
    let o = glad(&args, &[("GLAD_CRASH_AT", "teach-after-train")]);
    assert!(!o.status.success() && text(&o).contains("aborting at teach-after-train"), "{}", text(&o));
    assert!(!out.exists());
    // Without --resume the work left behind is not overwritten.
    let o = glad(&args, &[]);
    assert!(!o.status.success() && text(&o).contains("--resume to continue"), "{}", text(&o));
    let mut resumed = args.clone();
    resumed.push(&"--resume");
    let o = glad(&resumed, &[]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("stage 2/6 train: done before") && t.contains("stage 3/6 bank (") && !t.contains("stage 2/6 train ("), "{t}");

    // A closed bundle that verifies whole, with the tuned defaults and a calibration.
    let v = glad(&[&"bundle", &"verify", &out], &[]);
    assert!(v.status.success(), "{}", text(&v));
    let manifest = std::fs::read_to_string(out.join("bundle.yaml")).unwrap();
    assert!(manifest.contains("calibration:") && manifest.contains("threshold:") && manifest.contains("reference:"), "{manifest}");
    assert!(!out.join("train").exists(), "the training graphs stay with the base");
    // The report: stages with their times, the chosen parameters, the stated rates, a gallery.
    let report_dir = tmp.path().join("part.report");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(report_dir.join("report.json")).unwrap()).unwrap();
    let stages: Vec<&str> = report["stages"].as_array().unwrap().iter().map(|s| s[0].as_str().unwrap()).collect();
    assert_eq!(stages, ["split", "train", "bank", "tune", "calibrate", "pack"]);
    assert_eq!(report["train"]["steps"].as_u64(), Some(6), "{report}");
    let rates = &report["rates"];
    assert_eq!(rates["validation_normals"].as_u64(), Some(4));
    // The largest of 4 normal scores: false alarms at most 1 - 0.05^(1/4) with 95 % confidence.
    let far = rates["false_alarm_rate_at_most"].as_f64().unwrap();
    assert!((far - (1.0 - 0.05f64.powf(0.25))).abs() < 1e-6, "{far}");
    assert_eq!(rates["synthetic_total"].as_u64(), Some(8));
    let html = std::fs::read_to_string(report_dir.join("report.html")).unwrap();
    assert!(html.contains("False alarms: at most") && html.contains("gallery/good_"), "{html}");
    assert!(std::fs::read_dir(report_dir.join("gallery")).unwrap().count() >= 4);
    // The bundle inspects a frame twice the model's size, with a verdict from its calibration.
    let o = glad(&[&"inspect", &good.join("000.png"), &"--bundle", &out, &"--out", &tmp.path().join("o")], &[]);
    let t = text(&o);
    assert!(o.status.success() && t.contains("\"verdict\""), "{t}");
}

#[test]
fn calibrate_false_alarm_rate_picks_an_order_statistic_or_says_how_many_images_it_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let normals = tmp.path().join("normals");
    std::fs::create_dir_all(&normals).unwrap();
    for i in 0..8 {
        std::fs::copy(repo(&format!("data/textures/brick/validation/good/{i:03}.png")), normals.join(format!("{i:03}.png"))).unwrap();
    }
    let write = tmp.path().join("station.yaml");
    let base: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"calibrate", &"--bundle", &"onnx/tiny", &"--images", &normals, &"--write", &write];
    // 5 % at 95 % needs 59 normal images (Wilks).
    let mut a = base.clone();
    a.extend([&"--false-alarm-rate" as &dyn AsRef<std::ffi::OsStr>, &"0.05"]);
    let o = glad(&a, &[]);
    assert!(!o.status.success() && text(&o).contains("needs at least 59") && !text(&o).contains('\u{0}'), "{}", text(&o));
    // 40 % at 95 % with 8 images: P(Binomial(8, 0.6) >= 7) = 0.106 > 0.05, so the largest.
    let stains = repo("data/textures/brick/test/stain");
    let mut a = base.clone();
    a.extend([&"--false-alarm-rate" as &dyn AsRef<std::ffi::OsStr>, &"0.4", &"--defects", &stains]);
    let o = glad(&a, &[]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("order statistic: normal score 8 of 8") && t.contains("false alarms   0 of 8"), "{t}");
    assert!(t.contains("defects        ") && t.contains("flagged"), "{t}");
    let cfg = std::fs::read_to_string(&write).unwrap();
    assert!(cfg.contains("order statistic"), "{cfg}");
    // The default rule states its rate too.
    let o = glad(&base, &[]);
    let t = text(&o);
    assert!(o.status.success() && t.contains("rate <= 0.3123 with confidence 0.95"), "{t}");
}
