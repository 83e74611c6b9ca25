//! The driver: owns the registry behind a lock, feeds it ops from HTTP, the
//! prober and the ticker, publishes every applied op to an [`OpSink`], and
//! does the IO the registry decides on (spawning and killing children).

use std::collections::BTreeMap;
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
    Event, Millis, Outcome, Picked, ProbeTarget, Registry, RegistryError, RegistryOp, SpawnRefused, StopReason,
    ZoneId,
};

/// Pick attempts per request while waiting for a spawned process; with
/// `pick_wait_ms` this bounds the loop.
pub const PICK_ATTEMPTS_MAX: usize = 16;
/// How long [`ServerHandle::shutdown`] waits for open HTTP connections.
pub const SHUTDOWN_GRACE_MS: u64 = 2_000;

/// Receives every op the registry accepted, in order, with the registry lock
/// held (except ticks that changed nothing). This is where hs plugs in: the master publishes `op.encode()`, and
/// a standby feeds decoded ops to [`Balancer::apply_replicated`].
///
/// Called on the request path: it must not block (hs queues without
/// blocking).
pub trait OpSink: Send + Sync + 'static {
    /// `op` was applied and changed (or confirmed) the registry.
    fn applied(&self, op: &RegistryOp);
}

/// An [`OpSink`] that drops ops: a balancer without a standby.
#[derive(Debug, Default)]
pub struct NoSink;

impl OpSink for NoSink {
    fn applied(&self, _op: &RegistryOp) {}
}

/// Wall clock in unix ms that never goes backwards within a process.
#[derive(Debug, Default)]
pub struct Clock {
    last_ms: AtomicU64,
}

