//! The meta file: which history this node's log belongs to and the highest
//! epoch it has taken or seen. A promotion writes epoch+1 here, durably, before
//! the node accepts a single write in it.
//!
//! ```text
//! <dir>/meta: { magic "HSMETA03" 8 | history u128 | epoch u32 | segment_bytes u64 | node u64 | peer u64 | crc u32 (CRC32C of the 52 bytes before) }
//! ```
//! Replaced atomically (write `meta.tmp`, fsync, rename, fsync the directory):
//! a crash leaves the old meta or the new one.

use std::io;
use std::path::Path;

use super::storage::Storage;

const MAGIC: &[u8; 8] = b"HSMETA03";
/// Magics of earlier formats: a log this build refuses (`old_format`).
/// HSMETA02 is format 2: CRC32 (IEEE) checksums in every file.
const OLD_MAGICS: [&[u8; 8]; 2] = [b"HSMETA01", b"HSMETA02"];
const LEN: usize = 56;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Random id of the history; 0 = this node has no history yet.
    pub history: u128,
    /// Highest epoch taken or seen.
    pub epoch: u32,
    pub segment_bytes: u64,
    /// This node's id, made once and kept (0 until the node first starts).
    pub node: u64,
    /// The other node's id, once learned (0 before): with both, each node owns
    /// one parity of the epoch space, so two nodes never take the same epoch.
    pub peer: u64,
}

impl Meta {
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0..8].copy_from_slice(MAGIC);
        b[8..24].copy_from_slice(&self.history.to_le_bytes());
        b[24..28].copy_from_slice(&self.epoch.to_le_bytes());
        b[28..36].copy_from_slice(&self.segment_bytes.to_le_bytes());
        b[36..44].copy_from_slice(&self.node.to_le_bytes());
        b[44..52].copy_from_slice(&self.peer.to_le_bytes());
        let crc = crate::proto::checksum::crc(&b[0..52]);
        b[52..56].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Meta> {
        if b.len() != LEN
            || &b[0..8] != MAGIC
            || crate::proto::checksum::crc(&b[0..52]).to_le_bytes() != b[52..56]
        {
            return None;
        }
        Some(Meta {
            history: u128::from_le_bytes(b[8..24].try_into().unwrap()),
            epoch: u32::from_le_bytes(b[24..28].try_into().unwrap()),
            segment_bytes: u64::from_le_bytes(b[28..36].try_into().unwrap()),
            node: u64::from_le_bytes(b[36..44].try_into().unwrap()),
            peer: u64::from_le_bytes(b[44..52].try_into().unwrap()),
        })
    }

    pub fn load(storage: &dyn Storage, dir: &Path) -> io::Result<Option<Meta>> {
        match storage.read(&dir.join("meta")) {
            Ok(b) => Meta::decode(&b).map(Some).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: meta file is damaged; restore it or move the directory away to resync this node from its peer", dir.join("meta").display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The magic of `dir`'s meta file if it is an earlier format this build
    /// cannot read (its checksums are CRC32, not CRC32C).
    pub fn old_format(storage: &dyn Storage, dir: &Path) -> Option<String> {
        let b = storage.read(&dir.join("meta")).ok()?;
        let magic = b.get(0..8)?;
        OLD_MAGICS
            .iter()
            .any(|m| &m[..] == magic)
            .then(|| String::from_utf8_lossy(magic).into_owned())
    }

    pub fn store(&self, storage: &dyn Storage, dir: &Path) -> io::Result<()> {
        let tmp = dir.join("meta.tmp");
        storage.write_synced(&tmp, &self.encode())?;
        storage.rename(&tmp, &dir.join("meta"))?;
        storage.sync_dir(dir)
    }
}

/// A fresh random history id (never 0).
pub fn new_history_id() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut out = 0u128;
    for i in 0..2u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(i);
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        out = (out << 64) | h.finish() as u128;
    }
    out.max(1)
}
