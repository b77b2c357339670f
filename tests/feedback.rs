//! The operator's loop end to end on the real station and HTTP face: `good` feedback teaches a
//! frame's patches to the camera's bank (overlay in the state folder, versioned, undone,
//! budgeted, kept across restarts), `defect` files the frame in the MVTec layout that `glad
//! eval` reads, a reconstruction camera keeps the image only; the drift alarm on the fake
//! camera's injected brightness shift and blur (records, metrics, state, Modbus), and its
//! silence on 1,000 normal frames.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod station_http;

use glad_edge::imaging;
use glad_edge::service::http::{HttpConfig, HttpServer};
use glad_edge::sinks::FrameRecord;
use glad_edge::sources::fake::{FakeDevice, Fault};
use glad_edge::sources::{CaptureDevice, Fourcc, Mode};
use glad_edge::station::{StartOptions, Station, StationConfig};
use glad_edge::telemetry::drift::{DriftConfig, DriftMonitor};
use serde_json::Value;
use station_http::{http, wait_record};

const TOKEN: &str = "feedback-token-0123456789";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// onnx/tiny copied with a feature bank of 8 brick normals (`glad bank`).
fn tiny_with_bank(dir: &Path) -> PathBuf {
    let b = dir.join("tiny");
    std::fs::create_dir_all(&b).unwrap();
    for e in std::fs::read_dir(root().join("onnx/tiny")).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), b.join(e.file_name())).unwrap();
        }
    }
    let normals = dir.join("normals");
    std::fs::create_dir_all(&normals).unwrap();
    for i in 0..8 {
        let name = format!("{i:03}.png");
        std::fs::copy(root().join("data/textures/brick/train/good").join(&name), normals.join(&name)).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_glad"))
        .args(["bank", "--threads", "1", "--bundle"])
        .arg(&b)
        .arg("--images")
        .arg(&normals)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    b
}

fn teach(port: u16, r: &FrameRecord, kind: &str) -> (u16, Value) {
    let body = serde_json::json!({ "camera": r.camera, "run_id": r.run_id, "seq": r.seq, "feedback": kind }).to_string();
    http(port, "POST", "/api/feedback", Some(TOKEN), &body)
}

fn station_config(tmp: &Path, bundle: &Path, frames: &Path) -> StationConfig {
    let text = format!(
        "runtime: {{threads: 1}}\nresults: {{dir: {res}, min_free_bytes: 0}}\nfeedback: {{state_dir: {state}, max_patches: 600, frames: 16}}\n\
         cameras:\n  - name: cam0\n    bundle: {bundle}\n    glad: {{steps: 2, tau: 0, reference: bank}}\n    threshold: 0.001\n    source: {{replay: {{path: {frames}, fps: 8, loop: true}}}}\n\
         \x20 - name: cam1\n    bundle: {bundle}\n    glad: {{steps: 2, tau: 0}}\n    threshold: 0.001\n    source: {{replay: {{path: {frames}, fps: 2, loop: true}}}}\n",
        res = tmp.join("results").display(),
        state = tmp.join("state").display(),
        bundle = bundle.display(),
        frames = frames.display(),
    );
    StationConfig::from_yaml(Path::new("test.yaml"), &text).unwrap_or_else(|e| panic!("{e:#}\n{text}"))
}

fn start(cfg: StationConfig) -> (Station, HttpServer, u16) {
    let station = Station::start(cfg, StartOptions::default()).unwrap();
    let settings = HttpConfig { bind: "127.0.0.1:0".into(), trigger_token: Some(TOKEN.into()), token_file: None }.resolve().unwrap();
    let server = HttpServer::start(station.state(), settings, Duration::from_secs(30)).unwrap();
    let port = server.addr().port();
    (station, server, port)
}

