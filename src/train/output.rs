//! The output of a training run: a copy of the input bundle with the trained
//! `unet.weights.bin` and a `provenance.training` entry in `bundle.yaml`. It loads like any
//! other bundle (`glad info --bundle OUT`), and can be trained further (its `train/` comes along).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::adamw::AdamWConfig;
use super::spec::{self, TensorEntry, TrainSpec};
use crate::bundle::Manifest;

/// What `provenance.training` records.
#[derive(Debug, Clone, Serialize)]
pub struct Provenance {
    pub tool: String,
    pub command: String,
    pub base_bundle: String,
    pub base_name: String,
    pub images: String,
    pub image_count: usize,
    pub textures: Option<String>,
    pub seed: u64,
    pub steps: u64,
    pub batch: usize,
    pub fixed_batch: bool,
    /// ATP horizon: timesteps drawn below it, the anomaly whole at it (GLAD: train timesteps).
    pub horizon: usize,
    pub optimizer: AdamWConfig,
    pub resumed_from: Option<String>,
    pub first_loss: Option<f64>,
    pub final_loss: Option<f64>,
    pub mean_loss_last_10: Option<f64>,
    pub seconds: f64,
    pub steps_per_second: f64,
    pub finished_unix: u64,
}

fn copy_dir(src: &Path, dst: &Path, skip: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).with_context(|| format!("{}: cannot create folder", dst.display()))?;
    for entry in std::fs::read_dir(src).with_context(|| format!("{}: cannot list folder", src.display()))? {
        let entry = entry.with_context(|| format!("{}: cannot list folder", src.display()))?;
        let from = entry.path();
        if from == skip {
            continue;
        }
        let name = entry.file_name();
        // temporary leftovers of an interrupted export
        if name.to_string_lossy().starts_with(".export-") {
            continue;
        }
        let to = dst.join(&name);
        if from.is_dir() {
            copy_dir(&from, &to, skip)?;
        } else {
            std::fs::copy(&from, &to).with_context(|| format!("{}: cannot copy to {}", from.display(), to.display()))?;
        }
    }
    Ok(())
}

/// Whether `dir` holds a bundle written by `train` (only those are replaced).
fn is_train_output(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join(Manifest::FILE)) else { return false };
    let Ok(v) = serde_yaml::from_str::<serde_yaml::Value>(&text) else { return false };
    v.get("provenance").and_then(|p| p.get("training")).and_then(|t| t.get("tool")).is_some()
}

/// `path` made absolute without requiring it to exist: the longest existing ancestor
/// canonicalised (symbolic links resolved), the rest appended. `..` after a missing folder is
/// refused (it cannot be resolved).
fn resolve_path(path: &Path) -> Result<PathBuf> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().context("cannot read the working directory")?.join(path)
    };
    let mut existing = abs.as_path();
    let mut rest: Vec<&std::ffi::OsStr> = Vec::new();
    loop {
        if let Ok(c) = existing.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                if *part == ".." {
                    bail!("--out {}: `..` after a folder that does not exist", path.display());
                }
                if *part != "." {
                    out.push(part);
                }
            }
            return Ok(out);
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                existing = parent;
            }
            _ => bail!("--out {}: cannot resolve", path.display()),
        }
    }
}

/// Checks that `out` may receive the output bundle of `src`: not the input bundle, nor inside
/// it or around it (whether or not `out` exists yet); either absent or an earlier output of
/// train, which is replaced only with `force`.
pub fn check_out(src: &Path, out: &Path, force: bool) -> Result<()> {
    let src_abs = src.canonicalize().with_context(|| format!("{}: cannot resolve", src.display()))?;
    let out_abs = resolve_path(out)?;
    if out_abs == src_abs || src_abs.starts_with(&out_abs) || out_abs.starts_with(&src_abs) {
        bail!("--out {}: must not be the input bundle {} or inside it", out.display(), src.display());
    }
    if out.exists() {
        if !is_train_output(out) {
            bail!("--out {}: exists and is not a bundle written by train; remove it or choose another folder", out.display());
        }
        if !force {
            bail!("--out {}: holds an earlier output of train; pass --force to replace it", out.display());
        }
    }
    out.file_name().with_context(|| format!("--out {}: needs a folder name", out.display()))?;
    Ok(())
}

/// Writes the output bundle `out` (through a temporary folder and a rename).
pub fn write_bundle(src: &Path, out: &Path, spec: &TrainSpec, trained: &[Vec<f32>], prov: &Provenance, force: bool) -> Result<()> {
    check_out(src, out, force)?;
    let name = out.file_name().with_context(|| format!("--out {}: needs a folder name", out.display()))?.to_string_lossy().to_string();
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&parent).with_context(|| format!("{}: cannot create folder", parent.display()))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("{}: cannot remove", tmp.display()))?;
    }
    let weights_src = src.join(&spec.weights);
    copy_dir(src, &tmp, &weights_src)?;
    let entries: Vec<TensorEntry> = spec.trainable.clone();
    spec::write_weights(&weights_src, &tmp.join(&spec.weights), &entries, trained)?;

    let mpath = tmp.join(Manifest::FILE);
    let text = std::fs::read_to_string(&mpath).with_context(|| format!("{}: cannot read", mpath.display()))?;
    let mut m: serde_yaml::Value =
        serde_yaml::from_str(&text).with_context(|| format!("{}: not YAML", src.join(Manifest::FILE).display()))?;
    let map = m.as_mapping_mut().with_context(|| format!("{}: not a mapping", src.join(Manifest::FILE).display()))?;
    let base = map.get("provenance").cloned().unwrap_or(serde_yaml::Value::Null);
    map.insert("name".into(), name.clone().into());
    let mut p = serde_yaml::Mapping::new();
    p.insert("training".into(), serde_yaml::to_value(prov)?);
    p.insert("base".into(), base);
    map.insert("provenance".into(), serde_yaml::Value::Mapping(p));
    let header = format!("# Trained by `{}` from {} (see provenance.training).\n", prov.tool, prov.base_bundle);
    spec::write_atomic(&mpath, format!("{header}{}", serde_yaml::to_string(&m)?).as_bytes())?;

    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("{}: cannot replace the earlier output", out.display()))?;
    }
    std::fs::rename(&tmp, out).with_context(|| format!("{}: cannot rename to {}", tmp.display(), out.display()))
}
