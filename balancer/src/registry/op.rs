//! The ops the registry applies, and their encoding for the log.

use serde::{Deserialize, Serialize};

use super::report::StatusReport;
use super::{Millis, ZoneId, OP_BYTES_MAX};

/// Format byte in front of every encoded op, bumped on incompatible changes.
const OP_FORMAT_VERSION: u8 = 1;

/// One registry mutation. The master applies it and publishes
/// [`RegistryOp::encode`]; a standby decodes and applies the same bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RegistryOp {
    /// A process reported its status.
    Push {
        /// Time of arrival.
        now_ms: Millis,
        /// The validated report.
        report: StatusReport,
    },
    /// A client asked for the least-loaded process of a zone; reserves a seat.
    Pick {
        /// Time of the pick.
        now_ms: Millis,
        /// Zone asked for.
        zone: ZoneId,
    },
    /// Timer: expire reservations, stop silent processes, reap spawns that
    /// never reported, forget long-stopped processes.
    Tick {
        /// Current time.
        now_ms: Millis,
    },
    /// A TCP probe of the process failed.
    ProbeFailed {
        /// Time of the probe.
        now_ms: Millis,
        /// Process probed.
        id: String,
    },
    /// A TCP probe succeeded on a process that waits for one (status 102
    /// after a failed probe); the prober sends no op for other processes.
    ProbeOk {
        /// Time of the probe.
        now_ms: Millis,
        /// Process probed.
        id: String,
    },
    /// An operator asked for the process to empty.
    Drain {
        /// Time of the request.
        now_ms: Millis,
        /// Process to drain.
        id: String,
    },
    /// An operator cancelled a drain.
    Undrain {
        /// Time of the request.
        now_ms: Millis,
        /// Process to put back in service.
        id: String,
    },
    /// The driver started a process from the zone's template.
    SpawnStarted {
        /// Time of the spawn.
        now_ms: Millis,
        /// Zone spawned for.
        zone: ZoneId,
        /// Port handed to it.
        port: u16,
        /// OS pid of the child.
        pid: u32,
    },
    /// The driver tried to spawn and the command failed to start; counts
    /// against the spawn rate so a broken template does not loop.
    SpawnFailed {
        /// Time of the attempt.
        now_ms: Millis,
        /// Zone spawned for.
        zone: ZoneId,
    },
    /// An operator removed a process from the registry.
    Forget {
        /// Process to remove.
        id: String,
    },
}

/// Why [`RegistryOp::decode`] refused bytes.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Longer than [`OP_BYTES_MAX`].
    #[error("encoded op is {len} bytes, more than {OP_BYTES_MAX}: the sender is corrupt or a newer incompatible version")]
    TooLong {
        /// Length received.
        len: usize,
    },
    /// Empty, or a format byte this build does not know.
    #[error("encoded op has format {found:?}, this build reads {OP_FORMAT_VERSION}: upgrade the standby to the master's version")]
    Format {
        /// Format byte found, if any.
        found: Option<u8>,
    },
    /// The body is not a valid op.
    #[error("encoded op does not parse: {0}")]
    Body(#[from] serde_json::Error),
}

impl RegistryOp {
    /// Encodes the op for replication.
    ///
    /// Layout: `{ format u8 = 1 | JSON body }`. JSON keeps ops readable in
    /// logs and dumps; an op is a few hundred bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.push(OP_FORMAT_VERSION);
        // Serialising these plain data types into a Vec cannot fail.
        serde_json::to_writer(&mut out, self).expect("RegistryOp serialises");
        out
    }

    /// The time the op carries (all but [`RegistryOp::Forget`], which
    /// changes no deadline: it only removes).
    pub fn now_ms(&self) -> Option<Millis> {
        match self {
            RegistryOp::Push { now_ms, .. }
            | RegistryOp::Pick { now_ms, .. }
            | RegistryOp::Tick { now_ms }
            | RegistryOp::ProbeFailed { now_ms, .. }
            | RegistryOp::ProbeOk { now_ms, .. }
            | RegistryOp::Drain { now_ms, .. }
            | RegistryOp::Undrain { now_ms, .. }
            | RegistryOp::SpawnStarted { now_ms, .. }
            | RegistryOp::SpawnFailed { now_ms, .. } => Some(*now_ms),
            RegistryOp::Forget { .. } => None,
        }
    }

    /// Decodes bytes made by [`RegistryOp::encode`]; refuses oversize input
    /// before parsing it.
    pub fn decode(bytes: &[u8]) -> Result<RegistryOp, DecodeError> {
        if bytes.len() > OP_BYTES_MAX {
            return Err(DecodeError::TooLong { len: bytes.len() });
        }
        match bytes.first() {
            Some(&OP_FORMAT_VERSION) => Ok(serde_json::from_slice(&bytes[1..])?),
            found => Err(DecodeError::Format {
                found: found.copied(),
            }),
        }
    }
}
