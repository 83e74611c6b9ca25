//! Framed IO over a tokio TCP stream: the only place the node reads or writes sockets.

use std::io::{self, IoSlice};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::Secret;
use crate::proto::auth::{ct_eq, handshake_mac, Side, NONCE_BYTES};
pub use crate::proto::frame::kind_name;
use crate::proto::frame::{self, Frame, FrameError};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("connection closed by the peer")]
    Closed,
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Protocol(String),
    /// The replication stream's state machine ended the session.
    #[error(transparent)]
    Stream(#[from] crate::proto::stream::StreamError),
    /// The peer did not prove it holds the pair's secret (or we could not prove it).
    #[error("authentication failed: {0}")]
    Unauthenticated(String),
}

impl NetError {
    /// Whether the peer sent something this node refused (counted in
    /// `frames_rejected` and reported as `Event::FrameRejected`), as opposed
    /// to going away or falling silent.
    pub fn is_rejection(&self) -> bool {
        match self {
            NetError::Frame(_) | NetError::Protocol(_) => true,
            NetError::Stream(e) => !matches!(e, crate::proto::stream::StreamError::Silent { .. }),
            _ => false,
        }
    }
}

/// Bytes read from the socket per call (the buffer grows to one frame at most).
const READ_CHUNK_BYTES: usize = 256 << 10;

pub struct FrameReader {
    rd: OwnedReadHalf,
    buf: BytesMut,
    frame_bytes_max: usize,
}

impl FrameReader {
    pub fn new(rd: OwnedReadHalf, frame_bytes_max: usize) -> Self {
        FrameReader {
            rd,
            buf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            frame_bytes_max,
        }
    }

    /// Changes the largest frame accepted from now on (a proven peer gets more).
    pub fn set_frame_bytes_max(&mut self, n: usize) {
        self.frame_bytes_max = n;
    }

    /// The socket's read half, the buffer dropped (a connection kept only to
    /// see it close).
    pub fn into_inner(self) -> OwnedReadHalf {
        self.rd
    }

    /// A frame already in the buffer, without reading.
    pub fn try_next(&mut self) -> Result<Option<Frame>, NetError> {
        Ok(Frame::decode(&mut self.buf, self.frame_bytes_max)?)
    }

    /// A frame in the buffer, or one that arrives within `spin_us` microseconds,
    /// read without parking (a non-blocking `recv` straight on the socket, so
    /// the runtime's readiness, polled only when the thread parks, is not
    /// needed). `None`: nothing came, the peer closed, or a socket error; the
    /// async `next` then finds out which.
    pub fn spin_next(&mut self, spin_us: u64) -> Result<Option<Frame>, NetError> {
        use bytes::BufMut;
        use std::os::fd::AsRawFd;
        if let Some(f) = self.try_next()? {
            return Ok(Some(f));
        }
        let fd = self.rd.as_ref().as_raw_fd();
        let mut got = false;
        super::master::spin_until(spin_us, || {
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(READ_CHUNK_BYTES);
            }
            let spare = self.buf.chunk_mut();
            // SAFETY: `recv` writes at most `spare.len()` bytes into the buffer's
            // spare capacity, which it owns; the fd is this reader's open socket.
            let n = unsafe {
                libc::recv(
                    fd,
                    spare.as_mut_ptr().cast(),
                    spare.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                // SAFETY: `recv` initialised the first `n` bytes of the spare capacity.
                unsafe { self.buf.advance_mut(n as usize) };
                got = true;
                // Whole frame yet? If not, keep reading.
                return frame::peek_len(&self.buf).is_some_and(|len| self.buf.len() >= len);
            }
            // 0 (closed) or an error other than "nothing yet": stop, `next` reports it.
            n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock
        });
        if got {
            return self.try_next();
        }
        Ok(None)
    }

    /// The next frame; cancel-safe (bytes read stay in the buffer).
    pub async fn next(&mut self) -> Result<Frame, NetError> {
        loop {
            if let Some(f) = self.try_next()? {
                return Ok(f);
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(READ_CHUNK_BYTES);
            }
            let n = self.rd.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Err(if self.buf.is_empty() {
                    NetError::Closed
                } else {
                    NetError::Protocol(format!(
                        "connection closed inside a frame ({} bytes pending)",
                        self.buf.len()
                    ))
                });
            }
        }
    }
}

pub async fn write_frame(wr: &mut OwnedWriteHalf, f: &Frame) -> Result<(), NetError> {
    let mut b = BytesMut::new();
    f.encode(&mut b);
    wr.write_all(&b).await?;
    Ok(())
}

/// Writes a Data frame: header and the log's bytes in one vectored write (no copy,
/// and no Nagle pause between a header and its body).
pub async fn write_data(
    wr: &mut OwnedWriteHalf,
    pos: u64,
    epoch: u32,
    tail: u64,
    records: &[u8],
) -> Result<(), NetError> {
    let hdr = frame::data_header(pos, epoch, tail, records.len());
    let mut h: &[u8] = &hdr;
    let mut r: &[u8] = records;
    while !h.is_empty() || !r.is_empty() {
        let n = if h.is_empty() {
            wr.write(r).await?
        } else {
            wr.write_vectored(&[IoSlice::new(h), IoSlice::new(r)])
                .await?
        };
        if n == 0 {
            return Err(NetError::Closed);
        }
        let from_h = n.min(h.len());
        h = &h[from_h..];
        r = &r[n - from_h..];
    }
    Ok(())
}

/// Connections not yet proven, at most `max`: admitting one more past the cap
/// closes the oldest. A legitimate peer says Hello within a round trip, so it
/// gets through unless more than `max` connections arrive within that time,
/// whereas refusing newcomers would let `max` idle sockets lock the port.
pub struct Pending {
    tasks: std::collections::VecDeque<tokio::task::AbortHandle>,
    max: usize,
}

