//! The registry: a deterministic state machine over [`RegistryOp`].
//!
//! Invariants (the standby depends on them):
//! - **Every state change goes through [`Registry::apply`].** Nothing else takes
//!   `&mut self`, except construction, [`Registry::restore`] and the replica
//!   setters ([`Registry::put_process`], [`Registry::remove_process`],
//!   [`Registry::set_last_spawn`], [`Registry::set_next_token`],
//!   [`Registry::clear`]) through which a standby loads the master's entities.
//! - **[`Changes::of`] names every entity an op changed** (processes, zone
//!   spawn times, the token counter), so the master publishes exactly those
//!   and a standby that applies them, or only the latest value of each, is
//!   equal to the master (checked over random op sequences in the tests).
//! - **No clock, no IO, no randomness inside.** Time arrives in the op
//!   (`now_ms`, milliseconds on the driver's [`crate::server::Clock`], which
//!   never steps); reservation tokens come
//!   from a counter in the state. Two registries built from the same zones that
//!   apply the same ops in the same order are equal, field for field.
//! - **A rejected op changes nothing.** `apply` validates before it mutates, so
//!   a driver publishes only ops that returned `Ok`.
//! - **Everything is bounded:** processes by `processes_max`, reservations per
//!   process by the zone's seat cap, claims per push by [`CLAIMS_PER_PUSH_MAX`],
//!   each iteration by the number of processes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// Zone (seed 000's "server") identifier.
pub type ZoneId = u32;
/// Milliseconds since the unix epoch, as chosen by the driver's clock.
pub type Millis = u64;

/// Longest accepted process id (seed 000: MAC + pid is 17 + 1 + 10 bytes).
pub const PROCESS_ID_LEN_MAX: usize = 64;
/// Longest accepted version string.
pub const VERSION_LEN_MAX: usize = 64;
/// Highest accepted online count; QQ Game's 20,000 connections per process
/// is far below it, so a larger number is a bug in the reporter.
pub const ONLINE_MAX: i64 = 1_000_000;
/// Highest accepted memory figure (16 TiB in MiB).
pub const USED_MEMORY_MB_MAX: i64 = 16 * 1024 * 1024;
/// Reservation tokens start each master's reign at `epoch << 32`: 4 billion
/// picks per reign, and a token stays below 2^53 (exact in JSON everywhere)
/// for epochs below 2^21.
pub const TOKEN_EPOCH_SHIFT: u32 = 32;

/// Reservation tokens a single push may claim; bounds the work per push.
pub const CLAIMS_PER_PUSH_MAX: usize = 1024;
/// Largest encoded op accepted by [`RegistryOp::decode`]; checked before parsing.
pub const OP_BYTES_MAX: usize = 64 * 1024;
/// Port candidates returned by [`Registry::spawn_plan`]; bounds the driver's
/// bind checks per spawn.
pub const SPAWN_PORT_CANDIDATES_MAX: usize = 64;
/// Format byte in front of every encoded op, bumped on incompatible changes.
const OP_FORMAT_VERSION: u8 = 1;

/// Process status, with seed 000's codes (101, 105) plus two of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "u16", try_from = "u16")]
pub enum Status {
    /// 101: pushing, reachable, gets picks.
    Running,
    /// 102: spawned and not reported yet, or reported again after a failed
    /// probe and waiting for a probe to confirm it. Never picked.
    Starting,
    /// 103: an operator asked for it to empty; keeps its players, gets no picks.
    Draining,
    /// 105: a probe failed or pushes stopped. Never picked.
    Stopped,
}

impl Status {
    /// The numeric code used in XML, JSON and metrics.
    pub fn code(self) -> u16 {
        match self {
            Status::Running => 101,
            Status::Starting => 102,
            Status::Draining => 103,
            Status::Stopped => 105,
        }
    }

    /// Lowercase name, for JSON and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Starting => "starting",
            Status::Draining => "draining",
            Status::Stopped => "stopped",
        }
    }

    /// Sort rank in server lists: running first (seed 000).
    fn rank(self) -> u8 {
        match self {
            Status::Running => 0,
            Status::Draining => 1,
            Status::Starting => 2,
            Status::Stopped => 3,
        }
    }

    /// All statuses, for metrics.
    pub const ALL: [Status; 4] = [
        Status::Running,
        Status::Starting,
        Status::Draining,
        Status::Stopped,
    ];
}

impl From<Status> for u16 {
    fn from(s: Status) -> u16 {
        s.code()
    }
}

impl TryFrom<u16> for Status {
    type Error = String;
    fn try_from(code: u16) -> Result<Self, String> {
        match code {
            101 => Ok(Status::Running),
            102 => Ok(Status::Starting),
            103 => Ok(Status::Draining),
            105 => Ok(Status::Stopped),
            other => Err(format!("unknown status code {other}")),
        }
    }
}

