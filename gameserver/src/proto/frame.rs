//! The frame: one header and a payload, the same bytes on TCP (a stream of
//! frames) and on WebSocket (one binary message per frame), and on the
//! gateway ↔ room-server link. Sans-IO: bytes in, frames out.
//!
//! ```text
//! { len u32 | kind u8 | flags u8 | rsv u16 | seq u32 | time_ms u64 | crc u32 } payload[len]
//!   24 bytes, little-endian; crc = crc32(header[0..20] ++ payload)
//! ```
//!
//! - `len` counts the payload only and is checked against the receiver's limit
//!   before a byte of the payload is buffered (no allocation from a hostile length).
//! - `kind` says how to read the payload ([`Kind`]).
//! - `flags` bit 0 = compressed: the payload is deflate-raw (RFC 1951, no
//!   zlib or gzip wrapper), `len` counts the compressed bytes and the CRC
//!   covers them; inflated, it may not exceed the receiver's payload limit
//!   ([`inflate`] stops at the limit: no decompression bomb). Bit 1 =
//!   encrypted: reserved; a frame with a flag this build does not know is
//!   refused.
//! - `seq` is the client's request sequence on requests, echoed on the reply;
//!   0 on pushes.
//! - `time_ms` is the sender's clock (unix ms): pings carry the client's,
//!   pongs the gateway's.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes of the frame header.
pub const HEADER_BYTES: usize = 24;
/// Flag bits this build understands (compression; encryption comes later).
pub const FLAGS_KNOWN: u8 = FLAG_COMPRESSED;
/// Flag: the payload is compressed (deflate-raw).
pub const FLAG_COMPRESSED: u8 = 1;
/// Flag: the payload is encrypted (reserved).
pub const FLAG_ENCRYPTED: u8 = 2;

/// What a frame's payload is. Client kinds are below 64, link kinds from 64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// client → gateway: [`super::msg::Auth`], the first frame of a session.
    Auth = 1,
    /// gateway → client: [`super::msg::Welcome`].
    Welcome = 2,
    /// client → gateway: [`super::msg::Request`], `seq` set.
    Request = 3,
    /// gateway → client: [`super::msg::Reply`], `seq` echoed.
    Reply = 4,
    /// gateway → client: [`super::msg::Push`] (room events, snapshots).
    Push = 5,
    /// client → gateway: heartbeat; empty payload, `time_ms` = client clock.
    Ping = 6,
    /// gateway → client: [`super::msg::Pong`]; `time_ms` = gateway clock.
    Pong = 7,
    /// gateway → client: [`super::msg::Fail`] not tied to a request (protocol errors).
    Error = 8,
    /// gateway → client: [`super::msg::Bye`], then the connection closes.
    Bye = 9,
    /// client → gateway: [`super::msg::CenterRequest`] (`seq` set, in the
    /// same sequence as `Request`), answered by a `Reply`: what the center
    /// server answers (channels, messages), not a room.
    Center = 10,
    /// gateway → room server: [`crate::link::ToRoom`].
    ToRoom = 64,
    /// room server → gateway: [`crate::link::FromRoom`].
    FromRoom = 65,
    /// gateway → center server: [`crate::center::link::ToCenter`].
    ToCenter = 66,
    /// center server → gateway: [`crate::center::link::FromCenter`].
    FromCenter = 67,
}

impl Kind {
    pub fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Auth,
            2 => Kind::Welcome,
            3 => Kind::Request,
            4 => Kind::Reply,
            5 => Kind::Push,
            6 => Kind::Ping,
            7 => Kind::Pong,
            8 => Kind::Error,
            9 => Kind::Bye,
            10 => Kind::Center,
            64 => Kind::ToRoom,
            65 => Kind::FromRoom,
            66 => Kind::ToCenter,
            67 => Kind::FromCenter,
            _ => return None,
        })
    }
}

/// A decoded frame. `payload` shares the receive buffer (no copy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub flags: u8,
    pub seq: u32,
    pub time_ms: u64,
    pub payload: Bytes,
}

