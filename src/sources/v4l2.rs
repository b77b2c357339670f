//! The V4L2 camera through the `v4l` crate: mmap streaming, MJPEG or YUYV, and the listing
//! `glad cameras` prints (`v4l2-ctl --list-formats-ext`).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use v4l::buffer::Type;
use v4l::io::mmap::Stream as MmapStream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, FourCC};

use super::camera::{CaptureDevice, Fourcc, Mode, Negotiated, RawFrame};

const BUFFERS: u32 = 4;

fn fourcc(f: Fourcc) -> FourCC {
    match f {
        Fourcc::Mjpeg => FourCC::new(b"MJPG"),
        Fourcc::Yuyv => FourCC::new(b"YUYV"),
    }
}

fn from_fourcc(f: FourCC) -> Option<Fourcc> {
    match &f.repr {
        b"MJPG" | b"JPEG" => Some(Fourcc::Mjpeg),
        b"YUYV" => Some(Fourcc::Yuyv),
        _ => None,
    }
}

/// A V4L2 capture device node.
pub struct V4l2Device {
    path: PathBuf,
    // The stream drops (STREAMOFF, munmap) before the device it came from.
    stream: Option<MmapStream<'static>>,
    device: Option<Device>,
}

impl V4l2Device {
    pub fn new(path: &Path) -> V4l2Device {
        V4l2Device { path: path.to_path_buf(), stream: None, device: None }
    }
}

/// The driver's timestamps are CLOCK_MONOTONIC: map them onto the wall clock.
fn wall_time(sec: i64, usec: i64) -> Option<SystemTime> {
    if sec == 0 && usec == 0 {
        return None;
    }
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return None;
    }
    let now_mono = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
    let cap = Duration::from_secs(sec as u64) + Duration::from_micros(usec as u64);
    Some(SystemTime::now() - now_mono.saturating_sub(cap))
}

impl CaptureDevice for V4l2Device {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn open(&mut self, want: Mode, fps: f64) -> io::Result<Negotiated> {
        self.close();
        let dev = Device::with_path(&self.path)?;
        let mut fmt = dev.format()?;
        fmt.width = want.width;
        fmt.height = want.height;
        fmt.fourcc = fourcc(want.fourcc);
        let got = dev.set_format(&fmt)?;
        let mut got_fps = None;
        if fps > 0.0 {
            let p = dev.set_params(&v4l::video::capture::Parameters::with_fps(fps.round().max(1.0) as u32))?;
            if p.interval.numerator > 0 {
                got_fps = Some(p.interval.denominator as f64 / p.interval.numerator as f64);
            }
        }
        let fourcc = from_fourcc(got.fourcc).ok_or_else(|| {
            io::Error::new(io::ErrorKind::Unsupported, format!("the driver negotiated {}, which glad cannot decode", got.fourcc))
        })?;
        let mut stream = MmapStream::with_buffers(&dev, Type::VideoCapture, BUFFERS)?;
        stream.set_timeout(Duration::from_secs(2));
        self.stream = Some(stream);
        self.device = Some(dev);
        Ok(Negotiated { mode: Mode { fourcc, width: got.width, height: got.height }, fps: got_fps })
    }

    fn dequeue(&mut self, timeout: Duration) -> io::Result<RawFrame> {
        let stream = self.stream.as_mut().ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "not open"))?;
        stream.set_timeout(timeout.max(Duration::from_millis(1)));
        let (buf, meta) = stream.next()?;
        let n = (meta.bytesused as usize).min(buf.len());
        // time_t is i32 on 32-bit ARM.
        #[allow(clippy::unnecessary_cast)]
        let (sec, usec) = (meta.timestamp.sec as i64, meta.timestamp.usec as i64);
        Ok(RawFrame { bytes: buf[..n].to_vec(), sequence: Some(meta.sequence as u64), timestamp: wall_time(sec, usec) })
    }

    fn close(&mut self) {
        self.stream = None;
        self.device = None;
    }
}

/// One `/dev/video*` node as `glad cameras` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CameraInfo {
    pub path: PathBuf,
    pub driver: String,
    pub card: String,
    pub bus: String,
    /// `FOURCC (description)` → sizes → frame rates.
    pub formats: Vec<FormatInfo>,
    /// Set when the node could not be opened or queried.
    pub error: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FormatInfo {
    pub fourcc: String,
    pub description: String,
    pub sizes: Vec<(String, Vec<String>)>,
}

/// `/dev/video*` nodes in `dir`, sorted.
pub fn video_nodes(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    v.retain(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("video")));
    v.sort();
    v
}

/// Queries one node: capabilities, formats, sizes and rates.
pub fn query(path: &Path) -> CameraInfo {
    let mut info = CameraInfo {
        path: path.to_path_buf(),
        driver: String::new(),
        card: String::new(),
        bus: String::new(),
        formats: vec![],
        error: None,
    };
    let result = (|| -> io::Result<()> {
        let dev = Device::with_path(path)?;
        let caps = dev.query_caps()?;
        info.driver = caps.driver;
        info.card = caps.card;
        info.bus = caps.bus;
        for f in dev.enum_formats()? {
            let mut sizes = Vec::new();
            for fs in dev.enum_framesizes(f.fourcc).unwrap_or_default() {
                for d in fs.size.to_discrete() {
                    let rates = dev
                        .enum_frameintervals(f.fourcc, d.width, d.height)
                        .unwrap_or_default()
                        .iter()
                        .map(|i| match &i.interval {
                            v4l::frameinterval::FrameIntervalEnum::Discrete(fr) if fr.numerator > 0 => {
                                format!("{:.3} fps", fr.denominator as f64 / fr.numerator as f64)
                            }
                            other => other.to_string(),
                        })
                        .collect();
                    sizes.push((format!("{}x{}", d.width, d.height), rates));
                }
            }
            info.formats.push(FormatInfo { fourcc: f.fourcc.to_string(), description: f.description, sizes });
        }
        Ok(())
    })();
    if let Err(e) = result {
        info.error = Some(e.to_string());
    }
    info
}
