//! What the registry is configured with and reports: zones, limits, statuses.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::ZoneId;

/// Process status, with seed 000's codes (101, 105) plus two of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "u16", try_from = "u16")]
pub enum Status {
    /// 101: pushing, reachable, gets picks.
    Running,
    /// 102: spawned and not reported yet, or reported again after a failed
    /// probe and waiting for a probe to confirm it. Never picked.
    Starting,
    /// 103: an operator asked for it to empty; keeps its players, gets no picks.
    Draining,
    /// 105: a probe failed or pushes stopped. Never picked.
    Stopped,
}

impl Status {
    /// The numeric code used in XML, JSON and metrics.
    pub fn code(self) -> u16 {
        match self {
            Status::Running => 101,
            Status::Starting => 102,
            Status::Draining => 103,
            Status::Stopped => 105,
        }
    }

    /// Lowercase name, for JSON and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Starting => "starting",
            Status::Draining => "draining",
            Status::Stopped => "stopped",
        }
    }

    /// Sort rank in server lists: running first (seed 000).
    pub(super) fn rank(self) -> u8 {
        match self {
            Status::Running => 0,
            Status::Draining => 1,
            Status::Starting => 2,
            Status::Stopped => 3,
        }
    }

    /// All statuses, for metrics.
    pub const ALL: [Status; 4] = [
        Status::Running,
        Status::Starting,
        Status::Draining,
        Status::Stopped,
    ];
}

impl From<Status> for u16 {
    fn from(s: Status) -> u16 {
        s.code()
    }
}

impl TryFrom<u16> for Status {
    type Error = String;
    fn try_from(code: u16) -> Result<Self, String> {
        match code {
            101 => Ok(Status::Running),
            102 => Ok(Status::Starting),
            103 => Ok(Status::Draining),
            105 => Ok(Status::Stopped),
            other => Err(format!("unknown status code {other}")),
        }
    }
}

/// Why a process was marked stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// A TCP connect to its host:port failed or timed out.
    ProbeFailed,
    /// No push for longer than `push_timeout_ms`.
    MissedPushes,
}

/// Spawn settings of a zone that the pure core needs (the command template
/// lives in the driver's config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnSpec {
    /// Address the spawned processes listen on and report.
    pub host: IpAddr,
    /// First port handed to spawned processes.
    pub port_min: u16,
    /// Last port (inclusive) handed to spawned processes.
    pub port_max: u16,
}

/// A zone as configured: seed 000's `<server id name version>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneSpec {
    /// Zone id that processes report.
    pub id: ZoneId,
    /// Display name.
    pub name: String,
    /// Version string shown in lists.
    pub version: String,
    /// Seats per process: online + reservations at or above it is full.
    pub process_online_max: u32,
    /// Present when the balancer may start processes for this zone.
    pub spawn: Option<SpawnSpec>,
}

/// Timers and limits of the state machine. Part of the replicated state, so a
/// standby applies ops with the master's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryLimits {
    /// A running process with no push for this long is stopped. Costs: a hung
    /// process that still accepts TCP is handed out for up to this long.
    pub push_timeout_ms: u64,
    /// How long a pick holds a seat. Longer = safer against racing clients,
    /// but a client that never connects blocks a seat for this long.
    pub reservation_ttl_ms: u64,
    /// A spawned process that has not pushed within this is reaped (killed).
    pub spawn_report_timeout_ms: u64,
    /// Minimum time between two spawns in one zone.
    pub spawn_interval_ms: u64,
    /// Spawned processes alive (not stopped) at once, across zones.
    pub spawned_processes_max: u32,
    /// Entries in the registry, of any status. Memory: about 300 bytes each
    /// plus 16 bytes per reservation.
    pub processes_max: u32,
    /// A stopped process is forgotten after this long.
    pub stopped_retention_ms: u64,
}

impl Default for RegistryLimits {
    fn default() -> Self {
        RegistryLimits {
            push_timeout_ms: 3_000,
            reservation_ttl_ms: 5_000,
            spawn_report_timeout_ms: 10_000,
            spawn_interval_ms: 2_000,
            spawned_processes_max: 16,
            processes_max: 65_536,
            stopped_retention_ms: 300_000,
        }
    }
}
