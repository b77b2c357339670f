//! Frame sources: the `FrameSource` trait the station reads, a V4L2 camera, a replay of
//! recorded frames or images, a fault-injecting fake device, and the reconnect policy.
//! Sources know nothing about GLAD or sinks.

pub mod camera;
pub mod decode;
pub mod fake;
pub mod reconnect;
pub mod replay;
pub mod v4l2;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use camera::{CameraSource, CaptureDevice, Fourcc, Mode, Negotiated, RawFrame};
pub use reconnect::{run_capture, Backoff, CaptureEvent};

/// The pixel layout of a frame's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// One JPEG image per frame (size in its header).
    Mjpeg,
    /// An encoded image file of any format `imaging` decodes (PNG, JPEG, BMP, TIFF): replayed images.
    Encoded,
    /// Packed YUV 4:2:2 (Y0 U Y1 V), `w * h * 2` bytes.
    Yuyv { w: u32, h: u32 },
    /// Packed 8-bit RGB, `w * h * 3` bytes.
    Rgb { w: u32, h: u32 },
}

impl fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PixelFormat::Mjpeg => write!(f, "MJPEG"),
            PixelFormat::Encoded => write!(f, "encoded image"),
            PixelFormat::Yuyv { w, h } => write!(f, "YUYV {w}x{h}"),
            PixelFormat::Rgb { w, h } => write!(f, "RGB {w}x{h}"),
        }
    }
}

/// One captured frame.
#[derive(Debug, Clone)]
pub struct Frame {
    pub camera: String,
    /// Counts every frame the source captured (dropped ones too).
    pub seq: u64,
    /// The driver's capture timestamp, or the source's clock when it has none.
    pub t_capture: SystemTime,
    pub format: PixelFormat,
    pub bytes: Arc<[u8]>,
}

impl Frame {
    /// Time since capture (zero if the clock went backwards).
    pub fn age(&self) -> Duration {
        SystemTime::now().duration_since(self.t_capture).unwrap_or_default()
    }
}

/// Why a source gave no frame.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceError {
    /// No frame within the timeout: the reconnect policy closes and reopens.
    Stalled(Duration),
    /// The device went away or failed (`ENODEV`, `EIO`, a changed format): reopen.
    Lost(String),
    /// One bad frame (corrupt, wrong size): counted, the stream goes on.
    BadFrame { kind: &'static str, seq: u64, message: String },
    /// Nothing yet and nothing wrong (a replay waiting for its next frame time).
    Idle,
    /// A replay without `loop` reached its end.
    Ended,
    /// Retrying cannot help (the device cannot give the format asked for).
    Fatal(String),
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceError::Stalled(d) => write!(f, "no frame within {} ms", d.as_millis()),
            SourceError::Lost(m) => write!(f, "{m}"),
            SourceError::BadFrame { kind, seq, message } => write!(f, "bad frame {seq} ({kind}): {message}"),
            SourceError::Idle => write!(f, "idle"),
            SourceError::Ended => write!(f, "end of the recording"),
            SourceError::Fatal(m) => write!(f, "{m}"),
        }
    }
}

pub trait FrameSource: Send {
    /// The camera name frames are tagged with.
    fn camera(&self) -> &str;
    /// Opens (or reopens) the device; an `Err` is retried by the reconnect policy unless `Fatal`.
    fn open(&mut self) -> Result<(), SourceError>;
    /// The next frame, waiting at most `timeout`.
    fn next_frame(&mut self, timeout: Duration) -> Result<Frame, SourceError>;
    fn close(&mut self);
}
