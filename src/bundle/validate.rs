//! Checks a loaded bundle's models against its manifest and GLAD's shape relations.

use anyhow::{bail, Result};

use super::{BackboneSpec, Bundle, EncoderOutput, TimestepType};
use crate::glad::features::Layout;
use crate::runtime::{Model, TensorSpec};

/// One expected dimension.
#[derive(Clone, Copy)]
enum Dim {
    /// The batch: must be dynamic.
    Batch,
    /// A static size (a dynamic one is accepted: the runtime checks at run time).
    Is(usize),
    /// Anything.
    Any,
}

fn show(dims: &[Dim]) -> String {
    let v: Vec<String> = dims
        .iter()
        .map(|d| match d {
            Dim::Batch => "B".into(),
            Dim::Is(n) => n.to_string(),
            Dim::Any => "*".into(),
        })
        .collect();
    format!("[{}]", v.join(","))
}

fn find<'a>(model: &'a Model, name: &str, output: bool) -> Result<&'a TensorSpec> {
    let (list, kind) = if output { (model.outputs(), "output") } else { (model.inputs(), "input") };
    list.iter().find(|t| t.name == name).ok_or_else(|| {
        let names: Vec<&str> = list.iter().map(|t| t.name.as_str()).collect();
        anyhow::anyhow!("{}: no {kind} `{name}` (the model has {})", model.path().display(), names.join(", "))
    })
}

/// Checks one tensor: element type, rank and every static dimension; `why` explains the sizes.
fn expect(model: &Model, name: &str, output: bool, dtype: &str, dims: &[Dim], why: &str) -> Result<Vec<i64>> {
    let t = find(model, name, output)?;
    let kind = if output { "output" } else { "input" };
    let file = model.path().display();
    if t.dtype != dtype {
        bail!("{file}: {kind} `{name}` has element type {}, expected {dtype}", t.dtype);
    }
    let bad = t.shape.len() != dims.len()
        || t.shape.iter().zip(dims).any(|(&got, &want)| match want {
            Dim::Batch => got >= 0,
            Dim::Is(n) => got >= 0 && got as usize != n,
            Dim::Any => false,
        });
    if bad {
        let batch_static = dims.first().is_some_and(|d| matches!(d, Dim::Batch)) && t.shape.first().is_some_and(|&d| d >= 0);
        let hint = if batch_static && t.shape.len() == dims.len() { " (the batch dimension must be dynamic)" } else { "" };
        bail!("{file}: {kind} `{name}` has shape {}, expected {}{why}{hint}", fmt_shape(&t.shape), show(dims));
    }
    Ok(t.shape.clone())
}

fn fmt_shape(s: &[i64]) -> String {
    let v: Vec<String> = s.iter().map(|d| if *d < 0 { "?".into() } else { d.to_string() }).collect();
    format!("[{}]", v.join(","))
}

