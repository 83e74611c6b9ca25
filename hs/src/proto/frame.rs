//! Wire frames between master and slave. Sans-IO: bytes in, frames out.
//!
//! ```text
//! frame:   { len u32 | kind u8 | 0 u8 | 0 u16 | crc u32 } payload[len]
//!            crc = CRC32C (`proto::checksum`) of the payload, except for Data, where it covers only the
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
//! WitnessReq { pair u64 | node u64 | epoch u32 | promote u8 | dead u8 |  node → witness
//!              [family u8 (4|6) | port u16 | ip [4|16]] }  a renewing master's own address
//! WitnessRep { granted u8 | 0 u8 | 0 u16 | epoch u32 | holder u64 }      witness → node
//! Challenge  { nonce [16] }                         acceptor → connector, first (with a secret)
//! Auth       { nonce [16] | mac [32] }              before the first frame each way (with a secret)
//! ```
//! With a shared secret, each connection starts with a challenge and response
//! (`proto::auth`): the acceptor sends Challenge; each side's first frame (Hello or
//! WitnessReq; Welcome, Status, WitnessRep or Error) follows an Auth holding its
//! HMAC, and nothing in it is used before the MAC checks.
//! Little-endian everywhere. The decoder rejects a length over the limit before
//! allocating anything (as tokio-util's LengthDelimitedCodec does).

use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes of a frame header.
pub(crate) const FRAME_HEADER_BYTES: usize = 12;
/// Identifies the protocol in Hello.
pub(crate) const MAGIC: u32 = u32::from_le_bytes(*b"HSRP");
/// Bytes of a Data frame's own header (pos, epoch, tail), before the records.
pub(crate) const DATA_SUBHEADER_BYTES: usize = 24;
/// Protocol version spoken by this build. 2: every CRC is CRC32C (1: CRC32).
pub(crate) const VERSION: u16 = 2;

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
        /// A renewal: the master holds this connection open until its next
        /// renewal has been answered, so its close with no newer renewal tells
        /// the witness the process is gone (the kernel closes a dead process's
        /// sockets). Bit 1 of the `dead` byte; older nodes send 0.
        linger: bool,
        /// A renewal: the master's replication address (its `listen`; an
        /// unspecified IP stands for the address it connects from), which the
        /// witness tries itself when a slave reports it refused. Appended;
        /// older nodes omit it.
        addr: Option<SocketAddr>,
        /// A renewal: the master's history and the position its slave has
        /// acknowledged at Received; a promotion: the requester's history and
        /// tail. The witness refuses a promotion from a log below what was
        /// acknowledged in its history. Appended after `addr` (a family byte
        /// of 0 stands for no address then); older nodes omit it.
        mark: Option<(u128, u64)>,
    },
    WitnessReply {
        granted: bool,
        epoch: u32,
        holder: u64,
    },
    /// The acceptor's fresh nonce: the connector's MAC must cover it.
    Challenge {
        nonce: [u8; 16],
    },
    /// The MAC of the frame that follows (`proto::auth::handshake_mac`); `nonce`
    /// is the connector's own (zero from the acceptor).
    Auth {
        nonce: [u8; 16],
        mac: [u8; 32],
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
const K_CHALLENGE: u8 = 12;
const K_AUTH: u8 = 13;
const K_MAX: u8 = K_AUTH;

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
    /// The peer did not prove it holds the pair's secret.
    pub const UNAUTHENTICATED: u16 = 6;
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
    #[error("peer speaks protocol version {0}, this node speaks {VERSION}; run the same hs version on both nodes and the witness")]
    BadVersion(u16),
    /// The frame's CRC is the CRC32 of protocol version 1, not CRC32C.
    #[error("peer speaks protocol version 1 (CRC32 frames), this node speaks {VERSION} (CRC32C); upgrade the peer (both nodes and the witness run the same hs version)")]
    OldVersion,
}

