//! Deterministic simulation of a whole pair: two nodes and their witness, each
//! node running the real decisions and machines its driver runs —
//! `proto::role` (what a session's end means, whether to take over, what a
//! Welcome allows, the master's lease, its renewals and its calls to the
//! peer), `proto::election` (settlement, the promotion policy, epochs),
//! `proto::catchup::decide` (the handshake), `proto::stream::{MasterStream,
//! SlaveStream}` (the session) and `proto::witness::Witness` — over two real
//! logs (`hs::log::Log`, each on its own `MemStorage` disk), with virtual time,
//! a seeded scheduler and a simulated network.
//!
//! What the simulation adds of its own is the plumbing `node/` does with
//! sockets and tasks: connecting, the frames in flight, the timers.
//!
//! Faults: a node's process killed (its sockets close: the peer and the
//! witness see it) or its power cut (nothing is said: silence; unsynced pages
//! and directory entries lost), each followed by a restart; partitions between
//! any two of the three, one-way too (a blocked direction holds its frames, as
//! TCP does, until the connection times out); a filter on a node's host that
//! refuses every connection to it while it lives; frames duplicated,
//! reordered and dropped (the receiver must end the session); syncs that fail; a full
//! disk; planned switchovers; the witness restarting with nothing remembered.
//!
//! After every step it checks:
//! 1. never two nodes that accept writes at the same instant (master, up, and
//!    within a lease), and never one epoch taken by both nodes;
//! 2. no write acknowledged at `Received` is lost: every master, when it takes
//!    over and when a slave says Hello, holds every acknowledged record;
//!    an ack never names more than the slave's log holds;
//! 3. a slave in session holds a prefix of its master's log;
//! 4. each node's application state equals a replay of its log, and no
//!    log says more is flushed than it holds;
//! 5. at the end, with faults stopped, one master serves within a bounded time
//!    and its slave catches up: equal logs and equal states.
//!
//! A failure prints the seed and the step; `HS_SIM_SEED=<n>` replays it,
//! `HS_SIM_SEEDS=<n>` runs more.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hs::log::mem::{Crash, Faults, MemStorage, Rng};
use hs::log::snapshot::Snapshot;
use hs::log::{for_each_checked, Log, LogConfig, Preparer};
use hs::node::witness::hold_for;
use hs::proto::catchup::{decide, Decision, MasterView, SlaveView};
use hs::proto::election::{Cause, Rank};
use hs::proto::frame::{Action, Frame};
use hs::proto::role::{
    accept_welcome, after_call, after_probe, after_renewal, after_session, consider, may_fence,
    promotion_granted, retry_wait, should_call_peer, witness_epoch_seen, AfterSession, Follow,
    Heard, Lease, Probe, Renewal, RoleConfig, SessionEnd, SlaveLog, Step,
};
use hs::proto::stream::{
    MasterConfig, MasterStream, MasterTransmit, Receive, SlaveAction, SlaveConfig, SlaveStream,
    SnapshotReceiver, StreamError,
};
use hs::proto::witness::{LogMark, Reply, Request, Witness};
use hs::Op;

const SEGMENT_BYTES: u64 = 4096;
const SEEDS_DEFAULT: u64 = 1000;
const STEPS_DEFAULT: u64 = 1500;
const HEARTBEAT_MS: u64 = 50;
const DEAD_TICKS: u32 = 5;
const PAIR: u64 = 7;
/// The witness's index in the link matrix.
const W: usize = 2;
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(400);
/// How long a planned switchover waits for the slave before giving up.
const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(1);

type State = HashMap<Vec<u8>, Vec<u8>>;

/// Where node `i` serves, as it tells the witness (never connected to).
fn addr(i: usize) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16))
}

fn node_at(a: std::net::SocketAddr) -> usize {
    (a.port() - 10_000) as usize
}

/// `pos` in `log`'s history, as a node tells the witness.
fn mark(log: &Log, pos: u64) -> Option<LogMark> {
    let history = log.meta().history;
    (history != 0).then_some(LogMark { history, pos })
}
type Rec = (u64, u32, Op, Vec<u8>, Vec<u8>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Master,
    Slave,
    Candidate,
}

struct Node {
    id: u64,
    disk: MemStorage,
    log: Arc<Log>,
    /// The application: the fold of every record applied.
    app: State,
    applied: u64,
    up: bool,
    /// A dead node's disk as its crash left it, when it restarts, and the
    /// tail its log must reopen at (at least).
    restart: Option<(Instant, MemStorage, u64)>,
    role: Role,
    lease: Lease,
    /// The node's clock readings of what it heard (global virtual ns).
    last_master_frame: u64,
    master_called: u64,
    handed_over: u64,
    last_slave_frame: u64,
    followed_before: bool,
    /// The highest epoch the witness said it holds (this process's life).
    witness_epoch: u32,
    next_try: Instant,
    backoff: Duration,
    /// Master: the next heartbeat tick (witness renewal, call to the peer).
    next_tick: Instant,
    /// Master: when the witness recorded its latest granted renewal (the held link).
    held_renewal: Option<Instant>,
    /// Master: a planned switchover runs since then (writes sealed).
    handing_over: Option<Instant>,
}

fn config(disk: &MemStorage) -> LogConfig {
    LogConfig {
        segment_bytes: SEGMENT_BYTES,
        record_bytes_max: 2048,
        retention_bytes_max: 3 * SEGMENT_BYTES,
        storage: Arc::new(disk.clone()),
        preparer: Preparer::Caller,
        ..LogConfig::new(PathBuf::from("/sim/log"))
    }
}

/// The state a log replays to: its snapshot plus its records.
fn replay(log: &Log) -> Result<State, String> {
    let mut st = log.load_snapshot().map_err(|e| e.to_string())?.state.map;
    log.for_each(log.first(), log.tail(), |r| match r.op {
        Op::Put => {
            st.insert(r.key.to_vec(), r.value.to_vec());
        }
        Op::Delete => {
            st.remove(r.key);
        }
    })
    .map_err(|e| e.to_string())?;
    Ok(st)
}

/// `records`, by position.
fn records_at(log: &Log, from: u64, to: u64) -> BTreeMap<u64, Rec> {
    records(log, from, to)
        .into_iter()
        .map(|r| (r.0, r))
        .collect()
}

fn records(log: &Log, from: u64, to: u64) -> Vec<Rec> {
    let mut out = Vec::new();
    log.for_each(from.max(log.first()), to.min(log.tail()), |r| {
        // `for_each` reads whole chunks: keep to `[from, to)`.
        if r.pos < to {
            out.push((r.pos, r.epoch, r.op, r.key.to_vec(), r.value.to_vec()))
        }
    })
    .expect("read the log");
    out
}

