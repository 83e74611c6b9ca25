//! Counters, and the Prometheus text rendering of counters plus registry
//! gauges.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::registry::{Registry, Status};

/// Monotonic counters since start. Not replicated.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Pushes accepted.
    pub pushes: AtomicU64,
    /// Pushes refused: bad input.
    pub pushes_invalid: AtomicU64,
    /// Pushes refused: rate limit.
    pub pushes_limited: AtomicU64,
    /// Requests refused: missing or wrong secret.
    pub unauthorized: AtomicU64,
    /// Picks answered with a process.
    pub picks: AtomicU64,
    /// Picks answered 503 (no capacity).
    pub picks_full: AtomicU64,
    /// Probes that failed.
    pub probes_failed: AtomicU64,
    /// Probes made.
    pub probes: AtomicU64,
    /// Processes spawned.
    pub spawns: AtomicU64,
    /// Spawn commands that failed to start.
    pub spawns_failed: AtomicU64,
    /// Spawned processes killed (never reported, or stopped pushing).
    pub reaped: AtomicU64,
    /// Processes marked stopped.
    pub stopped: AtomicU64,
    /// Drains completed.
    pub drains_complete: AtomicU64,
    /// Push streams opened.
    pub streams_opened: AtomicU64,
    /// Push streams closed.
    pub streams_closed: AtomicU64,
    /// Operator changes answered before the connected standby confirmed them.
    pub unconfirmed: AtomicU64,
    /// Picks refused by a rate limit (per source or global).
    pub picks_limited: AtomicU64,
    /// Connections refused: `connections_max` open already.
    pub connections_refused: AtomicU64,
}

impl Metrics {
    /// Adds one.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self, registry: &Registry) -> String {
        let mut out = String::with_capacity(4096);
        let counters: [(&str, &str, &AtomicU64); 18] = [
            (
                "balancer_pushes_total",
                "Status pushes accepted.",
                &self.pushes,
            ),
            (
                "balancer_pushes_invalid_total",
                "Status pushes refused for bad input.",
                &self.pushes_invalid,
            ),
            (
                "balancer_pushes_rate_limited_total",
                "Status pushes refused by the per-process rate limit.",
                &self.pushes_limited,
            ),
            (
                "balancer_unauthorized_total",
                "Requests refused for a missing or wrong secret.",
                &self.unauthorized,
            ),
            (
                "balancer_picks_total",
                "Picks answered with a process.",
                &self.picks,
            ),
            (
                "balancer_picks_full_total",
                "Picks answered 503: no free seat.",
                &self.picks_full,
            ),
            ("balancer_probes_total", "TCP probes made.", &self.probes),
            (
                "balancer_probes_failed_total",
                "TCP probes that failed or timed out.",
                &self.probes_failed,
            ),
            (
                "balancer_spawns_total",
                "Processes spawned from a template.",
                &self.spawns,
            ),
            (
                "balancer_spawns_failed_total",
                "Spawn commands that failed to start.",
                &self.spawns_failed,
            ),
            (
                "balancer_reaped_total",
                "Spawned processes killed by the reaper.",
                &self.reaped,
            ),
            (
                "balancer_stopped_total",
                "Processes marked stopped.",
                &self.stopped,
            ),
            (
                "balancer_drains_complete_total",
                "Drains that reached zero players.",
                &self.drains_complete,
            ),
            (
                "balancer_streams_opened_total",
                "Push streams opened (GET /v1/status/stream).",
                &self.streams_opened,
            ),
            (
                "balancer_streams_closed_total",
                "Push streams closed; each probes the processes it vouched for.",
                &self.streams_closed,
            ),
            (
                "balancer_unconfirmed_changes_total",
                "Drains, undrains and forgets answered before the connected standby applied them (timeout).",
                &self.unconfirmed,
            ),
            (
                "balancer_picks_rate_limited_total",
                "Picks refused by pick_rate_per_s (per source address) or pick_global_rate_per_s.",
                &self.picks_limited,
            ),
            (
                "balancer_connections_refused_total",
                "Connections refused because connections_max were open.",
                &self.connections_refused,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        out.push_str("# HELP balancer_processes Processes in the registry by zone and status.\n# TYPE balancer_processes gauge\n");
        let mut online = String::new();
        let mut reserved = String::new();
        for z in registry.zones() {
            let s = registry.zone_stats(z);
            for (i, status) in Status::ALL.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "balancer_processes{{zone=\"{}\",status=\"{}\"}} {}",
                    z.spec.id,
                    status.name(),
                    s.by_status[i]
                );
            }
            let _ = writeln!(
                online,
                "balancer_online{{zone=\"{}\"}} {}",
                z.spec.id, s.online
            );
            let _ = writeln!(
                reserved,
                "balancer_reserved{{zone=\"{}\"}} {}",
                z.spec.id, s.reserved
            );
        }
        out.push_str("# HELP balancer_online Players online by zone (running and draining processes).\n# TYPE balancer_online gauge\n");
        out.push_str(&online);
        out.push_str("# HELP balancer_reserved Seats reserved by picks by zone.\n# TYPE balancer_reserved gauge\n");
        out.push_str(&reserved);
        out
    }
}

/// Appends the role gauges and, when hs is embedded, its counters.
pub fn render_role(
    out: &mut String,
    master: bool,
    epoch: u32,
    hs: Option<&crate::standby::HsSink>,
) {
    let _ = writeln!(
        out,
        "# HELP balancer_master 1 while this balancer serves as master.\n# TYPE balancer_master gauge\nbalancer_master {}",
        u8::from(master)
    );
    let _ = writeln!(out, "# HELP balancer_hs_epoch hs epoch at the last role change.\n# TYPE balancer_hs_epoch gauge\nbalancer_hs_epoch {epoch}");
    let Some(h) = hs else { return };
    let counters: [(&str, &str, &AtomicU64); 3] = [
        ("balancer_hs_published_total", "Registry records published to the standby.", &h.published),
        ("balancer_hs_publish_failed_total", "Publishes that failed after the change was applied (the node is restarted to rebuild from its log).", &h.publish_failed),
        ("balancer_replica_errors_total", "Replicated records that could not be applied (e.g. the pair's [[zones]] differ).", &h.replica_errors),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            v.load(Relaxed)
        );
    }
}
