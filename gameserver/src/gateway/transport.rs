//! A client connection as a stream of frames, the same for TCP (frames back
//! to back) and WebSocket (one binary message per frame), so one session
//! logic serves both.

use std::future::Future;
use std::io;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::proto::frame::{self, Frame, FrameError, HEADER_BYTES};

/// Bytes a TCP session's read buffer starts with (it grows only for a frame
/// larger than this, and shrinks back when idle).
const READ_CHUNK_BYTES: usize = 512;
/// A read buffer this large that is empty is dropped (an idle connection
/// does not keep the memory of its largest frame).
const READ_KEEP_BYTES: usize = 4096;
/// WebSocket: tungstenite's read buffer (its default, 128 KiB, is per connection; it
/// grows for a larger frame).
const WS_READ_BUFFER_BYTES: usize = 512;

/// Why no frame could be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The peer closed (or the connection broke): nothing to tell it.
    Closed,
    /// Bytes that are not a frame: a protocol violation.
    Frame(FrameError),
    /// A WebSocket text message (frames are binary).
    Text,
}

/// One connection's frames.
pub(crate) trait FrameIo: Send + 'static {
    /// The next frame. Cancel-safe: a partial frame stays buffered.
    fn read_frame(&mut self) -> impl Future<Output = Result<Frame, ReadError>> + Send;
    /// Writes whole encoded frames, in order, and flushes.
    fn write_frames(&mut self, frames: &[Bytes]) -> impl Future<Output = io::Result<()>> + Send;
    /// Closes the write side (after a Bye).
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

/// Frames back to back on a TCP stream.
pub(crate) struct TcpIo {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    payload_max: usize,
}

impl TcpIo {
    pub(crate) fn new(stream: TcpStream, payload_max: usize) -> TcpIo {
        TcpIo {
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            payload_max,
        }
    }
}

impl FrameIo for TcpIo {
    async fn read_frame(&mut self) -> Result<Frame, ReadError> {
        loop {
            if let Some(f) =
                frame::decode(&mut self.rbuf, self.payload_max).map_err(ReadError::Frame)?
            {
                if self.rbuf.is_empty() && self.rbuf.capacity() > READ_KEEP_BYTES {
                    self.rbuf = BytesMut::new();
                }
                return Ok(f);
            }
            if self.rbuf.capacity() - self.rbuf.len() < HEADER_BYTES {
                self.rbuf.reserve(READ_CHUNK_BYTES);
            }
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) | Err(_) => return Err(ReadError::Closed),
                Ok(_) => {}
            }
        }
    }

    async fn write_frames(&mut self, frames: &[Bytes]) -> io::Result<()> {
        if let [one] = frames {
            return self.stream.write_all(one).await;
        }
        for f in frames {
            self.wbuf.extend_from_slice(f);
        }
        let r = self.stream.write_all(&self.wbuf).await;
        self.wbuf.clear();
        if self.wbuf.capacity() > READ_KEEP_BYTES {
            self.wbuf = BytesMut::new();
        }
        r
    }

    async fn close(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// The WebSocket configuration of a gateway: small buffers, and messages no
/// larger than one frame of `payload_max`.
pub(crate) fn ws_config(payload_max: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(Some(payload_max + HEADER_BYTES))
        .max_frame_size(Some(payload_max + HEADER_BYTES))
}

/// One binary WebSocket message per frame, over TCP or (`wss`) TLS.
pub(crate) struct WsIo<S = TcpStream> {
    ws: WebSocketStream<S>,
    payload_max: usize,
}

impl<S> WsIo<S> {
    pub(crate) fn new(ws: WebSocketStream<S>, payload_max: usize) -> WsIo<S> {
        WsIo { ws, payload_max }
    }
}

impl<S> FrameIo for WsIo<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    async fn read_frame(&mut self) -> Result<Frame, ReadError> {
        loop {
            match self.ws.next().await {
                None | Some(Err(_)) => return Err(ReadError::Closed),
                Some(Ok(Message::Binary(b))) => {
                    return frame::decode_message(&b, self.payload_max).map_err(ReadError::Frame);
                }
                Some(Ok(Message::Text(_))) => return Err(ReadError::Text),
                Some(Ok(Message::Close(_))) => return Err(ReadError::Closed),
                // Pings are answered by tungstenite itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            }
        }
    }

    async fn write_frames(&mut self, frames: &[Bytes]) -> io::Result<()> {
        for f in frames {
            self.ws
                .feed(Message::Binary(f.clone()))
                .await
                .map_err(io::Error::other)?;
        }
        self.ws.flush().await.map_err(io::Error::other)
    }

    async fn close(&mut self) {
        let _ = self.ws.close(None).await;
    }
}
