//! The results log: one JSON line per frame in `<dir>/results.jsonl` (rotated by size into
//! results.1.jsonl, results.2.jsonl, ...) and, unless quiet, on stdout. Written by its own
//! thread behind a bounded queue. Nothing is lost without a trace:
//! - a log deleted (or its folder removed) while running is noticed before the next line and
//!   opened anew (logged, counted in `glad_sink_failures_total{sink="jsonl"}`);
//! - a line is written whole or not at all: a failed write (disk full) is cut back to the last
//!   whole line, the record counted as lost (`glad_sink_dropped_total{sink="jsonl"}`,
//!   [`Sink::lost`]), the sink marked degraded; the next record tries again.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use crossbeam_channel::{bounded, Sender, TrySendError};

use super::{FrameRecord, FrameResult, Health, Sink, SinkCounters};
use crate::telemetry::StationState;

enum Msg {
    Record(Arc<FrameRecord>),
    Flush(Sender<()>),
}

pub struct JsonlSink {
    tx: Mutex<Option<Sender<Msg>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    health: Arc<Mutex<Health>>,
    /// Records refused because the queue was full.
    pub dropped: AtomicU64,
    /// Records lost: refused, or not written (disk full, unwritable).
    counters: Arc<SinkCounters>,
    pub path: PathBuf,
}

const QUEUE: usize = 4096;

struct Writer {
    dir: PathBuf,
    max_bytes: u64,
    keep: usize,
    stdout: bool,
    file: Option<(File, u64)>,
    counters: Arc<SinkCounters>,
}

/// The identity of an open file, to notice it was deleted or replaced under us.
fn file_id(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

impl Writer {
    fn path(&self, k: usize) -> PathBuf {
        if k == 0 {
            self.dir.join("results.jsonl")
        } else {
            self.dir.join(format!("results.{k}.jsonl"))
        }
    }

    fn rotate(&mut self) -> Result<()> {
        self.file = None;
        if self.keep == 0 {
            std::fs::remove_file(self.path(0)).ok();
            return Ok(());
        }
        std::fs::remove_file(self.path(self.keep)).ok();
        for k in (0..self.keep).rev() {
            if self.path(k).exists() {
                std::fs::rename(self.path(k), self.path(k + 1)).with_context(|| format!("{}: cannot rotate", self.path(k).display()))?;
            }
        }
        Ok(())
    }

    fn open(&mut self) -> Result<()> {
        // Deleted, or its folder removed, since it was opened: writes would vanish.
        if let Some((f, _)) = &self.file {
            let here = std::fs::metadata(self.path(0)).ok().map(|m| file_id(&m));
            let open = f.metadata().ok().map(|m| file_id(&m));
            if here.is_none() || here != open {
                tracing::warn!(path = %self.path(0).display(), "results log deleted or replaced while running: opening it anew");
                self.counters.add_failure();
                self.file = None;
                std::fs::create_dir_all(&self.dir).with_context(|| format!("{}: cannot create results folder", self.dir.display()))?;
            }
        }
        if self.file.is_none() {
            let p = self.path(0);
            let f = OpenOptions::new().create(true).append(true).open(&p).with_context(|| format!("{}: cannot open", p.display()))?;
            let size = f.metadata().map(|m| m.len()).unwrap_or(0);
            self.file = Some((f, size));
        }
        Ok(())
    }

    fn write(&mut self, line: &str) -> Result<()> {
        if self.stdout {
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        }
        self.open()?;
        let size = self.file.as_ref().map_or(0, |f| f.1);
        if size > 0 && size + line.len() as u64 + 1 > self.max_bytes {
            self.rotate()?;
            self.open()?;
        }
        let (f, size) = self.file.as_mut().expect("opened above");
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        if let Err(e) = f.write_all(&buf) {
            // Cut a partial line back so the log holds whole lines only (an append-mode file
            // writes at its end: its length before this line is `size`).
            if let Err(t) = f.set_len(*size) {
                tracing::warn!(error = %t, "results log: cannot cut back a partial line");
            }
            self.file = None;
            bail!("{}: cannot write: {e}", self.path(0).display());
        }
        *size += buf.len() as u64;
        Ok(())
    }
}

impl JsonlSink {
    /// `dir` is created; `max_bytes` rotates the log, `keep` rotated files are kept.
    pub fn new(dir: &Path, max_bytes: u64, keep: usize, stdout: bool) -> Result<JsonlSink> {
        Self::with_state(dir, max_bytes, keep, stdout, None)
    }

    /// [`JsonlSink::new`] counting into a station's metrics.
    pub fn with_state(dir: &Path, max_bytes: u64, keep: usize, stdout: bool, state: Option<Arc<StationState>>) -> Result<JsonlSink> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create results folder", dir.display()))?;
        let (tx, rx) = bounded::<Msg>(QUEUE);
        let health = Arc::new(Mutex::new(Health::Ok));
        let h = health.clone();
        let counters = Arc::new(SinkCounters::new("jsonl", state));
        let mut w = Writer { dir: dir.to_path_buf(), max_bytes, keep, stdout, file: None, counters: counters.clone() };
        let path = w.path(0);
        let thread = std::thread::Builder::new()
            .name("sink-jsonl".into())
            .spawn(move || {
                for msg in rx {
                    match msg {
                        Msg::Record(r) => {
                            let line = serde_json::to_string(&*r).expect("records serialize");
                            let res = w.write(&line);
                            if let Err(e) = &res {
                                tracing::error!(camera = %r.camera, seq = r.seq, error = %format!("{e:#}"), "results log: record lost");
                                w.counters.add_dropped(1);
                            }
                            let mut h = h.lock().expect("health lock");
                            *h = match res {
                                Ok(()) => Health::Ok,
                                Err(e) => Health::Degraded(format!("{e:#}")),
                            };
                        }
                        Msg::Flush(ack) => {
                            if let Some((f, _)) = &mut w.file {
                                let _ = f.flush();
                            }
                            let _ = std::io::stdout().flush();
                            let _ = ack.send(());
                        }
                    }
                }
            })
            .context("cannot start the JSONL writer")?;
        Ok(JsonlSink { tx: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)), health, dropped: AtomicU64::new(0), counters, path })
    }

    /// Writes everything queued and stops the writer thread.
    pub fn close(&self) {
        self.tx.lock().expect("tx lock").take();
        if let Some(t) = self.thread.lock().expect("thread lock").take() {
            let _ = t.join();
        }
    }
}

impl Drop for JsonlSink {
    fn drop(&mut self) {
        self.close();
    }
}

impl Sink for JsonlSink {
    fn name(&self) -> &str {
        "jsonl"
    }

    fn submit(&self, result: &FrameResult) {
        let tx = self.tx.lock().expect("tx lock");
        let Some(tx) = tx.as_ref() else { return };
        match tx.try_send(Msg::Record(result.record.clone())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                self.counters.add_dropped(1);
            }
        }
    }

    fn flush(&self, timeout: Duration) -> Result<()> {
        let tx = self.tx.lock().expect("tx lock").clone();
        let Some(tx) = tx else { return Ok(()) };
        let (ack_tx, ack_rx) = bounded(1);
        tx.send_timeout(Msg::Flush(ack_tx), timeout).map_err(|_| anyhow::anyhow!("jsonl: flush timed out (queue full)"))?;
        ack_rx.recv_timeout(timeout).map_err(|_| anyhow::anyhow!("jsonl: flush timed out after {} ms", timeout.as_millis()))
    }

    fn health(&self) -> Health {
        self.health.lock().expect("health lock").clone()
    }

    fn lost(&self) -> u64 {
        self.counters.dropped()
    }
}
