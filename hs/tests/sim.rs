//! Deterministic simulation of the pair's role protocol: two nodes and a
//! witness in one process, virtual time, seeded randomness, dropped and delayed
//! frames, partitions, crashes at any step and restarts.
//!
//! The nodes are a model of the driver (`node/master.rs`, `node/slave.rs`) that
//! makes every decision through the real sans-IO code: `election::settle`
//! (start-up), `election::verdict` (may I promote?), `election::lease_ms`,
//! `witness::Witness` (grants and fencing), `catchup::decide` (continue /
//! truncate / resync on reconnect). After every step it checks:
//! 1. never two nodes accepting writes at the same time (with a witness, or
//!    without one and without `accept_split_risk`), and never two nodes taking
//!    the same epoch, ever (not only at the same time);
//! 2. no write acknowledged at `received` is ever lost;
//! 3. a slave that is caught up holds a prefix of its master's log.
//!
//! A failing seed is printed with its trace; `HS_SIM_SEED=<n>` replays it alone.

use std::time::{Duration, Instant};

use hs::proto::catchup::{decide, Decision, Epochs, MasterView, SlaveView};
use hs::proto::election::{
    lease_ms, next_epoch, refusal_hold_ms, settle, verdict, Cause, Rank, Verdict,
};
use hs::proto::witness::{Request, Witness};

/// SplitMix64: tiny, deterministic, good enough to pick faults.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Master,
    Slave,
    Candidate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    epoch: u32,
    id: u64,
}

#[derive(Clone, Debug)]
struct SimNode {
    id: u64,
    up: bool,
    prefer: bool,
    role: Role,
    /// Durable: survives crashes (the log is memory-mapped; the epoch is in meta).
    epoch: u32,
    log: Vec<Entry>,
    /// Slave: time of the last frame from the master.
    last_heard: u64,
    /// Master: accepting writes until (virtual ms), when a lease is required.
    lease_until: u64,
    /// Slave: has followed a master since it started (a refused port then means death).
    followed: bool,
    /// Durable: the peer's id, once the two have talked (0 before).
    peer_id: u64,
    /// Slave: the epoch of its session with the master. A master that stepped down
    /// (even if promoted again) ended that session, as the real driver's does.
    session_epoch: u32,
}

impl SimNode {
    fn epochs(&self) -> Epochs {
        let mut e = Epochs::default();
        for (i, x) in self.log.iter().enumerate() {
            e.observe(x.epoch, i as u64).unwrap();
        }
        e
    }
    fn last_epoch(&self) -> u32 {
        self.log.last().map_or(0, |e| e.epoch)
    }
    fn rank(&self) -> Rank {
        Rank {
            epoch: self.epoch,
            last_epoch: self.last_epoch(),
            tail: self.log.len() as u64,
            prefer_master: self.prefer,
            node: self.id,
        }
    }
}

struct Sim {
    rng: Rng,
    now: u64,
    base: Instant,
    nodes: [SimNode; 2],
    witness: Option<Witness>,
    /// Links: 0 = a-b, 1 = a-witness, 2 = b-witness.
    link_up: [bool; 3],
    hb: u64,
    dead_ticks: u32,
    lease_required: bool,
    next_id: u64,
    /// Writes acknowledged at `received`, with their position.
    acked: Vec<(u64, Entry)>,
    /// Which node took each epoch: an epoch is taken once, by one node.
    taken: std::collections::HashMap<u32, usize>,
    /// Master's writes waiting for the slave: (position, entry).
    pending: Vec<(u64, Entry)>,
    trace: Vec<String>,
    taken_twice: bool,
}

const TRACE_MAX: usize = 80;

impl Sim {
    fn new(seed: u64, with_witness: bool) -> Sim {
        let hb = 10;
        let dead_ticks = 5;
        let mut rng = Rng(seed);
        let prefer_a = rng.chance(500);
        let mk = |id, prefer| SimNode {
            id,
            up: true,
            prefer,
            role: Role::Candidate,
            epoch: 0,
            log: Vec::new(),
            last_heard: 0,
            lease_until: 0,
            followed: false,
            session_epoch: 0,
            peer_id: 0,
        };
        Sim {
            rng,
            now: 0,
            base: Instant::now(),
            nodes: [mk(1, prefer_a), mk(2, !prefer_a)],
            witness: with_witness
                .then(|| Witness::new(Duration::from_millis(lease_ms(hb, dead_ticks) + hb))),
            link_up: [true; 3],
            hb,
            dead_ticks,
            lease_required: with_witness,
            next_id: 1,
            acked: Vec::new(),
            taken: std::collections::HashMap::new(),
            pending: Vec::new(),
            trace: Vec::new(),
            taken_twice: false,
        }
    }

