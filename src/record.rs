//! The per-frame record: what every sink receives for one frame a station inspected, or
//! failed to inspect. A record with `ok: false` never carries a verdict.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::glad::reconstruct::AdpStop;
use crate::pipeline::ImageTimes;

/// The version every record carries.
pub const GLAD_VERSION: &str = env!("CARGO_PKG_VERSION");

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
    /// This run of the station (a new one at every start): `seq` starts at 0 again after a
    /// restart, so a record is identified by `camera` + `run_id` + `seq`.
    #[serde(default)]
    pub run_id: String,
    /// The feedback overlay version of the camera's feature bank that scored this frame (0:
    /// no overlay yet); absent for a camera whose map reference uses no bank.
    #[serde(default)]
    pub overlay_version: Option<u64>,
    /// The camera's recipe that inspected this frame (absent for a camera without recipes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<String>,
    /// The drift alarms of the camera in force when this record was written (`brightness`,
    /// `contrast`, `sharpness`, `score`); empty while none fires. Never changes a verdict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<String>,
}

/// A run id: the start time (milliseconds since the epoch) and the process id, in hex.
pub fn new_run_id() -> String {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    format!("{ms:x}-{:x}", std::process::id())
}

/// What every record of a frame carries whatever happened to it.
#[derive(Debug, Clone)]
pub struct Origin {
    pub camera: String,
    pub seq: u64,
    pub t_capture: SystemTime,
    /// Frames of this camera dropped just before this one.
    pub dropped: u64,
    /// The threshold in force for the camera.
    pub threshold: Option<f32>,
    pub bundle_hash: String,
    pub run_id: String,
    /// The feedback overlay version in force (`None`: the camera uses no bank).
    pub overlay_version: Option<u64>,
    /// The camera's active recipe (`None`: the camera has no recipes).
    pub recipe: Option<String>,
}

fn ms_since_epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0)
}

impl FrameRecord {
    /// NG: an anomalous verdict (errors are not NG; they have no verdict).
    pub fn is_ng(&self) -> bool {
        self.verdict == Some(Verdict::Anomalous)
    }

    fn base(o: Origin) -> FrameRecord {
        FrameRecord {
            camera: o.camera,
            seq: o.seq,
            t_capture_ms: ms_since_epoch(o.t_capture),
            latency_ms: SystemTime::now().duration_since(o.t_capture).unwrap_or_default().as_secs_f64() * 1e3,
            dropped: o.dropped,
            ok: false,
            error: None,
            score: None,
            threshold: o.threshold,
            verdict: None,
            normalized_score: None,
            adp_step: None,
            adp_score: None,
            adp_stop: None,
            times_ms: None,
            stored: Stored::default(),
            bundle_hash: o.bundle_hash,
            glad_version: GLAD_VERSION.to_string(),
            run_id: o.run_id,
            overlay_version: o.overlay_version,
            recipe: o.recipe,
            drift: Vec::new(),
        }
    }

    /// A frame that could not be inspected: `ok: false`, `error: "<kind>: <message>"`, no verdict.
    pub fn error(o: Origin, kind: &str, message: &str) -> FrameRecord {
        FrameRecord { error: Some(format!("{kind}: {message}")), ..Self::base(o) }
    }

    /// An inspected frame: the verdict against `o.threshold`; a non-finite score is an
    /// engine error without a verdict.
    pub fn inspected(o: Origin, score: f32, adp: Option<AdpStop>, times: ImageTimes) -> FrameRecord {
        let threshold = o.threshold;
        let finite = score.is_finite();
        FrameRecord {
            ok: finite,
            error: (!finite).then(|| format!("engine: the anomaly score is {score}")),
            score: finite.then_some(score),
            verdict: threshold.filter(|_| finite).map(|t| if score > t { Verdict::Anomalous } else { Verdict::Normal }),
            normalized_score: threshold.filter(|_| finite).map(|t| score / t),
            adp_step: adp.and_then(|a| usize::try_from(a.step).ok()),
            adp_score: adp.map(|a| a.score),
            adp_stop: adp.map(|a| if a.on_threshold { "threshold" } else { "min_step" }.to_string()),
            times_ms: Some(times),
            ..Self::base(o)
        }
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
