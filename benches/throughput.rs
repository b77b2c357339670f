//! End-to-end throughput on onnx/tiny (ADP on: the tiny bundle's scores stay under tau, so
//! every image searches until min_step, the most ADP work GLAD does), at batch 1 and 4; the
//! time per stage as a table; pipelined (decode ‖ engine ‖ PNG output) against sequential.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use glad_edge::bundle::Bundle;
use glad_edge::engine::{Engine, NoiseSource, StageTimes};
use glad_edge::glad::ParamOverrides;
use glad_edge::runtime::RuntimeConfig;
use glad_edge::{imaging, pipeline};
use ndarray::{Array4, Axis};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn engine() -> Engine {
    let rt = RuntimeConfig { threads: 2, ..Default::default() };
    let bundle = Bundle::load(&root().join("onnx/tiny"), &rt).expect("onnx/tiny loads (run scripts/fetch-ort.sh)");
    let params = bundle.manifest.defaults.merged(&ParamOverrides::default()).resolve(128).unwrap();
    Engine::new(bundle, params).unwrap()
}

/// Test images of the parity goldens (brick, grass, gravel at 128 px) as a batch of `b`.
fn batch(b: usize) -> Array4<f32> {
    let a: ndarray::ArrayD<f32> = ndarray_npy::read_npy(root().join("tests/golden/parity/adp_threshold/images.npy")).unwrap();
    let a = a.into_dimensionality::<ndarray::Ix4>().unwrap();
    let idx: Vec<usize> = (0..b).map(|i| i % a.shape()[0]).collect();
    a.select(Axis(0), &idx)
}

fn ms(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e3 / n as f64
}

fn print_stages(label: &str, t: &StageTimes, n: usize) {
    let m = &t.models;
    let engine = t.reconstruct + t.anomaly_map;
    println!(
        "{label:<8} | {:>8.1} | {:>8.1} | {:>8.1} | {:>8.1} | {:>8.1} | {:>8.1} | {:>8.1} | {:>5.1}%",
        ms(m.encode, n),
        ms(m.unet, n),
        ms(m.decode, n),
        ms(m.adp_backbone, n),
        ms(m.backbone, n),
        ms(engine.saturating_sub(m.total()), n),
        ms(engine, n),
        100.0 * (1.0 - m.total().as_secs_f64() / engine.as_secs_f64()),
    );
}

fn bench(c: &mut Criterion) {
    let mut eng = engine();
    let noise = NoiseSource::Seeded(0);
    let shape = eng.latent_shape();

    println!("\nms per image    | encode   | unet     | decode   | adp bb   | final bb | rust     | engine   | outside ORT");
    for b in [1usize, 4] {
        let x = batch(b);
        let n = noise.draw(&(0..b).collect::<Vec<_>>(), shape).unwrap();
        let (_, t) = eng.inspect(x.view(), &n).unwrap();
        print_stages(&format!("batch {b}"), &t, b);
    }

    let mut g = c.benchmark_group("inspect_tiny_adp_on");
    g.sample_size(10).measurement_time(Duration::from_secs(20)).warm_up_time(Duration::from_secs(2));
    for b in [1usize, 4] {
        let x = batch(b);
        let n = noise.draw(&(0..b).collect::<Vec<_>>(), shape).unwrap();
        g.throughput(Throughput::Elements(b as u64));
        g.bench_with_input(BenchmarkId::new("batch", b), &b, |bench, _| bench.iter(|| eng.inspect(x.view(), &n).unwrap()));
    }
    g.finish();

    // Pipelined vs sequential over 4 image files with heatmap PNG output, batch 1.
    let tmp = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = (0..4)
        .map(|i| {
            let x = batch(3);
            let p = tmp.path().join(format!("{i}.png"));
            imaging::save_png(&imaging::tensor_to_rgb(x.index_axis(Axis(0), i % 3)), &p).unwrap();
            p
        })
        .collect();
    let out = tmp.path().join("out");
    let mut g = c.benchmark_group("pipeline_4_images");
    g.sample_size(10).measurement_time(Duration::from_secs(30)).warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(files.len() as u64));
    let mut engines = [eng, engine()];
    for (name, pipelined, workers) in [("sequential", false, 1), ("pipelined_1_worker", true, 1), ("pipelined_2_workers", true, 2)] {
        g.bench_function(name, |bench| {
            bench.iter(|| {
                pipeline::run(&mut engines[..workers], &noise, &files, 1, pipelined, |item| {
                    let (insp, _) = item.result.unwrap();
                    let img = item.image.unwrap();
                    let (lo, hi) = imaging::heat_range(&insp.map, None);
                    let p: &Path = &out.join(format!("{}.png", item.index));
                    imaging::save_png(&imaging::heatmap_overlay(&img, insp.map.view(), lo, hi), p).unwrap();
                })
                .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
