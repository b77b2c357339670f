//! The running station: one capture thread per camera, a frame policy per camera (a live
//! one-slot mailbox or a lossless bounded queue), one batcher + engine thread per group of
//! cameras sharing an engine, and one output thread (image store, state, metrics, sinks).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use image::RgbImage;
use ndarray::{Array3, Array4, Axis};

use super::config::{ms, CameraConfig, Policy, Roi, SourceConfig, StationConfig};
use super::feedback::{feedback_key, frame_patches, BankSlot, CameraFeedback, FeedbackLoop, Overlays, TokenJob};
use crate::config::Calibration;
use crate::engine::{resolve_verdict, Engine, EngineFacts, NoiseSource, VerdictRule, VerdictSpec};
use crate::files;
use crate::glad::bank::FeatureBank;
use crate::glad::MapReference;
use crate::imaging;
use crate::pipeline::ImageTimes;
use crate::record::{FrameRecord, FrameResult, Origin, Stored, Verdict};
use crate::sinks::{Health, ImageStore, JsonlSink, Sink, SinkContext, StoreConfig};
use crate::sources::fake::FakeDevice;
use crate::sources::replay::ReplaySource;
use crate::sources::v4l2::V4l2Device;
use crate::sources::{run_capture, CameraSource, CaptureEvent, Frame, FrameSource, Mode};
use crate::telemetry::drift::{DriftMonitor, Spread};
use crate::telemetry::metrics::DriftLabel;
use crate::telemetry::metrics::{ComponentLabel, ErrorLabel, FrameLabel, ModelLabel, QueueLabel, StageLabel};
use crate::telemetry::{CameraStatus, Metrics, StationState};

pub use crate::record::GLAD_VERSION;

/// What `reload` may change without a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct CamSettings {
    pub threshold: Option<f32>,
    pub calibration: Option<Calibration>,
    pub roi: Option<Roi>,
    pub max_fps: Option<f64>,
    pub every_nth: Option<u64>,
    pub max_age_ms: f64,
    /// The verdict rule these resolve to (`engine::resolve_verdict`, the rule `glad inspect`
    /// applies: calibration, else `threshold`, else the bundle's own calibration).
    pub verdict: VerdictRule,
}

impl CamSettings {
    /// The camera's settings, its threshold resolved against the engine it runs on.
    fn from_config(c: &CameraConfig, engine: &EngineFacts) -> Result<CamSettings> {
        let calibration = c.load_calibration()?;
        let spec = VerdictSpec {
            flag: None,
            calibration: calibration.clone().map(|cal| {
                let from = c.calibration.as_ref().map_or(String::new(), |p| p.display().to_string());
                (cal, format!("camera `{}`: calibration {from}", c.name))
            }),
            threshold: c.threshold.map(|t| (t, format!("camera `{}`: key `threshold`", c.name))),
        };
        let verdict = resolve_verdict(&spec, engine)?;
        Ok(CamSettings {
            threshold: c.threshold,
            calibration,
            roi: c.roi,
            max_fps: c.max_fps,
            every_nth: c.every_nth,
            max_age_ms: c.max_age_ms,
            verdict,
        })
    }

    /// The threshold in force.
    pub fn threshold(&self) -> Option<f32> {
        self.verdict.threshold
    }
}

/// A frame with the number of its camera's frames dropped just before it.
type Queued = (Frame, u64);

/// A camera as the scheduler sees it.
struct Cam {
    name: String,
    policy: Policy,
    trigger: bool,
    /// A frame with the number of this camera's frames dropped just before it.
    live: Mutex<Option<Queued>>,
    queue: (Sender<Queued>, Receiver<Queued>),
    /// This run of the station (records: `camera` + `run_id` + `seq` identify a frame).
    run_id: String,
    done: AtomicBool,
    /// The camera under each of its recipes (exactly one, unnamed, without recipes).
    recipes: Vec<CamRecipe>,
    /// The active recipe's index, shared with `StationState::recipes` (which switches it).
    active: Arc<AtomicUsize>,
}

/// A camera under one recipe: its engine, verdict rule and feedback overlay.
struct CamRecipe {
    name: Option<String>,
    /// The engine (in the camera's group) that inspects under this recipe.
    engine_key: String,
    settings: RwLock<CamSettings>,
    bundle_hash: String,
    /// What the threshold rule needs to know about the recipe's engine (for reloads).
    facts: EngineFacts,
    /// The bank frames are scored against (the feedback overlay) and its version.
    slot: Arc<BankSlot>,
    /// The recipe's map reference uses a feature bank (`bank`, `union`).
    uses_bank: bool,
}

impl Cam {
    /// The active recipe and its index.
    fn recipe(&self) -> (usize, &CamRecipe) {
        let i = self.active.load(Ordering::Acquire).min(self.recipes.len() - 1);
        (i, &self.recipes[i])
    }

    /// The active recipe's settings.
    fn settings(&self) -> CamSettings {
        self.recipe().1.settings.read().expect("settings lock").clone()
    }

    /// What a record of `frame` carries, with the recipe and threshold in force now.
    fn origin(&self, seq: u64, t_capture: SystemTime, dropped: u64) -> Origin {
        let (i, r) = self.recipe();
        self.origin_scored(i, seq, t_capture, dropped, r.slot.get().0)
    }

    /// `origin` of a frame inspected under recipe `i` and scored with overlay version `overlay`.
    fn origin_scored(&self, i: usize, seq: u64, t_capture: SystemTime, dropped: u64, overlay: u64) -> Origin {
        let r = &self.recipes[i];
        let threshold = r.settings.read().expect("settings lock").threshold();
        Origin {
            camera: self.name.clone(),
            seq,
            t_capture,
            dropped,
            threshold,
            bundle_hash: r.bundle_hash.clone(),
            run_id: self.run_id.clone(),
            overlay_version: r.uses_bank.then_some(overlay),
            recipe: r.name.clone(),
        }
    }

    fn take(&self) -> Option<Queued> {
        match self.policy {
            Policy::Live => self.live.lock().expect("mailbox lock").take(),
            Policy::Lossless => self.queue.1.try_recv().ok(),
        }
    }

