//! The log's file access, behind one small trait: everything the log does to a
//! disk is one of these calls, so the same `Log` runs on real files
//! ([`FileStorage`], the default: files, `mmap`, `msync`, `fsync`) and on
//! [`MemStorage`](super::mem::MemStorage), an in-memory disk that can lose
//! unsynced pages and directory entries, tear writes, fail a sync or run full
//! (the deterministic simulation in `hs/tests/sim_log.rs` runs on it).
//!
//! The contract each implementation keeps, and the log relies on:
//! - a [`Region`] is a file mapped whole; stores into it are in the file for
//!   every later reader of it at once (the page cache), and on the disk only
//!   after [`Region::sync`] of their range returns `Ok`;
//! - [`Storage::write_synced`] and [`WriteSync::sync`] make a file's bytes
//!   durable, not its name: a new name (create, rename) or a removal is durable
//!   only after [`Storage::sync_dir`] of its directory;
//! - a rename within a directory is atomic: after any crash the name points to
//!   the old file or the new one.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use memmap2::{Advice, MmapOptions, MmapRaw};

/// A file mapped into memory, whole.
pub trait Region: Send + Sync {
    /// Start of the mapping; valid for `len()` bytes while `self` lives.
    fn as_mut_ptr(&self) -> *mut u8;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Makes bytes `[offset, offset + len)` durable (msync).
    fn sync(&self, offset: usize, len: usize) -> io::Result<()>;
    /// Faults every page of the mapping in for writing now, in one call, so
    /// that later stores take no page fault (`MADV_POPULATE_WRITE` for real
    /// files). Changes no byte and nothing durable; a no-op where unsupported.
    fn populate(&self) {}
}

/// A file opened for positioned reads (a snapshot being sent).
pub trait ReadAt: Send + Sync {
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

/// A new file being written from its start (a snapshot arriving).
pub trait WriteSync: Write + Send {
    /// Makes every byte written so far durable (fsync).
    fn sync(&mut self) -> io::Result<()>;
}

/// Why a log directory could not be locked.
#[derive(Debug)]
pub enum LockError {
    /// Another open log holds it; `pid` is the holder's, if it wrote one.
    Held {
        pid: Option<u32>,
    },
    Io(io::Error),
}

/// Everything the log does to a disk. Paths are the log directory and names
/// directly inside it.
pub trait Storage: Send + Sync + fmt::Debug + 'static {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Takes the directory's exclusive lock, never waiting; released when the
    /// returned guard drops (however the process ends, for real files).
    fn lock_dir(&self, dir: &Path) -> Result<Box<dyn Send + Sync>, LockError>;
    /// Names of the entries in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Creates (or replaces) `path` with `bytes`, fsynced; its name is durable
    /// only after `sync_dir`.
    fn write_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the creations, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Creates `path` with `len` zero bytes, allocated in full (a full disk
    /// is an error here, never a fault on a later store), and maps it.
    fn create_mapped(&self, path: &Path, len: u64) -> io::Result<Box<dyn Region>>;
    /// Maps an existing file whole.
    fn open_mapped(&self, path: &Path) -> io::Result<Box<dyn Region>>;
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadAt>>;
    /// Creates (or truncates) `path` for writing from its start.
    fn create_write(&self, path: &Path) -> io::Result<Box<dyn WriteSync>>;
}

/// Real files: `mmap`, `msync`, `fsync`, `flock`.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileStorage;

struct FileRegion {
    map: MmapRaw,
    _file: File,
}

impl Region for FileRegion {
    fn as_mut_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }
    fn len(&self) -> usize {
        self.map.len()
    }
    fn sync(&self, offset: usize, len: usize) -> io::Result<()> {
        self.map.flush_range(offset, len)
    }
    fn populate(&self) {
        // Linux >= 5.14. Where it is refused (an older kernel: EINVAL), the
        // caller's page-by-page touch does the same, one fault at a time.
        if let Err(e) = self.map.advise(Advice::PopulateWrite) {
            tracing::debug!(error = %e, "MADV_POPULATE_WRITE refused; pages fault in on first touch");
        }
    }
}

struct FileReadAt {
    file: File,
    len: u64,
}

impl ReadAt for FileReadAt {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)
    }
}

struct FileWrite(File);

impl Write for FileWrite {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl WriteSync for FileWrite {
    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_all()
    }
}

impl Storage for FileStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn lock_dir(&self, dir: &Path) -> Result<Box<dyn Send + Sync>, LockError> {
        use std::io::{Read, Seek};
        use std::os::fd::AsRawFd;
        let path = dir.join(super::LOCK_FILE);
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(LockError::Io)?;
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(LockError::Io(e));
            }
            let mut text = String::new();
            let _ = f.read_to_string(&mut text);
            return Err(LockError::Held {
                pid: text.trim().parse().ok(),
            });
        }
        let write_pid = |f: &mut File| -> io::Result<()> {
            f.set_len(0)?;
            f.rewind()?;
            writeln!(f, "{}", std::process::id())
        };
        write_pid(&mut f).map_err(LockError::Io)?;
        Ok(Box::new(f))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir)? {
            out.push(e?.file_name().to_string_lossy().into_owned());
        }
        Ok(out)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn write_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut f = File::create(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        #[cfg(test)]
        DIR_SYNCS.with(|n| n.set(n.get() + 1));
        File::open(dir)?.sync_all()
    }

    fn create_mapped(&self, path: &Path, len: u64) -> io::Result<Box<dyn Region>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        // SAFETY: plain syscall on an fd we own.
        let rc = unsafe {
            libc::posix_fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
                len as libc::off_t,
            )
        };
        let map = if rc != 0 {
            Err(io::Error::from_raw_os_error(rc))
        } else {
            MmapOptions::new().len(len as usize).map_raw(&file)
        };
        match map {
            Ok(map) => {
                // The page cache's zeroing of every new page happens here, in
                // one call, rather than in a fault per page on first touch.
                let region = FileRegion { map, _file: file };
                region.populate();
                Ok(Box::new(region))
            }
            Err(e) => {
                let _ = std::fs::remove_file(path);
                Err(e)
            }
        }
    }

    fn open_mapped(&self, path: &Path) -> io::Result<Box<dyn Region>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let len = file.metadata()?.len();
        if len == 0 {
            // mmap refuses a zero length; the caller's size check reports it.
            return Ok(Box::new(EmptyRegion));
        }
        let map = MmapOptions::new().len(len as usize).map_raw(&file)?;
        Ok(Box::new(FileRegion { map, _file: file }))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadAt>> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Box::new(FileReadAt { file, len }))
    }

    fn create_write(&self, path: &Path) -> io::Result<Box<dyn WriteSync>> {
        Ok(Box::new(FileWrite(File::create(path)?)))
    }
}

/// An empty file's "mapping".
struct EmptyRegion;

impl Region for EmptyRegion {
    fn as_mut_ptr(&self) -> *mut u8 {
        std::ptr::NonNull::dangling().as_ptr()
    }
    fn len(&self) -> usize {
        0
    }
    fn sync(&self, _: usize, _: usize) -> io::Result<()> {
        Ok(())
    }
}

/// Sequential reads of a [`ReadAt`] (the snapshot reader's buffer sits on it).
pub(crate) struct Cursor<'a> {
    pub src: &'a dyn ReadAt,
    pub at: u64,
}

impl io::Read for Cursor<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.src.len().saturating_sub(self.at)).min(buf.len() as u64) as usize;
        self.src.read_exact_at(&mut buf[..n], self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
thread_local! {
    /// Directory fsyncs made by this thread (tests check the crash-safety steps).
    pub(crate) static DIR_SYNCS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}
