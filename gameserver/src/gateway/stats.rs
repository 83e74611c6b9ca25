//! Counters of a gateway, as atomics (relaxed: they are for people and tests,
//! never for decisions), a plain copy of them, and their Prometheus text.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use crate::proto::frame::Kind;
use crate::proto::msg::ErrorCode;

/// Upper bounds of the heartbeat RTT histogram's buckets, ms (then +Inf).
pub const RTT_BUCKETS_MS: [u64; 10] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000];
/// Frame kinds counted one by one (client kinds are below this; the rest
/// count as kind 0).
const KINDS_COUNTED: usize = 16;
/// Error codes counted one by one (the rest count as the last).
const CODES_COUNTED: usize = 48;

/// The counters with a dimension: by frame kind, by error code, the RTT histogram.
#[derive(Debug)]
pub struct Detail {
    frames_in: [AtomicU64; KINDS_COUNTED],
    bytes_in: [AtomicU64; KINDS_COUNTED],
    frames_out: [AtomicU64; KINDS_COUNTED],
    bytes_out: [AtomicU64; KINDS_COUNTED],
    errors: [AtomicU64; CODES_COUNTED],
    rtt: [AtomicU64; RTT_BUCKETS_MS.len() + 1],
    rtt_sum_ms: AtomicU64,
}

impl Default for Detail {
    fn default() -> Detail {
        Detail {
            frames_in: std::array::from_fn(|_| AtomicU64::new(0)),
            bytes_in: std::array::from_fn(|_| AtomicU64::new(0)),
            frames_out: std::array::from_fn(|_| AtomicU64::new(0)),
            bytes_out: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            rtt: std::array::from_fn(|_| AtomicU64::new(0)),
            rtt_sum_ms: AtomicU64::new(0),
        }
    }
}

fn kind_index(kind: u8) -> usize {
    match kind as usize {
        k if k < KINDS_COUNTED => k,
        _ => 0,
    }
}

macro_rules! stats {
    ($($(#[doc = $doc:literal])* $name:ident),* $(,)?) => {
        /// Live counters; read them with [`GatewayStats::snapshot`].
        #[derive(Debug, Default)]
        pub struct GatewayStats {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
            /// By kind, by code, the RTT histogram.
            pub detail: Detail,
        }

        /// A copy of the counters at one moment.
        #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
        pub struct StatsSnapshot {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl GatewayStats {
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.load(Relaxed),)* }
            }

            /// Every scalar counter as (name, help, value).
            fn scalars(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($name), concat!($($doc),*), self.$name.load(Relaxed)),)*]
            }
        }
    };
}

