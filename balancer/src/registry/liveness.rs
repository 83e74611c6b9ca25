//! The tick (expired reservations, missed pushes, stale spawns) and probe
//! results.

use super::error::RegistryError;
use super::outcome::{Event, Outcome};
use super::spec::{Status, StopReason};
use super::{stop, Millis, Registry};

impl Registry {
    pub(super) fn tick(&mut self, now_ms: Millis) -> Outcome {
        let mut out = Outcome::default();
        let limits = self.limits.clone();
        let mut to_remove: Vec<(String, Event)> = Vec::new();
        for z in self.zones.values_mut() {
            for p in z.processes.values_mut() {
                let expired = p
                    .reservations
                    .iter()
                    .take_while(|r| r.expires_ms <= now_ms)
                    .count();
                if expired > 0 {
                    p.reservations.drain(..expired);
                    out.events.push(Event::ReservationsExpired {
                        id: p.id.clone(),
                        count: expired,
                    });
                }
                let silent_ms = now_ms.saturating_sub(p.last_push_ms);
                match p.status {
                    Status::Running | Status::Draining if silent_ms > limits.push_timeout_ms => {
                        stop(p, StopReason::MissedPushes, now_ms, &mut out);
                    }
                    Status::Starting => match &p.spawned {
                        Some(s) if !s.reported => {
                            let waited_ms = now_ms.saturating_sub(s.started_ms);
                            if waited_ms > limits.spawn_report_timeout_ms {
                                to_remove.push((
                                    p.id.clone(),
                                    Event::SpawnTimedOut {
                                        id: p.id.clone(),
                                        pid: s.pid,
                                    },
                                ));
                            }
                        }
                        _ if silent_ms > limits.push_timeout_ms => {
                            stop(p, StopReason::MissedPushes, now_ms, &mut out);
                        }
                        _ => {}
                    },
                    Status::Stopped
                        if now_ms.saturating_sub(p.status_since_ms)
                            > limits.stopped_retention_ms =>
                    {
                        to_remove.push((p.id.clone(), Event::Forgotten { id: p.id.clone() }));
                    }
                    _ => {}
                }
                if p.status == Status::Draining && p.is_drained() && !p.drained_reported {
                    p.drained_reported = true;
                    out.events.push(Event::DrainComplete { id: p.id.clone() });
                }
            }
        }
        for (id, event) in to_remove {
            self.remove(&id);
            out.events.push(event);
        }
        out
    }

    pub(super) fn probe_failed(
        &mut self,
        now_ms: Millis,
        id: &str,
    ) -> Result<Outcome, RegistryError> {
        let p = self.process_mut(id)?;
        let mut out = Outcome::default();
        if p.status != Status::Stopped {
            stop(p, StopReason::ProbeFailed, now_ms, &mut out);
        }
        out.status = Some(p.status);
        Ok(out)
    }

    pub(super) fn probe_ok(&mut self, now_ms: Millis, id: &str) -> Result<Outcome, RegistryError> {
        let p = self.process_mut(id)?;
        let mut out = Outcome::default();
        if p.status == Status::Starting && p.stop_reason == Some(StopReason::ProbeFailed) {
            p.stop_reason = None;
            let next = p.live_status();
            p.set_status(next, now_ms);
            out.events.push(Event::Running { id: id.to_string() });
        }
        out.status = Some(p.status);
        Ok(out)
    }
}
