//! Wire frames between master and slave. Sans-IO: bytes in, frames out.
//!
//! ```text
//! frame:   { len u32 | kind u8 | 0 u8 | 0 u16 | crc u32 } payload[len]
//!            crc = crc32 of the payload, except for Data, where it covers only the
//!            first 24 bytes (pos, epoch, tail): the records inside carry their own CRC,
//!            which the slave checks record by record before writing.
//!
//! Hello      { magic u32 "HSRP" | version u16 | 0 u16 | node u64 | history u128 |
//!              epoch u32 | last_epoch u32 | tail u64 | role u8 |
//!              n u16 | { epoch u32 | start u64 } * n }                   slave → master
//!              (n <= 256: where the slave's latest epochs start)
//! Welcome    { history u128 | epoch u32 | 0 u32 | segment_bytes u64 | action u8 |
//!              start u64 | snapshot_bytes u64 | node u64 }               master → slave
//! Data       { pos u64 | epoch u32 | 0 u32 | tail u64 | records... }    master → slave
//! Snapshot   { offset u64 | bytes... }                                   master → slave
//! Heartbeat  { epoch u32 | 0 u32 | tail u64 | flushed u64 | sent_ns u64 } master → slave
//! Ack        { epoch u32 | 0 u32 | received u64 | flushed u64 | applied u64 | echo_ns u64 } slave → master
//! Error      { code u16 | message utf-8 }                                either way
//! Status     { node u64 | epoch u32 | last_epoch u32 | tail u64 | role u8 | prefer u8 }
//!                                         a node that is not master, answering a Hello
//! Handover   { epoch u32 | 0 u32 | tail u64 }                            master → slave (switchover)
//! WitnessReq { pair u64 | node u64 | epoch u32 | promote u8 | dead u8 }  node → witness
//! WitnessRep { granted u8 | 0 u8 | 0 u16 | epoch u32 | holder u64 }      witness → node
//! ```
//! Little-endian everywhere. The decoder rejects a length over the limit before
//! allocating anything (as tokio-util's LengthDelimitedCodec does).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes of a frame header.
pub const FRAME_HEADER_BYTES: usize = 12;
/// Identifies the protocol in Hello.
pub const MAGIC: u32 = u32::from_le_bytes(*b"HSRP");
/// Bytes of a Data frame's own header (pos, epoch, tail), before the records.
pub const DATA_SUBHEADER_BYTES: usize = 24;
/// Protocol version spoken by this build.
pub const VERSION: u16 = 1;

/// How the slave must start following, decided by the master from the slave's Hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Same history: continue at `start`, which is the slave's own tail.
    Continue,
    /// Same history, but the slave's log diverged: truncate to `start`, then continue.
    Truncate,
    /// Different history or history no longer on the master: drop everything,
    /// load the snapshot that follows (`snapshot_bytes` long, taken at `start`),
    /// then continue at `start`.
    Resync,
}

/// One protocol message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Hello {
        node: u64,
        history: u128,
        epoch: u32,
        last_epoch: u32,
        tail: u64,
        role: u8,
        epochs: Vec<(u32, u64)>,
    },
    /// `node`: the master's id (the slave records it as its peer's).
    Welcome {
        history: u128,
        epoch: u32,
        segment_bytes: u64,
        action: Action,
        start: u64,
        snapshot_bytes: u64,
        node: u64,
    },
    /// Whole records starting at `pos`, all from one segment; `tail` is the
    /// master's tail when sent (so the slave knows its lag while catching up).
    Data {
        pos: u64,
        epoch: u32,
        tail: u64,
        records: Bytes,
    },
    Snapshot {
        offset: u64,
        bytes: Bytes,
    },
    /// `sent_ns`: the master's monotonic clock when sent; the slave echoes it (lease).
    Heartbeat {
        epoch: u32,
        tail: u64,
        flushed: u64,
        sent_ns: u64,
    },
    /// `echo_ns`: the `sent_ns` of the latest heartbeat the slave received.
    Ack {
        epoch: u32,
        received: u64,
        flushed: u64,
        applied: u64,
        echo_ns: u64,
    },
    Error {
        code: u16,
        message: String,
    },
    /// A node that is not serving as master answers a Hello with its rank.
    Status {
        node: u64,
        epoch: u32,
        last_epoch: u32,
        tail: u64,
        role: u8,
        prefer: u8,
    },
    /// Planned switchover: the master stopped writing at `tail`; the slave, having
    /// applied up to it, takes over in `epoch + 1`.
    Handover {
        epoch: u32,
        tail: u64,
    },
    WitnessRequest {
        pair: u64,
        node: u64,
        epoch: u32,
        promote: bool,
        dead: bool,
    },
    WitnessReply {
        granted: bool,
        epoch: u32,
        holder: u64,
    },
}

