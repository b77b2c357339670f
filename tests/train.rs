//! ATP training: anomaly synthesis statistics, and short runs on onnx/tiny (the loss falls on a
//! fixed batch, the output bundle loads and inspects, its inference UNet carries the trained
//! weights, and a resumed run is bit-identical to an uninterrupted one).

use std::path::{Path, PathBuf};
use std::process::Command;

use image::{Rgb, RgbImage};
use ndarray::{Array1, Array4};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use glad_edge::bundle::Bundle;
use glad_edge::runtime::{Input, RuntimeConfig};
use glad_edge::train::synth::{self, Source, TextureSource};
use glad_edge::train::{spec, AdamWConfig, Dataset, TrainOptions, TrainSpec, Trainer};

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("onnx").join("tiny")
}

/// A brick-like texture: staggered rows of bricks with per-brick colour and pixel noise.
fn brick(seed: u64, size: u32) -> RgbImage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let tones: Vec<i32> = (0..64).map(|_| rng.random_range(-25..25)).collect();
    RgbImage::from_fn(size, size, |x, y| {
        let row = y / 16;
        let xs = x + if row % 2 == 1 { 16 } else { 0 };
        let mortar = y % 16 < 2 || xs % 32 < 2;
        let n: i32 = rng.random_range(-12..12);
        if mortar {
            let v = (170 + n) as u8;
            Rgb([v, v, v])
        } else {
            let t = tones[((row * 7 + xs / 32) % 64) as usize];
            Rgb([(150 + t + n).clamp(0, 255) as u8, (60 + t / 2 + n).clamp(0, 255) as u8, (45 + n).clamp(0, 255) as u8])
        }
    })
}

fn image_dir(dir: &Path, n: u64) -> PathBuf {
    let d = dir.join("good");
    std::fs::create_dir_all(&d).unwrap();
    for i in 0..n {
        brick(i, 160).save(d.join(format!("{i:03}.png"))).unwrap();
    }
    d
}

struct Stripes;
impl TextureSource for Stripes {
    fn count(&self) -> usize {
        3
    }
    fn load(&self, i: usize, r: u32) -> anyhow::Result<RgbImage> {
        Ok(RgbImage::from_fn(r, r, |x, _| if (x / (4 + i as u32)) % 2 == 0 { Rgb([20, 200, 60]) } else { Rgb([240, 240, 10]) }))
    }
}

