//! The link to one room-server pair (the [`crate::link`] protocol): finds the
//! master, sends requests, re-sends the unanswered ones after a failover,
//! and fans the rooms' events out to the local sessions in the order they
//! arrive.
//!
//! One task per pair holds all of it (pending requests, who is in which
//! room, each room's last forwarded event), so the order of the link is the
//! order of the bookkeeping: a request's events come before its reply, and a
//! session that entered a room gets exactly the events after its snapshot.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::session::{reply_frame, Effect, Out, SessionHandle};
use super::stats::GatewayStats;
use super::Shared;
use crate::link::{FromRoom, ToRoom, LINK_VERSION};
use crate::proto::frame::{self, Frame, Kind};
use crate::proto::msg::{self, Answer, ErrorCode, Fail, Push, Request, RoomInfo};
use crate::token;

/// First wait before trying a node again; doubles per failed attempt.
pub const LINK_BACKOFF_FIRST_MS: u64 = 5;
/// Longest wait between two attempts.
pub const LINK_BACKOFF_MAX_MS: u64 = 200;
/// Commands queued to one link (requests of sessions, departures).
pub const LINK_QUEUE_CMDS_MAX: usize = 65_536;
/// A silent link is probed after `link_dead_ms` / this.
const LINK_PROBES_PER_DEAD: u32 = 4;
/// The rooms list is asked again at most this often.
pub const ROOMS_REFRESH_MS: u64 = 1000;

/// What sessions tell a link.
#[derive(Debug)]
pub(crate) enum LinkCmd {
    /// Send this request of the session; `internal`: the gateway's own (its
    /// answer is not for the client).
    Request {
        session: Arc<SessionHandle>,
        seq: u32,
        req: Request,
        internal: bool,
    },
    /// The session ended: take it out of the rooms' fan-out.
    Gone { session: u64 },
    /// Ask the pair for its rooms again.
    RefreshRooms,
}

/// What the sessions read about a pair without asking its task.
#[derive(Debug)]
pub(crate) struct PairHandle {
    pub(crate) tx: mpsc::Sender<LinkCmd>,
    /// The rooms as the pair last told them, and when.
    pub(crate) rooms: parking_lot::Mutex<(Vec<RoomInfo>, Option<std::time::Instant>)>,
}

struct Pending {
    session: Arc<SessionHandle>,
    seq: u32,
    req: Request,
    internal: bool,
    /// Encoded ToRoom::Request, kept for re-sending.
    wire: Bytes,
    since: Instant,
}

struct Member {
    session: Arc<SessionHandle>,
    /// Events up to this sequence were in the session's snapshot.
    after: u64,
}

/// One room's fan-out on this gateway.
struct Fan {
    last_seq: u64,
    members: HashMap<u64, Member>,
    /// A Subscribe to fill a gap was sent and not yet answered by progress.
    gap_asked: bool,
}

type Connecting = Pin<Box<dyn Future<Output = Result<Up, Option<String>>> + Send>>;

struct Up {
    stream: TcpStream,
    rbuf: BytesMut,
    rooms: Vec<RoomInfo>,
    node: u64,
}

pub(crate) struct Link {
    idx: usize,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<LinkCmd>,
    nodes: Vec<String>,
    /// The node tried next.
    attempt: usize,
    backoff: Duration,
    next_attempt: Instant,
    connecting: Option<Connecting>,
    rd: Option<OwnedReadHalf>,
    wr: Option<OwnedWriteHalf>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Since when no master has been reachable (`None`: up).
    down_since: Option<Instant>,
    /// Unanswered requests in the order first sent, and where each is.
    pending: BTreeMap<u64, Pending>,
    by_key: HashMap<(u64, u32), u64>,
    next_order: u64,
    rooms: HashMap<u32, Fan>,
    rooms_asked: Option<Instant>,
    /// When the room server last sent something: a link silent for
    /// `link_dead_ms` is dead (a frozen master that never closes it).
    last_rx: Instant,
    /// A probe (ToRoom::Rooms) went out since `last_rx`.
    probed: bool,
}

impl Link {
    pub(crate) fn new(idx: usize, shared: Arc<Shared>, rx: mpsc::Receiver<LinkCmd>) -> Link {
        let nodes = shared.cfg.pairs[idx].nodes.clone();
        let now = Instant::now();
        Link {
            idx,
            shared,
            rx,
            nodes,
            attempt: 0,
            backoff: Duration::from_millis(LINK_BACKOFF_FIRST_MS),
            next_attempt: now,
            connecting: None,
            rd: None,
            wr: None,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            down_since: Some(now),
            pending: BTreeMap::new(),
            by_key: HashMap::new(),
            next_order: 0,
            rooms: HashMap::new(),
            rooms_asked: None,
            last_rx: now,
            probed: false,
        }
    }

