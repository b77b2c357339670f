//! A bundle folder as it lies on disk, walked without following symbolic links.
//!
//! `verify`, `pack` and the content hash all see a bundle through this walk, so none of them can
//! be led out of the folder or into a loop by a link: a link is reported as a link (with its
//! target text), a device, FIFO or socket as special, and only regular files are ever read.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// What a path below the bundle folder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file of this many bytes.
    File(u64),
    /// A symbolic link, with its target as written.
    Link(PathBuf),
    /// A device, FIFO or socket.
    Special,
}

/// One path below the bundle folder (folders themselves are not listed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the bundle folder.
    pub rel: PathBuf,
    pub kind: Kind,
}

impl Entry {
    /// The relative path with `/` separators, as `MANIFEST.sha256` writes it.
    pub fn name(&self) -> String {
        self.rel.to_string_lossy().into_owned()
    }
}

/// Every non-folder path below `dir`, sorted by relative path. Folders are entered through
/// their real entries only (a link to a folder is an `Entry` of kind `Link`), so the walk is
/// finite whatever links the folder holds.
pub fn entries(dir: &Path) -> Result<Vec<Entry>> {
    fn walk(base: &Path, rel: &Path, out: &mut Vec<Entry>) -> Result<()> {
        let here = base.join(rel);
        for e in std::fs::read_dir(&here).with_context(|| format!("{}: cannot list", here.display()))? {
            let e = e.with_context(|| format!("{}: cannot list", here.display()))?;
            let r = rel.join(e.file_name());
            let p = base.join(&r);
            let meta = std::fs::symlink_metadata(&p).with_context(|| format!("{}: cannot stat", p.display()))?;
            let ft = meta.file_type();
            if ft.is_dir() {
                walk(base, &r, out)?;
            } else if ft.is_file() {
                out.push(Entry { rel: r, kind: Kind::File(meta.len()) });
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&p).with_context(|| format!("{}: cannot read the link", p.display()))?;
                out.push(Entry { rel: r, kind: Kind::Link(target) });
            } else {
                out.push(Entry { rel: r, kind: Kind::Special });
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, Path::new(""), &mut out)?;
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_listed_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.bin"), b"abc").unwrap();
        std::os::unix::fs::symlink(root, root.join("sub/loop")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("out")).unwrap();
        let e = entries(root).unwrap();
        assert_eq!(
            e,
            vec![
                Entry { rel: "out".into(), kind: Kind::Link("/etc/hostname".into()) },
                Entry { rel: "sub/a.bin".into(), kind: Kind::File(3) },
                Entry { rel: "sub/loop".into(), kind: Kind::Link(root.to_path_buf()) },
            ]
        );
    }
}
