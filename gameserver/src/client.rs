//! The Rust client of the game server: what the bots, the drill and the tests
//! use to be a player.
//!
//! [`Client::connect`] opens a session over TCP or WebSocket, authenticates
//! with a token and then runs two tasks: a reader (replies to their waiting
//! requests, pushes into a bounded queue, pongs into [`Client::rtt`]) and a
//! heartbeat (a ping every `heartbeat_ms` of the gateway's [`Welcome`]).
//! [`Client::request`] may be called from several tasks at once: a request
//! takes the next sequence number and is written under one lock, so the
//! gateway sees sequence numbers strictly increasing.
//!
//! [`RoomView`] mirrors one room from its snapshot and the pushes after it,
//! and counts what does not fit (a gap in the room's event sequence, a
//! replayed event, an event the view cannot apply): what a player "saw".

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::proto::frame::{self, Frame, Kind};
use crate::proto::msg::{
    self, Answer, Auth, Bye, CenterRequest, ErrorCode, Fail, GameView, MemberView, Pong, Push,
    Reply, Request, RoomEvent, RoomSnapshot, TableView, Welcome, PROTOCOL_VERSION,
};
use crate::proto::noise;
use crate::token::now_ms;

/// Pushes queued for the application before the reader waits for it (and
/// with it the gateway's queue for this session fills: its slow-consumer
/// rule decides). 4096 pushes of a busy 400-player room are a few seconds.
pub const PUSH_QUEUE_MAX: usize = 4096;
/// Largest frame payload accepted from the gateway. A snapshot of a full
/// room (400 members, tables with their move lists) is well under this.
pub const FRAME_PAYLOAD_BYTES_MAX: usize = 4 << 20;
/// Frames queued for the writer task (requests and pings); a full queue makes
/// the requester wait.
pub const WRITE_QUEUE_MAX: usize = 256;
/// Bytes the writer gathers from its queue into one socket write.
const WRITE_BATCH_BYTES_MAX: usize = 64 << 10;
/// Pings remembered to match their pongs to a monotonic send time.
const PINGS_REMEMBERED_MAX: usize = 4;
/// Bytes of the reader's first buffer (it grows for a larger frame).
const READ_BUFFER_BYTES: usize = 4096;
/// Finished games a [`RoomView`] keeps (oldest dropped first).
pub const FINISHED_GAMES_MAX: usize = 4096;

/// Where the gateway is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// TCP: frames back to back.
    Tcp(SocketAddr),
    /// TCP from a chosen local address (port chosen by the kernel): a
    /// source address holds ~28,000 connections to one destination, so many
    /// bots spread over 127.0.0.0/8.
    TcpFrom { addr: SocketAddr, bind: IpAddr },
    /// WebSocket, `ws://host:port/path`: one binary message per frame.
    Ws(String),
    /// WebSocket from a chosen local address (as [`Target::TcpFrom`]).
    WsFrom { url: String, bind: IpAddr },
    /// TCP encrypted with Noise NK (`proto::noise`): `gateway_key` is the
    /// gateway's static public key; a gateway without its private half fails
    /// the handshake.
    Noise {
        addr: SocketAddr,
        gateway_key: [u8; noise::KEY_BYTES],
    },
    /// WebSocket over TLS, `wss://host:port/path`, trusting only the
    /// certificates in `ca_pem` (PEM: a self-signed gateway's own certificate,
    /// or the CA that signed it). The name in the URL must be in the certificate.
    Wss { url: String, ca_pem: String },
}

impl Target {
    /// The WebSocket target of a gateway at `addr` (`ws://addr/`).
    pub fn ws(addr: SocketAddr) -> Target {
        Target::Ws(format!("ws://{addr}/"))
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(a) => write!(f, "tcp://{a}"),
            Target::TcpFrom { addr, bind } => write!(f, "tcp://{addr} from {bind}"),
            Target::Ws(u) => f.write_str(u),
            Target::WsFrom { url, bind } => write!(f, "{url} from {bind}"),
            Target::Noise { addr, .. } => write!(f, "noise://{addr}"),
            Target::Wss { url, .. } => f.write_str(url),
        }
    }
}

/// How a client behaves; [`Options::default`] suits a player.
#[derive(Clone, Debug)]
pub struct Options {
    /// Connecting and authenticating together, at most.
    pub connect_timeout: Duration,
    /// A request's answer, at most, before [`ClientError::Timeout`]. Through
    /// a room-server failover the gateway re-sends, so this is seconds.
    pub request_timeout: Duration,
    /// Pushes queued for the application ([`PUSH_QUEUE_MAX`]).
    pub push_capacity: usize,
    /// `false`: pushes are counted and dropped (idle connections of a
    /// benchmark that never read them).
    pub keep_pushes: bool,
    /// Ping every `heartbeat_ms` (off only to test the gateway's heartbeat timeout).
    pub heartbeat: bool,
    /// Where the login queue's positions go while [`Client::connect`]
    /// waits in it (position, of); a full channel drops an update. The
    /// wait counts in `connect_timeout`.
    pub queue: Option<mpsc::Sender<(u32, u32)>>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            push_capacity: PUSH_QUEUE_MAX,
            keep_pushes: true,
            heartbeat: true,
            queue: None,
        }
    }
}

/// How a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Closed {
    /// The gateway's [`Bye`] code; `None` when the connection ended without one.
    pub code: Option<ErrorCode>,
    pub message: String,
}

