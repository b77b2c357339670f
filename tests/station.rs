//! The station: sources and their faults (through the fake device and a real V4L2 node that
//! fails to open), live vs lossless under overload, ROI crop, the per-frame record, the image
//! store's quota and disk-full path, reload, triggers, and `glad run` / `glad cameras` end to
//! end. Engines run onnx/tiny with 2 DDIM steps and ADP off to stay fast.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use glad_edge::sinks::{FrameRecord, FrameResult, Health, ImageStore, Sink, StoreConfig, Stored, Verdict};
use glad_edge::sources::fake::{FakeDevice, Fault};
use glad_edge::sources::v4l2::V4l2Device;
use glad_edge::sources::{
    run_capture, Backoff, CameraSource, CaptureDevice, CaptureEvent, Fourcc, FrameSource, Mode, Negotiated, RawFrame,
};
use glad_edge::station::runner::{bundle_hash, crop_roi};
use glad_edge::station::{StartOptions, Station, StationConfig};
use image::{Rgb, RgbImage};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------- log capture

static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;
impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing_subscriber::fmt().with_writer(|| LogWriter).with_ansi(false).with_max_level(tracing::Level::INFO).try_init();
    });
}

/// Log lines that mention `camera=<name>` and contain `what`.
fn log_lines(camera: &str, what: &str) -> usize {
    let text = String::from_utf8_lossy(&LOG.lock().unwrap()).into_owned();
    let tag = format!("camera={camera}");
    text.lines().filter(|l| l.split_whitespace().any(|w| w == tag) && l.contains(what)).count()
}

// ---------------------------------------------------------------- sources and faults

fn pattern(i: u32) -> RgbImage {
    RgbImage::from_fn(32, 32, move |x, y| Rgb([(x * 8) as u8, (y * 8) as u8, (i * 40) as u8]))
}

#[derive(Default, Debug)]
struct Seen {
    frames: Vec<u64>,
    bad: Vec<(&'static str, u64)>,
    reconnecting: Vec<String>,
    streaming: usize,
    fatal: Vec<String>,
}

/// Runs the capture loop until `frames` frames arrived or `limit` passed.
fn capture(src: &mut dyn FrameSource, backoff: Backoff, timeout: Duration, frames: usize, limit: Duration) -> Seen {
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Mutex::new(Seen::default());
    let t0 = Instant::now();
    let s2 = stop.clone();
    std::thread::scope(|sc| {
        sc.spawn(|| {
            while !s2.load(Ordering::Relaxed) && t0.elapsed() < limit {
                std::thread::sleep(Duration::from_millis(5));
            }
            s2.store(true, Ordering::Relaxed);
        });
        run_capture(src, &backoff, timeout, &stop, |ev| {
            let mut s = seen.lock().unwrap();
            match ev {
                CaptureEvent::Frame(f) => s.frames.push(f.seq),
                CaptureEvent::BadFrame { kind, seq, .. } => s.bad.push((kind, seq)),
                CaptureEvent::Reconnecting { reason, .. } => s.reconnecting.push(reason),
                CaptureEvent::Streaming { .. } => s.streaming += 1,
                CaptureEvent::Fatal(m) => s.fatal.push(m),
                CaptureEvent::Ended => {}
            }
            if s.frames.len() >= frames {
                stop.store(true, Ordering::Relaxed);
            }
        });
        stop.store(true, Ordering::Relaxed);
    });
    seen.into_inner().unwrap()
}

fn fast() -> Backoff {
    Backoff { initial: Duration::from_millis(10), max: Duration::from_millis(40) }
}

fn fake_cam(name: &str, fourcc: Fourcc, faults: Vec<Fault>) -> CameraSource<FakeDevice> {
    let imgs = (0..4).map(pattern).collect();
    CameraSource::new(name, FakeDevice::new(name, imgs, 200.0, faults), Mode { fourcc, width: 32, height: 32 }, 200.0, false)
}

#[test]
fn station_fault_unplug_reconnects_with_backoff_and_logs_once() {
    init_logs();
    let mut cam = fake_cam("cam-unplug", Fourcc::Mjpeg, vec![Fault::Unplug { at: 3, reopen_failures: 2 }]);
    let stats = cam.device().stats.clone();
    let t0 = Instant::now();
    let s = capture(&mut cam, fast(), Duration::from_millis(500), 8, Duration::from_secs(10));
    // ENODEV on dequeue, then two failing opens: three reopen delays (10, 20, 40 ms).
    assert_eq!(s.reconnecting.len(), 3, "{s:?}");
    assert!(s.reconnecting[0].contains("No such device"), "{s:?}");
    assert_eq!(s.streaming, 2);
    assert_eq!(stats.opens.load(Ordering::Relaxed), 4);
    assert_eq!(stats.failed_opens.load(Ordering::Relaxed), 2);
    assert_eq!(s.frames, (0..8).collect::<Vec<u64>>());
    assert!(t0.elapsed() >= Duration::from_millis(60), "backoff was not waited");
    assert_eq!(log_lines("cam-unplug", "camera lost, reconnecting"), 1);
    assert_eq!(log_lines("cam-unplug", "camera streaming again"), 1);
}

#[test]
fn station_fault_eio_reopens_once() {
    init_logs();
    let mut cam = fake_cam("cam-eio", Fourcc::Yuyv, vec![Fault::Eio { at: 2 }]);
    let stats = cam.device().stats.clone();
    let s = capture(&mut cam, fast(), Duration::from_millis(500), 6, Duration::from_secs(10));
    assert_eq!(s.reconnecting.len(), 1, "{s:?}");
    assert!(s.reconnecting[0].contains("Input/output error"), "{s:?}");
    assert_eq!(stats.opens.load(Ordering::Relaxed), 2);
    assert_eq!(s.frames.len(), 6);
    assert_eq!(log_lines("cam-eio", "camera lost, reconnecting"), 1);
}

#[test]
fn station_fault_stall_times_out_and_reopens() {
    init_logs();
    let mut cam = fake_cam("cam-stall", Fourcc::Mjpeg, vec![Fault::Stall { at: 2, ms: 5000 }]);
    let t0 = Instant::now();
    let s = capture(&mut cam, fast(), Duration::from_millis(150), 5, Duration::from_secs(10));
    assert_eq!(s.reconnecting.len(), 1, "{s:?}");
    assert!(s.reconnecting[0].contains("no frame within 150 ms"), "{s:?}");
    assert_eq!(s.frames.len(), 5);
    assert!(t0.elapsed() < Duration::from_secs(3), "the stall was not cut at the timeout");
    assert_eq!(log_lines("cam-stall", "camera lost, reconnecting"), 1);
}

#[test]
fn station_fault_corrupt_mjpeg_is_one_bad_frame_and_the_stream_goes_on() {
    init_logs();
    let mut cam = fake_cam("cam-corrupt", Fourcc::Mjpeg, vec![Fault::Corrupt { at: 2 }]);
    let s = capture(&mut cam, fast(), Duration::from_millis(500), 5, Duration::from_secs(10));
    assert_eq!(s.bad, vec![("corrupt_frame", 2)], "{s:?}");
    assert!(s.reconnecting.is_empty(), "{s:?}");
    assert_eq!(s.frames, vec![0, 1, 3, 4, 5]);
    assert_eq!(log_lines("cam-corrupt", "bad frame"), 1);
}

#[test]
fn station_fault_changed_frame_size_is_counted_and_reopens() {
    init_logs();
    for (name, fourcc) in [("cam-resize-mjpeg", Fourcc::Mjpeg), ("cam-resize-yuyv", Fourcc::Yuyv)] {
        let mut cam = fake_cam(name, fourcc, vec![Fault::Resize { at: 1, width: 16, height: 16 }]);
        let s = capture(&mut cam, fast(), Duration::from_millis(500), 4, Duration::from_secs(10));
        assert_eq!(s.bad, vec![("frame_size", 1)], "{name}: {s:?}");
        assert_eq!(s.reconnecting.len(), 1, "{name}: {s:?}");
        assert!(s.reconnecting[0].contains("frame size changed"), "{name}: {s:?}");
        assert_eq!(s.frames.len(), 4);
    }
}

/// A device that always negotiates 16x16 YUYV, whatever was asked.
struct Stubborn;
impl CaptureDevice for Stubborn {
    fn describe(&self) -> String {
        "stubborn".into()
    }
    fn open(&mut self, _want: Mode, _fps: f64) -> std::io::Result<Negotiated> {
        Ok(Negotiated { mode: Mode { fourcc: Fourcc::Yuyv, width: 16, height: 16 }, fps: Some(30.0) })
    }
    fn dequeue(&mut self, _t: Duration) -> std::io::Result<RawFrame> {
        std::thread::sleep(Duration::from_millis(2));
        Ok(RawFrame { bytes: vec![128; 16 * 16 * 2], sequence: None, timestamp: None })
    }
    fn close(&mut self) {}
}

#[test]
fn station_negotiated_format_is_refused_without_fallback() {
    init_logs();
    let want = Mode { fourcc: Fourcc::Mjpeg, width: 640, height: 480 };
    let mut strict = CameraSource::new("cam-strict", Stubborn, want, 30.0, false);
    let s = capture(&mut strict, fast(), Duration::from_millis(100), 1, Duration::from_secs(5));
    assert_eq!(s.fatal.len(), 1, "{s:?}");
    assert!(s.fatal[0].contains("asked for Mjpeg 640x480") && s.fatal[0].contains("Yuyv 16x16"), "{}", s.fatal[0]);
    assert!(s.frames.is_empty() && s.reconnecting.is_empty());
    let mut lax = CameraSource::new("cam-lax", Stubborn, want, 30.0, true);
    let s = capture(&mut lax, fast(), Duration::from_millis(100), 3, Duration::from_secs(5));
    assert_eq!(s.frames.len(), 3, "{s:?}");
    assert_eq!(log_lines("cam-lax", "negotiated"), 1);
}

/// `mknod DIR/video9 c 81 9`: a real node whose open fails with ENXIO (no driver here).
fn enxio_node(dir: &Path) -> Option<PathBuf> {
    let p = dir.join("video9");
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: a valid path; makedev(81, 9).
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(81, 9)) };
    if rc != 0 {
        eprintln!("skipping: mknod failed: {}", std::io::Error::last_os_error());
        return None;
    }
    Some(p)
}

