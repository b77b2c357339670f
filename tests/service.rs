//! `glad serve`'s service parts: systemd notifications against a fake NOTIFY_SOCKET (in a
//! child process, so the environment it reads is its own), signals, every HTTP endpoint,
//! `/metrics` through a Prometheus parser, the trigger's token, the live page in headless
//! Chromium, and the install script's dry run. Loopback only, free ports, bounded in time.

mod service_fake;

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use glad_edge::service::{self, HttpConfig, HttpServer, ServeOptions};
use glad_edge::sinks::{FrameRecord, FrameResult, Stored, Verdict};
use glad_edge::telemetry::StationState;
use service_fake::{FakeConfig, FakeOptions, FakeStation, CONTINUOUS, TRIGGERED};

const TOKEN: &str = "s3cret-trigger-token-0123";

/// The two tests that time things (the notify sequence) or load the CPU (Chromium) take turns.
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------- a minimal HTTP client

struct Resp {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    fn header(&self, k: &str) -> &str {
        self.headers.get(k).map(String::as_str).unwrap_or("")
    }
}

fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: BTreeMap<String, String> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let nl = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let n = usize::from_str_radix(std::str::from_utf8(&rest[..nl]).unwrap().trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[nl + 2..nl + 2 + n]);
            rest = &rest[nl + 2 + n + 2..];
        }
        body = out;
    }
    Resp { status, headers, body }
}

fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[])
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn loopback(token: Option<&str>) -> service::HttpSettings {
    HttpConfig { bind: "127.0.0.1:0".into(), trigger_token: token.map(String::from), token_file: None }.resolve().unwrap()
}

fn record(camera: &str, seq: u64, score: Option<f32>) -> FrameRecord {
    FrameRecord {
        camera: camera.into(),
        seq,
        t_capture_ms: SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1000.0,
        latency_ms: 120.0,
        dropped: 0,
        ok: score.is_some(),
        error: score.is_none().then(|| "decode failed".into()),
        score,
        threshold: Some(0.5),
        verdict: score.map(|s| if s > 0.5 { Verdict::Anomalous } else { Verdict::Normal }),
        normalized_score: None,
        adp_step: None,
        adp_score: None,
        adp_stop: None,
        times_ms: None,
        stored: Stored::default(),
        bundle_hash: "abc".into(),
        glad_version: "0".into(),
        run_id: String::new(),
        overlay_version: None,
        recipe: None,
        drift: Vec::new(),
    }
}

// ---------------------------------------------------------------- HTTP, in process

