//! The setters through which a standby loads the master's entities, and the
//! token counter.

use super::entities::Process;
use super::error::RegistryError;
use super::{Millis, Registry, ZoneId, TOKEN_EPOCH_SHIFT};

impl Registry {
    /// Next reservation token (replicated so a new master never reuses one).
    pub fn next_token(&self) -> u64 {
        self.next_token
    }

    /// When the zone last spawned (or tried to), for the spawn rate limit.
    pub fn last_spawn(&self, zone: ZoneId) -> Option<Millis> {
        self.zones.get(&zone).and_then(|z| z.last_spawn_ms)
    }

    /// Replica: drops every process and spawn time (zones and limits stay):
    /// the state before the first op. A snapshot or records follow.
    pub fn clear(&mut self) {
        for z in self.zones.values_mut() {
            z.processes.clear();
            z.last_spawn_ms = None;
        }
        self.zone_of.clear();
        self.endpoints.clear();
        self.next_token = 1;
    }

    /// Replica: sets a process to the master's copy, keeping the id and
    /// endpoint indexes. Refused (nothing changes) when its zone is unknown
    /// here: the two balancers' `[[zones]]` differ.
    pub fn put_process(&mut self, p: Process) -> Result<(), RegistryError> {
        if !self.zones.contains_key(&p.zone) {
            return Err(RegistryError::UnknownZone { zone: p.zone });
        }
        self.remove(&p.id);
        let addr = p.addr();
        // The master removes an endpoint's old owner before it publishes the
        // new one; if a replica still has one, the newer entry wins.
        if let Some(owner) = self.endpoints.insert(addr, p.id.clone()) {
            if let Some(zone) = self.zone_of.remove(&owner) {
                if let Some(z) = self.zones.get_mut(&zone) {
                    z.processes.remove(&owner);
                }
            }
        }
        // A pick is published as the process (holding the new reservation)
        // and then the token counter: a master that dies between the two
        // must not leave a standby that hands the token out again. The
        // process record alone lifts the counter past its tokens.
        if let Some(top) = p.reservations.iter().map(|r| r.token).max() {
            self.next_token = self.next_token.max(top.saturating_add(1));
        }
        self.zone_of.insert(p.id.clone(), p.zone);
        self.zones
            .get_mut(&p.zone)
            .expect("zone checked above")
            .processes
            .insert(p.id.clone(), p);
        Ok(())
    }

    /// Replica: removes a process the master removed. Unknown ids are fine.
    pub fn remove_process(&mut self, id: &str) {
        self.remove(id);
    }

    /// Replica: sets a zone's last spawn time. Unknown zones are ignored.
    pub fn set_last_spawn(&mut self, zone: ZoneId, last_spawn_ms: Option<Millis>) {
        if let Some(z) = self.zones.get_mut(&zone) {
            z.last_spawn_ms = last_spawn_ms;
        }
    }

    /// A new reign (this registry's node became master at hs `epoch`): lifts the
    /// token counter to at least `epoch << TOKEN_EPOCH_SHIFT`. A pick the old
    /// master answered before any of its records reached this standby (async)
    /// left no trace here; its token came from an older epoch's range, so this
    /// master never hands it out again. Published with the next pick (`t`).
    pub fn begin_reign(&mut self, epoch: u32) {
        self.next_token = self.next_token.max((epoch as u64) << TOKEN_EPOCH_SHIFT);
    }

    /// Replica: raises the token counter to the master's. It never goes
    /// down (between two [`Registry::clear`]s): a process record may have
    /// lifted it already, and the master's counter only grows.
    pub fn set_next_token(&mut self, next_token: u64) {
        self.next_token = self.next_token.max(next_token);
    }
}
