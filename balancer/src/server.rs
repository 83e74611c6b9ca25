//! The driver: owns the registry behind a lock, feeds it ops from HTTP, the
//! prober and the ticker, publishes every applied op to an [`OpSink`], and
//! does the IO the registry decides on (spawning and killing children).

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::registry::{
    Event, Millis, Outcome, Picked, ProbeTarget, Registry, RegistryError, RegistryOp, SpawnRefused,
    Status, StopReason, ZoneId,
};
use crate::standby::{Entity, HsSink, RoleWatcher};

/// Pick attempts per request while waiting for a spawned process; with
/// `pick_wait_ms` this bounds the loop.
pub const PICK_ATTEMPTS_MAX: usize = 16;
/// After a push stream closed, processes whose probe still answered are
/// probed once more this much later (their process may have been exiting).
pub const STREAM_CLOSE_RECHECK_MS: u64 = 200;
/// How long [`ServerHandle::shutdown`] waits for open HTTP connections.
pub const SHUTDOWN_GRACE_MS: u64 = 2_000;

/// Receives every op the registry accepted, in order, with the registry lock
/// held (except ticks that changed nothing), and the state after it. This is
/// where hs plugs in ([`crate::standby::HsSink`] publishes the entities the
/// op changed).
///
/// Called on the request path: it must not block (hs queues without
/// blocking).
pub trait OpSink: Send + Sync + 'static {
    /// Whether this balancer may change the registry now; checked with the
    /// registry lock held, before the op is applied. A standby refuses.
    fn check(&self) -> Result<(), NotMaster> {
        Ok(())
    }
    /// `op` was applied with outcome `out`; `registry` is the state after it.
    /// An error means the change was not replicated: the caller is told the
    /// op failed.
    fn applied(&self, op: &RegistryOp, out: &Outcome, registry: &Registry)
        -> Result<(), NotMaster>;
}

/// An [`OpSink`] that drops ops: a balancer without a standby.
#[derive(Debug, Default)]
pub struct NoSink;

impl OpSink for NoSink {
    fn applied(
        &self,
        _op: &RegistryOp,
        _out: &Outcome,
        _registry: &Registry,
    ) -> Result<(), NotMaster> {
        Ok(())
    }
}

/// This balancer is not the master (a standby, or one between roles).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("this balancer is not the master{}", .master.map(|m| format!("; the master is at {m}")).unwrap_or_else(|| "; no master is known right now (failover in progress?), retry shortly".into()))]
pub struct NotMaster {
    /// The master's HTTP address, when known.
    pub master: Option<SocketAddr>,
}

/// Why [`Balancer::apply`] did not apply an op.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The registry refused it; nothing changed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Not the master: nothing changed, or the change was not replicated.
    #[error(transparent)]
    NotMaster(#[from] NotMaster),
}

/// Where a [`Clock`] reads time: the OS ([`OsTime`]), or a test's hand
/// ([`ManualTime`]).
pub trait TimeSource: Send + Sync + 'static {
    /// Milliseconds on a clock that never steps (`CLOCK_MONOTONIC`), from
    /// any origin.
    fn monotonic_ms(&self) -> u64;
    /// Unix milliseconds (NTP or an operator may step it).
    fn wall_ms(&self) -> u64;
}

/// The OS clocks.
#[derive(Debug)]
pub struct OsTime {
    origin: std::time::Instant,
}

impl Default for OsTime {
    fn default() -> Self {
        OsTime {
            origin: std::time::Instant::now(),
        }
    }
}

impl TimeSource for OsTime {
    fn monotonic_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }
    fn wall_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// Clocks a test moves by hand.
#[derive(Debug, Default)]
pub struct ManualTime {
    /// Monotonic milliseconds.
    pub monotonic_ms: AtomicU64,
    /// Unix milliseconds.
    pub wall_ms: AtomicU64,
}

impl ManualTime {
    /// Both clocks at these values.
    pub fn new(monotonic_ms: u64, wall_ms: u64) -> ManualTime {
        ManualTime {
            monotonic_ms: AtomicU64::new(monotonic_ms),
            wall_ms: AtomicU64::new(wall_ms),
        }
    }

