//! The driver: threads, sockets, timers and the public Rust API.
//!
//! Threads of a node:
//! - the caller's threads, in [`Node::publish`]: append to the log, wake the sender;
//! - `hs-io`: a single-threaded tokio runtime running the replication protocol
//!   (the master's listener and sender, or the slave's follower, which also runs
//!   the application's [`Apply`] callback);
//! - `hs-flush`: the flush policy's timer (none with `FlushPolicy::Never`);
//! - `hs-prepare` (inside the log): prepares the next segment.

mod master;
mod net;
mod slave;
pub mod witness;

mod config;
mod error;
mod events;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::log::{Log, LogError, Recovery};
use crate::proto::record::{Op, RecordRef};

pub use config::{Config, FlushPolicy, LagPolicy, Secret, SPIN_CORES_MIN, SPIN_US_DEFAULT};
pub use error::NodeError;
pub use events::{Durability, Event, Stats};

/// The application's side of replication, called on the slave for every record
/// in log order, and on any node when it rebuilds its state from its own log at
/// start-up or after a rollback.
///
/// Runs on the `hs-io` thread (or the thread calling [`Node::start`] during the
/// initial replay, or a blocking helper thread loading a resync's snapshot),
/// one call at a time. The record borrows the log's memory for the call only.
pub trait Apply: Send + 'static {
    /// One record, exactly once per position per process, in position order.
    fn apply(&mut self, rec: &RecordRef<'_>);
    /// Drop all state: a snapshot (through `restore`) and records follow.
    fn reset(&mut self);
    /// One key's value from a snapshot, after `reset`.
    fn restore(&mut self, key: &[u8], value: &[u8]);
}

/// What this node is. Passed to [`Node::start`], it is the preferred role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepts writes and streams them to its slave.
    Master,
    /// Follows a master.
    Slave,
    /// Starting, or just stepped down: finding out who the master is.
    Candidate,
}

impl Role {
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            Role::Master => 1,
            Role::Slave => 2,
            Role::Candidate => 3,
        }
    }
    pub(crate) fn from_u8(v: u8) -> Role {
        match v {
            1 => Role::Master,
            2 => Role::Slave,
            _ => Role::Candidate,
        }
    }
}

/// Longest event queue; past it the oldest event is dropped.
const EVENTS_MAX: usize = 1024;

#[cfg(test)]
pub(crate) type TestHook = Box<dyn Fn(&Shared) + Send>;

/// Counters shared between the API, the IO thread and the flusher.
pub(crate) struct Shared {
    pub cfg: Config,
    pub log: Arc<Log>,
    pub app: Mutex<Box<dyn Apply>>,
    pub role: AtomicU8,
    pub shutdown: AtomicBool,
    pub shutdown_notify: tokio::sync::Notify,
    /// The sender is parked waiting for new records; publishers wake it.
    pub sender_parked: AtomicBool,
    pub data_notify: tokio::sync::Notify,
    /// Where replication stands.
    pub progress: Progress,
    /// The link to the peer: connected, catching up, resyncing, when it was heard.
    pub link: Link,
    pub events: Events,
    /// Signalled when acknowledged positions move (for `wait`).
    pub ack_lock: Mutex<()>,
    pub ack_cv: Condvar,
    pub local_addr: Mutex<Option<SocketAddr>>,
    /// `publish` is allowed: master, lease valid (if one is required), not handing over.
    pub writable: AtomicBool,
    pub lease: Lease,
    /// This node's id (from the config, or kept in the meta file).
    pub node_id: u64,
    /// Origin of the monotonic nanosecond timestamps in heartbeats and leases.
    pub clock: Instant,
    /// Preferred role given to `start`.
    pub prefer_master: bool,
    /// A planned switchover is in progress (the master stopped taking writes).
    pub demoting: AtomicBool,
    /// Ask the master's session to send Handover once the slave has applied everything.
    pub handover: AtomicBool,
    /// Set by anything that makes the master step down; `master::run` returns.
    pub step_down: Mutex<Option<String>>,
    pub step_down_notify: tokio::sync::Notify,
    /// Where the master is, as far as this node knows (for `NotMaster`).
    pub master_addr: Mutex<Option<SocketAddr>>,
    /// Why the application's `Apply` panicked, once it has: the node stopped for good.
    pub poisoned: Mutex<Option<String>>,
    pub is_poisoned: AtomicBool,
    /// Tests: runs inside `publish` after its entry checks, just before the append
    /// (models the process being stopped there).
    #[cfg(test)]
    pub before_append: Mutex<Option<TestHook>>,
}

