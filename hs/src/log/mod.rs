//! The segmented, memory-mapped log. It *is* the publish queue: `append` writes
//! the record in place in a pre-faulted mapping and publishes the new tail with
//! one atomic store; the sender streams byte ranges `[sent, tail)` straight out
//! of the mapping. Only this module maps files or calls fsync/msync.
//!
//! Positions are byte offsets in the history. Segment `S` holds positions
//! `[S.base, S.base + segment_bytes)`; bases are multiples of `segment_bytes`,
//! the same on master and slave, so a record has the same position everywhere.
//!
//! Crash behaviour, step by step (see ARCHITECTURE.md for the whole picture):
//! - during `append`: the length word is stored last; a record whose length is
//!   there but whose body is torn fails its CRC on recovery and is cut off.
//! - during segment preparation (new or recycled): the file is `*.seg.*.tmp`
//!   until complete; a leftover tmp is deleted on open. A recycled segment's
//!   old records that a power cut brings back past the tail carry their old
//!   positions and fail the position check: recovery cuts there.
//! - during compaction: the snapshot is durable before any segment is deleted;
//!   segments wholly below the newest snapshot are deleted on open.

pub mod mem;
pub mod meta;
mod order;
pub mod segment;
pub mod snapshot;
pub mod storage;

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use order::{OrderedMutex, OrderedRwLock, Rank};
use parking_lot::{Condvar, Mutex};

use crate::proto::catchup::Epochs;
use crate::proto::record::{self, Decoded, Op, RecordError, RecordRef};
use meta::Meta;
use segment::Segment;
use snapshot::{Snapshot, State};
use storage::{FileStorage, LockError, ReadAt, Storage};

/// Sizes and limits of a log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub dir: PathBuf,
    /// Bytes of records per segment file. Larger: fewer files and rolls; smaller:
    /// finer retention. Fixed for a history (a slave adopts its master's).
    pub segment_bytes: u64,
    /// Largest record, header included; checked before anything is written.
    pub record_bytes_max: usize,
    /// Bytes of segments kept on disk; older ones are folded into a snapshot
    /// and deleted. At least two segments are always kept.
    pub retention_bytes_max: u64,
    /// Where the files are: real ones ([`FileStorage`]) unless a test gives
    /// it an in-memory disk ([`mem::MemStorage`]).
    pub storage: Arc<dyn Storage>,
    /// Who prepares the next segment.
    pub preparer: Preparer,
}

/// Who prepares the next segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preparer {
    /// The `hs-prepare` thread, ahead of time: a roll takes a ready segment and
    /// an append never waits for the disk (the default).
    Thread,
    /// The caller whose append needs it, at that moment: no thread, so every
    /// disk call happens in the caller's order (the deterministic simulation).
    Caller,
}

impl LogConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LogConfig {
            dir: dir.into(),
            segment_bytes: 64 << 20,
            record_bytes_max: 1 << 20,
            retention_bytes_max: 1 << 30,
            storage: Arc::new(FileStorage),
            preparer: Preparer::Thread,
        }
    }
}

/// What the log refuses, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("record of {len} bytes exceeds record_bytes_max ({max} bytes); split the value or raise the limit")]
    TooLarge { len: usize, max: usize },
    #[error("key of {len} bytes exceeds the 65535-byte key limit")]
    KeyTooLarge { len: usize },
    #[error("log is full: the next segment is not ready ({why}); retry, or check disk space and retention")]
    Full { why: String },
    #[error(
        "an earlier write to disk failed ({0}); the log refuses writes until the node is reopened"
    )]
    PreviousIo(String),
    #[error(
        "expected data at position {expected}, got {got}: the stream skipped or repeated bytes"
    )]
    Gap { expected: u64, got: u64 },
    #[error("position {pos} is no longer in the log (it starts at {first}); a snapshot is needed")]
    Gone { pos: u64, first: u64 },
    #[error("invalid record: {0}")]
    Invalid(#[from] RecordError),
    #[error("records at {pos} cross the end of segment {segment_base}: the peer uses another segment size")]
    CrossesSegment { pos: u64, segment_base: u64 },
    #[error("record epoch {found} at position {pos} is older than epoch {last} already in the log: forked history")]
    EpochBackwards { pos: u64, last: u32, found: u32 },
    #[error("log has no history yet; it gets one when it becomes master or follows one")]
    NoHistory,
    #[error("this node is not taking writes (not master, or handing over)")]
    Sealed,
    /// Another open log (this process or another) holds the directory's lock.
    #[error("log directory {} is in use by {} (it holds {}); stop that node, or give this one another directory", dir.display(), pid.map_or("another process".to_string(), |p| format!("process {p}")), dir.join(LOCK_FILE).display())]
    Locked { dir: PathBuf, pid: Option<u32> },
    #[error("log directory {dir} is inconsistent: {what}; move it away to resync this node from its peer")]
    Inconsistent { dir: PathBuf, what: String },
    /// The directory holds a log of an earlier on-disk format (`found`: its
    /// meta file's magic), whose checksums this build does not compute.
    #[error("log directory {} was written by an older hs (format {found}, CRC32 checksums); this build reads only format HSMETA03 (CRC32C): move the directory away and start the node again, to resync it from its peer (or to start a new history if it is alone)", dir.display())]
    OldFormat { dir: PathBuf, found: String },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LogError + 'a {
    move |source| LogError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What opening the log found and repaired.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    pub first: u64,
    pub tail: u64,
    pub records: u64,
    /// Where a torn or corrupt record was found and the log cut, if anywhere.
    pub truncated_at: Option<u64>,
    /// Why it was cut.
    pub reason: Option<String>,
    /// Segment files dropped after the cut.
    pub segments_dropped: usize,
    pub snapshot_pos: Option<u64>,
    pub duration: Duration,
}

/// `now + d`, saturating instead of panicking on an absurd duration.
pub(crate) fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or(now + Duration::from_secs(100 * 365 * 86_400))
}

/// The file in a log directory whose exclusive `flock` the open log holds; it
/// contains the holder's pid (for the error a second open gets).
pub const LOCK_FILE: &str = "lock";

/// Longest a blocking roll (the slave's) waits for the preparer.
const SEGMENT_WAIT_MAX: Duration = Duration::from_secs(10);

/// Segments the preparer keeps ready past the writing one. Two, so that a roll
/// finds one even while the next is still being prepared; each costs
/// `segment_bytes` of disk and of page cache.
const SPARE_SEGMENTS: usize = 2;

/// Segments retired by compaction that are kept (under their old names) to be
/// recycled as spares instead of creating new files; more are deleted. Each
/// costs `segment_bytes` of disk until it is reused.
const RETIRED_SEGMENTS_MAX: usize = 4;

struct Appender {
    /// The segment being written; `None` before the log has a history.
    seg: Option<Arc<Segment>>,
    tail: u64,
    epoch: u32,
    epochs: Epochs,
    failed: Option<String>,
    meta: Meta,
    /// Refuse `append` (not replication): this node is not taking writes.
    sealed: bool,
    /// Refuse every write, replication too, for good (`halt`).
    halted: bool,
    /// Where a segment-end marker was written, when no record follows it yet
    /// (see `epoch_start`).
    skipped_at: Option<u64>,
}