/// Why a client call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The gateway could not be reached, or the transport failed before Welcome.
    #[error("cannot connect to {target}: {message}")]
    Connect { target: String, message: String },
    /// The request was refused; nothing changed.
    #[error("refused: {0}")]
    Fail(Fail),
    /// The session ended (auth refused, kicked, heartbeat, connection lost).
    #[error("session closed ({code:?}): {message}")]
    Closed {
        code: Option<ErrorCode>,
        message: String,
    },
    /// No answer in time; the request may still be done later.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl From<Closed> for ClientError {
    fn from(c: Closed) -> ClientError {
        ClientError::Closed {
            code: c.code,
            message: c.message,
        }
    }
}

/// Counters of one client since it connected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Pushes received (kept or not).
    pub pushes: u64,
    /// Pushes dropped because [`Options::keep_pushes`] is off.
    pub pushes_dropped: u64,
    /// `Kind::Error` frames received.
    pub errors: u64,
    /// Replies to no waiting request (answered after their timeout).
    pub unmatched_replies: u64,
    pub pings: u64,
    pub pongs: u64,
}

#[derive(Default)]
struct Counters {
    pushes: AtomicU64,
    pushes_dropped: AtomicU64,
    errors: AtomicU64,
    unmatched_replies: AtomicU64,
    pings: AtomicU64,
    pongs: AtomicU64,
}

/// State the reader, the heartbeat and the callers share.
struct Shared {
    pending: parking_lot::Mutex<HashMap<u32, oneshot::Sender<Reply>>>,
    closed: watch::Sender<Option<Closed>>,
    /// The last round trip in µs; `u64::MAX` before the first pong.
    rtt_us: AtomicU64,
    /// The last round trip the gateway measured, ms (`Pong::rtt_ms`; 0: none yet).
    gateway_rtt_ms: AtomicU64,
    /// (time_ms sent, when) of the last pings.
    pings: parking_lot::Mutex<VecDeque<(u64, Instant)>>,
    last_error: parking_lot::Mutex<Option<Fail>>,
    counters: Counters,
}

impl Shared {
    fn close(&self, c: Closed) {
        self.closed.send_if_modified(|cur| {
            if cur.is_none() {
                *cur = Some(c);
                true
            } else {
                false
            }
        });
    }

    fn closed_error(&self) -> ClientError {
        match self.closed.borrow().clone() {
            Some(c) => c.into(),
            None => ClientError::Closed {
                code: None,
                message: "the client's connection tasks ended".into(),
            },
        }
    }
}

/// The sequence counter and the writer queue, under one lock so that
/// sequence numbers reach the wire in order.
struct Sender {
    seq: u32,
    tx: mpsc::Sender<Bytes>,
}

/// One player's session with a gateway.
pub struct Client {
    welcome: Welcome,
    opts: Options,
    shared: Arc<Shared>,
    sender: tokio::sync::Mutex<Sender>,
    pushes: tokio::sync::Mutex<Option<mpsc::Receiver<Push>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Client {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("player", &self.welcome.player)
            .field("session", &self.welcome.session)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects, authenticates with `token` and starts the heartbeat.
    /// A refused token is [`ClientError::Closed`] with the gateway's code.
    pub async fn connect(target: &Target, token: &str) -> Result<Client, ClientError> {
        Client::connect_with(target, token, Options::default()).await
    }

    /// [`Client::connect`] with options.
    pub async fn connect_with(
        target: &Target,
        token: &str,
        opts: Options,
    ) -> Result<Client, ClientError> {
        let t = opts.connect_timeout;
        let (rd, wr, welcome) =
            tokio::time::timeout(t, handshake(target, token, opts.queue.clone()))
                .await
                .map_err(|_| ClientError::Timeout(t))??;
        let (closed, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            pending: parking_lot::Mutex::new(HashMap::new()),
            closed,
            rtt_us: AtomicU64::new(u64::MAX),
            gateway_rtt_ms: AtomicU64::new(0),
            pings: parking_lot::Mutex::new(VecDeque::with_capacity(PINGS_REMEMBERED_MAX)),
            last_error: parking_lot::Mutex::new(None),
            counters: Counters::default(),
        });
        let (wtx, wrx) = mpsc::channel(WRITE_QUEUE_MAX);
        let (ptx, prx) = mpsc::channel(opts.push_capacity.max(1));
        let mut tasks = vec![
            tokio::spawn(write_loop(wr, wrx, shared.clone())),
            tokio::spawn(read_loop(
                rd,
                ptx,
                opts.keep_pushes,
                shared.clone(),
                opts.heartbeat.then(|| wtx.clone()),
            )),
        ];
        if opts.heartbeat && welcome.heartbeat_ms > 0 {
            let every = Duration::from_millis(welcome.heartbeat_ms as u64);
            tasks.push(tokio::spawn(heartbeat_loop(
                every,
                wtx.clone(),
                shared.clone(),
            )));
        }
        Ok(Client {
            welcome,
            opts,
            shared,
            sender: tokio::sync::Mutex::new(Sender { seq: 0, tx: wtx }),
            pushes: tokio::sync::Mutex::new(Some(prx)),
            tasks,
        })
    }

    /// What the gateway said when the session began.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// This player's id (from the token).
    pub fn player(&self) -> u64 {
        self.welcome.player
    }

    /// Sends a request and waits for its answer, at most
    /// [`Options::request_timeout`].
    pub async fn request(&self, req: Request) -> Result<Answer, ClientError> {
        self.request_within(req, self.opts.request_timeout).await
    }

