//! The ONNX scoring graphs (onnx/scoring, written by scripts/export_scoring_graphs.py) against
//! glad's Rust equations (src/glad/features.rs) on random tokens, and the cheaper ADP option
//! `adp_every` against the exact path. The end-to-end check of the graphs against the Python
//! reference is in tests/parity.rs (`parity_onnx_scoring_*`, same tolerances as the Rust path).
//! Tolerances here: maps and scores within 2e-6 absolute (float32 GEMM in another order).

use std::path::PathBuf;

use glad_edge::bundle::Bundle;
use glad_edge::engine::{Engine, NoiseSource};
use glad_edge::glad::features::{min_cosine_distance, top_k_mean, Tokens};
use glad_edge::glad::ParamOverrides;
use glad_edge::runtime::RuntimeConfig;
use ndarray::{Array2, Array4, Ix4};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rt() -> RuntimeConfig {
    RuntimeConfig { threads: 1, ..Default::default() }
}

/// Raw tokens (not normalised: the graphs normalise as features::normalise does) and the
/// normalised `Tokens` glad sees.
fn tokens(n: usize, c: usize, seed: u64) -> (Array2<f32>, Tokens) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let raw = Array2::from_shape_simple_fn((n, c), || StandardNormal.sample(&mut rng)).mapv(|v: f32| 3.0 * v);
    let mut data = raw.clone();
    for mut row in data.rows_mut() {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        row.mapv_inplace(|v| v / norm);
    }
    (raw, Tokens { data, grid: (1, n) })
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn graphs_match_glad_equations() {
    let mut g = rt().load_scoring().unwrap();
    for (n, m, c) in [(64, 64, 768), (49, 100, 40), (256, 256, 112), (1, 3, 8)] {
        let (rx, x) = tokens(n, c, 1);
        let (rr, r) = tokens(m, c, 2);
        // Normalised tokens (what the engine passes) and raw ones (normalised in the graph).
        for (a, b) in [(x.data.view(), r.data.view()), (rx.view(), rr.view())] {
            let (m1, m2) = g.cosine_maps(a, b).unwrap();
            let d1 = max_diff(&m1, &min_cosine_distance(&x, &r));
            let d2 = max_diff(&m2, &min_cosine_distance(&r, &x));
            assert!(d1 <= 2e-6 && d2 <= 2e-6, "{n}x{m}x{c}: m1 {d1:e}, m2 {d2:e}");
            for k in [1, 10, n, n + 7] {
                let (map, score) = g.adp_score(a, b, k).unwrap();
                let want = min_cosine_distance(&x, &r);
                assert!(max_diff(&map, &want) <= 2e-6, "{n}x{m}x{c}: ADP map");
                let ds = (score - top_k_mean(&want, k)).abs();
                assert!(ds <= 2e-6, "{n}x{m}x{c} k {k}: ADP score {score} vs {} ({ds:e})", top_k_mean(&want, k));
            }
        }
    }
    // A zero token: both sides clamp its norm at 1e-12 and give distance 1.
    let z = Array2::<f32>::zeros((2, 4));
    let (_, r) = tokens(3, 4, 5);
    let (m1, _) = g.cosine_maps(z.view(), r.data.view()).unwrap();
    assert_eq!(m1, min_cosine_distance(&Tokens { data: z.clone(), grid: (1, 2) }, &r));
}

fn tiny(o: ParamOverrides) -> Engine {
    let bundle = Bundle::load(&root().join("onnx/tiny"), &rt()).unwrap();
    let params = bundle.manifest.defaults.merged(&o).resolve(128).unwrap();
    Engine::new(bundle, params).unwrap()
}

fn images() -> Array4<f32> {
    let a: ndarray::ArrayD<f32> = ndarray_npy::read_npy(root().join("tests/golden/parity/adp_threshold/images.npy")).unwrap();
    a.into_dimensionality::<Ix4>().unwrap()
}

/// `adp_every: 1` is the exact path; `adp_every: 3` scores only at grid steps 0, 3, 6, ... and
/// below min_step, with the same score as the exact path at those steps, and never stops
/// before the exact path does.
#[test]
fn adp_every_checks_every_nth_step() {
    let base = ParamOverrides { steps: Some(12), tau: Some(0.3), min_step: Some(200), ..Default::default() };
    let x = images();
    let mut exact = tiny(base.clone());
    let noise = NoiseSource::Seeded(1).draw(&[0, 1, 2], exact.latent_shape()).unwrap();
    let (a, _) = exact.inspect(x.view(), &noise).unwrap();
    let mut one = tiny(ParamOverrides { adp_every: Some(1), ..base.clone() });
    let (b, _) = one.inspect(x.view(), &noise).unwrap();
    for (a, b) in a.iter().zip(&b) {
        assert_eq!(a.adp, b.adp);
        assert_eq!(a.score, b.score);
    }
    let mut every3 = tiny(ParamOverrides { adp_every: Some(3), ..base });
    let (c, _) = every3.inspect(x.view(), &noise).unwrap();
    for (i, (a, c)) in a.iter().zip(&c).enumerate() {
        let grid: Vec<i64> = a.adp_trace.iter().map(|(t, _)| *t).collect();
        for (t, s) in &c.adp_trace {
            let at = grid.iter().position(|g| g == t);
            if let Some(k) = at {
                assert!(k % 3 == 0 || *t < 200, "image {i}: scored at grid step {k} (t {t})");
                assert!((s - a.adp_trace[k].1).abs() <= 1e-5, "image {i}: t {t}");
            }
        }
        assert!(c.adp.unwrap().step <= a.adp.unwrap().step, "image {i}: stopped earlier than the exact path");
    }
}

