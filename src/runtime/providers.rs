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
    /// Largest image batch the optimisation profiles cover (0: `inspect.batch`). The encoder
    /// gets 1..B, the UNet 2..2B (the CFG pair), the decoder and backbones 1..2B (the ADP
    /// pairs, the `[x; rec]` backbone call).
    pub max_batch: usize,
    /// Build explicit optimisation profiles (`trt_profile_{min,opt,max}_shapes`) from the
    /// manifest and `max_batch`, so an engine is built once at start-up, not per new shape.
    pub profiles: bool,
}

impl Default for TensorRtConfig {
    fn default() -> Self {
        TensorRtConfig { fp16: false, cache_dir: None, workspace_mb: 2048, max_batch: 0, profiles: true }
    }
}

/// Whether the UNet's DDIM steps run through an ONNX Runtime IoBinding (prompt embeddings
/// bound once, the output bound to a preallocated buffer; see `Model::run_bound`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IoBindingMode {
    /// On for a model that got the CUDA or TensorRT provider, off on the CPU.
    #[default]
    Auto,
    On,
    Off,
}

impl IoBindingMode {
    /// The decision for a model that got `provider`.
    pub fn enabled(self, provider: ProviderKind) -> bool {
        match self {
            IoBindingMode::Auto => provider != ProviderKind::Cpu,
            IoBindingMode::On => true,
            IoBindingMode::Off => false,
        }
    }
}

/// One TensorRT optimisation profile in ONNX Runtime's syntax:
/// `name:d0xd1x...,name2:...` for the minimum, optimum and maximum shapes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrtProfile {
    pub min: String,
    pub opt: String,
    pub max: String,
}

