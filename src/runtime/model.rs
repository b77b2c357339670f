//! One ONNX model: an ort session plus the introspection glad validates bundles with, and a
//! run call that speaks ndarray.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use ndarray::{ArrayD, ArrayViewD};
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{builder::GraphOptimizationLevel, IoBinding, Session, SessionInputValue};
use ort::value::{Tensor, TensorElementType, TensorRef};

use super::ort_err;
use super::providers::{self, ProviderKind, ProvidersConfig, TrtProfile};

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

/// How [`Model::run_bound`] binds an input.
pub enum Bind<'a> {
    /// Copied into this model's preallocated buffer for the input and bound at every call.
    Each(Input<'a>),
    /// Bound only when `key` differs from the key the input was last bound with: the caller
    /// promises that the same key means the same data (the prompt embeddings for a batch
    /// size). On a CUDA or TensorRT session ONNX Runtime copies it to the device when it is
    /// bound, so it stays there across runs.
    Kept(Input<'a>, u64),
}

/// What an IoBinding has done so far; tests check that outputs are not reallocated per run
/// (pykeio/ort#596).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BindingStats {
    pub runs: u64,
    /// Output buffers allocated (one per output and new shape).
    pub output_allocations: u64,
    /// Input staging buffers allocated (one per `Bind::Each` float input and new shape).
    pub input_allocations: u64,
    /// `Bind::Kept` inputs actually (re)bound.
    pub kept_binds: u64,
}

/// A model's persistent IoBinding and the buffers bound to it.
struct Binding {
    io: IoBinding,
    /// Host buffers ONNX Runtime copies from (inputs) and into (outputs): the CPU allocator,
    /// or CUDA pinned memory on a GPU provider (DMA without a staging copy).
    input_alloc: Allocator,
    output_alloc: Allocator,
    kept: HashMap<String, u64>,
    inputs: HashMap<String, Tensor<f32>>,
    outputs: Vec<(String, Tensor<f32>)>,
    stats: BindingStats,
}

impl Binding {
    fn new(session: &Session, provider: ProviderKind, device_id: i32, role: &str) -> Result<Binding> {
        let io = session.create_binding().map_err(|e| anyhow!("{role}: cannot create an IoBinding: {e}"))?;
        let alloc = |mem: MemoryType| -> Allocator {
            if provider == ProviderKind::Cpu {
                return Allocator::default();
            }
            // ONNX Runtime registers its pinned allocator under device 0 whatever the GPU: try both.
            let pinned = |id: i32| {
                MemoryInfo::new(AllocationDevice::CUDA_PINNED, id, AllocatorType::Device, mem)
                    .and_then(|info| Allocator::new(session, info))
            };
            pinned(device_id).or_else(|e| if device_id != 0 { pinned(0) } else { Err(e) }).unwrap_or_else(|e| {
                tracing::warn!("{role}: no CUDA pinned allocator ({e}); IoBinding stages through pageable host memory");
                Allocator::default()
            })
        };
        Ok(Binding {
            io,
            input_alloc: alloc(MemoryType::CPUInput),
            output_alloc: alloc(MemoryType::CPUOutput),
            kept: HashMap::new(),
            inputs: HashMap::new(),
            outputs: Vec::new(),
            stats: BindingStats::default(),
        })
    }
}

pub struct Model {
    role: String,
    path: PathBuf,
    session: Session,
    provider: ProviderKind,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    precision: String,
    io_binding: bool,
    device_id: i32,
    binding: Option<Binding>,
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
    pub fn load(
        role: &str,
        path: &Path,
        providers_cfg: &ProvidersConfig,
        library: Option<&Path>,
        threads: usize,
        memory: super::MemoryMode,
    ) -> Result<Model> {
        Self::load_with_profile(role, path, providers_cfg, library, threads, memory, None)
    }

    /// As [`Model::load`], with the TensorRT optimisation profile for this model (used only
    /// when the TensorRT provider is registered).
    pub fn load_with_profile(
        role: &str,
        path: &Path,
        providers_cfg: &ProvidersConfig,
        library: Option<&Path>,
        threads: usize,
        memory: super::MemoryMode,
        profile: Option<&TrtProfile>,
    ) -> Result<Model> {
        if path.is_dir() {
            bail!("{role}: model file {} is a directory, not an ONNX file", path.display());
        }
        if !path.is_file() {
            bail!("{role}: model file {} does not exist", path.display());
        }
        let env = super::environment(library, threads)?;
        let mut builder = Session::builder(env).map_err(ort_err)?.with_optimization_level(GraphOptimizationLevel::All).map_err(ort_err)?;
        if memory == super::MemoryMode::Lean {
            builder = builder.with_memory_pattern(false).map_err(ort_err)?;
            builder = builder.with_config_entry("session.disable_prepacking", "1").map_err(ort_err)?;
        }
        let provider = providers::register(providers_cfg, &mut builder, role, path, profile)?;
        if memory == super::MemoryMode::Lean {
            // Registered last: the CPU provider takes what the others leave, without an arena.
            use ort::ep::ExecutionProvider as _;
            ort::ep::CPU::default().with_arena_allocator(false).register(&mut builder).map_err(ort_err)?;
        }
        let session = builder.commit_from_file(path).map_err(|e| anyhow!("{role}: cannot load {}: {e}", path.display()))?;
        let spec = |o: &ort::value::Outlet| TensorSpec {
            name: o.name().to_string(),
            dtype: dtype_name(o.dtype().tensor_type()),
            shape: o.dtype().tensor_shape().map(|s| s.iter().copied().collect()).unwrap_or_default(),
        };
        let inputs: Vec<TensorSpec> = session.inputs().iter().map(spec).collect();
        let outputs = session.outputs().iter().map(spec).collect();
        // The weights' precision (fp32, fp16, int8, ...) from the initialisers; the input
        // type only for a model without weights.
        let dtype = inputs.iter().map(|t| t.dtype).find(|d| d.starts_with("float")).unwrap_or("float32");
        let fallback = match dtype {
            "float16" => "fp16",
            "float64" => "fp64",
            _ => "fp32",
        };
        let precision = providers::precision(provider, providers_cfg, &super::weights_precision(path, fallback));
        let io_binding = providers_cfg.io_binding.enabled(provider);
        tracing::info!(role, path = %path.display(), %provider, %precision, io_binding, "model loaded");
        Ok(Model {
            role: role.to_string(),
            path: path.to_path_buf(),
            session,
            provider,
            inputs,
            outputs,
            precision,
            io_binding,
            device_id: providers_cfg.device_id,
            binding: None,
        })
    }

