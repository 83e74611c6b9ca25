//! Framed IO over a tokio TCP stream: the only place the node reads or writes sockets.

use std::io::{self, IoSlice};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

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

    /// A frame already in the buffer, without reading.
    pub fn try_next(&mut self) -> Result<Option<Frame>, NetError> {
        Ok(Frame::decode(&mut self.buf, self.frame_bytes_max)?)
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