impl Node {
    fn open(id: u64, disk: MemStorage, now: Instant, now_ns: u64) -> Result<Node, String> {
        let (log, _) = Log::open(config(&disk)).map_err(|e| e.to_string())?;
        let app = replay(&log)?;
        let applied = log.tail();
        Ok(Node {
            id,
            disk,
            log,
            app,
            applied,
            up: true,
            restart: None,
            role: Role::Candidate,
            lease: Lease {
                required: true,
                until_ns: 0,
            },
            // A new process has heard nothing, and its clock starts now: a
            // master may still hold a lease on acks of its previous life
            // (`role::consider` waits a whole silence from here).
            last_master_frame: now_ns,
            master_called: 0,
            handed_over: 0,
            last_slave_frame: 0,
            followed_before: false,
            witness_epoch: 0,
            next_try: now,
            backoff: BACKOFF_MIN,
            next_tick: now,
            held_renewal: None,
            handing_over: None,
        })
    }

    fn rank(&self, prefer: bool) -> Rank {
        Rank {
            epoch: self.log.meta().epoch,
            last_epoch: self.log.last_epoch(),
            tail: self.log.tail(),
            prefer_master: prefer,
            node: self.id,
        }
    }
}

#[derive(Debug, Clone)]
enum Msg {
    Frame(Frame),
    /// The sender's end closed the connection (FIN or RST).
    Close,
}

/// One connection: the two halves (each ends on its own) and the bytes in flight.
struct Session {
    master: usize,
    ms: Option<MasterStream>,
    ss: Option<SlaveStream>,
    epoch: u32,
    to_slave: VecDeque<(Instant, Msg)>,
    to_master: VecDeque<(Instant, Msg)>,
    /// A resync: the snapshot's bytes (master side), and the slave's
    /// receiver with what arrived (its snapshot file).
    snapshot: Option<Vec<u8>>,
    rx: Option<(SnapshotReceiver, Vec<u8>)>,
    /// The slave has its starting point (a resync's snapshot is loaded).
    started: bool,
    /// The highest Received ack counted into `Sim::acked`.
    counted: u64,
}

impl Session {
    fn slave(&self) -> usize {
        1 - self.master
    }
}

#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    records: u64,
    sessions: u64,
    promotions: u64,
    step_downs: u64,
    witness_refusals: u64,
    kills: u64,
    power_cuts: u64,
    partitions: u64,
    filters: u64,
    truncations: u64,
    resyncs: u64,
    fenced: u64,
    switchovers: u64,
    disk_full: u64,
    corrupted_streams: u64,
}

