//! What an installed glad depends on: log output shaped for its destination (terminal, file,
//! journal), closed bundles (`glad bundle pack`, `glad info`'s closure line), and the ONNX
//! Runtime library found next to the executable.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn glad() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_glad"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "warn,glad_edge=info")
        .env_remove("JOURNAL_STREAM")
        .env_remove("NO_COLOR")
        .env_remove("GLAD_LOG_FORMAT");
    c
}

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// A config whose `prefer: cuda` falls back to the CPU with a warning (no CUDA here).
fn warning_config(dir: &Path) -> PathBuf {
    let p = dir.join("cuda.yaml");
    std::fs::write(&p, "runtime:\n  execution:\n    provider: cuda\n    policy: prefer\n").unwrap();
    p
}

/// Runs `glad info` on onnx/tiny with stderr into a file; returns what it wrote there.
fn info_stderr_to_file(dir: &Path, envs: &[(&str, &str)], journal: bool) -> String {
    let log = dir.join("stderr.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = glad();
    cmd.args(["info", "--bundle"]).arg(repo("onnx/tiny")).arg("--config").arg(warning_config(dir));
    if journal {
        use std::os::unix::fs::MetadataExt;
        let m = file.metadata().unwrap();
        cmd.env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()));
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.stdout(Stdio::piped()).stderr(Stdio::from(file)).output().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(out.status.success(), "{text}");
    text
}

#[test]
fn logs_to_a_file_carry_no_escape_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let text = info_stderr_to_file(tmp.path(), &[], false);
    assert!(text.contains("WARN") && text.contains("INFO"), "{text}");
    assert!(!text.contains('\x1b'), "escape codes in a redirected log:\n{text:?}");
    assert!(!text.lines().any(|l| l.starts_with('<')), "journal prefixes without the journal:\n{text}");
}

#[test]
fn logs_to_the_journal_carry_priorities() {
    let tmp = tempfile::tempdir().unwrap();
    let text = info_stderr_to_file(tmp.path(), &[], true);
    assert!(!text.contains('\x1b'), "{text:?}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(!lines.is_empty());
    for l in &lines {
        assert!(
            l.starts_with("<3>") || l.starts_with("<4>") || l.starts_with("<6>") || l.starts_with("<7>"),
            "line without a priority: {l}"
        );
    }
    assert!(lines.iter().any(|l| l.starts_with("<4>") && l.contains("WARN")), "no warning at priority 4:\n{text}");
    assert!(lines.iter().any(|l| l.starts_with("<6>") && l.contains("ONNX Runtime loaded")), "no info at priority 6:\n{text}");
    // A JOURNAL_STREAM that names another stream (stderr redirected away from the journal) is ignored.
    let log = tmp.path().join("other.log");
    let file = std::fs::File::create(&log).unwrap();
    let out = glad()
        .args(["info", "--bundle"])
        .arg(repo("onnx/tiny"))
        .env("JOURNAL_STREAM", "1:2")
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .status()
        .unwrap();
    assert!(out.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.lines().any(|l| l.starts_with('<')), "{text}");
    // GLAD_LOG_FORMAT=journal asks for it explicitly.
    let text = info_stderr_to_file(tmp.path(), &[("GLAD_LOG_FORMAT", "journal")], false);
    assert!(text.lines().all(|l| l.starts_with('<')), "{text}");
}

/// Runs `glad info` with stderr on a pseudo-terminal; returns what the terminal received.
fn info_on_a_terminal(envs: &[(&str, &str)]) -> String {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two fresh descriptors; no name, termios or size given.
    let rc = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    assert_eq!(rc, 0, "openpty failed");
    // SAFETY: both descriptors were just opened and are owned here only.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut cmd = glad();
    cmd.args(["info", "--bundle"]).arg(repo("onnx/tiny")).stdout(Stdio::null()).stderr(Stdio::from(slave));
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    drop(cmd); // closes our copy of the slave, so reading ends when the child exits
    let mut reader = std::fs::File::from(master);
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break, // EIO once the child's side is closed
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
        }
    }
    assert!(child.wait().unwrap().success());
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn colour_on_a_terminal_unless_no_color() {
    let text = info_on_a_terminal(&[]);
    assert!(text.contains("ONNX Runtime loaded"), "{text:?}");
    assert!(text.contains("\x1b["), "no colour on a terminal: {text:?}");
    let text = info_on_a_terminal(&[("NO_COLOR", "1")]);
    assert!(text.contains("ONNX Runtime loaded"), "{text:?}");
    assert!(!text.contains('\x1b'), "colour despite NO_COLOR: {text:?}");
}

