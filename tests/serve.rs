//! `glad serve` end to end on the real station: a replay camera over bundled images, the
//! systemd messages on a fake NOTIFY_SOCKET, the HTTP face, a Modbus sink, and SIGTERM.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

#[test]
fn serve_runs_the_station_with_http_notify_and_a_clean_sigterm() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let (http, modbus) = (free_port(), free_port());
    let cfg = tmp.path().join("station.yaml");
    std::fs::write(
        &cfg,
        format!(
            "name: test-line\nresults: {{dir: {res}}}\ncameras:\n  - name: cam0\n    source: {{replay: {{path: {imgs}, fps: 5, loop: true}}}}\n    bundle: {bundle}\n    glad: {{steps: 3, tau: 0.0}}\n    threshold: 1.0\nsinks:\n  modbus: {{port: {modbus}}}\nhttp: {{bind: \"127.0.0.1:{http}\"}}\nservice: {{drain_timeout_s: 10}}\n",
            res = tmp.path().join("results").display(),
            imgs = root.join("data/textures/brick/test/stain").display(),
            bundle = root.join("onnx/tiny").display(),
        ),
    )
    .unwrap();
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_glad"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "2000000")
        .env("RUST_LOG", "warn")
        .current_dir(root)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut msgs = Vec::new();
    let mut buf = [0u8; 4096];
    let t0 = Instant::now();
    // Until READY=1 and a first WATCHDOG=1, then until /readyz says 200 with frames recorded.
    while t0.elapsed() < Duration::from_secs(60)
        && !(msgs.iter().any(|m: &String| m.contains("READY=1")) && msgs.iter().any(|m| m.contains("WATCHDOG=1")))
    {
        if let Ok(n) = sock.recv(&mut buf) {
            msgs.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    assert!(msgs.iter().any(|m| m.contains("READY=1")), "no READY=1 in {msgs:?}");
    let ready_at = msgs.iter().position(|m| m.contains("READY=1")).unwrap();
    assert!(msgs[..ready_at].iter().any(|m| m.contains("STATUS=")), "STATUS before READY: {msgs:?}");
    let mut ok = false;
    while t0.elapsed() < Duration::from_secs(90) {
        let (code, body) = get(http, "/api/results?camera=cam0&limit=5");
        if code == 200 && body.contains("\"verdict\"") {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(ok, "no verdict through /api/results");
    assert_eq!(get(http, "/readyz").0, 200);
    let (_, metrics) = get(http, "/metrics");
    assert!(metrics.contains("glad_frames_total{camera=\"cam0\""), "{metrics}");
    assert_eq!(get(http, "/latest/cam0.jpg").0, 200);
    assert_eq!(get(http, "/latest/nope.jpg").0, 404);
    // The Modbus sink is up: a raw Modbus TCP "read holding registers" of camera 0's block.
    let mut m = TcpStream::connect(("127.0.0.1", modbus)).unwrap();
    m.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    m.write_all(&[0, 1, 0, 0, 0, 6, 1, 3, 0, 0, 0, 8]).unwrap();
    let mut resp = [0u8; 9 + 16];
    m.read_exact(&mut resp).unwrap();
    assert_eq!(resp[7], 3, "function code echoed: {resp:?}");
    let verdict = u16::from_be_bytes([resp[9 + 6], resp[9 + 7]]);
    assert!((1..=2).contains(&verdict), "register +3 holds OK/NG after frames, got {verdict}");

    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t1 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t1.elapsed() < Duration::from_secs(30), "serve did not stop within 30 s of SIGTERM");
        if let Ok(n) = sock.recv(&mut buf) {
            msgs.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    };
    while let Ok(n) = sock.recv(&mut buf) {
        msgs.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "exit {status:?}: {err}");
    assert!(msgs.iter().any(|m| m.contains("STOPPING=1")), "no STOPPING=1 in {msgs:?}");
    let jsonl = std::fs::read_to_string(tmp.path().join("results/results.jsonl")).unwrap();
    assert!(jsonl.lines().count() >= 1 && jsonl.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
}

fn post(port: u16, path: &str, token: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    String::from_utf8_lossy(&buf).split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// Under the default `policy: live`, triggers fired back to back are each a part to inspect:
/// three POSTs answered 202 are three inspections, none replaced in the live mailbox.
#[test]
fn serve_three_http_triggers_in_a_row_are_three_inspections() {
    const TOKEN: &str = "trigger-token-0123456789";
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let http = free_port();
    let results = tmp.path().join("results");
    let cfg = tmp.path().join("station.yaml");
    std::fs::write(
        &cfg,
        format!(
            "runtime: {{threads: 1}}\nresults: {{dir: {res}, min_free_bytes: 0}}\ncameras:\n  - name: cam0\n    trigger: true\n    source: {{replay: {{path: {imgs}, fps: 30, loop: true}}}}\n    bundle: {bundle}\n    glad: {{steps: 2, tau: 0.0}}\nhttp: {{bind: \"127.0.0.1:{http}\", trigger_token: \"{TOKEN}\"}}\nservice: {{drain_timeout_s: 10}}\n",
            res = results.display(),
            imgs = root.join("data/textures/brick/test/stain").display(),
            bundle = root.join("onnx/tiny").display(),
        ),
    )
    .unwrap();
    assert!(!std::fs::read_to_string(&cfg).unwrap().contains("policy"), "the default policy (live) is under test");
    let mut child = Command::new(env!("CARGO_BIN_EXE_glad"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .current_dir(root)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        assert!(child.try_wait().unwrap().is_none(), "glad serve exited early");
        assert!(t0.elapsed() < Duration::from_secs(90), "not ready within 90 s");
        if TcpStream::connect(("127.0.0.1", http)).is_ok() && get(http, "/readyz").0 == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Streaming and waiting: nothing inspected without a trigger.
    std::thread::sleep(Duration::from_millis(500));
    let records = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(results.join("results.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .filter(|r: &serde_json::Value| r["camera"] == "cam0")
            .collect()
    };
    assert_eq!(records().len(), 0, "inspected without a trigger");
    let codes: Vec<u16> = (0..3).map(|_| post(http, "/api/trigger/cam0", TOKEN)).collect();
    assert_eq!(codes, vec![202, 202, 202]);
    let t1 = Instant::now();
    while records().len() < 3 && t1.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Nothing more arrives: one inspection per trigger.
    std::thread::sleep(Duration::from_millis(700));
    let (_, body) = get(http, "/api/cameras");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t2 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t2.elapsed() < Duration::from_secs(30), "serve did not stop within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "exit {status:?}: {err}");
    let recs = records();
    assert_eq!(recs.len(), 3, "three triggers answered 202 are three inspections: {recs:?}\n{body}");
    assert!(recs.iter().all(|r| r["ok"] == true && r["dropped"] == 0), "{recs:?}");
    let seqs: Vec<u64> = recs.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "three distinct frames, in order: {seqs:?}");
}

/// A frame that takes far longer than the drain timeout (a slow machine, a big model) must not
/// hold `systemctl stop` past it: SIGTERM mid-frame stops within the drain timeout, the
/// abandoned frame named in the log and counted lost (exit 1), no complaint from ONNX Runtime
/// at exit, the records written before it intact.
#[test]
fn serve_sigterm_during_a_slow_frame_stops_within_the_drain_timeout() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let http = free_port();
    let cfg = tmp.path().join("station.yaml");
    // K = 400 from T = 999 on the tiny UNet: over ten seconds per frame, against a 0.3 s drain.
    std::fs::write(
        &cfg,
        format!(
            "runtime: {{threads: 1}}\nresults: {{dir: {res}, min_free_bytes: 0}}\ncameras:\n  - name: cam0\n    source: {{replay: {{path: {imgs}, fps: 5, loop: true}}}}\n    bundle: {bundle}\n    glad: {{steps: 400, denoise_step: 999, tau: 0.0}}\n    threshold: 1.0\n    max_age_ms: 600000\nhttp: {{bind: \"127.0.0.1:{http}\"}}\nservice: {{drain_timeout_s: 0.3, heartbeat_max_age_s: 600}}\n",
            res = tmp.path().join("results").display(),
            imgs = root.join("data/textures/brick/test/stain").display(),
            bundle = root.join("onnx/tiny").display(),
        ),
    )
    .unwrap();
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_glad"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("RUST_LOG", "warn")
        .current_dir(root)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 4096];
    let t0 = Instant::now();
    let mut ready = false;
    while t0.elapsed() < Duration::from_secs(180) && !ready {
        if let Ok(n) = sock.recv(&mut buf) {
            ready = String::from_utf8_lossy(&buf[..n]).contains("READY=1");
        }
    }
    assert!(ready, "no READY=1 within 180 s");
    // The camera delivers at once and the engine starts on a frame of several seconds.
    std::thread::sleep(Duration::from_millis(1500));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t1 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t1.elapsed() < Duration::from_secs(60), "serve did not stop within 60 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = t1.elapsed();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    // The abandoned frame (and any still queued) has no record: counted lost, and the stop
    // fails (non-zero exit) instead of reporting none lost.
    assert_eq!(status.code(), Some(1), "exit {status:?}: {err}");
    assert!(err.contains("stopping without that frame's record"), "the abandoned frame is not named: {err}");
    assert!(err.contains("were not inspected before the drain deadline") && err.contains("have no record"), "{err}");
    assert!(!err.contains("onnxruntime") && !err.contains("[E:"), "ONNX Runtime complained at exit: {err}");
    let after_stop = err.split_once("station stopped").map_or("", |(_, rest)| rest);
    assert!(!after_stop.contains("ERROR"), "an error logged after the stop for the abandoned frame: {err}");
    assert!(took < Duration::from_secs(3), "stop took {took:?} with a 0.3 s drain timeout: {err}");
    let jsonl = std::fs::read_to_string(tmp.path().join("results/results.jsonl")).unwrap_or_default();
    assert!(jsonl.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "a torn record: {jsonl}");
}
