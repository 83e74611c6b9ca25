//! The registry: a deterministic state machine over [`RegistryOp`].
//!
//! Invariants (the standby depends on them):
//! - **Every state change goes through [`Registry::apply`].** Nothing else takes
//!   `&mut self`, except construction, [`Registry::restore`] and the replica
//!   setters ([`Registry::put_process`], [`Registry::remove_process`],
//!   [`Registry::set_last_spawn`], [`Registry::set_next_token`],
//!   [`Registry::clear`]) through which a standby loads the master's entities.
//! - **[`Changes::of`] names every entity an op changed** (processes, zone
//!   spawn times, the token counter), so the master publishes exactly those
//!   and a standby that applies them, or only the latest value of each, is
//!   equal to the master (checked over random op sequences in the tests).
//! - **No clock, no IO, no randomness inside.** Time arrives in the op
//!   (`now_ms`, milliseconds on the driver's [`crate::clock::Clock`], which
//!   never steps); reservation tokens come
//!   from a counter in the state. Two registries built from the same zones that
//!   apply the same ops in the same order are equal, field for field.
//! - **A rejected op changes nothing.** `apply` validates before it mutates, so
//!   a driver publishes only ops that returned `Ok`.
//! - **Everything is bounded:** processes by `processes_max`, reservations per
//!   process by the zone's seat cap, claims per push by [`CLAIMS_PER_PUSH_MAX`],
//!   each iteration by the number of processes.
//!
//! Layout: this file holds the state ([`Registry`]), its queries and
//! [`Registry::apply`], which hands each op to the file of its concern:
//! `push` (status pushes, drains), `pick` (reservations), `liveness` (the
//! tick's deadlines and probe results), `spawn` (when and where a process is
//! started), `replica` (the setters a standby loads entities through). The
//! types they share: `spec` (zones, limits, statuses), `report` (what a
//! process pushes, validated), `op` (ops and their encoding), `entities`
//! (processes and zones), `outcome` (events and changes), `error`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

mod entities;
mod error;
mod liveness;
mod op;
mod outcome;
mod pick;
mod push;
mod replica;
mod report;
mod spawn;
mod spec;

pub use entities::{ProbeTarget, Process, Reservation, Spawned, Zone, ZoneStats};
pub use error::{RegistryError, SpawnRefused};
pub use op::{DecodeError, RegistryOp};
pub use outcome::{Changes, Event, Outcome, Picked};
pub use report::{validate_process_id, InvalidReport, StatusPush, StatusReport};
pub use spawn::SpawnPlan;
pub use spec::{RegistryLimits, SpawnSpec, Status, StopReason, ZoneSpec};

/// Zone (seed 000's "server") identifier.
pub type ZoneId = u32;
/// Milliseconds since the unix epoch, as chosen by the driver's clock.
pub type Millis = u64;

/// Longest accepted process id (seed 000: MAC + pid is 17 + 1 + 10 bytes).
pub const PROCESS_ID_LEN_MAX: usize = 64;
/// Longest accepted version string.
pub const VERSION_LEN_MAX: usize = 64;
/// Highest accepted online count; QQ Game's 20,000 connections per process
/// is far below it, so a larger number is a bug in the reporter.
pub const ONLINE_MAX: i64 = 1_000_000;
/// Highest accepted memory figure (16 TiB in MiB).
pub const USED_MEMORY_MB_MAX: i64 = 16 * 1024 * 1024;
/// Reservation tokens start each master's reign at `epoch << 32`: 4 billion
/// picks per reign, and a token stays below 2^53 (exact in JSON everywhere)
/// for epochs below 2^21.
pub const TOKEN_EPOCH_SHIFT: u32 = 32;

/// Reservation tokens a single push may claim; bounds the work per push.
pub const CLAIMS_PER_PUSH_MAX: usize = 1024;
/// Largest encoded op accepted by [`RegistryOp::decode`]; checked before parsing.
pub const OP_BYTES_MAX: usize = 64 * 1024;
/// Port candidates returned by [`Registry::spawn_plan`]; bounds the driver's
/// bind checks per spawn.
pub const SPAWN_PORT_CANDIDATES_MAX: usize = 64;

/// The registry state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    limits: RegistryLimits,
    zones: BTreeMap<ZoneId, Zone>,
    /// Process id → zone. (Hash maps: looked up on every push, never
    /// iterated, so their order cannot reach a replica.)
    zone_of: HashMap<String, ZoneId>,
    /// Endpoint → process id: one process per host:port.
    endpoints: HashMap<SocketAddr, String>,
    /// Next reservation token.
    next_token: u64,
}

fn placeholder_id(zone: ZoneId, port: u16) -> String {
    format!("spawn-{zone}-{port}")
}