stats! {
    /// Connections open now (authenticated or not).
    connections,
    /// Authenticated sessions open now (the `online` reported to the balancer).
    sessions,
    /// Sessions authenticated since start.
    logins,
    /// Frames read from clients.
    frames_in,
    /// Frames queued to clients.
    frames_out,
    /// Requests answered to clients (by a room server or the gateway).
    replies,
    /// Bad frames (CRC, size, kind, flags): the session was closed.
    errors_frame,
    /// Auth refused (bad, expired or wrong-zone token, a frame before Auth, timeout).
    errors_auth,
    /// Requests refused by the gateway (seq reused, unreadable, rate, queue full, unknown room).
    errors_request,
    /// Sessions closed by the heartbeat.
    heartbeat_timeouts,
    /// Older sessions closed by a second login of their player.
    logged_in_elsewhere,
    /// Connections refused at sessions_max.
    too_many_sessions,
    /// Pair links that came up (first connect and every reconnect).
    link_connects,
    /// Pair links that went down.
    link_downs,
    /// Requests sent again after a link came back.
    resent_requests,
    /// Requests failed Unavailable (a pair had no master for too long).
    unavailable,
    /// Gaps in a room's events (a Subscribe was sent to fill them).
    gaps,
    /// Events dropped as duplicates (already forwarded).
    duplicate_events,
    /// Room events fanned out (once per event, not per session).
    events_forwarded,
    /// Snapshots pushed to sessions after a gap.
    snapshots_forwarded,
    /// Sessions closed because their queue was full.
    slow_consumers,
    /// Sessions waiting for the center's admission now (in its queue or not yet answered).
    waiting,
    /// Sessions refused by the center (blacklisted, queue full).
    center_refused,
    /// Sessions closed by the center (a login elsewhere, an operator's kick or blacklist).
    center_kicked,
    /// Center links that came up.
    center_connects,
    /// Center links that went down.
    center_downs,
    /// Notices (broadcasts, channel and private messages) pushed, once per session.
    notices_pushed,
    /// Bytes read from clients (headers and payloads as on the wire).
    bytes_in,
    /// Bytes written to clients (as on the wire, after compression).
    bytes_out,
    /// Frames to clients sent compressed.
    compressed_frames,
    /// Payload bytes of those frames before compression.
    compress_plain_bytes,
    /// Payload bytes of those frames after compression.
    compress_packed_bytes,
    /// CPU time spent compressing, ns (wall time around deflate, one thread).
    compress_ns,
    /// Compressed frames from clients, inflated.
    inflated_frames,
    /// Client frames dropped for a `time_ms` outside the window (StaleTime).
    stale_frames,
    /// Requests refused for a reused or skipped sequence number.
    seq_refused,
    /// Times a connection's reads were paused by its traffic limits.
    throttle_pauses,
    /// Connections whose reads were paused at least once.
    throttled_connections,
    /// Connections closed for flooding (paused for flood_close_ms without a break).
    flood_closed,
    /// Connections closed at once: their address held unauth_per_addr_max
    /// unauthenticated connections already.
    refused_per_addr,
    /// Clients refused for a version below client_version_min.
    upgrade_required,
    /// Heartbeat round trips measured (the histogram's count).
    rtt_samples,
    /// Encrypted connections refused before a session: a Noise or TLS
    /// handshake that failed, was not one, or did not finish in time.
    handshake_failures,
    /// Noise sessions closed because a message failed authentication
    /// (tampered, replayed from another session, reordered).
    decrypt_failures,
}