#[test]
fn station_v4l2_open_error_enxio_and_the_reconnect_loop_backs_off() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let Some(node) = enxio_node(tmp.path()) else { return };
    let mut cam =
        CameraSource::new("cam-enxio", V4l2Device::new(&node), Mode { fourcc: Fourcc::Mjpeg, width: 640, height: 480 }, 30.0, false);
    let backoff = Backoff { initial: Duration::from_millis(20), max: Duration::from_millis(80) };
    let s = capture(&mut cam, backoff, Duration::from_millis(200), 1, Duration::from_millis(1000));
    // 20 + 40 + 80 + 80 ... ms: about 13 attempts in a second; a busy loop would make thousands.
    assert!((4..=20).contains(&s.reconnecting.len()), "{} attempts", s.reconnecting.len());
    assert!(s.reconnecting[0].contains("No such device or address"), "{}", s.reconnecting[0]);
    assert!(s.reconnecting[0].contains("video9"), "{}", s.reconnecting[0]);
    assert_eq!(log_lines("cam-enxio", "camera lost, reconnecting"), 1);
}

// ---------------------------------------------------------------- glad cameras

fn glad() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_glad"));
    c.current_dir(root()).env("RUST_LOG", "warn,glad_edge=info").env("NO_COLOR", "1");
    c
}

#[test]
fn station_glad_cameras_says_when_there_are_none() {
    let tmp = tempfile::tempdir().unwrap();
    let out = glad().args(["cameras", "--dev"]).arg(tmp.path()).output().unwrap();
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("no cameras"), "{s}");
    // The real /dev of this machine has none either (no V4L2 driver can be loaded here).
    let out = glad().arg("cameras").output().unwrap();
    assert!(out.status.success());
    // And a node without a driver is reported, not a crash.
    if enxio_node(tmp.path()).is_some() {
        let out = glad().args(["cameras", "--dev"]).arg(tmp.path()).output().unwrap();
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && s.contains("video9: cannot query: No such device or address"), "{s}");
    }
}

// ---------------------------------------------------------------- ROI

