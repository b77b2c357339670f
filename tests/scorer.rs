//! Beyond GLAD (issue 14): the feature bank (`glad bank`), the `bank` and `union` map
//! references, and `glad tune` on validation normals plus synthetic anomalies.

use std::path::{Path, PathBuf};
use std::process::Command;

fn glad() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_glad"));
    c.current_dir(env!("CARGO_MANIFEST_DIR")).env("RUST_LOG", "warn");
    c
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A copy of onnx/tiny (without its training folder) that a test may write a bank into.
fn tiny_copy(dir: &Path) -> PathBuf {
    let b = dir.join("tiny");
    std::fs::create_dir_all(&b).unwrap();
    for e in std::fs::read_dir(root().join("onnx/tiny")).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, b.join(p.file_name().unwrap())).unwrap();
        }
    }
    b
}

fn score(bundle: &Path, img: &Path, reference: &str, dir: &Path) -> f64 {
    let cfg = dir.join(format!("{reference}.yaml"));
    std::fs::write(&cfg, format!("glad:\n  reference: {reference}\n")).unwrap();
    let out = glad()
        .arg("inspect")
        .arg(img)
        .arg("--bundle")
        .arg(bundle)
        .arg("--config")
        .arg(&cfg)
        .args(["--steps", "3", "--out"])
        .arg(dir.join(format!("out-{reference}")))
        .output()
        .unwrap();
    assert!(out.status.success(), "{reference}: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(out.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
    v["score"].as_f64().unwrap()
}

/// The union's map is, per layer, the minimum of the reconstruction's and the bank's maps
/// before a blur with positive weights, so its score can exceed neither; a bank built from
/// the very image inspected makes the bank reference score (nearly) zero.
#[test]
fn union_scores_no_higher_than_either_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tiny_copy(tmp.path());
    let img = root().join("data/textures/brick/test/stain/000.png");
    let union_cfg = tmp.path().join("u.yaml");
    std::fs::write(&union_cfg, "glad:\n  reference: union\n").unwrap();
    let o = glad()
        .arg("inspect")
        .arg(&img)
        .arg("--bundle")
        .arg(&bundle)
        .args(["--steps", "3", "--out"])
        .arg(tmp.path().join("o"))
        .arg("--config")
        .arg(&union_cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no feature bank") && err.contains("glad bank"), "{err}");

    let bank_imgs = tmp.path().join("normal");
    std::fs::create_dir_all(&bank_imgs).unwrap();
    for n in ["000.png", "001.png", "002.png"] {
        std::fs::copy(root().join("data/textures/brick/train/good").join(n), bank_imgs.join(n)).unwrap();
    }
    // float32 .npy layers, so the test can damage one below (the default is half precision)
    let o = glad().arg("bank").arg("--bundle").arg(&bundle).arg("--images").arg(&bank_imgs).args(["--precision", "f32"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("bank of 3 images"));
    let (r, b, u) = (
        score(&bundle, &img, "reconstruction", tmp.path()),
        score(&bundle, &img, "bank", tmp.path()),
        score(&bundle, &img, "union", tmp.path()),
    );
    assert!(u <= r.min(b) * (1.0 + 1e-6), "union {u} vs reconstruction {r}, bank {b}");
    assert!(u < r, "the bank should lower some patch distances: union {u}, reconstruction {r}");

    // An image of the bank itself finds its own patches: distance ~0 everywhere.
    let own = score(&bundle, &bank_imgs.join("000.png"), "bank", tmp.path());
    assert!(own < 1e-4, "bank score of a bank image: {own}");

    // A bank layer of the wrong width is refused, naming the file.
    let l0: ndarray::Array2<f32> = ndarray_npy::read_npy(bundle.join("bank/layer0.npy")).unwrap();
    ndarray_npy::write_npy(bundle.join("bank/layer0.npy"), &l0.slice(ndarray::s![.., ..3]).to_owned()).unwrap();
    let cfg = tmp.path().join("bank.yaml");
    let o = glad()
        .arg("inspect")
        .arg(&img)
        .arg("--bundle")
        .arg(&bundle)
        .arg("--config")
        .arg(&cfg)
        .arg("--out")
        .arg(tmp.path().join("o2"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("layer0.npy") && err.contains("expected [N,"), "{err}");
}

/// `glad tune` on 4 validation normals + 4 synthetic anomalies, a 2 x 2 grid: prints the
/// ranked table, writes the choice into a station config and into the bundle's defaults.
#[test]
fn tune_ranks_a_grid_and_writes_the_choice() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tiny_copy(tmp.path());
    let val = tmp.path().join("val");
    std::fs::create_dir_all(&val).unwrap();
    for n in ["000.png", "001.png", "002.png", "003.png"] {
        std::fs::copy(root().join("data/textures/brick/validation/good").join(n), val.join(n)).unwrap();
    }
    let station = tmp.path().join("station.yaml");
    let o = glad()
        .arg("tune")
        .arg("--bundle")
        .arg(&bundle)
        .arg("--images")
        .arg(&val)
        .args(["--grid-denoise-step", "100,200", "--grid-steps", "2", "--grid-tau", "0", "--grid-v", "0,1", "--write-defaults", "--write"])
        .arg(&station)
        .arg("--out")
        .arg(tmp.path().join("report"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("4 normal images, 4 synthetic anomalies"), "{stdout}");
    let rows: Vec<&str> = stdout.lines().filter(|l| l.contains("reconstruction") && !l.starts_with("chosen point")).collect();
    assert_eq!(rows.len(), 4, "{stdout}");
    assert!(rows[0].ends_with("<- chosen"), "{stdout}");
    let means: Vec<f64> = rows.iter().map(|r| r.split_whitespace().nth(9).unwrap().parse().unwrap()).collect();
    assert!(means.windows(2).all(|w| w[0] >= w[1]), "ranked: {means:?}");
    let chosen: Vec<&str> = rows[0].split_whitespace().collect();
    let cfg: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&station).unwrap()).unwrap();
    assert_eq!(cfg["glad"]["denoise_step"].as_u64().unwrap().to_string(), chosen[0]);
    assert_eq!(cfg["glad"]["steps"].as_u64(), Some(2));
    let manifest: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(bundle.join("bundle.yaml")).unwrap()).unwrap();
    assert_eq!(manifest["defaults"]["denoise_step"].as_u64().unwrap().to_string(), chosen[0]);
    assert_eq!(manifest["defaults"]["reference"].as_str(), Some("reconstruction"));
    // The report: the grid, the chosen point's fidelity, one gallery strip per validation image
    // (input | reconstruction | heatmap | mask, 192 px panels 4 px apart).
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tmp.path().join("report/tune.json")).unwrap()).unwrap();
    assert_eq!(report["grid"].as_array().unwrap().len(), 4);
    assert_eq!(report["fidelity"]["normal_images"].as_u64(), Some(4));
    assert_eq!(report["fidelity"]["anomalous_images"].as_u64(), Some(4));
    for k in ["normal", "defect", "around_defect"] {
        let v = report["fidelity"][k].as_f64().unwrap_or_else(|| panic!("{k}: {report}"));
        assert!(v.is_finite() && (0.0..=2.0).contains(&v), "{k} = {v}");
    }
    assert!(stdout.contains("chosen point: feature distance input vs reconstruction"), "{stdout}");
    let strips: Vec<_> = std::fs::read_dir(tmp.path().join("report/gallery")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(strips.len(), 8);
    // the anomalies alternate: DRAEM's synthesis and drawn defects, two of each
    assert_eq!(report["synthesis"], serde_json::json!(["draem", "drawn"]));
    let named = |kind: &str| strips.iter().filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(kind)).count();
    assert_eq!((named("good_"), named("synthetic_"), named("drawn_")), (4, 2, 2), "{strips:?}");
    let strip = image::open(&strips[0]).unwrap();
    assert_eq!((strip.width(), strip.height()), (4 * 192 + 3 * 4, 192));
    // The rewritten bundle still loads.
    let o = glad().arg("info").arg("--bundle").arg(&bundle).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // An unknown synthesis is refused by name.
    let o =
        glad().arg("tune").arg("--bundle").arg(&bundle).arg("--images").arg(&val).args(["--synthesis", "draem,cutpaste"]).output().unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("expected draem or drawn, got `cutpaste`"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `glad calibrate --write-bundle` stores the threshold in bundle.yaml; `inspect` then gives
/// verdicts without a config, but only while every setting is the bundle's default.
#[test]
fn bundle_calibration_gives_verdicts_only_with_its_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tiny_copy(tmp.path());
    // Calibrating with other settings than the defaults cannot go into the bundle.
    let normal = root().join("data/textures/brick/validation/good/000.png");
    let o = glad()
        .arg("calibrate")
        .arg("--bundle")
        .arg(&bundle)
        .arg("--images")
        .arg(&normal)
        .args(["--steps", "3", "--write-bundle", "--write"])
        .arg(tmp.path().join("s.yaml"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--write-bundle"), "{}", String::from_utf8_lossy(&o.stderr));
    // Make the defaults cheap first (as `glad tune --write-defaults` would), then calibrate.
    let yaml = std::fs::read_to_string(bundle.join("bundle.yaml")).unwrap();
    let mut m: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    m["defaults"]["steps"] = serde_yaml::Value::from(3);
    m["defaults"]["tau"] = serde_yaml::Value::from(0.0);
    std::fs::write(bundle.join("bundle.yaml"), serde_yaml::to_string(&m).unwrap()).unwrap();
    let o = glad()
        .arg("calibrate")
        .arg("--bundle")
        .arg(&bundle)
        .arg("--images")
        .arg(&normal)
        .arg("--write-bundle")
        .arg("--write")
        .arg(tmp.path().join("s.yaml"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(bundle.join("bundle.yaml")).unwrap()).unwrap();
    let t = m["calibration"]["threshold"].as_f64().unwrap();
    assert!(t > 0.0);
    let inspect = |extra: &[&str]| {
        let o = glad()
            .arg("inspect")
            .arg(&normal)
            .arg("--bundle")
            .arg(&bundle)
            .arg("--out")
            .arg(tmp.path().join("o"))
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(o.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
        (v, String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (v, _) = inspect(&[]);
    assert_eq!(v["verdict"], "normal", "{v}");
    assert!((v["normalized_score"].as_f64().unwrap() - v["score"].as_f64().unwrap() / t).abs() < 1e-3);
    let (v, err) = inspect(&["--seed", "5"]);
    assert!(v["verdict"].is_null(), "{v}");
    assert!(err.contains("calibration is not applied"), "{err}");
}

/// `--anomalies 0` (metrics undefined) and a count whose tensors would not fit in memory are
/// refused with a clear message instead of choosing on undefined metrics or aborting.
#[test]
fn tune_refuses_no_anomalies_and_oversized_validation_sets() {
    let tmp = tempfile::tempdir().unwrap();
    let val = tmp.path().join("val");
    std::fs::create_dir_all(&val).unwrap();
    for n in ["000.png", "001.png", "002.png", "003.png"] {
        std::fs::copy(root().join("data/textures/brick/validation/good").join(n), val.join(n)).unwrap();
    }
    for (n, want) in [("0", "at least 1"), ("1000000", "over the limit")] {
        let o = glad().args(["tune", "--bundle", "onnx/tiny", "--images"]).arg(&val).args(["--anomalies", n]).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("--anomalies") && err.contains(want), "{n}: {err}");
    }
}
