//! The station: cameras → frame policy → batcher per bundle → engine → verdict → sinks.

pub mod metrics;
pub mod state;
pub mod trigger;

pub use metrics::Metrics;
pub use state::{CameraState, Heartbeat, Heartbeats, StationState};
pub use trigger::Triggers;
