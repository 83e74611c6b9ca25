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

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::log::{Log, LogConfig, LogError, Recovery};
use crate::proto::record::{Op, RecordRef};

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

/// When the log is written to disk (msync). The memory-mapped log survives a
/// process crash either way; this is about a machine crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Let the kernel write pages back when it likes.
    Never,
    /// Flush every this many milliseconds.
    EveryMs(u64),
    /// Flush as soon as possible: the slave flushes each received batch before
    /// acknowledging it; the master flushes whenever new records are there (1 ms poll).
    EveryBatch,
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

/// What the master does when the slave lags more than `lag_bytes_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LagPolicy {
    /// `publish` waits (up to `publish_timeout_ms`) for the slave to catch up.
    Wait,
    /// `publish` fails at once with `LagExceeded`.
    Refuse,
}

/// A shared secret that authenticates the two nodes of a pair (and them to their
/// witness) by HMAC-SHA256 challenge and response (`proto::auth`). Its bytes are
/// never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// At least 16 bytes of randomness are recommended (`Config::check` refuses
    /// an empty secret).
    pub fn new(bytes: impl AsRef<[u8]>) -> Secret {
        Secret(bytes.as_ref().to_vec())
    }
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// Everything a node needs. Limits carry their unit in their name.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the log, snapshots and meta file live. One node per directory.
    pub dir: PathBuf,
    /// This node's id: in Hello, in the witness's records, the last tie-break of
    /// start-up settlement, and what decides which epochs the node may take.
    /// 0 (the default): the id kept in the log directory, made at first start.
    pub node_id: u64,
    /// Address this node accepts its peer on when it is master (port 0 picks one;
    /// see [`Node::local_addr`]). A node without one can never become master.
    pub listen: Option<SocketAddr>,
    /// The other node of the pair (its `listen` address): followed when it is
    /// master, contacted at start-up to settle who is. None: a lone master.
    pub peer: Option<SocketAddr>,
    /// A witness shared by pairs (`hs-witness`, or the balancer): it must agree to
    /// a promotion on silence, and renews the master's lease.
    pub witness: Option<SocketAddr>,
    /// Identifies this pair at the witness; both nodes of a pair use the same.
    pub pair_id: u64,
    /// Accept the risk of two masters: without a witness, a slave promotes when its
    /// master goes silent, and a preferred master starts alone when its peer cannot
    /// be reached. Off by default: silence alone never makes a second master.
    pub accept_split_risk: bool,
    /// Most bytes the slave may lag behind (not yet received) while connected; past
    /// it `lag_policy` applies. 0: no limit. Bounds what async writes can lose.
    pub lag_bytes_max: u64,
    pub lag_policy: LagPolicy,
    pub segment_bytes: u64,
    pub record_bytes_max: usize,
    pub retention_bytes_max: u64,
    pub flush: FlushPolicy,
    /// Catch-up traffic limit in bytes per second; 0 = unlimited. Live traffic is never limited.
    pub catchup_rate_bytes_per_s: u64,
    /// Largest Data frame the master sends (whole records; one record may exceed it).
    pub batch_bytes_max: usize,
    /// Heartbeat timer period.
    pub heartbeat_interval_ms: u64,
    /// Idle heartbeat ticks after which the peer is declared dead.
    pub heartbeat_dead_ticks: u32,
    /// First and longest wait between a slave's reconnection attempts.
    pub reconnect_backoff_min_ms: u64,
    pub reconnect_backoff_max_ms: u64,
    /// How long `publish` waits for log space (the next segment being prepared)
    /// before `Full`; 0 = fail at once. Only a publisher outrunning the disk waits.
    pub publish_timeout_ms: u64,
    /// Shared by both nodes of the pair and their witness: every connection to the
    /// replication port and to the witness proves it (HMAC challenge and response)
    /// before anything it says is used. None (the default): anyone who can reach
    /// the ports is trusted — keep them on a network you control.
    pub secret: Option<Secret>,
    /// Largest snapshot this node accepts in a resync, in bytes: the slave writes
    /// it to a temporary file in its log directory as it arrives (holding one
    /// piece in memory), so this bounds that file — the disk a resync takes
    /// besides the log. A Welcome claiming more is refused at once. Raise it if
    /// the state is larger.
    pub snapshot_bytes_max: u64,
    /// Microseconds the master's sender (waiting for a new record) and the
    /// slave's applier (waiting for the next frame) spin, checking, before they
    /// park: a record that comes within it skips a thread wake-up (tens of µs
    /// under load), which dominates the publish → applied latency. Costs up to
    /// this much CPU per idle moment of each; 0: park at once. Default:
    /// `SPIN_US_DEFAULT` on a machine with at least `SPIN_CORES_MIN` cores, else
    /// 0 — measured on 2 shared cores, spinning threads delayed the publisher
    /// and the applier they spin for (`hs-bench latency`, 100,000 rec/s, back
    /// to back: p99 0.28 ms with 0, 5.0 ms with 50 µs, 6.4 ms with 20 µs).
    pub spin_us: u64,
}

