//! A camera: a low-level `CaptureDevice` (the V4L2 device, or the fault-injecting fake)
//! behind the `FrameSource` the station reads. Format negotiation, frame checks and error
//! classification live here, so the fake exercises the same logic as the real device.

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{Frame, FrameSource, PixelFormat, SourceError};

/// A capture pixel format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fourcc {
    Mjpeg,
    Yuyv,
}

/// Format and size, asked for or negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    pub fourcc: Fourcc,
    pub width: u32,
    pub height: u32,
}

impl Mode {
    pub fn pixel_format(&self) -> PixelFormat {
        match self.fourcc {
            Fourcc::Mjpeg => PixelFormat::Mjpeg,
            Fourcc::Yuyv => PixelFormat::Yuyv { w: self.width, h: self.height },
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {}x{}", self.fourcc, self.width, self.height)
    }
}

/// What the driver agreed to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Negotiated {
    pub mode: Mode,
    /// `None` when the driver does not report a frame rate.
    pub fps: Option<f64>,
}

/// One dequeued buffer.
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub bytes: Vec<u8>,
    /// The driver's sequence number, if any.
    pub sequence: Option<u64>,
    /// The driver's timestamp, converted to wall-clock time.
    pub timestamp: Option<SystemTime>,
}

/// The device layer: what V4L2 (or a fake) does. Errors are the OS's (`ENODEV`, `EIO`,
/// `ENXIO`, `TimedOut`).
pub trait CaptureDevice: Send {
    /// `/dev/video0`, `fake:cam0`.
    fn describe(&self) -> String;
    /// Opens the device, asks for `want` at `fps` and starts streaming.
    fn open(&mut self, want: Mode, fps: f64) -> io::Result<Negotiated>;
    /// The next filled buffer, waiting at most `timeout` (`ErrorKind::TimedOut` after).
    fn dequeue(&mut self, timeout: Duration) -> io::Result<RawFrame>;
    /// Stops streaming and closes; safe to call when closed.
    fn close(&mut self);
}

/// A `FrameSource` over a `CaptureDevice`.
pub struct CameraSource<D: CaptureDevice> {
    camera: String,
    device: D,
    want: Mode,
    fps: f64,
    allow_fallback: bool,
    negotiated: Option<Negotiated>,
    seq: u64,
    reopen: Option<String>,
}

impl<D: CaptureDevice> CameraSource<D> {
    pub fn new(camera: &str, device: D, want: Mode, fps: f64, allow_fallback: bool) -> Self {
        CameraSource { camera: camera.to_string(), device, want, fps, allow_fallback, negotiated: None, seq: 0, reopen: None }
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn negotiated(&self) -> Option<Negotiated> {
        self.negotiated
    }

    /// Checks a frame against the negotiated mode: a truncated or garbled JPEG is one bad
    /// frame; a frame of another size means the format changed (a bad frame, then reopen).
    fn check(&mut self, neg: Mode, bytes: &[u8], seq: u64) -> Result<(), SourceError> {
        let bad = |kind: &'static str, message: String| SourceError::BadFrame { kind, seq, message };
        let (w, h) = (neg.width, neg.height);
        match neg.fourcc {
            Fourcc::Mjpeg => {
                if bytes.len() < 4 || bytes[..2] != [0xFF, 0xD8] {
                    return Err(bad("corrupt_frame", format!("not a JPEG (no SOI marker, {} bytes)", bytes.len())));
                }
                let tail = &bytes[bytes.len().saturating_sub(64)..];
                if !tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
                    return Err(bad("corrupt_frame", format!("truncated JPEG (no EOI marker, {} bytes)", bytes.len())));
                }
                match super::decode::jpeg_dimensions(bytes) {
                    Some((fw, fh)) if (fw, fh) != (w, h) => {
                        self.reopen = Some(format!("frame size changed from {w}x{h} to {fw}x{fh}"));
                        return Err(bad("frame_size", format!("JPEG is {fw}x{fh}, negotiated {w}x{h}")));
                    }
                    Some(_) => {}
                    None => return Err(bad("corrupt_frame", "unreadable JPEG header".into())),
                }
            }
            Fourcc::Yuyv => {
                let want = (w * h) as usize * 2;
                if bytes.len() != want {
                    self.reopen = Some(format!("frame size changed: {} bytes, YUYV {w}x{h} needs {want}", bytes.len()));
                    return Err(bad("frame_size", format!("{} bytes, YUYV {w}x{h} needs {want}", bytes.len())));
                }
            }
        }
        Ok(())
    }
}

impl<D: CaptureDevice> FrameSource for CameraSource<D> {
    fn camera(&self) -> &str {
        &self.camera
    }

    fn open(&mut self) -> Result<(), SourceError> {
        self.reopen = None;
        let n = self
            .device
            .open(self.want, self.fps)
            .map_err(|e| SourceError::Lost(format!("{}: cannot open: {e}", self.device.describe())))?;
        let differs = n.mode != self.want;
        let fps_differs = n.fps.is_some_and(|f| self.fps > 0.0 && (f - self.fps).abs() > 0.5);
        tracing::info!(camera = %self.camera, device = %self.device.describe(), format = %n.mode, fps = ?n.fps, "negotiated");
        if (differs || fps_differs) && !self.allow_fallback {
            self.device.close();
            return Err(SourceError::Fatal(format!(
                "{}: asked for {} at {} fps, the driver negotiated {} at {:?} fps (set allow_fallback: true to accept it)",
                self.device.describe(),
                self.want,
                self.fps,
                n.mode,
                n.fps
            )));
        }
        self.negotiated = Some(n);
        Ok(())
    }

    fn next_frame(&mut self, timeout: Duration) -> Result<Frame, SourceError> {
        if let Some(why) = self.reopen.take() {
            return Err(SourceError::Lost(why));
        }
        let neg = self.negotiated.ok_or_else(|| SourceError::Lost("not open".into()))?;
        let raw = match self.device.dequeue(timeout) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(SourceError::Stalled(timeout)),
            Err(e) => return Err(SourceError::Lost(format!("{}: {e}", self.device.describe()))),
        };
        let seq = self.seq;
        self.seq += 1;
        self.check(neg.mode, &raw.bytes, seq)?;
        Ok(Frame {
            camera: self.camera.clone(),
            seq,
            t_capture: raw.timestamp.unwrap_or_else(SystemTime::now),
            format: neg.mode.pixel_format(),
            bytes: Arc::from(raw.bytes),
        })
    }

    fn close(&mut self) {
        self.device.close();
        self.negotiated = None;
    }
}
