//! `glad eval` on the bundled texture set with the tiny bundle: all seven metrics in [0, 1],
//! metrics.json, per_image.csv and the gallery; a missing mask and an unreadable image are
//! reported, not fatal. Also the feature-only baseline.

use std::path::{Path, PathBuf};
use std::process::Command;

fn copy_dir(from: &Path, to: &Path, take: usize) {
    std::fs::create_dir_all(to).unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(from).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in files.into_iter().take(take) {
        std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
    }
}

/// A small copy of data/textures/brick: 3 good, 3 scratch, 2 hole test images.
fn small_dataset(root: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/textures/brick");
    let dst = root.join("ds/brick");
    copy_dir(&src.join("train/good"), &dst.join("train/good"), 6);
    copy_dir(&src.join("test/good"), &dst.join("test/good"), 3);
    for d in ["scratch", "hole"] {
        let n = if d == "scratch" { 3 } else { 2 };
        copy_dir(&src.join("test").join(d), &dst.join("test").join(d), n);
        copy_dir(&src.join("ground_truth").join(d), &dst.join("ground_truth").join(d), n);
    }
    root.join("ds")
}

fn eval(ds: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_glad"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "warn")
        .args(["eval", "--dataset"])
        .arg(ds)
        .args(["--class", "all", "--bundle", "onnx/tiny", "--steps", "3", "--batch", "4", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn check_metrics(out: &Path, images: u64) {
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    let brick = &m[0];
    assert_eq!(brick["class"], "brick");
    assert_eq!(brick["images"].as_u64(), Some(images));
    for k in ["image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "pro"] {
        let v = brick["metrics"][k].as_f64().unwrap_or_else(|| panic!("{k} missing: {m}"));
        assert!((0.0..=1.0).contains(&v), "{k} = {v}");
    }
    let csv = std::fs::read_to_string(out.join("per_image.csv")).unwrap();
    assert_eq!(csv.lines().next(), Some("class,path,defect,label,score,adp_step"));
    assert_eq!(csv.lines().count() as u64, images + 1);
    let gallery: Vec<_> = std::fs::read_dir(out.join("gallery/brick")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(gallery.len() as u64, images);
    assert!(out.join("gallery/brick/good__001.png").is_file(), "{gallery:?}");
    // input | reconstruction | heatmap | ground truth, or without the reconstruction for the baseline
    let panels = if brick["fidelity"].is_null() { 3 } else { 4 };
    let strip = image::open(&gallery[0]).unwrap();
    assert_eq!((strip.width(), strip.height()), (panels * 192 + (panels - 1) * 4, 192), "{}", gallery[0].display());
}

#[test]
fn eval_reports_the_reconstruction_fidelity() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = small_dataset(tmp.path());
    let out = tmp.path().join("out");
    let o = eval(&ds, &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("brick: feature distance input vs reconstruction: normal images"), "{stdout}");
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    let f = &m[0]["fidelity"];
    // 3 good test images; 5 defects with masks
    assert_eq!((f["normal_images"].as_u64(), f["anomalous_images"].as_u64()), (Some(3), Some(5)), "{f}");
    for k in ["normal", "defect", "around_defect"] {
        let v = f[k].as_f64().unwrap_or_else(|| panic!("{k}: {f}"));
        assert!((0.0..=2.0).contains(&v), "{k} = {v}");
    }
    let b = eval(&ds, &tmp.path().join("baseline"), &["--baseline"]);
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tmp.path().join("baseline/metrics.json")).unwrap()).unwrap();
    assert!(m[0]["fidelity"].is_null(), "the baseline reconstructs nothing: {m}");
}

#[test]
fn eval_reports_seven_metrics_and_survives_bad_data() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = small_dataset(tmp.path());
    // A missing mask and an unreadable image.
    std::fs::remove_file(ds.join("brick/ground_truth/hole/001_mask.png")).unwrap();
    std::fs::write(ds.join("brick/test/scratch/999.png"), b"garbage").unwrap();
    let out = tmp.path().join("out");
    let o = eval(&ds, &out, &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("I-AUROC") && stdout.contains("PRO") && stdout.contains("brick"), "{stdout}");
    assert!(stderr.contains("hole/001.png") && stderr.contains("no ground-truth mask"), "{stderr}");
    assert!(stderr.contains("999.png") && stderr.contains("1 images failed"), "{stderr}");
    check_metrics(&out, 8);
}

