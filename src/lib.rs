//! glad-edge: GLAD (ECCV 2024) diffusion-based anomaly detection on ONNX Runtime.
//!
//! The data has one way through: `imaging` turns files or frames into tensors, `engine`
//! runs the GLAD core (`glad`: schedule, reconstruction with ADP/SAFF, anomaly maps) on the
//! models of a `bundle` through `runtime` (the only module that knows ONNX Runtime), and the
//! CLI writes JSON lines and heatmaps.

pub mod asyncrt;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod engine;
pub mod eval;
pub mod files;
pub mod glad;
pub mod imaging;
pub mod logging;
pub mod pipeline;
pub mod record;
pub mod runtime;
pub mod service;
pub mod sinks;
pub mod sources;
pub mod station;
pub mod telemetry;
pub mod train;
pub mod yaml;
