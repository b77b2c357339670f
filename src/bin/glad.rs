//! `glad`: the glad-edge runtime.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use glad_edge::cli::{
    self, bank::BankArgs, calibrate::CalibrateArgs, eval::EvalArgs, inspect::InspectArgs, run::RunArgs, serve::ServeArgs, tune::TuneArgs,
    CommonArgs, ParamArgs, Settings,
};

/// GLAD diffusion-based anomaly detection on ONNX Runtime.
#[derive(Parser)]
#[command(name = "glad", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a bundle's models, tensors, execution providers and parameter defaults.
    Info {
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Inspect images: one JSON line per image on stdout, heatmap PNGs in --out.
    Inspect(Box<InspectArgs>),
    /// Evaluate on an MVTec-layout dataset: image/pixel AUROC, AP, F1-max and PRO.
    Eval(Box<EvalArgs>),
    /// Set a verdict threshold from normal images and write a station config.
    Calibrate(Box<CalibrateArgs>),
    /// Build a bundle's memory bank of normal patches (for `glad.reference: bank | union`).
    Bank(Box<BankArgs>),
    /// Choose T, K, tau, min_step, v and the map reference on validation normals plus
    /// synthetic anomalies (never test images); prints the table it chose from.
    Tune(Box<TuneArgs>),
    /// Teach a new part: a closed, tuned and calibrated bundle from a folder of good images in
    /// one command (split, ATP fine-tuning of the base, bank, tune, calibrate, pack), with a
    /// report of the chosen parameters and expected rates.
    Teach(Box<cli::teach::TeachArgs>),
    /// Run a station: cameras, engines and results until SIGINT or SIGTERM.
    Run(Box<RunArgs>),
    /// The station as a systemd service: notify/watchdog, SIGHUP reload, HTTP API and live page.
    Serve(Box<ServeArgs>),
    /// Closed bundles: `pack SRC DST` copies shared models in and writes SHA-256 hashes;
    /// `verify DIR` checks the bundle whole; `sign` and `keygen` make signed bundles.
    Bundle {
        #[command(subcommand)]
        command: cli::pack::BundleCommand,
    },
    /// List the V4L2 cameras with their formats, frame sizes and rates.
    Cameras {
        /// Folder holding the video* device nodes.
        #[arg(long, default_value = "/dev", value_name = "DIR")]
        dev: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    glad_edge::logging::init();
    let result = match Cli::parse().command {
        Command::Info { common } => Settings::new(&common, ParamArgs::default()).and_then(|s| cli::info::run(&s)).map(|_| true),
        Command::Inspect(args) => cli::inspect::run(*args),
        Command::Eval(args) => cli::eval::run(*args),
        Command::Calibrate(args) => cli::calibrate::run(*args),
        Command::Bank(args) => cli::bank::run(*args),
        Command::Tune(args) => cli::tune::run(*args),
        Command::Teach(args) => cli::teach::run(*args),
        Command::Run(args) => cli::run::run(*args),
        Command::Serve(args) => cli::serve::run(*args),
        Command::Bundle { command } => cli::pack::run(command),
        Command::Cameras { dev } => cli::cameras::run(&dev),
    };
    let code: u8 = match result {
        Ok(true) => 0,
        Ok(false) => 2,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    if glad_edge::station::runner::ENGINE_ABANDONED.load(std::sync::atomic::Ordering::Acquire) {
        // An engine thread is still inside an ONNX Runtime call: leave without running the
        // library's static destructors under it (they would log errors, or crash, mid-run).
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        // SAFETY: _exit ends the process at once; every record and sink was flushed by the shutdown.
        unsafe { glad_edge::station::runner::exit_now(i32::from(code)) }
    }
    ExitCode::from(code)
}
