//! `sinks.modbus`: the Modbus TCP server's configuration (see `config/sinks.example.yaml`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::check;
use super::{ModbusSink, SinkContext};

fn default_listen() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    1502
}
fn default_heartbeat() -> f64 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusConfig {
    /// Address to bind; `127.0.0.1` unless the PLC is on another host (then e.g. `0.0.0.0`).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// TCP port (502 is the Modbus standard but needs CAP_NET_BIND_SERVICE; 0: any free port).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Cameras in block order (block i starts at holding register 16 * i, trigger coil i);
    /// default: the station's cameras in configuration order.
    #[serde(default)]
    pub cameras: Option<Vec<String>>,
    /// The heartbeat registers count up once per interval while glad runs.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval_s: f64,
}

#[derive(Debug, Clone)]
pub struct ModbusSettings {
    pub addr: SocketAddr,
    pub cameras: Vec<String>,
    pub heartbeat_interval: Duration,
}

impl ModbusConfig {
    pub fn new(port: u16, cameras: &[&str]) -> ModbusConfig {
        ModbusConfig {
            listen: default_listen(),
            port,
            cameras: Some(cameras.iter().map(|c| c.to_string()).collect()),
            heartbeat_interval_s: default_heartbeat(),
        }
    }

    /// Checks every key; `cameras` are the station's cameras (used when the key is absent).
    pub fn settings(&self, cameras: &[String]) -> Result<ModbusSettings> {
        const K: &str = "sinks.modbus";
        let ip: IpAddr = self.listen.parse().with_context(|| format!("{K}.listen: not an IP address: `{}`", self.listen))?;
        if let Some(named) = &self.cameras {
            if let Some(c) = named.iter().find(|c| !cameras.contains(c)) {
                bail!("{K}.cameras: `{c}` is not a camera of the station (its cameras: {})", cameras.join(", "));
            }
        }
        let cameras = self.cameras.clone().unwrap_or_else(|| cameras.to_vec());
        if cameras.is_empty() {
            bail!("{K}.cameras: no camera to map");
        }
        // 16 registers per block within the 65536-register address space.
        check::int(&format!("{K}.cameras"), cameras.len(), 1, 4096)?;
        let mut seen = std::collections::BTreeSet::new();
        for c in &cameras {
            if !seen.insert(c) {
                bail!("{K}.cameras: `{c}` appears twice");
            }
        }
        let heartbeat_interval = check::seconds(&format!("{K}.heartbeat_interval_s"), self.heartbeat_interval_s, 0.01, 3600.0)?;
        Ok(ModbusSettings { addr: SocketAddr::new(ip, self.port), cameras, heartbeat_interval })
    }

    /// Validates, binds the port and starts the server thread.
    pub fn build(&self, ctx: &SinkContext) -> Result<ModbusSink> {
        ModbusSink::new(self.settings(&ctx.cameras)?, ctx.state.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_bind_localhost_and_errors_name_keys() {
        let c: ModbusConfig = serde_yaml::from_str("{}").unwrap();
        let s = c.settings(&["a".into()]).unwrap();
        assert_eq!(s.addr.to_string(), "127.0.0.1:1502");
        assert!(serde_yaml::from_str::<ModbusConfig>("bind: x").unwrap_err().to_string().contains("bind"));
        let bad = ModbusConfig { listen: "nowhere".into(), ..c.clone() };
        assert!(bad.settings(&["a".into()]).unwrap_err().to_string().contains("sinks.modbus.listen"));
        let bad = ModbusConfig { heartbeat_interval_s: -1.0, ..c.clone() };
        assert!(bad.settings(&["a".into()]).unwrap_err().to_string().contains("sinks.modbus.heartbeat_interval_s"));
        assert!(c.settings(&[]).unwrap_err().to_string().contains("sinks.modbus.cameras"));
    }

    #[test]
    fn cameras_must_be_the_stations() {
        let c = ModbusConfig::new(1502, &["cam0", "nope"]);
        let e = c.settings(&["cam0".into()]).unwrap_err().to_string();
        assert!(e.contains("sinks.modbus.cameras") && e.contains("nope"), "{e}");
        assert!(ModbusConfig::new(1502, &["cam0"]).settings(&["cam0".into(), "cam1".into()]).is_ok());
    }
}
