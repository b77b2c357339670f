//! Memory: peak RSS of `glad inspect` on onnx/tiny (the whole process, read from the kernel's
//! rusage of the child), and RSS growth of one engine over 1000 images.

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

fn peak_rss_of_glad_inspect() -> u64 {
    let out = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_glad"))
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .args(["inspect", "data/textures/brick/test/scratch", "--bundle", "onnx/tiny", "--batch", "2", "--threads", "2", "--out"])
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

fn main() {
    let peak = peak_rss_of_glad_inspect();
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