/// `Config::spin_us` where there are cores to spin on: about five record
/// intervals at 100,000 records a second.
pub const SPIN_US_DEFAULT: u64 = 50;
/// Cores below which `Config::spin_us` defaults to 0: the publisher, the sender
/// and (on the standby's machine) the applier each want one.
pub const SPIN_CORES_MIN: usize = 4;

impl Config {
    /// Defaults for a node storing its log in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Config {
        Config {
            dir: dir.into(),
            node_id: 0,
            listen: None,
            peer: None,
            witness: None,
            pair_id: 1,
            accept_split_risk: false,
            lag_bytes_max: 0,
            lag_policy: LagPolicy::Wait,
            segment_bytes: 64 << 20,
            record_bytes_max: 1 << 20,
            retention_bytes_max: 4 << 30,
            flush: FlushPolicy::EveryMs(100),
            catchup_rate_bytes_per_s: 0,
            batch_bytes_max: 256 << 10,
            heartbeat_interval_ms: 100,
            heartbeat_dead_ticks: 5,
            reconnect_backoff_min_ms: 20,
            reconnect_backoff_max_ms: 1000,
            publish_timeout_ms: 100,
            secret: None,
            snapshot_bytes_max: 4 << 30,
            spin_us: if std::thread::available_parallelism().map_or(1, |n| n.get())
                >= SPIN_CORES_MIN
            {
                SPIN_US_DEFAULT
            } else {
                0
            },
        }
    }

    fn log_config(&self) -> LogConfig {
        LogConfig {
            segment_bytes: self.segment_bytes,
            record_bytes_max: self.record_bytes_max,
            retention_bytes_max: self.retention_bytes_max,
            ..LogConfig::new(self.dir.clone())
        }
    }

    /// Largest frame this node accepts: a batch, or one record of the maximum size.
    pub(crate) fn frame_bytes_max(&self) -> usize {
        self.batch_bytes_max.max(self.record_bytes_max + 8) + 64
    }

    fn check(&self, role: Role) -> Result<(), NodeError> {
        let bad = |s: &str| Err(NodeError::Config(s.to_string()));
        if !self.segment_bytes.is_multiple_of(4096) || self.segment_bytes < 4096 {
            return bad("segment_bytes must be a positive multiple of 4096");
        }
        if self.record_bytes_max as u64 > self.segment_bytes / 2 || self.record_bytes_max < 64 {
            return bad("record_bytes_max must be between 64 and half of segment_bytes");
        }
        if self.batch_bytes_max < 4096 {
            return bad("batch_bytes_max must be at least 4096");
        }
        if self.heartbeat_interval_ms == 0 || self.heartbeat_dead_ticks == 0 {
            return bad("heartbeat_interval_ms and heartbeat_dead_ticks must be positive");
        }
        if self.secret.as_ref().is_some_and(|s| s.bytes().is_empty()) {
            return bad("secret must not be empty (use None for no authentication)");
        }
        match role {
            Role::Master if self.listen.is_none() => {
                bad("a master needs `listen` (an address for its slave)")
            }
            Role::Slave | Role::Candidate if self.peer.is_none() => {
                bad("a slave needs `peer` (its master's address)")
            }
            _ if self.witness.is_some() && self.listen.is_none() => {
                bad("a witness only makes sense for a node that can become master (set `listen`)")
            }
            _ => Ok(()),
        }
    }
}

