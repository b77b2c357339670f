//! Full size: `cargo bench --bench full_size -- BUNDLE...` times each bundle (e.g. the synthetic
//! SD v1.4 + DINO ViT-B/8 bundles of `scripts/export_bundle.py synthetic-sd14 --resolution 256`
//! or 512, their `-fp16` copies and their int8 copies from `scripts/quantize_bundle.py`) per
//! stage, at batch 1 and 2, and runs the GLAD reference pipeline on the same bundle's torch
//! models (`scripts/torch_reference.py`: the same weights, rebuilt from the bundle's seed, the
//! same images, noise and parameters) in the same run, reported as a ratio. A bundle that is
//! not there is skipped with a message.
//!
//! Environment: `GLAD_BENCH_STEPS` (K; default the bundle's own), `GLAD_BENCH_THREADS` (ONNX
//! Runtime and torch intra-op threads, default 1), `GLAD_BENCH_IMAGES` (default 2),
//! `GLAD_BENCH_BATCHES` (default `1,2`), `GLAD_BENCH_MEMORY` (`fast` or `lean`: `runtime.memory`), `GLAD_BENCH_ADP_EVERY` (n: adds a row with
//! `adp_every: n` at the first batch size, its speed-up and its agreement with the exact ADP),
//! `GLAD_BENCH_PYTHON` (a python with torch and diffusers, default `python3`; `none` skips the
//! torch side). The reference side runs only for float32 bundles whose provenance names a
//! seeded export (its models cannot be rebuilt otherwise).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use glad_edge::bundle::Bundle;
use glad_edge::engine::{Engine, Inspection, NoiseSource, StageTimes};
use glad_edge::glad::{ParamOverrides, Params};
use glad_edge::imaging;
use glad_edge::runtime::{MemoryMode, RuntimeConfig};
use ndarray::{Array4, Axis};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn env_usize(key: &str, default: usize) -> usize {
    match std::env::var(key) {
        Ok(v) => match v.parse() {
            Ok(n) if n > 0 => n,
            _ => panic!("{key}={v}: expected a whole number > 0"),
        },
        Err(_) => default,
    }
}

/// `n` test images of the texture set (brick, grass, gravel in turn) at `r` px.
fn images(n: usize, r: usize) -> Array4<f32> {
    let classes = ["brick", "grass", "gravel"];
    let views: Vec<_> = (0..n)
        .map(|i| {
            let p = root().join(format!("data/textures/{}/test/stain/{:03}.png", classes[i % 3], i / 3));
            imaging::preprocess(&imaging::load_rgb(&p).unwrap_or_else(|e| panic!("{e:#}")), r)
        })
        .collect();
    ndarray::stack(Axis(0), &views.iter().map(|v| v.view()).collect::<Vec<_>>()).unwrap()
}

fn ms(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e3 / n as f64
}

struct Run {
    per_image_ms: f64,
    stages: [f64; 5],
    /// `(ADP step, score)` per image.
    outcomes: Vec<(i64, f32)>,
    /// Anomaly maps (empty for the torch side, which reports scores only).
    maps: Vec<ndarray::Array2<f32>>,
}

/// Every image through the (warmed-up) engine at `batch`; the final backbone's time includes
/// the scoring graphs' (`runtime.scoring: onnx`).
fn run_engine(engine: &mut Engine, x: &Array4<f32>, noise: &NoiseSource, batch: usize) -> Run {
    let n = x.shape()[0];
    let mut total = StageTimes::default();
    let mut outcomes = Vec::new();
    let mut maps = Vec::new();
    let mut wall = Duration::ZERO;
    for start in (0..n).step_by(batch) {
        let idx: Vec<usize> = (start..(start + batch).min(n)).collect();
        let nz = noise.draw(&idx, engine.latent_shape()).unwrap();
        let t0 = std::time::Instant::now();
        let (out, t) = engine.inspect(x.select(Axis(0), &idx).view(), &nz).unwrap();
        wall += t0.elapsed();
        total.models.encode += t.models.encode;
        total.models.unet += t.models.unet;
        total.models.decode += t.models.decode;
        total.models.adp_backbone += t.models.adp_backbone;
        total.models.backbone += t.models.backbone + t.models.scoring;
        outcomes.extend(out.iter().map(|i: &Inspection| (i.adp.as_ref().map_or(-1, |a| a.step), i.score)));
        maps.extend(out.into_iter().map(|i| i.map));
    }
    let m = &total.models;
    Run {
        per_image_ms: ms(wall, n),
        stages: [ms(m.encode, n), ms(m.unet, n), ms(m.decode, n), ms(m.adp_backbone, n), ms(m.backbone, n)],
        outcomes,
        maps,
    }
}

