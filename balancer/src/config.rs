//! Configuration: a TOML file, with command-line flags laid over it.
//!
//! ```toml
//! listen = "127.0.0.1:7700"
//! secret = "change-me"          # optional: required on pushes and drains
//! probe_interval_ms = 500
//!
//! [[zones]]
//! id = 1
//! name = "天上人间"
//! version = "v1.0.0 20131104"
//! process_online_max = 1000
//!
//! [zones.spawn]                 # optional: start processes when full
//! command = ["/opt/game/server", "--port", "{port}", "--zone", "{zone}", "--balancer", "{balancer}"]
//! host = "127.0.0.1"
//! port_min = 7000
//! port_max = 7099
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::registry::{RegistryLimits, SpawnSpec, ZoneId, ZoneSpec};

/// Zones a config may declare; bounds per-zone work in lists and metrics.
pub const ZONES_MAX: usize = 1024;
/// Arguments in a spawn command.
pub const SPAWN_ARGS_MAX: usize = 64;

/// A problem with the configuration, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// Path given.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config {path} is not valid: {source}")]
    Parse {
        /// Path given.
        path: String,
        /// Parser error, with line and column.
        source: toml::de::Error,
    },
    /// A value is out of range or inconsistent.
    #[error("config: {0}")]
    Invalid(String),
}

/// Spawn settings of a zone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnConfig {
    /// Program and arguments, run without a shell. Placeholders in any
    /// argument: `{port}`, `{zone}`, `{host}`, `{balancer}` (this balancer's
    /// address, `IP:PORT`).
    pub command: Vec<String>,
    /// Address spawned processes listen on.
    #[serde(default = "default_spawn_host")]
    pub host: IpAddr,
    /// First port handed out.
    pub port_min: u16,
    /// Last port handed out (inclusive).
    pub port_max: u16,
}

fn default_spawn_host() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

/// One zone (seed 000's `<server>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    /// Zone id processes report.
    pub id: ZoneId,
    /// Display name.
    pub name: String,
    /// Version shown in lists.
    #[serde(default)]
    pub version: String,
    /// Seats per process (online + reservations).
    #[serde(default = "default_process_online_max")]
    pub process_online_max: u32,
    /// Present to spawn processes when the zone is full.
    #[serde(default)]
    pub spawn: Option<SpawnConfig>,
}

fn default_process_online_max() -> u32 {
    1000
}

/// The embedded hs node (the `[hs]` table): the balancer's own standby.
/// Both balancers of a pair run the same binary with the same `[[zones]]`;
/// each names the other as `peer`, and one has `prefer_master = true`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsConfig {
    /// Directory of the replicated log (one balancer per directory).
    pub dir: PathBuf,
    /// Replication address this balancer listens on (the peer's `peer`).
    pub listen: SocketAddr,
    /// The other balancer's replication address. None: a lone balancer whose
    /// registry survives a restart, with no standby.
    #[serde(default)]
    pub peer: Option<SocketAddr>,
    /// An hs witness (`hs-witness`, or another balancer's `witness_listen`)
    /// that must agree to a promotion when the master goes silent. Not this
    /// pair's own balancers: a witness inside one node cannot arbitrate its pair.
    #[serde(default)]
    pub witness: Option<SocketAddr>,
    /// Identifies the pair at the witness; both balancers use the same.
    #[serde(default = "default_pair_id")]
    pub pair_id: u64,
    /// Serve when both start at once (give exactly one of the pair `true`).
    #[serde(default)]
    pub prefer_master: bool,
    /// Promote on silence alone (no witness) and let a preferred master start
    /// without its peer. Risks two masters during a partition; off by default.
    #[serde(default)]
    pub accept_split_risk: bool,
    /// Heartbeat period; a silent peer is dead after `heartbeat_dead_ticks`.
    /// A killed master is noticed at once (its kernel closes the connection).
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// Idle heartbeat ticks before the peer is declared dead.
    #[serde(default = "default_heartbeat_dead_ticks")]
    pub heartbeat_dead_ticks: u32,
    /// Log segment size (disk: about two segments plus retention).
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// Log kept before old segments are folded into a snapshot (the latest
    /// value per key, which is the registry).
    #[serde(default = "default_retention_bytes_max")]
    pub retention_bytes_max: u64,
    /// How often the log is written to disk (a process crash loses nothing
    /// either way; this is about a machine crash).
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
}

