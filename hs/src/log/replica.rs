//! The slave's writes (`append_replicated`) and rewinding the log: `truncate`,
//! a full reset to a snapshot, adopting a master's history.

use std::path::Path;
use std::sync::atomic::Ordering;

use super::append::Appender;
use super::meta::Meta;
use super::snapshot::{self, Snapshot};
use super::spare::drop_spares;
use super::{io_err, Log, LogError};
use crate::proto::record::{self, Decoded, RecordError};

impl Log {
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
    pub(super) fn fail_writes(&self, a: &mut Appender, msg: &str) {
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
}
