//! A fake station for the service tests: real pictures (the brick textures), real records,
//! heartbeats, triggers and metrics in a `StationState`, a frame every `period`; it can be made
//! stuck (the engine stops beating and publishing) with a flag or a file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use glad_edge::imaging::heatmap_overlay;
use glad_edge::service::{HttpConfig, Loading, ServiceConfig, StationLifecycle};
use glad_edge::sinks::{FrameRecord, FrameResult, Stored, Verdict};
use glad_edge::station::{Metrics, StationState};
use glad_edge::telemetry::metrics::{FrameLabel, ModelLabel, StageLabel};
use image::RgbImage;
use ndarray::Array2;
use serde::Deserialize;

pub const CONTINUOUS: &str = "line1-top";
pub const TRIGGERED: &str = "line1-side";

/// The config file of the child-process tests: the fake's threshold and the service's sections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeConfig {
    pub threshold: f32,
    #[serde(default)]
    pub service: ServiceConfig,
    #[serde(default)]
    pub http: HttpConfig,
}

impl FakeConfig {
    pub fn load(path: &Path) -> Result<FakeConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let c: FakeConfig = serde_yaml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        if !(c.threshold > 0.0 && c.threshold < 1.0) {
            bail!("{}: key `threshold`: must be in (0, 1), got {}", path.display(), c.threshold);
        }
        c.service.validate()?;
        Ok(c)
    }
}

#[derive(Clone)]
struct Sample {
    input: Arc<RgbImage>,
    heatmap: Arc<RgbImage>,
    score: f32,
}

fn brick(rel: &str) -> RgbImage {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/textures/brick").join(rel);
    image::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).to_rgb8()
}

/// Good frames score low with a faint map; defects score high with the blurred mask as the map.
fn samples(threshold: f32) -> Vec<Sample> {
    let mut out = Vec::new();
    let mk = |img: RgbImage, mask: Option<RgbImage>, score: f32, seed: usize| {
        let (w, h) = img.dimensions();
        let mut map = Array2::<f32>::zeros((h as usize, w as usize));
        for ((y, x), v) in map.indexed_iter_mut() {
            let n = ((x * 7 + y * 13 + seed * 31) % 17) as f32 / 17.0;
            *v = 0.15 * threshold * (1.0 + n);
            if let Some(m) = &mask {
                // a 5x5 box blur of the mask
                let mut acc = 0.0;
                for dy in -4i64..=4 {
                    for dx in -4i64..=4 {
                        let (xx, yy) = ((x as i64 + dx).clamp(0, w as i64 - 1), (y as i64 + dy).clamp(0, h as i64 - 1));
                        acc += m.get_pixel(xx as u32, yy as u32)[0] as f32 / 255.0;
                    }
                }
                *v += acc / 81.0 * 2.0 * threshold;
            }
        }
        let heat = heatmap_overlay(&img, map.view(), 0.0, 2.0 * threshold);
        Sample { input: Arc::new(img), heatmap: Arc::new(heat), score }
    };
    for (i, g) in ["000", "001", "002"].iter().enumerate() {
        out.push(mk(brick(&format!("test/good/{g}.png")), None, threshold * (0.55 + 0.1 * i as f32), i));
    }
    out.push(mk(brick("test/stain/000.png"), Some(brick("ground_truth/stain/000_mask.png")), threshold * 1.6, 3));
    for (i, g) in ["003", "004"].iter().enumerate() {
        out.push(mk(brick(&format!("test/good/{g}.png")), None, threshold * (0.6 + 0.08 * i as f32), 4 + i));
    }
    out.push(mk(brick("test/hole/000.png"), Some(brick("ground_truth/hole/000_mask.png")), threshold * 1.35, 6));
    out
}

fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1000.0
}

struct Shared {
    state: Arc<StationState>,
    threshold: Mutex<f32>,
    stop: AtomicBool,
    stuck_file: Option<PathBuf>,
    results: Option<Mutex<std::io::BufWriter<std::fs::File>>>,
}

