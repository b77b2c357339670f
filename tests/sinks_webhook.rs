//! The webhook sink against a small HTTP server on 127.0.0.1 (a std TcpListener thread):
//! NG records arrive with the configured headers; a failing server (500) is retried with
//! backoff and the failures counted; a dead-slow one never blocks `submit`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::record;
use glad_edge::sinks::{FrameRecord, Health, Sink, SinkContext, WebhookConfig};
use glad_edge::telemetry::StationState;

#[derive(Debug, Clone)]
struct Req {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Answers `fail_first` requests with 500, then 200 (`usize::MAX`: always 500); `stall`:
/// reads the request and never answers.
struct Server {
    url: String,
    reqs: Arc<Mutex<Vec<Req>>>,
    fail_first: Arc<AtomicUsize>,
}

fn server(fail_first: usize, stall: bool) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let reqs = Arc::new(Mutex::new(Vec::new()));
    let fail = Arc::new(AtomicUsize::new(fail_first));
    let (r2, f2) = (reqs.clone(), fail.clone());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut rd = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            if rd.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut headers = Vec::new();
            let mut len = 0;
            loop {
                let mut h = String::new();
                if rd.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.trim_end().split_once(':') {
                    let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
                    if k == "content-length" {
                        len = v.parse().unwrap();
                    }
                    headers.push((k, v));
                }
            }
            let mut body = vec![0; len];
            rd.read_exact(&mut body).unwrap();
            r2.lock().unwrap().push(Req { path, headers, body });
            if stall {
                held.push(s);
                continue;
            }
            let failing = f2.load(Ordering::SeqCst);
            let status = if failing > 0 {
                if failing != usize::MAX {
                    f2.store(failing - 1, Ordering::SeqCst);
                }
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = write!(s, "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    Server { url, reqs, fail_first: fail }
}

fn ctx(state: Option<Arc<StationState>>) -> SinkContext {
    SinkContext { station: "st".into(), cameras: vec!["cam0".into()], state }
}

#[test]
fn ng_records_arrive_with_headers() {
    let srv = server(0, false);
    std::env::set_var("GLAD_TEST_WEBHOOK_TOKEN", "Bearer t0ken");
    let mut c = WebhookConfig::new(&srv.url);
    c.headers.insert("X-Station".into(), "st1".into());
    c.headers_env.insert("Authorization".into(), "GLAD_TEST_WEBHOOK_TOKEN".into());
    let sink = c.build(&ctx(None)).unwrap();
    let sent: Vec<_> = (0..6).map(|i| record("cam0", i, i % 3 == 1)).collect();
    for r in &sent {
        sink.submit(r);
    }
    sink.flush(Duration::from_secs(10)).unwrap();
    let reqs = srv.reqs.lock().unwrap().clone();
    assert_eq!(reqs.len(), 2, "only the NG frames");
    for (req, want) in reqs.iter().zip([&sent[1], &sent[4]]) {
        assert_eq!(req.path, "/hook");
        let got: FrameRecord = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(&got, &*want.record);
        let h = |k: &str| req.headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(h("content-type").as_deref(), Some("application/json"));
        assert_eq!(h("x-station").as_deref(), Some("st1"));
        assert_eq!(h("authorization").as_deref(), Some("Bearer t0ken"));
    }
    let st = sink.stats();
    assert_eq!((st.delivered, st.failures, st.dropped), (2, 0, 0));

    // only_ng: false sends every record.
    let mut c = WebhookConfig::new(&srv.url);
    c.only_ng = false;
    let sink = c.build(&ctx(None)).unwrap();
    for r in &sent {
        sink.submit(r);
    }
    sink.flush(Duration::from_secs(10)).unwrap();
    assert_eq!(srv.reqs.lock().unwrap().len(), 8);
}

#[test]
fn failing_server_is_retried_with_backoff_and_counted() {
    let srv = server(3, false);
    let state = Arc::new(StationState::new(&[("cam0".into(), false)], 8));
    let mut c = WebhookConfig::new(&srv.url);
    c.retries = 5;
    c.backoff_initial_s = 0.05;
    c.backoff_max_s = 0.2;
    let sink = c.build(&ctx(Some(state.clone()))).unwrap();
    let t = Instant::now();
    sink.submit(&record("cam0", 1, true));
    sink.flush(Duration::from_secs(10)).unwrap();
    // 3 failures then success; waits 0.05 + 0.1 + 0.2 between them.
    assert!(t.elapsed() >= Duration::from_millis(340), "{:?}", t.elapsed());
    assert_eq!(srv.reqs.lock().unwrap().len(), 4);
    let st = sink.stats();
    assert_eq!((st.delivered, st.failures, st.dropped), (1, 3, 0));
    assert_eq!(sink.health(), Health::Ok, "healthy again after the success");

    // A server that keeps failing: the record is given up after its retries, and counted.
    srv.fail_first.store(usize::MAX, Ordering::SeqCst);
    let mut c = WebhookConfig::new(&srv.url);
    c.retries = 2;
    c.backoff_initial_s = 0.01;
    let sink2 = c.build(&ctx(Some(state.clone()))).unwrap();
    sink2.submit(&record("cam0", 2, true));
    sink2.flush(Duration::from_secs(10)).unwrap();
    let st = sink2.stats();
    assert_eq!((st.delivered, st.failures, st.dropped), (0, 3, 1));
    assert!(matches!(sink2.health(), Health::Degraded(_)));
    assert!(state.degraded().contains_key("webhook"));
    let text = state.metrics.render();
    assert!(text.contains("glad_sink_failures_total{sink=\"webhook\"} 6"), "{text}");
    assert!(text.contains("glad_sink_dropped_total{sink=\"webhook\"} 1"), "{text}");
}

#[test]
fn slow_server_never_blocks_submit_and_overflow_is_counted() {
    let srv = server(0, true);
    let mut c = WebhookConfig::new(&srv.url);
    c.queue_capacity = 4;
    c.timeout_s = 0.5;
    c.retries = 0;
    let sink = c.build(&ctx(None)).unwrap();
    let t = Instant::now();
    for i in 0..200 {
        sink.submit(&record("cam0", i, true));
    }
    let took = t.elapsed();
    assert!(took < Duration::from_millis(100), "submit blocked: {took:?}");
    let st = sink.stats();
    assert!(st.dropped >= 195, "{st:?}");
    // The stalled request times out and counts as a failure.
    assert!(common::wait_until(5.0, || sink.stats().failures >= 1));
    let t = Instant::now();
    drop(sink);
    assert!(t.elapsed() < Duration::from_secs(2), "drop took {:?}", t.elapsed());
}
