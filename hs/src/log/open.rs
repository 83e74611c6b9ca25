//! Opening a log directory: its lock, and recovery of a torn or corrupt tail.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use super::append::{epoch_start, Appender};
use super::meta::Meta;
use super::order::{OrderedMutex, OrderedRwLock, Rank};
use super::segment::{self, Segment};
use super::snapshot::{self, Snapshot};
use super::spare::{preparer, Spare, SpareShared};
use super::storage::{LockError, Storage};
use super::{io_err, Log, LogConfig, LogError, Preparer, Recovery, LOCK_FILE};
use crate::proto::record::{self, Decoded};

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
}
