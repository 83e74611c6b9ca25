//! Picks: the least-loaded running process of a zone gets a reservation.

use super::entities::Reservation;
use super::error::RegistryError;
use super::outcome::{Outcome, Picked};
use super::spec::Status;
use super::{Millis, Registry, ZoneId};

impl Registry {
    pub(super) fn pick(&mut self, now_ms: Millis, zone: ZoneId) -> Result<Outcome, RegistryError> {
        let z = self
            .zones
            .get_mut(&zone)
            .ok_or(RegistryError::UnknownZone { zone })?;
        let cap = z.spec.process_online_max as u64;
        let best = z
            .processes
            .values_mut()
            .filter(|p| p.status == Status::Running && p.load() < cap)
            .min_by(|a, b| {
                (a.load(), a.used_memory_mb, &a.id).cmp(&(b.load(), b.used_memory_mb, &b.id))
            });
        let Some(p) = best else {
            let running = z
                .processes
                .values()
                .filter(|p| p.status == Status::Running)
                .count();
            let starting = z
                .processes
                .values()
                .filter(|p| p.status == Status::Starting)
                .count();
            return Err(RegistryError::NoCapacity {
                zone,
                running,
                starting,
                process_online_max: z.spec.process_online_max,
            });
        };
        let token = self.next_token;
        self.next_token += 1;
        let expires_ms = now_ms.saturating_add(self.limits.reservation_ttl_ms);
        p.reservations.push_back(Reservation { token, expires_ms });
        Ok(Outcome {
            events: Vec::new(),
            picked: Some(Picked {
                id: p.id.clone(),
                host: p.host,
                port: p.port,
                reservation: token,
                expires_ms,
            }),
            status: Some(p.status),
        })
    }
}
