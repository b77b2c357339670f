//! `train`: GLAD's anomaly-oriented training (ATP) of a bundle's UNet on ONNX Runtime.
//!
//! Needs the bundle's training graphs: `python3 scripts/export_train_graph.py --bundle DIR --batch N`.
//! See docs/training.md.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use glad_edge::runtime::RuntimeConfig;
use glad_edge::train::{AdamWConfig, TrainOptions, Trainer};

/// Train a bundle's UNet with GLAD's ATP (anomaly synthesis + the ATP target) and write a
/// trained copy of the bundle.
#[derive(Parser, Debug)]
#[command(name = "train", version)]
struct Args {
    /// Input bundle folder (onnx/<name>) with train/train.yaml (scripts/export_train_graph.py).
    #[arg(long, short = 'b', value_name = "DIR")]
    bundle: PathBuf,
    /// Folder of normal images of one class, e.g. data/textures/brick/train/good (searched recursively).
    #[arg(long, value_name = "DIR")]
    images: PathBuf,
    /// Output bundle folder: a copy of --bundle with the trained unet.weights.bin. Must not be
    /// inside --bundle. An earlier output of train is replaced only with --force; any other
    /// existing folder is refused.
    #[arg(long, short = 'o', value_name = "DIR")]
    out: PathBuf,
    /// Replace --out when it holds an earlier output of train.
    #[arg(long)]
    force: bool,
    /// Total optimiser steps (GLAD uses 2000-4000 per class at batch 32). A resumed run continues to this count.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    steps: u64,
    /// Batch size (1..=256); the bundle needs a training graph exported for it (train/train_b<N>.onnx).
    #[arg(long, default_value_t = 2, value_name = "N", value_parser = glad_edge::cli::parse_batch)]
    batch: usize,
    /// Learning rate (constant after warm-up). GLAD uses 5e-6 for Stable Diffusion; a tiny
    /// randomly initialised UNet needs about 1e-3.
    #[arg(long, default_value_t = 5e-6, value_name = "LR")]
    lr: f64,
    /// Linear warm-up steps: step k (0-based) uses lr * min(1, (k+1)/N); 0 = none.
    #[arg(long, default_value_t = 0, value_name = "N")]
    warmup: u64,
    /// AdamW decoupled weight decay.
    #[arg(long, default_value_t = 1e-2, value_name = "WD")]
    weight_decay: f64,
    /// AdamW beta1.
    #[arg(long, default_value_t = 0.9)]
    beta1: f64,
    /// AdamW beta2.
    #[arg(long, default_value_t = 0.999)]
    beta2: f64,
    /// AdamW epsilon.
    #[arg(long, default_value_t = 1e-8)]
    adam_eps: f64,
    /// Global gradient-norm clip; 0 = no clipping.
    #[arg(long, default_value_t = 1.0, value_name = "NORM")]
    clip: f64,
    /// Seed of every random draw (image order, anomalies, timesteps, noise). Step k's draws
    /// depend only on (seed, k), so a resumed run continues exactly.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Texture images for the anomaly source (DTD in the reference; searched recursively).
    /// Without it the source is always the image's own shuffled 8x8 tiles.
    #[arg(long, value_name = "DIR")]
    textures: Option<PathBuf>,
    /// ATP horizon, beyond GLAD: timesteps are drawn below N and an anomaly is whole at N
    /// (GLAD: N = the scheduler's train timesteps, 1000, so at a start step T an anomaly is only
    /// T/1000 there). Set it to the largest denoise_step the bundle will be tuned over, and keep
    /// the tune grid at or below it. [default: the train timesteps]
    #[arg(long, value_name = "N")]
    horizon: Option<usize>,
    /// Write a checkpoint every N steps (it is also written at the end); 0 = only at the end.
    #[arg(long, default_value_t = 100, value_name = "N")]
    checkpoint_every: u64,
    /// Checkpoint file [default: <OUT>.ckpt].
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// Resume from a checkpoint (written by a run with the same seed, batch and optimiser settings).
    #[arg(long, value_name = "FILE")]
    resume: Option<PathBuf>,
    /// ONNX Runtime intra-op threads (0 = all cores, at most 1024).
    #[arg(long, default_value_t = 2, value_name = "N", value_parser = glad_edge::cli::parse_threads)]
    threads: usize,
    /// ONNX Runtime shared library (overrides ORT_DYLIB_PATH and the build default).
    #[arg(long, value_name = "FILE")]
    ort_library: Option<PathBuf>,
    /// Reuse step 0's batch at every step: an overfitting check that the loss falls, not training.
    #[arg(long)]
    fixed_batch: bool,
    /// Log a line (tracing, stderr) every N steps; 0 = never.
    #[arg(long, default_value_t = 10, value_name = "N")]
    log_every: u64,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

fn run(args: Args) -> anyhow::Result<()> {
    let rt = RuntimeConfig { library: args.ort_library.clone(), threads: args.threads, ..RuntimeConfig::default() };
    let adam = AdamWConfig {
        lr: args.lr,
        beta1: args.beta1,
        beta2: args.beta2,
        eps: args.adam_eps,
        weight_decay: args.weight_decay,
        clip_norm: (args.clip > 0.0).then_some(args.clip),
        warmup: args.warmup,
    };
    anyhow::ensure!(args.steps >= 1, "--steps: at least 1 (0 steps would write an untrained bundle)");
    anyhow::ensure!(args.lr > 0.0 && args.lr.is_finite(), "--lr must be positive, got {}", args.lr);
    anyhow::ensure!((0.0..1.0).contains(&args.beta1) && (0.0..1.0).contains(&args.beta2), "--beta1 and --beta2 must be in [0, 1)");
    for (flag, v) in [("--weight-decay", args.weight_decay), ("--adam-eps", args.adam_eps), ("--clip", args.clip)] {
        anyhow::ensure!(v.is_finite() && v >= 0.0, "{flag}: must be a finite number >= 0, got {v}");
    }
    let opts = TrainOptions {
        images: args.images,
        textures: args.textures,
        out: args.out,
        steps: args.steps,
        seed: args.seed,
        adam,
        checkpoint_every: args.checkpoint_every,
        checkpoint: args.checkpoint,
        resume: args.resume,
        fixed_batch: args.fixed_batch,
        log_every: args.log_every,
        progress: !args.no_progress,
        command: std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" "),
        force: args.force,
        horizon: args.horizon,
    };
    // Before anything is loaded: a refused --out costs nothing (a missing bundle is reported
    // by the loader, naming its bundle.yaml).
    if args.bundle.is_dir() {
        glad_edge::train::output::check_out(&args.bundle, &opts.out, opts.force)?;
    }
    let mut trainer = Trainer::load(&args.bundle, args.batch, &rt)?;
    let report = trainer.train(&opts)?;
    let first = report.losses.first().copied().unwrap_or(f64::NAN);
    let last = report.losses.last().copied().unwrap_or(f64::NAN);
    println!(
        "{}",
        serde_json::json!({
            "out": report.out,
            "checkpoint": report.checkpoint,
            "steps": report.steps,
            "start_step": report.start_step,
            "first_loss": first,
            "final_loss": last,
            "seconds": report.seconds,
            "steps_per_second": report.steps_per_second,
        })
    );
    Ok(())
}

fn main() -> ExitCode {
    glad_edge::logging::init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