/// Where replication stands (positions in bytes, counts in records).
#[derive(Default)]
pub(crate) struct Progress {
    /// Master: one past the last byte handed to the socket.
    pub sent: AtomicU64,
    /// Master: the current slave's acknowledgements (0 until its first).
    pub acked_received: AtomicU64,
    pub acked_flushed: AtomicU64,
    pub acked_applied: AtomicU64,
    /// Master: records the slave has applied (from the lag samples).
    pub acked_records: AtomicU64,
    /// One past the last record the application has.
    pub applied: AtomicU64,
    /// Slave: the highest tail the master told of.
    pub master_tail: AtomicU64,
    pub records_published: AtomicU64,
    pub records_applied: AtomicU64,
    /// Master: how old the oldest record not yet applied by the slave is.
    pub lag_ms: AtomicU64,
}

/// The link to the peer.
#[derive(Default)]
pub(crate) struct Link {
    pub slave_connected: AtomicBool,
    pub catching_up: AtomicBool,
    pub catchup_done: AtomicU64,
    pub catchup_total: AtomicU64,
    pub catchup_rate: AtomicU64,
    pub resync_received: AtomicU64,
    pub resync_buffer_max: AtomicU64,
    pub resync_heartbeats: AtomicU64,
    pub reconnects: AtomicU64,
    pub frames_rejected: AtomicU64,
    /// When this node last got a frame from a master (`clock` ns; 0 = its start).
    /// A promotion on silence needs a full silence period since then, measured by
    /// this node itself: its own acks, sent before a crash, may still be
    /// extending the old master's lease.
    pub last_master_frame_ns: AtomicU64,
    /// When the pair's master last called this node's port (a Hello as master,
    /// `clock` ns; 0 = never): it lives, whatever its port says to this node.
    pub master_called_ns: AtomicU64,
    /// When this node last handed over to its peer (`clock` ns; 0 = never):
    /// it takes over again only after a whole silence from then.
    pub handed_over_ns: AtomicU64,
    /// Master: when the current slave's last ack arrived (`clock` ns; 0 = none yet).
    pub last_slave_frame_ns: AtomicU64,
}

/// The application's event queue (`EVENTS_MAX` at most; the oldest dropped).
#[derive(Default)]
pub(crate) struct Events {
    pub queue: Mutex<VecDeque<Event>>,
    pub dropped: AtomicU64,
    pub cv: Condvar,
}

/// The master's lease.
pub(crate) struct Lease {
    /// A witness is configured and the split risk is not accepted: writes need a lease.
    pub required: bool,
    /// The lease runs until this point of `clock` (nanoseconds).
    pub until_ns: AtomicU64,
    pub notify: tokio::sync::Notify,
}

impl Shared {
    /// What the role decisions (`proto::role`) need of the configuration.
    pub fn role_config(&self) -> crate::proto::role::RoleConfig {
        crate::proto::role::RoleConfig {
            heartbeat_interval_ms: self.cfg.heartbeat_interval_ms,
            heartbeat_dead_ticks: self.cfg.heartbeat_dead_ticks,
            has_witness: self.cfg.witness.is_some(),
            accept_split_risk: self.cfg.accept_split_risk,
            prefer_master: self.prefer_master,
        }
    }

    /// `pos` in this node's history, for the witness (none before it has one).
    pub fn log_mark(&self, pos: u64) -> Option<crate::proto::witness::LogMark> {
        let history = self.log.meta().history;
        (history != 0).then_some(crate::proto::witness::LogMark { history, pos })
    }

    /// Monotonic nanoseconds since this node started.
    pub fn now_ns(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64
    }

    /// Extends the lease to `until_ns` (never shortens it).
    pub fn renew_lease(&self, until_ns: u64) {
        if self.lease.until_ns.fetch_max(until_ns, Ordering::AcqRel) < until_ns {
            self.lease.notify.notify_one();
        }
    }