/// Why a process was marked stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// A TCP connect to its host:port failed or timed out.
    ProbeFailed,
    /// No push for longer than `push_timeout_ms`.
    MissedPushes,
}

/// Spawn settings of a zone that the pure core needs (the command template
/// lives in the driver's config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnSpec {
    /// Address the spawned processes listen on and report.
    pub host: IpAddr,
    /// First port handed to spawned processes.
    pub port_min: u16,
    /// Last port (inclusive) handed to spawned processes.
    pub port_max: u16,
}

/// A zone as configured: seed 000's `<server id name version>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneSpec {
    /// Zone id that processes report.
    pub id: ZoneId,
    /// Display name.
    pub name: String,
    /// Version string shown in lists.
    pub version: String,
    /// Seats per process: online + reservations at or above it is full.
    pub process_online_max: u32,
    /// Present when the balancer may start processes for this zone.
    pub spawn: Option<SpawnSpec>,
}

/// Timers and limits of the state machine. Part of the replicated state, so a
/// standby applies ops with the master's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryLimits {
    /// A running process with no push for this long is stopped. Costs: a hung
    /// process that still accepts TCP is handed out for up to this long.
    pub push_timeout_ms: u64,
    /// How long a pick holds a seat. Longer = safer against racing clients,
    /// but a client that never connects blocks a seat for this long.
    pub reservation_ttl_ms: u64,
    /// A spawned process that has not pushed within this is reaped (killed).
    pub spawn_report_timeout_ms: u64,
    /// Minimum time between two spawns in one zone.
    pub spawn_interval_ms: u64,
    /// Spawned processes alive (not stopped) at once, across zones.
    pub spawned_processes_max: u32,
    /// Entries in the registry, of any status. Memory: about 300 bytes each
    /// plus 16 bytes per reservation.
    pub processes_max: u32,
    /// A stopped process is forgotten after this long.
    pub stopped_retention_ms: u64,
}

impl Default for RegistryLimits {
    fn default() -> Self {
        RegistryLimits {
            push_timeout_ms: 3_000,
            reservation_ttl_ms: 5_000,
            spawn_report_timeout_ms: 10_000,
            spawn_interval_ms: 2_000,
            spawned_processes_max: 16,
            processes_max: 65_536,
            stopped_retention_ms: 300_000,
        }
    }
}

/// A validated status push. Build it with [`StatusPush::validate`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Process id (seed 000: MAC + pid).
    pub id: String,
    /// Zone the process serves.
    pub zone: ZoneId,
    /// Address clients connect to.
    pub host: IpAddr,
    /// Port clients connect to (never 0).
    pub port: u16,
    /// Players connected now.
    pub online: u32,
    /// Memory in use, MiB.
    pub used_memory_mb: u64,
    /// Build version of the process.
    pub version: String,
    /// OS process id, when the process tells it (used by restart commands).
    pub pid: Option<u32>,
    /// Reservation tokens that players presented since the last push.
    pub claimed: Vec<u64>,
}

/// A status push as it arrives on the wire, before validation. Numbers are
/// signed so that a negative value gets a clear message instead of a parse
/// error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusPush {
    /// Process id (seed 000: MAC + pid).
    pub id: String,
    /// Zone id.
    pub zone: i64,
    /// An IPv4 or IPv6 address (not a host name).
    pub host: String,
    /// 1..=65535.
    pub port: i64,
    /// 0..=[`ONLINE_MAX`].
    pub online: i64,
    /// 0..=[`USED_MEMORY_MB_MAX`].
    #[serde(default)]
    pub used_memory_mb: i64,
    /// At most [`VERSION_LEN_MAX`] bytes.
    #[serde(default)]
    pub version: String,
    /// OS process id.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Reservation tokens presented by players since the last push.
    #[serde(default)]
    pub claimed: Vec<u64>,
}

