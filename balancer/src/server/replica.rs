//! The replica side: hs's `Apply` loading replicated entities into the
//! shared state, and starting the embedded node with it.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use hs::{Apply, Node, Op, RecordRef, Role};
use tracing::error;

use crate::standby::{decode_at, Entity, EntityError, HsSink, StandbyConfig};
use crate::state::Balancer;

/// The replica side: hs calls it for every record on a standby, and on any
/// node when it rebuilds from its own log.
struct ReplicaApply {
    balancer: Weak<Balancer>,
    sink: Arc<HsSink>,
}

impl ReplicaApply {
    fn load(&self, key: &[u8], op: Op, value: &[u8]) {
        let Some(b) = self.balancer.upgrade() else {
            return;
        };
        let result = decode_at(key, op, value, b.now_ms()).and_then(|entity| {
            if let Entity::Master { http } = entity {
                *self.sink.master_http.lock() = Some(http);
                return Ok(());
            }
            b.load_replicated(entity)
                .map_err(|source| EntityError::Refused {
                    key: String::from_utf8_lossy(key).into_owned(),
                    source,
                })
        });
        if let Err(e) = result {
            self.sink.replica_errors.fetch_add(1, Ordering::Relaxed);
            error!(error = %e, "replicated record not applied");
        }
    }
}

impl Apply for ReplicaApply {
    fn apply(&mut self, rec: &RecordRef<'_>) {
        self.load(rec.key, rec.op, rec.value);
    }

    fn reset(&mut self) {
        if let Some(b) = self.balancer.upgrade() {
            b.clear_replica();
        }
        *self.sink.master_http.lock() = None;
    }

    fn restore(&mut self, key: &[u8], value: &[u8]) {
        self.load(key, Op::Put, value);
    }
}

/// Why the embedded node did not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the hs node in {dir}: {source}")]
pub struct StandbyError {
    /// Its directory.
    pub dir: PathBuf,
    /// hs's error.
    pub source: hs::NodeError,
}

pub(super) fn start_node(
    cfg: &StandbyConfig,
    balancer: &Arc<Balancer>,
    sink: &Arc<HsSink>,
) -> Result<Node, StandbyError> {
    let role = if cfg.prefer_master {
        Role::Master
    } else {
        Role::Slave
    };
    let app = ReplicaApply {
        balancer: Arc::downgrade(balancer),
        sink: sink.clone(),
    };
    Node::start(cfg.node.clone(), role, app).map_err(|source| StandbyError {
        dir: cfg.node.dir.clone(),
        source,
    })
}
