//! Deterministic simulation of the real `Log` on a disk that fails.
//!
//! Every seed runs one log (`hs::log::Log`, the code nodes run, with
//! `Preparer::Caller` so every disk call comes in one order) on
//! `hs::log::mem::MemStorage`, and drives it with a seeded mix of appends,
//! flushes, truncations (a slave cut back), compactions, epoch changes, and
//! faults: a process crash between steps or at any disk call inside one, a
//! power cut (unsynced pages lost or torn, unsynced directory entries lost),
//! syncs that fail with `EIO`, a disk that runs full. Beside it runs a model:
//! every record ever written, at its position.
//!
//! After every step, and after every reopen, it checks the invariants
//! ARCHITECTURE.md states for the log:
//! 1. `flushed <= tail`;
//! 2. the records in `[first, tail)` are exactly the model's records there
//!    (same position, epoch, op, key, value): a recovered log is a prefix of
//!    what was written, never a record that was truncated, never garbage;
//! 3. after a power cut, no record below a position that `flush` returned is
//!    lost; after a process crash, no record at all;
//! 4. the snapshot at `first` plus the records after it replay to the same
//!    state as the model's records;
//! 5. after a failed sync the log refuses writes until it is reopened.
//!
//! A failure prints the seed, the step and the broken invariant; it replays
//! exactly with `HS_SIM_SEED=<seed>`. `HS_SIM_SEEDS=<n>` runs more seeds (CI
//! runs the default), `HS_SIM_STEPS=<n>` longer ones.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use hs::log::mem::{Crash, Faults, MemStorage, Rng};
use hs::log::{Log, LogConfig, LogError, Preparer};
use hs::Op;

const SEGMENT_BYTES: u64 = 4096;
const SEEDS_DEFAULT: u64 = 3000;
const STEPS_DEFAULT: u64 = 250;

/// A record as written; equal when the log would hand out the same record
/// (`size` is the model's own bookkeeping, not compared).
#[derive(Clone)]
struct Rec {
    pos: u64,
    size: u64,
    epoch: u32,
    op: Op,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl PartialEq for Rec {
    fn eq(&self, o: &Rec) -> bool {
        (self.pos, self.epoch, self.op, &self.key, &self.value)
            == (o.pos, o.epoch, o.op, &o.key, &o.value)
    }
}

impl std::fmt::Debug for Rec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{{pos {} size {} epoch {} {:?} key {:?} value {} bytes}}",
            self.pos,
            self.size,
            self.epoch,
            self.op,
            self.key,
            self.value.len()
        )
    }
}

/// What the log must hold.
#[derive(Clone, Debug)]
struct Model {
    /// Every record at or above position 0 that the log still has or had
    /// before compaction, in position order.
    recs: Vec<Rec>,
    tail: u64,
    /// Below this, `flush` promised the records survive a power cut.
    promised: u64,
    epoch: u32,
}

impl Model {
    fn state_to(&self, tail: u64) -> HashMap<Vec<u8>, Vec<u8>> {
        let mut m = HashMap::new();
        for r in self.recs.iter().take_while(|r| r.pos < tail) {
            match r.op {
                Op::Put => {
                    m.insert(r.key.clone(), r.value.clone());
                }
                Op::Delete => {
                    m.remove(&r.key);
                }
            }
        }
        m
    }

    fn truncate(&mut self, to: u64) {
        self.recs.retain(|r| r.pos < to);
        self.tail = to;
        self.promised = self.promised.min(to);
    }
}

struct Sim {
    seed: u64,
    rng: Rng,
    disk: MemStorage,
    log: Option<Arc<Log>>,
    model: Model,
    step: u64,
    /// Set after a failed sync: the log must refuse writes until reopened.
    failed: bool,
    /// The model before a step that failed and may be undone by a crash.
    undone: Option<Model>,
    trace: Vec<String>,
    stats: Stats,
}

#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    appends: u64,
    flushes: u64,
    truncates: u64,
    compactions: u64,
    process_crashes: u64,
    power_cuts: u64,
    crashes_inside_a_step: u64,
    sync_errors: u64,
    disk_full_refusals: u64,
    /// Spares made from retired segments (summed over every log opened).
    segments_recycled: u64,
}

fn dir() -> PathBuf {
    PathBuf::from("/sim/log")
}

