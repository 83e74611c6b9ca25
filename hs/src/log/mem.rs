//! An in-memory disk that fails the way disks fail, for the deterministic
//! simulation (`hs/tests/sim_log.rs`) and for applications' own crash tests.
//!
//! It keeps two states of every file and directory: what the running process
//! sees (the page cache: every store, create, rename and removal at once) and
//! what is on the platter (bytes a sync covered; names a directory sync
//! covered). From it the simulator takes *images* of a machine after a crash:
//! - [`Crash::Process`]: the process died, the kernel lived: everything the
//!   process saw is there.
//! - [`Crash::Power`]: the machine lost power: each directory keeps its synced
//!   names plus a random prefix of the changes made since (a journal replays
//!   in order), and each page written since its last sync is, at random, lost,
//!   written back, or torn (a prefix of its 512-byte sectors written).
//!
//! Faults it injects while running ([`Faults`]): a sync that fails with `EIO`
//! (after writing a random part of its range), a disk that is full past a byte
//! budget (`ENOSPC` on create and grow), and a capture of the whole state
//! just before the N-th call, so a crash can land at any step of any
//! operation. One seeded generator decides everything: the same seed and the
//! same calls give the same disk.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::storage::{LockError, ReadAt, Region, Storage, WriteSync};

const PAGE_BYTES: usize = 4096;
const SECTOR_BYTES: usize = 512;

/// What kind of crash an image is taken after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    /// The process died; the kernel's page cache and directories survive.
    Process,
    /// The machine lost power: only what was synced survives for sure.
    Power,
}

/// Faults injected while the disk runs.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Chance, in parts per million, that a sync (msync, fsync, directory
    /// fsync) fails with `EIO` after writing a random part of its range.
    pub sync_error_ppm: u32,
    /// Bytes of file data the disk holds; creating or growing past it fails
    /// with `ENOSPC`. `None`: unbounded.
    pub space_bytes: Option<u64>,
    /// Take a copy of the whole disk just before call number N (see
    /// [`MemStorage::calls`]) for [`MemStorage::captured`].
    pub capture_before_call: Option<u64>,
}

/// The seeded generator every random choice comes from (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, n)` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// True with probability `ppm` parts per million.
    pub fn chance_ppm(&mut self, ppm: u32) -> bool {
        self.below(1_000_000) < ppm as u64
    }
}