/// `runtime.scoring` / `--scoring`: resolved in EngineSpec; a bad value is one line naming the key.
#[test]
fn scoring_key_is_resolved_and_checked() {
    use glad_edge::engine::{resolve_scoring, ScoringPath};
    use glad_edge::runtime::Scoring;
    let bundle = Bundle::load(&root().join("onnx/tiny"), &rt()).unwrap();
    let p = bundle.manifest.defaults.resolve(128).unwrap();
    let sym = glad_edge::glad::Params { symmetric: true, ..p.clone() };
    assert_eq!(resolve_scoring(Scoring::Rust, &bundle, &sym), ScoringPath::Rust);
    assert_eq!(resolve_scoring(Scoring::Onnx, &bundle, &p), ScoringPath::Onnx);
    assert_eq!(resolve_scoring(Scoring::Auto, &bundle, &p), ScoringPath::Rust, "CPU auto without the symmetric term");
    assert_eq!(resolve_scoring(Scoring::Auto, &bundle, &sym), ScoringPath::OnnxSymmetric);
    assert_eq!(glad_edge::config::check_scoring("onnx"), Ok(Scoring::Onnx));
    let e = glad_edge::config::check_scoring("gpu").unwrap_err();
    assert!(e.contains("rust, onnx or auto") && e.contains("`gpu`"), "{e}");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.yaml");
    std::fs::write(&cfg, "runtime:\n  scoring: gpu\n").unwrap();
    let e = format!("{:#}", glad_edge::config::Config::load(&cfg).unwrap_err());
    assert!(e.contains("runtime.scoring") && !e.contains('\n'), "{e}");
    std::fs::write(&cfg, "glad:\n  adp_every: 0\n").unwrap();
    let e = format!("{:#}", glad_edge::config::Config::load(&cfg).unwrap_err());
    assert!(e.contains("glad.adp_every") && !e.contains('\n'), "{e}");
    // The engine of a spec with `runtime.scoring: onnx` scores in ONNX Runtime.
    let spec = glad_edge::engine::EngineSpec {
        bundle_dir: root().join("onnx/tiny"),
        runtime: RuntimeConfig { scoring: Scoring::Onnx, ..rt() },
        preset: None,
        layers: vec![],
        noise: Default::default(),
        verdict: Default::default(),
        trusted_keys: vec![],
    };
    assert_eq!(spec.engine().unwrap().scoring(), ScoringPath::Onnx);
}

/// CPU `auto` with the symmetric term: the graph only for pairs of at least
/// AUTO_CPU_MIN_TOKENS tokens on both sides with `m2` asked for; ADP scores stay in Rust.
#[test]
fn cpu_auto_uses_the_graph_for_large_symmetric_pairs_only() {
    use glad_edge::engine::{OnnxModels, AUTO_CPU_MIN_TOKENS};
    use glad_edge::glad::Models;
    let mut bundle = Bundle::load(&root().join("onnx/tiny"), &rt()).unwrap();
    let mut graphs = rt().load_scoring().unwrap();
    let mut m = OnnxModels::new(&mut bundle).with_scoring(Some((&mut graphs, false)));
    let (_, x) = tokens(AUTO_CPU_MIN_TOKENS, 16, 1);
    let (_, r) = tokens(AUTO_CPU_MIN_TOKENS, 16, 2);
    let (_, small) = tokens(64, 16, 3);
    m.cosine_maps(&x, &r, false).unwrap();
    m.cosine_maps(&small, &small, true).unwrap();
    m.adp_score(&x, &r, 10).unwrap();
    assert_eq!(m.times.scoring, std::time::Duration::ZERO, "Rust for m1 alone, small pairs and ADP");
    let (m1, m2) = m.cosine_maps(&x, &r, true).unwrap();
    assert!(m.times.scoring > std::time::Duration::ZERO, "the graph for a large symmetric pair");
    assert!(max_diff(&m1, &min_cosine_distance(&x, &r)) <= 2e-6);
    assert!(max_diff(&m2.unwrap(), &min_cosine_distance(&r, &x)) <= 2e-6);
}
