//! The image store: NG frames (input PNG + heatmap) and optionally every Nth OK frame, under
//! `<dir>/images/`. Writes are atomic (a temp file renamed into place); a byte quota and a
//! free-space floor are kept by deleting the oldest images first. When the disk is full or
//! the folder unwritable, the frame's record says it was not stored and the store reports
//! itself degraded; inspection goes on.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use image::RgbImage;

use super::{FrameResult, Health, Sink, Stored};

#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub dir: PathBuf,
    pub store_ng: bool,
    /// Every Nth OK frame per camera (0: none).
    pub keep_ok_every: u64,
    pub quota_bytes: u64,
    pub min_free_bytes: u64,
}

struct Inner {
    /// Stored files, oldest first, with their sizes.
    files: VecDeque<(PathBuf, u64)>,
    total: u64,
    ok_seen: BTreeMap<String, u64>,
    health: Health,
}

pub struct ImageStore {
    cfg: StoreConfig,
    images: PathBuf,
    inner: Mutex<Inner>,
}

/// Free bytes for unprivileged users on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a statvfs to fill.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Size of the file system holding `dir`.
pub fn fs_size(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a statvfs to fill.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_blocks as u64 * st.f_frsize as u64)
}

fn encode_png(img: &RgbImage) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).map_err(|e| anyhow::anyhow!("cannot encode PNG: {e}"))?;
    Ok(out)
}

/// Writes `bytes` to `path` through a temp file in the same folder, renamed into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".tmp-{name}"));
    let res = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path));
    if res.is_err() {
        std::fs::remove_file(&tmp).ok();
    }
    res
}

