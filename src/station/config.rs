//! The station config (`glad run --config station.yaml`): typed, unknown keys rejected, every
//! number checked (finite, in range) with errors naming the file and the key.
//! config/station.example.yaml documents every key.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::{check, Calibration, Config, NoiseConfig};
use crate::engine::{EngineSpec, VerdictSpec};
use crate::glad::ParamOverrides;
use crate::runtime::RuntimeConfig;
use crate::sources::fake::Fault;
use crate::sources::{Backoff, Fourcc};
use crate::yaml::parse_yaml;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StationConfig {
    /// The station's name: MQTT topics and client id, logs.
    #[serde(default = "default_station_name")]
    pub name: String,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Minisign public keys: when any are listed, a camera's bundle (at start, on reload and on
    /// a recipe switch) loads only if it is closed, whole and signed by one of them.
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
    #[serde(default)]
    pub noise: NoiseConfig,
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    pub results: ResultsConfig,
    pub cameras: Vec<CameraConfig>,
    /// Extra outputs; the factory-integration sinks (`mqtt`, `modbus`, `webhook`) go here.
    #[serde(default)]
    pub sinks: SinksConfig,
    /// The operator's feedback: where the overlays and the labelled frames go.
    #[serde(default)]
    pub feedback: FeedbackConfig,
    /// The drift alarm (README "Drift alarm").
    #[serde(default)]
    pub drift: crate::telemetry::drift::DriftConfig,
    /// `glad serve`'s HTTP face (bind address, trigger token): owned, parsed and checked by
    /// the service layer (`service::ServeSections`); kept here as YAML.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<serde_yaml::Value>,
    /// `glad serve`'s systemd behaviour (drain bound, watchdog, load extensions): owned by
    /// the service layer like `http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<serde_yaml::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Frames of cameras sharing an engine that arrive within this window go in one batch.
    pub batch_window_ms: f64,
    /// At most this many frames per engine call.
    pub max_batch: usize,
    /// A camera that gives no frame within this time has stalled (closed and reopened).
    pub frame_timeout_ms: f64,
    /// First reopen delay; doubles after every failed attempt...
    pub backoff_initial_ms: f64,
    /// ...up to this.
    pub backoff_max_ms: f64,
    /// Records kept in memory for the live view and `/api/results`.
    pub recent: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            batch_window_ms: 5.0,
            max_batch: 4,
            frame_timeout_ms: 2000.0,
            backoff_initial_ms: 500.0,
            backoff_max_ms: 30000.0,
            recent: 256,
        }
    }
}

impl SchedulerConfig {
    pub fn backoff(&self) -> Backoff {
        Backoff { initial: ms(self.backoff_initial_ms), max: ms(self.backoff_max_ms) }
    }
}

/// The `feedback:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedbackConfig {
    /// The station's state folder: the feature-bank overlays (default `<results.dir>/state`).
    pub state_dir: Option<PathBuf>,
    /// Where labelled frames go, in the MVTec layout `<dataset>/<camera>/{train/good,test/<label>}/`
    /// (default `<state_dir>/dataset`).
    pub dataset: Option<PathBuf>,
    /// Most overlay patches per camera (per backbone layer); the oldest feedback goes first.
    pub max_patches: usize,
    /// Results with pictures kept per camera so feedback can name them.
    pub frames: usize,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        FeedbackConfig { state_dir: None, dataset: None, max_patches: 16384, frames: 32 }
    }
}

impl StationConfig {
    /// The state folder (overlays).
    pub fn state_dir(&self) -> PathBuf {
        self.feedback.state_dir.clone().unwrap_or_else(|| self.results.dir.join("state"))
    }

    /// The labelled-frames folder.
    pub fn dataset_dir(&self) -> PathBuf {
        self.feedback.dataset.clone().unwrap_or_else(|| self.state_dir().join("dataset"))
    }
}

