//! The tiny bundle loads and every model matches the export script's golden outputs; bad
//! bundles are refused with one line naming the file and tensor; provider policy.

use std::path::{Path, PathBuf};

use glad_edge::bundle::Bundle;
use glad_edge::runtime::{Input, Model, Policy, ProviderKind, RuntimeConfig};
use ndarray::ArrayD;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rt() -> RuntimeConfig {
    RuntimeConfig { threads: 2, ..Default::default() }
}

fn golden<T: ndarray_npy::ReadableElement>(role: &str, tensor: &str) -> ArrayD<T> {
    let p = root().join(format!("tests/golden/models/{role}.{tensor}.npy"));
    ndarray_npy::read_npy(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn max_abs_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Runs `model` on the golden inputs and compares every golden output (max abs diff <= 1e-4:
/// same ONNX Runtime version, so differences come only from thread scheduling).
fn check_model(model: &mut Model, role: &str, f32_inputs: &[&str], i64_inputs: &[&str], outputs: &[&str]) {
    let fi: Vec<ArrayD<f32>> = f32_inputs.iter().map(|n| golden(role, n)).collect();
    let ii: Vec<ArrayD<i64>> = i64_inputs.iter().map(|n| golden(role, n)).collect();
    let mut inputs: Vec<(&str, Input)> = f32_inputs.iter().zip(&fi).map(|(n, a)| (*n, Input::F32(a.view()))).collect();
    inputs.extend(i64_inputs.iter().zip(&ii).map(|(n, a)| (*n, Input::I64(a.view()))));
    let outs = model.run(&inputs, outputs).unwrap();
    for (name, got) in outputs.iter().zip(&outs) {
        let want: ArrayD<f32> = golden(role, name);
        let d = max_abs_diff(got, &want);
        assert!(d <= 1e-4, "{role}.{name}: max abs diff {d}");
    }
}

#[test]
fn tiny_bundle_loads_and_matches_golden_outputs() {
    let mut b = Bundle::load(&root().join("onnx/tiny"), &rt()).unwrap();
    assert_eq!(b.latent_shape(), (4, 16));
    check_model(b.vae_encoder.as_mut().unwrap(), "vae_encoder", &["image"], &[], &["mean", "logvar"]);
    check_model(&mut b.unet, "unet", &["sample", "encoder_hidden_states"], &["timestep"], &["noise_pred"]);
    check_model(b.vae_decoder.as_mut().unwrap(), "vae_decoder", &["latent"], &[], &["image"]);
    check_model(&mut b.backbone, "dino", &["image"], &[], &["block3", "block6", "block9", "block12"]);
    for m in b.models() {
        assert_eq!(m.provider(), ProviderKind::Cpu);
    }
}

/// A copy of onnx/tiny whose manifest is edited by `edit`.
fn broken_bundle(edit: impl Fn(&str) -> String) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(root().join("onnx/tiny")).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, d.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    let m = d.path().join("bundle.yaml");
    let text = std::fs::read_to_string(&m).unwrap();
    let edited = edit(&text);
    assert_ne!(edited, text, "the edit must change the manifest");
    std::fs::write(&m, edited).unwrap();
    d
}

fn refusal(dir: &Path) -> String {
    let e = Bundle::load(dir, &rt()).err().expect("the bundle must be refused");
    let msg = format!("{e:#}");
    assert!(!msg.contains('\n'), "one line: {msg}");
    msg
}

#[test]
fn wrong_shape_is_refused_naming_file_and_tensor() {
    let d = broken_bundle(|t| t.replacen("resolution: 128", "resolution: 256", 1));
    let msg = refusal(d.path());
    assert!(msg.contains("vae_encoder.onnx") && msg.contains("`image`") && msg.contains("expected [B,3,256,256]"), "{msg}");
}

#[test]
fn latent_grid_mismatch_is_refused() {
    let d = broken_bundle(|t| t.replacen("factor: 8", "factor: 4", 1));
    let msg = refusal(d.path());
    assert!(msg.contains("latent grid = resolution 128 / factor 4"), "{msg}");
}

#[test]
fn missing_file_is_refused() {
    let d = broken_bundle(|t| t.replacen("file: unet.onnx", "file: unet_missing.onnx", 1));
    let msg = refusal(d.path());
    assert!(msg.contains("unet_missing.onnx") && msg.contains("does not exist"), "{msg}");
}

#[test]
fn wrong_dtype_is_refused() {
    let d = broken_bundle(|t| t.replacen("timestep_type: int64", "timestep_type: float32", 1));
    let msg = refusal(d.path());
    assert!(msg.contains("unet.onnx") && msg.contains("`timestep`") && msg.contains("int64"), "{msg}");
}

#[test]
fn wrong_output_name_is_refused() {
    let d = broken_bundle(|t| t.replacen("output: noise_pred", "output: eps", 1));
    let msg = refusal(d.path());
    assert!(msg.contains("unet.onnx") && msg.contains("no output `eps`") && msg.contains("noise_pred"), "{msg}");
}

#[test]
fn unknown_manifest_key_is_refused() {
    let d = broken_bundle(|t| t.replacen("resolution: 128", "resolution: 128\nresolutoin: 64", 1));
    let msg = refusal(d.path());
    assert!(msg.contains("bundle.yaml") && msg.contains("resolutoin"), "{msg}");
}

#[test]
fn required_cuda_fails_and_preferred_cuda_falls_back_with_a_warning() {
    let unet = root().join("onnx/tiny/unet.onnx");
    let mut cfg = rt();
    cfg.execution.provider = ProviderKind::Cuda;
    cfg.execution.policy = Policy::Require;
    let e = format!("{:#}", cfg.load_model("unet", &unet).err().expect("CUDA cannot be required on the CPU library"));
    assert!(e.contains("execution provider cuda is required but cannot be used") && e.contains("unet.onnx"), "{e}");

    // Capture the WARN line of the fallback.
    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let sub = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_max_level(tracing::Level::WARN).with_ansi(false).finish();
    cfg.execution.policy = Policy::Prefer;
    let model = tracing::subscriber::with_default(sub, || cfg.load_model("unet", &unet)).unwrap();
    assert_eq!(model.provider(), ProviderKind::Cpu);
    let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let warns: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warns.len(), 1, "{log}");
    assert!(warns[0].contains("execution provider cuda unavailable"), "{log}");

    cfg.execution.provider = ProviderKind::Tensorrt;
    cfg.execution.policy = Policy::Require;
    let e = format!("{:#}", cfg.load_model("unet", &unet).err().expect("TensorRT cannot be required on the CPU library"));
    assert!(e.contains("tensorrt is required"), "{e}");
}

#[test]
fn engine_cache_is_keyed_by_content_and_external_weights() {
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("cache");
    let tiny = root().join("onnx/tiny");
    let a = glad_edge::runtime::engine_cache_dir(&cache, &tiny.join("unet.onnx")).unwrap();
    let b = glad_edge::runtime::engine_cache_dir(&cache, &tiny.join("vae_decoder.onnx")).unwrap();
    assert_ne!(a, b);
    // A copy with the same graph and weights shares the engine...
    let copy = d.path().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(tiny.join("unet.onnx"), copy.join("unet.onnx")).unwrap();
    std::fs::copy(tiny.join("unet.weights.bin"), copy.join("unet.weights.bin")).unwrap();
    assert_eq!(glad_edge::runtime::engine_cache_dir(&cache, &copy.join("unet.onnx")).unwrap(), a);
    // ...a trained one (same unet.onnx, other weights) does not.
    let mut w = std::fs::read(copy.join("unet.weights.bin")).unwrap();
    w[0] ^= 1;
    std::fs::write(copy.join("unet.weights.bin"), w).unwrap();
    assert_ne!(glad_edge::runtime::engine_cache_dir(&cache, &copy.join("unet.onnx")).unwrap(), a);
}

/// A bundle's own calibration passes the threshold check every other threshold passes:
/// NaN, infinities, 0, negatives and absurdly large values are refused when the bundle loads.
#[test]
fn a_bundle_calibration_with_a_bad_threshold_is_refused() {
    for bad in [".nan", ".inf", "1e40", "0", "-1"] {
        let d = broken_bundle(|t| {
            format!(
                "{t}\ncalibration:\n  threshold: {bad}\n  rule: max\n  normal_count: 3\n  normal_mean: 0.1\n  normal_std: 0.01\n  normal_max: 0.12\n"
            )
        });
        let msg = refusal(d.path());
        assert!(msg.contains("calibration.threshold"), "{bad}: {msg}");
    }
}
