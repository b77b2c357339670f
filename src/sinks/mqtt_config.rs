//! `sinks.mqtt`: the MQTT sink's configuration (see `config/sinks.example.yaml`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::check::{self, Secret};
use super::outbox::{OutboxOptions, MIN_OUTBOX_BYTES};
use super::{MqttSink, SinkContext};

fn default_port() -> u16 {
    1883
}
fn default_prefix() -> String {
    "glad".into()
}
fn default_keepalive() -> f64 {
    10.0
}
fn default_connect_timeout() -> f64 {
    5.0
}
fn default_reconnect_min() -> f64 {
    0.2
}
fn default_reconnect_max() -> f64 {
    5.0
}
fn default_queue() -> usize {
    1024
}
fn default_inflight() -> u16 {
    32
}
fn default_max_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_fsync_interval() -> f64 {
    0.2
}
fn default_fsync_batch() -> usize {
    64
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker host name or address.
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Client id (default `glad-<station>`). Must be unique per broker.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The station level of the topics (default: the station's name).
    #[serde(default)]
    pub station: Option<String>,
    /// First topic level: `<topic_prefix>/<station>/<camera>/result`, `<topic_prefix>/<station>/status`.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// Publish only NG (anomalous) frames.
    #[serde(default)]
    pub only_ng: bool,
    #[serde(default)]
    pub username: Option<String>,
    /// File whose first line is the password (e.g. a systemd credential).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub tls: Option<MqttTlsConfig>,
    #[serde(default = "default_keepalive")]
    pub keepalive_s: f64,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_s: f64,
    /// First wait before reconnecting; doubles per failure up to `reconnect_max_s`.
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_s: f64,
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_s: f64,
    /// Results waiting between the engine and the outbox writer; over it they are dropped and counted.
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
    /// Publishes awaiting PUBACK at once.
    #[serde(default = "default_inflight")]
    pub inflight: u16,
    pub outbox: OutboxConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTlsConfig {
    /// PEM file of the CA(s) to trust; default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain and key, for brokers that want client certificates.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Folder of the outbox segments (kept across restarts).
    pub dir: PathBuf,
    /// Bound on the outbox's bytes on disk; past it the oldest results are dropped and counted.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Appends are fsync'd at least this often...
    #[serde(default = "default_fsync_interval")]
    pub fsync_interval_s: f64,
    /// ...or after this many records, whichever comes first.
    #[serde(default = "default_fsync_batch")]
    pub fsync_batch: usize,
}

/// A validated MQTT configuration with its secrets read.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub station: String,
    pub topic_prefix: String,
    pub only_ng: bool,
    pub credentials: Option<(String, Secret)>,
    pub tls: Option<MqttTlsConfig>,
    pub keepalive: Duration,
    pub connect_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub queue_capacity: usize,
    pub inflight: u16,
    pub outbox: OutboxOptions,
}

impl MqttConfig {
    /// A minimal configuration (tests, tools).
    pub fn new(host: &str, port: u16, outbox_dir: impl Into<PathBuf>) -> MqttConfig {
        MqttConfig {
            host: host.into(),
            port,
            client_id: None,
            station: None,
            topic_prefix: default_prefix(),
            only_ng: false,
            username: None,
            password_file: None,
            password_env: None,
            tls: None,
            keepalive_s: default_keepalive(),
            connect_timeout_s: default_connect_timeout(),
            reconnect_min_s: default_reconnect_min(),
            reconnect_max_s: default_reconnect_max(),
            queue_capacity: default_queue(),
            inflight: default_inflight(),
            outbox: OutboxConfig {
                dir: outbox_dir.into(),
                max_bytes: default_max_bytes(),
                fsync_interval_s: default_fsync_interval(),
                fsync_batch: default_fsync_batch(),
            },
        }
    }

    /// Checks every key and reads the password; `station` is the station's name.
    pub fn settings(&self, station: &str) -> Result<MqttSettings> {
        const K: &str = "sinks.mqtt";
        check::non_empty(&format!("{K}.host"), &self.host)?;
        check::port(&format!("{K}.port"), self.port)?;
        let station = self.station.clone().unwrap_or_else(|| station.to_string());
        let station = if station.is_empty() { "station".to_string() } else { station };
        for (key, v) in [("topic_prefix", &self.topic_prefix), ("station", &station)] {
            check::non_empty(&format!("{K}.{key}"), v)?;
            if v.contains(['+', '#', '\0']) {
                bail!("{K}.{key}: must not contain MQTT wildcards (`+`, `#`), got `{v}`");
            }
        }
        let client_id = self.client_id.clone().unwrap_or_else(|| format!("glad-{}", check::topic_level(&station)));
        check::non_empty(&format!("{K}.client_id"), &client_id)?;
        if client_id.len() > 128 {
            bail!("{K}.client_id: at most 128 bytes");
        }
        let password = check::secret(
            &format!("{K}.password_file"),
            self.password_file.as_ref(),
            &format!("{K}.password_env"),
            self.password_env.as_ref(),
        )?;
        let credentials = match (&self.username, password) {
            (Some(u), p) => Some((u.clone(), p.unwrap_or_else(|| Secret::new("")))),
            (None, Some(_)) => bail!("{K}.username: required when a password is given"),
            (None, None) => None,
        };
        if let Some(tls) = &self.tls {
            if tls.client_cert_file.is_some() != tls.client_key_file.is_some() {
                bail!("{K}.tls.client_cert_file and {K}.tls.client_key_file: set both or neither");
            }
        }
        let keepalive = check::seconds(&format!("{K}.keepalive_s"), self.keepalive_s, 1.0, 3600.0)?;
        let connect_timeout = check::seconds(&format!("{K}.connect_timeout_s"), self.connect_timeout_s, 1.0, 300.0)?;
        let reconnect_min = check::seconds(&format!("{K}.reconnect_min_s"), self.reconnect_min_s, 0.01, 60.0)?;
        let reconnect_max = check::seconds(&format!("{K}.reconnect_max_s"), self.reconnect_max_s, 0.01, 600.0)?;
        if reconnect_max < reconnect_min {
            bail!("{K}.reconnect_max_s: must be at least reconnect_min_s");
        }
        check::int(&format!("{K}.queue_capacity"), self.queue_capacity, 1, 1_000_000)?;
        check::int(&format!("{K}.inflight"), self.inflight, 1, 1000)?;
        let o = &self.outbox;
        if o.dir.as_os_str().is_empty() {
            bail!("{K}.outbox.dir: must not be empty");
        }
        check::int(&format!("{K}.outbox.max_bytes"), o.max_bytes, MIN_OUTBOX_BYTES, 1 << 40)?;
        let fsync_interval = check::seconds(&format!("{K}.outbox.fsync_interval_s"), o.fsync_interval_s, 0.001, 60.0)?;
        check::int(&format!("{K}.outbox.fsync_batch"), o.fsync_batch, 1, 100_000)?;
        Ok(MqttSettings {
            host: self.host.clone(),
            port: self.port,
            client_id,
            station,
            topic_prefix: self.topic_prefix.trim_end_matches('/').to_string(),
            only_ng: self.only_ng,
            credentials,
            tls: self.tls.clone(),
            keepalive,
            connect_timeout,
            reconnect_min,
            reconnect_max,
            queue_capacity: self.queue_capacity,
            inflight: self.inflight,
            outbox: OutboxOptions { dir: o.dir.clone(), max_bytes: o.max_bytes, fsync_interval, fsync_batch: o.fsync_batch },
        })
    }

    /// Validates, opens the outbox and starts the sink's worker thread.
    pub fn build(&self, ctx: &SinkContext) -> Result<MqttSink> {
        MqttSink::new(self.settings(&ctx.station)?, ctx.state.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_defaults_unknown_keys_and_errors_name_keys() {
        let c: MqttConfig = serde_yaml::from_str("host: b\noutbox: {dir: /tmp/x}\n").unwrap();
        assert_eq!(c.port, 1883);
        let s = c.settings("st1").unwrap();
        assert_eq!(s.client_id, "glad-st1");
        assert!(serde_yaml::from_str::<MqttConfig>("host: b\nprot: 1\noutbox: {dir: /tmp/x}\n").unwrap_err().to_string().contains("prot"));
        let mut bad = c.clone();
        bad.keepalive_s = f64::INFINITY;
        assert!(bad.settings("s").unwrap_err().to_string().contains("sinks.mqtt.keepalive_s"));
        let mut bad = c.clone();
        bad.outbox.max_bytes = 10;
        assert!(bad.settings("s").unwrap_err().to_string().contains("sinks.mqtt.outbox.max_bytes"));
        let mut bad = c.clone();
        bad.password_env = Some("GLAD_TEST_SURELY_UNSET_VAR".into());
        bad.username = Some("u".into());
        assert!(bad.settings("s").unwrap_err().to_string().contains("sinks.mqtt.password_env"));
    }

    #[test]
    fn password_from_file_is_redacted_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret-value\n").unwrap();
        let mut c = MqttConfig::new("b", 1883, dir.path());
        c.username = Some("glad".into());
        c.password_file = Some(f);
        let s = c.settings("st").unwrap();
        assert_eq!(s.credentials.as_ref().unwrap().1.expose(), "s3cret-value");
        assert!(!format!("{s:?}").contains("s3cret"));
    }
}