/// Why a status push was refused before it reached the registry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidReport {
    /// The id is empty or too long.
    #[error("process id must be 1..={PROCESS_ID_LEN_MAX} bytes, got {len}; use MAC address + pid")]
    IdLength {
        /// Length received.
        len: usize,
    },
    /// The id has a character outside `[A-Za-z0-9:._-]`.
    #[error("process id {id:?} has a character outside [A-Za-z0-9:._-]")]
    IdCharacter {
        /// Id received.
        id: String,
    },
    /// The zone is out of range.
    #[error("zone {zone} is not a valid zone id (0..=4294967295)")]
    ZoneRange {
        /// Zone received.
        zone: i64,
    },
    /// The host is not an IP address.
    #[error("host {host:?} is not an IPv4 or IPv6 address; report the address clients should connect to")]
    HostNotAddress {
        /// Host received (truncated).
        host: String,
    },
    /// The host is 0.0.0.0, ::, or a multicast address.
    #[error("host {host} cannot be connected to; report the process's reachable address, not a bind address")]
    HostUnusable {
        /// Host received.
        host: IpAddr,
    },
    /// The port is 0 or above 65535.
    #[error("port {port} is out of range 1..=65535")]
    PortRange {
        /// Port received.
        port: i64,
    },
    /// The online count is negative or absurd.
    #[error("online {online} is out of range 0..={ONLINE_MAX}")]
    OnlineRange {
        /// Online received.
        online: i64,
    },
    /// The memory figure is negative or absurd.
    #[error("used_memory_mb {used_memory_mb} is out of range 0..={USED_MEMORY_MB_MAX}")]
    MemoryRange {
        /// Memory received.
        used_memory_mb: i64,
    },
    /// The version string is too long or has control characters.
    #[error("version must be at most {VERSION_LEN_MAX} printable bytes")]
    Version,
    /// Too many reservation claims in one push.
    #[error("claimed has {count} tokens, at most {CLAIMS_PER_PUSH_MAX} per push; push more often")]
    TooManyClaims {
        /// Claims received.
        count: usize,
    },
}

/// Checks a process id: 1..=64 bytes of `[A-Za-z0-9:._-]`.
pub fn validate_process_id(id: &str) -> Result<(), InvalidReport> {
    if id.is_empty() || id.len() > PROCESS_ID_LEN_MAX {
        return Err(InvalidReport::IdLength { len: id.len() });
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'_' | b'-'))
    {
        return Err(InvalidReport::IdCharacter { id: id.to_string() });
    }
    Ok(())
}

impl StatusPush {
    /// Checks every field and returns the typed report.
    pub fn validate(self) -> Result<StatusReport, InvalidReport> {
        validate_process_id(&self.id)?;
        let zone = ZoneId::try_from(self.zone)
            .map_err(|_| InvalidReport::ZoneRange { zone: self.zone })?;
        let host: IpAddr = self
            .host
            .parse()
            .map_err(|_| InvalidReport::HostNotAddress {
                host: self.host.chars().take(64).collect(),
            })?;
        if host.is_unspecified() || host.is_multicast() {
            return Err(InvalidReport::HostUnusable { host });
        }
        if !(1..=65535).contains(&self.port) {
            return Err(InvalidReport::PortRange { port: self.port });
        }
        if !(0..=ONLINE_MAX).contains(&self.online) {
            return Err(InvalidReport::OnlineRange {
                online: self.online,
            });
        }
        if !(0..=USED_MEMORY_MB_MAX).contains(&self.used_memory_mb) {
            return Err(InvalidReport::MemoryRange {
                used_memory_mb: self.used_memory_mb,
            });
        }
        if self.version.len() > VERSION_LEN_MAX || self.version.chars().any(char::is_control) {
            return Err(InvalidReport::Version);
        }
        if self.claimed.len() > CLAIMS_PER_PUSH_MAX {
            return Err(InvalidReport::TooManyClaims {
                count: self.claimed.len(),
            });
        }
        Ok(StatusReport {
            id: self.id,
            zone,
            host,
            port: self.port as u16,
            online: self.online as u32,
            used_memory_mb: self.used_memory_mb as u64,
            version: self.version,
            pid: self.pid,
            claimed: self.claimed,
        })
    }
}

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

/// A held seat: counted as load until claimed or expired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// Token handed to the client.
    pub token: u64,
    /// When the seat is released if nobody claims it.
    pub expires_ms: Millis,
}

/// Set when the balancer spawned the process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spawned {
    /// OS pid of the child the driver started.
    pub pid: u32,
    /// When it was started.
    pub started_ms: Millis,
    /// Whether it has pushed at least once.
    pub reported: bool,
}

/// One game-server process as the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    /// Process id.
    pub id: String,
    /// Zone.
    pub zone: ZoneId,
    /// Address clients connect to.
    pub host: IpAddr,
    /// Port clients connect to.
    pub port: u16,
    /// Players connected at the last push.
    pub online: u32,
    /// Memory at the last push, MiB.
    pub used_memory_mb: u64,
    /// Version at the last push.
    pub version: String,
    /// OS pid reported by the process (or of the child we spawned).
    pub pid: Option<u32>,
    /// Current status.
    pub status: Status,
    /// Why it is stopped, or why it is starting again (probe failure).
    pub stop_reason: Option<StopReason>,
    /// Operator intent: keep it out of picks until undrained.
    pub draining: bool,
    /// The "drain complete" event was emitted.
    pub drained_reported: bool,
    /// Last push time (or spawn time for a spawned process not reported yet).
    pub last_push_ms: Millis,
    /// When `status` last changed.
    pub status_since_ms: Millis,
    /// Seats held by picks, oldest first (expiry order, TTL is constant).
    pub reservations: VecDeque<Reservation>,
    /// Set when the balancer started this process.
    pub spawned: Option<Spawned>,
}