impl Pending {
    pub fn new(max: usize) -> Pending {
        Pending {
            tasks: std::collections::VecDeque::with_capacity(max),
            max,
        }
    }

    /// Makes room for one more (closing the oldest if full); returns whether one was closed.
    pub fn make_room(&mut self) -> bool {
        // Finished tasks are dropped only when the cap is reached: O(max) once
        // per `max` admissions at worst, not once per admission.
        if self.tasks.len() >= self.max {
            self.tasks.retain(|t| !t.is_finished());
        }
        if self.tasks.len() < self.max {
            return false;
        }
        if let Some(old) = self.tasks.pop_front() {
            old.abort();
        }
        true
    }

    pub fn push(&mut self, t: tokio::task::AbortHandle) {
        self.tasks.push_back(t);
    }
}

/// A fresh random nonce (the kernel's getrandom).
pub fn random_nonce() -> io::Result<[u8; NONCE_BYTES]> {
    let mut n = [0u8; NONCE_BYTES];
    let mut got = 0usize;
    // Bounded: getrandom returns at most what was asked, and only EINTR retries.
    for _ in 0..16 {
        // SAFETY: writes at most `len - got` bytes into our buffer.
        let r = unsafe { libc::getrandom(n[got..].as_mut_ptr().cast(), NONCE_BYTES - got, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        got += r as usize;
        if got == NONCE_BYTES {
            return Ok(n);
        }
    }
    Err(io::Error::other("getrandom returned too little"))
}

/// One connection's challenge and response (`proto::auth`): who we are, the
/// secret, and the two nonces.
pub struct Handshake {
    secret: Secret,
    side: Side,
    nonce_a: [u8; NONCE_BYTES],
    nonce_c: [u8; NONCE_BYTES],
}

/// Acceptor: with a secret, sends a fresh challenge first.
pub async fn challenge(
    wr: &mut OwnedWriteHalf,
    secret: Option<&Secret>,
) -> Result<Option<Handshake>, NetError> {
    let Some(secret) = secret else {
        return Ok(None);
    };
    let nonce_a = random_nonce()?;
    write_frame(wr, &Frame::Challenge { nonce: nonce_a }).await?;
    Ok(Some(Handshake {
        secret: secret.clone(),
        side: Side::Acceptor,
        nonce_a,
        nonce_c: [0; NONCE_BYTES],
    }))
}

/// Connector: with a secret, waits for the acceptor's challenge.
pub async fn await_challenge(
    reader: &mut FrameReader,
    secret: Option<&Secret>,
) -> Result<Option<Handshake>, NetError> {
    let Some(secret) = secret else {
        return Ok(None);
    };
    match reader.next().await? {
        Frame::Challenge { nonce } => Ok(Some(Handshake {
            secret: secret.clone(),
            side: Side::Connector,
            nonce_a: nonce,
            nonce_c: random_nonce()?,
        })),
        other => Err(NetError::Unauthenticated(format!(
            "the peer sent {} instead of a challenge: set the same `secret` on both nodes (and the witness)",
            kind_name(&other)
        ))),
    }
}

/// Writes this side's first frame; with a handshake, after the Auth that proves it.
pub async fn write_first(
    wr: &mut OwnedWriteHalf,
    hs: &Option<Handshake>,
    f: &Frame,
) -> Result<(), NetError> {
    let mut b = BytesMut::new();
    if let Some(h) = hs {
        let mut body = BytesMut::new();
        f.encode(&mut body);
        let mac = handshake_mac(h.secret.bytes(), h.side, &h.nonce_a, &h.nonce_c, &body);
        let nonce = match h.side {
            Side::Connector => h.nonce_c,
            Side::Acceptor => [0; NONCE_BYTES],
        };
        Frame::Auth { nonce, mac }.encode(&mut b);
        b.extend_from_slice(&body);
    } else {
        f.encode(&mut b);
    }
    wr.write_all(&b).await?;
    Ok(())
}

/// Reads the peer's first frame; with a handshake, only once its Auth checks.
/// Without one, a Challenge means the peer wants a secret we do not have.
pub async fn read_first(
    reader: &mut FrameReader,
    hs: &mut Option<Handshake>,
) -> Result<Frame, NetError> {
    let Some(h) = hs else {
        return match reader.next().await? {
            Frame::Challenge { .. } => Err(NetError::Unauthenticated(
                "the peer requires authentication: set the same `secret` on this node".into(),
            )),
            f => Ok(f),
        };
    };
    let (nonce, mac) = match reader.next().await? {
        Frame::Auth { nonce, mac } => (nonce, mac),
        Frame::Error { code, message } => {
            return Err(NetError::Unauthenticated(format!(
                "the peer refused us (code {code}): {message}"
            )))
        }
        other => {
            return Err(NetError::Unauthenticated(format!(
            "the peer sent {} without proving it holds the secret: is `secret` set on both sides?",
            kind_name(&other)
        )))
        }
    };
    if h.side == Side::Acceptor {
        h.nonce_c = nonce;
    }
    let f = reader.next().await?;
    let mut body = BytesMut::new();
    f.encode(&mut body);
    let theirs = match h.side {
        Side::Acceptor => Side::Connector,
        Side::Connector => Side::Acceptor,
    };
    let want = handshake_mac(h.secret.bytes(), theirs, &h.nonce_a, &h.nonce_c, &body);
    if !ct_eq(&want, &mac) {
        return Err(NetError::Unauthenticated(format!(
            "the peer's {} carries a wrong MAC: it does not hold this pair's secret",
            kind_name(&f)
        )));
    }
    Ok(f)
}