/// Bytes of the whole frame at the start of `src`, header included, once its
/// length word is there (not checked against a limit: `Frame::decode` does).
pub fn peek_len(src: &[u8]) -> Option<usize> {
    let len = u32::from_le_bytes(src.get(0..4)?.try_into().ok()?);
    Some(FRAME_HEADER_BYTES + len as usize)
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
pub(crate) fn data_header(
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
    out[8..12].copy_from_slice(&crate::proto::checksum::crc(&sub).to_le_bytes());
    out[12..].copy_from_slice(&sub);
    out
}

/// Bytes of a Hello before its epoch list: magic 4, version 2, 0 2, node 8,
/// history 16, epoch 4, last_epoch 4, tail 8, role 1, n 2.
const HELLO_FIXED_BYTES: usize = 51;

/// A payload being decoded: every read checks what is left first, so a short
/// payload is `Malformed` (never a panic, whatever its CRC).
struct Rd {
    p: Bytes,
    kind: u8,
}

impl Rd {
    fn need(&self, n: usize, what: &'static str) -> Result<(), FrameError> {
        if self.p.len() < n {
            Err(FrameError::Malformed {
                kind: self.kind,
                what,
            })
        } else {
            Ok(())
        }
    }
    fn short(&self) -> FrameError {
        FrameError::Malformed {
            kind: self.kind,
            what: "payload ends inside a field",
        }
    }
    fn skip(&mut self, n: usize) -> Result<(), FrameError> {
        if self.p.len() < n {
            return Err(self.short());
        }
        self.p.advance(n);
        Ok(())
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        self.p.try_get_u8().map_err(|_| self.short())
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        self.p.try_get_u16_le().map_err(|_| self.short())
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        self.p.try_get_u32_le().map_err(|_| self.short())
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        self.p.try_get_u64_le().map_err(|_| self.short())
    }
    fn u128(&mut self) -> Result<u128, FrameError> {
        self.p.try_get_u128_le().map_err(|_| self.short())
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let mut a = [0u8; N];
        self.p.try_copy_to_slice(&mut a).map_err(|_| self.short())?;
        Ok(a)
    }
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
                linger,
                addr,
                mark,
            } => {
                p.put_u64_le(*pair);
                p.put_u64_le(*node);
                p.put_u32_le(*epoch);
                p.put_u8(*promote as u8);
                // { dead bit 0 | linger bit 1 }
                p.put_u8(*dead as u8 | (*linger as u8) << 1);
                // { family u8 (4 | 6) | port u16 | ip [4 | 16] }, only when known
                // (family 0: none, when a mark follows)
                match addr {
                    None if mark.is_some() => p.put_u8(0),
                    None => {}
                    Some(SocketAddr::V4(a)) => {
                        p.put_u8(4);
                        p.put_u16_le(a.port());
                        p.extend_from_slice(&a.ip().octets());
                    }
                    Some(SocketAddr::V6(a)) => {
                        p.put_u8(6);
                        p.put_u16_le(a.port());
                        p.extend_from_slice(&a.ip().octets());
                    }
                }
                // { history u128 | pos u64 }
                if let Some((history, pos)) = mark {
                    p.put_u128_le(*history);
                    p.put_u64_le(*pos);
                }
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
            Frame::Challenge { nonce } => {
                p.extend_from_slice(nonce);
                K_CHALLENGE
            }
            Frame::Auth { nonce, mac } => {
                p.extend_from_slice(nonce);
                p.extend_from_slice(mac);
                K_AUTH
            }
            Frame::Error { code, message } => {
                p.put_u16_le(*code);
                // Bounded: an error message is for a log line, not a payload.
                let m = message.as_bytes();
                p.extend_from_slice(&m[..m.len().min(1024)]);
                K_ERROR
            }
        };
        put_header(dst, kind, p.len(), crate::proto::checksum::crc(&p));
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
        let p = src.split_to(len).freeze();
        let covered = if kind == K_DATA {
            &p[..p.len().min(DATA_SUBHEADER_BYTES)]
        } else {
            &p[..]
        };
        if crate::proto::checksum::crc(covered) != crc {
            // Only on the error path: a version-1 peer's frames carry CRC32.
            if crate::proto::checksum::legacy(covered) == crc {
                return Err(FrameError::OldVersion);
            }
            return Err(FrameError::BadCrc { kind });
        }
        // Every read is checked: a payload shorter than its kind's layout is
        // `Malformed`, never a panic (the CRC proves only that the sender meant it).
        let mut r = Rd { p, kind };
        let f = match kind {
            K_HELLO => {
                r.need(HELLO_FIXED_BYTES, "hello shorter than 51 bytes")?;
                let magic = r.u32()?;
                if magic != MAGIC {
                    return Err(FrameError::BadMagic(magic));
                }
                let version = r.u16()?;
                if version != VERSION {
                    return Err(FrameError::BadVersion(version));
                }
                r.skip(2)?;
                let (node, history, epoch, last_epoch, tail, role) =
                    (r.u64()?, r.u128()?, r.u32()?, r.u32()?, r.u64()?, r.u8()?);
                let n = r.u16()? as usize;
                if n > crate::proto::catchup::HELLO_EPOCHS_MAX || r.p.len() != n * 12 {
                    return Err(FrameError::Malformed {
                        kind,
                        what: "hello epoch list length",
                    });
                }
                let mut epochs = Vec::with_capacity(n);
                for _ in 0..n {
                    epochs.push((r.u32()?, r.u64()?));
                }
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
                r.need(57, "welcome shorter than 57 bytes")?;
                let history = r.u128()?;
                let epoch = r.u32()?;
                r.skip(4)?;
                let segment_bytes = r.u64()?;
                let action = match r.u8()? {
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
                    start: r.u64()?,
                    snapshot_bytes: r.u64()?,
                    node: r.u64()?,
                }
            }
            K_DATA => {
                r.need(DATA_SUBHEADER_BYTES, "data shorter than its 24-byte header")?;
                let pos = r.u64()?;
                let epoch = r.u32()?;
                r.skip(4)?;
                let tail = r.u64()?;
                Frame::Data {
                    pos,
                    epoch,
                    tail,
                    records: r.p,
                }
            }
            K_SNAPSHOT => {
                r.need(8, "snapshot chunk shorter than 8 bytes")?;
                let offset = r.u64()?;
                Frame::Snapshot { offset, bytes: r.p }
            }
            K_HEARTBEAT => {
                r.need(32, "heartbeat shorter than 32 bytes")?;
                let epoch = r.u32()?;
                r.skip(4)?;
                Frame::Heartbeat {
                    epoch,
                    tail: r.u64()?,
                    flushed: r.u64()?,
                    sent_ns: r.u64()?,
                }
            }
            K_ACK => {
                r.need(40, "ack shorter than 40 bytes")?;
                let epoch = r.u32()?;
                r.skip(4)?;
                Frame::Ack {
                    epoch,
                    received: r.u64()?,
                    flushed: r.u64()?,
                    applied: r.u64()?,
                    echo_ns: r.u64()?,
                }
            }
            K_STATUS => {
                r.need(26, "status shorter than 26 bytes")?;
                Frame::Status {
                    node: r.u64()?,
                    epoch: r.u32()?,
                    last_epoch: r.u32()?,
                    tail: r.u64()?,
                    role: r.u8()?,
                    prefer: r.u8()?,
                }
            }
            K_HANDOVER => {
                r.need(16, "handover shorter than 16 bytes")?;
                let epoch = r.u32()?;
                r.skip(4)?;
                Frame::Handover {
                    epoch,
                    tail: r.u64()?,
                }
            }
            K_WITNESS_REQ => {
                r.need(22, "witness request shorter than 22 bytes")?;
                let (pair, node, epoch, promote) = (r.u64()?, r.u64()?, r.u32()?, r.u8()? != 0);
                let bits = r.u8()?;
                let addr = match r.p.len() {
                    0 => None,
                    _ => match r.u8()? {
                        0 => None,
                        4 => {
                            r.need(6, "witness request: short IPv4 address")?;
                            let port = r.u16()?;
                            let ip: [u8; 4] = r.array()?;
                            Some(SocketAddr::from((ip, port)))
                        }
                        6 => {
                            r.need(18, "witness request: short IPv6 address")?;
                            let port = r.u16()?;
                            let ip: [u8; 16] = r.array()?;
                            Some(SocketAddr::from((ip, port)))
                        }
                        _ => {
                            return Err(FrameError::Malformed {
                                kind,
                                what: "witness request: unknown address family",
                            })
                        }
                    },
                };
                let mark = match r.p.len() {
                    0 => None,
                    24 => Some((r.u128()?, r.u64()?)),
                    _ => {
                        return Err(FrameError::Malformed {
                            kind,
                            what: "witness request: a log mark is 24 bytes",
                        })
                    }
                };
                Frame::WitnessRequest {
                    pair,
                    node,
                    epoch,
                    promote,
                    dead: bits & 1 != 0,
                    linger: bits & 2 != 0,
                    addr,
                    mark,
                }
            }
            K_WITNESS_REP => {
                r.need(16, "witness reply shorter than 16 bytes")?;
                let granted = r.u8()? != 0;
                r.skip(3)?;
                Frame::WitnessReply {
                    granted,
                    epoch: r.u32()?,
                    holder: r.u64()?,
                }
            }
            K_CHALLENGE => {
                r.need(16, "challenge shorter than 16 bytes")?;
                Frame::Challenge { nonce: r.array()? }
            }
            K_AUTH => {
                r.need(48, "auth shorter than 48 bytes")?;
                Frame::Auth {
                    nonce: r.array()?,
                    mac: r.array()?,
                }
            }
            K_ERROR => {
                r.need(2, "error shorter than 2 bytes")?;
                let code = r.u16()?;
                Frame::Error {
                    code,
                    message: String::from_utf8_lossy(&r.p).into_owned(),
                }
            }
            _ => unreachable!("kind checked above"),
        };
        Ok(Some(f))
    }
}

