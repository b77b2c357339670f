//! GLAD's [`Models`] on a loaded [`Bundle`]: tensor names, conventions and batching of each
//! role, with the wall time spent inside ONNX Runtime per stage.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use ndarray::{concatenate, s, Array1, Array3, Array4, ArrayView4, Axis, Ix4};

use crate::bundle::{BackboneSpec, Bundle, EncoderOutput, TimestepType};
use crate::glad::features::{min_cosine_distance, tokens_per_image, top_k_mean};
use crate::glad::{Models, Tokens};
use crate::runtime::{Bind, Input, Model, ScoringGraphs};

/// Time spent in each model role (ONNX Runtime calls only).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ModelTimes {
    pub encode: Duration,
    pub unet: Duration,
    pub decode: Duration,
    pub adp_backbone: Duration,
    pub backbone: Duration,
    /// The scoring graphs (`runtime.scoring: onnx`); zero on the Rust path.
    pub scoring: Duration,
}

impl ModelTimes {
    pub fn total(&self) -> Duration {
        self.encode + self.unet + self.decode + self.adp_backbone + self.backbone + self.scoring
    }
}

pub struct OnnxModels<'b> {
    pub bundle: &'b mut Bundle,
    pub times: ModelTimes,
    /// `[uncond; cond]` context rows, cached per batch size.
    context: Option<(usize, Array3<f32>)>,
    /// The scoring graphs, when the engine scores inside ONNX Runtime: for every map and ADP
    /// score (`true`), or only for symmetric final-map layers of at least
    /// `AUTO_CPU_MIN_TOKENS` tokens on both sides (`false`, CPU `auto`).
    scoring: Option<(&'b mut ScoringGraphs, bool)>,
}

fn to4(a: ndarray::ArrayD<f32>, what: &str) -> Result<Array4<f32>> {
    let shape = a.shape().to_vec();
    a.into_dimensionality::<Ix4>().with_context(|| format!("{what}: expected a 4-D output, got {shape:?}"))
}

/// Checks a model output at run time: the shape the manifest promised (`None`: any size) and
/// finite values. One line naming the model and the tensor.
fn check_output(model: &Model, name: &str, a: &ndarray::ArrayD<f32>, want: &[Option<usize>]) -> Result<()> {
    let ok = a.ndim() == want.len() && a.shape().iter().zip(want).all(|(&g, w)| w.is_none_or(|w| w == g));
    if !ok {
        let dims: Vec<String> = want.iter().map(|w| w.map_or("*".into(), |w| w.to_string())).collect();
        anyhow::bail!(
            "model {} ({}) output `{name}` has shape {:?} at run time, expected [{}] from the manifest",
            model.role(),
            model.path().display(),
            a.shape(),
            dims.join(",")
        );
    }
    crate::glad::checked::check_finite(a.iter(), model.role(), &format!("`{name}`"))
}

fn timed<T>(slot: &mut Duration, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let t0 = Instant::now();
    let r = f();
    *slot += t0.elapsed();
    r
}

fn run_backbone(model: &mut Model, spec: &BackboneSpec, images: ArrayView4<'_, f32>, last_only: bool) -> Result<Vec<Vec<Tokens>>> {
    let names: Vec<&str> = if last_only {
        vec![spec.outputs.last().expect("validated: at least one output").as_str()]
    } else {
        spec.outputs.iter().map(String::as_str).collect()
    };
    let outs = model.run(&[(spec.input.as_str(), Input::F32(images.into_dyn()))], &names)?;
    let b = images.shape()[0];
    for (out, name) in outs.iter().zip(&names) {
        let want = match spec.layout {
            crate::glad::features::Layout::Tokens => {
                let g = spec.resolution / spec.patch.max(1);
                vec![Some(b), Some(1 + g * g), None]
            }
            crate::glad::features::Layout::FeatureMap => vec![Some(b), None, None, None],
        };
        check_output(model, name, out, &want)?;
    }
    let mut per_image: Vec<Vec<Tokens>> = (0..b).map(|_| Vec::with_capacity(names.len())).collect();
    for (out, name) in outs.iter().zip(&names) {
        for (i, t) in tokens_per_image(out.view(), spec.layout, name)?.into_iter().enumerate() {
            per_image[i].push(t);
        }
    }
    Ok(per_image)
}

impl<'b> OnnxModels<'b> {
    pub fn new(bundle: &'b mut Bundle) -> Self {
        OnnxModels { bundle, times: ModelTimes::default(), context: None, scoring: None }
    }

