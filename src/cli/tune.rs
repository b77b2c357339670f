//! `glad tune`: chooses T, K, tau, min_step, v (and the map reference) for a bundle on a
//! validation set that holds no test image: held-out normal images plus synthetic anomalies,
//! by turns made by `train`'s own anomaly synthesis (Perlin masks; shuffled-tile and texture
//! sources) and drawn onto the image (scratches, stains, holes: `train::drawn`), scored with
//! `glad eval`'s metrics. A coarse grid: one reconstruction per (T, K, tau,
//! min_step), scored for every (v, reference) from the same reconstruction.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use ndarray::{Array2, Array3, Array4, Axis};

use super::inspect::progress;
use super::{CommonArgs, ParamArgs, Settings};
use crate::engine::{backbone_channels, bank_dir};
use crate::eval::fidelity::Fidelity;
use crate::eval::score::{compute_metrics, gallery_panels, mask_at, Scored};
use crate::files as walk;
use crate::glad::bank::FeatureBank;
use crate::glad::{MapReference, ParamOverrides, Params};
use crate::imaging;
use crate::train::data::{rng_for, Purpose, TextureDir};
use crate::train::drawn;
use crate::train::synth::{synthesize, TextureSource};

#[derive(Debug, Clone, Args)]
pub struct TuneArgs {
    /// Held-out normal images (never test images), e.g. <class>/validation/good.
    #[arg(long, required = true, num_args = 1.., value_name = "PATH")]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub params: ParamArgs,
    /// Texture images for the synthetic anomalies' texture source (else shuffled tiles only).
    #[arg(long, value_name = "DIR")]
    pub textures: Option<PathBuf>,
    /// Synthetic anomalies, made from the normal images in turn (default: one per image).
    #[arg(long, value_name = "N")]
    pub anomalies: Option<usize>,
    /// How the synthetic anomalies are made, taken by turns: `draem` (train's ATP synthesis:
    /// texture or shuffled-tile pastes through Perlin masks) and `drawn` (scratches, stains and
    /// holes painted onto the image). Pastes alone favour reconstructions that copy the input,
    /// since an autoencoder reproduces a foreign texture poorly but a stain faithfully.
    #[arg(long, value_delimiter = ',', value_name = "LIST", default_value = "draem,drawn", value_parser = parse_synthesis)]
    pub synthesis: Vec<Synthesis>,
    /// T values to try (default: the bundle's T x 0.5, 0.75, 1).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub grid_denoise_step: Vec<usize>,
    /// K values to try (default: the bundle's K).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub grid_steps: Vec<usize>,
    /// tau values to try (0 = ADP off; default: 0 and quantiles 0.5 and 0.9 of the validation
    /// normals' ADP scores at the first step, from a tracing run).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub grid_tau: Vec<f32>,
    /// min_step values to try (default: the bundle's min_step).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub grid_min_step: Vec<usize>,
    /// v values to try (default: 0, 1).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub grid_v: Vec<f32>,
    /// Map references to try: reconstruction, bank, union (default: reconstruction, and
    /// union when the bundle has a bank).
    #[arg(long, value_delimiter = ',', value_name = "LIST", value_parser = parse_reference)]
    pub grid_reference: Vec<MapReference>,
    /// Images per engine call.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub batch: usize,
    /// Write the chosen values into the bundle's `defaults:` (bundle.yaml).
    #[arg(long)]
    pub write_defaults: bool,
    /// Write a station config (the --config file or defaults, with `glad:` set to the choice).
    #[arg(long, value_name = "FILE")]
    pub write: Option<PathBuf>,
    /// Report folder: tune.json (the ranked grid and the chosen point's reconstruction
    /// fidelity) and gallery/ (input | reconstruction | heatmap | mask of every validation
    /// image at the chosen point).
    #[arg(long, short = 'o', default_value = "out/tune", value_name = "DIR")]
    pub out: PathBuf,
}

/// A way of making validation anomalies (`--synthesis`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synthesis {
    Draem,
    Drawn,
}

fn parse_synthesis(s: &str) -> Result<Synthesis, String> {
    match s {
        "draem" => Ok(Synthesis::Draem),
        "drawn" => Ok(Synthesis::Drawn),
        _ => Err(format!("expected draem or drawn, got `{s}`")),
    }
}

fn parse_reference(s: &str) -> Result<MapReference, String> {
    match s {
        "reconstruction" => Ok(MapReference::Reconstruction),
        "bank" => Ok(MapReference::Bank),
        "union" => Ok(MapReference::Union),
        _ => Err(format!("expected reconstruction, bank or union, got `{s}`")),
    }
}

