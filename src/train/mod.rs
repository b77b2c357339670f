//! ATP training (GLAD.md, "ATP training") of a bundle's UNet on ONNX Runtime.
//!
//! The forward + backward pass is an ordinary ONNX graph exported offline by
//! scripts/export_train_graph.py (`train/train_b<B>.onnx`): it takes every weight as an input
//! and returns the loss and one gradient per trainable weight. This module feeds it: normal
//! images, anomalies synthesised from them ([`synth`]), their VAE latents and the ATP target
//! ([`atp`]); it keeps the weights and AdamW's state in Rust ([`adamw`]), checkpoints them
//! ([`checkpoint`]) and finally writes a copy of the bundle with the trained
//! `unet.weights.bin` ([`output`]).

pub mod adamw;
pub mod atp;
pub mod checkpoint;
pub mod data;
pub mod drawn;
pub mod output;
pub mod spec;
pub mod synth;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{s, Array1, Array3, Array4, ArrayD, ArrayViewD, Axis, IxDyn};
use serde::Serialize;

use crate::bundle::{Bundle, TimestepType};
use crate::engine::OnnxModels;
use crate::glad::schedule::AlphaBar;
use crate::glad::Models;
use crate::imaging;
use crate::runtime::{Input, Model, RuntimeConfig};

pub use adamw::{AdamW, AdamWConfig, StepInfo};
pub use checkpoint::Checkpoint;
pub use data::{Dataset, TextureDir};
pub use spec::TrainSpec;
pub use synth::TextureSource;

/// Everything a training run is asked to do.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Folder of normal images of one class (searched recursively).
    pub images: PathBuf,
    /// Texture images for the anomaly source (DTD in the reference); `None`: self-shuffle only.
    pub textures: Option<PathBuf>,
    /// Output bundle folder.
    pub out: PathBuf,
    /// Total optimiser steps (a resumed run continues to this count).
    pub steps: u64,
    pub seed: u64,
    pub adam: AdamWConfig,
    /// Write a checkpoint every N steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Checkpoint file; default `<out>.ckpt`.
    pub checkpoint: Option<PathBuf>,
    /// Resume from this checkpoint.
    pub resume: Option<PathBuf>,
    /// Reuse step 0's batch (images, anomalies, timesteps, noise) at every step: an overfitting
    /// check that the loss falls, not training.
    pub fixed_batch: bool,
    /// Log a line every N steps (0: never).
    pub log_every: u64,
    /// Show a progress bar.
    pub progress: bool,
    /// The command line, recorded in the output bundle's provenance.
    pub command: String,
    /// Replace `out` when it holds an earlier output of train.
    pub force: bool,
    /// ATP horizon (see `atp`): `None` is GLAD's, the scheduler's train timesteps.
    pub horizon: Option<usize>,
}

impl TrainOptions {
    pub fn checkpoint_path(&self) -> PathBuf {
        self.checkpoint.clone().unwrap_or_else(|| {
            let mut p = self.out.as_os_str().to_owned();
            p.push(".ckpt");
            PathBuf::from(p)
        })
    }

    /// The settings a resumed run must share with the run that wrote the checkpoint.
    fn recipe(&self, batch: usize) -> serde_json::Value {
        let mut r = serde_json::json!({
            "seed": self.seed,
            "batch": batch,
            "fixed_batch": self.fixed_batch,
            "lr": self.adam.lr,
            "warmup": self.adam.warmup,
            "beta1": self.adam.beta1,
            "beta2": self.adam.beta2,
            "eps": self.adam.eps,
            "weight_decay": self.adam.weight_decay,
            "clip_norm": self.adam.clip_norm,
        });
        // only when set, so that checkpoints of GLAD's horizon written before it existed still resume
        if let Some(h) = self.horizon {
            r["horizon"] = h.into();
        }
        r
    }
}

/// Weights and optimiser state of a run.
#[derive(Debug, Clone)]
pub struct RunState {
    /// Steps completed.
    pub step: u64,
    /// Every weight in train.yaml order: trainable, then frozen.
    pub weights: Vec<Vec<f32>>,
    /// AdamW state of the trainable weights.
    pub adam: AdamW,
}