const K_HELLO: u8 = 1;
const K_WELCOME: u8 = 2;
const K_DATA: u8 = 3;
const K_SNAPSHOT: u8 = 4;
const K_HEARTBEAT: u8 = 5;
const K_ACK: u8 = 6;
const K_ERROR: u8 = 7;
const K_STATUS: u8 = 8;
const K_HANDOVER: u8 = 9;
const K_WITNESS_REQ: u8 = 10;
const K_WITNESS_REP: u8 = 11;
const K_MAX: u8 = K_WITNESS_REP;

/// Error codes carried by `Frame::Error`.
pub mod code {
    /// The peer sent something this node cannot parse.
    pub const MALFORMED: u16 = 1;
    /// The peer belongs to another history and cannot be reconciled.
    pub const WRONG_HISTORY: u16 = 2;
    /// The peer's epoch is older than ours: it must step down.
    pub const FENCED: u16 = 3;
    /// This node is not a master; the message says where the master is, if known.
    pub const NOT_MASTER: u16 = 4;
    /// A newer slave connection replaced this one.
    pub const REPLACED: u16 = 5;
    /// Anything else; the message says what.
    pub const OTHER: u16 = 99;
}

/// Why bytes are not a valid frame. The connection is dropped; nothing is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes; raise frame_bytes_max on both nodes if this is intended")]
    TooLarge { len: usize, max: usize },
    #[error("frame kind {0} is unknown: the peer speaks another protocol version")]
    UnknownKind(u8),
    #[error("frame kind {kind} fails its CRC check: the bytes were damaged in transit")]
    BadCrc { kind: u8 },
    #[error("frame kind {kind} is malformed: {what}")]
    Malformed { kind: u8, what: &'static str },
    #[error("peer is not an hs node (bad magic {0:#010x})")]
    BadMagic(u32),
    #[error("peer speaks protocol version {0}, this node speaks {VERSION}")]
    BadVersion(u16),
}

fn put_header(dst: &mut BytesMut, kind: u8, payload_len: usize, crc: u32) {
    dst.put_u32_le(payload_len as u32);
    dst.put_u8(kind);
    dst.put_u8(0);
    dst.put_u16_le(0);
    dst.put_u32_le(crc);
}

/// Encodes the header of a Data frame whose records (already in the log) follow it
/// on the wire: the sender writes this header and then the log's bytes, no copy.
pub fn data_header(
    pos: u64,
    epoch: u32,
    tail: u64,
    records_len: usize,
) -> [u8; FRAME_HEADER_BYTES + DATA_SUBHEADER_BYTES] {
    let mut sub = [0u8; DATA_SUBHEADER_BYTES];
    sub[0..8].copy_from_slice(&pos.to_le_bytes());
    sub[8..12].copy_from_slice(&epoch.to_le_bytes());
    sub[16..24].copy_from_slice(&tail.to_le_bytes());
    let mut out = [0u8; FRAME_HEADER_BYTES + DATA_SUBHEADER_BYTES];
    out[0..4].copy_from_slice(&((DATA_SUBHEADER_BYTES + records_len) as u32).to_le_bytes());
    out[4] = K_DATA;
    out[8..12].copy_from_slice(&crc32fast::hash(&sub).to_le_bytes());
    out[12..].copy_from_slice(&sub);
    out
}

