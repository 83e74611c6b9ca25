//! The record: one application state change, framed the same way in the log
//! on disk and in a `Data` frame on the wire, so the slave writes the master's
//! bytes verbatim at the same position.
//!
//! ```text
//! record, 8-byte aligned:
//! { len u32 | crc u32 | pos u64 | epoch u32 | op u8 | flags u8 | key_len u16 | key | value | pad to 8 }
//!   len   = 24 + key_len + value_len (padding not counted)
//!   crc   = CRC32C (`proto::checksum`) of bytes [8, len): pos, epoch, op, flags, key_len, key, value
//!   pos   = the record's own log position (byte offset in the history)
//!
//! segment-end marker, written where the next record does not fit:
//! { 0xFFFF_FFFF u32 | crc32c(pos as u64 LE) u32 }   the rest of the segment is skipped
//!
//! a zero `len` means "nothing written here yet" (segments are pre-zeroed).
//! ```
//! Little-endian everywhere.

use std::fmt;

/// Bytes of the fixed record header.
pub(crate) const RECORD_HEADER_BYTES: usize = 24;
/// Records start at multiples of this.
pub(crate) const RECORD_ALIGN_BYTES: usize = 8;
/// `len` value of the segment-end marker.
pub(crate) const SKIP_MARKER: u32 = u32::MAX;
/// Bytes of the segment-end marker.
pub(crate) const SKIP_BYTES: usize = 8;
/// Longest key: its length is a u16.
pub const KEY_BYTES_MAX: usize = u16::MAX as usize;

/// What a record does to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    /// Set the key to the value.
    Put = 1,
    /// Remove the key; the value is usually empty.
    Delete = 2,
}

impl Op {
    pub fn from_u8(b: u8) -> Option<Op> {
        match b {
            1 => Some(Op::Put),
            2 => Some(Op::Delete),
            _ => None,
        }
    }
}

/// A record as read from a log or a frame; borrows the bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub pos: u64,
    pub epoch: u32,
    pub op: Op,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

impl fmt::Debug for RecordRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("pos", &self.pos)
            .field("epoch", &self.epoch)
            .field("op", &self.op)
            .field("key_len", &self.key.len())
            .field("value_len", &self.value.len())
            .finish()
    }
}

/// Rounds `n` up to the record alignment.
#[inline]
pub(crate) const fn align_up(n: usize) -> usize {
    (n + RECORD_ALIGN_BYTES - 1) & !(RECORD_ALIGN_BYTES - 1)
}

/// Bytes a record with this key and value occupies in the log, padding included.
#[inline]
pub const fn encoded_len(key_len: usize, value_len: usize) -> usize {
    align_up(RECORD_HEADER_BYTES + key_len + value_len)
}

