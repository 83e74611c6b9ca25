//! One client connection: authentication, heartbeat, request sequence and
//! rate checks, and the session's request queue (one request in flight).
//!
//! The session task reads frames and writes what its outgoing queue holds;
//! the pair links put replies and room pushes on that queue, already encoded,
//! in the order they came from the room server.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};
use tracing::debug;

use super::center::CenterCmd;
use super::pair::LinkCmd;
use super::stats::GatewayStats;
use super::transport::{FrameIo, ReadError};
use super::Shared;
use crate::proto::frame::{self, Frame, FrameError, Kind, HEADER_BYTES};
use crate::proto::msg::{
    self, Answer, CenterRequest, ErrorCode, Fail, Push, Reply, Request, SayTo,
    CHANNELS_PER_SESSION_MAX, CHAT_TEXT_BYTES_MAX,
};
use crate::token;

/// Frames written to the socket in one go at most (a batch drained from the queue).
const WRITE_BATCH_FRAMES_MAX: usize = 64;
/// Time a Bye (and the close after it) may take to write, ms: a client that
/// does not read does not hold its session open.
const BYE_WRITE_MS: u64 = 1000;

/// What the pair links (and the gateway) queue to a session.
#[derive(Debug)]
pub(crate) enum Out {
    /// An encoded frame (a push), written as is.
    Frame(Bytes),
    /// The session's request in flight is answered: `frame` is the reply to
    /// write (`None` for a request the gateway made on the session's behalf).
    Answered {
        frame: Option<Bytes>,
        effect: Effect,
    },
    /// The center admitted the session (its login number is set).
    Admitted,
    /// The session waits in the center's queue at `position` of `of`.
    Queued { position: u32, of: u32 },
}

/// What an answered request changed about where the session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    None,
    Entered(u32),
    Left(u32),
}

/// The part of a session the links and the directory hold.
#[derive(Debug)]
pub(crate) struct SessionHandle {
    pub(crate) id: u64,
    pub(crate) player: u64,
    pub(crate) name: String,
    /// The center's login number (0 without a center, and until admitted);
    /// see `link::ToRoom::Request`.
    pub(crate) login: AtomicU64,
    /// Account kind from the token.
    pub(crate) kind: u8,
    tx: mpsc::Sender<Out>,
    kill: Notify,
    reason: Mutex<Option<Fail>>,
}

impl SessionHandle {
    /// Asks the session to send Bye with `code` and close (the first reason wins).
    pub(crate) fn close(&self, code: ErrorCode, message: impl Into<String>) {
        let mut r = self.reason.lock();
        if r.is_none() {
            *r = Some(Fail::new(code, message));
        }
        drop(r);
        self.kill.notify_one();
    }

    /// Queues `out` without waiting. A full queue closes the session
    /// (SlowConsumer). False when the session is gone or being closed.
    pub(crate) fn send(&self, out: Out, stats: &GatewayStats) -> bool {
        match self.tx.try_send(out) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                GatewayStats::inc(&stats.slow_consumers);
                self.close(
                    ErrorCode::SlowConsumer,
                    "you did not read your pushes fast enough",
                );
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// The session task has ended.
    pub(crate) fn is_gone(&self) -> bool {
        self.tx.is_closed()
    }

    /// The center's login number of this session.
    pub(crate) fn login(&self) -> u64 {
        self.login.load(Relaxed)
    }
}

/// The frame of a reply to request `seq`.
pub(crate) fn reply_frame(seq: u32, reply: &Reply) -> Bytes {
    Frame::new(
        Kind::Reply,
        seq,
        token::now_ms(),
        Bytes::from(msg::encode(reply)),
    )
    .to_bytes()
}

fn bye_frame(code: ErrorCode, message: &str) -> Bytes {
    let b = msg::Bye {
        code,
        message: message.to_string(),
    };
    Frame::new(Kind::Bye, 0, token::now_ms(), Bytes::from(msg::encode(&b))).to_bytes()
}

fn frame_error_code(e: &FrameError) -> ErrorCode {
    match e {
        FrameError::TooLarge { .. } | FrameError::InflatesTooLarge { .. } => {
            ErrorCode::FrameTooLarge
        }
        FrameError::BadCrc => ErrorCode::BadCrc,
        _ => ErrorCode::BadFrame,
    }
}

/// Sends Bye and closes.
async fn bye<T: FrameIo>(io: &mut T, stats: &GatewayStats, code: ErrorCode, message: &str) {
    debug!(?code, message, "bye");
    stats.error(code);
    let limit = Duration::from_millis(BYE_WRITE_MS);
    let _ = tokio::time::timeout(limit, async {
        let _ = io.write_frames(&[bye_frame(code, message)]).await;
        io.close().await;
    })
    .await;
}

/// A request waiting for its turn, or in flight.
struct Queued {
    seq: u32,
    req: Job,
}

/// What a client asks: a room, or the center.
enum Job {
    Room(Request),
    Center(CenterRequest),
}

/// Token bucket of one session's requests.
struct Bucket {
    tokens: f32,
    at: Instant,
}

/// A token bucket that may go into debt: a connection's bytes or frames.
/// It holds one second of its rate; the debt says how long to pause reads.
struct Debt {
    tokens: f64,
    per_s: f64,
    at: Instant,
}

impl Debt {
    fn new(per_s: u64, now: Instant) -> Debt {
        Debt {
            tokens: per_s as f64,
            per_s: per_s as f64,
            at: now,
        }
    }

