//! The one file walker: the image files named on a command line or found under folders.
//!
//! - Only regular files are listed from folders; anything else with an image extension (a FIFO,
//!   a socket, a device) is skipped with a warning and never opened.
//! - Symbolic links are followed; every folder is entered at most once (by canonical path), so
//!   a link loop or a second link to the same folder never lists an image twice.
//! - A named path that does not exist (or a folder that cannot be listed) does not stop the
//!   walk: it comes back as a [`Problem`], which the commands report like an undecodable
//!   file (`ok: false`, exit status non-zero) while the other images go on.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Extensions (lower case) of the image files taken from folders.
pub const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

/// A path that could not be listed or taken.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub path: PathBuf,
    pub error: String,
}

/// What a walk found: image files in order, and the paths that failed.
#[derive(Debug, Clone, Default)]
pub struct Walk {
    pub files: Vec<PathBuf>,
    pub problems: Vec<Problem>,
}

impl Walk {
    /// Every path, found or failed (for counts).
    pub fn len(&self) -> usize {
        self.files.len() + self.problems.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The problems as one-line messages.
    pub fn messages(&self) -> Vec<String> {
        self.problems.iter().map(|p| p.error.clone()).collect()
    }
}

/// Whether `path` has one of [`EXTENSIONS`] (any case).
pub fn has_image_extension(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

struct Walker {
    recursive: bool,
    visited: HashSet<PathBuf>,
    out: Walk,
}

impl Walker {
    fn problem(&mut self, path: &Path, error: String) {
        self.out.problems.push(Problem { path: path.to_path_buf(), error });
    }

    fn dir(&mut self, dir: &Path) {
        let canon = match dir.canonicalize() {
            Ok(c) => c,
            Err(e) => return self.problem(dir, format!("{}: cannot resolve folder: {e}", dir.display())),
        };
        if !self.visited.insert(canon.clone()) {
            tracing::warn!(path = %dir.display(), target = %canon.display(), "folder already listed (symbolic link loop or second link); skipped");
            return;
        }
        let entries = match std::fs::read_dir(dir) {
            Ok(r) => r,
            Err(e) => return self.problem(dir, format!("{}: cannot list folder: {e}", dir.display())),
        };
        let mut paths: Vec<PathBuf> = Vec::new();
        for e in entries {
            match e {
                Ok(e) => paths.push(e.path()),
                Err(e) => return self.problem(dir, format!("{}: cannot list folder: {e}", dir.display())),
            }
        }
        paths.sort();
        for p in paths {
            // Follows a symbolic link (once: the folder set stops loops).
            match std::fs::metadata(&p) {
                Ok(m) if m.is_dir() => {
                    if self.recursive {
                        self.dir(&p);
                    }
                }
                Ok(m) if m.is_file() => {
                    if has_image_extension(&p) {
                        self.out.files.push(p);
                    }
                }
                Ok(_) => {
                    if has_image_extension(&p) {
                        tracing::warn!(path = %p.display(), "not a regular file (FIFO, socket or device); skipped, never opened");
                    }
                }
                Err(e) => {
                    if has_image_extension(&p) {
                        self.problem(&p, format!("{}: cannot open: {e}", p.display()));
                    }
                }
            }
        }
    }
}

/// Files named directly (any extension, as long as they are regular files), plus the images
/// under named folders (recursively), sorted per folder.
pub fn images(inputs: &[PathBuf]) -> Walk {
    walk(inputs, true)
}

/// The images directly in `dir` (not in its sub-folders), sorted.
pub fn images_in(dir: &Path) -> Walk {
    walk(&[dir.to_path_buf()], false)
}

fn walk(inputs: &[PathBuf], recursive: bool) -> Walk {
    let mut w = Walker { recursive, visited: HashSet::new(), out: Walk::default() };
    for p in inputs {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => w.dir(p),
            Ok(m) if m.is_file() => w.out.files.push(p.clone()),
            Ok(_) => w.problem(p, format!("{}: not a regular file (a FIFO, socket or device is never read)", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => w.problem(p, format!("{}: no such file or folder", p.display())),
            Err(e) => w.problem(p, format!("{}: cannot open: {e}", p.display())),
        }
    }
    w.out
}

/// Image files under `dir`, sorted by path (folders searched recursively): the replay
/// source's listing, through the one walker every command uses (regular files only, each
/// folder once); a missing folder or unreadable entry is an error here.
pub fn sorted_images(dir: &std::path::Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let w = images(&[dir.to_path_buf()]);
    if !w.problems.is_empty() {
        anyhow::bail!("{}", w.messages().join("; "));
    }
    Ok(w.files)
}

/// Output name of an input: its path's components joined by `__`, the extension kept
/// (`a/b/part.png` → `a__b__part.png`, so `part.png` and `part.jpg` differ). When that name
/// could also come from another path — a component containing `__`, starting or ending with
/// `_`, or not UTF-8; an absolute path or one with `..` — or is longer than 160 bytes, `___`
/// and the first 16 hex digits of the SHA-256 of the full path are appended (shortened to 120
/// bytes first when long). Names without a hash never contain `___`, so no two inputs share a
/// name.
pub fn output_stem(path: &Path) -> String {
    use sha2::Digest;
    use std::path::Component;
    let mut ambiguous = false;
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => {
                let s = match p.to_str() {
                    Some(s) => s.to_string(),
                    None => {
                        ambiguous = true;
                        p.to_string_lossy().into_owned()
                    }
                };
                ambiguous |= s.contains("__") || s.starts_with('_') || s.ends_with('_');
                parts.push(s);
            }
            Component::CurDir => {}
            _ => ambiguous = true,
        }
    }
    let mut name = parts.join("__");
    if name.is_empty() || name.len() > 160 {
        ambiguous = true;
    }
    if !ambiguous {
        return name;
    }
    if name.len() > 120 {
        let mut cut = 120;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    let hash = sha2::Sha256::digest(path.as_os_str().as_encoded_bytes());
    let hex: String = hash.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{name}___{hex}")
}

/// Writes `bytes` to `path` through a temporary file in the same folder, fsync and a rename,
/// then syncs the folder: a full disk or a crash at any instant leaves either the old file or
/// the new one under the final name, never a partial (or 0-byte) one. The temporary file is
/// removed on failure. Creates the parent folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: cannot create folder: {e}", dir.display()))?;
    let name = path.file_name().ok_or_else(|| anyhow::anyhow!("{}: not a file name", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp: PathBuf = dir.join(tmp_name);
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        anyhow::bail!("{}: cannot write: {e}", path.display());
    }
    sync_dir(dir)
}

/// Syncs a folder's entries (a rename or removal inside it) to disk.
pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| anyhow::anyhow!("{}: cannot sync the folder: {e}", dir.display()))
}