/// A fixed-size heap buffer that never moves: a mapped file's pages.
struct Pages {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: plain memory; the log's own discipline (one writer past the tail,
// readers below it) governs concurrent access, as it does for a real mapping.
unsafe impl Send for Pages {}
unsafe impl Sync for Pages {}

impl Pages {
    fn from_vec(v: Vec<u8>) -> Pages {
        let b = v.into_boxed_slice();
        let len = b.len();
        let ptr = Box::into_raw(b) as *mut u8;
        Pages { ptr, len }
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` owns `len` bytes until drop.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: made by `Box::into_raw` of a boxed slice of `len` bytes.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.ptr, self.len)) });
    }
}

enum Data {
    Plain(Vec<u8>),
    Mapped(Arc<Pages>),
}

impl Data {
    fn to_vec(&self) -> Vec<u8> {
        match self {
            Data::Plain(v) => v.clone(),
            Data::Mapped(p) => p.bytes().to_vec(),
        }
    }
    fn len(&self) -> usize {
        match self {
            Data::Plain(v) => v.len(),
            Data::Mapped(p) => p.len,
        }
    }
}

/// One file: what the process sees, and what is on the platter.
struct Inode {
    live: Mutex<Data>,
    durable: Mutex<Vec<u8>>,
}

impl Inode {
    fn new(live: Data, durable: Vec<u8>) -> Arc<Inode> {
        Arc::new(Inode {
            live: Mutex::new(live),
            durable: Mutex::new(durable),
        })
    }
}

#[derive(Clone)]
enum DirOp {
    Link(String, Arc<Inode>),
    Unlink(String),
    Rename(String, String),
}

#[derive(Default, Clone)]
struct Dir {
    live: BTreeMap<String, Arc<Inode>>,
    durable: BTreeMap<String, Arc<Inode>>,
    /// Changes to `live` since the last directory sync, in order.
    pending: Vec<DirOp>,
}

fn apply(map: &mut BTreeMap<String, Arc<Inode>>, op: &DirOp) {
    match op {
        DirOp::Link(n, i) => {
            map.insert(n.clone(), i.clone());
        }
        DirOp::Unlink(n) => {
            map.remove(n);
        }
        DirOp::Rename(a, b) => {
            if let Some(i) = map.remove(a) {
                map.insert(b.clone(), i);
            }
        }
    }
}

struct Fs {
    dirs: BTreeMap<PathBuf, Dir>,
    locked: BTreeSet<PathBuf>,
    faults: Faults,
    rng: Rng,
    calls: u64,
    captured: Option<MemStorage>,
    /// Syncs that failed, for the simulator's report.
    sync_errors: u64,
}

impl Fs {
    /// Counts a call; takes the capture if this is the one asked for.
    fn tick(&mut self) {
        self.calls += 1;
        if self.faults.capture_before_call == Some(self.calls) {
            self.captured = Some(self.image(Crash::Process, 0));
        }
    }

    fn fail_sync(&mut self) -> bool {
        let fail = self.rng.chance_ppm(self.faults.sync_error_ppm);
        self.sync_errors += fail as u64;
        fail
    }

    fn used_bytes(&self) -> u64 {
        let mut seen = BTreeSet::new();
        let mut n = 0u64;
        for d in self.dirs.values() {
            for i in d.live.values() {
                if seen.insert(Arc::as_ptr(i) as usize) {
                    n += i.live.lock().len() as u64;
                }
            }
        }
        n
    }

    fn check_space(&self, more: u64) -> io::Result<()> {
        match self.faults.space_bytes {
            Some(max) if self.used_bytes() + more > max => {
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            }
            _ => Ok(()),
        }
    }

    fn dir(&mut self, dir: &Path) -> io::Result<&mut Dir> {
        self.dirs.get_mut(dir).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no directory {}", dir.display()),
            )
        })
    }

    fn lookup(&mut self, path: &Path) -> io::Result<Arc<Inode>> {
        let (dir, name) = split(path)?;
        self.dir(dir)?.live.get(&name).cloned().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no file {}", path.display()),
            )
        })
    }

    fn link(&mut self, path: &Path, inode: Arc<Inode>) -> io::Result<()> {
        let (dir, name) = split(path)?;
        let d = self.dir(dir)?;
        d.live.insert(name.clone(), inode.clone());
        d.pending.push(DirOp::Link(name, inode));
        Ok(())
    }

    /// A copy of the disk as a crash of `kind` leaves it. After a process
    /// crash the page cache lives on: what was not synced is still not synced
    /// (a power cut later may lose it). After a power cut what is there is on
    /// the platter.
    fn image(&self, kind: Crash, seed: u64) -> MemStorage {
        let mut rng = Rng::new(seed ^ 0x5eed_d15c);
        // Every inode copied once, so names that share one keep sharing it.
        let mut copies: HashMap<usize, Arc<Inode>> = HashMap::new();
        let mut copy = |i: &Arc<Inode>, rng: &mut Rng| -> Arc<Inode> {
            copies
                .entry(Arc::as_ptr(i) as usize)
                .or_insert_with(|| {
                    let live = i.live.lock().to_vec();
                    let durable = i.durable.lock().clone();
                    let (live, durable) = match kind {
                        Crash::Process => (live, durable),
                        Crash::Power => {
                            let b = after_power_loss(&live, &durable, rng);
                            (b.clone(), b)
                        }
                    };
                    let data = match *i.live.lock() {
                        Data::Mapped(_) => Data::Mapped(Arc::new(Pages::from_vec(live))),
                        Data::Plain(_) => Data::Plain(live),
                    };
                    Inode::new(data, durable)
                })
                .clone()
        };
        let mut dirs = BTreeMap::new();
        for (path, d) in &self.dirs {
            let copy_map =
                |m: &BTreeMap<String, Arc<Inode>>,
                 rng: &mut Rng,
                 copy: &mut dyn FnMut(&Arc<Inode>, &mut Rng) -> Arc<Inode>| {
                    m.iter()
                        .map(|(n, i)| (n.clone(), copy(i, rng)))
                        .collect::<BTreeMap<_, _>>()
                };
            let dir = match kind {
                Crash::Process => Dir {
                    live: copy_map(&d.live, &mut rng, &mut copy),
                    durable: copy_map(&d.durable, &mut rng, &mut copy),
                    pending: d
                        .pending
                        .iter()
                        .map(|op| match op {
                            DirOp::Link(n, i) => DirOp::Link(n.clone(), copy(i, &mut rng)),
                            other => other.clone(),
                        })
                        .collect(),
                },
                Crash::Power => {
                    let mut m = d.durable.clone();
                    let n = rng.below(d.pending.len() as u64 + 1) as usize;
                    for op in &d.pending[..n] {
                        apply(&mut m, op);
                    }
                    let names = copy_map(&m, &mut rng, &mut copy);
                    Dir {
                        live: names.clone(),
                        durable: names,
                        pending: Vec::new(),
                    }
                }
            };
            dirs.insert(path.clone(), dir);
        }
        MemStorage {
            fs: Arc::new(Mutex::new(Fs {
                dirs,
                locked: BTreeSet::new(),
                faults: Faults::default(),
                rng: Rng::new(seed),
                calls: 0,
                captured: None,
                sync_errors: 0,
            })),
        }
    }
}

/// The bytes of a file after a power cut: its synced bytes, with each page
/// written since, at random, lost (3 in 8), written back (4 in 8) or torn
/// (1 in 8: a prefix of its sectors).
fn after_power_loss(live: &[u8], durable: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = durable.to_vec();
    out.resize(live.len(), 0);
    for start in (0..live.len()).step_by(PAGE_BYTES) {
        let end = (start + PAGE_BYTES).min(live.len());
        if live[start..end] == out[start..end] {
            continue;
        }
        match rng.below(8) {
            0..=3 => out[start..end].copy_from_slice(&live[start..end]),
            4 => {
                let sectors = (end - start).div_ceil(SECTOR_BYTES) as u64;
                let cut = (start + rng.below(sectors) as usize * SECTOR_BYTES).min(end);
                out[start..cut].copy_from_slice(&live[start..cut]);
            }
            _ => {}
        }
    }
    out
}

fn split(path: &Path) -> io::Result<(&Path, String)> {
    match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) => Ok((d, n.to_string_lossy().into_owned())),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a file path: {}", path.display()),
        )),
    }
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("{what}: injected I/O error (EIO)"))
}

/// The in-memory disk. Cloning it gives another handle to the same disk.
#[derive(Clone)]
pub struct MemStorage {
    fs: Arc<Mutex<Fs>>,
}

impl fmt::Debug for MemStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fs = self.fs.lock();
        f.debug_struct("MemStorage")
            .field("dirs", &fs.dirs.len())
            .field("calls", &fs.calls)
            .finish()
    }
}

impl MemStorage {
    /// A mapping of `inode` (whose pages are `pages`) on this disk.
    fn region(&self, pages: Arc<Pages>, inode: Arc<Inode>) -> Box<dyn Region> {
        Box::new(MemRegion {
            pages,
            inode,
            fs: self.fs.clone(),
        })
    }

    /// An empty disk; `seed` drives every random choice it makes.
    pub fn new(seed: u64) -> MemStorage {
        MemStorage {
            fs: Arc::new(Mutex::new(Fs {
                dirs: BTreeMap::new(),
                locked: BTreeSet::new(),
                faults: Faults::default(),
                rng: Rng::new(seed),
                calls: 0,
                captured: None,
                sync_errors: 0,
            })),
        }
    }

    pub fn set_faults(&self, faults: Faults) {
        let mut fs = self.fs.lock();
        fs.faults = faults;
        fs.captured = None;
    }

    /// Calls made so far (each [`Storage`] method and each [`Region::sync`]).
    pub fn calls(&self) -> u64 {
        self.fs.lock().calls
    }

    /// Syncs failed by injection so far.
    pub fn sync_errors(&self) -> u64 {
        self.fs.lock().sync_errors
    }

    /// The disk as it was just before the call `Faults::capture_before_call`
    /// named, once that call was made.
    pub fn captured(&self) -> Option<MemStorage> {
        self.fs.lock().captured.clone()
    }

    /// The disk as a crash of `kind` would leave it now, as a new disk (this
    /// one stays as it is: the dead process may still write into it).
    pub fn image(&self, kind: Crash, seed: u64) -> MemStorage {
        self.fs.lock().image(kind, seed)
    }

    /// The names in `dir` as the running process sees them (for tests).
    pub fn names(&self, dir: &Path) -> Vec<String> {
        let fs = self.fs.lock();
        fs.dirs
            .get(dir)
            .map(|d| d.live.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Flips one bit of a file as the process sees it (for tests of damage).
    pub fn flip_bit(&self, path: &Path, byte: usize, bit: u8) -> io::Result<()> {
        let inode = self.fs.lock().lookup(path)?;
        let mut data = inode.live.lock();
        match &mut *data {
            Data::Plain(v) => v[byte] ^= 1 << bit,
            // SAFETY: in bounds (indexing panics otherwise); a test's deliberate damage.
            Data::Mapped(p) => unsafe { *p.ptr.add(byte.min(p.len - 1)) ^= 1 << bit },
        }
        Ok(())
    }
}

struct MemLock {
    fs: Arc<Mutex<Fs>>,
    dir: PathBuf,
}

impl Drop for MemLock {
    fn drop(&mut self) {
        self.fs.lock().locked.remove(&self.dir);
    }
}

struct MemRegion {
    pages: Arc<Pages>,
    inode: Arc<Inode>,
    fs: Arc<Mutex<Fs>>,
}

impl Region for MemRegion {
    fn as_mut_ptr(&self) -> *mut u8 {
        self.pages.ptr
    }
    fn len(&self) -> usize {
        self.pages.len
    }
    fn sync(&self, offset: usize, len: usize) -> io::Result<()> {
        let mut fs = self.fs.lock();
        fs.tick();
        let end = (offset + len).min(self.pages.len);
        let live = self.pages.bytes();
        let mut d = self.inode.durable.lock();
        if d.len() < live.len() {
            d.resize(live.len(), 0);
        }
        if fs.fail_sync() {
            // Some of the range made it, some did not.
            let cut = offset + fs.rng.below((end - offset) as u64 + 1) as usize;
            d[offset..cut].copy_from_slice(&live[offset..cut]);
            return Err(eio("msync"));
        }
        d[offset..end].copy_from_slice(&live[offset..end]);
        Ok(())
    }
}

struct MemRead {
    inode: Arc<Inode>,
}

impl ReadAt for MemRead {
    fn len(&self) -> u64 {
        self.inode.live.lock().len() as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let data = self.inode.live.lock().to_vec();
        let at = offset as usize;
        let src = data
            .get(at..at + buf.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

struct MemWrite {
    inode: Arc<Inode>,
    fs: Arc<Mutex<Fs>>,
}

impl Write for MemWrite {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let fs = self.fs.lock();
        fs.check_space(buf.len() as u64)?;
        if let Data::Plain(v) = &mut *self.inode.live.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl WriteSync for MemWrite {
    fn sync(&mut self) -> io::Result<()> {
        let mut fs = self.fs.lock();
        fs.tick();
        if fs.fail_sync() {
            return Err(eio("fsync"));
        }
        *self.inode.durable.lock() = self.inode.live.lock().to_vec();
        Ok(())
    }
}

impl Storage for MemStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut fs = self.fs.lock();
        fs.tick();
        fs.dirs.entry(dir.to_path_buf()).or_default();
        Ok(())
    }

    fn lock_dir(&self, dir: &Path) -> Result<Box<dyn Send + Sync>, LockError> {
        let mut fs = self.fs.lock();
        fs.tick();
        if !fs.locked.insert(dir.to_path_buf()) {
            return Err(LockError::Held { pid: None });
        }
        Ok(Box::new(MemLock {
            fs: self.fs.clone(),
            dir: dir.to_path_buf(),
        }))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut fs = self.fs.lock();
        fs.tick();
        Ok(fs.dir(dir)?.live.keys().cloned().collect())
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut fs = self.fs.lock();
        fs.tick();
        let i = fs.lookup(path)?;
        let v = i.live.lock().to_vec();
        Ok(v)
    }

    fn write_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut fs = self.fs.lock();
        fs.tick();
        fs.check_space(bytes.len() as u64)?;
        let inode = Inode::new(Data::Plain(bytes.to_vec()), Vec::new());
        fs.link(path, inode.clone())?;
        if fs.fail_sync() {
            return Err(eio("fsync"));
        }
        *inode.durable.lock() = bytes.to_vec();
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut fs = self.fs.lock();
        fs.tick();
        let (da, a) = split(from)?;
        let (db, b) = split(to)?;
        if da != db {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "rename across directories",
            ));
        }
        let d = fs.dir(da)?;
        let i = d.live.remove(&a).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no file {}", from.display()),
            )
        })?;
        d.live.insert(b.clone(), i);
        d.pending.push(DirOp::Rename(a, b));
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.fs.lock();
        fs.tick();
        let (dir, name) = split(path)?;
        let d = fs.dir(dir)?;
        if d.live.remove(&name).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no file {}", path.display()),
            ));
        }
        d.pending.push(DirOp::Unlink(name));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut fs = self.fs.lock();
        fs.tick();
        let fail = fs.fail_sync();
        let n = if fail {
            let len = fs.dir(dir)?.pending.len() as u64;
            fs.rng.below(len + 1) as usize
        } else {
            usize::MAX
        };
        let d = fs.dir(dir)?;
        let n = n.min(d.pending.len());
        let done: Vec<DirOp> = d.pending.drain(..n).collect();
        for op in &done {
            apply(&mut d.durable, op);
        }
        if fail {
            return Err(eio("fsync of the directory"));
        }
        Ok(())
    }

    fn create_mapped(&self, path: &Path, len: u64) -> io::Result<Box<dyn Region>> {
        let mut fs = self.fs.lock();
        fs.tick();
        fs.check_space(len)?;
        let pages = Arc::new(Pages::from_vec(vec![0u8; len as usize]));
        let inode = Inode::new(Data::Mapped(pages.clone()), Vec::new());
        fs.link(path, inode.clone())?;
        Ok(self.region(pages, inode))
    }

    fn open_mapped(&self, path: &Path) -> io::Result<Box<dyn Region>> {
        let mut fs = self.fs.lock();
        fs.tick();
        let inode = fs.lookup(path)?;
        let pages = {
            let mut data = inode.live.lock();
            match &*data {
                Data::Mapped(p) => p.clone(),
                Data::Plain(v) => {
                    let p = Arc::new(Pages::from_vec(v.clone()));
                    *data = Data::Mapped(p.clone());
                    p
                }
            }
        };
        Ok(self.region(pages, inode))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadAt>> {
        let mut fs = self.fs.lock();
        fs.tick();
        let inode = fs.lookup(path)?;
        Ok(Box::new(MemRead { inode }))
    }

    fn create_write(&self, path: &Path) -> io::Result<Box<dyn WriteSync>> {
        let mut fs = self.fs.lock();
        fs.tick();
        let inode = Inode::new(Data::Plain(Vec::new()), Vec::new());
        fs.link(path, inode.clone())?;
        Ok(Box::new(MemWrite {
            inode,
            fs: self.fs.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from("/d").join(s)
    }

    #[test]
    fn an_unsynced_name_can_vanish_and_a_synced_one_cannot() {
        for seed in 0..64 {
            let m = MemStorage::new(seed);
            m.create_dir_all(Path::new("/d")).unwrap();
            m.write_synced(&p("a"), b"one").unwrap();
            m.sync_dir(Path::new("/d")).unwrap();
            m.write_synced(&p("b"), b"two").unwrap();
            let img = m.image(Crash::Power, seed);
            assert_eq!(img.read(&p("a")).unwrap(), b"one");
            if let Ok(b) = img.read(&p("b")) {
                assert_eq!(b, b"two", "fsynced bytes of a surviving name");
            }
            let img = m.image(Crash::Process, seed);
            assert_eq!(img.read(&p("b")).unwrap(), b"two");
        }
        // Over the seeds, both outcomes for the unsynced name occur.
        let kept = (0..64)
            .filter(|&s| {
                let m = MemStorage::new(s);
                m.create_dir_all(Path::new("/d")).unwrap();
                m.write_synced(&p("b"), b"two").unwrap();
                m.image(Crash::Power, s).read(&p("b")).is_ok()
            })
            .count();
        assert!(kept > 0 && kept < 64, "kept {kept} of 64");
    }

    #[test]
    fn synced_pages_survive_power_loss_and_unsynced_ones_may_not() {
        let m = MemStorage::new(1);
        m.create_dir_all(Path::new("/d")).unwrap();
        let r = m.create_mapped(&p("s"), 4 * 4096_u64).unwrap();
        m.sync_dir(Path::new("/d")).unwrap();
        // SAFETY: our own fresh region.
        unsafe { std::ptr::write_bytes(r.as_mut_ptr(), 7, 4 * 4096) };
        r.sync(0, 4096).unwrap();
        let mut lost = 0;
        for seed in 0..32 {
            let img = m.image(Crash::Power, seed).read(&p("s")).unwrap();
            assert!(img[..4096].iter().all(|&b| b == 7), "synced page lost");
            lost += img[4096..].iter().filter(|&&b| b == 0).count();
        }
        assert!(lost > 0, "no unsynced page was ever lost");
    }

    #[test]
    fn a_capture_is_the_disk_just_before_the_call() {
        let m = MemStorage::new(3);
        m.create_dir_all(Path::new("/d")).unwrap();
        let at = m.calls() + 2;
        m.set_faults(Faults {
            capture_before_call: Some(at),
            ..Faults::default()
        });
        m.write_synced(&p("a"), b"1").unwrap();
        m.write_synced(&p("b"), b"2").unwrap();
        let c = m.captured().expect("captured");
        assert!(c.read(&p("a")).is_ok());
        assert!(c.read(&p("b")).is_err());
    }

    #[test]
    fn a_full_disk_refuses_with_enospc() {
        let m = MemStorage::new(0);
        m.create_dir_all(Path::new("/d")).unwrap();
        m.set_faults(Faults {
            space_bytes: Some(10_000),
            ..Faults::default()
        });
        assert!(m.create_mapped(&p("x"), 8192).is_ok());
        let e = m.create_mapped(&p("y"), 8192).err().unwrap();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    }
}
