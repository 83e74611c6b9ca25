//! The publishing side ([`HsSink`]): the balancer's [`OpSink`] when
//! replicated, and the gate's view of the node.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use hs::{Node, Role};
use parking_lot::{Mutex, RwLock};
use tracing::warn;

use crate::registry::{Changes, Registry};
use crate::sink::{NotMaster, OpSink};

use super::records::records;

/// The publishing side, and the gate's view of the node. Shared by the
/// balancer (as its [`crate::sink::OpSink`]), the replica's `Apply` and the
/// role watcher.
#[derive(Default)]
pub struct HsSink {
    pub(crate) node: RwLock<Option<Arc<Node>>>,
    /// The local registry has a change the log lacks: restart the node.
    pub(crate) diverged: AtomicBool,
    /// The master's HTTP address, from its `m` record.
    pub(crate) master_http: Mutex<Option<SocketAddr>>,
    /// Records published.
    pub published: AtomicU64,
    /// Publishes that failed after the op was applied locally.
    pub publish_failed: AtomicU64,
    /// Replicated records that could not be applied.
    pub replica_errors: AtomicU64,
    /// Log position of the last record published (0: none yet).
    pub(crate) last_published: AtomicU64,
}

impl std::fmt::Debug for HsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsSink")
            .field("master_http", &*self.master_http.lock())
            .finish_non_exhaustive()
    }
}

impl HsSink {
    /// The master's HTTP address as far as this balancer knows (None while
    /// no master is known, e.g. during a failover).
    pub fn master_http(&self) -> Option<SocketAddr> {
        let role = self.node.read().as_ref().map(|n| n.role());
        match role {
            Some(Role::Slave) | Some(Role::Master) => *self.master_http.lock(),
            _ => None,
        }
    }

    /// Waits until the standby has applied everything this master published
    /// so far, up to `timeout`. True at once when no standby is connected
    /// (nothing to wait for: a lone master answers as before) or nothing was
    /// published. False on timeout: the change is applied here but a master
    /// death now could lose it.
    pub fn wait_standby(&self, timeout: std::time::Duration) -> bool {
        let pos = self.last_published.load(Ordering::Acquire);
        let Some(node) = self.node.read().clone() else {
            return false;
        };
        if pos == 0 || !node.stats().slave_connected {
            return true;
        }
        node.wait(pos, hs::Durability::Applied, timeout).is_ok()
    }

    /// Runs `f` with the node, if one is running.
    pub fn with_node<T>(&self, f: impl FnOnce(&Node) -> T) -> Option<T> {
        self.node.read().as_deref().map(f)
    }

    fn not_master(&self) -> NotMaster {
        NotMaster {
            master: self.master_http(),
        }
    }
}

impl OpSink for HsSink {
    fn check(&self) -> Result<(), NotMaster> {
        match self.node.read().as_deref() {
            Some(n) if n.is_writable() => Ok(()),
            _ => Err(self.not_master()),
        }
    }

    fn applied(
        &self,
        op: &crate::registry::RegistryOp,
        out: &crate::registry::Outcome,
        registry: &Registry,
    ) -> Result<(), NotMaster> {
        let changes = Changes::of(op, out);
        if changes.is_empty() {
            return Ok(());
        }
        let guard = self.node.read();
        let Some(node) = guard.as_deref() else {
            self.diverged.store(true, Ordering::Release);
            return Err(self.not_master());
        };
        let at_ms = op.now_ms().unwrap_or_default();
        for (key, op, value) in records(&changes, registry, at_ms) {
            match node.publish(&key, op, &value) {
                Ok(pos) => {
                    self.last_published.fetch_max(pos, Ordering::AcqRel);
                }
                Err(e) => {
                    self.publish_failed.fetch_add(1, Ordering::Relaxed);
                    self.diverged.store(true, Ordering::Release);
                    warn!(error = %e, key = %String::from_utf8_lossy(&key), "publish failed after the op was applied; rebuilding from the log");
                    drop(guard);
                    return Err(self.not_master());
                }
            }
            self.published.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}