#[test]
fn endpoints_answer_with_the_right_codes_and_content() {
    let state = Arc::new(StationState::new(&[("cam0".into(), false), ("trig".into(), true)], 50));
    let server = HttpServer::start(state.clone(), loopback(None), Duration::from_secs(5)).unwrap();
    let a = server.addr();
    assert!(a.ip().is_loopback());

    let r = get(a, "/healthz");
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));

    // Not ready: models not loaded, cam0 not streaming; the triggered camera is not a reason.
    let r = get(a, "/readyz");
    assert_eq!(r.status, 503, "{}", r.text());
    let reasons = r.json()["reasons"].to_string();
    assert!(reasons.contains("models not loaded") && reasons.contains("camera `cam0` not streaming: starting"), "{reasons}");
    assert!(!reasons.contains("trig"), "{reasons}");
    state.ready.store(true, Ordering::Release);
    state.set_camera_status("cam0", true, "streaming");
    let r = get(a, "/readyz");
    assert_eq!((r.status, r.json()["ready"].as_bool()), (200, Some(true)), "{}", r.text());
    state.set_degraded("results", Some("disk full: 0 bytes left".into()));
    let r = get(a, "/readyz");
    assert_eq!(r.status, 503);
    assert!(r.text().contains("`results` degraded: disk full"), "{}", r.text());
    state.set_degraded("results", None);
    assert_eq!(get(a, "/readyz").status, 200);

    // Pictures: unknown camera and no frame yet are 404; then the latest result, encoded.
    assert_eq!(get(a, "/latest/cam0.jpg").status, 404);
    assert_eq!(get(a, "/latest/nope.jpg").status, 404);
    assert_eq!(get(a, "/latest/cam0/heatmap.png").status, 404);
    assert_eq!(get(a, "/latest/cam0.png").status, 404);
    for evil in ["/latest/..%2F..%2Fetc%2Fpasswd.jpg", "/latest/%2Fetc%2Fpasswd.jpg", "/latest/../../etc/passwd.jpg"] {
        assert_eq!(get(a, evil).status, 404, "{evil}");
    }
    let input = image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([(x * 6) as u8, (y * 8) as u8, 128]));
    let heat = image::RgbImage::from_fn(20, 15, |x, _| image::Rgb([255, (x * 12) as u8, 0]));
    state.publish(&FrameResult {
        record: Arc::new(record("cam0", 1, Some(0.2))),
        input: Some(Arc::new(input)),
        heatmap: Some(Arc::new(heat)),
    });
    state.publish(&FrameResult { record: Arc::new(record("cam0", 2, Some(0.9))), ..latest(&state, "cam0") });
    state.publish(&FrameResult { record: Arc::new(record("trig", 1, None)), input: None, heatmap: None });
    let r = get(a, "/latest/cam0.jpg");
    assert_eq!((r.status, r.header("content-type")), (200, "image/jpeg"));
    assert_eq!(r.header("x-glad-seq"), "2");
    let jpg = image::load_from_memory_with_format(&r.body, image::ImageFormat::Jpeg).unwrap();
    assert_eq!((jpg.width(), jpg.height()), (40, 30));
    let r = get(a, "/latest/cam0/heatmap.png");
    assert_eq!((r.status, r.header("content-type")), (200, "image/png"));
    let png = image::load_from_memory_with_format(&r.body, image::ImageFormat::Png).unwrap().to_rgb8();
    assert_eq!((png.width(), png.height(), png.get_pixel(3, 2).0), (20, 15, [255, 36, 0]));
    // A failed frame has no pictures.
    assert_eq!(get(a, "/latest/trig.jpg").status, 404);
    assert_eq!(get(a, "/latest/trig/heatmap.png").status, 404);

    // Cameras.
    let r = get(a, "/api/cameras");
    assert_eq!((r.status, r.header("content-type")), (200, "application/json"));
    let j = r.json();
    let cams = j["cameras"].as_array().unwrap();
    assert_eq!(cams.len(), 2);
    assert_eq!(cams[0]["name"], "cam0");
    assert_eq!(cams[0]["streaming"], true);
    assert_eq!(cams[0]["latest"]["seq"], 2);
    assert_eq!(cams[0]["latest"]["verdict"], "anomalous");
    assert_eq!(cams[0]["has_heatmap"], true);
    assert_eq!(cams[1]["triggered"], true);
    assert_eq!(cams[1]["latest"]["ok"], false);
    assert_eq!(cams[1]["has_frame"], false);
    assert_eq!(j["triggers_enabled"], false);

    // Results: filters, bounds, validation.
    let recs = |q: &str| get(a, &format!("/api/results{q}")).json()["records"].as_array().unwrap().clone();
    assert_eq!(recs("").len(), 3);
    assert_eq!(recs("?camera=cam0").len(), 2);
    assert_eq!(recs("?camera=cam0&since=1")[0]["seq"], 2);
    assert_eq!(recs("?limit=1")[0]["camera"], "trig");
    assert_eq!(recs("?camera=&since=&limit=").len(), 3);
    for bad in ["?limit=0", "?limit=1001", "?limit=ten", "?since=-3", "?since=x", "?cam=cam0", "?limit=1&limit=2"] {
        let r = get(a, &format!("/api/results{bad}"));
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert!(r.json()["error"].as_str().unwrap().contains('`'), "{bad}: {}", r.text());
    }
    assert_eq!(get(a, "/api/results?camera=nope").status, 404);

    // Metrics.
    let r = get(a, "/metrics");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").starts_with("application/openmetrics-text"), "{}", r.header("content-type"));

    // The page and its files, embedded; no external references.
    let r = get(a, "/");
    assert_eq!((r.status, r.header("content-type")), (200, "text/html; charset=utf-8"));
    assert!(r.header("content-security-policy").contains("default-src 'self'"));
    for (path, ct) in [("/static/app.js", "text/javascript; charset=utf-8"), ("/static/app.css", "text/css; charset=utf-8")] {
        let f = get(a, path);
        assert_eq!((f.status, f.header("content-type")), (200, ct), "{path}");
        let body = f.text().replace("\"http://www.w3.org/2000/svg\"", "\"svg-namespace\""); // a name, not a fetch
        assert!(!body.contains("http://") && !body.contains("https://"), "{path} references something external");
    }
    assert!(!r.text().contains("http://") && !r.text().contains("https://"));

    // Read-only: other methods are 405, unknown routes 404.
    for (m, p) in
        [("POST", "/"), ("POST", "/healthz"), ("PUT", "/api/cameras"), ("DELETE", "/latest/cam0.jpg"), ("GET", "/api/trigger/trig")]
    {
        assert_eq!(request(a, m, p, &[]).status, 405, "{m} {p}");
    }
    assert_eq!(get(a, "/etc/passwd").status, 404);
    assert_eq!(get(a, "/static/../Cargo.toml").status, 404);
    server.shutdown(Duration::from_secs(2));
}

fn latest(state: &StationState, camera: &str) -> FrameResult {
    state.cameras[camera].latest.lock().unwrap().clone().unwrap()
}

#[test]
fn readyz_fails_on_a_stalled_component() {
    let state = Arc::new(StationState::new(&[("cam0".into(), false)], 10));
    state.ready.store(true, Ordering::Release);
    state.set_camera_status("cam0", true, "streaming");
    let hb = state.heartbeats.register("engine");
    let server = HttpServer::start(state.clone(), loopback(None), Duration::from_millis(300)).unwrap();
    assert_eq!(get(server.addr(), "/readyz").status, 200);
    std::thread::sleep(Duration::from_millis(450));
    let r = get(server.addr(), "/readyz");
    assert_eq!(r.status, 503);
    assert!(r.text().contains("`engine` made no progress"), "{}", r.text());
    hb.beat();
    assert_eq!(get(server.addr(), "/readyz").status, 200);
    server.shutdown(Duration::from_secs(2));
}

