//! The station's Prometheus metrics (prometheus-client): one registry, written by sources,
//! the scheduler and the sinks, rendered by `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CameraLabel {
    pub camera: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FrameLabel {
    pub camera: String,
    /// `normal`, `anomalous`, `none` (no threshold) or `error`.
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub camera: String,
    /// `decode`, `engine`, `capture`, `stale`, `corrupt_frame`, ...
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    /// `capture_to_verdict`, `decode`, `engine`, `sinks`.
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    pub model: String,
    pub provider: String,
    pub precision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabel {
    pub component: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    pub queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    pub sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabel {
    pub camera: String,
    /// `brightness`, `contrast`, `sharpness` or `score`.
    pub alarm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FeedbackLabel {
    pub camera: String,
    /// `good` or `defect`.
    pub label: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

#[derive(Debug)]
pub struct Metrics {
    pub frames: Family<FrameLabel, Counter>,
    pub errors: Family<ErrorLabel, Counter>,
    pub dropped: Family<CameraLabel, Counter>,
    pub reconnects: Family<CameraLabel, Counter>,
    pub queue_depth: Family<QueueLabel, Gauge>,
    pub stage_seconds: Family<StageLabel, Histogram, fn() -> Histogram>,
    /// 1 per model, labelled with the execution provider and precision it got.
    pub model_info: Family<ModelLabel, Gauge>,
    pub model_load_seconds: Family<ComponentLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub store_bytes: Gauge,
    pub degraded: Family<ComponentLabel, Gauge>,
    pub sink_dropped: Family<SinkLabel, Counter>,
    pub sink_failures: Family<SinkLabel, Counter>,
    pub sink_queued: Family<SinkLabel, Gauge>,
    /// 1 while a drift alarm of a camera fires.
    pub drift: Family<DriftLabel, Gauge>,
    /// Feedback taken, by camera and label.
    pub feedback: Family<FeedbackLabel, Counter>,
    /// Patches in a camera's feedback overlay.
    pub overlay_patches: Family<CameraLabel, Gauge>,
    /// Captured frames that got no record (not inspected before the drain deadline).
    pub frames_lost: Counter,
    registry: Registry,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("glad");
        let m = Metrics {
            frames: Family::default(),
            errors: Family::default(),
            dropped: Family::default(),
            reconnects: Family::default(),
            queue_depth: Family::default(),
            stage_seconds: Family::new_with_constructor(latency_histogram),
            model_info: Family::default(),
            model_load_seconds: Family::default(),
            store_bytes: Gauge::default(),
            degraded: Family::default(),
            sink_dropped: Family::default(),
            sink_failures: Family::default(),
            sink_queued: Family::default(),
            drift: Family::default(),
            feedback: Family::default(),
            overlay_patches: Family::default(),
            frames_lost: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("frames", "Frames inspected, by camera and verdict", m.frames.clone());
        registry.register("errors", "Failed frames and capture errors, by camera and kind", m.errors.clone());
        registry.register("dropped_frames", "Frames dropped by the live policy or the rate limit", m.dropped.clone());
        registry.register("reconnects", "Camera reconnects", m.reconnects.clone());
        registry.register("queue_depth", "Items waiting in a station queue", m.queue_depth.clone());
        registry.register("stage_seconds", "Latency per stage", m.stage_seconds.clone());
        registry.register("model_info", "The execution provider and precision each model got", m.model_info.clone());
        registry.register("model_load_seconds", "Time to load and warm up each bundle", m.model_load_seconds.clone());
        registry.register("results_store_bytes", "Bytes in the results folder", m.store_bytes.clone());
        registry.register("degraded", "1 while a component works in a degraded way", m.degraded.clone());
        registry.register("sink_dropped", "Results a sink dropped (queue or outbox full)", m.sink_dropped.clone());
        registry.register("sink_failures", "Failed deliveries of a sink (retried or dropped)", m.sink_failures.clone());
        registry.register("sink_queued", "Results waiting in a sink's queue or outbox", m.sink_queued.clone());
        registry.register("drift", "1 while a drift alarm fires (never changes a verdict)", m.drift.clone());
        registry.register("feedback", "Operator feedback taken, by camera and label", m.feedback.clone());
        registry.register("overlay_patches", "Patches in the camera's feedback overlay of its feature bank", m.overlay_patches.clone());
        registry.register(
            "frames_lost",
            "Captured frames that got no record (not inspected before the drain deadline)",
            m.frames_lost.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// The same metrics in the Prometheus text format (0.0.4), which `promtool check metrics`
    /// lints clean: a counter family is named with its `_total` suffix in `# HELP` and
    /// `# TYPE` (OpenMetrics names the family without it), and the OpenMetrics-only `# EOF`
    /// and `# UNIT` lines are left out.
    pub fn render_prometheus(&self) -> String {
        prometheus_text(&self.render())
    }

    pub fn camera(camera: &str) -> CameraLabel {
        CameraLabel { camera: camera.to_string() }
    }
}

/// OpenMetrics text → Prometheus text (see [`Metrics::render_prometheus`]).
pub fn prometheus_text(open_metrics: &str) -> String {
    let counters: std::collections::BTreeSet<&str> =
        open_metrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters.contains(name).then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line).trim_end());
        out.push('\n');
    }
    out
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_prefixed_families_with_labels() {
        let m = Metrics::new();
        m.frames.get_or_create(&FrameLabel { camera: "cam0".into(), verdict: "normal".into() }).inc();
        m.stage_seconds.get_or_create(&StageLabel { stage: "engine".into() }).observe(0.25);
        let text = m.render();
        assert!(text.contains("glad_frames_total{camera=\"cam0\",verdict=\"normal\"} 1"), "{text}");
        assert!(
            text.contains("glad_stage_seconds_bucket{le=\"0.256\",stage=\"engine\"} 1")
                || text.contains("glad_stage_seconds_count{stage=\"engine\"} 1"),
            "{text}"
        );
    }
}
