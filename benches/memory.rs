//! Memory: peak RSS of `glad inspect` on onnx/tiny (the whole process, read from the kernel's
//! rusage of the child), and RSS growth of one engine over 1000 images.
//!
//! `cargo bench --bench memory -- BUNDLE...` measures instead each full-size bundle (e.g. one
//! from `scripts/export_bundle.py synthetic-sd14 --resolution 512`, and its `-fp16` copy):
//! peak RSS and wall time of `glad inspect` on one image at the bundle's resolution, batch 1,
//! 2 DDIM steps with ADP on, under `runtime.memory: fast` and `lean`, in one run.

use std::path::PathBuf;
use std::process::Command;

use glad_edge::bundle::Bundle;
use glad_edge::engine::{Engine, NoiseSource};
use glad_edge::glad::ParamOverrides;
use glad_edge::runtime::RuntimeConfig;
use ndarray::Axis;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Resident set size of this process in KiB (VmRSS).
fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok()).expect("VmRSS")
}

/// Peak RSS (KiB) of `glad inspect` with `args` (output to a temporary folder).
fn peak_rss_of_glad_inspect(args: &[&str]) -> u64 {
    let out = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_glad"))
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .arg("inspect")
        .args(args)
        .arg("--out")
        .arg(out.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("glad runs");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid out-pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4");
    let _ = child.try_wait();
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "glad inspect failed");
    usage.ru_maxrss as u64 // KiB on Linux
}

/// Peak RSS and wall time of one full-size inspection per memory plan.
fn full_size(bundles: &[String]) {
    let image = "data/textures/brick/test/stain/000.png";
    println!("| bundle | runtime.memory | peak RSS | wall time |");
    println!("|---|---|---|---|");
    for b in bundles {
        if !std::path::Path::new(b).join("bundle.yaml").is_file() {
            println!("{b}: no bundle there (scripts/export_bundle.py synthetic-sd14 --resolution 512 --out {b}); skipped");
            continue;
        }
        for memory in ["fast", "lean"] {
            let t0 = std::time::Instant::now();
            let peak = peak_rss_of_glad_inspect(&[image, "--bundle", b, "--steps", "2", "--batch", "1", "--memory", memory]);
            println!("| {b} | {memory} | {:.2} GiB | {:.0} s |", peak as f64 / (1024.0 * 1024.0), t0.elapsed().as_secs_f64());
        }
    }
}

fn main() {
    let bundles: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if !bundles.is_empty() {
        return full_size(&bundles);
    }
    let peak = peak_rss_of_glad_inspect(&["data/textures/brick/test/scratch", "--bundle", "onnx/tiny", "--batch", "2", "--threads", "2"]);
    println!("peak RSS of `glad inspect` (onnx/tiny, 4 images, batch 2): {:.1} MiB (target <= 300 MiB)", peak as f64 / 1024.0);

    let rt = RuntimeConfig { threads: 2, ..Default::default() };
    let bundle = Bundle::load(&root().join("onnx/tiny"), &rt).unwrap();
    // Short schedule, ADP off: the allocation pattern of every stage, fast enough for 1000 images.
    let params =
        bundle.manifest.defaults.merged(&ParamOverrides { steps: Some(2), tau: Some(0.0), ..Default::default() }).resolve(128).unwrap();
    let mut engine = Engine::new(bundle, params).unwrap();
    let images: ndarray::ArrayD<f32> = ndarray_npy::read_npy(root().join("tests/golden/parity/adp_threshold/images.npy")).unwrap();
    let images = images.into_dimensionality::<ndarray::Ix4>().unwrap();
    let noise = NoiseSource::Seeded(0);
    let one = |i: usize| images.select(Axis(0), &[i % 3]);
    let mut at = Vec::new();
    for i in 0..1000 {
        let x = one(i);
        let n = noise.draw(&[i], engine.latent_shape()).unwrap();
        let (out, _) = engine.inspect(x.view(), &n).unwrap();
        std::hint::black_box(out);
        if i == 99 || i == 999 {
            at.push(rss_kib());
        }
    }
    let growth = at[1] as f64 - at[0] as f64;
    println!(
        "engine RSS after 100 images {:.1} MiB, after 1000 {:.1} MiB: growth {:+.1} MiB ({:+.2}%)",
        at[0] as f64 / 1024.0,
        at[1] as f64 / 1024.0,
        growth / 1024.0,
        100.0 * growth / at[0] as f64
    );
}
