//! What a gateway is told: where it listens, which room-server pair serves
//! which room, the token secret, and its limits (each with its unit last).

use serde::Deserialize;

/// One room-server pair: the rooms it serves and the link address of each
/// node (master and standby, in any order: the gateway finds the master).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct PairConfig {
    pub rooms: Vec<u32>,
    /// `host:port` of each node's link listener (usually two).
    pub nodes: Vec<String>,
}

impl PairConfig {
    /// Parses `ROOMS@NODE,NODE`, e.g. `1,2,3@127.0.0.1:7101,127.0.0.1:7102`
    /// (rooms may be ranges: `1-10`).
    pub fn parse(s: &str) -> Result<PairConfig, String> {
        let (rooms, nodes) = s.split_once('@').ok_or_else(|| {
            format!(
                "pair {s:?}: expected ROOMS@NODE,NODE (e.g. 1-10@127.0.0.1:7101,127.0.0.1:7102)"
            )
        })?;
        let mut ids = Vec::new();
        for r in rooms.split(',').filter(|r| !r.is_empty()) {
            let bad = || format!("pair {s:?}: room {r:?} is not a number or a range a-b");
            match r.split_once('-') {
                Some((a, b)) => {
                    let (a, b): (u32, u32) =
                        (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                    if b < a || b - a >= ROOMS_PER_PAIR_MAX {
                        return Err(bad());
                    }
                    ids.extend(a..=b);
                }
                None => ids.push(r.parse().map_err(|_| bad())?),
            }
        }
        let nodes: Vec<String> = nodes
            .split(',')
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect();
        if ids.is_empty() || nodes.is_empty() {
            return Err(format!("pair {s:?}: needs at least one room and one node"));
        }
        Ok(PairConfig { rooms: ids, nodes })
    }
}

/// Which room-server pairs serve a kind of client (seed 001 "消息路由"):
/// a new build's clients to the pairs that run the new rules, a test group
/// to its own pairs. A session takes the first route that matches it; with
/// none, every pair.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Client versions (`Auth::client_version`), inclusive; `None`: any.
    #[serde(default)]
    pub versions: Option<(u32, u32)>,
    /// Groups (the token's account `kind`); empty: any.
    #[serde(default)]
    pub groups: Vec<u8>,
    /// The pairs (indexes into `pairs`) such a session may use; its room
    /// list shows only their rooms.
    pub pairs: Vec<usize>,
}

impl RouteConfig {
    /// Whether a client of `version` in `group` takes this route.
    pub fn matches(&self, version: u32, group: u8) -> bool {
        self.versions
            .is_none_or(|(a, b)| (a..=b).contains(&version))
            && (self.groups.is_empty() || self.groups.contains(&group))
    }
}

/// Rooms one pair may be configured with (a typo'd range fails loudly).
pub const ROOMS_PER_PAIR_MAX: u32 = 100_000;

/// Where to report status (optional).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct BalancerReport {
    /// The balancer pair's HTTP addresses.
    pub addrs: Vec<String>,
    /// Process id (seed 000: MAC + pid); empty: [`balancer::client::local_process_id`].
    #[serde(default)]
    pub process_id: String,
    /// The address clients are told to connect to.
    pub host: String,
    /// 0: the TCP listener's port.
    #[serde(default)]
    pub port: u16,
    /// The shared secret of the balancer's API, if it has one.
    #[serde(default)]
    pub secret: Option<String>,
    /// How often the status is pushed, ms.
    #[serde(default = "d_report_interval_ms")]
    pub report_interval_ms: u64,
}

