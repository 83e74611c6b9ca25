//! The registry's entities: processes (with their reservations and spawn
//! record) and zones, and the views the driver reads of them.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::spec::{Status, StopReason, ZoneSpec};
use super::{Millis, ZoneId};

/// A held seat: counted as load until claimed or expired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// Token handed to the client.
    pub token: u64,
    /// When the seat is released if nobody claims it.
    pub expires_ms: Millis,
}

/// Set when the balancer spawned the process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spawned {
    /// OS pid of the child the driver started.
    pub pid: u32,
    /// When it was started.
    pub started_ms: Millis,
    /// Whether it has pushed at least once.
    pub reported: bool,
}

/// One game-server process as the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    /// Process id.
    pub id: String,
    /// Zone.
    pub zone: ZoneId,
    /// Address clients connect to.
    pub host: IpAddr,
    /// Port clients connect to.
    pub port: u16,
    /// Players connected at the last push.
    pub online: u32,
    /// Memory at the last push, MiB.
    pub used_memory_mb: u64,
    /// Version at the last push.
    pub version: String,
    /// OS pid reported by the process (or of the child we spawned).
    pub pid: Option<u32>,
    /// Current status.
    pub status: Status,
    /// Why it is stopped, or why it is starting again (probe failure).
    pub stop_reason: Option<StopReason>,
    /// Operator intent: keep it out of picks until undrained.
    pub draining: bool,
    /// The "drain complete" event was emitted.
    pub drained_reported: bool,
    /// Last push time (or spawn time for a spawned process not reported yet).
    pub last_push_ms: Millis,
    /// When `status` last changed.
    pub status_since_ms: Millis,
    /// Seats held by picks, oldest first (expiry order, TTL is constant).
    pub reservations: VecDeque<Reservation>,
    /// Set when the balancer started this process.
    pub spawned: Option<Spawned>,
}

impl Process {
    /// Seats in use: online plus reservations.
    pub fn load(&self) -> u64 {
        self.online as u64 + self.reservations.len() as u64
    }

    /// Endpoint clients connect to.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// Drain is complete: draining, no player, no reservation.
    pub fn is_drained(&self) -> bool {
        self.draining && self.online == 0 && self.reservations.is_empty()
    }

    /// Whether the prober should connect to it.
    pub fn wants_probe(&self) -> bool {
        match self.status {
            Status::Running | Status::Draining => true,
            // Reported again after a failed probe: a probe confirms it.
            Status::Starting => self.stop_reason == Some(StopReason::ProbeFailed),
            Status::Stopped => false,
        }
    }

    pub(super) fn probe_target(&self) -> ProbeTarget {
        ProbeTarget {
            id: self.id.clone(),
            addr: self.addr(),
            confirms: self.status == Status::Starting,
            last_push_ms: self.last_push_ms,
        }
    }

    pub(super) fn set_status(&mut self, status: Status, now_ms: Millis) {
        if self.status != status {
            self.status = status;
            self.status_since_ms = now_ms;
        }
    }

    /// The status a live process has, given the drain flag.
    pub(super) fn live_status(&self) -> Status {
        if self.draining {
            Status::Draining
        } else {
            Status::Running
        }
    }
}

/// Per-zone state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Zone {
    /// Configuration.
    pub spec: ZoneSpec,
    /// Processes by id.
    pub processes: BTreeMap<String, Process>,
    /// Last spawn attempt, for the spawn rate limit.
    pub last_spawn_ms: Option<Millis>,
}

/// A process the prober connects to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeTarget {
    /// Process id.
    pub id: String,
    /// Endpoint to connect to.
    pub addr: SocketAddr,
    /// A success is news (send [`RegistryOp::ProbeOk`]): the process waits
    /// for a probe to become running again.
    pub confirms: bool,
    /// The process's last push (the prober skips processes whose open push
    /// stream and recent push vouch for them).
    pub last_push_ms: Millis,
}

/// Numbers for metrics and the zone list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ZoneStats {
    /// Processes per status, in [`Status::ALL`] order.
    pub by_status: [u64; 4],
    /// Players online on running and draining processes.
    pub online: u64,
    /// Reservations held.
    pub reserved: u64,
}