/// One batch, ready for the training graph.
#[derive(Debug, Clone)]
pub struct PreparedBatch {
    pub atp: atp::AtpBatch,
    /// Samples that got a synthetic anomaly.
    pub anomalous: usize,
    /// Dataset indices of the batch's images.
    pub images: Vec<usize>,
}

/// What one step did.
#[derive(Debug, Clone, Copy)]
pub struct StepOutput {
    pub loss: f64,
    pub info: StepInfo,
    /// Samples of the batch that got a synthetic anomaly.
    pub anomalous: usize,
}

/// Summary of a finished run.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub out: PathBuf,
    pub checkpoint: PathBuf,
    pub start_step: u64,
    pub steps: u64,
    /// Loss of every step this run took.
    pub losses: Vec<f64>,
    pub seconds: f64,
    pub steps_per_second: f64,
}

/// A bundle, its training graph for one batch size, and the bundle's weights.
pub struct Trainer {
    pub bundle: Bundle,
    pub spec: TrainSpec,
    pub graph: Model,
    pub batch: usize,
    ab: AlphaBar,
    /// ATP horizon: timesteps are drawn below it (`atp`); the train timesteps by default.
    horizon: usize,
    /// The `cond` embedding repeated over the batch.
    context: Option<Array3<f32>>,
    /// The bundle's weights (trainable, then frozen).
    initial: Vec<Vec<f32>>,
}

fn shape_i64(s: &[usize]) -> Vec<i64> {
    s.iter().map(|&d| d as i64).collect()
}

impl Trainer {
    /// Loads the bundle (every model, validated), `train/train.yaml`, the graph for `batch`
    /// and the weights, and checks the graph's tensors against the spec.
    pub fn load(bundle_dir: &Path, batch: usize, rt: &RuntimeConfig) -> Result<Trainer> {
        ensure!(batch >= 1, "--batch must be at least 1");
        let bundle = Bundle::load(bundle_dir, rt)?;
        let spec = TrainSpec::read(bundle_dir)?;
        let ypath = TrainSpec::path(bundle_dir);
        let y = ypath.display();
        if spec.unet != bundle.manifest.models.unet.file {
            bail!(
                "{y}: key `unet`: the spec is for {}, the bundle's UNet is {}",
                spec.unet.display(),
                bundle.manifest.models.unet.file.display()
            );
        }
        let (c, side) = bundle.latent_shape();
        if spec.latent != [c, side, side] {
            bail!("{y}: key `latent`: {:?}, but the bundle's latent is [{c}, {side}, {side}]", spec.latent);
        }
        let entry = spec.graph(batch).map_err(|e| anyhow::anyhow!("{y}: {e}"))?.clone();
        let gpath = bundle_dir.join(TrainSpec::DIR).join(&entry.file);
        let graph = rt.load_model("train", &gpath)?;
        let g = gpath.display();
        let expect_input = |name: &str, dtype: &str, shape: &[i64]| -> Result<()> {
            let t = graph.input(name).with_context(|| format!("{g}: no input `{name}`"))?;
            if t.dtype != dtype || t.shape != shape {
                bail!("{g}: input `{name}` is {t}, expected {dtype}{shape:?}");
            }
            Ok(())
        };
        for e in spec.tensors() {
            expect_input(&e.name, "float32", &shape_i64(&e.shape))?;
        }
        let b = batch as i64;
        let lat: Vec<i64> = [b, c as i64, side as i64, side as i64].into();
        expect_input(&spec.inputs.sample, "float32", &lat)?;
        expect_input(&spec.inputs.target, "float32", &lat)?;
        let ts_dtype = match spec.inputs.timestep_type {
            TimestepType::Int64 => "int64",
            TimestepType::Float32 => "float32",
        };
        expect_input(&spec.inputs.timestep, ts_dtype, &[b])?;
        // onnx-ad declares the seed count symbolic (`nadj`): [1] or [?]
        if expect_input(&spec.inputs.seed, "float32", &[-1]).is_err() {
            expect_input(&spec.inputs.seed, "float32", &[1])?;
        }
        let context = match (&spec.inputs.context, &bundle.prompt) {
            (Some(name), Some((_, cond))) => {
                let (l, d) = (cond.shape()[1], cond.shape()[2]);
                expect_input(name, "float32", &[b, l as i64, d as i64])?;
                Some(cond.broadcast((batch, l, d)).context("cond embedding")?.to_owned())
            }
            (Some(name), None) => bail!("{y}: key `inputs.context`: the graph takes `{name}` but the bundle has no prompt"),
            (None, _) => None,
        };
        if graph.output(&spec.loss).is_none() {
            bail!("{g}: no output `{}`", spec.loss);
        }
        for e in &spec.trainable {
            let grad = e.grad.as_deref().expect("checked by TrainSpec::read");
            let t = graph.output(grad).with_context(|| format!("{g}: no gradient output `{grad}` for `{}`", e.name))?;
            // weight.shape + [nadj] (symbolic, 1 at run time)
            let static_numel: i64 = t.shape.iter().filter(|&&d| d >= 0).product();
            if static_numel != e.numel() as i64 {
                bail!("{g}: gradient `{grad}` is {t}, expected {} values", e.numel());
            }
        }
        let initial = spec::read_weights(&bundle_dir.join(&spec.weights), spec.tensors())?;
        let ab = AlphaBar::new(&bundle.manifest.scheduler)?;
        let n: usize = spec.trainable.iter().map(|e| e.numel()).sum();
        tracing::info!(graph = %g, batch, trainable = spec.trainable.len(), values = n, frozen = spec.frozen.len(), "training graph loaded");
        let horizon = ab.len();
        Ok(Trainer { bundle, spec, graph, batch, ab, horizon, context, initial })
    }

