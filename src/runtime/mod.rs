//! Everything about ONNX Runtime lives here: loading the shared library, the one environment
//! of the process, execution-provider policy, sessions and tensor conversion. Nothing outside
//! this module imports `ort`, so the GLAD code above it reads like GLAD.md.

mod library;
mod model;
mod providers;
mod scoring;
mod weights;

pub use library::{
    environment, find_beside, library_path, library_version, resolve_library, LibrarySource, EXE_RELATIVE_DIRS, MIN_VERSION,
};
pub use model::{Bind, BindingStats, Input, Model, TensorSpec};
pub use providers::{
    engine_cache_dir, precision, tensorrt_options, IoBindingMode, Policy, ProviderKind, ProvidersConfig, TensorRtConfig, TrtProfile,
};
pub use scoring::{scoring_dir, Scoring, ScoringGraphs, ADP_SCORE, COSINE_MAPS, SCORING_EXE_DIRS};
pub use weights::{weight_stats, weights_precision, WeightStats};

use anyhow::anyhow;

/// ort errors carry a generic "recover" payload (e.g. the session builder) that is neither
/// `Send` nor `Sync`; keep only the message so they travel through `anyhow`.
pub(crate) fn ort_err<R>(e: ort::Error<R>) -> anyhow::Error {
    anyhow!("{e}")
}

/// The `runtime:` section of a config.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// ONNX Runtime shared library; overrides ORT_DYLIB_PATH and the build default.
    pub library: Option<std::path::PathBuf>,
    /// Intra-op threads of the one thread pool all sessions share (0 = all cores).
    pub threads: usize,
    /// Execution provider and its fallback policy.
    pub execution: ProvidersConfig,
    /// Where the min-cosine maps and the ADP score run: rust | onnx | auto (see [`Scoring`]).
    pub scoring: Scoring,
    /// ONNX Runtime's memory plan per session: `fast` or `lean` (see [`MemoryMode`]).
    pub memory: MemoryMode,
}

/// How a session plans its memory on the CPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryMode {
    /// ONNX Runtime's defaults: a growing CPU arena that keeps its peak, a memory pattern
    /// planned per input shape, weights pre-packed for the GEMM kernels (a second copy).
    #[default]
    Fast,
    /// For devices whose memory is short (a Jetson shares 8-16 GB between CPU and GPU): no
    /// CPU arena and no memory pattern (each tensor is freed when its last reader is done),
    /// and no pre-packed weight copies. Peak memory and speed are measured in README
    /// "Performance".
    Lean,
}

impl RuntimeConfig {
    pub fn threads(&self) -> usize {
        if self.threads == 0 {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        } else {
            self.threads
        }
    }

    pub fn load_model(&self, role: &str, path: &std::path::Path) -> anyhow::Result<Model> {
        Model::load(role, path, &self.execution, self.library.as_deref(), self.threads(), self.memory)
    }

    /// The scoring graphs (`runtime.scoring`), on this config's execution provider.
    pub fn load_scoring(&self) -> anyhow::Result<ScoringGraphs> {
        ScoringGraphs::load(&scoring_dir()?, &self.execution, self.library.as_deref(), self.threads(), self.memory)
    }

    /// As [`RuntimeConfig::load_model`], with the model's TensorRT optimisation profile.
    pub fn load_model_with_profile(&self, role: &str, path: &std::path::Path, profile: Option<&TrtProfile>) -> anyhow::Result<Model> {
        Model::load_with_profile(role, path, &self.execution, self.library.as_deref(), self.threads(), self.memory, profile)
    }
}