    /// Sends a request and waits for its answer, at most `timeout`.
    pub async fn request_within(
        &self,
        req: Request,
        timeout: Duration,
    ) -> Result<Answer, ClientError> {
        let (rx, _guard) = self.send_request(&req).await?;
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(ClientError::Timeout(timeout)),
            Ok(Err(_)) => Err(self.shared.closed_error()),
            Ok(Ok(Ok(a))) => Ok(a),
            Ok(Ok(Err(f))) => Err(ClientError::Fail(f)),
        }
    }

    /// Sends a request the center answers (channels, messages) and waits
    /// for its answer, at most [`Options::request_timeout`].
    pub async fn center(&self, req: CenterRequest) -> Result<Answer, ClientError> {
        let t = self.opts.request_timeout;
        let (rx, _guard) = self.send_frame(Kind::Center, msg::encode(&req)).await?;
        match tokio::time::timeout(t, rx).await {
            Err(_) => Err(ClientError::Timeout(t)),
            Ok(Err(_)) => Err(self.shared.closed_error()),
            Ok(Ok(Ok(a))) => Ok(a),
            Ok(Ok(Err(f))) => Err(ClientError::Fail(f)),
        }
    }

    /// Takes the next sequence number and queues the request under one lock.
    async fn send_request(
        &self,
        req: &Request,
    ) -> Result<(oneshot::Receiver<Reply>, PendingGuard<'_>), ClientError> {
        self.send_frame(Kind::Request, msg::encode(req)).await
    }

    async fn send_frame(
        &self,
        kind: Kind,
        payload: Vec<u8>,
    ) -> Result<(oneshot::Receiver<Reply>, PendingGuard<'_>), ClientError> {
        let mut s = self.sender.lock().await;
        if self.shared.closed.borrow().is_some() {
            return Err(self.shared.closed_error());
        }
        s.seq += 1;
        let seq = s.seq;
        let (tx, rx) = oneshot::channel();
        self.shared.pending.lock().insert(seq, tx);
        let guard = PendingGuard {
            shared: &self.shared,
            seq,
        };
        // The reader marks the session closed before it drops the waiting
        // slots: a slot added after that would wait for nothing.
        if self.shared.closed.borrow().is_some() {
            return Err(self.shared.closed_error());
        }
        let f = Frame::new(kind, seq, now_ms(), Bytes::from(payload)).to_bytes();
        s.tx.send(f).await.map_err(|_| self.shared.closed_error())?;
        Ok((rx, guard))
    }

    /// The next push, in the order the gateway sent them; `None` once the
    /// session has ended and every push before the end was taken (or after
    /// [`Client::take_pushes`]).
    pub async fn next_push(&self) -> Option<Push> {
        self.pushes.lock().await.as_mut()?.recv().await
    }

    /// The next push if one is queued now.
    pub fn try_next_push(&self) -> Option<Push> {
        self.pushes.try_lock().ok()?.as_mut()?.try_recv().ok()
    }

    /// The push queue itself, for a task that owns it; afterwards
    /// [`Client::next_push`] returns `None`.
    pub async fn take_pushes(&self) -> Option<mpsc::Receiver<Push>> {
        self.pushes.lock().await.take()
    }

    /// The last heartbeat round trip measured, `None` before the first pong.
    pub fn rtt(&self) -> Option<Duration> {
        match self.shared.rtt_us.load(Ordering::Relaxed) {
            u64::MAX => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// The last round trip the gateway measured with its own probe (its
    /// Ping, this client's Pong), as its Pongs tell; `None` before the first.
    pub fn gateway_rtt(&self) -> Option<Duration> {
        match self.shared.gateway_rtt_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// `Some` once the session has ended, with why.
    pub fn closed(&self) -> Option<Closed> {
        self.shared.closed.borrow().clone()
    }

    /// Waits until the session ends.
    pub async fn wait_closed(&self) -> Closed {
        let mut rx = self.shared.closed.subscribe();
        let c = rx
            .wait_for(|c| c.is_some())
            .await
            .ok()
            .and_then(|c| c.clone());
        c.unwrap_or(Closed {
            code: None,
            message: "the client's connection tasks ended".into(),
        })
    }

    /// The last `Kind::Error` frame's failure (not tied to a request).
    pub fn last_error(&self) -> Option<Fail> {
        self.shared.last_error.lock().clone()
    }

    pub fn stats(&self) -> ClientStats {
        let c = &self.shared.counters;
        ClientStats {
            pushes: c.pushes.load(Ordering::Relaxed),
            pushes_dropped: c.pushes_dropped.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            unmatched_replies: c.unmatched_replies.load(Ordering::Relaxed),
            pings: c.pings.load(Ordering::Relaxed),
            pongs: c.pongs.load(Ordering::Relaxed),
        }
    }

    /// Ends the session from this side: the connection closes (the gateway
    /// sees the player leave).
    pub fn close(&self) {
        self.shared.close(Closed {
            code: None,
            message: "closed by the client".into(),
        });
        for t in &self.tasks {
            t.abort();
        }
        self.shared.pending.lock().clear();
    }
}

/// Removes a request's waiting slot when its caller stops waiting (timeout,
/// dropped future), so the map holds only requests someone waits for.
struct PendingGuard<'a> {
    shared: &'a Shared,
    seq: u32,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.pending.lock().remove(&self.seq);
    }
}

/// The receiving half of a transport: whole frames.
enum FrameRead {
    Tcp {
        rd: OwnedReadHalf,
        buf: BytesMut,
    },
    Ws(SplitStream<WebSocketStream<TcpStream>>),
    Noise {
        rd: OwnedReadHalf,
        wire: BytesMut,
        plain: BytesMut,
        opener: noise::Opener,
    },
    Wss(SplitStream<WebSocketStream<WssStream>>),
}

/// A client's TLS connection under `wss://`.
type WssStream = tokio_rustls::client::TlsStream<TcpStream>;