#[test]
fn station_roi_crop_before_resize_matches_golden() {
    // A 96x64 frame: pure red outside the ROI, a gradient checker inside.
    let roi = glad_edge::station::config::Roi { x: 24, y: 8, width: 48, height: 48 };
    let frame = RgbImage::from_fn(96, 64, |x, y| {
        let inside = (24..72).contains(&x) && (8..56).contains(&y);
        if inside {
            let c = if ((x - 24) / 8 + (y - 8) / 8) % 2 == 0 { 230 } else { 20 };
            Rgb([0, c, ((x - 24) * 5) as u8])
        } else {
            Rgb([255, 0, 0])
        }
    });
    let crop = crop_roi(frame.clone(), Some(roi)).unwrap();
    assert_eq!(crop.dimensions(), (48, 48));
    let t = glad_edge::imaging::preprocess(&crop, 32);
    let got = glad_edge::imaging::tensor_to_rgb(t.view());
    assert!(got.pixels().all(|p| p[0] == 0), "red from outside the ROI leaked into the crop");
    let golden = root().join("tests/golden/station/roi_48_to_32.png");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        got.save(&golden).unwrap();
    }
    let want = image::open(&golden).unwrap().to_rgb8();
    assert_eq!(got, want, "crop + resize differs from {}", golden.display());
    // Resize-then-crop would be a different picture: the order matters.
    let wrong = glad_edge::imaging::tensor_to_rgb(glad_edge::imaging::preprocess(&frame, 32).view());
    assert_ne!(wrong, want);
    assert!(crop_roi(frame, Some(glad_edge::station::config::Roi { x: 60, y: 0, width: 48, height: 10 }))
        .unwrap_err()
        .to_string()
        .contains("outside"));
}

// ---------------------------------------------------------------- the station

fn images_dir(dir: &Path, n: u32, noisy: bool) -> PathBuf {
    let d = dir.join("frames");
    std::fs::create_dir_all(&d).unwrap();
    for i in 0..n {
        let img = if noisy {
            let mut s = 0x9E3779B9u32.wrapping_mul(i + 1);
            RgbImage::from_fn(128, 128, |_, _| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                Rgb([s as u8, (s >> 8) as u8, (s >> 16) as u8])
            })
        } else {
            RgbImage::from_fn(64, 64, |x, y| Rgb([(x * 4) as u8, (y * 4) as u8, (i * 20) as u8]))
        };
        img.save(d.join(format!("{i:03}.png"))).unwrap();
    }
    d
}

/// A one-camera station config on onnx/tiny (2 DDIM steps, ADP off, one thread).
fn station_yaml(results: &Path, frames: &Path, camera_extra: &str, fps: f64, looping: bool) -> String {
    format!(
        "runtime: {{threads: 1}}\nresults: {{dir: {}, min_free_bytes: 0}}\ncameras:\n  - name: cam0\n    bundle: {}\n    glad: {{steps: 2, tau: 0}}\n    source: {{replay: {{path: {}, fps: {fps}, loop: {looping}}}}}\n{camera_extra}",
        results.display(),
        root().join("onnx/tiny").display(),
        frames.display()
    )
}

fn config(text: &str) -> StationConfig {
    StationConfig::from_yaml(Path::new("test.yaml"), text).unwrap_or_else(|e| panic!("{e:#}\n{text}"))
}

/// Collects every result the station hands to its sinks.
#[derive(Default)]
struct Collect(Mutex<Vec<FrameResult>>);
impl Sink for Collect {
    fn name(&self) -> &str {
        "collect"
    }
    fn submit(&self, r: &FrameResult) {
        self.0.lock().unwrap().push(r.clone());
    }
    fn flush(&self, _t: Duration) -> anyhow::Result<()> {
        Ok(())
    }
}

fn run_until_sources_end(cfg: StationConfig, limit: Duration) -> (Vec<Arc<FrameRecord>>, String) {
    let sink = Arc::new(Collect::default());
    let station = Station::start(cfg, StartOptions { stdout: false, extra_sinks: vec![sink.clone()] }).unwrap();
    let t0 = Instant::now();
    while !station.sources_finished() && t0.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(20));
    }
    let state = station.state();
    station.shutdown(Duration::from_secs(10)).unwrap();
    let metrics = state.metrics.render();
    let recs = sink.0.lock().unwrap().iter().map(|r| r.record.clone()).collect();
    (recs, metrics)
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

#[test]
fn station_live_drops_under_overload_and_lossless_drops_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = images_dir(tmp.path(), 24, false);
    // Live at 60 fps, far above what the engine sustains.
    let cfg = config(&station_yaml(&tmp.path().join("live"), &frames, "    policy: live\n    max_age_ms: 10000\n", 60.0, false));
    let (recs, metrics) = run_until_sources_end(cfg, Duration::from_secs(40));
    let dropped: u64 = recs.iter().map(|r| r.dropped).sum();
    assert!(dropped > 0, "no drops at 60 fps");
    assert_eq!(recs.len() as u64 + dropped, 24, "every frame is either inspected or counted as dropped");
    assert_eq!(metric(&metrics, "glad_dropped_frames_total{camera=\"cam0\"}") as u64, dropped);
    assert!(recs.iter().all(|r| r.ok && r.verdict.is_none() && r.score.is_some()));
    let mut seqs: Vec<u64> = recs.iter().map(|r| r.seq).collect();
    seqs.sort();
    assert_eq!(*seqs.last().unwrap(), 23, "the newest frame is inspected");
    // Lossless at the same rate: back-pressure, every frame inspected in order, none dropped.
    let cfg = config(&station_yaml(&tmp.path().join("lossless"), &frames, "    policy: lossless\n    queue: 2\n", 60.0, false));
    let (recs, metrics) = run_until_sources_end(cfg, Duration::from_secs(50));
    assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), (0..24).collect::<Vec<u64>>());
    assert!(recs.iter().all(|r| r.ok && r.dropped == 0));
    assert_eq!(metric(&metrics, "glad_dropped_frames_total{camera=\"cam0\"}"), 0.0);
}

#[test]
fn station_stale_live_frames_get_error_records_never_verdicts() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = images_dir(tmp.path(), 20, false);
    let cfg = config(&station_yaml(&tmp.path().join("r"), &frames, "    max_age_ms: 1\n    threshold: 0.5\n", 200.0, false));
    let (recs, metrics) = run_until_sources_end(cfg, Duration::from_secs(40));
    let stale: Vec<_> = recs.iter().filter(|r| r.error.as_deref().is_some_and(|e| e.starts_with("stale"))).collect();
    assert!(!stale.is_empty(), "no stale frame at 200 fps with max_age_ms 1");
    assert!(stale.iter().all(|r| !r.ok && r.verdict.is_none() && r.score.is_none()));
    assert_eq!(metric(&metrics, "glad_errors_total{camera=\"cam0\",kind=\"stale\"}") as usize, stale.len());
}