    /// Takes `n`; the time until the bucket is out of debt again.
    fn take(&mut self, n: u64, now: Instant) -> Duration {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * self.per_s).min(self.per_s) - n as f64;
        match self.tokens < 0.0 {
            true => Duration::from_secs_f64(-self.tokens / self.per_s),
            false => Duration::ZERO,
        }
    }
}

/// A connection's traffic limits: bytes and frames a second (seed 001
/// "流量限制"). A frame over either pauses reads until both are out of debt;
/// reads paused without a break for `flood_close_ms` close the connection.
struct Traffic {
    bytes: Debt,
    frames: Debt,
    /// Since when every frame read has paused the reads.
    throttled_since: Option<Instant>,
    /// This connection was counted in `throttled_connections`.
    counted: bool,
}

/// What the traffic limits say about a frame just read.
#[derive(Debug, PartialEq)]
enum Throttle {
    Go,
    Pause(Duration),
    Close,
}

impl Traffic {
    fn new(cfg: &super::GatewayConfig, now: Instant) -> Traffic {
        Traffic {
            bytes: Debt::new(cfg.conn_bytes_per_s_max, now),
            frames: Debt::new(cfg.conn_frames_per_s_max, now),
            throttled_since: None,
            counted: false,
        }
    }

    fn charge(
        &mut self,
        bytes: usize,
        now: Instant,
        close_after: Duration,
        stats: &GatewayStats,
    ) -> Throttle {
        let wait = self
            .bytes
            .take(bytes as u64, now)
            .max(self.frames.take(1, now));
        if wait.is_zero() {
            self.throttled_since = None;
            return Throttle::Go;
        }
        let since = *self.throttled_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= close_after {
            GatewayStats::inc(&stats.flood_closed);
            return Throttle::Close;
        }
        GatewayStats::inc(&stats.throttle_pauses);
        if !std::mem::replace(&mut self.counted, true) {
            GatewayStats::inc(&stats.throttled_connections);
        }
        Throttle::Pause(wait)
    }
}

/// One unauthenticated connection of a source address, counted against
/// `unauth_per_addr_max` until authenticated or gone.
struct UnauthSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl UnauthSlot {
    fn take(shared: &Arc<Shared>, ip: IpAddr) -> Option<UnauthSlot> {
        let mut m = shared.unauth.lock();
        let n = m.entry(ip).or_insert(0);
        if *n >= shared.cfg.unauth_per_addr_max {
            return None;
        }
        *n += 1;
        Some(UnauthSlot {
            shared: shared.clone(),
            ip,
        })
    }
}

