//! The gateway's link to the center pair ([`crate::center::link`]): finds the
//! master, registers every login and waits for its answer, re-syncs after a
//! failover, and fans the center's notices out to the local sessions.
//!
//! One task holds it all (logins not yet answered, admitted sessions,
//! messages waiting for `Said`), so the order of the link is the order of
//! the bookkeeping: a Kick for an old session is handled before the
//! Admitted of its successor that came after it.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::pair::{LINK_BACKOFF_FIRST_MS, LINK_BACKOFF_MAX_MS};
use super::session::{reply_frame, Effect, Out, SessionHandle};
use super::stats::GatewayStats;
use super::Shared;
use crate::center::link::{
    FromCenter, Held, Login, Targets, ToCenter, CENTER_FRAME_BYTES_MAX, CENTER_LINK_VERSION,
};
use crate::proto::frame::{self, Frame, Kind};
use crate::proto::msg::{self, Answer, ErrorCode, Fail, Push, SayTo};
use crate::token;

/// Commands queued to the center link (logins, logouts, messages).
pub const CENTER_QUEUE_CMDS_MAX: usize = 65_536;
/// A silent center link is probed after `link_dead_ms` / this.
const PROBES_PER_DEAD: u32 = 4;

/// What sessions tell the center link.
#[derive(Debug)]
pub(crate) enum CenterCmd {
    /// Register this authenticated session; the answer comes as
    /// `Out::Queued` / `Out::Admitted`, or a close.
    Login {
        session: Arc<SessionHandle>,
        addr: IpAddr,
    },
    /// The session ended (admitted or still waiting).
    Logout { session: Arc<SessionHandle> },
    /// A player's message; the answer comes as `Out::Answered`.
    Say {
        session: Arc<SessionHandle>,
        seq: u32,
        to: SayTo,
        text: String,
    },
    /// The gateway's first subscriber of a channel came (`on`) or its last left.
    Channel { channel: u32, on: bool },
}

struct Pending {
    session: Arc<SessionHandle>,
    login: Login,
    /// The center answered Queued (so it is in the center's queue).
    queued: bool,
}

type Connecting =
    Pin<Box<dyn Future<Output = Result<(TcpStream, BytesMut), Option<String>>> + Send>>;

pub(crate) struct CenterLink {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<CenterCmd>,
    nodes: Vec<String>,
    attempt: usize,
    backoff: Duration,
    next_attempt: Instant,
    connecting: Option<Connecting>,
    rd: Option<OwnedReadHalf>,
    wr: Option<OwnedWriteHalf>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Logins not answered with Admitted or Refused, by session id.
    pending: HashMap<u64, Pending>,
    /// Admitted sessions, by session id.
    admitted: HashMap<u64, Arc<SessionHandle>>,
    /// Messages waiting for `Said`, by (session id, seq).
    says: HashMap<(u64, u32), Arc<SessionHandle>>,
    last_rx: Instant,
    probed: bool,
}

impl CenterLink {
    pub(crate) fn new(shared: Arc<Shared>, rx: mpsc::Receiver<CenterCmd>) -> CenterLink {
        let nodes = shared.cfg.center.clone();
        let now = Instant::now();
        CenterLink {
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
            pending: HashMap::new(),
            admitted: HashMap::new(),
            says: HashMap::new(),
            last_rx: now,
            probed: false,
        }
    }

