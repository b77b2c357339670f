//! The operator's loop: feedback on recent frames.
//!
//! - `good` (a false alarm): the frame's final-map backbone patches join the camera's feature
//!   bank as an overlay kept in the station's state folder (`<state>/overlay/`; the bundle
//!   stays read-only). Every change (an addition, an undo, an eviction) makes a new station-wide
//!   overlay version; the scheduler picks the new bank up at its next batch and every record
//!   names the overlay version that scored it. At most `feedback.max_patches` patches per
//!   camera: the oldest feedback goes first. The frame is also filed under
//!   `<dataset>/<camera>/train/good/`. A camera whose map reference is its reconstruction
//!   keeps the image and says the overlay does not apply.
//! - `defect`: the frame's input goes to `<dataset>/<camera>/test/<label>/` (MVTec layout, read
//!   by `glad eval` and `glad tune`), its heatmap and record to `<dataset>/<camera>/feedback/<label>/`.
//! - undo: the patches one version added leave the overlay.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use image::RgbImage;
use ndarray::{concatenate, Array2, Axis};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::glad::bank::{BankPrecision, FeatureBank};
use crate::glad::features::Tokens;
use crate::imaging;
use crate::record::FrameResult;
use crate::telemetry::feedback::{Action, Answer, FrameId, Label, Refusal, Request};
use crate::telemetry::metrics::{CameraLabel, FeedbackLabel};
use crate::telemetry::StationState;

/// The bank a camera is scored against now: the overlay version and the bundle's bank with
/// the overlay (`None`: no overlay, the engine's own bank).
#[derive(Debug, Default)]
pub struct BankSlot {
    inner: RwLock<(u64, Option<Arc<FeatureBank>>)>,
}

impl BankSlot {
    pub fn get(&self) -> (u64, Option<Arc<FeatureBank>>) {
        self.inner.read().expect("bank slot lock").clone()
    }

    fn set(&self, version: u64, bank: Option<Arc<FeatureBank>>) {
        *self.inner.write().expect("bank slot lock") = (version, bank);
    }
}

/// The key of a camera's overlay, labelled frames and drift reference: the camera's name, or
/// `<camera>.<recipe>` under a recipe (names hold no `.`), since each recipe is another part.
pub fn feedback_key(camera: &str, recipe: Option<&str>) -> String {
    match recipe {
        Some(r) => format!("{camera}.{r}"),
        None => camera.to_string(),
    }
}

/// Work for a camera's engine thread: the final-map backbone patches of a frame, per layer.
pub struct TokenJob {
    /// Which of the thread's engines (the recipe's).
    pub engine: String,
    pub image: Arc<RgbImage>,
    pub reply: Sender<Result<Vec<Array2<f32>>>>,
}

/// What the feedback thread knows of a camera.
pub struct CameraFeedback {
    /// The bundle's bank (`None`: the camera scores against its reconstruction).
    pub base: Option<Arc<FeatureBank>>,
    pub bundle_hash: String,
    pub slot: Arc<BankSlot>,
    /// The engine (of the camera's engine thread) the recipe inspects with.
    pub engine: String,
    /// The camera's engine thread, and its wake-up.
    pub jobs: Sender<TokenJob>,
    pub wake: Sender<()>,
}

/// One `good` feedback in the overlay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The overlay version this feedback made (`DELETE /api/feedback/<version>` undoes it).
    pub version: u64,
    /// The camera's feedback key (`feedback_key`: `<camera>.<recipe>` under a recipe).
    pub camera: String,
    pub run_id: String,
    pub seq: u64,
    pub bundle_hash: String,
    /// Patches per layer.
    pub patches: usize,
    pub t_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Index {
    /// The newest overlay version (station-wide).
    version: u64,
    /// Per camera, the version of its overlay's latest change.
    cameras: BTreeMap<String, u64>,
    entries: Vec<Entry>,
}

/// The overlays of every camera, in `<state>/overlay/`: `index.json` and one folder of
/// float32 layers per entry.
pub struct Overlays {
    dir: PathBuf,
    max_patches: usize,
    index: Index,
    tokens: BTreeMap<u64, Vec<Array2<f32>>>,
}

fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0)
}