/// Writes a record into `buf` (which must be exactly `encoded_len` long and
/// zeroed past the record, as pre-zeroed segments are). Returns the bytes used.
///
/// The CRC is computed here, from the bytes as written, and checked again by
/// every reader: a fault between here and the slave is caught, never applied.
#[inline]
pub fn encode_into(
    buf: &mut [u8],
    pos: u64,
    epoch: u32,
    op: Op,
    key: &[u8],
    value: &[u8],
) -> usize {
    let len = RECORD_HEADER_BYTES + key.len() + value.len();
    debug_assert!(key.len() <= KEY_BYTES_MAX);
    debug_assert!(buf.len() >= align_up(len));
    buf[8..16].copy_from_slice(&pos.to_le_bytes());
    buf[16..20].copy_from_slice(&epoch.to_le_bytes());
    buf[20] = op as u8;
    buf[21] = 0;
    buf[22..24].copy_from_slice(&(key.len() as u16).to_le_bytes());
    buf[24..24 + key.len()].copy_from_slice(key);
    buf[24 + key.len()..len].copy_from_slice(value);
    let crc = crate::proto::checksum::crc(&buf[8..len]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    // The length goes last: a reader that sees a non-zero length in a
    // pre-zeroed segment after a crash also sees a CRC over what follows.
    buf[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    align_up(len)
}

/// Writes the segment-end marker for position `pos` into `buf[..8]`.
pub(crate) fn encode_skip(buf: &mut [u8], pos: u64) {
    buf[0..4].copy_from_slice(&SKIP_MARKER.to_le_bytes());
    buf[4..8].copy_from_slice(&crate::proto::checksum::crc(&pos.to_le_bytes()).to_le_bytes());
}

/// What is found at a position of a log or a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A valid record occupying `size` bytes (padding included).
    Record { rec: RecordRef<'a>, size: usize },
    /// A valid segment-end marker: continue at the next segment.
    Skip,
    /// Zeros: nothing was written here.
    End,
}

/// Why bytes are not a valid record. Each says where to look.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The record claims more bytes than remain (a torn write, or garbage).
    #[error("record at position {pos} is truncated: it claims {len} bytes, {avail} remain")]
    Truncated { pos: u64, len: usize, avail: usize },
    /// The length is below the header size or above the configured maximum.
    #[error("record at position {pos} has an impossible length {len} (limit {max} bytes)")]
    BadLength { pos: u64, len: usize, max: usize },
    /// The CRC does not match the bytes: corruption.
    #[error("record at position {pos} fails its CRC check (stored {stored:#010x}, computed {computed:#010x})")]
    BadCrc {
        pos: u64,
        stored: u32,
        computed: u32,
    },
    /// The record says it lives elsewhere: a misplaced or stale record.
    #[error("record at position {pos} carries position {found}")]
    WrongPosition { pos: u64, found: u64 },
    /// Unknown operation byte.
    #[error("record at position {pos} has unknown operation {op}")]
    BadOp { pos: u64, op: u8 },
    /// The key length points past the record.
    #[error("record at position {pos} has key length {key_len} beyond its length {len}")]
    BadKeyLength {
        pos: u64,
        key_len: usize,
        len: usize,
    },
    /// A segment-end marker whose check does not match.
    #[error("segment-end marker at position {pos} is corrupt")]
    BadSkip { pos: u64 },
}

/// Decodes and fully checks the record expected at position `pos`, at the start of `buf`.
///
/// `record_bytes_max` bounds `len` before anything is trusted.
pub fn decode(buf: &[u8], pos: u64, record_bytes_max: usize) -> Result<Decoded<'_>, RecordError> {
    if buf.len() < 4 {
        // Shorter than a length word: only a segment's very end can be this short,
        // and segment sizes are multiples of 8, so treat it as the end.
        return if buf.iter().all(|&b| b == 0) {
            Ok(Decoded::End)
        } else {
            Err(RecordError::Truncated {
                pos,
                len: 4,
                avail: buf.len(),
            })
        };
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().unwrap());
    if len == 0 {
        return Ok(Decoded::End);
    }
    if len == SKIP_MARKER {
        if buf.len() < SKIP_BYTES {
            return Err(RecordError::Truncated {
                pos,
                len: SKIP_BYTES,
                avail: buf.len(),
            });
        }
        let stored = u32::from_le_bytes(buf[4..8].try_into().unwrap());
        if stored != crate::proto::checksum::crc(&pos.to_le_bytes()) {
            return Err(RecordError::BadSkip { pos });
        }
        return Ok(Decoded::Skip);
    }
    let len = len as usize;
    if len < RECORD_HEADER_BYTES || len > record_bytes_max {
        return Err(RecordError::BadLength {
            pos,
            len,
            max: record_bytes_max,
        });
    }
    if len > buf.len() {
        return Err(RecordError::Truncated {
            pos,
            len,
            avail: buf.len(),
        });
    }
    let stored = u32::from_le_bytes(buf[4..8].try_into().unwrap());
    let computed = crate::proto::checksum::crc(&buf[8..len]);
    if stored != computed {
        return Err(RecordError::BadCrc {
            pos,
            stored,
            computed,
        });
    }
    let found = u64::from_le_bytes(buf[8..16].try_into().unwrap());
    if found != pos {
        return Err(RecordError::WrongPosition { pos, found });
    }
    let epoch = u32::from_le_bytes(buf[16..20].try_into().unwrap());
    let op = Op::from_u8(buf[20]).ok_or(RecordError::BadOp { pos, op: buf[20] })?;
    let key_len = u16::from_le_bytes(buf[22..24].try_into().unwrap()) as usize;
    if RECORD_HEADER_BYTES + key_len > len {
        return Err(RecordError::BadKeyLength { pos, key_len, len });
    }
    let key = &buf[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + key_len];
    let value = &buf[RECORD_HEADER_BYTES + key_len..len];
    Ok(Decoded::Record {
        rec: RecordRef {
            pos,
            epoch,
            op,
            key,
            value,
        },
        size: align_up(len).min(buf.len()),
    })
}

/// Decodes a record already checked by [`decode`] (same bytes, same position)
/// without computing its CRC again. `None` at a segment-end marker or zeros.
/// Only for bytes this process has checked: it trusts the lengths (but stays in bounds).
#[inline]
pub(crate) fn decode_unchecked(buf: &[u8], pos: u64) -> Option<(RecordRef<'_>, usize)> {
    let len = u32::from_le_bytes(buf.get(0..4)?.try_into().unwrap());
    if len == 0 || len == SKIP_MARKER {
        return None;
    }
    let len = len as usize;
    let key_len = u16::from_le_bytes(buf.get(22..24)?.try_into().unwrap()) as usize;
    let body = buf.get(RECORD_HEADER_BYTES..len)?;
    let (key, value) = body.split_at(key_len.min(body.len()));
    let epoch = u32::from_le_bytes(buf[16..20].try_into().unwrap());
    let op = Op::from_u8(buf[20])?;
    debug_assert_eq!(u64::from_le_bytes(buf[8..16].try_into().unwrap()), pos);
    Some((
        RecordRef {
            pos,
            epoch,
            op,
            key,
            value,
        },
        align_up(len).min(buf.len()),
    ))
}