    /// Records a role change: role, writability, the event and a log line.
    pub fn set_role(&self, role: Role, reason: &str) {
        let old = Role::from_u8(self.role.swap(role.to_u8(), Ordering::AcqRel));
        let epoch = self.log.meta().epoch;
        let writable = role == Role::Master
            && !self.lease.required
            && !self.demoting.load(Ordering::Acquire)
            && !self.poisoned();
        self.log.seal(role != Role::Master);
        self.writable.store(writable, Ordering::Release);
        if old != role {
            // What a standby acknowledged in the previous role says nothing about
            // this one (the log may have been cut back or replaced since).
            self.forget_standby();
            tracing::info!(?old, new = ?role, epoch, reason, "role changed");
            self.emit(Event::RoleChanged {
                role,
                epoch,
                reason: reason.to_string(),
            });
        }
        // Waiters (`wait`, `switchover`) re-check their condition on a role change too.
        self.acks_moved();
    }

    /// Forgets every position a standby acknowledged, and what is derived from
    /// them (lag), before they could be trusted for a log they no longer describe:
    /// on a role change, a new slave session, a truncate or a resync. Acks only
    /// grow within one session (`fetch_max`); across sessions they start from 0,
    /// so `wait` answers only for what the current standby said it holds.
    pub fn forget_standby(&self) {
        self.progress.acked_received.store(0, Ordering::Release);
        self.progress.acked_flushed.store(0, Ordering::Release);
        self.progress.acked_applied.store(0, Ordering::Release);
        self.progress.acked_records.store(0, Ordering::Release);
        self.progress.sent.store(0, Ordering::Release);
        self.progress.lag_ms.store(0, Ordering::Relaxed);
        self.acks_moved();
    }

    /// Asks the master loop to step down (to candidate) for `reason`.
    pub fn request_step_down(&self, reason: String) {
        let mut g = self.step_down.lock();
        if g.is_none() {
            *g = Some(reason);
        }
        self.writable.store(false, Ordering::Release);
        self.step_down_notify.notify_one();
    }

    pub fn emit(&self, e: Event) {
        tracing::debug!(event = ?e, "event");
        let mut q = self.events.queue.lock();
        if q.len() >= EVENTS_MAX {
            q.pop_front();
            self.events.dropped.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(e);
        self.events.cv.notify_all();
    }

    pub fn acks_moved(&self) {
        let _g = self.ack_lock.lock();
        self.ack_cv.notify_all();
    }

    pub fn is_shutdown(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// Whether the application's `Apply` has panicked (the node stopped for good).
    pub fn poisoned(&self) -> bool {
        self.is_poisoned.load(Ordering::Acquire)
    }

    /// The error every call gets once the node is poisoned.
    pub fn poisoned_error(&self) -> NodeError {
        NodeError::ApplyPanicked {
            reason: self.poisoned.lock().clone().unwrap_or_default(),
        }
    }

    /// Runs the application's code (`f` calls `Apply`), catching a panic. A panic
    /// poisons the node: its state no longer matches the log, so it stops taking,
    /// replicating and applying writes, says so in a `Fatal` event, and every call
    /// returns `ApplyPanicked`. The log is intact; a restart replays it.
    pub fn call_app<R>(&self, f: impl FnOnce() -> R) -> Result<R, NodeError> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(r) => Ok(r),
            Err(p) => {
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".into());
                self.poison(format!("panic: {msg}"));
                Err(self.poisoned_error())
            }
        }
    }

    fn poison(&self, reason: String) {
        {
            let mut g = self.poisoned.lock();
            if g.is_some() {
                return;
            }
            *g = Some(reason.clone());
        }
        self.is_poisoned.store(true, Ordering::Release);
        self.writable.store(false, Ordering::Release);
        self.log.halt();
        tracing::error!(reason, "the application's Apply panicked: this node stopped taking and applying writes; fix the application and restart the node");
        self.request_step_down(format!("the application's Apply panicked: {reason}"));
        self.set_role(Role::Candidate, "the application's Apply panicked");
        // Last: whoever sees the event sees the node already stopped.
        self.emit(Event::Fatal { reason });
    }