/// A frame's kind, for messages (never its contents: an unproven peer's bytes).
pub fn kind_name(f: &Frame) -> &'static str {
    match f {
        Frame::Hello { .. } => "Hello",
        Frame::Welcome { .. } => "Welcome",
        Frame::Data { .. } => "Data",
        Frame::Snapshot { .. } => "Snapshot",
        Frame::Heartbeat { .. } => "Heartbeat",
        Frame::Ack { .. } => "Ack",
        Frame::Error { .. } => "Error",
        Frame::Status { .. } => "Status",
        Frame::Handover { .. } => "Handover",
        Frame::WitnessRequest { .. } => "WitnessRequest",
        Frame::WitnessReply { .. } => "WitnessReply",
        Frame::Challenge { .. } => "Challenge",
        Frame::Auth { .. } => "Auth",
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
                any::<bool>(),
                any::<bool>(),
                // What the wire carries: IP and port (no IPv6 flow or scope).
                proptest::option::of(prop_oneof![
                    (any::<[u8; 4]>(), any::<u16>()).prop_map(SocketAddr::from),
                    (any::<[u8; 16]>(), any::<u16>()).prop_map(SocketAddr::from),
                ]),
                proptest::option::of((any::<u128>(), any::<u64>()))
            )
                .prop_map(|(pair, node, epoch, promote, dead, linger, addr, mark)| {
                    Frame::WitnessRequest {
                        pair,
                        node,
                        epoch,
                        promote,
                        dead,
                        linger,
                        addr,
                        mark,
                    }
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
            any::<[u8; 16]>().prop_map(|nonce| Frame::Challenge { nonce }),
            (any::<[u8; 16]>(), any::<[u8; 32]>())
                .prop_map(|(nonce, mac)| Frame::Auth { nonce, mac }),
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

    /// Deterministic bytes (splitmix64): the same payloads every run.
    fn noise(seed: &mut u64, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = *seed;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                (z ^ (z >> 31)) as u8
            })
            .collect()
    }

    /// A frame of `kind` around `payload` with the CRC a sender would compute, so
    /// the payload decoder itself runs (random bytes stop at the frame CRC).
    fn framed(kind: u8, payload: &[u8]) -> BytesMut {
        let covered = if kind == K_DATA {
            &payload[..payload.len().min(DATA_SUBHEADER_BYTES)]
        } else {
            payload
        };
        let mut b = BytesMut::new();
        put_header(
            &mut b,
            kind,
            payload.len(),
            crate::proto::checksum::crc(covered),
        );
        b.extend_from_slice(payload);
        b
    }

    fn decode_no_panic(kind: u8, payload: &[u8]) -> Result<Option<Frame>, FrameError> {
        let mut src = framed(kind, payload);
        match std::panic::catch_unwind(move || Frame::decode(&mut src, 1 << 20)) {
            Ok(r) => r,
            Err(_) => panic!(
                "decoder of kind {kind} panicked on a {}-byte payload with a valid CRC: {payload:02x?}",
                payload.len()
            ),
        }
    }

    /// One valid frame of every kind, for the truncation test.
    fn one_of_each() -> Vec<Frame> {
        vec![
            Frame::Hello {
                node: 7,
                history: 9,
                epoch: 3,
                last_epoch: 2,
                tail: 4096,
                role: 2,
                epochs: vec![(1, 0), (2, 1024)],
            },
            Frame::Welcome {
                history: 9,
                epoch: 3,
                segment_bytes: 4096,
                action: Action::Truncate,
                start: 8,
                snapshot_bytes: 0,
                node: 5,
            },
            Frame::Data {
                pos: 8,
                epoch: 3,
                tail: 64,
                records: Bytes::from_static(&[1; 32]),
            },
            Frame::Snapshot {
                offset: 0,
                bytes: Bytes::from_static(b"snap"),
            },
            Frame::Heartbeat {
                epoch: 3,
                tail: 1,
                flushed: 1,
                sent_ns: 2,
            },
            Frame::Ack {
                epoch: 3,
                received: 1,
                flushed: 1,
                applied: 1,
                echo_ns: 2,
            },
            Frame::Error {
                code: 4,
                message: "no".into(),
            },
            Frame::Status {
                node: 1,
                epoch: 2,
                last_epoch: 2,
                tail: 3,
                role: 3,
                prefer: 1,
            },
            Frame::Handover { epoch: 3, tail: 8 },
            Frame::WitnessRequest {
                pair: 1,
                node: 2,
                epoch: 3,
                promote: true,
                dead: false,
                linger: false,
                addr: None,
                mark: None,
            },
            Frame::WitnessRequest {
                pair: 1,
                node: 2,
                epoch: 3,
                promote: true,
                dead: true,
                linger: false,
                addr: None,
                mark: Some((0xabc, 4096)),
            },
            Frame::WitnessRequest {
                pair: 1,
                node: 2,
                epoch: 3,
                promote: false,
                dead: false,
                linger: true,
                addr: Some("[::1]:7".parse().unwrap()),
                mark: None,
            },
            Frame::WitnessRequest {
                pair: 1,
                node: 2,
                epoch: 3,
                promote: false,
                dead: false,
                linger: true,
                addr: Some("127.0.0.1:9".parse().unwrap()),
                mark: Some((7, 1 << 40)),
            },
            Frame::WitnessReply {
                granted: true,
                epoch: 3,
                holder: 2,
            },
            Frame::Challenge { nonce: [7; 16] },
            Frame::Auth {
                nonce: [8; 16],
                mac: [9; 32],
            },
        ]
    }

    #[test]
    fn every_kind_with_a_valid_crc_and_any_length_never_panics() {
        let mut seed = 2026u64;
        for kind in K_HELLO..=K_MAX {
            for len in 0..=160usize {
                for round in 0..24 {
                    let mut payload = noise(&mut seed, len);
                    if kind == K_HELLO && round % 2 == 0 && len >= 8 {
                        // Valid magic and version, so the decoder reads on.
                        payload[0..4].copy_from_slice(&MAGIC.to_le_bytes());
                        payload[4..6].copy_from_slice(&VERSION.to_le_bytes());
                    }
                    if kind == K_HELLO && round % 4 == 0 && len >= 51 {
                        // A plausible epoch count too.
                        let n = ((len - 51) / 12) as u16 + (round / 4) as u16 % 2;
                        payload[49..51].copy_from_slice(&n.to_le_bytes());
                    }
                    let _ = decode_no_panic(kind, &payload);
                }
            }
        }
    }

    #[test]
    fn every_truncation_of_every_kind_is_an_error_not_a_panic() {
        for f in one_of_each() {
            let mut wire = BytesMut::new();
            f.encode(&mut wire);
            let kind = wire[4];
            let payload = wire[FRAME_HEADER_BYTES..].to_vec();
            // Bytes each kind needs before its variable part (if it has one).
            let fixed = match kind {
                K_HELLO => payload.len(), // the epoch list length is exact
                K_DATA => DATA_SUBHEADER_BYTES,
                K_SNAPSHOT => 8,
                K_ERROR => 2,
                // The master's address is an optional tail.
                K_WITNESS_REQ => 22,
                _ => payload.len(),
            };
            for cut in 0..payload.len() {
                let r = decode_no_panic(kind, &payload[..cut]);
                if cut < fixed {
                    assert!(
                        matches!(r, Err(FrameError::Malformed { .. })),
                        "kind {kind} cut to {cut} of {} bytes decoded as {r:?}",
                        payload.len()
                    );
                }
            }
            assert_eq!(decode_no_panic(kind, &payload), Ok(Some(f)));
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
        let crc = crate::proto::checksum::crc(&hello[12..]);
        hello[8..12].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            Frame::decode(&mut hello, 1024),
            Err(FrameError::BadMagic(_))
        ));
    }
}