    fn pending(&self) -> bool {
        match self.policy {
            Policy::Live => self.live.lock().expect("mailbox lock").is_some(),
            Policy::Lossless => !self.queue.1.is_empty(),
        }
    }
}

/// Cameras sharing one engine.
struct Group {
    cams: Vec<Arc<Cam>>,
    wake: (Sender<()>, Receiver<()>),
    /// Feedback work for the engine (a frame's backbone patches).
    jobs: (Sender<TokenJob>, Receiver<TokenJob>),
    /// Set when shutdown gave up waiting for this engine: what it still finishes is not
    /// recorded (the process is exiting), so a failure then is not an error to report.
    abandoned: Arc<AtomicBool>,
}

impl Group {
    fn wake(&self) {
        let _ = self.wake.0.try_send(());
    }
}

/// A frame on its way to the sinks.
type Out = Sender<FrameResult>;

pub struct Station {
    state: Arc<StationState>,
    stop: Arc<AtomicBool>,
    cameras: Vec<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    output: Option<JoinHandle<()>>,
    /// Set by `shutdown` when an engine is still inspecting at the drain deadline.
    abandon: Arc<AtomicBool>,
    feedback: Option<JoinHandle<()>>,
    sinks: Vec<Arc<dyn Sink>>,
    cams: BTreeMap<String, Arc<Cam>>,
    config: Mutex<StationConfig>,
    active_cameras: Arc<AtomicUsize>,
    engines: usize,
    pub captured: Arc<AtomicU64>,
    /// Frames owed a record: admitted to an engine's queue or mailbox (and not replaced there by
    /// a newer one), or failed at capture. At shutdown, owed minus recorded is what was lost.
    pub owed: Arc<AtomicU64>,
    pub recorded: Arc<AtomicU64>,
}

/// Set when a shutdown left an engine inside an ONNX Runtime call: the process must then leave
/// without running the library's static destructors under that call (`exit_now`).
pub static ENGINE_ABANDONED: AtomicBool = AtomicBool::new(false);

/// Ends the process at once with `code`, without exit handlers (see [`ENGINE_ABANDONED`]).
///
/// # Safety
/// Nothing runs after it: buffered output must be flushed by the caller.
pub unsafe fn exit_now(code: i32) -> ! {
    libc::_exit(code)
}

/// Options of `Station::start` beyond the config.
#[derive(Default)]
pub struct StartOptions {
    /// Print every record on stdout as well.
    pub stdout: bool,
    /// More sinks (MQTT, webhook, ...), after the JSONL log.
    pub extra_sinks: Vec<Arc<dyn Sink>>,
}

pub use crate::bundle::content_hash as bundle_hash;

fn error_record(cam: &Cam, seq: u64, t_capture: SystemTime, dropped: u64, kind: &str, message: &str) -> FrameResult {
    failed(cam.origin(seq, t_capture, dropped), kind, message)
}

/// The error record of a frame taken under recipe `recipe`.
fn error_record_in(cam: &Cam, recipe: usize, frame: &Frame, dropped: u64, kind: &str, message: &str) -> FrameResult {
    let overlay = cam.recipes[recipe].slot.get().0;
    failed(cam.origin_scored(recipe, frame.seq, frame.t_capture, dropped, overlay), kind, message)
}

fn failed(origin: Origin, kind: &str, message: &str) -> FrameResult {
    FrameResult { record: Arc::new(FrameRecord::error(origin, kind, message)), input: None, heatmap: None }
}

/// Crops `roi` out of `img` (before the resize to the bundle resolution).
pub fn crop_roi(img: RgbImage, roi: Option<Roi>) -> Result<RgbImage> {
    match roi {
        None => Ok(img),
        Some(r) => imaging::crop(img, r.x, r.y, r.width, r.height),
    }
}

/// Opens a camera's source (a bad replay folder fails here, before any thread starts).
fn open_source(c: &CameraConfig) -> Result<Box<dyn FrameSource>> {
    Ok(match &c.source {
        SourceConfig::Replay { path, fps, looping } => Box::new(ReplaySource::open_path(&c.name, path, *fps, *looping)?),
        SourceConfig::V4l2 { device, format, width, height, fps, allow_fallback } => Box::new(CameraSource::new(
            &c.name,
            V4l2Device::new(device),
            Mode { fourcc: *format, width: *width, height: *height },
            *fps,
            *allow_fallback,
        )),
        SourceConfig::Fake { frames, format, width, height, fps, faults } => {
            let images = files::sorted_images(frames)?.iter().map(|p| imaging::load_rgb(p)).collect::<Result<Vec<_>>>()?;
            if images.is_empty() {
                bail!("camera `{}`: no images in {}", c.name, frames.display());
            }
            Box::new(CameraSource::new(
                &c.name,
                FakeDevice::new(&c.name, images, *fps, faults.clone()),
                Mode { fourcc: *format, width: *width, height: *height },
                *fps,
                false,
            ))
        }
    })
}

/// The rate limit and trigger gate of a camera thread.
struct Gate {
    last_pass: Option<Instant>,
}

impl Gate {
    /// True when the frame should be inspected; `Some(false)`-like drops are counted by the caller.
    fn admit(&mut self, s: &CamSettings, seq: u64) -> bool {
        if let Some(n) = s.every_nth {
            return seq % n == 0;
        }
        if let Some(fps) = s.max_fps {
            let now = Instant::now();
            let period = Duration::from_secs_f64(1.0 / fps);
            // 5 % slack so a source at exactly max_fps is not halved by jitter.
            if self.last_pass.is_some_and(|t| now.duration_since(t) < period.mul_f64(0.95)) {
                return false;
            }
            self.last_pass = Some(now);
        }
        true
    }
}

