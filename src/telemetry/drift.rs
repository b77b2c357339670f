//! The drift alarm: per camera, rolling statistics of the frames that were not NG (mean
//! brightness, contrast, sharpness and the anomaly score) against a reference: the first
//! `reference_frames` such frames after the start (the image statistics), and the
//! calibration's normal scores when it has them. It only reports; verdicts never change.
//!
//! The rule (README "Drift alarm"), on the mean of the last `window` frames:
//! - `brightness`: |mean − reference mean| > max(`sigmas` × reference std, `brightness_levels`)
//! - `contrast`: |mean − reference mean| > max(`sigmas` × reference std, `contrast_ratio` × reference mean)
//! - `sharpness` (blur): mean < (1 − `sharpness_drop`) × reference mean and below it by more
//!   than `sigmas` × reference std
//! - `score`: the window's median score > normal mean + `sigmas` × normal std (the
//!   calibration's, else the reference frames'; the std at least 1 % of the mean)
//!
//! An alarm clears as soon as its statistic is back inside its bound.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::imaging::FrameStats;

/// The `drift:` section of the station config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// Off: no statistics, no alarm.
    pub enabled: bool,
    /// Frames (not NG) after the start whose statistics are the reference.
    pub reference_frames: usize,
    /// Frames in the rolling window.
    pub window: usize,
    /// Spread of the reference, in standard deviations, a statistic may move.
    pub sigmas: f64,
    /// Smallest brightness shift that fires, in gray levels (0-255).
    pub brightness_levels: f64,
    /// Smallest contrast change that fires, as a fraction of the reference contrast.
    pub contrast_ratio: f64,
    /// Blur: the sharpness falls by more than this fraction of the reference.
    pub sharpness_drop: f64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            enabled: true,
            reference_frames: 30,
            window: 10,
            sigmas: 4.0,
            brightness_levels: 10.0,
            contrast_ratio: 0.25,
            sharpness_drop: 0.4,
        }
    }
}

/// Mean and standard deviation.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Spread {
    pub mean: f64,
    pub std: f64,
}

impl Spread {
    fn of(v: impl Iterator<Item = f64> + Clone) -> Spread {
        let n = v.clone().count().max(1) as f64;
        let mean = v.clone().sum::<f64>() / n;
        let var = v.map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
        Spread { mean, std: var.max(0.0).sqrt() }
    }
}

