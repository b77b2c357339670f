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
        let hashes = if dir.join(HASH_FILE).is_file() { format!(", hashes in {HASH_FILE}") } else { String::new() };
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

fn copy_tree(src: &Path, dst: &Path, skip: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).with_context(|| format!("{}: cannot create", dst.display()))?;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(src)
        .with_context(|| format!("{}: cannot list", src.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().expect("listed entry");
        let to = dst.join(name);
        if p.canonicalize().map(|c| c == skip).unwrap_or(false) || name == HASH_FILE {
            continue;
        }
        if p.is_dir() {
            copy_tree(&p, &to, skip)?;
        } else if p.is_file() {
            std::fs::copy(&p, &to).with_context(|| format!("cannot copy {} to {}", p.display(), to.display()))?;
        }
    }
    Ok(())
}

/// Files below `dir`, relative to it, sorted (`/` separated).
fn list_files(dir: &Path) -> Result<Vec<PathBuf>> {
    fn walk(base: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let here = base.join(rel);
        for e in std::fs::read_dir(&here).with_context(|| format!("{}: cannot list", here.display()))? {
            let e = e?;
            let r = rel.join(e.file_name());
            let p = base.join(&r);
            if p.is_dir() {
                walk(base, &r, out)?;
            } else if p.is_file() {
                out.push(r);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, Path::new(""), &mut out)?;
    out.sort();
    Ok(out)
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

/// Writes `dir/MANIFEST.sha256` over every other file below `dir`; returns (files, bytes).
pub fn write_hashes(dir: &Path) -> Result<(usize, u64)> {
    let mut text = String::new();
    let (mut n, mut bytes) = (0, 0u64);
    for rel in list_files(dir)? {
        if rel == Path::new(HASH_FILE) {
            continue;
        }
        let p = dir.join(&rel);
        bytes += std::fs::metadata(&p)?.len();
        text.push_str(&format!("{}  {}\n", sha256_file(&p)?, rel.to_string_lossy()));
        n += 1;
    }
    let path = dir.join(HASH_FILE);
    std::fs::write(&path, text).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok((n, bytes))
}

/// Checks `dir/MANIFEST.sha256`: `Ok(None)` when there is none, else the files that are
/// missing or differ (empty: all match) and how many were listed.
pub fn verify_hashes(dir: &Path) -> Result<Option<(usize, Vec<String>)>> {
    let path = dir.join(HASH_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
    };
    let mut bad = Vec::new();
    let mut n = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Some((hash, rel)) = line.split_once("  ") else { bail!("{}: malformed line `{line}`", path.display()) };
        n += 1;
        let p = dir.join(rel);
        match sha256_file(&p) {
            Ok(h) if h == hash => {}
            Ok(_) => bad.push(format!("{rel} (changed)")),
            Err(_) => bad.push(format!("{rel} (missing)")),
        }
    }
    Ok(Some((n, bad)))
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
    // Write into a temporary sibling and rename at the end: no half-packed bundle on failure.
    let tmp = dst_parent_real.join(format!(".{}.packing", dst.file_name().and_then(|n| n.to_str()).unwrap_or("bundle")));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("{}: cannot remove a stale folder", tmp.display()))?;
    }
    let result = (|| -> Result<PackReport> {
        copy_tree(&src_real, &tmp, &tmp)?;
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
        Ok(r) => {
            std::fs::rename(&tmp, dst).with_context(|| format!("cannot rename {} to {}", tmp.display(), dst.display()))?;
            Ok(r)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
