//! Counters of a gateway, as atomics (relaxed: they are for people and tests,
//! never for decisions), and a plain copy of them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

macro_rules! stats {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters; read them with [`GatewayStats::snapshot`].
        #[derive(Debug, Default)]
        pub struct GatewayStats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A copy of the counters at one moment.
        #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
        pub struct StatsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl GatewayStats {
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.load(Relaxed),)* }
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
}