    fn log(&mut self, s: String) {
        if self.trace.len() >= TRACE_MAX {
            self.trace.remove(0);
        }
        self.trace.push(format!("t={} {s}", self.now));
    }

    fn lease(&self) -> u64 {
        lease_ms(self.hb, self.dead_ticks)
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_millis(self.now)
    }

    /// A frame between the two nodes gets through this tick.
    fn peer_link(&mut self) -> bool {
        self.link_up[0] && !self.rng.chance(20)
    }

    fn witness_link(&mut self, i: usize) -> bool {
        self.witness.is_some() && self.link_up[1 + i] && !self.rng.chance(20)
    }

    fn accepting(&self, i: usize) -> bool {
        let n = &self.nodes[i];
        n.up && n.role == Role::Master && (!self.lease_required || self.now < n.lease_until)
    }

    fn ask_witness(&mut self, i: usize, req: Request) -> Option<hs::proto::witness::Reply> {
        if !self.witness_link(i) {
            return None;
        }
        let now = self.instant();
        Some(self.witness.as_mut().unwrap().handle(now, req))
    }

    /// The promotion path of `slave.rs::try_promote`.
    fn try_promote(&mut self, i: usize, cause: Cause, peer_epoch: u32) {
        // As `slave.rs`: on silence, wait out a full silence period heard by this node.
        let silence = self.hb * self.dead_ticks as u64;
        if matches!(cause, Cause::MasterSilent | Cause::PeerUnreachable)
            && self.now - self.nodes[i].last_heard < silence
        {
            return;
        }
        let epoch = next_epoch(
            self.nodes[i].epoch.max(peer_epoch),
            self.nodes[i].id,
            self.nodes[i].peer_id,
        );
        let yes = match verdict(cause, self.witness.is_some(), false, self.nodes[i].prefer) {
            Verdict::Refuse => false,
            Verdict::Promote => true,
            // As `slave.rs`: a refusal counts once the master has been quiet (no
            // frame, no call) for the hold. Here a refusal only comes from a
            // master that is down, which calls nobody.
            Verdict::Confirm => {
                self.now - self.nodes[i].last_heard >= refusal_hold_ms(self.hb, self.dead_ticks)
            }
            Verdict::AskWitness => {
                // The simulated witness reaches a down master's port: refused too.
                let req = Request::Promote {
                    pair: 1,
                    node: self.nodes[i].id,
                    epoch,
                    dead: cause == Cause::MasterRefused,
                    // The model's logs have no history ids: not compared.
                    tail: None,
                };
                self.ask_witness(i, req).is_some_and(|r| r.granted)
            }
        };
        if yes {
            if let Some(&other) = self.taken.get(&epoch) {
                if other != i {
                    self.log(format!("EPOCH {epoch} TAKEN TWICE (by {other} and {i})"));
                    self.taken_twice = true;
                }
            }
            self.taken.insert(epoch, i);
            let now = self.now;
            let lease = self.lease();
            let n = &mut self.nodes[i];
            n.epoch = epoch;
            n.role = Role::Master;
            n.lease_until = now + lease;
            self.log(format!("node {i} promoted ({cause:?}) to epoch {epoch}"));
        }
    }

    /// A candidate or lost slave reaching its peer (`slave.rs::follow`).
    fn contact_peer(&mut self, i: usize) {
        let p = 1 - i;
        if !self.peer_link() {
            // No answer at all.
            self.try_promote(i, Cause::PeerUnreachable, 0);
            return;
        }
        if !self.nodes[p].up {
            // The kernel refuses: the peer's process is not there.
            let cause = if self.nodes[i].followed {
                Cause::MasterRefused
            } else {
                Cause::PeerUnreachable
            };
            self.try_promote(i, cause, 0);
            return;
        }
        // They talk: each now knows (and keeps) the other's id.
        self.nodes[i].peer_id = self.nodes[p].id;
        self.nodes[p].peer_id = self.nodes[i].id;
        if self.nodes[p].role == Role::Master {
            let (m, s) = (&self.nodes[p], &self.nodes[i]);
            let epochs = m.epochs();
            let view = MasterView {
                history: 1,
                epoch: m.epoch,
                epochs: &epochs,
                first: 0,
                tail: m.log.len() as u64,
            };
            let s_epochs = s.epochs();
            let d = decide(
                view,
                SlaveView {
                    history: if s.log.is_empty() { 0 } else { 1 },
                    epoch: s.epoch,
                    tail: s.log.len() as u64,
                    epochs: s_epochs.as_slice(),
                },
            );
            match d {
                Decision::Fenced { .. } => {
                    // The master is stale: it steps down.
                    self.log(format!("node {p} fenced by node {i}"));
                    self.nodes[p].role = Role::Candidate;
                }
                Decision::Continue { .. } | Decision::Truncate { .. } | Decision::Resync => {
                    let to = match d {
                        Decision::Truncate { to } => to as usize,
                        Decision::Resync => 0,
                        _ => self.nodes[i].log.len(),
                    };
                    if to < self.nodes[i].log.len() {
                        self.log(format!(
                            "node {i} rolls back {} records",
                            self.nodes[i].log.len() - to
                        ));
                        self.nodes[i].log.truncate(to);
                    }
                    let master_epoch = self.nodes[p].epoch;
                    let me = &mut self.nodes[i];
                    me.epoch = me.epoch.max(master_epoch);
                    me.role = Role::Slave;
                    me.session_epoch = master_epoch;
                    me.followed = true;
                    me.last_heard = self.now;
                    self.log(format!("node {i} follows node {p}"));
                }
            }
            return;
        }
        // The peer is not master: settle by rank.
        let (me, peer) = (self.nodes[i].rank(), self.nodes[p].rank());
        if settle(me, peer) {
            self.try_promote(i, Cause::Settled, peer.epoch);
        }
    }

