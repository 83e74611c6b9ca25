//! Where applied ops go ([`OpSink`]: nowhere, or hs), and the errors of a
//! balancer that is not the master. Shared by the state, the standby and the
//! HTTP layer; depends on the registry only.

use std::net::SocketAddr;

use crate::registry::{Outcome, Registry, RegistryError, RegistryOp};

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
