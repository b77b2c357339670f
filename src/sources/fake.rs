//! A fault-injecting fake camera behind the same `CaptureDevice` trait as V4L2, so the
//! reconnect policy and the frame checks under test are the real ones. It replays frames
//! (encoded as MJPEG or YUYV at the asked size) and injects, at given frame indices, what
//! real hardware does: unplug (`ENODEV` on dequeue, then failing opens), `EIO`, a stall, a
//! corrupt MJPEG frame, a frame of another size.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::camera::{CaptureDevice, Fourcc, Mode, Negotiated, RawFrame};

/// One injected fault, at the `at`-th frame the device delivers (counted across reopens).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "kind")]
pub enum Fault {
    /// `ENODEV` on dequeue, then `reopen_failures` opens fail with `ENODEV`.
    Unplug {
        at: u64,
        #[serde(default)]
        reopen_failures: u32,
    },
    /// `EIO` on dequeue.
    Eio { at: u64 },
    /// No frame for `ms` milliseconds (the dequeue times out).
    Stall { at: u64, ms: u64 },
    /// A truncated JPEG (MJPEG) or a short buffer (YUYV).
    Corrupt { at: u64 },
    /// One frame of another size.
    Resize { at: u64, width: u32, height: u32 },
    /// From this frame on, every frame is brighter by `delta` gray levels (negative: darker;
    /// clamped to 0..=255): a lamp ages, a shutter setting changes.
    Brightness { at: u64, delta: i32 },
    /// From this frame on, every frame is blurred (Gaussian, `sigma` pixels): the lens lost focus.
    Blur { at: u64, sigma: f32 },
}

impl Fault {
    fn at(&self) -> u64 {
        match self {
            Fault::Unplug { at, .. }
            | Fault::Eio { at }
            | Fault::Stall { at, .. }
            | Fault::Corrupt { at }
            | Fault::Resize { at, .. }
            | Fault::Brightness { at, .. }
            | Fault::Blur { at, .. } => *at,
        }
    }
}

/// What the fake saw, for tests.
#[derive(Debug, Default)]
pub struct FakeStats {
    pub opens: AtomicU64,
    pub failed_opens: AtomicU64,
    pub delivered: AtomicU64,
}

pub struct FakeDevice {
    name: String,
    images: Vec<RgbImage>,
    fps: f64,
    faults: Vec<Fault>,
    mode: Option<Mode>,
    frames: Vec<Vec<u8>>,
    index: u64,
    open_failures_left: u32,
    next_due: Instant,
    pub stats: Arc<FakeStats>,
}

fn os(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn encode(img: &RgbImage, mode: Mode) -> Vec<u8> {
    let img = if img.dimensions() == (mode.width, mode.height) {
        img.clone()
    } else {
        image::imageops::resize(img, mode.width, mode.height, image::imageops::FilterType::Triangle)
    };
    match mode.fourcc {
        Fourcc::Mjpeg => {
            let mut out = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&img).expect("JPEG encoding into memory");
            out
        }
        Fourcc::Yuyv => super::decode::rgb_to_yuyv(&img),
    }
}

impl FakeDevice {
    /// `images` are replayed in order, looping; `fps` 0 delivers as fast as asked.
    pub fn new(name: &str, images: Vec<RgbImage>, fps: f64, mut faults: Vec<Fault>) -> FakeDevice {
        faults.sort_by_key(|f| f.at());
        FakeDevice {
            name: name.to_string(),
            images,
            fps,
            faults,
            mode: None,
            frames: vec![],
            index: 0,
            open_failures_left: 0,
            next_due: Instant::now(),
            stats: Arc::default(),
        }
    }

    fn take_fault(&mut self) -> Option<Fault> {
        let pos = self.faults.iter().position(|f| f.at() == self.index)?;
        Some(self.faults.remove(pos))
    }
}

impl CaptureDevice for FakeDevice {
    fn describe(&self) -> String {
        format!("fake:{}", self.name)
    }

    fn open(&mut self, want: Mode, _fps: f64) -> io::Result<Negotiated> {
        self.stats.opens.fetch_add(1, Ordering::Relaxed);
        if self.open_failures_left > 0 {
            self.open_failures_left -= 1;
            self.stats.failed_opens.fetch_add(1, Ordering::Relaxed);
            return Err(os(libc::ENODEV));
        }
        if self.images.is_empty() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "fake device without frames"));
        }
        if self.mode != Some(want) {
            self.frames = self.images.iter().map(|i| encode(i, want)).collect();
        }
        self.mode = Some(want);
        self.next_due = Instant::now();
        Ok(Negotiated { mode: want, fps: (self.fps > 0.0).then_some(self.fps) })
    }

    fn dequeue(&mut self, timeout: Duration) -> io::Result<RawFrame> {
        let mode = self.mode.ok_or_else(|| os(libc::EBADF))?;
        let now = Instant::now();
        if self.next_due > now {
            let wait = self.next_due - now;
            if wait > timeout {
                std::thread::sleep(timeout);
                return Err(io::Error::new(io::ErrorKind::TimedOut, "VIDIOC_DQBUF"));
            }
            std::thread::sleep(wait);
        }
        if self.fps > 0.0 {
            self.next_due = self.next_due.max(now) + Duration::from_secs_f64(1.0 / self.fps);
        }
        let fault = self.take_fault();
        let k = (self.index % self.frames.len() as u64) as usize;
        let mut bytes = self.frames[k].clone();
        match fault {
            Some(Fault::Unplug { reopen_failures, .. }) => {
                self.open_failures_left = reopen_failures;
                self.mode = None;
                return Err(os(libc::ENODEV));
            }
            Some(Fault::Eio { .. }) => return Err(os(libc::EIO)),
            Some(Fault::Stall { ms, .. }) => {
                std::thread::sleep(Duration::from_millis(ms).min(timeout));
                return Err(io::Error::new(io::ErrorKind::TimedOut, "VIDIOC_DQBUF"));
            }
            Some(Fault::Corrupt { .. }) => bytes.truncate(bytes.len() / 2),
            Some(Fault::Resize { width, height, .. }) => {
                bytes = encode(&self.images[k], Mode { width, height, ..mode });
            }
            Some(Fault::Brightness { delta, .. }) => {
                for img in &mut self.images {
                    for v in img.iter_mut() {
                        *v = (i32::from(*v) + delta).clamp(0, 255) as u8;
                    }
                }
                self.frames = self.images.iter().map(|i| encode(i, mode)).collect();
                bytes = self.frames[k].clone();
            }
            Some(Fault::Blur { sigma, .. }) => {
                for img in &mut self.images {
                    *img = image::imageops::blur(img, sigma);
                }
                self.frames = self.images.iter().map(|i| encode(i, mode)).collect();
                bytes = self.frames[k].clone();
            }
            None => {}
        }
        self.index += 1;
        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
        Ok(RawFrame { bytes, sequence: Some(self.index - 1), timestamp: Some(SystemTime::now()) })
    }

    fn close(&mut self) {
        self.mode = None;
    }
}