impl Registry {
    /// An empty registry with these zones and limits.
    pub fn new(zones: Vec<ZoneSpec>, limits: RegistryLimits) -> Registry {
        let zones = zones
            .into_iter()
            .map(|spec| {
                (
                    spec.id,
                    Zone {
                        spec,
                        processes: BTreeMap::new(),
                        last_spawn_ms: None,
                    },
                )
            })
            .collect();
        Registry {
            limits,
            zones,
            zone_of: HashMap::new(),
            endpoints: HashMap::new(),
            next_token: 1,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &RegistryLimits {
        &self.limits
    }

    /// Whole state as bytes (for an hs snapshot).
    pub fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("Registry serialises")
    }

    /// Rebuilds a registry from [`Registry::snapshot`] bytes.
    pub fn restore(bytes: &[u8]) -> Result<Registry, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Zones in id order.
    pub fn zones(&self) -> impl Iterator<Item = &Zone> {
        self.zones.values()
    }

    /// One zone.
    pub fn zone(&self, zone: ZoneId) -> Result<&Zone, RegistryError> {
        self.zones
            .get(&zone)
            .ok_or(RegistryError::UnknownZone { zone })
    }

    /// One process.
    pub fn process(&self, id: &str) -> Option<&Process> {
        let zone = self.zone_of.get(id)?;
        self.zones.get(zone)?.processes.get(id)
    }

    /// Number of processes of any status.
    pub fn len(&self) -> usize {
        self.zone_of.len()
    }

    /// True when no process is registered.
    pub fn is_empty(&self) -> bool {
        self.zone_of.is_empty()
    }

    /// Processes that the prober should connect to.
    pub fn probe_targets(&self) -> Vec<ProbeTarget> {
        self.probe_targets_by(|_| true)
    }

    /// Processes that the prober should connect to and `keep` accepts
    /// (only those are copied out).
    pub fn probe_targets_by(&self, mut keep: impl FnMut(&Process) -> bool) -> Vec<ProbeTarget> {
        self.zones
            .values()
            .flat_map(|z| z.processes.values())
            .filter(|p| p.wants_probe() && keep(p))
            .map(Process::probe_target)
            .collect()
    }

    /// `id` as a probe target, if the prober should connect to it.
    pub fn probe_target(&self, id: &str) -> Option<ProbeTarget> {
        self.process(id)
            .filter(|p| p.wants_probe())
            .map(Process::probe_target)
    }

    /// A zone's processes sorted as seed 000 says: running first, then
    /// fewest online (counting reservations), then least memory, then id.
    pub fn sorted(&self, zone: ZoneId) -> Result<Vec<&Process>, RegistryError> {
        let mut list: Vec<&Process> = self.zone(zone)?.processes.values().collect();
        list.sort_by(|a, b| {
            (a.status.rank(), a.load(), a.used_memory_mb, &a.id).cmp(&(
                b.status.rank(),
                b.load(),
                b.used_memory_mb,
                &b.id,
            ))
        });
        Ok(list)
    }

    /// Counts for one zone.
    pub fn zone_stats(&self, zone: &Zone) -> ZoneStats {
        let mut stats = ZoneStats::default();
        for p in zone.processes.values() {
            let i = Status::ALL.iter().position(|s| *s == p.status).unwrap_or(0);
            stats.by_status[i] += 1;
            if matches!(p.status, Status::Running | Status::Draining) {
                stats.online += p.online as u64;
            }
            stats.reserved += p.reservations.len() as u64;
        }
        stats
    }

    fn spawned_alive(&self) -> u32 {
        self.zones
            .values()
            .flat_map(|z| z.processes.values())
            .filter(|p| p.spawned.is_some() && p.status != Status::Stopped)
            .count() as u32
    }

    /// Applies one op. On `Err` nothing changed; on `Ok` the op must be
    /// published to the standby in this order.
    pub fn apply(&mut self, op: &RegistryOp) -> Result<Outcome, RegistryError> {
        match op {
            RegistryOp::Push { now_ms, report } => self.push(*now_ms, report),
            RegistryOp::Pick { now_ms, zone } => self.pick(*now_ms, *zone),
            RegistryOp::Tick { now_ms } => Ok(self.tick(*now_ms)),
            RegistryOp::ProbeFailed { now_ms, id } => self.probe_failed(*now_ms, id),
            RegistryOp::ProbeOk { now_ms, id } => self.probe_ok(*now_ms, id),
            RegistryOp::Drain { now_ms, id } => self.set_drain(*now_ms, id, true),
            RegistryOp::Undrain { now_ms, id } => self.set_drain(*now_ms, id, false),
            RegistryOp::SpawnStarted {
                now_ms,
                zone,
                port,
                pid,
            } => self.spawn_started(*now_ms, *zone, *port, *pid),
            RegistryOp::SpawnFailed { now_ms, zone } => {
                let z = self
                    .zones
                    .get_mut(zone)
                    .ok_or(RegistryError::UnknownZone { zone: *zone })?;
                z.last_spawn_ms = Some(*now_ms);
                Ok(Outcome::default())
            }
            RegistryOp::Forget { id } => {
                if self.remove(id).is_none() {
                    return Err(RegistryError::UnknownProcess { id: id.clone() });
                }
                Ok(Outcome {
                    events: vec![Event::Forgotten { id: id.clone() }],
                    ..Outcome::default()
                })
            }
        }
    }

    fn process_mut(&mut self, id: &str) -> Result<&mut Process, RegistryError> {
        let zone = self
            .zone_of
            .get(id)
            .ok_or_else(|| RegistryError::UnknownProcess { id: id.to_string() })?;
        self.zones
            .get_mut(zone)
            .and_then(|z| z.processes.get_mut(id))
            .ok_or_else(|| RegistryError::UnknownProcess { id: id.to_string() })
    }

    fn remove(&mut self, id: &str) -> Option<Process> {
        let zone = self.zone_of.remove(id)?;
        let p = self.zones.get_mut(&zone)?.processes.remove(id)?;
        if self
            .endpoints
            .get(&p.addr())
            .is_some_and(|owner| owner == id)
        {
            self.endpoints.remove(&p.addr());
        }
        Some(p)
    }
}

fn stop(p: &mut Process, reason: StopReason, now_ms: Millis, out: &mut Outcome) {
    p.set_status(Status::Stopped, now_ms);
    p.stop_reason = Some(reason);
    p.reservations.clear();
    out.events.push(Event::Stopped {
        id: p.id.clone(),
        reason,
        spawned_pid: p.spawned.as_ref().map(|s| s.pid),
    });
}

#[cfg(test)]
mod tests;