    /// Computes the min-cosine maps and ADP scores with `scoring` (`None`: glad's Rust code;
    /// `Some((graphs, false))`: the graphs for large symmetric layers only).
    pub fn with_scoring(mut self, scoring: Option<(&'b mut ScoringGraphs, bool)>) -> Self {
        self.scoring = scoring;
        self
    }

    /// Takes the cached `[uncond; cond]` rows for batch `b` out of the cache (built on first
    /// use); `eps_pair` puts them back after the UNet call instead of copying them every step.
    fn take_context(&mut self, b: usize) -> Option<Array3<f32>> {
        let (uncond, cond) = self.bundle.prompt.as_ref()?;
        match self.context.take() {
            Some((n, c)) if n == b => Some(c),
            _ => {
                let rows: Vec<_> = std::iter::repeat_n(uncond.view(), b).chain(std::iter::repeat_n(cond.view(), b)).collect();
                Some(concatenate(Axis(0), &rows).expect("same shapes"))
            }
        }
    }
}

impl Models for OnnxModels<'_> {
    fn encode(&mut self, x: ArrayView4<'_, f32>) -> Result<(Array4<f32>, Array4<f32>)> {
        let (c, h) = self.bundle.latent_shape();
        let (Some(enc), Some(spec)) = (self.bundle.vae_encoder.as_mut(), self.bundle.manifest.models.vae_encoder.as_ref()) else {
            return Ok((x.to_owned(), Array4::zeros(x.raw_dim())));
        };
        let names: Vec<&str> = spec.outputs.iter().map(String::as_str).collect();
        let outs = timed(&mut self.times.encode, || enc.run(&[(spec.input.as_str(), Input::F32(x.into_dyn()))], &names))?;
        let ch = if spec.output == EncoderOutput::Moments { 2 * c } else { c };
        for (out, name) in outs.iter().zip(&names) {
            check_output(enc, name, out, &[Some(x.shape()[0]), Some(ch), Some(h), Some(h)])?;
        }
        let mut outs = outs.into_iter().map(|a| to4(a, "vae_encoder"));
        match spec.output {
            EncoderOutput::MeanLogvar => {
                let (mean, logvar) = (outs.next().expect("2 outputs")?, outs.next().expect("2 outputs")?);
                Ok((mean, logvar.mapv(|l| (0.5 * l).exp())))
            }
            EncoderOutput::MeanStd => Ok((outs.next().expect("2 outputs")?, outs.next().expect("2 outputs")?)),
            EncoderOutput::Moments => {
                // diffusers' DiagonalGaussianDistribution: mean, logvar = chunk(2); logvar clamped to [-30, 20].
                let m = outs.next().expect("1 output")?;
                let c = m.shape()[1] / 2;
                let mean = m.slice(s![.., ..c, .., ..]).to_owned();
                let std = m.slice(s![.., c.., .., ..]).mapv(|l| (0.5 * l.clamp(-30.0, 20.0)).exp());
                Ok((mean, std))
            }
        }
    }

    fn scaling_factor(&self) -> f32 {
        self.bundle.manifest.latent.as_ref().map_or(1.0, |l| l.scaling_factor)
    }