fn config(disk: &MemStorage) -> LogConfig {
    LogConfig {
        segment_bytes: SEGMENT_BYTES,
        record_bytes_max: 2048,
        retention_bytes_max: 2 * SEGMENT_BYTES,
        storage: Arc::new(disk.clone()),
        preparer: Preparer::Caller,
        ..LogConfig::new(dir())
    }
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let disk = MemStorage::new(seed);
        let (log, _) = Log::open(config(&disk)).expect("open an empty log");
        log.start_history(0x51_0000 + seed as u128)
            .expect("start history");
        Sim {
            seed,
            rng: Rng::new(seed),
            disk,
            log: Some(log),
            model: Model {
                recs: Vec::new(),
                tail: 0,
                promised: 0,
                epoch: 1,
            },
            step: 0,
            failed: false,
            undone: None,
            trace: Vec::new(),
            stats: Stats::default(),
        }
    }

    fn log(&self) -> &Log {
        self.log.as_ref().expect("log open")
    }

    fn fail(&self, what: String) -> ! {
        let tail: Vec<&String> = self.trace.iter().rev().take(12).collect();
        panic!(
            "seed {} step {}: {what}\nlast steps (newest first): {tail:#?}\nreplay: HS_SIM_SEED={} cargo test --release -p hs --test sim_log",
            self.seed, self.step, self.seed
        );
    }

    fn note(&mut self, s: String) {
        if self.trace.len() > 64 {
            self.trace.remove(0);
        }
        self.trace.push(s);
    }

    fn append(&mut self) {
        let r = &mut self.rng;
        let key = vec![b'k', (r.below(12)) as u8];
        let value: Vec<u8> = (0..r.below(300))
            .map(|i| (i as u8) ^ (r.below(256) as u8))
            .collect();
        let op = if r.below(10) == 0 {
            Op::Delete
        } else {
            Op::Put
        };
        let value = if op == Op::Delete { Vec::new() } else { value };
        match self.log().append(op, &key, &value) {
            Ok(pos) => {
                if self.failed {
                    self.fail(format!("append at {pos} accepted after a failed sync"));
                }
                let tail = self.log().tail();
                if pos < self.model.tail {
                    self.fail(format!(
                        "append at {pos} below the model's tail {}",
                        self.model.tail
                    ));
                }
                self.model.recs.push(Rec {
                    pos,
                    size: tail - pos,
                    epoch: self.model.epoch,
                    op,
                    key,
                    value,
                });
                self.model.tail = tail;
                self.stats.appends += 1;
                self.note(format!("append {pos}..{tail}"));
            }
            Err(LogError::Full { why }) => {
                self.stats.disk_full_refusals += 1;
                self.note(format!("append refused: full ({why})"));
            }
            Err(LogError::PreviousIo(_)) if self.failed => {
                self.note("append refused: PreviousIo".into())
            }
            Err(e) => self.fail(format!("append failed: {e}")),
        }
    }

    fn flush(&mut self) {
        match self.log().flush() {
            Ok(to) => {
                if self.failed {
                    self.fail("flush succeeded after a failed sync, before a reopen".into());
                }
                if to != self.model.tail {
                    self.fail(format!(
                        "flush returned {to}, the tail is {}",
                        self.model.tail
                    ));
                }
                self.model.promised = self.model.promised.max(to);
                self.stats.flushes += 1;
                self.note(format!("flush -> {to}"));
            }
            Err(e) => {
                self.failed = true;
                self.note(format!("flush failed: {e}"));
            }
        }
    }

    fn truncate(&mut self) {
        let first = self.log().first();
        let cands: Vec<u64> = self
            .model
            .recs
            .iter()
            .filter(|r| r.pos >= first)
            .map(|r| r.pos)
            .chain(std::iter::once(self.model.tail))
            .collect();
        // Mostly a few records back (a slave cut back past a fork), sometimes far.
        let cands = if self.rng.below(4) == 0 {
            cands
        } else {
            cands[cands.len().saturating_sub(6)..].to_vec()
        };
        let to = cands[self.rng.below(cands.len() as u64) as usize];
        match self.log().truncate(to) {
            Ok(_) => {
                self.model.truncate(to);
                self.stats.truncates += 1;
                self.note(format!("truncate to {to}"));
            }
            Err(e) => {
                // The cut records are gone from the running log, but the sync that
                // would make that durable failed: after a crash the log may hold
                // them again (a failed truncate is undone; the slave's catch-up
                // truncates again) or not.
                self.undone = Some(self.model.clone());
                self.model.truncate(to);
                self.failed = true;
                self.note(format!("truncate to {to} failed: {e}"));
            }
        }
    }

    fn compact(&mut self) {
        match self.log().compact() {
            Ok(moved) => {
                self.stats.compactions += moved.is_some() as u64;
                self.note(format!("compact -> {moved:?}"));
            }
            Err(e) => self.note(format!("compact failed: {e}")),
        }
    }

    fn new_epoch(&mut self) {
        let e = self.model.epoch + 1;
        match self.log().set_epoch(e) {
            Ok(()) => {
                self.model.epoch = e;
                self.note(format!("epoch {e}"));
            }
            Err(err) => self.note(format!("set_epoch {e} failed: {err}")),
        }
    }

    /// Drops the running log and opens the disk a crash of `kind` left.
    fn reopen_from(&mut self, image: MemStorage, kind: Crash, before: &Model, after: &Model) {
        self.stats.segments_recycled += self.log().segments_recycled();
        self.log = None;
        self.disk = image;
        self.failed = false;
        self.undone = None;
        let (log, rec) = match Log::open(config(&self.disk)) {
            Ok(x) => x,
            Err(e) => self.fail(format!("reopen after a {kind:?} crash failed: {e}")),
        };
        self.log = Some(log);
        let tail = rec.tail;
        // 3: nothing promised is lost.
        let floor = match kind {
            Crash::Power => before.promised.min(after.promised),
            Crash::Process => before.tail.min(after.tail),
        };
        if tail < floor {
            self.fail(format!(
                "{kind:?} crash lost records: reopened at tail {tail}, but records below {floor} were {} (recovery: {:?})",
                if kind == Crash::Power { "flushed" } else { "written" },
                rec.reason
            ));
        }
        // 2: a prefix of what was written (before or after the interrupted step).
        let got = self.records();
        let matches = |m: &Model| {
            let first = self.log().first();
            let want: Vec<&Rec> = m
                .recs
                .iter()
                .filter(|r| r.pos >= first && r.pos < tail)
                .collect();
            let whole = m
                .recs
                .iter()
                .all(|r| !(r.pos < tail && r.pos + r.size > tail));
            whole && want.len() == got.len() && want.iter().zip(&got).all(|(a, b)| **a == *b)
        };
        let model = if matches(after) {
            after.clone()
        } else if matches(before) {
            before.clone()
        } else {
            let first = self.log().first();
            let diverge = got
                .iter()
                .zip(after.recs.iter().filter(|r| r.pos >= first))
                .find(|(a, b)| a != b)
                .map(|(a, b)| format!("first difference: log {a:?}, model {b:?}"))
                .unwrap_or_else(|| {
                    format!(
                        "log has {} records below {tail}, model {}",
                        got.len(),
                        after
                            .recs
                            .iter()
                            .filter(|r| r.pos >= first && r.pos < tail)
                            .count()
                    )
                });
            self.fail(format!(
                "after a {kind:?} crash the log [{first}, {tail}) is not a prefix of what was written ({diverge}; recovery cut at {:?}: {:?})",
                rec.truncated_at, rec.reason
            ))
        };
        self.model = model;
        self.model.truncate(tail);
        // What survived a crash and is read back is what the next crash must keep
        // only once a flush covers it again: a reopened log promises nothing new.
        // New records carry the epoch the reopened log's meta file holds.
        self.model.epoch = self.log().meta().epoch;
        self.check();
    }

    fn records(&self) -> Vec<Rec> {
        let log = self.log();
        let mut out: Vec<Rec> = Vec::new();
        if let Err(e) = log.for_each(log.first(), log.tail(), |r| {
            out.push(Rec {
                pos: r.pos,
                size: 0,
                epoch: r.epoch,
                op: r.op,
                key: r.key.to_vec(),
                value: r.value.to_vec(),
            })
        }) {
            self.fail(format!("reading the log back failed: {e}"));
        }
        out
    }

    /// Invariants 1, 2 and 4 on the running log.
    fn check(&mut self) {
        let log = self.log();
        let (first, tail, flushed) = (log.first(), log.tail(), log.flushed());
        if flushed > tail {
            self.fail(format!("flushed {flushed} above the tail {tail}"));
        }
        if tail != self.model.tail {
            self.fail(format!("tail {tail}, model {}", self.model.tail));
        }
        let got = self.records();
        let want: Vec<&Rec> = self.model.recs.iter().filter(|r| r.pos >= first).collect();
        if got.len() != want.len() || got.iter().zip(&want).any(|(a, b)| a != *b) {
            self.fail(format!(
                "log [{first}, {tail}) holds {} records, the model {}: {:?} vs {:?}",
                got.len(),
                want.len(),
                got.iter().zip(&want).find(|(a, b)| a != *b),
                (got.last(), want.last())
            ));
        }
        let snap = match log.load_snapshot() {
            Ok(s) => s,
            Err(e) => self.fail(format!("the snapshot at {first} cannot be read: {e}")),
        };
        let mut state = snap.state.map;
        for r in &got {
            match r.op {
                Op::Put => {
                    state.insert(r.key.clone(), r.value.clone());
                }
                Op::Delete => {
                    state.remove(&r.key);
                }
            }
        }
        if state != self.model.state_to(tail) {
            self.fail(format!(
                "snapshot at {first} plus the log replays to {} keys, the model to {}",
                state.len(),
                self.model.state_to(tail).len()
            ));
        }
    }

    fn crash(&mut self, kind: Crash) {
        let image = self.disk.image(kind, self.rng.next_u64());
        match kind {
            Crash::Process => self.stats.process_crashes += 1,
            Crash::Power => self.stats.power_cuts += 1,
        }
        self.note(format!("{kind:?} crash"));
        let m = self.model.clone();
        let before = self.undone.take().unwrap_or_else(|| m.clone());
        self.reopen_from(image, kind, &before, &m);
    }

    /// Runs one ordinary step, and takes a crash image at a random disk call
    /// inside it; the log reopened from it must hold what was there before
    /// the step or after it.
    fn crash_inside_a_step(&mut self) {
        let kind = if self.rng.below(2) == 0 {
            Crash::Process
        } else {
            Crash::Power
        };
        let at = self.disk.calls() + 1 + self.rng.below(6);
        self.disk.set_faults(Faults {
            capture_before_call: Some(at),
            ..Faults::default()
        });
        let mut before = self.model.clone();
        let mut after = before.clone();
        for _ in 0..8 {
            before = self.model.clone();
            self.ordinary_step();
            after = self.model.clone();
            if self.disk.captured().is_some() {
                break;
            }
        }
        let Some(captured) = self.disk.captured() else {
            self.disk.set_faults(Faults::default());
            return;
        };
        self.disk.set_faults(Faults::default());
        self.stats.crashes_inside_a_step += 1;
        self.note(format!(
            "{kind:?} crash inside the last step (disk call {at})"
        ));
        let image = captured.image(kind, self.rng.next_u64());
        self.reopen_from(image, kind, &before, &after);
    }

    fn ordinary_step(&mut self) {
        match self.rng.below(100) {
            0..=64 => self.append(),
            65..=82 => self.flush(),
            83..=84 => self.truncate(),
            85..=91 => self.compact(),
            _ => self.new_epoch(),
        }
    }

    fn faulty_phase(&mut self) {
        // Some syncs fail, or the disk is nearly full, for a few steps.
        let faults = if self.rng.below(2) == 0 {
            Faults {
                sync_error_ppm: 200_000,
                ..Faults::default()
            }
        } else {
            Faults {
                space_bytes: Some(2 * SEGMENT_BYTES + self.rng.below(6) * SEGMENT_BYTES),
                ..Faults::default()
            }
        };
        let errors_before = self.disk.sync_errors();
        self.disk.set_faults(faults);
        for _ in 0..1 + self.rng.below(8) {
            self.ordinary_step();
            if self.failed {
                // 5: a failed sync stops writes until the log is reopened.
                self.append();
                break;
            }
        }
        self.disk.set_faults(Faults::default());
        self.stats.sync_errors += self.disk.sync_errors() - errors_before;
        if self.failed {
            let kind = if self.rng.below(2) == 0 {
                Crash::Process
            } else {
                Crash::Power
            };
            self.crash(kind);
        }
    }

    fn run(&mut self, steps: u64) {
        while self.step < steps {
            self.step += 1;
            match self.rng.below(100) {
                0..=1 => self.crash(Crash::Process),
                2..=4 => self.crash(Crash::Power),
                5..=7 => self.crash_inside_a_step(),
                8..=10 => self.faulty_phase(),
                _ => self.ordinary_step(),
            }
            if self.failed {
                let kind = if self.rng.below(2) == 0 {
                    Crash::Process
                } else {
                    Crash::Power
                };
                self.crash(kind);
            }
            self.check();
        }
    }
}

