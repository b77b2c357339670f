//! `glad teach FOLDER --out BUNDLE`: a closed GLAD bundle for a new part from a folder of good
//! images, in one command and without Python. The stages are the recipe of the shipped texture
//! bundles, run in process:
//!
//! 1. split: every fifth image (in name order) is held out for validation;
//! 2. train: ATP fine-tuning of the base bundle's UNet on the rest, for as many steps as the
//!    time budget leaves (a short probe measures the steps per second first);
//! 3. bank: the patch bank of the training images;
//! 4. tune: T, tau, v and the map reference on the validation normals plus synthetic anomalies;
//! 5. calibrate: the verdict threshold from the validation normals, with the false-alarm rate it
//!    guarantees and the share of the synthetic anomalies it flags;
//! 6. pack: the closed bundle at `--out`, and a report (JSON and HTML with a gallery) beside it.
//!
//! Each finished stage is recorded in `<out>.teach/state.json`; `--resume` continues after the
//! last one (training resumes from its checkpoint). Images of any size are resized to the
//! model's resolution by the one decoder, as every command and the station do.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser};
use serde::{Deserialize, Serialize};

use crate::files;
use crate::runtime::RuntimeConfig;
use crate::train::{AdamWConfig, TrainOptions, Trainer};

/// The shipped base bundle (relative to the working folder; the package installs it under
/// /usr/share/glad-edge/bundles).
pub const DEFAULT_BASE: &str = "onnx/ldm64";

#[derive(Debug, Clone, Args)]
pub struct TeachArgs {
    /// Folder of good images of the part (searched recursively; a station's
    /// `<dataset>/<camera>/train/good` as it is). Any size: they are resized to the model's.
    pub images: PathBuf,
    /// The closed bundle to write (must not exist).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The base bundle whose UNet is fine-tuned (it must hold training graphs, `train/`).
    #[arg(long, default_value = DEFAULT_BASE, value_name = "DIR")]
    pub base: PathBuf,
    /// Time budget in minutes; the training steps are planned to fit it.
    #[arg(long, default_value_t = 20.0, value_name = "M", value_parser = super::parse_finite)]
    pub minutes: f32,
    /// Continue an interrupted teach from `<out>.teach/`.
    #[arg(long)]
    pub resume: bool,
    /// Threads of ONNX Runtime's pool.
    #[arg(long, default_value_t = 2, value_name = "N", value_parser = super::parse_threads)]
    pub threads: usize,
    /// Texture images pasted into the synthetic anomalies (DTD in GLAD); default: shuffled
    /// tiles of the part's own images.
    #[arg(long, value_name = "DIR")]
    pub textures: Option<PathBuf>,
    /// Pick the threshold for this false-alarm rate (order statistic, 95 % confidence) instead
    /// of the largest validation score x 1.1.
    #[arg(long, value_name = "RATE", value_parser = super::parse_finite)]
    pub false_alarm_rate: Option<f32>,
    /// At most this many ATP steps, whatever the budget allows.
    #[arg(long, default_value_t = 3000, value_name = "N")]
    pub max_steps: u64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

const STAGES: [&str; 6] = ["split", "train", "bank", "tune", "calibrate", "pack"];
/// Share of the budget the training gets; the rest is for bank, tune and calibrate.
const TRAIN_SHARE: f64 = 0.5;
/// Probe steps that measure the training speed.
const PROBE_STEPS: u64 = 4;

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    done: Vec<String>,
    seconds: Vec<(String, f64)>,
    train_steps: u64,
    steps_per_second: f64,
}

struct Work {
    dir: PathBuf,
    state: State,
}

