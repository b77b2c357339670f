//! Resumable training checkpoints: the trainable weights, AdamW's moments, the step count and
//! the recipe they were made with. The random numbers of step `k` are a function of
//! `(seed, k)` alone, so a resumed run continues exactly where the interrupted one stopped.
//!
//! File layout: `GLADCKPT` (8 bytes), u32 LE format version, u64 LE header length, the header
//! as JSON, then per tensor in header order its weights, first moment and second moment as
//! float32 LE. The header carries the payload's SHA-256. Written to `<path>.tmp`, synced, then
//! renamed over `<path>`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"GLADCKPT";
const VERSION: u32 = 1;

/// One tensor's name and value count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorInfo {
    pub name: String,
    pub len: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Steps completed.
    pub step: u64,
    /// Settings a resumed run must share (seed, batch, optimiser, ...), as JSON.
    pub recipe: serde_json::Value,
    /// Loss of the last completed step.
    pub loss: Option<f64>,
    pub tensors: Vec<TensorInfo>,
    pub payload_sha256: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub header: Header,
    pub weights: Vec<Vec<f32>>,
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

fn push_f32(out: &mut Vec<u8>, v: &[f32]) {
    out.reserve(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

impl Checkpoint {
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut payload = Vec::new();
        for ((w, m), v) in self.weights.iter().zip(&self.m).zip(&self.v) {
            push_f32(&mut payload, w);
            push_f32(&mut payload, m);
            push_f32(&mut payload, v);
        }
        let mut header = self.header.clone();
        header.payload_sha256 = format!("{:x}", Sha256::digest(&payload));
        let json = serde_json::to_vec(&header)?;
        let mut bytes = Vec::with_capacity(20 + json.len() + payload.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&json);
        bytes.extend_from_slice(&payload);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
        }
        super::spec::write_atomic(path, &bytes)
    }

    pub fn load(path: &Path) -> Result<Checkpoint> {
        let p = path.display();
        let bytes = std::fs::read(path).with_context(|| format!("{p}: cannot read the checkpoint"))?;
        if bytes.len() < 20 || &bytes[..8] != MAGIC {
            bail!("{p}: not a glad-edge training checkpoint");
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            bail!("{p}: checkpoint format {version}, expected {VERSION}");
        }
        let hlen = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes")) as usize;
        let Some(json) = bytes.get(20..20usize.saturating_add(hlen)) else {
            bail!("{p}: truncated checkpoint header");
        };
        let header: Header = serde_json::from_slice(json).with_context(|| format!("{p}: bad checkpoint header"))?;
        let payload = &bytes[20 + hlen..];
        let need: usize = header.tensors.iter().map(|t| t.len * 12).sum();
        if payload.len() != need {
            bail!("{p}: checkpoint payload has {} bytes, the header says {need} (truncated?)", payload.len());
        }
        if format!("{:x}", Sha256::digest(payload)) != header.payload_sha256 {
            bail!("{p}: checkpoint payload does not match its SHA-256 (corrupt file)");
        }
        let mut off = 0;
        let mut take = |n: usize| {
            let v: Vec<f32> = payload[off..off + 4 * n].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            off += 4 * n;
            v
        };
        let (mut weights, mut m, mut v) = (Vec::new(), Vec::new(), Vec::new());
        for t in &header.tensors {
            weights.push(take(t.len));
            m.push(take(t.len));
            v.push(take(t.len));
        }
        Ok(Checkpoint { header, weights, m, v })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("c.ckpt");
        let ck = Checkpoint {
            header: Header {
                step: 7,
                recipe: serde_json::json!({"seed": 3}),
                loss: Some(0.5),
                tensors: vec![TensorInfo { name: "a".into(), len: 2 }, TensorInfo { name: "b".into(), len: 1 }],
                payload_sha256: String::new(),
            },
            weights: vec![vec![1.0, -0.0], vec![f32::MIN_POSITIVE]],
            m: vec![vec![0.25, 3.0], vec![-1.0]],
            v: vec![vec![1e-30, 2.0], vec![7.0]],
        };
        ck.save(&path).unwrap();
        assert!(!dir.path().join("sub").join("c.ckpt.tmp").exists());
        let back = Checkpoint::load(&path).unwrap();
        assert_eq!(back.weights, ck.weights);
        assert_eq!(back.m, ck.m);
        assert_eq!(back.v, ck.v);
        assert_eq!(back.header.step, 7);
        assert_eq!(back.weights[0][1].to_bits(), (-0.0f32).to_bits());
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let e = Checkpoint::load(&path).unwrap_err().to_string();
        assert!(e.contains("SHA-256"), "{e}");
        std::fs::write(&path, &bytes[..n - 3]).unwrap();
        assert!(Checkpoint::load(&path).unwrap_err().to_string().contains("truncated"));
        std::fs::write(&path, b"nonsense").unwrap();
        assert!(Checkpoint::load(&path).unwrap_err().to_string().contains("not a glad-edge"));
    }
}