    /// The bundle's weights with fresh optimiser state.
    pub fn fresh_state(&self, cfg: AdamWConfig) -> RunState {
        RunState { step: 0, weights: self.initial.clone(), adam: AdamW::new(cfg, self.spec.trainable.iter().map(|e| e.numel())) }
    }

    /// State from a checkpoint written by a run with the same recipe.
    fn resume_state(&self, path: &Path, cfg: AdamWConfig, recipe: &serde_json::Value) -> Result<RunState> {
        let ck = Checkpoint::load(path)?;
        let p = path.display();
        if let (Some(have), Some(want)) = (ck.header.recipe.as_object(), recipe.as_object()) {
            // both ways: a key only one side has (an optional setting) differs too
            for k in want.keys().chain(have.keys()) {
                let (h, w) = (have.get(k), want.get(k));
                if h != w {
                    let null = serde_json::Value::Null;
                    bail!(
                        "{p}: key `{k}`: the checkpoint was made with {}, this run has {}: resume with the same settings",
                        h.unwrap_or(&null),
                        w.unwrap_or(&null)
                    );
                }
            }
        }
        let names: Vec<(&str, usize)> = ck.header.tensors.iter().map(|t| (t.name.as_str(), t.len)).collect();
        let want: Vec<(&str, usize)> = self.spec.trainable.iter().map(|e| (e.name.as_str(), e.numel())).collect();
        if names != want {
            let first = names.iter().zip(&want).find(|(a, b)| a != b).map(|(a, _)| a.0).unwrap_or("(count)");
            bail!("{p}: its tensors differ from the training graph's trainable weights (first difference: `{first}`)");
        }
        let mut weights = ck.weights;
        weights.extend(self.initial[self.spec.trainable.len()..].iter().cloned());
        let adam = AdamW { cfg, m: ck.m, v: ck.v, step: ck.header.step };
        Ok(RunState { step: ck.header.step, weights, adam })
    }

    /// The latent distributions of every image of `data` (cached in `data`): the encoder is
    /// deterministic, so a normal image is encoded once, in chunks of the batch size in dataset
    /// order (the same chunks in every run, so a resumed run sees the same bits).
    fn ensure_encoded(&mut self, data: &Dataset) -> Result<()> {
        if data.encoded.borrow().as_ref().is_some_and(|(dir, _)| dir == &self.bundle.dir) {
            return Ok(());
        }
        let t0 = Instant::now();
        let r = self.bundle.manifest.resolution;
        let mut dists = Vec::with_capacity(data.len());
        let mut models = OnnxModels::new(&mut self.bundle);
        for chunk in (0..data.len()).collect::<Vec<_>>().chunks(self.batch) {
            let mut x = Array4::<f32>::zeros((chunk.len(), 3, r, r));
            for (i, &k) in chunk.iter().enumerate() {
                x.slice_mut(s![i, .., .., ..]).assign(&imaging::preprocess(&data.images[k], r));
            }
            let (mean, std) = models.encode(x.view())?;
            for i in 0..chunk.len() {
                dists.push((mean.slice(s![i, .., .., ..]).to_owned(), std.slice(s![i, .., .., ..]).to_owned()));
            }
        }
        tracing::info!(images = data.len(), seconds = t0.elapsed().as_secs_f64(), "normal images encoded");
        *data.encoded.borrow_mut() = Some((self.bundle.dir.clone(), dists));
        Ok(())
    }