impl GatewayStats {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }
    pub(crate) fn dec(c: &AtomicU64) {
        c.fetch_sub(1, Relaxed);
    }

    /// A frame of `bytes` on the wire read from a client.
    pub(crate) fn frame_in(&self, kind: u8, bytes: usize) {
        let i = kind_index(kind);
        self.frames_in.fetch_add(1, Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Relaxed);
        self.detail.frames_in[i].fetch_add(1, Relaxed);
        self.detail.bytes_in[i].fetch_add(bytes as u64, Relaxed);
    }

    /// An encoded frame written to a client.
    pub(crate) fn frame_out(&self, frame: &[u8]) {
        let i = kind_index(frame.get(4).copied().unwrap_or(0));
        self.frames_out.fetch_add(1, Relaxed);
        self.bytes_out.fetch_add(frame.len() as u64, Relaxed);
        self.detail.frames_out[i].fetch_add(1, Relaxed);
        self.detail.bytes_out[i].fetch_add(frame.len() as u64, Relaxed);
    }

    /// An error told to a client (a refused request or a Bye).
    pub(crate) fn error(&self, code: ErrorCode) {
        let i = (code as usize).min(CODES_COUNTED - 1);
        self.detail.errors[i].fetch_add(1, Relaxed);
    }

    /// The errors told to clients with `code` so far.
    pub fn errors_with(&self, code: ErrorCode) -> u64 {
        self.detail.errors[(code as usize).min(CODES_COUNTED - 1)].load(Relaxed)
    }

    /// A heartbeat round trip.
    pub(crate) fn rtt(&self, ms: u64) {
        let i = RTT_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(RTT_BUCKETS_MS.len());
        self.detail.rtt[i].fetch_add(1, Relaxed);
        self.detail.rtt_sum_ms.fetch_add(ms, Relaxed);
        self.rtt_samples.fetch_add(1, Relaxed);
    }

    /// The counters in the Prometheus text exposition format (0.0.4), every
    /// name prefixed `gateway_`.
    pub fn prometheus(&self) -> String {
        let mut o = String::with_capacity(8192);
        for (name, help, v) in self.scalars() {
            let gauge = matches!(name, "connections" | "sessions" | "waiting");
            let t = if gauge { "gauge" } else { "counter" };
            let _ = writeln!(o, "# HELP gateway_{name} {}", help.trim());
            let _ = writeln!(o, "# TYPE gateway_{name} {t}\ngateway_{name} {v}");
        }
        let d = &self.detail;
        let by_kind = [
            (
                "frames_in_by_kind",
                "Frames read from clients, by frame kind.",
                &d.frames_in,
            ),
            (
                "bytes_in_by_kind",
                "Bytes read from clients, by frame kind.",
                &d.bytes_in,
            ),
            (
                "frames_out_by_kind",
                "Frames written to clients, by frame kind.",
                &d.frames_out,
            ),
            (
                "bytes_out_by_kind",
                "Bytes written to clients, by frame kind.",
                &d.bytes_out,
            ),
        ];
        for (name, help, a) in by_kind {
            let _ = writeln!(
                o,
                "# HELP gateway_{name} {help}\n# TYPE gateway_{name} counter"
            );
            for (i, c) in a.iter().enumerate() {
                let v = c.load(Relaxed);
                if v > 0 {
                    let kind =
                        Kind::from_u8(i as u8).map_or("other".to_string(), |k| format!("{k:?}"));
                    let _ = writeln!(o, "gateway_{name}{{kind=\"{kind}\"}} {v}");
                }
            }
        }
        let _ = writeln!(o, "# HELP gateway_errors_by_code Errors told to clients (refusals and Byes), by code.\n# TYPE gateway_errors_by_code counter");
        for (i, c) in d.errors.iter().enumerate() {
            let v = c.load(Relaxed);
            if v > 0 {
                let code = crate::proto::msg::decode::<ErrorCode>(&[i as u8])
                    .map_or("other".to_string(), |c| format!("{c:?}"));
                let _ = writeln!(o, "gateway_errors_by_code{{code=\"{code}\"}} {v}");
            }
        }
        let plain = self.compress_plain_bytes.load(Relaxed);
        let packed = self.compress_packed_bytes.load(Relaxed);
        let ratio = if plain == 0 {
            1.0
        } else {
            packed as f64 / plain as f64
        };
        let _ = writeln!(o, "# HELP gateway_compression_ratio Compressed over plain payload bytes of the frames sent compressed.\n# TYPE gateway_compression_ratio gauge\ngateway_compression_ratio {ratio:.4}");
        let _ = writeln!(o, "# HELP gateway_heartbeat_rtt_ms Heartbeat round trips the gateway measured, ms.\n# TYPE gateway_heartbeat_rtt_ms histogram");
        let mut cum = 0;
        for (i, c) in d.rtt.iter().enumerate() {
            cum += c.load(Relaxed);
            let le = RTT_BUCKETS_MS
                .get(i)
                .map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(o, "gateway_heartbeat_rtt_ms_bucket{{le=\"{le}\"}} {cum}");
        }
        let _ = writeln!(
            o,
            "gateway_heartbeat_rtt_ms_sum {}\ngateway_heartbeat_rtt_ms_count {cum}",
            d.rtt_sum_ms.load(Relaxed)
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_has_the_counters_the_kinds_and_the_histogram() {
        let s = GatewayStats::default();
        s.frame_in(Kind::Ping as u8, 24);
        s.frame_out(&[0, 0, 0, 0, Kind::Pong as u8]);
        s.error(ErrorCode::StaleTime);
        s.rtt(3);
        s.rtt(5000);
        let t = s.prometheus();
        for want in [
            "gateway_frames_in 1\n",
            "gateway_frames_in_by_kind{kind=\"Ping\"} 1\n",
            "gateway_bytes_out_by_kind{kind=\"Pong\"} 5\n",
            "gateway_errors_by_code{code=\"StaleTime\"} 1\n",
            "gateway_heartbeat_rtt_ms_bucket{le=\"2\"} 0\n",
            "gateway_heartbeat_rtt_ms_bucket{le=\"5\"} 1\n",
            "gateway_heartbeat_rtt_ms_bucket{le=\"+Inf\"} 2\n",
            "gateway_heartbeat_rtt_ms_count 2\n",
            "# TYPE gateway_connections gauge\n",
        ] {
            assert!(t.contains(want), "no {want:?} in\n{t}");
        }
    }
}
