//! Helpers of the tests that drive a running station over HTTP: a raw HTTP/1.1 request and
//! waiting for a record.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glad_edge::sinks::FrameRecord;
use glad_edge::station::StationState;
use serde_json::Value;

/// One request with an optional bearer token; the status and the JSON body (a string when
/// the body is not JSON).
pub fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

/// The first record of `camera` (newer than `after`) for which `want` holds.
pub fn wait_record(
    state: &StationState,
    camera: &str,
    after: u64,
    limit: Duration,
    want: impl Fn(&FrameRecord) -> bool,
) -> Arc<FrameRecord> {
    let t0 = Instant::now();
    loop {
        if let Some(r) = state.recent(Some(camera), Some(after), 1000).into_iter().find(|r| r.ok && want(r)) {
            return r;
        }
        assert!(t0.elapsed() < limit, "no record of `{camera}` after seq {after} as wanted within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