fn default_pair_id() -> u64 {
    1
}
fn default_heartbeat_interval_ms() -> u64 {
    100
}
fn default_heartbeat_dead_ticks() -> u32 {
    5
}
fn default_segment_bytes() -> u64 {
    64 << 20
}
fn default_retention_bytes_max() -> u64 {
    256 << 20
}
fn default_flush_interval_ms() -> u64 {
    100
}

impl HsConfig {
    /// A table with defaults for these required values.
    pub fn new(dir: PathBuf, listen: SocketAddr) -> HsConfig {
        HsConfig {
            dir,
            listen,
            peer: None,
            witness: None,
            pair_id: default_pair_id(),
            prefer_master: false,
            accept_split_risk: false,
            heartbeat_interval_ms: default_heartbeat_interval_ms(),
            heartbeat_dead_ticks: default_heartbeat_dead_ticks(),
            segment_bytes: default_segment_bytes(),
            retention_bytes_max: default_retention_bytes_max(),
            flush_interval_ms: default_flush_interval_ms(),
        }
    }

    /// The hs node configuration.
    pub fn resolve(&self) -> Result<crate::standby::StandbyConfig, ConfigError> {
        let mut n = hs::Config::new(&self.dir);
        n.listen = Some(self.listen);
        n.peer = self.peer;
        n.witness = self.witness;
        n.pair_id = self.pair_id;
        n.accept_split_risk = self.accept_split_risk;
        n.heartbeat_interval_ms = self.heartbeat_interval_ms;
        n.heartbeat_dead_ticks = self.heartbeat_dead_ticks;
        n.segment_bytes = self.segment_bytes;
        n.record_bytes_max =
            (self.segment_bytes / 2).min(crate::standby::VALUE_BYTES_MAX as u64 + 4096) as usize;
        n.retention_bytes_max = self.retention_bytes_max;
        n.flush = hs::FlushPolicy::EveryMs(self.flush_interval_ms.max(1));
        if self.segment_bytes < 1 << 20 || self.segment_bytes & 4095 != 0 {
            return Err(ConfigError::Invalid(
                "[hs] segment_bytes must be a multiple of 4096, at least 1 MiB".into(),
            ));
        }
        if self.heartbeat_interval_ms == 0 || self.heartbeat_dead_ticks == 0 {
            return Err(ConfigError::Invalid(
                "[hs] heartbeat_interval_ms and heartbeat_dead_ticks must be above 0".into(),
            ));
        }
        Ok(crate::standby::StandbyConfig {
            node: n,
            prefer_master: self.prefer_master || self.peer.is_none(),
        })
    }
}