/// Where the epoch of a record at `pos` starts, if it is the first record of
/// its epoch. When that record follows a segment-end marker (at
/// `skipped_at`), the marker was written by the same writer, in the same
/// epoch, so the epoch starts at the marker: the previous epoch's records end
/// there, not at the next segment's base. Otherwise a node that takes over
/// near a segment's end would tell `catchup::decide` that the old epoch runs
/// to that base, and the old master, rejoining, would keep records the new one
/// never had (found by the replication simulation). The master (`append`), the
/// slave (`append_replicated`) and recovery all apply this one rule, so every
/// copy of a log has the same epoch starts.
fn epoch_start(epochs: &Epochs, epoch: u32, pos: u64, skipped_at: Option<u64>) -> u64 {
    match skipped_at {
        Some(at) if epoch > epochs.last_epoch() => at,
        _ => pos,
    }
}

/// A chunk of committed log bytes inside one segment.
pub struct Chunk {
    pub seg: Arc<Segment>,
    pub pos: u64,
    pub len: usize,
}

impl Chunk {
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `read` only returns ranges below the committed tail.
        unsafe { self.seg.slice(self.pos, self.len) }
    }
}

/// The next segments, prepared by the `hs-prepare` thread, which holds only this
/// (never the log, so dropping the log stops it).
struct SpareShared {
    m: OrderedMutex<Spare>,
    /// Signalled when a spare is needed (or on shutdown).
    need_cv: Condvar,
    /// Signalled when a spare becomes ready (publishers waiting on Full).
    ready_cv: Condvar,
    dir: PathBuf,
    storage: Arc<dyn Storage>,
}

struct Spare {
    /// Prepared segments, at consecutive bases from `want_base`; at most
    /// `SPARE_SEGMENTS`.
    ready: VecDeque<Segment>,
    /// Segments compaction retired, to be recycled (once no reader holds them);
    /// at most `RETIRED_SEGMENTS_MAX`. Their positions are all below the log's
    /// first position.
    retired: Vec<Arc<Segment>>,
    /// Base the first ready spare must have.
    want_base: u64,
    /// Why the last preparation failed; kept until one succeeds, so every caller
    /// that finds the log full is told the cause (a full disk, say).
    error: Option<String>,
    /// A caller hit the error: try again.
    retry: bool,
    /// Spares made from retired segments (the rest were created).
    recycled: u64,
    shutdown: bool,
    history: u128,
    segment_bytes: u64,
}

pub struct Log {
    cfg: LogConfig,
    app: OrderedMutex<Appender>,
    committed: AtomicU64,
    flushed: AtomicU64,
    first: AtomicU64,
    segs: OrderedRwLock<VecDeque<Arc<Segment>>>,
    spare: Arc<SpareShared>,
    flush_lock: OrderedMutex<()>,
    /// Lowest position a connected reader still needs; compaction keeps it.
    pin: AtomicU64,
    failed: AtomicBool,
    compact_lock: OrderedMutex<()>,
    preparer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Holds the directory's exclusive lock until the log is dropped.
    _lock: Box<dyn Send + Sync>,
}

/// Takes the directory's exclusive lock (an `flock` on `<dir>/lock` holding
/// this process's pid, for real files), never blocking. The kernel releases it
/// when the file closes, however the process ends, so a stale lock file never
/// keeps a directory locked.
fn lock_dir(storage: &dyn Storage, dir: &Path) -> Result<Box<dyn Send + Sync>, LogError> {
    storage.lock_dir(dir).map_err(|e| match e {
        LockError::Held { pid } => LogError::Locked {
            dir: dir.to_path_buf(),
            pid,
        },
        LockError::Io(source) => LogError::Io {
            op: "lock",
            path: dir.join(LOCK_FILE),
            source,
        },
    })
}

