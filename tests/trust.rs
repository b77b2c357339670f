//! Trusting what runs: closed bundles verify whole (every file listed and matching, nothing
//! else present, no links out, bounded reads), `pack` never follows a link out of its source
//! nor loops, loads refuse a closed bundle that no longer matches, `bundle_hash` covers every
//! file, signatures (good, tampered, unsigned, wrongly signed) and a station's `trusted_keys`,
//! and no ONNX Runtime telemetry: a run writes nothing under $HOME.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn glad(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_glad"));
    c.current_dir(env!("CARGO_MANIFEST_DIR")).env("RUST_LOG", "warn,glad_edge=info").env_remove("GLAD_SIGN_PASSWORD");
    for a in args {
        c.arg(a);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A packed copy of onnx/pixel64-brick (it shares models, so pack copies them in).
fn packed(tmp: &Path, name: &str) -> PathBuf {
    let dst = tmp.join(name);
    let o = glad(&[&"bundle", &"pack", &repo("onnx/pixel64-brick"), &dst]);
    assert!(o.status.success(), "{}", text(&o));
    dst
}

fn verify(dir: &Path) -> (bool, String) {
    let o = glad(&[&"bundle", &"verify", &dir]);
    (o.status.success(), text(&o))
}

#[test]
fn verify_walks_the_whole_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let b = packed(tmp.path(), "b");
    let (ok, out) = verify(&b);
    assert!(ok && out.contains("whole:"), "{out}");
    let list = std::fs::read_to_string(b.join("MANIFEST.sha256")).unwrap();

    // An empty hash list does not pass.
    std::fs::write(b.join("MANIFEST.sha256"), "").unwrap();
    let (ok, out) = verify(&b);
    assert!(!ok && out.contains("lists no file") && out.contains("unet.onnx: present but not listed"), "{out}");

    // Swapped UNet weights whose line was removed do not pass.
    let without: String = list.lines().filter(|l| !l.ends_with("  unet.onnx")).map(|l| format!("{l}\n")).collect();
    std::fs::write(b.join("MANIFEST.sha256"), &without).unwrap();
    std::fs::write(b.join("unet.onnx"), b"other weights").unwrap();
    let (ok, out) = verify(&b);
    assert!(!ok && out.contains("unet.onnx: present but not listed"), "{out}");

    // A line naming a device or a path outside the bundle is refused at once, and nothing is read
    // there (a read of /dev/zero would never end).
    let started = Instant::now();
    let hash = "0".repeat(64);
    std::fs::write(b.join("MANIFEST.sha256"), format!("{list}{hash}  /dev/zero\n{hash}  ../b/bundle.yaml\n")).unwrap();
    let (ok, out) = verify(&b);
    assert!(started.elapsed() < Duration::from_secs(20), "verify took {:?}", started.elapsed());
    assert!(!ok && out.contains("`/dev/zero` is not a plain path") && out.contains("`../b/bundle.yaml` is not a plain path"), "{out}");

    // Links and unlisted files are reported.
    std::fs::write(b.join("MANIFEST.sha256"), &list).unwrap();
    let (ok, out) = verify(&b);
    assert!(!ok && out.contains("unet.onnx: changed"), "{out}");
    let c = packed(tmp.path(), "c");
    std::os::unix::fs::symlink("/etc/hostname", c.join("extra")).unwrap();
    std::fs::write(c.join("bank/new.npy"), b"x").unwrap();
    let (ok, out) = verify(&c);
    assert!(!ok && out.contains("extra: a symbolic link") && out.contains("bank/new.npy: present but not listed"), "{out}");
}

#[test]
fn pack_never_follows_a_link_out_nor_loops() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for e in std::fs::read_dir(repo("onnx/tiny")).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, src.join(p.file_name().unwrap())).unwrap();
        }
    }
    // A loop: a link to the bundle folder itself.
    std::fs::create_dir(src.join("sub")).unwrap();
    std::os::unix::fs::symlink(&src, src.join("sub/loop")).unwrap();
    let o = glad(&[&"bundle", &"pack", &src, &tmp.path().join("d1")]);
    assert!(!o.status.success() && text(&o).contains("sub/loop: a symbolic link"), "{}", text(&o));
    assert!(!tmp.path().join("d1").exists());
    std::fs::remove_file(src.join("sub/loop")).unwrap();
    // A link to an outside folder.
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), b"s").unwrap();
    std::os::unix::fs::symlink(&outside, src.join("sub/out")).unwrap();
    let o = glad(&[&"bundle", &"pack", &src, &tmp.path().join("d2")]);
    assert!(!o.status.success() && text(&o).contains("sub/out: a symbolic link"), "{}", text(&o));
    std::fs::remove_file(src.join("sub/out")).unwrap();
    // A link to a file inside the bundle is packed as that file.
    std::os::unix::fs::symlink(src.join("bundle.yaml"), src.join("sub/copy.yaml")).unwrap();
    let o = glad(&[&"bundle", &"pack", &src, &tmp.path().join("d3")]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::symlink_metadata(tmp.path().join("d3/sub/copy.yaml")).unwrap().file_type().is_file());
    assert!(verify(&tmp.path().join("d3")).0);
    // No temporary folder is left behind by the failed packs.
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.iter().all(|n| !n.to_string_lossy().contains("packing")), "{left:?}");
}

