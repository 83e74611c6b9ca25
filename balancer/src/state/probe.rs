//! Probe rounds: connect to each live process, apply the verdicts.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::metrics::Metrics;
use crate::registry::{ProbeTarget, RegistryOp, Status};

use super::streams::id_hash;
use super::Balancer;

impl Balancer {
    /// One probe round: connect to every live process, apply verdicts.
    /// A process whose open push stream and fresh push vouch for it is
    /// connect-tested only every `stream_probe_interval_ms` (each on its own
    /// round, so the checks are spread evenly).
    pub(crate) async fn probe_round(&self) {
        let now_ms = self.now_ms();
        let round = self.probe_rounds.fetch_add(1, Ordering::Relaxed);
        let every = (self.config.stream_probe_interval_ms / self.config.probe_interval_ms).max(1);
        let fresh_ms = self.config.stream_fresh_ms;
        let targets = {
            // Lock order: streams, then the registry.
            let streams = self.streams.lock();
            self.read(|r| {
                r.probe_targets_by(|p| {
                    let vouched = p.status != Status::Starting
                        && now_ms.saturating_sub(p.last_push_ms) < fresh_ms
                        && streams.contains_key(&p.id);
                    !vouched || round.wrapping_add(id_hash(&p.id)).is_multiple_of(every)
                })
            })
        };
        let _ = self.probe(targets).await;
    }

    /// Connects to `targets` and applies the verdicts; returns the targets
    /// that answered.
    pub(super) async fn probe(&self, targets: Vec<ProbeTarget>) -> Vec<ProbeTarget> {
        let timeout = Duration::from_millis(self.config.probe_timeout_ms);
        let results = probe_all(targets, timeout, self.config.probe_concurrency_max).await;
        let mut answered = Vec::new();
        for (target, ok) in results {
            Metrics::inc(&self.metrics.probes);
            let now_ms = self.now_ms();
            let op = if !ok {
                Metrics::inc(&self.metrics.probes_failed);
                debug!(id = target.id, addr = %target.addr, "probe failed");
                RegistryOp::ProbeFailed {
                    now_ms,
                    id: target.id,
                }
            } else if target.confirms {
                answered.push(target.clone());
                RegistryOp::ProbeOk {
                    now_ms,
                    id: target.id,
                }
            } else {
                answered.push(target);
                continue;
            };
            // The process may have been forgotten meanwhile; that is fine.
            let _ = self.apply(op);
        }
        answered
    }
}

/// Connects to each target with a timeout, at most `concurrency` at once.
pub async fn probe_all(
    targets: Vec<ProbeTarget>,
    timeout: Duration,
    concurrency: usize,
) -> Vec<(ProbeTarget, bool)> {
    let mut results = Vec::with_capacity(targets.len());
    let mut pending = targets.into_iter();
    let mut set = JoinSet::new();
    loop {
        while set.len() < concurrency.max(1) {
            let Some(t) = pending.next() else { break };
            set.spawn(async move {
                let ok = match tokio::time::timeout(timeout, TcpStream::connect(t.addr)).await {
                    Ok(Ok(s)) => {
                        // Close with a reset, as HAProxy's checks do: no
                        // FIN handshake and no TIME_WAIT socket per probe.
                        // (Deprecated because a non-zero linger blocks the
                        // dropping thread; a zero linger never does.)
                        #[allow(deprecated)]
                        let _ = s.set_linger(Some(Duration::ZERO));
                        true
                    }
                    _ => false,
                };
                (t, ok)
            });
        }
        match set.join_next().await {
            Some(Ok(r)) => results.push(r),
            Some(Err(e)) => warn!(error = %e, "probe task failed"),
            None => break,
        }
    }
    results
}
