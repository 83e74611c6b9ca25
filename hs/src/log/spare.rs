//! The next segments, made ahead of time by the `hs-prepare` thread (or by the
//! appending caller): created, or recycled from segments compaction retired.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Condvar;

use super::order::OrderedMutex;
use super::segment::Segment;
use super::storage::Storage;
use super::SPARE_SEGMENTS;

/// The next segments, prepared by the `hs-prepare` thread, which holds only this
/// (never the log, so dropping the log stops it).
pub(super) struct SpareShared {
    pub(super) m: OrderedMutex<Spare>,
    /// Signalled when a spare is needed (or on shutdown).
    pub(super) need_cv: Condvar,
    /// Signalled when a spare becomes ready (publishers waiting on Full).
    pub(super) ready_cv: Condvar,
    pub(super) dir: PathBuf,
    pub(super) storage: Arc<dyn Storage>,
}

pub(super) struct Spare {
    /// Prepared segments, at consecutive bases from `want_base`; at most
    /// `SPARE_SEGMENTS`.
    pub(super) ready: VecDeque<Segment>,
    /// Segments compaction retired, to be recycled (once no reader holds them);
    /// at most `RETIRED_SEGMENTS_MAX`. Their positions are all below the log's
    /// first position.
    pub(super) retired: Vec<Arc<Segment>>,
    /// Base the first ready spare must have.
    pub(super) want_base: u64,
    /// Why the last preparation failed; kept until one succeeds, so every caller
    /// that finds the log full is told the cause (a full disk, say).
    pub(super) error: Option<String>,
    /// A caller hit the error: try again.
    pub(super) retry: bool,
    /// Spares made from retired segments (the rest were created).
    pub(super) recycled: u64,
    pub(super) shutdown: bool,
    pub(super) history: u128,
    pub(super) segment_bytes: u64,
}

/// Deletes the prepared spares (their bases no longer follow the log's).
pub(super) fn drop_spares(sp: &mut Spare, storage: &dyn Storage) {
    for s in sp.ready.drain(..) {
        let _ = storage.remove(&s.path);
    }
}

/// A retired segment that no reader holds any more, if one is of `size` and
/// wholly below `base` (taken out of the list).
pub(super) fn take_recyclable(sp: &mut Spare, base: u64, size: u64) -> Option<Segment> {
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

pub(super) fn preparer(sh: Arc<SpareShared>) {
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