impl Frame {
    /// Appends the encoded frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        let mut p = BytesMut::new();
        let kind = match self {
            Frame::Hello {
                node,
                history,
                epoch,
                last_epoch,
                tail,
                role,
                epochs,
            } => {
                p.put_u32_le(MAGIC);
                p.put_u16_le(VERSION);
                p.put_u16_le(0);
                p.put_u64_le(*node);
                p.put_u128_le(*history);
                p.put_u32_le(*epoch);
                p.put_u32_le(*last_epoch);
                p.put_u64_le(*tail);
                p.put_u8(*role);
                let n = epochs.len().min(crate::proto::catchup::HELLO_EPOCHS_MAX);
                p.put_u16_le(n as u16);
                for &(e, start) in &epochs[epochs.len() - n..] {
                    p.put_u32_le(e);
                    p.put_u64_le(start);
                }
                K_HELLO
            }
            Frame::Welcome {
                history,
                epoch,
                segment_bytes,
                action,
                start,
                snapshot_bytes,
                node,
            } => {
                p.put_u128_le(*history);
                p.put_u32_le(*epoch);
                p.put_u32_le(0);
                p.put_u64_le(*segment_bytes);
                p.put_u8(match action {
                    Action::Continue => 0,
                    Action::Truncate => 1,
                    Action::Resync => 2,
                });
                p.put_u64_le(*start);
                p.put_u64_le(*snapshot_bytes);
                p.put_u64_le(*node);
                K_WELCOME
            }
            Frame::Data {
                pos,
                epoch,
                tail,
                records,
            } => {
                dst.extend_from_slice(&data_header(*pos, *epoch, *tail, records.len()));
                dst.extend_from_slice(records);
                return;
            }
            Frame::Snapshot { offset, bytes } => {
                p.put_u64_le(*offset);
                p.extend_from_slice(bytes);
                K_SNAPSHOT
            }
            Frame::Heartbeat {
                epoch,
                tail,
                flushed,
                sent_ns,
            } => {
                p.put_u32_le(*epoch);
                p.put_u32_le(0);
                p.put_u64_le(*tail);
                p.put_u64_le(*flushed);
                p.put_u64_le(*sent_ns);
                K_HEARTBEAT
            }
            Frame::Ack {
                epoch,
                received,
                flushed,
                applied,
                echo_ns,
            } => {
                p.put_u32_le(*epoch);
                p.put_u32_le(0);
                p.put_u64_le(*received);
                p.put_u64_le(*flushed);
                p.put_u64_le(*applied);
                p.put_u64_le(*echo_ns);
                K_ACK
            }
            Frame::Status {
                node,
                epoch,
                last_epoch,
                tail,
                role,
                prefer,
            } => {
                p.put_u64_le(*node);
                p.put_u32_le(*epoch);
                p.put_u32_le(*last_epoch);
                p.put_u64_le(*tail);
                p.put_u8(*role);
                p.put_u8(*prefer);
                K_STATUS
            }
            Frame::Handover { epoch, tail } => {
                p.put_u32_le(*epoch);
                p.put_u32_le(0);
                p.put_u64_le(*tail);
                K_HANDOVER
            }
            Frame::WitnessRequest {
                pair,
                node,
                epoch,
                promote,
                dead,
            } => {
                p.put_u64_le(*pair);
                p.put_u64_le(*node);
                p.put_u32_le(*epoch);
                p.put_u8(*promote as u8);
                p.put_u8(*dead as u8);
                K_WITNESS_REQ
            }
            Frame::WitnessReply {
                granted,
                epoch,
                holder,
            } => {
                p.put_u8(*granted as u8);
                p.put_u8(0);
                p.put_u16_le(0);
                p.put_u32_le(*epoch);
                p.put_u64_le(*holder);
                K_WITNESS_REP
            }
            Frame::Error { code, message } => {
                p.put_u16_le(*code);
                // Bounded: an error message is for a log line, not a payload.
                let m = message.as_bytes();
                p.extend_from_slice(&m[..m.len().min(1024)]);
                K_ERROR
            }
        };
        put_header(dst, kind, p.len(), crc32fast::hash(&p));
        dst.extend_from_slice(&p);
    }

    /// Decodes one frame from the front of `src` if a whole one is there.
    ///
    /// `Ok(None)`: more bytes needed (and `src` has room reserved for them).
    /// The length is checked against `frame_bytes_max` before any allocation.
    pub fn decode(src: &mut BytesMut, frame_bytes_max: usize) -> Result<Option<Frame>, FrameError> {
        if src.len() < FRAME_HEADER_BYTES {
            return Ok(None);
        }
        let len = u32::from_le_bytes(src[0..4].try_into().unwrap()) as usize;
        if len > frame_bytes_max {
            return Err(FrameError::TooLarge {
                len,
                max: frame_bytes_max,
            });
        }
        let kind = src[4];
        if !(K_HELLO..=K_MAX).contains(&kind) {
            return Err(FrameError::UnknownKind(kind));
        }
        if src.len() < FRAME_HEADER_BYTES + len {
            src.reserve(FRAME_HEADER_BYTES + len - src.len());
            return Ok(None);
        }
        let crc = u32::from_le_bytes(src[8..12].try_into().unwrap());
        src.advance(FRAME_HEADER_BYTES);
        let mut p = src.split_to(len).freeze();
        let covered = if kind == K_DATA {
            &p[..p.len().min(DATA_SUBHEADER_BYTES)]
        } else {
            &p[..]
        };
        if crc32fast::hash(covered) != crc {
            return Err(FrameError::BadCrc { kind });
        }
        let need = |n: usize, p: &Bytes, what| {
            if p.len() < n {
                Err(FrameError::Malformed { kind, what })
            } else {
                Ok(())
            }
        };
        let f = match kind {
            K_HELLO => {
                need(47, &p, "hello shorter than 47 bytes")?;
                let magic = p.get_u32_le();
                if magic != MAGIC {
                    return Err(FrameError::BadMagic(magic));
                }
                let version = p.get_u16_le();
                if version != VERSION {
                    return Err(FrameError::BadVersion(version));
                }
                p.advance(2);
                let (node, history, epoch, last_epoch, tail, role) = (
                    p.get_u64_le(),
                    p.get_u128_le(),
                    p.get_u32_le(),
                    p.get_u32_le(),
                    p.get_u64_le(),
                    p.get_u8(),
                );
                let n = p.get_u16_le() as usize;
                if n > crate::proto::catchup::HELLO_EPOCHS_MAX || p.len() != n * 12 {
                    return Err(FrameError::Malformed {
                        kind,
                        what: "hello epoch list length",
                    });
                }
                let epochs = (0..n).map(|_| (p.get_u32_le(), p.get_u64_le())).collect();
                Frame::Hello {
                    node,
                    history,
                    epoch,
                    last_epoch,
                    tail,
                    role,
                    epochs,
                }
            }
            K_WELCOME => {
                need(57, &p, "welcome shorter than 57 bytes")?;
                let history = p.get_u128_le();
                let epoch = p.get_u32_le();
                p.advance(4);
                let segment_bytes = p.get_u64_le();
                let action = match p.get_u8() {
                    0 => Action::Continue,
                    1 => Action::Truncate,
                    2 => Action::Resync,
                    _ => {
                        return Err(FrameError::Malformed {
                            kind,
                            what: "unknown welcome action",
                        })
                    }
                };
                Frame::Welcome {
                    history,
                    epoch,
                    segment_bytes,
                    action,
                    start: p.get_u64_le(),
                    snapshot_bytes: p.get_u64_le(),
                    node: p.get_u64_le(),
                }
            }
            K_DATA => {
                need(
                    DATA_SUBHEADER_BYTES,
                    &p,
                    "data shorter than its 24-byte header",
                )?;
                let pos = p.get_u64_le();
                let epoch = p.get_u32_le();
                p.advance(4);
                let tail = p.get_u64_le();
                Frame::Data {
                    pos,
                    epoch,
                    tail,
                    records: p,
                }
            }
            K_SNAPSHOT => {
                need(8, &p, "snapshot chunk shorter than 8 bytes")?;
                let offset = p.get_u64_le();
                Frame::Snapshot { offset, bytes: p }
            }
            K_HEARTBEAT => {
                need(32, &p, "heartbeat shorter than 32 bytes")?;
                let epoch = p.get_u32_le();
                p.advance(4);
                Frame::Heartbeat {
                    epoch,
                    tail: p.get_u64_le(),
                    flushed: p.get_u64_le(),
                    sent_ns: p.get_u64_le(),
                }
            }
            K_ACK => {
                need(40, &p, "ack shorter than 40 bytes")?;
                let epoch = p.get_u32_le();
                p.advance(4);
                Frame::Ack {
                    epoch,
                    received: p.get_u64_le(),
                    flushed: p.get_u64_le(),
                    applied: p.get_u64_le(),
                    echo_ns: p.get_u64_le(),
                }
            }
            K_STATUS => {
                need(26, &p, "status shorter than 26 bytes")?;
                Frame::Status {
                    node: p.get_u64_le(),
                    epoch: p.get_u32_le(),
                    last_epoch: p.get_u32_le(),
                    tail: p.get_u64_le(),
                    role: p.get_u8(),
                    prefer: p.get_u8(),
                }
            }
            K_HANDOVER => {
                need(16, &p, "handover shorter than 16 bytes")?;
                let epoch = p.get_u32_le();
                p.advance(4);
                Frame::Handover {
                    epoch,
                    tail: p.get_u64_le(),
                }
            }
            K_WITNESS_REQ => {
                need(22, &p, "witness request shorter than 22 bytes")?;
                Frame::WitnessRequest {
                    pair: p.get_u64_le(),
                    node: p.get_u64_le(),
                    epoch: p.get_u32_le(),
                    promote: p.get_u8() != 0,
                    dead: p.get_u8() != 0,
                }
            }
            K_WITNESS_REP => {
                need(16, &p, "witness reply shorter than 16 bytes")?;
                let granted = p.get_u8() != 0;
                p.advance(3);
                Frame::WitnessReply {
                    granted,
                    epoch: p.get_u32_le(),
                    holder: p.get_u64_le(),
                }
            }
            K_ERROR => {
                need(2, &p, "error shorter than 2 bytes")?;
                let code = p.get_u16_le();
                Frame::Error {
                    code,
                    message: String::from_utf8_lossy(&p).into_owned(),
                }
            }
            _ => unreachable!("kind checked above"),
        };
        Ok(Some(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let bytes = proptest::collection::vec(any::<u8>(), 0..512).prop_map(Bytes::from);
        prop_oneof![
            (
                any::<u64>(),
                any::<u128>(),
                any::<u32>(),
                any::<u32>(),
                any::<u64>(),
                any::<u8>(),
                proptest::collection::vec((any::<u32>(), any::<u64>()), 0..20)
            )
                .prop_map(|(node, history, epoch, last_epoch, tail, role, epochs)| {
                    Frame::Hello {
                        node,
                        history,
                        epoch,
                        last_epoch,
                        tail,
                        role,
                        epochs,
                    }
                }),
            (
                any::<u128>(),
                any::<u32>(),
                any::<u64>(),
                0u8..3,
                any::<u64>(),
                any::<u64>(),
                any::<u64>()
            )
                .prop_map(
                    |(history, epoch, segment_bytes, a, start, snapshot_bytes, node)| {
                        Frame::Welcome {
                            history,
                            epoch,
                            segment_bytes,
                            action: [Action::Continue, Action::Truncate, Action::Resync]
                                [a as usize],
                            start,
                            snapshot_bytes,
                            node,
                        }
                    }
                ),
            (any::<u64>(), any::<u32>(), any::<u64>(), bytes.clone()).prop_map(
                |(pos, epoch, tail, records)| Frame::Data {
                    pos,
                    epoch,
                    tail,
                    records
                }
            ),
            (any::<u64>(), bytes).prop_map(|(offset, bytes)| Frame::Snapshot { offset, bytes }),
            (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(epoch, tail, flushed, sent_ns)| Frame::Heartbeat {
                    epoch,
                    tail,
                    flushed,
                    sent_ns
                }
            ),
            (
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>()
            )
                .prop_map(|(epoch, received, flushed, applied, echo_ns)| Frame::Ack {
                    epoch,
                    received,
                    flushed,
                    applied,
                    echo_ns
                }),
            (
                any::<u64>(),
                any::<u32>(),
                any::<u32>(),
                any::<u64>(),
                any::<u8>(),
                any::<u8>()
            )
                .prop_map(|(node, epoch, last_epoch, tail, role, prefer)| {
                    Frame::Status {
                        node,
                        epoch,
                        last_epoch,
                        tail,
                        role,
                        prefer,
                    }
                }),
            (any::<u32>(), any::<u64>()).prop_map(|(epoch, tail)| Frame::Handover { epoch, tail }),
            (
                any::<u64>(),
                any::<u64>(),
                any::<u32>(),
                any::<bool>(),
                any::<bool>()
            )
                .prop_map(|(pair, node, epoch, promote, dead)| Frame::WitnessRequest {
                    pair,
                    node,
                    epoch,
                    promote,
                    dead
                }),
            (any::<bool>(), any::<u32>(), any::<u64>()).prop_map(|(granted, epoch, holder)| {
                Frame::WitnessReply {
                    granted,
                    epoch,
                    holder,
                }
            }),
            (any::<u16>(), "[a-z ]{0,40}")
                .prop_map(|(code, message)| Frame::Error { code, message }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip_in_any_split(frames in proptest::collection::vec(arb_frame(), 1..8), cut in 1usize..64) {
            let mut wire = BytesMut::new();
            for f in &frames { f.encode(&mut wire); }
            // Feed the bytes in pieces: the decoder must wait, never misparse.
            let mut src = BytesMut::new();
            let mut out = Vec::new();
            for chunk in wire.chunks(cut) {
                src.extend_from_slice(chunk);
                while let Some(f) = Frame::decode(&mut src, 1 << 20).unwrap() { out.push(f); }
            }
            prop_assert_eq!(out, frames);
            prop_assert!(src.is_empty());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut src = BytesMut::from(&bytes[..]);
            for _ in 0..16 {
                match Frame::decode(&mut src, 4096) { Ok(Some(_)) => {}, _ => break }
            }
        }
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut src = BytesMut::new();
        src.put_u32_le(u32::MAX);
        src.put_u8(K_DATA);
        src.extend_from_slice(&[0; 7]);
        let cap = src.capacity();
        assert_eq!(
            Frame::decode(&mut src, 1 << 20),
            Err(FrameError::TooLarge {
                len: u32::MAX as usize,
                max: 1 << 20
            })
        );
        assert_eq!(src.capacity(), cap);
    }

    #[test]
    fn damaged_control_frame_and_unknown_kind_are_refused() {
        let mut wire = BytesMut::new();
        Frame::Ack {
            epoch: 1,
            received: 2,
            flushed: 3,
            applied: 4,
            echo_ns: 5,
        }
        .encode(&mut wire);
        let mut bad = wire.clone();
        bad[20] ^= 0x40;
        assert_eq!(
            Frame::decode(&mut bad, 1024),
            Err(FrameError::BadCrc { kind: K_ACK })
        );
        let mut unk = wire.clone();
        unk[4] = 42;
        assert_eq!(
            Frame::decode(&mut unk, 1024),
            Err(FrameError::UnknownKind(42))
        );
        let mut hello = BytesMut::new();
        Frame::Hello {
            node: 1,
            history: 2,
            epoch: 3,
            last_epoch: 3,
            tail: 0,
            role: 0,
            epochs: vec![],
        }
        .encode(&mut hello);
        hello[12] ^= 0xff; // magic, and fix the CRC so only the magic is wrong
        let crc = crc32fast::hash(&hello[12..]);
        hello[8..12].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            Frame::decode(&mut hello, 1024),
            Err(FrameError::BadMagic(_))
        ));
    }
}