/// Why bytes are not a frame. Every variant is a protocol violation: the
/// connection cannot be trusted to be in step any more.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame payload of {len} bytes is over the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame CRC mismatch (altered in transit or cut wrongly)")]
    BadCrc,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("frame flags {0:#x} are not supported by this server")]
    BadFlags(u8),
    #[error("reserved header bytes are not zero")]
    Reserved,
    #[error("a WebSocket message must hold exactly one frame ({0})")]
    NotOneFrame(&'static str),
    /// The compressed payload inflates past the limit (a decompression bomb,
    /// or a sender whose limit is larger than ours).
    #[error("a compressed payload inflates past the limit of {max} bytes")]
    InflatesTooLarge { max: usize },
    #[error("a compressed payload is not valid deflate-raw data")]
    BadCompression,
}

/// Deflate level of compressed frames: 1 (fastest). On the game's traffic
/// level 6 saves 3 points more of a 300-member room's snapshot (29% → 26% of
/// 9.6 KiB) for 5 times the CPU (47 µs → 260 µs), and nothing more on the
/// room list (`cargo bench -p benches --bench gameserver -- deflate`).
pub const DEFLATE_LEVEL: u32 = 1;

/// `payload` compressed as deflate-raw at [`DEFLATE_LEVEL`].
pub fn deflate(payload: &[u8]) -> Vec<u8> {
    deflate_at(payload, DEFLATE_LEVEL)
}

/// `payload` compressed as deflate-raw at `level` (0 to 9).
pub fn deflate_at(payload: &[u8], level: u32) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::DeflateEncoder::new(
        Vec::with_capacity(payload.len() / 2 + 16),
        flate2::Compression::new(level.min(9)),
    );
    e.write_all(payload).expect("writing to a Vec cannot fail");
    e.finish().expect("writing to a Vec cannot fail")
}

/// `data` (deflate-raw) inflated, refused once it passes `max` bytes: the
/// memory spent is at most `max + 1` bytes whatever the input claims.
pub fn inflate(data: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    use std::io::Read;
    let mut out = Vec::with_capacity((data.len() * 4).min(max + 1));
    let d = flate2::read::DeflateDecoder::new(data);
    d.take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| FrameError::BadCompression)?;
    if out.len() > max {
        return Err(FrameError::InflatesTooLarge { max });
    }
    Ok(out)
}

impl Frame {
    pub fn new(kind: Kind, seq: u32, time_ms: u64, payload: Bytes) -> Frame {
        Frame {
            kind,
            flags: 0,
            seq,
            time_ms,
            payload,
        }
    }

    /// Appends the encoded frame to `out`.
    pub fn encode_into(&self, out: &mut BytesMut) {
        encode_parts(
            self.kind,
            self.flags,
            self.seq,
            self.time_ms,
            &self.payload,
            out,
        );
    }

    /// This frame with its payload inflated if it is compressed (at most
    /// `payload_max` bytes).
    pub fn inflated(self, payload_max: usize) -> Result<Frame, FrameError> {
        if self.flags & FLAG_COMPRESSED == 0 {
            return Ok(self);
        }
        let plain = inflate(&self.payload, payload_max)?;
        Ok(Frame {
            flags: self.flags & !FLAG_COMPRESSED,
            payload: Bytes::from(plain),
            ..self
        })
    }

    /// The encoded frame as its own buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(HEADER_BYTES + self.payload.len());
        self.encode_into(&mut b);
        b.freeze()
    }
}

/// Encodes a frame from its parts (no `Frame` needed for a borrowed payload).
pub fn encode_parts(
    kind: Kind,
    flags: u8,
    seq: u32,
    time_ms: u64,
    payload: &[u8],
    out: &mut BytesMut,
) {
    let start = out.len();
    out.reserve(HEADER_BYTES + payload.len());
    out.put_u32_le(payload.len() as u32);
    out.put_u8(kind as u8);
    out.put_u8(flags);
    out.put_u16_le(0);
    out.put_u32_le(seq);
    out.put_u64_le(time_ms);
    let mut h = crc32fast::Hasher::new();
    h.update(&out[start..start + 20]);
    h.update(payload);
    out.put_u32_le(h.finalize());
    out.put_slice(payload);
}

