//! The gateway (seed 001): holds the players' connections (TCP and
//! WebSocket, one frame format), authenticates them, keeps their heartbeat,
//! routes each request to the room-server pair of its room and the rooms'
//! pushes back to the players in them.
//!
//! - [`config`][config]: what it is told, every limit with its unit;
//! - `transport`: a connection as a stream of frames (TCP or WebSocket);
//! - `session`: one connection: auth, heartbeat, sequence, rate, its queue;
//! - `pair`: the link to one room-server pair: master finding, re-sending
//!   after a failover, the rooms' fan-out;
//! - `center`: the link to the center pair (when `center` is configured):
//!   every login waits for the center's Admitted (or waits in its queue)
//!   before Welcome; kicks, single sign-on across gateways, notices;
//! - [`stats`][stats]: counters, and their Prometheus text (admin port);
//! - [`secure`][secure]: the encrypted listeners (Noise over TCP, `wss`).
//!
//! Message protection (ARCHITECTURE.md "Gateway message protection"):
//! compressed frames both ways, strict sequence, CRC, time window, traffic
//! buckets, the per-address cap on unauthenticated connections, the version
//! minimum and routes, the heartbeat RTT probe: all in `session`.
//!
//! Invariants:
//! - one request of a session is in flight at a time, so after a failover
//!   the room server's "last request done per player" decides alone whether
//!   a re-sent request was done;
//! - a room's events reach a session once each, in sequence order, and only
//!   those after the snapshot it entered with (a gap asks the room again and
//!   ends in events or a snapshot);
//! - every queue is bounded: a client that does not read is closed
//!   (SlowConsumer), a session that asks too much is refused;
//! - with a center, a session is Welcomed only once the center admitted it
//!   (its login number is then on every room request); without one, a
//!   second login of a player on this gateway closes the first.

mod center;
pub mod config;
mod pair;
pub mod secure;
mod session;
pub mod stats;
mod transport;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use config::{BalancerReport, GatewayConfig, PairConfig, RouteConfig};
pub use stats::{GatewayStats, StatsSnapshot};

use crate::proto::frame::{Frame, Kind};
use crate::proto::msg::{self, ErrorCode, RoomInfo};
use pair::{Link, LinkCmd, PairHandle, LINK_QUEUE_CMDS_MAX, ROOMS_REFRESH_MS};
use session::SessionHandle;
use transport::{TcpIo, WsIo};

/// Connections a listener queues before accept (the machine's somaxconn).
pub const LISTEN_BACKLOG: i32 = 4096;

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The configuration cannot work.
    #[error("gateway configuration: {0}")]
    Config(String),
    /// A listener could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// What every session and link of one gateway share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) cfg: GatewayConfig,
    pub(crate) stats: Arc<GatewayStats>,
    /// The session of each player logged in here.
    pub(crate) players: Mutex<HashMap<u64, Arc<SessionHandle>>>,
    /// Room → index in `pairs`.
    routes: HashMap<u32, usize>,
    pub(crate) pairs: Vec<PairHandle>,
    next_session: AtomicU64,
    /// This gateway process's id on the links (random per start).
    pub(crate) gateway_id: u64,
    /// The zone's least-loaded other gateway with room (from the balancer),
    /// named to a client this gateway is too full for.
    pub(crate) alternative: Mutex<Option<String>>,
    /// The center link's queue, when a center is configured.
    pub(crate) center: Option<mpsc::Sender<center::CenterCmd>>,
    /// Channel → the local sessions subscribed to it (by session id).
    pub(crate) channels: Mutex<HashMap<u32, HashMap<u64, Arc<SessionHandle>>>>,
    /// Where this gateway's clients connect (told to the center).
    pub(crate) public_addr: String,
    /// Unauthenticated connections per source address (at most
    /// `unauth_per_addr_max` each; an entry per address with one or more).
    pub(crate) unauth: Mutex<HashMap<std::net::IpAddr, u32>>,
}

/// Channels with subscribers on one gateway at most.
pub const CHANNELS_PER_GATEWAY_MAX: usize = 65_536;

