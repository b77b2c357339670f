//! The MQTT sink's on-disk outbox: nothing is lost while the broker is away, or across a
//! restart of glad.
//!
//! Layout of the outbox folder:
//!
//! - `seg-<first id, 20 digits>.log`: append-only segment files. One frame per record:
//!   `[u32 LE body length][u32 LE CRC-32 of body][body]`, body = `[u64 LE id][u16 LE topic
//!   length][topic][payload]`. A torn frame at the end (power cut mid-write) is truncated away
//!   on open.
//! - `acked`: the first id still live (every id below it was acknowledged by the broker or
//!   dropped over the bound), written atomically (temp file, fsync, rename).
//!
//! Appends are fsync'd in batches (every `fsync_batch` records or `fsync_interval`, whichever
//! comes first). Records leave the outbox only when the broker acknowledged them (PUBACK) or
//! when the bound drops them (oldest first, counted). A segment file is deleted once every
//! record in it is gone. The bytes on disk stay under `max_bytes`: live records are kept under
//! `max_bytes - segment size`, and at most one segment holds records that are already gone.
//!
//! The live records are also kept in memory (so memory use is bounded by `max_bytes` too).

use std::collections::{BTreeSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Per-frame overhead on disk: length, CRC, id, topic length.
const FRAME_OVERHEAD: u64 = 4 + 4 + 8 + 2;
/// The smallest bound an outbox accepts.
pub const MIN_OUTBOX_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone)]
pub struct OutboxOptions {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub fsync_interval: Duration,
    pub fsync_batch: usize,
}

/// One record waiting for the broker's acknowledgement.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: u64,
    pub topic: String,
    pub payload: Vec<u8>,
}

impl Entry {
    fn disk_bytes(&self) -> u64 {
        FRAME_OVERHEAD + self.topic.len() as u64 + self.payload.len() as u64
    }
}

#[derive(Debug)]
struct Segment {
    first_id: u64,
    path: PathBuf,
    bytes: u64,
}

#[derive(Debug)]
pub struct Outbox {
    opts: OutboxOptions,
    max_live: u64,
    segment_target: u64,
    segments: VecDeque<Segment>,
    writer: File,
    entries: VecDeque<Entry>,
    live_bytes: u64,
    next_id: u64,
    first_live: u64,
    acked_ahead: BTreeSet<u64>,
    unsynced: usize,
    last_sync: Instant,
    ack_dirty: bool,
    /// Records dropped over the bound since the outbox was opened (load included).
    pub dropped_total: u64,
}

impl Outbox {
    /// Opens (or creates) the outbox in `opts.dir`, keeping whatever was left unsent.
    pub fn open(opts: OutboxOptions) -> Result<Outbox> {
        if opts.max_bytes < MIN_OUTBOX_BYTES {
            bail!("outbox bound {} B is under the minimum {} B", opts.max_bytes, MIN_OUTBOX_BYTES);
        }
        fs::create_dir_all(&opts.dir).with_context(|| format!("creating the outbox folder {}", opts.dir.display()))?;
        let segment_target = (opts.max_bytes / 16).clamp(16 * 1024, 64 * 1024 * 1024);
        let max_live = opts.max_bytes - segment_target;
        let first_live = read_acked(&opts.dir)?;

        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for e in fs::read_dir(&opts.dir).with_context(|| format!("reading {}", opts.dir.display()))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_prefix("seg-").and_then(|s| s.strip_suffix(".log")).and_then(|s| s.parse().ok()) {
                names.push((id, e.path()));
            }
        }
        names.sort();

        let mut entries = VecDeque::new();
        let mut segments = VecDeque::new();
        let mut live_bytes = 0;
        let mut next_id = first_live;
        for (first_id, path) in names {
            let (records, good_len) = read_segment(&path)?;
            for r in records {
                if r.id >= first_live && r.id >= next_id {
                    next_id = r.id + 1;
                    live_bytes += r.disk_bytes();
                    entries.push_back(r);
                } else if r.id >= next_id {
                    next_id = r.id + 1;
                }
            }
            segments.push_back(Segment { first_id, path, bytes: good_len });
        }

