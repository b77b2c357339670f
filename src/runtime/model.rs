//! One ONNX model: an ort session plus the introspection glad validates bundles with, and a
//! run call that speaks ndarray.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use ndarray::{ArrayD, ArrayViewD};
use ort::session::{builder::GraphOptimizationLevel, Session, SessionInputValue};
use ort::value::{TensorElementType, TensorRef};

use super::ort_err;
use super::providers::{self, ProviderKind, ProvidersConfig};

/// Name, element type and shape (-1 = dynamic) of a model input or output.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<i64>,
}

impl std::fmt::Display for TensorSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims: Vec<String> = self.shape.iter().map(|d| if *d < 0 { "?".into() } else { d.to_string() }).collect();
        write!(f, "{} {}[{}]", self.name, self.dtype, dims.join(","))
    }
}

/// An input tensor: float32, or int64 (timesteps).
pub enum Input<'a> {
    F32(ArrayViewD<'a, f32>),
    I64(ArrayViewD<'a, i64>),
}

pub struct Model {
    role: String,
    path: PathBuf,
    session: Session,
    provider: ProviderKind,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

fn dtype_name(t: Option<TensorElementType>) -> &'static str {
    match t {
        Some(TensorElementType::Float32) => "float32",
        Some(TensorElementType::Float16) => "float16",
        Some(TensorElementType::Float64) => "float64",
        Some(TensorElementType::Int64) => "int64",
        Some(TensorElementType::Int32) => "int32",
        Some(TensorElementType::Uint8) => "uint8",
        Some(TensorElementType::Bool) => "bool",
        Some(_) => "other",
        None => "non-tensor",
    }
}

impl Model {
    /// Loads `path` for the bundle role `role` (used in every message about this model).
    pub fn load(role: &str, path: &Path, providers_cfg: &ProvidersConfig, library: Option<&Path>, threads: usize) -> Result<Model> {
        if path.is_dir() {
            bail!("{role}: model file {} is a directory, not an ONNX file", path.display());
        }
        if !path.is_file() {
            bail!("{role}: model file {} does not exist", path.display());
        }
        let env = super::environment(library, threads)?;
        let mut builder = Session::builder(env).map_err(ort_err)?.with_optimization_level(GraphOptimizationLevel::All).map_err(ort_err)?;
        let provider = providers::register(providers_cfg, &mut builder, role, path)?;
        let session = builder.commit_from_file(path).map_err(|e| anyhow!("{role}: cannot load {}: {e}", path.display()))?;
        let spec = |o: &ort::value::Outlet| TensorSpec {
            name: o.name().to_string(),
            dtype: dtype_name(o.dtype().tensor_type()),
            shape: o.dtype().tensor_shape().map(|s| s.iter().copied().collect()).unwrap_or_default(),
        };
        let inputs = session.inputs().iter().map(spec).collect();
        let outputs = session.outputs().iter().map(spec).collect();
        tracing::info!(role, path = %path.display(), %provider, "model loaded");
        Ok(Model { role: role.to_string(), path: path.to_path_buf(), session, provider, inputs, outputs })
    }

    pub fn role(&self) -> &str {
        &self.role
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn provider(&self) -> ProviderKind {
        self.provider
    }
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }
    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }
    pub fn input(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs.iter().find(|t| t.name == name)
    }
    pub fn output(&self, name: &str) -> Option<&TensorSpec> {
        self.outputs.iter().find(|t| t.name == name)
    }

    /// Runs the model and copies the requested float32 outputs out, in the order asked.
    pub fn run(&mut self, inputs: &[(&str, Input<'_>)], outputs: &[&str]) -> Result<Vec<ArrayD<f32>>> {
        let mut values: Vec<(std::borrow::Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        for (name, input) in inputs {
            let v: SessionInputValue<'_> = match input {
                Input::F32(a) => TensorRef::from_array_view(a.view()).map_err(|e| anyhow!("{}: input {name}: {e}", self.role))?.into(),
                Input::I64(a) => TensorRef::from_array_view(a.view()).map_err(|e| anyhow!("{}: input {name}: {e}", self.role))?.into(),
            };
            values.push(((*name).into(), v));
        }
        let role = self.role.clone();
        let out = self.session.run(values).map_err(|e| anyhow!("{role}: inference failed: {e}"))?;
        outputs
            .iter()
            .map(|name| {
                let v = out.get(*name).with_context(|| format!("{role}: model has no output `{name}`"))?;
                let a = v.try_extract_array::<f32>().map_err(|e| anyhow!("{role}: output {name}: {e}"))?;
                Ok(a.to_owned())
            })
            .collect()
    }
}