#[test]
fn the_log_keeps_its_promises_across_crashes_power_cuts_and_failing_disks() {
    let (seeds, steps) = testkit::sim_seeds(SEEDS_DEFAULT, STEPS_DEFAULT);
    let mut total = Stats::default();
    let t0 = std::time::Instant::now();
    for &seed in &seeds {
        let mut sim = Sim::new(seed);
        sim.run(steps);
        sim.stats.segments_recycled += sim.log().segments_recycled();
        let s = sim.stats;
        total.appends += s.appends;
        total.flushes += s.flushes;
        total.truncates += s.truncates;
        total.compactions += s.compactions;
        total.process_crashes += s.process_crashes;
        total.power_cuts += s.power_cuts;
        total.crashes_inside_a_step += s.crashes_inside_a_step;
        total.sync_errors += s.sync_errors;
        total.disk_full_refusals += s.disk_full_refusals;
        total.segments_recycled += s.segments_recycled;
    }
    println!(
        "{} seeds x {steps} steps in {:.1} s: {total:?}",
        seeds.len(),
        t0.elapsed().as_secs_f64()
    );
    // The faults must really have happened, or the run proved nothing.
    if seeds.len() >= 100 {
        assert!(total.power_cuts > 0 && total.crashes_inside_a_step > 0 && total.sync_errors > 0);
        assert!(total.disk_full_refusals > 0 && total.truncates > 0 && total.compactions > 0);
        assert!(
            total.segments_recycled > 0,
            "no retired segment was ever recycled"
        );
    }
}
