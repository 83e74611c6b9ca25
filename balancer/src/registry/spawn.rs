//! When and where a zone starts a process, and recording the start.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use super::entities::{Process, Spawned};
use super::error::{RegistryError, SpawnRefused};
use super::outcome::{Event, Outcome};
use super::spec::Status;
use super::{placeholder_id, Millis, Registry, ZoneId, SPAWN_PORT_CANDIDATES_MAX};

/// What [`Registry::spawn_plan`] proposes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpawnPlan {
    /// Zone.
    pub zone: ZoneId,
    /// Host the process will listen on.
    pub host: IpAddr,
    /// Free ports in preference order (at most [`SPAWN_PORT_CANDIDATES_MAX`]);
    /// the driver takes the first one it can bind.
    pub ports: Vec<u16>,
}

impl Registry {
    /// Whether to start a process for `zone` now, and on which ports. Pure:
    /// the driver spawns, then applies [`RegistryOp::SpawnStarted`] or
    /// [`RegistryOp::SpawnFailed`].
    pub fn spawn_plan(&self, zone: ZoneId, now_ms: Millis) -> Result<SpawnPlan, SpawnRefused> {
        let z = self
            .zones
            .get(&zone)
            .ok_or(SpawnRefused::NotConfigured { zone })?;
        let spec = z
            .spec
            .spawn
            .as_ref()
            .ok_or(SpawnRefused::NotConfigured { zone })?;
        // Hard limits first: waiting does not lift them.
        let spawned = self.spawned_alive();
        if spawned >= self.limits.spawned_processes_max {
            return Err(SpawnRefused::LimitReached { spawned });
        }
        if self.len() >= self.limits.processes_max as usize {
            return Err(SpawnRefused::RegistryFull);
        }
        if z.processes.values().any(|p| {
            p.spawned.as_ref().is_some_and(|s| !s.reported) && p.status == Status::Starting
        }) {
            return Err(SpawnRefused::InFlight { zone });
        }
        if let Some(last) = z.last_spawn_ms {
            let since = now_ms.saturating_sub(last);
            if since < self.limits.spawn_interval_ms {
                return Err(SpawnRefused::RateLimited {
                    zone,
                    retry_in_ms: self.limits.spawn_interval_ms - since,
                });
            }
        }
        let ports: Vec<u16> = (spec.port_min..=spec.port_max)
            .filter(|port| {
                !self
                    .endpoints
                    .contains_key(&SocketAddr::new(spec.host, *port))
            })
            .take(SPAWN_PORT_CANDIDATES_MAX)
            .collect();
        if ports.is_empty() {
            return Err(SpawnRefused::NoFreePort { zone });
        }
        Ok(SpawnPlan {
            zone,
            host: spec.host,
            ports,
        })
    }

    pub(super) fn spawn_started(
        &mut self,
        now_ms: Millis,
        zone: ZoneId,
        port: u16,
        pid: u32,
    ) -> Result<Outcome, RegistryError> {
        let z = self
            .zones
            .get(&zone)
            .ok_or(RegistryError::UnknownZone { zone })?;
        let spec = z.spec.spawn.as_ref().ok_or(RegistryError::SpawnRejected {
            zone,
            port,
            why: "the zone has no spawn settings",
        })?;
        let host = spec.host;
        let addr = SocketAddr::new(host, port);
        if self.endpoints.contains_key(&addr) {
            return Err(RegistryError::SpawnRejected {
                zone,
                port,
                why: "the port is in use by a registered process",
            });
        }
        let id = placeholder_id(zone, port);
        if self.zone_of.contains_key(&id) {
            return Err(RegistryError::SpawnRejected {
                zone,
                port,
                why: "a placeholder for this port exists",
            });
        }
        let z = self.zones.get_mut(&zone).expect("zone checked above");
        z.last_spawn_ms = Some(now_ms);
        z.processes.insert(
            id.clone(),
            Process {
                id: id.clone(),
                zone,
                host,
                port,
                online: 0,
                used_memory_mb: 0,
                version: String::new(),
                pid: Some(pid),
                status: Status::Starting,
                stop_reason: None,
                draining: false,
                drained_reported: false,
                last_push_ms: now_ms,
                status_since_ms: now_ms,
                reservations: VecDeque::new(),
                spawned: Some(Spawned {
                    pid,
                    started_ms: now_ms,
                    reported: false,
                }),
            },
        );
        self.zone_of.insert(id.clone(), zone);
        self.endpoints.insert(addr, id.clone());
        Ok(Outcome {
            events: vec![Event::Registered { id }],
            picked: None,
            status: Some(Status::Starting),
        })
    }
}
