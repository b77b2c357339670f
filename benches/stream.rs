//! Stream benchmark: a replay camera through the whole station (decode, engine, verdict,
//! JSONL, store) at several offered rates, `live` and `lossless`. Prints a Markdown table:
//! sustained frames/s, p50/p99 capture-to-verdict latency, frames dropped, stale records.
//!
//! `cargo bench --bench stream` (`GLAD_BENCH_FRAMES=N` frames per row, default 30).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use glad_edge::sinks::{FrameRecord, FrameResult, Sink};
use glad_edge::station::{StartOptions, Station, StationConfig};
use image::RgbImage;

#[derive(Default)]
struct Collect(Mutex<Vec<Arc<FrameRecord>>>);
impl Sink for Collect {
    fn name(&self) -> &str {
        "bench"
    }
    fn submit(&self, r: &FrameResult) {
        self.0.lock().unwrap().push(r.record.clone());
    }
    fn flush(&self, _t: Duration) -> anyhow::Result<()> {
        Ok(())
    }
}

struct Row {
    policy: &'static str,
    offered: f64,
    frames: usize,
    inspected: usize,
    fps: f64,
    p50: f64,
    p99: f64,
    dropped: u64,
    stale: usize,
    engine_ms: f64,
    decode_ms: f64,
    /// p99 over inspected frames of latency / (that frame's engine + decode time).
    p99_ratio: f64,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[allow(clippy::too_many_arguments)]
fn run(
    root: &Path,
    frames_dir: &Path,
    out: &Path,
    bundle: &str,
    glad: &str,
    policy: &'static str,
    fps: f64,
    max_age_ms: f64,
    n: usize,
) -> Row {
    let text = format!(
        "results: {{dir: {}, min_free_bytes: 0, store_ng: false}}\nscheduler: {{max_batch: 1, batch_window_ms: 0}}\ncameras:\n  - name: bench\n    bundle: {}\n    glad: {glad}\n    policy: {policy}\n    queue: 4\n    max_age_ms: {max_age_ms}\n    source: {{replay: {{path: {}, fps: {fps}, loop: false}}}}\n",
        out.display(),
        root.join(bundle).display(),
        frames_dir.display()
    );
    let cfg = StationConfig::from_yaml(Path::new("bench.yaml"), &text).unwrap();
    let sink = Arc::new(Collect::default());
    let station = Station::start(cfg, StartOptions { stdout: false, extra_sinks: vec![sink.clone()] }).unwrap();
    let t0 = Instant::now();
    while !station.sources_finished() {
        std::thread::sleep(Duration::from_millis(5));
    }
    station.shutdown(Duration::from_secs(30)).unwrap();
    let wall = t0.elapsed().as_secs_f64();
    let recs = sink.0.lock().unwrap().clone();
    let ok: Vec<&Arc<FrameRecord>> = recs.iter().filter(|r| r.ok).collect();
    let mut lat: Vec<f64> = ok.iter().map(|r| r.latency_ms).collect();
    let mut ratio: Vec<f64> =
        ok.iter().filter_map(|r| r.times_ms.as_ref().map(|t| r.latency_ms / (t.engine_ms + t.load_ms).max(1e-3))).collect();
    let mean = |f: &dyn Fn(&FrameRecord) -> f64| ok.iter().map(|r| f(r)).sum::<f64>() / ok.len().max(1) as f64;
    Row {
        policy,
        offered: fps,
        frames: n,
        inspected: ok.len(),
        fps: ok.len() as f64 / wall,
        p50: pct(&mut lat, 0.5),
        p99: pct(&mut lat, 0.99),
        dropped: recs.iter().map(|r| r.dropped).sum(),
        stale: recs.iter().filter(|r| r.error.as_deref().is_some_and(|e| e.starts_with("stale"))).count(),
        engine_ms: mean(&|r| r.times_ms.as_ref().map_or(0.0, |t| t.engine_ms)),
        decode_ms: mean(&|r| r.times_ms.as_ref().map_or(0.0, |t| t.load_ms)),
        p99_ratio: pct(&mut ratio, 0.99),
    }
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let n: usize = std::env::var("GLAD_BENCH_FRAMES").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    // Replay the brick test images (as MJPEG) so decode is a real JPEG decode.
    let src: Vec<PathBuf> = glad_edge::files::sorted_images(&root.join("data/textures/brick/test")).unwrap();
    for i in 0..n {
        let img: RgbImage = glad_edge::imaging::load_rgb(&src[i % src.len()]).unwrap();
        img.save(frames.join(format!("{i:04}.jpg"))).unwrap();
    }
    let bundles = [("onnx/tiny", "{steps: 5, tau: 0}"), ("onnx/pixel64-brick", "{steps: 10, tau: 0}")];
    println!("| bundle (params) | policy | offered fps | frames | inspected | sustained fps | p50 ms | p99 ms | dropped | stale | engine + decode ms (mean) | p99 of latency / (engine + decode) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (bundle, glad) in bundles {
        let out = tmp.path().join("out");
        // Sustainable rate: lossless, frames offered as fast as the station takes them.
        let base = run(&root, &frames, &out, bundle, glad, "lossless", 0.0, 1e6, n);
        let per = base.engine_ms + base.decode_ms;
        let sustain = base.fps;
        let mut rows = vec![base];
        for (policy, factor) in [("live", 0.5), ("live", 1.0), ("live", 2.0), ("lossless", 2.0)] {
            let fps = (sustain * factor * 100.0).round() / 100.0;
            // Live: a frame older than 1.5 engine periods when taken gets a `stale` record.
            let max_age = if policy == "live" { 1.5 * per } else { 1e6 };
            rows.push(run(&root, &frames, &out, bundle, glad, policy, fps, max_age, n));
        }
        for r in rows {
            let offered = if r.offered == 0.0 { "max".to_string() } else { format!("{:.2}", r.offered) };
            println!(
                "| {bundle} {glad} | {} | {offered} | {} | {} | {:.2} | {:.0} | {:.0} | {} | {} | {:.0} + {:.1} | {:.2} |",
                r.policy, r.frames, r.inspected, r.fps, r.p50, r.p99, r.dropped, r.stale, r.engine_ms, r.decode_ms, r.p99_ratio
            );
        }
    }
}