    fn tick(&mut self) -> Result<(), String> {
        self.now += self.hb;
        // Faults.
        if self.rng.chance(15) {
            let i = (self.rng.next() % 2) as usize;
            if self.nodes[i].up {
                self.log(format!("crash node {i}"));
                let n = &mut self.nodes[i];
                n.up = false;
                n.role = Role::Candidate;
                n.followed = false;
                // A crashed master's unacknowledged writes stay unacknowledged.
                if self.nodes[1 - i].role != Role::Master {
                    self.pending.clear();
                }
            }
        }
        for i in 0..2 {
            if !self.nodes[i].up && self.rng.chance(100) {
                self.log(format!("restart node {i}"));
                self.nodes[i].up = true;
                // A fresh process has heard nothing yet: its silence starts now.
                self.nodes[i].last_heard = self.now;
            }
        }
        if self.rng.chance(10) {
            let l = (self.rng.next() % 3) as usize;
            self.link_up[l] = !self.link_up[l];
            self.log(format!(
                "link {l} {}",
                if self.link_up[l] { "heals" } else { "cut" }
            ));
        }
        // Masters: lease, witness renewal, replication, client writes.
        for m in 0..2 {
            if !(self.nodes[m].up && self.nodes[m].role == Role::Master) {
                continue;
            }
            let s = 1 - m;
            if self.lease_required && self.now >= self.nodes[m].lease_until {
                self.log(format!("node {m} lease expired: steps down"));
                self.nodes[m].role = Role::Candidate;
                continue;
            }
            let epoch = self.nodes[m].epoch;
            // Writes of an earlier term were never acknowledged; their clients got no answer.
            self.pending.retain(|(_, e)| e.epoch == epoch);
            if let Some(r) = self.ask_witness(
                m,
                Request::Renew {
                    pair: 1,
                    node: self.nodes[m].id,
                    epoch,
                    addr: None,
                    acked: None,
                },
            ) {
                if r.granted {
                    let until = self.now + self.lease();
                    self.nodes[m].lease_until = self.nodes[m].lease_until.max(until);
                } else if r.epoch > epoch {
                    self.log(format!("node {m} fenced by the witness"));
                    self.nodes[m].role = Role::Candidate;
                    continue;
                }
            }
            if self.accepting(m) && self.rng.chance(600) {
                let e = Entry {
                    epoch,
                    id: self.next_id,
                };
                self.next_id += 1;
                self.nodes[m].log.push(e);
                self.pending.push((self.nodes[m].log.len() as u64 - 1, e));
            }
            if self.nodes[s].up
                && self.nodes[s].role == Role::Slave
                && self.nodes[s].session_epoch == epoch
                && self.peer_link()
            {
                // Stream the suffix; the slave is a prefix (checked below) so it appends.
                let from = self.nodes[s].log.len();
                let suffix: Vec<Entry> =
                    self.nodes[m].log[from.min(self.nodes[m].log.len())..].to_vec();
                self.nodes[s].log.extend(suffix);
                self.nodes[s].last_heard = self.now;
                self.nodes[s].epoch = self.nodes[s].epoch.max(epoch);
                // Its ack renews the lease from this heartbeat's send time, and acknowledges.
                let until = self.now + self.lease();
                self.nodes[m].lease_until = self.nodes[m].lease_until.max(until);
                // The slave acknowledges what it holds: the exact entry at that position.
                let slave_log = self.nodes[s].log.clone();
                let (acked, rest): (Vec<_>, Vec<_>) = self
                    .pending
                    .drain(..)
                    .partition(|(p, e)| slave_log.get(*p as usize) == Some(e));
                self.acked.extend(acked);
                self.pending = rest;
            }
        }
        // Slaves: silence, or their master's process gone.
        for s in 0..2 {
            if !(self.nodes[s].up && self.nodes[s].role == Role::Slave) {
                continue;
            }
            let m = 1 - s;
            if !self.nodes[m].up && self.link_up[0] {
                self.log(format!("node {s} sees its master's port refuse"));
                self.nodes[s].role = Role::Candidate;
                self.try_promote(s, Cause::MasterRefused, 0);
            } else if (self.nodes[m].role != Role::Master
                || self.nodes[m].epoch != self.nodes[s].session_epoch)
                && self.nodes[m].up
                && self.link_up[0]
            {
                // The master stepped down (and maybe came back in a new epoch): that
                // closed the session; find out again, with a new handshake.
                self.nodes[s].role = Role::Candidate;
            } else if self.now - self.nodes[s].last_heard >= self.hb * self.dead_ticks as u64 {
                self.log(format!("node {s} declares its master silent"));
                self.nodes[s].role = Role::Candidate;
                self.try_promote(s, Cause::MasterSilent, 0);
            }
        }
        // Candidates.
        for c in 0..2 {
            if self.nodes[c].up && self.nodes[c].role == Role::Candidate {
                self.contact_peer(c);
            }
        }
        self.check()
    }