    /// The weights' precision (`fp32`, `fp16`, `int8`, ...; see `runtime::weights_precision`),
    /// or `fp16 (TensorRT ...)`: what `glad info` reports.
    pub fn precision(&self) -> &str {
        &self.precision
    }

    /// Whether callers should use [`Model::run_bound`] (`runtime.execution.io_binding`).
    pub fn io_binding(&self) -> bool {
        self.io_binding
    }

    /// Counters of this model's IoBinding (`None` before the first `run_bound`).
    pub fn binding_stats(&self) -> Option<BindingStats> {
        self.binding.as_ref().map(|b| b.stats)
    }

    /// Runs the model through a persistent IoBinding: `Bind::Kept` inputs are bound once
    /// per key, `Bind::Each` float inputs are copied into preallocated staging buffers, and
    /// every output is bound to a preallocated buffer of the given shape, reused while the
    /// shape stays the same (ONNX Runtime writes into it; nothing is allocated per run,
    /// unlike outputs bound to a device, pykeio/ort#596). Returns copies of the outputs, in
    /// the order asked. Gives the same numbers as [`Model::run`].
    pub fn run_bound(&mut self, inputs: &[(&str, Bind<'_>)], outputs: &[(&str, &[usize])]) -> Result<Vec<ArrayD<f32>>> {
        let role = self.role.clone();
        if self.binding.is_none() {
            self.binding = Some(Binding::new(&self.session, self.provider, self.device_id, &role)?);
        }
        let Model { session, binding, .. } = self;
        let b = binding.as_mut().expect("just created");
        let err = |what: &str, name: &str, e: ort::Error| anyhow!("{role}: {what} `{name}`: {e}");
        for (name, bind) in inputs {
            match bind {
                Bind::Kept(input, key) => {
                    if b.kept.get(*name) == Some(key) {
                        continue;
                    }
                    match input {
                        Input::F32(a) => b.io.bind_input(*name, &Tensor::from_array(a.to_owned()).map_err(|e| err("input", name, e))?),
                        Input::I64(a) => b.io.bind_input(*name, &Tensor::from_array(a.to_owned()).map_err(|e| err("input", name, e))?),
                    }
                    .map_err(|e| err("cannot bind input", name, e))?;
                    b.kept.insert(name.to_string(), *key);
                    b.stats.kept_binds += 1;
                }
                Bind::Each(Input::F32(a)) => {
                    let stale = b.inputs.get(*name).is_none_or(|t| t.shape().iter().map(|&d| d as usize).ne(a.shape().iter().copied()));
                    if stale {
                        let t =
                            Tensor::<f32>::new(&b.input_alloc, a.shape().to_vec()).map_err(|e| err("cannot allocate input", name, e))?;
                        b.inputs.insert(name.to_string(), t);
                        b.stats.input_allocations += 1;
                    }
                    let buf = b.inputs.get_mut(*name).expect("just inserted");
                    buf.extract_array_mut().assign(a);
                    b.io.bind_input(*name, &*buf).map_err(|e| err("cannot bind input", name, e))?;
                    b.kept.remove(*name);
                }
                Bind::Each(Input::I64(a)) => {
                    let t = Tensor::from_array(a.to_owned()).map_err(|e| err("input", name, e))?;
                    b.io.bind_input(*name, &t).map_err(|e| err("cannot bind input", name, e))?;
                    b.kept.remove(*name);
                }
            }
        }
        for (name, shape) in outputs {
            let fresh = match b.outputs.iter().position(|(n, _)| n == name) {
                Some(i) if b.outputs[i].1.shape().iter().map(|&d| d as usize).eq(shape.iter().copied()) => None,
                Some(i) => Some(i),
                None => Some(b.outputs.len()),
            };
            if let Some(i) = fresh {
                let mut t = Tensor::<f32>::new(&b.output_alloc, shape.to_vec()).map_err(|e| err("cannot allocate output", name, e))?;
                b.io.bind_output(*name, &mut t).map_err(|e| err("cannot bind output", name, e))?;
                b.stats.output_allocations += 1;
                if i == b.outputs.len() {
                    b.outputs.push((name.to_string(), t));
                } else {
                    b.outputs[i].1 = t;
                }
            }
        }
        drop(session.run_binding(&b.io).map_err(|e| anyhow!("{role}: inference failed: {e}"))?);
        b.io.synchronize_outputs().map_err(|e| anyhow!("{role}: synchronising outputs: {e}"))?;
        b.stats.runs += 1;
        outputs
            .iter()
            .map(|(name, _)| {
                let (_, t) = b.outputs.iter().find(|(n, _)| n == name).expect("bound above");
                Ok(t.extract_array().to_owned())
            })
            .collect()
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
