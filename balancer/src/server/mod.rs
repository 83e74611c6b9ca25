//! The driver: binds, starts the HTTP server, the prober and the ticker (and,
//! replicated, the embedded hs node and its role watcher) around the shared
//! [`Balancer`], and stops them ([`ServerHandle`]).
//!
//! `role` follows the hs node's role and opens or closes the master gate;
//! `replica` is the standby side's `Apply`, loading replicated entities.
//! The types this module used to define live below it and are re-exported
//! here: the state ([`crate::state`]), the clock ([`crate::clock`]) and the
//! sink ([`crate::sink`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::config::Config;
use crate::registry::RegistryOp;
use crate::standby::HsSink;
use crate::state::until_stopped;

mod replica;
mod role;

pub use crate::clock::{Clock, ManualTime, OsTime, TimeSource};
pub use crate::sink::{ApplyError, NoSink, NotMaster, OpSink};
pub use crate::state::{
    probe_all, Balancer, PickError, SpawnError, PICK_ATTEMPTS_MAX, STREAM_CLOSE_RECHECK_MS,
};
pub use replica::StandbyError;
pub use role::{RoleWatcher, RESTART_BACKOFF_MAX_MS, ROLE_POLL_MS};

/// How long [`ServerHandle::shutdown`] waits for open HTTP connections.
pub const SHUTDOWN_GRACE_MS: u64 = 2_000;

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
            .field("addr", &self.balancer.addr())
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// Address the HTTP server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.balancer.addr()
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
        if self.balancer.config().kill_spawned_on_exit {
            self.balancer.kill_children();
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
        let hold = Duration::from_millis(balancer.config().witness_hold_ms);
        let secret = balancer
            .config()
            .witness_secret
            .as_ref()
            .map(hs::Secret::new);
        let stop_witness = until_stopped(stopped.clone());
        info!(addr = ?witness_addr, hold_ms = balancer.config().witness_hold_ms, authenticated = secret.is_some(), "hs witness listening");
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

    let period = balancer.config().probe_interval_ms;
    tasks.push(tokio::spawn(while_master(
        balancer.clone(),
        period,
        stopped.clone(),
        "prober",
        |b| async move { b.probe_round().await },
    )));
    let period = balancer.config().tick_interval_ms;
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
    info!(%addr, zones = balancer.config().zones.len(), replicated = watcher.is_some(), "balancer listening");
    Ok(ServerHandle {
        balancer,
        stop,
        tasks,
        watcher,
        witness_addr,
    })
}
