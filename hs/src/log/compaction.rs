//! Snapshots and retention: pinning, loading or sending the snapshot at the
//! log's first position, and folding old segments into a new one.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::segment::Segment;
use super::snapshot::{self, Snapshot, State};
use super::storage::ReadAt;
use super::{io_err, Log, LogError, RETIRED_SEGMENTS_MAX};
use crate::proto::catchup::Epochs;

impl Log {
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