struct Sim {
    seed: u64,
    rng: Rng,
    t0: Instant,
    now: Instant,
    cfg: [RoleConfig; 2],
    nodes: Vec<Node>,
    witness: Witness,
    /// `blocked[from][to]`: that direction drops nothing but delivers nothing
    /// (TCP holds its bytes) until healed. Index 2 is the witness.
    blocked: [[bool; 3]; 3],
    /// A filter on the node's host refuses every connection to it.
    filter: [bool; 2],
    session: Option<Session>,
    /// Records acknowledged at Received, by position, with the node that
    /// acknowledged them: no master may lose one (unless that node lost its
    /// page cache in a power cut).
    acked: BTreeMap<u64, (Rec, usize)>,
    /// Which node took each epoch.
    taken: HashMap<u32, usize>,
    /// The highest acknowledged mark the witness was told of (a mirror of
    /// its private state, to tell which acknowledged records it protects).
    witness_acked: Option<LogMark>,
    step: u64,
    trace: VecDeque<String>,
    stats: Stats,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let t0 = Instant::now();
        let mut rng = Rng::new(seed);
        let cfg = |prefer| RoleConfig {
            heartbeat_interval_ms: HEARTBEAT_MS,
            heartbeat_dead_ticks: DEAD_TICKS,
            has_witness: true,
            accept_split_risk: false,
            prefer_master: prefer,
        };
        // Both start empty, as candidates: they settle who serves (node 0
        // is preferred), and the witness grants the first epoch.
        let a = Node::open(1, MemStorage::new(seed), t0, 0).unwrap();
        let b = Node::open(2, MemStorage::new(seed ^ 0xb), t0, 0).unwrap();
        let _ = rng.next_u64();
        Sim {
            seed,
            rng,
            t0,
            now: t0,
            cfg: [cfg(true), cfg(false)],
            nodes: vec![a, b],
            witness: Witness::new(hold_for(HEARTBEAT_MS, DEAD_TICKS)),
            blocked: [[false; 3]; 3],
            filter: [false; 2],
            session: None,
            acked: BTreeMap::new(),
            taken: HashMap::new(),
            witness_acked: None,
            step: 0,
            trace: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    fn ns(&self) -> u64 {
        (self.now - self.t0).as_nanos() as u64
    }

    fn fail(&self, what: String) -> ! {
        let last: Vec<&String> = self.trace.iter().rev().take(24).collect();
        panic!(
            "seed {} step {} (t = {:?}): {what}\nlast steps (newest first): {last:#?}\nreplay: HS_SIM_SEED={} cargo test --release -p hs --test sim_pair",
            self.seed,
            self.step,
            self.now - self.t0,
            self.seed
        );
    }

    fn note(&mut self, s: String) {
        if self.trace.len() > 60 {
            self.trace.pop_front();
        }
        let t = (self.now - self.t0).as_millis();
        self.trace.push_back(format!("{t} ms: {s}"));
    }

    fn latency(&mut self) -> Duration {
        Duration::from_micros(100 + self.rng.below(3000))
    }

    fn link(&self, from: usize, to: usize) -> bool {
        !self.blocked[from][to]
    }

    /// Whether node `i` accepts a write now.
    fn writable(&self, i: usize) -> bool {
        let n = &self.nodes[i];
        n.up && n.role == Role::Master && n.handing_over.is_none() && n.lease.holds(self.ns())
    }

    // ---- the candidate's side --------------------------------------------

    /// A candidate (or a slave whose session ended) connects to its peer.
    fn try_follow(&mut self, i: usize) {
        let j = 1 - i;
        let n = &self.nodes[i];
        if !n.up || n.role == Role::Master || self.now < n.next_try {
            return;
        }
        if self
            .session
            .as_ref()
            .is_some_and(|s| s.slave() == i && s.ss.is_some())
        {
            return;
        }
        let end = if !self.link(i, j) || !self.link(j, i) {
            SessionEnd::ConnectTimeout
        } else if !self.nodes[j].up || self.filter[j] {
            SessionEnd::ConnectRefused
        } else if self.nodes[j].role != Role::Master {
            // The peer answers the Hello with its rank (`answer_hellos`).
            self.remember_peer(i, j);
            SessionEnd::PeerStatus {
                rank: self.nodes[j].rank(self.cfg[j].prefer_master),
                following: self.nodes[j].role == Role::Slave,
            }
        } else {
            match self.handshake(j, i) {
                Ok(()) => return,
                Err(()) => SessionEnd::Other,
            }
        };
        self.decide_next(i, end, false);
    }

    fn remember_peer(&mut self, i: usize, j: usize) {
        let id = self.nodes[j].id;
        if self.nodes[i].log.meta().peer != id {
            let _ = self.nodes[i].log.set_ids(0, id);
        }
    }

    /// A slave's half of a session ended (`connected`: it got past the handshake).
    fn session_ended(&mut self, i: usize, end: SessionEnd) {
        if self.nodes[i].role == Role::Slave {
            self.nodes[i].role = Role::Candidate;
        }
        self.decide_next(i, end, true);
    }

    /// What node `i` does after a session (or an attempt at one) ended:
    /// `role::after_session`, a probe if it says so, then `consider`.
    fn decide_next(&mut self, i: usize, end: SessionEnd, connected: bool) {
        let j = 1 - i;
        let peer_epoch = match end {
            SessionEnd::PeerStatus { rank, .. } => rank.epoch,
            _ => 0,
        };
        let next = after_session(
            end,
            connected,
            self.nodes[i].followed_before,
            self.nodes[i].rank(self.cfg[i].prefer_master),
        );
        let next = match next {
            AfterSession::Probe => {
                let p = if !self.link(i, j) || !self.link(j, i) {
                    Probe::NoAnswer
                } else if !self.nodes[j].up || self.filter[j] {
                    Probe::Refused
                } else {
                    Probe::Answered
                };
                after_probe(p)
            }
            n => n,
        };
        let considered = match next {
            AfterSession::Consider(cause) => {
                if self.try_promote(i, cause, peer_epoch) {
                    return;
                }
                true
            }
            _ => false,
        };
        let n = &mut self.nodes[i];
        let wait = retry_wait(&self.cfg[i], considered, n.backoff, BACKOFF_MIN);
        n.next_try = self.now + wait;
        n.backoff = (n.backoff * 2).min(BACKOFF_MAX);
    }

    fn try_promote(&mut self, i: usize, cause: Cause, peer_epoch: u32) -> bool {
        let now_ns = self.ns();
        let n = &self.nodes[i];
        let heard = Heard {
            now_ns,
            last_master_frame_ns: n.last_master_frame,
            master_called_ns: n.master_called,
            handed_over_ns: n.handed_over,
        };
        let meta = n.log.meta();
        let step = consider(
            &self.cfg[i],
            cause,
            heard,
            meta.epoch.max(peer_epoch).max(n.witness_epoch),
            n.id,
            meta.peer,
        );
        let (epoch, lease_until) = match step {
            Step::Wait(_) | Step::Refuse(_) => return false,
            Step::Promote { epoch } => (epoch, 0),
            Step::AskWitness { epoch, dead } => {
                let reply = self.ask_witness(
                    i,
                    Request::Promote {
                        pair: PAIR,
                        node: self.nodes[i].id,
                        epoch,
                        dead,
                        tail: mark(&self.nodes[i].log, self.nodes[i].log.tail()),
                    },
                );
                let seen = self.nodes[i].witness_epoch;
                self.nodes[i].witness_epoch = witness_epoch_seen(seen, reply.as_ref());
                match promotion_granted(&self.cfg[i], now_ns, reply.as_ref()) {
                    Some(until) => (epoch, until),
                    None => {
                        self.stats.witness_refusals += 1;
                        return false;
                    }
                }
            }
        };
        let log = self.nodes[i].log.clone();
        if log.meta().history == 0 {
            if let Err(e) = log.start_history(0xfa11 + self.seed as u128 + epoch as u128) {
                self.note(format!("node {i} cannot start a history: {e}"));
                return false;
            }
        }
        if let Err(e) = log.set_epoch(epoch).and_then(|_| log.ensure_writable()) {
            self.note(format!("node {i} cannot take epoch {epoch}: {e}"));
            return false;
        }
        // 1: an epoch is taken once, by one node.
        if let Some(&other) = self.taken.get(&epoch) {
            if other != i {
                self.fail(format!("epoch {epoch} taken by node {other} and node {i}"));
            }
        }
        self.taken.insert(epoch, i);
        let n = &mut self.nodes[i];
        n.role = Role::Master;
        n.lease = Lease::start(&self.cfg[i], true, now_ns);
        n.lease.renew(lease_until);
        n.next_tick = self.now;
        n.held_renewal = None;
        n.last_slave_frame = 0;
        self.stats.promotions += 1;
        self.note(format!(
            "node {i} promoted ({cause:?}) at epoch {epoch}, tail {}",
            self.nodes[i].log.tail()
        ));
        self.unreported(i);
        self.check_acked(i, "after its promotion");
        true
    }

    /// A request to the witness and its answer, if both directions carry them.
    /// A promotion that claims the master's port refused is confirmed from the
    /// witness (`node::witness::serve`): its own connection must be refused too.
    fn ask_witness(&mut self, i: usize, req: Request) -> Option<Reply> {
        if !self.link(i, W) {
            return None;
        }
        let req = match req {
            Request::Promote {
                pair,
                node,
                epoch,
                dead: true,
                tail,
            } => {
                // Tried at the address the holder gave in its renewals.
                let holder = self.witness.holder_addr(PAIR).map(node_at);
                let refused_here = holder.is_some_and(|h| {
                    self.link(W, h) && self.link(h, W) && (!self.nodes[h].up || self.filter[h])
                });
                Request::Promote {
                    pair,
                    node,
                    epoch,
                    dead: refused_here,
                    tail,
                }
            }
            r => r,
        };
        let reply = self.witness.handle(self.now, req);
        if let (Request::Renew { acked, .. }, true) = (req, reply.granted) {
            self.nodes[i].held_renewal = Some(self.now);
            // What the witness now knows was acknowledged.
            self.witness_acked = LogMark::higher(self.witness_acked, acked);
        }
        self.link(W, i).then_some(reply)
    }

    // ---- the master's side -----------------------------------------------

    fn step_down(&mut self, i: usize, why: String) {
        let linked = self.link(i, W);
        let n = &mut self.nodes[i];
        if n.role != Role::Master {
            return;
        }
        n.role = Role::Candidate;
        n.handing_over = None;
        n.next_try = self.now;
        n.backoff = BACKOFF_MIN;
        // The renewal task ends: its held link closes from this end.
        if let (Some(at), true) = (n.held_renewal.take(), linked) {
            let epoch = n.log.meta().epoch;
            self.witness.link_closed(PAIR, n.id, epoch, at);
        }
        self.stats.step_downs += 1;
        self.note(format!("node {i} steps down: {why}"));
        if self.session.as_ref().is_some_and(|s| s.master == i) {
            self.close_master_half("the master stepped down");
        }
    }

    /// The master's timers: its lease, its witness renewal and its call to the peer.
    fn master_tick(&mut self, i: usize) {
        let now_ns = self.ns();
        let n = &self.nodes[i];
        if !n.up || n.role != Role::Master {
            return;
        }
        if !n.lease.holds(now_ns) {
            return self.step_down(
                i,
                "lease expired: neither the slave nor the witness confirmed it in time".into(),
            );
        }
        if n.handing_over
            .is_some_and(|t| self.now >= t + SWITCHOVER_TIMEOUT)
        {
            // `Node::switchover` gives up: writes resume.
            self.nodes[i].handing_over = None;
            self.note(format!("node {i}'s switchover timed out"));
        }
        let n = &self.nodes[i];
        if self.now < n.next_tick {
            return;
        }
        self.nodes[i].next_tick = self.now + Duration::from_millis(HEARTBEAT_MS);
        let epoch = self.nodes[i].log.meta().epoch;
        let reply = self.ask_witness(
            i,
            Request::Renew {
                pair: PAIR,
                node: self.nodes[i].id,
                epoch,
                addr: Some(addr(i)),
                acked: {
                    let acked = match &self.session {
                        Some(ss) if ss.master == i && ss.ms.is_some() && ss.started => ss.counted,
                        _ => 0,
                    };
                    mark(&self.nodes[i].log, acked)
                },
            },
        );
        match after_renewal(&self.cfg[i], epoch, now_ns, reply.as_ref()) {
            Renewal::Extend(until) => self.nodes[i].lease.renew(until),
            Renewal::StepDown(why) => return self.step_down(i, why),
            Renewal::Nothing => {}
        }
        let j = 1 - i;
        if !should_call_peer(&self.cfg[i], now_ns, self.nodes[i].last_slave_frame) {
            return;
        }
        if !self.link(i, j) || !self.link(j, i) || !self.nodes[j].up || self.filter[j] {
            return;
        }
        let peer = &self.nodes[j];
        if peer.role == Role::Master {
            // The peer's master handshake takes our Hello (role 1).
            let theirs = peer.log.meta().epoch;
            if epoch > theirs {
                if may_fence(true, false, peer.log.meta().peer, self.nodes[i].id).is_ok() {
                    self.stats.fenced += 1;
                    self.step_down(j, format!("fenced by a Hello of epoch {epoch}"));
                }
            } else if let Some(why) = after_call(epoch, theirs, peer.id) {
                self.step_down(i, why);
            }
        } else {
            // `answer_hellos`: a living master of this pair calls.
            let meta = peer.log.meta();
            if (meta.peer == 0 || meta.peer == self.nodes[i].id) && epoch >= meta.epoch {
                self.nodes[j].master_called = now_ns;
            }
        }
    }

    /// The master `m` takes the Hello of `s`: `decide`, the Welcome, and what
    /// the slave makes of it. `Err`: no session.
    fn handshake(&mut self, m: usize, s: usize) -> Result<(), ()> {
        let (ml, sl) = (self.nodes[m].log.clone(), self.nodes[s].log.clone());
        let (mm, sm) = (ml.meta(), sl.meta());
        if sm.epoch > mm.epoch {
            if let Err(why) = may_fence(true, false, mm.peer, self.nodes[s].id) {
                self.note(format!("master {m} refused a Hello: {why}"));
                return Err(());
            }
        }
        let me = ml.epochs();
        let decision = decide(
            MasterView {
                history: mm.history,
                epoch: mm.epoch,
                epochs: &me,
                first: ml.first(),
                tail: ml.tail(),
            },
            SlaveView {
                history: sm.history,
                epoch: sm.epoch,
                tail: sl.tail(),
                epochs: sl.epochs().as_slice(),
            },
        );
        self.remember_peer(m, s);
        self.remember_peer(s, m);
        let (action, start) = match decision {
            Decision::Fenced { slave_epoch } => {
                self.stats.fenced += 1;
                self.step_down(
                    m,
                    format!("peer has seen epoch {slave_epoch}: this master is stale"),
                );
                return Err(());
            }
            Decision::Continue { from } => (Action::Continue, from),
            Decision::Truncate { to } => (Action::Truncate, to),
            Decision::Resync => (Action::Resync, ml.first()),
        };
        // 2: the master a slave is about to follow holds every acknowledged record.
        self.check_acked(m, "when its slave said Hello");
        let follow = match accept_welcome(
            SlaveLog {
                history: sm.history,
                epoch: sm.epoch,
                tail: sl.tail(),
            },
            mm.history,
            mm.epoch,
            mm.segment_bytes,
            action,
            start,
        ) {
            Ok(f) => f,
            Err(e) => self.fail(format!("the slave refused a Welcome decide() made: {e}")),
        };
        let mut snapshot = None;
        match follow {
            Follow::Adopt => {
                if let Err(e) = sl.adopt_history(mm.history, mm.segment_bytes) {
                    self.note(format!("slave {s} cannot adopt the history: {e}"));
                    return Err(());
                }
            }
            Follow::Continue => {}
            Follow::Truncate => {
                let old = sl.tail();
                if let Err(e) = sl.truncate(start) {
                    self.note(format!("slave {s} truncate to {start} failed: {e}"));
                    self.crash(s, Crash::Process, true);
                    return Err(());
                }
                let n = &mut self.nodes[s];
                n.app = replay(&n.log).unwrap();
                n.applied = start;
                self.stats.truncations += 1;
                self.note(format!("slave {s} cut back from {old} to {start}"));
            }
            Follow::Resync => {
                let src = ml.open_snapshot().unwrap();
                let mut buf = vec![0u8; src.len() as usize];
                src.read_at(0, &mut buf).unwrap();
                self.stats.resyncs += 1;
                snapshot = Some(buf);
            }
        }
        if mm.epoch > sl.meta().epoch {
            if let Err(e) = sl.set_epoch(mm.epoch) {
                self.note(format!("slave {s} set_epoch failed: {e}"));
                return Err(());
            }
        }
        let hb = Duration::from_millis(HEARTBEAT_MS);
        let master = MasterStream::new(
            self.now,
            MasterConfig {
                epoch: mm.epoch,
                heartbeat_interval: hb,
                dead_ticks: DEAD_TICKS,
                catchup_rate_bytes_per_s: if self.rng.below(2) == 0 { 0 } else { 2 << 20 },
                batch_bytes_max: 1024 + self.rng.below(4) as usize * 1024,
                frame_bytes_max: 8192,
                lease: Some(Duration::from_nanos(self.cfg[m].lease_ns())),
            },
            start,
            snapshot.as_ref().map(|b| b.len() as u64),
        );
        let slave = SlaveStream::new(
            self.now,
            SlaveConfig {
                epoch: mm.epoch,
                heartbeat_interval: hb,
                dead_ticks: DEAD_TICKS,
            },
            start,
        );
        // A newcomer replaces the master's previous connection.
        self.session = None;
        self.stats.sessions += 1;
        let now_ns = self.ns();
        let n = &mut self.nodes[s];
        n.role = Role::Slave;
        n.followed_before = true;
        n.backoff = BACKOFF_MIN;
        n.last_master_frame = now_ns;
        self.note(format!(
            "node {s} follows node {m} at epoch {} from {start} ({decision:?})",
            mm.epoch
        ));
        self.session = Some(Session {
            master: m,
            ms: Some(master),
            ss: Some(slave),
            epoch: mm.epoch,
            to_slave: VecDeque::new(),
            to_master: VecDeque::new(),
            started: snapshot.is_none(),
            rx: snapshot.as_ref().map(|b| {
                let rx = SnapshotReceiver::new(mm.epoch, start, b.len() as u64, 1 << 30)
                    .expect("within the limit");
                (rx, Vec::new())
            }),
            snapshot,
            counted: start,
        });
        Ok(())
    }

    /// 2: node `i` holds every acknowledged record from its first position.
    fn check_acked(&self, i: usize, when: &str) {
        let log = &self.nodes[i].log;
        let Some((&last, _)) = self.acked.last_key_value() else {
            return;
        };
        let first = log.first();
        let have = records_at(log, first, last + 1);
        for (pos, (want, _)) in self.acked.range(first..) {
            if have.get(pos) != Some(want) {
                self.fail(format!(
                    "node {i} {when} lacks the record at {pos} (epoch {}) that was acknowledged at Received; its log is [{first}, {}) epochs {:?}",
                    want.1,
                    log.tail(),
                    log.epochs().as_slice()
                ));
            }
        }
    }

    // ---- the session ------------------------------------------------------

    /// The master's half ends: its socket closes (the slave sees it when the
    /// direction carries it).
    fn close_master_half(&mut self, why: &str) {
        let at = self.now + self.latency();
        if let Some(ss) = &mut self.session {
            if ss.ms.take().is_some() {
                ss.to_slave.push_back((at, Msg::Close));
                let m = ss.master;
                self.note(format!("master {m} closed the session: {why}"));
            }
        }
        self.drop_dead_session();
    }

    fn close_slave_half(&mut self, end: SessionEnd, why: String) {
        let at = self.now + self.latency();
        let Some(ss) = &mut self.session else { return };
        if ss.ss.take().is_none() {
            return;
        }
        ss.to_master.push_back((at, Msg::Close));
        let s = ss.slave();
        self.note(format!("slave {s} left the session ({end:?}): {why}"));
        self.drop_dead_session();
        self.session_ended(s, end);
    }

    fn drop_dead_session(&mut self) {
        if self
            .session
            .as_ref()
            .is_some_and(|s| s.ms.is_none() && s.ss.is_none())
        {
            self.session = None;
        }
    }

    fn publish(&mut self) {
        let Some(i) = (0..2).find(|&i| self.writable(i)) else {
            return;
        };
        let key = vec![b'k', self.rng.below(16) as u8];
        let n = self.rng.below(400) as usize;
        let value: Vec<u8> = (0..n)
            .map(|i| (i as u8) ^ (self.rng.below(256) as u8))
            .collect();
        let op = if self.rng.below(8) == 0 {
            Op::Delete
        } else {
            Op::Put
        };
        let m = &mut self.nodes[i];
        if m.log
            .append(op, &key, if op == Op::Delete { &[] } else { &value })
            .is_ok()
        {
            match op {
                Op::Put => {
                    m.app.insert(key, value);
                }
                Op::Delete => {
                    m.app.remove(&key);
                }
            }
            m.applied = m.log.tail();
            self.stats.records += 1;
        }
        if self.rng.below(4) == 0 {
            let _ = self.nodes[i].log.flush();
        }
        if self.rng.below(50) == 0 {
            let _ = self.nodes[i].log.compact();
        }
    }

    /// The master's half: timers, then everything it would send.
    fn drive_master(&mut self) {
        let Some(mut ss) = self.session.take() else {
            return;
        };
        let mi = ss.master;
        let Some(ms) = ss.ms.as_mut() else {
            self.session = Some(ss);
            return;
        };
        let now = self.now;
        if let Err(e) = ms.handle_timeout(now) {
            self.session = Some(ss);
            return self.close_master_half(&format!("{e}"));
        }
        let log = self.nodes[mi].log.clone();
        let mut failed = None;
        let mut handed_over = None;
        let handing_over = self.nodes[mi].handing_over.is_some();
        while let Some(t) = ms.poll_transmit(now, log.tail(), handing_over) {
            let f = match t {
                MasterTransmit::Heartbeat => Frame::Heartbeat {
                    epoch: ss.epoch,
                    tail: log.tail(),
                    flushed: log.flushed(),
                    sent_ns: (now - self.t0).as_nanos() as u64 + 1,
                },
                MasterTransmit::Snapshot { offset, len } => {
                    let src = ss.snapshot.as_ref().expect("snapshot");
                    let b = Bytes::copy_from_slice(&src[offset as usize..(offset + len) as usize]);
                    ms.snapshot_sent(len);
                    Frame::Snapshot { offset, bytes: b }
                }
                MasterTransmit::Data { pos, max_bytes } => {
                    let chunk = match log.read(pos, max_bytes) {
                        Ok(Some(c)) => c,
                        Ok(None) => break,
                        Err(e) => {
                            failed = Some(format!("cannot read at {pos}: {e}"));
                            break;
                        }
                    };
                    let end = chunk.pos + chunk.len as u64;
                    let f = Frame::Data {
                        pos,
                        epoch: ss.epoch,
                        tail: log.tail(),
                        records: Bytes::copy_from_slice(chunk.bytes()),
                    };
                    ms.data_sent(now, pos, end);
                    f
                }
                MasterTransmit::Handover { tail } => {
                    handed_over = Some(tail);
                    Frame::Handover {
                        epoch: ss.epoch,
                        tail,
                    }
                }
            };
            let at = now + Duration::from_micros(100 + self.rng.below(3000));
            // TCP keeps order: a frame never overtakes the one before it.
            let at = ss.to_slave.back().map_or(at, |b| at.max(b.0));
            ss.to_slave.push_back((at, Msg::Frame(f)));
        }
        while ms.poll_event().is_some() {}
        self.session = Some(ss);
        if let Some(why) = failed {
            self.close_master_half(&why);
        }
        if let Some(tail) = handed_over {
            // Sent: this node steps down and will follow the slave.
            self.nodes[mi].handing_over = None;
            self.nodes[mi].handed_over = self.ns();
            self.step_down(mi, format!("planned switchover at {tail}"));
        }
    }

    /// Frames due at the master: the slave's acks.
    fn deliver_to_master(&mut self) {
        let Some(mut ss) = self.session.take() else {
            return;
        };
        let (mi, si) = (ss.master, ss.slave());
        if !self.link(si, mi) || !self.nodes[mi].up {
            self.session = Some(ss);
            return;
        }
        while ss.to_master.front().is_some_and(|f| f.0 <= self.now) {
            let (_, msg) = ss.to_master.pop_front().unwrap();
            let Some(ms) = ss.ms.as_mut() else {
                continue;
            };
            let f = match msg {
                Msg::Close => {
                    ss.ms = None;
                    self.note(format!("master {mi} saw its slave close"));
                    continue;
                }
                Msg::Frame(f) => f,
            };
            self.nodes[mi].last_slave_frame = self.ns();
            let tail = self.nodes[mi].log.tail();
            match ms.handle_frame(&f, tail) {
                Ok(Some(until)) => self.nodes[mi].lease.renew(until),
                Ok(None) => {}
                Err(e) => {
                    self.session = Some(ss);
                    return self.close_master_half(&format!("refused a frame: {e}"));
                }
            }
            let (received, _, _) = ms.acked();
            // 2: an ack never names more than the slave's log holds (a slave
            // process crash keeps what it had; a power cut ends the session).
            let slave_tail = self.nodes[si].log.tail();
            if ss.started && received > slave_tail {
                self.fail(format!(
                    "master {mi} holds an ack of {received} but the slave's log ends at {slave_tail}"
                ));
            }
            if ss.started && received > ss.counted {
                for r in records(&self.nodes[mi].log, ss.counted, received) {
                    self.acked.insert(r.0, (r, si));
                }
                ss.counted = received;
            }
        }
        self.session = Some(ss);
        self.drop_dead_session();
    }

    /// Frames due at the slave, then its timers and its ack.
    fn deliver_to_slave(&mut self) {
        let Some(mut ss) = self.session.take() else {
            return;
        };
        let (mi, si) = (ss.master, ss.slave());
        if ss.ss.is_none() || !self.nodes[si].up {
            self.session = Some(ss);
            return;
        }
        let mut ended: Option<(SessionEnd, String)> = None;
        while self.link(mi, si) && ss.to_slave.front().is_some_and(|f| f.0 <= self.now) {
            let (_, msg) = ss.to_slave.pop_front().unwrap();
            let f = match msg {
                Msg::Close => {
                    ended = Some((SessionEnd::Closed, "the master closed".into()));
                    break;
                }
                Msg::Frame(f) => f,
            };
            self.nodes[si].last_master_frame = self.ns();
            if let Some((rx, file)) = ss.rx.as_mut() {
                // A resync: `SnapshotReceiver` says what to do with each frame.
                match rx.handle_frame(f) {
                    Ok(Receive::Piece(bytes)) => file.extend_from_slice(&bytes),
                    Ok(Receive::Echo(ack)) => {
                        let at = self.now + self.latency();
                        let at = ss.to_master.back().map_or(at, |b| at.max(b.0));
                        ss.to_master.push_back((at, Msg::Frame(ack)));
                    }
                    Ok(Receive::Hold(_)) => unreachable!("the simulation loads at once"),
                    Err(e) => {
                        ended = Some((SessionEnd::Other, e.to_string()));
                        break;
                    }
                }
                if rx.is_complete() {
                    let ack = rx.loaded_ack();
                    let got = std::mem::take(file);
                    ss.rx = None;
                    let snap = Snapshot::decode(&got).expect("the master's snapshot");
                    let node = &mut self.nodes[si];
                    if let Err(e) = node.log.reset_to(&snap, &got, SEGMENT_BYTES) {
                        self.note(format!("slave {si} reset failed: {e}"));
                        self.session = Some(ss);
                        return self.crash(si, Crash::Process, true);
                    }
                    node.app = snap.state.map.clone();
                    node.applied = snap.pos;
                    ss.started = true;
                    let at = self.now + self.latency();
                    let at = ss.to_master.back().map_or(at, |b| at.max(b.0));
                    ss.to_master.push_back((at, Msg::Frame(ack)));
                    self.note(format!("slave {si} resynced at {}", snap.pos));
                }
                continue;
            }
            let node = &self.nodes[si];
            let sl = ss.ss.as_mut().expect("checked above");
            match sl.handle_frame(f, node.log.tail(), node.applied) {
                Ok(SlaveAction::Append { pos, records }) => {
                    let node = &mut self.nodes[si];
                    match node.log.append_replicated(pos, &records) {
                        Ok(tail) => {
                            for_each_checked(&records, pos, &mut |r| match r.op {
                                Op::Put => {
                                    node.app.insert(r.key.to_vec(), r.value.to_vec());
                                }
                                Op::Delete => {
                                    node.app.remove(r.key);
                                }
                            });
                            node.applied = tail;
                        }
                        Err(e) => {
                            self.stats.corrupted_streams += 1;
                            ended =
                                Some((SessionEnd::Other, format!("refused data at {pos}: {e}")));
                            break;
                        }
                    }
                }
                Ok(SlaveAction::None) => {}
                Ok(SlaveAction::Handover { tail }) => {
                    ended = Some((
                        SessionEnd::Handover,
                        format!("the master handed over at {tail}"),
                    ));
                    break;
                }
                Err(e) => {
                    ended = Some((SessionEnd::Other, e.to_string()));
                    break;
                }
            }
        }
        if ended.is_none() {
            let sl = ss.ss.as_mut().expect("checked above");
            if let Err(e) = sl.handle_timeout(self.now) {
                let end = match e {
                    StreamError::Silent { .. } => SessionEnd::Silent,
                    _ => SessionEnd::Other,
                };
                ended = Some((end, e.to_string()));
            }
        }
        if ended.is_none() && ss.started {
            let node = &self.nodes[si];
            if self.rng.below(3) == 0 {
                let _ = node.log.flush();
            }
            let tail = node.log.tail();
            let sl = ss.ss.as_mut().expect("checked above");
            sl.reached(tail);
            if let Some(ack) = sl.poll_ack(tail, node.log.flushed(), node.applied) {
                let at = self.now + self.latency();
                let at = ss.to_master.back().map_or(at, |b| at.max(b.0));
                ss.to_master.push_back((at, Msg::Frame(ack)));
            }
        }
        self.session = Some(ss);
        if let Some((end, why)) = ended {
            self.close_slave_half(end, why);
        }
    }

    // ---- faults -----------------------------------------------------------

    /// Node `i` dies. `dropping`: it was cutting its log back or replacing it
    /// (a truncation or a resync failed): what it held may legitimately be gone.
    fn crash(&mut self, i: usize, kind: Crash, dropping: bool) {
        if !self.nodes[i].up {
            return;
        }
        self.second_failure(i);
        let image = self.nodes[i].disk.image(kind, self.rng.next_u64());
        let n = &mut self.nodes[i];
        n.up = false;
        let (tail, flushed) = (n.log.tail(), n.log.flushed());
        let floor = if dropping {
            0
        } else if kind == Crash::Process {
            tail
        } else {
            flushed
        };
        let back = self.now + Duration::from_millis(50 + self.rng.below(600));
        self.nodes[i].restart = Some((back, image, floor));
        let was_master = self.nodes[i].role == Role::Master;
        // A process's sockets close with it; a power cut says nothing.
        if let Some(ss) = &mut self.session {
            let at = self.now + Duration::from_micros(200);
            if ss.master == i {
                if ss.ms.take().is_some() && kind == Crash::Process {
                    ss.to_slave.push_back((at, Msg::Close));
                }
            } else if ss.ss.take().is_some() && kind == Crash::Process {
                ss.to_master.push_back((at, Msg::Close));
            }
        }
        self.drop_dead_session();
        if kind == Crash::Process && was_master && self.link(i, W) {
            if let Some(at) = self.nodes[i].held_renewal {
                let epoch = self.nodes[i].log.meta().epoch;
                self.witness.link_closed(PAIR, self.nodes[i].id, epoch, at);
            }
        }
        match kind {
            Crash::Process => self.stats.kills += 1,
            Crash::Power => self.stats.power_cuts += 1,
        }
        self.note(format!(
            "node {i} ({:?}) {kind:?} crash at tail {tail} (floor {floor})",
            self.nodes[i].role
        ));
    }

    /// Node `i` took over: the records it lacks that the witness was never
    /// told of (acknowledged within a renewal interval before a fault, or
    /// before the witness restarted) were not promised past the witness —
    /// see "A master back from a power cut" in ARCHITECTURE.md. Every other
    /// acknowledged record must be in its log (`check_acked`).
    fn unreported(&mut self, i: usize) {
        let known = self.witness_acked;
        let history = self.nodes[i].log.meta().history;
        let first = self.nodes[i].log.first();
        let have = match self.acked.last_key_value() {
            Some((&last, _)) => records_at(&self.nodes[i].log, first, last + 1),
            None => return,
        };
        let before = self.acked.len();
        self.acked.retain(|pos, (rec, _)| {
            let reported = known.is_some_and(|k| k.history == history && *pos < k.pos);
            *pos < first || have.get(pos) == Some(rec) || reported
        });
        if self.acked.len() < before {
            let n = before - self.acked.len();
            self.note(format!(
                "node {i} took over without {n} acknowledged records the witness was never told of"
            ));
        }
    }

    /// The promise of an ack at Received covers one failure: the master's.
    /// When node `i`, holding acknowledged records its peer lacks (or its
    /// peer is down too), fails before its peer caught up, those records
    /// have had two failures and are no longer promised.
    fn second_failure(&mut self, i: usize) {
        let mine: Vec<u64> = self
            .acked
            .iter()
            .filter(|(_, (_, h))| *h == i)
            .map(|(&p, _)| p)
            .collect();
        let (Some(&lo), Some(&hi)) = (mine.first(), mine.last()) else {
            return;
        };
        let other = &self.nodes[1 - i];
        let have = if other.up {
            records_at(&other.log, lo, hi + 1)
        } else {
            BTreeMap::new()
        };
        let before = self.acked.len();
        self.acked
            .retain(|pos, (rec, h)| *h != i || have.get(pos) == Some(rec));
        if self.acked.len() < before {
            let n = before - self.acked.len();
            self.note(format!(
                "node {i} fails holding {n} acknowledged records its peer lacks: a second failure, no longer promised"
            ));
        }
    }

    fn restart_due(&mut self, i: usize) {
        let Some((at, _, _)) = &self.nodes[i].restart else {
            return;
        };
        if self.now < *at {
            return;
        }
        let (_, image, floor) = self.nodes[i].restart.take().unwrap();
        let now_ns = self.ns();
        let n = match Node::open(self.nodes[i].id, image, self.now, now_ns) {
            Ok(n) => n,
            Err(e) => self.fail(format!("node {i} does not reopen after a crash: {e}")),
        };
        if n.log.tail() < floor {
            self.fail(format!(
                "node {i} reopened at {}; its crash should have kept {floor}",
                n.log.tail()
            ));
        }
        let tail = n.log.tail();
        // Received acks described the page cache: what a power cut took is
        // no longer promised (the other node may not have it either).
        self.acked
            .retain(|&pos, (_, holder)| *holder != i || pos < tail);
        self.nodes[i] = n;
        self.note(format!("node {i} restarted at tail {tail}"));
    }

    /// A planned switchover, as `Node::switchover` starts it: writes sealed,
    /// the master hands over once its slave has applied everything.
    fn switchover(&mut self) {
        let Some(ss) = &self.session else { return };
        let m = ss.master;
        if ss.started && ss.ms.is_some() && ss.ss.is_some() && self.writable(m) {
            self.nodes[m].handing_over = Some(self.now);
            self.stats.switchovers += 1;
            self.note(format!("node {m} starts a switchover"));
        }
    }

    fn partition(&mut self) {
        let r = self.rng.next_u64();
        let (a, b) = match r % 6 {
            0 => (0, 1),
            1 => (1, 0),
            2 => (0, W),
            3 => (W, 0),
            4 => (1, W),
            _ => (W, 1),
        };
        let both = r & 8 == 0;
        self.blocked[a][b] = true;
        if both {
            self.blocked[b][a] = true;
        }
        self.stats.partitions += 1;
        self.note(format!(
            "partition {a} {} {b}",
            if both { "<->" } else { "->" }
        ));
    }

    /// A broken network: a frame in flight duplicated, or two swapped.
    fn garble(&mut self) {
        let r = self.rng.next_u64();
        if let Some(ss) = &mut self.session {
            let q = if r.is_multiple_of(2) {
                &mut ss.to_slave
            } else {
                &mut ss.to_master
            };
            if q.len() >= 2 {
                let i = (r >> 8) as usize % (q.len() - 1);
                match (r >> 2) % 3 {
                    0 => {
                        let f = q[i].1.clone();
                        let at = q[i].0;
                        q.insert(i + 1, (at, f));
                    }
                    1 => {
                        let (a, b) = (q[i].1.clone(), q[i + 1].1.clone());
                        q[i].1 = b;
                        q[i + 1].1 = a;
                    }
                    _ => {
                        q.remove(i);
                    }
                }
                self.note("network duplicated, reordered or dropped a frame".into());
            }
        }
    }

    fn check(&mut self) {
        // 1: never two writable masters.
        if self.writable(0) && self.writable(1) {
            let e: Vec<u32> = self.nodes.iter().map(|n| n.log.meta().epoch).collect();
            self.fail(format!(
                "both nodes accept writes: epochs {e:?}, leases until {} and {} ns, now {} ns",
                self.nodes[0].lease.until_ns,
                self.nodes[1].lease.until_ns,
                self.ns()
            ));
        }
        // 4: each application equals its log's replay; the log never says
        // more is flushed than it holds.
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.up {
                continue;
            }
            if n.log.flushed() > n.log.tail() {
                self.fail(format!(
                    "node {i}'s log says {} is flushed, past its tail {}",
                    n.log.flushed(),
                    n.log.tail()
                ));
            }
            if n.log.meta().history == 0 {
                continue;
            }
            match replay(&n.log) {
                Ok(st) if st == n.app => {}
                Ok(st) => self.fail(format!(
                    "node {i}'s application holds {} keys, its log replays to {}",
                    n.app.len(),
                    st.len()
                )),
                Err(e) => self.fail(format!("node {i}'s log cannot be replayed: {e}")),
            }
        }
        // 3: a slave in session holds a prefix of its master's log.
        let Some(ss) = &self.session else { return };
        if !ss.started || ss.ms.is_none() || ss.ss.is_none() {
            return;
        }
        let (m, s) = (&self.nodes[ss.master].log, &self.nodes[ss.slave()].log);
        if s.tail() > m.tail() {
            self.fail(format!(
                "slave tail {} past the master's {}",
                s.tail(),
                m.tail()
            ));
        }
        let from = s.first().max(m.first());
        let a = records(s, from, s.tail());
        let b = records(m, from, s.tail());
        if a != b {
            self.fail(format!(
                "the slave's log [{from}, {}) is not a prefix of the master's [{}, {}): {} records vs {}; epochs: slave {:?}, master {:?}",
                s.tail(),
                m.first(),
                m.tail(),
                a.len(),
                b.len(),
                s.epochs().as_slice(),
                m.epochs().as_slice()
            ));
        }
    }