impl Process {
    /// Seats in use: online plus reservations.
    pub fn load(&self) -> u64 {
        self.online as u64 + self.reservations.len() as u64
    }

    /// Endpoint clients connect to.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// Drain is complete: draining, no player, no reservation.
    pub fn is_drained(&self) -> bool {
        self.draining && self.online == 0 && self.reservations.is_empty()
    }

    /// Whether the prober should connect to it.
    pub fn wants_probe(&self) -> bool {
        match self.status {
            Status::Running | Status::Draining => true,
            // Reported again after a failed probe: a probe confirms it.
            Status::Starting => self.stop_reason == Some(StopReason::ProbeFailed),
            Status::Stopped => false,
        }
    }

    fn probe_target(&self) -> ProbeTarget {
        ProbeTarget {
            id: self.id.clone(),
            addr: self.addr(),
            confirms: self.status == Status::Starting,
            last_push_ms: self.last_push_ms,
        }
    }

    fn set_status(&mut self, status: Status, now_ms: Millis) {
        if self.status != status {
            self.status = status;
            self.status_since_ms = now_ms;
        }
    }

    /// The status a live process has, given the drain flag.
    fn live_status(&self) -> Status {
        if self.draining {
            Status::Draining
        } else {
            Status::Running
        }
    }
}

/// Something that happened while applying an op, for logs, metrics and the
/// driver (which kills reaped children).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A new process pushed for the first time.
    Registered {
        /// Id.
        id: String,
    },
    /// A process became running (again).
    Running {
        /// Id.
        id: String,
    },
    /// A process was marked stopped.
    Stopped {
        /// Id.
        id: String,
        /// Why.
        reason: StopReason,
        /// Our child's pid, if we spawned it: the driver kills it.
        spawned_pid: Option<u32>,
    },
    /// A new process took over an endpoint; the old entry was removed.
    Replaced {
        /// Old id.
        old: String,
        /// New id.
        new: String,
        /// Status the old entry had.
        old_status: Status,
    },
    /// A draining process has no player and no reservation.
    DrainComplete {
        /// Id.
        id: String,
    },
    /// A spawned process never reported; removed. The driver kills the pid.
    SpawnTimedOut {
        /// Placeholder id.
        id: String,
        /// Child pid.
        pid: u32,
    },
    /// A stopped process was removed after `stopped_retention_ms`, or by
    /// an operator.
    Forgotten {
        /// Id.
        id: String,
    },
    /// Reservations released by expiry.
    ReservationsExpired {
        /// Id.
        id: String,
        /// How many.
        count: usize,
    },
}

/// The answer to a pick.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Picked {
    /// Process id.
    pub id: String,
    /// Address to connect to.
    pub host: IpAddr,
    /// Port to connect to.
    pub port: u16,
    /// Reservation token; a process may report it in `claimed`.
    pub reservation: u64,
    /// When the seat is released if unclaimed.
    pub expires_ms: Millis,
}

/// What an applied op produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Events in order.
    pub events: Vec<Event>,
    /// Set for a successful [`RegistryOp::Pick`].
    pub picked: Option<Picked>,
    /// Status of the process the op addressed, when there is one.
    pub status: Option<Status>,
}

/// The entities an applied op changed: what the master publishes after it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Processes changed, added or removed (look each up after the op: absent
    /// means removed). Removals are listed before the rest, so a replica never
    /// holds two owners of one endpoint.
    pub processes: Vec<String>,
    /// Zones whose spawn time changed.
    pub zones: Vec<ZoneId>,
    /// The reservation token counter moved.
    pub next_token: bool,
}

impl Changes {
    /// What `op`, applied with outcome `out`, changed. Tick changes are read
    /// from its events (every change a tick makes has one).
    pub fn of(op: &RegistryOp, out: &Outcome) -> Changes {
        let mut c = Changes::default();
        let mut removed = Vec::new();
        for e in &out.events {
            match e {
                Event::Replaced { old, .. } => removed.push(old.clone()),
                Event::SpawnTimedOut { id, .. } | Event::Forgotten { id } => {
                    removed.push(id.clone())
                }
                Event::Registered { id }
                | Event::Running { id }
                | Event::Stopped { id, .. }
                | Event::DrainComplete { id }
                | Event::ReservationsExpired { id, .. } => c.processes.push(id.clone()),
            }
        }
        match op {
            RegistryOp::Push { report, .. } => c.processes.push(report.id.clone()),
            RegistryOp::Pick { .. } => {
                if let Some(p) = &out.picked {
                    c.processes.push(p.id.clone());
                }
                c.next_token = true;
            }
            RegistryOp::Tick { .. } => {}
            RegistryOp::ProbeFailed { id, .. }
            | RegistryOp::ProbeOk { id, .. }
            | RegistryOp::Drain { id, .. }
            | RegistryOp::Undrain { id, .. } => c.processes.push(id.clone()),
            RegistryOp::SpawnStarted { zone, .. } | RegistryOp::SpawnFailed { zone, .. } => {
                c.zones.push(*zone)
            }
            RegistryOp::Forget { id } => removed.push(id.clone()),
        }
        c.processes.retain(|id| !removed.contains(id));
        c.processes.sort();
        c.processes.dedup();
        removed.sort();
        removed.dedup();
        removed.append(&mut c.processes);
        c.processes = removed;
        c
    }

    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty() && self.zones.is_empty() && !self.next_token
    }
}