impl Drop for UnauthSlot {
    fn drop(&mut self) {
        let mut m = self.shared.unauth.lock();
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// A good Auth: who, what the client understands, and its clock.
struct Authed {
    claims: token::Claims,
    version: u32,
    features: u32,
    /// Gateway clock minus the client's at Auth, ms.
    offset_ms: i64,
}

/// Serves one connection until it ends. The caller counted it in
/// `stats.connections` and this uncounts it.
pub(crate) async fn run<T: FrameIo>(mut io: T, shared: Arc<Shared>, peer: IpAddr) {
    let stats = &shared.stats;
    let Some(slot) = UnauthSlot::take(&shared, peer) else {
        GatewayStats::inc(&stats.refused_per_addr);
        debug!(%peer, "closed: the address holds unauth_per_addr_max unauthenticated connections");
        io.close().await;
        GatewayStats::dec(&stats.connections);
        return;
    };
    let authed = authenticate(&mut io, &shared).await;
    drop(slot);
    let Some(Authed {
        claims,
        version,
        features,
        offset_ms,
    }) = authed
    else {
        GatewayStats::dec(&stats.connections);
        return;
    };
    let (tx, mut rx) = mpsc::channel(shared.cfg.session_queue_frames_max);
    let handle = Arc::new(SessionHandle {
        id: shared.next_session_id(),
        player: claims.player,
        name: claims.name,
        login: AtomicU64::new(0),
        kind: claims.kind,
        tx,
        kill: Notify::new(),
        reason: Mutex::new(None),
    });
    if let Some(center) = &shared.center {
        GatewayStats::inc(&stats.waiting);
        let ok = admission(&mut io, &shared, center, &handle, &mut rx, peer, features).await;
        GatewayStats::dec(&stats.waiting);
        if !ok {
            rx.close();
            let _ = center.send(CenterCmd::Logout { session: handle }).await;
            GatewayStats::dec(&stats.connections);
            return;
        }
    }
    if let Some(old) = shared.players.lock().insert(handle.player, handle.clone()) {
        GatewayStats::inc(&stats.logged_in_elsewhere);
        old.close(
            ErrorCode::LoggedInElsewhere,
            "you logged in on another connection",
        );
    }
    GatewayStats::inc(&stats.sessions);
    GatewayStats::inc(&stats.logins);
    let welcome = msg::Welcome {
        player: handle.player,
        name: handle.name.clone(),
        session: handle.id,
        heartbeat_ms: shared.cfg.heartbeat_ms as u32,
        dead_ticks: shared.cfg.dead_ticks,
        server_time_ms: token::now_ms(),
    };
    let welcome = Frame::new(
        Kind::Welcome,
        0,
        token::now_ms(),
        Bytes::from(msg::encode(&welcome)),
    )
    .to_bytes();
    let mut s = Session {
        shared: shared.clone(),
        handle: handle.clone(),
        channels: Vec::new(),
        queue: VecDeque::new(),
        in_flight: None,
        then: None,
        last_seq: 0,
        room: None,
        bucket: Bucket {
            tokens: shared.cfg.requests_burst_max as f32,
            at: Instant::now(),
        },
        writes: vec![welcome],
        features,
        offset_ms,
        traffic: Traffic::new(&shared.cfg, Instant::now()),
        routed: shared
            .cfg
            .routes
            .iter()
            .find(|r| r.matches(version, claims.kind))
            .map(|r| r.pairs.clone()),
        version,
        probe: None,
        rtt_ms: 0,
    };
    debug!(session = handle.id, player = handle.player, "authenticated");
    s.serve(&mut io, rx).await;
    // Leave the directory (unless a newer login took the slot), then tell
    // the links: the seat in the room stays for a reconnect.
    {
        let mut p = shared.players.lock();
        if p.get(&handle.player).is_some_and(|h| h.id == handle.id) {
            p.remove(&handle.player);
        }
    }
    for pair in &shared.pairs {
        let _ = pair.tx.send(LinkCmd::Gone { session: handle.id }).await;
    }
    for c in std::mem::take(&mut s.channels) {
        s.unsubscribe_now(c);
    }
    if let Some(center) = &shared.center {
        let _ = center
            .send(CenterCmd::Logout {
                session: handle.clone(),
            })
            .await;
    }
    GatewayStats::dec(&stats.sessions);
    GatewayStats::dec(&stats.connections);
}

/// Writes `frames` within the heartbeat window: a client that does not read
/// does not hold its connection open.
async fn write_within<T: FrameIo>(io: &mut T, shared: &Shared, frames: &[Bytes]) -> bool {
    let limit = Duration::from_millis(shared.cfg.heartbeat_ms * shared.cfg.dead_ticks as u64);
    matches!(
        tokio::time::timeout(limit, io.write_frames(frames)).await,
        Ok(Ok(()))
    )
}

/// With a center: registers the login and waits for Admitted, answering
/// pings and refusing requests meanwhile, telling queue positions as they
/// come. False: the session ends (refused, kicked, timed out, gone).
async fn admission<T: FrameIo>(
    io: &mut T,
    shared: &Shared,
    center: &mpsc::Sender<CenterCmd>,
    handle: &Arc<SessionHandle>,
    rx: &mut mpsc::Receiver<Out>,
    peer: IpAddr,
    features: u32,
) -> bool {
    let cmd = CenterCmd::Login {
        session: handle.clone(),
        addr: peer,
    };
    if center.try_send(cmd).is_err() {
        let m = "the gateway's link to the center is overloaded; retry";
        bye(io, &shared.stats, ErrorCode::Unavailable, m).await;
        return false;
    }
    let cfg = &shared.cfg;
    let hb = Duration::from_millis(cfg.heartbeat_ms);
    let answer_by = Instant::now() + Duration::from_millis(cfg.center_login_timeout_ms);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + hb, hb);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut queued, mut seen, mut idle) = (false, false, 0u32);
    loop {
        let mut writes = Vec::new();
        tokio::select! {
            biased;
            _ = handle.kill.notified() => {
                let fail = handle.reason.lock().take().unwrap_or_else(|| Fail::new(ErrorCode::Internal, "closed"));
                bye(io, &shared.stats, fail.code, &fail.message).await;
                return false;
            }
            out = rx.recv() => match out {
                None => return false,
                Some(Out::Admitted) => return true,
                Some(Out::Queued { position, of }) => {
                    queued = true;
                    let p = Push::Queued { position, of, heartbeat_ms: cfg.heartbeat_ms as u32 };
                    writes.push(Frame::new(Kind::Push, 0, token::now_ms(), Bytes::from(msg::encode(&p))).to_bytes());
                }
                Some(_) => {} // nothing else is for a session not admitted
            },
            r = io.read_frame() => match r {
                Ok(f) => {
                    seen = true;
                    shared.stats.frame_in(f.kind as u8, HEADER_BYTES + f.payload.len());
                    match f.kind {
                        Kind::Ping => {
                            let pong = msg::Pong { client_time_ms: f.time_ms, rtt_ms: 0 };
                            writes.push(Frame::new(Kind::Pong, 0, token::now_ms(), Bytes::from(pong.encode_for(features))).to_bytes());
                        }
                        Kind::Request | Kind::Center => {
                            let fail = Fail::new(ErrorCode::NotAdmitted, "you are waiting in the login queue; requests come after Welcome");
                            writes.push(reply_frame(f.seq, &Err(fail)));
                        }
                        k => {
                            GatewayStats::inc(&shared.stats.errors_frame);
                            bye(io, &shared.stats, ErrorCode::BadFrame, &format!("a client does not send {k:?} frames while queued")).await;
                            return false;
                        }
                    }
                }
                Err(ReadError::Closed) => return false,
                Err(ReadError::Text) => {
                    bye(io, &shared.stats, ErrorCode::BadFrame, "text messages are refused: send binary frames").await;
                    return false;
                }
                Err(ReadError::Frame(e)) => {
                    GatewayStats::inc(&shared.stats.errors_frame);
                    bye(io, &shared.stats, frame_error_code(&e), &e.to_string()).await;
                    return false;
                }
            },
            _ = tick.tick() => {
                if !queued {
                    if Instant::now() >= answer_by {
                        bye(io, &shared.stats, ErrorCode::Unavailable, "the center server did not answer the login in time; retry").await;
                        return false;
                    }
                } else if std::mem::take(&mut seen) {
                    idle = 0;
                } else {
                    idle += 1;
                    if idle >= cfg.dead_ticks {
                        GatewayStats::inc(&shared.stats.heartbeat_timeouts);
                        let m = format!("no frame for {} heartbeats of {} ms while queued", idle, hb.as_millis());
                        bye(io, &shared.stats, ErrorCode::HeartbeatTimeout, &m).await;
                        return false;
                    }
                }
            }
        }
        if !writes.is_empty() && !write_within(io, shared, &writes).await {
            return false;
        }
    }
}

