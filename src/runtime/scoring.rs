//! The scoring graphs: the min-cosine maps and the ADP score run inside ONNX Runtime
//! (`runtime.scoring: onnx`, or `auto` on a GPU provider), an alternative implementation of
//! `glad::features` written by scripts/export_scoring_graphs.py and tested against it.
//!
//! Where they are found, first hit wins: the folder in `GLAD_SCORING_DIR`; `scoring/` beside
//! the executable or `../lib/glad-edge/scoring` (where the Debian package puts them); the
//! build default `onnx/scoring` of the source tree.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ndarray::{Array1, ArrayView2};
use serde::{Deserialize, Serialize};

use super::model::{Input, Model};
use super::providers::ProvidersConfig;

/// `runtime.scoring` / `--scoring`: where the min-cosine maps and the ADP score are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scoring {
    /// glad's Rust GEMM (matrixmultiply) on the CPU.
    Rust,
    /// The scoring graphs, on the bundle's execution provider.
    Onnx,
    /// `onnx` when the bundle's backbone runs on CUDA or TensorRT; on the CPU, the graph only
    /// where it is faster (engine::resolve_scoring).
    #[default]
    Auto,
}

impl Scoring {
    pub const VALUES: &'static str = "rust, onnx or auto";

    pub fn parse(s: &str) -> Option<Scoring> {
        match s {
            "rust" => Some(Scoring::Rust),
            "onnx" => Some(Scoring::Onnx),
            "auto" => Some(Scoring::Auto),
            _ => None,
        }
    }
}

/// File names of the two graphs.
pub const COSINE_MAPS: &str = "cosine_maps.onnx";
pub const ADP_SCORE: &str = "adp_score.onnx";
/// Folders relative to the executable searched for the graphs.
pub const SCORING_EXE_DIRS: &[&str] = &["scoring", "../lib/glad-edge/scoring"];

fn has_graphs(dir: &Path) -> bool {
    dir.join(COSINE_MAPS).is_file() && dir.join(ADP_SCORE).is_file()
}

/// The folder holding the scoring graphs (see the module notes for the order).
pub fn scoring_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("GLAD_SCORING_DIR") {
        let d = PathBuf::from(d);
        if !has_graphs(&d) {
            bail!("GLAD_SCORING_DIR={}: no {COSINE_MAPS} and {ADP_SCORE} there (scripts/export_scoring_graphs.py --out DIR)", d.display());
        }
        return Ok(d);
    }
    let beside = std::env::current_exe().ok().and_then(|exe| {
        let base = exe.canonicalize().unwrap_or(exe).parent()?.to_path_buf();
        SCORING_EXE_DIRS.iter().map(|d| base.join(d)).find(|d| has_graphs(d))
    });
    if let Some(d) = beside {
        return Ok(d);
    }
    let build = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/onnx/scoring"));
    if has_graphs(&build) {
        return Ok(build);
    }
    bail!(
        "runtime.scoring: the scoring graphs ({COSINE_MAPS}, {ADP_SCORE}) are in none of GLAD_SCORING_DIR, {:?} beside the executable, {}: run scripts/export_scoring_graphs.py",
        SCORING_EXE_DIRS,
        build.display()
    )
}

/// The two scoring sessions.
pub struct ScoringGraphs {
    cosine: Model,
    adp: Model,
}

fn vec1(a: ndarray::ArrayD<f32>, want: usize, what: &str) -> Result<Vec<f32>> {
    if a.len() != want {
        bail!("scoring graph output `{what}` has {} values, expected {want}", a.len());
    }
    Ok(a.into_iter().collect())
}

impl ScoringGraphs {
    /// Loads both graphs from `dir` on the execution provider of `cfg`.
    pub fn load(
        dir: &Path,
        cfg: &ProvidersConfig,
        library: Option<&Path>,
        threads: usize,
        memory: super::MemoryMode,
    ) -> Result<ScoringGraphs> {
        let load = |role: &str, file: &str| Model::load(role, &dir.join(file), cfg, library, threads, memory);
        Ok(ScoringGraphs { cosine: load("scoring_cosine_maps", COSINE_MAPS)?, adp: load("scoring_adp_score", ADP_SCORE)? })
    }

    /// Where the graphs run.
    pub fn provider(&self) -> super::ProviderKind {
        self.cosine.provider()
    }

    /// `(m1, m2)`: `m1[i] = min_j (1 - <x_i, r_j>)`, `m2[j] = min_i (1 - <x_i, r_j>)`, rows
    /// L2-normalised inside the graph.
    pub fn cosine_maps(&mut self, x: ArrayView2<'_, f32>, r: ArrayView2<'_, f32>) -> Result<(Vec<f32>, Vec<f32>)> {
        let x = x.as_standard_layout();
        let r = r.as_standard_layout();
        let mut out = self
            .cosine
            .run(&[("x", Input::F32(x.view().into_dyn())), ("r", Input::F32(r.view().into_dyn()))], &["m1", "m2"])
            .context("scoring graph cosine_maps")?;
        let m2 = vec1(out.pop().expect("2 outputs"), r.nrows(), "m2")?;
        let m1 = vec1(out.pop().expect("2 outputs"), x.nrows(), "m1")?;
        Ok((m1, m2))
    }

    /// `(map, score)`: `map = m1` of [`ScoringGraphs::cosine_maps`], `score` the mean of its
    /// `k` largest values (all of them when there are fewer).
    pub fn adp_score(&mut self, x: ArrayView2<'_, f32>, r: ArrayView2<'_, f32>, k: usize) -> Result<(Vec<f32>, f32)> {
        let x = x.as_standard_layout();
        let r = r.as_standard_layout();
        let k = Array1::from_elem(1, k.min(i64::MAX as usize) as i64).into_dyn();
        let mut out = self
            .adp
            .run(
                &[("x", Input::F32(x.view().into_dyn())), ("r", Input::F32(r.view().into_dyn())), ("k", Input::I64(k.view()))],
                &["map", "score"],
            )
            .context("scoring graph adp_score")?;
        let score = vec1(out.pop().expect("2 outputs"), 1, "score")?[0];
        let map = vec1(out.pop().expect("2 outputs"), x.nrows(), "map")?;
        Ok((map, score))
    }
}
