//! Helpers shared by the sink tests: per-frame records, free localhost ports.
#![allow(dead_code)]

use std::sync::Arc;

use glad_edge::sinks::{FrameRecord, FrameResult, Stored, Verdict};

pub fn record(camera: &str, seq: u64, ng: bool) -> FrameResult {
    let rec = FrameRecord {
        camera: camera.into(),
        seq,
        t_capture_ms: 1.7e12 + seq as f64,
        latency_ms: 12.5,
        dropped: 0,
        ok: true,
        error: None,
        score: Some(if ng { 0.9 } else { 0.1 }),
        threshold: Some(0.5),
        verdict: Some(if ng { Verdict::Anomalous } else { Verdict::Normal }),
        normalized_score: Some(if ng { 1.8 } else { 0.2 }),
        adp_step: Some(3),
        adp_score: Some(0.25),
        adp_stop: Some("converged".into()),
        times_ms: None,
        stored: Stored::default(),
        bundle_hash: "abcd1234".into(),
        glad_version: "0.1.0".into(),
        run_id: String::new(),
        overlay_version: None,
        recipe: None,
        drift: Vec::new(),
    };
    FrameResult { record: Arc::new(rec), input: None, heatmap: None }
}

/// A port nothing listens on right now (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `f` every 10 ms until it is true or `secs` pass.
pub fn wait_until(secs: f64, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_secs_f64(secs);
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    f()
}