/// The sending half of a transport.
enum FrameWrite {
    Tcp(OwnedWriteHalf),
    Ws(SplitSink<WebSocketStream<TcpStream>, Message>),
    Noise {
        wr: OwnedWriteHalf,
        sealer: noise::Sealer,
        buf: BytesMut,
    },
    Wss(SplitSink<WebSocketStream<WssStream>, Message>),
}

impl FrameRead {
    /// The next frame; `Ok(None)` at a clean end of the connection.
    async fn next(&mut self) -> Result<Option<Frame>, String> {
        match self {
            FrameRead::Tcp { rd, buf } => loop {
                if let Some(f) =
                    frame::decode(buf, FRAME_PAYLOAD_BYTES_MAX).map_err(|e| e.to_string())?
                {
                    return f
                        .inflated(FRAME_PAYLOAD_BYTES_MAX)
                        .map(Some)
                        .map_err(|e| e.to_string());
                }
                if buf.capacity() - buf.len() < 1024 {
                    buf.reserve(READ_BUFFER_BYTES);
                }
                let n = rd.read_buf(buf).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return if buf.is_empty() {
                        Ok(None)
                    } else {
                        Err("the connection ended inside a frame".into())
                    };
                }
            },
            FrameRead::Ws(ws) => loop {
                match ws.next().await {
                    None | Some(Ok(Message::Close(_))) => return Ok(None),
                    Some(Err(e)) => return Err(e.to_string()),
                    Some(Ok(Message::Binary(b))) => {
                        return frame::decode_message(&b, FRAME_PAYLOAD_BYTES_MAX)
                            .and_then(|f| f.inflated(FRAME_PAYLOAD_BYTES_MAX))
                            .map(Some)
                            .map_err(|e| e.to_string())
                    }
                    Some(Ok(Message::Text(_))) => {
                        return Err("a text WebSocket message (frames are binary)".into())
                    }
                    Some(Ok(_)) => {} // ping/pong of the WebSocket layer: answered by tungstenite
                }
            },
            FrameRead::Noise {
                rd,
                wire,
                plain,
                opener,
            } => loop {
                if let Some(f) = noise::next_frame(opener, wire, plain, FRAME_PAYLOAD_BYTES_MAX)
                    .map_err(|e| e.to_string())?
                {
                    return Ok(Some(f));
                }
                if wire.capacity() - wire.len() < 1024 {
                    wire.reserve(READ_BUFFER_BYTES);
                }
                let n = rd.read_buf(wire).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return if wire.is_empty() && plain.is_empty() {
                        Ok(None)
                    } else {
                        Err("the connection ended inside a Noise message or frame".into())
                    };
                }
            },
            FrameRead::Wss(ws) => loop {
                match ws.next().await {
                    None | Some(Ok(Message::Close(_))) => return Ok(None),
                    Some(Err(e)) => return Err(e.to_string()),
                    Some(Ok(Message::Binary(b))) => {
                        return frame::decode_message(&b, FRAME_PAYLOAD_BYTES_MAX)
                            .map(Some)
                            .map_err(|e| e.to_string())
                    }
                    Some(Ok(Message::Text(_))) => {
                        return Err("a text WebSocket message (frames are binary)".into())
                    }
                    Some(Ok(_)) => {}
                }
            },
        }
    }
}

