//! What a node is told: `Config`, its defaults and checks, and the policies
//! and secret it holds.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{NodeError, Role};
use crate::log::LogConfig;

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
    /// see [`Node::local_addr`](super::Node::local_addr)). A node without one can never become master.
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

    pub(super) fn log_config(&self) -> LogConfig {
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

    pub(super) fn check(&self, role: Role) -> Result<(), NodeError> {
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
