//! The station: cameras → frame policy → batcher per bundle → engine → verdict → sinks.

pub mod config;
pub mod metrics;
pub mod runner;
pub mod state;
pub mod trigger;

pub use config::StationConfig;
pub use metrics::Metrics;
pub use runner::{StartOptions, Station};
pub use state::{CameraState, Heartbeat, Heartbeats, StationState};
pub use trigger::Triggers;