impl FrameWrite {
    /// Writes whole encoded frames (one WebSocket message each).
    async fn send(&mut self, frames: &[Bytes]) -> Result<(), String> {
        match self {
            FrameWrite::Tcp(w) => {
                if let [one] = frames {
                    w.write_all(one).await.map_err(|e| e.to_string())
                } else {
                    let mut b = BytesMut::with_capacity(frames.iter().map(|f| f.len()).sum());
                    frames.iter().for_each(|f| b.extend_from_slice(f));
                    w.write_all(&b).await.map_err(|e| e.to_string())
                }
            }
            FrameWrite::Ws(s) => {
                for f in frames {
                    s.feed(Message::Binary(f.clone()))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                s.flush().await.map_err(|e| e.to_string())
            }
            FrameWrite::Noise { wr, sealer, buf } => {
                for f in frames {
                    sealer.seal(f, buf).map_err(|e| e.to_string())?;
                }
                let r = wr.write_all(buf).await.map_err(|e| e.to_string());
                buf.clear();
                r
            }
            FrameWrite::Wss(s) => {
                for f in frames {
                    s.feed(Message::Binary(f.clone()))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                s.flush().await.map_err(|e| e.to_string())
            }
        }
    }

    async fn shutdown(&mut self) {
        match self {
            FrameWrite::Tcp(w) => {
                let _ = w.shutdown().await;
            }
            FrameWrite::Ws(s) => {
                let _ = s.close().await;
            }
            FrameWrite::Noise { wr, .. } => {
                let _ = wr.shutdown().await;
            }
            FrameWrite::Wss(s) => {
                let _ = s.close().await;
            }
        }
    }
}

fn connect_err(target: &Target, message: impl std::fmt::Display) -> ClientError {
    ClientError::Connect {
        target: target.to_string(),
        message: message.to_string(),
    }
}

async fn tcp(addr: SocketAddr, bind: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let s = match bind {
        None => TcpStream::connect(addr).await?,
        Some(ip) => {
            let sock = if ip.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            sock.bind(SocketAddr::new(ip, 0))?;
            sock.connect(addr).await?
        }
    };
    s.set_nodelay(true)?;
    Ok(s)
}

/// WebSocket buffers sized for many idle sessions: tungstenite's defaults
/// (128 KiB to read and 128 KiB to write, per connection) would make a bot
/// process's memory ~30 times what its TCP sessions cost.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(Some(frame::HEADER_BYTES + FRAME_PAYLOAD_BYTES_MAX))
        .max_frame_size(Some(frame::HEADER_BYTES + FRAME_PAYLOAD_BYTES_MAX))
}

/// `ws://host:port/path` → `host:port`.
fn ws_authority(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("ws://")?;
    let auth = rest.split('/').next()?;
    (!auth.is_empty()).then_some(auth)
}

/// The client's side of the Noise handshake on a fresh connection.
async fn noise_handshake(
    mut s: TcpStream,
    gateway_key: &[u8; noise::KEY_BYTES],
) -> Result<(FrameRead, FrameWrite), String> {
    let mut out = BytesMut::new();
    let init = noise::Initiator::start(gateway_key, &mut out).map_err(|e| e.to_string())?;
    s.write_all(&out).await.map_err(|e| e.to_string())?;
    // The answer is one handshake message: read exactly its bytes.
    let mut m = [0u8; noise::LEN_BYTES + noise::HANDSHAKE_BYTES];
    s.read_exact(&mut m[..noise::LEN_BYTES])
        .await
        .map_err(|e| format!("the gateway ended the Noise handshake: {e}"))?;
    let len = noise::peek_len(&m).expect("two bytes read");
    if len != noise::HANDSHAKE_BYTES {
        return Err(noise::NoiseError::HandshakeLength { len }.to_string()
            + " (is this the gateway's Noise port?)");
    }
    s.read_exact(&mut m[noise::LEN_BYTES..])
        .await
        .map_err(|e| format!("the gateway ended the Noise handshake: {e}"))?;
    let (sealer, opener) = init
        .finish(&m[noise::LEN_BYTES..])
        .map_err(|e| e.to_string())?;
    let (rd, wr) = s.into_split();
    Ok((
        FrameRead::Noise {
            rd,
            wire: BytesMut::with_capacity(READ_BUFFER_BYTES),
            plain: BytesMut::new(),
            opener,
        },
        FrameWrite::Noise {
            wr,
            sealer,
            buf: BytesMut::new(),
        },
    ))
}

type WssHalves = (
    SplitStream<WebSocketStream<WssStream>>,
    SplitSink<WebSocketStream<WssStream>, Message>,
);

/// TLS to `wss://host:port/...` trusting only `ca_pem`, then the upgrade.
async fn wss_connect(url: &str, ca_pem: &str) -> Result<WssHalves, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let rest = url
        .strip_prefix("wss://")
        .ok_or("the URL is not wss://host:port/...")?;
    let auth = rest.split('/').next().unwrap_or_default();
    let host = match auth.rsplit_once(':') {
        Some((h, _)) => h,
        None => auth,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let c = c.map_err(|e| format!("the trusted certificate: {e}"))?;
        roots
            .add(c)
            .map_err(|e| format!("the trusted certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no certificate to trust was given (ca_pem holds no CERTIFICATE)".into());
    }
    let provider = crate::gateway::secure::tls_provider();
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host:?} is not a server name: {e}"))?;
    let addr = tokio::net::lookup_host(if auth.contains(':') {
        auth.to_string()
    } else {
        format!("{auth}:443")
    })
    .await
    .map_err(|e| e.to_string())?
    .next()
    .ok_or("the host has no address")?;
    let s = tcp(addr, None).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, s)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, tls, Some(ws_config()))
        .await
        .map_err(|e| e.to_string())?;
    let (w, r) = ws.split();
    Ok((r, w))
}

