//! What a process pushes ([`StatusPush`]), and its validation into a
//! [`StatusReport`] the registry applies.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{
    ZoneId, CLAIMS_PER_PUSH_MAX, ONLINE_MAX, PROCESS_ID_LEN_MAX, USED_MEMORY_MB_MAX,
    VERSION_LEN_MAX,
};

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