/// What `Overlays::add` did.
#[derive(Debug, Clone, PartialEq)]
pub enum Added {
    /// A new entry: its version and the versions evicted to keep the budget.
    New { version: u64, evicted: Vec<u64> },
    /// The frame was taught already: the entry that holds it.
    Repeat { version: u64 },
}

impl Overlays {
    /// Reads the overlays kept in `state_dir` (none yet: empty) and repairs what a crash at
    /// any instant can leave: a torn `index.json` is set aside (`index.json.torn-<time>`) and
    /// the station starts without feedback; entries whose folder is missing or unreadable are
    /// dropped with a WARN; cameras over `max_patches` lose their oldest applied entries;
    /// folders no entry names (a teach cut before its index write, an eviction or undo cut
    /// before its delete) are removed. Entries made on another bundle are kept on disk but
    /// not applied. The start never fails on the overlay's content, only on an unusable folder.
    pub fn open(state_dir: &Path, max_patches: usize, cams: &BTreeMap<String, CameraFeedback>) -> Result<Overlays> {
        let dir = state_dir.join("overlay");
        std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create the overlay folder", dir.display()))?;
        let path = dir.join("index.json");
        let mut changed = false;
        let mut index: Index = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(i) => i,
                Err(e) => {
                    let aside = dir.join(format!("index.json.torn-{}", (now_ms() / 1e3) as u64));
                    std::fs::rename(&path, &aside).with_context(|| format!("{}: cannot set the torn index aside", path.display()))?;
                    tracing::warn!(index = %path.display(), set_aside = %aside.display(), error = %e, "feedback overlay index unreadable: set aside; the station starts without feedback overlays (teach again, or restore it by hand)");
                    changed = true;
                    Index::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Index::default(),
            Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
        };
        let mut tokens = BTreeMap::new();
        let mut kept = Vec::new();
        for e in std::mem::take(&mut index.entries) {
            let folder = dir.join(e.version.to_string());
            if !folder.is_dir() {
                tracing::warn!(version = e.version, camera = %e.camera, folder = %folder.display(), "feedback overlay entry dropped: its folder is missing");
                changed = true;
                continue;
            }
            if let Some(base) = cams.get(&e.camera).and_then(|c| c.base.as_ref().filter(|_| c.bundle_hash == e.bundle_hash)) {
                let channels: Vec<usize> = base.layers.iter().map(|l| l.data.ncols()).collect();
                match FeatureBank::load(&folder, &channels) {
                    Ok(bank) => {
                        tokens.insert(e.version, bank.layers.into_iter().map(|l| l.data).collect());
                    }
                    Err(err) => {
                        tracing::warn!(version = e.version, camera = %e.camera, error = %format!("{err:#}"), "feedback overlay entry dropped: its patches do not load");
                        changed = true;
                        continue;
                    }
                }
            } else {
                tracing::warn!(version = e.version, camera = %e.camera, "feedback overlay entry kept but not applied: the camera is gone, uses no bank or has another bundle");
            }
            kept.push(e);
        }
        index.entries = kept;
        let mut o = Overlays { dir, max_patches, index, tokens };
        // A lower budget than the one the entries were made under: the oldest applied go.
        let keys: Vec<String> = o.index.entries.iter().map(|e| e.camera.clone()).collect();
        for key in keys {
            while o.patches(&key) > o.max_patches {
                let Some(oldest) = o.oldest_applied(&key) else { break };
                tracing::warn!(camera = %key, version = oldest, max_patches = o.max_patches, "feedback overlay entry evicted at start: over `feedback.max_patches`");
                o.index.entries.retain(|e| e.version != oldest);
                o.tokens.remove(&oldest);
                o.index.version += 1;
                let v = o.index.version;
                o.index.cameras.insert(key.clone(), v);
                changed = true;
            }
        }
        if changed {
            o.persist(&o.index)?;
        }
        o.remove_orphans();
        Ok(o)
    }