impl Work {
    fn path(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    fn done(&self, stage: &str) -> bool {
        self.state.done.iter().any(|d| d == stage)
    }
    fn finish(&mut self, stage: &str, seconds: f64) -> Result<()> {
        self.state.done.push(stage.to_string());
        self.state.seconds.push((stage.to_string(), seconds));
        files::write_atomic(&self.path(), serde_json::to_string_pretty(&self.state)?.as_bytes())
    }
    fn train_dir(&self) -> PathBuf {
        self.dir.join("split/train")
    }
    fn val_dir(&self) -> PathBuf {
        self.dir.join("split/validation")
    }
    fn bundle(&self) -> PathBuf {
        self.dir.join("bundle")
    }
}

/// Parses a sub-command's flags exactly as its command line would (its defaults included).
fn sub_args<T: Args>(args: &[String]) -> Result<T> {
    #[derive(Parser)]
    struct Wrap<T: Args> {
        #[command(flatten)]
        inner: T,
    }
    let argv = std::iter::once("glad".to_string()).chain(args.iter().cloned());
    Ok(Wrap::<T>::try_parse_from(argv).map_err(|e| anyhow::anyhow!("internal flags {args:?}: {e}"))?.inner)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Stage 1: the validation split (every fifth image by name), copied into the work folder.
fn split(images: &Path, work: &Work) -> Result<(usize, usize)> {
    let walk = files::images(&[images.to_path_buf()]);
    for m in walk.messages() {
        tracing::warn!("{m}");
    }
    let mut all = walk.files.clone();
    all.sort();
    // Four validation images at least (what tune needs), so twenty in all.
    if all.len() < 20 {
        bail!("{}: {} images found, teach needs at least 20 good images (about 200 recommended)", images.display(), all.len());
    }
    for d in [work.train_dir(), work.val_dir()] {
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).with_context(|| format!("{}: cannot create", d.display()))?;
    }
    let (mut t, mut v) = (0, 0);
    for (i, f) in all.iter().enumerate() {
        let to_val = i % 5 == 4;
        let dir = if to_val { work.val_dir() } else { work.train_dir() };
        // Names made unique by index: the folder may hold equal names in subfolders.
        let name = format!("{i:05}-{}", f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        let to = dir.join(name);
        if std::fs::hard_link(f, &to).is_err() {
            std::fs::copy(f, &to).with_context(|| format!("cannot copy {} to {}", f.display(), to.display()))?;
        }
        if to_val {
            v += 1;
        } else {
            t += 1;
        }
    }
    Ok((t, v))
}

/// Stage 2: ATP fine-tuning, with the number of steps planned from a measured probe and
/// extended while the stage's budget lasts (the first steps run slower than the rest).
///
/// The base is first packed into the work folder (a closed copy: models it shares with
/// sibling bundles come in under `shared/`), so the trained bundle, a copy of it, is whole
/// wherever the work folder is.
fn train(args: &TeachArgs, work: &mut Work, budget_s: f64) -> Result<()> {
    let t_stage = Instant::now();
    let base = work.dir.join("base");
    if !base.is_dir() {
        crate::bundle::pack::pack(&args.base, &base).with_context(|| format!("base bundle {}", args.base.display()))?;
    }
    let rt = RuntimeConfig { threads: args.threads, ..RuntimeConfig::default() };
    let ckpt = work.dir.join("atp.ckpt");
    let mut trainer = Trainer::load(&base, 8, &rt).with_context(|| format!("base bundle {}", args.base.display()))?;
    let (images, out) = (work.train_dir(), work.bundle());
    let opts = |steps: u64, resume: bool| TrainOptions {
        images: images.clone(),
        textures: args.textures.clone(),
        out: out.clone(),
        steps,
        seed: args.seed,
        adam: AdamWConfig { lr: 1e-4, warmup: 30, clip_norm: Some(1.0), ..AdamWConfig::default() },
        checkpoint_every: 50,
        checkpoint: Some(ckpt.clone()),
        resume: (resume && ckpt.is_file()).then(|| ckpt.clone()),
        fixed_batch: false,
        log_every: 50,
        progress: true,
        command: format!("glad teach {} --base {}", args.images.display(), args.base.display()),
        force: true,
        horizon: Some(300),
    };
    let max_steps = args.max_steps.max(PROBE_STEPS + 1);
    if work.state.train_steps == 0 {
        let probe = trainer.train(&opts(PROBE_STEPS, args.resume))?;
        let sps = probe.steps_per_second.max(1e-3);
        let left = (budget_s - t_stage.elapsed().as_secs_f64()).max(0.0);
        work.state.train_steps = ((left * sps) as u64).clamp(PROBE_STEPS + 1, max_steps);
        work.state.steps_per_second = sps;
        files::write_atomic(&work.path(), serde_json::to_string_pretty(&work.state)?.as_bytes())?;
        tracing::info!(
            steps_per_second = format!("{sps:.2}"),
            steps = work.state.train_steps,
            budget_s = format!("{budget_s:.0}"),
            "teach: ATP steps planned"
        );
    }
    for _ in 0..3 {
        let rep = trainer.train(&opts(work.state.train_steps, true))?;
        work.state.steps_per_second = rep.steps_per_second;
        let left = budget_s - t_stage.elapsed().as_secs_f64();
        let more = (left.max(0.0) * rep.steps_per_second) as u64;
        if work.state.train_steps >= max_steps || more < 20 {
            break;
        }
        work.state.train_steps = (work.state.train_steps + more).min(max_steps);
        files::write_atomic(&work.path(), serde_json::to_string_pretty(&work.state)?.as_bytes())?;
        tracing::info!(
            steps_per_second = format!("{:.2}", rep.steps_per_second),
            steps = work.state.train_steps,
            "teach: ATP extended to fill the budget"
        );
    }
    // The training graphs, the base's README and the base's hash list (its UNet has changed)
    // stay behind; pack writes the bundle's own list.
    let b = work.bundle();
    let _ = std::fs::remove_dir_all(b.join("train"));
    for f in ["README.md", crate::bundle::pack::HASH_FILE, crate::bundle::sign::SIG_FILE] {
        let _ = std::fs::remove_file(b.join(f));
    }
    Ok(())
}

/// What the report says about the threshold.
#[derive(Debug, Serialize)]
struct Rates {
    threshold: f32,
    rule: String,
    validation_normals: usize,
    /// The false-alarm rate guaranteed with `confidence` (order statistic).
    false_alarm_rate_at_most: f64,
    confidence: f64,
    /// Synthetic anomalies of the tuning set above the threshold (they chose the parameters,
    /// so this is an optimistic estimate of the detection rate).
    synthetic_flagged: usize,
    synthetic_total: usize,
}

fn rates(work: &Work) -> Result<Rates> {
    let m = crate::bundle::Manifest::read(&work.bundle())?;
    let cal = m.calibration.context("the calibrate stage wrote no calibration")?;
    let tune: serde_json::Value = serde_json::from_slice(&std::fs::read(work.dir.join("tune/tune.json"))?)?;
    let rows = tune["chosen_images"].as_array().cloned().unwrap_or_default();
    let scores = |anomalous: bool| -> Vec<f64> {
        rows.iter().filter(|r| r["anomalous"].as_bool() == Some(anomalous)).filter_map(|r| r["score"].as_f64()).collect()
    };
    let normals = scores(false);
    let anomalies = scores(true);
    let rank = normals.iter().filter(|&&x| x <= f64::from(cal.threshold)).count().max(1);
    Ok(Rates {
        threshold: cal.threshold,
        rule: cal.rule.clone(),
        validation_normals: cal.normal_count,
        false_alarm_rate_at_most: crate::eval::threshold::guaranteed_rate(normals.len().max(1), rank.min(normals.len().max(1)), 0.95),
        confidence: 0.95,
        synthetic_flagged: anomalies.iter().filter(|&&x| x > f64::from(cal.threshold)).count(),
        synthetic_total: anomalies.len(),
    })
}

fn write_report(args: &TeachArgs, work: &Work, report_dir: &Path) -> Result<serde_json::Value> {
    std::fs::create_dir_all(report_dir.join("gallery")).with_context(|| format!("{}: cannot create", report_dir.display()))?;
    let tune: serde_json::Value = serde_json::from_slice(&std::fs::read(work.dir.join("tune/tune.json"))?)?;
    let rates = rates(work)?;
    let manifest = crate::bundle::Manifest::read(&args.out)?;
    let json = serde_json::json!({
        "bundle": args.out,
        "base": args.base,
        "images": args.images,
        "stages": work.state.seconds,
        "train": { "steps": work.state.train_steps, "steps_per_second": work.state.steps_per_second, "horizon": 300, "batch": 8 },
        "chosen": tune["chosen"],
        "defaults": manifest.defaults,
        "fidelity": tune["fidelity"],
        "rates": rates,
    });
    files::write_atomic(&report_dir.join("report.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    // Gallery: up to 6 normal and 6 anomalous panels of the chosen point.
    let mut shown = Vec::new();
    let gallery = files::sorted_images(&work.dir.join("tune/gallery")).unwrap_or_default();
    for want_good in [true, false] {
        for p in gallery.iter().filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("good_") == want_good)).take(6) {
            let to = report_dir.join("gallery").join(p.file_name().expect("a file"));
            std::fs::copy(p, &to).with_context(|| format!("cannot copy {}", p.display()))?;
            shown.push(to.file_name().expect("a file").to_string_lossy().into_owned());
        }
    }
    let stages: String = work.state.seconds.iter().map(|(n, s)| format!("<tr><td>{n}</td><td>{s:.0} s</td></tr>")).collect();
    let imgs: String = shown.iter().map(|n| format!("<figure><img src=\"gallery/{n}\"><figcaption>{n}</figcaption></figure>")).collect();
    let html = format!(
        "<!doctype html><meta charset=utf-8><title>glad teach: {out}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 10px;text-align:left}}figure{{display:inline-block;margin:4px}}img{{image-rendering:pixelated;width:384px}}</style>\
         <h1>glad teach: {out}</h1><p>from {images} on base {base}</p>\
         <h2>Threshold</h2><p>{thr:.6} ({rule})</p><p>False alarms: at most {far:.1} % with 95 % confidence ({n} validation normals). \
         Synthetic anomalies flagged: {fl} of {tot} (the tuning set's; optimistic).</p>\
         <h2>Chosen parameters</h2><pre>{chosen}</pre><h2>Reconstruction fidelity</h2><pre>{fid}</pre>\
         <h2>Stages</h2><table>{stages}</table><p>ATP: {steps} steps at {sps:.2} steps/s</p><h2>Gallery (input, map, reconstruction, mask)</h2>{imgs}",
        out = args.out.display(),
        images = args.images.display(),
        base = args.base.display(),
        thr = rates.threshold,
        rule = rates.rule,
        far = 100.0 * rates.false_alarm_rate_at_most,
        n = rates.validation_normals,
        fl = rates.synthetic_flagged,
        tot = rates.synthetic_total,
        chosen = serde_json::to_string_pretty(&tune["chosen"])?,
        fid = serde_json::to_string_pretty(&tune["fidelity"])?,
        steps = work.state.train_steps,
        sps = work.state.steps_per_second,
    );
    files::write_atomic(&report_dir.join("report.html"), html.as_bytes())?;
    Ok(json)
}

pub fn run(args: TeachArgs) -> Result<bool> {
    if !(args.minutes > 0.0 && args.minutes <= 24.0 * 60.0) {
        bail!("--minutes: must be in (0, 1440], got {}", args.minutes);
    }
    if args.out.exists() {
        bail!("{}: already exists; teach writes a new bundle", args.out.display());
    }
    if !args.images.is_dir() {
        bail!("{}: not a folder of good images", args.images.display());
    }
    let mut dir = args.out.as_os_str().to_owned();
    dir.push(".teach");
    let dir = PathBuf::from(dir);
    let mut report_dir = args.out.as_os_str().to_owned();
    report_dir.push(".report");
    let report_dir = PathBuf::from(report_dir);
    let state = if args.resume {
        let p = dir.join("state.json");
        let bytes = std::fs::read(&p).with_context(|| format!("{}: nothing to resume (no teach state)", p.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("{}: not a teach state", p.display()))?
    } else {
        if dir.exists() {
            bail!("{}: an earlier teach left its work here: --resume to continue it, or remove the folder", dir.display());
        }
        State::default()
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let mut work = Work { dir, state };
    let budget = f64::from(args.minutes) * 60.0;
    let t_start = Instant::now();
    let spent_before: f64 = work.state.seconds.iter().map(|(_, s)| s).sum();
    let threads = args.threads.to_string();
    for (i, stage) in STAGES.iter().enumerate() {
        if work.done(stage) {
            tracing::info!("teach: stage {}/{} {stage}: done before", i + 1, STAGES.len());
            continue;
        }
        let spent = spent_before + t_start.elapsed().as_secs_f64();
        tracing::info!(
            "teach: stage {}/{} {stage} ({:.0} s spent, about {:.0} s of the budget left)",
            i + 1,
            STAGES.len(),
            spent,
            (budget - spent).max(0.0)
        );
        let t0 = Instant::now();
        // The flags every sub-command shares: the bundle being made, the threads, the images.
        let on = |images: PathBuf| -> Vec<String> {
            vec!["--bundle".into(), s(&work.bundle()), "--threads".into(), threads.clone(), "--images".into(), s(&images)]
        };
        match *stage {
            "split" => {
                let (t, v) = split(&args.images, &work)?;
                tracing::info!(train = t, validation = v, "teach: split");
            }
            // What is left of the training share (at least a tenth of the budget).
            "train" => train(&args, &mut work, (budget * TRAIN_SHARE - spent).max(budget * 0.1))?,
            "bank" => {
                super::bank::run(sub_args(&on(work.train_dir()))?)?;
            }
            "tune" => {
                let normals = files::images(&[work.val_dir()]).len();
                let mut flags = on(work.val_dir());
                flags.extend([
                    "--anomalies".into(),
                    (2 * normals).to_string(),
                    "--grid-denoise-step".into(),
                    "100,200,300".into(),
                    "--grid-v".into(),
                    "0,0.5,1".into(),
                    "--grid-reference".into(),
                    "reconstruction,bank,union".into(),
                    "--write-defaults".into(),
                    "--out".into(),
                    s(&work.dir.join("tune")),
                ]);
                if let Some(t) = &args.textures {
                    flags.extend(["--textures".into(), s(t)]);
                }
                super::tune::run(sub_args(&flags)?)?;
            }
            "calibrate" => {
                let mut flags = on(work.val_dir());
                flags.extend(["--write-bundle".into(), "--write".into(), s(&work.dir.join("station.yaml"))]);
                if let Some(r) = args.false_alarm_rate {
                    flags.extend(["--false-alarm-rate".into(), r.to_string()]);
                }
                super::calibrate::run(sub_args(&flags)?)?;
            }
            "pack" => {
                let r = crate::bundle::pack::pack(&work.bundle(), &args.out)?;
                tracing::info!(files = r.files, bytes = r.bytes, out = %args.out.display(), "teach: packed");
            }
            _ => unreachable!("every stage is handled"),
        }
        work.finish(stage, t0.elapsed().as_secs_f64())?;
        crate::files::crash_point(&format!("teach-after-{stage}"));
    }
    let json = write_report(&args, &work, &report_dir)?;
    let total: f64 = work.state.seconds.iter().map(|(_, s)| s).sum();
    println!("{}", serde_json::to_string_pretty(&json)?);
    eprintln!(
        "taught {} in {:.1} min: closed bundle {}, report {}",
        args.images.display(),
        total / 60.0,
        args.out.display(),
        report_dir.join("report.html").display()
    );
    Ok(true)
}
