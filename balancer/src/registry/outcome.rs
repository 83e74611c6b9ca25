//! What an applied op did: its events, and the entities it changed (what the
//! master publishes to the standby).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::op::RegistryOp;
use super::spec::{Status, StopReason};
use super::{Millis, ZoneId};

/// Something that happened while applying an op, for logs, metrics and the
/// driver (which kills reaped children).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A new process pushed for the first time.
    Registered {
        /// Id.
        id: String,
    },
    /// A process became running (again).
    Running {
        /// Id.
        id: String,
    },
    /// A process was marked stopped.
    Stopped {
        /// Id.
        id: String,
        /// Why.
        reason: StopReason,
        /// Our child's pid, if we spawned it: the driver kills it.
        spawned_pid: Option<u32>,
    },
    /// A new process took over an endpoint; the old entry was removed.
    Replaced {
        /// Old id.
        old: String,
        /// New id.
        new: String,
        /// Status the old entry had.
        old_status: Status,
    },
    /// A draining process has no player and no reservation.
    DrainComplete {
        /// Id.
        id: String,
    },
    /// A spawned process never reported; removed. The driver kills the pid.
    SpawnTimedOut {
        /// Placeholder id.
        id: String,
        /// Child pid.
        pid: u32,
    },
    /// A stopped process was removed after `stopped_retention_ms`, or by
    /// an operator.
    Forgotten {
        /// Id.
        id: String,
    },
    /// Reservations released by expiry.
    ReservationsExpired {
        /// Id.
        id: String,
        /// How many.
        count: usize,
    },
}

/// The answer to a pick.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Picked {
    /// Process id.
    pub id: String,
    /// Address to connect to.
    pub host: IpAddr,
    /// Port to connect to.
    pub port: u16,
    /// Reservation token; a process may report it in `claimed`.
    pub reservation: u64,
    /// When the seat is released if unclaimed.
    pub expires_ms: Millis,
}

/// What an applied op produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Events in order.
    pub events: Vec<Event>,
    /// Set for a successful [`RegistryOp::Pick`].
    pub picked: Option<Picked>,
    /// Status of the process the op addressed, when there is one.
    pub status: Option<Status>,
}

/// The entities an applied op changed: what the master publishes after it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Processes changed, added or removed (look each up after the op: absent
    /// means removed). Removals are listed before the rest, so a replica never
    /// holds two owners of one endpoint.
    pub processes: Vec<String>,
    /// Zones whose spawn time changed.
    pub zones: Vec<ZoneId>,
    /// The reservation token counter moved.
    pub next_token: bool,
}

impl Changes {
    /// What `op`, applied with outcome `out`, changed. Tick changes are read
    /// from its events (every change a tick makes has one).
    pub fn of(op: &RegistryOp, out: &Outcome) -> Changes {
        let mut c = Changes::default();
        let mut removed = Vec::new();
        for e in &out.events {
            match e {
                Event::Replaced { old, .. } => removed.push(old.clone()),
                Event::SpawnTimedOut { id, .. } | Event::Forgotten { id } => {
                    removed.push(id.clone())
                }
                Event::Registered { id }
                | Event::Running { id }
                | Event::Stopped { id, .. }
                | Event::DrainComplete { id }
                | Event::ReservationsExpired { id, .. } => c.processes.push(id.clone()),
            }
        }
        match op {
            RegistryOp::Push { report, .. } => c.processes.push(report.id.clone()),
            RegistryOp::Pick { .. } => {
                if let Some(p) = &out.picked {
                    c.processes.push(p.id.clone());
                }
                c.next_token = true;
            }
            RegistryOp::Tick { .. } => {}
            RegistryOp::ProbeFailed { id, .. }
            | RegistryOp::ProbeOk { id, .. }
            | RegistryOp::Drain { id, .. }
            | RegistryOp::Undrain { id, .. } => c.processes.push(id.clone()),
            RegistryOp::SpawnStarted { zone, .. } | RegistryOp::SpawnFailed { zone, .. } => {
                c.zones.push(*zone)
            }
            RegistryOp::Forget { id } => removed.push(id.clone()),
        }
        c.processes.retain(|id| !removed.contains(id));
        c.processes.sort();
        c.processes.dedup();
        removed.sort();
        removed.dedup();
        removed.append(&mut c.processes);
        c.processes = removed;
        c
    }

    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty() && self.zones.is_empty() && !self.next_token
    }
}