#[allow(clippy::too_many_arguments)]
fn camera_thread(
    mut src: Box<dyn FrameSource>,
    cam: Arc<Cam>,
    group: Arc<Group>,
    state: Arc<StationState>,
    out: Out,
    stop: Arc<AtomicBool>,
    cfg: super::config::SchedulerConfig,
    captured: Arc<AtomicU64>,
    owed: Arc<AtomicU64>,
) {
    let m: &Metrics = &state.metrics;
    let label = Metrics::camera(&cam.name);
    let beat = state.heartbeats.register(&format!("camera:{}", cam.name));
    let mut gate = Gate { last_pass: None };
    let mut dropped: u64 = 0;
    let name = cam.name.clone();
    let backoff = cfg.backoff();
    run_capture(src.as_mut(), &backoff, ms(cfg.frame_timeout_ms), &stop, |ev| {
        beat.beat();
        match ev {
            CaptureEvent::Frame(f) => {
                captured.fetch_add(1, Ordering::Relaxed);
                if cam.trigger && !state.triggers.take(&name) {
                    return;
                }
                let admit = gate.admit(&cam.settings(), f.seq);
                if !admit {
                    dropped += 1;
                    m.dropped.get_or_create(&label).inc();
                    return;
                }
                let before = std::mem::take(&mut dropped);
                match cam.policy {
                    Policy::Live => {
                        let mut slot = cam.live.lock().expect("mailbox lock");
                        // The frame it replaces is dropped, and so are the ones dropped before it.
                        let replaced = slot.take();
                        let carried = replaced.as_ref().map_or(0, |(_, d)| d + 1);
                        *slot = Some((f, before + carried));
                        drop(slot);
                        // The new frame is owed a record; the one it replaced no longer is (a
                        // counted drop of the live policy).
                        if replaced.is_none() {
                            owed.fetch_add(1, Ordering::AcqRel);
                        }
                        if carried > 0 {
                            m.dropped.get_or_create(&label).inc();
                        }
                        group.wake();
                    }
                    Policy::Lossless => {
                        // Owed from here: if shutdown closes the queue before it gets in, it is lost.
                        owed.fetch_add(1, Ordering::AcqRel);
                        let mut f = (f, before);
                        // Back-pressure: wait for room; the worker drains until we are done.
                        loop {
                            match cam.queue.0.send_timeout(f, Duration::from_millis(100)) {
                                Ok(()) => break,
                                Err(crossbeam_channel::SendTimeoutError::Timeout(back)) => {
                                    f = back;
                                    group.wake();
                                    beat.beat();
                                }
                                Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => return,
                            }
                        }
                        m.queue_depth.get_or_create(&QueueLabel { queue: name.clone() }).set(cam.queue.1.len() as i64);
                        group.wake();
                    }
                }
            }
            CaptureEvent::BadFrame { kind, seq, message } => {
                captured.fetch_add(1, Ordering::Relaxed);
                owed.fetch_add(1, Ordering::AcqRel);
                m.errors.get_or_create(&ErrorLabel { camera: name.clone(), kind: kind.to_string() }).inc();
                let _ = out.send(error_record(&cam, seq, SystemTime::now(), 0, kind, &message));
            }
            CaptureEvent::Streaming { .. } => {
                state.set_camera_status(&name, true, CameraStatus::Streaming);
                state.set_degraded(&format!("camera:{name}"), None);
            }
            CaptureEvent::Reconnecting { reason, attempt, delay } => {
                m.reconnects.get_or_create(&label).inc();
                m.errors.get_or_create(&ErrorLabel { camera: name.clone(), kind: "capture".into() }).inc();
                state.set_camera_status(&name, false, CameraStatus::Reconnecting { attempt, delay, reason });
            }
            CaptureEvent::Ended => state.set_camera_status(&name, false, CameraStatus::Ended),
            CaptureEvent::Fatal(msg) => {
                state.set_camera_status(&name, false, CameraStatus::Stopped(msg.clone()));
                state.set_degraded(&format!("camera:{name}"), Some(msg));
            }
        }
    });
    state.heartbeats.unregister(&format!("camera:{}", cam.name));
    cam.done.store(true, Ordering::Release);
    group.wake();
}

struct Prepared {
    cam: Arc<Cam>,
    /// The recipe the frame is inspected under (the one active when it was taken).
    recipe: usize,
    frame: Frame,
    dropped: u64,
    crop: RgbImage,
    tensor: Array3<f32>,
    decode: Duration,
}

