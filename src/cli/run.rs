//! `glad run --config station.yaml`: the station until SIGINT or SIGTERM, then a clean stop
//! (sources stopped, frames in flight inspected, sinks flushed). A thin wrapper over
//! `station::Station`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use crate::service::ServeSections;
use crate::station::{CameraStatus, StartOptions, Station, StationConfig};

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Station config (see config/station.example.yaml for every key).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
    /// Do not print the JSON lines on stdout (they still go to the results folder).
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Seconds to wait for sinks to flush at shutdown.
    #[arg(long, default_value_t = 30.0, value_name = "S")]
    pub shutdown_timeout: f64,
}

pub fn run(args: RunArgs) -> Result<bool> {
    if !args.shutdown_timeout.is_finite() || args.shutdown_timeout < 0.0 || args.shutdown_timeout > 3600.0 {
        anyhow::bail!("--shutdown-timeout: {} is out of range (0 ..= 3600 s)", args.shutdown_timeout);
    }
    let config = StationConfig::load(&args.config)?;
    // The same file serves `glad serve`: its `http:` and `service:` sections must be valid too.
    ServeSections::of(&config, &args.config)?;
    // `glad run` has no HTTP face: a triggered camera can only be triggered by the PLC (Modbus).
    if config.sinks.modbus.is_none() {
        if let Some(c) = config.cameras.iter().find(|c| c.trigger) {
            anyhow::bail!(
                "{}: camera `{}` has `trigger: true`, but `glad run` has no trigger path without `sinks.modbus` \
                 (every frame would be discarded): use `glad serve` (POST /api/trigger) or configure sinks.modbus",
                args.config.display(),
                c.name
            );
        }
    }
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, term.clone()).context("cannot install the signal handler")?;
    }
    let station = Station::start(config, StartOptions { stdout: !args.quiet, ..Default::default() })
        .with_context(|| format!("{}: cannot start the station", args.config.display()))?;
    tracing::info!(config = %args.config.display(), "running; SIGINT or SIGTERM stops");
    while !term.load(Ordering::Relaxed) && !station.sources_finished() {
        std::thread::sleep(Duration::from_millis(50));
    }
    if term.load(Ordering::Relaxed) {
        tracing::info!("signal received, stopping");
    } else {
        tracing::info!("every source ended, stopping");
    }
    let state = station.state();
    station.shutdown(Duration::from_secs_f64(args.shutdown_timeout))?;
    // A camera that refused its configuration (e.g. a format the driver cannot give) is a
    // real failure even though the others ran.
    let failed: Vec<String> = state
        .cameras
        .values()
        .filter_map(|c| {
            let s = c.status.lock().expect("status lock").clone();
            matches!(s, CameraStatus::Stopped(_)).then(|| format!("camera `{}`: {s}", c.name))
        })
        .collect();
    if !failed.is_empty() {
        anyhow::bail!("{}", failed.join("; "));
    }
    Ok(true)
}