#[test]
fn feature_baseline_scores_the_same_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = small_dataset(tmp.path());
    let out = tmp.path().join("base");
    let o = eval(&ds, &out, &["--baseline"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    check_metrics(&out, 8);
}

// ---- Reliability (issue 10) ----

#[test]
fn eval_quotes_csv_keeps_images_with_bad_masks_and_warns_on_mask_size() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = small_dataset(tmp.path());
    let b = ds.join("brick");
    // A comma in a file name; an undecodable mask; a mask of the wrong size.
    std::fs::rename(b.join("test/good/000.png"), b.join("test/good/a,b.png")).unwrap();
    std::fs::write(b.join("ground_truth/hole/000_mask.png"), b"not a png").unwrap();
    let m = image::open(b.join("ground_truth/scratch/000_mask.png")).unwrap().to_luma8();
    image::imageops::resize(&m, 50, 40, image::imageops::FilterType::Nearest).save(b.join("ground_truth/scratch/000_mask.png")).unwrap();
    let out = tmp.path().join("out");
    let o = eval(&ds, &out, &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("hole/000.png") && stderr.contains("treated as a missing mask"), "{stderr}");
    assert!(stderr.contains("mask is 50x40"), "{stderr}");
    // The image with the undecodable mask stays in the image-level metrics: 8 images.
    check_metrics(&out, 8);
    let mut r = csv::Reader::from_path(out.join("per_image.csv")).unwrap();
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    assert_eq!(rows.len(), 8);
    assert!(rows.iter().all(|row| row.len() == 6), "{rows:?}");
    assert!(rows.iter().any(|row| row[1].ends_with("good/a,b.png")), "{rows:?}");
}

#[test]
fn eval_exits_non_zero_when_every_image_failed() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("ds");
    let d = ds.join("c/test/good");
    std::fs::create_dir_all(&d).unwrap();
    for i in 0..2 {
        std::fs::write(d.join(format!("{i}.png")), b"garbage").unwrap();
    }
    let o = eval(&ds, &tmp.path().join("out"), &[]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("every image failed in: c"));
}

/// Issue 16: `--trace-adp` adds the ADP trace as a last CSV column, `t:score` per step,
/// the last step equal to the row's adp_step.
#[test]
fn eval_writes_the_adp_trace_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = small_dataset(tmp.path());
    let out = tmp.path().join("trace");
    let o = eval(&ds, &out, &["--trace-adp"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let csv = std::fs::read_to_string(out.join("per_image.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("class,path,defect,label,score,adp_step,adp_trace"));
    for row in lines {
        let cells: Vec<&str> = row.split(',').collect();
        let pairs: Vec<(i64, f64)> = cells[6]
            .split(';')
            .map(|p| {
                let (t, s) = p.split_once(':').unwrap_or_else(|| panic!("bad trace cell in {row}"));
                (t.parse().unwrap(), s.parse().unwrap())
            })
            .collect();
        assert!(!pairs.is_empty() && pairs.iter().all(|(_, s)| s.is_finite()), "{row}");
        assert_eq!(pairs.last().unwrap().0.to_string(), cells[5], "{row}");
    }
}

/// A class that cannot run (here: no test images) does not lose the metrics of the classes
/// done before it: metrics.json holds them, the failed class is listed, the exit status is 2.
#[test]
fn eval_keeps_finished_classes_when_a_later_class_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = small_dataset(tmp.path());
    std::fs::create_dir_all(ds.join("zz_broken/test")).unwrap();
    let out = tmp.path().join("out");
    let o = eval(&ds, &out, &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("zz_broken"), "{stderr}");
    check_metrics(&out, 8);
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m[1]["class"], "zz_broken");
    assert_eq!(m[1]["images"], 0);
}