#[test]
fn station_record_has_every_field_and_ng_frames_are_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = images_dir(tmp.path(), 3, false);
    let results = tmp.path().join("results");
    // threshold 1e-6 (0 is refused, as by `glad inspect`): every frame is NG, so every frame is stored.
    let cfg = config(&station_yaml(&results, &frames, "    threshold: 0.000001\n    policy: lossless\n", 0.0, false));
    let t_start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64() * 1e3;
    let (recs, metrics) = run_until_sources_end(cfg, Duration::from_secs(40));
    assert_eq!(recs.len(), 3);
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(results.join("results.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    let hash = bundle_hash(&root().join("onnx/tiny")).unwrap();
    for (i, l) in lines.iter().enumerate() {
        for key in [
            "camera",
            "seq",
            "t_capture_ms",
            "latency_ms",
            "dropped",
            "ok",
            "score",
            "threshold",
            "verdict",
            "normalized_score",
            "adp_step",
            "adp_score",
            "adp_stop",
            "times_ms",
            "stored",
            "bundle_hash",
            "glad_version",
        ] {
            assert!(l.get(key).is_some(), "missing `{key}` in {l}");
        }
        assert_eq!(l["camera"], "cam0");
        assert_eq!(l["seq"], i as u64);
        assert!(l["t_capture_ms"].as_f64().unwrap() >= t_start - 1.0);
        assert!(l["latency_ms"].as_f64().unwrap() > 0.0);
        assert_eq!(l["verdict"], "anomalous");
        assert_eq!(l["threshold"], 1e-6);
        assert!(l["adp_step"].is_null(), "ADP is off");
        assert!(l["times_ms"]["engine_ms"].as_f64().unwrap() > 0.0);
        assert_eq!(l["bundle_hash"], hash.as_str());
        assert_eq!(hash.len(), 16);
        assert_eq!(l["glad_version"], env!("CARGO_PKG_VERSION"));
        for k in ["input", "heatmap"] {
            let p = PathBuf::from(l["stored"][k].as_str().unwrap());
            assert!(p.is_file() && p.starts_with(results.join("images")), "{}", p.display());
        }
        assert!(l["stored"]["not_stored"].is_null());
    }
    let heat = image::open(lines[0]["stored"]["heatmap"].as_str().unwrap()).unwrap();
    assert_eq!(heat.width(), heat.height());
    assert_eq!(metric(&metrics, "glad_frames_total{camera=\"cam0\",verdict=\"anomalous\"}"), 3.0);
    assert!(metric(&metrics, "glad_results_store_bytes") > 0.0);
    // No temp files left behind.
    assert!(std::fs::read_dir(results.join("images")).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with(".tmp")));
}

#[test]
fn station_rate_limit_every_nth_and_triggers() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = images_dir(tmp.path(), 9, false);
    let cfg = config(&station_yaml(&tmp.path().join("nth"), &frames, "    policy: lossless\n    every_nth: 3\n", 100.0, false));
    let (recs, _) = run_until_sources_end(cfg, Duration::from_secs(30));
    assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![0, 3, 6]);
    assert_eq!(recs.iter().map(|r| r.dropped).collect::<Vec<_>>(), vec![0, 2, 2]);

    // A triggered camera inspects only after a trigger, one frame per trigger.
    let cfg = config(&station_yaml(&tmp.path().join("trig"), &frames, "    trigger: true\n    policy: lossless\n", 50.0, true));
    let sink = Arc::new(Collect::default());
    let station = Station::start(cfg, StartOptions { stdout: false, extra_sinks: vec![sink.clone()] }).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(sink.0.lock().unwrap().len(), 0, "inspected without a trigger");
    let state = station.state();
    state.triggers.fire("cam0").unwrap();
    state.triggers.fire("cam0").unwrap();
    let t0 = Instant::now();
    while sink.0.lock().unwrap().len() < 2 && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.0.lock().unwrap().len(), 2);
    station.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn station_cameras_sharing_a_bundle_share_an_engine_and_reload_applies_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = images_dir(tmp.path(), 4, false);
    let one = station_yaml(&tmp.path().join("r"), &frames, "    threshold: 1.0\n", 20.0, true);
    let second = format!(
        "  - name: cam1\n    bundle: {}\n    glad: {{steps: 2, tau: 0}}\n    source: {{replay: {{path: {}, fps: 20, loop: true}}}}\n",
        root().join("onnx/tiny").display(),
        frames.display()
    );
    let text = format!("{one}{second}");
    let sink = Arc::new(Collect::default());
    let station = Station::start(config(&text), StartOptions { stdout: false, extra_sinks: vec![sink.clone()] }).unwrap();
    assert_eq!(station.engines(), 1, "two cameras on the same bundle and parameters share one engine");
    // Reload: a new threshold and ROI apply without a restart.
    let changed = text.replacen("threshold: 1.0", "threshold: 0.000001\n    roi: {x: 0, y: 0, width: 32, height: 32}", 1);
    let what = station.reload(config(&changed)).unwrap();
    assert_eq!(what, vec!["cameras.cam0.threshold".to_string(), "cameras.cam0.roi".to_string()]);
    // A changed bundle needs a restart: refused, the old config stays.
    let bad = changed.replacen(&format!("bundle: {}", root().join("onnx/tiny").display()), "bundle: onnx/pixel64", 1);
    assert!(station.reload(config(&bad)).unwrap_err().to_string().contains("bundle"));
    assert_eq!(station.config(), config(&changed));
    let t0 = Instant::now();
    let seen = |sink: &Collect| sink.0.lock().unwrap().iter().any(|r| r.record.camera == "cam0" && r.record.threshold == Some(1e-6));
    while !seen(&sink) && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    station.shutdown(Duration::from_secs(5)).unwrap();
    let all = sink.0.lock().unwrap();
    let r = all.iter().rev().find(|r| r.record.camera == "cam0" && r.record.threshold == Some(1e-6)).expect("a record after the reload");
    assert_eq!(r.record.verdict, Some(Verdict::Anomalous), "{:?}", r.record);
    assert_eq!(r.input.as_ref().unwrap().dimensions(), (32, 32), "the new ROI applies");
    assert!(all.iter().any(|r| r.record.camera == "cam1"));
}

// ---------------------------------------------------------------- the image store

fn result(seq: u64, img: &RgbImage, ng: bool) -> FrameResult {
    let rec = FrameRecord {
        camera: "cam0".into(),
        seq,
        t_capture_ms: 1.7e12 + seq as f64,
        latency_ms: 1.0,
        dropped: 0,
        ok: true,
        error: None,
        score: Some(1.0),
        threshold: Some(0.5),
        verdict: Some(if ng { Verdict::Anomalous } else { Verdict::Normal }),
        normalized_score: Some(2.0),
        adp_step: None,
        adp_score: None,
        adp_stop: None,
        times_ms: None,
        stored: Stored::default(),
        bundle_hash: "x".into(),
        glad_version: "0".into(),
        run_id: String::new(),
        overlay_version: None,
        recipe: None,
        drift: Vec::new(),
    };
    FrameResult { record: Arc::new(rec), input: Some(Arc::new(img.clone())), heatmap: Some(Arc::new(img.clone())) }
}