/// The whole configuration. Every field but `zones` has a default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Shared secret: when set, pushes, push streams, drains, undrains,
    /// forgets and switchovers need `Authorization: Bearer <secret>`. Lists
    /// stay open; picks are open too unless `pick_token` is set (and the
    /// secret is accepted there as well). Required when `listen` is not a
    /// loopback address, unless `insecure_no_secret`.
    pub secret: Option<String>,
    /// When set, picks need `Authorization: Bearer <pick_token>` (or the
    /// secret): for deployments where picks come from a login server or
    /// gateway rather than from game clients directly. Holders of the token
    /// are exempt from the per-source pick limit (a login server picks for
    /// many players from one address), not from the global one.
    pub pick_token: Option<String>,
    /// Allow a `listen` address other than loopback without a `secret`.
    /// Anyone who reaches the port can then push fake processes, drain and
    /// forget real ones, and hand the master role over: only behind a
    /// firewall that admits nothing but the game servers and operators.
    pub insecure_no_secret: bool,
    /// Picks per second allowed per source IP address (token bucket
    /// refill). Each pick holds a seat for `reservation_ttl_ms` and may
    /// spawn a process, so a flood from one address could fill a zone.
    pub pick_rate_per_s: u32,
    /// Picks one source address may make in a burst.
    pub pick_burst: u32,
    /// Picks per second allowed from all sources together: bounds the
    /// seats a distributed flood can hold (about this times
    /// `reservation_ttl_ms` / 1000).
    pub pick_global_rate_per_s: u32,
    /// Picks all sources together may make in a burst.
    pub pick_global_burst: u32,
    /// Source addresses the per-source pick limiter tracks (about 64 bytes
    /// each); when all are active, picks from new addresses get 429.
    pub pick_sources_max: usize,
    /// Open client connections (HTTP keep-alive and push streams) at once;
    /// past it a new connection gets 503 and is closed. Each costs a file
    /// descriptor, a task and its buffers (a push stream's is 64 KiB);
    /// keep it below `ulimit -n`.
    pub connections_max: usize,
    /// Time a client has to send a whole request head (request line and
    /// headers), from the connection's start or the end of its previous
    /// answer; then the connection is closed. Bounds slow-header
    /// (slowloris) clients, and also closes keep-alive connections idle
    /// this long (clients reconnect by themselves).
    pub request_head_timeout_ms: u64,
    /// Time a client has to send a request's whole body once its head
    /// arrived (a push is about 200 bytes); then the request fails and the
    /// connection is closed. Bounds slow-body clients.
    pub request_body_timeout_ms: u64,
    /// Time between probe rounds. Dead detection takes at most this plus
    /// `probe_timeout_ms`; each round connects to every live process.
    pub probe_interval_ms: u64,
    /// TCP connect timeout of a probe.
    pub probe_timeout_ms: u64,
    /// Probes in flight at once.
    pub probe_concurrency_max: usize,
    /// A process reporting over a push stream (`GET /v1/status/stream`)
    /// whose last push is younger than this is not probed every round: its
    /// open stream vouches for it, and the stream closing (the process died)
    /// probes it at once. Default: a 1 s push interval plus half a second.
    pub stream_fresh_ms: u64,
    /// Such a process's game port is still connect-tested this often
    /// (spread over rounds), to catch a port that stopped accepting while
    /// the stream lives.
    pub stream_probe_interval_ms: u64,
    /// Time between registry ticks (reservation expiry, missed pushes,
    /// reaping). Adds up to this to every timer below.
    pub tick_interval_ms: u64,
    /// See [`RegistryLimits::push_timeout_ms`].
    pub push_timeout_ms: u64,
    /// See [`RegistryLimits::reservation_ttl_ms`].
    pub reservation_ttl_ms: u64,
    /// See [`RegistryLimits::spawn_report_timeout_ms`].
    pub spawn_report_timeout_ms: u64,
    /// See [`RegistryLimits::spawn_interval_ms`].
    pub spawn_interval_ms: u64,
    /// See [`RegistryLimits::spawned_processes_max`].
    pub spawned_processes_max: u32,
    /// See [`RegistryLimits::processes_max`].
    pub processes_max: u32,
    /// See [`RegistryLimits::stopped_retention_ms`].
    pub stopped_retention_ms: u64,
    /// Pushes per second allowed per process id (token bucket refill).
    pub push_rate_per_s: u32,
    /// Pushes a process id may send in a burst.
    pub push_burst: u32,
    /// How long a pick waits for a spawned process when the zone is full,
    /// before answering 503. 0 answers at once.
    pub pick_wait_ms: u64,
    /// Largest request body (a push is about 200 bytes).
    pub request_body_bytes_max: usize,
    /// Kill spawned children when the balancer stops. Off in production
    /// (they keep serving players); on in tests.
    pub kill_spawned_on_exit: bool,
    /// HTTP address this balancer gives clients as the master's (in
    /// `not_master` answers from its standby). Default: the bound `listen`
    /// address; set it when listening on 0.0.0.0.
    pub advertise: Option<SocketAddr>,
    /// Serve as an hs witness for game-server pairs on this address (their
    /// `witness` points here). Not replicated: each balancer's witness is its own.
    pub witness_listen: Option<SocketAddr>,
    /// How long a master's renewal holds at the witness: the pairs' lease plus
    /// a tick (`hs::node::witness::hold_for`; 400 for 100 ms x 5 ticks).
    pub witness_hold_ms: u64,
    /// The secret the pairs using this witness share (their hs `secret`): every
    /// witness request must prove it (HMAC challenge and response). None: anyone
    /// who reaches `witness_listen` is trusted.
    pub witness_secret: Option<String>,
    /// The balancer's own standby (hs). Absent: no replication.
    pub hs: Option<HsConfig>,
    /// Zones.
    pub zones: Vec<ZoneConfig>,
}