/// One grid point and what it scored.
#[derive(Debug, Clone)]
pub struct Trial {
    pub params: Params,
    pub image_auroc: f64,
    pub pixel_auroc: f64,
    pub pro: f64,
}

impl Trial {
    /// What the grid is ranked by: the mean of image AUROC, pixel AUROC and PRO.
    pub fn objective(&self) -> f64 {
        (self.image_auroc + self.pixel_auroc + self.pro) / 3.0
    }
}

/// The validation set: images `[N,3,R,R]`, labels and masks at `s` (None for normals).
struct ValSet {
    x: Array4<f32>,
    labels: Vec<bool>,
    /// `good`, or how the anomaly was made (`synthetic`: DRAEM, `drawn`): the gallery's prefix.
    kinds: Vec<&'static str>,
    masks: Vec<Option<Array2<bool>>>,
    names: Vec<PathBuf>,
}

/// Most memory the validation images may take (their tensors, held for the whole grid).
const MAX_VALIDATION_BYTES: u64 = 2 << 30;

/// `--anomalies`: at least one (the metrics are undefined without anomalies), and the
/// validation tensors within [`MAX_VALIDATION_BYTES`].
fn check_validation_size(normals: usize, anomalies: usize, r: usize) -> Result<()> {
    if anomalies == 0 {
        bail!("--anomalies: at least 1 (without anomalies every metric is undefined and no grid point can be chosen)");
    }
    let bytes = (normals as u64 + anomalies as u64).saturating_mul(3 * (r as u64) * (r as u64) * 4);
    if bytes > MAX_VALIDATION_BYTES {
        let most = (MAX_VALIDATION_BYTES / (3 * (r as u64) * (r as u64) * 4)).saturating_sub(normals as u64);
        bail!(
            "--anomalies: {anomalies} anomalies and {normals} normals at {r}x{r} would take {bytes} bytes, over the limit of {MAX_VALIDATION_BYTES}; use at most {most}"
        );
    }
    Ok(())
}

fn validation_set(
    files: &[PathBuf],
    r: usize,
    s: usize,
    anomalies: usize,
    synthesis: &[Synthesis],
    textures: Option<&dyn TextureSource>,
    seed: u64,
) -> Result<ValSet> {
    anyhow::ensure!(!synthesis.is_empty(), "--synthesis: name at least one of draem, drawn");
    let images: Vec<image::RgbImage> = files.iter().map(|p| imaging::load_rgb(p).map(|i| imaging::resize(&i, r))).collect::<Result<_>>()?;
    let n = images.len() + anomalies;
    let mut x = Array4::<f32>::zeros((n, 3, r, r));
    let (mut labels, mut kinds, mut masks, mut names) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, (img, p)) in images.iter().zip(files).enumerate() {
        x.index_axis_mut(Axis(0), i).assign(&imaging::preprocess(img, r));
        labels.push(false);
        kinds.push("good");
        masks.push(None);
        names.push(p.clone());
    }
    const MIN_AREA: f32 = 20.0; // pixels: a visible defect
    for k in 0..anomalies {
        let src = k % images.len();
        let how = synthesis[k % synthesis.len()];
        // Draw until the synthesis is anomalous with a visible mask (DRAEM's is normal with p = 0.5).
        let mut rng = rng_for(seed, Purpose::Sample, k as u64);
        let (image, mask) = (0..64)
            .map(|_| -> Result<Option<(Array3<f32>, Array2<f32>)>> {
                let drawn = match how {
                    Synthesis::Draem => {
                        let s = synthesize(&images[src], textures, None, &mut rng)?;
                        s.anomalous.then_some((s.image, s.mask))
                    }
                    Synthesis::Drawn => {
                        let d = drawn::draw(&images[src], &mut rng)?;
                        Some((d.image, d.mask))
                    }
                };
                Ok(drawn.filter(|(_, m)| m.sum() >= MIN_AREA))
            })
            .find_map(Result::transpose)
            .with_context(|| format!("no {how:?} anomaly of {} with a visible mask in 64 draws", files[src].display()))??;
        x.index_axis_mut(Axis(0), images.len() + k).assign(&image);
        labels.push(true);
        masks.push(Some(mask_at(&mask, s)));
        let tag = match how {
            Synthesis::Draem => "synthetic",
            Synthesis::Drawn => "drawn",
        };
        kinds.push(tag);
        names.push(PathBuf::from(format!("{tag}/{k:03}<-{}", files[src].display())));
    }
    Ok(ValSet { x, labels, kinds, masks, names })
}

