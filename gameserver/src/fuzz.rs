//! Entry points for the fuzz targets (`gameserver/fuzz/`, `cargo +nightly
//! fuzz run <target>`) and for `tests/fuzz_corpus.rs`, which replays the
//! committed corpus through the same functions on every `cargo test`.
//!
//! Each takes arbitrary bytes, feeds them to a decoder of a client's bytes
//! the way the gateway does, and checks what must hold for any input. Bad
//! input must give an error; only a bug panics.
//!
//! | target | decoder |
//! |---|---|
//! | [`client_frames`] | a TCP stream of client frames ([`frame::decode`] in pieces, compressed ones inflated), and the same bytes as one WebSocket message ([`frame::decode_message`]) |
//! | [`payloads`] | the payloads a client sends: [`Auth::decode`], [`Request`], [`CenterRequest`], [`Pong::decode`] |

use bytes::BytesMut;

use crate::proto::frame::{self, Frame, FrameError, FLAG_COMPRESSED};
use crate::proto::msg::{self, Auth, CenterRequest, Pong, Request};

/// The payload limit the targets decode with (16 KiB: the fuzzer's inputs
/// reach it, and a bomb inflates past it).
pub const FUZZ_PAYLOAD_BYTES_MAX: usize = 16 << 10;

/// `data` as a stream of frames cut at a size the first byte picks, every
/// frame inflated if flagged and its payload decoded as its kind says.
pub fn client_frames(data: &[u8]) {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = 1 + cut as usize;
    let mut buf = BytesMut::new();
    'feed: for piece in rest.chunks(cut) {
        buf.extend_from_slice(piece);
        loop {
            match frame::decode(&mut buf, FUZZ_PAYLOAD_BYTES_MAX) {
                Ok(Some(f)) => check_frame(f),
                Ok(None) => break,
                Err(_) => break 'feed, // the gateway closes the session here
            }
        }
    }
    if let Ok(f) = frame::decode_message(rest, FUZZ_PAYLOAD_BYTES_MAX) {
        check_frame(f);
    }
}

fn check_frame(f: Frame) {
    assert!(f.payload.len() <= FUZZ_PAYLOAD_BYTES_MAX);
    let compressed = f.flags & FLAG_COMPRESSED != 0;
    if !compressed {
        // A plain frame encodes back to itself.
        let again = frame::decode_message(&f.to_bytes(), FUZZ_PAYLOAD_BYTES_MAX);
        assert_eq!(again.as_ref(), Ok(&f));
    }
    match f.inflated(FUZZ_PAYLOAD_BYTES_MAX) {
        Ok(plain) => {
            assert!(plain.payload.len() <= FUZZ_PAYLOAD_BYTES_MAX);
            assert_eq!(plain.flags & FLAG_COMPRESSED, 0);
            decode_as(plain.kind as u8, &plain.payload);
        }
        Err(e) => assert!(
            compressed
                && matches!(
                    e,
                    FrameError::InflatesTooLarge { .. } | FrameError::BadCompression
                ),
            "{e}"
        ),
    }
}

fn decode_as(kind: u8, payload: &[u8]) {
    match kind {
        1 => {
            if let Ok(a) = Auth::decode(payload) {
                assert_eq!(Auth::decode(&msg::encode(&a)).as_ref(), Ok(&a));
            }
        }
        3 => round_trip::<Request>(payload),
        10 => round_trip::<CenterRequest>(payload),
        7 => {
            if let Ok(p) = Pong::decode(payload) {
                assert_eq!(Pong::decode(&msg::encode(&p)).as_ref(), Ok(&p));
            }
        }
        _ => {}
    }
}

fn round_trip<T>(payload: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(v) = msg::decode::<T>(payload) {
        assert_eq!(msg::decode::<T>(&msg::encode(&v)).as_ref(), Ok(&v));
    }
}

/// The first byte picks the payload type (as a frame kind: 1 Auth, 3
/// Request, 7 Pong, 10 Center; others pick by the byte modulo 4), the rest
/// is decoded as it; then the rest inflated as deflate-raw, bounded.
pub fn payloads(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let kind = match pick {
        1 | 3 | 7 | 10 => pick,
        p => [1, 3, 7, 10][p as usize % 4],
    };
    decode_as(kind, rest);
    if let Ok(plain) = frame::inflate(rest, FUZZ_PAYLOAD_BYTES_MAX) {
        assert!(plain.len() <= FUZZ_PAYLOAD_BYTES_MAX);
        decode_as(kind, &plain);
    }
}