    /// The ATP batch of data step `data_step`: images, their anomalies, latents, timesteps,
    /// noise and targets. A function of `(seed, data_step)` and the data.
    pub fn prepare(&mut self, data: &Dataset, textures: Option<&dyn TextureSource>, seed: u64, data_step: u64) -> Result<PreparedBatch> {
        self.ensure_encoded(data)?;
        let t0 = Instant::now();
        let b = self.batch;
        let r = self.bundle.manifest.resolution;
        // 1. images and their synthetic anomalies; only the anomalous ones need the encoder
        let idx = data.batch_indices(seed, data_step, b);
        let mut fresh: Vec<(usize, Array3<f32>)> = Vec::new();
        for (i, &k) in idx.iter().enumerate() {
            let img = &data.images[k];
            let mut rng = data::rng_for(seed, data::Purpose::Sample, data_step * b as u64 + i as u64);
            let syn = synth::synthesize(img, textures, None, &mut rng).with_context(|| format!("{}", data.paths[k].display()))?;
            if syn.anomalous {
                fresh.push((i, syn.image));
            }
        }
        let t_synth = t0.elapsed();
        // 2. latent distributions of [x; xa]: cached for x and for a normal xa (= x), encoded for the rest
        let (c, h) = self.bundle.latent_shape();
        let mut mean = Array4::<f32>::zeros((2 * b, c, h, h));
        let mut std = Array4::<f32>::zeros((2 * b, c, h, h));
        {
            let cache = data.encoded.borrow();
            let dists = &cache.as_ref().expect("encoded above").1;
            for (i, &k) in idx.iter().enumerate() {
                for j in [i, b + i] {
                    mean.slice_mut(s![j, .., .., ..]).assign(&dists[k].0);
                    std.slice_mut(s![j, .., .., ..]).assign(&dists[k].1);
                }
            }
        }
        let mut models = OnnxModels::new(&mut self.bundle);
        if !fresh.is_empty() {
            let mut xa = Array4::<f32>::zeros((fresh.len(), 3, r, r));
            for (j, (_, img)) in fresh.iter().enumerate() {
                xa.slice_mut(s![j, .., .., ..]).assign(img);
            }
            let (m, sd) = models.encode(xa.view())?;
            for (j, (i, _)) in fresh.iter().enumerate() {
                mean.slice_mut(s![b + i, .., .., ..]).assign(&m.slice(s![j, .., .., ..]));
                std.slice_mut(s![b + i, .., .., ..]).assign(&sd.slice(s![j, .., .., ..]));
            }
        }
        // 3.-5. sampled latents, timestep, noise, target
        let mut rng = data::rng_for(seed, data::Purpose::Step, data_step);
        let z = atp::sample_latent(mean.view(), std.view(), models.scaling_factor(), &mut rng);
        let (zn, za) = z.view().split_at(Axis(0), b);
        let atp = atp::draw(zn, za, &self.ab, self.horizon, &mut rng)?;
        tracing::debug!(synthesis_ms = t_synth.as_secs_f64() * 1e3, total_ms = t0.elapsed().as_secs_f64() * 1e3, "batch prepared");
        Ok(PreparedBatch { atp, anomalous: fresh.len(), images: idx })
    }

    /// The `cond` embedding repeated over the batch (the UNet's context input), if any.
    pub fn context(&self) -> Option<&Array3<f32>> {
        self.context.as_ref()
    }