    /// Removes everything in the overlay folder that the index does not name (kept: the index
    /// and torn indexes set aside for the operator).
    fn remove_orphans(&self) {
        let Ok(list) = std::fs::read_dir(&self.dir) else { return };
        for e in list.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "index.json" || name.starts_with("index.json.torn-") {
                continue;
            }
            let named = name.parse::<u64>().is_ok_and(|v| self.index.entries.iter().any(|e| e.version == v));
            if named {
                continue;
            }
            let p = e.path();
            let r = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            match r {
                Ok(()) => tracing::info!(path = %p.display(), "feedback overlay: removed a leftover no entry names"),
                Err(err) => tracing::warn!(path = %p.display(), error = %err, "feedback overlay: cannot remove a leftover"),
            }
        }
        let _ = crate::files::sync_dir(&self.dir);
    }

    /// Writes `index` as the overlay's index (temporary file, fsync, rename, folder fsync).
    fn persist(&self, index: &Index) -> Result<()> {
        crate::files::crash_point("overlay-index-write");
        let bytes = serde_json::to_vec_pretty(index)?;
        crate::files::write_atomic(&self.dir.join("index.json"), &bytes)?;
        crate::files::crash_point("overlay-index-written");
        Ok(())
    }

    /// Deletes the folders of entries the index no longer names (after the index is on disk).
    fn delete_folders(&self, versions: &[u64]) {
        for v in versions {
            crate::files::crash_point("overlay-delete");
            let p = self.dir.join(v.to_string());
            if let Err(e) = std::fs::remove_dir_all(&p) {
                tracing::warn!(path = %p.display(), error = %e, "feedback overlay: cannot delete an old entry's folder (removed at the next start)");
            }
        }
        let _ = crate::files::sync_dir(&self.dir);
    }

    /// The camera's overlay version (0: none yet).
    pub fn version(&self, camera: &str) -> u64 {
        self.index.cameras.get(camera).copied().unwrap_or(0)
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[Entry] {
        &self.index.entries
    }

    /// Patches of the camera's applied entries (what counts against the budget).
    pub fn patches(&self, camera: &str) -> usize {
        self.index.entries.iter().filter(|e| e.camera == camera && self.tokens.contains_key(&e.version)).map(|e| e.patches).sum()
    }

    fn oldest_applied(&self, camera: &str) -> Option<u64> {
        self.index.entries.iter().find(|e| e.camera == camera && self.tokens.contains_key(&e.version)).map(|e| e.version)
    }

    /// The entry that holds frame `id` of camera key `key`, if it was taught.
    pub fn taught(&self, key: &str, id: &FrameId) -> Option<u64> {
        self.index.entries.iter().find(|e| e.camera == key && e.run_id == id.run_id && e.seq == id.seq).map(|e| e.version)
    }

    /// The bundle's bank with the camera's overlay (`None` when it has none).
    pub fn bank(&self, camera: &str, base: &FeatureBank) -> Option<Arc<FeatureBank>> {
        let extra: Vec<&Vec<Array2<f32>>> =
            self.index.entries.iter().filter(|e| e.camera == camera).filter_map(|e| self.tokens.get(&e.version)).collect();
        if extra.is_empty() {
            return None;
        }
        let layers = base
            .layers
            .iter()
            .enumerate()
            .map(|(l, b)| {
                let mut views = vec![b.data.view()];
                views.extend(extra.iter().map(|t| t[l].view()));
                let data = concatenate(Axis(0), &views).expect("overlay layers have the bank's channels");
                let n = data.nrows();
                Tokens { data, grid: (1, n) }
            })
            .collect();
        Some(Arc::new(FeatureBank { layers }))
    }

    /// Adds a frame's patches (a frame taught before answers with its entry); evicts the
    /// camera's oldest applied feedback beyond the budget. On disk, in an order consistent at
    /// every instant: the new folder is written under a temporary name, synced and renamed; then
    /// the index naming it (and no longer naming the evicted entries) replaces the old one; only
    /// then are evicted folders deleted. Memory changes only once the index is on disk, so a
    /// failed write leaves the overlay as it was.
    pub fn add(&mut self, key: &str, id: &FrameId, bundle_hash: &str, layers: Vec<Array2<f32>>) -> std::result::Result<Added, Refusal> {
        if let Some(version) = self.taught(key, id) {
            return Ok(Added::Repeat { version });
        }
        let patches = layers.iter().map(|l| l.nrows()).max().unwrap_or(0);
        if patches > self.max_patches {
            return Err(Refusal::new(
                409,
                format!("key `feedback.max_patches`: the frame has {patches} patches, more than the budget of {}", self.max_patches),
            ));
        }
        let version = self.index.version + 1;
        let folder = self.dir.join(version.to_string());
        let staging = self.dir.join(format!(".new-{version}"));
        let write = || -> Result<()> {
            let _ = std::fs::remove_dir_all(&staging);
            let _ = std::fs::remove_dir_all(&folder);
            let bank = FeatureBank { layers: layers.iter().map(|d| Tokens { data: d.clone(), grid: (1, d.nrows()) }).collect() };
            bank.save(&staging, BankPrecision::F32)?;
            crate::files::sync_dir(&staging)?;
            crate::files::crash_point("overlay-folder-written");
            std::fs::rename(&staging, &folder).with_context(|| format!("cannot rename {} to {}", staging.display(), folder.display()))?;
            crate::files::sync_dir(&self.dir)?;
            crate::files::crash_point("overlay-folder-renamed");
            Ok(())
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_dir_all(&staging);
            let _ = std::fs::remove_dir_all(&folder);
            return Err(Refusal::new(500, format!("{e:#}")));
        }
        let mut next = self.index.clone();
        next.entries.push(Entry {
            version,
            camera: key.to_string(),
            run_id: id.run_id.clone(),
            seq: id.seq,
            bundle_hash: bundle_hash.to_string(),
            patches,
            t_ms: now_ms(),
        });
        // The budget counts applied entries only (the new one included), oldest first out.
        let applied = |e: &Entry| e.camera == key && (e.version == version || self.tokens.contains_key(&e.version));
        let mut evicted = Vec::new();
        let mut total: usize = next.entries.iter().filter(|e| applied(e)).map(|e| e.patches).sum();
        while total > self.max_patches {
            let Some(pos) = next.entries.iter().position(|e| applied(e) && e.version != version) else { break };
            let e = next.entries.remove(pos);
            total -= e.patches;
            evicted.push(e.version);
        }
        next.version = version;
        next.cameras.insert(key.to_string(), version);
        if let Err(e) = self.persist(&next) {
            let _ = std::fs::remove_dir_all(&folder);
            return Err(Refusal::new(500, format!("{e:#}")));
        }
        self.index = next;
        self.tokens.insert(version, layers);
        for v in &evicted {
            self.tokens.remove(v);
        }
        self.delete_folders(&evicted);
        Ok(Added::New { version, evicted })
    }

    /// Removes what version `version` added; returns the entry and the camera's new version.
    /// The index without it is written first, its folder deleted after.
    pub fn undo(&mut self, version: u64) -> std::result::Result<(Entry, u64), Refusal> {
        let pos = self
            .index
            .entries
            .iter()
            .position(|e| e.version == version)
            .ok_or_else(|| Refusal::new(404, format!("no overlay version {version} in force")))?;
        let mut next = self.index.clone();
        let e = next.entries.remove(pos);
        let v = next.version + 1;
        next.version = v;
        next.cameras.insert(e.camera.clone(), v);
        self.persist(&next).map_err(|e| Refusal::new(500, format!("{e:#}")))?;
        self.index = next;
        self.tokens.remove(&version);
        self.delete_folders(&[version]);
        Ok((e, v))
    }
}