/// The gateway's configuration. Every limit is named with its unit.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// TCP listener (frames back to back); port 0 picks one.
    #[serde(default = "d_tcp")]
    pub tcp: String,
    /// WebSocket listener (one binary message per frame); `None`: no WebSocket.
    #[serde(default = "d_ws")]
    pub ws: Option<String>,
    /// Admin listener (lines: `STATS` answers the counters as one JSON line,
    /// `METRICS` the Prometheus text; or HTTP `GET /metrics`); `None`: none.
    #[serde(default)]
    pub admin: Option<String>,
    /// SO_REUSEPORT on both listeners: several gateway processes share a port.
    #[serde(default)]
    pub reuse_port: bool,
    /// Noise TCP listener (`proto::noise`: an NK handshake, then frames
    /// inside transport messages); `None`: none. Needs `noise_key`.
    #[serde(default)]
    pub tcp_noise: Option<String>,
    /// The gateway's static X25519 private key: 64 hex digits, or the path
    /// of a file holding them. Clients are given its public half.
    #[serde(default)]
    pub noise_key: Option<String>,
    /// WebSocket over TLS listener (`wss://`); `None`: none. Needs
    /// `tls_cert` and `tls_key`.
    #[serde(default)]
    pub wss: Option<String>,
    /// PEM file of the `wss` certificate chain, leaf first.
    #[serde(default)]
    pub tls_cert: Option<String>,
    /// PEM file of the `wss` certificate's private key.
    #[serde(default)]
    pub tls_key: Option<String>,
    /// The token secret shared with the login side.
    pub secret: String,
    /// The zone this gateway serves (tokens of other zones are refused).
    #[serde(default = "d_zone")]
    pub zone: u32,
    pub pairs: Vec<PairConfig>,
    #[serde(default)]
    pub balancer: Option<BalancerReport>,
    /// The center pair's link addresses (`host:port` of each node); empty:
    /// no center (single sign-on is local to this gateway, no queue, no
    /// blacklist, no notices).
    #[serde(default)]
    pub center: Vec<String>,
    /// How long a login waits for the center's first answer (Admitted,
    /// Queued, Refused) before Bye Unavailable, ms.
    #[serde(default = "d_center_login_timeout_ms")]
    pub center_login_timeout_ms: u64,

    /// Largest frame payload accepted from a client or a room server, bytes.
    /// Costs: a client can make the gateway buffer this much per connection.
    #[serde(default = "d_frame_bytes_max")]
    pub frame_bytes_max: usize,
    /// Connections held at most (authenticated or not); more get Bye TooManySessions.
    #[serde(default = "d_sessions_max")]
    pub sessions_max: usize,
    /// Requests a second one session may make, sustained (token bucket).
    #[serde(default = "d_requests_per_s_max")]
    pub requests_per_s_max: u32,
    /// Requests a session may make at once above the rate (the bucket's size).
    #[serde(default = "d_requests_burst_max")]
    pub requests_burst_max: u32,
    /// Requests of one session queued behind its one in flight; more get TooManyInFlight.
    #[serde(default = "d_in_flight_max")]
    pub in_flight_max: usize,
    /// Frames queued to one client; a client that lets it fill is dropped (SlowConsumer).
    /// Costs: memory only while frames wait (the queue is not preallocated).
    #[serde(default = "d_session_queue_frames_max")]
    pub session_queue_frames_max: usize,
    /// Time from connect to a good Auth frame, ms.
    #[serde(default = "d_auth_timeout_ms")]
    pub auth_timeout_ms: u64,
    /// Heartbeat tick, ms (told to clients in Welcome).
    #[serde(default = "d_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Ticks without a frame from the client before it is closed.
    #[serde(default = "d_dead_ticks")]
    pub dead_ticks: u32,
    /// How long requests wait for a pair that has no master before they fail Unavailable, ms.
    #[serde(default = "d_unavailable_after_ms")]
    pub unavailable_after_ms: u64,
    /// Time to connect to a room-server node and get its answer to Hello, ms.
    #[serde(default = "d_link_connect_timeout_ms")]
    pub link_connect_timeout_ms: u64,
    /// A pair link silent this long is given up (a frozen or cut-off
    /// master), ms; it is probed after a quarter of it. Keep it above the
    /// room server's longest wait for its standby.
    #[serde(default = "d_link_dead_ms")]
    pub link_dead_ms: u64,

    /// Payloads to clients of at least this many bytes are compressed
    /// (deflate-raw, flag bit 0) for clients that announce it; 0: never.
    /// Costs: CPU per big frame (47 µs to pack a 300-member room's 9.6 KiB
    /// snapshot into 29% of it, 23 µs for a 100-room list to 34%) against
    /// the bytes saved; a chat push (~50 bytes) grows, whence the floor.
    #[serde(default = "d_compress_bytes_min")]
    pub compress_bytes_min: usize,
    /// A client frame whose `time_ms`, corrected by the clock offset learned
    /// at Auth and at each ping, is older than this is dropped (StaleTime), ms.
    /// Costs: a recorded frame can be replayed for this long (the sequence
    /// check stops it too); too small drops an honest client's frames that
    /// waited in a stalled TCP connection.
    #[serde(default = "d_frame_age_max_ms")]
    pub frame_age_max_ms: u64,
    /// ... or this far ahead of the gateway's clock, ms.
    #[serde(default = "d_frame_ahead_max_ms")]
    pub frame_ahead_max_ms: u64,
    /// Bytes a second one connection may send, sustained (token bucket; the
    /// bucket holds one second of it). Over it, reads pause until the bucket
    /// refills (TCP pushes back on the sender). Costs: a client's burst above
    /// it waits.
    #[serde(default = "d_conn_bytes_per_s_max")]
    pub conn_bytes_per_s_max: u64,
    /// Frames a second one connection may send, sustained (the same bucket
    /// rules as `conn_bytes_per_s_max`).
    #[serde(default = "d_conn_frames_per_s_max")]
    pub conn_frames_per_s_max: u64,
    /// A connection whose reads stay paused by its traffic limits this long
    /// without a break is closed (Bye Flooding), ms.
    #[serde(default = "d_flood_close_ms")]
    pub flood_close_ms: u64,
    /// Connections not yet authenticated from one source address; more are
    /// closed at accept. Costs: players behind one NAT log in at most this
    /// many at a time (each for at most `auth_timeout_ms`).
    #[serde(default = "d_unauth_per_addr_max")]
    pub unauth_per_addr_max: u32,
    /// Lowest `Auth::client_version` served; older clients get Bye UpgradeRequired.
    #[serde(default = "d_client_version_min")]
    pub client_version_min: u32,
    /// Routes by client version and group, first match wins; empty: every
    /// session may use every pair.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

