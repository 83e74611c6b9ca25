//! The node API's errors.

use std::net::SocketAddr;
use std::time::Duration;

use crate::log::LogError;

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