impl Log {
    /// Opens (or creates) the log in `cfg.dir`, recovering a torn tail.
    /// Starts the segment-preparer thread.
    pub fn open(cfg: LogConfig) -> Result<(Arc<Log>, Recovery), LogError> {
        let t0 = Instant::now();
        let dir = cfg.dir.clone();
        let fs = cfg.storage.clone();
        fs.create_dir_all(&dir)
            .map_err(io_err("create directory", &dir))?;
        // Before anything in the directory is touched: another open log would have
        // its tail zeroed and its spare deleted under its mapping (SIGBUS).
        let lock = lock_dir(&*fs, &dir)?;
        let mut rec = Recovery::default();
        let mut seg_paths = Vec::new();
        let mut snaps = Vec::new();
        for name in fs.list(&dir).map_err(io_err("list", &dir))? {
            let path = dir.join(&name);
            if name.ends_with(".tmp") {
                let _ = fs.remove(&path);
            } else if let Some(base) = segment::parse_name(&name) {
                seg_paths.push((base, path));
            } else if let Some(pos) = snapshot::parse_name(&name) {
                snaps.push((pos, path));
            }
        }
        seg_paths.sort();
        snaps.sort();
        if let Some(found) = Meta::old_format(&*fs, &dir) {
            return Err(LogError::OldFormat { dir, found });
        }
        let meta = Meta::load(&*fs, &dir).map_err(io_err("read meta", &dir))?;
        let mut meta = meta.unwrap_or(Meta {
            history: 0,
            epoch: 0,
            segment_bytes: cfg.segment_bytes,
            node: 0,
            peer: 0,
        });
        if meta.history == 0 && !seg_paths.is_empty() {
            return Err(LogError::Inconsistent {
                dir,
                what: "segments without a meta file".into(),
            });
        }
        // The newest snapshot that decodes; older ones are redundant.
        let mut snap: Option<Snapshot> = None;
        while let Some((pos, path)) = snaps.pop() {
            match fs
                .read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| Snapshot::decode(&b))
            {
                Ok(s) if s.pos == pos && s.history == meta.history => {
                    snap = Some(s);
                    for (_, old) in snaps.drain(..) {
                        let _ = fs.remove(&old);
                    }
                    break;
                }
                Ok(_) | Err(_) => {
                    tracing::warn!(path = %path.display(), "snapshot unreadable or from another history; ignored");
                    let _ = fs.remove(&path);
                }
            }
        }
        let mut first = snap.as_ref().map_or(0, |s| s.pos);
        let mut epochs = snap.as_ref().map(|s| s.epochs.clone()).unwrap_or_default();
        rec.snapshot_pos = snap.as_ref().map(|s| s.pos);
        let mut segs: VecDeque<Arc<Segment>> = VecDeque::new();
        for (base, path) in seg_paths {
            if base < first {
                // Folded into the snapshot by a compaction that crashed before deleting it.
                let _ = fs.remove(&path);
                continue;
            }
            let s = Segment::open(&*fs, &path).map_err(io_err("open segment", &path))?;
            if s.base != base || s.size != meta.segment_bytes || s.history != meta.history {
                return Err(LogError::Inconsistent {
                    dir,
                    what: format!("segment {} does not match the meta file", path.display()),
                });
            }
            segs.push_back(Arc::new(s));
        }
        if let Some(s) = segs.front() {
            if snap.is_none() {
                first = s.base;
            } else if s.base != first {
                return Err(LogError::Inconsistent {
                    dir,
                    what: format!("first segment at {} but snapshot at {first}", s.base),
                });
            }
        }
        // Scan every record: CRC, position, epoch order. Stop at the first bad one.
        let max = cfg.record_bytes_max;
        let mut tail = first;
        let mut cut: Option<(usize, u64, String)> = None;
        let mut spares_from: Option<usize> = None;
        let mut ended_in: Option<usize> = None;
        let mut skipped_at: Option<u64> = None;
        'segs: for (i, s) in segs.iter().enumerate() {
            if s.base != tail {
                cut = Some((
                    i,
                    tail,
                    format!("segment {} missing", segment::file_name(tail)),
                ));
                break;
            }
            let mut pos = s.base;
            loop {
                if pos == s.end() {
                    tail = pos;
                    continue 'segs;
                }
                // SAFETY: no writer exists yet.
                let buf = unsafe { s.slice(pos, (s.end() - pos) as usize) };
                match record::decode(buf, pos, max) {
                    Ok(Decoded::Record { rec: r, size }) => {
                        let at = epoch_start(&epochs, r.epoch, pos, skipped_at.take());
                        if let Err((last, found)) = epochs.observe(r.epoch, at) {
                            cut = Some((i, pos, format!("epoch {found} after epoch {last}")));
                            break 'segs;
                        }
                        rec.records += 1;
                        pos += size as u64;
                    }
                    Ok(Decoded::Skip) => {
                        skipped_at = Some(pos);
                        tail = s.end();
                        continue 'segs;
                    }
                    Ok(Decoded::End) => {
                        tail = pos;
                        ended_in = Some(i);
                        // Later segments: empty ones are prepared spares; data in
                        // one is past a hole, a torn tail.
                        let later_data = segs.iter().skip(i + 1).any(|s| {
                            // SAFETY: no writer exists yet.
                            unsafe { s.slice(s.base, 8) }.iter().any(|&b| b != 0)
                        });
                        if later_data {
                            cut = Some((i, pos, "data after the end of a segment".into()));
                        } else {
                            spares_from = Some(i + 1);
                        }
                        break 'segs;
                    }
                    Err(e) => {
                        cut = Some((i, pos, e.to_string()));
                        break 'segs;
                    }
                }
            }
        }
        if let (Some(i), None) = (ended_in, &cut) {
            // Zeros end the log here, but a power cut can leave pages written
            // back past a lost one: stale records after the hole. Zero them, or
            // the next records, landing on one's boundary, would chain into it
            // and bring it back (found by the simulation).
            let s = &segs[i];
            // SAFETY: no writer exists yet.
            if unsafe { s.slice(tail, (s.end() - tail) as usize) }
                .iter()
                .any(|&b| b != 0)
            {
                // SAFETY: no other user of the log exists yet.
                unsafe { s.slice_mut(tail, (s.end() - tail) as usize).fill(0) };
                tracing::warn!(dir = %dir.display(), pos = tail, "bytes after the log's end zeroed (a torn tail)");
            }
        }
        if let Some(i) = spares_from {
            while segs.len() > i {
                let s = segs.pop_back().unwrap();
                let _ = fs.remove(&s.path);
            }
        }
        if let Some((i, pos, why)) = cut {
            tail = pos;
            // Zero the rest of the cut segment so no stale record can ever be read as valid again.
            if let Some(s) = segs.get(i) {
                if pos >= s.base && pos < s.end() {
                    // SAFETY: no other user of the log exists yet.
                    unsafe { s.slice_mut(pos, (s.end() - pos) as usize).fill(0) };
                    s.flush(pos, s.end()).map_err(io_err("flush", &s.path))?;
                }
            }
            let keep = if segs.get(i).is_some_and(|s| pos >= s.base) {
                i + 1
            } else {
                i
            };
            while segs.len() > keep {
                let s = segs.pop_back().unwrap();
                let _ = fs.remove(&s.path);
                rec.segments_dropped += 1;
            }
            epochs.truncate(pos);
            tracing::warn!(dir = %dir.display(), pos, reason = %why, dropped_segments = rec.segments_dropped, "log cut at a torn or corrupt record");
            rec.truncated_at = Some(pos);
            rec.reason = Some(why);
        }
        // What recovery kept may still be only in the page cache (the process
        // died, the kernel did not): `flushed` starts at the tail, so no later
        // flush would cover it, and a power cut after that flush would lose it
        // under records that were flushed (found by the simulation). Sync it now,
        // and the zeros past the tail too: a truncation the dead process zeroed
        // but did not sync would otherwise bring its cut records back after a
        // power cut (found by the simulation as well).
        for s in &segs {
            s.flush(s.base, s.end())
                .map_err(io_err("sync recovered records", &s.path))?;
        }
        // The same for names: the dead process may have renamed a segment into
        // place and died before the directory's fsync, and recovery removed
        // files above. Without this, records flushed from now on into that
        // segment are lost with its name in a power cut (found by the simulation).
        fs.sync_dir(&dir)
            .map_err(io_err("sync the log directory", &dir))?;
        meta.epoch = meta.epoch.max(epochs.last_epoch());
        rec.first = first;
        rec.tail = tail;
        // The writing segment: the one holding `tail`; none if tail is at a segment end.
        let cur = segs.back().filter(|s| tail < s.end()).cloned();
        let next_base = cur.as_ref().map_or(tail, |s| s.end());
        let log = Arc::new(Log {
            app: OrderedMutex::new(
                Rank::App,
                Appender {
                    seg: cur,
                    tail,
                    epoch: meta.epoch,
                    epochs,
                    failed: None,
                    meta,
                    sealed: false,
                    halted: false,
                    // A scan that ended right after a marker: the next record's
                    // epoch may start there.
                    skipped_at,
                },
            ),
            committed: AtomicU64::new(tail),
            flushed: AtomicU64::new(tail),
            first: AtomicU64::new(first),
            segs: OrderedRwLock::new(Rank::Segs, segs),
            spare: Arc::new(SpareShared {
                m: OrderedMutex::new(
                    Rank::Spare,
                    Spare {
                        ready: VecDeque::new(),
                        retired: Vec::new(),
                        recycled: 0,
                        want_base: next_base,
                        error: None,
                        retry: false,
                        shutdown: false,
                        history: meta.history,
                        segment_bytes: meta.segment_bytes,
                    },
                ),
                need_cv: Condvar::new(),
                ready_cv: Condvar::new(),
                dir: dir.clone(),
                storage: fs.clone(),
            }),
            flush_lock: OrderedMutex::new(Rank::Flush, ()),
            pin: AtomicU64::new(u64::MAX),
            failed: AtomicBool::new(false),
            compact_lock: OrderedMutex::new(Rank::Compact, ()),
            preparer: Mutex::new(None),
            _lock: lock,
            cfg,
        });
        if log.cfg.preparer == Preparer::Thread {
            let shared = log.spare.clone();
            let h = std::thread::Builder::new()
                .name("hs-prepare".into())
                .spawn(move || preparer(shared))
                .map_err(io_err("spawn preparer thread", &dir))?;
            *log.preparer.lock() = Some(h);
        }
        rec.duration = t0.elapsed();
        Ok((log, rec))
    }

    pub fn config(&self) -> &LogConfig {
        &self.cfg
    }
    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }

    /// One past the last complete record (Acquire: everything below is readable).
    #[inline]
    pub fn tail(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }
    pub fn flushed(&self) -> u64 {
        self.flushed.load(Ordering::Acquire)
    }
    pub fn first(&self) -> u64 {
        self.first.load(Ordering::Acquire)
    }
    pub fn meta(&self) -> Meta {
        self.app.lock().meta
    }
    pub fn epochs(&self) -> Epochs {
        self.app.lock().epochs.clone()
    }
    pub fn last_epoch(&self) -> u32 {
        self.app.lock().epochs.last_epoch()
    }
    pub fn segment_bytes(&self) -> u64 {
        self.app.lock().meta.segment_bytes
    }
    /// Spare segments made by recycling a retired one instead of creating a file.
    pub fn segments_recycled(&self) -> u64 {
        self.spare.m.lock().recycled
    }
    /// Bytes of segment files on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.segs.read().iter().map(|s| s.size).sum()
    }

    /// Gives the log a new history (a fresh master) and prepares its first segment.
    pub fn start_history(&self, history: u128) -> Result<(), LogError> {
        let mut a = self.app.lock();
        assert_eq!(a.meta.history, 0, "log already has a history");
        a.meta.history = history;
        a.meta.epoch = a.meta.epoch.max(1);
        a.epoch = a.meta.epoch;
        a.meta
            .store(&*self.cfg.storage, &self.cfg.dir)
            .map_err(io_err("write meta", &self.cfg.dir))?;
        drop(a);
        self.kick_preparer();
        Ok(())
    }

    /// Makes sure a segment is open for appends, waiting for the preparer if needed
    /// (a fresh or just-recovered log): the first `append` then cannot get `Full`.
    pub fn ensure_writable(&self) -> Result<(), LogError> {
        let mut a = self.app.lock();
        if a.seg.as_ref().is_some_and(|s| a.tail < s.end()) {
            return Ok(());
        }
        self.roll(&mut a, true)
    }

    /// Durably records this node's id and its peer's (0: leave as is).
    pub fn set_ids(&self, node: u64, peer: u64) -> Result<(), LogError> {
        let mut a = self.app.lock();
        let mut m = a.meta;
        if node != 0 {
            m.node = node;
        }
        if peer != 0 {
            m.peer = peer;
        }
        if m != a.meta {
            m.store(&*self.cfg.storage, &self.cfg.dir)
                .map_err(io_err("write meta", &self.cfg.dir))?;
            a.meta = m;
        }
        Ok(())
    }

    /// Seals (or unseals) the log against `append`. Once `seal(true)` returns, no
    /// append can land: it is checked under the same lock appends take.
    pub fn seal(&self, sealed: bool) {
        self.app.lock().sealed = sealed;
    }

    /// Refuses every later write (`append` and `append_replicated` get `Sealed`)
    /// until the log is reopened; `seal(false)` does not undo it. For a node that
    /// must stop (its application panicked).
    pub fn halt(&self) {
        let mut a = self.app.lock();
        a.halted = true;
        a.sealed = true;
    }

    /// Durably records that this node has taken or seen `epoch`; new records carry it.
    /// Refuses to go backwards.
    pub fn set_epoch(&self, epoch: u32) -> Result<(), LogError> {
        let mut a = self.app.lock();
        assert!(
            epoch >= a.meta.epoch,
            "epoch must only grow: {} -> {epoch}",
            a.meta.epoch
        );
        if epoch != a.meta.epoch {
            let mut m = a.meta;
            m.epoch = epoch;
            m.store(&*self.cfg.storage, &self.cfg.dir)
                .map_err(io_err("write meta", &self.cfg.dir))?;
            a.meta = m;
        }
        a.epoch = epoch;
        Ok(())
    }

    /// Appends one record; returns its position. Never waits for the disk or the
    /// network; fails with `Full` when the next segment is not prepared yet.
    #[inline]
    pub fn append(&self, op: Op, key: &[u8], value: &[u8]) -> Result<u64, LogError> {
        self.append_if(op, key, value, || true)
    }

    /// Like `append`, but `admit` is asked under the append lock, just before the
    /// write: `false` refuses it (`Sealed`). A condition checked there cannot
    /// change between the check and the write (the master's lease, say).
    #[inline]
    pub fn append_if(
        &self,
        op: Op,
        key: &[u8],
        value: &[u8],
        admit: impl Fn() -> bool,
    ) -> Result<u64, LogError> {
        let len = record::RECORD_HEADER_BYTES + key.len() + value.len();
        if key.len() > record::KEY_BYTES_MAX {
            return Err(LogError::KeyTooLarge { len: key.len() });
        }
        if len > self.cfg.record_bytes_max {
            return Err(LogError::TooLarge {
                len,
                max: self.cfg.record_bytes_max,
            });
        }
        let size = record::align_up(len) as u64;
        let mut a = self.app.lock();
        if let Some(f) = &a.failed {
            return Err(LogError::PreviousIo(f.clone()));
        }
        if a.sealed || a.halted || !admit() {
            return Err(LogError::Sealed);
        }
        let pos = a.tail;
        let fits = a.seg.as_ref().is_some_and(|s| pos + size <= s.end());
        if !fits {
            self.roll(&mut a, false)?;
        }
        let pos = a.tail;
        let seg = a.seg.as_ref().expect("rolled");
        // SAFETY: we hold the append lock and write at/after the committed tail.
        let buf = unsafe { seg.slice_mut(pos, size as usize) };
        record::encode_into(buf, pos, a.epoch, op, key, value);
        if a.epochs.last_epoch() != a.epoch {
            let (e, at) = (a.epoch, epoch_start(&a.epochs, a.epoch, pos, a.skipped_at));
            a.epochs.observe(e, at).expect("epoch only grows");
        }
        a.skipped_at = None;
        a.tail = pos + size;
        self.committed.store(a.tail, Ordering::Release);
        Ok(pos)
    }

    /// Like `append`, but waits up to `timeout` for a segment to be prepared.
    pub fn append_wait(
        &self,
        op: Op,
        key: &[u8],
        value: &[u8],
        timeout: Duration,
    ) -> Result<u64, LogError> {
        self.append_wait_if(op, key, value, timeout, || true)
    }

    /// `append_wait` with `append_if`'s admission check.
    pub fn append_wait_if(
        &self,
        op: Op,
        key: &[u8],
        value: &[u8],
        timeout: Duration,
        admit: impl Fn() -> bool,
    ) -> Result<u64, LogError> {
        // The clock is read only when the log is full: not on the hot path.
        let first = self.append_if(op, key, value, &admit);
        if !matches!(first, Err(LogError::Full { .. })) || self.cfg.preparer == Preparer::Caller {
            // With `Preparer::Caller` the append itself prepared the segment:
            // `Full` is the disk's answer, and nobody else would try again.
            return first;
        }
        let deadline = deadline_after(timeout);
        let waited = Instant::now();
        loop {
            match self.append_if(op, key, value, &admit) {
                Err(LogError::Full { .. }) if Instant::now() < deadline => {
                    // Wait for the preparer's next attempt (it signals after each one).
                    let mut sp = self.spare.m.lock();
                    if sp.ready.is_empty() {
                        self.spare.ready_cv.wait_until(sp.guard(), deadline);
                    }
                }
                r => {
                    segment::note_roll_wait(waited.elapsed());
                    return r;
                }
            }
        }
    }

    /// Moves the appender to the next segment: writes the end marker in the rest of the
    /// current one and takes the prepared spare. `block`: wait for (or build) the spare.
    fn roll(&self, a: &mut Appender, block: bool) -> Result<(), LogError> {
        if a.meta.history == 0 {
            return Err(LogError::NoHistory);
        }
        let next = match &a.seg {
            Some(s) => s.end(),
            None => a.tail,
        };
        let mut sp = self.spare.m.lock();
        if sp.ready.front().is_some_and(|s| s.base != next) {
            drop_spares(&mut sp, &*self.cfg.storage);
        }
        if sp.want_base != next {
            sp.want_base = next;
            self.spare.need_cv.notify_one();
        }
        // Only the preparer creates segments; a blocking caller (the slave) waits for it.
        let deadline = Instant::now() + SEGMENT_WAIT_MAX;
        let waited =
            (sp.ready.is_empty() && self.cfg.preparer != Preparer::Caller).then(Instant::now);
        while sp.ready.is_empty() {
            if self.cfg.preparer == Preparer::Caller {
                // No thread: this roll prepares (or recycles) the segment itself.
                let (base, h, size) = (sp.want_base, sp.history, sp.segment_bytes);
                let old = take_recyclable(&mut sp, base, size);
                let recycling = old.is_some();
                let (fs, dir) = (&*self.spare.storage, &self.spare.dir);
                let s = match old {
                    Some(old) => old.recycle(fs, dir, h, base),
                    None => Segment::create(fs, dir, h, base, size),
                }
                .map_err(|e| LogError::Full {
                    why: format!("preparing segment at {base}: {e}"),
                })?;
                sp.ready.push_back(s);
                sp.recycled += u64::from(recycling);
                break;
            }
            if let Some(e) = sp.error.clone() {
                sp.retry = true;
                self.spare.need_cv.notify_one();
                return Err(LogError::Full { why: e });
            }
            if !block || Instant::now() >= deadline {
                self.spare.need_cv.notify_one();
                return Err(LogError::Full {
                    why: "segment preparation is behind".into(),
                });
            }
            self.spare.need_cv.notify_one();
            self.spare.ready_cv.wait_until(sp.guard(), deadline);
        }
        if let Some(t) = waited {
            segment::note_roll_wait(t.elapsed());
        }
        let new = Arc::new(sp.ready.pop_front().unwrap());
        sp.want_base = new.end();
        self.spare.need_cv.notify_one();
        drop(sp);
        if let Some(cur) = &a.seg {
            if a.tail < cur.end() {
                // SAFETY: append lock held; at the tail.
                record::encode_skip(unsafe { cur.slice_mut(a.tail, record::SKIP_BYTES) }, a.tail);
                a.skipped_at = Some(a.tail);
            }
        }
        self.segs.write().push_back(new.clone());
        a.seg = Some(new);
        a.tail = next;
        self.committed.store(next, Ordering::Release);
        Ok(())
    }

    /// Tells the preparer what to build next (call without the append lock).
    fn kick_preparer(&self) {
        let a = self.app.lock();
        let next = a.seg.as_ref().map_or(a.tail, |s| s.end());
        let (h, size) = (a.meta.history, a.meta.segment_bytes);
        drop(a);
        let mut sp = self.spare.m.lock();
        if sp
            .ready
            .front()
            .is_some_and(|s| s.base != next || s.history != h)
        {
            drop_spares(&mut sp, &*self.cfg.storage);
        }
        sp.want_base = next;
        sp.history = h;
        sp.segment_bytes = size;
        sp.error = None;
        self.spare.need_cv.notify_one();
    }

    /// Bytes of committed records from `from`, at most `max_bytes` (but at least one
    /// whole record), within one segment, cut at a record boundary. `None`: nothing new.
    pub fn read(&self, from: u64, max_bytes: usize) -> Result<Option<Chunk>, LogError> {
        let tail = self.tail();
        if from >= tail {
            return Ok(None);
        }
        let first = self.first();
        if from < first {
            return Err(LogError::Gone { pos: from, first });
        }
        let seg = {
            let segs = self.segs.read();
            let i = segs.partition_point(|s| s.end() <= from);
            match segs.get(i) {
                Some(s) if s.base <= from => s.clone(),
                _ => {
                    return Err(LogError::Gone {
                        pos: from,
                        first: self.first(),
                    })
                }
            }
        };
        let end = tail.min(seg.end());
        let mut len = (end - from) as usize;
        if len > max_bytes {
            // Walk our own record headers to cut at a boundary.
            // SAFETY: below the committed tail.
            let buf = unsafe { seg.slice(from, len) };
            let mut at = 0usize;
            while at < len {
                // A segment-end marker owns the rest of the segment (the tail is at the
                // segment's end once it is written): it goes whole, with its zeros, as
                // the slave expects. The remainder is shorter than one record.
                let is_skip = buf[at..]
                    .get(0..4)
                    .is_some_and(|w| w == record::SKIP_MARKER.to_le_bytes());
                let sz = if is_skip {
                    len - at
                } else {
                    record::peek_size(&buf[at..]).unwrap_or(len - at)
                };
                if at + sz > max_bytes && at > 0 {
                    break;
                }
                at += sz;
            }
            len = at.min(len);
        }
        Ok(Some(Chunk {
            seg,
            pos: from,
            len,
        }))
    }

    /// Writes records received from the master at `pos` (the slave's path): each is
    /// checked (CRC, position, epoch order, size) before any byte is written, then
    /// the bytes are copied as they are. Returns the new tail.
    pub fn append_replicated(&self, pos: u64, bytes: &[u8]) -> Result<u64, LogError> {
        let mut a = self.app.lock();
        if let Some(f) = &a.failed {
            return Err(LogError::PreviousIo(f.clone()));
        }
        if a.halted {
            return Err(LogError::Sealed);
        }
        if pos != a.tail {
            return Err(LogError::Gap {
                expected: a.tail,
                got: pos,
            });
        }
        if bytes.is_empty() {
            return Ok(pos);
        }
        if a.seg.as_ref().is_none_or(|s| pos >= s.end()) {
            self.roll(&mut a, true)?;
        }
        let seg = a.seg.clone().expect("rolled");
        if pos + bytes.len() as u64 > seg.end() {
            return Err(LogError::CrossesSegment {
                pos,
                segment_base: seg.base,
            });
        }
        // Validate everything first: nothing is written from a bad frame.
        let mut at = 0usize;
        let mut last = a.epochs.last_epoch();
        let mut new_epochs: Vec<(u32, u64)> = Vec::new();
        let mut skipped = false;
        let mut after_skip = a.skipped_at;
        let mut skip_pos: Option<u64> = None;
        while at < bytes.len() {
            let p = pos + at as u64;
            match record::decode(&bytes[at..], p, self.cfg.record_bytes_max)? {
                Decoded::Record { rec, size } => {
                    if rec.epoch < last {
                        return Err(LogError::EpochBackwards {
                            pos: p,
                            last,
                            found: rec.epoch,
                        });
                    }
                    if rec.epoch > last {
                        let at = match after_skip {
                            Some(at) if rec.epoch > a.epochs.last_epoch() => at,
                            _ => p,
                        };
                        new_epochs.push((rec.epoch, at));
                        last = rec.epoch;
                    }
                    after_skip = None;
                    at += size;
                }
                Decoded::Skip => {
                    // The marker ends the segment: only zeros may follow, up to its end.
                    if pos + bytes.len() as u64 != seg.end()
                        || bytes[at + record::SKIP_BYTES..].iter().any(|&b| b != 0)
                    {
                        return Err(RecordError::BadSkip { pos: p }.into());
                    }
                    skipped = true;
                    skip_pos = Some(p);
                    at = bytes.len();
                }
                Decoded::End => {
                    return Err(RecordError::BadLength {
                        pos: p,
                        len: 0,
                        max: self.cfg.record_bytes_max,
                    }
                    .into())
                }
            }
        }
        // SAFETY: append lock held; writing at the tail.
        unsafe { seg.slice_mut(pos, bytes.len()) }.copy_from_slice(bytes);
        for (e, p) in new_epochs {
            a.epochs.observe(e, p).expect("checked above");
        }
        a.skipped_at = skip_pos.or(after_skip);
        a.tail = if skipped {
            seg.end()
        } else {
            pos + bytes.len() as u64
        };
        self.committed.store(a.tail, Ordering::Release);
        Ok(a.tail)
    }

    /// Writes `[flushed, tail)` to disk. After a failure the log refuses writes
    /// until reopened: the kernel may have dropped the dirty pages (redb's PreviousIo).
    pub fn flush(&self) -> Result<u64, LogError> {
        let _g = self.flush_lock.lock();
        if self.failed.load(Ordering::Acquire) {
            return Err(LogError::PreviousIo(
                self.app.lock().failed.clone().unwrap_or_default(),
            ));
        }
        let to = self.tail();
        let from = self.flushed();
        if to <= from {
            return Ok(from);
        }
        let segs: Vec<Arc<Segment>> = self
            .segs
            .read()
            .iter()
            .filter(|s| s.end() > from && s.base < to)
            .cloned()
            .collect();
        for s in segs {
            if let Err(e) = s.flush(from, to) {
                let msg = format!("msync {}: {e}", s.path.display());
                self.fail_writes(&mut self.app.lock(), &msg);
                return Err(LogError::PreviousIo(msg));
            }
        }
        // `truncate` and `reset_to` lower the tail only under `flush_lock`, so
        // `to` is still at or below the tail here.
        debug_assert!(to <= self.tail(), "flushed {to} above the tail");
        self.flushed.fetch_max(to, Ordering::AcqRel);
        Ok(to)
    }

    /// Cuts the log back to `to` (a slave whose tail diverged). The bytes past it
    /// are zeroed so no stale record can be read as valid again. Returns how many
    /// records were cut.
    pub fn truncate(&self, to: u64) -> Result<u64, LogError> {
        let mut cut = 0u64;
        self.for_each(to, self.tail(), |_| cut += 1)?;
        // Under the flush lock: a flush that read the old tail must finish (and
        // raise `flushed`) before `flushed` is lowered here, never after.
        let _f = self.flush_lock.lock();
        let mut a = self.app.lock();
        assert!(to <= a.tail, "truncate forward: {to} > {}", a.tail);
        if to < self.first() {
            return Err(LogError::Gone {
                pos: to,
                first: self.first(),
            });
        }
        self.committed.store(to, Ordering::Release);
        self.flushed.fetch_min(to, Ordering::AcqRel);
        let mut removed = false;
        let mut segs = self.segs.write();
        while segs
            .back()
            .is_some_and(|s| s.base > to || (s.base == to && s.base > self.first()))
        {
            let s = segs.pop_back().unwrap();
            let _ = self.cfg.storage.remove(&s.path);
            removed = true;
        }
        let cur = segs.back().filter(|s| to < s.end()).cloned();
        drop(segs);
        // The appender follows the tail before anything can fail: a failed sync
        // below must not leave it writing at the old tail (the simulation found
        // appends landing past a zeroed hole).
        a.seg = cur.clone();
        a.tail = to;
        a.epochs.truncate(to);
        // A marker below `to` is followed by a kept record; one at or past it is gone.
        a.skipped_at = None;
        if let Some(s) = &cur {
            // SAFETY: append lock held, tail lowered; a slave has no reader past `to`.
            unsafe { s.slice_mut(to, (s.end() - to) as usize) }.fill(0);
            if let Err(e) = s.flush(to, s.end()) {
                // The zeros may not be on disk: the cut records could come back
                // after a power cut. As after any failed sync, no more writes
                // until the node is reopened (its recovery zeroes them again).
                let msg = format!("msync {} (truncating to {to}): {e}", s.path.display());
                self.fail_writes(&mut a, &msg);
                return Err(LogError::PreviousIo(msg));
            }
        }
        // A snapshot above `to` is an orphan of a compaction that failed after
        // placing it (`first` never moved): a reopen would take it as the
        // log's start, with the cut records folded in (found by the simulation).
        let listed = self.cfg.storage.list(&self.cfg.dir);
        for name in listed.iter().flatten() {
            if snapshot::parse_name(name).is_some_and(|pos| pos > to) {
                let _ = self.cfg.storage.remove(&self.cfg.dir.join(name));
                removed = true;
            }
        }
        if let Err(e) = listed {
            let msg = format!("list {} (truncating to {to}): {e}", self.cfg.dir.display());
            self.fail_writes(&mut a, &msg);
            return Err(LogError::PreviousIo(msg));
        }
        if removed {
            // A removed segment must stay removed: after a power cut it would
            // come back whole, and when `to` is its base (no zeros in front of
            // it) its cut records would read as the log's (found by the
            // simulation).
            if let Err(e) = self.cfg.storage.sync_dir(&self.cfg.dir) {
                let msg = format!(
                    "fsync of {} (truncating to {to}): {e}",
                    self.cfg.dir.display()
                );
                self.fail_writes(&mut a, &msg);
                return Err(LogError::PreviousIo(msg));
            }
        }
        drop(a);
        self.kick_preparer();
        Ok(cut)
    }

    /// A sync failed: the kernel may have dropped the dirty pages, so every
    /// later write is refused until the log is reopened (redb's PreviousIo).
    fn fail_writes(&self, a: &mut Appender, msg: &str) {
        tracing::error!(error = %msg, "log sync failed; refusing writes until reopened");
        a.failed = Some(msg.to_string());
        self.failed.store(true, Ordering::Release);
    }

    /// Replaces the whole log with a snapshot (a full resync): deletes every
    /// segment and snapshot, stores the snapshot and the new history, and
    /// continues at the snapshot's position.
    pub fn reset_to(
        &self,
        snap: &Snapshot,
        snap_bytes: &[u8],
        segment_bytes: u64,
    ) -> Result<(), LogError> {
        let head = snapshot::Head {
            history: snap.history,
            pos: snap.pos,
            epochs: snap.epochs.clone(),
            count: snap.state.map.len() as u64,
        };
        self.reset_with(&head, segment_bytes, |dir| {
            snapshot::write_file(&*self.cfg.storage, dir, snap.pos, snap_bytes)
                .map(|_| ())
                .map_err(io_err("write snapshot", dir))
        })
    }

    /// `reset_to` with a snapshot already on disk, checked and fsynced
    /// (`snapshot::Incoming::finish`): `tmp` is renamed into place, so a
    /// snapshot of any size is never held in memory.
    pub fn reset_to_file(
        &self,
        head: &snapshot::Head,
        tmp: &Path,
        segment_bytes: u64,
    ) -> Result<(), LogError> {
        self.reset_with(head, segment_bytes, |dir| {
            let path = dir.join(snapshot::file_name(head.pos));
            let fs = &self.cfg.storage;
            fs.rename(tmp, &path)
                .map_err(io_err("place snapshot", &path))?;
            fs.sync_dir(dir).map_err(io_err("sync dir", dir))
        })
    }

    fn reset_with(
        &self,
        head: &snapshot::Head,
        segment_bytes: u64,
        place: impl FnOnce(&Path) -> Result<(), LogError>,
    ) -> Result<(), LogError> {
        let _c = self.compact_lock.lock();
        // As in `truncate`: no flush of the old log may raise `flushed` afterwards.
        let _f = self.flush_lock.lock();
        let mut a = self.app.lock();
        let dir = self.cfg.dir.clone();
        let mut segs = self.segs.write();
        for s in segs.drain(..) {
            let _ = self.cfg.storage.remove(&s.path);
        }
        let fs = &self.cfg.storage;
        for name in fs.list(&dir).map_err(io_err("list", &dir))? {
            if snapshot::parse_name(&name).is_some() {
                let _ = fs.remove(&dir.join(name));
            }
        }
        {
            // Retired segments too: the new history may reuse their positions,
            // and a recycled segment must never hold a stale record whose
            // position is valid in it.
            let mut sp = self.spare.m.lock();
            drop_spares(&mut sp, &*self.cfg.storage);
            for s in sp.retired.drain(..) {
                let _ = self.cfg.storage.remove(&s.path);
            }
        }
        place(&dir)?;
        let meta = Meta {
            history: head.history,
            segment_bytes,
            ..a.meta
        };
        meta.store(&**fs, &dir)
            .map_err(io_err("write meta", &dir))?;
        a.meta = meta;
        a.seg = None;
        a.tail = head.pos;
        a.epochs = head.epochs.clone();
        a.skipped_at = None;
        self.first.store(head.pos, Ordering::Release);
        self.committed.store(head.pos, Ordering::Release);
        self.flushed.store(head.pos, Ordering::Release);
        drop(segs);
        drop(a);
        self.kick_preparer();
        Ok(())
    }

    /// Adopts a master's history on an empty log (no snapshot needed: it starts at 0).
    pub fn adopt_history(&self, history: u128, segment_bytes: u64) -> Result<(), LogError> {
        let mut a = self.app.lock();
        assert!(
            a.tail == 0 && a.seg.is_none(),
            "adopting a history on a non-empty log"
        );
        a.meta.history = history;
        a.meta.segment_bytes = segment_bytes;
        a.meta
            .store(&*self.cfg.storage, &self.cfg.dir)
            .map_err(io_err("write meta", &self.cfg.dir))?;
        drop(a);
        self.kick_preparer();
        Ok(())
    }

    /// Keeps positions from `pos` on disk (a reader still needs them); `u64::MAX` = none.
    pub fn pin(&self, pos: u64) {
        self.pin.store(pos, Ordering::Release);
    }

    /// The snapshot at the log's first position, to be read in pieces (a
    /// resync): the open file (kept readable by the open handle even if
    /// retention deletes it meanwhile) and its length, or, with no snapshot
    /// at position 0, the encoding of the empty state.
    pub fn open_snapshot(&self) -> Result<SnapshotSource, LogError> {
        let history = self.meta().history;
        let first = self.first();
        let path = self.cfg.dir.join(snapshot::file_name(first));
        match self.cfg.storage.open_read(&path) {
            Ok(f) => {
                let len = f.len();
                Ok(SnapshotSource::File { file: f, len, path })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && first == 0 => {
                Ok(SnapshotSource::Bytes(
                    Snapshot {
                        history,
                        pos: 0,
                        epochs: Epochs::default(),
                        state: State::default(),
                    }
                    .encode(),
                ))
            }
            Err(e) => Err(LogError::Io {
                op: "open snapshot",
                path,
                source: e,
            }),
        }
    }

    /// The state at the log's first position, from the newest snapshot (empty if none).
    pub fn load_snapshot(&self) -> Result<Snapshot, LogError> {
        let a = self.app.lock();
        let history = a.meta.history;
        drop(a);
        let first = self.first();
        let path = self.cfg.dir.join(snapshot::file_name(first));
        match self.cfg.storage.read(&path) {
            Ok(b) => Snapshot::decode(&b).map_err(|what| LogError::Inconsistent {
                dir: self.cfg.dir.clone(),
                what: format!("snapshot {}: {what}", path.display()),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound && first == 0 => Ok(Snapshot {
                history,
                pos: 0,
                epochs: Epochs::default(),
                state: State::default(),
            }),
            Err(e) => Err(LogError::Io {
                op: "read snapshot",
                path,
                source: e,
            }),
        }
    }

    /// Calls `f` for every record in `[from, to)` (both record boundaries, `to`
    /// at most the tail). Records are CRC-checked again as they are read.
    pub fn for_each(
        &self,
        from: u64,
        to: u64,
        mut f: impl FnMut(&RecordRef<'_>),
    ) -> Result<(), LogError> {
        let mut pos = from;
        while pos < to {
            let Some(chunk) = self.read(pos, 4 << 20)? else {
                break;
            };
            let (n, skipped) =
                for_each_in(chunk.bytes(), chunk.pos, self.cfg.record_bytes_max, &mut f)?;
            pos = if skipped {
                chunk.seg.end()
            } else {
                chunk.pos + n as u64
            };
            assert!(
                pos > chunk.pos,
                "no progress reading the log at {}",
                chunk.pos
            );
        }
        Ok(())
    }

    /// Folds old segments into a snapshot and deletes them when the log holds more
    /// than `retention_bytes_max`. Returns the new first position, if it moved.
    pub fn compact(&self) -> Result<Option<u64>, LogError> {
        let _c = self.compact_lock.lock();
        let seg_bytes = self.segment_bytes();
        let (n, bases): (usize, Vec<u64>) = {
            let segs = self.segs.read();
            (segs.len(), segs.iter().map(|s| s.base).collect())
        };
        let keep = ((self.cfg.retention_bytes_max / seg_bytes.max(1)) as usize).max(2);
        if n <= keep {
            return Ok(None);
        }
        let mut cut = bases[n - keep];
        let pin = self.pin.load(Ordering::Acquire);
        if pin < cut {
            if (n as u64) * seg_bytes <= 2 * self.cfg.retention_bytes_max {
                cut = bases
                    .iter()
                    .copied()
                    .filter(|&b| b <= pin)
                    .max()
                    .unwrap_or(cut);
            } else {
                tracing::warn!(pin, cut, "a lagging slave needs more than twice the retention; dropping its history (it will resync)");
            }
        }
        let first = self.first();
        if cut <= first {
            return Ok(None);
        }
        let mut snap = self.load_snapshot()?;
        self.for_each(first, cut, |r| snap.state.apply(r))?;
        let mut ep = self.epochs();
        ep.truncate(cut);
        snap.epochs = ep;
        snap.pos = cut;
        snap.history = self.meta().history;
        let bytes = snap.encode();
        snapshot::write_file(&*self.cfg.storage, &self.cfg.dir, cut, &bytes)
            .map_err(io_err("write snapshot", &self.cfg.dir))?;
        self.first.store(cut, Ordering::Release);
        let mut segs = self.segs.write();
        let mut gone = Vec::new();
        while segs.front().is_some_and(|s| s.end() <= cut) {
            gone.push(segs.pop_front().unwrap());
        }
        drop(segs);
        // Kept for recycling: they are below the durable snapshot, so a crash
        // before they are reused leaves files that the next open deletes.
        self.retire(gone);
        let _ = self
            .cfg
            .storage
            .remove(&self.cfg.dir.join(snapshot::file_name(first)));
        tracing::info!(first = cut, "compacted old segments into a snapshot");
        Ok(Some(cut))
    }

    /// Hands segments compaction dropped to the preparer to recycle (deleting
    /// those past `RETIRED_SEGMENTS_MAX`).
    fn retire(&self, gone: Vec<Arc<Segment>>) {
        let mut sp = self.spare.m.lock();
        for s in gone {
            if sp.retired.len() < RETIRED_SEGMENTS_MAX && s.size == sp.segment_bytes {
                sp.retired.push(s);
            } else {
                let _ = self.cfg.storage.remove(&s.path);
            }
        }
        self.spare.need_cv.notify_one();
    }

    /// Stops the preparer thread (also happens when the last `Arc<Log>` drops).
    pub fn shutdown(&self) {
        self.spare.m.lock().shutdown = true;
        self.spare.need_cv.notify_all();
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        // An unused spare stays on disk: recovery drops empty trailing segments.
        // Joined, so a reopen of the same directory never races this log's preparer.
        self.shutdown();
        if let Some(h) = self.preparer.lock().take() {
            let _ = h.join();
        }
    }
}

/// A snapshot being sent (`Log::open_snapshot`).
pub enum SnapshotSource {
    File {
        file: Box<dyn ReadAt>,
        len: u64,
        path: PathBuf,
    },
    Bytes(Vec<u8>),
}

impl SnapshotSource {
    pub fn len(&self) -> u64 {
        match self {
            SnapshotSource::File { len, .. } => *len,
            SnapshotSource::Bytes(b) => b.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` from `offset` (the caller keeps within `len`).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), LogError> {
        match self {
            SnapshotSource::File { file, path, .. } => file
                .read_exact_at(buf, offset)
                .map_err(io_err("read snapshot", path)),
            SnapshotSource::Bytes(b) => {
                let at = offset as usize;
                buf.copy_from_slice(&b[at..at + buf.len()]);
                Ok(())
            }
        }
    }
}

/// Calls `f` on each record of bytes that `append_replicated` has just checked
/// (CRC included): the apply pass does not pay for the CRC a second time.
pub fn for_each_checked(bytes: &[u8], pos: u64, f: &mut impl FnMut(&RecordRef<'_>)) {
    let mut at = 0usize;
    while at + record::RECORD_HEADER_BYTES <= bytes.len() {
        match record::decode_unchecked(&bytes[at..], pos + at as u64) {
            Some((rec, size)) => {
                f(&rec);
                at += size;
            }
            None => return,
        }
    }
}

/// Calls `f` on each record in `bytes` (records starting at `pos`), re-checking
/// each. Returns the bytes consumed and whether a segment-end marker ended them.
pub fn for_each_in(
    bytes: &[u8],
    pos: u64,
    record_bytes_max: usize,
    f: &mut impl FnMut(&RecordRef<'_>),
) -> Result<(usize, bool), LogError> {
    let mut at = 0usize;
    while at < bytes.len() {
        match record::decode(&bytes[at..], pos + at as u64, record_bytes_max)? {
            Decoded::Record { rec, size } => {
                f(&rec);
                at += size;
            }
            Decoded::Skip => return Ok((at + record::SKIP_BYTES, true)),
            Decoded::End => return Ok((at, false)),
        }
    }
    Ok((at, false))
}

/// Deletes the prepared spares (their bases no longer follow the log's).
fn drop_spares(sp: &mut Spare, storage: &dyn Storage) {
    for s in sp.ready.drain(..) {
        let _ = storage.remove(&s.path);
    }
}

/// A retired segment that no reader holds any more, if one is of `size` and
/// wholly below `base` (taken out of the list).
fn take_recyclable(sp: &mut Spare, base: u64, size: u64) -> Option<Segment> {
    let i = sp
        .retired
        .iter()
        .position(|s| Arc::strong_count(s) == 1 && s.size == size && s.end() <= base)?;
    match Arc::try_unwrap(sp.retired.swap_remove(i)) {
        Ok(s) => Some(s),
        Err(s) => {
            // Unreachable (only this list holds it, under the lock), but harmless.
            sp.retired.push(s);
            None
        }
    }
}

fn preparer(sh: Arc<SpareShared>) {
    let mut sp = sh.m.lock();
    loop {
        if sp.shutdown {
            return;
        }
        if sp.ready.len() < SPARE_SEGMENTS && (sp.error.is_none() || sp.retry) && sp.history != 0 {
            let (h, size) = (sp.history, sp.segment_bytes);
            let base = sp.want_base + sp.ready.len() as u64 * size;
            sp.retry = false;
            let old = take_recyclable(&mut sp, base, size);
            drop(sp);
            let recycling = old.is_some();
            let r = match old {
                Some(old) => old.recycle(&*sh.storage, &sh.dir, h, base),
                None => Segment::create(&*sh.storage, &sh.dir, h, base, size),
            };
            sp = sh.m.lock();
            match r {
                // Still the one after the ready spares: a roll that took a spare
                // meanwhile moved `want_base` past it, and this one is still next.
                Ok(s)
                    if sp.want_base + sp.ready.len() as u64 * size == base
                        && sp.history == h
                        && sp.segment_bytes == size
                        && !sp.shutdown =>
                {
                    sp.ready.push_back(s);
                    sp.error = None;
                    sp.recycled += u64::from(recycling);
                }
                Ok(s) => {
                    let _ = sh.storage.remove(&s.path);
                }
                Err(e) => {
                    tracing::error!(base, error = %e, "cannot prepare the next log segment (disk full?)");
                    sp.error = Some(format!("preparing segment at {base}: {e}"));
                }
            }
            sh.ready_cv.notify_all();
        } else {
            sh.need_cv.wait(sp.guard());
        }
    }
}

#[cfg(test)]
mod tests;
