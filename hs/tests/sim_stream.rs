//! Deterministic simulation of replication: the real stream state machines
//! (`hs::proto::stream::{MasterStream, SlaveStream}`, what `node::master` and
//! `node::slave` run), the real handshake decision (`catchup::decide`) and two
//! real logs (`hs::log::Log`, each on its own `MemStorage` disk), over a
//! simulated network with virtual time and a seeded scheduler.
//!
//! Faults: connections cut; frames delayed, duplicated and reordered (a
//! hostile or broken network: the receiver must end the session, never write
//! a wrong byte); the slave's process killed or its power cut; the master's
//! process killed (it restarts in a new epoch); the master's power cut with a
//! failover (the slave takes over in a new epoch, the old master comes back as
//! its slave and is cut back to the common history); syncs that fail.
//!
//! After every step it checks:
//! 1. a slave in session holds a prefix of its master's log;
//! 2. no write acknowledged at `Received` is lost: after a failover the new
//!    master holds every record the old one had acknowledged (the slave took
//!    them), and an ack never names more than the slave's log holds;
//! 3. each node's application state equals a replay of its log (snapshot +
//!    records);
//! 4. at the end, with faults stopped, the slave catches up: equal logs and
//!    equal states.
//!
//! A failure prints the seed and the step; `HS_SIM_SEED=<n>` replays it,
//! `HS_SIM_SEEDS=<n>` runs more.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hs::log::mem::{Crash, Faults, MemStorage, Rng};
use hs::log::snapshot::Snapshot;
use hs::log::{for_each_checked, Log, LogConfig, Preparer};
use hs::proto::catchup::{decide, Decision, MasterView, SlaveView};
use hs::proto::frame::Frame;
use hs::proto::stream::{
    MasterConfig, MasterStream, MasterTransmit, SlaveAction, SlaveConfig, SlaveStream,
};
use hs::Op;

const SEGMENT_BYTES: u64 = 4096;
const SEEDS_DEFAULT: u64 = 400;
const STEPS_DEFAULT: u64 = 600;
const HEARTBEAT: Duration = Duration::from_millis(50);

type State = HashMap<Vec<u8>, Vec<u8>>;

