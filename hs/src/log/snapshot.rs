//! Snapshot files: the latest value of every live key at a position, written
//! when retention drops old segments, and sent to a slave whose needed history
//! is gone.
//!
//! ```text
//! <dir>/<pos:020>.snap
//! { magic "HSSNAP02" 8 | history u128 | pos u64 | n_epochs u32 | { epoch u32 | start u64 } * n_epochs |
//!   count u64 | { key_len u16 | value_len u32 | key | value } * count | crc u32 (CRC32C of every byte before it) }
//! ```
//! Written to `<name>.tmp`, fsynced, renamed, directory fsynced: a crash leaves
//! either the old snapshot or the new one, never half of one (a stray `.tmp` is
//! deleted on open).

use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::storage::{Cursor, Storage, WriteSync};

use crate::proto::catchup::Epochs;
use crate::proto::record::{Op, RecordRef};

const MAGIC: &[u8; 8] = b"HSSNAP02";

pub fn file_name(pos: u64) -> String {
    format!("{pos:020}.snap")
}

pub fn parse_name(name: &str) -> Option<u64> {
    name.strip_suffix(".snap")?.parse().ok()
}

/// The state at a position: the fold of every record before it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct State {
    pub map: HashMap<Vec<u8>, Vec<u8>>,
}

impl State {
    pub fn apply(&mut self, rec: &RecordRef<'_>) {
        match rec.op {
            Op::Put => {
                self.map.insert(rec.key.to_vec(), rec.value.to_vec());
            }
            Op::Delete => {
                self.map.remove(rec.key);
            }
        }
    }
}

/// A decoded snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub history: u128,
    pub pos: u64,
    pub epochs: Epochs,
    pub state: State,
}

