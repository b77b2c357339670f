//! `glad serve`: the station loop with a service around it. systemd notifications and the
//! watchdog (`notify`), signals (`signals`), the HTTP face and the live page (`http`).
//!
//! The service never touches the engine: it drives the station through [`StationLifecycle`]
//! (start, reload, shutdown) and reads the shared [`StationState`] (latest results,
//! counters, heartbeats, degraded components).
//!
//! ```text
//!  serve(start, ..)
//!    ├─ STATUS=loading … + EXTEND_TIMEOUT_USEC every few seconds   while `start` loads models
//!    ├─ HTTP server (own tokio runtime on its own thread)          once the state exists
//!    ├─ READY=1                                                    once `state.ready` is set
//!    ├─ watchdog thread: WATCHDOG=1 every WATCHDOG_USEC/2 while no heartbeat is stale
//!    ├─ SIGHUP  → RELOADING=1, lifecycle.reload(config) → log changes / keep old → READY=1
//!    └─ SIGTERM/SIGINT → STOPPING=1, lifecycle.shutdown(drain bound), HTTP stops, Ok(())
//! ```
//!
//! Wiring `glad serve` (the station implements [`StationLifecycle`]; `http:` and `service:` are
//! sections of the station config):
//!
//! ```text
//! Command::Serve(args) => {
//!     let config = StationConfig::load(&args.config)?;
//!     let sections = service::ServeSections::of(&config, &args.config)?;
//!     let opts = service::ServeOptions { config_path: args.config.clone(), service: sections.service, http: sections.http };
//!     service::serve(opts, |loading| { loading.status("loading bundles"); Station::start(config) }).map(|_| true)
//! }
//! impl service::StationLifecycle for Station {
//!     fn state(&self) -> Arc<StationState> { Station::state(self) }
//!     fn reload(&mut self, path: &Path) -> Result<Vec<String>> { Station::reload(self, StationConfig::load(path)?) }
//!     fn shutdown(self, timeout: Duration) -> Result<()> { Station::shutdown(self, timeout) }
//! }
//! ```

pub mod http;
pub mod notify;
pub mod signals;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::station::StationConfig;
use crate::telemetry::StationState;

pub use http::{BoundHttp, HttpConfig, HttpServer, HttpSettings};
pub use notify::{Loading, Notifier, Watchdog};
pub use signals::{Event, SignalListener};

/// What the service needs from a running station. The station (`Station::start(config)`)
/// implements it; tests implement it with a fake that publishes frames.
///
/// Heartbeat contract (what the watchdog and `/readyz` rely on): every loop of the station
/// registers a heartbeat in `state().heartbeats` and beats whenever it makes progress — the
/// engine loop per batch (and on its idle wake-ups, at least every second, while its queue is
/// empty), each camera thread per frame captured or per reconnect attempt. A camera with
/// `trigger: true` that is waiting for a trigger beats on its idle wake-ups (at least once a
/// second), so waiting is not a fault. A loop that ends on purpose unregisters its heartbeat.
/// A stuck engine or a dead camera thread stops beating; once a beat is older than
/// `service.heartbeat_max_age_s` the watchdog stops pinging and systemd restarts the unit.
pub trait StationLifecycle {
    /// The shared state (the same `Arc` for the station's whole life, reloads included).
    fn state(&self) -> Arc<StationState>;
    /// Reads the config at `path` again and applies what can change without a restart
    /// (thresholds, calibrations, rate limits, ROIs; models only where they changed). Returns
    /// one line per change. A config that does not validate is an error naming the key, and
    /// the running config stays in force.
    fn reload(&mut self, path: &Path) -> Result<Vec<String>>;
    /// Stops taking frames, finishes the frames in flight, flushes the sinks, within `timeout`.
    fn shutdown(self, timeout: Duration) -> Result<()>;
}

/// The `service:` section of the station config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Bound on the shutdown drain (frames in flight, sink flushes). The unit's
    /// `TimeoutStopSec=` must be longer.
    pub drain_timeout_s: f64,
    /// A heartbeat older than this stops the watchdog pings and fails `/readyz`.
    pub heartbeat_max_age_s: f64,
    /// While loading, `EXTEND_TIMEOUT_USEC=` is sent this often (each extends the start
    /// timeout by three times this).
    pub load_extend_interval_s: f64,
    /// No more extensions after this long: a load that hangs is then killed by
    /// `TimeoutStartSec=` instead of being extended for ever.
    pub load_timeout_s: f64,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig { drain_timeout_s: 10.0, heartbeat_max_age_s: 10.0, load_extend_interval_s: 5.0, load_timeout_s: 1800.0 }
    }
}

impl ServiceConfig {
    pub fn validate(&self) -> Result<()> {
        // The positive lower bound keeps a zero drain or heartbeat from stopping at once.
        let check = |key: &str, v: f64, max: f64| crate::config::check::seconds(&format!("key `service.{key}`"), v, 0.001, max);
        check("drain_timeout_s", self.drain_timeout_s, 600.0)?;
        check("heartbeat_max_age_s", self.heartbeat_max_age_s, 3600.0)?;
        check("load_extend_interval_s", self.load_extend_interval_s, 600.0)?;
        check("load_timeout_s", self.load_timeout_s, 86400.0)?;
        Ok(())
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.drain_timeout_s)
    }

    pub fn heartbeat_max_age(&self) -> Duration {
        Duration::from_secs_f64(self.heartbeat_max_age_s)
    }
}

/// The sections of the station config the service owns, `http:` and `service:`, parsed and
/// checked here (the station keeps them as YAML and ignores them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServeSections {
    pub http: HttpConfig,
    pub service: ServiceConfig,
}