fn d_tcp() -> String {
    "0.0.0.0:7600".into()
}
fn d_ws() -> Option<String> {
    Some("0.0.0.0:7601".into())
}
fn d_zone() -> u32 {
    1
}
fn d_report_interval_ms() -> u64 {
    500
}
pub(crate) fn d_frame_bytes_max() -> usize {
    65536
}
pub(crate) fn d_sessions_max() -> usize {
    20_000
}
pub(crate) fn d_requests_per_s_max() -> u32 {
    50
}
pub(crate) fn d_requests_burst_max() -> u32 {
    100
}
pub(crate) fn d_in_flight_max() -> usize {
    32
}
pub(crate) fn d_session_queue_frames_max() -> usize {
    4096
}
pub(crate) fn d_auth_timeout_ms() -> u64 {
    5000
}
pub(crate) fn d_heartbeat_ms() -> u64 {
    1000
}
pub(crate) fn d_dead_ticks() -> u32 {
    5
}
pub(crate) fn d_unavailable_after_ms() -> u64 {
    10_000
}
pub(crate) fn d_link_connect_timeout_ms() -> u64 {
    1000
}
pub(crate) fn d_link_dead_ms() -> u64 {
    3000
}
pub(crate) fn d_center_login_timeout_ms() -> u64 {
    10_000
}
pub(crate) fn d_compress_bytes_min() -> usize {
    512
}
pub(crate) fn d_frame_age_max_ms() -> u64 {
    30_000
}
pub(crate) fn d_frame_ahead_max_ms() -> u64 {
    5_000
}
pub(crate) fn d_conn_bytes_per_s_max() -> u64 {
    65_536
}
pub(crate) fn d_conn_frames_per_s_max() -> u64 {
    200
}
pub(crate) fn d_flood_close_ms() -> u64 {
    3_000
}
pub(crate) fn d_unauth_per_addr_max() -> u32 {
    64
}
pub(crate) fn d_client_version_min() -> u32 {
    crate::proto::msg::PROTOCOL_VERSION
}

