//! The replay source: a folder of images (sorted by name) or recorded raw frames (MJPEG or
//! YUYV buffers listed in `index.yaml`), delivered at a fixed rate, optionally looping.
//!
//! `index.yaml` of a recording:
//! ```yaml
//! format: yuyv        # mjpeg | yuyv
//! width: 64
//! height: 64
//! frames: [000.raw, 001.raw]   # one buffer per file, in order
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::camera::Fourcc;
use super::{Frame, FrameSource, PixelFormat, SourceError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingIndex {
    pub format: Fourcc,
    pub width: u32,
    pub height: u32,
    pub frames: Vec<PathBuf>,
}

impl RecordingIndex {
    pub const FILE: &'static str = "index.yaml";
}

/// Writes a recording (`index.yaml` plus one file per buffer) into `dir`.
pub fn write_recording(dir: &Path, format: Fourcc, width: u32, height: u32, buffers: &[Vec<u8>]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
    let mut frames = Vec::new();
    for (i, b) in buffers.iter().enumerate() {
        let name = PathBuf::from(format!("{i:06}.raw"));
        std::fs::write(dir.join(&name), b).with_context(|| format!("{}: cannot write", dir.join(&name).display()))?;
        frames.push(name);
    }
    let idx = RecordingIndex { format, width, height, frames };
    std::fs::write(dir.join(RecordingIndex::FILE), serde_yaml::to_string(&idx)?)?;
    Ok(())
}

pub struct ReplaySource {
    camera: String,
    /// The frames' files, read one at a time when due (a folder is never held in memory).
    frames: Vec<(PixelFormat, PathBuf)>,
    /// Largest frame file read (`limits.max_image_bytes`).
    max_bytes: u64,
    fps: f64,
    looping: bool,
    pos: usize,
    seq: u64,
    next_due: Option<Instant>,
}

/// A frame file must be a regular file (never a FIFO or a device such as /dev/zero) no
/// larger than `max_bytes`.
fn check_frame_file(p: &Path, max_bytes: u64) -> Result<()> {
    let meta = std::fs::metadata(p).with_context(|| format!("{}: cannot read frame", p.display()))?;
    if !meta.is_file() {
        bail!("{}: not a regular file (a FIFO, socket or device is never read)", p.display());
    }
    if meta.len() > max_bytes {
        bail!("{}: frame file is {} bytes, over `limits.max_image_bytes` ({max_bytes})", p.display(), meta.len());
    }
    Ok(())
}

impl ReplaySource {
    /// Lists the frames of `path` (a folder of images, or a recording with an `index.yaml`),
    /// checking that each is a regular file within the image limits; each is read when it is
    /// due. Image files are delivered encoded and decoded by the station like any file
    /// (limits, truncation, EXIF orientation); recordings in their own format.
    pub fn open_path(camera: &str, path: &Path, fps: f64, looping: bool) -> Result<ReplaySource> {
        let idx_path = path.join(RecordingIndex::FILE);
        let max_bytes = crate::imaging::limits().max_image_bytes;
        let mut frames = Vec::new();
        if idx_path.is_file() {
            let text = std::fs::read_to_string(&idx_path).with_context(|| format!("{}: cannot read", idx_path.display()))?;
            let idx: RecordingIndex = crate::yaml::parse_yaml(&idx_path, &text)?;
            let fmt = match idx.format {
                Fourcc::Mjpeg => PixelFormat::Mjpeg,
                Fourcc::Yuyv => PixelFormat::Yuyv { w: idx.width, h: idx.height },
            };
            for f in &idx.frames {
                let p = path.join(f);
                check_frame_file(&p, max_bytes)?;
                frames.push((fmt, p));
            }
        } else {
            for p in crate::files::sorted_images(path)? {
                check_frame_file(&p, max_bytes)?;
                frames.push((PixelFormat::Encoded, p));
            }
        }
        if frames.is_empty() {
            bail!("{}: no frames to replay (images or {})", path.display(), RecordingIndex::FILE);
        }
        Ok(ReplaySource { camera: camera.to_string(), frames, max_bytes, fps, looping, pos: 0, seq: 0, next_due: None })
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

impl FrameSource for ReplaySource {
    fn camera(&self) -> &str {
        &self.camera
    }

    fn open(&mut self) -> Result<(), SourceError> {
        self.next_due = None;
        Ok(())
    }

    fn next_frame(&mut self, timeout: Duration) -> Result<Frame, SourceError> {
        if self.pos >= self.frames.len() {
            if !self.looping {
                return Err(SourceError::Ended);
            }
            self.pos = 0;
        }
        let now = Instant::now();
        let due = self.next_due.unwrap_or(now);
        if due > now {
            let wait = due - now;
            if wait > timeout {
                std::thread::sleep(timeout);
                return Err(SourceError::Idle);
            }
            std::thread::sleep(wait);
        }
        if self.fps > 0.0 {
            // A fixed rate: the schedule does not drift, and does not catch up after a pause.
            let period = Duration::from_secs_f64(1.0 / self.fps);
            self.next_due = Some((due + period).max(Instant::now()));
        }
        let (format, path) = self.frames[self.pos].clone();
        self.pos += 1;
        let seq = self.seq;
        self.seq += 1;
        // Checked again: the file may have been replaced since the listing.
        let bytes = check_frame_file(&path, self.max_bytes)
            .and_then(|()| std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display())));
        match bytes {
            Ok(b) => Ok(Frame { camera: self.camera.clone(), seq, t_capture: SystemTime::now(), format, bytes: Arc::from(b) }),
            Err(e) => Err(SourceError::BadFrame { kind: "read", seq, message: format!("{e:#}") }),
        }
    }

    fn close(&mut self) {}
}
