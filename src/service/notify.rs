//! systemd notifications (`sd_notify(3)` through the `sd-notify` crate): `STATUS=` while
//! loading, `EXTEND_TIMEOUT_USEC=` during a long load (TensorRT engine builds), `READY=1`
//! after load and warm-up, `WATCHDOG=1` driven by the station's heartbeats, `RELOADING=1`
//! around a reload, `STOPPING=1` on shutdown. Without `NOTIFY_SOCKET` (not under systemd)
//! every call is a no-op.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::telemetry::StationState;

/// Sends notifications to the service manager named by `NOTIFY_SOCKET`.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    failed_once: Arc<AtomicBool>,
}

impl Notifier {
    /// Uses `NOTIFY_SOCKET` from the environment (read at each send, as sd-notify does).
    pub fn from_env() -> Notifier {
        Notifier::default()
    }

    fn send(&self, states: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(states) {
            // One warning, not one per watchdog ping.
            if !self.failed_once.swap(true, Ordering::Relaxed) {
                tracing::warn!("systemd notify failed: {e}");
            }
        }
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// Asks for `by` more time to start (or stop), counted from now.
    pub fn extend_timeout(&self, by: Duration) {
        let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
        self.send(&[NotifyState::ExtendTimeoutUsec(usec)]);
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now, NotifyState::Status("reloading the config")]),
            Err(_) => self.send(&[NotifyState::Reloading, NotifyState::Status("reloading the config")]),
        }
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }
}

/// The watchdog ping interval: half of `WATCHDOG_USEC` (None when systemd set no watchdog,
/// or set it for another process).
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero()).map(|d| d / 2)
}

/// The load phase: `STATUS=` lines, and a thread sending `EXTEND_TIMEOUT_USEC=` (three
/// intervals' worth) every `interval` until [`Loading::finish`], so a slow first start (a
/// TensorRT engine build of minutes) is not killed by `TimeoutStartSec=`; after `max` it stops
/// extending (a hung load is then killed by systemd).
pub struct Loading {
    notifier: Notifier,
    status: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Loading {
    pub fn start(notifier: Notifier, interval: Duration, max: Duration) -> Loading {
        let status = Arc::new(Mutex::new(String::from("loading")));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (notifier, status, stop) = (notifier.clone(), status.clone(), stop.clone());
            std::thread::Builder::new()
                .name("glad-load-extend".into())
                .spawn(move || {
                    let t0 = Instant::now();
                    let mut next = Instant::now();
                    while !stop.load(Ordering::Acquire) {
                        if Instant::now() >= next {
                            if t0.elapsed() >= max {
                                tracing::error!("still loading after {:.0} s: no more start-timeout extensions", max.as_secs_f64());
                                notifier.status("loading takes too long: no more start-timeout extensions");
                                break;
                            }
                            notifier.extend_timeout(interval * 3);
                            let s = status.lock().expect("status lock").clone();
                            notifier.status(&format!("{s} ({:.0} s)", t0.elapsed().as_secs_f64()));
                            next += interval;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                })
                .expect("spawn the load-extend thread")
        };
        Loading { notifier, status, stop, thread: Mutex::new(Some(thread)) }
    }

    /// Reports a load step (`STATUS=`), e.g. "building the TensorRT engine of bundle `brick`".
    pub fn status(&self, status: &str) {
        let mut s = self.status.lock().expect("status lock");
        if *s != status {
            *s = status.to_string();
            tracing::info!("{status}");
            self.notifier.status(status);
        }
    }

    /// Stops the extensions (idempotent).
    pub fn finish(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.lock().expect("thread lock").take() {
            let _ = t.join();
        }
    }
}

impl Drop for Loading {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Pings `WATCHDOG=1` every `every` while `state.heartbeats.stale(max_age)` is empty; a stuck
/// engine or a dead camera thread (a stale heartbeat) stops the pings, and systemd restarts
/// the unit after `WatchdogSec=`. Triggered cameras waiting for a trigger keep beating on
/// their idle wake-ups (see [`super::StationLifecycle`]), so they never stop the pings.
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    pub fn start(notifier: Notifier, state: Arc<StationState>, every: Duration, max_age: Duration) -> Watchdog {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("glad-watchdog".into())
            .spawn(move || {
                tracing::info!(every_ms = every.as_millis() as u64, max_age_s = max_age.as_secs_f64(), "watchdog on");
                let mut was_stale: Vec<String> = Vec::new();
                while !stop2.load(Ordering::Acquire) {
                    let stale = state.heartbeats.stale(max_age);
                    if stale.is_empty() {
                        notifier.watchdog();
                        if !was_stale.is_empty() {
                            tracing::info!("heartbeats fresh again; watchdog pings resume");
                            notifier.status("running");
                        }
                    } else if stale != was_stale {
                        let list = stale.join(", ");
                        tracing::error!(stale = %list, "no progress for {:.1} s: watchdog pings stop", max_age.as_secs_f64());
                        notifier.status(&format!("stalled: {list}"));
                    }
                    was_stale = stale;
                    let until = Instant::now() + every;
                    while Instant::now() < until && !stop2.load(Ordering::Acquire) {
                        std::thread::sleep((until - Instant::now()).min(Duration::from_millis(20)));
                    }
                }
            })
            .expect("spawn the watchdog thread");
        Watchdog { stop, thread: Some(thread) }
    }

    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.halt();
    }
}