#[test]
fn metrics_parse_with_a_prometheus_text_parser() {
    let fake = FakeStation::start(FakeOptions { threshold: 0.5, period: Duration::from_millis(20), ..Default::default() });
    let state = service::StationLifecycle::state(&fake);
    state.triggers.fire(TRIGGERED).unwrap();
    let server = HttpServer::start(state.clone(), loopback(None), Duration::from_secs(5)).unwrap();
    let t0 = Instant::now();
    while state.recent(Some(TRIGGERED), None, 1).is_empty() || state.recent(Some(CONTINUOUS), None, 10).len() < 8 {
        assert!(t0.elapsed() < Duration::from_secs(10), "the fake publishes nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = get(server.addr(), "/metrics");
    assert_eq!(r.status, 200);
    let text = r.text();
    std::fs::write(Path::new(env!("CARGO_TARGET_TMPDIR")).join("metrics.txt"), &text).unwrap();
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap_or_else(|e| panic!("{e}: {text}"));
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        scrape.samples.iter().find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))).map(|s| {
            match &s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => *v,
                other => panic!("{name}: {other:?}"),
            }
        })
    };
    let normal = value("glad_frames_total", &[("camera", CONTINUOUS), ("verdict", "normal")]).expect("frames by camera and verdict");
    let ng = value("glad_frames_total", &[("camera", CONTINUOUS), ("verdict", "anomalous")]).unwrap_or(0.0);
    assert!(normal + ng >= 8.0, "{text}");
    assert_eq!(value("glad_model_info", &[("model", "brick"), ("provider", "cpu"), ("precision", "fp32")]), Some(1.0));
    assert_eq!(value("glad_model_load_seconds", &[("component", "brick")]), Some(1.25));
    assert!(
        scrape.samples.iter().any(|s| s.metric.starts_with("glad_stage_seconds") && s.labels.get("stage") == Some("capture_to_verdict")),
        "{text}"
    );
    // The counts the page shows are the same counters.
    let cams = get(server.addr(), "/api/cameras").json();
    let ok_now = cams["cameras"].as_array().unwrap().iter().find(|c| c["name"] == CONTINUOUS).unwrap()["counts"]["ok"].as_u64().unwrap();
    assert!(ok_now as f64 >= normal);
    server.shutdown(Duration::from_secs(2));
}

#[test]
fn trigger_needs_the_configured_bearer_token() {
    let state = Arc::new(StationState::new(&[("cam0".into(), false), ("trig".into(), true)], 10));
    // Off without a token, even with a header.
    let off = HttpServer::start(state.clone(), loopback(None), Duration::from_secs(5)).unwrap();
    let r = request(off.addr(), "POST", "/api/trigger/trig", &[("Authorization", &format!("Bearer {TOKEN}"))]);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("off"), "{}", r.text());
    off.shutdown(Duration::from_secs(2));
    assert_eq!(state.triggers.pending("trig"), 0);

    let on = HttpServer::start(state.clone(), loopback(Some(TOKEN)), Duration::from_secs(5)).unwrap();
    let a = on.addr();
    let post = |cam: &str, auth: Option<&str>| match auth {
        Some(h) => request(a, "POST", &format!("/api/trigger/{cam}"), &[("Authorization", h)]),
        None => request(a, "POST", &format!("/api/trigger/{cam}"), &[]),
    };
    let r = post("trig", None);
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").starts_with("Bearer"));
    assert_eq!(post("trig", Some(&format!("Basic {TOKEN}"))).status, 401);
    assert_eq!(post("trig", Some("Bearer wrong-token-wrong-token")).status, 403);
    assert_eq!(post("trig", Some(&format!("Bearer {TOKEN}x"))).status, 403);
    assert_eq!(post("trig", Some("Bearer ")).status, 401); // "Bearer" alone: no token given
                                                           // Unknown camera is only told to the token holder.
    assert_eq!(post("nope", None).status, 401);
    assert_eq!(post("nope", Some(&format!("Bearer {TOKEN}"))).status, 404);
    assert_eq!(post("cam0", Some(&format!("Bearer {TOKEN}"))).status, 409);
    assert_eq!(state.triggers.pending("trig"), 0);
    let r = post("trig", Some(&format!("Bearer {TOKEN}")));
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["pending"], 1);
    assert_eq!(post("trig", Some(&format!("bearer {TOKEN}"))).status, 202);
    assert_eq!(state.triggers.pending("trig"), 2);
    assert_eq!(get(a, "/api/cameras").json()["triggers_enabled"], true);
    on.shutdown(Duration::from_secs(2));
}

