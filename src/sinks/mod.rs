//! Where per-frame results go: the JSONL log, the image store, MQTT, Modbus, webhooks.
//! Each sink sits behind its own bounded queue so a slow or dead one never blocks the engine;
//! it keeps its counters as atomics that `/metrics` reads.

pub mod check;
pub mod jsonl;
pub mod modbus;
pub mod modbus_config;
pub mod mqtt;
pub mod mqtt_config;
pub mod outbox;
pub mod store;
pub mod webhook;
pub mod webhook_config;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

pub use crate::record::{FrameRecord, FrameResult, Stored, Verdict};
pub use jsonl::JsonlSink;
pub use modbus::ModbusSink;
pub use modbus_config::ModbusConfig;
pub use mqtt::MqttSink;
pub use mqtt_config::MqttConfig;
pub use store::{ImageStore, StoreConfig};
pub use webhook::WebhookSink;
pub use webhook_config::WebhookConfig;

use crate::telemetry::metrics::SinkLabel;
use crate::telemetry::StationState;

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
    /// Records this sink was handed and lost for good (not written, not queued for a retry).
    /// The results log reports them; `glad run` exits non-zero when any were lost.
    fn lost(&self) -> u64 {
        0
    }
}

/// What a sink learns about the station it reports for.
#[derive(Debug, Clone, Default)]
pub struct SinkContext {
    /// The station's name (MQTT topics, client id).
    pub station: String,
    /// The station's cameras in configuration order (the Modbus blocks).
    pub cameras: Vec<String>,
    /// The running station's shared state: metrics, degraded components, triggers. Sinks
    /// work without it (tests, tools) and then only keep their own counters.
    pub state: Option<Arc<StationState>>,
}

/// A sink's counters: its own atomics (for `health` and tests) mirrored into the station's
/// `glad_sink_*` metrics when a station state is given.
#[derive(Debug)]
pub struct SinkCounters {
    name: String,
    state: Option<Arc<StationState>>,
    dropped: AtomicU64,
    failures: AtomicU64,
    queued: AtomicI64,
}

impl SinkCounters {
    pub fn new(name: &str, state: Option<Arc<StationState>>) -> SinkCounters {
        SinkCounters { name: name.to_string(), state, dropped: AtomicU64::new(0), failures: AtomicU64::new(0), queued: AtomicI64::new(0) }
    }

    fn label(&self) -> SinkLabel {
        SinkLabel { sink: self.name.clone() }
    }

    pub fn add_dropped(&self, n: u64) {
        if n == 0 {
            return;
        }
        self.dropped.fetch_add(n, Ordering::Relaxed);
        if let Some(s) = &self.state {
            s.metrics.sink_dropped.get_or_create(&self.label()).inc_by(n);
        }
    }

    pub fn add_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if let Some(s) = &self.state {
            s.metrics.sink_failures.get_or_create(&self.label()).inc();
        }
    }

    pub fn set_queued(&self, n: i64) {
        self.queued.store(n, Ordering::Relaxed);
        if let Some(s) = &self.state {
            s.metrics.sink_queued.get_or_create(&self.label()).set(n);
        }
    }

    /// Marks the sink degraded in the station state (a no-op without one).
    pub fn set_degraded(&self, reason: Option<String>) {
        if let Some(s) = &self.state {
            s.set_degraded(&self.name, reason);
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub fn queued(&self) -> i64 {
        self.queued.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Example {
        sinks: Sinks,
    }

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sinks {
        mqtt: Option<MqttConfig>,
        modbus: Option<ModbusConfig>,
        webhook: Option<WebhookConfig>,
    }

    #[test]
    fn the_example_fragment_parses_and_validates() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/sinks.example.yaml")).unwrap();
        let e: Example = serde_yaml::from_str(&text).unwrap();
        let mqtt = e.sinks.mqtt.unwrap();
        assert_eq!(mqtt, { MqttConfig { host: "broker.local".into(), ..MqttConfig::new("x", 1883, "/var/lib/glad/outbox") } });
        mqtt.settings("st").unwrap();
        let modbus = e.sinks.modbus.unwrap();
        assert_eq!(modbus.settings(&["cam0".into()]).unwrap().addr.to_string(), "127.0.0.1:1502");
        let webhook = e.sinks.webhook.unwrap();
        assert_eq!(webhook, WebhookConfig::new("https://mes.local/glad"));
        webhook.settings().unwrap();
    }
}