pub fn ms(v: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(v / 1e3)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsConfig {
    /// Results folder (created): results.jsonl (+ rotated results.N.jsonl) and images/.
    pub dir: PathBuf,
    /// Rotate results.jsonl when it grows past this size.
    #[serde(default = "default_jsonl_max")]
    pub jsonl_max_bytes: u64,
    /// Rotated JSONL files kept (older ones deleted).
    #[serde(default = "default_jsonl_keep")]
    pub jsonl_keep: usize,
    /// Keep NG frames (input PNG + heatmap).
    #[serde(default = "yes")]
    pub store_ng: bool,
    /// Also keep every Nth OK frame per camera (0: none).
    #[serde(default)]
    pub keep_ok_every: u64,
    /// Most bytes the stored images may take; the oldest are deleted first.
    #[serde(default = "default_quota")]
    pub quota_bytes: u64,
    /// Keep at least this much free on the file system (oldest images deleted first).
    #[serde(default = "default_free")]
    pub min_free_bytes: u64,
}

fn default_jsonl_max() -> u64 {
    64 << 20
}
fn default_jsonl_keep() -> usize {
    5
}
fn default_station_name() -> String {
    "station".into()
}
fn yes() -> bool {
    true
}
fn default_quota() -> u64 {
    1 << 30
}
fn default_free() -> u64 {
    256 << 20
}

/// The factory-integration sinks; each is off unless its key is present
/// (config/sinks.example.yaml documents every key).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinksConfig {
    #[serde(default)]
    pub mqtt: Option<crate::sinks::MqttConfig>,
    #[serde(default)]
    pub modbus: Option<crate::sinks::ModbusConfig>,
    #[serde(default)]
    pub webhook: Option<crate::sinks::WebhookConfig>,
}

