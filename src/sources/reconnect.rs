//! The capture loop every camera thread runs: open, read frames, and on an unplug, an I/O
//! error or a stall close and reopen with capped exponential backoff. State changes
//! (streaming ↔ reconnecting) are logged once each; retries in between only at DEBUG.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{Frame, FrameSource, SourceError};

/// Reopen delays: `initial`, doubling, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(500), max: Duration::from_secs(30) }
    }
}

impl Backoff {
    /// The delay before reopen attempt `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
        Duration::from_secs_f64((self.initial.as_secs_f64() * factor).min(self.max.as_secs_f64()))
    }
}

/// What the loop reports to its owner.
#[derive(Debug, Clone)]
pub enum CaptureEvent {
    Frame(Frame),
    /// One bad frame (counted as an error frame); the stream goes on.
    BadFrame {
        kind: &'static str,
        seq: u64,
        message: String,
    },
    /// Streaming: the first open (`reopens` 0) or again after `reopens` attempts.
    Streaming {
        reopens: u32,
    },
    /// Lost or not yet open; the next open attempt (`attempt`) is in `delay`.
    Reconnecting {
        reason: String,
        attempt: u32,
        delay: Duration,
    },
    /// The source ended (a replay without loop).
    Ended,
    /// The source cannot work with this configuration; the loop has returned.
    Fatal(String),
}

/// Sleeps `d` in short slices; returns early when `stop` is set.
pub fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(20)));
    }
}

/// Runs `src` until `stop` is set, the source ends, or a fatal error. `frame_timeout`: a
/// stall is no frame within it.
pub fn run_capture(
    src: &mut dyn FrameSource,
    backoff: &Backoff,
    frame_timeout: Duration,
    stop: &AtomicBool,
    mut on: impl FnMut(CaptureEvent),
) {
    let camera = src.camera().to_string();
    let mut open = false;
    let mut attempt: u32 = 0;
    let mut down = false;
    let lost = |reason: String, attempt: &mut u32, down: &mut bool, on: &mut dyn FnMut(CaptureEvent)| {
        *attempt += 1;
        let delay = backoff.delay(*attempt);
        if !*down {
            tracing::warn!(camera = %camera, %reason, retry_in_s = delay.as_secs_f64(), "camera lost, reconnecting");
            *down = true;
        } else {
            tracing::debug!(camera = %camera, %reason, attempt = *attempt, retry_in_s = delay.as_secs_f64(), "reopen failed");
        }
        on(CaptureEvent::Reconnecting { reason, attempt: *attempt, delay });
        sleep_unless(stop, delay);
    };
    while !stop.load(Ordering::Relaxed) {
        if !open {
            match src.open() {
                Ok(()) => {
                    open = true;
                    if down {
                        tracing::info!(camera = %src.camera(), attempts = attempt, "camera streaming again");
                    } else {
                        tracing::info!(camera = %src.camera(), "camera streaming");
                    }
                    on(CaptureEvent::Streaming { reopens: attempt });
                    attempt = 0;
                    down = false;
                }
                Err(SourceError::Fatal(m)) => {
                    tracing::error!(camera = %src.camera(), error = %m, "camera stopped");
                    on(CaptureEvent::Fatal(m));
                    return;
                }
                Err(e) => {
                    lost(e.to_string(), &mut attempt, &mut down, &mut on);
                    continue;
                }
            }
        }
        match src.next_frame(frame_timeout) {
            Ok(f) => on(CaptureEvent::Frame(f)),
            Err(SourceError::Idle) => {}
            Err(SourceError::BadFrame { kind, seq, message }) => {
                tracing::warn!(camera = %src.camera(), kind, seq, %message, "bad frame");
                on(CaptureEvent::BadFrame { kind, seq, message });
            }
            Err(SourceError::Ended) => {
                src.close();
                tracing::info!(camera = %src.camera(), "source ended");
                on(CaptureEvent::Ended);
                return;
            }
            Err(SourceError::Fatal(m)) => {
                src.close();
                tracing::error!(camera = %src.camera(), error = %m, "camera stopped");
                on(CaptureEvent::Fatal(m));
                return;
            }
            Err(e @ (SourceError::Stalled(_) | SourceError::Lost(_))) => {
                src.close();
                open = false;
                lost(e.to_string(), &mut attempt, &mut down, &mut on);
            }
        }
    }
    src.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff::default();
        let d: Vec<f64> = (1..=9).map(|a| b.delay(a).as_secs_f64()).collect();
        assert_eq!(d, vec![0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]);
        assert_eq!(b.delay(1000).as_secs_f64(), 30.0);
    }
}