/// `encoded` (one whole frame, uncompressed) again with its payload
/// compressed, if that makes it smaller; `None` otherwise (or if it is not
/// a plain frame). The header is kept, the CRC computed anew.
pub fn compress_encoded(encoded: &[u8]) -> Option<Bytes> {
    if encoded.len() < HEADER_BYTES || encoded[5] != 0 {
        return None;
    }
    let kind = Kind::from_u8(encoded[4])?;
    let payload = &encoded[HEADER_BYTES..];
    let packed = deflate(payload);
    if packed.len() >= payload.len() {
        return None;
    }
    let seq = u32::from_le_bytes(encoded[8..12].try_into().unwrap());
    let time_ms = u64::from_le_bytes(encoded[12..20].try_into().unwrap());
    let mut out = BytesMut::with_capacity(HEADER_BYTES + packed.len());
    encode_parts(kind, FLAG_COMPRESSED, seq, time_ms, &packed, &mut out);
    Some(out.freeze())
}

/// Decodes one frame from the front of `buf`, or `Ok(None)` if more bytes are
/// needed. A length over `payload_max` is refused from the header alone.
pub fn decode(buf: &mut BytesMut, payload_max: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < HEADER_BYTES {
        return Ok(None);
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize;
    if len > payload_max {
        return Err(FrameError::TooLarge {
            len,
            max: payload_max,
        });
    }
    let kind_u8 = buf[4];
    let kind = Kind::from_u8(kind_u8).ok_or(FrameError::UnknownKind(kind_u8))?;
    if buf.len() < HEADER_BYTES + len {
        buf.reserve(HEADER_BYTES + len - buf.len());
        return Ok(None);
    }
    let want = u32::from_le_bytes(buf[20..24].try_into().unwrap());
    let mut h = crc32fast::Hasher::new();
    h.update(&buf[0..20]);
    h.update(&buf[HEADER_BYTES..HEADER_BYTES + len]);
    if h.finalize() != want {
        return Err(FrameError::BadCrc);
    }
    let flags = buf[5];
    if flags & !FLAGS_KNOWN != 0 {
        return Err(FrameError::BadFlags(flags));
    }
    if buf[6] != 0 || buf[7] != 0 {
        return Err(FrameError::Reserved);
    }
    let mut head = buf.split_to(HEADER_BYTES);
    head.advance(8);
    let seq = head.get_u32_le();
    let time_ms = head.get_u64_le();
    let payload = buf.split_to(len).freeze();
    Ok(Some(Frame {
        kind,
        flags,
        seq,
        time_ms,
        payload,
    }))
}

/// Decodes a WebSocket message, which must be exactly one whole frame.
pub fn decode_message(msg: &[u8], payload_max: usize) -> Result<Frame, FrameError> {
    let mut b = BytesMut::from(msg);
    match decode(&mut b, payload_max)? {
        Some(f) if b.is_empty() => Ok(f),
        Some(_) => Err(FrameError::NotOneFrame("bytes after the frame")),
        None => Err(FrameError::NotOneFrame("a truncated frame")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kinds() -> impl Strategy<Value = Kind> {
        prop::sample::select(vec![
            Kind::Auth,
            Kind::Welcome,
            Kind::Request,
            Kind::Reply,
            Kind::Push,
            Kind::Ping,
            Kind::Pong,
            Kind::Error,
            Kind::Bye,
            Kind::Center,
            Kind::ToRoom,
            Kind::FromRoom,
            Kind::ToCenter,
            Kind::FromCenter,
        ])
    }

    proptest! {
        /// Any sequence of frames, cut into any pieces, decodes back to itself.
        #[test]
        fn round_trip_in_pieces(
            frames in prop::collection::vec((kinds(), any::<u32>(), any::<u64>(), prop::collection::vec(any::<u8>(), 0..300)), 1..8),
            cut in 1usize..64,
        ) {
            let mut wire = BytesMut::new();
            let want: Vec<Frame> = frames.into_iter().map(|(k, s, t, p)| Frame::new(k, s, t, Bytes::from(p))).collect();
            for f in &want { f.encode_into(&mut wire); }
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for chunk in wire.chunks(cut) {
                buf.extend_from_slice(chunk);
                while let Some(f) = decode(&mut buf, 1024).unwrap() { got.push(f); }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got, want);
        }

        /// Flipping any bit of a frame never yields a different valid frame.
        #[test]
        fn any_bit_flip_is_refused(p in prop::collection::vec(any::<u8>(), 0..64), bit in 0usize..(8 * 88)) {
            let f = Frame::new(Kind::Request, 7, 99, Bytes::from(p));
            let mut b = BytesMut::new();
            f.encode_into(&mut b);
            let bit = bit % (b.len() * 8);
            b[bit / 8] ^= 1 << (bit % 8);
            match decode(&mut b.clone(), 1 << 20) {
                Ok(Some(g)) => prop_assert!(false, "flipped frame accepted: {g:?}"),
                Ok(None) => {} // the length grew: waits for bytes that never come; the idle timer ends it
                Err(_) => {}
            }
        }

        /// Garbage never panics the decoder.
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut b = BytesMut::from(&bytes[..]);
            let _ = decode(&mut b, 100);
            let _ = decode_message(&bytes, 100);
        }
    }

    #[test]
    fn oversized_length_is_refused_from_the_header() {
        let mut b = BytesMut::new();
        b.put_u32_le(10_000_000);
        b.put_bytes(0, 20);
        assert_eq!(
            decode(&mut b, 65536),
            Err(FrameError::TooLarge {
                len: 10_000_000,
                max: 65536
            })
        );
    }

    #[test]
    fn unknown_flags_and_kinds_are_refused() {
        let mut b = BytesMut::new();
        encode_parts(Kind::Request, FLAG_ENCRYPTED, 1, 0, b"x", &mut b);
        assert_eq!(decode(&mut b, 100), Err(FrameError::BadFlags(2)));
        let mut b = BytesMut::new();
        Frame::new(Kind::Request, 1, 0, Bytes::new()).encode_into(&mut b);
        b[4] = 200;
        assert_eq!(decode(&mut b, 100), Err(FrameError::UnknownKind(200)));
    }

    #[test]
    fn compressed_frames_round_trip_and_bombs_are_refused() {
        let plain = Frame::new(Kind::Push, 0, 9, Bytes::from(vec![7u8; 5000]));
        let packed = compress_encoded(&plain.to_bytes()).expect("smaller");
        assert!(packed.len() < 200, "{} bytes", packed.len());
        let f = decode_message(&packed, 5000).unwrap();
        assert_eq!(f.flags, FLAG_COMPRESSED);
        assert_eq!(f.clone().inflated(5000).unwrap(), plain);
        // One byte over the limit once inflated: refused, not allocated past it.
        assert_eq!(
            f.clone().inflated(4999),
            Err(FrameError::InflatesTooLarge { max: 4999 })
        );
        // A bomb: 16 MiB of zeros in about 16 KiB.
        let bomb = {
            use std::io::Write;
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(&vec![0u8; 16 << 20]).unwrap();
            e.finish().unwrap()
        };
        assert!(bomb.len() < 20_000, "{}", bomb.len());
        assert_eq!(
            inflate(&bomb, 65536),
            Err(FrameError::InflatesTooLarge { max: 65536 })
        );
        assert_eq!(
            inflate(b"\xff\xff\xff", 100),
            Err(FrameError::BadCompression)
        );
        // Incompressible payloads stay as they are.
        let tiny = Frame::new(Kind::Push, 0, 9, Bytes::from_static(b"abc"));
        assert!(compress_encoded(&tiny.to_bytes()).is_none());
    }

    #[test]
    fn a_websocket_message_is_one_frame() {
        let f = Frame::new(Kind::Ping, 0, 5, Bytes::new());
        let one = f.to_bytes();
        assert_eq!(decode_message(&one, 10).unwrap(), f);
        let mut two = BytesMut::from(&one[..]);
        two.extend_from_slice(&one);
        assert!(matches!(
            decode_message(&two, 10),
            Err(FrameError::NotOneFrame(_))
        ));
        assert!(matches!(
            decode_message(&one[..10], 10),
            Err(FrameError::NotOneFrame(_))
        ));
    }
}