fn or_default<T: Clone>(given: &[T], default: Vec<T>) -> Vec<T> {
    if given.is_empty() {
        default
    } else {
        given.to_vec()
    }
}

pub fn run(args: TuneArgs) -> Result<bool> {
    if args.batch == 0 || args.batch > 256 {
        bail!("--batch must be in 1..=256, got {}", args.batch);
    }
    let settings = Settings::new(&args.common, args.params.clone())?;
    let mut engine = {
        let bundle = settings.load_bundle()?;
        let mut base = settings.overrides(&bundle)?.resolve(bundle.manifest.models.backbone.resolution)?;
        base.reference = MapReference::Reconstruction;
        crate::engine::Engine::new(bundle, base)?
    };
    let base = engine.params.clone();
    let (r, s) = (engine.resolution(), base.backbone_resolution);
    let walk = walk::images(&args.images);
    if !walk.problems.is_empty() {
        bail!("{}", walk.messages().join("; "));
    }
    let files = walk.files;
    if files.len() < 4 {
        bail!("tune needs at least 4 validation images, found {} in {:?}", files.len(), args.images);
    }
    let textures = args.textures.as_deref().map(TextureDir::open).transpose()?;
    let anomalies = args.anomalies.unwrap_or(files.len());
    check_validation_size(files.len(), anomalies, r)?;
    let seed = args.params.seed.unwrap_or(settings.config.noise.seed);
    let val = validation_set(&files, r, s, anomalies, &args.synthesis, textures.as_ref().map(|t| t as &dyn TextureSource), seed)?;
    let n = val.labels.len();
    let noise_src = settings.noise()?;
    let noise = noise_src.draw(&(0..n).collect::<Vec<_>>(), engine.latent_shape())?;

    let bank = match FeatureBank::load(&bank_dir(&engine.bundle), &backbone_channels(&engine.bundle)?) {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::info!("no feature bank, the union reference is not tried: {e:#}");
            None
        }
    };
    let t0 = base.denoise_step;
    let grid_t = or_default(&args.grid_denoise_step, vec![t0 / 2, t0 * 3 / 4, t0]);
    let grid_k = or_default(&args.grid_steps, vec![base.steps]);
    let grid_min = or_default(&args.grid_min_step, vec![base.min_step]);
    let grid_v = or_default(&args.grid_v, vec![0.0, 1.0]);
    let mut default_refs = vec![MapReference::Reconstruction];
    if bank.is_some() {
        default_refs.push(MapReference::Union);
    }
    let grid_ref = or_default(&args.grid_reference, default_refs);
    if grid_ref.iter().any(|r| *r != MapReference::Reconstruction) && bank.is_none() {
        bail!("{}: the grid asks for a bank reference but the bundle has no bank (run `glad bank`)", bank_dir(&engine.bundle).display());
    }
    let grid_tau =
        if args.grid_tau.is_empty() { default_taus(&mut engine, &base, &val, &noise, args.batch)? } else { args.grid_tau.clone() };
    for &v in grid_v.iter().chain(&grid_tau) {
        if !v.is_finite() || v < 0.0 {
            bail!("grid values of tau and v must be finite and >= 0, got {v}");
        }
    }

    let mut recon_points: Vec<(usize, usize, f32, usize)> = Vec::new();
    for &t in &grid_t {
        for &k in &grid_k {
            for &tau in &grid_tau {
                for &m in &grid_min {
                    recon_points.push((t, k, tau, m));
                }
            }
        }
    }
    let pb = progress(recon_points.len() * n.div_ceil(args.batch), "tune");
    let mut trials = Vec::new();
    for &(t, k, tau, min_step) in &recon_points {
        let o = ParamOverrides { denoise_step: Some(t), steps: Some(k), tau: Some(tau), min_step: Some(min_step), ..Default::default() };
        let p = match base.to_overrides().merged(&o).resolve(s) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("grid point T={t} K={k} skipped: {e:#}");
                pb.inc(n.div_ceil(args.batch) as u64);
                continue;
            }
        };
        // One reconstruction per batch, scored for every (v, reference).
        let combos: Vec<(f32, MapReference)> = grid_v.iter().flat_map(|&v| grid_ref.iter().map(move |&r| (v, r))).collect();
        let mut scored: Vec<Vec<Scored>> = vec![Vec::new(); combos.len()];
        for start in (0..n).step_by(args.batch) {
            let end = (start + args.batch).min(n);
            let xb = val.x.slice_axis(Axis(0), (start..end).into());
            let nb = crate::glad::reconstruct::Noise {
                vae: noise.vae.slice_axis(Axis(0), (start..end).into()).to_owned(),
                eps: noise.eps.slice_axis(Axis(0), (start..end).into()).to_owned(),
            };
            let rec = engine.reconstruct_with(&p, xb, &nb)?;
            for (c, &(v, reference)) in combos.iter().enumerate() {
                let pc = Params { v, reference, ..p.clone() };
                let maps = engine.maps_with(&pc, xb, rec.images.view(), bank.as_ref())?;
                for (j, m) in maps.into_iter().enumerate() {
                    let i = start + j;
                    if !m.score.is_finite() {
                        bail!("{}: non-finite score at T={t} K={k} tau={tau}", val.names[i].display());
                    }
                    scored[c].push(Scored {
                        path: val.names[i].clone(),
                        defect: val.kinds[i].into(),
                        label: val.labels[i],
                        score: m.score,
                        adp_step: rec.adp[j].map(|a| a.step),
                        adp_trace: Vec::new(),
                        map: m.map,
                        mask: val.masks[i].clone(),
                    });
                }
            }
            pb.inc(1);
        }
        for ((v, reference), sc) in combos.into_iter().zip(scored) {
            let m = compute_metrics(&sc);
            trials.push(Trial {
                params: Params { v, reference, ..p.clone() },
                image_auroc: m.image_auroc.unwrap_or(0.0),
                pixel_auroc: m.pixel_auroc.unwrap_or(0.0),
                pro: m.pro.unwrap_or(0.0),
            });
        }
    }
    pb.finish_and_clear();
    if trials.is_empty() {
        bail!("no grid point could be evaluated");
    }
    trials.sort_by(|a, b| b.objective().total_cmp(&a.objective()));
    print!("{}", table(&trials, files.len(), anomalies));
    let best = &trials[0].params;
    let (fidelity, rows) = report(&mut engine, best, &val, &noise, bank.as_ref(), args.batch, &args.out)?;
    println!("chosen point: {}", fidelity.summary());
    let json = serde_json::json!({
        "normals": files.len(),
        "synthetic_anomalies": anomalies,
        "synthesis": args.synthesis.iter().map(|k| format!("{k:?}").to_lowercase()).collect::<Vec<_>>(),
        "chosen": { "denoise_step": best.denoise_step, "steps": best.steps, "tau": best.tau, "min_step": best.min_step, "v": best.v, "reference": format!("{:?}", best.reference).to_lowercase() },
        "fidelity": fidelity,
        // The chosen point's image scores on the validation set (gallery order).
        "chosen_images": rows,
        "grid": trials.iter().map(|t| serde_json::json!({
            "denoise_step": t.params.denoise_step, "steps": t.params.steps, "tau": t.params.tau, "min_step": t.params.min_step,
            "v": t.params.v, "reference": format!("{:?}", t.params.reference).to_lowercase(),
            "image_auroc": t.image_auroc, "pixel_auroc": t.pixel_auroc, "pro": t.pro, "objective": t.objective(),
        })).collect::<Vec<_>>(),
    });
    imaging::write_atomic(&args.out.join("tune.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    eprintln!("wrote {} and {}", args.out.join("tune.json").display(), args.out.join("gallery").display());
    let chosen = ParamOverrides {
        denoise_step: Some(best.denoise_step),
        steps: Some(best.steps),
        tau: Some(best.tau),
        min_step: Some(best.min_step),
        v: Some(best.v),
        reference: Some(best.reference),
        ..Default::default()
    };
    if args.write_defaults {
        let path = engine.bundle.dir.join("bundle.yaml");
        crate::bundle::edit::write_block(&path, "defaults", &engine.bundle.manifest.defaults.merged(&chosen))?;
        eprintln!("wrote the chosen defaults into {}", path.display());
        if engine.bundle.manifest.calibration.is_some() {
            eprintln!("note: {}'s calibration was made with the old defaults: run `glad calibrate --write-bundle` again", path.display());
        }
    }
    if let Some(path) = &args.write {
        let mut station = settings.config.clone();
        station.bundle = Some(settings.bundle_dir.clone());
        station.glad = station.glad.merged(&chosen);
        let text = format!(
            "# Station config written by `glad tune` ({} validation normals, {anomalies} synthetic anomalies).\n{}",
            files.len(),
            serde_yaml::to_string(&station)?
        );
        std::fs::write(path, text).with_context(|| format!("{}: cannot write station config", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(true)
}

/// The chosen point once more over the whole validation set: a gallery of panels and the
/// reconstruction's fidelity (input against reconstruction, on normals, inside and around the
/// synthetic defects).
fn report(
    engine: &mut crate::engine::Engine,
    p: &Params,
    val: &ValSet,
    noise: &crate::glad::reconstruct::Noise,
    bank: Option<&FeatureBank>,
    batch: usize,
    out: &std::path::Path,
) -> Result<(Fidelity, Vec<serde_json::Value>)> {
    let gallery = out.join("gallery");
    std::fs::create_dir_all(&gallery).with_context(|| format!("{}: cannot create the report folder", gallery.display()))?;
    let n = val.labels.len();
    let mut fidelity = Fidelity::default();
    let mut rows = Vec::new();
    for start in (0..n).step_by(batch) {
        let end = (start + batch).min(n);
        let xb = val.x.slice_axis(Axis(0), (start..end).into());
        let nb = crate::glad::reconstruct::Noise {
            vae: noise.vae.slice_axis(Axis(0), (start..end).into()).to_owned(),
            eps: noise.eps.slice_axis(Axis(0), (start..end).into()).to_owned(),
        };
        let rec = engine.reconstruct_with(p, xb, &nb)?;
        let maps = engine.maps_with(p, xb, rec.images.view(), bank)?;
        let tx = engine.backbone_tokens(xb)?;
        let tr = engine.backbone_tokens(rec.images.view())?;
        for (j, m) in maps.iter().enumerate() {
            let i = start + j;
            // a synthetic anomaly always has its mask; a normal image has none
            fidelity.add(&tx[j], &tr[j], val.masks[i].as_ref())?;
            let img = imaging::tensor_to_rgb(xb.index_axis(Axis(0), j));
            let panels = gallery_panels(&img, &m.map, Some(rec.images.index_axis(Axis(0), j)), val.masks[i].as_ref());
            imaging::save_png(&panels, &gallery.join(format!("{}_{i:03}.png", val.kinds[i])))?;
            rows.push(serde_json::json!({ "kind": val.kinds[i], "anomalous": val.labels[i], "score": m.score }));
        }
    }
    Ok((fidelity, rows))
}

/// Default tau grid: 0 (ADP off) and the 0.5 and 0.9 quantiles of every ADP score the
/// validation normals reach before min_step (a tracing run with tau above all of them).
fn default_taus(
    engine: &mut crate::engine::Engine,
    base: &Params,
    val: &ValSet,
    noise: &crate::glad::reconstruct::Noise,
    batch: usize,
) -> Result<Vec<f32>> {
    let p = Params { tau: f32::MAX, ..base.clone() };
    let mut scores = Vec::new();
    let normals: Vec<usize> = (0..val.labels.len()).filter(|&i| !val.labels[i]).collect();
    for chunk in normals.chunks(batch) {
        let xb = val.x.select(Axis(0), chunk);
        let nb = crate::glad::reconstruct::Noise { vae: noise.vae.select(Axis(0), chunk), eps: noise.eps.select(Axis(0), chunk) };
        let rec = engine.reconstruct_with(&p, xb.view(), &nb)?;
        scores.extend(rec.adp_trace.iter().flatten().map(|&(_, s)| s).filter(|s| s.is_finite() && *s > 0.0));
    }
    if scores.is_empty() {
        return Ok(vec![0.0]);
    }
    scores.sort_by(f32::total_cmp);
    let q = |f: f64| scores[((scores.len() - 1) as f64 * f).round() as usize];
    Ok(vec![0.0, q(0.5), q(0.9)])
}

fn table(trials: &[Trial], normals: usize, anomalies: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "validation: {normals} normal images, {anomalies} synthetic anomalies; ranked by mean(I-AUROC, P-AUROC, PRO)");
    let _ = writeln!(
        out,
        "{:>5} {:>3} {:>8} {:>8} {:>5} {:>14}  {:>7} {:>7} {:>7} {:>7}",
        "T", "K", "tau", "min_step", "v", "reference", "I-AUROC", "P-AUROC", "PRO", "mean"
    );
    for (i, t) in trials.iter().enumerate() {
        let p = &t.params;
        let _ = writeln!(
            out,
            "{:>5} {:>3} {:>8.5} {:>8} {:>5} {:>14}  {:>7.3} {:>7.3} {:>7.3} {:>7.3}{}",
            p.denoise_step,
            p.steps,
            p.tau,
            p.min_step,
            p.v,
            format!("{:?}", p.reference).to_lowercase(),
            t.image_auroc,
            t.pixel_auroc,
            t.pro,
            t.objective(),
            if i == 0 { "  <- chosen" } else { "" }
        );
    }
    out
}