    /// Time passes: both clocks move by `ms`.
    pub fn advance(&self, ms: u64) {
        self.monotonic_ms.fetch_add(ms, Ordering::SeqCst);
        self.wall_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// The wall clock is stepped by `ms` (NTP, an operator); the monotonic
    /// clock is not.
    pub fn step_wall(&self, ms: i64) {
        let w = self
            .wall_ms
            .load(Ordering::SeqCst)
            .saturating_add_signed(ms);
        self.wall_ms.store(w, Ordering::SeqCst);
    }
}

impl TimeSource for ManualTime {
    fn monotonic_ms(&self) -> u64 {
        self.monotonic_ms.load(Ordering::SeqCst)
    }
    fn wall_ms(&self) -> u64 {
        self.wall_ms.load(Ordering::SeqCst)
    }
}

impl<T: TimeSource> TimeSource for Arc<T> {
    fn monotonic_ms(&self) -> u64 {
        (**self).monotonic_ms()
    }
    fn wall_ms(&self) -> u64 {
        (**self).wall_ms()
    }
}

/// The registry's clock: unix ms read once at start, then advanced by the
/// monotonic clock only. Local deadlines (reservation expiry, push
/// timeouts, spawn and retention timers, rate limits) are differences of
/// its readings, so a wall-clock step (NTP, an operator) moves none of them;
/// the numbers still read as unix ms (off by the steps since start) in
/// lists and logs. Replicated times are carried to another balancer's clock
/// as ages (see [`crate::standby`]), never compared across machines.
pub struct Clock {
    source: Box<dyn TimeSource>,
    origin_monotonic_ms: u64,
    origin_wall_ms: u64,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clock")
            .field("origin_wall_ms", &self.origin_wall_ms)
            .finish_non_exhaustive()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::with_source(OsTime::default())
    }
}

impl Clock {
    /// A clock reading `source`, anchored at its wall time now.
    pub fn with_source(source: impl TimeSource) -> Clock {
        let origin_monotonic_ms = source.monotonic_ms();
        let origin_wall_ms = source.wall_ms();
        Clock {
            source: Box::new(source),
            origin_monotonic_ms,
            origin_wall_ms,
        }
    }

    /// Now, in registry ms: never goes backwards, never jumps.
    pub fn now_ms(&self) -> Millis {
        let elapsed = self
            .source
            .monotonic_ms()
            .saturating_sub(self.origin_monotonic_ms);
        self.origin_wall_ms.saturating_add(elapsed)
    }
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The embedded hs node did not start.
    #[error("{0}")]
    Standby(String),
    /// The listen address could not be bound.
    #[error(
        "cannot listen on {addr}: {source}; choose another --listen address or stop what uses it"
    )]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
}

