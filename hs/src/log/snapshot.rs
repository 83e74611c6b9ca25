//! Snapshot files: the latest value of every live key at a position, written
//! when retention drops old segments, and sent to a slave whose needed history
//! is gone.
//!
//! ```text
//! <dir>/<pos:020>.snap
//! { magic "HSSNAP01" 8 | history u128 | pos u64 | n_epochs u32 | { epoch u32 | start u64 } * n_epochs |
//!   count u64 | { key_len u16 | value_len u32 | key | value } * count | crc u32 (of every byte before it) }
//! ```
//! Written to `<name>.tmp`, fsynced, renamed, directory fsynced: a crash leaves
//! either the old snapshot or the new one, never half of one (a stray `.tmp` is
//! deleted on open).

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::proto::catchup::Epochs;
use crate::proto::record::{Op, RecordRef};

const MAGIC: &[u8; 8] = b"HSSNAP01";

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
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(b: &[u8]) -> Result<Snapshot, String> {
        if b.len() < 8 + 16 + 8 + 4 + 8 + 4 {
            return Err("shorter than a snapshot header".into());
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32fast::hash(body).to_le_bytes() != crc {
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

/// Writes `bytes` as the snapshot file for `pos`, atomically and durably.
pub fn write_file(dir: &Path, pos: u64, bytes: &[u8]) -> io::Result<PathBuf> {
    let path = dir.join(file_name(pos));
    let tmp = dir.join(format!("{}.tmp", file_name(pos)));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    Ok(path)
}

/// Makes a rename (or a delete) in `dir` durable: fsync of the directory itself.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(test)]
    DIR_SYNCS.with(|n| n.set(n.get() + 1));
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
thread_local! {
    /// Directory fsyncs made by this thread (tests check the crash-safety steps).
    pub(crate) static DIR_SYNCS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

#[cfg(test)]
mod tests {
    use super::*;

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
                let crc = crc32fast::hash(&b);
                b.extend_from_slice(&crc.to_le_bytes());
                let _ = Snapshot::decode(&b);
            }
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