fn store(dir: &Path, quota: u64, keep_ok_every: u64) -> ImageStore {
    ImageStore::new(StoreConfig { dir: dir.to_path_buf(), store_ng: true, keep_ok_every, quota_bytes: quota, min_free_bytes: 0 }).unwrap()
}

#[test]
fn station_store_quota_evicts_oldest_first_and_samples_ok_frames() {
    let tmp = tempfile::tempdir().unwrap();
    let img = RgbImage::from_fn(32, 32, |x, y| Rgb([(x * 7) as u8, (y * 3) as u8, 9]));
    let pair = {
        let s = store(&tmp.path().join("probe"), u64::MAX, 0);
        s.keep(&result(0, &img, true));
        s.bytes()
    };
    let s = store(&tmp.path().join("q"), pair * 2 + pair / 2, 0);
    for seq in 0..5 {
        let st = s.keep(&result(seq, &img, true));
        assert!(st.input.is_some() && st.not_stored.is_none(), "{st:?}");
    }
    assert!(s.bytes() <= pair * 2 + pair / 2);
    let names: Vec<String> = s.files().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names.iter().all(|n| n.contains("-00000003-") || n.contains("-00000004-")), "the oldest went first: {names:?}");
    // A restarted store indexes what is on disk and keeps evicting oldest first.
    let s2 = store(&tmp.path().join("q"), pair * 2 + pair / 2, 0);
    assert_eq!(s2.bytes(), s.bytes());
    // OK frames: only every Nth is kept.
    let s = store(&tmp.path().join("ok"), u64::MAX, 3);
    let kept: Vec<bool> = (0..6).map(|seq| s.keep(&result(seq, &img, false)).input.is_some()).collect();
    assert_eq!(kept, vec![true, false, false, true, false, false]);
    assert_eq!(s.health(), Health::Ok);
    // The results folder removed while running: the next NG image makes its folder anew.
    let s = store(&tmp.path().join("gone"), u64::MAX, 0);
    assert!(s.keep(&result(0, &img, true)).input.is_some());
    std::fs::remove_dir_all(tmp.path().join("gone")).unwrap();
    let st = s.keep(&result(1, &img, true));
    assert!(st.input.as_ref().is_some_and(|p| p.is_file()) && st.not_stored.is_none(), "{st:?}");
}

/// A 64 KiB tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);
impl Tmpfs {
    fn mount(dir: &Path) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"]).arg(dir).status().is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipping: cannot mount a tmpfs at {}", dir.display());
            return None;
        }
        Some(Tmpfs(dir.to_path_buf()))
    }
}
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn station_disk_full_keeps_inspecting_marks_not_stored_and_degraded() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&tmp.path().join("disk")) else { return };
    // Someone else's file leaves ~12 KiB: too little for a noisy 128x128 PNG, nothing of ours to evict.
    std::fs::write(disk.0.join("filler"), vec![7u8; 52 * 1024]).unwrap();
    let frames = images_dir(tmp.path(), 3, true);
    let results = disk.0.join("results");
    let cfg = config(&station_yaml(&results, &frames, "    threshold: 0.000001\n    policy: lossless\n", 0.0, false));
    let sink = Arc::new(Collect::default());
    let station = Station::start(cfg, StartOptions { stdout: false, extra_sinks: vec![sink.clone()] }).unwrap();
    let t0 = Instant::now();
    while !station.sources_finished() && t0.elapsed() < Duration::from_secs(40) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let state = station.state();
    station.shutdown(Duration::from_secs(5)).unwrap();
    let recs = sink.0.lock().unwrap();
    assert_eq!(recs.len(), 3, "inspection went on");
    for r in recs.iter() {
        assert!(r.record.ok && r.record.verdict == Some(Verdict::Anomalous));
        let why = r.record.stored.not_stored.as_deref().unwrap_or_else(|| panic!("stored on a full disk: {:?}", r.record.stored));
        assert!(why.contains("No space left") || why.contains("disk nearly full"), "{why}");
        assert!(r.record.stored.input.is_none());
    }
    assert!(state.degraded().contains_key("store"), "{:?}", state.degraded());
    assert!(std::fs::read_dir(results.join("images")).unwrap().next().is_none(), "no partial files left");
}

// ---------------------------------------------------------------- glad run end to end

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn station_glad_run_stops_on_sigterm_with_every_frame_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = images_dir(tmp.path(), 5, false);
    let results = tmp.path().join("results");
    let cfg = tmp.path().join("station.yaml");
    std::fs::write(&cfg, station_yaml(&results, &frames, "    policy: lossless\n    queue: 4\n", 15.0, true)).unwrap();
    let mut child = glad().args(["run", "--quiet", "--config"]).arg(&cfg).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let jsonl = results.join("results.jsonl");
    let t0 = Instant::now();
    let lines = || std::fs::read_to_string(&jsonl).map(|s| s.lines().count()).unwrap_or(0);
    while lines() < 4 {
        assert!(t0.elapsed() < Duration::from_secs(45), "no results within 45 s");
        assert!(child.try_wait().unwrap().is_none(), "glad run exited early");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t1 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t1.elapsed() < Duration::from_secs(30), "glad run did not stop within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = strip_ansi(&String::from_utf8_lossy(&out.stderr));
    assert!(status.success(), "exit {status:?}: {stderr}");
    assert!(out.stdout.is_empty(), "--quiet printed on stdout");
    let recs: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // Lossless: every captured frame, in order, none missing at the end.
    let seqs: Vec<u64> = recs.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..recs.len() as u64).collect::<Vec<_>>());
    assert!(recs.iter().all(|r| r["ok"] == true));
    let stopped = stderr.lines().find(|l| l.contains("station stopped")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(stopped.contains(&format!("captured={}", recs.len())) && stopped.contains(&format!("recorded={}", recs.len())), "{stopped}");
    assert!(stderr.contains("signal received"), "{stderr}");
}

// ---------------------------------------------------------------- config and replay

