//! The per-frame record: what every sink receives for one frame a station inspected, or
//! failed to inspect. A record with `ok: false` never carries a verdict.

use std::path::PathBuf;
use std::sync::Arc;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::pipeline::ImageTimes;

/// The verdict against the camera's threshold (the words `glad inspect` writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Normal,
    Anomalous,
}

/// Where the frame's images went, or why they were not stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    pub input: Option<PathBuf>,
    pub heatmap: Option<PathBuf>,
    /// Set when the store was asked to keep the frame and could not (disk full, unwritable).
    pub not_stored: Option<String>,
}

/// One line of the results JSONL and the payload of MQTT, webhook and `/api/results`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameRecord {
    pub camera: String,
    /// The source's frame sequence number (counts every captured frame, dropped ones too).
    pub seq: u64,
    /// Capture time, milliseconds since the Unix epoch (the driver's timestamp or the source's clock).
    pub t_capture_ms: f64,
    /// Capture to verdict.
    pub latency_ms: f64,
    /// Frames of this camera dropped since its previous record.
    pub dropped: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub score: Option<f32>,
    /// The threshold in force for this camera (None: no verdicts).
    pub threshold: Option<f32>,
    pub verdict: Option<Verdict>,
    pub normalized_score: Option<f32>,
    pub adp_step: Option<usize>,
    pub adp_score: Option<f32>,
    pub adp_stop: Option<String>,
    pub times_ms: Option<ImageTimes>,
    pub stored: Stored,
    /// SHA-256 prefix of the bundle's content (manifest and model files).
    pub bundle_hash: String,
    pub glad_version: String,
}

impl FrameRecord {
    /// NG: an anomalous verdict (errors are not NG; they have no verdict).
    pub fn is_ng(&self) -> bool {
        self.verdict == Some(Verdict::Anomalous)
    }
}

/// A record with the pictures that go with it (for the image store and the live view).
#[derive(Debug, Clone)]
pub struct FrameResult {
    pub record: Arc<FrameRecord>,
    /// The frame after the ROI crop, before the resize (absent when decoding failed).
    pub input: Option<Arc<RgbImage>>,
    /// The heatmap overlay at the map's resolution (absent for failed frames).
    pub heatmap: Option<Arc<RgbImage>>,
}
