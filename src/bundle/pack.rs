//! Closed bundles: `glad bundle pack SRC DST` copies a bundle folder together with every file
//! its manifest refers to outside the folder (shared models such as `../effnet-lite0/…`, and
//! the external-data files those ONNX models name), rewrites those paths to the copies under
//! `shared/`, and writes `MANIFEST.sha256` (`sha256sum -c` format) over every file. The result
//! can be copied, packaged or installed on its own. [`outside_refs`] is what `glad info`
//! reports for a bundle that is not closed.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::sign::SIG_FILE;
use super::tree::{self, Kind};
use super::Manifest;

/// The hash list a packed bundle carries.
pub const HASH_FILE: &str = "MANIFEST.sha256";
/// Where packed copies of outside files go, inside the bundle.
pub const SHARED_DIR: &str = "shared";

/// A manifest path that leaves the bundle folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutsideRef {
    /// The manifest key (`models.backbone.file`).
    pub key: String,
    /// The path as written in the manifest.
    pub path: PathBuf,
}

/// Every file path of a manifest with its key.
fn manifest_paths(m: &mut Manifest) -> Vec<(&'static str, &mut PathBuf)> {
    let mut v: Vec<(&'static str, &mut PathBuf)> = Vec::new();
    let models = &mut m.models;
    if let Some(s) = models.vae_encoder.as_mut() {
        v.push(("models.vae_encoder.file", &mut s.file));
    }
    v.push(("models.unet.file", &mut models.unet.file));
    if let Some(s) = models.vae_decoder.as_mut() {
        v.push(("models.vae_decoder.file", &mut s.file));
    }
    v.push(("models.backbone.file", &mut models.backbone.file));
    if let Some(s) = models.adp_backbone.as_mut() {
        v.push(("models.adp_backbone.file", &mut s.file));
    }
    if let Some(p) = m.prompt.as_mut() {
        v.push(("prompt.cond", &mut p.cond));
        v.push(("prompt.uncond", &mut p.uncond));
    }
    v
}

/// Whether a relative path stays inside its folder (no `..` climbing above it, not absolute).
fn stays_inside(p: &Path) -> bool {
    let mut depth = 0i64;
    for c in p.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// The manifest paths of the bundle in `dir` that point outside it (absolute, `..` above the
/// folder, or through a symbolic link that resolves elsewhere).
pub fn outside_refs(dir: &Path, manifest: &Manifest) -> Vec<OutsideRef> {
    let mut m = manifest.clone();
    let root = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    manifest_paths(&mut m)
        .into_iter()
        .filter(|(_, p)| {
            if !stays_inside(p) {
                return true;
            }
            match dir.join(&**p).canonicalize() {
                Ok(real) => !real.starts_with(&root),
                Err(_) => false, // missing: the load reports it
            }
        })
        .map(|(key, p)| OutsideRef { key: key.to_string(), path: p.clone() })
        .collect()
}

/// One line for `glad info`: whether the bundle is closed, and if not what it refers to.
pub fn closure_line(dir: &Path, manifest: &Manifest) -> String {
    let outside = outside_refs(dir, manifest);
    if outside.is_empty() {
        let hashes = if dir.join(HASH_FILE).is_file() {
            let signed = if dir.join(SIG_FILE).is_file() { format!(", signed ({SIG_FILE})") } else { String::new() };
            format!(", hashes in {HASH_FILE}{signed}")
        } else {
            format!("; OPEN: no {HASH_FILE}, so its files are not verified on load (`glad bundle pack` makes a closed copy)")
        };
        return format!("yes: every file the manifest names is inside the bundle folder{hashes}");
    }
    let list: Vec<String> = outside.iter().map(|o| format!("{} = {}", o.key, o.path.display())).collect();
    format!(
        "NO: this bundle refers to files outside its folder ({}); copying the folder alone breaks it; \
         `glad bundle pack {} DST` writes a closed copy",
        list.join(", "),
        dir.display()
    )
}

/// External-data file names an ONNX model refers to (the `location` entries of its tensors).
///
/// Scans the protobuf bytes for the encoding of a `StringStringEntryProto { key: "location",
/// value: … }` (`0a 08 "location" 12 <len> <value>`) rather than decoding the whole model;
/// only names that exist next to the model are returned, so a stray match copies nothing.
pub fn external_data_files(model: &Path) -> Result<Vec<PathBuf>> {
    const NEEDLE: &[u8] = b"\x0a\x08location\x12";
    let bytes = std::fs::read(model).with_context(|| format!("{}: cannot read", model.display()))?;
    let dir = model.parent().unwrap_or(Path::new("."));
    let mut found: Vec<PathBuf> = Vec::new();
    let mut i = 0;
    while let Some(pos) = bytes[i..].windows(NEEDLE.len()).position(|w| w == NEEDLE) {
        let start = i + pos + NEEDLE.len();
        i = start;
        // varint length (names are short: at most two bytes)
        let (len, used) = match bytes.get(start..start + 2) {
            Some([b0, _]) if b0 & 0x80 == 0 => (*b0 as usize, 1),
            Some([b0, b1]) if b1 & 0x80 == 0 => (((b0 & 0x7f) as usize) | ((*b1 as usize) << 7), 2),
            _ => continue,
        };
        let Some(name) = bytes.get(start + used..start + used + len) else { continue };
        let Ok(name) = std::str::from_utf8(name) else { continue };
        let rel = PathBuf::from(name);
        if stays_inside(&rel) && dir.join(&rel).is_file() && !found.contains(&rel) {
            found.push(rel);
        }
    }
    Ok(found)
}

/// What `pack` did.
#[derive(Debug, Default)]
pub struct PackReport {
    /// `(manifest key, old path, new path)` for every rewritten path.
    pub rewritten: Vec<(String, PathBuf, PathBuf)>,
    /// Files in the closed bundle (the hash list's entries).
    pub files: usize,
    pub bytes: u64,
}

/// Copies the bundle folder `src` (canonical) into `dst` through the no-follow walk. A link is
/// copied as the file it names only when that file is inside `src`; a link the manifest names
/// leaving the folder (`skip_links`: copied under `shared/` by the caller) is left out; any
/// other link (out of the folder, to a folder, dangling) and any special file are refused by
/// name, so a pack can neither escape its source nor loop.
fn copy_tree(src: &Path, dst: &Path, skip_links: &[PathBuf]) -> Result<()> {
    std::fs::create_dir_all(dst).with_context(|| format!("{}: cannot create", dst.display()))?;
    for e in tree::entries(src)? {
        if e.rel == Path::new(HASH_FILE) || e.rel == Path::new(SIG_FILE) {
            continue; // written anew for the packed copy
        }
        let from = src.join(&e.rel);
        let to = dst.join(&e.rel);
        let copy_from = match &e.kind {
            Kind::File(_) => from.clone(),
            Kind::Link(target) => {
                if skip_links.iter().any(|p| p.starts_with(&e.rel)) {
                    continue;
                }
                match from.canonicalize() {
                    Ok(real) if real.starts_with(src) && real.is_file() => real,
                    _ => bail!(
                        "{}: a symbolic link to {}, which is not a file inside the bundle; pack does not follow links out of a \
                         bundle (replace the link with the file, or name the file in bundle.yaml)",
                        from.display(),
                        target.display()
                    ),
                }
            }
            Kind::Special => bail!("{}: not a regular file (a device, FIFO or socket); a bundle holds only files", from.display()),
        };
        if let Some(d) = to.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("{}: cannot create", d.display()))?;
        }
        std::fs::copy(&copy_from, &to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("{}: cannot read", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `dir/MANIFEST.sha256` over every other regular file below `dir` (each synced to disk
/// first, the list last); returns (files, bytes). Links and special files are refused.
pub fn write_hashes(dir: &Path) -> Result<(usize, u64)> {
    let mut text = String::new();
    let (mut n, mut bytes) = (0, 0u64);
    for e in tree::entries(dir)? {
        if e.rel == Path::new(HASH_FILE) || e.rel == Path::new(SIG_FILE) {
            continue;
        }
        let p = dir.join(&e.rel);
        let Kind::File(len) = e.kind else { bail!("{}: not a regular file; a closed bundle holds only files", p.display()) };
        std::fs::File::open(&p).and_then(|f| f.sync_all()).with_context(|| format!("{}: cannot sync", p.display()))?;
        bytes += len;
        text.push_str(&format!("{}  {}\n", sha256_file(&p)?, e.name()));
        n += 1;
    }
    crate::files::write_atomic(&dir.join(HASH_FILE), text.as_bytes())?;
    Ok((n, bytes))
}

/// The outcome of checking a closed bundle against its `MANIFEST.sha256`.
#[derive(Debug, Default)]
pub struct Verification {
    /// Lines of the hash list.
    pub listed: usize,
    /// Bytes of the listed files that were read.
    pub bytes: u64,
    /// Every disagreement, one line each naming the path (empty: the bundle is whole).
    pub problems: Vec<String>,
}

/// The hash list is a few lines per file: anything larger is not one (and is not read whole).
const MAX_HASH_FILE: u64 = 16 << 20;

/// Checks the whole bundle in `dir` against `MANIFEST.sha256`: `Ok(None)` when there is none (an
/// open bundle). Closed means whole: every listed path is a regular file inside the folder with
/// that hash, every regular file is listed, and nothing else (link, device, FIFO, socket) is
/// there. Only regular files found by the no-follow walk are read, so no line can make it read
/// outside the folder or from a device.
pub fn verify_whole(dir: &Path) -> Result<Option<Verification>> {
    let path = dir.join(HASH_FILE);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot stat", path.display())),
    };
    let mut v = Verification::default();
    if !meta.file_type().is_file() {
        v.problems.push(format!("{HASH_FILE}: not a regular file"));
        return Ok(Some(v));
    }
    if meta.len() > MAX_HASH_FILE {
        v.problems.push(format!("{HASH_FILE}: {} bytes, more than a hash list can be ({MAX_HASH_FILE})", meta.len()));
        return Ok(Some(v));
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read as UTF-8 text", path.display()))?;
    let found: BTreeMap<PathBuf, Kind> = tree::entries(dir)?.into_iter().map(|e| (e.rel, e.kind)).collect();
    let mut listed: BTreeMap<PathBuf, usize> = BTreeMap::new();
    for (no, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let no = no + 1;
        v.listed += 1;
        let Some((hash, rel)) = line.split_once("  ") else {
            v.problems.push(format!("{HASH_FILE} line {no}: expected `<sha256>  <path>`, got `{line}`"));
            continue;
        };
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            v.problems.push(format!("{HASH_FILE} line {no}: `{hash}` is not a SHA-256 (64 hex digits)"));
            continue;
        }
        let rel_path = PathBuf::from(rel);
        if !rel_path.components().all(|c| matches!(c, Component::Normal(_))) {
            v.problems.push(format!("{HASH_FILE} line {no}: `{rel}` is not a plain path inside the bundle"));
            continue;
        }
        if let Some(first) = listed.insert(rel_path.clone(), no) {
            v.problems.push(format!("{HASH_FILE} line {no}: `{rel}` is listed twice (first on line {first})"));
            continue;
        }
        match found.get(&rel_path) {
            Some(Kind::File(len)) => {
                v.bytes += len;
                if sha256_file(&dir.join(&rel_path))? != hash.to_ascii_lowercase() {
                    v.problems.push(format!("{rel}: changed (its SHA-256 differs from {HASH_FILE})"));
                }
            }
            Some(Kind::Link(t)) => v.problems.push(format!("{rel}: a symbolic link (to {}), not a file", t.display())),
            Some(Kind::Special) => v.problems.push(format!("{rel}: not a regular file")),
            None => v.problems.push(format!("{rel}: listed in {HASH_FILE} but missing")),
        }
    }
    if v.listed == 0 {
        v.problems.push(format!("{HASH_FILE}: lists no file"));
    }
    for (rel, kind) in &found {
        if rel == Path::new(HASH_FILE) || rel == Path::new(SIG_FILE) || listed.contains_key(rel) {
            continue;
        }
        let rel = rel.display();
        v.problems.push(match kind {
            Kind::File(_) => format!("{rel}: present but not listed in {HASH_FILE}"),
            Kind::Link(t) => format!("{rel}: a symbolic link (to {}); a closed bundle holds only files", t.display()),
            Kind::Special => format!("{rel}: a device, FIFO or socket; a closed bundle holds only files"),
        });
    }
    Ok(Some(v))
}

/// Renames `from` to `to` only if `to` does not exist (not even as an empty folder), so two
/// packs to one destination cannot both win.
fn rename_noreplace(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).context("a path with a NUL byte");
    let (a, b) = (c(from)?, c(to)?);
    // SAFETY: two valid NUL-terminated paths; renameat2 only reads them.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_NOREPLACE) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EEXIST) || err.raw_os_error() == Some(libc::ENOTEMPTY) {
        bail!("{}: appeared while packing (another `glad bundle pack` to the same destination finished first)", to.display());
    }
    Err(err).with_context(|| format!("cannot rename {} to {}", from.display(), to.display()))
}

/// Writes a closed copy of the bundle `src` into `dst` (which must not exist yet).
pub fn pack(src: &Path, dst: &Path) -> Result<PackReport> {
    let manifest = Manifest::read(src)?;
    if dst.exists() {
        bail!("{}: already exists; glad bundle pack writes a new folder", dst.display());
    }
    let src_real = src.canonicalize().with_context(|| format!("{}: cannot resolve", src.display()))?;
    let dst_parent = dst.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let dst_parent_real =
        dst_parent.canonicalize().with_context(|| format!("{}: the destination's folder must exist", dst_parent.display()))?;
    if dst_parent_real.starts_with(&src_real) {
        bail!("{}: the destination is inside the bundle {}", dst.display(), src.display());
    }
    let outside: Vec<OutsideRef> = outside_refs(src, &manifest);
    // Write into a temporary sibling of its own (two packs to one destination never share it)
    // and rename at the end: no half-packed bundle on failure.
    let stem = dst.file_name().and_then(|n| n.to_str()).unwrap_or("bundle");
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{stem}.packing-"))
        .tempdir_in(&dst_parent_real)
        .with_context(|| format!("{}: cannot create a temporary folder", dst_parent_real.display()))?
        .keep();
    let result = (|| -> Result<PackReport> {
        let skip: Vec<PathBuf> = outside.iter().map(|o| o.path.clone()).collect();
        copy_tree(&src_real, &tmp, &skip)?;
        let mut m = manifest.clone();
        let mut report = PackReport::default();
        // source file (canonical) -> its path inside the packed bundle
        let mut placed: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
        for (key, p) in manifest_paths(&mut m) {
            if !outside.iter().any(|o| o.key == key) {
                continue;
            }
            let from =
                src.join(&*p).canonicalize().with_context(|| format!("{}: key `{key}`: {} not found", src.display(), p.display()))?;
            let new_rel = match placed.get(&from) {
                Some(r) => r.clone(),
                None => {
                    let parent = from
                        .parent()
                        .and_then(|d| d.file_name())
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "root".into());
                    let file = from.file_name().expect("a file").to_owned();
                    let mut n = 1;
                    let rel = loop {
                        let folder = if n == 1 { parent.clone() } else { format!("{parent}-{n}") };
                        let rel = Path::new(SHARED_DIR).join(&folder).join(&file);
                        if !tmp.join(&rel).exists() {
                            break rel;
                        }
                        n += 1;
                    };
                    let to = tmp.join(&rel);
                    std::fs::create_dir_all(to.parent().expect("has a parent"))?;
                    std::fs::copy(&from, &to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
                    if from.extension().is_some_and(|e| e == "onnx") {
                        let from_dir = from.parent().expect("a file has a folder");
                        for data in external_data_files(&from)? {
                            let target = to.parent().expect("has a parent").join(&data);
                            if let Some(d) = target.parent() {
                                std::fs::create_dir_all(d)?;
                            }
                            std::fs::copy(from_dir.join(&data), &target)
                                .with_context(|| format!("cannot copy the external data {} of {}", data.display(), from.display()))?;
                        }
                    }
                    placed.insert(from, rel.clone());
                    rel
                }
            };
            report.rewritten.push((key.to_string(), p.clone(), new_rel.clone()));
            *p = new_rel;
        }
        let yaml = serde_yaml::to_string(&m)?;
        let header = format!(
            "# Closed bundle written by `glad bundle pack` from {} ({}): every file it uses is inside\n# this folder; {HASH_FILE} lists their SHA-256 hashes (`sha256sum -c {HASH_FILE}`).\n",
            manifest.name,
            src.display()
        );
        std::fs::write(tmp.join(Manifest::FILE), format!("{header}{yaml}"))?;
        let back = Manifest::read(&tmp).context("the rewritten manifest does not read back")?;
        let still = outside_refs(&tmp, &back);
        if !still.is_empty() {
            bail!("the packed bundle still refers outside itself: {still:?}");
        }
        let (files, bytes) = write_hashes(&tmp)?;
        report.files = files;
        report.bytes = bytes;
        Ok(report)
    })();
    match result {
        Ok(r) => match rename_noreplace(&tmp, dst) {
            Ok(()) => {
                crate::files::sync_dir(&dst_parent_real)?;
                Ok(r)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(e)
            }
        },
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two packs to one destination: the second rename finds the first's folder (even an empty
    /// one) and fails saying why, instead of merging into it.
    #[test]
    fn the_losing_pack_says_another_pack_finished_first() {
        let d = tempfile::tempdir().unwrap();
        let (a, b, dst) = (d.path().join("a"), d.path().join("b"), d.path().join("dst"));
        for t in [&a, &b] {
            std::fs::create_dir(t).unwrap();
            std::fs::write(t.join("bundle.yaml"), "x").unwrap();
        }
        rename_noreplace(&a, &dst).unwrap();
        let e = rename_noreplace(&b, &dst).unwrap_err().to_string();
        assert!(e.contains("another `glad bundle pack` to the same destination finished first"), "{e}");
        std::fs::remove_dir_all(&dst).unwrap();
        std::fs::create_dir(&dst).unwrap();
        assert!(rename_noreplace(&b, &dst).is_err(), "an empty folder is not replaced either");
    }

    #[test]
    fn inside_and_outside_paths() {
        assert!(stays_inside(Path::new("unet.onnx")));
        assert!(stays_inside(Path::new("a/../b.onnx")));
        assert!(stays_inside(Path::new("./x")));
        assert!(!stays_inside(Path::new("../effnet-lite0/effnet_lite0.onnx")));
        assert!(!stays_inside(Path::new("a/../../b")));
        assert!(!stays_inside(Path::new("/usr/share/x.onnx")));
    }
}
