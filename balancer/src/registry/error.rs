//! Why an op or a spawn was refused.

use super::ZoneId;

/// Why the registry refused an op. A refused op changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The zone is not configured.
    #[error("unknown zone {zone}: add it to [[zones]] in the balancer config, or fix the zone the process reports")]
    UnknownZone {
        /// Zone asked for.
        zone: ZoneId,
    },
    /// No process with this id.
    #[error("unknown process {id:?}: it never pushed its status, or it was forgotten")]
    UnknownProcess {
        /// Id asked for.
        id: String,
    },
    /// A process reported a different zone than it registered with.
    #[error("process {id:?} is registered in zone {registered} but reported zone {reported}; a process cannot change zone: forget it first or restart it")]
    ZoneMismatch {
        /// Id.
        id: String,
        /// Zone it has.
        registered: ZoneId,
        /// Zone it reported.
        reported: ZoneId,
    },
    /// `processes_max` reached.
    #[error("registry holds {processes_max} processes, its limit; raise processes_max or forget stopped processes")]
    RegistryFull {
        /// The limit.
        processes_max: u32,
    },
    /// No running process with a free seat.
    #[error("zone {zone} has no free seat: {running} running processes, all at {process_online_max} (online + reserved); {starting} starting")]
    NoCapacity {
        /// Zone asked for.
        zone: ZoneId,
        /// Running processes.
        running: usize,
        /// Processes starting (will take players once they report).
        starting: usize,
        /// The zone's cap.
        process_online_max: u32,
    },
    /// A spawn was recorded for a zone without spawn settings or on a port in
    /// use.
    #[error("cannot record a spawn in zone {zone} on port {port}: {why}")]
    SpawnRejected {
        /// Zone.
        zone: ZoneId,
        /// Port.
        port: u16,
        /// Reason.
        why: &'static str,
    },
}

/// Why [`Registry::spawn_plan`] says not to spawn now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpawnRefused {
    /// The zone has no spawn template.
    #[error("zone {zone} has no spawn settings; add [zones.spawn] to the config to start processes on demand")]
    NotConfigured {
        /// Zone.
        zone: ZoneId,
    },
    /// A spawned process of this zone has not reported yet.
    #[error("a process for zone {zone} is already starting; retry when it reports")]
    InFlight {
        /// Zone.
        zone: ZoneId,
    },
    /// The last spawn was too recent.
    #[error(
        "spawn rate limit for zone {zone}: next spawn in {retry_in_ms} ms (spawn_interval_ms)"
    )]
    RateLimited {
        /// Zone.
        zone: ZoneId,
        /// Wait before retrying.
        retry_in_ms: u64,
    },
    /// `spawned_processes_max` alive already.
    #[error("{spawned} spawned processes alive, the limit; raise spawned_processes_max or add capacity by hand")]
    LimitReached {
        /// Spawned processes alive.
        spawned: u32,
    },
    /// `processes_max` reached.
    #[error("registry full; raise processes_max or forget stopped processes")]
    RegistryFull,
    /// Every port of the zone's range is in use.
    #[error("every spawn port of zone {zone} is in use; widen port_min..=port_max")]
    NoFreePort {
        /// Zone.
        zone: ZoneId,
    },
}