/// Why a spawn did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The registry says not now.
    #[error(transparent)]
    Refused(#[from] SpawnRefused),
    /// The command did not start.
    #[error("spawn command {command:?} failed to start: {source}; fix [zones.spawn].command")]
    Command {
        /// Command after substitution.
        command: Vec<String>,
        /// OS error.
        source: std::io::Error,
    },
    /// The registry refused to record it, or this balancer is not the master.
    #[error(transparent)]
    Registry(#[from] ApplyError),
}

/// Why a pick failed.
#[derive(Debug, thiserror::Error)]
pub enum PickError {
    /// The registry refused (unknown zone, no capacity).
    #[error("{registry}{}", spawn.as_ref().map(|s| format!("; no process spawned: {s}")).unwrap_or_default())]
    Registry {
        /// Registry error.
        registry: RegistryError,
        /// Why no spawn helped, if one was tried.
        spawn: Option<String>,
    },
    /// This balancer is not the master.
    #[error(transparent)]
    NotMaster(#[from] NotMaster),
}

/// Shared state of a running balancer.
pub struct Balancer {
    registry: Mutex<Registry>,
    sink: Arc<dyn OpSink>,
    /// Counters.
    pub metrics: Metrics,
    clock: Clock,
    config: Config,
    /// Push rate limiter (not replicated).
    pub(crate) limiter: Mutex<RateLimiter>,
    /// Pick rate limiter per source address (not replicated).
    pub(crate) pick_sources: Mutex<RateLimiter<std::net::IpAddr>>,
    /// Pick rate limit of all sources together (not replicated).
    pub(crate) pick_global: Mutex<crate::ratelimit::TokenBucket>,
    children: Mutex<BTreeMap<u32, tokio::process::Child>>,
    spawn_lock: Mutex<()>,
    capacity: Notify,
    addr: SocketAddr,
    /// True while this balancer serves as master: mutations are accepted and
    /// the prober and ticker run.
    master: watch::Sender<bool>,
    /// hs epoch when the role last changed (0 without hs).
    epoch: AtomicU64,
    /// The embedded hs node's sink, when replicated.
    hs: Option<Arc<HsSink>>,
    /// Process id -> serial of the open push stream it last pushed on
    /// (not replicated: streams are connections to this balancer).
    streams: Mutex<HashMap<String, u64>>,
    /// Serial of the last push stream opened.
    stream_serial: AtomicU64,
    /// Probe rounds run (spreads the port checks of streamed processes).
    probe_rounds: AtomicU64,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Balancer {
    fn new(
        config: Config,
        sink: Arc<dyn OpSink>,
        addr: SocketAddr,
        hs: Option<Arc<HsSink>>,
    ) -> Balancer {
        let registry = Registry::new(config.zone_specs(), config.limits());
        let limiter = RateLimiter::new(
            config.push_rate_per_s,
            config.push_burst,
            config.processes_max as usize + 1024,
        );
        let clock = Clock::default();
        let pick_sources = RateLimiter::new(
            config.pick_rate_per_s,
            config.pick_burst,
            config.pick_sources_max,
        );
        let pick_global = crate::ratelimit::TokenBucket::new(
            config.pick_global_rate_per_s,
            config.pick_global_burst,
            clock.now_ms(),
        );
        Balancer {
            registry: Mutex::new(registry),
            sink,
            metrics: Metrics::default(),
            clock,
            config,
            limiter: Mutex::new(limiter),
            pick_sources: Mutex::new(pick_sources),
            pick_global: Mutex::new(pick_global),
            children: Mutex::new(BTreeMap::new()),
            spawn_lock: Mutex::new(()),
            capacity: Notify::new(),
            addr,
            // Without hs this balancer is always the master.
            master: watch::channel(hs.is_none()).0,
            epoch: AtomicU64::new(0),
            hs,
            streams: Mutex::new(HashMap::new()),
            stream_serial: AtomicU64::new(0),
            probe_rounds: AtomicU64::new(0),
        }
    }

    /// A master balancer with no server around it (the fuzz targets).
    pub(crate) fn for_fuzzing(config: Config, sink: Arc<dyn OpSink>) -> Balancer {
        let addr = config.listen;
        Balancer::new(config, sink, addr, None)
    }

    /// Whether this balancer serves as master now.
    pub fn is_master(&self) -> bool {
        *self.master.borrow()
    }

    /// Follows the master flag (the prober and ticker wait on it).
    pub fn watch_master(&self) -> watch::Receiver<bool> {
        self.master.subscribe()
    }

    /// hs epoch at the last role change (0 without hs).
    pub fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::Relaxed) as u32
    }

    /// The embedded hs node's sink, when this balancer is replicated.
    pub fn hs(&self) -> Option<&Arc<HsSink>> {
        self.hs.as_ref()
    }

    /// Opens or closes the gate (called by the role watcher).
    pub(crate) fn set_master(&self, master: bool, epoch: Option<u32>) {
        if let Some(e) = epoch {
            self.epoch.store(e as u64, Ordering::Relaxed);
        }
        if let (true, Some(e)) = (master, epoch) {
            // Before the first op of the reign (the watcher calls this first).
            self.registry.lock().begin_reign(e);
        }
        let was = self.master.send_replace(master);
        if was != master {
            if master {
                info!(addr = %self.advertised(), epoch = self.epoch(), "serving as master: accepting changes, probing, ticking");
            } else {
                warn!(
                    epoch = self.epoch(),
                    "not master: refusing changes, prober and ticker idle"
                );
            }
            self.capacity.notify_waiters();
        }
    }

    /// The HTTP address clients should use for this balancer: `advertise`,
    /// else the bound address.
    pub fn advertised(&self) -> SocketAddr {
        self.config.advertise.unwrap_or(self.addr)
    }

    /// Where the master is, for a `not_master` answer.
    pub fn not_master(&self) -> NotMaster {
        NotMaster {
            master: self.hs.as_ref().and_then(|h| h.master_http()),
        }
    }

    /// Loads a replicated entity into the registry (standby, or a node
    /// rebuilding from its log).
    pub(crate) fn load_replicated(&self, entity: Entity) -> Result<(), RegistryError> {
        crate::standby::load(&mut self.registry.lock(), entity)
    }

    /// Empties the registry before a replicated snapshot is loaded.
    pub(crate) fn clear_replica(&self) {
        self.registry.lock().clear();
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Address the HTTP server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Current time on the balancer's clock.
    pub fn now_ms(&self) -> Millis {
        self.clock.now_ms()
    }

    /// Runs `f` with the registry locked (read only).
    pub fn read<T>(&self, f: impl FnOnce(&Registry) -> T) -> T {
        f(&self.registry.lock())
    }

    /// Applies an op, publishes it to the sink, then acts on its events.
    /// Refused with [`NotMaster`] (nothing applied) unless this balancer is
    /// the master.
    pub fn apply(&self, op: RegistryOp) -> Result<Outcome, ApplyError> {
        let out = {
            let mut registry = self.registry.lock();
            if !self.is_master() {
                return Err(self.not_master().into());
            }
            self.sink.check()?;
            let out = registry.apply(&op)?;
            // A tick without events changed nothing (tested in the registry):
            // skipping it keeps ten no-op records a second out of the stream.
            if !(matches!(op, RegistryOp::Tick { .. }) && out.events.is_empty()) {
                self.sink.applied(&op, &out, &registry)?;
            }
            out
        };
        self.after(&out);
        Ok(out)
    }

    fn after(&self, out: &Outcome) {
        for event in &out.events {
            match event {
                Event::Registered { id } => info!(id, "process registered"),
                Event::Running { id } => {
                    info!(id, "process running");
                    self.capacity.notify_waiters();
                }
                Event::Stopped {
                    id,
                    reason,
                    spawned_pid,
                } => {
                    Metrics::inc(&self.metrics.stopped);
                    warn!(id, ?reason, "process stopped");
                    // A spawned child that stopped pushing is hung or dead: kill
                    // it. A failed probe alone may be transient; leave it.
                    if let (StopReason::MissedPushes, Some(pid)) = (reason, spawned_pid) {
                        self.kill_child(*pid, "stopped pushing");
                    }
                }
                Event::Replaced {
                    old,
                    new,
                    old_status,
                } => info!(old, new, ?old_status, "endpoint taken over"),
                Event::DrainComplete { id } => {
                    Metrics::inc(&self.metrics.drains_complete);
                    info!(
                        id,
                        "drain complete: no player and no reservation, safe to restart"
                    );
                }
                Event::SpawnTimedOut { id, pid } => {
                    warn!(id, pid, "spawned process never reported; reaping it");
                    self.kill_child(*pid, "never reported");
                }
                Event::Forgotten { id } => info!(id, "process forgotten"),
                Event::ReservationsExpired { id, count } => {
                    debug!(id, count, "reservations expired");
                    self.capacity.notify_waiters();
                }
            }
        }
    }

    /// Kills a child this balancer spawned; any other pid is left alone.
    fn kill_child(&self, pid: u32, why: &str) {
        if let Some(child) = self.children.lock().get_mut(&pid) {
            Metrics::inc(&self.metrics.reaped);
            warn!(pid, why, "killing spawned process");
            if let Err(e) = child.start_kill() {
                warn!(pid, error = %e, "kill failed");
            }
        }
    }

    /// Forgets children that exited; returns how many remain.
    fn reap_exited(&self) -> usize {
        let mut children = self.children.lock();
        children.retain(|pid, child| match child.try_wait() {
            Ok(Some(status)) => {
                info!(pid, %status, "spawned process exited");
                false
            }
            Ok(None) => true,
            Err(e) => {
                warn!(pid, error = %e, "cannot wait for spawned process; forgetting it");
                false
            }
        });
        children.len()
    }

    /// Pids of children this balancer spawned and that have not exited.
    pub fn spawned_pids(&self) -> Vec<u32> {
        self.children.lock().keys().copied().collect()
    }

    /// Starts a process for `zone` if the registry allows it now.
    pub fn try_spawn(&self, zone: ZoneId) -> Result<u16, SpawnError> {
        let _one_at_a_time = self.spawn_lock.lock();
        let now_ms = self.now_ms();
        let plan = self.read(|r| r.spawn_plan(zone, now_ms))?;
        if self.children.lock().len() >= self.config.spawned_processes_max as usize {
            return Err(SpawnRefused::LimitReached {
                spawned: self.config.spawned_processes_max,
            }
            .into());
        }
        let spec = self
            .config
            .zones
            .iter()
            .find(|z| z.id == zone)
            .and_then(|z| z.spawn.as_ref())
            .ok_or(SpawnRefused::NotConfigured { zone })?;
        // The registry knows registered endpoints; the OS knows the rest.
        let port = plan
            .ports
            .iter()
            .copied()
            .find(|p| std::net::TcpListener::bind((plan.host, *p)).is_ok())
            .ok_or(SpawnRefused::NoFreePort { zone })?;
        let command: Vec<String> = spec
            .command
            .iter()
            .map(|a| {
                a.replace("{port}", &port.to_string())
                    .replace("{zone}", &zone.to_string())
                    .replace("{host}", &plan.host.to_string())
                    .replace("{balancer}", &self.addr.to_string())
            })
            .collect();
        let mut cmd = tokio::process::Command::new(&command[0]);
        cmd.args(&command[1..])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(self.config.kill_spawned_on_exit);
        match cmd.spawn() {
            Ok(child) => {
                let pid = child.id().unwrap_or(0);
                self.children.lock().insert(pid, child);
                if let Err(e) = self.apply(RegistryOp::SpawnStarted {
                    now_ms,
                    zone,
                    port,
                    pid,
                }) {
                    self.kill_child(pid, "registry refused the spawn");
                    return Err(e.into());
                }
                Metrics::inc(&self.metrics.spawns);
                info!(zone, port, pid, ?command, "spawned process");
                Ok(port)
            }
            Err(source) => {
                Metrics::inc(&self.metrics.spawns_failed);
                let _ = self.apply(RegistryOp::SpawnFailed { now_ms, zone });
                let e = SpawnError::Command { command, source };
                error!(zone, error = %e, "spawn failed");
                Err(e)
            }
        }
    }

    /// Seed 003's dispatcher: the least-loaded running process of `zone`,
    /// with a seat reserved. When the zone is full it spawns a process (if
    /// configured) and waits up to `pick_wait_ms` for it to report.
    pub async fn pick(&self, zone: ZoneId) -> Result<Picked, PickError> {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.config.pick_wait_ms);
        let mut last = None;
        for _ in 0..PICK_ATTEMPTS_MAX {
            let notified = self.capacity.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.apply(RegistryOp::Pick {
                now_ms: self.now_ms(),
                zone,
            }) {
                Ok(out) => {
                    Metrics::inc(&self.metrics.picks);
                    return Ok(out.picked.expect("a successful pick names a process"));
                }
                Err(ApplyError::Registry(e @ RegistryError::NoCapacity { starting, .. })) => {
                    let spawn = self.try_spawn(zone);
                    let worth_waiting = starting > 0
                        || matches!(
                            spawn,
                            Ok(_)
                                | Err(SpawnError::Refused(
                                    SpawnRefused::InFlight { .. }
                                        | SpawnRefused::RateLimited { .. }
                                ))
                        );
                    last = Some(PickError::Registry {
                        registry: e,
                        spawn: spawn.err().map(|s| s.to_string()),
                    });
                    if !worth_waiting || tokio::time::Instant::now() >= deadline {
                        break;
                    }
                    let _ = tokio::time::timeout_at(deadline, notified).await;
                }
                Err(ApplyError::Registry(e)) => {
                    return Err(PickError::Registry {
                        registry: e,
                        spawn: None,
                    })
                }
                Err(ApplyError::NotMaster(e)) => return Err(e.into()),
            }
        }
        Metrics::inc(&self.metrics.picks_full);
        Err(last.expect("the loop ran at least once"))
    }

    /// One probe round: connect to every live process, apply verdicts.
    /// A process whose open push stream and fresh push vouch for it is
    /// connect-tested only every `stream_probe_interval_ms` (each on its own
    /// round, so the checks are spread evenly).
    async fn probe_round(&self) {
        let now_ms = self.now_ms();
        let round = self.probe_rounds.fetch_add(1, Ordering::Relaxed);
        let every = (self.config.stream_probe_interval_ms / self.config.probe_interval_ms).max(1);
        let fresh_ms = self.config.stream_fresh_ms;
        let targets = {
            // Lock order: streams, then the registry.
            let streams = self.streams.lock();
            self.read(|r| {
                r.probe_targets_by(|p| {
                    let vouched = p.status != Status::Starting
                        && now_ms.saturating_sub(p.last_push_ms) < fresh_ms
                        && streams.contains_key(&p.id);
                    !vouched || round.wrapping_add(id_hash(&p.id)).is_multiple_of(every)
                })
            })
        };
        let _ = self.probe(targets).await;
    }

    /// Connects to `targets` and applies the verdicts; returns the targets
    /// that answered.
    async fn probe(&self, targets: Vec<ProbeTarget>) -> Vec<ProbeTarget> {
        let timeout = Duration::from_millis(self.config.probe_timeout_ms);
        let results = probe_all(targets, timeout, self.config.probe_concurrency_max).await;
        let mut answered = Vec::new();
        for (target, ok) in results {
            Metrics::inc(&self.metrics.probes);
            let now_ms = self.now_ms();
            let op = if !ok {
                Metrics::inc(&self.metrics.probes_failed);
                debug!(id = target.id, addr = %target.addr, "probe failed");
                RegistryOp::ProbeFailed {
                    now_ms,
                    id: target.id,
                }
            } else if target.confirms {
                answered.push(target.clone());
                RegistryOp::ProbeOk {
                    now_ms,
                    id: target.id,
                }
            } else {
                answered.push(target);
                continue;
            };
            // The process may have been forgotten meanwhile; that is fine.
            let _ = self.apply(op);
        }
        answered
    }

    /// A push stream opened: its serial.
    pub(crate) fn stream_opened(&self) -> u64 {
        Metrics::inc(&self.metrics.streams_opened);
        self.stream_serial.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// `id` pushed on stream `serial` for the first time.
    pub(crate) fn stream_pushed(&self, serial: u64, id: &str) {
        self.streams.lock().insert(id.to_string(), serial);
    }

    /// Stream `serial` closed after `ids` pushed on it: the ones it still
    /// vouched for are probed now, so a process that died (its kernel closed
    /// the stream) is stopped within a connect, not a probe round.
    pub(crate) async fn stream_closed(&self, serial: u64, ids: Vec<String>) {
        Metrics::inc(&self.metrics.streams_closed);
        let orphaned: Vec<String> = {
            let mut streams = self.streams.lock();
            ids.into_iter()
                .filter(|id| {
                    let mine = streams.get(id) == Some(&serial);
                    if mine {
                        streams.remove(id);
                    }
                    mine
                })
                .collect()
        };
        if orphaned.is_empty() || !self.is_master() {
            return;
        }
        let targets: Vec<ProbeTarget> = self.read(|r| {
            orphaned
                .iter()
                .filter_map(|id| r.probe_target(id))
                .collect()
        });
        debug!(
            serial,
            processes = targets.len(),
            "push stream closed: probing its processes"
        );
        let answered = self.probe(targets).await;
        if answered.is_empty() {
            return;
        }
        // A dying process's kernel may close the stream a moment before its
        // listener: a connect in between succeeds. Look again shortly.
        tokio::time::sleep(Duration::from_millis(STREAM_CLOSE_RECHECK_MS)).await;
        if self.is_master() {
            let _ = self.probe(answered).await;
        }
    }
}

/// A stable spread of process ids over probe rounds.
fn id_hash(id: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

/// Connects to each target with a timeout, at most `concurrency` at once.
pub async fn probe_all(
    targets: Vec<ProbeTarget>,
    timeout: Duration,
    concurrency: usize,
) -> Vec<(ProbeTarget, bool)> {
    let mut results = Vec::with_capacity(targets.len());
    let mut pending = targets.into_iter();
    let mut set = JoinSet::new();
    loop {
        while set.len() < concurrency.max(1) {
            let Some(t) = pending.next() else { break };
            set.spawn(async move {
                let ok = match tokio::time::timeout(timeout, TcpStream::connect(t.addr)).await {
                    Ok(Ok(s)) => {
                        // Close with a reset, as HAProxy's checks do: no
                        // FIN handshake and no TIME_WAIT socket per probe.
                        // (Deprecated because a non-zero linger blocks the
                        // dropping thread; a zero linger never does.)
                        #[allow(deprecated)]
                        let _ = s.set_linger(Some(Duration::ZERO));
                        true
                    }
                    _ => false,
                };
                (t, ok)
            });
        }
        match set.join_next().await {
            Some(Ok(r)) => results.push(r),
            Some(Err(e)) => warn!(error = %e, "probe task failed"),
            None => break,
        }
    }
    results
}

/// A running balancer. Dropping it stops the server tasks (and, without
/// waiting, the embedded hs node).
pub struct ServerHandle {
    balancer: Arc<Balancer>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    watcher: Option<RoleWatcher>,
    witness_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("addr", &self.balancer.addr)
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// Address the HTTP server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.balancer.addr
    }

    /// The shared state.
    pub fn balancer(&self) -> &Arc<Balancer> {
        &self.balancer
    }

    /// Address the hs witness listens on, when `witness_listen` is set.
    pub fn witness_addr(&self) -> Option<SocketAddr> {
        self.witness_addr
    }

    /// Stops serving; waits up to [`SHUTDOWN_GRACE_MS`] for open connections,
    /// then stops the hs node.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(mut w) = self.watcher.take() {
            let _ = tokio::task::spawn_blocking(move || w.stop()).await;
        }
        let grace = tokio::time::Instant::now() + Duration::from_millis(SHUTDOWN_GRACE_MS);
        for task in self.tasks.drain(..) {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(grace, task).await.is_err() {
                abort.abort();
            }
        }
        self.kill_children_if_configured();
    }

    fn kill_children_if_configured(&self) {
        if self.balancer.config.kill_spawned_on_exit {
            for (pid, child) in self.balancer.children.lock().iter_mut() {
                debug!(pid, "killing spawned process on exit");
                let _ = child.start_kill();
            }
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for task in &self.tasks {
            task.abort();
        }
        self.kill_children_if_configured();
    }
}

/// Resolves once `true` is sent (or the sender is gone).
pub(crate) async fn until_stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.is_ok();
}

