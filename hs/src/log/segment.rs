//! One segment file: a 4 KiB header page, then `segment_bytes` of records.
//!
//! ```text
//! <dir>/<base:020>.seg
//! header page: { magic "HSSEG002" 8 | history u128 | base u64 | segment_bytes u64 | crc u32 (CRC32C of the 40 bytes before) | zeros to 4096 }
//! data:        records from position `base` to `base + segment_bytes`, pre-zeroed
//! ```
//! The file is allocated in full (posix_fallocate) when prepared, so a full disk
//! is an error at preparation, never a SIGBUS on a store into the mapping.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::storage::{Region, Storage};

/// Bytes before the first record of a segment file (one page, so records are page-aligned).
pub const SEGMENT_HEADER_BYTES: usize = 4096;
const MAGIC: &[u8; 8] = b"HSSEG002";
/// Format 1: CRC32 (IEEE) checksums; refused with its own message.
const OLD_MAGIC: &[u8; 8] = b"HSSEG001";
const PAGE_BYTES: usize = 4096;

/// A mapped segment. Writers write only past the log's committed tail, under the
/// log's append lock; readers read only below it.
pub struct Segment {
    pub base: u64,
    pub size: u64,
    pub history: u128,
    pub path: PathBuf,
    map: Box<dyn Region>,
}

// SAFETY: the mapping is shared memory; all access goes through raw pointers with
// the discipline above (disjoint regions, tail published with Release/Acquire).
unsafe impl Send for Segment {}
unsafe impl Sync for Segment {}

/// Counts of segment preparation by every log of this process, for benchmarks
/// and diagnostics (`hs-bench` reports them): how many segments were created
/// or recycled, the time spent on each kind, and how often a roll found no
/// prepared spare and had to wait for (or build) one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrepareStats {
    pub created: u64,
    pub recycled: u64,
    pub create_ns: u64,
    pub recycle_ns: u64,
    pub roll_waits: u64,
    pub roll_wait_ns: u64,
}

static CREATED: AtomicU64 = AtomicU64::new(0);
static RECYCLED: AtomicU64 = AtomicU64::new(0);
static CREATE_NS: AtomicU64 = AtomicU64::new(0);
static RECYCLE_NS: AtomicU64 = AtomicU64::new(0);
static ROLL_WAITS: AtomicU64 = AtomicU64::new(0);
static ROLL_WAIT_NS: AtomicU64 = AtomicU64::new(0);

/// This process's segment preparation counts so far.
pub fn prepare_stats() -> PrepareStats {
    PrepareStats {
        created: CREATED.load(Ordering::Relaxed),
        recycled: RECYCLED.load(Ordering::Relaxed),
        create_ns: CREATE_NS.load(Ordering::Relaxed),
        recycle_ns: RECYCLE_NS.load(Ordering::Relaxed),
        roll_waits: ROLL_WAITS.load(Ordering::Relaxed),
        roll_wait_ns: ROLL_WAIT_NS.load(Ordering::Relaxed),
    }
}

impl PrepareStats {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &PrepareStats) -> PrepareStats {
        PrepareStats {
            created: self.created - earlier.created,
            recycled: self.recycled - earlier.recycled,
            create_ns: self.create_ns - earlier.create_ns,
            recycle_ns: self.recycle_ns - earlier.recycle_ns,
            roll_waits: self.roll_waits - earlier.roll_waits,
            roll_wait_ns: self.roll_wait_ns - earlier.roll_wait_ns,
        }
    }
}

/// A roll found no prepared spare and waited `d` for one (counted in
/// [`prepare_stats`]).
pub(crate) fn note_roll_wait(d: std::time::Duration) {
    ROLL_WAITS.fetch_add(1, Ordering::Relaxed);
    ROLL_WAIT_NS.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
}

pub fn file_name(base: u64) -> String {
    format!("{base:020}.seg")
}

/// The base position encoded in a segment file name, if it is one.
pub fn parse_name(name: &str) -> Option<u64> {
    name.strip_suffix(".seg")?.parse().ok()
}

