//! Push-stream bookkeeping: which stream a process last pushed on, and what
//! a closed stream means for its processes.

use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::debug;

use crate::metrics::Metrics;
use crate::registry::ProbeTarget;

use super::Balancer;

/// After a push stream closed, processes whose probe still answered are
/// probed once more this much later (their process may have been exiting).
pub const STREAM_CLOSE_RECHECK_MS: u64 = 200;

impl Balancer {
    /// A push stream opened: its serial.
    pub(crate) fn stream_opened(&self) -> u64 {
        Metrics::inc(&self.metrics.streams_opened);
        self.stream_serial.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// `id` pushed on stream `serial` for the first time.
    pub(crate) fn stream_pushed(&self, serial: u64, id: &str) {
        self.streams.lock().insert(id.to_string(), serial);
    }

    /// Stream `serial` closed after `ids` pushed on it: the ones it still
    /// vouched for are probed now, so a process that died (its kernel closed
    /// the stream) is stopped within a connect, not a probe round.
    pub(crate) async fn stream_closed(&self, serial: u64, ids: Vec<String>) {
        Metrics::inc(&self.metrics.streams_closed);
        let orphaned: Vec<String> = {
            let mut streams = self.streams.lock();
            ids.into_iter()
                .filter(|id| {
                    let mine = streams.get(id) == Some(&serial);
                    if mine {
                        streams.remove(id);
                    }
                    mine
                })
                .collect()
        };
        if orphaned.is_empty() || !self.is_master() {
            return;
        }
        let targets: Vec<ProbeTarget> = self.read(|r| {
            orphaned
                .iter()
                .filter_map(|id| r.probe_target(id))
                .collect()
        });
        debug!(
            serial,
            processes = targets.len(),
            "push stream closed: probing its processes"
        );
        let answered = self.probe(targets).await;
        if answered.is_empty() {
            return;
        }
        // A dying process's kernel may close the stream a moment before its
        // listener: a connect in between succeeds. Look again shortly.
        tokio::time::sleep(Duration::from_millis(STREAM_CLOSE_RECHECK_MS)).await;
        if self.is_master() {
            let _ = self.probe(answered).await;
        }
    }
}

/// A stable spread of process ids over probe rounds.
pub(super) fn id_hash(id: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}