fn info(bundle: &Path) -> (bool, String, String) {
    let out = glad().args(["info", "--bundle"]).arg(bundle).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn pack_closes_a_bundle_that_shares_models() {
    let tmp = tempfile::tempdir().unwrap();
    let src = repo("onnx/pixel64-brick");
    let (ok, out, err) = info(&src);
    assert!(ok, "{err}");
    assert!(
        out.contains("closed      NO") && out.contains("../effnet-lite0/effnet_lite0.onnx") && out.contains("glad bundle pack"),
        "{out}"
    );

    let dst = tmp.path().join("brick");
    let out = glad().args(["bundle", "pack"]).arg(&src).arg(&dst).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("models.backbone.file: ../effnet-lite0/effnet_lite0.onnx -> shared/effnet-lite0/effnet_lite0.onnx"), "{text}");
    for f in [
        "bundle.yaml",
        "unet.onnx",
        "unet.weights.bin",
        "bank/layer0.npy",
        "shared/effnet-lite0/effnet_lite0.onnx",
        "shared/pixel64/adp_backbone.onnx",
        "MANIFEST.sha256",
    ] {
        assert!(dst.join(f).is_file(), "{f} missing");
    }
    // Moved elsewhere on its own, it loads, says it is closed, and keeps its calibration.
    let moved = tmp.path().join("elsewhere/brick");
    std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
    std::fs::rename(&dst, &moved).unwrap();
    let (ok, out, err) = info(&moved);
    assert!(ok, "{err}");
    assert!(out.contains("closed      yes") && out.contains("MANIFEST.sha256"), "{out}");
    let packed = std::fs::read_to_string(moved.join("bundle.yaml")).unwrap();
    assert!(packed.contains("threshold: 0.612") && !packed.contains("../"), "{packed}");

    // The hash list matches, and catches a changed file.
    let verify = |d: &Path| glad().args(["bundle", "verify"]).arg(d).output().unwrap();
    let out = verify(&moved);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let sums = std::fs::read_to_string(moved.join("MANIFEST.sha256")).unwrap();
    assert!(sums.lines().any(|l| l.ends_with("  shared/effnet-lite0/effnet_lite0.onnx")), "{sums}");
    std::fs::write(moved.join("bank/layer1.npy"), b"changed").unwrap();
    let out = verify(&moved);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("bank/layer1.npy: changed"));
    // An unpacked bundle is reported as such.
    let out = verify(&src);
    assert_eq!(out.status.code(), Some(2));

    // The destination must be new.
    let out = glad().args(["bundle", "pack"]).arg(&src).arg(&moved).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}

#[test]
fn pack_copies_the_external_data_of_a_shared_model() {
    // onnx/tiny with its UNet (unet.onnx + external unet.weights.bin) moved to a sibling folder.
    let tmp = tempfile::tempdir().unwrap();
    let (b, shared) = (tmp.path().join("b"), tmp.path().join("models"));
    std::fs::create_dir_all(&b).unwrap();
    std::fs::create_dir_all(&shared).unwrap();
    for e in std::fs::read_dir(repo("onnx/tiny")).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            let to = if name.starts_with("unet.") { shared.join(&name) } else { b.join(&name) };
            std::fs::copy(&p, to).unwrap();
        }
    }
    let m = std::fs::read_to_string(b.join("bundle.yaml")).unwrap();
    assert!(m.contains("file: unet.onnx"));
    std::fs::write(b.join("bundle.yaml"), m.replace("file: unet.onnx", "file: ../models/unet.onnx")).unwrap();
    let (ok, out, err) = info(&b);
    assert!(ok, "{err}");
    assert!(out.contains("closed      NO") && out.contains("models.unet.file = ../models/unet.onnx"), "{out}");

    let dst = tmp.path().join("closed");
    let out = glad().args(["bundle", "pack"]).arg(&b).arg(&dst).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dst.join("shared/models/unet.weights.bin").is_file(), "external data not copied");
    std::fs::remove_dir_all(&shared).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
    let (ok, out, err) = info(&dst);
    assert!(ok, "{err}");
    assert!(out.contains("closed      yes"), "{out}");
}

#[test]
fn onnx_runtime_is_found_next_to_the_executable() {
    use glad_edge::runtime::find_beside;
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("usr/bin");
    let lib = tmp.path().join("usr/lib/glad-edge");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::write(bin.join("glad"), "").unwrap();
    assert_eq!(find_beside(&bin.join("glad")), None);
    std::fs::write(bin.join("libonnxruntime.so.1.31.1"), "").unwrap();
    assert_eq!(find_beside(&bin.join("glad")), Some(bin.join("libonnxruntime.so.1.31.1")));
    std::fs::write(lib.join("libonnxruntime_providers_shared.so"), "").unwrap();
    std::fs::write(lib.join("libonnxruntime.so.1.31.1"), "").unwrap();
    assert_eq!(find_beside(&bin.join("glad")), Some(lib.join("libonnxruntime.so.1.31.1")));
    std::fs::write(lib.join("libonnxruntime.so"), "").unwrap();
    assert_eq!(find_beside(&bin.join("glad")), Some(lib.join("libonnxruntime.so")));
}
