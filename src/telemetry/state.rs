//! The shared state of a running station: what the HTTP face, `/readyz`, `/metrics` and the
//! systemd watchdog read. The station writes it; readers never touch the engine.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::metrics::Metrics;
use super::trigger::Triggers;
use crate::record::{FrameRecord, FrameResult};

/// One camera as the station sees it.
#[derive(Debug)]
pub struct CameraState {
    pub name: String,
    /// Waits for triggers (PLC coil, `POST /api/trigger`): idle is not a fault.
    pub triggered: bool,
    /// The newest result with its pictures (the live view's `/latest/<camera>.jpg`).
    pub latest: Mutex<Option<FrameResult>>,
    /// True while frames arrive; false while the source is reconnecting.
    pub streaming: AtomicBool,
    /// What the camera is doing (shown as `streaming`, `reconnecting in 2.0 s: ...`).
    pub status: Mutex<CameraStatus>,
}

/// A camera's state as the station reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum CameraStatus {
    Starting,
    Streaming,
    Reconnecting {
        attempt: u32,
        delay: Duration,
        reason: String,
    },
    /// A replay without `loop` reached its end.
    Ended,
    /// The source refused to go on (retrying cannot help): a failure of the run.
    Stopped(String),
    /// Any other state a tool or test reports, shown as given.
    Note(String),
}

impl std::fmt::Display for CameraStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CameraStatus::Starting => f.write_str("starting"),
            CameraStatus::Streaming => f.write_str("streaming"),
            CameraStatus::Reconnecting { attempt, delay, reason } => {
                write!(f, "reconnecting in {:.1} s (attempt {attempt}): {reason}", delay.as_secs_f64())
            }
            CameraStatus::Ended => f.write_str("ended"),
            CameraStatus::Stopped(why) => write!(f, "stopped: {why}"),
            CameraStatus::Note(s) => f.write_str(s),
        }
    }
}

impl From<&str> for CameraStatus {
    fn from(s: &str) -> CameraStatus {
        CameraStatus::Note(s.to_string())
    }
}

/// Per-component liveness: each loop beats when it makes progress (a frame, a batch, an
/// idle wake-up that found nothing to do). A component that stops beating is stuck or dead.
#[derive(Debug)]
pub struct Heartbeats {
    start: Instant,
    beats: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
}

impl Heartbeats {
    fn new() -> Heartbeats {
        Heartbeats { start: Instant::now(), beats: Mutex::new(BTreeMap::new()) }
    }

    /// Registers a component (beating now) and returns its handle.
    pub fn register(&self, component: &str) -> Heartbeat {
        let cell = Arc::new(AtomicU64::new(self.now_ms()));
        self.beats.lock().expect("heartbeat lock").insert(component.to_string(), cell.clone());
        Heartbeat { start: self.start, cell }
    }

    /// Removes a component that ended on purpose (so it does not count as stale).
    pub fn unregister(&self, component: &str) {
        self.beats.lock().expect("heartbeat lock").remove(component);
    }