/// The first frame: a good Auth within the time limit, else Bye.
async fn authenticate<T: FrameIo>(io: &mut T, shared: &Shared) -> Option<Authed> {
    let stats = &shared.stats;
    let limit = Duration::from_millis(shared.cfg.auth_timeout_ms);
    let refuse = |code| {
        GatewayStats::inc(&stats.errors_auth);
        code
    };
    let f = match tokio::time::timeout(limit, io.read_frame()).await {
        Err(_) => {
            let c = refuse(ErrorCode::NotAuthenticated);
            bye(io, &shared.stats, c, "no Auth frame in time").await;
            return None;
        }
        Ok(Err(ReadError::Closed)) => return None,
        Ok(Err(ReadError::Text)) => {
            GatewayStats::inc(&stats.errors_frame);
            bye(
                io,
                &shared.stats,
                ErrorCode::BadFrame,
                "text messages are refused: send binary frames",
            )
            .await;
            return None;
        }
        Ok(Err(ReadError::Frame(e))) => {
            GatewayStats::inc(&stats.errors_frame);
            bye(io, &shared.stats, frame_error_code(&e), &e.to_string()).await;
            return None;
        }
        Ok(Ok(f)) => f,
    };
    stats.frame_in(f.kind as u8, HEADER_BYTES + f.payload.len());
    let f = match f.inflated(shared.cfg.frame_bytes_max) {
        Ok(f) => f,
        Err(e) => {
            GatewayStats::inc(&stats.errors_frame);
            bye(io, stats, frame_error_code(&e), &e.to_string()).await;
            return None;
        }
    };
    if f.kind != Kind::Auth {
        let c = refuse(ErrorCode::NotAuthenticated);
        bye(io, &shared.stats, c, "the first frame must be Auth").await;
        return None;
    }
    let auth = match msg::Auth::decode(&f.payload) {
        Ok(a) => a,
        Err(_) => {
            let c = refuse(ErrorCode::BadFrame);
            bye(io, &shared.stats, c, "the Auth payload is unreadable").await;
            return None;
        }
    };
    if auth.client_version < shared.cfg.client_version_min {
        let c = refuse(ErrorCode::UpgradeRequired);
        GatewayStats::inc(&stats.upgrade_required);
        let m = format!(
            "client version {} is below this gateway's minimum, {}: upgrade the client",
            auth.client_version, shared.cfg.client_version_min
        );
        bye(io, &shared.stats, c, &m).await;
        return None;
    }
    let offset_ms = (token::now_ms() as i128 - f.time_ms as i128)
        .clamp(i64::MIN as i128, i64::MAX as i128) as i64;
    match token::verify(
        shared.cfg.secret.as_bytes(),
        &auth.token,
        shared.cfg.zone,
        token::now_ms(),
    ) {
        Ok(claims) => Some(Authed {
            claims,
            version: auth.client_version,
            features: auth.features,
            offset_ms,
        }),
        Err(fail) => {
            let c = refuse(fail.code);
            bye(io, &shared.stats, c, &fail.message).await;
            None
        }
    }
}