impl Default for Config {
    fn default() -> Self {
        let limits = RegistryLimits::default();
        Config {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7700),
            secret: None,
            pick_token: None,
            insecure_no_secret: false,
            pick_rate_per_s: 20,
            pick_burst: 100,
            pick_global_rate_per_s: 5_000,
            pick_global_burst: 10_000,
            pick_sources_max: 65_536,
            connections_max: 16_384,
            request_head_timeout_ms: 10_000,
            request_body_timeout_ms: 10_000,
            probe_interval_ms: 500,
            probe_timeout_ms: 400,
            probe_concurrency_max: 256,
            stream_fresh_ms: 1_500,
            stream_probe_interval_ms: 30_000,
            tick_interval_ms: 100,
            push_timeout_ms: limits.push_timeout_ms,
            reservation_ttl_ms: limits.reservation_ttl_ms,
            spawn_report_timeout_ms: limits.spawn_report_timeout_ms,
            spawn_interval_ms: limits.spawn_interval_ms,
            spawned_processes_max: limits.spawned_processes_max,
            processes_max: limits.processes_max,
            stopped_retention_ms: limits.stopped_retention_ms,
            push_rate_per_s: 20,
            push_burst: 40,
            pick_wait_ms: 3_000,
            request_body_bytes_max: 16 * 1024,
            kill_spawned_on_exit: false,
            advertise: None,
            witness_listen: None,
            witness_hold_ms: hs::node::witness::hold_for(100, 5).as_millis() as u64,
            witness_secret: None,
            hs: None,
            zones: Vec::new(),
        }
    }
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let config = Config::read(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a TOML file without [`Config::validate`] (for flags to be laid
    /// over it first: a `--secret` can make a public `listen` valid).
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })?;
        Ok(config)
    }

    /// Checks ranges and consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.zones.is_empty() {
            return bad("no [[zones]]: declare at least one zone".into());
        }
        if self.zones.len() > ZONES_MAX {
            return bad(format!("{} zones, at most {ZONES_MAX}", self.zones.len()));
        }
        for (name, v) in [
            ("probe_interval_ms", self.probe_interval_ms),
            ("probe_timeout_ms", self.probe_timeout_ms),
            ("tick_interval_ms", self.tick_interval_ms),
            ("push_timeout_ms", self.push_timeout_ms),
            ("reservation_ttl_ms", self.reservation_ttl_ms),
            ("spawn_report_timeout_ms", self.spawn_report_timeout_ms),
            ("push_rate_per_s", self.push_rate_per_s as u64),
            ("push_burst", self.push_burst as u64),
            ("processes_max", self.processes_max as u64),
            ("probe_concurrency_max", self.probe_concurrency_max as u64),
            ("stream_probe_interval_ms", self.stream_probe_interval_ms),
            ("request_body_bytes_max", self.request_body_bytes_max as u64),
            ("witness_hold_ms", self.witness_hold_ms),
            ("pick_rate_per_s", self.pick_rate_per_s as u64),
            ("pick_burst", self.pick_burst as u64),
            ("pick_global_rate_per_s", self.pick_global_rate_per_s as u64),
            ("pick_global_burst", self.pick_global_burst as u64),
            ("pick_sources_max", self.pick_sources_max as u64),
            ("connections_max", self.connections_max as u64),
            ("request_head_timeout_ms", self.request_head_timeout_ms),
            ("request_body_timeout_ms", self.request_body_timeout_ms),
        ] {
            if v == 0 {
                return bad(format!("{name} must be above 0"));
            }
        }
        for (name, v) in [
            ("secret", &self.secret),
            ("pick_token", &self.pick_token),
            ("witness_secret", &self.witness_secret),
        ] {
            if v.as_ref().is_some_and(|t| t.trim().is_empty()) {
                return bad(format!(
                    "{name} is empty: set a long random value, or remove it"
                ));
            }
        }
        if self.secret.is_none() && !self.listen.ip().is_loopback() && !self.insecure_no_secret {
            return bad(format!(
                "listen = {} is reachable from other machines and no secret is set: anyone could \
                 push fake processes, drain or forget real ones and take the master role over. \
                 Set secret (and give it to the game servers and operators), listen on 127.0.0.1, \
                 or set insecure_no_secret = true if a firewall admits only trusted hosts",
                self.listen
            ));
        }
        if let Some(h) = &self.hs {
            h.resolve()?;
        }
        let mut ids = std::collections::BTreeSet::new();
        for z in &self.zones {
            if !ids.insert(z.id) {
                return bad(format!("zone id {} declared twice", z.id));
            }
            if z.process_online_max == 0 {
                return bad(format!("zone {}: process_online_max must be above 0", z.id));
            }
            if let Some(s) = &z.spawn {
                if s.command.is_empty() || s.command.len() > SPAWN_ARGS_MAX {
                    return bad(format!(
                        "zone {}: spawn.command needs 1..={SPAWN_ARGS_MAX} items",
                        z.id
                    ));
                }
                if s.port_min == 0 || s.port_min > s.port_max {
                    return bad(format!(
                        "zone {}: spawn ports need 0 < port_min <= port_max",
                        z.id
                    ));
                }
                if s.host.is_unspecified() {
                    return bad(format!(
                        "zone {}: spawn.host must be an address clients can reach, not {}",
                        z.id, s.host
                    ));
                }
            }
        }
        Ok(())
    }

    /// The registry's limits taken from this config.
    pub fn limits(&self) -> RegistryLimits {
        RegistryLimits {
            push_timeout_ms: self.push_timeout_ms,
            reservation_ttl_ms: self.reservation_ttl_ms,
            spawn_report_timeout_ms: self.spawn_report_timeout_ms,
            spawn_interval_ms: self.spawn_interval_ms,
            spawned_processes_max: self.spawned_processes_max,
            processes_max: self.processes_max,
            stopped_retention_ms: self.stopped_retention_ms,
        }
    }

    /// The registry's zone specs taken from this config.
    pub fn zone_specs(&self) -> Vec<ZoneSpec> {
        self.zones
            .iter()
            .map(|z| ZoneSpec {
                id: z.id,
                name: z.name.clone(),
                version: z.version.clone(),
                process_online_max: z.process_online_max,
                spawn: z.spawn.as_ref().map(|s| SpawnSpec {
                    host: s.host,
                    port_min: s.port_min,
                    port_max: s.port_max,
                }),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_example_and_applies_defaults() {
        let text = r#"
            listen = "127.0.0.1:0"
            secret = "s"
            [[zones]]
            id = 1
            name = "天上人间"
            [zones.spawn]
            command = ["server", "--port", "{port}"]
            port_min = 7000
            port_max = 7001
        "#;
        let c: Config = toml::from_str(text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.probe_interval_ms, 500);
        assert_eq!(c.zones[0].process_online_max, 1000);
        assert_eq!(
            c.zone_specs()[0].spawn.as_ref().unwrap().host,
            default_spawn_host()
        );
    }

    #[test]
    fn example_config_is_valid() {
        let c: Config = toml::from_str(include_str!("../balancer.example.toml")).unwrap();
        c.validate().unwrap();
        assert_eq!(
            c,
            Config {
                zones: c.zones.clone(),
                ..Config::default()
            },
            "the example shows the defaults"
        );
        assert_eq!(c.zones.len(), 2);
    }

    #[test]
    fn refuses_bad_values() {
        let base = r#"
            [[zones]]
            id = 1
            name = "a"
        "#;
        let cases = [
            ("", "no [[zones]]"),
            (
                &format!("probe_interval_ms = 0\n{base}"),
                "probe_interval_ms",
            ),
            (&format!("{base}\n[[zones]]\nid = 1\nname = \"b\""), "twice"),
            (
                &format!("{base}\n[zones.spawn]\ncommand = []\nport_min = 1\nport_max = 2"),
                "command",
            ),
            (
                &format!("{base}\n[zones.spawn]\ncommand = [\"x\"]\nport_min = 9\nport_max = 2"),
                "port_min",
            ),
        ];
        for (text, needle) in cases {
            let c: Config = toml::from_str(text).unwrap();
            let msg = c.validate().unwrap_err().to_string();
            assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
        }
        assert!(
            toml::from_str::<Config>("probe_interval = 3").is_err(),
            "unknown keys are refused"
        );
    }
}