    pub(crate) async fn run(mut self) {
        loop {
            let now = Instant::now();
            if self.rd.is_none() && self.connecting.is_none() && now >= self.next_attempt {
                self.start_connect();
            }
            let timer = self.next_timer();
            let up = self.rd.is_some();
            let writing = up && !self.wbuf.is_empty();
            tokio::select! {
                biased;
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => self.cmd(cmd),
                    None => return,
                },
                r = async { self.connecting.as_mut().expect("guarded").await }, if self.connecting.is_some() => {
                    self.connecting = None;
                    match r {
                        Ok(up) => self.up(up),
                        Err(hint) => self.failed(hint),
                    }
                }
                r = async { self.rd.as_mut().expect("guarded").read_buf(&mut self.rbuf).await }, if up => match r {
                    Ok(0) | Err(_) => self.down("the room server closed the link"),
                    Ok(_) => {
                        (self.last_rx, self.probed) = (Instant::now(), false);
                        self.frames()
                    }
                },
                r = async { self.wr.as_mut().expect("guarded").write_buf(&mut self.wbuf).await }, if writing => {
                    if r.is_err() {
                        self.down("writing to the room server failed");
                    }
                }
                _ = tokio::time::sleep_until(timer) => {
                    self.probe();
                    self.expire();
                }
            }
        }
    }

    /// When something is due: the next connect attempt, or the first
    /// waiting request's Unavailable deadline.
    fn next_timer(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let Some(since) = self.down_since else {
            let dead = self.link_dead();
            return match self.probed {
                false => self.last_rx + dead / LINK_PROBES_PER_DEAD,
                true => self.last_rx + dead,
            };
        };
        let mut t = far;
        if self.connecting.is_none() {
            t = t.min(self.next_attempt);
        }
        if let Some(p) = self.pending.values().next() {
            t = t.min(p.since.max(since) + self.unavailable_after());
        }
        t
    }

    fn link_dead(&self) -> Duration {
        Duration::from_millis(self.shared.cfg.link_dead_ms)
    }

    /// Up and silent: probe, and after `link_dead_ms` give the link up.
    fn probe(&mut self) {
        if self.rd.is_none() {
            return;
        }
        let silent = self.last_rx.elapsed();
        if silent >= self.link_dead() {
            let why = format!(
                "no frame from the room server for {} ms",
                silent.as_millis()
            );
            self.down(&why);
        } else if !self.probed && silent >= self.link_dead() / LINK_PROBES_PER_DEAD {
            self.probed = true;
            self.rooms_asked = Some(Instant::now());
            self.write(&ToRoom::Rooms);
        }
    }

    fn unavailable_after(&self) -> Duration {
        Duration::from_millis(self.shared.cfg.unavailable_after_ms)
    }

    /// Fails the requests that waited for a master too long.
    fn expire(&mut self) {
        let Some(since) = self.down_since else { return };
        let now = Instant::now();
        let limit = self.unavailable_after();
        while let Some((&order, p)) = self.pending.iter().next() {
            if p.since.max(since) + limit > now {
                break;
            }
            let p = self.pending.remove(&order).expect("present");
            self.by_key.remove(&(p.session.player, p.seq));
            GatewayStats::inc(&self.shared.stats.unavailable);
            let fail = Fail::new(
                ErrorCode::Unavailable,
                format!(
                    "no room server of this room answered for {} ms; the request may or may not have been done",
                    limit.as_millis()
                ),
            );
            let frame = (!p.internal).then(|| reply_frame(p.seq, &Err(fail)));
            p.session.send(
                Out::Answered {
                    frame,
                    effect: Effect::None,
                },
                &self.shared.stats,
            );
        }
    }

    fn start_connect(&mut self) {
        let addr = self.nodes[self.attempt % self.nodes.len()].clone();
        let hello = encode(&ToRoom::Hello {
            gateway: self.shared.gateway_id,
            version: LINK_VERSION,
        });
        let limit = Duration::from_millis(self.shared.cfg.link_connect_timeout_ms);
        let max = self.shared.cfg.frame_bytes_max.max(LINK_FRAME_BYTES_MIN);
        debug!(pair = self.idx, %addr, "connecting");
        self.connecting = Some(Box::pin(async move {
            match tokio::time::timeout(limit, handshake(&addr, hello, max)).await {
                Ok(r) => r,
                Err(_) => Err(None),
            }
        }));
    }

    /// An attempt failed: the next node (or the one named master), later.
    fn failed(&mut self, hint: Option<String>) {
        let named = hint
            .as_deref()
            .and_then(|m| self.nodes.iter().position(|n| same_addr(n, m)));
        self.attempt = match named {
            Some(i) if i != self.attempt % self.nodes.len() => i,
            _ => (self.attempt + 1) % self.nodes.len(),
        };
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(Duration::from_millis(LINK_BACKOFF_MAX_MS));
    }

    fn up(&mut self, up: Up) {
        let Up {
            stream,
            rbuf,
            rooms,
            node,
        } = up;
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        (self.rd, self.wr, self.rbuf) = (Some(rd), Some(wr), rbuf);
        self.wbuf.clear();
        (self.last_rx, self.probed) = (Instant::now(), false);
        let down_ms = self
            .down_since
            .take()
            .map(|t| t.elapsed().as_millis() as u64)
            .unwrap_or(0);
        self.backoff = Duration::from_millis(LINK_BACKOFF_FIRST_MS);
        GatewayStats::inc(&self.shared.stats.link_connects);
        info!(pair = self.idx, node, addr = %self.nodes[self.attempt % self.nodes.len()], down_ms,
              resubscribe = self.rooms.len(), resend = self.pending.len(), "link up");
        self.set_rooms(rooms);
        // Resume: first the rooms with local sessions, from what they have,
        // then the unanswered requests in the order they were first sent.
        let subs: Vec<(u32, u64)> = self.rooms.iter().map(|(r, f)| (*r, f.last_seq)).collect();
        for (room, after) in subs {
            self.write(&ToRoom::Subscribe { room, after });
            if let Some(f) = self.rooms.get_mut(&room) {
                f.gap_asked = false;
            }
        }
        let n = self.pending.len() as u64;
        for p in self.pending.values() {
            self.wbuf.extend_from_slice(&p.wire);
        }
        self.shared
            .stats
            .resent_requests
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn down(&mut self, why: &str) {
        if self.rd.is_none() {
            return;
        }
        warn!(pair = self.idx, addr = %self.nodes[self.attempt % self.nodes.len()], why, pending = self.pending.len(), "link down");
        GatewayStats::inc(&self.shared.stats.link_downs);
        (self.rd, self.wr) = (None, None);
        self.rbuf = BytesMut::new();
        self.wbuf = BytesMut::new();
        self.down_since = Some(Instant::now());
        // The master is gone: the other node is the likely new one; try it now.
        self.attempt = (self.attempt + 1) % self.nodes.len();
        self.next_attempt = Instant::now();
    }

    fn write(&mut self, m: &ToRoom) {
        let payload = msg::encode(m);
        frame::encode_parts(
            Kind::ToRoom,
            0,
            0,
            token::now_ms(),
            &payload,
            &mut self.wbuf,
        );
    }

    fn set_rooms(&self, rooms: Vec<RoomInfo>) {
        *self.shared.pairs[self.idx].rooms.lock() = (rooms, Some(std::time::Instant::now()));
    }

    fn cmd(&mut self, cmd: LinkCmd) {
        match cmd {
            LinkCmd::Request {
                session,
                seq,
                req,
                internal,
            } => {
                let wire = encode(&ToRoom::Request {
                    player: session.player,
                    // Unique across gateways (their ids are random), stable
                    // across the re-sends of this session's requests.
                    session: self.shared.gateway_id ^ session.id,
                    seq,
                    name: session.name.clone(),
                    req: req.clone(),
                    login: session.login(),
                });
                if self.rd.is_some() {
                    self.wbuf.extend_from_slice(&wire);
                }
                let order = self.next_order;
                self.next_order += 1;
                if let Some(old) = self.by_key.insert((session.player, seq), order) {
                    // A newer session of the player re-used the key: the
                    // answer goes to the newer one.
                    self.pending.remove(&old);
                }
                self.pending.insert(
                    order,
                    Pending {
                        session,
                        seq,
                        req,
                        internal,
                        wire,
                        since: Instant::now(),
                    },
                );
            }
            LinkCmd::Gone { session } => {
                let rooms: Vec<u32> = self.rooms.keys().copied().collect();
                for r in rooms {
                    self.leave(r, session);
                }
            }
            LinkCmd::RefreshRooms => {
                let due = self
                    .rooms_asked
                    .is_none_or(|t| t.elapsed() >= Duration::from_millis(ROOMS_REFRESH_MS));
                if self.rd.is_some() && due {
                    self.rooms_asked = Some(Instant::now());
                    self.write(&ToRoom::Rooms);
                }
            }
        }
    }

    /// Takes `session` out of `room`'s fan-out; the last one unsubscribes.
    fn leave(&mut self, room: u32, session: u64) {
        let Some(f) = self.rooms.get_mut(&room) else {
            return;
        };
        if f.members.remove(&session).is_some() && f.members.is_empty() {
            self.rooms.remove(&room);
            if self.rd.is_some() {
                self.write(&ToRoom::Unsubscribe { room });
            }
        }
    }

    /// Decodes and handles every whole frame in the read buffer.
    fn frames(&mut self) {
        let max = self.shared.cfg.frame_bytes_max.max(LINK_FRAME_BYTES_MIN);
        // Bounded: each turn consumes a frame from a finite buffer.
        loop {
            let f = match frame::decode(&mut self.rbuf, max) {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => return self.down(&format!("bad frame from the room server: {e}")),
            };
            if f.kind != Kind::FromRoom {
                return self.down(&format!(
                    "unexpected {:?} frame from the room server",
                    f.kind
                ));
            }
            let m: FromRoom = match msg::decode(&f.payload) {
                Ok(m) => m,
                Err(e) => {
                    return self.down(&format!("unreadable message from the room server: {e}"))
                }
            };
            self.on_message(m);
            if self.rd.is_none() {
                return;
            }
        }
    }

    fn on_message(&mut self, m: FromRoom) {
        match m {
            FromRoom::Reply { player, seq, reply } => self.reply(player, seq, reply),
            FromRoom::Events {
                room,
                first_seq,
                events,
            } => self.events(room, first_seq, events),
            FromRoom::Snapshot(s) => self.snapshot(s),
            FromRoom::Rooms(rooms) => self.set_rooms(rooms),
            FromRoom::NotMaster { master } => {
                self.down("the room server is no longer master");
                if let Some(i) = master
                    .as_deref()
                    .and_then(|m| self.nodes.iter().position(|n| same_addr(n, m)))
                {
                    self.attempt = i;
                }
            }
            FromRoom::Welcome { rooms, .. } => self.set_rooms(rooms),
        }
    }

    fn reply(&mut self, player: u64, seq: u32, reply: msg::Reply) {
        let Some(order) = self.by_key.remove(&(player, seq)) else {
            debug!(
                player,
                seq, "reply to no pending request (answered already or timed out)"
            );
            return;
        };
        let p = self
            .pending
            .remove(&order)
            .expect("by_key and pending agree");
        let effect = match (&p.req, &reply) {
            (Request::Enter { .. }, Ok(Answer::Entered(snap))) => {
                // The room server leaves the player's other room of this pair.
                let others: Vec<u32> = self
                    .rooms
                    .keys()
                    .copied()
                    .filter(|r| *r != snap.room)
                    .collect();
                for r in others {
                    self.leave(r, p.session.id);
                }
                self.join(&p.session, snap.room, snap.seq);
                Effect::Entered(snap.room)
            }
            (Request::Leave { room }, Ok(_)) => {
                self.leave(*room, p.session.id);
                Effect::Left(*room)
            }
            _ => Effect::None,
        };
        // The room server subscribes a link to a room on any request for it:
        // a room without local sessions is unsubscribed again.
        if let Some(room) = p.req.room().filter(|r| !self.rooms.contains_key(r)) {
            if self.rd.is_some() {
                self.write(&ToRoom::Unsubscribe { room });
            }
        }
        let frame = (!p.internal).then(|| reply_frame(p.seq, &reply));
        p.session
            .send(Out::Answered { frame, effect }, &self.shared.stats);
    }

    /// Adds a session to a room's fan-out after its snapshot at `seq`.
    fn join(&mut self, session: &Arc<SessionHandle>, room: u32, seq: u64) {
        if session.is_gone() {
            return;
        }
        let first = !self.rooms.contains_key(&room);
        let f = self.rooms.entry(room).or_insert_with(|| Fan {
            last_seq: seq,
            members: HashMap::new(),
            gap_asked: false,
        });
        // Not `last_seq = max(last_seq, seq)` for a room with sessions: the
        // snapshot may hold events the link has yet to carry, and the
        // sessions already in the room need them. The new one skips them
        // (`after`).
        f.members.insert(
            session.id,
            Member {
                session: session.clone(),
                after: seq,
            },
        );
        if first && self.rd.is_some() {
            self.write(&ToRoom::Subscribe { room, after: seq });
        }
    }

    /// The room as of `s.seq` (a gap the room server could not fill with events).
    fn snapshot(&mut self, s: msg::RoomSnapshot) {
        let room = s.room;
        let Some(f) = self.rooms.get_mut(&room) else {
            return;
        };
        if s.seq < f.last_seq {
            return; // older than what was forwarded already
        }
        f.last_seq = s.seq;
        f.gap_asked = false;
        let seq = s.seq;
        let b = push_frame(&Push::Snapshot(s));
        let stats = &self.shared.stats;
        f.members.retain(|_, m| {
            if m.after >= seq {
                return true;
            }
            m.after = seq;
            GatewayStats::inc(&stats.snapshots_forwarded);
            m.session.send(Out::Frame(b.clone()), stats)
        });
        if f.members.is_empty() {
            self.rooms.remove(&room);
            self.write(&ToRoom::Unsubscribe { room });
        }
    }

    fn events(&mut self, room: u32, first_seq: u64, events: Vec<msg::RoomEvent>) {
        let Some(f) = self.rooms.get_mut(&room) else {
            return;
        };
        let stats = &self.shared.stats;
        let mut ask = None;
        for (i, event) in events.into_iter().enumerate() {
            let seq = first_seq + i as u64;
            if seq <= f.last_seq {
                GatewayStats::inc(&stats.duplicate_events);
                continue;
            }
            if seq > f.last_seq + 1 {
                if !f.gap_asked {
                    f.gap_asked = true;
                    GatewayStats::inc(&stats.gaps);
                    ask = Some(f.last_seq);
                }
                break;
            }
            f.last_seq = seq;
            f.gap_asked = false;
            GatewayStats::inc(&stats.events_forwarded);
            let b = push_frame(&Push::Event { room, seq, event });
            f.members
                .retain(|_, m| m.after >= seq || m.session.send(Out::Frame(b.clone()), stats));
        }
        let empty = f.members.is_empty();
        if let Some(after) = ask {
            debug!(
                pair = self.idx,
                room, after, "gap in the room's events: subscribing again"
            );
            self.write(&ToRoom::Subscribe { room, after });
        }
        if empty {
            self.rooms.remove(&room);
            self.write(&ToRoom::Unsubscribe { room });
        }
    }
}