#[test]
fn feedback_good_teaches_the_bank_undo_budget_restart_and_defects_are_filed() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tiny_with_bank(tmp.path());
    // One stain image, looped: a taught frame is the next frame too.
    let frames = tmp.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    std::fs::copy(root().join("data/textures/brick/test/stain/000.png"), frames.join("000.png")).unwrap();
    let (station, server, port) = start(station_config(tmp.path(), &bundle, &frames));
    let state = station.state();

    let r0 = wait_record(&state, "cam0", 0, Duration::from_secs(60), |_| true);
    assert_eq!(r0.overlay_version, Some(0), "{r0:?}");
    assert!(r0.is_ng(), "the stain frame is NG before feedback: {r0:?}");
    let s0 = r0.score.unwrap();

    // Bad requests: one line naming the field; the token as for triggers.
    let (code, v) = http(port, "POST", "/api/feedback", Some(TOKEN), r#"{"camera":"cam0","run_id":"x","feedback":"good"}"#);
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("missing field `seq`"), "{v}");
    let bad = serde_json::json!({ "camera": "cam0", "run_id": r0.run_id, "seq": r0.seq, "feedback": "fine" }).to_string();
    let (code, v) = http(port, "POST", "/api/feedback", Some(TOKEN), &bad);
    assert_eq!(code, 400);
    assert!(v["error"].as_str().unwrap().contains("field `feedback`: expected `good` or `defect`"), "{v}");
    assert_eq!(http(port, "POST", "/api/feedback", None, &bad).0, 401);
    assert_eq!(http(port, "POST", "/api/feedback", Some("wrong-token-wrong-token"), &bad).0, 403);
    let gone = serde_json::json!({ "camera": "cam0", "run_id": r0.run_id, "seq": 999_999, "feedback": "good" }).to_string();
    let (code, v) = http(port, "POST", "/api/feedback", Some(TOKEN), &gone);
    assert_eq!(code, 404, "{v}");
    let cam9 = serde_json::json!({ "camera": "cam9", "run_id": r0.run_id, "seq": 1, "feedback": "good" }).to_string();
    assert_eq!(http(port, "POST", "/api/feedback", Some(TOKEN), &cam9).0, 404);

    // good: the overlay takes the frame's patches; the next frames are scored with it.
    let t_post = Instant::now();
    let (code, v) = teach(port, &r0, "good");
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["applies"], true);
    let v1 = v["version"].as_u64().unwrap();
    let per_frame = v["patches"].as_u64().unwrap();
    assert!((201..=300).contains(&per_frame), "the budget of 600 holds two frames, not three: {per_frame}");
    let r1 = wait_record(&state, "cam0", r0.seq, Duration::from_secs(10), |r| r.overlay_version == Some(v1));
    let effect = t_post.elapsed();
    println!("feedback to effect: {:.0} ms (POST answered, then the first record scored with the overlay)", effect.as_secs_f64() * 1e3);
    assert!(effect < Duration::from_secs(1), "feedback took {effect:?} to apply");
    let s1 = r1.score.unwrap();
    assert!(s1 < 0.2 * s0, "the taught frame scores {s1} after feedback, {s0} before");
    assert_eq!(r1.verdict, Some(glad_edge::sinks::Verdict::Normal), "the frame called NG is OK once taught: {r1:?}");
    assert!(bundle.join("bank/bank.safetensors").exists() && !bundle.join("overlay").exists(), "the bundle stays as it was");
    assert!(tmp.path().join(format!("state/overlay/{v1}/layer0.npy")).exists());
    let input = tmp.path().join(format!("state/dataset/cam0/train/good/{}-{:06}.png", r0.run_id, r0.seq));
    assert!(input.exists(), "{input:?}");

    // A camera that scores against its reconstruction keeps the image, says the overlay does not apply.
    let c1 = wait_record(&state, "cam1", 0, Duration::from_secs(30), |_| true);
    assert_eq!(c1.overlay_version, None);
    let (code, v) = teach(port, &c1, "good");
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["applies"], false, "{v}");
    assert!(v["reason"].as_str().unwrap().contains("reconstruction"), "{v}");
    assert!(Path::new(v["filed"]["input"].as_str().unwrap()).exists());

    // defect: input into test/<label>/ (what `glad eval` reads), heatmap and record beside.
    let (code, v) = teach(port, &r0, "defect");
    assert_eq!(code, 200, "{v}");
    let filed = Path::new(v["filed"]["input"].as_str().unwrap()).to_path_buf();
    assert!(filed.starts_with(tmp.path().join("state/dataset/cam0/test/defect")), "{filed:?}");
    assert!(Path::new(v["filed"]["heatmap"].as_str().unwrap()).exists());
    let rec: FrameRecord = serde_json::from_slice(&std::fs::read(v["filed"]["record"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!((rec.seq, rec.run_id.as_str()), (r0.seq, r0.run_id.as_str()));
    let set = glad_edge::eval::dataset::test_set(&tmp.path().join("state/dataset"), "cam0").unwrap();
    assert!(set.samples.iter().any(|s| s.path == filed && s.label && s.defect == "defect"), "{:?}", set.samples);
    let labelled = serde_json::json!({ "camera": "cam0", "run_id": r0.run_id, "seq": r0.seq, "feedback": "defect", "label": "Bad Name" });
    let (code, v) = http(port, "POST", "/api/feedback", Some(TOKEN), &labelled.to_string());
    assert_eq!(code, 400);
    assert!(v["error"].as_str().unwrap().starts_with("field `label`"), "{v}");

    // The budget (600 patches): the third frame evicts the first.
    let r2 = wait_record(&state, "cam0", r1.seq, Duration::from_secs(10), |_| true);
    let (code, v) = teach(port, &r2, "good");
    assert_eq!(code, 200, "{v}");
    let v2 = v["version"].as_u64().unwrap();
    assert_eq!(v["evicted"], serde_json::json!([]), "{v}");
    let r3 = wait_record(&state, "cam0", r2.seq, Duration::from_secs(10), |r| r.overlay_version == Some(v2));
    let (code, v) = teach(port, &r3, "good");
    assert_eq!(code, 200, "{v}");
    let v3 = v["version"].as_u64().unwrap();
    assert_eq!(v["evicted"], serde_json::json!([v1]), "{v}");
    assert_eq!(v["patches"].as_u64(), Some(2 * per_frame));
    assert!(!tmp.path().join(format!("state/overlay/{v1}")).exists());

    // Undo: the patches of v3 leave; a new version scores the next frames.
    let (code, v) = http(port, "DELETE", &format!("/api/feedback/{v3}"), Some(TOKEN), "");
    assert_eq!(code, 200, "{v}");
    let v4 = v["overlay_version"].as_u64().unwrap();
    assert!(v4 > v3);
    let r4 = wait_record(&state, "cam0", r3.seq, Duration::from_secs(10), |r| r.overlay_version == Some(v4));
    assert!(r4.score.unwrap() < 0.2 * s0, "v2 (the same image) is still taught");
    assert_eq!(http(port, "DELETE", &format!("/api/feedback/{v3}"), Some(TOKEN), "").0, 404);
    assert_eq!(http(port, "DELETE", "/api/feedback/x", Some(TOKEN), "").0, 400);
    assert_eq!(http(port, "DELETE", &format!("/api/feedback/{v2}"), None, "").0, 401);
    let (code, list) = http(port, "GET", "/api/feedback", None, "");
    assert_eq!(code, 200);
    assert_eq!(list["entries"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["cameras"]["cam0"]["overlay_version"].as_u64(), Some(v4));
    assert_eq!(list["cameras"]["cam1"]["applies"], false);

    // The review page's data holds the NG frames with their pictures.
    let (code, review) = http(port, "GET", "/api/review", None, "");
    assert_eq!(code, 200);
    let ng = review["cameras"][0]["ng"].as_array().unwrap();
    assert!(!ng.is_empty(), "{review}");
    let (code, _) = http(port, "GET", ng[0]["input"].as_str().unwrap(), None, "");
    assert_eq!(code, 200);

    server.shutdown(Duration::from_secs(5));
    station.shutdown(Duration::from_secs(10)).unwrap();

    // A restart keeps the overlay (v2) and its version.
    let (station, server, port) = start(station_config(tmp.path(), &bundle, &frames));
    let state = station.state();
    let r5 = wait_record(&state, "cam0", 0, Duration::from_secs(60), |_| true);
    assert_eq!(r5.overlay_version, Some(v4), "{r5:?}");
    assert!(r5.score.unwrap() < 0.2 * s0, "after the restart the taught frame scores {:?}", r5.score);
    assert!(!r5.is_ng(), "{r5:?}");
    // Undoing the last feedback that taught the frame: NG again.
    let (code, v) = http(port, "DELETE", &format!("/api/feedback/{v2}"), Some(TOKEN), "");
    assert_eq!(code, 200, "{v}");
    let v5 = v["overlay_version"].as_u64().unwrap();
    let r6 = wait_record(&state, "cam0", r5.seq, Duration::from_secs(10), |r| r.overlay_version == Some(v5));
    assert!(r6.is_ng(), "after every undo the frame is NG again: {r6:?}");
    assert!((r6.score.unwrap() - s0).abs() < 1e-4 * s0.max(1.0), "{} against {s0} before any feedback", r6.score.unwrap());
    server.shutdown(Duration::from_secs(5));
    station.shutdown(Duration::from_secs(10)).unwrap();
}

/// Frames of the fake camera (real JPEG encoding and decoding) through the drift monitor,
/// without scoring: the image statistics alone.
fn drift_run(fault: Option<Fault>, frames: usize) -> (Option<usize>, usize) {
    let imgs: Vec<_> =
        (0..200).map(|i| imaging::load_rgb(&root().join(format!("data/textures/brick/train/good/{i:03}.png"))).unwrap()).collect();
    let (w, h) = imgs[0].dimensions();
    let mut dev = FakeDevice::new("drift", imgs, 0.0, fault.into_iter().collect());
    dev.open(Mode { fourcc: Fourcc::Mjpeg, width: w, height: h }, 0.0).unwrap();
    let mut mon = DriftMonitor::new(DriftConfig::default(), None);
    let (mut first, mut changes) = (None, 0);
    for i in 0..frames {
        let raw = dev.dequeue(Duration::from_secs(1)).unwrap();
        let img = imaging::decode_rgb(&raw.bytes).unwrap();
        if let Some(alarms) = mon.observe(imaging::frame_stats(&img), None) {
            changes += 1;
            if first.is_none() && !alarms.is_empty() {
                first = Some(i);
            }
        }
    }
    (first, changes)
}

#[test]
fn drift_is_quiet_on_1000_normal_frames_and_fires_on_brightness_and_blur() {
    let (first, changes) = drift_run(None, 1000);
    assert_eq!((first, changes), (None, 0), "1,000 normal frames raised an alarm");
    let window = DriftConfig::default().window;
    for (fault, what) in [(Fault::Brightness { at: 100, delta: 30 }, "brightness"), (Fault::Blur { at: 100, sigma: 2.0 }, "blur")] {
        let (first, _) = drift_run(Some(fault), 200);
        let at = first.unwrap_or_else(|| panic!("{what}: no alarm"));
        println!("drift detection delay, {what}: {} frames", at - 100);
        assert!(at >= 100 && at - 100 < window, "{what}: fired at frame {at}");
    }
}

fn modbus_register(port: u16, addr: u16) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let [hi, lo] = addr.to_be_bytes();
    s.write_all(&[0, 1, 0, 0, 0, 6, 1, 3, hi, lo, 0, 1]).unwrap();
    let mut buf = [0u8; 11];
    s.read_exact(&mut buf).unwrap();
    u16::from_be_bytes([buf[9], buf[10]])
}

#[test]
fn drift_alarm_on_the_station_shows_in_records_metrics_state_and_modbus() {
    let tmp = tempfile::tempdir().unwrap();
    let modbus = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let text = format!(
        "runtime: {{threads: 1}}\nresults: {{dir: {res}, min_free_bytes: 0}}\ndrift: {{reference_frames: 10, window: 5}}\n\
         sinks:\n  modbus: {{port: {modbus}}}\n\
         cameras:\n  - name: cam0\n    bundle: {bundle}\n    glad: {{steps: 2, tau: 0}}\n    policy: lossless\n\
         \x20   source: {{fake: {{frames: {frames}, format: mjpeg, width: 128, height: 128, fps: 0, faults: [{{kind: brightness, at: 30, delta: 40}}]}}}}\n",
        res = tmp.path().join("results").display(),
        bundle = root().join("onnx/tiny").display(),
        frames = root().join("data/textures/brick/test/good").display(),
    );
    let cfg = StationConfig::from_yaml(Path::new("test.yaml"), &text).unwrap_or_else(|e| panic!("{e:#}"));
    let station = Station::start(cfg, StartOptions::default()).unwrap();
    let state = station.state();
    let before = wait_record(&state, "cam0", 0, Duration::from_secs(60), |r| r.seq >= 20);
    assert!(before.drift.is_empty(), "{before:?}");
    let fired = wait_record(&state, "cam0", 0, Duration::from_secs(60), |r| !r.drift.is_empty());
    println!("station drift delay: fired at seq {} (shift at 30)", fired.seq);
    assert_eq!(fired.drift, vec!["brightness".to_string()]);
    assert!((30..30 + 5).contains(&fired.seq), "fired at seq {}", fired.seq);
    let metrics = state.metrics.render();
    assert!(metrics.contains("glad_drift{camera=\"cam0\",alarm=\"brightness\"} 1"), "{metrics}");
    assert_eq!(state.drift("cam0").unwrap().alarms, vec!["brightness".to_string()]);
    let t0 = Instant::now();
    while modbus_register(modbus, 8) != 1 {
        assert!(t0.elapsed() < Duration::from_secs(10), "register 8 shows no brightness bit");
        std::thread::sleep(Duration::from_millis(50));
    }
    station.shutdown(Duration::from_secs(10)).unwrap();
}
