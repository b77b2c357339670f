//! The operator's feedback desk: the HTTP face hands a teach (`good`, `defect`) or an undo to
//! the station through it and waits for the answer. The station's feedback thread takes the
//! requests; without one (no station attached) a request is refused at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};
use serde::{Deserialize, Serialize};

/// A record's identity, as records carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameId {
    pub camera: String,
    pub run_id: String,
    pub seq: u64,
}

/// What the operator says about a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Label {
    /// A false alarm: the frame is normal.
    Good,
    /// A real defect, filed under `test/<label>/`.
    Defect(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Teach {
        frame: FrameId,
        label: Label,
    },
    /// Removes the overlay patches that version `version` added.
    Undo {
        version: u64,
    },
    /// The overlay entries in force.
    List,
}

/// Why a request failed: an HTTP status and one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    pub fn new(status: u16, message: impl Into<String>) -> Refusal {
        Refusal { status, message: message.into() }
    }
}

pub type Answer = Result<serde_json::Value, Refusal>;

pub struct Request {
    pub action: Action,
    pub reply: Sender<Answer>,
}

/// Requests waiting at most.
const QUEUE: usize = 16;

#[derive(Debug)]
pub struct FeedbackDesk {
    tx: Sender<Request>,
    rx: Receiver<Request>,
    open: AtomicBool,
}

impl Default for FeedbackDesk {
    fn default() -> Self {
        let (tx, rx) = bounded(QUEUE);
        FeedbackDesk { tx, rx, open: AtomicBool::new(false) }
    }
}

impl FeedbackDesk {
    /// The station's side: its feedback thread takes requests from here.
    pub fn open(&self) -> Receiver<Request> {
        self.open.store(true, Ordering::Release);
        self.rx.clone()
    }

    pub fn close(&self) {
        self.open.store(false, Ordering::Release);
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Hands `action` to the station and waits at most `timeout` for the answer (blocking).
    pub fn submit(&self, action: Action, timeout: Duration) -> Answer {
        if !self.is_open() {
            return Err(Refusal::new(503, "feedback is not available: no station takes it"));
        }
        let (reply, answer) = bounded(1);
        self.tx.try_send(Request { action, reply }).map_err(|_| Refusal::new(429, "too many feedback requests waiting"))?;
        answer.recv_timeout(timeout).unwrap_or_else(|_| Err(Refusal::new(503, "the station did not answer the feedback in time")))
    }
}