#[test]
fn a_closed_bundle_that_changed_is_refused_at_load_and_its_hash_covers_every_file() {
    let tmp = tempfile::tempdir().unwrap();
    let b = packed(tmp.path(), "b");
    let h0 = glad_edge::bundle::content_hash(&b).unwrap();
    let o = glad(&[&"info", &"--bundle", &b]);
    assert!(o.status.success(), "{}", text(&o));
    // bundle_hash covers files in subfolders (the bank).
    let bank = b.join("bank/layer0.npy");
    let mut bytes = std::fs::read(&bank).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    std::fs::write(&bank, &bytes).unwrap();
    assert_ne!(glad_edge::bundle::content_hash(&b).unwrap(), h0);
    // Loading it is refused, naming the file.
    let o = glad(&[&"info", &"--bundle", &b]);
    assert!(!o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("bank/layer0.npy: changed") && t.contains("refusing to load"), "{t}");
    // An open bundle says so.
    let o = glad(&[&"info", &"--bundle", &repo("onnx/tiny")]);
    assert!(text(&o).contains("OPEN: no MANIFEST.sha256"), "{}", text(&o));
}

#[test]
fn signed_bundles_good_tampered_unsigned_and_wrongly_signed() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let o = glad(&[&"bundle", &"keygen", &t.join("line")]);
    assert!(o.status.success(), "{}", text(&o));
    let o = glad(&[&"bundle", &"keygen", &t.join("other")]);
    assert!(o.status.success(), "{}", text(&o));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(t.join("line.key")).unwrap().permissions().mode() & 0o777, 0o600);
    // keygen never overwrites.
    assert!(!glad(&[&"bundle", &"keygen", &t.join("line")]).status.success());

    let good = packed(t, "good");
    let o = glad(&[&"bundle", &"sign", &good, &"--key", &t.join("line.key")]);
    assert!(o.status.success(), "{}", text(&o));
    let check = |dir: &Path, key: &str| glad(&[&"bundle", &"verify", &dir, &"--key", &t.join(key)]);
    let o = check(&good, "line.pub");
    assert!(o.status.success() && text(&o).contains("signed: by the key"), "{}", text(&o));
    // Wrongly signed (another key).
    let o = check(&good, "other.pub");
    assert!(!o.status.success() && text(&o).contains("verifies with no trusted key"), "{}", text(&o));
    // Unsigned.
    let unsigned = packed(t, "unsigned");
    let o = check(&unsigned, "line.pub");
    assert!(!o.status.success() && text(&o).contains("not signed"), "{}", text(&o));
    // Tampered after signing: a file changed and its line rewritten to match.
    let tampered = packed(t, "tampered");
    assert!(glad(&[&"bundle", &"sign", &tampered, &"--key", &t.join("line.key")]).status.success());
    std::fs::write(tampered.join("unet.onnx"), b"other").unwrap();
    let list = std::fs::read_to_string(tampered.join("MANIFEST.sha256")).unwrap();
    let h = glad_edge::bundle::pack::sha256_file(&tampered.join("unet.onnx")).unwrap();
    let list: String =
        list.lines().map(|l| if l.ends_with("  unet.onnx") { format!("{h}  unet.onnx\n") } else { format!("{l}\n") }).collect();
    std::fs::write(tampered.join("MANIFEST.sha256"), list).unwrap();
    assert!(verify(&tampered).0, "the list matches the files again");
    let o = check(&tampered, "line.pub");
    assert!(!o.status.success() && text(&o).contains("verifies with no trusted key"), "{}", text(&o));
    // A signature over a bundle that does not verify whole cannot be made.
    let o = glad(&[&"bundle", &"sign", &repo("onnx/tiny"), &"--key", &t.join("line.key")]);
    assert!(!o.status.success() && text(&o).contains("only a closed bundle can be signed"), "{}", text(&o));

    // The engine spec a station builds: with trusted keys only the good bundle loads.
    let rt = glad_edge::runtime::RuntimeConfig { threads: 1, ..Default::default() };
    let spec = |dir: &Path, keys: Vec<PathBuf>| glad_edge::engine::EngineSpec {
        bundle_dir: dir.to_path_buf(),
        runtime: rt.clone(),
        preset: None,
        layers: vec![],
        noise: Default::default(),
        verdict: Default::default(),
        trusted_keys: keys,
    };
    let keys = vec![t.join("other.pub"), t.join("line.pub")];
    assert!(spec(&good, keys.clone()).load_bundle().is_ok());
    for (dir, why) in [(&unsigned, "not signed"), (&tampered, "no trusted key")] {
        let e = format!("{:#}", spec(dir, keys.clone()).load_bundle().err().unwrap());
        assert!(e.contains(why), "{e}");
    }
    let e = format!("{:#}", spec(&good, vec![t.join("other.pub")]).load_bundle().err().unwrap());
    assert!(e.contains("no trusted key"), "{e}");
    let e = format!("{:#}", spec(&repo("onnx/tiny"), keys).load_bundle().err().unwrap());
    assert!(e.contains("not closed"), "{e}");
}

#[test]
fn a_run_writes_nothing_under_home_and_logs_no_telemetry_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let out_dir = tmp.path().join("out");
    let o = Command::new(env!("CARGO_BIN_EXE_glad"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("HOME", &home)
        .env("RUST_LOG", "info")
        .args(["inspect", "data/textures/brick/test/good/000.png", "--bundle", "onnx/tiny", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(!t.to_lowercase().contains("telemetry"), "{t}");
    let left: Vec<_> = walk(&home);
    assert!(left.is_empty(), "written under $HOME: {left:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if p.is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}