struct NodeSim {
    disk: MemStorage,
    log: Arc<Log>,
    /// The application: the fold of every record applied.
    app: State,
    applied: u64,
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

type Rec = (u64, u32, Op, Vec<u8>, Vec<u8>);

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

impl NodeSim {
    fn open(disk: MemStorage) -> Result<NodeSim, String> {
        let (log, _) = Log::open(config(&disk)).map_err(|e| e.to_string())?;
        let app = replay(&log)?;
        let applied = log.tail();
        Ok(NodeSim {
            disk,
            log,
            app,
            applied,
        })
    }
}

/// One connection: the two state machines and the frames in flight.
struct Session {
    master: MasterStream,
    slave: SlaveStream,
    epoch: u32,
    to_slave: VecDeque<(Instant, Frame)>,
    to_master: VecDeque<(Instant, Frame)>,
    /// A resync: the snapshot's bytes (master side) and what arrived (slave side).
    snapshot: Option<(Vec<u8>, Vec<u8>)>,
    /// The slave has its starting point (a resync's snapshot is loaded).
    started: bool,
}

struct Sim {
    seed: u64,
    rng: Rng,
    t0: Instant,
    now: Instant,
    nodes: Vec<NodeSim>,
    master: usize,
    session: Option<Session>,
    reconnect_at: Instant,
    /// The highest position the current history's slave acknowledged at
    /// Received, and the master's records below it at the time.
    promised: u64,
    step: u64,
    trace: VecDeque<String>,
    stats: Stats,
}

#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    records: u64,
    sessions: u64,
    cuts: u64,
    slave_crashes: u64,
    slave_power_cuts: u64,
    master_restarts: u64,
    failovers: u64,
    truncations: u64,
    resyncs: u64,
    corrupted_streams: u64,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let t0 = Instant::now();
        let a = NodeSim::open(MemStorage::new(seed)).unwrap();
        a.log.start_history(0xa11ce + seed as u128).unwrap();
        a.log.set_epoch(1).unwrap();
        let b = NodeSim::open(MemStorage::new(seed ^ 0xb)).unwrap();
        Sim {
            seed,
            rng: Rng::new(seed),
            t0,
            now: t0,
            nodes: vec![a, b],
            master: 0,
            session: None,
            reconnect_at: t0,
            promised: 0,
            step: 0,
            trace: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    fn fail(&self, what: String) -> ! {
        let last: Vec<&String> = self.trace.iter().rev().take(14).collect();
        panic!(
            "seed {} step {} (t = {:?}): {what}\nlast steps (newest first): {last:#?}\nreplay: HS_SIM_SEED={} cargo test --release -p hs --test sim_stream",
            self.seed,
            self.step,
            self.now - self.t0,
            self.seed
        );
    }

    fn note(&mut self, s: String) {
        if self.trace.len() > 40 {
            self.trace.pop_front();
        }
        self.trace.push_back(s);
    }

    fn m(&self) -> &NodeSim {
        &self.nodes[self.master]
    }
    fn s(&self) -> &NodeSim {
        &self.nodes[1 - self.master]
    }
    fn s_mut(&mut self) -> &mut NodeSim {
        let i = 1 - self.master;
        &mut self.nodes[i]
    }

    fn latency(&mut self) -> Duration {
        Duration::from_micros(100 + self.rng.below(3000))
    }

    /// The handshake: Hello, `decide`, Welcome, and what the slave does about it.
    fn connect(&mut self) {
        let (m, s) = (&self.m().log, &self.s().log);
        let (mm, sm) = (m.meta(), s.meta());
        let (me, se) = (m.epochs(), s.epochs());
        let decision = decide(
            MasterView {
                history: mm.history,
                epoch: mm.epoch,
                epochs: &me,
                first: m.first(),
                tail: m.tail(),
            },
            SlaveView {
                history: sm.history,
                epoch: sm.epoch,
                tail: s.tail(),
                epochs: se.as_slice(),
            },
        );
        let epoch = mm.epoch;
        let mut snapshot = None;
        let start = match decision {
            Decision::Fenced { slave_epoch } => self.fail(format!(
                "slave at epoch {slave_epoch} fenced the master at {epoch}: two masters' epochs crossed"
            )),
            Decision::Continue { from } => {
                if sm.history == 0 {
                    self.s()
                        .log
                        .adopt_history(mm.history, mm.segment_bytes)
                        .unwrap();
                }
                from
            }
            Decision::Truncate { to } => {
                let old = self.s().log.tail();
                if let Err(e) = self.s().log.truncate(to) {
                    self.note(format!("slave truncate to {to} failed: {e}"));
                    self.crash_slave_after(Crash::Process, true);
                    return;
                }
                // The application saw records past `to`: rebuild it without them.
                let s = self.s_mut();
                s.app = replay(&s.log).unwrap();
                s.applied = to;
                self.stats.truncations += 1;
                self.note(format!("slave cut back from {old} to {to}"));
                to
            }
            Decision::Resync => {
                let src = self.m().log.open_snapshot().unwrap();
                let mut buf = vec![0u8; src.len() as usize];
                src.read_at(0, &mut buf).unwrap();
                self.stats.resyncs += 1;
                snapshot = Some((buf, Vec::new()));
                self.m().log.first()
            }
        };
        if epoch > self.s().log.meta().epoch {
            if let Err(e) = self.s().log.set_epoch(epoch) {
                self.note(format!("slave set_epoch failed: {e}"));
                return;
            }
        }
        let master = MasterStream::new(
            self.now,
            MasterConfig {
                epoch,
                heartbeat_interval: HEARTBEAT,
                dead_ticks: 3,
                catchup_rate_bytes_per_s: if self.rng.below(2) == 0 { 0 } else { 2 << 20 },
                batch_bytes_max: 1024 + self.rng.below(4) as usize * 1024,
                frame_bytes_max: 8192,
                lease: None,
            },
            start,
            snapshot.as_ref().map(|(b, _)| b.len() as u64),
        );
        let slave = SlaveStream::new(
            self.now,
            SlaveConfig {
                epoch,
                heartbeat_interval: HEARTBEAT,
                dead_ticks: 3,
            },
            start,
        );
        self.stats.sessions += 1;
        self.note(format!(
            "session at epoch {epoch} from {start} ({decision:?})"
        ));
        self.session = Some(Session {
            master,
            slave,
            epoch,
            to_slave: VecDeque::new(),
            to_master: VecDeque::new(),
            started: snapshot.is_none(),
            snapshot,
        });
    }

    fn cut(&mut self, why: String) {
        if self.session.take().is_some() {
            self.note(format!("connection cut: {why}"));
            self.stats.cuts += 1;
        }
        self.reconnect_at = self.now + Duration::from_millis(1 + self.rng.below(100));
    }

    fn publish(&mut self) {
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
        let m = &mut self.nodes[self.master];
        if let Ok(pos) = m
            .log
            .append(op, &key, if op == Op::Delete { &[] } else { &value })
        {
            // The master's application published it: its state has it.
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
            let _ = pos;
        }
        if self.rng.below(4) == 0 {
            let _ = self.m().log.flush();
        }
        if self.rng.below(50) == 0 {
            let _ = self.m().log.compact();
        }
    }

    /// The master's side of the session: timers, then everything it would send.
    fn drive_master(&mut self) {
        let Some(mut ss) = self.session.take() else {
            return;
        };
        let now = self.now;
        if let Err(e) = ss.master.handle_timeout(now) {
            return self.cut(format!("master: {e}"));
        }
        let log = self.nodes[self.master].log.clone();
        while let Some(t) = ss.master.poll_transmit(now, log.tail(), false) {
            let f = match t {
                MasterTransmit::Heartbeat => Frame::Heartbeat {
                    epoch: ss.epoch,
                    tail: log.tail(),
                    flushed: log.flushed(),
                    sent_ns: (now - self.t0).as_nanos() as u64 + 1,
                },
                MasterTransmit::Snapshot { offset, len } => {
                    let (src, _) = ss.snapshot.as_ref().expect("snapshot");
                    let b = Bytes::copy_from_slice(&src[offset as usize..(offset + len) as usize]);
                    ss.master.snapshot_sent(len);
                    Frame::Snapshot { offset, bytes: b }
                }
                MasterTransmit::Data { pos, max_bytes } => {
                    let chunk = match log.read(pos, max_bytes) {
                        Ok(Some(c)) => c,
                        Ok(None) => break,
                        Err(e) => return self.cut(format!("master cannot read at {pos}: {e}")),
                    };
                    let end = chunk.pos + chunk.len as u64;
                    let f = Frame::Data {
                        pos,
                        epoch: ss.epoch,
                        tail: log.tail(),
                        records: Bytes::copy_from_slice(chunk.bytes()),
                    };
                    ss.master.data_sent(now, pos, end);
                    f
                }
                MasterTransmit::Handover { .. } => unreachable!("no switchover in this simulation"),
            };
            let at = now + self.latency();
            // TCP keeps order: a frame never overtakes the one before it.
            let at = ss.to_slave.back().map_or(at, |b| at.max(b.0));
            ss.to_slave.push_back((at, f));
        }
        while ss.master.poll_event().is_some() {}
        self.session = Some(ss);
    }

    /// Frames due at the master: the slave's acks.
    fn deliver_to_master(&mut self) {
        let Some(mut ss) = self.session.take() else {
            return;
        };
        while ss.to_master.front().is_some_and(|f| f.0 <= self.now) {
            let (_, f) = ss.to_master.pop_front().unwrap();
            let tail = self.m().log.tail();
            if let Err(e) = ss.master.handle_frame(&f, tail) {
                return self.cut(format!("master refused a frame: {e}"));
            }
            let (received, _, _) = ss.master.acked();
            // 2: an ack never names more than the slave's log holds (a slave
            // process crash keeps what it had; a power cut ends the session).
            let slave_tail = self.s().log.tail();
            if ss.started && received > slave_tail {
                self.fail(format!(
                    "the master holds an ack of {received} but the slave's log ends at {slave_tail}"
                ));
            }
            if ss.started && received > self.promised {
                self.promised = received;
            }
        }
        self.session = Some(ss);
    }

    /// Frames due at the slave, then its timers and its ack.
    fn deliver_to_slave(&mut self) {
        let Some(mut ss) = self.session.take() else {
            return;
        };
        let si = 1 - self.master;
        while ss.to_slave.front().is_some_and(|f| f.0 <= self.now) {
            let (_, f) = ss.to_slave.pop_front().unwrap();
            if let Frame::Snapshot { offset, bytes } = &f {
                let (src_len, got) = {
                    let (src, got) = ss.snapshot.as_mut().expect("a snapshot in a resync");
                    (src.len(), got)
                };
                if *offset != got.len() as u64 {
                    let expected = got.len();
                    return self.cut(format!("snapshot bytes at {offset}, expected {expected}"));
                }
                got.extend_from_slice(bytes);
                if got.len() == src_len {
                    let got = got.clone();
                    let snap = Snapshot::decode(&got).expect("the master's snapshot");
                    let node = &mut self.nodes[si];
                    if let Err(e) = node.log.reset_to(&snap, &got, SEGMENT_BYTES) {
                        self.note(format!("slave reset failed: {e}"));
                        return self.crash_slave_after(Crash::Process, true);
                    }
                    node.app = snap.state.map.clone();
                    node.applied = snap.pos;
                    ss.started = true;
                    // Acknowledges its start: records follow.
                    let ack = Frame::Ack {
                        epoch: ss.epoch,
                        received: snap.pos,
                        flushed: node.log.flushed(),
                        applied: snap.pos,
                        echo_ns: 0,
                    };
                    let at = self.now + self.latency();
                    ss.to_master.push_back((at, ack));
                    self.note(format!("slave resynced at {}", snap.pos));
                }
                continue;
            }
            if !ss.started {
                // Heartbeats during a resync: acknowledged at 0, the log is not there yet.
                if let Frame::Heartbeat { sent_ns, .. } = f {
                    let ack = Frame::Ack {
                        epoch: ss.epoch,
                        received: 0,
                        flushed: 0,
                        applied: 0,
                        echo_ns: sent_ns,
                    };
                    let at = self.now + self.latency();
                    ss.to_master.push_back((at, ack));
                }
                continue;
            }
            let node = &self.nodes[si];
            match ss.slave.handle_frame(f, node.log.tail(), node.applied) {
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
                            return self.cut(format!("slave refused data at {pos}: {e}"));
                        }
                    }
                }
                Ok(SlaveAction::None) => {}
                Ok(SlaveAction::Handover { .. }) => unreachable!("no switchover here"),
                Err(e) => return self.cut(format!("slave: {e}")),
            }
        }
        if let Err(e) = ss.slave.handle_timeout(self.now) {
            return self.cut(format!("slave: {e}"));
        }
        if ss.started {
            let node = &self.nodes[si];
            if self.rng.below(3) == 0 {
                let _ = node.log.flush();
            }
            let tail = node.log.tail();
            ss.slave.reached(tail);
            if let Some(ack) = ss.slave.poll_ack(tail, node.log.flushed(), node.applied) {
                let at = self.now + self.latency();
                let at = ss.to_master.back().map_or(at, |b| at.max(b.0));
                ss.to_master.push_back((at, ack));
            }
        }
        self.session = Some(ss);
    }

    fn crash_slave(&mut self, kind: Crash) {
        self.crash_slave_after(kind, false)
    }

    /// `dropping`: the slave was cutting its log back or replacing it (a
    /// truncation or a resync failed): what it held may legitimately be gone.
    fn crash_slave_after(&mut self, kind: Crash, dropping: bool) {
        self.session = None;
        let si = 1 - self.master;
        let image = self.nodes[si].disk.image(kind, self.rng.next_u64());
        let tail_before = self.nodes[si].log.tail();
        let flushed_before = self.nodes[si].log.flushed();
        match NodeSim::open(image) {
            Ok(n) => self.nodes[si] = n,
            Err(e) => self.fail(format!(
                "the slave does not reopen after a {kind:?} crash: {e}"
            )),
        }
        let tail = self.nodes[si].log.tail();
        let floor = if kind == Crash::Process {
            tail_before
        } else {
            flushed_before
        };
        if dropping {
            self.promised = self.promised.min(tail);
        } else if tail < floor {
            self.fail(format!(
                "the slave reopened at {tail} after a {kind:?} crash; it had {floor}"
            ));
        }
        if kind == Crash::Power {
            // Received acks described the page cache; the next session starts over.
            self.promised = self.promised.min(tail);
            self.stats.slave_power_cuts += 1;
        } else {
            self.stats.slave_crashes += 1;
        }
        self.note(format!(
            "slave {kind:?} crash: reopened at {tail} (had {tail_before})"
        ));
        self.reconnect_at = self.now + Duration::from_millis(self.rng.below(50));
    }

    fn restart_master(&mut self) {
        self.session = None;
        let seed = self.rng.next_u64();
        let image = self.m().disk.image(Crash::Process, seed);
        let tail_before = self.m().log.tail();
        let n = match NodeSim::open(image) {
            Ok(n) => n,
            Err(e) => self.fail(format!("the master does not reopen: {e}")),
        };
        if n.log.tail() != tail_before {
            self.fail(format!(
                "the master reopened at {} after a kill; it had {tail_before}",
                n.log.tail()
            ));
        }
        // A restarted master takes a new epoch before its first write.
        let e = n.log.meta().epoch.max(self.s().log.meta().epoch) + 1;
        n.log.set_epoch(e).unwrap();
        self.nodes[self.master] = n;
        self.stats.master_restarts += 1;
        self.note(format!("master killed and restarted at epoch {e}"));
    }

    /// The master loses power; the slave takes over in a new epoch; the old
    /// master comes back as its slave.
    fn failover(&mut self) {
        self.session = None;
        let old = self.master;
        let old_first = self.nodes[old].log.first();
        let old_recs = records(&self.nodes[old].log, 0, self.promised);
        let image = self.nodes[old]
            .disk
            .image(Crash::Power, self.rng.next_u64());
        match NodeSim::open(image) {
            Ok(n) => self.nodes[old] = n,
            Err(e) => self.fail(format!(
                "the old master does not reopen after a power cut: {e}"
            )),
        }
        self.master = 1 - old;
        // (A node whose disk fails its syncs cannot promote; here it is fine.)
        self.m().disk.set_faults(Faults::default());
        let e = self.nodes[0]
            .log
            .meta()
            .epoch
            .max(self.nodes[1].log.meta().epoch)
            + 1;
        let m = &self.nodes[self.master];
        if m.log.meta().history == 0 {
            // The slave never got a history: nothing was acknowledged; start one.
            m.log.start_history(0xfa11 + self.seed as u128).unwrap();
        }
        m.log.set_epoch(e).unwrap();
        // 2: every record the old master had acknowledged at Received is here.
        let first = m.log.first().max(old_first);
        let have = records(&m.log, first, self.promised);
        let want: Vec<&Rec> = old_recs.iter().filter(|r| r.0 >= first).collect();
        if m.log.tail() < self.promised
            || have.len() != want.len()
            || have.iter().zip(&want).any(|(a, b)| a != *b)
        {
            self.fail(format!(
                "after the failover the new master's log ends at {} and holds {} records below {}, the old master had acknowledged {} there",
                m.log.tail(),
                have.len(),
                self.promised,
                want.len()
            ));
        }
        self.stats.failovers += 1;
        self.note(format!(
            "failover: node {} is master at epoch {e}",
            self.master
        ));
        self.promised = 0;
        self.reconnect_at = self.now + Duration::from_millis(self.rng.below(100));
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
                if r & 4 == 0 {
                    let f = q[i].1.clone();
                    let at = q[i].0;
                    q.insert(i + 1, (at, f));
                } else {
                    let (a, b) = (q[i].1.clone(), q[i + 1].1.clone());
                    q[i].1 = b;
                    q[i + 1].1 = a;
                }
                self.note("network duplicated or reordered a frame".into());
            }
        }
    }

    fn check(&mut self) {
        // 3: each application equals its log's replay.
        for (i, n) in self.nodes.iter().enumerate() {
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
        // 1: a slave in session holds a prefix of its master's log.
        if self.session.as_ref().is_some_and(|s| s.started) {
            let (m, s) = (&self.m().log, &self.s().log);
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
                let diff = a.iter().zip(&b).find(|(x, y)| x != y).map(|(x, y)| {
                    format!(
                        "slave ({}, epoch {}), master ({}, epoch {})",
                        x.0, x.1, y.0, y.1
                    )
                });
                self.fail(format!(
                    "the slave's log [{from}, {}) is not a prefix of the master's [{}, {}) (first difference: {diff:?}; {} records vs {}; epochs: slave {:?}, master {:?})",
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
    }

    fn next_wake(&self) -> Instant {
        let mut t = self.now + Duration::from_millis(1 + self.rng.clone().below(4));
        if let Some(ss) = &self.session {
            for q in [&ss.to_slave, &ss.to_master] {
                if let Some(f) = q.front() {
                    t = t.min(f.0);
                }
            }
            t = t.min(ss.master.poll_timeout(self.now, self.m().log.tail()));
            t = t.min(ss.slave.poll_timeout());
        } else {
            t = t.min(self.reconnect_at);
        }
        t.max(self.now)
    }

    fn run(&mut self, steps: u64, faults: bool) {
        let end = self.step + steps;
        while self.step < end {
            self.step += 1;
            self.now = self.next_wake();
            if self.session.is_none() && self.now >= self.reconnect_at {
                self.connect();
            }
            if faults {
                match self.rng.below(1000) {
                    0..=9 => self.cut("fault".into()),
                    10..=13 => self.crash_slave(Crash::Process),
                    14..=17 => self.crash_slave(Crash::Power),
                    18..=20 => self.restart_master(),
                    21..=24 => self.failover(),
                    25..=34 => self.garble(),
                    35..=37 => {
                        // A sync on the slave's disk fails for a while: the log
                        // refuses writes, the session ends, the slave restarts.
                        self.s().disk.set_faults(Faults {
                            sync_error_ppm: 300_000,
                            ..Faults::default()
                        });
                    }
                    38..=60 => self.s().disk.set_faults(Faults::default()),
                    _ => {}
                }
            }
            if self.rng.below(3) == 0 {
                self.publish();
            }
            self.drive_master();
            self.deliver_to_slave();
            self.deliver_to_master();
            // A slave whose log refused writes (a failed sync) restarts.
            if self.session.is_none()
                && self
                    .s()
                    .log
                    .append_replicated(self.s().log.tail(), &[])
                    .is_err()
            {
                self.s().disk.set_faults(Faults::default());
                self.crash_slave(Crash::Process);
            }
            self.check();
        }
    }

    /// Faults stop; within a bounded virtual time the slave must hold exactly
    /// the master's log and state.
    fn settle(&mut self) {
        self.s().disk.set_faults(Faults::default());
        let deadline = self.now + Duration::from_secs(30);
        while self.now < deadline {
            self.step += 1;
            self.now = self.next_wake();
            if self.session.is_none() && self.now >= self.reconnect_at {
                self.connect();
            }
            self.drive_master();
            self.deliver_to_slave();
            self.deliver_to_master();
            if self.session.is_none()
                && self
                    .s()
                    .log
                    .append_replicated(self.s().log.tail(), &[])
                    .is_err()
            {
                self.crash_slave(Crash::Process);
            }
            self.check();
            let (m, s) = (self.m(), self.s());
            if self.session.as_ref().is_some_and(|x| x.started)
                && s.log.tail() == m.log.tail()
                && s.app == m.app
            {
                return;
            }
        }
        self.fail(format!(
            "the slave did not catch up within 30 s of quiet: slave at {}, master at {}",
            self.s().log.tail(),
            self.m().log.tail()
        ));
    }
}

#[test]
fn replication_keeps_its_promises_through_cuts_crashes_failovers_and_a_broken_network() {
    let (seeds, steps) = testkit::sim_seeds(SEEDS_DEFAULT, STEPS_DEFAULT);
    let t0 = Instant::now();
    let mut total = Stats::default();
    for &seed in &seeds {
        let mut sim = Sim::new(seed);
        sim.run(steps, true);
        sim.settle();
        let s = sim.stats;
        total.records += s.records;
        total.sessions += s.sessions;
        total.cuts += s.cuts;
        total.slave_crashes += s.slave_crashes;
        total.slave_power_cuts += s.slave_power_cuts;
        total.master_restarts += s.master_restarts;
        total.failovers += s.failovers;
        total.truncations += s.truncations;
        total.resyncs += s.resyncs;
        total.corrupted_streams += s.corrupted_streams;
    }
    println!(
        "{} seeds x {steps} steps in {:.1} s: {total:?}",
        seeds.len(),
        t0.elapsed().as_secs_f64()
    );
    if seeds.len() >= 100 {
        assert!(total.failovers > 0 && total.truncations > 0 && total.resyncs > 0);
        assert!(total.slave_power_cuts > 0 && total.corrupted_streams > 0);
    }
}