impl SinksConfig {
    /// Checks every sink's keys (errors name `sinks.<sink>.<key>`), without starting any.
    pub fn validate(&self, file: &Path, station: &str, cameras: &[String]) -> Result<()> {
        let named = |e: anyhow::Error| anyhow::anyhow!("{}: {e:#}", file.display());
        if let Some(m) = &self.mqtt {
            m.settings(station).map_err(named)?;
        }
        if let Some(m) = &self.modbus {
            m.settings(cameras).map_err(named)?;
        }
        if let Some(w) = &self.webhook {
            w.settings().map_err(named)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// The engine takes the newest frame; older ones are dropped and counted.
    #[default]
    Live,
    /// A bounded queue; a full queue holds the camera back; nothing is dropped.
    Lossless,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roi {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// A camera's source. In YAML exactly one of `replay:`, `v4l2:` or `fake:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SourceSpec", into = "SourceSpec")]
pub enum SourceConfig {
    /// A folder of images (sorted) or a raw recording with index.yaml.
    Replay {
        path: PathBuf,
        /// Frames per second (0: as fast as the station takes them).
        fps: f64,
        looping: bool,
    },
    /// A V4L2 camera.
    V4l2 {
        device: PathBuf,
        format: Fourcc,
        width: u32,
        height: u32,
        fps: f64,
        /// Accept another format, size or rate than asked (logged); else refuse to start.
        allow_fallback: bool,
    },
    /// The fault-injecting fake camera over a folder of images (tests, demos).
    Fake { frames: PathBuf, format: Fourcc, width: u32, height: u32, fps: f64, faults: Vec<Fault> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaySpec {
    pub path: PathBuf,
    pub fps: f64,
    #[serde(default, rename = "loop")]
    pub looping: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct V4l2Spec {
    pub device: PathBuf,
    pub format: Fourcc,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    #[serde(default)]
    pub allow_fallback: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeSpec {
    pub frames: PathBuf,
    pub format: Fourcc,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    #[serde(default)]
    pub faults: Vec<Fault>,
}

/// The YAML shape of `source:`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplaySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v4l2: Option<V4l2Spec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fake: Option<FakeSpec>,
}

impl TryFrom<SourceSpec> for SourceConfig {
    type Error = String;
    fn try_from(s: SourceSpec) -> Result<Self, String> {
        match (s.replay, s.v4l2, s.fake) {
            (Some(r), None, None) => Ok(SourceConfig::Replay { path: r.path, fps: r.fps, looping: r.looping }),
            (None, Some(v), None) => Ok(SourceConfig::V4l2 {
                device: v.device,
                format: v.format,
                width: v.width,
                height: v.height,
                fps: v.fps,
                allow_fallback: v.allow_fallback,
            }),
            (None, None, Some(f)) => Ok(SourceConfig::Fake {
                frames: f.frames,
                format: f.format,
                width: f.width,
                height: f.height,
                fps: f.fps,
                faults: f.faults,
            }),
            _ => Err("set exactly one of `replay`, `v4l2`, `fake`".into()),
        }
    }
}

impl From<SourceConfig> for SourceSpec {
    fn from(c: SourceConfig) -> SourceSpec {
        match c {
            SourceConfig::Replay { path, fps, looping } => {
                SourceSpec { replay: Some(ReplaySpec { path, fps, looping }), ..Default::default() }
            }
            SourceConfig::V4l2 { device, format, width, height, fps, allow_fallback } => {
                SourceSpec { v4l2: Some(V4l2Spec { device, format, width, height, fps, allow_fallback }), ..Default::default() }
            }
            SourceConfig::Fake { frames, format, width, height, fps, faults } => {
                SourceSpec { fake: Some(FakeSpec { frames, format, width, height, fps, faults }), ..Default::default() }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    pub name: String,
    pub source: SourceConfig,
    /// Bundle folder; cameras with the same bundle, preset and `glad` share one engine.
    /// May be left out when every recipe names its own.
    #[serde(default, skip_serializing_if = "is_empty_path")]
    pub bundle: PathBuf,
    #[serde(default)]
    pub preset: Option<String>,
    #[serde(default)]
    pub glad: ParamOverrides,
    /// Verdict threshold (a calibration wins).
    #[serde(default)]
    pub threshold: Option<f32>,
    /// A config written by `glad calibrate` whose `calibration` applies to this camera.
    #[serde(default)]
    pub calibration: Option<PathBuf>,
    #[serde(default)]
    pub policy: Policy,
    /// Live: a frame older than this when the engine takes it gets an error record `stale`.
    #[serde(default = "default_max_age")]
    pub max_age_ms: f64,
    /// Lossless: frames waiting at most.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Crop before the resize to the bundle resolution.
    #[serde(default)]
    pub roi: Option<Roi>,
    /// Inspect at most this many frames per second.
    #[serde(default)]
    pub max_fps: Option<f64>,
    /// Inspect every Nth frame.
    #[serde(default)]
    pub every_nth: Option<u64>,
    /// Inspect only when triggered (PLC, `POST /api/trigger`).
    #[serde(default)]
    pub trigger: bool,
    /// The parts this camera inspects, one recipe each; one is active at a time (`active`, the
    /// PLC's register, `PUT /api/recipe`). Keys a recipe leaves out are the camera's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipes: Vec<RecipeConfig>,
    /// The recipe active at start (default: the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<String>,
}

/// A camera or recipe name: letters, digits, - and _ (names go into file names and keys).
fn is_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
}

fn is_empty_path(p: &Path) -> bool {
    p.as_os_str().is_empty()
}

/// One of a camera's recipes: what changes between the parts it inspects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeConfig {
    /// Letters, digits, - and _ (records, `PUT /api/recipe`, the feedback dataset's folders).
    pub name: String,
    #[serde(default)]
    pub bundle: Option<PathBuf>,
    #[serde(default)]
    pub preset: Option<String>,
    /// Layered over the camera's `glad`.
    #[serde(default)]
    pub glad: ParamOverrides,
    #[serde(default)]
    pub threshold: Option<f32>,
    #[serde(default)]
    pub calibration: Option<PathBuf>,
    #[serde(default)]
    pub roi: Option<Roi>,
}

fn default_max_age() -> f64 {
    1000.0
}
fn default_queue() -> usize {
    8
}

impl CameraConfig {
    /// The camera as it inspects under each of its recipes (`None`: it has none): one
    /// flattened config per recipe, the recipe's keys over the camera's, no `recipes` left.
    pub fn recipe_views(&self) -> Vec<(Option<String>, CameraConfig)> {
        if self.recipes.is_empty() {
            return vec![(None, self.clone())];
        }
        self.recipes.iter().map(|r| (Some(r.name.clone()), self.with_recipe(r))).collect()
    }

    fn with_recipe(&self, r: &RecipeConfig) -> CameraConfig {
        let mut c = self.clone();
        c.recipes = Vec::new();
        c.active = None;
        if let Some(b) = &r.bundle {
            c.bundle = b.clone();
        }
        if r.preset.is_some() {
            c.preset = r.preset.clone();
        }
        c.glad = self.glad.merged(&r.glad);
        // A recipe's own threshold or calibration replaces both of the camera's (the verdict
        // rule is resolved per recipe, against the recipe's bundle).
        if r.threshold.is_some() || r.calibration.is_some() {
            c.threshold = r.threshold;
            c.calibration = r.calibration.clone();
        }
        if r.roi.is_some() {
            c.roi = r.roi;
        }
        c
    }

    /// The index of the recipe active at start (0 without recipes).
    pub fn active_recipe(&self) -> usize {
        self.active.as_ref().and_then(|a| self.recipes.iter().position(|r| &r.name == a)).unwrap_or(0)
    }

    /// The key that decides engine sharing.
    pub fn engine_key(&self) -> String {
        format!("{}|{:?}|{}", self.bundle.display(), self.preset, serde_json::to_string(&self.glad).unwrap_or_default())
    }

    /// The calibration file's calibration, if one is set.
    pub fn load_calibration(&self) -> Result<Option<Calibration>> {
        match &self.calibration {
            None => Ok(None),
            Some(p) => {
                let c = Config::load(p).with_context(|| format!("camera `{}`: calibration", self.name))?;
                match c.calibration {
                    Some(cal) => Ok(Some(cal)),
                    None => bail!("{}: no `calibration` in it (write one with `glad calibrate`)", p.display()),
                }
            }
        }
    }
}

/// The config's checks (`config::check`) with the file named in front.
/// Longest camera name.
pub const MAX_CAMERA_NAME: usize = 64;

struct Check<'a> {
    file: &'a Path,
}

impl Check<'_> {
    fn named(&self, r: Result<impl Sized>) -> Result<()> {
        r.map(|_| ()).map_err(|e| anyhow::anyhow!("{}: {e:#}", self.file.display()))
    }
    fn num(&self, key: &str, v: f64, lo: f64, hi: f64) -> Result<()> {
        self.named(check::number(&format!("key `{key}`"), v, lo, hi))
    }
    fn int(&self, key: &str, v: u64, lo: u64, hi: u64) -> Result<()> {
        self.named(check::int(&format!("key `{key}`"), v, lo, hi))
    }
    /// A frame rate: 0 (as fast as frames come) or 0.001 ..= `hi` (a period that fits a `Duration`).
    fn fps(&self, key: &str, v: f64, hi: f64) -> Result<()> {
        if v == 0.0 {
            return Ok(());
        }
        self.num(key, v, 0.001, hi).map_err(|e| anyhow::anyhow!("{e:#} (or 0)"))
    }
    fn fail(&self, key: &str, msg: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!("{}: key `{key}`: {msg}", self.file.display())
    }
}

impl StationConfig {
    /// The engine recipe of camera `i` (`engine::EngineSpec`: the same layering, noise and
    /// threshold rules as `glad inspect`). Its threshold is resolved per camera
    /// (`CamSettings`), so the spec carries none.
    /// `c` is camera `i` under one of its recipes (`CameraConfig::recipe_views`).
    pub fn engine_spec(&self, i: usize, c: &CameraConfig) -> EngineSpec {
        EngineSpec {
            bundle_dir: c.bundle.clone(),
            runtime: self.runtime.clone(),
            preset: c.preset.clone(),
            layers: vec![(format!("station config: key `cameras[{i}].glad.{{}}` (or its recipe's)"), c.glad.clone())],
            noise: self.noise.clone(),
            verdict: VerdictSpec::default(),
            trusted_keys: self.trusted_keys.clone(),
        }
    }

    pub fn load(path: &Path) -> Result<StationConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read station config", path.display()))?;
        Self::from_yaml(path, &text)
    }

    /// Parses and validates `text`; `path` names it in errors.
    pub fn from_yaml(path: &Path, text: &str) -> Result<StationConfig> {
        let c: StationConfig = parse_yaml(path, text)?;
        c.validate(path)?;
        Ok(c)
    }

    /// Checks every number and name; `file` names the source in errors.
    pub fn validate(&self, file: &Path) -> Result<()> {
        let ck = Check { file };
        let s = &self.scheduler;
        ck.num("scheduler.batch_window_ms", s.batch_window_ms, 0.0, 10_000.0)?;
        ck.int("scheduler.max_batch", s.max_batch as u64, 1, 64)?;
        ck.num("scheduler.frame_timeout_ms", s.frame_timeout_ms, 1.0, 600_000.0)?;
        ck.num("scheduler.backoff_initial_ms", s.backoff_initial_ms, 1.0, 600_000.0)?;
        ck.num("scheduler.backoff_max_ms", s.backoff_max_ms, s.backoff_initial_ms, 3_600_000.0)?;
        ck.int("scheduler.recent", s.recent as u64, 1, 1_000_000)?;
        ck.int("runtime.threads", self.runtime.threads as u64, 0, 1024)?;
        for (i, k) in self.trusted_keys.iter().enumerate() {
            crate::bundle::sign::read_public_key(k).map_err(|e| ck.fail(&format!("trusted_keys[{i}]"), format!("{e:#}")))?;
        }
        let r = &self.results;
        if r.dir.as_os_str().is_empty() {
            return Err(ck.fail("results.dir", "must not be empty"));
        }
        ck.int("results.jsonl_max_bytes", r.jsonl_max_bytes, 1024, u64::MAX)?;
        ck.int("results.jsonl_keep", r.jsonl_keep as u64, 0, 10_000)?;
        ck.int("results.quota_bytes", r.quota_bytes, 1, u64::MAX)?;
        // Checked against the file system's size when the store opens; this bounds typos.
        ck.int("results.min_free_bytes", r.min_free_bytes, 0, 1 << 50)?;
        ck.int("feedback.max_patches", self.feedback.max_patches as u64, 1, 10_000_000)?;
        ck.int("feedback.frames", self.feedback.frames as u64, 1, 10_000)?;
        let d = &self.drift;
        ck.int("drift.reference_frames", d.reference_frames as u64, 1, 100_000)?;
        ck.int("drift.window", d.window as u64, 1, 100_000)?;
        // 0 would make every wobble of a statistic an alarm (the floors below can be 0).
        ck.num("drift.sigmas", d.sigmas, 0.5, 1000.0)?;
        ck.num("drift.brightness_levels", d.brightness_levels, 0.0, 255.0)?;
        ck.num("drift.contrast_ratio", d.contrast_ratio, 0.0, 100.0)?;
        ck.num("drift.sharpness_drop", d.sharpness_drop, 0.01, 1.0)?;
        if self.cameras.is_empty() {
            return Err(ck.fail("cameras", "at least one camera"));
        }
        let mut names = BTreeSet::new();
        for (i, c) in self.cameras.iter().enumerate() {
            let k = |s: &str| format!("cameras[{i}].{s}");
            if !is_name(&c.name) {
                return Err(ck.fail(&k("name"), format!("`{}`: use letters, digits, - and _", c.name)));
            }
            // Camera names go into file names of stored images (with a time stamp and a suffix).
            if c.name.len() > MAX_CAMERA_NAME {
                return Err(ck.fail(&k("name"), format!("{} characters, at most {MAX_CAMERA_NAME}", c.name.len())));
            }
            if !names.insert(c.name.clone()) {
                return Err(ck.fail(&k("name"), format!("camera `{}` is defined twice", c.name)));
            }
            match &c.source {
                SourceConfig::Replay { fps, .. } => ck.fps(&k("source.replay.fps"), *fps, 10_000.0)?,
                SourceConfig::V4l2 { width, height, fps, .. } => {
                    ck.int(&k("source.v4l2.width"), *width as u64, 1, 16384)?;
                    ck.int(&k("source.v4l2.height"), *height as u64, 1, 16384)?;
                    ck.fps(&k("source.v4l2.fps"), *fps, 1000.0)?;
                }
                SourceConfig::Fake { width, height, fps, format, faults, .. } => {
                    ck.int(&k("source.fake.width"), *width as u64, 2, 16384)?;
                    ck.int(&k("source.fake.height"), *height as u64, 1, 16384)?;
                    ck.fps(&k("source.fake.fps"), *fps, 10_000.0)?;
                    if *format == Fourcc::Yuyv && width % 2 != 0 {
                        return Err(ck.fail(&k("source.fake.width"), "YUYV needs an even width"));
                    }
                    for (j, f) in faults.iter().enumerate() {
                        match f {
                            Fault::Resize { width, height, .. } => {
                                ck.int(&k(&format!("source.fake.faults[{j}].width")), *width as u64, 2, 16384)?;
                                ck.int(&k(&format!("source.fake.faults[{j}].height")), *height as u64, 1, 16384)?;
                            }
                            Fault::Brightness { delta, .. } => {
                                ck.num(&k(&format!("source.fake.faults[{j}].delta")), f64::from(*delta), -255.0, 255.0)?
                            }
                            Fault::Blur { sigma, .. } => {
                                ck.num(&k(&format!("source.fake.faults[{j}].sigma")), f64::from(*sigma), 0.1, 100.0)?
                            }
                            _ => {}
                        }
                    }
                }
            }
            let mut recipe_names = BTreeSet::new();
            for (j, r) in c.recipes.iter().enumerate() {
                let rk = k(&format!("recipes[{j}].name"));
                if !is_name(&r.name) || r.name.len() > 64 {
                    return Err(ck.fail(&rk, format!("`{}`: 1 to 64 letters, digits, - and _", r.name)));
                }
                if !recipe_names.insert(r.name.clone()) {
                    return Err(ck.fail(&rk, format!("recipe `{}` is defined twice", r.name)));
                }
                if r.bundle.is_none() && c.bundle.as_os_str().is_empty() {
                    return Err(ck.fail(&k(&format!("recipes[{j}].bundle")), "required (or set the camera's `bundle`)"));
                }
            }
            if c.recipes.is_empty() && c.bundle.as_os_str().is_empty() {
                return Err(ck.fail(&k("bundle"), "required (a bundle folder)"));
            }
            if let Some(a) = &c.active {
                if !recipe_names.contains(a) {
                    let known: Vec<&str> = c.recipes.iter().map(|r| r.name.as_str()).collect();
                    return Err(ck.fail(&k("active"), format!("no recipe `{a}` (recipes: {})", known.join(", "))));
                }
            }
            for (j, (_, view)) in c.recipe_views().iter().enumerate() {
                // The camera's own keys, then each recipe's; errors name where the value came from.
                let at = |key: &str| if c.recipes.is_empty() { k(key) } else { k(&format!("recipes[{j}].{key} (or the camera's)")) };
                if let Some(t) = view.threshold {
                    ck.named(check::threshold(&format!("key `{}`", at("threshold")), t))?;
                }
                if let Some(roi) = view.roi {
                    ck.int(&at("roi.width"), roi.width as u64, 1, 16384)?;
                    ck.int(&at("roi.height"), roi.height as u64, 1, 16384)?;
                    ck.int(&at("roi.x"), roi.x as u64, 0, 16384)?;
                    ck.int(&at("roi.y"), roi.y as u64, 0, 16384)?;
                }
                if let Some(p) = &view.preset {
                    crate::config::preset(p).map_err(|e| ck.fail(&at("preset"), format!("{e:#}")))?;
                }
                view.load_calibration().map_err(|e| ck.fail(&at("calibration"), format!("{e:#}")))?;
            }
            ck.num(&k("max_age_ms"), c.max_age_ms, 1.0, 3_600_000.0)?;
            ck.int(&k("queue"), c.queue as u64, 1, 100_000)?;
            if let Some(f) = c.max_fps {
                ck.num(&k("max_fps"), f, 0.001, 10_000.0)?;
            }
            if let Some(n) = c.every_nth {
                ck.int(&k("every_nth"), n, 1, 1_000_000)?;
            }
            if c.max_fps.is_some() && c.every_nth.is_some() {
                return Err(ck.fail(&k("max_fps"), "set max_fps or every_nth, not both"));
            }
        }
        if self.name.trim().is_empty() || self.name.len() > 64 {
            return Err(ck.fail("name", "a station name of 1 to 64 characters"));
        }
        let cameras: Vec<String> = self.cameras.iter().map(|c| c.name.clone()).collect();
        self.sinks.validate(file, &self.name, &cameras)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str =
        "results: {dir: out/x}\ncameras:\n  - name: cam0\n    bundle: onnx/tiny\n    source: {replay: {path: data, fps: 5}}\n";

    fn parse(text: &str) -> Result<StationConfig> {
        let p = Path::new("station.yaml");
        let c: StationConfig = parse_yaml(p, text)?;
        c.validate(p)?;
        Ok(c)
    }

    #[test]
    fn minimal_config_parses_with_defaults() {
        let c = parse(BASE).unwrap();
        assert_eq!(c.cameras[0].policy, Policy::Live);
        assert_eq!(c.scheduler.max_batch, 4);
        assert_eq!(c.results.jsonl_keep, 5);
    }

    #[test]
    fn bad_numbers_and_unknown_keys_name_file_and_key() {
        let cases = [
            (BASE.replace("fps: 5", "fps: .nan"), "cameras[0].source.replay.fps"),
            (BASE.replace("fps: 5", "fps: -1"), "cameras[0].source.replay.fps"),
            (format!("{BASE}    max_age_ms: 0\n"), "cameras[0].max_age_ms"),
            (format!("{BASE}    roi: {{x: 0, y: 0, width: 0, height: 4}}\n"), "cameras[0].roi.width"),
            (format!("{BASE}    every_nth: 0\n"), "cameras[0].every_nth"),
            (format!("{BASE}    max_fps: .inf\n"), "cameras[0].max_fps"),
            (format!("{BASE}    threshold: .nan\n"), "cameras[0].threshold"),
            // 0 and below make every frame anomalous, 1e40 every frame normal: refused, as by `glad inspect`.
            (format!("{BASE}    threshold: 0\n"), "cameras[0].threshold"),
            (format!("{BASE}    threshold: -1\n"), "cameras[0].threshold"),
            (format!("{BASE}    threshold: 1e40\n"), "cameras[0].threshold"),
            // A period of 1e20 s overflows a Duration (the camera thread panicked).
            (BASE.replace("fps: 5", "fps: 1e-20"), "cameras[0].source.replay.fps"),
            (BASE.replace("name: cam0", &format!("name: {}", "c".repeat(65))), "cameras[0].name"),
            (
                format!("{BASE}results: {{dir: x, min_free_bytes: 1000000000000000000}}\n").replace("results: {dir: out/x}\n", ""),
                "results.min_free_bytes",
            ),
            (format!("{BASE}scheduler: {{max_batch: 0}}\n"), "scheduler.max_batch"),
            (format!("{BASE}scheduler: {{batch_window_ms: -3}}\n"), "scheduler.batch_window_ms"),
            (format!("{BASE}scheduler: {{backoff_initial_ms: 100, backoff_max_ms: 50}}\n"), "scheduler.backoff_max_ms"),
            (format!("{BASE}    colour: red\n"), "cameras[0]"),
            (format!("{BASE}extra: 1\n"), "extra"),
            (format!("{BASE}  - name: cam0\n    bundle: b\n    source: {{replay: {{path: d, fps: 1}}}}\n"), "cameras[1].name"),
        ];
        for (text, key) in cases {
            let e = format!("{:#}", parse(&text).unwrap_err());
            assert!(e.starts_with("station.yaml") && e.contains(key), "{key}: {e}");
        }
    }
}
