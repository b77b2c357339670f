//! The results log: one JSON line per frame in `<dir>/results.jsonl` (rotated by size into
//! results.1.jsonl, results.2.jsonl, ...) and, unless quiet, on stdout. Written by its own
//! thread behind a bounded queue; a write error marks the sink degraded and is retried.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use crossbeam_channel::{bounded, Sender, TrySendError};

use super::{FrameRecord, FrameResult, Health, Sink};

enum Msg {
    Record(Arc<FrameRecord>),
    Flush(Sender<()>),
}

pub struct JsonlSink {
    tx: Mutex<Option<Sender<Msg>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    health: Arc<Mutex<Health>>,
    pub dropped: AtomicU64,
    pub path: PathBuf,
}

const QUEUE: usize = 4096;

struct Writer {
    dir: PathBuf,
    max_bytes: u64,
    keep: usize,
    stdout: bool,
    file: Option<(File, u64)>,
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
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create results folder", dir.display()))?;
        let (tx, rx) = bounded::<Msg>(QUEUE);
        let health = Arc::new(Mutex::new(Health::Ok));
        let h = health.clone();
        let mut w = Writer { dir: dir.to_path_buf(), max_bytes, keep, stdout, file: None };
        let path = w.path(0);
        let thread = std::thread::Builder::new()
            .name("sink-jsonl".into())
            .spawn(move || {
                for msg in rx {
                    match msg {
                        Msg::Record(r) => {
                            let line = serde_json::to_string(&*r).expect("records serialize");
                            let res = w.write(&line);
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
        Ok(JsonlSink { tx: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)), health, dropped: AtomicU64::new(0), path })
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
}