impl Shared {
    pub(crate) fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Relaxed)
    }

    pub(crate) fn pair_of(&self, room: u32) -> Option<usize> {
        self.routes.get(&room).copied()
    }

    /// Every pair's rooms as last told; asks stale pairs again (the answer
    /// serves the next caller).
    pub(crate) fn rooms(&self) -> Vec<RoomInfo> {
        let mut all = Vec::new();
        for p in &self.pairs {
            let r = p.rooms.lock();
            all.extend(r.0.iter().cloned());
            if r.1
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(ROOMS_REFRESH_MS))
            {
                let _ = p.tx.try_send(LinkCmd::RefreshRooms);
            }
        }
        all.sort_by_key(|r| r.id);
        all
    }
}

/// A running gateway.
pub struct Gateway {
    tcp_addr: SocketAddr,
    ws_addr: Option<SocketAddr>,
    noise_addr: Option<SocketAddr>,
    noise_public: Option<[u8; crate::proto::noise::KEY_BYTES]>,
    wss_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// A listener with SO_REUSEADDR (and SO_REUSEPORT when asked).
fn listen(addr: &str, reuse_port: bool) -> Result<TcpListener, GatewayError> {
    let err = |source| GatewayError::Listen {
        addr: addr.to_string(),
        source,
    };
    let sa: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .map_err(err)?
        .next()
        .ok_or_else(|| err(std::io::Error::other("the address resolves to nothing")))?;
    let s = socket2::Socket::new(
        socket2::Domain::for_address(sa),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    if reuse_port {
        s.set_reuse_port(true).map_err(err)?;
    }
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&sa.into()).map_err(err)?;
    s.listen(LISTEN_BACKLOG).map_err(err)?;
    TcpListener::from_std(s.into()).map_err(err)
}

impl Gateway {
    /// Opens the listeners, starts the pair links (and the balancer
    /// reports), and returns once it accepts connections.
    pub async fn start(cfg: GatewayConfig) -> Result<Gateway, GatewayError> {
        cfg.validate().map_err(GatewayError::Config)?;
        let tcp = listen(&cfg.tcp, cfg.reuse_port)?;
        let ws = cfg
            .ws
            .as_deref()
            .map(|a| listen(a, cfg.reuse_port))
            .transpose()?;
        let tcp_addr = tcp.local_addr().map_err(|source| GatewayError::Listen {
            addr: cfg.tcp.clone(),
            source,
        })?;
        let ws_addr = ws.as_ref().and_then(|l| l.local_addr().ok());
        let admin = cfg.admin.as_deref().map(|a| listen(a, false)).transpose()?;
        let (noise, noise_key) = match (&cfg.tcp_noise, &cfg.noise_key) {
            (Some(a), Some(k)) => {
                let key = secure::load_noise_key(k).map_err(GatewayError::Config)?;
                (Some(listen(a, cfg.reuse_port)?), Some(Arc::new(key)))
            }
            _ => (None, None),
        };
        let noise_addr = noise.as_ref().and_then(|l| l.local_addr().ok());
        let noise_public = noise_key.as_ref().map(|k| k.public());
        let wss = match (&cfg.wss, &cfg.tls_cert, &cfg.tls_key) {
            (Some(a), Some(c), Some(k)) => {
                let acceptor =
                    secure::tls_acceptor(c.as_ref(), k.as_ref()).map_err(GatewayError::Config)?;
                Some((listen(a, cfg.reuse_port)?, acceptor))
            }
            _ => None,
        };
        let wss_addr = wss.as_ref().and_then(|(l, _)| l.local_addr().ok());
        let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
        let mut routes = HashMap::new();
        let mut pairs = Vec::new();
        let mut rxs = Vec::new();
        for (i, p) in cfg.pairs.iter().enumerate() {
            for r in &p.rooms {
                routes.insert(*r, i);
            }
            let (tx, rx) = mpsc::channel(LINK_QUEUE_CMDS_MAX);
            pairs.push(PairHandle {
                tx,
                rooms: Mutex::new((Vec::new(), None)),
            });
            rxs.push(rx);
        }
        let (center_tx, center_rx) = match cfg.center.is_empty() {
            true => (None, None),
            false => {
                let (tx, rx) = mpsc::channel(center::CENTER_QUEUE_CMDS_MAX);
                (Some(tx), Some(rx))
            }
        };
        let public_addr = match &cfg.balancer {
            Some(b) => format!(
                "{}:{}",
                b.host,
                if b.port == 0 { tcp_addr.port() } else { b.port }
            ),
            None => tcp_addr.to_string(),
        };
        let shared = Arc::new(Shared {
            cfg,
            stats: Arc::new(GatewayStats::default()),
            players: Mutex::new(HashMap::new()),
            routes,
            pairs,
            next_session: AtomicU64::new(1),
            gateway_id: random_u64(),
            alternative: Mutex::new(None),
            center: center_tx,
            channels: Mutex::new(HashMap::new()),
            public_addr,
            unauth: Mutex::new(HashMap::new()),
        });
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        for (i, rx) in rxs.into_iter().enumerate() {
            tasks.push(tokio::spawn(Link::new(i, shared.clone(), rx).run()));
        }
        if let Some(rx) = center_rx {
            tasks.push(tokio::spawn(
                center::CenterLink::new(shared.clone(), rx).run(),
            ));
        }
        tasks.push(tokio::spawn(accept_tcp(
            tcp,
            shared.clone(),
            stopped.clone(),
        )));
        if let Some(ws) = ws {
            tasks.push(tokio::spawn(accept_ws(ws, shared.clone(), stopped.clone())));
        }
        if let (Some(l), Some(key)) = (noise, noise_key) {
            tasks.push(tokio::spawn(accept_noise(
                l,
                key,
                shared.clone(),
                stopped.clone(),
            )));
        }
        if let Some((l, acceptor)) = wss {
            tasks.push(tokio::spawn(accept_wss(
                l,
                acceptor,
                shared.clone(),
                stopped.clone(),
            )));
        }
        if let Some(admin) = admin {
            tasks.push(tokio::spawn(serve_admin(
                admin,
                shared.clone(),
                stopped.clone(),
            )));
        }
        if let Some(b) = shared.cfg.balancer.clone() {
            let (sh, mut stop) = (shared.clone(), stopped.clone());
            let zone = shared.cfg.zone;
            tasks.push(tokio::spawn(async move {
                let online = || sh.stats.sessions.load(Relaxed);
                let stop = async move {
                    let _ = stop.changed().await;
                };
                let alt = Some(&sh.alternative);
                crate::report::report_loop_with(b, zone, tcp_addr.port(), online, stop, alt).await;
            }));
        }
        info!(tcp = %tcp_addr, ws = ?ws_addr, noise = ?noise_addr, wss = ?wss_addr, pairs = shared.pairs.len(), gateway = shared.gateway_id, "gateway listening");
        Ok(Gateway {
            tcp_addr,
            ws_addr,
            noise_addr,
            noise_public,
            wss_addr,
            admin_addr,
            shared,
            stop,
            tasks,
        })
    }

