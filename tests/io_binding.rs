//! The UNet's IoBinding path (runtime.execution.io_binding: on) against the plain path on
//! the CPU provider, onnx/tiny: the same GLAD logic (`glad::reconstruct` through the
//! `Models` trait) must give the same scores, ADP decisions, maps and reconstructions within
//! 1e-6, and the binding must keep its preallocated buffers across DDIM steps
//! (pykeio/ort#596). Device residency across steps (CUDA/TensorRT) cannot be observed on the
//! CPU provider; scripts/device-check.sh measures the GPU path.

use std::path::PathBuf;

use glad_edge::bundle::Bundle;
use glad_edge::engine::{Engine, Inspection, NoiseSource};
use glad_edge::glad::{LatentMode, ParamOverrides};
use glad_edge::imaging::{load_rgb, preprocess};
use glad_edge::runtime::{IoBindingMode, RuntimeConfig};
use ndarray::{Array4, Axis};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn engine(mode: IoBindingMode, tau: f32) -> Engine {
    let mut rt = RuntimeConfig { threads: 2, ..Default::default() };
    rt.execution.io_binding = mode;
    let bundle = Bundle::load(&root().join("onnx/tiny"), &rt).unwrap();
    assert_eq!(bundle.unet.io_binding(), mode == IoBindingMode::On, "auto must be off on the CPU provider");
    let o = ParamOverrides { tau: Some(tau), steps: Some(10), latent: Some(LatentMode::Sample), ..Default::default() };
    let params = bundle.manifest.defaults.merged(&o).resolve(bundle.manifest.models.backbone.resolution).unwrap();
    Engine::new(bundle, params).unwrap()
}

fn images(names: &[&str]) -> Array4<f32> {
    let r = 128;
    let mut x = Array4::<f32>::zeros((names.len(), 3, r, r));
    for (i, n) in names.iter().enumerate() {
        let img = load_rgb(&root().join("data/textures/brick/test").join(n)).unwrap();
        x.index_axis_mut(Axis(0), i).assign(&preprocess(&img, r));
    }
    x
}

fn max_abs(a: &ndarray::ArrayViewD<'_, f32>, b: &ndarray::ArrayViewD<'_, f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter().zip(b.iter()).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// Max differences (score, map, reconstruction) between two runs, asserting equal ADP stops.
fn compare(a: &[Inspection], b: &[Inspection]) -> (f32, f32, f32) {
    assert_eq!(a.len(), b.len());
    let mut d = (0.0f32, 0.0f32, 0.0f32);
    for (i, (p, q)) in a.iter().zip(b).enumerate() {
        let (sp, sq) = (p.adp.map(|s| (s.step, s.on_threshold)), q.adp.map(|s| (s.step, s.on_threshold)));
        assert_eq!(sp, sq, "image {i}: ADP stop");
        if let (Some(s), Some(t)) = (p.adp, q.adp) {
            d.0 = d.0.max((s.score - t.score).abs());
        }
        d.0 = d.0.max((p.score - q.score).abs());
        d.1 = d.1.max(max_abs(&p.map.view().into_dyn(), &q.map.view().into_dyn()));
        d.2 = d.2.max(max_abs(&p.reconstruction.view().into_dyn(), &q.reconstruction.view().into_dyn()));
    }
    d
}

fn check(tau: f32, expect_threshold_stop: bool) {
    let mut plain = engine(IoBindingMode::Off, tau);
    let mut bound = engine(IoBindingMode::On, tau);
    let noise = NoiseSource::Seeded(7);
    let shape = plain.latent_shape();
    // A batch of 3, then a batch of 1 (the binding reallocates for the new shape), then 3 again.
    let batches: [&[&str]; 3] =
        [&["stain/000.png", "scratch/000.png", "good/000.png"], &["hole/000.png"], &["paste/000.png", "good/001.png", "stain/001.png"]];
    let mut worst = (0.0f32, 0.0f32, 0.0f32);
    let mut any_threshold = false;
    for (k, names) in batches.iter().enumerate() {
        let x = images(names);
        let n = noise.draw(&(0..names.len()).collect::<Vec<_>>(), shape).unwrap();
        let (a, _) = plain.inspect(x.view(), &n).unwrap();
        let (b, _) = bound.inspect(x.view(), &n).unwrap();
        any_threshold |= a.iter().any(|i| i.adp.is_some_and(|s| s.on_threshold));
        let d = compare(&a, &b);
        eprintln!(
            "tau {tau} batch {k} ({} images): IoBinding vs plain max |diff| score {:.3e} map {:.3e} reconstruction {:.3e}",
            names.len(),
            d.0,
            d.1,
            d.2
        );
        worst = (worst.0.max(d.0), worst.1.max(d.1), worst.2.max(d.2));
    }
    assert_eq!(any_threshold, expect_threshold_stop, "the case must exercise the intended ADP stop");
    assert!(worst.0 <= 1e-6 && worst.1 <= 1e-6 && worst.2 <= 1e-6, "IoBinding differs from the plain path: {worst:?}");

    assert!(plain.bundle.unet.binding_stats().is_none(), "the plain path must not create a binding");
    let s = bound.bundle.unet.binding_stats().expect("the IoBinding path ran");
    assert_eq!(s.runs, 3 * 10, "one bound UNet run per DDIM step: {s:?}");
    // One output and one sample buffer per batch shape change (3 -> 1 -> 3), not per step.
    assert_eq!(s.output_allocations, 3, "{s:?}");
    assert_eq!(s.input_allocations, 3, "{s:?}");
    // The prompt rows: bound once per batch size change, not per step.
    assert_eq!(s.kept_binds, 3, "{s:?}");
}

#[test]
fn io_binding_equals_plain_adp_until_min_step() {
    check(0.32, false);
}

#[test]
fn io_binding_equals_plain_adp_stops_on_threshold_with_saff() {
    check(0.005, true);
}
