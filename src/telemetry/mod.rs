//! What a running station tells the world about itself: the shared state (cameras, recent
//! records, degraded components, heartbeats), the Prometheus metrics and the trigger book.
//! The station writes it; the HTTP face, the systemd watchdog and the sinks read it (the
//! sinks also count into it and hand triggers through it). It knows no engine and no sink.

pub mod drift;
pub mod feedback;
pub mod metrics;
pub mod recipe;
pub mod state;
pub mod trigger;

pub use metrics::Metrics;
pub use state::{CameraState, CameraStatus, Heartbeat, Heartbeats, StationState};
pub use trigger::Triggers;
