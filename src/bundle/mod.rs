//! Model bundles: a folder with a manifest, ONNX models and prompt embeddings. Loading one
//! checks every model's tensors against the manifest and against what GLAD needs, and refuses
//! a bad bundle with one line naming the file and the tensor.

pub mod edit;
mod manifest;
pub mod pack;
mod profiles;
mod validate;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ndarray::Array3;

pub use manifest::{
    BackboneSpec, DecoderSpec, EncoderOutput, EncoderSpec, LatentSpec, Manifest, ModelsSpec, PromptSpec, Space, TimestepType, UnetSpec,
};
pub use profiles::tensorrt_profiles;

use crate::runtime::{Model, RuntimeConfig};

/// A loaded, validated bundle.
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub vae_encoder: Option<Model>,
    pub unet: Model,
    pub vae_decoder: Option<Model>,
    pub backbone: Model,
    /// `None`: ADP uses `backbone`.
    pub adp_backbone: Option<Model>,
    /// `(uncond, cond)`, each `[1, L, D]`; `None` for an unconditional UNet.
    pub prompt: Option<(Array3<f32>, Array3<f32>)>,
}

fn read_embedding(path: &Path) -> Result<Array3<f32>> {
    let a: ndarray::ArrayD<f32> =
        ndarray_npy::read_npy(path).map_err(|e| anyhow::anyhow!("{}: cannot read a float32 .npy prompt embedding: {e}", path.display()))?;
    let shape = a.shape().to_vec();
    a.into_dimensionality().map_err(|_| anyhow::anyhow!("{}: prompt embedding has shape {shape:?}, expected [1,L,D]", path.display()))
}

impl Bundle {
    pub fn load(dir: &Path, rt: &RuntimeConfig) -> Result<Bundle> {
        let manifest = Manifest::read(dir)?;
        let m = &manifest;
        let mpath = dir.join(Manifest::FILE);
        // Structure of the manifest itself.
        match m.space {
            Space::Latent => {
                if m.latent.is_none() || m.models.vae_encoder.is_none() || m.models.vae_decoder.is_none() {
                    bail!(
                        "{}: key `space`: a latent bundle needs `latent`, `models.vae_encoder` and `models.vae_decoder`",
                        mpath.display()
                    );
                }
            }
            Space::Pixel => {
                if m.latent.is_some() || m.models.vae_encoder.is_some() || m.models.vae_decoder.is_some() {
                    bail!("{}: key `space`: a pixel bundle has no `latent`, `models.vae_encoder` or `models.vae_decoder`", mpath.display());
                }
            }
        }
        if m.models.unet.context.is_some() != m.prompt.is_some() {
            bail!(
                "{}: key `prompt`: a UNet with a `context` input needs `prompt` (cond, uncond), one without must not have it",
                mpath.display()
            );
        }
        let prompt = match &m.prompt {
            Some(p) => Some((read_embedding(&dir.join(&p.uncond))?, read_embedding(&dir.join(&p.cond))?)),
            None => None,
        };
        let prompt_dims = prompt.as_ref().map(|(u, _)| (u.shape()[1], u.shape()[2]));
        let profiles = tensorrt_profiles(m, prompt_dims, rt.execution.tensorrt.max_batch);
        let load = |role: &str, file: &Path| -> Result<Model> {
            let profile = profiles.iter().find(|(r, _)| *r == role).map(|(_, p)| p);
            rt.load_model_with_profile(role, &dir.join(file), profile)
        };
        let vae_encoder = m.models.vae_encoder.as_ref().map(|s| load("vae_encoder", &s.file)).transpose()?;
        let unet = load("unet", &m.models.unet.file)?;
        let vae_decoder = m.models.vae_decoder.as_ref().map(|s| load("vae_decoder", &s.file)).transpose()?;
        let backbone = load("backbone", &m.models.backbone.file)?;
        let adp_backbone = match &m.models.adp_backbone {
            Some(s) if s != &m.models.backbone => Some(load("adp_backbone", &s.file)?),
            _ => None,
        };
        let bundle = Bundle { dir: dir.to_path_buf(), manifest, vae_encoder, unet, vae_decoder, backbone, adp_backbone, prompt };
        validate::check(&bundle).with_context(|| format!("bundle {}", dir.display()))?;
        Ok(bundle)
    }

    /// The ADP backbone's manifest entry (the final-map one unless set).
    pub fn adp_backbone_spec(&self) -> &BackboneSpec {
        self.manifest.models.adp_backbone.as_ref().unwrap_or(&self.manifest.models.backbone)
    }

    /// Latent `(channels, grid side)`: the VAE's, or the image's for a pixel bundle.
    pub fn latent_shape(&self) -> (usize, usize) {
        match &self.manifest.latent {
            Some(l) => (l.channels, self.manifest.resolution / l.factor),
            None => (3, self.manifest.resolution),
        }
    }

    pub fn models(&self) -> Vec<&Model> {
        let mut v: Vec<&Model> = Vec::new();
        v.extend(self.vae_encoder.as_ref());
        v.push(&self.unet);
        v.extend(self.vae_decoder.as_ref());
        v.push(&self.backbone);
        v.extend(self.adp_backbone.as_ref());
        v
    }
}

/// SHA-256 prefix over the bundle's files (manifest, models, weights, embeddings), in name
/// order: the `bundle_hash` of every station record.
pub fn content_hash(dir: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list bundle", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default().as_bytes());
        h.update(std::fs::read(&f).with_context(|| format!("{}: cannot read", f.display()))?);
    }
    Ok(h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect())
}
