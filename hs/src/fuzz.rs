//! Entry points for the fuzz targets (`hs/fuzz/`, `cargo +nightly fuzz run
//! <target>`) and for `hs/tests/fuzz_corpus.rs`, which replays the committed
//! corpus through the same functions on every `cargo test`.
//!
//! Each takes arbitrary bytes, feeds them to a decoder of outside bytes the way
//! the node does, and checks what must hold for any input. Bad input must give
//! an error; only a bug panics.
//!
//! | target | decoder |
//! |---|---|
//! | [`frame_stream`] | [`Frame::decode`] over a byte stream, as a socket delivers it |
//! | [`frame_payload`] | one frame of kind `data[0]` around `data[1..]` with a valid CRC (so the payload decoders run) |
//! | [`records`] | the records of a Data frame ([`record::decode`], [`crate::log::for_each_in`]) |
//! | [`snapshot`] | [`Snapshot::decode`] (from the master during a resync, and from disk) |
//! | [`meta`] | [`Meta::decode`] (from disk) |

use bytes::{BufMut, BytesMut};

use crate::log::meta::Meta;
use crate::log::snapshot::Snapshot;
use crate::proto::frame::{Frame, FRAME_HEADER_BYTES};
use crate::proto::record::{self, Decoded};

/// Largest frame the targets accept: small, so inputs reach the limit.
const FRAME_BYTES_MAX: usize = 4096;
/// Largest record the targets accept.
const RECORD_BYTES_MAX: usize = 1024;
/// Frames decoded from one input at most (a loop bound; inputs are ≤ 16 KiB).
const FRAMES_MAX: usize = 4096;

/// Whatever decodes must encode back to the same frame.
fn check_round_trip(f: &Frame) {
    let mut b = BytesMut::new();
    f.encode(&mut b);
    let again = Frame::decode(&mut b, usize::MAX)
        .expect("an encoded frame decodes")
        .expect("an encoded frame is whole");
    match (f, &again) {
        // Encoding keeps at most 1024 bytes of a message, lossily decoded from UTF-8.
        (Frame::Error { code: a, .. }, Frame::Error { code: b, .. }) => assert_eq!(a, b),
        _ => assert_eq!(f, &again),
    }
}

/// Bytes from a socket, in one piece.
pub fn frame_stream(data: &[u8]) {
    let mut src = BytesMut::from(data);
    for _ in 0..FRAMES_MAX {
        match Frame::decode(&mut src, FRAME_BYTES_MAX) {
            Ok(Some(f)) => check_round_trip(&f),
            Ok(None) | Err(_) => return,
        }
    }
}

/// `data[0]` is the kind, the rest the payload; the frame CRC is valid.
pub fn frame_payload(data: &[u8]) {
    let Some((&kind, payload)) = data.split_first() else {
        return;
    };
    let covered = if kind == 3 {
        &payload[..payload.len().min(crate::proto::frame::DATA_SUBHEADER_BYTES)]
    } else {
        payload
    };
    let mut src = BytesMut::with_capacity(FRAME_HEADER_BYTES + payload.len());
    src.put_u32_le(payload.len() as u32);
    src.put_u8(kind);
    src.put_u8(0);
    src.put_u16_le(0);
    src.put_u32_le(crate::proto::checksum::crc(covered));
    src.extend_from_slice(payload);
    if let Ok(Some(f)) = Frame::decode(&mut src, usize::MAX) {
        check_round_trip(&f);
    }
}

/// A Data frame's records, at the position its first 8 bytes name (aligned).
pub fn records(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let pos = u64::from_le_bytes(data[..8].try_into().expect("8 bytes")) & !7;
    let bytes = &data[8..];
    // The checking decoder, record by record, as `append_replicated` walks them.
    let mut at = 0usize;
    while at < bytes.len() {
        match record::decode(&bytes[at..], pos.wrapping_add(at as u64), RECORD_BYTES_MAX) {
            Ok(Decoded::Record { rec, size }) => {
                assert!(size > 0 && at + size <= bytes.len());
                assert_eq!(rec.pos, pos.wrapping_add(at as u64));
                assert!(record::RECORD_HEADER_BYTES + rec.key.len() + rec.value.len() <= size);
                at += size;
            }
            Ok(Decoded::Skip) | Ok(Decoded::End) | Err(_) => break,
        }
    }
    // The loop the log's readers use, and the unchecked one the slave applies with
    // (only over bytes the checking pass accepted, as `append_replicated` does).
    let mut n = 0u64;
    let _ = crate::log::for_each_in(bytes, pos, RECORD_BYTES_MAX, &mut |_| n += 1);
    let mut m = 0u64;
    crate::log::for_each_checked(&bytes[..at], pos, &mut |_| m += 1);
    assert_eq!(
        m, n,
        "the unchecked pass must see the records the checked one did"
    );
}

/// A snapshot file or a resync's bytes: decodes to an error, or re-encodes to itself.
pub fn snapshot(data: &[u8]) {
    if let Ok(s) = Snapshot::decode(data) {
        let again = Snapshot::decode(&s.encode()).expect("an encoded snapshot decodes");
        assert_eq!(again, s);
    }
}

/// A meta file: decodes to nothing, or re-encodes to the same bytes.
pub fn meta(data: &[u8]) {
    if let Some(m) = Meta::decode(data) {
        assert_eq!(&m.encode()[..], data);
    }
}