impl GatewayConfig {
    /// A configuration with every default, for `secret` and `pairs`.
    pub fn new(secret: impl Into<String>, pairs: Vec<PairConfig>) -> GatewayConfig {
        GatewayConfig {
            tcp: d_tcp(),
            ws: d_ws(),
            admin: None,
            reuse_port: false,
            tcp_noise: None,
            noise_key: None,
            wss: None,
            tls_cert: None,
            tls_key: None,
            secret: secret.into(),
            zone: d_zone(),
            pairs,
            balancer: None,
            center: Vec::new(),
            center_login_timeout_ms: d_center_login_timeout_ms(),
            frame_bytes_max: d_frame_bytes_max(),
            sessions_max: d_sessions_max(),
            requests_per_s_max: d_requests_per_s_max(),
            requests_burst_max: d_requests_burst_max(),
            in_flight_max: d_in_flight_max(),
            session_queue_frames_max: d_session_queue_frames_max(),
            auth_timeout_ms: d_auth_timeout_ms(),
            heartbeat_ms: d_heartbeat_ms(),
            dead_ticks: d_dead_ticks(),
            unavailable_after_ms: d_unavailable_after_ms(),
            link_connect_timeout_ms: d_link_connect_timeout_ms(),
            link_dead_ms: d_link_dead_ms(),
            compress_bytes_min: d_compress_bytes_min(),
            frame_age_max_ms: d_frame_age_max_ms(),
            frame_ahead_max_ms: d_frame_ahead_max_ms(),
            conn_bytes_per_s_max: d_conn_bytes_per_s_max(),
            conn_frames_per_s_max: d_conn_frames_per_s_max(),
            flood_close_ms: d_flood_close_ms(),
            unauth_per_addr_max: d_unauth_per_addr_max(),
            client_version_min: d_client_version_min(),
            routes: Vec::new(),
        }
    }

