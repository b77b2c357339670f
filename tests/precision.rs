//! The weights' precision `glad info` reports, read from each model's initialisers
//! (runtime::weight_stats), not from its input type: models written by
//! scripts/make_precision_models.py with the onnx helper API and onnxruntime.quantization
//! (tests/golden/precision), all with float32 inputs and outputs.

use std::path::{Path, PathBuf};
use std::process::Command;

use glad_edge::runtime::{weight_stats, RuntimeConfig};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn golden(f: &str) -> PathBuf {
    root().join("tests/golden/precision").join(f)
}

#[test]
fn precision_comes_from_the_weights() {
    let rt = RuntimeConfig { threads: 1, ..Default::default() };
    for (file, want) in
        [("linear_fp32.onnx", "fp32"), ("linear_fp16.onnx", "fp16"), ("linear_int8.onnx", "int8"), ("dino_fp16.onnx", "fp16")]
    {
        let m = rt.load_model("backbone", &golden(file)).unwrap();
        assert!(m.inputs().iter().all(|t| t.dtype == "float32"), "{file}: float32 inputs");
        assert_eq!(m.precision(), want, "{file}");
    }
    // The byte counts: 64x64 weights + 64 biases, in each precision.
    let s = weight_stats(&golden("linear_fp16.onnx")).unwrap();
    assert_eq!(s.bytes.get("fp16"), Some(&((64 * 64 + 64) * 2)));
    let s = weight_stats(&golden("linear_int8.onnx")).unwrap();
    assert_eq!(s.bytes.get("int8"), Some(&(64 * 64 + 1)), "{s:?}");
    // External data (onnx/tiny/unet.onnx keeps its weights in unet.weights.bin): sized from dims.
    let s = weight_stats(&root().join("onnx/tiny/unet.onnx")).unwrap();
    let fp32 = *s.bytes.get("fp32").unwrap();
    let bin = std::fs::metadata(root().join("onnx/tiny/unet.weights.bin")).unwrap().len();
    assert!(fp32 >= bin * 9 / 10 && fp32 <= bin + 4096, "fp32 bytes {fp32}, weights file {bin}");
    assert_eq!(s.dominant(), Some("fp32"));
    // A model without weights (the scoring graphs hold only constants of a few bytes).
    assert!(weight_stats(&root().join("onnx/scoring/adp_score.onnx")).unwrap().bytes.values().sum::<u64>() < 64);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// `glad info` on onnx/tiny with its backbone converted to float16 weights: fp16 for the
/// backbone, fp32 for the others.
#[test]
fn info_reports_fp16_backbone() {
    let tmp = tempfile::tempdir().unwrap();
    let b = tmp.path().join("tiny");
    copy_dir(&root().join("onnx/tiny"), &b);
    std::fs::copy(golden("dino_fp16.onnx"), b.join("dino.onnx")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_glad")).args(["info", "--bundle"]).arg(&b).env("RUST_LOG", "warn").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = String::from_utf8_lossy(&out.stdout);
    let line =
        |role: &str| s.lines().find(|l| l.starts_with("model") && l.contains(role)).unwrap_or_else(|| panic!("{role} in\n{s}")).to_string();
    assert!(line("backbone").ends_with("on cpu, fp16"), "{s}");
    assert!(line("unet").contains("on cpu, fp32"), "{s}");
    assert!(line("vae_decoder").ends_with("on cpu, fp32"), "{s}");
    assert!(s.contains("scoring     rust"), "{s}");
}