#[test]
fn http_config_is_validated_with_the_key_named() {
    let err = |c: HttpConfig| format!("{:#}", c.resolve().unwrap_err());
    let d = HttpConfig::default();
    assert_eq!(d.bind, format!("127.0.0.1:{}", service::http::DEFAULT_PORT));
    assert!(d.resolve().unwrap().bind.ip().is_loopback());
    assert!(err(HttpConfig { bind: "localhost:80".into(), ..d.clone() }).contains("key `http.bind`"));
    assert!(err(HttpConfig { bind: "127.0.0.1".into(), ..d.clone() }).contains("key `http.bind`"));
    assert!(err(HttpConfig { trigger_token: Some("short".into()), ..d.clone() }).contains("key `http.trigger_token`"));
    assert!(err(HttpConfig { trigger_token: Some("with a space in it, long".into()), ..d.clone() }).contains("whitespace"));
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("token");
    assert!(err(HttpConfig { token_file: Some(f.clone()), ..d.clone() }).contains("key `http.token_file`"));
    std::fs::write(&f, format!("{TOKEN}\n")).unwrap();
    assert!(HttpConfig { token_file: Some(f.clone()), ..d.clone() }.resolve().unwrap().triggers_enabled());
    assert!(err(HttpConfig { token_file: Some(f), trigger_token: Some(TOKEN.into()), ..d.clone() }).contains("not both"));
    // Unknown keys are refused by name.
    let e = serde_yaml::from_str::<HttpConfig>("bind: 127.0.0.1:1\ntoken: x\n").unwrap_err().to_string();
    assert!(e.contains("unknown field `token`"), "{e}");
    let e = service::ServiceConfig { drain_timeout_s: 0.0, ..Default::default() }.validate().unwrap_err().to_string();
    assert!(e.contains("key `service.drain_timeout_s`"), "{e}");
    // A non-loopback bind works (with a warning in the log).
    let any = HttpConfig { bind: "0.0.0.0:0".into(), ..d }.resolve().unwrap();
    assert!(!any.bind.ip().is_loopback());
}

// ---------------------------------------------------------------- systemd notify and signals, in a child

/// The child side: runs `service::serve` on the fake station, configured by the parent
/// through the environment (NOTIFY_SOCKET and WATCHDOG_USEC among it). Does nothing when run
/// as a normal test.
#[test]
fn child_service_process() {
    let Some(config) = std::env::var_os("GLAD_SERVICE_CHILD_CONFIG").map(PathBuf::from) else {
        return;
    };
    tracing_subscriber::fmt().with_env_filter("info").with_writer(std::io::stderr).with_ansi(false).with_target(false).init();
    let env_path = |k: &str| std::env::var_os(k).map(PathBuf::from);
    let c = FakeConfig::load(&config).expect("child config");
    let opts = ServeOptions { config_path: config, service: c.service, http: c.http };
    let fake = FakeOptions {
        threshold: c.threshold,
        period: Duration::from_millis(100),
        error_every: None,
        stuck_file: env_path("GLAD_FAKE_STUCK_FILE"),
        results: env_path("GLAD_FAKE_RESULTS"),
    };
    let r = service::serve(opts, |loading| FakeStation::start_loading(loading, Duration::from_millis(1200), fake));
    if let Err(e) = &r {
        eprintln!("serve: {e:#}");
    }
    std::process::exit(if r.is_ok() { 0 } else { 1 });
}

struct Notifications {
    sock: UnixDatagram,
    log: Vec<(Instant, String)>,
}

impl Notifications {
    /// Collects messages (one per line) until `until` or until `stop` matches a line.
    fn collect(&mut self, until: Instant, stop: impl Fn(&str) -> bool) -> Vec<String> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < until {
            match self.sock.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let mut hit = false;
                    for line in msg.lines() {
                        self.log.push((Instant::now(), line.to_string()));
                        got.push(line.to_string());
                        hit |= stop(line);
                    }
                    if hit {
                        break;
                    }
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("notify socket: {e}"),
            }
        }
        got
    }

    fn for_(&mut self, d: Duration) -> Vec<String> {
        self.collect(Instant::now() + d, |_| false)
    }

    fn until(&mut self, what: &str, within: Duration) -> Vec<String> {
        let got = self.collect(Instant::now() + within, |l| l == what);
        assert!(got.iter().any(|l| l == what), "no {what} within {within:?}; got {got:?}");
        got
    }
}

fn count(lines: &[String], what: &str) -> usize {
    lines.iter().filter(|l| *l == what).count()
}

