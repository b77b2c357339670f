//! Where per-frame results go: the JSONL log, the image store, MQTT, Modbus, webhooks.
//! Each sink sits behind its own bounded queue so a slow or dead one never blocks the engine;
//! it keeps its counters as atomics that `/metrics` reads.

pub mod jsonl;
pub mod record;
pub mod store;

use std::time::Duration;

use anyhow::Result;

pub use jsonl::JsonlSink;
pub use record::{FrameRecord, FrameResult, Stored, Verdict};
pub use store::{ImageStore, StoreConfig};

/// A sink's health as `/readyz` and `/metrics` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// Working but losing or deferring results (disk full, broker away, queue full).
    Degraded(String),
}

pub trait Sink: Send + Sync {
    /// Short name for logs and metrics (`jsonl`, `store`, `mqtt`, `modbus`, `webhook`).
    fn name(&self) -> &str;
    /// Hands a result over without blocking: queue it, or count it as dropped.
    fn submit(&self, result: &FrameResult);
    /// Delivers or persists everything queued so far, waiting at most `timeout`.
    fn flush(&self, timeout: Duration) -> Result<()>;
    fn health(&self) -> Health {
        Health::Ok
    }
}