pub struct FakeStation {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<u64>>,
}

#[derive(Debug, Clone, Default)]
pub struct FakeOptions {
    pub threshold: f32,
    pub period: Duration,
    /// Every n-th triggered inspection fails (an error record without pictures).
    pub error_every: Option<u64>,
    /// The engine is stuck while this file exists.
    pub stuck_file: Option<PathBuf>,
    /// Every record as a JSON line (flushed on shutdown).
    pub results: Option<PathBuf>,
}

impl FakeStation {
    /// "Loads models" for `load` while reporting through `loading`, then runs.
    pub fn start_loading(loading: &Loading, load: Duration, opts: FakeOptions) -> Result<FakeStation> {
        loading.status("building the TensorRT engine of bundle `brick` (fake)");
        std::thread::sleep(load / 2);
        loading.status("warming up bundle `brick` (fake)");
        std::thread::sleep(load / 2);
        Ok(FakeStation::start(opts))
    }

    pub fn start(opts: FakeOptions) -> FakeStation {
        let state = Arc::new(StationState::new(&[(CONTINUOUS.to_string(), false), (TRIGGERED.to_string(), true)], 2000));
        let m = &state.metrics;
        m.model_info.get_or_create(&ModelLabel { model: "brick".into(), provider: "cpu".into(), precision: "fp32".into() }).set(1);
        m.model_load_seconds.get_or_create(&glad_edge::telemetry::metrics::ComponentLabel { component: "brick".into() }).set(1.25);
        let results = opts.results.as_ref().map(|p| Mutex::new(std::io::BufWriter::new(std::fs::File::create(p).expect("results file"))));
        let shared = Arc::new(Shared {
            state: state.clone(),
            threshold: Mutex::new(opts.threshold),
            stop: AtomicBool::new(false),
            stuck_file: opts.stuck_file.clone(),
            results,
        });
        let samples = samples(opts.threshold);
        let s2 = shared.clone();
        let period = opts.period;
        let error_every = opts.error_every;
        let thread = std::thread::spawn(move || run(&s2, &samples, period, error_every));
        state.ready.store(true, Ordering::Release);
        FakeStation { shared, thread: Some(thread) }
    }
}