impl ServeSections {
    /// The sections of `config`, checked; errors name `file` and the key.
    pub fn of(config: &StationConfig, file: &Path) -> Result<ServeSections> {
        fn part<T: serde::de::DeserializeOwned + Default>(file: &Path, key: &str, v: &Option<serde_yaml::Value>) -> Result<T> {
            let Some(v) = v else { return Ok(T::default()) };
            serde_path_to_error::deserialize(v.clone()).map_err(|e| {
                let inner = e.path().to_string();
                let at = if inner == "." || inner.is_empty() { key.to_string() } else { format!("{key}.{inner}") };
                anyhow::anyhow!("{}: key `{at}`: {}", file.display(), e.into_inner())
            })
        }
        let s = ServeSections { http: part(file, "http", &config.http)?, service: part(file, "service", &config.service)? };
        s.service.validate().map_err(|e| anyhow::anyhow!("{}: {e:#}", file.display()))?;
        s.http.resolve().map_err(|e| anyhow::anyhow!("{}: {e:#}", file.display()))?;
        Ok(s)
    }
}

/// Everything `serve` needs besides the station.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The config file that SIGHUP re-reads.
    pub config_path: PathBuf,
    pub service: ServiceConfig,
    pub http: HttpConfig,
}

/// Runs the station as a service until SIGTERM or SIGINT: `start` loads the station (models,
/// warm-up) and may report progress through `Loading::status`; then HTTP, READY=1, the
/// watchdog, SIGHUP reloads; on shutdown STOPPING=1 and a bounded drain. Returns Ok after a
/// clean shutdown (exit 0).
pub fn serve<L, F>(opts: ServeOptions, start: F) -> Result<()>
where
    L: StationLifecycle,
    F: FnOnce(&Loading) -> Result<L>,
{
    opts.service.validate()?;
    let http = opts.http.resolve()?;
    // Bound before the models load: a port in use fails now, not after a long load (which
    // `Restart=on-failure` would repeat).
    let bound = http::HttpServer::bind(http)?;
    let notifier = Notifier::from_env();
    // Signals first, so a SIGTERM during a long load is not lost (it is acted on once the load returns).
    let (tx, rx) = crossbeam_channel::unbounded();
    let signals = SignalListener::start(tx)?;

    let t0 = Instant::now();
    let loading = Loading::start(
        notifier.clone(),
        Duration::from_secs_f64(opts.service.load_extend_interval_s),
        Duration::from_secs_f64(opts.service.load_timeout_s),
    );
    loading.status("loading models");
    let mut station = match start(&loading) {
        Ok(s) => s,
        Err(e) => {
            notifier.status(&format!("failed to start: {e:#}"));
            signals.close();
            return Err(e.context("station failed to start"));
        }
    };
    let state = station.state();
    // The station may finish warming up after `start` returned; keep extending until it says so.
    let mut early_stop = None;
    while !state.ready.load(Ordering::Acquire) {
        loading.status("warming up");
        if let Ok(Event::Shutdown(sig)) = rx.recv_timeout(Duration::from_millis(50)) {
            early_stop = Some(sig);
            break;
        }
    }
    let server = match early_stop {
        Some(_) => None,
        None => match http::HttpServer::serve(bound, state.clone(), opts.service.heartbeat_max_age()) {
            Ok(s) => Some(s),
            Err(e) => {
                loading.finish();
                notifier.status(&format!("failed to start: {e:#}"));
                let _ = station.shutdown(opts.service.drain_timeout());
                signals.close();
                return Err(e);
            }
        },
    };
    loading.finish();

    let mut watchdog = None;
    if let Some(server) = &server {
        let serving = format!("serving {} camera(s), http://{}", state.cameras.len(), server.addr());
        tracing::info!(load_s = format!("{:.1}", t0.elapsed().as_secs_f64()), "{serving}");
        notifier.ready(&serving);
        watchdog = notify::watchdog_interval()
            .map(|every| Watchdog::start(notifier.clone(), state.clone(), every, opts.service.heartbeat_max_age()));

        loop {
            match rx.recv() {
                Ok(Event::Reload) => {
                    notifier.reloading();
                    reload(&mut station, &opts.config_path);
                    notifier.ready(&serving);
                }
                Ok(Event::Shutdown(sig)) => {
                    tracing::info!(signal = sig, "shutting down");
                    break;
                }
                Err(_) => break,
            }
        }
    } else if let Some(sig) = early_stop {
        tracing::info!(signal = sig, "shutting down before the station was ready");
    }

    let drain = opts.service.drain_timeout();
    notifier.stopping(&format!("stopping: draining (at most {:.0} s)", drain.as_secs_f64()));
    if let Some(w) = watchdog.take() {
        w.stop();
    }
    let t_stop = Instant::now();
    let result = station.shutdown(drain).context("station shutdown");
    if let Some(server) = server {
        server.shutdown(Duration::from_secs(2));
    }
    signals.close();
    match &result {
        Ok(()) => tracing::info!(drain_s = format!("{:.2}", t_stop.elapsed().as_secs_f64()), "stopped"),
        Err(e) => tracing::error!("shutdown: {e:#}"),
    }
    result
}

/// SIGHUP: applies the new config or keeps the old one, and logs which.
fn reload<L: StationLifecycle>(station: &mut L, path: &Path) {
    match station.reload(path) {
        Ok(changes) if changes.is_empty() => tracing::info!(config = %path.display(), "reloaded: nothing changed"),
        Ok(changes) => {
            tracing::info!(config = %path.display(), "reloaded: {} change(s)", changes.len());
            for c in &changes {
                tracing::info!("reload: {c}");
            }
        }
        Err(e) => tracing::error!(config = %path.display(), "reload rejected, the running config stays: {e:#}"),
    }
}