    /// Runs the training graph: the loss and the gradient of every trainable weight (in
    /// train.yaml order, each `weight.shape + [1]`). `weights`: every weight, trainable then frozen.
    pub fn loss_and_grads(&mut self, weights: &[Vec<f32>], batch: &atp::AtpBatch) -> Result<(f64, Vec<ArrayD<f32>>)> {
        let t_i64 = Array1::from(batch.t.clone()).into_dyn();
        let t_f32 = t_i64.mapv(|v| v as f32);
        let seed_in = Array1::from_elem(1, 1.0f32).into_dyn();
        let mut inputs: Vec<(&str, Input<'_>)> = Vec::with_capacity(weights.len() + 5);
        ensure!(weights.len() == self.spec.trainable.len() + self.spec.frozen.len(), "{} weight tensors given", weights.len());
        for (e, w) in self.spec.tensors().zip(weights) {
            let view = ArrayViewD::from_shape(IxDyn(&e.shape), w).with_context(|| format!("tensor `{}`", e.name))?;
            inputs.push((e.name.as_str(), Input::F32(view)));
        }
        let si = &self.spec.inputs;
        inputs.push((si.sample.as_str(), Input::F32(batch.zt.view().into_dyn())));
        inputs.push((
            si.timestep.as_str(),
            match si.timestep_type {
                TimestepType::Int64 => Input::I64(t_i64.view()),
                TimestepType::Float32 => Input::F32(t_f32.view()),
            },
        ));
        if let (Some(name), Some(ctx)) = (&si.context, &self.context) {
            inputs.push((name.as_str(), Input::F32(ctx.view().into_dyn())));
        }
        inputs.push((si.target.as_str(), Input::F32(batch.target.view().into_dyn())));
        inputs.push((si.seed.as_str(), Input::F32(seed_in.view())));
        let mut names: Vec<&str> = vec![self.spec.loss.as_str()];
        names.extend(self.spec.trainable.iter().map(|e| e.grad.as_deref().expect("checked")));
        let mut outs = self.graph.run(&inputs, &names)?;
        let loss = outs[0].iter().next().copied().context("training graph: empty loss")? as f64;
        let grads = outs.split_off(1);
        Ok((loss, grads))
    }

    /// One optimiser step on the batch of data step `data_step`.
    pub fn step(
        &mut self,
        state: &mut RunState,
        data: &Dataset,
        textures: Option<&dyn TextureSource>,
        seed: u64,
        data_step: u64,
    ) -> Result<StepOutput> {
        let batch = self.prepare(data, textures, seed, data_step)?;
        // 6. forward + backward
        let (loss, mut outs) = self.loss_and_grads(&state.weights, &batch.atp)?;
        if !loss.is_finite() {
            bail!("step {}: the loss is {loss} (lower --lr?)", state.step + 1);
        }
        // 7. AdamW
        let n_train = self.spec.trainable.len();
        let mut grads: Vec<&mut [f32]> =
            outs.iter_mut().map(|g| g.as_slice_mut().context("gradient not contiguous")).collect::<Result<_>>()?;
        if let Some(bad) = grads.iter().position(|g| g.iter().any(|v| !v.is_finite())) {
            bail!("step {}: the gradient of `{}` is not finite (lower --lr?)", state.step + 1, self.spec.trainable[bad].name);
        }
        let mut params: Vec<&mut [f32]> = state.weights[..n_train].iter_mut().map(|w| w.as_mut_slice()).collect();
        let info = state.adam.update(&mut params, &mut grads);
        state.step += 1;
        Ok(StepOutput { loss, info, anomalous: batch.anomalous })
    }

    /// Trains as `opts` says, checkpointing on the way, and writes the output bundle.
    pub fn train(&mut self, opts: &TrainOptions) -> Result<TrainReport> {
        output::check_out(&self.bundle.dir, &opts.out, opts.force)?;
        let r = self.bundle.manifest.resolution;
        let data = Dataset::load(&opts.images, r)?;
        let textures = opts.textures.as_deref().map(TextureDir::open).transpose()?;
        let recipe = opts.recipe(self.batch);
        self.horizon = opts.horizon.unwrap_or(self.ab.len());
        atp::check_horizon(self.horizon, &self.ab)?;
        let ckpt = opts.checkpoint_path();
        let mut state = match &opts.resume {
            Some(p) => self.resume_state(p, opts.adam, &recipe)?,
            None => self.fresh_state(opts.adam),
        };
        let start = state.step;
        if start > opts.steps {
            bail!("{}: the checkpoint is at step {start}, beyond --steps {}", opts.resume.as_ref().expect("resumed").display(), opts.steps);
        }
        tracing::info!(images = data.len(), dir = %data.dir.display(), textures = textures.as_ref().map_or(0, |t| t.paths.len()), start, steps = opts.steps, batch = self.batch, "training");
        let bar = if opts.progress { ProgressBar::new(opts.steps) } else { ProgressBar::hidden() };
        bar.set_style(ProgressStyle::with_template("{elapsed_precise} {wide_bar} {pos}/{len} {msg}").expect("valid template"));
        bar.set_position(start);
        let t0 = Instant::now();
        let mut losses = Vec::new();
        let mut ema: Option<f64> = None;
        let tex: Option<&dyn TextureSource> = textures.as_ref().map(|t| t as &dyn TextureSource);
        while state.step < opts.steps {
            let k = state.step;
            let data_step = if opts.fixed_batch { 0 } else { k };
            let out = self.step(&mut state, &data, tex, opts.seed, data_step)?;
            losses.push(out.loss);
            let e = ema.map_or(out.loss, |e| 0.9 * e + 0.1 * out.loss);
            ema = Some(e);
            let rate = (state.step - start) as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("loss {:.4} (avg {e:.4}) {rate:.2} steps/s", out.loss));
            bar.inc(1);
            if opts.log_every > 0 && (state.step % opts.log_every == 0 || state.step == opts.steps) {
                tracing::info!(
                    step = state.step,
                    loss = out.loss,
                    loss_avg = e,
                    lr = out.info.lr,
                    grad_norm = out.info.grad_norm,
                    anomalous = out.anomalous,
                    steps_per_s = rate,
                    "step"
                );
            }
            if opts.checkpoint_every > 0 && state.step % opts.checkpoint_every == 0 && state.step < opts.steps {
                self.save_checkpoint(&state, &recipe, Some(out.loss), &ckpt)?;
            }
        }
        bar.finish_and_clear();
        let seconds = t0.elapsed().as_secs_f64();
        self.save_checkpoint(&state, &recipe, losses.last().copied(), &ckpt)?;
        let steps_per_second = (state.step - start) as f64 / seconds.max(1e-9);
        let provenance = output::Provenance {
            tool: format!("glad-edge train {}", env!("CARGO_PKG_VERSION")),
            command: opts.command.clone(),
            base_bundle: self.bundle.dir.display().to_string(),
            base_name: self.bundle.manifest.name.clone(),
            images: data.dir.display().to_string(),
            image_count: data.len(),
            textures: textures.as_ref().map(|t| t.dir.display().to_string()),
            seed: opts.seed,
            steps: state.step,
            batch: self.batch,
            fixed_batch: opts.fixed_batch,
            horizon: self.horizon,
            optimizer: opts.adam,
            resumed_from: opts.resume.as_ref().map(|p| format!("{} (step {start})", p.display())),
            first_loss: losses.first().copied(),
            final_loss: losses.last().copied(),
            mean_loss_last_10: (!losses.is_empty()).then(|| {
                let tail = &losses[losses.len().saturating_sub(10)..];
                tail.iter().sum::<f64>() / tail.len() as f64
            }),
            seconds,
            steps_per_second,
            finished_unix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        };
        let trained = &state.weights[..self.spec.trainable.len()];
        output::write_bundle(&self.bundle.dir, &opts.out, &self.spec, trained, &provenance, opts.force)?;
        tracing::info!(out = %opts.out.display(), steps = state.step, final_loss = ?losses.last(), seconds, "trained bundle written");
        Ok(TrainReport { out: opts.out.clone(), checkpoint: ckpt, start_step: start, steps: state.step, losses, seconds, steps_per_second })
    }

    fn save_checkpoint(&self, state: &RunState, recipe: &serde_json::Value, loss: Option<f64>, path: &Path) -> Result<()> {
        let n = self.spec.trainable.len();
        let ck = Checkpoint {
            header: checkpoint::Header {
                step: state.step,
                recipe: recipe.clone(),
                loss,
                tensors: self.spec.trainable.iter().map(|e| checkpoint::TensorInfo { name: e.name.clone(), len: e.numel() }).collect(),
                payload_sha256: String::new(),
            },
            weights: state.weights[..n].to_vec(),
            m: state.adam.m.clone(),
            v: state.adam.v.clone(),
        };
        ck.save(path)?;
        tracing::debug!(path = %path.display(), step = state.step, "checkpoint written");
        Ok(())
    }
}