fn wait_for(log: &Mutex<String>, what: &str, within: Duration) {
    let t0 = Instant::now();
    while !log.lock().unwrap().contains(what) {
        assert!(t0.elapsed() < within, "`{what}` not logged within {within:?}:\n{}", log.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn latest_threshold(addr: SocketAddr) -> f64 {
    let j = get(addr, &format!("/api/results?camera={CONTINUOUS}&limit=1")).json();
    j["records"][0]["threshold"].as_f64().unwrap()
}

fn write_config(path: &Path, threshold: &str, port: u16) {
    let text = format!(
        "threshold: {threshold}\nservice:\n  drain_timeout_s: 5\n  heartbeat_max_age_s: 1.0\n  load_extend_interval_s: 0.3\nhttp:\n  bind: 127.0.0.1:{port}\n"
    );
    std::fs::write(path, text).unwrap();
}

#[test]
fn notify_watchdog_reload_and_sigterm_sequence() {
    let _turn = heavy();
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut n = Notifications { sock, log: Vec::new() };
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = dir.path().join("station.yaml");
    write_config(&config, "0.5", port);
    let stuck = dir.path().join("stuck");
    let results = dir.path().join("results.jsonl");

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_service_process", "--exact", "--nocapture", "--test-threads=1"])
        .env("GLAD_SERVICE_CHILD_CONFIG", &config)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .env("GLAD_FAKE_STUCK_FILE", &stuck)
        .env("GLAD_FAKE_RESULTS", &results)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let log = Arc::new(Mutex::new(String::new()));
    let reader = {
        let (log, stderr) = (log.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        })
    };
    let guard = KillOnDrop(pid);

    // Load: STATUS lines and EXTEND_TIMEOUT_USEC before READY=1, no watchdog ping before it.
    let load = n.until("READY=1", Duration::from_secs(30));
    assert!(load.iter().any(|l| l.starts_with("STATUS=loading models")), "{load:?}");
    assert!(load.iter().any(|l| l.starts_with("STATUS=building the TensorRT engine")), "{load:?}");
    assert!(load.iter().any(|l| l.starts_with("STATUS=warming up")), "{load:?}");
    assert!(count(&load, "EXTEND_TIMEOUT_USEC=900000") >= 2, "extensions every 0.3 s for 0.9 s each: {load:?}");
    assert_eq!(count(&load, "WATCHDOG=1"), 0, "{load:?}");
    let ready_status = n.for_(Duration::from_millis(50));
    let _ = ready_status;
    assert!(n.log.iter().any(|(_, l)| l.starts_with("STATUS=serving 2 camera(s)")), "{:?}", n.log);

    // Frames flow: pings every WATCHDOG_USEC / 2.
    let flowing = n.for_(Duration::from_millis(1500));
    assert!(count(&flowing, "WATCHDOG=1") >= 4, "{flowing:?}");
    assert_eq!(get(addr, "/healthz").status, 200);
    let r = get(addr, "/readyz");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(latest_threshold(addr), 0.5);

    // SIGHUP with a good config: RELOADING=1, the change logged and applied, READY=1 again.
    write_config(&config, "0.7", port);
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let hup = n.until("RELOADING=1", Duration::from_secs(5));
    assert!(hup.iter().all(|l| l != "READY=1"), "{hup:?}");
    let after = n.until("READY=1", Duration::from_secs(5));
    assert!(after.iter().chain(&hup).any(|l| l.starts_with("MONOTONIC_USEC=")), "{hup:?} {after:?}");
    wait_for(&log, "threshold of `line1-top` and `line1-side`: 0.5 -> 0.7", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(latest_threshold(addr), 0.699999988079071); // f32 0.7

    // SIGHUP with a bad config: rejected with the key named, the old one kept.
    write_config(&config, "-1", port);
    unsafe { libc::kill(pid, libc::SIGHUP) };
    n.until("RELOADING=1", Duration::from_secs(5));
    n.until("READY=1", Duration::from_secs(5));
    wait_for(&log, "reload rejected", Duration::from_secs(5));
    assert!(log.lock().unwrap().contains("key `threshold`: must be in (0, 1), got -1"), "{}", log.lock().unwrap());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(latest_threshold(addr), 0.699999988079071);
    let mut typo = std::fs::read_to_string(&config).unwrap().replace("threshold: -1", "threshold: 0.6");
    typo.push_str("thresold: 0.6\n");
    std::fs::write(&config, typo).unwrap();
    unsafe { libc::kill(pid, libc::SIGHUP) };
    n.until("READY=1", Duration::from_secs(5));
    wait_for(&log, "unknown field `thresold`", Duration::from_secs(5));
    assert_eq!(latest_threshold(addr), 0.699999988079071);

    // The engine gets stuck: once its heartbeat is older than 1 s the pings stop.
    std::fs::write(&stuck, "").unwrap();
    let going_stale = n.for_(Duration::from_millis(1500));
    let stalled = n.for_(Duration::from_millis(1500));
    assert_eq!(count(&stalled, "WATCHDOG=1"), 0, "pings while stuck: {stalled:?}");
    assert!(going_stale.iter().chain(&stalled).any(|l| l == "STATUS=stalled: engine"), "{going_stale:?} {stalled:?}");
    let r = get(addr, "/readyz");
    assert_eq!(r.status, 503);
    assert!(r.text().contains("`engine` made no progress"), "{}", r.text());
    // ... and resume when it moves again.
    std::fs::remove_file(&stuck).unwrap();
    let resumed = n.for_(Duration::from_millis(1200));
    assert!(count(&resumed, "WATCHDOG=1") >= 2, "{resumed:?}");

    // SIGTERM: STOPPING=1, the frame in flight recorded, exit 0 within the drain bound.
    std::thread::sleep(Duration::from_millis(150));
    let t_term = Instant::now();
    unsafe { libc::kill(pid, libc::SIGTERM) };
    n.until("STOPPING=1", Duration::from_secs(3));
    let status = wait_child(&mut child, Duration::from_secs(8));
    let took = t_term.elapsed();
    std::mem::forget(guard);
    reader.join().unwrap();
    let log = log.lock().unwrap().clone();
    assert_eq!(status, Some(0), "exit status; log:\n{log}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(log.contains("shutting down signal=\"SIGTERM\"") || log.contains("signal=SIGTERM"), "{log}");
    let drained = log.lines().find(|l| l.contains("fake station drained")).unwrap_or_else(|| panic!("{log}"));
    let last_seq: u64 = drained.split("last frame seq ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    let text = std::fs::read_to_string(&results).unwrap();
    let last_line = text.lines().rfind(|l| l.contains(CONTINUOUS)).unwrap();
    let rec: FrameRecord = serde_json::from_str(last_line).unwrap();
    assert_eq!(rec.seq, last_seq, "the last frame in flight is in the results");
    let stopping_at = n.log.iter().position(|(_, l)| l == "STOPPING=1").unwrap();
    assert!(n.log[stopping_at..].iter().all(|(_, l)| l != "WATCHDOG=1"), "no ping after STOPPING=1");
    assert!(log.contains("stopped"), "{log}");
}

struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

fn wait_child(child: &mut std::process::Child, within: Duration) -> Option<i32> {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        if t0.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- the live page in Chromium

fn chromium() -> Option<PathBuf> {
    for c in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(c).exists() {
            return Some(PathBuf::from(c));
        }
    }
    None
}

fn run_chromium(bin: &Path, profile: &Path, args: &[&str], url: &str) -> (bool, String, String) {
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let pipe = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = pipe(Box::new(child.stdout.take().unwrap()));
    let err = pipe(Box::new(child.stderr.take().unwrap()));
    let ok = wait_child(&mut child, Duration::from_secs(90)) == Some(0);
    (ok, out.join().unwrap(), err.join().unwrap())
}

#[test]
fn live_page_renders_in_chromium() {
    let Some(bin) = chromium() else {
        assert!(std::env::var_os("CI").is_none(), "chromium is not installed (.ci/run installs it)");
        eprintln!("skipped: no chromium");
        return;
    };
    let _turn = heavy();
    let fake =
        FakeStation::start(FakeOptions { threshold: 0.5, period: Duration::from_millis(100), error_every: Some(2), ..Default::default() });
    let state = service::StationLifecycle::state(&fake);
    let server = HttpServer::start(state.clone(), loopback(Some(TOKEN)), Duration::from_secs(5)).unwrap();
    let url = format!("http://{}/", server.addr());
    // The triggered camera: a good frame, a failed one, then the stain (NG).
    for n in 1..=3 {
        state.triggers.fire(TRIGGERED).unwrap();
        let t0 = Instant::now();
        while state.recent(Some(TRIGGERED), None, 10).len() < n {
            assert!(t0.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(latest(&state, TRIGGERED).record.verdict, Some(Verdict::Anomalous));
    std::thread::sleep(Duration::from_millis(1500));
    let dir = tempfile::tempdir().unwrap();

    let (ok, dom, err) = run_chromium(&bin, &dir.path().join("p1"), &["--virtual-time-budget=5000", "--dump-dom"], &url);
    assert!(ok, "chromium: {err}");
    let card = |name: &str| -> String {
        let at = dom.find(&format!("data-camera=\"{name}\"")).unwrap_or_else(|| panic!("no card for {name}:\n{dom}"));
        dom[at..].split("</section>").next().unwrap().to_string()
    };
    let top = card(CONTINUOUS);
    assert!(top.contains("data-verdict=\"ok\"") || top.contains("data-verdict=\"ng\""), "{top}");
    assert!(top.contains(">OK<") || top.contains(">NG<"), "{top}");
    let heat = top.split("<img").find(|t| t.contains("class=\"heatmap\"")).unwrap_or_else(|| panic!("no heatmap img: {top}"));
    let heat = heat.split('>').next().unwrap();
    assert!(heat.contains(&format!("src=\"/latest/{CONTINUOUS}/heatmap.png?seq=")), "{heat}");
    assert!(heat.contains("data-loaded=\"1\""), "the heatmap did not load: {heat}");
    let frame = top.split("<img").find(|t| t.contains("class=\"frame\"")).unwrap().split('>').next().unwrap();
    assert!(frame.contains("data-loaded=\"1\"") && frame.contains(".jpg?seq="), "{frame}");
    assert!(top.contains("threshold 0.500"), "{top}");
    assert!(top.contains("<path class=\"line\""), "no score trend: {top}");
    assert!(dom.contains(">READY<"), "{dom}");
    let side = card(TRIGGERED);
    assert!(side.contains("triggered") && side.contains("data-verdict=\"ng\""), "{side}");
    assert!(side.contains("<b>1</b><span>errors</span>"), "{side}");

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("live_view.png");
    let _ = std::fs::remove_file(&shot);
    let arg = format!("--screenshot={}", shot.display());
    let (ok, _, err) = run_chromium(&bin, &dir.path().join("p2"), &["--virtual-time-budget=5000", "--window-size=1280,900", &arg], &url);
    assert!(ok, "chromium: {err}");
    let png = image::open(&shot).unwrap();
    assert_eq!((png.width(), png.height()), (1280, 900));
    if std::env::var_os("GLAD_UPDATE_SCREENSHOT").is_some() {
        let dst = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/img/live_view.png");
        std::fs::copy(&shot, &dst).unwrap();
        eprintln!("screenshot: {}", dst.display());
    }
    server.shutdown(Duration::from_secs(2));
    drop(fake);
}

/// The NG review page: the latest NG frames with input, heatmap, score and feedback buttons,
/// and the drift state, rendered by headless Chromium.
#[test]
fn review_page_renders_in_chromium() {
    let Some(bin) = chromium() else {
        assert!(std::env::var_os("CI").is_none(), "chromium is not installed (.ci/run installs it)");
        eprintln!("skipped: no chromium");
        return;
    };
    let _turn = heavy();
    let fake =
        FakeStation::start(FakeOptions { threshold: 0.5, period: Duration::from_millis(100), error_every: Some(2), ..Default::default() });
    let state = service::StationLifecycle::state(&fake);
    let server = HttpServer::start(state.clone(), loopback(Some(TOKEN)), Duration::from_secs(5)).unwrap();
    let url = format!("http://{}/review", server.addr());
    for n in 1..=3 {
        state.triggers.fire(TRIGGERED).unwrap();
        let t0 = Instant::now();
        while state.recent(Some(TRIGGERED), None, 10).len() < n {
            assert!(t0.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let ng = state.recent_ng(TRIGGERED);
    assert!(!ng.is_empty(), "the triggered camera's stain frame is NG");
    let mut drift = glad_edge::telemetry::drift::DriftStatus { armed: true, alarms: vec!["brightness".into()], ..Default::default() };
    state.set_drift(TRIGGERED, drift.clone());
    drift.alarms.clear();
    state.set_drift(CONTINUOUS, drift);
    let dir = tempfile::tempdir().unwrap();
    let (ok, dom, err) = run_chromium(&bin, &dir.path().join("p1"), &["--virtual-time-budget=5000", "--dump-dom"], &url);
    assert!(ok, "chromium: {err}");
    let section = |name: &str| -> String {
        let at = dom.find(&format!("data-camera=\"{name}\"")).unwrap_or_else(|| panic!("no section for {name}:\n{dom}"));
        dom[at..].split("</section>").next().unwrap().to_string()
    };
    let side = section(TRIGGERED);
    assert!(side.contains("DRIFT: brightness"), "{side}");
    assert!(side.contains("class=\"ng-item\""), "{side}");
    for cls in ["frame", "heatmap"] {
        let img = side.split("<img").find(|t| t.contains(&format!("class=\"{cls}\""))).unwrap_or_else(|| panic!("no {cls}: {side}"));
        let img = img.split('>').next().unwrap();
        assert!(img.contains("data-loaded=\"1\"") && img.contains(&format!("/review/{TRIGGERED}/")), "{cls} did not load: {img}");
    }
    assert!(side.contains(">good</button>") && side.contains(">defect</button>"), "{side}");
    assert!(side.contains("score ") && side.contains("threshold 0.500"), "{side}");
    assert!(section(CONTINUOUS).contains("no drift"));

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("review.png");
    let _ = std::fs::remove_file(&shot);
    let arg = format!("--screenshot={}", shot.display());
    let (ok, _, err) = run_chromium(&bin, &dir.path().join("p2"), &["--virtual-time-budget=5000", "--window-size=1280,900", &arg], &url);
    assert!(ok, "chromium: {err}");
    let png = image::open(&shot).unwrap();
    assert_eq!((png.width(), png.height()), (1280, 900));
    if std::env::var_os("GLAD_UPDATE_SCREENSHOT").is_some() {
        let dst = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/img/review.png");
        std::fs::copy(&shot, &dst).unwrap();
        eprintln!("screenshot: {}", dst.display());
    }
    server.shutdown(Duration::from_secs(2));
    drop(fake);
}

// ---------------------------------------------------------------- the install script

#[test]
fn install_script_dry_run_writes_nothing_and_a_real_run_into_a_root_installs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let bin = dir.path().join("glad");
    std::fs::write(&bin, "#!/bin/sh\necho glad\n").unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-service.sh");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.yaml");
    let run = |extra: &[&str]| {
        let out = Command::new("bash")
            .arg(&script)
            .args(["--root", root.to_str().unwrap(), "--binary", bin.to_str().unwrap(), "--config", config.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code(), text)
    };
    let (code, text) = run(&["--dry-run"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("would run: install -D -m 0755"), "{text}");
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0, "a dry run wrote into the root:\n{text}");
    // The dry run of a real install (into /) prints the user and systemctl steps too.
    let out = Command::new("bash")
        .arg(&script)
        .args(["--dry-run", "--binary", bin.to_str().unwrap(), "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.lines().all(|l| !l.starts_with("+ ")), "a dry run ran something:\n{text}");
    for want in ["/usr/local/bin/glad", "/etc/glad/station.yaml", "/etc/systemd/system/glad.service", "useradd", "systemctl daemon-reload"]
    {
        assert!(text.contains(want), "dry run does not mention {want}:\n{text}");
    }

    let (code, text) = run(&[]);
    assert_eq!(code, Some(0), "{text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| std::fs::metadata(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}\n{text}")).permissions().mode() & 0o777;
    assert_eq!(mode("usr/local/bin/glad"), 0o755);
    assert_eq!(mode("etc/glad/station.yaml"), 0o644);
    assert_eq!(mode("etc/systemd/system/glad.service"), 0o644);
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/glad.service")).unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="), "{unit}");
    // systemd itself accepts the unit (where systemd-analyze exists; ExecStart's binary must exist).
    if Path::new("/usr/bin/systemd-analyze").exists() {
        let u = dir.path().join("glad.service");
        std::fs::write(&u, unit.replace("/usr/local/bin/glad", "/bin/true")).unwrap();
        let out = Command::new("/usr/bin/systemd-analyze").arg("verify").arg(&u).output().unwrap();
        let msg = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && !msg.contains("glad.service:"), "systemd-analyze verify: {msg}");
    }
    // A second run keeps an edited config.
    std::fs::write(root.join("etc/glad/station.yaml"), "# edited\n").unwrap();
    let (code, text) = run(&[]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(std::fs::read_to_string(root.join("etc/glad/station.yaml")).unwrap(), "# edited\n");
    assert!(text.contains("keeping"), "{text}");
}

// ---------------------------------------------------------------- bounded HTTP

/// A port already in use is found before the station loads anything (under
/// `Restart=on-failure` a late failure would reload the models in a loop).
#[test]
fn a_port_in_use_fails_before_the_station_loads() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http = HttpConfig { bind: taken.local_addr().unwrap().to_string(), ..HttpConfig::default() };
    let opts = ServeOptions { config_path: PathBuf::from("unused.yaml"), service: Default::default(), http };
    let loaded = std::sync::atomic::AtomicBool::new(false);
    let r = service::serve(opts, |_| -> anyhow::Result<FakeStation> {
        loaded.store(true, Ordering::Relaxed);
        anyhow::bail!("must not be reached")
    });
    let e = format!("{:#}", r.unwrap_err());
    assert!(e.contains("http.bind") && e.contains("cannot listen"), "{e}");
    assert!(!loaded.load(Ordering::Relaxed), "the station was started before the port was checked");
}

/// A connection that stays silent is closed after the idle timeout; the server keeps
/// answering others.
#[test]
fn silent_connections_are_closed_after_the_idle_timeout() {
    let state = Arc::new(StationState::new(&[("cam0".into(), false)], 8));
    let bound = HttpServer::bind(loopback(None)).unwrap();
    let server = HttpServer::serve_with_idle(bound, state, Duration::from_secs(5), Duration::from_millis(300)).unwrap();
    let a = server.addr();
    let mut silent: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(a).unwrap()).collect();
    let t0 = Instant::now();
    for s in &mut silent {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
    }
    assert!(t0.elapsed() < Duration::from_secs(4), "closed after about the idle timeout, took {:?}", t0.elapsed());
    assert_eq!(get(a, "/healthz").status, 200);
    server.shutdown(Duration::from_secs(2));
}

/// `promtool check metrics` (Prometheus's own linter, Debian package `prometheus`) passes on
/// `/metrics` as a Prometheus scraper or `curl | promtool` asks for it; the OpenMetrics answer
/// stays the default.
#[test]
fn metrics_pass_promtool_check_metrics() {
    let promtool = std::env::var_os("PROMTOOL").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("promtool"));
    if Command::new(&promtool).arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "promtool is missing on CI (apt-get install prometheus)");
        eprintln!("SKIPPED: `promtool` is not installed (apt-get install prometheus)");
        return;
    }
    let fake =
        FakeStation::start(FakeOptions { threshold: 0.5, period: Duration::from_millis(20), error_every: Some(3), ..Default::default() });
    let state = service::StationLifecycle::state(&fake);
    let server = HttpServer::start(state.clone(), loopback(None), Duration::from_secs(5)).unwrap();
    let t0 = Instant::now();
    while state.recent(Some(CONTINUOUS), None, 10).len() < 6 {
        assert!(t0.elapsed() < Duration::from_secs(10), "the fake publishes nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    for accept in ["*/*", "text/plain;version=0.0.4"] {
        let r = request(server.addr(), "GET", "/metrics", &[("Accept", accept)]);
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").starts_with("text/plain; version=0.0.4"), "{}", r.header("content-type"));
        let text = r.text();
        assert!(text.contains("glad_frames_total{"), "{text}");
        let mut child = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "promtool check metrics: {}{}\n{text}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert!(get(server.addr(), "/metrics").header("content-type").starts_with("application/openmetrics-text"));
    server.shutdown(Duration::from_secs(2));
    service::StationLifecycle::shutdown(fake, Duration::from_secs(2)).unwrap();
}