#[test]
fn station_example_config_is_valid_and_its_paths_exist() {
    let p = root().join("config/station.example.yaml");
    let c = StationConfig::load(&p).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(c.cameras.len(), 1);
    let cam = &c.cameras[0];
    assert!(root().join(&cam.bundle).join("bundle.yaml").is_file());
    match &cam.source {
        glad_edge::station::config::SourceConfig::Replay { path, .. } => {
            assert!(!glad_edge::files::sorted_images(&root().join(path)).unwrap().is_empty())
        }
        other => panic!("the example should replay: {other:?}"),
    }
    // A typo is refused with the file and the key.
    let text = std::fs::read_to_string(&p).unwrap().replace("max_age_ms: 3000", "max_age: 3000");
    let e = format!("{:#}", StationConfig::from_yaml(&p, &text).unwrap_err());
    assert!(e.contains("station.example.yaml") && e.contains("cameras[0]") && e.contains("max_age"), "{e}");
}

#[test]
fn station_replay_of_raw_yuyv_and_mjpeg_recordings() {
    use glad_edge::sources::replay::{write_recording, ReplaySource};
    let tmp = tempfile::tempdir().unwrap();
    let imgs: Vec<RgbImage> = (0..3).map(pattern).collect();
    let yuyv: Vec<Vec<u8>> = imgs.iter().map(glad_edge::sources::decode::rgb_to_yuyv).collect();
    write_recording(&tmp.path().join("yuyv"), Fourcc::Yuyv, 32, 32, &yuyv).unwrap();
    let mjpeg: Vec<Vec<u8>> = imgs
        .iter()
        .map(|i| {
            let mut b = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut b, 95).encode_image(i).unwrap();
            b
        })
        .collect();
    write_recording(&tmp.path().join("mjpeg"), Fourcc::Mjpeg, 32, 32, &mjpeg).unwrap();
    for kind in ["yuyv", "mjpeg"] {
        let mut src = ReplaySource::open_path("rec", &tmp.path().join(kind), 100.0, false).unwrap();
        src.open().unwrap();
        let t0 = Instant::now();
        for (i, want) in imgs.iter().enumerate() {
            let f = src.next_frame(Duration::from_secs(1)).unwrap();
            assert_eq!(f.seq, i as u64);
            let got = glad_edge::sources::decode::decode_frame(&f).unwrap();
            assert_eq!(got.dimensions(), (32, 32));
            let err = got
                .pixels()
                .zip(want.pixels())
                .map(|(a, b)| (0..3).map(|c| (a[c] as i32 - b[c] as i32).abs()).max().unwrap())
                .max()
                .unwrap();
            assert!(err <= 24, "{kind}: frame {i} differs by {err}");
        }
        assert!(t0.elapsed() >= Duration::from_millis(15), "{kind}: not paced at 100 fps");
        assert_eq!(src.next_frame(Duration::from_secs(1)).unwrap_err(), glad_edge::sources::SourceError::Ended);
    }
}

#[test]
fn station_fake_camera_faults_show_in_metrics_records_and_state() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let frames = images_dir(tmp.path(), 4, false);
    let text = format!(
        "runtime: {{threads: 1}}\nscheduler: {{backoff_initial_ms: 10, backoff_max_ms: 40, frame_timeout_ms: 300}}\nresults: {{dir: {}, min_free_bytes: 0}}\ncameras:\n  - name: cam-faulty\n    bundle: {}\n    glad: {{steps: 2, tau: 0}}\n    policy: lossless\n    source:\n      fake:\n        frames: {}\n        format: mjpeg\n        width: 64\n        height: 64\n        fps: 30\n        faults: [{{kind: corrupt, at: 2}}, {{kind: eio, at: 4}}, {{kind: unplug, at: 6, reopen_failures: 1}}, {{kind: stall, at: 8, ms: 2000}}]\n",
        tmp.path().join("r").display(),
        root().join("onnx/tiny").display(),
        frames.display()
    );
    let sink = Arc::new(Collect::default());
    let station = Station::start(config(&text), StartOptions { stdout: false, extra_sinks: vec![sink.clone()] }).unwrap();
    let t0 = Instant::now();
    while sink.0.lock().unwrap().iter().filter(|r| r.record.ok).count() < 10 && t0.elapsed() < Duration::from_secs(40) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let state = station.state();
    station.shutdown(Duration::from_secs(5)).unwrap();
    let m = state.metrics.render();
    // EIO: 1 reopen; unplug: 1 + 1 failed reopen; stall: 1.
    assert_eq!(metric(&m, "glad_reconnects_total{camera=\"cam-faulty\"}"), 4.0, "{m}");
    assert_eq!(metric(&m, "glad_errors_total{camera=\"cam-faulty\",kind=\"corrupt_frame\"}"), 1.0, "{m}");
    let recs = sink.0.lock().unwrap();
    let bad: Vec<_> = recs.iter().filter(|r| !r.record.ok).collect();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].record.seq, 2);
    assert!(bad[0].record.error.as_deref().unwrap().starts_with("corrupt_frame: truncated JPEG"), "{:?}", bad[0].record.error);
    assert!(bad[0].record.verdict.is_none() && bad[0].record.score.is_none());
    assert!(recs.iter().filter(|r| r.record.ok).count() >= 10, "the stream went on");
    assert_eq!(log_lines("cam-faulty", "camera lost, reconnecting"), 3, "one per loss: EIO, unplug, stall");
    assert_eq!(log_lines("cam-faulty", "camera streaming again"), 3);
}

// ---------------------------------------------------------------- one path, nothing lost

/// A JPEG with an EXIF APP1 segment giving `orientation`, inserted after SOI.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"II*\0".to_vec();
    tiff.extend_from_slice(&8u32.to_le_bytes()); // IFD at 8
    tiff.extend_from_slice(&1u16.to_le_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn jpeg_bytes(img: &RgbImage) -> Vec<u8> {
    let mut b = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut b, 95).encode_image(img).unwrap();
    b
}