/// A file stem of a frame: `<run_id>-<seq>` (both from the station's own record).
fn stem(r: &FrameResult) -> String {
    format!("{}-{:06}", r.record.run_id, r.record.seq)
}

fn io_refusal(e: anyhow::Error) -> Refusal {
    Refusal::new(500, format!("{e:#}"))
}

/// The feedback thread: takes requests until `stop`.
pub struct FeedbackLoop {
    pub state: Arc<StationState>,
    pub cams: BTreeMap<String, CameraFeedback>,
    pub overlays: Overlays,
    pub dataset: PathBuf,
    pub frames: usize,
}

impl FeedbackLoop {
    /// Publishes every camera's overlay (at start).
    pub fn publish_all(&self) {
        for (name, c) in &self.cams {
            if let Some(base) = &c.base {
                c.slot.set(self.overlays.version(name), self.overlays.bank(name, base));
                let patches = self.overlays.patches(name);
                self.state.metrics.overlay_patches.get_or_create(&CameraLabel { camera: name.clone() }).set(patches as i64);
            }
        }
    }

    fn publish(&self, camera: &str) {
        if let Some(c) = self.cams.get(camera) {
            if let Some(base) = &c.base {
                c.slot.set(self.overlays.version(camera), self.overlays.bank(camera, base));
                let patches = self.overlays.patches(camera);
                self.state.metrics.overlay_patches.get_or_create(&CameraLabel { camera: camera.to_string() }).set(patches as i64);
            }
        }
    }