    /// The TCP listener's address (the real port when configured with 0).
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    /// The WebSocket listener's address, if there is one.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws_addr
    }

    /// The Noise TCP listener's address, if there is one.
    pub fn noise_addr(&self) -> Option<SocketAddr> {
        self.noise_addr
    }

    /// The public half of the gateway's Noise key (what clients are given).
    pub fn noise_public(&self) -> Option<[u8; crate::proto::noise::KEY_BYTES]> {
        self.noise_public
    }

    /// The `wss://` listener's address, if there is one.
    pub fn wss_addr(&self) -> Option<SocketAddr> {
        self.wss_addr
    }

    /// The admin listener's address, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The counters now.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// The live counters (for an admin endpoint).
    pub fn stats_handle(&self) -> Arc<GatewayStats> {
        self.shared.stats.clone()
    }

    /// Stops accepting, says Bye ShuttingDown to every session, stops the links.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let sessions: Vec<Arc<SessionHandle>> =
            self.shared.players.lock().values().cloned().collect();
        for s in &sessions {
            s.close(
                ErrorCode::ShuttingDown,
                "the gateway is shutting down; connect again",
            );
        }
        // Bounded: give the sessions a moment to write their Bye.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while self.shared.stats.sessions.load(Relaxed) > 0 && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Gateway {
    /// A gateway dropped without [`Gateway::shutdown`] stops its listeners
    /// and links (its sessions end as their clients go).
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

/// Runs a gateway until `shutdown` completes.
pub async fn run(
    cfg: GatewayConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    let g = Gateway::start(cfg).await?;
    shutdown.await;
    g.shutdown().await;
    Ok(())
}

/// Refuses a connection over `sessions_max` (Bye, close), without a session.
fn over_limit(shared: &Shared) -> bool {
    if shared.stats.connections.load(Relaxed) as usize >= shared.cfg.sessions_max {
        GatewayStats::inc(&shared.stats.too_many_sessions);
        return true;
    }
    GatewayStats::inc(&shared.stats.connections);
    false
}

fn too_many_frame(shared: &Shared) -> bytes::Bytes {
    let b = msg::Bye {
        code: ErrorCode::TooManySessions,
        message: match shared.alternative.lock().clone() {
            Some(a) => format!(
                "this gateway holds its {} sessions; try {a}",
                shared.cfg.sessions_max
            ),
            None => format!(
                "this gateway holds its {} sessions; try another",
                shared.cfg.sessions_max
            ),
        },
    };
    Frame::new(
        Kind::Bye,
        0,
        crate::token::now_ms(),
        bytes::Bytes::from(msg::encode(&b)),
    )
    .to_bytes()
}

/// The next accepted connection (no-delay set), or `None` once stopped.
/// Accept errors (EMFILE and the like) wait a moment instead of spinning.
async fn accept_next(
    l: &TcpListener,
    stopped: &mut watch::Receiver<bool>,
) -> Option<tokio::net::TcpStream> {
    loop {
        tokio::select! {
            r = l.accept() => match r {
                Ok((s, _)) => {
                    let _ = s.set_nodelay(true);
                    return Some(s);
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = stopped.changed() => return None,
        }
    }
}

async fn accept_tcp(l: TcpListener, shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    while let Some(s) = accept_next(&l, &mut stopped).await {
        if over_limit(&shared) {
            let bye = too_many_frame(&shared);
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut s = s;
                let _ = tokio::time::timeout(Duration::from_millis(1000), s.write_all(&bye)).await;
            });
            continue;
        }
        let peer = peer_ip(&s);
        let io = TcpIo::new(s, shared.cfg.frame_bytes_max);
        tokio::spawn(session::run(io, shared.clone(), peer));
    }
}

async fn accept_ws(l: TcpListener, shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    while let Some(s) = accept_next(&l, &mut stopped).await {
        let full = over_limit(&shared);
        let shared = shared.clone();
        let peer = peer_ip(&s);
        tokio::spawn(async move {
            let limit = Duration::from_millis(shared.cfg.auth_timeout_ms);
            let cfg = transport::ws_config(shared.cfg.frame_bytes_max);
            let ws = match tokio::time::timeout(
                limit,
                tokio_tungstenite::accept_async_with_config(s, Some(cfg)),
            )
            .await
            {
                Ok(Ok(ws)) => ws,
                _ => {
                    if !full {
                        GatewayStats::dec(&shared.stats.connections);
                    }
                    return;
                }
            };
            let io = WsIo::new(ws, shared.cfg.frame_bytes_max);
            run_or_refuse(io, shared, peer, full).await;
        });
    }
}

/// A connection whose transport is up (upgrade or handshake done): a session,
/// or, on a full gateway, a readable Bye TooManySessions and the close.
async fn run_or_refuse<T: transport::FrameIo>(
    mut io: T,
    shared: Arc<Shared>,
    peer: std::net::IpAddr,
    full: bool,
) {
    if full {
        let _ = io.write_frames(&[too_many_frame(&shared)]).await;
        io.close().await;
        return;
    }
    session::run(io, shared, peer).await;
}

/// The Noise TCP listener: the handshake (within `auth_timeout_ms`), then
/// a session like any other. A full gateway finishes the handshake to say
/// Bye TooManySessions in a way the client can read.
async fn accept_noise(
    l: TcpListener,
    key: Arc<crate::proto::noise::StaticKey>,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    while let Some(s) = accept_next(&l, &mut stopped).await {
        let full = over_limit(&shared);
        let (shared, key) = (shared.clone(), key.clone());
        let peer = peer_ip(&s);
        tokio::spawn(async move {
            let limit = Duration::from_millis(shared.cfg.auth_timeout_ms);
            let stats = shared.stats.clone();
            let max = shared.cfg.frame_bytes_max;
            let Some(io) = secure::accept_noise(s, &key, limit, max, stats).await else {
                if !full {
                    GatewayStats::dec(&shared.stats.connections);
                }
                return;
            };
            run_or_refuse(io, shared, peer, full).await;
        });
    }
}

/// The `wss://` listener: TLS, then the WebSocket upgrade, both within
/// `auth_timeout_ms`; a failed TLS handshake counts in `handshake_failures`.
async fn accept_wss(
    l: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    while let Some(s) = accept_next(&l, &mut stopped).await {
        let full = over_limit(&shared);
        let (shared, acceptor) = (shared.clone(), acceptor.clone());
        let peer = peer_ip(&s);
        tokio::spawn(async move {
            let deadline =
                tokio::time::Instant::now() + Duration::from_millis(shared.cfg.auth_timeout_ms);
            let give_up = |tls_failed: bool| {
                if tls_failed {
                    GatewayStats::inc(&shared.stats.handshake_failures);
                }
                if !full {
                    GatewayStats::dec(&shared.stats.connections);
                }
            };
            let tls = match tokio::time::timeout_at(deadline, acceptor.accept(s)).await {
                Ok(Ok(t)) => t,
                _ => return give_up(true),
            };
            let cfg = transport::ws_config(shared.cfg.frame_bytes_max);
            let ws = match tokio::time::timeout_at(
                deadline,
                tokio_tungstenite::accept_async_with_config(tls, Some(cfg)),
            )
            .await
            {
                Ok(Ok(ws)) => ws,
                _ => return give_up(false),
            };
            let io = WsIo::new(ws, shared.cfg.frame_bytes_max);
            run_or_refuse(io, shared, peer, full).await;
        });
    }
}

/// The connection's source address (unspecified if the kernel cannot say).
fn peer_ip(s: &tokio::net::TcpStream) -> std::net::IpAddr {
    s.peer_addr()
        .map(|a| a.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

pub use crate::report::rss_bytes;

/// Header lines of an HTTP request to the admin port read at most.
const ADMIN_HTTP_HEADERS_MAX: usize = 64;

/// The gateway's Prometheus text: its counters and the process's RSS.
fn metrics_text(shared: &Shared) -> String {
    let mut t = shared.stats.prometheus();
    t.push_str(&format!(
        "# HELP gateway_rss_bytes Resident memory of the process.\n# TYPE gateway_rss_bytes gauge\ngateway_rss_bytes {}\n",
        rss_bytes()
    ));
    t
}

/// Admin connections served at once at most.
const ADMIN_CONNECTIONS_MAX: usize = 16;
/// Longest admin command line, bytes.
const ADMIN_LINE_BYTES_MAX: usize = 256;

/// The admin port: one command per line. `STATS`: the counters and the RSS
/// as one JSON line; `METRICS`: the Prometheus text, ended by a `# EOF`
/// line; anything else: `ERR ...`. An HTTP `GET /metrics` (what a
/// Prometheus server sends) is answered with the same text over HTTP/1.0,
/// then the connection closes.
async fn serve_admin(l: TcpListener, shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let slots = Arc::new(tokio::sync::Semaphore::new(ADMIN_CONNECTIONS_MAX));
    loop {
        let s = tokio::select! {
            r = l.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stopped.changed() => return,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // dropped: too many admin connections
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (rd, mut wr) = s.into_split();
            let mut rd = tokio::io::BufReader::new(rd.take(1 << 20));
            let mut line = String::new();
            loop {
                line.clear();
                match rd.read_line(&mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) if line.len() > ADMIN_LINE_BYTES_MAX => return,
                    Ok(_) => {}
                }
                if let Some(path) = line
                    .strip_prefix("GET ")
                    .and_then(|r| r.split_whitespace().next())
                {
                    // HTTP: skip the request's headers (bounded), answer, close.
                    let mut h = String::new();
                    for _ in 0..ADMIN_HTTP_HEADERS_MAX {
                        h.clear();
                        match rd.read_line(&mut h).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) if h.trim().is_empty() => break,
                            Ok(_) => {}
                        }
                    }
                    let (status, body) = match path {
                        "/metrics" => ("200 OK", metrics_text(&shared)),
                        _ => ("404 Not Found", "try GET /metrics\n".to_string()),
                    };
                    let head = format!(
                        "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = wr.write_all(head.as_bytes()).await;
                    let _ = wr.write_all(body.as_bytes()).await;
                    let _ = wr.shutdown().await;
                    return;
                }
                let answer = match line.trim() {
                    "METRICS" => format!("{}# EOF", metrics_text(&shared)),
                    "STATS" => {
                        let mut v =
                            serde_json::to_value(shared.stats.snapshot()).unwrap_or_default();
                        v["rss_bytes"] = rss_bytes().into();
                        v["gateway"] = shared.gateway_id.into();
                        v.to_string()
                    }
                    other => format!("ERR unknown command {other:?}; try STATS or METRICS"),
                };
                if wr
                    .write_all(format!("{answer}\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
}