/// Replayed files go through the decoder `glad inspect` uses: a truncated JPEG is an error
/// record (never a verdict), EXIF orientation is honoured, an empty raw frame is refused.
#[test]
fn station_replay_decodes_like_inspect_truncation_exif_and_empty_frames() {
    use glad_edge::sources::decode::decode_frame;
    use glad_edge::sources::{Frame, PixelFormat};
    let frame =
        |format, bytes: Vec<u8>| Frame { camera: "c".into(), seq: 0, t_capture: std::time::SystemTime::now(), format, bytes: bytes.into() };
    let img = RgbImage::from_fn(48, 24, |x, y| Rgb([(x * 5) as u8, (y * 9) as u8, 77]));
    let jpeg = jpeg_bytes(&img);
    let cut = jpeg[..jpeg.len() - 40].to_vec();
    let e = format!("{:#}", decode_frame(&frame(PixelFormat::Encoded, cut.clone())).unwrap_err());
    assert!(e.contains("truncated"), "{e}");
    let rotated = with_exif_orientation(&jpeg, 6);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("r.jpg"), &rotated).unwrap();
    let from_file = glad_edge::imaging::load_rgb(&tmp.path().join("r.jpg")).unwrap();
    let from_frame = decode_frame(&frame(PixelFormat::Mjpeg, rotated)).unwrap();
    assert_eq!(from_frame.dimensions(), (24, 48), "orientation 6 turns the image");
    assert_eq!(from_frame, from_file, "the station decodes as inspect does");
    for (w, h, n) in [(0, 0, 0usize), (2, 2, 0), (0, 4, 8)] {
        assert!(decode_frame(&frame(PixelFormat::Yuyv { w, h }, vec![16; n])).is_err(), "{w}x{h} with {n} bytes");
    }
    // End to end: the truncated JPEG in a replay folder gets an error record, the good one a verdict.
    let frames = tmp.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    std::fs::write(frames.join("0.jpg"), &jpeg).unwrap();
    std::fs::write(frames.join("1.jpg"), &cut).unwrap();
    let cfg = config(&station_yaml(&tmp.path().join("r"), &frames, "    threshold: 1.0\n    policy: lossless\n", 0.0, false));
    let (mut recs, _) = run_until_sources_end(cfg, Duration::from_secs(40));
    recs.sort_by_key(|r| r.seq);
    assert_eq!(recs.len(), 2);
    assert!(recs[0].ok && recs[0].verdict.is_some(), "{:?}", recs[0]);
    assert!(!recs[1].ok && recs[1].verdict.is_none() && recs[1].error.as_deref().unwrap().contains("truncated"), "{:?}", recs[1]);
}

/// A replay entry must be a regular file: a recording pointing at /dev/zero is refused at
/// start instead of being read until memory runs out.
#[test]
fn station_replay_refuses_device_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = tmp.path().join("rec");
    std::fs::create_dir_all(&rec).unwrap();
    std::fs::write(rec.join("index.yaml"), "format: mjpeg\nwidth: 8\nheight: 8\nframes: [/dev/zero]\n").unwrap();
    let e = match glad_edge::sources::replay::ReplaySource::open_path("c", &rec, 1.0, false) {
        Ok(_) => panic!("/dev/zero was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("/dev/zero") && e.contains("not a regular file"), "{e}");
}

/// A station calibration made with other settings is refused at start, as `glad inspect`
/// refuses it.
#[test]
fn station_refuses_a_calibration_made_with_other_settings() {
    use glad_edge::config::{CalibratedWith, Calibration, Config, NoiseConfig};
    let tmp = tempfile::tempdir().unwrap();
    let frames = images_dir(tmp.path(), 1, false);
    let m = glad_edge::bundle::Manifest::read(&root().join("onnx/tiny")).unwrap();
    let params = m.defaults.resolve(m.models.backbone.resolution).unwrap();
    let cal = Calibration {
        threshold: 0.5,
        rule: "max".into(),
        normal_count: 3,
        normal_mean: 0.1,
        normal_std: 0.01,
        normal_max: 0.12,
        settings: Some(CalibratedWith { bundle: "another-bundle".into(), params, noise: NoiseConfig::default() }),
    };
    let path = tmp.path().join("cal.yaml");
    std::fs::write(&path, serde_yaml::to_string(&Config { calibration: Some(cal), ..Default::default() }).unwrap()).unwrap();
    let cfg = config(&station_yaml(&tmp.path().join("r"), &frames, &format!("    calibration: {}\n", path.display()), 0.0, false));
    let e = match Station::start(cfg, StartOptions::default()) {
        Ok(_) => panic!("a calibration of another bundle was applied"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("calibrated with other settings") && e.contains("another-bundle"), "{e}");
}

/// results.jsonl deleted (and its folder removed) while running: the log is opened anew and
/// later records land in it.
#[test]
fn station_results_log_deleted_while_running_is_reopened() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = images_dir(tmp.path(), 2, false);
    let results = tmp.path().join("results");
    let cfg = config(&station_yaml(&results, &frames, "    threshold: 1.0\n    policy: lossless\n", 20.0, true));
    let station = Station::start(cfg, StartOptions::default()).unwrap();
    let log = results.join("results.jsonl");
    let lines = |p: &Path| std::fs::read_to_string(p).map(|t| t.lines().count()).unwrap_or(0);
    let t0 = Instant::now();
    while lines(&log) < 2 && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::remove_dir_all(&results).unwrap();
    let t0 = Instant::now();
    while lines(&log) < 2 && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    station.shutdown(Duration::from_secs(10)).unwrap();
    assert!(lines(&log) >= 2, "records after the deletion reach a new results.jsonl");
}

/// A results log that cannot be written (disk full: /dev/full) loses records with a trace:
/// counted in /metrics, and the shutdown (the exit status of `glad run`) says so.
#[test]
fn station_results_log_on_a_full_disk_counts_lost_records_and_fails_the_run() {
    if !Path::new("/dev/full").exists() {
        eprintln!("skipped: no /dev/full");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let frames = images_dir(tmp.path(), 2, false);
    let results = tmp.path().join("results");
    std::fs::create_dir_all(&results).unwrap();
    std::os::unix::fs::symlink("/dev/full", results.join("results.jsonl")).unwrap();
    let cfg = config(&station_yaml(&results, &frames, "    threshold: 1.0\n    policy: lossless\n", 0.0, false));
    let station = Station::start(cfg, StartOptions::default()).unwrap();
    let t0 = Instant::now();
    while !station.sources_finished() && t0.elapsed() < Duration::from_secs(40) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let state = station.state();
    let e = format!("{:#}", station.shutdown(Duration::from_secs(10)).unwrap_err());
    assert!(e.contains("records were lost") && e.contains("jsonl: 2"), "{e}");
    let text = state.metrics.render();
    assert_eq!(metric(&text, "glad_sink_dropped_total{sink=\"jsonl\"}"), 2.0, "{text}");
    // The provider label as the README and the config spell it.
    assert!(text.contains("provider=\"cpu\""), "{text}");
}

/// `trigger: true` under `glad run` without a PLC (sinks.modbus) would discard every frame:
/// refused before anything loads.
#[test]
fn station_glad_run_refuses_triggered_cameras_without_a_trigger_path() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = images_dir(tmp.path(), 1, false);
    let cfg = tmp.path().join("station.yaml");
    std::fs::write(&cfg, station_yaml(&tmp.path().join("r"), &frames, "    trigger: true\n", 0.0, false)).unwrap();
    let o = glad().args(["run", "-q", "--config"]).arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("trigger: true") && err.contains("glad serve"), "{err}");
}

