//! `glad serve --config station.yaml`: the station of `glad run` as a systemd service, with
//! its HTTP face and live page (src/service). Wiring only.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use crate::service::{self, ServeOptions, ServeSections, StationLifecycle};
use crate::station::{StartOptions, Station, StationConfig, StationState};

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Station config (config/station.example.yaml documents every key; `http:` and `service:`
    /// configure the service). SIGHUP re-reads it.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
    /// Also print every record's JSON line on stdout (off: the journal gets the logs only).
    #[arg(long)]
    pub stdout: bool,
}

impl StationLifecycle for Station {
    fn state(&self) -> Arc<StationState> {
        Station::state(self)
    }
    fn reload(&mut self, path: &Path) -> Result<Vec<String>> {
        let config = StationConfig::load(path)?;
        ServeSections::of(&config, path)?;
        Station::reload(self, config)
    }
    fn shutdown(self, timeout: Duration) -> Result<()> {
        Station::shutdown(self, timeout)
    }
}

pub fn run(args: ServeArgs) -> Result<bool> {
    let config = StationConfig::load(&args.config)?;
    let sections = ServeSections::of(&config, &args.config)?;
    let opts = ServeOptions { config_path: args.config.clone(), service: sections.service, http: sections.http };
    let path = args.config.clone();
    service::serve(opts, |loading| {
        loading.status("loading bundles and warming up");
        Station::start(config, StartOptions { stdout: args.stdout, ..Default::default() })
            .with_context(|| format!("{}: cannot start the station", path.display()))
    })?;
    Ok(true)
}