fn run(s: &Shared, samples: &[Sample], period: Duration, error_every: Option<u64>) -> u64 {
    let st = &s.state;
    let engine = st.heartbeats.register("engine");
    let cam_top = st.heartbeats.register(&format!("camera:{CONTINUOUS}"));
    let cam_side = st.heartbeats.register(&format!("camera:{TRIGGERED}"));
    st.set_camera_status(CONTINUOUS, true, "streaming 10 fps (replay)");
    st.set_camera_status(TRIGGERED, true, "armed");
    let (mut seq_top, mut seq_side, mut n_side) = (0u64, 0u64, 0u64);
    let mut last = 0;
    while !s.stop.load(Ordering::Acquire) {
        let t0 = Instant::now();
        // Camera threads beat on every wake-up: a frame, or an idle wait for a trigger.
        cam_top.beat();
        cam_side.beat();
        let stuck = s.stuck_file.as_ref().is_some_and(|f| f.exists());
        if !stuck {
            seq_top += 1;
            let sample = &samples[(seq_top as usize) % samples.len()];
            std::thread::sleep(Duration::from_millis(20)); // the "engine" at work: a frame in flight
            publish(s, CONTINUOUS, seq_top, Some(sample), t0);
            last = seq_top;
            if st.triggers.take(TRIGGERED) {
                seq_side += 1;
                n_side += 1;
                let fail = error_every.is_some_and(|n| n_side % n == 0);
                let sample = &samples[(seq_side as usize * 3 + 1) % samples.len()];
                publish(s, TRIGGERED, seq_side, (!fail).then_some(sample), t0);
            }
            engine.beat();
        }
        if let Some(rest) = period.checked_sub(t0.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    st.heartbeats.unregister("engine");
    last
}

fn publish(s: &Shared, camera: &str, seq: u64, sample: Option<&Sample>, t0: Instant) {
    let threshold = *s.threshold.lock().unwrap();
    let jitter = ((seq * 2654435761) % 1000) as f32 / 1000.0 * 0.04 - 0.02;
    let score = sample.map(|x| (x.score + jitter * threshold).max(0.0));
    let verdict = score.map(|v| if v > threshold { Verdict::Anomalous } else { Verdict::Normal });
    let latency_ms = 80.0 + t0.elapsed().as_secs_f64() * 1000.0 + (seq % 7) as f64 * 3.0;
    let record = FrameRecord {
        camera: camera.to_string(),
        seq,
        t_capture_ms: now_ms() - latency_ms,
        latency_ms,
        dropped: 0,
        ok: sample.is_some(),
        error: sample.is_none().then(|| "decode: corrupt JPEG data (fake)".to_string()),
        score,
        threshold: Some(threshold),
        verdict,
        normalized_score: score.map(|v| v / threshold),
        adp_step: sample.map(|_| 9 + (seq % 5) as usize),
        adp_score: None,
        adp_stop: None,
        times_ms: None,
        stored: Stored::default(),
        bundle_hash: "fakebrick0001".into(),
        glad_version: env!("CARGO_PKG_VERSION").into(),
        run_id: String::new(),
        overlay_version: None,
        recipe: None,
        drift: Vec::new(),
    };
    let label = match verdict {
        Some(Verdict::Normal) => "normal",
        Some(Verdict::Anomalous) => "anomalous",
        None => "error",
    };
    let m: &Metrics = &s.state.metrics;
    m.frames.get_or_create(&FrameLabel { camera: camera.into(), verdict: label.into() }).inc();
    if sample.is_none() {
        m.errors.get_or_create(&glad_edge::telemetry::metrics::ErrorLabel { camera: camera.into(), kind: "decode".into() }).inc();
    }
    m.stage_seconds.get_or_create(&StageLabel { stage: "capture_to_verdict".into() }).observe(latency_ms / 1000.0);
    m.stage_seconds.get_or_create(&StageLabel { stage: "engine".into() }).observe(0.02);
    if let Some(w) = &s.results {
        let mut w = w.lock().unwrap();
        serde_json::to_writer(&mut *w, &record).unwrap();
        w.write_all(b"\n").unwrap();
    }
    let result =
        FrameResult { record: Arc::new(record), input: sample.map(|x| x.input.clone()), heatmap: sample.map(|x| x.heatmap.clone()) };
    s.state.publish(&result);
}

impl StationLifecycle for FakeStation {
    fn state(&self) -> Arc<StationState> {
        self.shared.state.clone()
    }

    fn reload(&mut self, path: &Path) -> Result<Vec<String>> {
        let c = FakeConfig::load(path)?;
        let mut t = self.shared.threshold.lock().unwrap();
        let mut changes = Vec::new();
        if *t != c.threshold {
            changes.push(format!("threshold of `{CONTINUOUS}` and `{TRIGGERED}`: {} -> {}", *t, c.threshold));
            *t = c.threshold;
        }
        Ok(changes)
    }

    fn shutdown(mut self, timeout: Duration) -> Result<()> {
        let t0 = Instant::now();
        self.shared.stop.store(true, Ordering::Release);
        let thread = self.thread.take().expect("running");
        while !thread.is_finished() {
            if t0.elapsed() > timeout {
                bail!("fake station: frames still in flight after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let last = thread.join().expect("fake station thread");
        if let Some(w) = &self.shared.results {
            w.lock().unwrap().flush()?;
        }
        tracing::info!("fake station drained: last frame seq {last} recorded, within {timeout:?}");
        Ok(())
    }
}

impl Drop for FakeStation {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