/// A link carries snapshots of full rooms: never refuse them for the
/// client frame limit.
const LINK_FRAME_BYTES_MIN: usize = 1 << 20;

fn encode(m: &ToRoom) -> Bytes {
    Frame::new(
        Kind::ToRoom,
        0,
        token::now_ms(),
        Bytes::from(msg::encode(m)),
    )
    .to_bytes()
}

fn push_frame(p: &Push) -> Bytes {
    Frame::new(Kind::Push, 0, token::now_ms(), Bytes::from(msg::encode(p))).to_bytes()
}

/// Two `host:port` spellings of one address.
pub(crate) fn same_addr(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (
        a.parse::<std::net::SocketAddr>(),
        b.parse::<std::net::SocketAddr>(),
    ) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Connects, says Hello, and reads the node's answer: `Err(Some(master))`
/// when it is not master and knows who is.
async fn handshake(addr: &str, hello: Bytes, max: usize) -> Result<Up, Option<String>> {
    let mut stream = TcpStream::connect(addr).await.map_err(|_| None)?;
    stream.write_all(&hello).await.map_err(|_| None)?;
    let mut rbuf = BytesMut::with_capacity(4096);
    loop {
        if let Some(f) = frame::decode(&mut rbuf, max).map_err(|_| None)? {
            if f.kind != Kind::FromRoom {
                return Err(None);
            }
            return match msg::decode::<FromRoom>(&f.payload).map_err(|_| None)? {
                FromRoom::Welcome { node, rooms } => Ok(Up {
                    stream,
                    rbuf,
                    rooms,
                    node,
                }),
                FromRoom::NotMaster { master } => Err(master),
                _ => Err(None),
            };
        }
        if stream.read_buf(&mut rbuf).await.map_err(|_| None)? == 0 {
            return Err(None);
        }
    }
}
