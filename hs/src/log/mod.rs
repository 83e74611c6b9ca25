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

mod append;
mod compaction;
mod open;
mod read;
mod replica;
mod spare;

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use order::{OrderedMutex, OrderedRwLock};
use parking_lot::Mutex;

use crate::proto::catchup::Epochs;
use crate::proto::record::RecordError;
use append::Appender;
use meta::Meta;
use segment::Segment;
use spare::SpareShared;
use storage::{FileStorage, Storage};

pub use compaction::SnapshotSource;
pub use read::{for_each_checked, for_each_in, Chunk};

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

impl Log {
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

#[cfg(test)]
mod tests;
