//! Status pushes, and draining.

use std::collections::VecDeque;
use std::net::SocketAddr;

use super::entities::Process;
use super::error::RegistryError;
use super::outcome::{Event, Outcome};
use super::report::StatusReport;
use super::spec::{Status, StopReason};
use super::{Millis, Registry};

impl Registry {
    pub(super) fn push(
        &mut self,
        now_ms: Millis,
        r: &StatusReport,
    ) -> Result<Outcome, RegistryError> {
        if !self.zones.contains_key(&r.zone) {
            return Err(RegistryError::UnknownZone { zone: r.zone });
        }
        let addr = SocketAddr::new(r.host, r.port);
        let existing_zone = self.zone_of.get(&r.id).copied();
        if let Some(registered) = existing_zone {
            if registered != r.zone {
                return Err(RegistryError::ZoneMismatch {
                    id: r.id.clone(),
                    registered,
                    reported: r.zone,
                });
            }
        } else {
            // A new id that takes over an endpoint frees an entry, so only
            // count it against the limit when the endpoint is not taken.
            let frees_one = self.endpoints.contains_key(&addr);
            if !frees_one && self.len() >= self.limits.processes_max as usize {
                return Err(RegistryError::RegistryFull {
                    processes_max: self.limits.processes_max,
                });
            }
        }
        // Validated: from here on the op succeeds.
        let mut out = Outcome::default();
        let mut inherited_spawn = None;
        // Compared in place: on the common path the endpoint is this
        // process's own and nothing is copied.
        let taken = self.endpoints.get(&addr).filter(|o| **o != r.id).cloned();
        if let Some(owner) = taken {
            {
                // Two processes cannot listen on one endpoint: the old one is
                // gone (restarted, or the spawn placeholder of this process).
                if let Some(old) = self.remove(&owner) {
                    if old.spawned.as_ref().is_some_and(|s| !s.reported) {
                        inherited_spawn = old.spawned.clone();
                    }
                    out.events.push(Event::Replaced {
                        old: owner,
                        new: r.id.clone(),
                        old_status: old.status,
                    });
                }
            }
        }
        let zone = self.zones.get_mut(&r.zone).expect("zone checked above");
        let is_new = existing_zone.is_none();
        debug_assert_eq!(is_new, !zone.processes.contains_key(&r.id));
        // A known process is found without copying its id for the key.
        let p = match zone.processes.get_mut(&r.id) {
            Some(p) => p,
            None => zone
                .processes
                .entry(r.id.clone())
                .or_insert_with(|| Process {
                    id: r.id.clone(),
                    zone: r.zone,
                    host: r.host,
                    port: r.port,
                    online: 0,
                    used_memory_mb: 0,
                    version: String::new(),
                    pid: None,
                    status: Status::Stopped,
                    stop_reason: None,
                    draining: false,
                    drained_reported: false,
                    last_push_ms: now_ms,
                    status_since_ms: now_ms,
                    reservations: VecDeque::new(),
                    spawned: None,
                }),
        };
        if is_new {
            out.events.push(Event::Registered { id: r.id.clone() });
            if let Some(mut s) = inherited_spawn {
                s.reported = true;
                p.spawned = Some(s);
            }
        }
        let old_addr = p.addr();
        // Claims: explicit tokens first, then assume each further new player
        // took the oldest reservation.
        let before = p.reservations.len();
        p.reservations.retain(|res| !r.claimed.contains(&res.token));
        let claimed_explicit = before - p.reservations.len();
        let joined = (r.online as usize).saturating_sub(p.online as usize);
        let implicit = joined
            .saturating_sub(claimed_explicit)
            .min(p.reservations.len());
        p.reservations.drain(..implicit);

        p.host = r.host;
        p.port = r.port;
        p.online = r.online;
        p.used_memory_mb = r.used_memory_mb;
        p.version.clone_from(&r.version);
        if r.pid.is_some() {
            p.pid = r.pid;
        }
        p.last_push_ms = now_ms;
        let next = match (p.status, p.stop_reason) {
            // Stopped by a failed probe: a late push from a dead process must
            // not make it pickable; wait for a probe to confirm.
            (Status::Stopped, Some(StopReason::ProbeFailed)) => Status::Starting,
            (Status::Starting, Some(StopReason::ProbeFailed)) => Status::Starting,
            _ => p.live_status(),
        };
        if next != p.status && next != Status::Starting {
            out.events.push(Event::Running { id: r.id.clone() });
            p.stop_reason = None;
        }
        if let Some(s) = p.spawned.as_mut() {
            s.reported = true;
        }
        p.set_status(next, now_ms);
        out.status = Some(p.status);
        let draining = p.status == Status::Draining;
        if is_new {
            self.zone_of.insert(r.id.clone(), r.zone);
        }
        if old_addr != addr && self.endpoints.get(&old_addr) == Some(&r.id) {
            self.endpoints.remove(&old_addr);
        }
        if self.endpoints.get(&addr) != Some(&r.id) {
            self.endpoints.insert(addr, r.id.clone());
        }
        if draining {
            self.check_drained(&r.id, &mut out);
        }
        Ok(out)
    }

    pub(super) fn check_drained(&mut self, id: &str, out: &mut Outcome) {
        if let Ok(p) = self.process_mut(id) {
            if p.status == Status::Draining && p.is_drained() && !p.drained_reported {
                p.drained_reported = true;
                out.events.push(Event::DrainComplete { id: id.to_string() });
            }
        }
    }

    pub(super) fn set_drain(
        &mut self,
        now_ms: Millis,
        id: &str,
        draining: bool,
    ) -> Result<Outcome, RegistryError> {
        let p = self.process_mut(id)?;
        p.draining = draining;
        p.drained_reported = false;
        match (p.status, draining) {
            (Status::Running, true) => p.set_status(Status::Draining, now_ms),
            (Status::Draining, false) => p.set_status(Status::Running, now_ms),
            _ => {}
        }
        let mut out = Outcome {
            status: Some(p.status),
            ..Outcome::default()
        };
        self.check_drained(id, &mut out);
        Ok(out)
    }
}