impl TrtProfile {
    /// A profile over inputs whose leading (batch) dimension runs from `lo` to `hi`
    /// (optimum `hi`: a station runs full batches); `inputs` are `(name, dims after batch)`.
    pub fn batch_range(inputs: &[(&str, Vec<usize>)], lo: usize, hi: usize) -> TrtProfile {
        let fmt = |n: usize| {
            inputs
                .iter()
                .map(|(name, rest)| {
                    let dims: Vec<String> = std::iter::once(n).chain(rest.iter().copied()).map(|d| d.to_string()).collect();
                    format!("{name}:{}", dims.join("x"))
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        TrtProfile { min: fmt(lo.max(1)), opt: fmt(hi.max(lo).max(1)), max: fmt(hi.max(lo).max(1)) }
    }
}

/// ONNX Runtime's TensorRT provider options (`trt_*` keys, as in its
/// OrtTensorRTProviderOptionsV2) for one model: device, precision, workspace, caches keyed
/// by `engine_dir` (from [`engine_cache_dir`]), timing cache in `cache_dir` itself, and the
/// optimisation profile. Pure, so it is unit-tested without a GPU.
pub fn tensorrt_options(cfg: &ProvidersConfig, engine_dir: Option<&Path>, profile: Option<&TrtProfile>) -> Vec<(&'static str, String)> {
    let t = &cfg.tensorrt;
    let mut o = vec![
        ("device_id", cfg.device_id.to_string()),
        ("trt_fp16_enable", if t.fp16 { "1" } else { "0" }.to_string()),
        ("trt_max_workspace_size", (t.workspace_mb * 1024 * 1024).to_string()),
    ];
    if let (Some(dir), Some(engines)) = (&t.cache_dir, engine_dir) {
        o.push(("trt_engine_cache_enable", "1".into()));
        o.push(("trt_engine_cache_path", engines.display().to_string()));
        o.push(("trt_timing_cache_enable", "1".into()));
        o.push(("trt_timing_cache_path", dir.display().to_string()));
    }
    if let Some(p) = profile.filter(|_| t.profiles) {
        o.push(("trt_profile_min_shapes", p.min.clone()));
        o.push(("trt_profile_opt_shapes", p.opt.clone()));
        o.push(("trt_profile_max_shapes", p.max.clone()));
    }
    o
}

/// The numeric precision a model runs in: `fp16` on TensorRT with `fp16: true`, else the
/// element type of the model's first float input (`float32`, or `float16` for an fp16 export).
pub fn precision(provider: ProviderKind, cfg: &ProvidersConfig, model_dtype: &str) -> String {
    match provider {
        ProviderKind::Tensorrt if cfg.tensorrt.fp16 => "fp16 (TensorRT mixed precision)".into(),
        _ => model_dtype.to_string(),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvidersConfig {
    pub provider: ProviderKind,
    pub policy: Policy,
    pub device_id: i32,
    pub tensorrt: TensorRtConfig,
    /// IoBinding for the UNet's DDIM steps: auto | on | off.
    pub io_binding: IoBindingMode,
}

impl Default for ProvidersConfig {
    fn default() -> Self {
        ProvidersConfig {
            provider: ProviderKind::Cpu,
            policy: Policy::Prefer,
            device_id: 0,
            tensorrt: TensorRtConfig::default(),
            io_binding: IoBindingMode::Auto,
        }
    }
}

/// Registers the configured providers on `builder` in priority order and returns the name
/// of the provider the session got (`cpu` when everything fell back).
pub(super) fn register(
    cfg: &ProvidersConfig,
    builder: &mut ort::session::builder::SessionBuilder,
    model_role: &str,
    model_path: &Path,
    profile: Option<&TrtProfile>,
) -> Result<ProviderKind> {
    let chain: &[ProviderKind] = match cfg.provider {
        ProviderKind::Cpu => &[],
        ProviderKind::Cuda => &[ProviderKind::Cuda],
        ProviderKind::Tensorrt => &[ProviderKind::Tensorrt, ProviderKind::Cuda],
    };
    for &kind in chain {
        match register_one(kind, cfg, builder, model_path, profile) {
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
    profile: Option<&TrtProfile>,
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
                use ort::ep::ArbitrarilyConfigurableExecutionProvider as _;
                let engines = match &cfg.tensorrt.cache_dir {
                    Some(dir) => Some(engine_cache_dir(dir, model_path).map_err(|e| e.to_string())?),
                    None => None,
                };
                let mut ep = ort::ep::TensorRT::default();
                for (key, value) in tensorrt_options(cfg, engines.as_deref(), profile) {
                    ep = ep.with_arbitrary_config(key, value);
                }
                if let Some(p) = profile.filter(|_| cfg.tensorrt.profiles) {
                    tracing::info!(min = %p.min, opt = %p.opt, max = %p.max, "TensorRT optimisation profile");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(o: &[(&'static str, String)]) -> std::collections::BTreeMap<&'static str, String> {
        o.iter().cloned().collect()
    }

    fn trt(fp16: bool, cache_dir: Option<&str>) -> ProvidersConfig {
        ProvidersConfig {
            provider: ProviderKind::Tensorrt,
            device_id: 1,
            tensorrt: TensorRtConfig { fp16, cache_dir: cache_dir.map(PathBuf::from), workspace_mb: 512, ..Default::default() },
            ..Default::default()
        }
    }

    #[test]
    fn tensorrt_options_fp16_workspace_and_device() {
        let o = opts(&tensorrt_options(&trt(true, None), None, None));
        assert_eq!(o["trt_fp16_enable"], "1");
        assert_eq!(o["device_id"], "1");
        assert_eq!(o["trt_max_workspace_size"], (512usize << 20).to_string());
        assert!(!o.contains_key("trt_engine_cache_enable"), "no cache without cache_dir: {o:?}");
        assert!(!o.contains_key("trt_profile_min_shapes"));
        assert_eq!(opts(&tensorrt_options(&trt(false, None), None, None))["trt_fp16_enable"], "0");
    }

    #[test]
    fn tensorrt_options_caches_keyed_by_model_hash() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("trt");
        let model = tmp.path().join("unet.onnx");
        std::fs::write(&model, b"model bytes").unwrap();
        let cfg = trt(false, Some(cache.to_str().unwrap()));
        let engines = engine_cache_dir(&cache, &model).unwrap();
        assert_eq!(engines.parent().unwrap(), cache);
        assert_eq!(engines.file_name().unwrap().len(), 16);
        let o = opts(&tensorrt_options(&cfg, Some(&engines), None));
        assert_eq!(o["trt_engine_cache_enable"], "1");
        assert_eq!(o["trt_engine_cache_path"], engines.display().to_string());
        assert_eq!(o["trt_timing_cache_enable"], "1");
        assert_eq!(o["trt_timing_cache_path"], cache.display().to_string(), "one timing cache shared by all models");
        // Other weights, other engine folder.
        std::fs::write(&model, b"other weights").unwrap();
        assert_ne!(engine_cache_dir(&cache, &model).unwrap(), engines);
    }

    #[test]
    fn tensorrt_options_profiles_and_switch() {
        let p = TrtProfile::batch_range(&[("sample", vec![4, 64, 64]), ("timestep", vec![])], 2, 8);
        assert_eq!(p.min, "sample:2x4x64x64,timestep:2");
        assert_eq!(p.opt, "sample:8x4x64x64,timestep:8");
        assert_eq!(p.max, p.opt);
        let mut cfg = trt(true, None);
        let o = opts(&tensorrt_options(&cfg, None, Some(&p)));
        assert_eq!(o["trt_profile_min_shapes"], p.min);
        assert_eq!(o["trt_profile_opt_shapes"], p.opt);
        assert_eq!(o["trt_profile_max_shapes"], p.max);
        cfg.tensorrt.profiles = false;
        assert!(!opts(&tensorrt_options(&cfg, None, Some(&p))).contains_key("trt_profile_min_shapes"));
    }

    #[test]
    fn io_binding_mode_and_precision() {
        assert!(!IoBindingMode::Auto.enabled(ProviderKind::Cpu));
        assert!(IoBindingMode::Auto.enabled(ProviderKind::Cuda));
        assert!(IoBindingMode::Auto.enabled(ProviderKind::Tensorrt));
        assert!(IoBindingMode::On.enabled(ProviderKind::Cpu));
        assert!(!IoBindingMode::Off.enabled(ProviderKind::Tensorrt));
        let cfg: ProvidersConfig = serde_yaml::from_str("provider: cuda\nio_binding: on\ntensorrt: { fp16: true, max_batch: 4 }").unwrap();
        assert_eq!(cfg.io_binding, IoBindingMode::On);
        assert_eq!(cfg.tensorrt.max_batch, 4);
        assert!(cfg.tensorrt.profiles);
        assert!(serde_yaml::from_str::<ProvidersConfig>("io_binding: maybe").is_err());
        assert!(precision(ProviderKind::Tensorrt, &cfg, "float32").starts_with("fp16"));
        assert_eq!(precision(ProviderKind::Cuda, &cfg, "float32"), "float32", "fp16 is a TensorRT switch");
        assert_eq!(precision(ProviderKind::Cpu, &cfg, "float16"), "float16");
    }
}