    pub fn run(mut self, rx: Receiver<Request>, stop: Arc<AtomicBool>) {
        self.publish_all();
        while !stop.load(Ordering::Acquire) {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(req) => {
                    let answer = self.handle(req.action);
                    let _ = req.reply.send(answer);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.state.feedback.close();
    }

    /// The kept frame and its feedback key (camera, and recipe when it has one).
    fn frame(&self, id: &FrameId) -> std::result::Result<(String, FrameResult), Refusal> {
        if !self.state.cameras.contains_key(&id.camera) {
            return Err(Refusal::new(404, format!("field `camera`: unknown camera `{}`", id.camera)));
        }
        let r = self
            .state
            .frame(&id.camera, &id.run_id, id.seq)
            .or_else(|| self.state.ng_frame(&id.camera, &id.run_id, id.seq))
            .ok_or_else(|| {
                Refusal::new(
                    404,
                    format!(
                        "fields `run_id`, `seq`: no frame {} of run `{}` of camera `{}` is kept (the newest {} per camera and the latest NG frames are)",
                        id.seq, id.run_id, id.camera, self.frames
                    ),
                )
            })?;
        if !r.record.ok || r.input.is_none() {
            return Err(Refusal::new(409, format!("frame {} of camera `{}` failed inspection: nothing to learn from", id.seq, id.camera)));
        }
        let key = feedback_key(&id.camera, r.record.recipe.as_deref());
        if !self.cams.contains_key(&key) {
            return Err(Refusal::new(
                409,
                format!("frame {} of camera `{}` was inspected under a recipe this run does not have", id.seq, id.camera),
            ));
        }
        Ok((key, r))
    }

    fn handle(&mut self, action: Action) -> Answer {
        match action {
            Action::Teach { frame, label: Label::Good } => self.good(&frame),
            Action::Teach { frame, label: Label::Defect(label) } => self.defect(&frame, &label),
            Action::Undo { version } => {
                let (e, v) = self.overlays.undo(version)?;
                self.publish(&e.camera);
                tracing::info!(camera = %e.camera, removed = version, overlay_version = v, "feedback undone");
                Ok(json!({ "removed": version, "camera": e.camera, "overlay_version": v }))
            }
            Action::List => Ok(json!({
                "version": self.overlays.index.version,
                "cameras": self.cams.iter().map(|(n, c)| (n.clone(), json!({
                    "applies": c.base.is_some(),
                    "overlay_version": c.base.as_ref().map(|_| self.overlays.version(n)),
                    "patches": self.overlays.patches(n),
                }))).collect::<serde_json::Map<_, _>>(),
                "entries": self.overlays.entries(),
            })),
        }
    }

    fn good(&mut self, id: &FrameId) -> Answer {
        let t0 = Instant::now();
        let (key, r) = self.frame(id)?;
        let input = r.input.clone().expect("checked");
        let path = self.dataset.join(&key).join("train").join("good").join(format!("{}.png", stem(&r)));
        let cam = &self.cams[&key];
        if cam.base.is_none() {
            imaging::save_png(&input, &path).map_err(io_refusal)?;
            self.count_good(&key);
            tracing::info!(camera = %key, seq = id.seq, "feedback good: kept the frame; the camera uses no bank");
            return Ok(json!({
                "applies": false,
                "reason": format!("camera `{key}` scores against its reconstruction (glad.reference: reconstruction): a feature-bank overlay does not apply; the frame is kept"),
                "filed": { "input": path },
            }));
        }
        // A frame taught already (a double click) answers with its entry and changes nothing.
        if let Some(version) = self.overlays.taught(&key, id) {
            return Ok(self.repeat_answer(&key, version, &path));
        }
        let (tx, rx) = bounded(1);
        cam.jobs
            .try_send(TokenJob { engine: cam.engine.clone(), image: input.clone(), reply: tx })
            .map_err(|_| Refusal::new(429, "the engine has feedback waiting"))?;
        let _ = cam.wake.try_send(());
        let layers = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => return Err(Refusal::new(500, format!("backbone patches: {e:#}"))),
            Err(_) => return Err(Refusal::new(503, "the engine did not compute the frame's patches in time; nothing was changed")),
        };
        let bundle_hash = cam.bundle_hash.clone();
        let (version, evicted) = match self.overlays.add(&key, id, &bundle_hash, layers)? {
            Added::New { version, evicted } => (version, evicted),
            Added::Repeat { version } => return Ok(self.repeat_answer(&key, version, &path)),
        };
        self.publish(&key);
        // Filed for training only once the overlay took the frame: a later `glad bank` must not
        // learn what the station refused.
        let filed = match imaging::save_png(&input, &path) {
            Ok(()) => json!({ "input": path }),
            Err(e) => {
                tracing::warn!(camera = %key, seq = id.seq, error = %format!("{e:#}"), "feedback good: overlay updated, but the frame could not be filed for training");
                json!({ "input": null, "error": format!("{e:#}") })
            }
        };
        self.count_good(&key);
        let patches = self.overlays.patches(&key);
        tracing::info!(camera = %key, seq = id.seq, overlay_version = version, patches, ?evicted, ms = t0.elapsed().as_secs_f64() * 1e3, "feedback good: overlay updated");
        Ok(json!({
            "applies": true,
            "version": version,
            "overlay_version": version,
            "patches": patches,
            "evicted": evicted,
            "filed": filed,
        }))
    }

    fn count_good(&self, key: &str) {
        let label = FeedbackLabel { camera: key.to_string(), label: "good".into() };
        self.state.metrics.feedback.get_or_create(&label).inc();
    }

    /// The answer to a frame taught before: its entry, nothing changed.
    fn repeat_answer(&self, key: &str, version: u64, path: &Path) -> serde_json::Value {
        json!({
            "applies": true,
            "repeat": true,
            "version": version,
            "overlay_version": self.overlays.version(key),
            "patches": self.overlays.patches(key),
            "evicted": [],
            "filed": { "input": path },
        })
    }

    fn defect(&mut self, id: &FrameId, label: &str) -> Answer {
        let (key, r) = self.frame(id)?;
        let s = stem(&r);
        let cam_dir = self.dataset.join(&key);
        let input = cam_dir.join("test").join(label).join(format!("{s}.png"));
        imaging::save_png(r.input.as_ref().expect("checked"), &input).map_err(io_refusal)?;
        let side = cam_dir.join("feedback").join(label);
        let heatmap = side.join(format!("{s}.heatmap.png"));
        if let Some(h) = &r.heatmap {
            imaging::save_png(h, &heatmap).map_err(io_refusal)?;
        }
        let record = side.join(format!("{s}.json"));
        let bytes = serde_json::to_vec_pretty(r.record.as_ref()).map_err(|e| Refusal::new(500, e.to_string()))?;
        imaging::write_atomic(&record, &bytes).map_err(io_refusal)?;
        let l = FeedbackLabel { camera: key.clone(), label: "defect".into() };
        self.state.metrics.feedback.get_or_create(&l).inc();
        tracing::info!(camera = %key, seq = id.seq, label, "feedback defect: frame filed");
        Ok(json!({ "filed": { "input": input, "heatmap": r.heatmap.as_ref().map(|_| heatmap), "record": record } }))
    }
}

/// The backbone patches of `image` on `engine` (on the camera's engine thread).
pub fn frame_patches(engine: &mut crate::engine::Engine, image: &RgbImage) -> Result<Vec<Array2<f32>>> {
    let r = engine.resolution();
    let x = imaging::preprocess(image, r).insert_axis(Axis(0));
    let mut per_image = engine.backbone_tokens(x.view())?;
    let layers = per_image.pop().context("the backbone returned no image")?;
    Ok(layers.into_iter().map(|t| t.data).collect())
}

/// A defect label: a folder name of the dataset.
pub fn check_label(label: &str) -> std::result::Result<(), String> {
    let ok = !label.is_empty()
        && label.len() <= 64
        && label != "good"
        && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!("field `label`: expected 1-64 of a-z, 0-9, _ and - (not `good`), got `{label}`"))
    }
}
