//! The balancer's shared state, in one place: the registry behind its lock,
//! the sink every applied op goes to, the master gate, the rate limiters,
//! the spawned children and the open push streams ([`Balancer`]). The HTTP
//! layer, the standby's watcher and the server's loops all act through it.
//!
//! By concern: `pick` (picks that wait for a spawn), `spawn` (children: start,
//! kill, reap), `probe` (probe rounds), `streams` (push-stream bookkeeping).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::registry::{Event, Millis, Outcome, Registry, RegistryError, RegistryOp, StopReason};
use crate::sink::{ApplyError, NotMaster, OpSink};
use crate::standby::{Entity, HsSink};

mod pick;
mod probe;
mod spawn;
mod streams;

pub use pick::{PickError, PICK_ATTEMPTS_MAX};
pub use probe::probe_all;
pub use spawn::SpawnError;
pub use streams::STREAM_CLOSE_RECHECK_MS;

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
    pub(crate) fn new(
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
        let pick_global = crate::ratelimit::bucket(
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
}

/// Resolves once `true` is sent (or the sender is gone).
pub(crate) async fn until_stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.is_ok();
}