fn worker_thread(
    mut engines: BTreeMap<String, Engine>,
    noise: NoiseSource,
    group: Arc<Group>,
    state: Arc<StationState>,
    out: Out,
    cfg: super::config::SchedulerConfig,
    component: String,
) {
    let m = &state.metrics;
    let beat = state.heartbeats.register(&component);
    let window = ms(cfg.batch_window_ms);
    let mut rr = 0usize;
    loop {
        beat.beat();
        while let Ok(job) = group.jobs.1.try_recv() {
            let patches = match engines.get_mut(&job.engine) {
                Some(engine) => frame_patches(engine, &job.image),
                None => Err(anyhow::anyhow!("no engine `{}` in this group", job.engine)),
            };
            let _ = job.reply.send(patches);
        }
        // Gather: whatever is waiting now, then more within the batch window.
        let mut taken: Vec<(Arc<Cam>, Queued)> = Vec::new();
        let mut take_round = |taken: &mut Vec<(Arc<Cam>, Queued)>| {
            let n = group.cams.len();
            for k in 0..n {
                if taken.len() >= cfg.max_batch {
                    break;
                }
                let cam = &group.cams[(rr + k) % n];
                if let Some(f) = cam.take() {
                    taken.push((cam.clone(), f));
                }
            }
            rr = rr.wrapping_add(1);
        };
        take_round(&mut taken);
        if taken.is_empty() {
            if group.cams.iter().all(|c| c.done.load(Ordering::Acquire) && !c.pending()) {
                break;
            }
            match group.wake.1.recv_timeout(Duration::from_millis(100)) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let deadline = Instant::now() + window;
        while taken.len() < cfg.max_batch && !window.is_zero() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let _ = group.wake.1.recv_timeout(deadline - now);
            take_round(&mut taken);
        }
        for cam in group.cams.iter().filter(|c| c.policy == Policy::Lossless) {
            m.queue_depth.get_or_create(&QueueLabel { queue: cam.name.clone() }).set(cam.queue.1.len() as i64);
        }
        // Decode, crop, preprocess; stale frames and decode failures get error records.
        let mut batch: Vec<Prepared> = Vec::new();
        for (cam, (frame, dropped)) in taken {
            let (recipe, rc) = cam.recipe();
            let settings = rc.settings.read().expect("settings lock").clone();
            let r = engines[&rc.engine_key].resolution();
            if cam.policy == Policy::Live {
                let age = frame.age();
                if age.as_secs_f64() * 1e3 > settings.max_age_ms {
                    m.errors.get_or_create(&ErrorLabel { camera: cam.name.clone(), kind: "stale".into() }).inc();
                    let msg = format!("frame is {:.0} ms old, max_age_ms is {}", age.as_secs_f64() * 1e3, settings.max_age_ms);
                    let _ = out.send(error_record_in(&cam, recipe, &frame, dropped, "stale", &msg));
                    continue;
                }
            }
            let t0 = Instant::now();
            match crate::sources::decode::decode_frame(&frame).and_then(|img| crop_roi(img, settings.roi)) {
                Ok(crop) => {
                    let tensor = imaging::preprocess(&crop, r);
                    let decode = t0.elapsed();
                    m.stage_seconds.get_or_create(&StageLabel { stage: "decode".into() }).observe(decode.as_secs_f64());
                    batch.push(Prepared { cam, recipe, frame, dropped, crop, tensor, decode });
                }
                Err(e) => {
                    m.errors.get_or_create(&ErrorLabel { camera: cam.name.clone(), kind: "decode".into() }).inc();
                    let _ = out.send(error_record_in(&cam, recipe, &frame, dropped, "decode", &format!("{e:#}")));
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        // Frames of other recipes' engines, or scored against other banks (feedback
        // overlays), run as separate batches.
        let mut subs: Vec<(String, Bank, Vec<Prepared>)> = Vec::new();
        for p in batch {
            let rc = &p.cam.recipes[p.recipe];
            let (key, bank) = (rc.engine_key.clone(), rc.slot.get());
            match subs.iter_mut().find(|(k, b, _)| *k == key && same_bank(&b.1, &bank.1)) {
                Some((_, _, v)) => v.push(p),
                None => subs.push((key, bank, vec![p])),
            }
        }
        for (key, (version, bank), batch) in subs {
            let engine = engines.get_mut(&key).expect("the recipe's engine is in its group");
            if group.abandoned.load(Ordering::Acquire) {
                break;
            }
            run_batch(engine, &noise, batch, bank.as_deref(), version, &state, &out, &component, &group.abandoned);
            beat.beat();
        }
    }
    state.heartbeats.unregister(&component);
}

/// An overlay version and the bank with that overlay (`None`: the engine's own).
type Bank = (u64, Option<Arc<FeatureBank>>);

fn same_bank(a: &Option<Arc<FeatureBank>>, b: &Option<Arc<FeatureBank>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

/// Inspects one batch against `bank` (overlay `version`) and sends its records.
#[allow(clippy::too_many_arguments)]
fn run_batch(
    engine: &mut Engine,
    noise: &NoiseSource,
    batch: Vec<Prepared>,
    bank: Option<&FeatureBank>,
    version: u64,
    state: &StationState,
    out: &Out,
    component: &str,
    abandoned: &AtomicBool,
) {
    let m = &state.metrics;
    let r = engine.resolution();
    let b = batch.len();
    let mut x = Array4::<f32>::zeros((b, 3, r, r));
    for (i, p) in batch.iter().enumerate() {
        x.index_axis_mut(Axis(0), i).assign(&p.tensor);
    }
    let t0 = Instant::now();
    let result = noise.draw(&vec![0; b], engine.latent_shape()).and_then(|n| engine.inspect_with_bank(x.view(), &n, bank));
    m.stage_seconds.get_or_create(&StageLabel { stage: "engine".into() }).observe(t0.elapsed().as_secs_f64());
    match result {
        Ok((inspections, times)) => {
            for (p, insp) in batch.into_iter().zip(inspections) {
                let origin = p.cam.origin_scored(p.recipe, p.frame.seq, p.frame.t_capture, p.dropped, version);
                let mut t = times_per_image(&times, b);
                t.load_ms = p.decode.as_secs_f64() * 1e3;
                let (lo, hi) = imaging::heat_range(&insp.map, origin.threshold);
                let heat = imaging::heatmap_overlay(&p.crop, insp.map.view(), lo, hi);
                let rec = FrameRecord::inspected(origin, insp.score, insp.adp, t);
                let _ = out.send(FrameResult { record: Arc::new(rec), input: Some(Arc::new(p.crop)), heatmap: Some(Arc::new(heat)) });
            }
        }
        Err(_) if abandoned.load(Ordering::Acquire) => {
            tracing::debug!(component = %component, "an abandoned inspection ended while the process stops");
        }
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::error!(component = %component, error = %msg, "inspection failed");
            for p in batch {
                m.errors.get_or_create(&ErrorLabel { camera: p.cam.name.clone(), kind: "engine".into() }).inc();
                let _ = out.send(error_record_in(&p.cam, p.recipe, &p.frame, p.dropped, "engine", &msg));
            }
        }
    }
}

fn times_per_image(t: &crate::engine::StageTimes, b: usize) -> ImageTimes {
    ImageTimes::from_batch(Duration::ZERO, t, b)
}

/// Feeds a camera's drift monitor with an inspected frame (NG frames count once the reference
/// is learnt: `DriftMonitor::observe_ng`); logs and counts changes.
/// Returns the camera's alarms in force.
fn watch_drift(monitors: &mut BTreeMap<String, DriftMonitor>, state: &StationState, r: &FrameResult) -> Vec<String> {
    let rec = &r.record;
    let Some(mon) = monitors.get_mut(&feedback_key(&rec.camera, rec.recipe.as_deref())) else { return Vec::new() };
    if let (true, Some(input)) = (rec.ok, &r.input) {
        let was = mon.status().armed;
        let stats = imaging::frame_stats(input);
        let changed = if rec.is_ng() { mon.observe_ng(stats) } else { mon.observe(stats, rec.score) };
        if let Some(alarms) = changed {
            for alarm in ["brightness", "contrast", "sharpness", "score"] {
                let on = alarms.iter().any(|a| a == alarm);
                state.metrics.drift.get_or_create(&DriftLabel { camera: rec.camera.clone(), alarm: alarm.into() }).set(i64::from(on));
            }
            let st = mon.status();
            if alarms.is_empty() {
                tracing::info!(camera = %rec.camera, seq = rec.seq, window = ?st.window, "drift alarm cleared");
            } else {
                tracing::warn!(camera = %rec.camera, seq = rec.seq, ?alarms, window = ?st.window, reference = ?st.reference, "drift alarm");
            }
            state.set_drift(&rec.camera, st.clone());
        } else if !was && mon.status().armed {
            tracing::info!(camera = %rec.camera, reference = ?mon.status().reference, "drift reference recorded");
            state.set_drift(&rec.camera, mon.status().clone());
        } else if rec.seq % 10 == 0 {
            state.set_drift(&rec.camera, mon.status().clone());
        }
    }
    mon.status().alarms.clone()
}

fn output_thread(
    rx: Receiver<FrameResult>,
    store: Arc<ImageStore>,
    sinks: Vec<Arc<dyn Sink>>,
    state: Arc<StationState>,
    recorded: Arc<AtomicU64>,
    abandon: Arc<AtomicBool>,
    mut monitors: BTreeMap<String, DriftMonitor>,
) {
    let m = &state.metrics;
    loop {
        // Ends when every engine has hung up, or, once shutdown gives up on an engine still
        // busy with a frame (`abandon`), as soon as nothing is waiting.
        let mut r = match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) if abandon.load(Ordering::Acquire) => break,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let t0 = Instant::now();
        let stored = store.keep(&r);
        let drift = watch_drift(&mut monitors, &state, &r);
        if stored != Stored::default() || !drift.is_empty() {
            let mut rec = (*r.record).clone();
            if stored != Stored::default() {
                rec.stored = stored;
            }
            rec.drift = drift;
            r.record = Arc::new(rec);
        }
        let rec = &r.record;
        let verdict = match (rec.ok, rec.verdict) {
            (false, _) => "error",
            (true, Some(Verdict::Anomalous)) => "anomalous",
            (true, Some(Verdict::Normal)) => "normal",
            (true, None) => "none",
        };
        m.frames.get_or_create(&FrameLabel { camera: rec.camera.clone(), verdict: verdict.into() }).inc();
        m.stage_seconds.get_or_create(&StageLabel { stage: "capture_to_verdict".into() }).observe(rec.latency_ms / 1e3);
        state.publish(&r);
        for s in &sinks {
            s.submit(&r);
        }
        recorded.fetch_add(1, Ordering::Relaxed);
        m.store_bytes.set(store.bytes() as i64);
        for s in std::iter::once(&(store.clone() as Arc<dyn Sink>)).chain(sinks.iter()) {
            match s.health() {
                Health::Ok => state.set_degraded(s.name(), None),
                Health::Degraded(why) => state.set_degraded(s.name(), Some(why)),
            }
        }
        m.stage_seconds.get_or_create(&StageLabel { stage: "sinks".into() }).observe(t0.elapsed().as_secs_f64());
    }
}

/// One loaded engine.
struct LoadedEngine {
    engine: Engine,
    facts: EngineFacts,
    bundle_hash: String,
}

impl LoadedEngine {
    /// The bundle's feature bank when the map reference uses one.
    fn base_bank(&self) -> Option<Arc<FeatureBank>> {
        match self.engine.params.reference {
            MapReference::Reconstruction => None,
            _ => self.engine.bank().cloned().map(Arc::new),
        }
    }
}

/// Cameras (indexes into the config) that share an engine thread, and the engines of all
/// their recipes (cameras connected through a shared engine share the thread).
struct LoadedGroup {
    engines: BTreeMap<String, LoadedEngine>,
    cameras: Vec<usize>,
}

/// The sinks of a station: the image store, then the others.
type Sinks = (Arc<ImageStore>, Vec<Arc<dyn Sink>>);

/// The image store, the JSONL log, the factory sinks of the config and the extra ones.
fn open_sinks(config: &StationConfig, state: &Arc<StationState>, opts: StartOptions) -> Result<Sinks> {
    let results = &config.results;
    let store = Arc::new(ImageStore::new(StoreConfig {
        dir: results.dir.clone(),
        store_ng: results.store_ng,
        keep_ok_every: results.keep_ok_every,
        quota_bytes: results.quota_bytes,
        min_free_bytes: results.min_free_bytes,
    })?);
    let jsonl: Arc<dyn Sink> =
        Arc::new(JsonlSink::with_state(&results.dir, results.jsonl_max_bytes, results.jsonl_keep, opts.stdout, Some(state.clone()))?);
    let mut sinks = vec![jsonl];
    let ctx = SinkContext {
        station: config.name.clone(),
        cameras: config.cameras.iter().map(|c| c.name.clone()).collect(),
        state: Some(state.clone()),
    };
    let factory = &config.sinks;
    if let Some(c) = &factory.mqtt {
        sinks.push(Arc::new(c.build(&ctx).context("sinks.mqtt")?));
    }
    if let Some(c) = &factory.modbus {
        sinks.push(Arc::new(c.build(&ctx).context("sinks.modbus")?));
    }
    if let Some(c) = &factory.webhook {
        sinks.push(Arc::new(c.build(&ctx).context("sinks.webhook")?));
    }
    sinks.extend(opts.extra_sinks);
    Ok((store, sinks))
}

/// One engine per distinct (bundle, preset, glad) of every camera's every recipe, built from
/// its `EngineSpec`, warmed up and reported in the metrics; grouped into engine threads.
fn load_engines(config: &StationConfig, state: &StationState) -> Result<Vec<LoadedGroup>> {
    let mut engines: BTreeMap<String, LoadedEngine> = BTreeMap::new();
    let mut hashes: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut groups: Vec<(BTreeSet<String>, Vec<usize>)> = Vec::new();
    for (i, c) in config.cameras.iter().enumerate() {
        let mut keys = BTreeSet::new();
        for (recipe, view) in c.recipe_views() {
            let key = view.engine_key();
            keys.insert(key.clone());
            if engines.contains_key(&key) {
                continue;
            }
            let what = match &recipe {
                Some(r) => format!("camera `{}`, recipe `{r}`", c.name),
                None => format!("camera `{}`", c.name),
            };
            let t0 = Instant::now();
            let mut engine = config.engine_spec(i, &view).engine().with_context(|| what.clone())?;
            engine.warm_up().with_context(|| what.clone())?;
            let secs = t0.elapsed().as_secs_f64();
            tracing::info!(bundle = %view.bundle.display(), recipe = ?recipe, seconds = secs, params = ?engine.params, "engine loaded and warmed up");
            let m = &state.metrics;
            m.model_load_seconds.get_or_create(&ComponentLabel { component: format!("engine:{}", view.bundle.display()) }).set(secs);
            for model in engine.bundle.models() {
                let label =
                    ModelLabel { model: model.role().to_string(), provider: model.provider().to_string(), precision: "fp32".into() };
                m.model_info.get_or_create(&label).set(1);
            }
            if !hashes.contains_key(&view.bundle) {
                hashes.insert(view.bundle.clone(), crate::bundle::content_hash(&view.bundle)?);
            }
            let facts = EngineFacts::of(&engine, &config.noise);
            engines.insert(key, LoadedEngine { engine, facts, bundle_hash: hashes[&view.bundle].clone() });
        }
        // Cameras whose recipes share an engine join one group (one thread owns an engine).
        let mut merged = (keys, vec![i]);
        groups.retain(|g| {
            if g.0.is_disjoint(&merged.0) {
                return true;
            }
            merged.0.extend(g.0.iter().cloned());
            merged.1.extend(g.1.iter().copied());
            false
        });
        groups.push(merged);
    }
    Ok(groups
        .into_iter()
        .map(|(keys, mut cameras)| {
            cameras.sort_unstable();
            let engines = keys.into_iter().map(|k| {
                let e = engines.remove(&k).expect("every key was loaded");
                (k, e)
            });
            LoadedGroup { engines: engines.collect(), cameras }
        })
        .collect())
}

/// Every camera's source, opened before any thread starts (a bad replay folder fails start).
fn open_sources(config: &StationConfig) -> Result<Vec<Box<dyn FrameSource>>> {
    config.cameras.iter().map(|c| open_source(c).with_context(|| format!("camera `{}`", c.name))).collect()
}

/// A camera as the scheduler holds it, each recipe's threshold resolved against its engine;
/// its recipes are registered with the station's state (which switches them).
fn new_cam(c: &CameraConfig, group: &LoadedGroup, run_id: &str, state: &StationState) -> Result<Cam> {
    let recipes = c
        .recipe_views()
        .into_iter()
        .map(|(name, view)| {
            let engine_key = view.engine_key();
            let loaded = &group.engines[&engine_key];
            let settings = CamSettings::from_config(&view, &loaded.facts)
                .with_context(|| name.as_ref().map(|r| format!("recipe `{r}`")).unwrap_or_default())?;
            Ok(CamRecipe {
                name,
                engine_key,
                settings: RwLock::new(settings),
                bundle_hash: loaded.bundle_hash.clone(),
                facts: loaded.facts.clone(),
                slot: Arc::new(BankSlot::default()),
                uses_bank: loaded.engine.params.reference != MapReference::Reconstruction,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let active = if c.recipes.is_empty() {
        Arc::new(AtomicUsize::new(0))
    } else {
        state.recipes.register(&c.name, c.recipes.iter().map(|r| r.name.clone()).collect(), c.active_recipe())
    };
    Ok(Cam {
        name: c.name.clone(),
        // A triggered frame is a part that must be inspected: queued, never replaced in the
        // live mailbox (the trigger book bounds how many wait).
        policy: if c.trigger { Policy::Lossless } else { c.policy },
        trigger: c.trigger,
        live: Mutex::new(None),
        queue: bounded(c.queue),
        run_id: run_id.to_string(),
        done: AtomicBool::new(false),
        recipes,
        active,
    })
}

impl Station {
    /// Loads and warms up every engine, starts the cameras; returns once frames flow.
    pub fn start(config: StationConfig, opts: StartOptions) -> Result<Station> {
        config.validate(Path::new("<station config>"))?;
        let cam_list: Vec<(String, bool)> = config.cameras.iter().map(|c| (c.name.clone(), c.trigger)).collect();
        let state = Arc::new(StationState::new(&cam_list, config.scheduler.recent));
        let (store, sinks) = open_sinks(&config, &state, opts)?;
        let groups = load_engines(&config, &state)?;
        let mut sources: Vec<Option<Box<dyn FrameSource>>> = open_sources(&config)?.into_iter().map(Some).collect();
        let (out_tx, out_rx) = bounded::<FrameResult>(1024);
        let stop = Arc::new(AtomicBool::new(false));
        let captured = Arc::new(AtomicU64::new(0));
        let owed = Arc::new(AtomicU64::new(0));
        let recorded = Arc::new(AtomicU64::new(0));
        let active = Arc::new(AtomicUsize::new(config.cameras.len()));
        let engines = groups.iter().map(|g| g.engines.len()).sum();
        let run_id = crate::record::new_run_id();
        tracing::info!(run_id = %run_id, "station run id (records: camera + run_id + seq identify a frame)");
        let abandon = Arc::new(AtomicBool::new(false));
        let mut cams = BTreeMap::new();
        let mut feedback_cams = BTreeMap::new();
        let mut monitors = BTreeMap::new();
        state.set_frame_ring(config.feedback.frames);
        let (mut cameras, mut workers) = (Vec::new(), Vec::new());
        let mut pending = Vec::new();
        for (gi, loaded) in groups.into_iter().enumerate() {
            let gcams = loaded
                .cameras
                .iter()
                .map(|&i| {
                    let c = &config.cameras[i];
                    let cam = Arc::new(new_cam(c, &loaded, &run_id, &state).with_context(|| format!("camera `{}`", c.name))?);
                    cams.insert(cam.name.clone(), cam.clone());
                    Ok(cam)
                })
                .collect::<Result<Vec<_>>>()?;
            let group = Arc::new(Group { cams: gcams, wake: bounded(1), jobs: bounded(4), abandoned: abandon.clone() });
            // One copy of each engine's bank, shared by every camera and recipe scored on it.
            let bases: BTreeMap<&String, Option<Arc<FeatureBank>>> = loaded.engines.iter().map(|(k, e)| (k, e.base_bank())).collect();
            for cam in &group.cams {
                for r in &cam.recipes {
                    let key = feedback_key(&cam.name, r.name.as_deref());
                    feedback_cams.insert(
                        key.clone(),
                        CameraFeedback {
                            base: bases[&r.engine_key].clone(),
                            bundle_hash: r.bundle_hash.clone(),
                            slot: r.slot.clone(),
                            engine: r.engine_key.clone(),
                            jobs: group.jobs.0.clone(),
                            wake: group.wake.0.clone(),
                        },
                    );
                    if config.drift.enabled {
                        let cal = r.settings.read().expect("settings lock").calibration.clone();
                        let normal = cal.map(|c| Spread { mean: f64::from(c.normal_mean), std: f64::from(c.normal_std) });
                        monitors.insert(key, DriftMonitor::new(config.drift.clone(), normal));
                    }
                }
            }
            let noise = crate::engine::noise_source(&config.noise)?;
            let engines: BTreeMap<String, Engine> = loaded.engines.into_iter().map(|(k, e)| (k, e.engine)).collect();
            pending.push((gi, engines, noise, group, loaded.cameras.clone()));
        }
        // The kept feedback overlays are published before any thread scores a frame, so a
        // taught false alarm stays taught across a restart from its first frame on.
        let feedback_loop = {
            let overlays = Overlays::open(&config.state_dir(), config.feedback.max_patches, &feedback_cams)?;
            let fl = FeedbackLoop {
                state: state.clone(),
                cams: feedback_cams,
                overlays,
                dataset: config.dataset_dir(),
                frames: config.feedback.frames,
            };
            fl.publish_all();
            fl
        };
        for (gi, engines, noise, group, cam_indexes) in pending {
            let component = format!("engine:{gi}");
            let (g, st, out, cfg) = (group.clone(), state.clone(), out_tx.clone(), config.scheduler.clone());
            workers.push(
                std::thread::Builder::new()
                    .name(format!("engine-{gi}"))
                    .spawn(move || worker_thread(engines, noise, g, st, out, cfg, component))?,
            );
            for (k, &i) in cam_indexes.iter().enumerate() {
                let src = sources[i].take().expect("one source per camera");
                let owed = owed.clone();
                let (cam, g, st, out, stop, cfg, cap, act) = (
                    group.cams[k].clone(),
                    group.clone(),
                    state.clone(),
                    out_tx.clone(),
                    stop.clone(),
                    config.scheduler.clone(),
                    captured.clone(),
                    active.clone(),
                );
                cameras.push(std::thread::Builder::new().name(format!("cam-{}", config.cameras[i].name)).spawn(move || {
                    camera_thread(src, cam, g, st, out, stop, cfg, cap, owed);
                    act.fetch_sub(1, Ordering::AcqRel);
                })?);
            }
        }
        drop(out_tx);
        let output = {
            let (st, rec, sinks) = (state.clone(), recorded.clone(), sinks.clone());
            let ab = abandon.clone();
            std::thread::Builder::new()
                .name("station-output".into())
                .spawn(move || output_thread(out_rx, store, sinks, st, rec, ab, monitors))?
        };
        let feedback = {
            let fl = feedback_loop;
            let (rx, stop) = (state.feedback.open(), stop.clone());
            std::thread::Builder::new().name("station-feedback".into()).spawn(move || fl.run(rx, stop))?
        };
        state.ready.store(true, Ordering::Release);
        tracing::info!(cameras = config.cameras.len(), "station running");
        Ok(Station {
            state,
            stop,
            cameras,
            workers,
            output: Some(output),
            abandon,
            feedback: Some(feedback),
            sinks,
            cams,
            config: Mutex::new(config),
            active_cameras: active,
            engines,
            captured,
            owed,
            recorded,
        })
    }

    pub fn state(&self) -> Arc<StationState> {
        self.state.clone()
    }

    /// Engines loaded (cameras with the same bundle, preset and `glad` share one).
    pub fn engines(&self) -> usize {
        self.engines
    }

    /// True once every camera's source has ended or stopped (a replay without loop).
    pub fn sources_finished(&self) -> bool {
        self.active_cameras.load(Ordering::Acquire) == 0
    }

    /// The config in force.
    pub fn config(&self) -> StationConfig {
        self.config.lock().expect("config lock").clone()
    }

    /// Applies a new config: thresholds, calibrations, ROIs, rate limits and max ages change
    /// in place (models stay loaded). Anything else (cameras, sources, bundles, results)
    /// needs a restart and makes the reload fail; a failed reload keeps the old config.
    /// Returns what changed.
    pub fn reload(&self, new: StationConfig) -> Result<Vec<String>> {
        new.validate(Path::new("<reloaded station config>"))?;
        let mut cur = self.config.lock().expect("config lock");
        let mut changes = Vec::new();
        let mut fresh: Vec<(Arc<Cam>, usize, CamSettings)> = Vec::new();
        let names = |c: &StationConfig| c.cameras.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        if names(&cur) != names(&new) {
            bail!("reload: the camera list changed ({:?} → {:?}); restart the station for that", names(&cur), names(&new));
        }
        if cur.results != new.results
            || cur.runtime != new.runtime
            || cur.noise != new.noise
            || cur.scheduler != new.scheduler
            || cur.trusted_keys != new.trusted_keys
        {
            bail!("reload: `results`, `runtime`, `trusted_keys`, `noise` and `scheduler` need a restart");
        }
        if cur.feedback != new.feedback || cur.drift != new.drift {
            bail!("reload: `feedback` and `drift` need a restart");
        }
        if cur.name != new.name || cur.sinks != new.sinks || cur.http != new.http || cur.service != new.service {
            bail!("reload: `name`, `sinks`, `http` and `service` need a restart");
        }
        let mut switches: Vec<(String, String)> = Vec::new();
        for (old, c) in cur.cameras.iter().zip(&new.cameras) {
            for (what, differs) in [
                ("source", old.source != c.source),
                ("policy", old.policy != c.policy),
                ("queue", old.queue != c.queue),
                ("trigger", old.trigger != c.trigger),
            ] {
                if differs {
                    bail!("reload: camera `{}`: `{what}` changed; restart the station for that", c.name);
                }
            }
            let (was, now) = (old.recipe_views(), c.recipe_views());
            let names = |v: &[(Option<String>, CameraConfig)]| v.iter().map(|r| r.0.clone()).collect::<Vec<_>>();
            if names(&was) != names(&now) {
                bail!(
                    "reload: camera `{}`: its recipes changed ({:?} → {:?}); restart the station for that",
                    c.name,
                    names(&was),
                    names(&now)
                );
            }
            let cam = self.cams.get(&c.name).expect("same camera list");
            for (j, ((recipe, o), (_, n))) in was.iter().zip(&now).enumerate() {
                let at = match recipe {
                    Some(r) => format!("camera `{}`, recipe `{r}`", c.name),
                    None => format!("camera `{}`", c.name),
                };
                for (what, differs) in [("bundle", o.bundle != n.bundle), ("preset", o.preset != n.preset), ("glad", o.glad != n.glad)] {
                    if differs {
                        bail!("reload: {at}: `{what}` changed; restart the station for that");
                    }
                }
                let r = &cam.recipes[j];
                let before = r.settings.read().expect("settings lock").clone();
                let s = CamSettings::from_config(n, &r.facts).with_context(|| format!("reload: {at}"))?;
                let prefix = match recipe {
                    Some(name) => format!("cameras.{}.recipes.{name}", c.name),
                    None => format!("cameras.{}", c.name),
                };
                for (what, differs) in [
                    ("threshold", before.threshold != s.threshold),
                    ("calibration", before.calibration != s.calibration),
                    ("roi", before.roi != s.roi),
                    ("max_fps", before.max_fps != s.max_fps),
                    ("every_nth", before.every_nth != s.every_nth),
                    ("max_age_ms", before.max_age_ms != s.max_age_ms),
                ] {
                    if differs {
                        changes.push(format!("{prefix}.{what}"));
                    }
                }
                fresh.push((cam.clone(), j, s));
            }
            if old.active != c.active {
                if let Some(a) = &c.active {
                    switches.push((c.name.clone(), a.clone()));
                    changes.push(format!("cameras.{}.active", c.name));
                }
            }
        }
        for (cam, j, s) in fresh {
            *cam.recipes[j].settings.write().expect("settings lock") = s;
        }
        for (camera, recipe) in switches {
            self.state.recipes.select(&camera, &recipe, "config reload").map_err(|e| anyhow::anyhow!("reload: {e}"))?;
        }
        *cur = new;
        tracing::info!(?changes, "config reloaded");
        Ok(changes)
    }

    /// Stops the sources, inspects the frames already taken, flushes every sink. Waits at
    /// most `timeout` for the sinks' flush.
    pub fn shutdown(mut self, timeout: Duration) -> Result<()> {
        let t0 = Instant::now();
        self.stop.store(true, Ordering::Release);
        for h in self.cameras.drain(..) {
            let _ = h.join();
        }
        // An ONNX Runtime call cannot be interrupted, and a frame may take minutes on a slow
        // machine: engines still busy at the deadline are left to the process's exit, so a stop
        // never outlasts the drain timeout (and the unit's TimeoutStopSec) by a frame.
        let deadline = t0 + timeout;
        let mut busy = 0usize;
        for h in self.workers.drain(..) {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if !h.is_finished() {
                busy += 1;
                continue;
            }
            if h.join().is_err() {
                bail!("an engine thread panicked");
            }
        }
        if busy > 0 {
            tracing::warn!(
                engines = busy,
                drain_s = timeout.as_secs_f64(),
                "engine still inspecting a frame at the drain deadline: stopping without that frame's record"
            );
            self.abandon.store(true, Ordering::Release);
            ENGINE_ABANDONED.store(true, Ordering::Release);
        }
        if let Some(h) = self.output.take() {
            let _ = h.join();
        }
        if let Some(h) = self.feedback.take() {
            let _ = h.join();
        }
        let left = timeout.saturating_sub(t0.elapsed()).max(Duration::from_millis(100));
        let mut failures = Vec::new();
        for s in &self.sinks {
            if let Err(e) = s.flush(left) {
                failures.push(format!("{}: {e:#}", s.name()));
            }
        }
        self.state.ready.store(false, Ordering::Release);
        let lost: Vec<(String, u64)> = self.sinks.iter().map(|s| (s.name().to_string(), s.lost())).filter(|(_, n)| *n > 0).collect();
        let log_lost = lost.iter().find(|(n, _)| n == "jsonl").map_or(0, |l| l.1);
        // Frames owed a record that never reached the output (still queued, or inside an
        // engine, at the drain deadline): lost, and said so.
        let not_inspected = self.owed.load(Ordering::Acquire).saturating_sub(self.recorded.load(Ordering::Acquire));
        if not_inspected > 0 {
            self.state.metrics.frames_lost.inc_by(not_inspected);
        }
        tracing::info!(
            captured = self.captured.load(Ordering::Relaxed),
            recorded = self.recorded.load(Ordering::Relaxed).saturating_sub(log_lost),
            lost = log_lost + not_inspected,
            not_inspected,
            in_flight_abandoned = busy,
            seconds = t0.elapsed().as_secs_f64(),
            "station stopped"
        );
        if not_inspected > 0 {
            failures.push(format!(
                "{not_inspected} captured frame(s) were not inspected before the drain deadline ({:.1} s) and have no record; \
                 raise service.drain_timeout_s (and TimeoutStopSec) or shorten the cameras' queues",
                timeout.as_secs_f64()
            ));
        }
        if !lost.is_empty() {
            let what: Vec<String> = lost.iter().map(|(s, n)| format!("{s}: {n}")).collect();
            failures.push(format!("records were lost ({})", what.join(", ")));
        }
        if !failures.is_empty() {
            bail!("stopping the station: {}", failures.join("; "));
        }
        Ok(())
    }
}