impl Snapshot {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            64 + self
                .state
                .map
                .iter()
                .map(|(k, v)| 6 + k.len() + v.len())
                .sum::<usize>(),
        );
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.history.to_le_bytes());
        out.extend_from_slice(&self.pos.to_le_bytes());
        out.extend_from_slice(&(self.epochs.as_slice().len() as u32).to_le_bytes());
        for &(e, s) in self.epochs.as_slice() {
            out.extend_from_slice(&e.to_le_bytes());
            out.extend_from_slice(&s.to_le_bytes());
        }
        out.extend_from_slice(&(self.state.map.len() as u64).to_le_bytes());
        // Sorted, so two nodes with equal state write equal files.
        let mut keys: Vec<_> = self.state.map.keys().collect();
        keys.sort();
        for k in keys {
            let v = &self.state.map[k];
            out.extend_from_slice(&(k.len() as u16).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(v);
        }
        let crc = crate::proto::checksum::crc(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(b: &[u8]) -> Result<Snapshot, String> {
        if b.len() < 8 + 16 + 8 + 4 + 8 + 4 {
            return Err("shorter than a snapshot header".into());
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crate::proto::checksum::crc(body).to_le_bytes() != crc {
            return Err("fails its CRC check".into());
        }
        if &body[0..8] != MAGIC {
            return Err("bad magic (not an hs snapshot)".into());
        }
        let mut r = Reader { b: body, at: 8 };
        let history = u128::from_le_bytes(r.take(16)?.try_into().unwrap());
        let pos = r.u64()?;
        let n = r.u32()? as usize;
        let mut epochs = Epochs::default();
        for _ in 0..n {
            let e = r.u32()?;
            let s = r.u64()?;
            epochs
                .observe(e, s)
                .map_err(|_| "epochs out of order".to_string())?;
        }
        let count = r.u64()?;
        let mut state = State::default();
        for _ in 0..count {
            let kl = u16::from_le_bytes(r.take(2)?.try_into().unwrap()) as usize;
            let vl = r.u32()? as usize;
            let k = r.take(kl)?.to_vec();
            let v = r.take(vl)?.to_vec();
            state.map.insert(k, v);
        }
        if r.at != body.len() {
            return Err("trailing bytes after the entries".into());
        }
        Ok(Snapshot {
            history,
            pos,
            epochs,
            state,
        })
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.b.len() - self.at < n {
            return Err("truncated".into());
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
}

/// What a snapshot file says before its entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub history: u128,
    pub pos: u64,
    pub epochs: Epochs,
    pub count: u64,
}

/// Bytes of a snapshot before the epoch list: magic, history, pos, n.
const HEAD_FIXED_BYTES: u64 = 8 + 16 + 8 + 4;
/// Buffer of the streaming reader and writer: what a snapshot pass holds in
/// memory besides one entry.
const STREAM_BUFFER_BYTES: usize = 256 << 10;

/// A snapshot arriving in pieces (a resync): written to `<dir>/<pos>.snap.tmp`
/// as they come (deleted on open if a crash leaves it), its CRC computed on the
/// way. Nothing is held but the piece being written and a write buffer.
pub struct Incoming {
    file: BufWriter<Box<dyn WriteSync>>,
    storage: std::sync::Arc<dyn Storage>,
    path: PathBuf,
    /// CRC32C of the bytes hashed so far.
    hasher: u32,
    /// The last (up to) 4 bytes seen, not yet hashed: the CRC, once all is in.
    held: Vec<u8>,
    len: u64,
}

impl Incoming {
    pub fn create(
        storage: std::sync::Arc<dyn Storage>,
        dir: &Path,
        pos: u64,
    ) -> io::Result<Incoming> {
        let path = dir.join(format!("{}.tmp", file_name(pos)));
        let file = storage.create_write(&path)?;
        Ok(Incoming {
            file: BufWriter::with_capacity(STREAM_BUFFER_BYTES, file),
            storage,
            path,
            hasher: 0,
            held: Vec::with_capacity(8),
            len: 0,
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The next bytes, in order.
    pub fn write(&mut self, piece: &[u8]) -> io::Result<()> {
        self.file.write_all(piece)?;
        self.len += piece.len() as u64;
        if piece.len() >= 4 {
            self.hasher = crate::proto::checksum::crc_append(self.hasher, &self.held);
            self.hasher =
                crate::proto::checksum::crc_append(self.hasher, &piece[..piece.len() - 4]);
            self.held.clear();
            self.held.extend_from_slice(&piece[piece.len() - 4..]);
        } else {
            self.held.extend_from_slice(piece);
            let extra = self.held.len().saturating_sub(4);
            self.hasher = crate::proto::checksum::crc_append(self.hasher, &self.held[..extra]);
            self.held.drain(..extra);
        }
        Ok(())
    }

    /// All bytes are in: checks the CRC, then the whole layout in one streaming
    /// pass (so a snapshot is refused before anything is reset), and makes the
    /// file durable. Returns the temporary file (for `Log::reset_to_file`) and
    /// the head. On error the temporary file is deleted.
    pub fn finish(self) -> Result<(PathBuf, Head), String> {
        let Incoming {
            file,
            storage,
            path,
            hasher,
            held,
            len: _,
        } = self;
        let r = (|| {
            if held.len() != 4 || hasher.to_le_bytes()[..] != held[..] {
                return Err("fails its CRC check".to_string());
            }
            let mut f = file.into_inner().map_err(|e| e.to_string())?;
            f.sync().map_err(|e| e.to_string())?;
            drop(f);
            let head = for_each_entry(&*storage, &path, |_, _| {})?;
            Ok(head)
        })();
        match r {
            Ok(head) => Ok((path, head)),
            Err(e) => {
                let _ = storage.remove(&path);
                Err(e)
            }
        }
    }
}

/// Reads the snapshot file at `path` in one pass, calling `f` on every entry
/// (key, value); holds one entry and a read buffer, whatever the file's size.
/// Checks the layout (lengths, epoch order, nothing trailing), not the CRC
/// (`Incoming::finish` and `Snapshot::decode` do).
pub fn for_each_entry(
    storage: &dyn Storage,
    path: &Path,
    mut f: impl FnMut(&[u8], &[u8]),
) -> Result<Head, String> {
    let file = storage.open_read(path).map_err(|e| e.to_string())?;
    let len = file.len();
    if len < HEAD_FIXED_BYTES + 8 + 4 {
        return Err("shorter than a snapshot header".into());
    }
    // Every length is checked against what is left before anything is read.
    let mut left = len - 4;
    let mut r = BufReader::with_capacity(STREAM_BUFFER_BYTES, Cursor { src: &*file, at: 0 });
    let mut take = |buf: &mut Vec<u8>, n: u64| -> Result<(), String> {
        if n > left {
            return Err("truncated".into());
        }
        left -= n;
        buf.resize(n as usize, 0);
        r.read_exact(buf).map_err(|e| e.to_string())
    };
    let mut b = Vec::new();
    take(&mut b, HEAD_FIXED_BYTES)?;
    if &b[0..8] != MAGIC {
        return Err("bad magic (not an hs snapshot)".into());
    }
    let history = u128::from_le_bytes(b[8..24].try_into().unwrap());
    let pos = u64::from_le_bytes(b[24..32].try_into().unwrap());
    let n = u32::from_le_bytes(b[32..36].try_into().unwrap()) as u64;
    let mut epochs = Epochs::default();
    for _ in 0..n {
        take(&mut b, 12)?;
        let e = u32::from_le_bytes(b[0..4].try_into().unwrap());
        let s = u64::from_le_bytes(b[4..12].try_into().unwrap());
        epochs
            .observe(e, s)
            .map_err(|_| "epochs out of order".to_string())?;
    }
    take(&mut b, 8)?;
    let count = u64::from_le_bytes(b[0..8].try_into().unwrap());
    let (mut k, mut v) = (Vec::new(), Vec::new());
    for _ in 0..count {
        take(&mut b, 6)?;
        let kl = u16::from_le_bytes(b[0..2].try_into().unwrap()) as u64;
        let vl = u32::from_le_bytes(b[2..6].try_into().unwrap()) as u64;
        take(&mut k, kl)?;
        take(&mut v, vl)?;
        f(&k, &v);
    }
    if left != 0 {
        return Err("trailing bytes after the entries".into());
    }
    Ok(Head {
        history,
        pos,
        epochs,
        count,
    })
}

/// Writes `bytes` as the snapshot file for `pos`, atomically and durably.
pub fn write_file(
    storage: &dyn Storage,
    dir: &Path,
    pos: u64,
    bytes: &[u8],
) -> io::Result<PathBuf> {
    let path = dir.join(file_name(pos));
    let tmp = dir.join(format!("{}.tmp", file_name(pos)));
    storage.write_synced(&tmp, bytes)?;
    storage.rename(&tmp, &path)?;
    storage.sync_dir(dir)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::storage::FileStorage;

    fn fs() -> std::sync::Arc<dyn Storage> {
        std::sync::Arc::new(FileStorage)
    }

    #[test]
    fn random_bodies_with_a_valid_crc_never_panic() {
        // A snapshot comes from the master over the wire: its CRC proves nothing
        // about its lengths. Every body length, random bytes, a valid magic and CRC.
        let mut x = 7u64;
        for len in 0..300usize {
            for _ in 0..8 {
                let mut b = MAGIC.to_vec();
                b.extend((0..len).map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                }));
                let crc = crate::proto::checksum::crc(&b);
                b.extend_from_slice(&crc.to_le_bytes());
                let _ = Snapshot::decode(&b);
            }
        }
    }

    #[test]
    fn a_snapshot_arriving_in_pieces_is_checked_and_streamed_back() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Snapshot {
            history: 9,
            pos: 8192,
            epochs: Epochs::default(),
            state: State::default(),
        };
        s.epochs.observe(1, 0).unwrap();
        for i in 0..100u32 {
            s.state
                .map
                .insert(i.to_le_bytes().to_vec(), vec![i as u8; i as usize * 7]);
        }
        let b = s.encode();
        for piece in [1usize, 3, 4, 5, 64, 4096, b.len()] {
            let mut inc = Incoming::create(fs(), d.path(), s.pos).unwrap();
            for c in b.chunks(piece) {
                inc.write(c).unwrap();
            }
            let (path, head) = inc.finish().unwrap();
            assert_eq!((head.history, head.pos, head.count), (9, 8192, 100));
            assert_eq!(head.epochs, s.epochs);
            let mut back = State::default();
            for_each_entry(&FileStorage, &path, |k, v| {
                back.map.insert(k.to_vec(), v.to_vec());
            })
            .unwrap();
            assert_eq!(back, s.state, "pieces of {piece}");
        }
        // A flipped byte anywhere: refused, and the temporary file is gone.
        for at in [0, 20, b.len() / 2, b.len() - 1] {
            let mut bad = b.clone();
            bad[at] ^= 1;
            let mut inc = Incoming::create(fs(), d.path(), 1).unwrap();
            inc.write(&bad).unwrap();
            assert!(inc.finish().is_err(), "flip at {at} accepted");
            assert!(!d.path().join(format!("{}.tmp", file_name(1))).exists());
        }
    }

    #[test]
    fn round_trip_and_damage() {
        let mut s = Snapshot {
            history: 9,
            pos: 4096,
            epochs: Epochs::default(),
            state: State::default(),
        };
        s.epochs.observe(1, 0).unwrap();
        s.epochs.observe(2, 1024).unwrap();
        s.state.map.insert(b"a".to_vec(), b"1".to_vec());
        s.state.map.insert(b"bb".to_vec(), vec![7; 300]);
        let b = s.encode();
        assert_eq!(Snapshot::decode(&b).unwrap(), s);
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x10;
            assert!(Snapshot::decode(&bad).is_err(), "flip at {i} not caught");
        }
        assert!(Snapshot::decode(&b[..b.len() - 1]).is_err());
    }
}
