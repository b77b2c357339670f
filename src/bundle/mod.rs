//! Model bundles: a folder with a manifest, ONNX models and prompt embeddings. Loading one
//! checks every model's tensors against the manifest and against what GLAD needs, and refuses
//! a bad bundle with one line naming the file and the tensor.

pub mod edit;
mod manifest;
pub mod pack;
mod profiles;
pub mod sign;
pub mod tree;
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

/// Checks the files of the bundle in `dir` before anything is loaded from it: a closed bundle
/// (one with `MANIFEST.sha256`) must verify whole, and with `trusted_keys` it must also be
/// signed by one of them. An open bundle loads (with an INFO line saying its files are not
/// vouched for) unless keys are required.
pub fn check_files(dir: &Path, trusted_keys: &[PathBuf]) -> Result<()> {
    let started = std::time::Instant::now();
    if !trusted_keys.is_empty() {
        let key = sign::verify_signature(dir, trusted_keys)?;
        tracing::info!(bundle = %dir.display(), key = %key.display(), ms = started.elapsed().as_millis() as u64, "bundle verified whole and signed by a trusted key");
        return Ok(());
    }
    match pack::verify_whole(dir)? {
        None => {
            tracing::info!(bundle = %dir.display(), "open bundle (no {}): its files are not checked against a hash list", pack::HASH_FILE)
        }
        Some(v) if v.problems.is_empty() => {
            tracing::info!(bundle = %dir.display(), files = v.listed, ms = started.elapsed().as_millis() as u64, "closed bundle verified whole")
        }
        Some(v) => {
            let more = if v.problems.len() > 3 { format!(" and {} more", v.problems.len() - 3) } else { String::new() };
            bail!(
                "{}: this closed bundle does not match its {}: {}{more}; refusing to load it (`glad bundle verify {}` lists everything)",
                dir.display(),
                pack::HASH_FILE,
                v.problems.iter().take(3).cloned().collect::<Vec<_>>().join("; "),
                dir.display()
            );
        }
    }
    Ok(())
}

impl Bundle {
    /// Loads the bundle in `dir` (checking its files first: [`check_files`] with no keys).
    pub fn load(dir: &Path, rt: &RuntimeConfig) -> Result<Bundle> {
        Self::load_trusted(dir, rt, &[])
    }

    /// Loads the bundle in `dir`, which must be signed by one of `trusted_keys` when any are given.
    pub fn load_trusted(dir: &Path, rt: &RuntimeConfig, trusted_keys: &[PathBuf]) -> Result<Bundle> {
        let manifest = Manifest::read(dir)?;
        check_files(dir, trusted_keys)?;
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

/// SHA-256 prefix over every path below the bundle folder (relative name, then the file's
/// bytes; a link's target text; folders included, so a changed `bank/` changes it), in name
/// order: the `bundle_hash` of every station record. The signature file is left out: signing
/// a bundle does not change what it is.
pub fn content_hash(dir: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for e in tree::entries(dir).with_context(|| format!("{}: cannot list bundle", dir.display()))? {
        if e.rel == Path::new(sign::SIG_FILE) {
            continue;
        }
        h.update(e.name().as_bytes());
        h.update([0u8]);
        match &e.kind {
            tree::Kind::File(len) => {
                h.update(len.to_le_bytes());
                let p = dir.join(&e.rel);
                let mut f = std::fs::File::open(&p).with_context(|| format!("{}: cannot read", p.display()))?;
                loop {
                    let n = f.read(&mut buf).with_context(|| format!("{}: cannot read", p.display()))?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
            }
            tree::Kind::Link(t) => {
                h.update(b"link\0");
                h.update(t.to_string_lossy().as_bytes());
            }
            tree::Kind::Special => h.update(b"special"),
        }
    }
    Ok(h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect())
}