impl ImageStore {
    /// Creates `<dir>/images` and indexes the images already there (oldest first by name,
    /// which starts with the capture time); leftover temp files are removed.
    pub fn new(cfg: StoreConfig) -> Result<ImageStore> {
        let images = cfg.dir.join("images");
        std::fs::create_dir_all(&images).with_context(|| format!("{}: cannot create the image folder", images.display()))?;
        // A floor the file system can never reach would delete every stored image for each new one.
        if let Some(size) = fs_size(&images) {
            if cfg.min_free_bytes >= size {
                anyhow::bail!(
                    "key `results.min_free_bytes`: {} bytes is not below the size of the file system holding {} ({size} bytes)",
                    cfg.min_free_bytes,
                    images.display()
                );
            }
        }
        let mut entries: Vec<(PathBuf, u64)> = Vec::new();
        for e in std::fs::read_dir(&images).with_context(|| format!("{}: cannot list", images.display()))?.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") {
                std::fs::remove_file(&p).ok();
            } else if p.is_file() {
                entries.push((p, e.metadata().map(|m| m.len()).unwrap_or(0)));
            }
        }
        entries.sort();
        let total = entries.iter().map(|e| e.1).sum();
        let inner = Inner { files: entries.into(), total, ok_seen: BTreeMap::new(), health: Health::Ok };
        Ok(ImageStore { cfg, images, inner: Mutex::new(inner) })
    }

    /// Bytes of stored images.
    pub fn bytes(&self) -> u64 {
        self.inner.lock().expect("store lock").total
    }

    pub fn files(&self) -> Vec<PathBuf> {
        self.inner.lock().expect("store lock").files.iter().map(|f| f.0.clone()).collect()
    }

    /// Deletes the oldest frame (its input and heatmap together).
    fn evict_oldest(inner: &mut Inner) -> bool {
        let stem = |p: &Path| p.file_name().and_then(|n| n.to_str()).and_then(|n| n.split('.').next()).map(str::to_string);
        let Some((p, n)) = inner.files.pop_front() else { return false };
        let first = stem(&p);
        let mut gone = vec![(p, n)];
        while inner.files.front().is_some_and(|f| stem(&f.0) == first) {
            gone.extend(inner.files.pop_front());
        }
        for (p, n) in gone {
            std::fs::remove_file(&p).ok();
            inner.total = inner.total.saturating_sub(n);
            tracing::debug!(file = %p.display(), "evicted");
        }
        true
    }

    /// Stores the frame's pictures when the policy wants them; says where they went, or
    /// why they could not be kept. Frames the policy skips get an empty `Stored`.
    pub fn keep(&self, result: &FrameResult) -> Stored {
        let rec = &result.record;
        let (Some(input), Some(heat)) = (&result.input, &result.heatmap) else { return Stored::default() };
        if !rec.ok {
            return Stored::default();
        }
        let mut inner = self.inner.lock().expect("store lock");
        let ng = rec.is_ng();
        let wanted = if ng {
            self.cfg.store_ng
        } else if self.cfg.keep_ok_every > 0 {
            let n = inner.ok_seen.entry(rec.camera.clone()).or_insert(0);
            *n += 1;
            (*n - 1) % self.cfg.keep_ok_every == 0
        } else {
            false
        };
        if !wanted {
            return Stored::default();
        }
        let stem = format!("{:013}-{}-{:08}-{}", rec.t_capture_ms as u64, rec.camera, rec.seq, if ng { "ng" } else { "ok" });
        let paths = [self.images.join(format!("{stem}.input.png")), self.images.join(format!("{stem}.heatmap.png"))];
        let result = (|| -> Result<()> {
            let blobs = [encode_png(input)?, encode_png(heat)?];
            let need: u64 = blobs.iter().map(|b| b.len() as u64).sum();
            if need > self.cfg.quota_bytes {
                anyhow::bail!("the frame's {need} bytes exceed the quota of {} bytes", self.cfg.quota_bytes);
            }
            while inner.total + need > self.cfg.quota_bytes && Self::evict_oldest(&mut inner) {}
            loop {
                let free = free_bytes(&self.images).unwrap_or(u64::MAX);
                if free >= self.cfg.min_free_bytes.saturating_add(need) {
                    break;
                }
                if !Self::evict_oldest(&mut inner) {
                    anyhow::bail!("disk nearly full: {free} bytes free, the floor is {} bytes", self.cfg.min_free_bytes);
                }
            }
            // The folder may have been removed while running (`rm -rf results/`): made anew,
            // as the results log reopens its file.
            if !self.images.is_dir() {
                std::fs::create_dir_all(&self.images).map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", self.images.display()))?;
                tracing::warn!(folder = %self.images.display(), "image folder was gone: created anew");
            }
            for (p, b) in paths.iter().zip(&blobs) {
                let mut res = write_atomic(p, b);
                // Out of space: make room from the oldest images and try once more.
                if res.as_ref().is_err_and(|e| e.raw_os_error() == Some(libc::ENOSPC)) && Self::evict_oldest(&mut inner) {
                    res = write_atomic(p, b);
                }
                if let Err(e) = res {
                    for q in &paths {
                        std::fs::remove_file(q).ok();
                    }
                    anyhow::bail!("{}: cannot write: {e}", p.display());
                }
                inner.files.push_back((p.clone(), b.len() as u64));
                inner.total += b.len() as u64;
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                inner.health = Health::Ok;
                Stored { input: Some(paths[0].clone()), heatmap: Some(paths[1].clone()), not_stored: None }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                inner.health = Health::Degraded(msg.clone());
                // Drop a half-written pair from the index.
                inner.files.retain(|f| !paths.contains(&f.0));
                inner.total = inner.files.iter().map(|f| f.1).sum();
                Stored { input: None, heatmap: None, not_stored: Some(msg) }
            }
        }
    }
}

impl Sink for ImageStore {
    fn name(&self) -> &str {
        "store"
    }

    fn submit(&self, result: &FrameResult) {
        self.keep(result);
    }

    fn flush(&self, _timeout: Duration) -> Result<()> {
        Ok(())
    }

    fn health(&self) -> Health {
        self.inner.lock().expect("store lock").health.clone()
    }
}