/// Opens the transport, sends Auth and reads up to Welcome or Bye (pinging
/// while the gateway says the session waits in the login queue).
async fn handshake(
    target: &Target,
    token: &str,
    queue: Option<mpsc::Sender<(u32, u32)>>,
) -> Result<(FrameRead, FrameWrite, Welcome), ClientError> {
    let (mut rd, mut wr) = match target {
        Target::Tcp(a) => {
            let (r, w) = tcp(*a, None)
                .await
                .map_err(|e| connect_err(target, e))?
                .into_split();
            (
                FrameRead::Tcp {
                    rd: r,
                    buf: BytesMut::with_capacity(READ_BUFFER_BYTES),
                },
                FrameWrite::Tcp(w),
            )
        }
        Target::TcpFrom { addr, bind } => {
            let (r, w) = tcp(*addr, Some(*bind))
                .await
                .map_err(|e| connect_err(target, e))?
                .into_split();
            (
                FrameRead::Tcp {
                    rd: r,
                    buf: BytesMut::with_capacity(READ_BUFFER_BYTES),
                },
                FrameWrite::Tcp(w),
            )
        }
        Target::Ws(url) | Target::WsFrom { url, .. } => {
            let bind = match target {
                Target::WsFrom { bind, .. } => Some(*bind),
                _ => None,
            };
            let auth = ws_authority(url)
                .ok_or_else(|| connect_err(target, "the URL is not ws://host:port/..."))?;
            let addr = tokio::net::lookup_host(auth)
                .await
                .map_err(|e| connect_err(target, e))?
                .next()
                .ok_or_else(|| connect_err(target, "the host has no address"))?;
            let s = tcp(addr, bind).await.map_err(|e| connect_err(target, e))?;
            let (ws, _) =
                tokio_tungstenite::client_async_with_config(url.as_str(), s, Some(ws_config()))
                    .await
                    .map_err(|e| connect_err(target, e))?;
            let (w, r) = ws.split();
            (FrameRead::Ws(r), FrameWrite::Ws(w))
        }
        Target::Noise { addr, gateway_key } => {
            let s = tcp(*addr, None).await.map_err(|e| connect_err(target, e))?;
            noise_handshake(s, gateway_key)
                .await
                .map_err(|e| connect_err(target, e))?
        }
        Target::Wss { url, ca_pem } => {
            let (r, w) = wss_connect(url, ca_pem)
                .await
                .map_err(|e| connect_err(target, e))?;
            (FrameRead::Wss(r), FrameWrite::Wss(w))
        }
    };
    let auth = Auth {
        token: token.to_string(),
        client_version: PROTOCOL_VERSION,
        features: msg::FEATURES_ALL,
    };
    let f = Frame::new(Kind::Auth, 0, now_ms(), Bytes::from(msg::encode(&auth))).to_bytes();
    wr.send(&[f]).await.map_err(|e| connect_err(target, e))?;
    let mut fail: Option<Fail> = None;
    let mut ping: Option<tokio::time::Interval> = None;
    loop {
        let next = tokio::select! {
            r = rd.next() => r,
            _ = async { ping.as_mut().expect("guarded").tick().await }, if ping.is_some() => {
                let p = Frame::new(Kind::Ping, 0, now_ms(), Bytes::new()).to_bytes();
                wr.send(&[p]).await.map_err(|e| connect_err(target, e))?;
                continue;
            }
        };
        let f = match next {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) if fail.is_some() => {
                let f = fail.expect("checked");
                return Err(ClientError::Closed {
                    code: Some(f.code),
                    message: f.message,
                });
            }
            Ok(None) => {
                return Err(ClientError::Closed {
                    code: None,
                    message: "the gateway closed the connection before Welcome".into(),
                })
            }
            Err(e) => return Err(connect_err(target, e)),
        };
        match f.kind {
            Kind::Welcome => {
                let w: Welcome = msg::decode(&f.payload)
                    .map_err(|e| connect_err(target, format!("bad Welcome: {e}")))?;
                return Ok((rd, wr, w));
            }
            Kind::Bye => {
                let b: Bye = msg::decode(&f.payload)
                    .map_err(|e| connect_err(target, format!("bad Bye: {e}")))?;
                return Err(ClientError::Closed {
                    code: Some(b.code),
                    message: b.message,
                });
            }
            Kind::Error => fail = msg::decode(&f.payload).ok(),
            Kind::Push => {
                if let Ok(Push::Queued {
                    position,
                    of,
                    heartbeat_ms,
                }) = msg::decode::<Push>(&f.payload)
                {
                    if ping.is_none() && heartbeat_ms > 0 {
                        let every = Duration::from_millis(heartbeat_ms as u64);
                        let mut i =
                            tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        ping = Some(i);
                    }
                    if let Some(q) = &queue {
                        let _ = q.try_send((position, of));
                    }
                }
            }
            _ => {} // nothing else is expected before Welcome; the gateway decides
        }
    }
}

async fn write_loop(mut wr: FrameWrite, mut rx: mpsc::Receiver<Bytes>, shared: Arc<Shared>) {
    let mut batch = Vec::new();
    while let Some(f) = rx.recv().await {
        let mut bytes = f.len();
        batch.push(f);
        while bytes < WRITE_BATCH_BYTES_MAX {
            match rx.try_recv() {
                Ok(f) => {
                    bytes += f.len();
                    batch.push(f);
                }
                Err(_) => break,
            }
        }
        if let Err(e) = wr.send(&batch).await {
            shared.close(Closed {
                code: None,
                message: format!("writing to the gateway failed: {e}"),
            });
            shared.pending.lock().clear();
            return;
        }
        batch.clear();
    }
    wr.shutdown().await;
}

