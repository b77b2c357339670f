//! `sinks.webhook`: the webhook sink's configuration (see `config/sinks.example.yaml`).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::check::{self, Secret};
use super::{SinkContext, WebhookSink};

fn default_true() -> bool {
    true
}
fn default_timeout() -> f64 {
    5.0
}
fn default_retries() -> u32 {
    3
}
fn default_backoff_initial() -> f64 {
    0.5
}
fn default_backoff_max() -> f64 {
    10.0
}
fn default_queue() -> usize {
    256
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL the JSON record is POSTed to.
    pub url: String,
    /// POST only NG (anomalous) frames; false: every record (errors too).
    #[serde(default = "default_true")]
    pub only_ng: bool,
    /// Extra request headers (name: value).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers whose value comes from an environment variable (name: variable), for tokens;
    /// never logged.
    #[serde(default)]
    pub headers_env: BTreeMap<String, String>,
    /// Whole-request timeout.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Retries after a failed attempt (connection error, timeout, 5xx, 429); 4xx is not retried.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Wait before the first retry; doubles per retry up to `backoff_max_s`.
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial_s: f64,
    #[serde(default = "default_backoff_max")]
    pub backoff_max_s: f64,
    /// Records waiting to be sent; over it new ones are dropped and counted.
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
}

#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub url: String,
    pub only_ng: bool,
    pub headers: Vec<(String, Secret)>,
    pub timeout: Duration,
    pub retries: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub queue_capacity: usize,
}

/// The parts of a URL a client would otherwise bend: no whitespace or control characters, a
/// host, and a port (when given) in 1..=65535 (a larger one was sent to port 80).
fn check_url(url: &str) -> std::result::Result<(), String> {
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters (percent-encode them)".into());
    }
    let rest = url.split_once("://").map_or(url, |p| p.1);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |p| p.1);
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => return Err("an IPv6 host without its closing `]`".into()),
        }
    } else {
        match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => {}
            _ => return Err(format!("port `{p}` is not in 1..=65535")),
        }
    }
    Ok(())
}

impl WebhookConfig {
    pub fn new(url: &str) -> WebhookConfig {
        WebhookConfig {
            url: url.into(),
            only_ng: true,
            headers: BTreeMap::new(),
            headers_env: BTreeMap::new(),
            timeout_s: default_timeout(),
            retries: default_retries(),
            backoff_initial_s: default_backoff_initial(),
            backoff_max_s: default_backoff_max(),
            queue_capacity: default_queue(),
        }
    }

    pub fn settings(&self) -> Result<WebhookSettings> {
        const K: &str = "sinks.webhook";
        let lower = self.url.to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://")) || self.url.len() < 10 {
            bail!("{K}.url: must be an http:// or https:// URL, got `{}`", self.url);
        }
        check_url(&self.url).map_err(|e| anyhow::anyhow!("{K}.url: {e}, got `{}`", self.url))?;
        let valid_name = |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        let mut headers = Vec::new();
        for (n, v) in &self.headers {
            if !valid_name(n) || v.contains(['\r', '\n']) {
                bail!("{K}.headers.{n}: not a valid header");
            }
            headers.push((n.clone(), Secret::new(v.clone())));
        }
        for (n, var) in &self.headers_env {
            if !valid_name(n) {
                bail!("{K}.headers_env.{n}: not a valid header name");
            }
            let v = check::secret("", None, &format!("{K}.headers_env.{n}"), Some(var))?.expect("env set");
            if v.expose().contains(['\r', '\n']) {
                bail!("{K}.headers_env.{n}: the value holds a line break");
            }
            headers.push((n.clone(), v));
        }
        let timeout = check::seconds(&format!("{K}.timeout_s"), self.timeout_s, 0.05, 300.0)?;
        check::int(&format!("{K}.retries"), self.retries, 0, 100)?;
        let backoff_initial = check::seconds(&format!("{K}.backoff_initial_s"), self.backoff_initial_s, 0.0, 600.0)?;
        let backoff_max = check::seconds(&format!("{K}.backoff_max_s"), self.backoff_max_s, 0.0, 3600.0)?;
        if backoff_max < backoff_initial {
            bail!("{K}.backoff_max_s: must be at least backoff_initial_s");
        }
        check::int(&format!("{K}.queue_capacity"), self.queue_capacity, 1, 1_000_000)?;
        Ok(WebhookSettings {
            url: self.url.clone(),
            only_ng: self.only_ng,
            headers,
            timeout,
            retries: self.retries,
            backoff_initial,
            backoff_max,
            queue_capacity: self.queue_capacity,
        })
    }

    pub fn build(&self, ctx: &SinkContext) -> Result<WebhookSink> {
        WebhookSink::new(self.settings()?, ctx.state.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_keys() {
        let c: WebhookConfig = serde_yaml::from_str("url: http://127.0.0.1:9/x\nheaders: {X-Token: abc}\n").unwrap();
        let s = c.settings().unwrap();
        assert!(s.only_ng);
        assert!(!format!("{s:?}").contains("abc"));
        assert!(WebhookConfig::new("ftp://x/y").settings().unwrap_err().to_string().contains("sinks.webhook.url"));
        let bad = WebhookConfig { timeout_s: 0.0, ..c.clone() };
        assert!(bad.settings().unwrap_err().to_string().contains("sinks.webhook.timeout_s"));
        assert!(serde_yaml::from_str::<WebhookConfig>("url: http://a/b\nretry: 1\n").is_err());
        for bad in ["http://mes.local:70000/x", "http://mes.local:0/x", "http://mes local/x", "http://mes.local:/x", "https://:8080/x"] {
            let e = WebhookConfig::new(bad).settings().unwrap_err().to_string();
            assert!(e.contains("sinks.webhook.url"), "{bad}: {e}");
        }
        assert!(WebhookConfig::new("http://[::1]:8080/x").settings().is_ok());
        assert!(WebhookConfig::new("https://user@mes.local:8443/a?b=c").settings().is_ok());
    }
}