/// Binds, then runs the HTTP server, the prober and the ticker as tasks.
/// Ops go to `sink`; this balancer is always the master (no hs).
pub async fn start(config: Config, sink: Arc<dyn OpSink>) -> Result<ServerHandle, StartError> {
    start_with(config, Some(sink)).await
}

/// Like [`start`], with the standby the config asks for: when `[hs]` is set
/// the registry is replicated through an embedded hs node (replayed from its
/// log before serving), and this balancer serves as master only while hs
/// says so. Without `[hs]` it is [`start`] with no sink.
pub async fn start_replicated(config: Config) -> Result<ServerHandle, StartError> {
    start_with(config, None).await
}

/// Runs a loop's `round` every `period` while this balancer is master; idles
/// (no timer) while it is not, and stops when `stop` resolves.
async fn while_master<F, Fut>(
    b: Arc<Balancer>,
    period_ms: u64,
    stop: watch::Receiver<bool>,
    what: &'static str,
    mut round: F,
) where
    F: FnMut(Arc<Balancer>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let stopped = until_stopped(stop);
    tokio::pin!(stopped);
    let mut master = b.watch_master();
    loop {
        tokio::select! {
            ok = async { master.wait_for(|m| *m).await.is_ok() } => if !ok { return },
            _ = &mut stopped => return,
        }
        debug!(what, "starting (master)");
        let mut interval = tokio::time::interval(Duration::from_millis(period_ms));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => round(b.clone()).await,
                ok = async { master.wait_for(|m| !*m).await.is_ok() } => {
                    if !ok { return }
                    debug!(what, "stopped (stepped down)");
                    break;
                }
                _ = &mut stopped => return,
            }
        }
    }
}