pub(super) fn check(b: &Bundle) -> Result<()> {
    use Dim::*;
    let m = &b.manifest;
    let r = m.resolution;
    let (c, h) = b.latent_shape();
    if let Some(l) = &m.latent {
        if l.factor == 0 || r % l.factor != 0 {
            bail!("key `latent.factor`: resolution {r} is not a multiple of the factor {}", l.factor);
        }
    }
    let lat_why = format!(" (latent grid = resolution {r} / factor {})", m.latent.as_ref().map_or(1, |l| l.factor));

    if let (Some(enc), Some(spec)) = (&b.vae_encoder, &m.models.vae_encoder) {
        expect(enc, &spec.input, false, "float32", &[Batch, Is(3), Is(r), Is(r)], "")?;
        let want = match spec.output {
            EncoderOutput::MeanLogvar | EncoderOutput::MeanStd => 2,
            EncoderOutput::Moments => 1,
        };
        if spec.outputs.len() != want {
            bail!("key `models.vae_encoder.outputs`: output kind {:?} takes {want} name(s), got {}", spec.output, spec.outputs.len());
        }
        let ch = if spec.output == EncoderOutput::Moments { 2 * c } else { c };
        for o in &spec.outputs {
            expect(enc, o, true, "float32", &[Batch, Is(ch), Is(h), Is(h)], &lat_why)?;
        }
    }
    let u = &m.models.unet;
    expect(&b.unet, &u.sample, false, "float32", &[Batch, Is(c), Is(h), Is(h)], &lat_why)?;
    expect(&b.unet, &u.output, true, "float32", &[Batch, Is(c), Is(h), Is(h)], &lat_why)?;
    let ts = find(&b.unet, &u.timestep, false)?;
    let ts_type = match u.timestep_type {
        TimestepType::Int64 => "int64",
        TimestepType::Float32 => "float32",
    };
    if ts.dtype != ts_type {
        bail!(
            "{}: input `{}` has element type {}, but the manifest's timestep_type is {ts_type}",
            b.unet.path().display(),
            u.timestep,
            ts.dtype
        );
    }
    if ts.shape.len() > 1 {
        bail!("{}: input `{}` has shape {}, expected a scalar or [B]", b.unet.path().display(), u.timestep, fmt_shape(&ts.shape));
    }
    if let (Some(ctx), Some((uncond, cond))) = (&u.context, &b.prompt) {
        if uncond.dim() != cond.dim() || uncond.shape()[0] != 1 {
            bail!("key `prompt`: cond {:?} and uncond {:?} must both be [1,L,D]", cond.shape(), uncond.shape());
        }
        let (l, d) = (cond.shape()[1], cond.shape()[2]);
        expect(&b.unet, ctx, false, "float32", &[Batch, Is(l), Is(d)], " (from the prompt embeddings)")?;
    }
    if let (Some(dec), Some(spec)) = (&b.vae_decoder, &m.models.vae_decoder) {
        expect(dec, &spec.input, false, "float32", &[Batch, Is(c), Is(h), Is(h)], &lat_why)?;
        expect(dec, &spec.output, true, "float32", &[Batch, Is(3), Is(r), Is(r)], "")?;
    }
    check_backbone(&b.backbone, &m.models.backbone)?;
    let adp = b.adp_backbone_spec();
    let adp_model = b.adp_backbone.as_ref().unwrap_or(&b.backbone);
    check_backbone(adp_model, adp)?;
    if adp.resolution != r {
        bail!(
            "{}: the ADP backbone takes {}px images but ADP feeds it decoded images of the bundle resolution {r}",
            adp_model.path().display(),
            adp.resolution
        );
    }
    if adp.layout == Layout::Tokens && r / adp.patch != h {
        bail!(
            "{}: ADP backbone grid {} (= {r} / patch {}) differs from the latent grid {h}: SAFF needs them equal for a ViT",
            adp_model.path().display(),
            r / adp.patch,
            adp.patch
        );
    }
    Ok(())
}

fn check_backbone(model: &Model, spec: &BackboneSpec) -> Result<()> {
    use Dim::*;
    let s = spec.resolution;
    expect(model, &spec.input, false, "float32", &[Batch, Is(3), Is(s), Is(s)], "")?;
    if spec.outputs.is_empty() {
        bail!("key `models.backbone.outputs`: at least one output is needed");
    }
    if spec.patch == 0 || s % spec.patch != 0 {
        bail!("key `models.backbone.patch`: resolution {s} is not a multiple of the patch {}", spec.patch);
    }
    for o in &spec.outputs {
        match spec.layout {
            Layout::Tokens => {
                let g = s / spec.patch;
                expect(model, o, true, "float32", &[Batch, Is(1 + g * g), Any], &format!(" (CLS + ({s}/{})^2 tokens)", spec.patch))?;
            }
            Layout::FeatureMap => {
                expect(model, o, true, "float32", &[Batch, Any, Any, Any], "")?;
            }
        }
    }
    Ok(())
}