    pub(crate) async fn run(mut self) {
        loop {
            if self.rd.is_none() && self.connecting.is_none() && Instant::now() >= self.next_attempt
            {
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
                        Ok((stream, rbuf)) => self.up(stream, rbuf),
                        Err(hint) => self.failed(hint),
                    }
                }
                r = async { self.rd.as_mut().expect("guarded").read_buf(&mut self.rbuf).await }, if up => match r {
                    Ok(0) | Err(_) => self.down("the center closed the link"),
                    Ok(_) => {
                        (self.last_rx, self.probed) = (Instant::now(), false);
                        self.frames();
                    }
                },
                r = async { self.wr.as_mut().expect("guarded").write_buf(&mut self.wbuf).await }, if writing => {
                    if r.is_err() {
                        self.down("writing to the center failed");
                    }
                }
                _ = tokio::time::sleep_until(timer) => self.probe(),
            }
        }
    }

    fn dead(&self) -> Duration {
        Duration::from_millis(self.shared.cfg.link_dead_ms)
    }

    fn next_timer(&self) -> Instant {
        if self.rd.is_some() {
            return match self.probed {
                false => self.last_rx + self.dead() / PROBES_PER_DEAD,
                true => self.last_rx + self.dead(),
            };
        }
        if self.connecting.is_none() {
            return self.next_attempt;
        }
        Instant::now() + Duration::from_secs(3600)
    }

    fn probe(&mut self) {
        if self.rd.is_none() {
            return;
        }
        let silent = self.last_rx.elapsed();
        if silent >= self.dead() {
            let why = format!("no frame from the center for {} ms", silent.as_millis());
            self.down(&why);
        } else if !self.probed && silent >= self.dead() / PROBES_PER_DEAD {
            self.probed = true;
            self.write(&ToCenter::Ping);
        }
    }

    fn start_connect(&mut self) {
        let addr = self.nodes[self.attempt % self.nodes.len()].clone();
        let hello = encode(&ToCenter::Hello {
            gateway: self.shared.gateway_id,
            zone: self.shared.cfg.zone,
            addr: self.shared.public_addr.clone(),
            version: CENTER_LINK_VERSION,
        });
        let limit = Duration::from_millis(self.shared.cfg.link_connect_timeout_ms);
        debug!(%addr, "connecting to the center");
        self.connecting = Some(Box::pin(async move {
            match tokio::time::timeout(limit, handshake(&addr, hello)).await {
                Ok(r) => r,
                Err(_) => Err(None),
            }
        }));
    }

    fn failed(&mut self, hint: Option<String>) {
        let named = hint
            .as_deref()
            .and_then(|m| self.nodes.iter().position(|n| super::pair::same_addr(n, m)));
        self.attempt = match named {
            Some(i) if i != self.attempt % self.nodes.len() => i,
            _ => (self.attempt + 1) % self.nodes.len(),
        };
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(Duration::from_millis(LINK_BACKOFF_MAX_MS));
    }

    /// Up: Sync what this gateway holds, then re-send the unanswered logins.
    fn up(&mut self, stream: TcpStream, rbuf: BytesMut) {
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        (self.rd, self.wr, self.rbuf) = (Some(rd), Some(wr), rbuf);
        self.wbuf.clear();
        (self.last_rx, self.probed) = (Instant::now(), false);
        self.backoff = Duration::from_millis(LINK_BACKOFF_FIRST_MS);
        GatewayStats::inc(&self.shared.stats.center_connects);
        self.admitted.retain(|_, s| !s.is_gone());
        let admitted: Vec<Held> = self
            .admitted
            .values()
            .map(|s| Held {
                player: s.player,
                session: s.id,
                login: s.login(),
            })
            .collect();
        let waiting = self
            .pending
            .values()
            .filter(|p| p.queued)
            .map(|p| (p.login.player, p.login.session))
            .collect();
        let channels = self.shared.channels.lock().keys().copied().collect();
        info!(addr = %self.nodes[self.attempt % self.nodes.len()], admitted = admitted.len(),
              pending = self.pending.len(), "center link up");
        self.write(&ToCenter::Sync {
            admitted,
            waiting,
            channels,
        });
        let logins: Vec<Login> = self.pending.values().map(|p| p.login.clone()).collect();
        for l in logins {
            self.write(&ToCenter::Login(l));
        }
    }

    fn down(&mut self, why: &str) {
        if self.rd.is_none() {
            return;
        }
        warn!(addr = %self.nodes[self.attempt % self.nodes.len()], why, pending = self.pending.len(), "center link down");
        GatewayStats::inc(&self.shared.stats.center_downs);
        (self.rd, self.wr) = (None, None);
        self.rbuf = BytesMut::new();
        self.wbuf = BytesMut::new();
        self.attempt = (self.attempt + 1) % self.nodes.len();
        self.next_attempt = Instant::now();
        // Messages are not re-sent (a chat line is not worth a duplicate).
        for ((_, seq), s) in self.says.drain() {
            let f = Fail::new(
                ErrorCode::Unavailable,
                "the center server link went down; the message may not have been delivered",
            );
            s.send(
                Out::Answered {
                    frame: Some(reply_frame(seq, &Err(f))),
                    effect: Effect::None,
                },
                &self.shared.stats,
            );
        }
    }

    fn write(&mut self, m: &ToCenter) {
        if self.rd.is_none() {
            return;
        }
        let payload = msg::encode(m);
        frame::encode_parts(
            Kind::ToCenter,
            0,
            0,
            token::now_ms(),
            &payload,
            &mut self.wbuf,
        );
    }

    fn cmd(&mut self, cmd: CenterCmd) {
        match cmd {
            CenterCmd::Login { session, addr } => {
                let login = Login {
                    player: session.player,
                    session: session.id,
                    name: session.name.clone(),
                    kind: session.kind,
                    addr,
                };
                self.write(&ToCenter::Login(login.clone()));
                self.pending.insert(
                    session.id,
                    Pending {
                        session,
                        login,
                        queued: false,
                    },
                );
            }
            CenterCmd::Logout { session } => {
                let known = self.pending.remove(&session.id).is_some()
                    | self.admitted.remove(&session.id).is_some();
                if known {
                    self.write(&ToCenter::Logout {
                        player: session.player,
                        session: session.id,
                    });
                }
            }
            CenterCmd::Say {
                session,
                seq,
                to,
                text,
            } => {
                if self.rd.is_none() {
                    let f = Fail::new(
                        ErrorCode::Unavailable,
                        "the center server cannot be reached right now; retry",
                    );
                    session.send(
                        Out::Answered {
                            frame: Some(reply_frame(seq, &Err(f))),
                            effect: Effect::None,
                        },
                        &self.shared.stats,
                    );
                    return;
                }
                self.write(&ToCenter::Say {
                    from: session.player,
                    name: session.name.clone(),
                    session: session.id,
                    seq,
                    to,
                    text,
                });
                self.says.insert((session.id, seq), session);
            }
            CenterCmd::Channel { channel, on } => match on {
                true => self.write(&ToCenter::Subscribe { channel }),
                false => self.write(&ToCenter::Unsubscribe { channel }),
            },
        }
    }

    fn frames(&mut self) {
        // Bounded: each turn consumes a frame from a finite buffer.
        loop {
            let f = match frame::decode(&mut self.rbuf, CENTER_FRAME_BYTES_MAX) {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => return self.down(&format!("bad frame from the center: {e}")),
            };
            if f.kind != Kind::FromCenter {
                return self.down(&format!("unexpected {:?} frame from the center", f.kind));
            }
            let m: FromCenter = match msg::decode(&f.payload) {
                Ok(m) => m,
                Err(e) => return self.down(&format!("unreadable message from the center: {e}")),
            };
            self.on_message(m);
            if self.rd.is_none() {
                return;
            }
        }
    }

    fn on_message(&mut self, m: FromCenter) {
        let stats = self.shared.stats.clone();
        match m {
            FromCenter::Welcome { .. } | FromCenter::Pong => {}
            FromCenter::NotMaster { master } => {
                self.down("the center node is no longer master");
                if let Some(i) = master
                    .as_deref()
                    .and_then(|m| self.nodes.iter().position(|n| super::pair::same_addr(n, m)))
                {
                    self.attempt = i;
                }
            }
            FromCenter::Admitted {
                player,
                session,
                login,
            } => {
                if let Some(p) = self.pending.remove(&session) {
                    if p.session.is_gone() {
                        self.write(&ToCenter::Logout { player, session });
                        return;
                    }
                    p.session.login.store(login, Relaxed);
                    self.admitted.insert(session, p.session.clone());
                    p.session.send(Out::Admitted, &stats);
                } else if !self.admitted.contains_key(&session) {
                    // Admitted for a session that ended meanwhile.
                    self.write(&ToCenter::Logout { player, session });
                }
            }
            FromCenter::Queued {
                session,
                position,
                of,
                ..
            } => {
                if let Some(p) = self.pending.get_mut(&session) {
                    p.queued = true;
                    p.session.send(Out::Queued { position, of }, &stats);
                }
            }
            FromCenter::Refused { session, fail, .. } => {
                if let Some(p) = self.pending.remove(&session) {
                    GatewayStats::inc(&stats.center_refused);
                    p.session.close(fail.code, fail.message);
                }
            }
            FromCenter::Kick { session, fail, .. } => {
                let s = self
                    .admitted
                    .remove(&session)
                    .or_else(|| self.pending.remove(&session).map(|p| p.session));
                if let Some(s) = s {
                    GatewayStats::inc(&stats.center_kicked);
                    if fail.code == ErrorCode::LoggedInElsewhere {
                        GatewayStats::inc(&stats.logged_in_elsewhere);
                    }
                    s.close(fail.code, fail.message);
                }
            }
            FromCenter::Deliver { targets, notice } => {
                let b = Frame::new(
                    Kind::Push,
                    0,
                    token::now_ms(),
                    Bytes::from(msg::encode(&Push::Notice(notice))),
                )
                .to_bytes();
                let mut n = 0u64;
                let mut push = |s: &Arc<SessionHandle>| {
                    n += s.send(Out::Frame(b.clone()), &stats) as u64;
                };
                match targets {
                    Targets::All => self.shared.players.lock().values().for_each(&mut push),
                    Targets::Players(list) => {
                        let p = self.shared.players.lock();
                        list.iter().filter_map(|id| p.get(id)).for_each(&mut push);
                    }
                    Targets::Channel(c) => {
                        if let Some(subs) = self.shared.channels.lock().get(&c) {
                            subs.values().for_each(&mut push);
                        }
                    }
                }
                stats.notices_pushed.fetch_add(n, Relaxed);
            }
            FromCenter::Said {
                session,
                seq,
                reply,
            } => {
                if let Some(s) = self.says.remove(&(session, seq)) {
                    let reply = reply.map(|()| Answer::Ack);
                    s.send(
                        Out::Answered {
                            frame: Some(reply_frame(seq, &reply)),
                            effect: Effect::None,
                        },
                        &stats,
                    );
                }
            }
        }
    }
}

fn encode(m: &ToCenter) -> Bytes {
    Frame::new(
        Kind::ToCenter,
        0,
        token::now_ms(),
        Bytes::from(msg::encode(m)),
    )
    .to_bytes()
}

/// Connects, says Hello, and reads the answer: `Err(Some(master))` when the
/// node is not master and names the other.
async fn handshake(addr: &str, hello: Bytes) -> Result<(TcpStream, BytesMut), Option<String>> {
    let mut stream = TcpStream::connect(addr).await.map_err(|_| None)?;
    stream.write_all(&hello).await.map_err(|_| None)?;
    let mut rbuf = BytesMut::with_capacity(4096);
    loop {
        if let Some(f) = frame::decode(&mut rbuf, CENTER_FRAME_BYTES_MAX).map_err(|_| None)? {
            if f.kind != Kind::FromCenter {
                return Err(None);
            }
            return match msg::decode::<FromCenter>(&f.payload).map_err(|_| None)? {
                FromCenter::Welcome { .. } => Ok((stream, rbuf)),
                FromCenter::NotMaster { master } => Err(master),
                _ => Err(None),
            };
        }
        if stream.read_buf(&mut rbuf).await.map_err(|_| None)? == 0 {
            return Err(None);
        }
    }
}
