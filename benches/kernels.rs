//! Micro-benchmarks of the hand-written GLAD math: the DDIM step, the min-cosine map (GEMM)
//! at 1024 and 4096 patches of 768 channels (DINO ViT-B/8 at 256 and 512 px), and the
//! sigma-6 Gaussian blur at 512x512; and the scoring path (`runtime.scoring`): glad's Rust
//! GEMM against the ONNX scoring graph `cosine_maps.onnx` (one ONNX Runtime thread, the CPU
//! provider) at 64, 1024 and 4096 tokens of 768 channels (DINO ViT-B/8 at 64, 256 and 512 px).
//! `cargo bench --bench kernels -- scoring` runs only those.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use glad_edge::glad::features::{min_cosine_distance, Tokens};
use glad_edge::glad::maps::{gaussian_blur, Border};
use glad_edge::glad::schedule::{mix, predict_x0};
use ndarray::{Array2, Array4, Zip};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

fn randn2(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Array2::from_shape_simple_fn((rows, cols), || StandardNormal.sample(&mut rng))
}

fn tokens(n: usize, c: usize, seed: u64) -> Tokens {
    let mut data = randn2(n, c, seed);
    for mut row in data.rows_mut() {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.mapv_inplace(|v| v / norm);
    }
    let g = (n as f64).sqrt() as usize;
    Tokens { data, grid: (g, n / g) }
}

fn bench(c: &mut Criterion) {
    // One DDIM step (x0 prediction + update) on a batch-4 SD latent [4,4,64,64].
    let z = Array4::<f32>::from_elem((4, 4, 64, 64), 0.3);
    let e = Array4::<f32>::from_elem((4, 4, 64, 64), -0.2);
    c.bench_function("ddim_step_4x4x64x64", |b| {
        b.iter(|| {
            let x0 = Zip::from(&z).and(&e).map_collect(|&z, &e| predict_x0(0.3, z, e));
            Zip::from(&x0).and(&e).map_collect(|&x0, &e| mix(0.35, x0, e))
        })
    });
    let mut g = c.benchmark_group("min_cosine_768ch");
    g.sample_size(10);
    for n in [1024usize, 4096] {
        let (p, q) = (tokens(n, 768, 1), tokens(n, 768, 2));
        g.bench_with_input(BenchmarkId::new("gemm", n), &n, |b, _| b.iter(|| min_cosine_distance(&p, &q)));
    }
    // The loop over pairs the GEMM replaces, for the ratio (1024 only: 4096 takes seconds).
    let (p, q) = (tokens(1024, 768, 1), tokens(1024, 768, 2));
    g.bench_function(BenchmarkId::new("pair_loop", 1024), |b| {
        b.iter(|| {
            p.data
                .rows()
                .into_iter()
                .map(|pi| 1.0 - q.data.rows().into_iter().map(|qj| pi.dot(&qj)).fold(f32::NEG_INFINITY, f32::max))
                .collect::<Vec<f32>>()
        })
    });
    g.finish();
    // The scoring path: Rust m1 (and m1 + m2, the symmetric map, two GEMMs) against the ONNX
    // graph, which gives both from one GEMM and normalises inside.
    let rt = glad_edge::runtime::RuntimeConfig { threads: 1, ..Default::default() };
    let mut graphs = rt.load_scoring().expect("onnx/scoring (scripts/export_scoring_graphs.py)");
    let mut g = c.benchmark_group("scoring_768ch");
    g.sample_size(10);
    for n in [64usize, 1024, 4096] {
        let (p, q) = (tokens(n, 768, 1), tokens(n, 768, 2));
        g.bench_with_input(BenchmarkId::new("rust_m1", n), &n, |b, _| b.iter(|| min_cosine_distance(&p, &q)));
        g.bench_with_input(BenchmarkId::new("rust_m1_m2", n), &n, |b, _| {
            b.iter(|| (min_cosine_distance(&p, &q), min_cosine_distance(&q, &p)))
        });
        g.bench_with_input(BenchmarkId::new("onnx_m1_m2", n), &n, |b, _| {
            b.iter(|| graphs.cosine_maps(p.data.view(), q.data.view()).unwrap())
        });
    }
    g.finish();
    let map = randn2(512, 512, 3);
    c.bench_function("gaussian_blur_sigma6_512", |b| b.iter(|| gaussian_blur(&map, 6.0, Border::Reflect).unwrap()));
}

criterion_group!(benches, bench);
criterion_main!(benches);
