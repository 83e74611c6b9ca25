//! Writing records as the master: `append` and its variants, rolling to the
//! next segment, and `flush`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::meta::Meta;
use super::segment::Segment;
use super::spare::{drop_spares, take_recyclable};
use super::{deadline_after, Log, LogError, Preparer, SEGMENT_WAIT_MAX};
use crate::proto::catchup::Epochs;
use crate::proto::record::{self, Op};

pub(super) struct Appender {
    /// The segment being written; `None` before the log has a history.
    pub(super) seg: Option<Arc<Segment>>,
    pub(super) tail: u64,
    pub(super) epoch: u32,
    pub(super) epochs: Epochs,
    pub(super) failed: Option<String>,
    pub(super) meta: Meta,
    /// Refuse `append` (not replication): this node is not taking writes.
    pub(super) sealed: bool,
    /// Refuse every write, replication too, for good (`halt`).
    pub(super) halted: bool,
    /// Where a segment-end marker was written, when no record follows it yet
    /// (see `epoch_start`).
    pub(super) skipped_at: Option<u64>,
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
pub(super) fn epoch_start(epochs: &Epochs, epoch: u32, pos: u64, skipped_at: Option<u64>) -> u64 {
    match skipped_at {
        Some(at) if epoch > epochs.last_epoch() => at,
        _ => pos,
    }
}

impl Log {
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
                    super::segment::note_roll_wait(waited.elapsed());
                    return r;
                }
            }
        }
    }

    /// Moves the appender to the next segment: writes the end marker in the rest of the
    /// current one and takes the prepared spare. `block`: wait for (or build) the spare.
    pub(super) fn roll(&self, a: &mut Appender, block: bool) -> Result<(), LogError> {
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
            super::segment::note_roll_wait(t.elapsed());
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
    pub(super) fn kick_preparer(&self) {
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
}
