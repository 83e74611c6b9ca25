//! Picks: a reservation on the least-loaded process, waiting for a spawn
//! when the zone is full.

use std::time::Duration;

use crate::metrics::Metrics;
use crate::registry::{Picked, RegistryError, RegistryOp, SpawnRefused, ZoneId};
use crate::sink::{ApplyError, NotMaster};

use super::spawn::SpawnError;
use super::Balancer;

/// Pick attempts per request while waiting for a spawned process; with
/// `pick_wait_ms` this bounds the loop.
pub const PICK_ATTEMPTS_MAX: usize = 16;

/// Why a pick failed.
#[derive(Debug, thiserror::Error)]
pub enum PickError {
    /// The registry refused (unknown zone, no capacity).
    #[error("{registry}{}", spawn.as_ref().map(|s| format!("; no process spawned: {s}")).unwrap_or_default())]
    Registry {
        /// Registry error.
        registry: RegistryError,
        /// Why no spawn helped, if one was tried.
        spawn: Option<String>,
    },
    /// This balancer is not the master.
    #[error(transparent)]
    NotMaster(#[from] NotMaster),
}

impl Balancer {
    /// Seed 003's dispatcher: the least-loaded running process of `zone`,
    /// with a seat reserved. When the zone is full it spawns a process (if
    /// configured) and waits up to `pick_wait_ms` for it to report.
    pub async fn pick(&self, zone: ZoneId) -> Result<Picked, PickError> {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.config.pick_wait_ms);
        let mut last = None;
        for _ in 0..PICK_ATTEMPTS_MAX {
            let notified = self.capacity.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.apply(RegistryOp::Pick {
                now_ms: self.now_ms(),
                zone,
            }) {
                Ok(out) => {
                    Metrics::inc(&self.metrics.picks);
                    return Ok(out.picked.expect("a successful pick names a process"));
                }
                Err(ApplyError::Registry(e @ RegistryError::NoCapacity { starting, .. })) => {
                    let spawn = self.try_spawn(zone);
                    let worth_waiting = starting > 0
                        || matches!(
                            spawn,
                            Ok(_)
                                | Err(SpawnError::Refused(
                                    SpawnRefused::InFlight { .. }
                                        | SpawnRefused::RateLimited { .. }
                                ))
                        );
                    last = Some(PickError::Registry {
                        registry: e,
                        spawn: spawn.err().map(|s| s.to_string()),
                    });
                    if !worth_waiting || tokio::time::Instant::now() >= deadline {
                        break;
                    }
                    let _ = tokio::time::timeout_at(deadline, notified).await;
                }
                Err(ApplyError::Registry(e)) => {
                    return Err(PickError::Registry {
                        registry: e,
                        spawn: None,
                    })
                }
                Err(ApplyError::NotMaster(e)) => return Err(e.into()),
            }
        }
        Metrics::inc(&self.metrics.picks_full);
        Err(last.expect("the loop ran at least once"))
    }
}
