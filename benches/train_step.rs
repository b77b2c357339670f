//! ATP training step on onnx/tiny at batch 8: anomaly synthesis, VAE encoding, the training
//! graph (forward + backward) and AdamW. Prints steps/s and the peak resident memory (VmHWM).
//!
//!     cargo bench --bench train_step            (GLAD_BENCH_THREADS=N, default 2)

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use glad_edge::runtime::RuntimeConfig;
use glad_edge::train::{AdamWConfig, Dataset, Trainer};

const BATCH: usize = 8;

fn images(n: u64) -> Dataset {
    let imgs = (0..n)
        .map(|s| {
            let mut rng = ChaCha8Rng::seed_from_u64(s);
            RgbImage::from_fn(128, 128, |x, y| {
                let n: i32 = rng.random_range(-20..20);
                let base = if y % 16 < 2 || (x + (y / 16 % 2) * 16) % 32 < 2 { 170 } else { 120 };
                let v = (base + n).clamp(0, 255) as u8;
                Rgb([v, v / 2, v / 3])
            })
        })
        .collect();
    Dataset::from_images(imgs)
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn bench(c: &mut Criterion) {
    let threads = std::env::var("GLAD_BENCH_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let rt = RuntimeConfig { threads, ..RuntimeConfig::default() };
    let bundle = Path::new(env!("CARGO_MANIFEST_DIR")).join("onnx").join("tiny");
    let t0 = Instant::now();
    let mut trainer = Trainer::load(&bundle, BATCH, &rt).expect("onnx/tiny with train/train_b8.onnx");
    let load = t0.elapsed();
    let data = images(16);
    let mut state = trainer.fresh_state(AdamWConfig { lr: 1e-3, warmup: 10, ..AdamWConfig::default() });
    // warm-up steps (first runs allocate)
    for k in 0..2 {
        trainer.step(&mut state, &data, None, 0, k).unwrap();
    }
    let mut k = 2u64;
    let mut group = c.benchmark_group("train");
    group.sample_size(10).measurement_time(Duration::from_secs(20)).warm_up_time(Duration::from_secs(1));
    group.bench_function("tiny_step_b8", |b| {
        b.iter(|| {
            trainer.step(&mut state, &data, None, 0, k).unwrap();
            k += 1;
        })
    });
    group.finish();
    // plain timing: full steps, then the training graph's share
    let n = 10;
    let t = Instant::now();
    for _ in 0..n {
        trainer.step(&mut state, &data, None, 0, k).unwrap();
        k += 1;
    }
    let step_s = t.elapsed().as_secs_f64() / n as f64;
    let mut graph = Duration::ZERO;
    for _ in 0..n {
        let batch = trainer.prepare(&data, None, 0, k).unwrap();
        let g0 = Instant::now();
        trainer.loss_and_grads(&state.weights, &batch.atp).unwrap();
        graph += g0.elapsed();
        k += 1;
    }
    println!(
        "train_step: onnx/tiny batch {BATCH}, {threads} threads: {:.2} steps/s ({:.0} ms/step, of which the training graph \
         {:.0} ms); session load {:.2} s; peak RSS (VmHWM) {:.0} MiB",
        1.0 / step_s,
        step_s * 1e3,
        graph.as_secs_f64() * 1e3 / n as f64,
        load.as_secs_f64(),
        peak_rss_mib().unwrap_or(f64::NAN)
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
