//! What the node tells the application: how far a write has travelled, the
//! events, and the counters.

use std::net::SocketAddr;

use super::Role;

/// How far a write must have travelled before [`Node::wait`](super::Node::wait) returns.
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
