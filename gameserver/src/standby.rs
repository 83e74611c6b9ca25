//! Waiting for the standby before an answer leaves (room and center servers).
//!
//! An answer leaves once its records are on the standby (hs `Received`).
//! With no live standby (none connected, or one still catching up) the first
//! answer waits at most `wait_max`, then the server runs *degraded*: answers
//! leave at once, unreplicated, counted and logged once, until a live
//! standby is back. Waiting `wait_max` for every answer instead would make
//! every player's action take that long while the standby is down.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hs::{Durability, Node, NodeError, Role};

/// How long one wait on hs lasts before the loop looks at the role again, ms.
const WAIT_STEP_MS: u64 = 20;

/// What became of an answer's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// On the standby.
    Replicated,
    /// No live standby: leaves without it.
    Unreplicated,
    /// This node stopped being master: the answer must not leave.
    NotMaster,
    /// The node or the server is stopping.
    Stopped,
}

/// The release thread's view of the standby.
pub struct StandbyWait {
    wait_max: Duration,
    /// No live standby, and an answer already waited `wait_max` for one.
    degraded: bool,
    /// Named in the log line (`"room replies"`, `"center answers"`).
    what: &'static str,
}

impl StandbyWait {
    pub fn new(wait_max_ms: u64, what: &'static str) -> StandbyWait {
        StandbyWait {
            wait_max: Duration::from_millis(wait_max_ms),
            degraded: false,
            what,
        }
    }

    /// Waits until `pos` is on the standby, or as the module doc says.
    /// `unreplicated` counts answers that left without it.
    pub fn wait(
        &mut self,
        node: &Node,
        pos: u64,
        stop: &AtomicBool,
        unreplicated: &AtomicU64,
    ) -> Waited {
        let t0 = Instant::now();
        loop {
            let st = node.stats();
            let live = st.slave_connected && !st.catching_up;
            if live && self.degraded {
                self.degraded = false;
                tracing::info!("a live standby is back: {} wait for it again", self.what);
            }
            // Degraded: only what is already there counts; no waiting.
            let step = if self.degraded {
                Duration::ZERO
            } else {
                Duration::from_millis(WAIT_STEP_MS)
            };
            match node.wait(pos, Durability::Received, step) {
                Ok(()) => return Waited::Replicated,
                Err(NodeError::Shutdown) => return Waited::Stopped,
                Err(_) => {}
            }
            if node.role() != Role::Master {
                return Waited::NotMaster;
            }
            if stop.load(Ordering::Acquire) {
                return Waited::Stopped;
            }
            if !live && (self.degraded || t0.elapsed() >= self.wait_max) {
                if !self.degraded {
                    self.degraded = true;
                    tracing::warn!(
                        "no live standby: {} leave without replication; start the standby",
                        self.what
                    );
                }
                unreplicated.fetch_add(1, Ordering::Relaxed);
                return Waited::Unreplicated;
            }
        }
    }
}
