//! `train/train.yaml` (written by scripts/export_train_graph.py): the training graphs of a
//! bundle's UNet, and the layout of the weights in `unet.weights.bin`.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::bundle::TimestepType;
use crate::yaml::parse_yaml;

/// Input names of a training graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphInputs {
    pub sample: String,
    pub timestep: String,
    pub timestep_type: TimestepType,
    #[serde(default)]
    pub context: Option<String>,
    pub target: String,
    /// The loss seed (`adj_loss`), fed `[1.0]`.
    pub seed: String,
}

/// One training graph (one batch size: onnx-ad needs static shapes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphEntry {
    pub batch: usize,
    pub file: PathBuf,
    #[serde(default)]
    pub nodes: Option<usize>,
    #[serde(default)]
    pub bytes: Option<u64>,
}

/// One weight tensor: where it lives in the weights file and (trainable ones) its gradient output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    pub name: String,
    pub shape: Vec<usize>,
    /// Byte offset in the weights file.
    pub offset: u64,
    /// Length in bytes (4 per float32 value).
    pub length: u64,
    /// Gradient output of the training graph (trainable tensors only).
    #[serde(default)]
    pub grad: Option<String>,
}

impl TensorEntry {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSpec {
    pub format: u32,
    /// The inference UNet (external-data layout), relative to the bundle.
    pub unet: PathBuf,
    /// The raw float32 weights file, relative to the bundle.
    pub weights: PathBuf,
    pub dtype: String,
    pub inputs: GraphInputs,
    pub loss: String,
    /// Latent `[C, h, w]`.
    pub latent: Vec<usize>,
    /// Context `[L, D]`, or none for an unconditional UNet.
    #[serde(default)]
    pub context_shape: Option<Vec<usize>>,
    #[serde(default)]
    pub freeze: Option<String>,
    #[serde(default)]
    pub rewritten_ops: Vec<String>,
    pub graphs: Vec<GraphEntry>,
    pub trainable: Vec<TensorEntry>,
    #[serde(default)]
    pub frozen: Vec<TensorEntry>,
}

impl TrainSpec {
    pub const DIR: &'static str = "train";
    pub const FILE: &'static str = "train.yaml";

    pub fn path(bundle_dir: &Path) -> PathBuf {
        bundle_dir.join(Self::DIR).join(Self::FILE)
    }

    /// Reads and checks `<bundle>/train/train.yaml`.
    pub fn read(bundle_dir: &Path) -> Result<TrainSpec> {
        let path = Self::path(bundle_dir);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{}: cannot read the training spec (export it: python3 scripts/export_train_graph.py --bundle {} --batch N)",
                path.display(),
                bundle_dir.display()
            )
        })?;
        let spec: TrainSpec = parse_yaml(&path, &text)?;
        spec.check(&path)?;
        Ok(spec)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let p = path.display();
        if self.format != 1 {
            bail!("{p}: key `format`: unsupported training spec format {}, expected 1", self.format);
        }
        if self.dtype != "float32" {
            bail!("{p}: key `dtype`: only float32 weights are supported, got {}", self.dtype);
        }
        if self.latent.len() != 3 {
            bail!("{p}: key `latent`: expected [C, h, w], got {:?}", self.latent);
        }
        if self.graphs.is_empty() {
            bail!("{p}: key `graphs`: no training graph listed");
        }
        if self.trainable.is_empty() {
            bail!("{p}: key `trainable`: no trainable tensor listed");
        }
        let mut spans: Vec<(u64, u64, &str)> = Vec::new();
        for (list, key) in [(&self.trainable, "trainable"), (&self.frozen, "frozen")] {
            for e in list {
                if e.length != 4 * e.numel() as u64 {
                    bail!(
                        "{p}: key `{key}`: tensor `{}` has shape {:?} ({} values) but length {} bytes",
                        e.name,
                        e.shape,
                        e.numel(),
                        e.length
                    );
                }
                if key == "trainable" && e.grad.is_none() {
                    bail!("{p}: key `trainable`: tensor `{}` has no `grad` output", e.name);
                }
                spans.push((e.offset, e.offset + e.length, &e.name));
            }
        }
        spans.sort();
        for w in spans.windows(2) {
            if w[1].0 < w[0].1 {
                bail!("{p}: tensors `{}` and `{}` overlap in the weights file", w[0].2, w[1].2);
            }
        }
        Ok(())
    }

    /// The graph for batch size `batch`.
    pub fn graph(&self, batch: usize) -> Result<&GraphEntry> {
        self.graphs.iter().find(|g| g.batch == batch).with_context(|| {
            let have: Vec<String> = self.graphs.iter().map(|g| g.batch.to_string()).collect();
            format!(
                "no training graph for batch {batch} (exported: {}); add one with scripts/export_train_graph.py --batch {batch}",
                have.join(", ")
            )
        })
    }

    /// Every weight in feed order: trainable, then frozen.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorEntry> {
        self.trainable.iter().chain(self.frozen.iter())
    }

    /// Bytes the weights file must at least have.
    pub fn weights_len(&self) -> u64 {
        self.tensors().map(|e| e.offset + e.length).max().unwrap_or(0)
    }
}

/// Reads every tensor of `entries` from the raw float32 LE file `path`.
pub fn read_weights<'a>(path: &Path, entries: impl IntoIterator<Item = &'a TensorEntry>) -> Result<Vec<Vec<f32>>> {
    let mut f = std::fs::File::open(path).with_context(|| format!("{}: cannot open the weights file", path.display()))?;
    let size = f.metadata().with_context(|| format!("{}: cannot stat", path.display()))?.len();
    let mut out = Vec::new();
    for e in entries {
        if e.offset + e.length > size {
            bail!("{}: tensor `{}` ends at byte {} but the file has {size} bytes", path.display(), e.name, e.offset + e.length);
        }
        let mut buf = vec![0u8; e.length as usize];
        f.seek(SeekFrom::Start(e.offset))
            .and_then(|_| f.read_exact(&mut buf))
            .with_context(|| format!("{}: cannot read tensor `{}`", path.display(), e.name))?;
        out.push(buf.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect());
    }
    Ok(out)
}

/// Writes `dst`: a copy of `src` (a weights file) with the tensors of `entries` replaced by
/// `values`, through a temporary file and a rename.
pub fn write_weights(src: &Path, dst: &Path, entries: &[TensorEntry], values: &[Vec<f32>]) -> Result<()> {
    let mut bytes = std::fs::read(src).with_context(|| format!("{}: cannot read the weights file", src.display()))?;
    for (e, v) in entries.iter().zip(values) {
        let end = (e.offset + e.length) as usize;
        if end > bytes.len() || v.len() != e.numel() {
            bail!(
                "{}: tensor `{}` does not fit the weights file ({} values, ends at {end} of {} bytes)",
                src.display(),
                e.name,
                v.len(),
                bytes.len()
            );
        }
        for (dst, x) in bytes[e.offset as usize..end].chunks_exact_mut(4).zip(v) {
            dst.copy_from_slice(&x.to_le_bytes());
        }
    }
    write_atomic(dst, &bytes)
}

pub use crate::files::write_atomic;