fn row(label: &str, precision: &str, batch: &str, r: &Run, ratio: &str) {
    let s = &r.stages;
    println!(
        "| {label} | {precision} | {batch} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {ratio} |",
        s[0], s[1], s[2], s[3], s[4], r.per_image_ms
    );
}

/// The torch side: `scripts/torch_reference.py` on the same inputs. `Err` says why it did not run.
fn torch_reference(
    bundle: &Path,
    params: &Params,
    latent: (usize, usize),
    x: &Array4<f32>,
    noise: &NoiseSource,
    s: &Settings,
) -> Result<Run, String> {
    let python = std::env::var("GLAD_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    if python == "none" {
        return Err("GLAD_BENCH_PYTHON=none".into());
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let n = x.shape()[0];
    let nz = noise.draw(&(0..n).collect::<Vec<_>>(), latent).map_err(|e| format!("{e:#}"))?;
    let save = |a: &Array4<f32>, name: &str| imaging::save_npy(&a.to_owned(), &dir.path().join(name)).map_err(|e| format!("{e:#}"));
    save(x, "images.npy")?;
    save(&nz.vae, "vae_noise.npy")?;
    save(&nz.eps, "eps.npy")?;
    std::fs::write(dir.path().join("params.json"), serde_json::to_string(params).unwrap()).map_err(|e| e.to_string())?;
    let out = Command::new(&python)
        .arg(root().join("scripts/torch_reference.py"))
        .arg("--bundle")
        .arg(bundle)
        .arg("--inputs")
        .arg(dir.path())
        .args(["--threads", &s.threads.to_string(), "--batch", &s.batches[0].to_string()])
        .output()
        .map_err(|e| format!("{python}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("failed").to_string());
    }
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).map_err(|e| format!("{l}: {e}")))
        .collect::<Result<_, _>>()?;
    let (last, per) = lines.split_last().ok_or("no output")?;
    let model: BTreeMap<String, f64> = serde_json::from_value(last["model_ms_per_image"].clone()).map_err(|e| e.to_string())?;
    let g = |k: &str| model.get(k).copied().unwrap_or(0.0);
    let outcomes = per.iter().map(|l| (l["adp_step"].as_i64().unwrap_or(-1), l["score"].as_f64().unwrap_or(f64::NAN) as f32)).collect();
    Ok(Run {
        per_image_ms: last["ms_per_image"].as_f64().ok_or("no ms_per_image")?,
        stages: [g("vae_encoder"), g("unet"), g("vae_decoder"), g("adp_backbone"), g("backbone")],
        outcomes,
        maps: vec![],
    })
}

struct Settings {
    steps: Option<usize>,
    threads: usize,
    images: usize,
    batches: Vec<usize>,
    adp_every: Option<usize>,
    memory: MemoryMode,
}

/// ADP steps and scores of `a` against `reference`.
fn agreement(a: &Run, reference: &Run) -> String {
    let same = a.outcomes.iter().zip(&reference.outcomes).filter(|(x, y)| x.0 == y.0).count();
    let dev = a.outcomes.iter().zip(&reference.outcomes).map(|(x, y)| ((x.1 - y.1) / y.1).abs()).fold(0f32, f32::max);
    let map_dev = a
        .maps
        .iter()
        .zip(&reference.maps)
        .map(|(x, y)| (x - y).fold(0f32, |m, v| m.max(v.abs())))
        .fold(None, |m: Option<f32>, v| Some(m.map_or(v, |m| m.max(v))));
    format!(
        "same ADP step {same}/{}, scores within {dev:.1e} relative{}",
        reference.outcomes.len(),
        map_dev.map_or(String::new(), |d| format!(", maps within {d:.1e}"))
    )
}

/// The first float32 bundle's first-batch run, per resolution: what other precisions are compared with.
type Fp32Runs = BTreeMap<usize, Run>;

