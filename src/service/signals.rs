//! Signals (`signal-hook`): SIGTERM and SIGINT ask for a graceful shutdown, SIGHUP for a
//! config reload. A second SIGTERM/SIGINT while the first shutdown drains exits at once
//! (status 130), for an operator pressing Ctrl-C twice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use crossbeam_channel::Sender;
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

/// What a signal asks the service to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// SIGTERM or SIGINT (the signal's name).
    Shutdown(&'static str),
    /// SIGHUP.
    Reload,
}

/// A thread turning signals into [`Event`]s.
pub struct SignalListener {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

impl SignalListener {
    pub fn start(tx: Sender<Event>) -> Result<SignalListener> {
        let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP]).context("installing signal handlers")?;
        let handle = signals.handle();
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("glad-signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    let event = match sig {
                        SIGHUP => Event::Reload,
                        SIGINT => Event::Shutdown("SIGINT"),
                        _ => Event::Shutdown("SIGTERM"),
                    };
                    if let Event::Shutdown(name) = event {
                        if stopping.swap(true, Ordering::AcqRel) {
                            tracing::warn!(signal = name, "second shutdown signal while draining: exiting now");
                            std::process::exit(130);
                        }
                    }
                    if tx.send(event).is_err() {
                        break;
                    }
                }
            })
            .context("spawning the signal thread")?;
        Ok(SignalListener { handle, thread: Some(thread) })
    }

    /// Stops listening (the handlers stay installed; later signals are ignored).
    pub fn close(mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SignalListener {
    fn drop(&mut self) {
        self.handle.close();
    }
}