    fn check(&self) -> Result<(), String> {
        if self.taken_twice {
            return Err("two nodes took the same epoch".into());
        }
        let (a, b) = (&self.nodes[0], &self.nodes[1]);
        if self.accepting(0) && self.accepting(1) {
            return Err("two nodes accept writes at once".into());
        }
        if a.up && b.up && a.role == Role::Master && b.role == Role::Master && a.epoch == b.epoch {
            return Err(format!("two masters in epoch {}", a.epoch));
        }
        for i in 0..2 {
            if !self.accepting(i) {
                continue;
            }
            let log = &self.nodes[i].log;
            for (p, e) in &self.acked {
                if log.get(*p as usize) != Some(e) {
                    let around = |l: &Vec<Entry>| {
                        l[(*p as usize).saturating_sub(2)..(*p as usize + 2).min(l.len())].to_vec()
                    };
                    return Err(format!(
                        "acknowledged write {e:?} at {p} missing on accepting master {i} (len {}): it has {:?}; the other node (len {}) has {:?}",
                        log.len(), around(log), self.nodes[1 - i].log.len(), around(&self.nodes[1 - i].log)
                    ));
                }
            }
            let s = &self.nodes[1 - i];
            if s.up
                && s.role == Role::Slave
                && s.log.len() <= log.len()
                && s.log[..] != log[..s.log.len()]
            {
                return Err(format!("slave {} is not a prefix of master {i}", 1 - i));
            }
        }
        Ok(())
    }
}

fn run(seed: u64, with_witness: bool, ticks: u32) -> Result<(u32, u64), String> {
    let mut sim = Sim::new(seed, with_witness);
    let mut promotions = 0u32;
    let mut last_master = None;
    for _ in 0..ticks {
        if let Err(e) = sim.tick() {
            return Err(format!(
                "seed {seed} (witness {with_witness}): {e}\n{}",
                sim.trace.join("\n")
            ));
        }
        let m = (0..2).find(|&i| sim.accepting(i));
        if m.is_some() && m != last_master {
            promotions += 1;
            last_master = m;
        }
    }
    Ok((promotions, sim.acked.len() as u64))
}

#[test]
fn thousands_of_seeds_keep_the_invariants() {
    let seeds: Vec<u64> = match std::env::var("HS_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("HS_SIM_SEED is a number")],
        Err(_) => (0..3000).collect(),
    };
    let (mut promotions, mut acked) = (0u64, 0u64);
    for &seed in &seeds {
        for with_witness in [true, false] {
            let (p, a) = run(seed, with_witness, 2000).unwrap_or_else(|e| panic!("{e}"));
            promotions += p as u64;
            acked += a;
        }
    }
    // The faults really happen: mastership moved and writes were acknowledged.
    assert!(
        promotions > seeds.len() as u64,
        "only {promotions} changes of master"
    );
    assert!(
        acked > 100 * seeds.len() as u64,
        "only {acked} acknowledged writes"
    );
}

#[test]
fn same_seed_same_run() {
    let a = run(7, true, 2000).unwrap();
    let b = run(7, true, 2000).unwrap();
    assert_eq!(a, b);
}
