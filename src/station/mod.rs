//! The station: cameras → frame policy → batcher per bundle → engine → verdict → sinks.
//! It reports through `telemetry` (re-exported here for the wiring layers).

pub mod config;
pub mod feedback;
pub mod runner;

pub use crate::telemetry::{metrics, state, trigger};
pub use crate::telemetry::{CameraState, CameraStatus, Heartbeat, Heartbeats, Metrics, StationState, Triggers};
pub use config::StationConfig;
pub use runner::{StartOptions, Station};