fn header_bytes(history: u128, base: u64, size: u64) -> [u8; 44] {
    let mut h = [0u8; 44];
    h[0..8].copy_from_slice(MAGIC);
    h[8..24].copy_from_slice(&history.to_le_bytes());
    h[24..32].copy_from_slice(&base.to_le_bytes());
    h[32..40].copy_from_slice(&size.to_le_bytes());
    let crc = crate::proto::checksum::crc(&h[0..40]);
    h[40..44].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A name for a segment being prepared for `base`: it ends in `.tmp`, so a
/// crash leaves a file that the next open deletes.
fn tmp_path(dir: &Path, base: u64) -> PathBuf {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.join(format!(
        "{}.{}.{seq}.tmp",
        file_name(base),
        std::process::id()
    ))
}

impl Segment {
    /// Creates, allocates, zeroes, pre-faults and maps a new segment file.
    /// Slow (a few ms for 64 MiB): call it off the hot path.
    pub fn create(
        storage: &dyn Storage,
        dir: &Path,
        history: u128,
        base: u64,
        size: u64,
    ) -> io::Result<Segment> {
        let t0 = Instant::now();
        let path = dir.join(file_name(base));
        let tmp = tmp_path(dir, base);
        let total = SEGMENT_HEADER_BYTES as u64 + size;
        let map = storage.create_mapped(&tmp, total)?;
        let p = map.as_mut_ptr();
        // SAFETY: fresh mapping of `total` bytes that nobody else sees yet.
        unsafe {
            let h = header_bytes(history, base, size);
            std::ptr::copy_nonoverlapping(h.as_ptr(), p, h.len());
            // Touch every page for write, so appends never take a first-touch fault.
            let mut off = SEGMENT_HEADER_BYTES;
            while off < total as usize {
                std::ptr::write_volatile(p.add(off), 0);
                off += PAGE_BYTES;
            }
        }
        let placed = map
            .sync(0, SEGMENT_HEADER_BYTES)
            .and_then(|()| storage.rename(&tmp, &path));
        if let Err(e) = placed {
            let _ = storage.remove(&tmp);
            return Err(e);
        }
        // The new name is durable only once the directory is: without this, a power
        // cut can lose the whole segment although its records were msynced (meta
        // and snapshots do the same). Off the hot path: `hs-prepare` runs it.
        storage.sync_dir(dir)?;
        CREATED.fetch_add(1, Ordering::Relaxed);
        CREATE_NS.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok(Segment {
            base,
            size,
            history,
            path,
            map,
        })
    }

    /// Re-uses this retired segment (its file, its blocks and its resident
    /// mapped pages) as a new segment for `base`: several times cheaper than
    /// `create`, whose cost is the kernel zeroing and faulting in fresh pages.
    /// The caller owns the only reference (no reader maps it any more) and
    /// `base` lies past every position this segment held (so no stale record's
    /// `pos` can equal its new position).
    ///
    /// Steps, and what a crash after each leaves (see ARCHITECTURE.md):
    /// 1. rename `<old>.seg` to a `.tmp` name: the file is deleted on open
    ///    (or, if the rename was not yet durable, found below the snapshot that
    ///    retired it and deleted as folded into it);
    /// 2. zero the records through the mapping and write the new header page;
    /// 3. msync the header, rename to `<base>.seg`, fsync the directory: the
    ///    header names `base` before the name exists. If the machine loses
    ///    the zeroed data pages (not written back yet), the old records that
    ///    reappear carry their old positions: each fails the position check
    ///    of `record::decode` (a skip marker its CRC of the position), so
    ///    recovery cuts there exactly as at a torn record, never reads one as
    ///    valid.
    pub fn recycle(
        self,
        storage: &dyn Storage,
        dir: &Path,
        history: u128,
        base: u64,
    ) -> io::Result<Segment> {
        let Segment {
            size,
            path: old,
            map,
            ..
        } = self;
        let t0 = Instant::now();
        let tmp = tmp_path(dir, base);
        storage.rename(&old, &tmp)?;
        let placed = (|| {
            // Pages written back since they were last stored into are
            // write-protected again: take those faults in one call.
            map.populate();
            let p = map.as_mut_ptr();
            // SAFETY: the mapping is `SEGMENT_HEADER_BYTES + size` bytes, and the
            // caller holds the only reference to it.
            unsafe {
                std::ptr::write_bytes(p.add(SEGMENT_HEADER_BYTES), 0, size as usize);
                std::ptr::write_bytes(p, 0, SEGMENT_HEADER_BYTES);
                let h = header_bytes(history, base, size);
                std::ptr::copy_nonoverlapping(h.as_ptr(), p, h.len());
            }
            map.sync(0, SEGMENT_HEADER_BYTES)?;
            let path = dir.join(file_name(base));
            storage.rename(&tmp, &path)?;
            storage.sync_dir(dir)?;
            Ok(path)
        })();
        match placed {
            Ok(path) => {
                RECYCLED.fetch_add(1, Ordering::Relaxed);
                RECYCLE_NS.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                Ok(Segment {
                    base,
                    size,
                    history,
                    path,
                    map,
                })
            }
            Err(e) => {
                let _ = storage.remove(&tmp);
                Err(e)
            }
        }
    }

    /// Maps an existing segment file and checks its header.
    pub fn open(storage: &dyn Storage, path: &Path) -> io::Result<Segment> {
        let map = storage.open_mapped(path)?;
        let len = map.len() as u64;
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("segment {}: {what}", path.display()),
            )
        };
        if len < SEGMENT_HEADER_BYTES as u64 {
            return Err(bad("shorter than its header"));
        }
        // SAFETY: the mapping is `len` bytes, at least the header.
        let h = unsafe { std::slice::from_raw_parts(map.as_mut_ptr() as *const u8, 44) };
        if &h[0..8] == OLD_MAGIC {
            return Err(bad(
                "format 1 (CRC32 checksums), written by an older hs; move the directory away to resync this node",
            ));
        }
        if &h[0..8] != MAGIC {
            return Err(bad("bad magic (not an hs segment)"));
        }
        if crate::proto::checksum::crc(&h[0..40]).to_le_bytes() != h[40..44] {
            return Err(bad("header fails its CRC check"));
        }
        let history = u128::from_le_bytes(h[8..24].try_into().unwrap());
        let base = u64::from_le_bytes(h[24..32].try_into().unwrap());
        let size = u64::from_le_bytes(h[32..40].try_into().unwrap());
        if SEGMENT_HEADER_BYTES as u64 + size != len {
            return Err(bad("file length does not match the header's segment size"));
        }
        Ok(Segment {
            base,
            size,
            history,
            path: path.to_path_buf(),
            map,
        })
    }

    /// One past the last position this segment can hold.
    pub fn end(&self) -> u64 {
        self.base + self.size
    }

    /// Whether `[pos, pos + len)` lies inside this segment (no overflow).
    #[inline]
    fn contains(&self, pos: u64, len: usize) -> bool {
        pos >= self.base
            && (len as u64)
                .checked_add(pos)
                .is_some_and(|end| end <= self.end())
    }

    /// Bytes at positions `[pos, pos + len)`.
    ///
    /// # Safety
    /// The range must be inside the segment and below the log's committed tail
    /// (loaded with Acquire), or otherwise not concurrently written.
    pub unsafe fn slice(&self, pos: u64, len: usize) -> &[u8] {
        // In every build: the bounds are the SAFETY argument, and two compares are
        // nothing next to what the caller does with the bytes.
        assert!(self.contains(pos, len), "read outside segment");
        let off = SEGMENT_HEADER_BYTES + (pos - self.base) as usize;
        // SAFETY: in bounds (asserted), and the caller guarantees no concurrent writer.
        unsafe { std::slice::from_raw_parts(self.map.as_mut_ptr().add(off) as *const u8, len) }
    }

    /// Mutable bytes at `[pos, pos + len)`.
    ///
    /// # Safety
    /// Only the log's appender, holding the append lock, writing at or past the
    /// committed tail (or truncating on a slave with no reader past the new tail).
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice_mut(&self, pos: u64, len: usize) -> &mut [u8] {
        assert!(self.contains(pos, len), "write outside segment");
        let off = SEGMENT_HEADER_BYTES + (pos - self.base) as usize;
        // SAFETY: in bounds, and the caller guarantees exclusive access to the range.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(off), len) }
    }

    /// Overwrites every record byte with `byte`, as a publisher filling the
    /// segment would (what `hs-bench prepare` times). A segment in a log is
    /// shared (`Arc`); `&mut self` means nobody else reads this one.
    pub fn fill(&mut self, byte: u8) {
        let len = (self.end() - self.base) as usize;
        // SAFETY: `&mut self`: no other reference to this segment's bytes.
        unsafe { self.slice_mut(self.base, len) }.fill(byte);
    }

    /// Writes positions `[from, to)` of this segment to disk (msync).
    pub fn flush(&self, from: u64, to: u64) -> io::Result<()> {
        let from = from.max(self.base);
        let to = to.min(self.end());
        if to <= from {
            return Ok(());
        }
        self.map.sync(
            SEGMENT_HEADER_BYTES + (from - self.base) as usize,
            (to - from) as usize,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::storage::{FileStorage, DIR_SYNCS};

    /// A new segment's name is only durable once its directory is synced: after a
    /// power cut, a segment whose records were msynced must still be there.
    #[test]
    fn a_new_segment_is_renamed_into_place_durably() {
        let d = tempfile::tempdir().unwrap();
        let before = DIR_SYNCS.with(|n| n.get());
        let s = Segment::create(&FileStorage, d.path(), 0x5e9, 8192, 4096).unwrap();
        assert!(s.path.exists());
        assert!(
            DIR_SYNCS.with(|n| n.get()) > before,
            "segment renamed into place without an fsync of {}",
            d.path().display()
        );
        // And the header it was created with is what a reopen finds.
        drop(s);
        let s = Segment::open(&FileStorage, &d.path().join(file_name(8192))).unwrap();
        assert_eq!((s.base, s.size, s.history), (8192, 4096, 0x5e9));
    }

    /// A recycled segment takes its new name and header, its records are all
    /// zero, and its old name is gone.
    #[test]
    fn a_recycled_segment_is_renamed_rezeroed_and_reopens_at_its_new_base() {
        let d = tempfile::tempdir().unwrap();
        let s = Segment::create(&FileStorage, d.path(), 0x5e9, 0, 8192).unwrap();
        // SAFETY: nobody else maps it.
        unsafe { s.slice_mut(0, 8192) }.fill(0xa5);
        let old = s.path.clone();
        let syncs = DIR_SYNCS.with(|n| n.get());
        let s = s.recycle(&FileStorage, d.path(), 0x77, 3 * 8192).unwrap();
        assert!(!old.exists());
        assert!(DIR_SYNCS.with(|n| n.get()) > syncs, "new name not durable");
        assert_eq!((s.base, s.size, s.history), (3 * 8192, 8192, 0x77));
        // SAFETY: as above.
        assert!(unsafe { s.slice(3 * 8192, 8192) }.iter().all(|&b| b == 0));
        drop(s);
        let s = Segment::open(&FileStorage, &d.path().join(file_name(3 * 8192))).unwrap();
        assert_eq!((s.base, s.size, s.history), (3 * 8192, 8192, 0x77));
        // SAFETY: as above.
        assert!(unsafe { s.slice(3 * 8192, 8192) }.iter().all(|&b| b == 0));
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from(file_name(3 * 8192))]);
    }

    /// `slice`'s bounds are its SAFETY argument: checked in release builds too.
    #[test]
    fn slice_outside_the_segment_panics_in_every_build() {
        let d = tempfile::tempdir().unwrap();
        let s = Segment::create(&FileStorage, d.path(), 1, 8192, 4096).unwrap();
        // SAFETY (of the calls that do not panic): inside, nothing writes.
        assert_eq!(unsafe { s.slice(8192, 4096) }.len(), 4096);
        for (pos, len) in [(8184u64, 8usize), (8192 + 4090, 8), (u64::MAX - 2, 8)] {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // SAFETY: none — this is the out-of-bounds call that must panic.
                unsafe { s.slice(pos, len) }.len()
            }));
            assert!(
                r.is_err(),
                "slice({pos}, {len}) of [8192, 12288) did not panic"
            );
        }
    }
}