/// A named step of a state write (`overlay-index-write`, …) at which a test can kill the
/// process: when `GLAD_CRASH_AT` names the step, the process aborts there, as a power cut or
/// an OOM kill would stop it. Crash tests set it in a child process; nothing else does.
pub fn crash_point(step: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if AT.get_or_init(|| std::env::var("GLAD_CRASH_AT").ok()).as_deref() == Some(step) {
        eprintln!("GLAD_CRASH_AT: aborting at {step}");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_regular_images_once_and_reports_missing_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("d");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("a.png"), b"x").unwrap();
        std::fs::write(d.join("b.txt"), b"x").unwrap();
        std::fs::write(d.join("sub/c.JPG"), b"x").unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&d, d.join("sub/loop")).unwrap();
            std::os::unix::fs::symlink(d.join("gone.png"), d.join("dangling.png")).unwrap();
        }
        let missing = tmp.path().join("missing.png");
        let w = images(&[d.clone(), missing.clone()]);
        assert_eq!(w.files, vec![d.join("a.png"), d.join("sub/c.JPG")]);
        let bad: Vec<&Path> = w.problems.iter().map(|p| p.path.as_path()).collect();
        #[cfg(unix)]
        assert_eq!(bad, vec![d.join("dangling.png").as_path(), missing.as_path()]);
        assert!(w.problems.last().unwrap().error.contains("no such file or folder"));
        assert_eq!(images_in(&d).files, vec![d.join("a.png")]);
    }
}