    /// Components whose last beat is older than `max_age`.
    pub fn stale(&self, max_age: Duration) -> Vec<String> {
        let now = self.now_ms();
        let max = max_age.as_millis() as u64;
        let beats = self.beats.lock().expect("heartbeat lock");
        beats.iter().filter(|(_, b)| now.saturating_sub(b.load(Ordering::Relaxed)) > max).map(|(k, _)| k.clone()).collect()
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

/// A component's handle to its heartbeat.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    start: Instant,
    cell: Arc<AtomicU64>,
}

impl Heartbeat {
    pub fn beat(&self) {
        self.cell.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct StationState {
    pub cameras: BTreeMap<String, CameraState>,
    pub triggers: Triggers,
    /// The active recipe of every camera that has recipes.
    pub recipes: super::recipe::Recipes,
    pub metrics: Metrics,
    pub heartbeats: Heartbeats,
    /// Every model loaded and warmed up.
    pub ready: AtomicBool,
    /// Component → reason, for everything working in a degraded way (disk full, broker away).
    degraded: Mutex<BTreeMap<String, String>>,
    recent: Mutex<VecDeque<Arc<FrameRecord>>>,
    /// The same, per camera: a quiet camera keeps its history while a busy one streams.
    recent_by_camera: Mutex<BTreeMap<String, VecDeque<Arc<FrameRecord>>>>,
    recent_cap: usize,
    /// The operator's feedback: requests from the HTTP face to the station.
    pub feedback: super::feedback::FeedbackDesk,
    /// The newest results with their pictures, per camera (what feedback files and teaches).
    frames: Mutex<BTreeMap<String, VecDeque<FrameResult>>>,
    frames_cap: std::sync::atomic::AtomicUsize,
    /// The newest NG results with their pictures, per camera (the review page).
    ng: Mutex<BTreeMap<String, VecDeque<FrameResult>>>,
    drift: Mutex<BTreeMap<String, super::drift::DriftStatus>>,
}

/// Results with pictures kept per camera for feedback, unless the station sets another bound.
pub const DEFAULT_FRAME_RING: usize = 32;
/// NG results kept per camera for the review page.
pub const NG_RING: usize = 8;

impl StationState {
    /// `cameras`: (name, triggered). Keeps the newest `recent_cap` records for `/api/results`.
    pub fn new(cameras: &[(String, bool)], recent_cap: usize) -> StationState {
        let metrics = Metrics::new();
        let cams = cameras
            .iter()
            .map(|(name, triggered)| {
                let c = CameraState {
                    name: name.clone(),
                    triggered: *triggered,
                    latest: Mutex::new(None),
                    streaming: AtomicBool::new(false),
                    status: Mutex::new(CameraStatus::Starting),
                };
                (name.clone(), c)
            })
            .collect();
        StationState {
            cameras: cams,
            triggers: Triggers::new(cameras.iter().map(|c| c.0.clone())),
            recipes: Default::default(),
            metrics,
            heartbeats: Heartbeats::new(),
            ready: AtomicBool::new(false),
            degraded: Mutex::new(BTreeMap::new()),
            recent: Mutex::new(VecDeque::new()),
            recent_by_camera: Mutex::new(BTreeMap::new()),
            recent_cap: recent_cap.max(1),
            feedback: Default::default(),
            frames: Mutex::new(BTreeMap::new()),
            frames_cap: std::sync::atomic::AtomicUsize::new(DEFAULT_FRAME_RING),
            ng: Mutex::new(BTreeMap::new()),
            drift: Mutex::new(BTreeMap::new()),
        }
    }

    /// Results with pictures kept per camera for feedback (at least 1).
    pub fn set_frame_ring(&self, n: usize) {
        self.frames_cap.store(n.max(1), Ordering::Relaxed);
    }

    /// The kept result of a frame (`camera` + `run_id` + `seq`), while it is in the ring.
    pub fn frame(&self, camera: &str, run_id: &str, seq: u64) -> Option<FrameResult> {
        let frames = self.frames.lock().expect("frames lock");
        frames.get(camera)?.iter().rev().find(|r| r.record.run_id == run_id && r.record.seq == seq).cloned()
    }

    /// The newest NG results of a camera with their pictures, newest first.
    pub fn recent_ng(&self, camera: &str) -> Vec<FrameResult> {
        let ng = self.ng.lock().expect("ng lock");
        ng.get(camera).map(|q| q.iter().rev().cloned().collect()).unwrap_or_default()
    }

    /// The NG result of a frame, while the review ring holds it.
    pub fn ng_frame(&self, camera: &str, run_id: &str, seq: u64) -> Option<FrameResult> {
        let ng = self.ng.lock().expect("ng lock");
        ng.get(camera)?.iter().find(|r| r.record.run_id == run_id && r.record.seq == seq).cloned()
    }

    pub fn set_drift(&self, camera: &str, status: super::drift::DriftStatus) {
        self.drift.lock().expect("drift lock").insert(camera.to_string(), status);
    }

    pub fn drift(&self, camera: &str) -> Option<super::drift::DriftStatus> {
        self.drift.lock().expect("drift lock").get(camera).cloned()
    }

    /// Records a finished frame: the camera's latest result, the recent-records ring.
    pub fn publish(&self, result: &FrameResult) {
        let rec = result.record.clone();
        if let Some(cam) = self.cameras.get(&rec.camera) {
            *cam.latest.lock().expect("latest lock") = Some(result.clone());
        }
        if result.input.is_some() {
            let cap = self.frames_cap.load(Ordering::Relaxed);
            let mut frames = self.frames.lock().expect("frames lock");
            let ring = frames.entry(rec.camera.clone()).or_default();
            while ring.len() >= cap {
                ring.pop_front();
            }
            ring.push_back(result.clone());
            if rec.is_ng() {
                let mut ng = self.ng.lock().expect("ng lock");
                let ring = ng.entry(rec.camera.clone()).or_default();
                while ring.len() >= NG_RING {
                    ring.pop_front();
                }
                ring.push_back(result.clone());
            }
        }
        {
            let mut by = self.recent_by_camera.lock().expect("recent lock");
            let ring = by.entry(rec.camera.clone()).or_default();
            if ring.len() == self.recent_cap {
                ring.pop_front();
            }
            ring.push_back(rec.clone());
        }
        let mut recent = self.recent.lock().expect("recent lock");
        if recent.len() == self.recent_cap {
            recent.pop_front();
        }
        recent.push_back(rec);
    }

    /// The newest records, oldest first, filtered by camera and by `seq > since`.
    pub fn recent(&self, camera: Option<&str>, since: Option<u64>, limit: usize) -> Vec<Arc<FrameRecord>> {
        let by = self.recent_by_camera.lock().expect("recent lock");
        let all = self.recent.lock().expect("recent lock");
        let empty = VecDeque::new();
        let recent = match camera {
            Some(c) => by.get(c).unwrap_or(&empty),
            None => &*all,
        };
        let mut out: Vec<Arc<FrameRecord>> = recent
            .iter()
            .rev()
            .filter(|r| camera.is_none_or(|c| r.camera == c) && since.is_none_or(|s| r.seq > s))
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        out
    }

    pub fn set_camera_status(&self, camera: &str, streaming: bool, status: impl Into<CameraStatus>) {
        if let Some(c) = self.cameras.get(camera) {
            c.streaming.store(streaming, Ordering::Relaxed);
            *c.status.lock().expect("status lock") = status.into();
        }
    }

    /// Marks `component` degraded with `reason`, or healthy again with `None`.
    pub fn set_degraded(&self, component: &str, reason: Option<String>) {
        let mut d = self.degraded.lock().expect("degraded lock");
        let was = d.contains_key(component);
        match reason {
            Some(r) => {
                if !was {
                    tracing::warn!(component, reason = %r, "degraded");
                }
                d.insert(component.to_string(), r);
            }
            None => {
                if was {
                    tracing::info!(component, "recovered");
                }
                d.remove(component);
            }
        }
        self.metrics
            .degraded
            .get_or_create(&super::metrics::ComponentLabel { component: component.to_string() })
            .set(i64::from(d.contains_key(component)));
    }

    pub fn degraded(&self) -> BTreeMap<String, String> {
        self.degraded.lock().expect("degraded lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_go_stale_and_unregister_removes() {
        let h = Heartbeats::new();
        let a = h.register("engine");
        h.register("cam0");
        std::thread::sleep(Duration::from_millis(30));
        a.beat();
        assert_eq!(h.stale(Duration::from_millis(20)), vec!["cam0".to_string()]);
        h.unregister("cam0");
        assert!(h.stale(Duration::from_millis(20)).is_empty());
    }

    /// `/api/results?camera=quiet` keeps the quiet camera's records while a busy camera fills
    /// the shared ring.
    #[test]
    fn a_quiet_camera_keeps_its_recent_records() {
        use crate::record::Origin;
        let st = StationState::new(&[("quiet".into(), false), ("busy".into(), false)], 4);
        let rec = |camera: &str, seq| {
            let o = Origin {
                camera: camera.into(),
                seq,
                t_capture: std::time::SystemTime::now(),
                dropped: 0,
                threshold: None,
                bundle_hash: String::new(),
                run_id: String::new(),
                overlay_version: None,
                recipe: None,
            };
            FrameResult { record: Arc::new(FrameRecord::error(o, "decode", "x")), input: None, heatmap: None }
        };
        st.publish(&rec("quiet", 7));
        for i in 0..10 {
            st.publish(&rec("busy", i));
        }
        assert_eq!(st.recent(Some("quiet"), None, 10).iter().map(|r| r.seq).collect::<Vec<_>>(), vec![7]);
        assert_eq!(st.recent(Some("busy"), None, 10).len(), 4);
        assert_eq!(st.recent(None, None, 10).len(), 4);
    }
}