/// Per-zone state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Zone {
    /// Configuration.
    pub spec: ZoneSpec,
    /// Processes by id.
    pub processes: BTreeMap<String, Process>,
    /// Last spawn attempt, for the spawn rate limit.
    pub last_spawn_ms: Option<Millis>,
}

/// A process the prober connects to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeTarget {
    /// Process id.
    pub id: String,
    /// Endpoint to connect to.
    pub addr: SocketAddr,
    /// A success is news (send [`RegistryOp::ProbeOk`]): the process waits
    /// for a probe to become running again.
    pub confirms: bool,
    /// The process's last push (the prober skips processes whose open push
    /// stream and recent push vouch for them).
    pub last_push_ms: Millis,
}

/// What [`Registry::spawn_plan`] proposes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpawnPlan {
    /// Zone.
    pub zone: ZoneId,
    /// Host the process will listen on.
    pub host: IpAddr,
    /// Free ports in preference order (at most [`SPAWN_PORT_CANDIDATES_MAX`]);
    /// the driver takes the first one it can bind.
    pub ports: Vec<u16>,
}

/// Numbers for metrics and the zone list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ZoneStats {
    /// Processes per status, in [`Status::ALL`] order.
    pub by_status: [u64; 4],
    /// Players online on running and draining processes.
    pub online: u64,
    /// Reservations held.
    pub reserved: u64,
}

/// The registry state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    limits: RegistryLimits,
    zones: BTreeMap<ZoneId, Zone>,
    /// Process id → zone. (Hash maps: looked up on every push, never
    /// iterated, so their order cannot reach a replica.)
    zone_of: HashMap<String, ZoneId>,
    /// Endpoint → process id: one process per host:port.
    endpoints: HashMap<SocketAddr, String>,
    /// Next reservation token.
    next_token: u64,
}

fn placeholder_id(zone: ZoneId, port: u16) -> String {
    format!("spawn-{zone}-{port}")
}

