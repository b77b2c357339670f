//! `glad info`: what a bundle holds and how this machine runs it.

use anyhow::Result;

use super::Settings;
use crate::runtime;

pub fn run(settings: &Settings) -> Result<()> {
    let bundle = settings.load_bundle()?;
    let m = &bundle.manifest;
    println!("bundle      {} ({})", m.name, bundle.dir.display());
    println!("closed      {}", crate::bundle::pack::closure_line(&bundle.dir, m));
    if !m.description.is_empty() {
        println!("description {}", m.description);
    }
    println!("space       {:?}, resolution {}", m.space, m.resolution);
    if let Some(l) = &m.latent {
        println!("latent      {} channels, factor {}, scaling factor {}", l.channels, l.factor, l.scaling_factor);
    }
    println!(
        "onnxruntime {} ({})",
        runtime::library_version(),
        runtime::library_path().map(|p| p.display().to_string()).unwrap_or_default()
    );
    // The precision is the weights' (initialisers), or TensorRT's mixed precision.
    for model in bundle.models() {
        println!(
            "model       {:<13} {} on {}, {}{}",
            model.role(),
            model.path().display(),
            model.provider(),
            model.precision(),
            // only the UNet's DDIM steps use the binding
            if model.io_binding() && model.role() == "unet" { ", IoBinding (DDIM steps)" } else { "" }
        );
        for t in model.inputs() {
            println!("              in  {t}");
        }
        for t in model.outputs() {
            println!("              out {t}");
        }
    }
    let s = &m.scheduler;
    println!(
        "scheduler   {:?} beta {}..{}, {} train steps, steps_offset {}, set_alpha_to_one {}",
        s.beta_schedule, s.beta_start, s.beta_end, s.train_timesteps, s.steps_offset, s.set_alpha_to_one
    );
    let params = settings.params(&bundle)?;
    println!("parameters  {}", serde_json::to_string(&params)?);
    println!("scoring     {}", crate::engine::resolve_scoring(settings.config.runtime.scoring, &bundle, &params));
    if let Some(p) = &m.provenance {
        println!("provenance  {}", serde_json::to_string(p)?);
    }
    Ok(())
}
