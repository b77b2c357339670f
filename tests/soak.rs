//! Soak: many frames through the pipeline (decode ‖ engine ‖ sink with heatmap PNGs) on
//! onnx/tiny with small settings (2 steps, ADP off). RSS, open file descriptors and threads are
//! read from /proc after a warm-up and at the end; RSS may grow at most 1%, descriptors and
//! threads not at all. Ignored by default (it takes minutes):
//!
//! ```sh
//! GLAD_SOAK_FRAMES=10000 cargo test --release --test soak -- --ignored --nocapture
//! ```

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use glad_edge::bundle::Bundle;
use glad_edge::engine::{Engine, NoiseSource};
use glad_edge::glad::ParamOverrides;
use glad_edge::runtime::RuntimeConfig;
use glad_edge::{imaging, pipeline};

#[derive(Debug, Clone, Copy)]
struct Usage {
    rss_kib: u64,
    fds: usize,
    threads: u64,
}

fn usage() -> Usage {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /proc/self/status"))
    };
    let fds = std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd").count();
    Usage { rss_kib: field("VmRSS:"), fds, threads: field("Threads:") }
}

#[test]
#[ignore]
fn soak_frames_through_the_pipeline_without_growth() {
    let frames: usize = std::env::var("GLAD_SOAK_FRAMES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let warmup = (frames / 10).clamp(20, 500);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rt = RuntimeConfig { threads: 2, ..RuntimeConfig::default() };
    let bundle = Bundle::load(&root.join("onnx/tiny"), &rt).unwrap();
    let o = ParamOverrides { steps: Some(2), tau: Some(0.0), ..bundle.manifest.defaults.clone() };
    let params = o.resolve(bundle.manifest.models.backbone.resolution).unwrap();
    let mut engines = vec![Engine::new(bundle, params).unwrap()];
    let images: Vec<PathBuf> = ["good/000.png", "good/001.png", "stain/000.png", "scratch/000.png"]
        .iter()
        .map(|p| root.join("data/textures/brick/test").join(p))
        .collect();
    let files: Vec<PathBuf> = (0..frames).map(|i| images[i % images.len()].clone()).collect();
    let out = tempfile::tempdir().unwrap();
    let marks: Mutex<Vec<(usize, Usage)>> = Mutex::new(Vec::new());
    let mut done = 0usize;
    let mut failed = 0usize;
    let t0 = std::time::Instant::now();
    pipeline::run(&mut engines, &NoiseSource::Seeded(0), &files, 2, true, |item| {
        done += 1;
        match &item.result {
            Ok((insp, _)) => {
                let img = item.image.as_ref().unwrap();
                let (lo, hi) = imaging::heat_range(&insp.map, None);
                let path = out.path().join(format!("{}.heatmap.png", item.index % 8));
                imaging::save_png(&imaging::heatmap_overlay(img, insp.map.view(), lo, hi), &path).unwrap();
            }
            Err(_) => failed += 1,
        }
        if done == warmup || done == frames {
            marks.lock().unwrap().push((done, usage()));
        }
        if done % 500 == 0 {
            eprintln!("{done} frames, {:.1} frames/s, {:?}", done as f64 / t0.elapsed().as_secs_f64(), usage());
        }
    })
    .unwrap();
    assert_eq!((done, failed), (frames, 0));
    let marks = marks.into_inner().unwrap();
    let (a, b) = (marks[0].1, marks[marks.len() - 1].1);
    let growth = (b.rss_kib as f64 - a.rss_kib as f64) / a.rss_kib as f64;
    eprintln!(
        "soak: {frames} frames in {:.0} s; after {warmup}: {a:?}; at the end: {b:?}; RSS growth {:+.2}%",
        t0.elapsed().as_secs_f64(),
        100.0 * growth
    );
    assert!(growth <= 0.01, "RSS grew {:.2}% after warm-up", 100.0 * growth);
    assert!(b.fds <= a.fds, "file descriptors grew: {} → {}", a.fds, b.fds);
    assert!(b.threads <= a.threads, "threads grew: {} → {}", a.threads, b.threads);
}
