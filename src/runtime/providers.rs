//! Execution-provider configuration and the policy for registering them on a session.
//!
//! ONNX Runtime's default is to fall back to the CPU silently when a provider cannot be
//! registered (pykeio/ort#567). glad never does that: each provider is registered with its
//! error returned to us, and the policy decides: `require` turns it into an error, `prefer`
//! logs one WARN line naming the provider and the reason, then falls back.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    #[default]
    Cpu,
    Cuda,
    Tensorrt,
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProviderKind::Cpu => "cpu",
            ProviderKind::Cuda => "cuda",
            ProviderKind::Tensorrt => "tensorrt",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Fail when the provider cannot be registered.
    Require,
    /// Fall back (TensorRT → CUDA → CPU) with one WARN line.
    #[default]
    Prefer,
}

/// TensorRT options. The engine cache is keyed by the ONNX file's content hash: ONNX
/// Runtime keys engines by graph structure, so per-class UNets with identical structure but
/// different weights would otherwise share one engine (microsoft/onnxruntime#6455).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TensorRtConfig {
    pub fp16: bool,
    /// Folder for engine and timing caches; engines go to `<cache_dir>/<sha256 prefix of the model>/`.
    pub cache_dir: Option<PathBuf>,
    pub workspace_mb: usize,
}

impl Default for TensorRtConfig {
    fn default() -> Self {
        TensorRtConfig { fp16: false, cache_dir: None, workspace_mb: 2048 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvidersConfig {
    pub provider: ProviderKind,
    pub policy: Policy,
    pub device_id: i32,
    pub tensorrt: TensorRtConfig,
}

impl Default for ProvidersConfig {
    fn default() -> Self {
        ProvidersConfig { provider: ProviderKind::Cpu, policy: Policy::Prefer, device_id: 0, tensorrt: TensorRtConfig::default() }
    }
}

/// Registers the configured providers on `builder` in priority order and returns the name
/// of the provider the session got (`cpu` when everything fell back).
pub(super) fn register(
    cfg: &ProvidersConfig,
    builder: &mut ort::session::builder::SessionBuilder,
    model_role: &str,
    model_path: &Path,
) -> Result<ProviderKind> {
    let chain: &[ProviderKind] = match cfg.provider {
        ProviderKind::Cpu => &[],
        ProviderKind::Cuda => &[ProviderKind::Cuda],
        ProviderKind::Tensorrt => &[ProviderKind::Tensorrt, ProviderKind::Cuda],
    };
    for &kind in chain {
        match register_one(kind, cfg, builder, model_path) {
            Ok(()) => return Ok(kind),
            Err(reason) => match cfg.policy {
                Policy::Require => {
                    bail!("{model_role} ({}): execution provider {kind} is required but cannot be used: {reason}", model_path.display())
                }
                Policy::Prefer => {
                    tracing::warn!("{model_role}: execution provider {kind} unavailable, falling back: {reason}")
                }
            },
        }
    }
    Ok(ProviderKind::Cpu)
}

#[allow(unused_variables)]
fn register_one(
    kind: ProviderKind,
    cfg: &ProvidersConfig,
    builder: &mut ort::session::builder::SessionBuilder,
    model_path: &Path,
) -> std::result::Result<(), String> {
    use ort::ep::ExecutionProvider as _;
    match kind {
        ProviderKind::Cpu => Ok(()),
        ProviderKind::Cuda => {
            #[cfg(feature = "cuda")]
            {
                let ep = ort::ep::CUDA::default().with_device_id(cfg.device_id);
                ep.register(builder).map_err(|e| e.to_string())
            }
            #[cfg(not(feature = "cuda"))]
            Err("this glad build has no CUDA support (cargo feature `cuda`)".into())
        }
        ProviderKind::Tensorrt => {
            #[cfg(feature = "tensorrt")]
            {
                let t = &cfg.tensorrt;
                let mut ep = ort::ep::TensorRT::default()
                    .with_device_id(cfg.device_id)
                    .with_fp16(t.fp16)
                    .with_max_workspace_size(t.workspace_mb * 1024 * 1024);
                if let Some(dir) = &t.cache_dir {
                    let keyed = engine_cache_dir(dir, model_path).map_err(|e| e.to_string())?;
                    ep = ep
                        .with_engine_cache(true)
                        .with_engine_cache_path(keyed.display())
                        .with_timing_cache(true)
                        .with_timing_cache_path(dir.display());
                }
                ep.register(builder).map_err(|e| e.to_string())
            }
            #[cfg(not(feature = "tensorrt"))]
            Err("this glad build has no TensorRT support (cargo feature `tensorrt`)".into())
        }
    }
}

/// `<cache_dir>/<first 16 hex digits of a SHA-256>` over the model file and its external
/// weight files (siblings named `<stem>.*`, e.g. `unet.weights.bin`): a trained bundle shares
/// `unet.onnx` byte for byte with its base and differs only in the weights file.
pub fn engine_cache_dir(cache_dir: &Path, model_path: &Path) -> Result<PathBuf> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut files = vec![model_path.to_path_buf()];
    if let (Some(dir), Some(stem)) = (model_path.parent(), model_path.file_stem().and_then(|s| s.to_str())) {
        let prefix = format!("{stem}.");
        let mut extra: Vec<PathBuf> = std::fs::read_dir(if dir.as_os_str().is_empty() { Path::new(".") } else { dir })
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        extra.retain(|p| p != model_path && p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix)));
        extra.sort();
        files.extend(extra);
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for file in &files {
        let mut f =
            std::fs::File::open(file).map_err(|e| anyhow::anyhow!("{}: cannot read for the engine-cache hash: {e}", file.display()))?;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    let digest = hasher.finalize();
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let dir = cache_dir.join(hex);
    std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("{}: cannot create engine cache folder: {e}", dir.display()))?;
    Ok(dir)
}