/// The records of a results log, every line parsed (a torn line fails here).
fn jsonl_records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: not a whole JSON line ({e}): {l:?}", path.display())))
        .collect()
}

/// `seq` starts at 0 again when glad restarts; `run_id` tells the runs apart, so
/// `camera` + `run_id` + `seq` identify a record across restarts, as the README tells consumers.
#[test]
fn station_record_identity_survives_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = images_dir(tmp.path(), 3, false);
    let results = tmp.path().join("results");
    let cfg = tmp.path().join("station.yaml");
    std::fs::write(&cfg, station_yaml(&results, &frames, "    policy: lossless\n", 0.0, false)).unwrap();
    let mut per_run = Vec::new();
    for run in 0..2 {
        let o = glad().args(["run", "-q", "--config"]).arg(&cfg).output().unwrap();
        assert!(o.status.success(), "run {run}: {}", String::from_utf8_lossy(&o.stderr));
        let recs = jsonl_records(&results.join("results.jsonl"));
        per_run.push(recs.len());
        if run == 1 {
            let n0 = per_run[0];
            assert!(n0 >= 3 && recs.len() == 2 * n0, "both runs appended to one log: {per_run:?}");
            let ids: Vec<&str> = recs.iter().map(|r| r["run_id"].as_str().unwrap_or_else(|| panic!("no run_id: {r}"))).collect();
            assert!(ids.iter().all(|id| !id.is_empty()), "{ids:?}");
            assert!(ids[..n0].iter().all(|id| *id == ids[0]) && ids[n0..].iter().all(|id| *id == ids[n0]), "one run_id per run: {ids:?}");
            assert_ne!(ids[0], ids[n0], "a restart gets a new run_id");
            // seq alone repeats across the restart; the triple does not.
            let seqs: Vec<u64> = recs.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
            assert_eq!(seqs[..n0], seqs[n0..], "seq starts at 0 again after a restart");
            let keys: std::collections::BTreeSet<(String, String, u64)> = recs
                .iter()
                .map(|r| (r["camera"].as_str().unwrap().to_string(), r["run_id"].as_str().unwrap().to_string(), r["seq"].as_u64().unwrap()))
                .collect();
            assert_eq!(keys.len(), recs.len(), "(camera, run_id, seq) is unique over both runs");
        }
    }
    // What consumers are told to deduplicate on.
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(readme.contains("deduplicate on `camera` + `run_id` + `seq`"), "README: dedup key");
    assert!(!readme.contains("deduplicate on `camera` + `seq`"), "README still says camera + seq");
}

/// A real file system filling up under `glad run` (a 64 KiB tmpfs): every line of
/// results.jsonl stays whole JSON, the lost records are counted in the final summary, and the
/// exit status says records were lost.
#[test]
fn station_glad_run_on_a_full_tmpfs_never_tears_a_line() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let frames = images_dir(tmp.path(), 3, false);
    let Some(disk) = Tmpfs::mount(&tmp.path().join("full")) else { return };
    let results = disk.0.clone();
    let cfg = tmp.path().join("station.yaml");
    let yaml = station_yaml(&results, &frames, "    threshold: 1.0\n    policy: lossless\n", 0.0, true)
        .replace("min_free_bytes: 0}", "min_free_bytes: 0, store_ng: false}");
    assert!(yaml.contains("store_ng: false"));
    std::fs::write(&cfg, yaml).unwrap();
    let mut child = glad().args(["run", "-q", "--config"]).arg(&cfg).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let err = Arc::new(Mutex::new(String::new()));
    let reader = {
        let err = err.clone();
        let mut pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut pipe, &mut buf) {
                if n == 0 {
                    break;
                }
                err.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    // Until the file system is full and a few records were lost on it.
    let t0 = Instant::now();
    while err.lock().unwrap().matches("record lost").count() < 3 {
        assert!(t0.elapsed() < Duration::from_secs(120), "the tmpfs never filled: {}", err.lock().unwrap());
        assert!(child.try_wait().unwrap().is_none(), "glad run exited early: {}", err.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t1 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t1.elapsed() < Duration::from_secs(30), "glad run did not stop within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    reader.join().unwrap();
    let stderr = strip_ansi(&err.lock().unwrap());
    assert!(!status.success(), "records were lost but glad run exited 0: {stderr}");
    assert!(stderr.contains("records were lost"), "{stderr}");
    let recs = jsonl_records(&results.join("results.jsonl"));
    assert!(!recs.is_empty(), "some records fit before the disk filled");
    let stopped = stderr.lines().find(|l| l.contains("station stopped")).unwrap_or_else(|| panic!("{stderr}"));
    let field = |k: &str| -> u64 {
        stopped
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k}= in {stopped}"))
    };
    assert!(field("lost") >= 3, "{stopped}");
    assert_eq!(field("recorded"), recs.len() as u64, "the summary's recorded count is what the log holds: {stopped}");
    assert!(stderr.contains(&format!("jsonl: {}", field("lost"))), "the exit error counts the same lost records: {stderr}");
}

/// A drain deadline that leaves queued frames uninspected says so: the shutdown fails naming
/// how many frames have no record, and `glad_frames_lost_total` counts them (never `lost=0`
/// while frames were dropped on the floor).
#[test]
fn frames_left_at_the_drain_deadline_are_counted_lost_and_fail_the_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = images_dir(tmp.path(), 8, true);
    let cfg = config(&station_yaml(&tmp.path().join("r"), &frames, "    threshold: 1.0\n    policy: lossless\n    queue: 32\n", 0.0, true));
    let sink = Arc::new(Collect::default());
    let station = Station::start(cfg, StartOptions { stdout: false, extra_sinks: vec![sink.clone()] }).unwrap();
    let state = station.state();
    let t0 = Instant::now();
    while sink.0.lock().unwrap().len() < 3 && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(10));
    }
    // A deadline no queue of 32 frames can meet.
    let e = format!("{:#}", station.shutdown(Duration::from_millis(1)).unwrap_err());
    assert!(e.contains("were not inspected before the drain deadline") && e.contains("have no record"), "{e}");
    let n: u64 = e.split_whitespace().find_map(|w| w.parse().ok()).unwrap();
    let metrics = state.metrics.render();
    assert_eq!(metric(&metrics, "glad_frames_lost_total") as u64, n, "{metrics}");
    assert!(n > 0);
    // Let an engine left inside a call finish it before the test process exits.
    std::thread::sleep(Duration::from_secs(2));
}