struct Session {
    shared: Arc<Shared>,
    handle: Arc<SessionHandle>,
    /// Channels this session is subscribed to.
    channels: Vec<u32>,
    /// Requests waiting behind the one in flight.
    queue: VecDeque<Queued>,
    /// The request sent to a room server and not yet answered.
    in_flight: Option<u32>,
    /// A request to send once the gateway's own request in flight (a Leave
    /// of the room on another pair) is answered.
    then: Option<Queued>,
    /// The last request sequence accepted.
    last_seq: u32,
    /// The room the player is in, as this session saw it.
    room: Option<u32>,
    bucket: Bucket,
    /// Frames to write at the end of this turn of the loop.
    writes: Vec<Bytes>,
    /// `Auth::features` of the client.
    features: u32,
    /// Gateway clock minus the client's, ms: learned at Auth, again at each ping.
    offset_ms: i64,
    traffic: Traffic,
    /// The gateway's round-trip probe in flight: its `time_ms`, sent when.
    probe: Option<(u64, Instant)>,
    /// The last round trip measured, ms (0: none yet).
    rtt_ms: u32,
    /// The pairs this session's route allows (`None`: every pair).
    routed: Option<Vec<usize>>,
    /// `Auth::client_version`.
    version: u32,
}

impl Session {
    async fn serve<T: FrameIo>(&mut self, io: &mut T, mut rx: mpsc::Receiver<Out>) {
        let hb = Duration::from_millis(self.shared.cfg.heartbeat_ms);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + hb, hb);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut seen, mut seen_at_tick, mut idle) = (0u64, 0u64, 0u32);
        let handle = self.handle.clone();
        let close_after = Duration::from_millis(self.shared.cfg.flood_close_ms);
        // Reads paused by the traffic limits until then.
        let mut paused: Option<tokio::time::Instant> = None;
        loop {
            if !self.writes.is_empty() {
                self.pack_writes();
                // A client that does not read blocks this write; a close
                // (SlowConsumer, a newer login) must still end it.
                let written = tokio::select! {
                    biased;
                    r = io.write_frames(&self.writes) => r.is_ok(),
                    _ = handle.kill.notified() => {
                        debug!(session = handle.id, "closed while a write was blocked: no Bye");
                        false
                    }
                };
                if !written {
                    break;
                }
                for f in &self.writes {
                    self.shared.stats.frame_out(f);
                }
                self.writes.clear();
            }
            tokio::select! {
                biased;
                _ = handle.kill.notified() => {
                    let fail = handle.reason.lock().take().unwrap_or_else(|| Fail::new(ErrorCode::Internal, "closed"));
                    rx.close();
                    bye(io, &self.shared.stats, fail.code, &fail.message).await;
                    break;
                }
                out = rx.recv() => {
                    let Some(out) = out else { break };
                    self.take(out);
                    while self.writes.len() < WRITE_BATCH_FRAMES_MAX {
                        match rx.try_recv() {
                            Ok(out) => self.take(out),
                            Err(_) => break,
                        }
                    }
                }
                _ = tokio::time::sleep_until(paused.unwrap_or_else(tokio::time::Instant::now)), if paused.is_some() => {
                    paused = None;
                }
                r = io.read_frame(), if paused.is_none() => {
                    match r {
                        Ok(f) => {
                            seen += 1;
                            let wire = HEADER_BYTES + f.payload.len();
                            self.shared.stats.frame_in(f.kind as u8, wire);
                            let now = Instant::now();
                            match self.traffic.charge(wire, now, close_after, &self.shared.stats) {
                                Throttle::Go => {}
                                Throttle::Pause(d) => paused = Some(tokio::time::Instant::from_std(now + d)),
                                Throttle::Close => {
                                    rx.close();
                                    let cfg = &self.shared.cfg;
                                    let m = format!("over {} bytes or {} frames a second for {} ms: slow down", cfg.conn_bytes_per_s_max, cfg.conn_frames_per_s_max, cfg.flood_close_ms);
                                    bye(io, &self.shared.stats, ErrorCode::Flooding, &m).await;
                                    break;
                                }
                            }
                            if f.flags & frame::FLAG_COMPRESSED != 0 {
                                GatewayStats::inc(&self.shared.stats.inflated_frames);
                            }
                            let f = match f.inflated(self.shared.cfg.frame_bytes_max) {
                                Ok(f) => f,
                                Err(e) => {
                                    GatewayStats::inc(&self.shared.stats.errors_frame);
                                    rx.close();
                                    bye(io, &self.shared.stats, frame_error_code(&e), &e.to_string()).await;
                                    break;
                                }
                            };
                            if let Err((code, m)) = self.frame(f) {
                                GatewayStats::inc(&self.shared.stats.errors_frame);
                                let _ = io.write_frames(&self.writes).await;
                                self.writes.clear();
                                rx.close();
                                bye(io, &self.shared.stats, code, &m).await;
                                break;
                            }
                        }
                        Err(ReadError::Closed) => break,
                        Err(ReadError::Text) => {
                            GatewayStats::inc(&self.shared.stats.errors_frame);
                            rx.close();
                            bye(io, &self.shared.stats, ErrorCode::BadFrame, "text messages are refused: send binary frames").await;
                            break;
                        }
                        Err(ReadError::Frame(e)) => {
                            GatewayStats::inc(&self.shared.stats.errors_frame);
                            rx.close();
                            bye(io, &self.shared.stats, frame_error_code(&e), &e.to_string()).await;
                            break;
                        }
                    }
                }
                _ = tick.tick() => {
                    self.probe();
                    if seen == seen_at_tick {
                        idle += 1;
                        if idle >= self.shared.cfg.dead_ticks {
                            GatewayStats::inc(&self.shared.stats.heartbeat_timeouts);
                            rx.close();
                            let m = format!("no frame for {} heartbeats of {} ms", idle, hb.as_millis());
                            bye(io, &self.shared.stats, ErrorCode::HeartbeatTimeout, &m).await;
                            break;
                        }
                    } else {
                        (seen_at_tick, idle) = (seen, 0);
                    }
                }
            }
        }
        rx.close();
    }

    /// The pair of `room`, if this session's route allows it.
    fn pair_of(&self, room: u32) -> Option<usize> {
        let p = self.shared.pair_of(room)?;
        match &self.routed {
            Some(ok) if !ok.contains(&p) => {
                debug!(
                    session = self.handle.id,
                    room,
                    version = self.version,
                    group = self.handle.kind,
                    "room not on this session's route"
                );
                None
            }
            _ => Some(p),
        }
    }

    /// Compresses what is about to be written, for a client that inflates:
    /// payloads of at least `compress_bytes_min` that deflate smaller.
    fn pack_writes(&mut self) {
        let min = self.shared.cfg.compress_bytes_min;
        if self.features & msg::FEATURE_DEFLATE == 0 || min == 0 {
            return;
        }
        let stats = &self.shared.stats;
        for f in self.writes.iter_mut() {
            if f.len() < HEADER_BYTES + min {
                continue;
            }
            let t = Instant::now();
            let packed = frame::compress_encoded(f);
            stats
                .compress_ns
                .fetch_add(t.elapsed().as_nanos() as u64, Relaxed);
            if let Some(p) = packed {
                GatewayStats::inc(&stats.compressed_frames);
                let plain = (f.len() - HEADER_BYTES) as u64;
                let packed_len = (p.len() - HEADER_BYTES) as u64;
                stats.compress_plain_bytes.fetch_add(plain, Relaxed);
                stats.compress_packed_bytes.fetch_add(packed_len, Relaxed);
                *f = p;
            }
        }
    }

    /// How far `time_ms` of a client frame is from the gateway's clock,
    /// corrected by the offset: `Err(off_ms)` outside the window (positive:
    /// the frame is old).
    fn time_check(&self, time_ms: u64) -> Result<(), i128> {
        let off = token::now_ms() as i128 - (time_ms as i128 + self.offset_ms as i128);
        let cfg = &self.shared.cfg;
        if off > cfg.frame_age_max_ms as i128 || -off > cfg.frame_ahead_max_ms as i128 {
            GatewayStats::inc(&self.shared.stats.stale_frames);
            return Err(off);
        }
        Ok(())
    }

    /// Each heartbeat tick: a round-trip probe (a Ping to the client, which
    /// answers with a Pong echoing its time), for clients that know it.
    fn probe(&mut self) {
        if self.features & msg::FEATURE_RTT == 0 {
            return;
        }
        let t = token::now_ms();
        self.probe = Some((t, Instant::now()));
        self.writes
            .push(Frame::new(Kind::Ping, 0, t, Bytes::new()).to_bytes());
    }

    /// A frame from the client. `Err`: a protocol violation (Bye, close).
    fn frame(&mut self, f: Frame) -> Result<(), (ErrorCode, String)> {
        match f.kind {
            Kind::Ping => {
                if self.time_check(f.time_ms).is_err() {
                    // Dropped: no Pong. An honest client's next ping
                    // re-learns nothing either; its heartbeat decides.
                    return Ok(());
                }
                self.offset_ms = (token::now_ms() as i128 - f.time_ms as i128)
                    .clamp(i64::MIN as i128, i64::MAX as i128)
                    as i64;
                let pong = msg::Pong {
                    client_time_ms: f.time_ms,
                    rtt_ms: self.rtt_ms,
                };
                let b = Frame::new(
                    Kind::Pong,
                    0,
                    token::now_ms(),
                    Bytes::from(pong.encode_for(self.features)),
                )
                .to_bytes();
                self.writes.push(b);
            }
            Kind::Pong if self.features & msg::FEATURE_RTT != 0 => {
                let Ok(p) = msg::Pong::decode(&f.payload) else {
                    return Err((ErrorCode::BadFrame, "an unreadable Pong".into()));
                };
                if let Some((t, at)) = self.probe {
                    if t == p.client_time_ms {
                        let ms = at.elapsed().as_millis() as u64;
                        self.rtt_ms = ms.min(u32::MAX as u64) as u32;
                        self.shared.stats.rtt(ms);
                        self.probe = None;
                    }
                }
            }
            Kind::Request => self.request(f),
            Kind::Center => self.request(f),
            Kind::Auth => {
                let fail = Fail::new(
                    ErrorCode::BadRequest,
                    "this session is authenticated already",
                );
                let b = Frame::new(
                    Kind::Error,
                    f.seq,
                    token::now_ms(),
                    Bytes::from(msg::encode(&fail)),
                )
                .to_bytes();
                self.writes.push(b);
            }
            k => {
                return Err((
                    ErrorCode::BadFrame,
                    format!("a client does not send {k:?} frames"),
                ))
            }
        }
        Ok(())
    }

    fn refuse(&mut self, seq: u32, code: ErrorCode, message: impl Into<String>) {
        GatewayStats::inc(&self.shared.stats.errors_request);
        self.shared.stats.error(code);
        GatewayStats::inc(&self.shared.stats.replies);
        self.writes
            .push(reply_frame(seq, &Err(Fail::new(code, message))));
    }

    fn request(&mut self, f: Frame) {
        let seq = f.seq;
        if seq <= self.last_seq {
            GatewayStats::inc(&self.shared.stats.seq_refused);
            let m = format!(
                "request sequence {seq} is not above the last one, {}",
                self.last_seq
            );
            return self.refuse(seq, ErrorCode::SeqReused, m);
        }
        if seq != self.last_seq.wrapping_add(1) {
            GatewayStats::inc(&self.shared.stats.seq_refused);
            let m = format!(
                "request sequence {seq} skips numbers: the next one is {}",
                self.last_seq.wrapping_add(1)
            );
            return self.refuse(seq, ErrorCode::SeqSkipped, m);
        }
        self.last_seq = seq;
        if let Err(off) = self.time_check(f.time_ms) {
            let cfg = &self.shared.cfg;
            let m = format!(
                "the frame's time_ms is {off} ms off the gateway's clock (window: {} ms old to {} ms ahead); dropped: check the client's clock",
                cfg.frame_age_max_ms, cfg.frame_ahead_max_ms
            );
            return self.refuse(seq, ErrorCode::StaleTime, m);
        }
        // Token bucket: refill by elapsed time, take one.
        let now = Instant::now();
        let cfg = &self.shared.cfg;
        let dt = now.saturating_duration_since(self.bucket.at).as_secs_f32();
        self.bucket.at = now;
        self.bucket.tokens = (self.bucket.tokens + dt * cfg.requests_per_s_max as f32)
            .min(cfg.requests_burst_max as f32);
        if self.bucket.tokens < 1.0 {
            let m = format!("over {} requests a second", cfg.requests_per_s_max);
            return self.refuse(seq, ErrorCode::RateLimited, m);
        }
        self.bucket.tokens -= 1.0;
        let req = match f.kind {
            Kind::Center => msg::decode(&f.payload).map(Job::Center),
            _ => msg::decode(&f.payload).map(Job::Room),
        };
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                return self.refuse(
                    seq,
                    ErrorCode::BadRequest,
                    format!("unreadable request: {e}"),
                )
            }
        };
        if self.queue.len() >= self.shared.cfg.in_flight_max {
            let m = format!(
                "{} requests are waiting already; wait for answers",
                self.queue.len()
            );
            return self.refuse(seq, ErrorCode::TooManyInFlight, m);
        }
        self.queue.push_back(Queued { seq, req });
        self.dispatch();
    }

    /// What a link queued for this session.
    fn take(&mut self, out: Out) {
        match out {
            Out::Frame(b) => self.writes.push(b),
            Out::Admitted | Out::Queued { .. } => {} // only before Welcome
            Out::Answered { frame, effect } => {
                if let Some(b) = frame {
                    GatewayStats::inc(&self.shared.stats.replies);
                    self.writes.push(b);
                }
                match effect {
                    Effect::Entered(r) => self.room = Some(r),
                    Effect::Left(r) if self.room == Some(r) => self.room = None,
                    _ => {}
                }
                self.in_flight = None;
                if let Some(q) = self.then.take() {
                    self.send(q);
                }
                self.dispatch();
            }
        }
    }

    /// Sends queued requests until one is in flight.
    fn dispatch(&mut self) {
        while self.in_flight.is_none() {
            let Some(q) = self.queue.pop_front() else {
                return;
            };
            let (seq, req) = match q.req {
                Job::Center(c) => {
                    self.center(q.seq, c);
                    continue;
                }
                Job::Room(r) => (q.seq, r),
            };
            let Some(room) = req.room() else {
                // Rooms: the gateway answers from what the pairs told it.
                let mut rooms = self.shared.rooms();
                if let Some(ok) = &self.routed {
                    rooms.retain(|r| self.shared.pair_of(r.id).is_some_and(|p| ok.contains(&p)));
                }
                GatewayStats::inc(&self.shared.stats.replies);
                self.writes
                    .push(reply_frame(seq, &Ok(Answer::Rooms(rooms))));
                continue;
            };
            let Some(pair) = self.pair_of(room) else {
                self.refuse(
                    seq,
                    ErrorCode::UnknownRoom,
                    format!("no room server of this gateway serves room {room}"),
                );
                continue;
            };
            // Entering a room of another pair: leave the current room first,
            // as the room server does itself for rooms of its own.
            if let (Request::Enter { .. }, Some(cur)) = (&req, self.room) {
                if let Some(cur_pair) = self
                    .shared
                    .pair_of(cur)
                    .filter(|p| *p != pair && cur != room)
                {
                    let leave = Queued {
                        seq,
                        req: Job::Room(Request::Leave { room: cur }),
                    };
                    self.then = Some(Queued {
                        seq,
                        req: Job::Room(req),
                    });
                    self.link(cur_pair, leave, true);
                    return;
                }
            }
            self.send(Queued {
                seq,
                req: Job::Room(req),
            });
        }
    }

    fn send(&mut self, q: Queued) {
        let Job::Room(req) = &q.req else { return };
        let Some(room) = req.room() else { return };
        match self.pair_of(room) {
            Some(pair) => self.link(pair, q, false),
            None => self.refuse(
                q.seq,
                ErrorCode::UnknownRoom,
                format!("no room server of this gateway serves room {room}"),
            ),
        }
    }

    fn link(&mut self, pair: usize, q: Queued, internal: bool) {
        let Job::Room(req) = q.req else { return };
        let cmd = LinkCmd::Request {
            session: self.handle.clone(),
            seq: q.seq,
            req,
            internal,
        };
        match self.shared.pairs[pair].tx.try_send(cmd) {
            Ok(()) => self.in_flight = Some(q.seq),
            Err(_) => {
                if internal {
                    // The Leave could not go: enter anyway.
                    if let Some(next) = self.then.take() {
                        return self.send(next);
                    }
                }
                self.refuse(
                    q.seq,
                    ErrorCode::Unavailable,
                    "the gateway's link to the room server is overloaded; retry",
                );
            }
        }
    }

    fn ack(&mut self, seq: u32) {
        GatewayStats::inc(&self.shared.stats.replies);
        self.writes.push(reply_frame(seq, &Ok(Answer::Ack)));
    }

    /// A request for the center: channels are kept here (the center only
    /// knows which gateways have subscribers), messages go to the center.
    fn center(&mut self, seq: u32, req: CenterRequest) {
        match req {
            CenterRequest::Subscribe { channel } => {
                if self.channels.contains(&channel) {
                    return self.ack(seq);
                }
                if self.channels.len() >= CHANNELS_PER_SESSION_MAX {
                    let m = format!("at most {CHANNELS_PER_SESSION_MAX} channels per session");
                    return self.refuse(seq, ErrorCode::BadRequest, m);
                }
                let mut all = self.shared.channels.lock();
                if !all.contains_key(&channel) && all.len() >= super::CHANNELS_PER_GATEWAY_MAX {
                    drop(all);
                    let m = "this gateway has subscribers in too many channels";
                    return self.refuse(seq, ErrorCode::BadRequest, m);
                }
                let subs = all.entry(channel).or_default();
                let first = subs.is_empty();
                subs.insert(self.handle.id, self.handle.clone());
                drop(all);
                self.channels.push(channel);
                if let (true, Some(c)) = (first, &self.shared.center) {
                    let _ = c.try_send(CenterCmd::Channel { channel, on: true });
                }
                self.ack(seq);
            }
            CenterRequest::Unsubscribe { channel } => {
                if let Some(i) = self.channels.iter().position(|c| *c == channel) {
                    self.channels.swap_remove(i);
                    self.unsubscribe_now(channel);
                }
                self.ack(seq);
            }
            CenterRequest::Say { to, text } => {
                if text.len() > CHAT_TEXT_BYTES_MAX {
                    let m = format!("a message holds at most {CHAT_TEXT_BYTES_MAX} bytes");
                    return self.refuse(seq, ErrorCode::BadRequest, m);
                }
                if let SayTo::Channel(c) = to {
                    if !self.channels.contains(&c) {
                        let m = format!("subscribe to channel {c} before talking in it");
                        return self.refuse(seq, ErrorCode::BadRequest, m);
                    }
                }
                let Some(center) = &self.shared.center else {
                    let m = "this gateway has no center server: no messages";
                    return self.refuse(seq, ErrorCode::Unavailable, m);
                };
                let cmd = CenterCmd::Say {
                    session: self.handle.clone(),
                    seq,
                    to,
                    text,
                };
                match center.try_send(cmd) {
                    Ok(()) => self.in_flight = Some(seq),
                    Err(_) => self.refuse(
                        seq,
                        ErrorCode::Unavailable,
                        "the gateway's link to the center is overloaded; retry",
                    ),
                }
            }
        }
    }

    /// Leaves a channel's fan-out; the gateway's last subscriber tells the center.
    fn unsubscribe_now(&self, channel: u32) {
        let mut all = self.shared.channels.lock();
        let last = match all.get_mut(&channel) {
            Some(subs) => {
                subs.remove(&self.handle.id);
                subs.is_empty()
            }
            None => false,
        };
        if last {
            all.remove(&channel);
            drop(all);
            if let Some(c) = &self.shared.center {
                let _ = c.try_send(CenterCmd::Channel { channel, on: false });
            }
        }
    }
}