/// The length word at the start of `buf` as a record size with padding, without
/// checking the CRC: used by a sender that walks records it wrote itself to cut
/// a batch at a record boundary. `None` at the end of data.
#[inline]
pub(crate) fn peek_size(buf: &[u8]) -> Option<usize> {
    let len = u32::from_le_bytes(buf.get(0..4)?.try_into().unwrap());
    match len {
        0 => None,
        SKIP_MARKER => Some(SKIP_BYTES),
        n => Some(align_up(n as usize)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(pos: u64, epoch: u32, op: Op, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; encoded_len(key.len(), value.len())];
        let n = encode_into(&mut buf, pos, epoch, op, key, value);
        assert_eq!(n, buf.len());
        buf
    }

    #[test]
    fn layout_is_as_documented() {
        let buf = enc(0x1122, 7, Op::Put, b"k", b"vv");
        assert_eq!(buf.len(), 32);
        assert_eq!(u32::from_le_bytes(buf[0..4].try_into().unwrap()), 27);
        assert_eq!(u64::from_le_bytes(buf[8..16].try_into().unwrap()), 0x1122);
        assert_eq!(u32::from_le_bytes(buf[16..20].try_into().unwrap()), 7);
        assert_eq!(buf[20], 1);
        assert_eq!(&buf[24..27], b"kvv");
        assert_eq!(&buf[27..], &[0; 5]);
    }

    #[test]
    fn rejects_each_kind_of_damage() {
        let good = enc(64, 1, Op::Delete, b"key", b"");
        let mut b = good.clone();
        b[25] ^= 1;
        assert!(matches!(
            decode(&b, 64, 1 << 20),
            Err(RecordError::BadCrc { .. })
        ));
        assert!(matches!(
            decode(&good, 72, 1 << 20),
            Err(RecordError::WrongPosition { .. })
        ));
        assert!(matches!(
            decode(&good[..20], 64, 1 << 20),
            Err(RecordError::Truncated { .. })
        ));
        assert!(matches!(
            decode(&good, 64, 16),
            Err(RecordError::BadLength { .. })
        ));
        let mut skip = [0u8; 8];
        encode_skip(&mut skip, 64);
        assert_eq!(decode(&skip, 64, 1 << 20), Ok(Decoded::Skip));
        assert!(matches!(
            decode(&skip, 72, 1 << 20),
            Err(RecordError::BadSkip { .. })
        ));
        assert_eq!(decode(&[0u8; 32], 8, 1 << 20), Ok(Decoded::End));
    }

    proptest! {
        #[test]
        fn round_trip(pos in 0u64..u64::MAX / 2, epoch: u32, del: bool,
                      key in proptest::collection::vec(any::<u8>(), 0..300),
                      value in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let pos = pos & !7;
            let op = if del { Op::Delete } else { Op::Put };
            let buf = enc(pos, epoch, op, &key, &value);
            let d = decode(&buf, pos, 1 << 20).unwrap();
            match d {
                Decoded::Record { rec, size } => {
                    prop_assert_eq!(size, buf.len());
                    prop_assert_eq!(rec.pos, pos);
                    prop_assert_eq!(rec.epoch, epoch);
                    prop_assert_eq!(rec.op, op);
                    prop_assert_eq!(rec.key, &key[..]);
                    prop_assert_eq!(rec.value, &value[..]);
                }
                other => prop_assert!(false, "decoded {:?}", other),
            }
            prop_assert_eq!(peek_size(&buf), Some(buf.len()));
        }

        #[test]
        fn any_flipped_byte_is_caught(key in proptest::collection::vec(any::<u8>(), 0..40),
                                      value in proptest::collection::vec(any::<u8>(), 0..200),
                                      at: prop::sample::Index, bit in 0u8..8) {
            let buf = enc(4096, 3, Op::Put, &key, &value);
            let len = RECORD_HEADER_BYTES + key.len() + value.len();
            let i = at.index(len);
            let mut bad = buf.clone();
            bad[i] ^= 1 << bit;
            // Every byte of the record proper is covered: the length by bounds and
            // the CRC of the bytes it frames, the rest by the CRC.
            let accepted = matches!(decode(&bad, 4096, 1 << 20),
                Ok(Decoded::Record { rec, .. }) if rec.key == &key[..] && rec.value == &value[..]);
            prop_assert!(!accepted, "flipped bit {} of byte {} went unnoticed", bit, i);
        }
    }
}