/// A camera's drift state as the station reports it (`/api/cameras`, the live page).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DriftStatus {
    /// False until the reference frames are in.
    pub armed: bool,
    /// The alarms firing now (`brightness`, `contrast`, `sharpness`, `score`).
    pub alarms: Vec<String>,
    /// The window's means (`score`: its median).
    pub window: Option<Window>,
    pub reference: Option<Reference>,
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Window {
    pub brightness: f64,
    pub contrast: f64,
    pub sharpness: f64,
    pub score: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Reference {
    pub brightness: Spread,
    pub contrast: Spread,
    pub sharpness: Spread,
    /// The normal scores (the calibration's when it has them).
    pub score: Option<Spread>,
}

/// One camera's monitor.
#[derive(Debug, Clone)]
pub struct DriftMonitor {
    cfg: DriftConfig,
    calibration: Option<Spread>,
    first: Vec<(FrameStats, Option<f64>)>,
    reference: Option<Reference>,
    window: VecDeque<(FrameStats, Option<f64>)>,
    status: DriftStatus,
}

impl DriftMonitor {
    /// `normal_scores`: the calibration's normal score distribution, when it recorded one.
    pub fn new(cfg: DriftConfig, normal_scores: Option<Spread>) -> DriftMonitor {
        DriftMonitor {
            cfg,
            calibration: normal_scores,
            first: Vec::new(),
            reference: None,
            window: VecDeque::new(),
            status: DriftStatus::default(),
        }
    }

    pub fn status(&self) -> &DriftStatus {
        &self.status
    }

    /// Adds an NG frame. The reference is learnt from frames that were not NG only, but once
    /// it is armed the image statistics of NG frames count too: a camera gone grossly wrong
    /// (over-exposed, out of focus) makes every frame NG, and the alarm must say why. Their
    /// scores stay out of the score statistic (a defect's score is not drift).
    pub fn observe_ng(&mut self, stats: FrameStats) -> Option<Vec<String>> {
        self.reference?;
        self.observe_window(stats, None)
    }

    /// Adds a frame that was not NG; returns the alarms when they changed.
    pub fn observe(&mut self, stats: FrameStats, score: Option<f32>) -> Option<Vec<String>> {
        let score = score.map(f64::from).filter(|s| s.is_finite());
        if self.reference.is_some() {
            return self.observe_window(stats, score);
        }
        self.first.push((stats, score));
        if self.first.len() >= self.cfg.reference_frames.max(1) {
            let f = &self.first;
            let scores: Vec<f64> = f.iter().filter_map(|x| x.1).collect();
            let learned = (!scores.is_empty()).then(|| Spread::of(scores.iter().copied()));
            let r = Reference {
                brightness: Spread::of(f.iter().map(|x| x.0.brightness)),
                contrast: Spread::of(f.iter().map(|x| x.0.contrast)),
                sharpness: Spread::of(f.iter().map(|x| x.0.sharpness)),
                score: self.calibration.or(learned),
            };
            self.reference = Some(r);
            self.first = Vec::new();
            self.status.armed = true;
            self.status.reference = Some(r);
        }
        None
    }

    fn observe_window(&mut self, stats: FrameStats, score: Option<f64>) -> Option<Vec<String>> {
        let r = self.reference?;
        self.window.push_back((stats, score));
        while self.window.len() > self.cfg.window.max(1) {
            self.window.pop_front();
        }
        if self.window.len() < self.cfg.window.max(1) {
            return None;
        }
        let n = self.window.len() as f64;
        let mean = |f: fn(&FrameStats) -> f64| self.window.iter().map(|x| f(&x.0)).sum::<f64>() / n;
        let mut scores: Vec<f64> = self.window.iter().filter_map(|x| x.1).collect();
        scores.sort_by(f64::total_cmp);
        let w = Window {
            brightness: mean(|s| s.brightness),
            contrast: mean(|s| s.contrast),
            sharpness: mean(|s| s.sharpness),
            score: (!scores.is_empty()).then(|| scores[scores.len() / 2]),
        };
        let k = self.cfg.sigmas;
        let mut alarms = Vec::new();
        if (w.brightness - r.brightness.mean).abs() > (k * r.brightness.std).max(self.cfg.brightness_levels) {
            alarms.push("brightness".to_string());
        }
        if (w.contrast - r.contrast.mean).abs() > (k * r.contrast.std).max(self.cfg.contrast_ratio * r.contrast.mean) {
            alarms.push("contrast".to_string());
        }
        if w.sharpness < (1.0 - self.cfg.sharpness_drop) * r.sharpness.mean && r.sharpness.mean - w.sharpness > k * r.sharpness.std {
            alarms.push("sharpness".to_string());
        }
        if let (Some(s), Some(ref_s)) = (w.score, r.score) {
            if s > ref_s.mean + k * ref_s.std.max(0.01 * ref_s.mean.abs()) {
                alarms.push("score".to_string());
            }
        }
        self.status.window = Some(w);
        let changed = alarms != self.status.alarms;
        self.status.alarms = alarms;
        changed.then(|| self.status.alarms.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A camera whose every frame turns NG (brightness x2) still raises the alarm that says why.
    #[test]
    fn ng_frames_feed_the_image_statistics_once_armed() {
        let mut m = DriftMonitor::new(DriftConfig::default(), None);
        // NG frames before the reference is learnt are not part of it.
        assert!(m.observe_ng(st(250.0, 30.0, 400.0)).is_none());
        assert!(!m.status().armed);
        for i in 0..30 {
            m.observe(st(100.0 + f64::from(i % 3), 30.0, 400.0), Some(0.5));
        }
        assert!(m.status().armed);
        assert!((m.status().reference.unwrap().brightness.mean - 101.0).abs() < 1.0);
        let fired = (0..10).find_map(|_| m.observe_ng(st(200.0, 30.0, 400.0)));
        assert_eq!(fired, Some(vec!["brightness".to_string()]));
    }

    fn st(b: f64, c: f64, s: f64) -> FrameStats {
        FrameStats { brightness: b, contrast: c, sharpness: s }
    }

    #[test]
    fn a_brightness_step_fires_within_the_window_and_noise_does_not() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut m = DriftMonitor::new(DriftConfig::default(), Some(Spread { mean: 0.5, std: 0.05 }));
        let mut fired = 0;
        for _ in 0..1000 {
            let f = st(120.0 + rng.random_range(-3.0..3.0), 30.0 + rng.random_range(-2.0..2.0), 400.0 + rng.random_range(-40.0..40.0));
            if m.observe(f, Some(0.5 + rng.random_range(-0.05f32..0.05))).is_some() {
                fired += 1;
            }
        }
        assert_eq!(fired, 0, "{:?}", m.status());
        let mut at = None;
        for i in 0..20 {
            if let Some(a) = m.observe(st(160.0, 30.0, 400.0), Some(0.5)) {
                assert_eq!(a, vec!["brightness".to_string()]);
                at = Some(i);
                break;
            }
        }
        assert!(at.is_some_and(|i| i < 10), "{at:?}");
        // Back to normal: the alarm clears within a window.
        let cleared = (0..10).any(|_| m.observe(st(120.0, 30.0, 400.0), Some(0.5)).is_some_and(|a| a.is_empty()));
        assert!(cleared);
    }

    #[test]
    fn blur_fires_sharpness() {
        let mut m = DriftMonitor::new(DriftConfig::default(), None);
        for i in 0..40 {
            m.observe(st(100.0, 20.0, 300.0 + f64::from(i % 5)), Some(1.0));
        }
        assert!(m.status().armed && m.status().alarms.is_empty());
        let fired = (0..10).find_map(|i| m.observe(st(100.0, 20.0, 50.0), Some(1.0)).map(|a| (i, a)));
        assert_eq!(fired.map(|f| f.1), Some(vec!["sharpness".to_string()]));
    }
}