    /// Hands a snapshot to the application: `reset`, then `restore` per key.
    pub fn load_snapshot_into(app: &mut dyn Apply, snap: &crate::log::snapshot::Snapshot) {
        app.reset();
        for (k, v) in &snap.state.map {
            app.restore(k, v);
        }
    }

    /// Rebuilds the application's state from this node's own log: snapshot, then records.
    pub fn replay(&self) -> Result<u64, NodeError> {
        let snap = self.log.load_snapshot()?;
        let mut app = self.app.lock();
        let mut n = 0u64;
        let tail = self.log.tail();
        self.call_app(|| {
            Shared::load_snapshot_into(&mut **app, &snap);
            self.log.for_each(self.log.first(), tail, |r| {
                app.apply(r);
                n += 1;
            })
        })??;
        self.progress.applied.store(tail, Ordering::Release);
        Ok(n)
    }
}

/// A running hs node: master or slave.
pub struct Node {
    shared: Arc<Shared>,
    io: Option<std::thread::JoinHandle<()>>,
    flusher: Option<std::thread::JoinHandle<()>>,
    recovery: Recovery,
}

impl Node {
    /// Opens the log in `cfg.dir` (recovering a torn tail), rebuilds the
    /// application's state from it through `app`, and starts replicating.
    pub fn start(cfg: Config, role: Role, app: impl Apply) -> Result<Node, NodeError> {
        cfg.check(role)?;
        let (log, recovery) = Log::open(cfg.log_config())?;
        if recovery.truncated_at.is_some() {
            tracing::warn!(dir = %cfg.dir.display(), at = ?recovery.truncated_at, reason = ?recovery.reason, "log recovered with a cut");
        }
        // The node's id is made once and kept with its log.
        let node_id = match (cfg.node_id, log.meta().node) {
            (0, 0) => (crate::log::meta::new_history_id() as u64).max(1),
            (0, kept) => kept,
            (given, _) => given,
        };
        log.set_ids(node_id, 0)?;
        if cfg.peer.is_none() && log.meta().history == 0 {
            log.start_history(crate::log::meta::new_history_id())?;
        }
        let shared = Arc::new(Shared {
            log: log.clone(),
            app: Mutex::new(Box::new(app)),
            role: AtomicU8::new(role.to_u8()),
            shutdown: AtomicBool::new(false),
            shutdown_notify: tokio::sync::Notify::new(),
            sender_parked: AtomicBool::new(false),
            data_notify: tokio::sync::Notify::new(),
            progress: Progress {
                master_tail: AtomicU64::new(log.tail()),
                records_published: AtomicU64::new(recovery.records),
                ..Progress::default()
            },
            link: Link::default(),
            events: Events::default(),
            ack_lock: Mutex::new(()),
            ack_cv: Condvar::new(),
            local_addr: Mutex::new(None),
            writable: AtomicBool::new(false),
            lease: Lease {
                required: cfg.witness.is_some() && !cfg.accept_split_risk,
                until_ns: AtomicU64::new(0),
                notify: tokio::sync::Notify::new(),
            },
            clock: Instant::now(),
            node_id,
            prefer_master: role == Role::Master,
            demoting: AtomicBool::new(false),
            handover: AtomicBool::new(false),
            step_down: Mutex::new(None),
            step_down_notify: tokio::sync::Notify::new(),
            master_addr: Mutex::new(None),
            poisoned: Mutex::new(None),
            is_poisoned: AtomicBool::new(false),
            #[cfg(test)]
            before_append: Mutex::new(None),
            cfg,
        });
        let replayed = shared.replay()?;
        shared
            .progress
            .records_applied
            .store(replayed, Ordering::Relaxed);
        tracing::info!(dir = %shared.cfg.dir.display(), ?role, first = recovery.first, tail = recovery.tail, replayed, "node started");

        // The listener is bound here so the caller learns the port (and a bind error) at once.
        let listener = match shared.cfg.listen {
            Some(addr) => {
                let l = std::net::TcpListener::bind(addr).map_err(|source| NodeError::Io {
                    op: "bind the replication listener",
                    source,
                })?;
                l.set_nonblocking(true).map_err(|source| NodeError::Io {
                    op: "set nonblocking",
                    source,
                })?;
                *shared.local_addr.lock() = l.local_addr().ok();
                Some(l)
            }
            None => None,
        };
        // A lone master serves at once; a node with a peer first finds out who is master.
        let first_role = if shared.cfg.peer.is_none() {
            Role::Master
        } else {
            Role::Candidate
        };
        if first_role == Role::Master {
            log.ensure_writable()?;
        }
        shared.set_role(first_role, "started");
        let s2 = shared.clone();
        let io = std::thread::Builder::new()
            .name("hs-io".into())
            .spawn(move || {
                // IO and timers only: no signal driver (it leaves a process-wide global behind).
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the replication runtime");
                        return;
                    }
                };
                rt.block_on(run_roles(s2, listener, first_role));
            })
            .map_err(|source| NodeError::Io {
                op: "spawn hs-io thread",
                source,
            })?;
        let s3 = shared.clone();
        let policy = shared.cfg.flush;
        let flusher = Some(
            std::thread::Builder::new()
                .name("hs-flush".into())
                .spawn(move || flusher(s3, policy))
                .map_err(|source| NodeError::Io {
                    op: "spawn hs-flush thread",
                    source,
                })?,
        );
        Ok(Node {
            shared,
            io: Some(io),
            flusher,
            recovery,
        })
    }

    /// Appends a state change and returns its log position. Never waits for the
    /// network, the disk or the slave; waits for log space at most
    /// `publish_timeout_ms` (then `Full`). Any thread may call it.
    #[inline]
    pub fn publish(&self, key: &[u8], op: Op, value: &[u8]) -> Result<u64, NodeError> {
        let s = &*self.shared;
        if !s.writable.load(Ordering::Acquire) {
            if s.poisoned() {
                return Err(s.poisoned_error());
            }
            return Err(NodeError::NotMaster {
                master: self.master_addr(),
            });
        }
        if s.cfg.lag_bytes_max > 0 {
            self.check_lag()?;
        }
        #[cfg(test)]
        if let Some(h) = &*s.before_append.lock() {
            h(s);
        }
        // The lease watcher clears `writable` when the lease ends, but a process
        // resumed after a long stop must not take a write before it runs: the lease
        // is checked under the append lock, so no stop between check and write.
        let lease_holds = || {
            crate::proto::role::lease_holds(
                s.lease.required,
                s.lease.until_ns.load(Ordering::Acquire),
                s.now_ns(),
            )
        };
        let r = if s.cfg.publish_timeout_ms == 0 {
            s.log.append_if(op, key, value, lease_holds)
        } else {
            s.log.append_wait_if(
                op,
                key,
                value,
                Duration::from_millis(s.cfg.publish_timeout_ms),
                lease_holds,
            )
        };
        let pos = match r {
            Ok(p) => p,
            Err(LogError::Sealed) if s.poisoned() => return Err(s.poisoned_error()),
            Err(LogError::Sealed) => {
                return Err(NodeError::NotMaster {
                    master: self.master_addr(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        s.progress.records_published.fetch_add(1, Ordering::Relaxed);
        if s.sender_parked.load(Ordering::SeqCst) {
            s.sender_parked.store(false, Ordering::SeqCst);
            s.data_notify.notify_one();
        }
        Ok(pos)
    }

    /// Applies `lag_bytes_max` while a slave is connected (with no slave there is
    /// nothing to lag; the `SlaveLost` event and `slave_connected` report it).
    fn check_lag(&self) -> Result<(), NodeError> {
        let s = &*self.shared;
        let max = s.cfg.lag_bytes_max;
        let lag = || {
            s.log
                .tail()
                .saturating_sub(s.progress.acked_received.load(Ordering::Acquire))
        };
        if !s.link.slave_connected.load(Ordering::Acquire) || lag() <= max {
            return Ok(());
        }
        s.emit(Event::LagOverLimit { lag: lag() });
        if s.cfg.lag_policy == LagPolicy::Refuse {
            return Err(NodeError::LagExceeded { lag: lag(), max });
        }
        let deadline = crate::log::deadline_after(Duration::from_millis(s.cfg.publish_timeout_ms));
        let mut g = s.ack_lock.lock();
        while s.link.slave_connected.load(Ordering::Acquire) && lag() > max {
            if s.ack_cv.wait_until(&mut g, deadline).timed_out() {
                return Err(NodeError::LagExceeded { lag: lag(), max });
            }
        }
        Ok(())
    }

    /// Where the master is, as far as this node knows (itself if it is master).
    pub fn master_addr(&self) -> Option<SocketAddr> {
        if self.role() == Role::Master {
            return self.local_addr();
        }
        *self.shared.master_addr.lock()
    }

    /// Whether `publish` would be accepted now.
    pub fn is_writable(&self) -> bool {
        self.shared.writable.load(Ordering::Acquire)
    }

    /// Planned switchover (for upgrades): stops taking writes, waits until the slave
    /// has applied everything, hands mastership over, and continues as its slave.
    /// Nothing is lost. On timeout the node keeps (or takes back) the master role.
    pub fn switchover(&self, timeout: Duration) -> Result<(), NodeError> {
        let s = &*self.shared;
        if s.poisoned() {
            return Err(s.poisoned_error());
        }
        if self.role() != Role::Master {
            return Err(NodeError::NotMaster {
                master: self.master_addr(),
            });
        }
        if !s.link.slave_connected.load(Ordering::Acquire) {
            return Err(NodeError::NoStandby);
        }
        let deadline = crate::log::deadline_after(timeout);
        s.demoting.store(true, Ordering::Release);
        s.writable.store(false, Ordering::Release);
        // After this, no publish can land: the handover position is final.
        s.log.seal(true);
        let undo = |e: NodeError| {
            s.handover.store(false, Ordering::Release);
            s.demoting.store(false, Ordering::Release);
            if self.role() == Role::Master {
                s.set_role(Role::Master, "switchover abandoned");
                if s.lease.required {
                    s.lease.notify.notify_one();
                }
            }
            Err(e)
        };
        // Writes in flight finish; then the slave must apply up to the tail.
        s.handover.store(true, Ordering::Release);
        s.data_notify.notify_one();
        let mut g = s.ack_lock.lock();
        loop {
            if self.role() != Role::Master {
                break;
            }
            if s.ack_cv.wait_until(&mut g, deadline).timed_out() && self.role() == Role::Master {
                drop(g);
                return undo(NodeError::Timeout(timeout));
            }
        }
        drop(g);
        s.demoting.store(false, Ordering::Release);
        Ok(())
    }

    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<u64, NodeError> {
        self.publish(key, Op::Put, value)
    }

    pub fn delete(&self, key: &[u8]) -> Result<u64, NodeError> {
        self.publish(key, Op::Delete, &[])
    }

    /// Waits until the record at `pos` (a position `publish` returned) has reached
    /// `level`, or `timeout` passes.
    pub fn wait(&self, pos: u64, level: Durability, timeout: Duration) -> Result<(), NodeError> {
        let s = &*self.shared;
        let reached = || {
            let acked = match level {
                Durability::Async => return true,
                Durability::Received => s.progress.acked_received.load(Ordering::Acquire),
                Durability::Flushed => s.progress.acked_flushed.load(Ordering::Acquire),
                Durability::Applied => s.progress.acked_applied.load(Ordering::Acquire),
            };
            acked > pos
        };
        let deadline = crate::log::deadline_after(timeout);
        let mut g = s.ack_lock.lock();
        while !reached() {
            if s.is_shutdown() {
                return Err(NodeError::Shutdown);
            }
            if s.poisoned() {
                return Err(s.poisoned_error());
            }
            if s.ack_cv.wait_until(&mut g, deadline).timed_out() && !reached() {
                return Err(NodeError::Timeout(timeout));
            }
        }
        Ok(())
    }

    /// The next event, waiting up to `timeout`.
    pub fn next_event(&self, timeout: Duration) -> Option<Event> {
        let mut q = self.shared.events.queue.lock();
        if q.is_empty() {
            self.shared.events.cv.wait_for(&mut q, timeout);
        }
        q.pop_front()
    }

    pub fn role(&self) -> Role {
        Role::from_u8(self.shared.role.load(Ordering::Acquire))
    }

    /// The replication listener's address (a master started with port 0 learns its port here).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        *self.shared.local_addr.lock()
    }

    /// What opening the log found.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    pub fn stats(&self) -> Stats {
        let s = &*self.shared;
        let log = &s.log;
        let meta = log.meta();
        let role = self.role();
        let written = log.tail();
        let sent = s.progress.sent.load(Ordering::Relaxed);
        let applied = s.progress.applied.load(Ordering::Relaxed);
        let acked_applied = s.progress.acked_applied.load(Ordering::Relaxed);
        let master_tail = if role == Role::Master {
            written
        } else {
            s.progress.master_tail.load(Ordering::Relaxed).max(written)
        };
        let published = s.progress.records_published.load(Ordering::Relaxed);
        let (lag_bytes, lag_records) = match role {
            Role::Master => (
                written.saturating_sub(acked_applied),
                published.saturating_sub(s.progress.acked_records.load(Ordering::Relaxed)),
            ),
            Role::Slave | Role::Candidate => (master_tail.saturating_sub(applied), 0),
        };
        Stats {
            role: Some(role),
            epoch: meta.epoch,
            history: meta.history,
            first: log.first(),
            written,
            flushed: log.flushed(),
            sent,
            acked_received: s.progress.acked_received.load(Ordering::Relaxed),
            acked_flushed: s.progress.acked_flushed.load(Ordering::Relaxed),
            acked_applied,
            applied,
            master_tail,
            lag_bytes,
            lag_records,
            lag_ms: s.progress.lag_ms.load(Ordering::Relaxed),
            queue_bytes: if role == Role::Master && s.link.slave_connected.load(Ordering::Relaxed) {
                written.saturating_sub(sent)
            } else {
                0
            },
            records_published: published,
            records_applied: s.progress.records_applied.load(Ordering::Relaxed),
            slave_connected: s.link.slave_connected.load(Ordering::Relaxed),
            catching_up: s.link.catching_up.load(Ordering::Relaxed),
            catchup_done_bytes: s.link.catchup_done.load(Ordering::Relaxed),
            catchup_total_bytes: s.link.catchup_total.load(Ordering::Relaxed),
            catchup_rate_bytes_per_s: s.link.catchup_rate.load(Ordering::Relaxed),
            resync_received_bytes: s.link.resync_received.load(Ordering::Relaxed),
            resync_buffer_bytes_max: s.link.resync_buffer_max.load(Ordering::Relaxed),
            resync_heartbeats: s.link.resync_heartbeats.load(Ordering::Relaxed),
            reconnects: s.link.reconnects.load(Ordering::Relaxed),
            frames_rejected: s.link.frames_rejected.load(Ordering::Relaxed),
            events_dropped: s.events.dropped.load(Ordering::Relaxed),
            disk_bytes: log.disk_bytes(),
        }
    }

    /// Applies retention now: folds segments beyond `retention_bytes_max` into a
    /// snapshot and deletes them. Returns the new first position if it moved.
    pub fn compact(&self) -> Result<Option<u64>, NodeError> {
        Ok(self.shared.log.compact()?)
    }

    /// Writes the log to disk now.
    pub fn flush(&self) -> Result<u64, NodeError> {
        Ok(self.shared.log.flush()?)
    }

    /// Stops replication and the node's threads. Also done on drop.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.shutdown_notify.notify_waiters();
        self.shared.data_notify.notify_one();
        self.shared.step_down_notify.notify_one();
        self.shared.lease.notify.notify_one();
        self.shared.acks_moved();
        if let Some(h) = self.io.take() {
            let _ = h.join();
        }
        if let Some(h) = self.flusher.take() {
            let _ = h.join();
        }
        let _ = self.shared.log.flush();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How a role's loop ended.
pub(crate) enum Outcome {
    Shutdown,
    /// Promoted (the epoch is durable): serve as master.
    Promoted(String),
    /// Stepped down (fenced, lease lost, handed over): find the master.
    SteppedDown(String),
}

/// The IO thread's life: master or slave loop, switching as roles change.
async fn run_roles(s: Arc<Shared>, listener: Option<std::net::TcpListener>, first: Role) {
    let listener = match listener.map(tokio::net::TcpListener::from_std).transpose() {
        Ok(l) => l.map(Arc::new),
        Err(e) => {
            tracing::error!(error = %e, "cannot use the replication listener");
            return;
        }
    };
    let mut role = first;
    loop {
        let out = match (role, &listener) {
            (Role::Master, Some(l)) => master::run(s.clone(), l.clone()).await,
            (Role::Master, None) => {
                unreachable!("a master always has a listener (checked at start)")
            }
            _ => slave::run(s.clone(), listener.clone()).await,
        };
        if s.poisoned() {
            // Stopped for good: no replication, no promotion, the listener closed.
            return;
        }
        match out {
            Outcome::Shutdown => return,
            Outcome::Promoted(why) => {
                *s.step_down.lock() = None;
                if s.log.meta().history == 0 {
                    if let Err(e) = s.log.start_history(crate::log::meta::new_history_id()) {
                        tracing::error!(error = %e, "cannot start a history; staying candidate");
                        continue;
                    }
                }
                if let Err(e) = s.log.ensure_writable() {
                    tracing::error!(error = %e, "promoted but the log cannot take writes; staying candidate");
                    s.set_role(Role::Candidate, "log not writable");
                    role = Role::Candidate;
                    continue;
                }
                s.set_role(Role::Master, &why);
                role = Role::Master;
            }
            Outcome::SteppedDown(why) => {
                s.set_role(Role::Candidate, &why);
                role = Role::Candidate;
            }
        }
    }
}

/// Flushes the log on the policy's timer and runs retention once a second.
fn flusher(s: Arc<Shared>, policy: FlushPolicy) {
    let period = match policy {
        FlushPolicy::EveryMs(ms) => Duration::from_millis(ms.max(1)),
        FlushPolicy::EveryBatch => Duration::from_millis(1),
        FlushPolicy::Never => Duration::from_millis(100),
    };
    let mut last_compact = Instant::now();
    while !s.is_shutdown() {
        std::thread::sleep(period);
        if policy == FlushPolicy::Never {
            // no flushing: the kernel writes pages back on its own
        } else if let Err(e) = s.log.flush() {
            tracing::error!(error = %e, "flush failed; the node refuses writes until restarted");
            return;
        }
        if last_compact.elapsed() >= Duration::from_secs(1) {
            last_compact = Instant::now();
            if let Err(e) = s.log.compact() {
                tracing::warn!(error = %e, "retention could not compact the log; it keeps growing until this is fixed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nop;
    impl Apply for Nop {
        fn apply(&mut self, _: &RecordRef<'_>) {}
        fn reset(&mut self) {}
        fn restore(&mut self, _: &[u8], _: &[u8]) {}
    }

    fn until(what: &str, f: impl Fn() -> bool) {
        let t0 = Instant::now();
        while !f() {
            assert!(t0.elapsed() < Duration::from_secs(20), "timed out: {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A master stopped between `publish`'s checks and the append, for longer
    /// than its lease, must not write when it resumes: by then its slave may
    /// have been promoted.
    #[test]
    fn a_lease_that_ends_just_before_the_append_refuses_the_write() {
        let d = tempfile::tempdir().unwrap();
        // A witness nobody answers at: no renewals, only the start-up grace lease.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let witness = dead.local_addr().unwrap();
        drop(dead);
        let mut c = Config::new(d.path());
        c.listen = Some("127.0.0.1:0".parse().unwrap());
        c.witness = Some(witness);
        c.segment_bytes = 1 << 20;
        c.record_bytes_max = 4096;
        // Grace lease of (5 - 2) x 1 s: ample time to publish once inside it.
        c.heartbeat_interval_ms = 1000;
        let n = Node::start(c, Role::Master, Nop).unwrap();
        until("the grace lease", || n.is_writable());
        let ran = Arc::new(AtomicBool::new(false));
        let ran2 = ran.clone();
        *n.shared.before_append.lock() = Some(Box::new(move |s: &Shared| {
            // The stop: when the process resumes, its lease has run out.
            s.lease.until_ns.store(s.now_ns(), Ordering::Release);
            ran2.store(true, Ordering::Release);
        }));
        let tail = n.stats().written;
        let r = n.put(b"k", b"v");
        assert!(
            ran.load(Ordering::Acquire),
            "publish refused before the hook"
        );
        assert!(
            matches!(r, Err(NodeError::NotMaster { .. })),
            "a master wrote after its lease ran out: {r:?}"
        );
        assert_eq!(n.stats().written, tail, "the record landed in the log");
    }
}