impl Registry {
    /// An empty registry with these zones and limits.
    pub fn new(zones: Vec<ZoneSpec>, limits: RegistryLimits) -> Registry {
        let zones = zones
            .into_iter()
            .map(|spec| {
                (
                    spec.id,
                    Zone {
                        spec,
                        processes: BTreeMap::new(),
                        last_spawn_ms: None,
                    },
                )
            })
            .collect();
        Registry {
            limits,
            zones,
            zone_of: HashMap::new(),
            endpoints: HashMap::new(),
            next_token: 1,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &RegistryLimits {
        &self.limits
    }

    /// Whole state as bytes (for an hs snapshot).
    pub fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("Registry serialises")
    }

    /// Rebuilds a registry from [`Registry::snapshot`] bytes.
    pub fn restore(bytes: &[u8]) -> Result<Registry, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Zones in id order.
    pub fn zones(&self) -> impl Iterator<Item = &Zone> {
        self.zones.values()
    }

    /// One zone.
    pub fn zone(&self, zone: ZoneId) -> Result<&Zone, RegistryError> {
        self.zones
            .get(&zone)
            .ok_or(RegistryError::UnknownZone { zone })
    }

    /// One process.
    pub fn process(&self, id: &str) -> Option<&Process> {
        let zone = self.zone_of.get(id)?;
        self.zones.get(zone)?.processes.get(id)
    }

    /// Number of processes of any status.
    pub fn len(&self) -> usize {
        self.zone_of.len()
    }

    /// True when no process is registered.
    pub fn is_empty(&self) -> bool {
        self.zone_of.is_empty()
    }

    /// Processes that the prober should connect to.
    pub fn probe_targets(&self) -> Vec<ProbeTarget> {
        self.probe_targets_by(|_| true)
    }

    /// Processes that the prober should connect to and `keep` accepts
    /// (only those are copied out).
    pub fn probe_targets_by(&self, mut keep: impl FnMut(&Process) -> bool) -> Vec<ProbeTarget> {
        self.zones
            .values()
            .flat_map(|z| z.processes.values())
            .filter(|p| p.wants_probe() && keep(p))
            .map(Process::probe_target)
            .collect()
    }

    /// `id` as a probe target, if the prober should connect to it.
    pub fn probe_target(&self, id: &str) -> Option<ProbeTarget> {
        self.process(id)
            .filter(|p| p.wants_probe())
            .map(Process::probe_target)
    }

    /// A zone's processes sorted as seed 000 says: running first, then
    /// fewest online (counting reservations), then least memory, then id.
    pub fn sorted(&self, zone: ZoneId) -> Result<Vec<&Process>, RegistryError> {
        let mut list: Vec<&Process> = self.zone(zone)?.processes.values().collect();
        list.sort_by(|a, b| {
            (a.status.rank(), a.load(), a.used_memory_mb, &a.id).cmp(&(
                b.status.rank(),
                b.load(),
                b.used_memory_mb,
                &b.id,
            ))
        });
        Ok(list)
    }

    /// Counts for one zone.
    pub fn zone_stats(&self, zone: &Zone) -> ZoneStats {
        let mut stats = ZoneStats::default();
        for p in zone.processes.values() {
            let i = Status::ALL.iter().position(|s| *s == p.status).unwrap_or(0);
            stats.by_status[i] += 1;
            if matches!(p.status, Status::Running | Status::Draining) {
                stats.online += p.online as u64;
            }
            stats.reserved += p.reservations.len() as u64;
        }
        stats
    }

    fn spawned_alive(&self) -> u32 {
        self.zones
            .values()
            .flat_map(|z| z.processes.values())
            .filter(|p| p.spawned.is_some() && p.status != Status::Stopped)
            .count() as u32
    }

    /// Whether to start a process for `zone` now, and on which ports. Pure:
    /// the driver spawns, then applies [`RegistryOp::SpawnStarted`] or
    /// [`RegistryOp::SpawnFailed`].
    pub fn spawn_plan(&self, zone: ZoneId, now_ms: Millis) -> Result<SpawnPlan, SpawnRefused> {
        let z = self
            .zones
            .get(&zone)
            .ok_or(SpawnRefused::NotConfigured { zone })?;
        let spec = z
            .spec
            .spawn
            .as_ref()
            .ok_or(SpawnRefused::NotConfigured { zone })?;
        // Hard limits first: waiting does not lift them.
        let spawned = self.spawned_alive();
        if spawned >= self.limits.spawned_processes_max {
            return Err(SpawnRefused::LimitReached { spawned });
        }
        if self.len() >= self.limits.processes_max as usize {
            return Err(SpawnRefused::RegistryFull);
        }
        if z.processes.values().any(|p| {
            p.spawned.as_ref().is_some_and(|s| !s.reported) && p.status == Status::Starting
        }) {
            return Err(SpawnRefused::InFlight { zone });
        }
        if let Some(last) = z.last_spawn_ms {
            let since = now_ms.saturating_sub(last);
            if since < self.limits.spawn_interval_ms {
                return Err(SpawnRefused::RateLimited {
                    zone,
                    retry_in_ms: self.limits.spawn_interval_ms - since,
                });
            }
        }
        let ports: Vec<u16> = (spec.port_min..=spec.port_max)
            .filter(|port| {
                !self
                    .endpoints
                    .contains_key(&SocketAddr::new(spec.host, *port))
            })
            .take(SPAWN_PORT_CANDIDATES_MAX)
            .collect();
        if ports.is_empty() {
            return Err(SpawnRefused::NoFreePort { zone });
        }
        Ok(SpawnPlan {
            zone,
            host: spec.host,
            ports,
        })
    }

    /// Applies one op. On `Err` nothing changed; on `Ok` the op must be
    /// published to the standby in this order.
    pub fn apply(&mut self, op: &RegistryOp) -> Result<Outcome, RegistryError> {
        match op {
            RegistryOp::Push { now_ms, report } => self.push(*now_ms, report),
            RegistryOp::Pick { now_ms, zone } => self.pick(*now_ms, *zone),
            RegistryOp::Tick { now_ms } => Ok(self.tick(*now_ms)),
            RegistryOp::ProbeFailed { now_ms, id } => self.probe_failed(*now_ms, id),
            RegistryOp::ProbeOk { now_ms, id } => self.probe_ok(*now_ms, id),
            RegistryOp::Drain { now_ms, id } => self.set_drain(*now_ms, id, true),
            RegistryOp::Undrain { now_ms, id } => self.set_drain(*now_ms, id, false),
            RegistryOp::SpawnStarted {
                now_ms,
                zone,
                port,
                pid,
            } => self.spawn_started(*now_ms, *zone, *port, *pid),
            RegistryOp::SpawnFailed { now_ms, zone } => {
                let z = self
                    .zones
                    .get_mut(zone)
                    .ok_or(RegistryError::UnknownZone { zone: *zone })?;
                z.last_spawn_ms = Some(*now_ms);
                Ok(Outcome::default())
            }
            RegistryOp::Forget { id } => {
                if self.remove(id).is_none() {
                    return Err(RegistryError::UnknownProcess { id: id.clone() });
                }
                Ok(Outcome {
                    events: vec![Event::Forgotten { id: id.clone() }],
                    ..Outcome::default()
                })
            }
        }
    }

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

    fn process_mut(&mut self, id: &str) -> Result<&mut Process, RegistryError> {
        let zone = self
            .zone_of
            .get(id)
            .ok_or_else(|| RegistryError::UnknownProcess { id: id.to_string() })?;
        self.zones
            .get_mut(zone)
            .and_then(|z| z.processes.get_mut(id))
            .ok_or_else(|| RegistryError::UnknownProcess { id: id.to_string() })
    }

    fn remove(&mut self, id: &str) -> Option<Process> {
        let zone = self.zone_of.remove(id)?;
        let p = self.zones.get_mut(&zone)?.processes.remove(id)?;
        if self
            .endpoints
            .get(&p.addr())
            .is_some_and(|owner| owner == id)
        {
            self.endpoints.remove(&p.addr());
        }
        Some(p)
    }

    fn push(&mut self, now_ms: Millis, r: &StatusReport) -> Result<Outcome, RegistryError> {
        if !self.zones.contains_key(&r.zone) {
            return Err(RegistryError::UnknownZone { zone: r.zone });
        }
        let addr = SocketAddr::new(r.host, r.port);
        let existing_zone = self.zone_of.get(&r.id).copied();
        if let Some(registered) = existing_zone {
            if registered != r.zone {
                return Err(RegistryError::ZoneMismatch {
                    id: r.id.clone(),
                    registered,
                    reported: r.zone,
                });
            }
        } else {
            // A new id that takes over an endpoint frees an entry, so only
            // count it against the limit when the endpoint is not taken.
            let frees_one = self.endpoints.contains_key(&addr);
            if !frees_one && self.len() >= self.limits.processes_max as usize {
                return Err(RegistryError::RegistryFull {
                    processes_max: self.limits.processes_max,
                });
            }
        }
        // Validated: from here on the op succeeds.
        let mut out = Outcome::default();
        let mut inherited_spawn = None;
        // Compared in place: on the common path the endpoint is this
        // process's own and nothing is copied.
        let taken = self.endpoints.get(&addr).filter(|o| **o != r.id).cloned();
        if let Some(owner) = taken {
            {
                // Two processes cannot listen on one endpoint: the old one is
                // gone (restarted, or the spawn placeholder of this process).
                if let Some(old) = self.remove(&owner) {
                    if old.spawned.as_ref().is_some_and(|s| !s.reported) {
                        inherited_spawn = old.spawned.clone();
                    }
                    out.events.push(Event::Replaced {
                        old: owner,
                        new: r.id.clone(),
                        old_status: old.status,
                    });
                }
            }
        }
        let zone = self.zones.get_mut(&r.zone).expect("zone checked above");
        let is_new = existing_zone.is_none();
        debug_assert_eq!(is_new, !zone.processes.contains_key(&r.id));
        // A known process is found without copying its id for the key.
        let p = match zone.processes.get_mut(&r.id) {
            Some(p) => p,
            None => zone
                .processes
                .entry(r.id.clone())
                .or_insert_with(|| Process {
                    id: r.id.clone(),
                    zone: r.zone,
                    host: r.host,
                    port: r.port,
                    online: 0,
                    used_memory_mb: 0,
                    version: String::new(),
                    pid: None,
                    status: Status::Stopped,
                    stop_reason: None,
                    draining: false,
                    drained_reported: false,
                    last_push_ms: now_ms,
                    status_since_ms: now_ms,
                    reservations: VecDeque::new(),
                    spawned: None,
                }),
        };
        if is_new {
            out.events.push(Event::Registered { id: r.id.clone() });
            if let Some(mut s) = inherited_spawn {
                s.reported = true;
                p.spawned = Some(s);
            }
        }
        let old_addr = p.addr();
        // Claims: explicit tokens first, then assume each further new player
        // took the oldest reservation.
        let before = p.reservations.len();
        p.reservations.retain(|res| !r.claimed.contains(&res.token));
        let claimed_explicit = before - p.reservations.len();
        let joined = (r.online as usize).saturating_sub(p.online as usize);
        let implicit = joined
            .saturating_sub(claimed_explicit)
            .min(p.reservations.len());
        p.reservations.drain(..implicit);

        p.host = r.host;
        p.port = r.port;
        p.online = r.online;
        p.used_memory_mb = r.used_memory_mb;
        p.version.clone_from(&r.version);
        if r.pid.is_some() {
            p.pid = r.pid;
        }
        p.last_push_ms = now_ms;
        let next = match (p.status, p.stop_reason) {
            // Stopped by a failed probe: a late push from a dead process must
            // not make it pickable; wait for a probe to confirm.
            (Status::Stopped, Some(StopReason::ProbeFailed)) => Status::Starting,
            (Status::Starting, Some(StopReason::ProbeFailed)) => Status::Starting,
            _ => p.live_status(),
        };
        if next != p.status && next != Status::Starting {
            out.events.push(Event::Running { id: r.id.clone() });
            p.stop_reason = None;
        }
        if let Some(s) = p.spawned.as_mut() {
            s.reported = true;
        }
        p.set_status(next, now_ms);
        out.status = Some(p.status);
        let draining = p.status == Status::Draining;
        if is_new {
            self.zone_of.insert(r.id.clone(), r.zone);
        }
        if old_addr != addr && self.endpoints.get(&old_addr) == Some(&r.id) {
            self.endpoints.remove(&old_addr);
        }
        if self.endpoints.get(&addr) != Some(&r.id) {
            self.endpoints.insert(addr, r.id.clone());
        }
        if draining {
            self.check_drained(&r.id, &mut out);
        }
        Ok(out)
    }

    fn check_drained(&mut self, id: &str, out: &mut Outcome) {
        if let Ok(p) = self.process_mut(id) {
            if p.status == Status::Draining && p.is_drained() && !p.drained_reported {
                p.drained_reported = true;
                out.events.push(Event::DrainComplete { id: id.to_string() });
            }
        }
    }

    fn pick(&mut self, now_ms: Millis, zone: ZoneId) -> Result<Outcome, RegistryError> {
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

    fn tick(&mut self, now_ms: Millis) -> Outcome {
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

    fn probe_failed(&mut self, now_ms: Millis, id: &str) -> Result<Outcome, RegistryError> {
        let p = self.process_mut(id)?;
        let mut out = Outcome::default();
        if p.status != Status::Stopped {
            stop(p, StopReason::ProbeFailed, now_ms, &mut out);
        }
        out.status = Some(p.status);
        Ok(out)
    }

    fn probe_ok(&mut self, now_ms: Millis, id: &str) -> Result<Outcome, RegistryError> {
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

    fn set_drain(
        &mut self,
        now_ms: Millis,
        id: &str,
        draining: bool,
    ) -> Result<Outcome, RegistryError> {
        let p = self.process_mut(id)?;
        p.draining = draining;
        p.drained_reported = false;
        match (p.status, draining) {
            (Status::Running, true) => p.set_status(Status::Draining, now_ms),
            (Status::Draining, false) => p.set_status(Status::Running, now_ms),
            _ => {}
        }
        let mut out = Outcome {
            status: Some(p.status),
            ..Outcome::default()
        };
        self.check_drained(id, &mut out);
        Ok(out)
    }

    fn spawn_started(
        &mut self,
        now_ms: Millis,
        zone: ZoneId,
        port: u16,
        pid: u32,
    ) -> Result<Outcome, RegistryError> {
        let z = self
            .zones
            .get(&zone)
            .ok_or(RegistryError::UnknownZone { zone })?;
        let spec = z.spec.spawn.as_ref().ok_or(RegistryError::SpawnRejected {
            zone,
            port,
            why: "the zone has no spawn settings",
        })?;
        let host = spec.host;
        let addr = SocketAddr::new(host, port);
        if self.endpoints.contains_key(&addr) {
            return Err(RegistryError::SpawnRejected {
                zone,
                port,
                why: "the port is in use by a registered process",
            });
        }
        let id = placeholder_id(zone, port);
        if self.zone_of.contains_key(&id) {
            return Err(RegistryError::SpawnRejected {
                zone,
                port,
                why: "a placeholder for this port exists",
            });
        }
        let z = self.zones.get_mut(&zone).expect("zone checked above");
        z.last_spawn_ms = Some(now_ms);
        z.processes.insert(
            id.clone(),
            Process {
                id: id.clone(),
                zone,
                host,
                port,
                online: 0,
                used_memory_mb: 0,
                version: String::new(),
                pid: Some(pid),
                status: Status::Starting,
                stop_reason: None,
                draining: false,
                drained_reported: false,
                last_push_ms: now_ms,
                status_since_ms: now_ms,
                reservations: VecDeque::new(),
                spawned: Some(Spawned {
                    pid,
                    started_ms: now_ms,
                    reported: false,
                }),
            },
        );
        self.zone_of.insert(id.clone(), zone);
        self.endpoints.insert(addr, id.clone());
        Ok(Outcome {
            events: vec![Event::Registered { id }],
            picked: None,
            status: Some(Status::Starting),
        })
    }
}

fn stop(p: &mut Process, reason: StopReason, now_ms: Millis, out: &mut Outcome) {
    p.set_status(Status::Stopped, now_ms);
    p.stop_reason = Some(reason);
    p.reservations.clear();
    out.events.push(Event::Stopped {
        id: p.id.clone(),
        reason,
        spawned_pid: p.spawned.as_ref().map(|s| s.pid),
    });
}

#[cfg(test)]
mod tests;
