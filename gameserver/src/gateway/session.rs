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
use crate::proto::frame::{Frame, FrameError, Kind};
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
        FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
        FrameError::BadCrc => ErrorCode::BadCrc,
        _ => ErrorCode::BadFrame,
    }
}

/// Sends Bye and closes.
async fn bye<T: FrameIo>(io: &mut T, code: ErrorCode, message: &str) {
    debug!(?code, message, "bye");
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

/// Serves one connection until it ends. The caller counted it in
/// `stats.connections` and this uncounts it.
pub(crate) async fn run<T: FrameIo>(mut io: T, shared: Arc<Shared>, peer: IpAddr) {
    let stats = &shared.stats;
    let claims = match authenticate(&mut io, &shared).await {
        Some(c) => c,
        None => {
            GatewayStats::dec(&stats.connections);
            return;
        }
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
        let ok = admission(&mut io, &shared, center, &handle, &mut rx, peer).await;
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
) -> bool {
    let cmd = CenterCmd::Login {
        session: handle.clone(),
        addr: peer,
    };
    if center.try_send(cmd).is_err() {
        let m = "the gateway's link to the center is overloaded; retry";
        bye(io, ErrorCode::Unavailable, m).await;
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
                bye(io, fail.code, &fail.message).await;
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
                    GatewayStats::inc(&shared.stats.frames_in);
                    match f.kind {
                        Kind::Ping => {
                            let pong = msg::Pong { client_time_ms: f.time_ms };
                            writes.push(Frame::new(Kind::Pong, 0, token::now_ms(), Bytes::from(msg::encode(&pong))).to_bytes());
                        }
                        Kind::Request | Kind::Center => {
                            let fail = Fail::new(ErrorCode::NotAdmitted, "you are waiting in the login queue; requests come after Welcome");
                            writes.push(reply_frame(f.seq, &Err(fail)));
                        }
                        k => {
                            GatewayStats::inc(&shared.stats.errors_frame);
                            bye(io, ErrorCode::BadFrame, &format!("a client does not send {k:?} frames while queued")).await;
                            return false;
                        }
                    }
                }
                Err(ReadError::Closed) => return false,
                Err(ReadError::Text) => {
                    bye(io, ErrorCode::BadFrame, "text messages are refused: send binary frames").await;
                    return false;
                }
                Err(ReadError::Frame(e)) => {
                    GatewayStats::inc(&shared.stats.errors_frame);
                    bye(io, frame_error_code(&e), &e.to_string()).await;
                    return false;
                }
            },
            _ = tick.tick() => {
                if !queued {
                    if Instant::now() >= answer_by {
                        bye(io, ErrorCode::Unavailable, "the center server did not answer the login in time; retry").await;
                        return false;
                    }
                } else if std::mem::take(&mut seen) {
                    idle = 0;
                } else {
                    idle += 1;
                    if idle >= cfg.dead_ticks {
                        GatewayStats::inc(&shared.stats.heartbeat_timeouts);
                        let m = format!("no frame for {} heartbeats of {} ms while queued", idle, hb.as_millis());
                        bye(io, ErrorCode::HeartbeatTimeout, &m).await;
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
async fn authenticate<T: FrameIo>(io: &mut T, shared: &Shared) -> Option<token::Claims> {
    let stats = &shared.stats;
    let limit = Duration::from_millis(shared.cfg.auth_timeout_ms);
    let refuse = |code| {
        GatewayStats::inc(&stats.errors_auth);
        code
    };
    let f = match tokio::time::timeout(limit, io.read_frame()).await {
        Err(_) => {
            let c = refuse(ErrorCode::NotAuthenticated);
            bye(io, c, "no Auth frame in time").await;
            return None;
        }
        Ok(Err(ReadError::Closed)) => return None,
        Ok(Err(ReadError::Text)) => {
            GatewayStats::inc(&stats.errors_frame);
            bye(
                io,
                ErrorCode::BadFrame,
                "text messages are refused: send binary frames",
            )
            .await;
            return None;
        }
        Ok(Err(ReadError::Frame(e))) => {
            GatewayStats::inc(&stats.errors_frame);
            bye(io, frame_error_code(&e), &e.to_string()).await;
            return None;
        }
        Ok(Ok(f)) => f,
    };
    GatewayStats::inc(&stats.frames_in);
    if f.kind != Kind::Auth {
        let c = refuse(ErrorCode::NotAuthenticated);
        bye(io, c, "the first frame must be Auth").await;
        return None;
    }
    let auth: msg::Auth = match msg::decode(&f.payload) {
        Ok(a) => a,
        Err(_) => {
            let c = refuse(ErrorCode::BadFrame);
            bye(io, c, "the Auth payload is unreadable").await;
            return None;
        }
    };
    if auth.client_version < msg::PROTOCOL_VERSION {
        let c = refuse(ErrorCode::UpgradeRequired);
        let m = format!(
            "protocol {} is too old; this gateway speaks {}",
            auth.client_version,
            msg::PROTOCOL_VERSION
        );
        bye(io, c, &m).await;
        return None;
    }
    match token::verify(
        shared.cfg.secret.as_bytes(),
        &auth.token,
        shared.cfg.zone,
        token::now_ms(),
    ) {
        Ok(c) => Some(c),
        Err(fail) => {
            let c = refuse(fail.code);
            bye(io, c, &fail.message).await;
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
}

impl Session {
    async fn serve<T: FrameIo>(&mut self, io: &mut T, mut rx: mpsc::Receiver<Out>) {
        let hb = Duration::from_millis(self.shared.cfg.heartbeat_ms);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + hb, hb);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut seen, mut seen_at_tick, mut idle) = (0u64, 0u64, 0u32);
        let handle = self.handle.clone();
        loop {
            if !self.writes.is_empty() {
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
                let n = self.writes.len() as u64;
                self.shared
                    .stats
                    .frames_out
                    .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                self.writes.clear();
            }
            tokio::select! {
                biased;
                _ = handle.kill.notified() => {
                    let fail = handle.reason.lock().take().unwrap_or_else(|| Fail::new(ErrorCode::Internal, "closed"));
                    rx.close();
                    bye(io, fail.code, &fail.message).await;
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
                r = io.read_frame() => {
                    match r {
                        Ok(f) => {
                            seen += 1;
                            GatewayStats::inc(&self.shared.stats.frames_in);
                            if let Err((code, m)) = self.frame(f) {
                                GatewayStats::inc(&self.shared.stats.errors_frame);
                                let _ = io.write_frames(&self.writes).await;
                                self.writes.clear();
                                rx.close();
                                bye(io, code, &m).await;
                                break;
                            }
                        }
                        Err(ReadError::Closed) => break,
                        Err(ReadError::Text) => {
                            GatewayStats::inc(&self.shared.stats.errors_frame);
                            rx.close();
                            bye(io, ErrorCode::BadFrame, "text messages are refused: send binary frames").await;
                            break;
                        }
                        Err(ReadError::Frame(e)) => {
                            GatewayStats::inc(&self.shared.stats.errors_frame);
                            rx.close();
                            bye(io, frame_error_code(&e), &e.to_string()).await;
                            break;
                        }
                    }
                }
                _ = tick.tick() => {
                    if seen == seen_at_tick {
                        idle += 1;
                        if idle >= self.shared.cfg.dead_ticks {
                            GatewayStats::inc(&self.shared.stats.heartbeat_timeouts);
                            rx.close();
                            let m = format!("no frame for {} heartbeats of {} ms", idle, hb.as_millis());
                            bye(io, ErrorCode::HeartbeatTimeout, &m).await;
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

    /// A frame from the client. `Err`: a protocol violation (Bye, close).
    fn frame(&mut self, f: Frame) -> Result<(), (ErrorCode, String)> {
        match f.kind {
            Kind::Ping => {
                let pong = msg::Pong {
                    client_time_ms: f.time_ms,
                };
                let b = Frame::new(
                    Kind::Pong,
                    0,
                    token::now_ms(),
                    Bytes::from(msg::encode(&pong)),
                )
                .to_bytes();
                self.writes.push(b);
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
        GatewayStats::inc(&self.shared.stats.replies);
        self.writes
            .push(reply_frame(seq, &Err(Fail::new(code, message))));
    }

    fn request(&mut self, f: Frame) {
        let seq = f.seq;
        if seq <= self.last_seq {
            let m = format!(
                "request sequence {seq} is not above the last one, {}",
                self.last_seq
            );
            return self.refuse(seq, ErrorCode::SeqReused, m);
        }
        self.last_seq = seq;
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
                let rooms = self.shared.rooms();
                GatewayStats::inc(&self.shared.stats.replies);
                self.writes
                    .push(reply_frame(seq, &Ok(Answer::Rooms(rooms))));
                continue;
            };
            let Some(pair) = self.shared.pair_of(room) else {
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
        match self.shared.pair_of(room) {
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