    fn eps_pair(&mut self, z: ArrayView4<'_, f32>, t: i64) -> Result<(Array4<f32>, Array4<f32>)> {
        let b = z.shape()[0];
        let ctx = self.take_context(b);
        let spec = &self.bundle.manifest.models.unet;
        let ts_spec = self.bundle.unet.input(&spec.timestep).expect("validated").clone();
        // With a prompt, one call on [z, z] with [uncond, cond]; without, one call on z.
        let n = if ctx.is_some() { 2 * b } else { b };
        let sample = if ctx.is_some() { concatenate(Axis(0), &[z, z])? } else { z.to_owned() };
        let ts_len = match ts_spec.shape.as_slice() {
            [] => None,
            [d] if *d == 1 => Some(1),
            _ => Some(n),
        };
        let ts_i64 = ts_len.map_or_else(
            || Array1::from_elem(1, t).into_dyn().into_shape_with_order(vec![]).unwrap(),
            |k| Array1::from_elem(k, t).into_dyn(),
        );
        let ts_f32 = ts_i64.mapv(|v| v as f32);
        let mut inputs = vec![(spec.sample.as_str(), Input::F32(sample.view().into_dyn()))];
        inputs.push((
            spec.timestep.as_str(),
            match spec.timestep_type {
                TimestepType::Int64 => Input::I64(ts_i64.view()),
                TimestepType::Float32 => Input::F32(ts_f32.view()),
            },
        ));
        if let (Some(name), Some(c)) = (spec.context.as_deref(), ctx.as_ref()) {
            inputs.push((name, Input::F32(c.view().into_dyn())));
        }
        let out = if self.bundle.unet.io_binding() {
            // IoBinding: the prompt rows are bound once per batch size (on a GPU provider they
            // stay on the device), the output goes into a preallocated buffer of the sample's shape.
            let out_shape = sample.shape().to_vec();
            let binds: Vec<(&str, Bind<'_>)> = inputs
                .into_iter()
                .map(|(name, input)| {
                    (name, if spec.context.as_deref() == Some(name) { Bind::Kept(input, b as u64) } else { Bind::Each(input) })
                })
                .collect();
            timed(&mut self.times.unet, || self.bundle.unet.run_bound(&binds, &[(spec.output.as_str(), &out_shape)]))
        } else {
            let out = timed(&mut self.times.unet, || self.bundle.unet.run(&inputs, &[spec.output.as_str()]));
            drop(inputs);
            out
        };
        let paired = ctx.is_some();
        if let Some(c) = ctx {
            self.context = Some((b, c));
        }
        let out = out?;
        let (c, h) = self.bundle.latent_shape();
        check_output(&self.bundle.unet, &spec.output, &out[0], &[Some(n), Some(c), Some(h), Some(h)])?;
        let e = to4(out.into_iter().next().expect("1 output"), "unet")?;
        ensure!(e.shape()[0] == n, "unet returned batch {} for {n}", e.shape()[0]);
        if paired {
            Ok((e.slice(s![..b, .., .., ..]).to_owned(), e.slice(s![b.., .., .., ..]).to_owned()))
        } else {
            Ok((e.clone(), e))
        }
    }

    fn decode(&mut self, z: ArrayView4<'_, f32>) -> Result<Array4<f32>> {
        let (Some(dec), Some(spec)) = (self.bundle.vae_decoder.as_mut(), self.bundle.manifest.models.vae_decoder.as_ref()) else {
            return Ok(z.to_owned());
        };
        let out = timed(&mut self.times.decode, || dec.run(&[(spec.input.as_str(), Input::F32(z.into_dyn()))], &[spec.output.as_str()]))?;
        let r = self.bundle.manifest.resolution;
        check_output(dec, &spec.output, &out[0], &[Some(z.shape()[0]), Some(3), Some(r), Some(r)])?;
        to4(out.into_iter().next().expect("1 output"), "vae_decoder")
    }

    fn adp_tokens(&mut self, images: ArrayView4<'_, f32>) -> Result<Vec<Tokens>> {
        let spec = self.bundle.adp_backbone_spec().clone();
        let model = match self.bundle.adp_backbone.as_mut() {
            Some(m) => m,
            None => &mut self.bundle.backbone,
        };
        let per_image = timed(&mut self.times.adp_backbone, || run_backbone(model, &spec, images, true))?;
        Ok(per_image.into_iter().map(|mut v| v.pop().expect("one layer")).collect())
    }

    fn map_tokens(&mut self, images: ArrayView4<'_, f32>) -> Result<Vec<Vec<Tokens>>> {
        let spec = self.bundle.manifest.models.backbone.clone();
        timed(&mut self.times.backbone, || run_backbone(&mut self.bundle.backbone, &spec, images, false))
    }

    fn cosine_maps(&mut self, p: &Tokens, q: &Tokens, both: bool) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        let large = both && p.data.nrows().min(q.data.nrows()) >= super::AUTO_CPU_MIN_TOKENS;
        match self.scoring.as_mut() {
            Some((g, all)) if *all || large => {
                let (m1, m2) = timed(&mut self.times.scoring, || g.cosine_maps(p.data.view(), q.data.view()))?;
                Ok((m1, both.then_some(m2)))
            }
            _ => Ok((min_cosine_distance(p, q), both.then(|| min_cosine_distance(q, p)))),
        }
    }

    fn adp_score(&mut self, a: &Tokens, r: &Tokens, k: usize) -> Result<(Vec<f32>, f32)> {
        match self.scoring.as_mut() {
            Some((g, true)) => timed(&mut self.times.scoring, || g.adp_score(a.data.view(), r.data.view(), k)),
            _ => {
                let map = min_cosine_distance(a, r);
                let score = top_k_mean(&map, k);
                Ok((map, score))
            }
        }
    }
}
