//! The Rust engine against the independent Python reference (scripts/glad_reference.py,
//! numpy + onnxruntime, written from the spec) on onnx/tiny with fixed noise. Tolerances
//! (issue 3): identical adp_step, map and reconstruction max abs diff <= 1e-4, image score
//! relative diff <= 1e-5.

use std::path::{Path, PathBuf};

use glad_edge::bundle::Bundle;
use glad_edge::engine::{Engine, NoiseSource, ScoringPath};
use glad_edge::glad::{LatentMode, ParamOverrides};
use glad_edge::runtime::RuntimeConfig;
use ndarray::{Array1, Array3, Array4, ArrayD, ArrayView4, Axis, Ix1, Ix3, Ix4};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn npy<T: ndarray_npy::ReadableElement>(p: &Path) -> ArrayD<T> {
    ndarray_npy::read_npy(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn run_case(name: &str) {
    run_case_with(name, false);
}

/// `onnx`: the min-cosine maps and ADP scores run in the ONNX scoring graphs
/// (onnx/scoring, scripts/export_scoring_graphs.py) instead of glad's Rust code; the
/// reference and the tolerances are the same.
fn run_case_with(name: &str, onnx: bool) {
    let dir = root().join("tests/golden/parity").join(name);
    let case: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(dir.join("case.yaml")).unwrap()).unwrap();
    let u = |k: &str| case[k].as_u64().unwrap_or_else(|| panic!("case.yaml: {k}")) as usize;
    let f = |k: &str| case[k].as_f64().unwrap_or_else(|| panic!("case.yaml: {k}")) as f32;
    assert_eq!(case["latent"].as_str(), Some("sample"));
    assert_eq!(case["object_mask"].as_str(), Some("ones"));
    let params = ParamOverrides {
        denoise_step: Some(u("denoise_step")),
        noise_offset: Some(u("noise_step") as i64 - u("denoise_step") as i64),
        steps: Some(u("steps")),
        guidance: Some(f("guidance")),
        tau: Some(f("tau")),
        min_step: Some(u("min_step")),
        v: Some(f("v")),
        symmetric: Some(case["symmetric"].as_bool().unwrap()),
        latent: Some(LatentMode::Sample),
        top_k: Some(u("top_k")),
        adp_top_k: Some(u("adp_top_k")),
        blur_sigma: Some(f("blur_sigma")),
        backbone_resolution: Some(u("resolution")),
        object_mask: None,
        reference: None,
        adp_every: None,
    }
    .resolve(128)
    .unwrap();
    let rt = RuntimeConfig { threads: 2, ..Default::default() };
    let bundle = Bundle::load(&root().join("onnx/tiny"), &rt).unwrap();
    let mut engine = Engine::new(bundle, params).unwrap();
    if onnx {
        engine.set_scoring(rt.load_scoring().unwrap(), ScoringPath::Onnx);
    }
    assert_eq!(engine.scoring(), if onnx { ScoringPath::Onnx } else { ScoringPath::Rust });
    let images: Array4<f32> = npy::<f32>(&dir.join("images.npy")).into_dimensionality::<Ix4>().unwrap();
    let b = images.shape()[0];
    let noise = NoiseSource::from_dir(&dir).unwrap().draw(&(0..b).collect::<Vec<_>>(), engine.latent_shape()).unwrap();
    let (out, _) = engine.inspect(images.view(), &noise).unwrap();

    let adp_step: Array1<i64> = npy::<i64>(&dir.join("adp_step.npy")).into_dimensionality::<Ix1>().unwrap();
    let adp_score: Array1<f32> = npy::<f32>(&dir.join("adp_score.npy")).into_dimensionality::<Ix1>().unwrap();
    let score: Array1<f32> = npy::<f32>(&dir.join("score.npy")).into_dimensionality::<Ix1>().unwrap();
    let map: Array3<f32> = npy::<f32>(&dir.join("map.npy")).into_dimensionality::<Ix3>().unwrap();
    let rec: Array4<f32> = npy::<f32>(&dir.join("rec.npy")).into_dimensionality::<Ix4>().unwrap();
    let reasons: Vec<&str> = case["expected"]["adp_reason"].as_sequence().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    for i in 0..b {
        let adp = out[i].adp.expect("ADP is on in every case");
        assert_eq!(adp.step, adp_step[i], "{name} image {i}: adp_step");
        assert_eq!(adp.on_threshold, reasons[i] == "threshold", "{name} image {i}: stop reason");
        assert!((adp.score - adp_score[i]).abs() <= 1e-5, "{name} image {i}: adp_score {} vs {}", adp.score, adp_score[i]);
        let rel = ((out[i].score - score[i]) / score[i]).abs();
        assert!(rel <= 1e-5, "{name} image {i}: score {} vs {} (rel {rel})", out[i].score, score[i]);
        let dm = (&out[i].map - &map.index_axis(Axis(0), i)).mapv(f32::abs).fold(0.0f32, |a, &v| a.max(v));
        assert!(dm <= 1e-4, "{name} image {i}: map max abs diff {dm}");
        let dr = (&out[i].reconstruction - &rec.index_axis(Axis(0), i)).mapv(f32::abs).fold(0.0f32, |a, &v| a.max(v));
        assert!(dr <= 1e-4, "{name} image {i}: reconstruction max abs diff {dr}");
        // The ADP trace: one (t, score) per step until the stop, equal to the reference's
        // trajectory (case.yaml keeps 6 decimals, so within 1e-6 + rounding).
        let traj = case["adp_trajectory"].as_mapping().unwrap();
        let want: Vec<(i64, f64)> = traj
            .iter()
            .map(|(t, v)| (t.as_i64().unwrap(), v.as_sequence().unwrap()[i].as_f64().unwrap()))
            .filter(|(t, _)| *t >= adp.step)
            .collect();
        assert_eq!(out[i].adp_trace.len(), want.len(), "{name} image {i}: adp_trace length");
        for (&(t, s), &(wt, ws)) in out[i].adp_trace.iter().zip(&want) {
            assert_eq!(t, wt, "{name} image {i}: adp_trace step");
            assert!((s as f64 - ws).abs() <= 2e-6, "{name} image {i}: adp_trace at t={t}: {s} vs {ws}");
        }
        eprintln!("{name} image {i}: adp_step {} score rel diff {rel:.2e} map {dm:.2e} rec {dr:.2e}", adp.step);
    }
}

#[test]
fn parity_adp_stops_on_threshold_with_saff() {
    run_case("adp_threshold");
}

#[test]
fn parity_adp_stops_at_min_step() {
    run_case("adp_min_step");
}

#[test]
fn parity_visa_style() {
    run_case("visa_style");
}

#[test]
fn parity_onnx_scoring_adp_threshold() {
    run_case_with("adp_threshold", true);
}

#[test]
fn parity_onnx_scoring_adp_min_step() {
    run_case_with("adp_min_step", true);
}

#[test]
fn parity_onnx_scoring_visa_style() {
    run_case_with("visa_style", true);
}

fn tiny_engine(overrides: ParamOverrides) -> Engine {
    let rt = RuntimeConfig { threads: 2, ..Default::default() };
    let bundle = Bundle::load(&root().join("onnx/tiny"), &rt).unwrap();
    let params = bundle.manifest.defaults.merged(&overrides).resolve(128).unwrap();
    Engine::new(bundle, params).unwrap()
}

fn case_images() -> Array4<f32> {
    npy::<f32>(&root().join("tests/golden/parity/adp_threshold/images.npy")).into_dimensionality::<Ix4>().unwrap()
}

/// tau = 0 turns ADP off: plain DDIM from T, no adp_step, no ADP backbone call. A tau no score
/// reaches still runs ADP (every image stops at min_step with x0 = xa), so the scores differ.
#[test]
fn tau_zero_switches_adp_off() {
    let x = case_images();
    let mut off = tiny_engine(ParamOverrides { tau: Some(0.0), steps: Some(5), ..Default::default() });
    let noise = NoiseSource::Seeded(3).draw(&[0, 1, 2], off.latent_shape()).unwrap();
    let (a, t) = off.inspect(x.view(), &noise).unwrap();
    assert!(a.iter().all(|i| i.adp.is_none() && i.score.is_finite()));
    assert_eq!(t.models.adp_backbone, std::time::Duration::ZERO, "no ADP work when tau = 0");
    let mut on = tiny_engine(ParamOverrides { tau: Some(10.0), steps: Some(5), ..Default::default() });
    let (b, _) = on.inspect(x.view(), &noise).unwrap();
    assert!(b.iter().all(|i| i.adp.is_some_and(|s| !s.on_threshold)));
    assert_ne!(a[0].score, b[0].score);
}

/// The seeded generator: same seed, same result, independent of batch position; another seed differs.
#[test]
fn seeded_noise_is_reproducible_and_position_independent() {
    let x = case_images();
    let mut e = tiny_engine(ParamOverrides { steps: Some(4), latent: Some(LatentMode::Sample), ..Default::default() });
    let shape = e.latent_shape();
    let batch = |e: &mut Engine, seed: u64, xs: ArrayView4<f32>, idx: &[usize]| {
        let n = NoiseSource::Seeded(seed).draw(idx, shape).unwrap();
        e.inspect(xs, &n).unwrap().0.into_iter().map(|i| i.score).collect::<Vec<f32>>()
    };
    let all = batch(&mut e, 7, x.view(), &[0, 1, 2]);
    let again = batch(&mut e, 7, x.view(), &[0, 1, 2]);
    assert_eq!(all, again);
    let third_alone = batch(&mut e, 7, x.slice(ndarray::s![2..3, .., .., ..]), &[5]);
    assert!((third_alone[0] - all[2]).abs() <= 1e-5 * all[2].abs(), "{} vs {}", third_alone[0], all[2]);
    let other = batch(&mut e, 8, x.view(), &[0, 1, 2]);
    assert_ne!(all, other);
}