#[test]
fn anomaly_synthesis_statistics() {
    let img = brick(0, 128);
    let n = 200u64;
    let (mut normal, mut textures, mut coverage) = (0, 0, Vec::new());
    for seed in 0..n {
        let s = synth::synthesize(&img, Some(&Stripes), None, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
        // determinism per seed
        let again = synth::synthesize(&img, Some(&Stripes), None, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
        assert_eq!(s.image, again.image);
        assert_eq!(s.mask, again.mask);
        assert!(s.mask.iter().all(|&m| m == 0.0 || m == 1.0));
        if s.source.is_none() {
            normal += 1;
            assert!(s.mask.iter().all(|&m| m == 0.0));
            assert_eq!(s.image, glad_edge::imaging::preprocess(&img, 128));
            continue;
        }
        if matches!(s.source, Some(Source::Texture(_))) {
            textures += 1;
        }
        coverage.push(s.mask.mean().unwrap());
    }
    let frac_normal = normal as f64 / n as f64;
    let mean_cov = coverage.iter().sum::<f32>() / coverage.len() as f32;
    let max_cov = coverage.iter().copied().fold(0.0f32, f32::max);
    let empty = coverage.iter().filter(|&&c| c == 0.0).count();
    eprintln!(
        "synthesis over {n} seeds: {normal} normal ({frac_normal:.2}), {textures} of {} anomalies from textures; \
         mask coverage mean {mean_cov:.3}, max {max_cov:.3}, {empty} empty",
        coverage.len()
    );
    // p = 0.5 normal: 200 draws stay within 0.5 +- 0.1 except with probability ~5e-3.
    assert!((0.4..=0.6).contains(&frac_normal), "{frac_normal}");
    // p = 0.5 texture among the anomalous ones
    let frac_tex = textures as f64 / coverage.len() as f64;
    assert!((0.35..=0.65).contains(&frac_tex), "{frac_tex}");
    // Perlin noise > 0.3 covers a sizeable but partial share of the image.
    assert!((0.05..=0.4).contains(&mean_cov), "mean coverage {mean_cov}");
    assert!(max_cov < 0.8, "max coverage {max_cov}");
    assert!(empty * 5 < coverage.len(), "{empty} empty masks");
    // different seeds give different anomalies
    let a = synth::synthesize(&img, None, None, &mut ChaCha8Rng::seed_from_u64(1_000)).unwrap();
    let b = synth::synthesize(&img, None, None, &mut ChaCha8Rng::seed_from_u64(1_001)).unwrap();
    assert!(a.image != b.image || a.mask != b.mask);
}

fn opts(images: &Path, out: &Path, steps: u64, seed: u64, fixed: bool) -> TrainOptions {
    TrainOptions {
        images: images.to_path_buf(),
        textures: None,
        out: out.to_path_buf(),
        steps,
        seed,
        adam: AdamWConfig { lr: 1e-3, warmup: 5, ..AdamWConfig::default() },
        checkpoint_every: 0,
        checkpoint: None,
        resume: None,
        fixed_batch: fixed,
        log_every: 0,
        progress: false,
        command: "tests/train.rs".into(),
        force: false,
        horizon: None,
    }
}

fn mse(a: &ndarray::ArrayD<f32>, b: &Array4<f32>) -> f64 {
    a.iter().zip(b.iter()).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>() / b.len() as f64
}

#[test]
fn training_on_tiny() {
    let tmp = tempfile::tempdir().unwrap();
    let images = image_dir(tmp.path(), 6);
    let rt = RuntimeConfig { threads: 2, ..RuntimeConfig::default() };
    let mut trainer = Trainer::load(&tiny(), 2, &rt).unwrap();

    // 1. A fixed batch: the loss must fall.
    let out_a = tmp.path().join("tiny-a");
    let rep = trainer.train(&opts(&images, &out_a, 25, 0, true)).unwrap();
    let (first, last) = (rep.losses[0], *rep.losses.last().unwrap());
    let tail = rep.losses[20..].iter().sum::<f64>() / 5.0;
    eprintln!(
        "fixed batch, 25 steps at batch 2, lr 1e-3: loss {first:.4} -> {last:.4} (last 5 mean {tail:.4}), {:.2} steps/s",
        rep.steps_per_second
    );
    assert!(tail < 0.3 * first, "loss did not fall: {:?}", rep.losses);
    assert!(rep.checkpoint.is_file());

    // 2. The output bundle loads, records its provenance, and its inference UNet (the
    //    external-data unet.onnx with the trained unet.weights.bin) computes what the training
    //    graph computes with the trained weights.
    let mut out = Bundle::load(&out_a, &rt).unwrap();
    let prov = out.manifest.provenance.clone().unwrap();
    assert_eq!(prov["training"]["steps"].as_u64(), Some(25));
    assert_eq!(prov["training"]["horizon"].as_u64(), Some(1000), "GLAD's horizon: the train timesteps");
    assert!(prov["base"]["command"].as_str().unwrap().contains("export_bundle.py"));
    assert_eq!(out.manifest.name, "tiny-a");
    let spec = TrainSpec::read(&out_a).unwrap();
    let trained = spec::read_weights(&out_a.join(&spec.weights), spec.tensors()).unwrap();
    let initial = spec::read_weights(&tiny().join(&spec.weights), spec.tensors()).unwrap();
    assert_ne!(trained, initial);
    let data = Dataset::load(&images, 128).unwrap();
    let batch = trainer.prepare(&data, None, 0, 0).unwrap().atp;
    let (graph_loss, _) = trainer.loss_and_grads(&trained, &batch).unwrap();
    let (initial_loss, _) = trainer.loss_and_grads(&initial, &batch).unwrap();
    let t = Array1::from(batch.t.clone()).into_dyn();
    let ctx = trainer.context().unwrap().clone().into_dyn();
    let pred = out
        .unet
        .run(
            &[
                ("sample", Input::F32(batch.zt.view().into_dyn())),
                ("timestep", Input::I64(t.view())),
                ("encoder_hidden_states", Input::F32(ctx.view())),
            ],
            &["noise_pred"],
        )
        .unwrap();
    let inference_loss = mse(&pred[0], &batch.target);
    eprintln!("fixed batch: initial loss {initial_loss:.5}, trained {graph_loss:.5} (training graph) vs {inference_loss:.5} (output bundle's UNet)");
    assert!((graph_loss - inference_loss).abs() < 1e-5 * inference_loss.max(1e-3), "{graph_loss} vs {inference_loss}");
    assert!((initial_loss - first).abs() < 1e-5 * first);
    drop(out);

    // 3. glad info / glad inspect on the output bundle.
    let info = Command::new(env!("CARGO_BIN_EXE_glad")).args(["info", "--threads", "2", "--bundle"]).arg(&out_a).output().unwrap();
    assert!(info.status.success(), "{}", String::from_utf8_lossy(&info.stderr));
    assert!(String::from_utf8_lossy(&info.stdout).contains("tiny-a"));
    let inspect = Command::new(env!("CARGO_BIN_EXE_glad"))
        .args(["inspect", "--threads", "2", "--steps", "5", "--bundle"])
        .arg(&out_a)
        .arg(images.join("000.png"))
        .arg("-o")
        .arg(tmp.path().join("inspect"))
        .output()
        .unwrap();
    assert!(inspect.status.success(), "{}", String::from_utf8_lossy(&inspect.stderr));
    let line: serde_json::Value = serde_json::from_slice(inspect.stdout.split(|&c| c == b'\n').next().unwrap()).unwrap();
    assert!(line["score"].as_f64().unwrap().is_finite(), "{line}");

    // 4. Stop at step 3, resume to 7: bit-identical to 7 uninterrupted steps (random batches).
    let full = tmp.path().join("full");
    trainer.train(&opts(&images, &full, 7, 3, false)).unwrap();
    let part = tmp.path().join("part");
    let rep_part = trainer.train(&opts(&images, &part, 3, 3, false)).unwrap();
    let resumed = tmp.path().join("resumed");
    let mut o = opts(&images, &resumed, 7, 3, false);
    o.resume = Some(rep_part.checkpoint.clone());
    let rep_res = trainer.train(&o).unwrap();
    assert_eq!(rep_res.start_step, 3);
    assert_eq!(rep_res.losses.len(), 4);
    let w_full = std::fs::read(full.join("unet.weights.bin")).unwrap();
    let w_res = std::fs::read(resumed.join("unet.weights.bin")).unwrap();
    assert!(w_full == w_res, "resumed weights differ from the uninterrupted run");
    assert_ne!(w_full, std::fs::read(part.join("unet.weights.bin")).unwrap());
    // the optimiser state too
    let (ck_full, ck_res) = (std::fs::read(tmp.path().join("full.ckpt")).unwrap(), std::fs::read(tmp.path().join("resumed.ckpt")).unwrap());
    assert!(ck_full == ck_res, "checkpoints differ");

    // 5. Errors name what is wrong.
    let mut bad = opts(&images, &tmp.path().join("x"), 7, 3, false);
    bad.resume = Some(rep_part.checkpoint.clone());
    bad.adam.lr = 2e-3;
    let e = trainer.train(&bad).unwrap_err().to_string();
    assert!(e.contains("key `lr`"), "{e}");
    let mut bad = opts(&images, &tmp.path().join("x"), 7, 3, false);
    bad.resume = Some(rep_part.checkpoint.clone());
    bad.horizon = Some(300);
    let e = trainer.train(&bad).unwrap_err().to_string();
    assert!(e.contains("key `horizon`") && e.contains("null") && e.contains("300"), "{e}");
    let mut bad = opts(&images, &tmp.path().join("x"), 1, 0, false);
    bad.horizon = Some(1001);
    let e = trainer.train(&bad).unwrap_err().to_string();
    assert!(e.contains("--horizon 1001: must be in 1..=1000"), "{e}");
    let e = trainer.train(&opts(&images, &tiny(), 1, 0, false)).unwrap_err().to_string();
    assert!(e.contains("must not be the input bundle"), "{e}");
    assert!(!tiny().with_extension("ckpt").exists(), "a refused run wrote a checkpoint");
    let e = trainer.train(&opts(&tmp.path().join("nope"), &tmp.path().join("y"), 1, 0, false)).unwrap_err().to_string();
    assert!(e.contains("image folder does not exist"), "{e}");
    std::fs::create_dir_all(tmp.path().join("occupied")).unwrap();
    std::fs::write(tmp.path().join("occupied").join("keep.txt"), "x").unwrap();
    let e = trainer.train(&opts(&images, &tmp.path().join("occupied"), 1, 0, false)).unwrap_err().to_string();
    assert!(e.contains("is not a bundle written by train"), "{e}");
    let e = Trainer::load(&tiny(), 3, &rt).err().unwrap().to_string();
    assert!(e.contains("no training graph for batch 3") && e.contains("2, 8"), "{e}");
}

#[test]
fn train_cli_reports_bad_input_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_train"))
        .args(["--bundle", "no/such/bundle", "--images", "x", "--out"])
        .arg(tmp.path().join("o"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("no/such/bundle/bundle.yaml"), "{err}");
    let help = Command::new(env!("CARGO_BIN_EXE_train")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--bundle",
        "--images",
        "--out",
        "--steps",
        "--batch",
        "--lr",
        "--warmup",
        "--seed",
        "--textures",
        "--checkpoint-every",
        "--resume",
        "--threads",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

/// `--steps 0` would write an untrained bundle: refused.
#[test]
fn train_refuses_zero_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_train"))
        .args(["--bundle", "no/such/bundle", "--images", "x", "--steps", "0", "--out"])
        .arg(tmp.path().join("o"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--steps"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!tmp.path().join("o").exists());
}