impl Clock {
    /// Now, unix ms, at least the last value returned.
    pub fn now_ms(&self) -> Millis {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        self.last_ms.fetch_max(wall, Ordering::SeqCst).max(wall)
    }
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}; choose another --listen address or stop what uses it")]
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
    /// The registry refused to record it.
    #[error(transparent)]
    Registry(#[from] RegistryError),
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
    children: Mutex<BTreeMap<u32, tokio::process::Child>>,
    spawn_lock: Mutex<()>,
    capacity: Notify,
    addr: SocketAddr,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Balancer {
    fn new(config: Config, sink: Arc<dyn OpSink>, addr: SocketAddr) -> Balancer {
        let registry = Registry::new(config.zone_specs(), config.limits());
        let limiter = RateLimiter::new(
            config.push_rate_per_s,
            config.push_burst,
            config.processes_max as usize + 1024,
        );
        Balancer {
            registry: Mutex::new(registry),
            sink,
            metrics: Metrics::default(),
            clock: Clock::default(),
            config,
            limiter: Mutex::new(limiter),
            children: Mutex::new(BTreeMap::new()),
            spawn_lock: Mutex::new(()),
            capacity: Notify::new(),
            addr,
        }
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
    pub fn apply(&self, op: RegistryOp) -> Result<Outcome, RegistryError> {
        let out = {
            let mut registry = self.registry.lock();
            let out = registry.apply(&op)?;
            // A tick without events changed nothing (tested in the registry):
            // skipping it keeps ten no-op records a second out of the stream.
            if !(matches!(op, RegistryOp::Tick { .. }) && out.events.is_empty()) {
                self.sink.applied(&op);
            }
            out
        };
        self.after(&out);
        Ok(out)
    }

    /// Applies an op that a master published (standby side). Events are
    /// logged but no process is spawned or killed: the master owns children.
    pub fn apply_replicated(&self, op: &RegistryOp) -> Result<Outcome, RegistryError> {
        let out = self.registry.lock().apply(op)?;
        for e in &out.events {
            debug!(event = ?e, "replicated");
        }
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
                Event::Stopped { id, reason, spawned_pid } => {
                    Metrics::inc(&self.metrics.stopped);
                    warn!(id, ?reason, "process stopped");
                    // A spawned child that stopped pushing is hung or dead: kill
                    // it. A failed probe alone may be transient; leave it.
                    if let (StopReason::MissedPushes, Some(pid)) = (reason, spawned_pid) {
                        self.kill_child(*pid, "stopped pushing");
                    }
                }
                Event::Replaced { old, new, old_status } => info!(old, new, ?old_status, "endpoint taken over"),
                Event::DrainComplete { id } => {
                    Metrics::inc(&self.metrics.drains_complete);
                    info!(id, "drain complete: no player and no reservation, safe to restart");
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
            return Err(SpawnRefused::LimitReached { spawned: self.config.spawned_processes_max }.into());
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
        cmd.args(&command[1..]).stdin(std::process::Stdio::null()).kill_on_drop(self.config.kill_spawned_on_exit);
        match cmd.spawn() {
            Ok(child) => {
                let pid = child.id().unwrap_or(0);
                self.children.lock().insert(pid, child);
                if let Err(e) = self.apply(RegistryOp::SpawnStarted { now_ms, zone, port, pid }) {
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
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.config.pick_wait_ms);
        let mut last = None;
        for _ in 0..PICK_ATTEMPTS_MAX {
            let notified = self.capacity.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.apply(RegistryOp::Pick { now_ms: self.now_ms(), zone }) {
                Ok(out) => {
                    Metrics::inc(&self.metrics.picks);
                    return Ok(out.picked.expect("a successful pick names a process"));
                }
                Err(e @ RegistryError::NoCapacity { starting, .. }) => {
                    let spawn = self.try_spawn(zone);
                    let worth_waiting = starting > 0
                        || matches!(
                            spawn,
                            Ok(_) | Err(SpawnError::Refused(SpawnRefused::InFlight { .. } | SpawnRefused::RateLimited { .. }))
                        );
                    last = Some(PickError::Registry { registry: e, spawn: spawn.err().map(|s| s.to_string()) });
                    if !worth_waiting || tokio::time::Instant::now() >= deadline {
                        break;
                    }
                    let _ = tokio::time::timeout_at(deadline, notified).await;
                }
                Err(e) => return Err(PickError::Registry { registry: e, spawn: None }),
            }
        }
        Metrics::inc(&self.metrics.picks_full);
        Err(last.expect("the loop ran at least once"))
    }

    /// One probe round: connect to every live process, apply verdicts.
    async fn probe_round(&self) {
        let targets = self.read(|r| r.probe_targets());
        let timeout = Duration::from_millis(self.config.probe_timeout_ms);
        let results = probe_all(targets, timeout, self.config.probe_concurrency_max).await;
        for (target, ok) in results {
            Metrics::inc(&self.metrics.probes);
            let now_ms = self.now_ms();
            let op = if !ok {
                Metrics::inc(&self.metrics.probes_failed);
                debug!(id = target.id, addr = %target.addr, "probe failed");
                RegistryOp::ProbeFailed { now_ms, id: target.id }
            } else if target.confirms {
                RegistryOp::ProbeOk { now_ms, id: target.id }
            } else {
                continue;
            };
            // The process may have been forgotten meanwhile; that is fine.
            let _ = self.apply(op);
        }
    }
}

/// Connects to each target with a timeout, at most `concurrency` at once.
pub async fn probe_all(targets: Vec<ProbeTarget>, timeout: Duration, concurrency: usize) -> Vec<(ProbeTarget, bool)> {
    let mut results = Vec::with_capacity(targets.len());
    let mut pending = targets.into_iter();
    let mut set = JoinSet::new();
    loop {
        while set.len() < concurrency.max(1) {
            let Some(t) = pending.next() else { break };
            set.spawn(async move {
                let ok = matches!(tokio::time::timeout(timeout, TcpStream::connect(t.addr)).await, Ok(Ok(_)));
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

/// A running balancer. Dropping it stops the server tasks.
pub struct ServerHandle {
    balancer: Arc<Balancer>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle").field("addr", &self.balancer.addr).finish_non_exhaustive()
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

    /// Stops serving; waits up to [`SHUTDOWN_GRACE_MS`] for open connections.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
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
async fn until_stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.is_ok();
}

/// Binds, then runs the HTTP server, the prober and the ticker as tasks.
pub async fn start(config: Config, sink: Arc<dyn OpSink>) -> Result<ServerHandle, StartError> {
    config.validate()?;
    let listener =
        TcpListener::bind(config.listen).await.map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let balancer = Arc::new(Balancer::new(config, sink, addr));
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();

    let app = crate::http::router(balancer.clone());
    let shutdown = until_stopped(stopped.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            error!(error = %e, "http server failed");
        }
    }));

    let b = balancer.clone();
    let stop_probing = until_stopped(stopped.clone());
    tasks.push(tokio::spawn(async move {
        tokio::pin!(stop_probing);
        let mut interval = tokio::time::interval(Duration::from_millis(b.config.probe_interval_ms));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => b.probe_round().await,
                _ = &mut stop_probing => return,
            }
        }
    }));

    let b = balancer.clone();
    let stop_ticking = until_stopped(stopped);
    tasks.push(tokio::spawn(async move {
        tokio::pin!(stop_ticking);
        let mut interval = tokio::time::interval(Duration::from_millis(b.config.tick_interval_ms));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {
                    let _ = b.apply(RegistryOp::Tick { now_ms: b.now_ms() });
                    b.reap_exited();
                }
                _ = &mut stop_ticking => return,
            }
        }
    }));
    info!(%addr, zones = balancer.config.zones.len(), "balancer listening");
    Ok(ServerHandle { balancer, stop, tasks })
}