/// Errors of the node API, each with what to do.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("this node is not the master{}", .master.map(|m| format!("; the master is at {m}")).unwrap_or_default())]
    NotMaster { master: Option<SocketAddr> },
    #[error("the slave lags {lag} bytes behind, over lag_bytes_max ({max}); retry when it has caught up")]
    LagExceeded { lag: u64, max: u64 },
    #[error("no slave is connected: nothing to hand over to")]
    NoStandby,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        source: std::io::Error,
    },
    #[error("the node is shut down")]
    Shutdown,
    /// The application's `Apply` panicked: its state no longer matches the log,
    /// so the node stopped taking, replicating and applying writes for good.
    #[error("the application's Apply panicked ({reason}); this node stopped taking and applying writes: fix the application, then restart the node (its log is intact and is replayed at start)")]
    ApplyPanicked { reason: String },
}

/// How far a write must have travelled before [`Node::wait`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Durability {
    /// Return at once: in the master's log (memory-mapped; survives a process crash).
    Async,
    /// In the slave's log (its memory; survives a master crash).
    Received,
    /// On the slave's disk.
    Flushed,
    /// Through the slave's `Apply` callback.
    Applied,
}

/// Things that happened, for the application. Bounded: when nobody reads them
/// the oldest are dropped and counted in [`Stats::events_dropped`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    SlaveConnected {
        node: u64,
        addr: SocketAddr,
        from: u64,
    },
    SlaveCaughtUp {
        node: u64,
        pos: u64,
    },
    SlaveLost {
        node: u64,
        reason: String,
    },
    MasterConnected {
        addr: SocketAddr,
        from: u64,
    },
    /// The slave reached the master's tail (after connecting or a resync).
    CaughtUp {
        pos: u64,
    },
    MasterLost {
        reason: String,
    },
    /// This slave's log diverged and was cut back; the `records` in `[from, to)`
    /// are gone and the application state was rebuilt without them.
    RolledBack {
        from: u64,
        to: u64,
        records: u64,
    },
    /// The slave dropped its log and loaded the master's snapshot at `pos`.
    Resynced {
        pos: u64,
        keys: u64,
    },
    /// A frame from the peer was refused; the connection was dropped.
    FrameRejected {
        reason: String,
    },
    /// This node's role changed (promotion, step-down, switchover).
    RoleChanged {
        role: Role,
        epoch: u32,
        reason: String,
    },
    /// The slave's lag went over `lag_bytes_max`.
    LagOverLimit {
        lag: u64,
    },
    /// The node stopped for good (the application's `Apply` panicked): it takes,
    /// replicates and applies nothing more; every call says why. Restart it.
    Fatal {
        reason: String,
    },
}

/// A consistent-enough snapshot of the node's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub role: Option<Role>,
    pub epoch: u32,
    pub history: u128,
    /// Oldest position still in the log.
    pub first: u64,
    /// One past the last record written to this node's log.
    pub written: u64,
    pub flushed: u64,
    /// Master: sent to the slave.
    pub sent: u64,
    /// Master: the slave's reported positions.
    pub acked_received: u64,
    pub acked_flushed: u64,
    pub acked_applied: u64,
    /// Slave: passed through `Apply`.
    pub applied: u64,
    /// Master: the master's tail as last heard (slave), or own tail (master).
    pub master_tail: u64,
    /// Bytes not yet applied by the slave.
    pub lag_bytes: u64,
    /// Records not yet applied by the slave (master: published minus acknowledged count).
    pub lag_records: u64,
    /// Age of the oldest record not yet applied by the slave, in milliseconds.
    pub lag_ms: u64,
    /// Bytes written but not yet sent (the publish queue).
    pub queue_bytes: u64,
    pub records_published: u64,
    pub records_applied: u64,
    pub slave_connected: bool,
    pub catching_up: bool,
    /// Catch-up progress: bytes sent since the session started and the target.
    pub catchup_done_bytes: u64,
    pub catchup_total_bytes: u64,
    /// Average catch-up rate of the current or last session.
    pub catchup_rate_bytes_per_s: u64,
    /// Slave: snapshot bytes received in the current or last resync.
    pub resync_received_bytes: u64,
    /// Slave: the most snapshot bytes a resync held in memory at once (one
    /// piece: the rest is written to a temporary snapshot file as it arrives).
    pub resync_buffer_bytes_max: u64,
    /// Slave: heartbeats from the master while snapshots travelled (each one
    /// acknowledged at once: the master's lease goes on during a resync).
    pub resync_heartbeats: u64,
    pub reconnects: u64,
    pub frames_rejected: u64,
    pub events_dropped: u64,
    pub disk_bytes: u64,
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