        let (writer, segments) = {
            let mut segments = segments;
            let reuse = segments.back().is_some_and(|s| s.bytes < segment_target && s.first_id <= next_id);
            if !reuse {
                let path = opts.dir.join(segment_name(next_id));
                segments.push_back(Segment { first_id: next_id, path, bytes: 0 });
            }
            let back = segments.back().expect("a segment");
            let writer = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&back.path)
                .with_context(|| format!("opening {}", back.path.display()))?;
            (writer, segments)
        };

        let mut ob = Outbox {
            opts,
            max_live,
            segment_target,
            segments,
            writer,
            entries,
            live_bytes,
            next_id,
            first_live,
            acked_ahead: BTreeSet::new(),
            unsynced: 0,
            last_sync: Instant::now(),
            ack_dirty: false,
            dropped_total: 0,
        };
        // A bound made smaller since the last run.
        while ob.live_bytes > ob.max_live {
            ob.drop_oldest();
        }
        sync_dir(&ob.opts.dir);
        ob.gc()?;
        Ok(ob)
    }

    /// Appends a record, dropping the oldest ones if the bound needs it. Returns the new
    /// record's id (None when the record alone is larger than a segment, `max_bytes / 16`
    /// clamped to 16 KiB..64 MiB, and was dropped) and how many records were dropped.
    pub fn push(&mut self, topic: &str, payload: Vec<u8>) -> Result<(Option<u64>, u64)> {
        let entry = Entry { id: self.next_id, topic: topic.to_string(), payload };
        let size = entry.disk_bytes();
        if size > self.segment_target || topic.len() > u16::MAX as usize {
            self.dropped_total += 1;
            return Ok((None, 1));
        }
        let mut dropped = 0;
        while self.live_bytes + size > self.max_live && !self.entries.is_empty() {
            self.drop_oldest();
            dropped += 1;
        }
        if dropped > 0 {
            self.gc()?;
        }
        if self.segments.back().is_some_and(|s| s.bytes > 0 && s.bytes + size > self.segment_target) {
            self.roll()?;
        }
        let mut body = Vec::with_capacity(size as usize);
        body.extend_from_slice(&entry.id.to_le_bytes());
        body.extend_from_slice(&(entry.topic.len() as u16).to_le_bytes());
        body.extend_from_slice(entry.topic.as_bytes());
        body.extend_from_slice(&entry.payload);
        let mut frame = Vec::with_capacity(body.len() + 8);
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32(&body).to_le_bytes());
        frame.extend_from_slice(&body);
        self.writer.write_all(&frame).context("appending to the outbox")?;
        self.segments.back_mut().expect("a segment").bytes += frame.len() as u64;
        self.next_id += 1;
        self.live_bytes += size;
        let id = entry.id;
        self.entries.push_back(entry);
        self.unsynced += 1;
        Ok((Some(id), dropped))
    }

    /// Fsyncs pending appends and the acknowledgement mark when the batch is due (or `force`),
    /// and deletes segments that hold no live record.
    pub fn sync(&mut self, force: bool) -> Result<()> {
        let due = force || self.unsynced >= self.opts.fsync_batch || self.last_sync.elapsed() >= self.opts.fsync_interval;
        if !due {
            return Ok(());
        }
        if self.unsynced > 0 {
            self.writer.sync_data().context("fsync of the outbox")?;
            self.unsynced = 0;
        }
        if self.ack_dirty {
            write_acked(&self.opts.dir, self.first_live)?;
            self.ack_dirty = false;
            self.gc()?;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// The broker acknowledged record `id`.
    pub fn ack(&mut self, id: u64) {
        if id < self.first_live {
            return;
        }
        self.acked_ahead.insert(id);
        self.advance();
    }

    /// The first live record with an id at or after `id`.
    pub fn next_from(&self, id: u64) -> Option<&Entry> {
        let i = self.entries.partition_point(|e| e.id < id);
        self.entries.get(i)
    }

    /// Every id below this one is gone (acknowledged or dropped).
    pub fn first_live(&self) -> u64 {
        self.first_live
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// The bytes the segment files hold on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// The bound on live records (`max_bytes` less one segment).
    pub fn max_live_bytes(&self) -> u64 {
        self.max_live
    }

    fn drop_oldest(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.live_bytes -= e.disk_bytes();
            self.first_live = e.id + 1;
            self.dropped_total += 1;
            self.ack_dirty = true;
            self.advance();
        }
    }

    /// Moves `first_live` past acknowledged records at the front.
    fn advance(&mut self) {
        while let Some(front) = self.entries.front() {
            if self.acked_ahead.remove(&front.id) {
                let e = self.entries.pop_front().expect("front");
                self.live_bytes -= e.disk_bytes();
                self.first_live = e.id + 1;
                self.ack_dirty = true;
            } else {
                break;
            }
        }
        let first_live = self.first_live;
        self.acked_ahead.retain(|&id| id >= first_live);
        if self.entries.is_empty() && self.first_live < self.next_id {
            self.first_live = self.next_id;
            self.ack_dirty = true;
        }
    }

    fn roll(&mut self) -> Result<()> {
        self.writer.sync_data().context("fsync of the outbox")?;
        self.unsynced = 0;
        let path = self.opts.dir.join(segment_name(self.next_id));
        self.writer = OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("creating {}", path.display()))?;
        self.segments.push_back(Segment { first_id: self.next_id, path, bytes: 0 });
        sync_dir(&self.opts.dir);
        Ok(())
    }

    /// Deletes the segments whose every record is gone (never the one being written).
    fn gc(&mut self) -> Result<()> {
        while self.segments.len() > 1 && self.segments[1].first_id <= self.first_live {
            let s = self.segments.pop_front().expect("segment");
            match fs::remove_file(&s.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", s.path.display())),
            }
        }
        Ok(())
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if let Err(e) = self.sync(true) {
            tracing::warn!(error = %e, "outbox: final fsync failed");
        }
    }
}