    fn next_wake(&self) -> Instant {
        let mut t = self.now + Duration::from_millis(1 + self.rng.clone().below(4));
        if let Some(ss) = &self.session {
            // A frame due but held (a blocked direction, a dead receiver)
            // does not stop the clock.
            for q in [&ss.to_slave, &ss.to_master] {
                if let Some(f) = q.front().filter(|f| f.0 > self.now) {
                    t = t.min(f.0);
                }
            }
            if let Some(ms) = &ss.ms {
                t = t.min(ms.poll_timeout(self.now, self.nodes[ss.master].log.tail()));
            }
            if let Some(sl) = &ss.ss {
                t = t.min(sl.poll_timeout());
            }
        }
        t.max(self.now + Duration::from_micros(1))
    }

    fn tick(&mut self, faults: bool) {
        self.step += 1;
        self.now = self.next_wake();
        if faults {
            let who = self.rng.below(2) as usize;
            match self.rng.below(1000) {
                0..=2 => self.crash(who, Crash::Process, false),
                3..=4 => self.crash(who, Crash::Power, false),
                5..=8 => self.partition(),
                9..=30 if self.blocked != [[false; 3]; 3] => {
                    self.blocked = [[false; 3]; 3];
                    self.note("network healed".into());
                }
                31 => {
                    self.filter[who] = true;
                    self.stats.filters += 1;
                    self.note(format!("a filter on node {who}'s host refuses connections"));
                }
                32..=45 => self.filter = [false; 2],
                46..=52 => self.garble(),
                53 => {
                    // A sync on a slave's disk fails for a while: its log
                    // refuses writes, the session ends, the node restarts.
                    if let Some(s) = self.session.as_ref().map(|s| s.slave()) {
                        self.nodes[s].disk.set_faults(Faults {
                            sync_error_ppm: 300_000,
                            ..Faults::default()
                        });
                    }
                }
                54..=70 => {
                    for n in &self.nodes {
                        n.disk.set_faults(Faults::default());
                    }
                }
                72..=73 => self.switchover(),
                74 => {
                    // The disk fills up: appends, rolls, snapshots and meta
                    // updates fail with ENOSPC until it is freed.
                    let space = (2 + self.rng.below(6)) * SEGMENT_BYTES;
                    self.nodes[who].disk.set_faults(Faults {
                        space_bytes: Some(space),
                        ..Faults::default()
                    });
                    self.stats.disk_full += 1;
                    self.note(format!("node {who}'s disk holds {space} bytes at most"));
                }
                71 => {
                    self.witness = Witness::new(hold_for(HEARTBEAT_MS, DEAD_TICKS));
                    self.nodes.iter_mut().for_each(|n| n.held_renewal = None);
                    self.witness_acked = None;
                    self.note("the witness restarted".into());
                }
                _ => {}
            }
        }
        for i in 0..2 {
            self.restart_due(i);
        }
        for i in 0..2 {
            self.master_tick(i);
        }
        if self.rng.below(3) == 0 {
            self.publish();
        }
        self.drive_master();
        self.deliver_to_slave();
        self.deliver_to_master();
        for i in 0..2 {
            // A node whose log refuses writes (a failed sync) restarts.
            let n = &self.nodes[i];
            let in_session = self
                .session
                .as_ref()
                .is_some_and(|s| s.slave() == i && s.ss.is_some());
            if n.up
                && n.role != Role::Master
                && !in_session
                && n.log.append_replicated(n.log.tail(), &[]).is_err()
            {
                n.disk.set_faults(Faults::default());
                self.crash(i, Crash::Process, false);
            }
        }
        for i in 0..2 {
            self.try_follow(i);
        }
        self.check();
    }

