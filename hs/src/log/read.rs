//! Reading committed records: byte ranges for the sender, and record walks.

use std::sync::Arc;

use super::segment::Segment;
use super::{Log, LogError};
use crate::proto::record::{self, Decoded, RecordRef};

/// A chunk of committed log bytes inside one segment.
pub struct Chunk {
    pub seg: Arc<Segment>,
    pub pos: u64,
    pub len: usize,
}

impl Chunk {
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `read` only returns ranges below the committed tail.
        unsafe { self.seg.slice(self.pos, self.len) }
    }
}

impl Log {
    /// Bytes of committed records from `from`, at most `max_bytes` (but at least one
    /// whole record), within one segment, cut at a record boundary. `None`: nothing new.
    pub fn read(&self, from: u64, max_bytes: usize) -> Result<Option<Chunk>, LogError> {
        let tail = self.tail();
        if from >= tail {
            return Ok(None);
        }
        let first = self.first();
        if from < first {
            return Err(LogError::Gone { pos: from, first });
        }
        let seg = {
            let segs = self.segs.read();
            let i = segs.partition_point(|s| s.end() <= from);
            match segs.get(i) {
                Some(s) if s.base <= from => s.clone(),
                _ => {
                    return Err(LogError::Gone {
                        pos: from,
                        first: self.first(),
                    })
                }
            }
        };
        let end = tail.min(seg.end());
        let mut len = (end - from) as usize;
        if len > max_bytes {
            // Walk our own record headers to cut at a boundary.
            // SAFETY: below the committed tail.
            let buf = unsafe { seg.slice(from, len) };
            let mut at = 0usize;
            while at < len {
                // A segment-end marker owns the rest of the segment (the tail is at the
                // segment's end once it is written): it goes whole, with its zeros, as
                // the slave expects. The remainder is shorter than one record.
                let is_skip = buf[at..]
                    .get(0..4)
                    .is_some_and(|w| w == record::SKIP_MARKER.to_le_bytes());
                let sz = if is_skip {
                    len - at
                } else {
                    record::peek_size(&buf[at..]).unwrap_or(len - at)
                };
                if at + sz > max_bytes && at > 0 {
                    break;
                }
                at += sz;
            }
            len = at.min(len);
        }
        Ok(Some(Chunk {
            seg,
            pos: from,
            len,
        }))
    }

    /// Calls `f` for every record in `[from, to)` (both record boundaries, `to`
    /// at most the tail). Records are CRC-checked again as they are read.
    pub fn for_each(
        &self,
        from: u64,
        to: u64,
        mut f: impl FnMut(&RecordRef<'_>),
    ) -> Result<(), LogError> {
        let mut pos = from;
        while pos < to {
            let Some(chunk) = self.read(pos, 4 << 20)? else {
                break;
            };
            let (n, skipped) =
                for_each_in(chunk.bytes(), chunk.pos, self.cfg.record_bytes_max, &mut f)?;
            pos = if skipped {
                chunk.seg.end()
            } else {
                chunk.pos + n as u64
            };
            assert!(
                pos > chunk.pos,
                "no progress reading the log at {}",
                chunk.pos
            );
        }
        Ok(())
    }
}

/// Calls `f` on each record of bytes that `append_replicated` has just checked
/// (CRC included): the apply pass does not pay for the CRC a second time.
pub fn for_each_checked(bytes: &[u8], pos: u64, f: &mut impl FnMut(&RecordRef<'_>)) {
    let mut at = 0usize;
    while at + record::RECORD_HEADER_BYTES <= bytes.len() {
        match record::decode_unchecked(&bytes[at..], pos + at as u64) {
            Some((rec, size)) => {
                f(&rec);
                at += size;
            }
            None => return,
        }
    }
}

/// Calls `f` on each record in `bytes` (records starting at `pos`), re-checking
/// each. Returns the bytes consumed and whether a segment-end marker ended them.
pub fn for_each_in(
    bytes: &[u8],
    pos: u64,
    record_bytes_max: usize,
    f: &mut impl FnMut(&RecordRef<'_>),
) -> Result<(usize, bool), LogError> {
    let mut at = 0usize;
    while at < bytes.len() {
        match record::decode(&bytes[at..], pos + at as u64, record_bytes_max)? {
            Decoded::Record { rec, size } => {
                f(&rec);
                at += size;
            }
            Decoded::Skip => return Ok((at + record::SKIP_BYTES, true)),
            Decoded::End => return Ok((at, false)),
        }
    }
    Ok((at, false))
}
