//! `runtime.memory: lean` (no CPU arena, no memory pattern, no pre-packed weights) against the
//! default plan on onnx/tiny: the same scores, ADP stops, maps and reconstructions within
//! 1e-5 (without pre-packing the GEMMs run other kernels, so the sums round differently).
//! What it saves is measured at full size by `benches/memory` (README "Performance").

use std::path::PathBuf;

use glad_edge::bundle::Bundle;
use glad_edge::engine::{Engine, NoiseSource};
use glad_edge::glad::ParamOverrides;
use glad_edge::imaging::{load_rgb, preprocess};
use glad_edge::runtime::{MemoryMode, RuntimeConfig};
use ndarray::{Array4, Axis};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn engine(memory: MemoryMode) -> Engine {
    let rt = RuntimeConfig { threads: 2, memory, ..Default::default() };
    let bundle = Bundle::load(&root().join("onnx/tiny"), &rt).unwrap();
    let o = ParamOverrides { tau: Some(0.05), steps: Some(10), ..Default::default() };
    let params = bundle.manifest.defaults.merged(&o).resolve(bundle.manifest.models.backbone.resolution).unwrap();
    Engine::new(bundle, params).unwrap()
}

#[test]
fn lean_memory_plan_gives_the_same_inspection() {
    let names = ["stain/000.png", "scratch/000.png", "good/000.png"];
    let mut x = Array4::<f32>::zeros((names.len(), 3, 128, 128));
    for (i, n) in names.iter().enumerate() {
        let img = load_rgb(&root().join("data/textures/brick/test").join(n)).unwrap();
        x.index_axis_mut(Axis(0), i).assign(&preprocess(&img, 128));
    }
    let (mut fast, mut lean) = (engine(MemoryMode::Fast), engine(MemoryMode::Lean));
    let noise = NoiseSource::Seeded(3).draw(&[0, 1, 2], fast.latent_shape()).unwrap();
    let (a, _) = fast.inspect(x.view(), &noise).unwrap();
    let (b, _) = lean.inspect(x.view(), &noise).unwrap();
    let max =
        |p: ndarray::ArrayViewD<f32>, q: ndarray::ArrayViewD<f32>| p.iter().zip(q.iter()).fold(0f32, |m, (u, v)| m.max((u - v).abs()));
    for (i, (p, q)) in a.iter().zip(&b).enumerate() {
        assert_eq!(p.adp.map(|s| s.step), q.adp.map(|s| s.step), "image {i}: ADP stop");
        let d = (
            (p.score - q.score).abs(),
            max(p.map.view().into_dyn(), q.map.view().into_dyn()),
            max(p.reconstruction.view().into_dyn(), q.reconstruction.view().into_dyn()),
        );
        eprintln!("image {i}: lean vs fast max |diff| score {:.2e} map {:.2e} reconstruction {:.2e}", d.0, d.1, d.2);
        assert!(d.0 <= 1e-5 && d.1 <= 1e-5 && d.2 <= 1e-5, "image {i}: {d:?}");
    }
}