    fn run(&mut self, steps: u64) {
        for _ in 0..steps {
            self.tick(true);
        }
    }

    /// Faults stop; within a bounded virtual time one node serves and the
    /// other holds exactly its log and state.
    fn settle(&mut self) {
        self.blocked = [[false; 3]; 3];
        self.filter = [false; 2];
        for n in &self.nodes {
            n.disk.set_faults(Faults::default());
        }
        let deadline = self.now + Duration::from_secs(60);
        while self.now < deadline {
            self.tick(false);
            let Some(ss) = &self.session else { continue };
            let (m, s) = (&self.nodes[ss.master], &self.nodes[ss.slave()]);
            if ss.started
                && ss.ms.is_some()
                && ss.ss.is_some()
                && self.writable(ss.master)
                && s.log.tail() == m.log.tail()
                && s.app == m.app
            {
                self.check_acked(ss.master, "at the end");
                return;
            }
        }
        let roles: Vec<(Role, bool, u32, u64)> = self
            .nodes
            .iter()
            .map(|n| (n.role, n.up, n.log.meta().epoch, n.log.tail()))
            .collect();
        self.fail(format!(
            "no caught-up pair within 60 s of quiet: (role, up, epoch, tail) {roles:?}"
        ));
    }
}

#[test]
fn a_pair_and_its_witness_keep_their_promises_through_crashes_partitions_and_filters() {
    let (seeds, steps) = testkit::sim_seeds(SEEDS_DEFAULT, STEPS_DEFAULT);
    let t0 = Instant::now();
    let mut total = Stats::default();
    for &seed in &seeds {
        let mut sim = Sim::new(seed);
        sim.run(steps);
        sim.settle();
        let s = sim.stats;
        total.records += s.records;
        total.sessions += s.sessions;
        total.promotions += s.promotions;
        total.step_downs += s.step_downs;
        total.witness_refusals += s.witness_refusals;
        total.kills += s.kills;
        total.power_cuts += s.power_cuts;
        total.partitions += s.partitions;
        total.filters += s.filters;
        total.truncations += s.truncations;
        total.resyncs += s.resyncs;
        total.fenced += s.fenced;
        total.switchovers += s.switchovers;
        total.disk_full += s.disk_full;
        total.corrupted_streams += s.corrupted_streams;
    }
    println!(
        "{} seeds x {steps} steps in {:.1} s: {total:?}",
        seeds.len(),
        t0.elapsed().as_secs_f64()
    );
    if seeds.len() >= 100 {
        assert!(total.promotions > 0 && total.step_downs > 0 && total.witness_refusals > 0);
        assert!(total.truncations > 0 && total.resyncs > 0 && total.corrupted_streams > 0);
        assert!(total.fenced > 0 && total.filters > 0 && total.switchovers > 0);
    }
}