fn bench_bundle(dir: &Path, s: &Settings, fp32: &mut Fp32Runs) {
    let label = dir.display().to_string();
    if !dir.join("bundle.yaml").is_file() {
        println!("| {label} | no bundle there (scripts/export_bundle.py synthetic-sd14 --resolution 256 --out {label}): skipped | | | | | | | | |");
        return;
    }
    let rt = RuntimeConfig { threads: s.threads, memory: s.memory, ..Default::default() };
    let bundle = Bundle::load(dir, &rt).unwrap_or_else(|e| panic!("{e:#}"));
    let precision = bundle.unet.precision().to_string();
    let params = bundle
        .manifest
        .defaults
        .merged(&ParamOverrides { steps: s.steps, ..Default::default() })
        .resolve(bundle.manifest.models.backbone.resolution)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let r = bundle.manifest.resolution;
    let mut engine = Engine::new(bundle, params).unwrap_or_else(|e| panic!("{e:#}"));
    engine.warm_up().unwrap_or_else(|e| panic!("{e:#}"));
    let x = images(s.images, r);
    let noise = NoiseSource::Seeded(0);
    let runs: Vec<Run> = s
        .batches
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            let run = run_engine(&mut engine, &x, &noise, b);
            let vs = match fp32.get(&r) {
                Some(f) if i == 0 && precision != "fp32" && f.outcomes.len() == run.outcomes.len() => {
                    format!("{:.2}x the fp32 bundle's time; against it: {}", run.per_image_ms / f.per_image_ms, agreement(&run, f))
                }
                _ => String::new(),
            };
            row(&label, &precision, &b.to_string(), &run, &vs);
            run
        })
        .collect();
    let b1 = &runs[0];
    if let Some(every) = s.adp_every {
        let exact = engine.params.clone();
        engine.params.adp_every = every;
        let cheap = run_engine(&mut engine, &x, &noise, s.batches[0]);
        engine.params = exact;
        row(
            &format!("{label}, adp_every {every}"),
            &precision,
            &s.batches[0].to_string(),
            &cheap,
            &format!("{:.2}x faster than exact ADP; {}", b1.per_image_ms / cheap.per_image_ms, agreement(&cheap, b1)),
        );
    }
    if precision != "fp32" {
        return;
    }
    let b1 = runs.into_iter().next().expect("a batch size");
    let (params, latent) = (engine.params.clone(), engine.latent_shape());
    drop(engine); // its memory, before torch loads the same networks
    match torch_reference(dir, &params, latent, &x, &noise, s) {
        Ok(t) => row(
            "torch reference, same weights",
            "fp32",
            "1",
            &t,
            &format!("{:.2}x (torch / glad at batch {}); {}", t.per_image_ms / b1.per_image_ms, s.batches[0], agreement(&b1, &t)),
        ),
        Err(why) => println!("| torch reference | skipped: {why} | | | | | | | | |"),
    }
    fp32.entry(r).or_insert(b1);
}

fn main() {
    let bundles: Vec<PathBuf> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).map(PathBuf::from).collect();
    if bundles.is_empty() {
        println!("full_size: name the bundles: cargo bench --bench full_size -- BUNDLE... (see the file's header); nothing to do");
        return;
    }
    let s = Settings {
        steps: std::env::var("GLAD_BENCH_STEPS").ok().map(|_| env_usize("GLAD_BENCH_STEPS", 25)),
        threads: env_usize("GLAD_BENCH_THREADS", 1),
        images: env_usize("GLAD_BENCH_IMAGES", 2),
        batches: std::env::var("GLAD_BENCH_BATCHES")
            .unwrap_or_else(|_| "1,2".into())
            .split(',')
            .map(|b| {
                b.trim().parse().ok().filter(|&b| b > 0).unwrap_or_else(|| panic!("GLAD_BENCH_BATCHES: `{b}` is not a batch size > 0"))
            })
            .collect(),
        adp_every: std::env::var("GLAD_BENCH_ADP_EVERY").ok().map(|_| env_usize("GLAD_BENCH_ADP_EVERY", 1)),
        memory: match std::env::var("GLAD_BENCH_MEMORY").as_deref() {
            Err(_) | Ok("fast") => MemoryMode::Fast,
            Ok("lean") => MemoryMode::Lean,
            Ok(v) => panic!("GLAD_BENCH_MEMORY={v}: expected fast or lean"),
        },
    };
    println!(
        "\n{} images, {} thread(s), K {}; ms per image\n",
        s.images,
        s.threads,
        s.steps.map_or("of each bundle".to_string(), |k| k.to_string())
    );
    println!("| bundle | precision | batch | VAE encode | UNet | VAE decode | ADP backbone | final backbone | engine | ratio |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut fp32 = Fp32Runs::new();
    for b in &bundles {
        bench_bundle(b, &s, &mut fp32);
    }
}