fn segment_name(first_id: u64) -> String {
    format!("seg-{first_id:020}.log")
}

fn read_acked(dir: &Path) -> Result<u64> {
    let path = dir.join("acked");
    match fs::read_to_string(&path) {
        Ok(s) => s.trim().parse().with_context(|| format!("{}: not a record id", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_acked(dir: &Path, first_live: u64) -> Result<()> {
    let tmp = dir.join("acked.tmp");
    let path = dir.join("acked");
    let mut f = File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(format!("{first_live}\n").as_bytes())?;
    f.sync_data()?;
    fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The records of one segment, and the length of its intact prefix (a torn tail is cut off).
fn read_segment(path: &Path) -> Result<(Vec<Entry>, u64)> {
    let mut data = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut data)).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos + 8 <= data.len() {
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().expect("4 bytes"));
        let Some(body) = data.get(pos + 8..pos + 8 + len) else { break };
        if len < 10 || crc32(body) != crc {
            break;
        }
        let id = u64::from_le_bytes(body[0..8].try_into().expect("8 bytes"));
        let tlen = u16::from_le_bytes(body[8..10].try_into().expect("2 bytes")) as usize;
        let Some(topic) = body.get(10..10 + tlen) else { break };
        let Ok(topic) = std::str::from_utf8(topic) else { break };
        out.push(Entry { id, topic: topic.to_string(), payload: body[10 + tlen..].to_vec() });
        pos += 8 + len;
    }
    if pos < data.len() {
        tracing::warn!(file = %path.display(), kept = pos, len = data.len(), "outbox: torn or corrupt tail cut off");
        let f = OpenOptions::new().write(true).open(path).with_context(|| format!("opening {}", path.display()))?;
        f.set_len(pos as u64)?;
        f.sync_all()?;
    }
    Ok((out, pos as u64))
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32 (IEEE).
fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c = CRC_TABLE[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path, max: u64) -> OutboxOptions {
        OutboxOptions { dir: dir.to_path_buf(), max_bytes: max, fsync_interval: Duration::from_millis(50), fsync_batch: 8 }
    }

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn survives_reopen_acks_in_order_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut ob = Outbox::open(opts(dir.path(), MIN_OUTBOX_BYTES)).unwrap();
            for i in 0..10 {
                ob.push("t/a", format!("p{i}").into_bytes()).unwrap();
            }
            ob.ack(0);
            ob.ack(2); // out of order: 0 goes, 2 waits for 1
            assert_eq!(ob.first_live(), 1);
            ob.ack(1);
            assert_eq!(ob.first_live(), 3);
            ob.sync(true).unwrap();
        }
        // A torn frame at the end.
        let seg = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|e| e == "log")).unwrap();
        OpenOptions::new().append(true).open(&seg).unwrap().write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        let mut ob = Outbox::open(opts(dir.path(), MIN_OUTBOX_BYTES)).unwrap();
        assert_eq!(ob.len(), 7);
        assert_eq!(ob.next_from(0).unwrap().id, 3);
        assert_eq!(ob.next_from(0).unwrap().payload, b"p3");
        let (id, _) = ob.push("t/a", b"new".to_vec()).unwrap();
        assert_eq!(id, Some(10));
    }

    #[test]
    fn bound_drops_oldest_and_disk_stays_under_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(opts(dir.path(), MIN_OUTBOX_BYTES)).unwrap();
        let payload = vec![b'x'; 1000];
        let mut dropped = 0;
        for _ in 0..200 {
            dropped += ob.push("t", payload.clone()).unwrap().1;
            ob.sync(false).unwrap();
            assert!(ob.disk_bytes() <= MIN_OUTBOX_BYTES, "{}", ob.disk_bytes());
        }
        ob.sync(true).unwrap();
        assert!(dropped > 100, "{dropped}");
        assert_eq!(ob.dropped_total, dropped);
        assert_eq!(ob.next_from(0).unwrap().id, dropped);
        assert_eq!(ob.len() as u64, 200 - dropped);
        drop(ob);
        let ob = Outbox::open(opts(dir.path(), MIN_OUTBOX_BYTES)).unwrap();
        assert_eq!(ob.len() as u64, 200 - dropped);
        assert_eq!(ob.next_from(0).unwrap().id, dropped);
    }
}