    /// Refuses what cannot work, with a message for the operator.
    pub fn validate(&self) -> Result<(), String> {
        let pos = |v: u64, name: &str| {
            if v == 0 {
                Err(format!("{name} must be above 0"))
            } else {
                Ok(())
            }
        };
        pos(self.frame_bytes_max as u64, "frame_bytes_max")?;
        pos(self.sessions_max as u64, "sessions_max")?;
        pos(self.requests_per_s_max as u64, "requests_per_s_max")?;
        pos(self.requests_burst_max as u64, "requests_burst_max")?;
        pos(self.in_flight_max as u64, "in_flight_max")?;
        pos(
            self.session_queue_frames_max as u64,
            "session_queue_frames_max",
        )?;
        pos(self.auth_timeout_ms, "auth_timeout_ms")?;
        pos(self.heartbeat_ms, "heartbeat_ms")?;
        pos(self.dead_ticks as u64, "dead_ticks")?;
        pos(self.link_connect_timeout_ms, "link_connect_timeout_ms")?;
        pos(self.link_dead_ms, "link_dead_ms")?;
        pos(self.center_login_timeout_ms, "center_login_timeout_ms")?;
        pos(self.frame_age_max_ms, "frame_age_max_ms")?;
        pos(self.frame_ahead_max_ms, "frame_ahead_max_ms")?;
        pos(self.conn_bytes_per_s_max, "conn_bytes_per_s_max")?;
        pos(self.conn_frames_per_s_max, "conn_frames_per_s_max")?;
        pos(self.flood_close_ms, "flood_close_ms")?;
        pos(self.unauth_per_addr_max as u64, "unauth_per_addr_max")?;
        if self.tcp_noise.is_some() && self.noise_key.is_none() {
            return Err("tcp_noise needs noise_key (64 hex digits or a key file; gs-gateway --gen-noise-key makes one)".into());
        }
        if self.wss.is_some() && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            return Err("wss needs tls_cert and tls_key (PEM files)".into());
        }
        if self.secret.is_empty() {
            return Err("the token secret is empty".into());
        }
        if self.frame_bytes_max > u32::MAX as usize {
            return Err("frame_bytes_max must fit in the header's u32".into());
        }
        for (i, r) in self.routes.iter().enumerate() {
            if let Some(p) = r.pairs.iter().find(|p| **p >= self.pairs.len()) {
                return Err(format!(
                    "route {i} names pair {p}; there are {} pairs (numbered from 0)",
                    self.pairs.len()
                ));
            }
            if r.versions.is_some_and(|(a, b)| b < a) {
                return Err(format!(
                    "route {i}: its version range ends before it starts"
                ));
            }
        }
        let mut seen = std::collections::HashMap::new();
        for (i, p) in self.pairs.iter().enumerate() {
            if p.nodes.is_empty() {
                return Err(format!("pair {i} has no node address"));
            }
            for r in &p.rooms {
                if let Some(j) = seen.insert(*r, i) {
                    return Err(format!("room {r} is in pair {j} and pair {i}"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_parse() {
        let p = PairConfig::parse("1-3,7@127.0.0.1:1,127.0.0.1:2").unwrap();
        assert_eq!(p.rooms, vec![1, 2, 3, 7]);
        assert_eq!(p.nodes, vec!["127.0.0.1:1", "127.0.0.1:2"]);
        assert!(PairConfig::parse("1,2").is_err());
        assert!(PairConfig::parse("x@a:1").is_err());
        assert!(PairConfig::parse("5-1@a:1").is_err());
    }

    #[test]
    fn routes_match_by_version_and_group_and_name_real_pairs() {
        let mut c: GatewayConfig = serde_json::from_str(
            r#"{"secret":"s","pairs":[{"rooms":[1],"nodes":["a:1"]},{"rooms":[2],"nodes":["b:1"]}],
                "routes":[{"versions":[2,9],"pairs":[1]},{"groups":[7],"pairs":[0]}]}"#,
        )
        .unwrap();
        c.validate().unwrap();
        let first = |v, g| c.routes.iter().position(|r| r.matches(v, g));
        assert_eq!(first(2, 7), Some(0), "the version route comes first");
        assert_eq!(first(1, 7), Some(1));
        assert_eq!(first(1, 0), None, "no route: every pair");
        c.routes[0].pairs = vec![2];
        assert!(c.validate().unwrap_err().contains("pair 2"));
        c.routes[0].pairs = vec![1];
        c.routes[0].versions = Some((9, 2));
        assert!(c.validate().is_err());
    }

    #[test]
    fn defaults_fill_a_json_config_and_overlaps_are_refused() {
        let c: GatewayConfig = serde_json::from_str(
            r#"{"secret":"s","pairs":[{"rooms":[1],"nodes":["127.0.0.1:1"]}]}"#,
        )
        .unwrap();
        assert_eq!(
            c,
            GatewayConfig::new("s", vec![PairConfig::parse("1@127.0.0.1:1").unwrap()])
        );
        c.validate().unwrap();
        let mut bad = c.clone();
        bad.pairs.push(PairConfig::parse("1@127.0.0.1:2").unwrap());
        assert!(bad.validate().is_err());
    }
}