async fn start_with(
    config: Config,
    sink: Option<Arc<dyn OpSink>>,
) -> Result<ServerHandle, StartError> {
    config.validate()?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let witness = match config.witness_listen {
        Some(w) => Some(
            TcpListener::bind(w)
                .await
                .map_err(|source| StartError::Bind { addr: w, source })?,
        ),
        None => None,
    };
    let witness_addr = witness.as_ref().and_then(|w| w.local_addr().ok());
    let standby = match (&sink, &config.hs) {
        (None, Some(hs)) => Some(hs.resolve()?),
        _ => None,
    };
    let hs_sink = standby.as_ref().map(|_| Arc::new(HsSink::default()));
    let sink: Arc<dyn OpSink> = match (&hs_sink, sink) {
        (Some(h), _) => h.clone(),
        (None, Some(s)) => s,
        (None, None) => Arc::new(NoSink),
    };
    let balancer = Arc::new(Balancer::new(config, sink, addr, hs_sink.clone()));
    // Rebuild the registry from the log, then find out who is master, before serving.
    let watcher = match (standby, hs_sink) {
        (Some(cfg), Some(h)) => {
            let b = balancer.clone();
            let started = tokio::task::spawn_blocking(move || RoleWatcher::start(cfg, &b, h)).await;
            Some(
                started
                    .map_err(|e| StartError::Standby(e.to_string()))?
                    .map_err(|e| StartError::Standby(e.to_string()))?,
            )
        }
        _ => None,
    };
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();

    if let Some(w) = witness {
        let hold = Duration::from_millis(balancer.config.witness_hold_ms);
        let secret = balancer.config.witness_secret.as_ref().map(hs::Secret::new);
        let stop_witness = until_stopped(stopped.clone());
        info!(addr = ?witness_addr, hold_ms = balancer.config.witness_hold_ms, authenticated = secret.is_some(), "hs witness listening");
        tasks.push(tokio::spawn(async move {
            tokio::select! {
                _ = hs::node::witness::serve_with(w, hold, secret) => {}
                _ = stop_witness => {}
            }
        }));
    }

    let app = crate::http::router(balancer.clone());
    tasks.push(tokio::spawn(crate::http::serve(
        listener,
        app,
        stopped.clone(),
        balancer.clone(),
    )));

    let period = balancer.config.probe_interval_ms;
    tasks.push(tokio::spawn(while_master(
        balancer.clone(),
        period,
        stopped.clone(),
        "prober",
        |b| async move { b.probe_round().await },
    )));
    let period = balancer.config.tick_interval_ms;
    tasks.push(tokio::spawn(while_master(
        balancer.clone(),
        period,
        stopped,
        "ticker",
        |b| async move {
            let _ = b.apply(RegistryOp::Tick { now_ms: b.now_ms() });
            b.reap_exited();
        },
    )));
    info!(%addr, zones = balancer.config.zones.len(), replicated = watcher.is_some(), "balancer listening");
    Ok(ServerHandle {
        balancer,
        stop,
        tasks,
        watcher,
        witness_addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Local deadlines (reservations, push timeouts, spawn timers) are
    /// measured on the monotonic clock: a wall-clock step moves none.
    #[test]
    fn the_registry_clock_ignores_wall_clock_steps() {
        let time = Arc::new(ManualTime::new(40, 1_700_000_000_000));
        let clock = Clock::with_source(time.clone());
        let t0 = clock.now_ms();
        time.step_wall(3_600_000);
        time.advance(100);
        assert_eq!(
            clock.now_ms(),
            t0 + 100,
            "a step forward is not time passing"
        );
        time.step_wall(-7_200_000);
        time.advance(100);
        assert_eq!(clock.now_ms(), t0 + 200, "nor is a step back");
    }
}
