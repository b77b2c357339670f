//! The webhook sink: an HTTP POST of the JSON record (NG frames only, or every record) from
//! a thread of its own (ureq, blocking). `submit` only queues (bounded; full: dropped and
//! counted). Each failed attempt (connection error, timeout, 5xx, 429) counts in
//! `glad_sink_failures_total{sink="webhook"}` and is retried with exponential backoff; a
//! record that used up its retries, or got a 4xx, is dropped and counted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

use super::webhook_config::WebhookSettings;
use super::{FrameRecord, FrameResult, Health, Sink, SinkCounters};
use crate::telemetry::StationState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookStats {
    pub delivered: u64,
    /// Failed attempts (each retry that was needed counts).
    pub failures: u64,
    /// Dropped: queue full, retries used up, or refused (4xx).
    pub dropped: u64,
    /// Queued or being sent.
    pub pending: u64,
}

#[derive(Debug)]
struct Shared {
    counters: SinkCounters,
    delivered: AtomicU64,
    pending: AtomicU64,
    stop: AtomicBool,
    /// The last attempt failed (cleared by the next success).
    failing: Mutex<Option<String>>,
}

#[derive(Debug)]
pub struct WebhookSink {
    tx: Mutex<Option<Sender<Arc<FrameRecord>>>>,
    stop_tx: Mutex<Option<Sender<()>>>,
    shared: Arc<Shared>,
    only_ng: bool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl WebhookSink {
    pub fn new(s: WebhookSettings, state: Option<Arc<StationState>>) -> Result<WebhookSink> {
        let (tx, rx) = bounded(s.queue_capacity);
        let (stop_tx, stop_rx) = bounded::<()>(1);
        let shared = Arc::new(Shared {
            counters: SinkCounters::new("webhook", state),
            delivered: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            failing: Mutex::new(None),
        });
        let only_ng = s.only_ng;
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sink-webhook".into())
            .spawn(move || worker(s, rx, stop_rx, sh))
            .context("starting the webhook thread")?;
        Ok(WebhookSink { tx: Mutex::new(Some(tx)), stop_tx: Mutex::new(Some(stop_tx)), shared, only_ng, thread: Mutex::new(Some(thread)) })
    }

    pub fn stats(&self) -> WebhookStats {
        WebhookStats {
            delivered: self.shared.delivered.load(Ordering::Relaxed),
            failures: self.shared.counters.failures(),
            dropped: self.shared.counters.dropped(),
            pending: self.shared.pending.load(Ordering::Relaxed),
        }
    }
}

impl Sink for WebhookSink {
    fn name(&self) -> &str {
        "webhook"
    }

    fn submit(&self, result: &FrameResult) {
        if self.only_ng && !result.record.is_ng() {
            return;
        }
        let tx = self.tx.lock().expect("webhook tx lock");
        let Some(tx) = tx.as_ref() else { return };
        self.shared.pending.fetch_add(1, Ordering::Relaxed);
        match tx.try_send(result.record.clone()) {
            Ok(()) => self.shared.counters.set_queued(tx.len() as i64),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.shared.pending.fetch_sub(1, Ordering::Relaxed);
                self.shared.counters.add_dropped(1);
            }
        }
    }

    /// Waits until every queued record was delivered or given up, at most `timeout`.
    fn flush(&self, timeout: Duration) -> Result<()> {
        let end = Instant::now() + timeout;
        while self.shared.pending.load(Ordering::Relaxed) > 0 {
            if Instant::now() >= end {
                return Err(anyhow!("webhook: {} records still pending after {timeout:?}", self.shared.pending.load(Ordering::Relaxed)));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    fn health(&self) -> Health {
        match self.shared.failing.lock().expect("webhook failing lock").clone() {
            Some(r) => Health::Degraded(r),
            None => Health::Ok,
        }
    }
}

impl Drop for WebhookSink {
    /// Stops at once: retries in progress are abandoned, what is still queued is not sent.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.tx.lock().expect("webhook tx lock").take();
        self.stop_tx.lock().expect("webhook stop lock").take();
        if let Some(t) = self.thread.lock().expect("webhook thread lock").take() {
            let _ = t.join();
        }
    }
}

enum Attempt {
    Delivered,
    Retry(String),
    Refused(String),
}

fn worker(s: WebhookSettings, rx: Receiver<Arc<FrameRecord>>, stop_rx: Receiver<()>, sh: Arc<Shared>) {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(s.timeout)).http_status_as_error(false).max_redirects(0).build().into();
    let mut degraded = false;
    while let Ok(rec) = rx.recv() {
        sh.counters.set_queued(rx.len() as i64);
        let body = match serde_json::to_vec(&*rec) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "webhook: cannot serialise a record");
                sh.counters.add_dropped(1);
                sh.pending.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
        };
        let mut backoff = s.backoff_initial;
        let mut attempt = 0u32;
        loop {
            if sh.stop.load(Ordering::Relaxed) {
                break;
            }
            match post(&agent, &s, &body) {
                Attempt::Delivered => {
                    sh.delivered.fetch_add(1, Ordering::Relaxed);
                    if degraded {
                        tracing::info!("webhook: delivering again");
                        degraded = false;
                        sh.counters.set_degraded(None);
                        *sh.failing.lock().expect("webhook failing lock") = None;
                    }
                    break;
                }
                Attempt::Refused(why) => {
                    sh.counters.add_failure();
                    sh.counters.add_dropped(1);
                    tracing::warn!(camera = %rec.camera, seq = rec.seq, reason = %why, "webhook: refused; record dropped");
                    break;
                }
                Attempt::Retry(why) => {
                    sh.counters.add_failure();
                    let reason = format!("webhook failing: {why}");
                    if !degraded {
                        tracing::warn!(reason = %why, "webhook: delivery failed; retrying with backoff");
                        degraded = true;
                        sh.counters.set_degraded(Some(reason.clone()));
                    }
                    *sh.failing.lock().expect("webhook failing lock") = Some(reason);
                    if attempt >= s.retries {
                        sh.counters.add_dropped(1);
                        tracing::debug!(camera = %rec.camera, seq = rec.seq, "webhook: retries used up; record dropped");
                        break;
                    }
                    attempt += 1;
                    // Sleep, but wake up at once when the sink is dropped.
                    if stop_rx.recv_timeout(backoff) != Err(crossbeam_channel::RecvTimeoutError::Timeout) {
                        break;
                    }
                    backoff = (backoff * 2).min(s.backoff_max);
                }
            }
        }
        sh.pending.fetch_sub(1, Ordering::Relaxed);
        if sh.stop.load(Ordering::Relaxed) {
            break;
        }
    }
}

fn post(agent: &ureq::Agent, s: &WebhookSettings, body: &[u8]) -> Attempt {
    let mut req = agent.post(&s.url).header("content-type", "application/json");
    for (k, v) in &s.headers {
        req = req.header(k.as_str(), v.expose());
    }
    match req.send(body) {
        Ok(resp) => {
            let status = resp.status().as_u16();
            match status {
                200..=299 => Attempt::Delivered,
                429 | 500..=599 | 408 => Attempt::Retry(format!("HTTP {status}")),
                _ => Attempt::Refused(format!("HTTP {status}")),
            }
        }
        Err(e) => Attempt::Retry(e.to_string()),
    }
}
