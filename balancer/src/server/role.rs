//! The role watcher: follows the embedded hs node's role and events, opens
//! and closes the master gate, restarts a node whose log fell behind.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use hs::{Event as HsEvent, Role};
use tracing::{debug, error, info, warn};

use crate::standby::{master_record, HsSink, StandbyConfig};
use crate::state::Balancer;

use super::replica::{start_node, StandbyError};

/// How often the watcher re-reads the node's role when no event arrives.
pub const ROLE_POLL_MS: u64 = 50;
/// Longest wait between two attempts to restart the embedded node.
pub const RESTART_BACKOFF_MAX_MS: u64 = 5_000;

/// Follows the node's role, opens and closes the balancer's gate, and
/// restarts the node when the registry got ahead of the log.
pub struct RoleWatcher {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for RoleWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleWatcher").finish_non_exhaustive()
    }
}

impl RoleWatcher {
    /// Starts the node (replaying its log into the registry: this blocks for
    /// the replay) and the watcher thread.
    pub fn start(
        cfg: StandbyConfig,
        balancer: &Arc<Balancer>,
        sink: Arc<HsSink>,
    ) -> Result<RoleWatcher, StandbyError> {
        let node = start_node(&cfg, balancer, &sink)?;
        info!(dir = %cfg.node.dir.display(), listen = ?node.local_addr(), peer = ?cfg.node.peer, prefer_master = cfg.prefer_master, "hs node started");
        *sink.node.write() = Some(Arc::new(node));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s) = (Arc::downgrade(balancer), stop.clone());
        let thread = std::thread::Builder::new()
            .name("balancer-role".into())
            .spawn(move || watch(cfg, b, sink, s))
            .map_err(|e| StandbyError {
                dir: PathBuf::new(),
                source: hs::NodeError::Io {
                    op: "spawn the role watcher",
                    source: e,
                },
            })?;
        Ok(RoleWatcher {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the watcher and the node (joins their threads).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Asks the watcher to stop the node without waiting for it.
    pub fn stop_later(&self) {
        self.stop.store(true, Ordering::Release);
    }
}

impl Drop for RoleWatcher {
    fn drop(&mut self) {
        self.stop_later();
    }
}

fn log_event(e: &HsEvent) {
    match e {
        HsEvent::RoleChanged {
            role,
            epoch,
            reason,
        } => info!(?role, epoch, reason, "hs role changed"),
        HsEvent::RolledBack { from, to, records } => {
            warn!(
                from,
                to, records, "registry changes the new master never had were rolled back"
            )
        }
        HsEvent::Resynced { pos, keys } => {
            info!(pos, keys, "registry loaded from the master's snapshot")
        }
        HsEvent::MasterLost { reason } => warn!(reason, "lost the master balancer"),
        HsEvent::SlaveLost { reason, .. } => warn!(reason, "lost the standby balancer"),
        HsEvent::SlaveConnected { addr, .. } => info!(%addr, "standby balancer connected"),
        HsEvent::MasterConnected { addr, .. } => info!(%addr, "following the master balancer"),
        other => debug!(event = ?other, "hs event"),
    }
}

/// The watcher thread's loop: bounded by `stop`.
fn watch(cfg: StandbyConfig, balancer: Weak<Balancer>, sink: Arc<HsSink>, stop: Arc<AtomicBool>) {
    let mut serving = false;
    let mut backoff_ms = 50;
    while !stop.load(Ordering::Acquire) {
        let Some(b) = balancer.upgrade() else { break };
        let node = sink.node.read().clone();
        let Some(node) = node else {
            // The node is down (a restart failed): try again with backoff.
            std::thread::sleep(Duration::from_millis(backoff_ms));
            backoff_ms = (backoff_ms * 2).min(RESTART_BACKOFF_MAX_MS);
            match start_node(&cfg, &b, &sink) {
                Ok(n) => {
                    info!("hs node restarted");
                    backoff_ms = 50;
                    *sink.node.write() = Some(Arc::new(n));
                }
                Err(e) => error!(error = %e, "hs node restart failed; retrying"),
            }
            continue;
        };
        if let Some(e) = node.next_event(Duration::from_millis(ROLE_POLL_MS)) {
            log_event(&e);
        }
        if sink.diverged.swap(false, Ordering::AcqRel) {
            warn!("the registry has changes the log lacks; restarting the hs node to rebuild it from the log");
            serving = false;
            b.set_master(false, None);
            sink.node.write().take();
            // The last reference: dropping it joins the node's threads.
            drop(node);
            continue;
        }
        let master_now = node.role() == Role::Master && node.is_writable();
        if master_now && !serving {
            // Name this balancer as master before any op of its reign.
            let (key, op, value) = master_record(b.advertised());
            match node.publish(&key, op, &value) {
                Ok(_) => {
                    *sink.master_http.lock() = Some(b.advertised());
                    serving = true;
                    b.set_master(true, Some(node.stats().epoch));
                }
                Err(e) => debug!(error = %e, "not writable yet"),
            }
        } else if !master_now && serving {
            serving = false;
            b.set_master(false, Some(node.stats().epoch));
        }
    }
    if let Some(b) = balancer.upgrade() {
        b.set_master(false, None);
    }
    let node = sink.node.write().take();
    drop(node);
    debug!("role watcher stopped");
}