async fn read_loop(
    mut rd: FrameRead,
    pushes: mpsc::Sender<Push>,
    keep: bool,
    shared: Arc<Shared>,
    probes: Option<mpsc::Sender<Bytes>>,
) {
    let end = loop {
        let f = match rd.next().await {
            Ok(Some(f)) => f,
            Ok(None) => {
                break Closed {
                    code: None,
                    message: "the gateway closed the connection".into(),
                }
            }
            Err(e) => {
                break Closed {
                    code: None,
                    message: format!("reading from the gateway failed: {e}"),
                }
            }
        };
        let bad = |what: &str, e: postcard::Error| Closed {
            code: Some(ErrorCode::BadFrame),
            message: format!("the gateway sent a {what} this client cannot read: {e}"),
        };
        let c = &shared.counters;
        match f.kind {
            Kind::Reply => {
                let r: Reply = match msg::decode(&f.payload) {
                    Ok(r) => r,
                    Err(e) => break bad("Reply", e),
                };
                let waiter = shared.pending.lock().remove(&f.seq);
                match waiter {
                    Some(w) => {
                        let _ = w.send(r);
                    }
                    None => {
                        c.unmatched_replies.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Kind::Push => {
                let p: Push = match msg::decode(&f.payload) {
                    Ok(p) => p,
                    Err(e) => break bad("Push", e),
                };
                c.pushes.fetch_add(1, Ordering::Relaxed);
                if !keep || pushes.send(p).await.is_err() {
                    c.pushes_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Kind::Pong => {
                let p = match Pong::decode(&f.payload) {
                    Ok(p) => p,
                    Err(e) => break bad("Pong", e),
                };
                c.pongs.fetch_add(1, Ordering::Relaxed);
                if p.rtt_ms > 0 {
                    shared
                        .gateway_rtt_ms
                        .store(p.rtt_ms as u64, Ordering::Relaxed);
                }
                let sent = shared
                    .pings
                    .lock()
                    .iter()
                    .find(|(t, _)| *t == p.client_time_ms)
                    .map(|(_, at)| *at);
                let rtt = match sent {
                    Some(at) => at.elapsed(),
                    None => Duration::from_millis(now_ms().saturating_sub(p.client_time_ms)),
                };
                shared.rtt_us.store(
                    rtt.as_micros().min(u64::MAX as u128 - 1) as u64,
                    Ordering::Relaxed,
                );
            }
            Kind::Ping => {
                // The gateway's round-trip probe: echo its time at once (a
                // full write queue skips one probe rather than wait). Not
                // without a heartbeat: such a client is silent on purpose.
                if let Some(tx) = &probes {
                    let pong = Pong {
                        client_time_ms: f.time_ms,
                        rtt_ms: 0,
                    };
                    let b = Frame::new(Kind::Pong, 0, now_ms(), Bytes::from(msg::encode(&pong)));
                    let _ = tx.try_send(b.to_bytes());
                }
            }
            Kind::Error => {
                c.errors.fetch_add(1, Ordering::Relaxed);
                if let Ok(fail) = msg::decode::<Fail>(&f.payload) {
                    tracing::debug!(code = ?fail.code, message = %fail.message, "error frame from the gateway");
                    *shared.last_error.lock() = Some(fail);
                }
            }
            Kind::Bye => {
                break match msg::decode::<Bye>(&f.payload) {
                    Ok(b) => Closed {
                        code: Some(b.code),
                        message: b.message,
                    },
                    Err(e) => bad("Bye", e),
                }
            }
            _ => {
                break Closed {
                    code: Some(ErrorCode::BadFrame),
                    message: format!("the gateway sent a {:?} frame to a client", f.kind),
                }
            }
        }
    };
    tracing::debug!(code = ?end.code, message = %end.message, "session ended");
    shared.close(end);
    shared.pending.lock().clear();
}

async fn heartbeat_loop(every: Duration, tx: mpsc::Sender<Bytes>, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let t = now_ms();
        {
            let mut p = shared.pings.lock();
            if p.len() == PINGS_REMEMBERED_MAX {
                p.pop_front();
            }
            p.push_back((t, Instant::now()));
        }
        if tx
            .send(Frame::new(Kind::Ping, 0, t, Bytes::new()).to_bytes())
            .await
            .is_err()
        {
            return;
        }
        shared.counters.pings.fetch_add(1, Ordering::Relaxed);
    }
}

/// A finished game as a [`RoomView`] saw it end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinishedGame {
    pub table: u16,
    pub game: GameView,
}

/// What applying a push did to a [`RoomView`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The next event, applied.
    Event,
    /// An event after a gap (counted in `gaps`), applied anyway.
    AfterGap { missed: u64 },
    /// An event at or below the view's sequence: a replay, ignored.
    Stale,
    /// A snapshot replaced the view.
    Rebased,
    /// The push is for another room.
    OtherRoom,
}

/// A client's mirror of one room: a snapshot and the events after it.
/// Never panics on what the server sends; what does not fit is counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomView {
    pub room: u32,
    pub name: String,
    pub game: String,
    pub capacity: u32,
    /// The last event applied.
    pub seq: u64,
    pub members: BTreeMap<u64, MemberView>,
    /// Indexed by table number.
    pub tables: Vec<TableView>,
    /// Games seen to end, oldest first (at most [`FINISHED_GAMES_MAX`]).
    pub finished: VecDeque<FinishedGame>,
    /// Events applied.
    pub events: u64,
    /// Times an event's sequence was past `seq + 1`.
    pub gaps: u64,
    /// Events missed in those gaps.
    pub missed: u64,
    /// Events at or below `seq` (replays), ignored.
    pub stale: u64,
    /// Snapshots that replaced the view after it was built.
    pub snapshots: u64,
    /// Events that did not fit the view (a Moved without a game, a Sat on a
    /// taken seat, ...): the pushes and the view disagree.
    pub mismatches: u64,
    /// Chat events seen.
    pub chats: u64,
}

impl RoomView {
    /// The view of a room as of `s.seq` (from `Answer::Entered`).
    pub fn new(s: RoomSnapshot) -> RoomView {
        let mut v = RoomView {
            room: s.room,
            name: String::new(),
            game: String::new(),
            capacity: 0,
            seq: 0,
            members: BTreeMap::new(),
            tables: Vec::new(),
            finished: VecDeque::new(),
            events: 0,
            gaps: 0,
            missed: 0,
            stale: 0,
            snapshots: 0,
            mismatches: 0,
            chats: 0,
        };
        v.set(s);
        v
    }

    fn set(&mut self, s: RoomSnapshot) {
        self.room = s.room;
        self.name = s.name;
        self.game = s.game;
        self.capacity = s.capacity;
        self.seq = s.seq;
        self.members = s.members.into_iter().map(|m| (m.player, m)).collect();
        self.tables = s.tables;
    }

    /// Replaces the view with a snapshot (a gap the gateway could not fill,
    /// or one the client asked for). A snapshot older than the view is a
    /// replay and ignored.
    pub fn rebase(&mut self, s: RoomSnapshot) -> Applied {
        if s.room != self.room {
            return Applied::OtherRoom;
        }
        if s.seq < self.seq {
            self.stale += 1;
            return Applied::Stale;
        }
        self.snapshots += 1;
        self.set(s);
        Applied::Rebased
    }

    /// Applies a push meant for this room.
    pub fn apply_push(&mut self, p: &Push) -> Applied {
        match p {
            Push::Event { room, seq, event } if *room == self.room => self.apply(*seq, event),
            Push::Snapshot(s) if s.room == self.room => self.rebase(s.clone()),
            _ => Applied::OtherRoom,
        }
    }

    /// Applies event number `seq`.
    pub fn apply(&mut self, seq: u64, e: &RoomEvent) -> Applied {
        if seq <= self.seq {
            self.stale += 1;
            return Applied::Stale;
        }
        let missed = seq - self.seq - 1;
        self.seq = seq;
        self.events += 1;
        if !self.apply_event(e) {
            self.mismatches += 1;
            tracing::debug!(room = self.room, seq, event = ?e, "an event that does not fit the room's view");
        }
        if missed > 0 {
            self.gaps += 1;
            self.missed += missed;
            Applied::AfterGap { missed }
        } else {
            Applied::Event
        }
    }

    /// The change itself; `false` when the event does not fit the view
    /// (applied as far as it goes).
    fn apply_event(&mut self, e: &RoomEvent) -> bool {
        match e {
            RoomEvent::Entered { player, name, data } => self
                .members
                .insert(
                    *player,
                    MemberView {
                        player: *player,
                        name: name.clone(),
                        seat: None,
                        watching: None,
                        wins: data.record.wins,
                        losses: data.record.losses,
                        draws: data.record.draws,
                        games: data.record.games,
                        rating: data.record.rating,
                        coins: data.record.coins,
                    },
                )
                .is_none(),
            RoomEvent::Left { player } => self.members.remove(player).is_some(),
            &RoomEvent::Sat {
                table,
                seat,
                player,
            } => {
                let Some(slot) = self.slot(table, seat) else {
                    return false;
                };
                let fits = slot.is_none();
                *slot = Some(player);
                self.set_ready(table, seat, true);
                let Some(m) = self.members.get_mut(&player) else {
                    return false;
                };
                m.seat = Some((table, seat));
                m.watching = None;
                fits
            }
            &RoomEvent::Stood {
                table,
                seat,
                player,
            } => {
                let Some(slot) = self.slot(table, seat) else {
                    return false;
                };
                let fits = *slot == Some(player);
                *slot = None;
                self.set_ready(table, seat, false);
                let Some(m) = self.members.get_mut(&player) else {
                    return false;
                };
                m.seat = None;
                fits
            }
            &RoomEvent::Ready { table, seat } => self.set_ready(table, seat, true),
            RoomEvent::Started {
                table,
                game_no,
                players,
                turn_ms,
            } => {
                let Some(t) = self.tables.get_mut(*table as usize) else {
                    return false;
                };
                let fits = t
                    .game
                    .as_ref()
                    .is_none_or(|g| g.outcome.is_some() && g.game_no + 1 == *game_no);
                t.game = Some(GameView {
                    game_no: *game_no,
                    players: players.clone(),
                    moves: Vec::new(),
                    turn: 0,
                    turn_ms: *turn_ms,
                    outcome: None,
                });
                fits
            }
            RoomEvent::Moved {
                table,
                seat,
                mv,
                auto,
            } => {
                let Some(g) = self
                    .tables
                    .get_mut(*table as usize)
                    .and_then(|t| t.game.as_mut())
                else {
                    return false;
                };
                // A placement game (Gomoku) never plays the same cell twice.
                let replayed = self.game == "gomoku" && g.moves.iter().any(|(_, m, _)| m == mv);
                let fits = g.outcome.is_none() && g.turn == *seat && !replayed;
                g.moves.push((*seat, mv.clone(), *auto));
                g.turn = ((*seat as usize + 1) % g.players.len().max(1)) as u8;
                fits
            }
            RoomEvent::Ended {
                table,
                game_no,
                outcome,
                moves,
                records,
            } => {
                let Some(t) = self.tables.get_mut(*table as usize) else {
                    return false;
                };
                t.ready.iter_mut().for_each(|r| *r = false);
                let Some(g) = t.game.as_mut() else {
                    return false;
                };
                let fits = g.outcome.is_none()
                    && g.game_no == *game_no
                    && g.moves.len() == *moves as usize;
                g.outcome = Some(*outcome);
                let done = FinishedGame {
                    table: *table,
                    game: g.clone(),
                };
                for (p, r) in records {
                    let Some(m) = self.members.get_mut(p) else {
                        continue;
                    };
                    (m.wins, m.losses, m.draws) = (r.wins, r.losses, r.draws);
                    (m.games, m.rating, m.coins) = (r.games, r.rating, r.coins);
                }
                if self.finished.len() == FINISHED_GAMES_MAX {
                    self.finished.pop_front();
                }
                self.finished.push_back(done);
                fits
            }
            RoomEvent::Chat { .. } => {
                self.chats += 1;
                true
            }
            RoomEvent::Spectating { player, table } => match self.members.get_mut(player) {
                Some(m) => {
                    m.watching = *table;
                    true
                }
                None => false,
            },
        }
    }

    fn slot(&mut self, table: u16, seat: u8) -> Option<&mut Option<u64>> {
        self.tables
            .get_mut(table as usize)?
            .seats
            .get_mut(seat as usize)
    }

    fn set_ready(&mut self, table: u16, seat: u8, ready: bool) -> bool {
        match self
            .tables
            .get_mut(table as usize)
            .and_then(|t| t.ready.get_mut(seat as usize))
        {
            Some(r) => {
                *r = ready;
                true
            }
            None => false,
        }
    }

    /// A table's current (or last) game.
    pub fn game(&self, table: u16) -> Option<&GameView> {
        self.tables.get(table as usize)?.game.as_ref()
    }

    /// Where `player` sits, if seated.
    pub fn seat_of(&self, player: u64) -> Option<(u16, u8)> {
        self.members.get(&player)?.seat
    }

    /// The view as a snapshot (to compare with the server's).
    pub fn snapshot(&self) -> RoomSnapshot {
        RoomSnapshot {
            room: self.room,
            name: self.name.clone(),
            game: self.game.clone(),
            seq: self.seq,
            capacity: self.capacity,
            members: self.members.values().cloned().collect(),
            tables: self.tables.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
