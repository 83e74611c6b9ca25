//! Status reports to the balancer (seed 000): every process of the game
//! server pushes its id, zone, address, online count and memory on a timer.
//! Failures are logged (at warn when the state changes) and never stop the
//! process: the balancer's probes and push timeout decide what it thinks.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tracing::{info, warn};

use crate::gateway::BalancerReport;

/// Resident memory of this process, bytes (from /proc/self/statm).
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Pushes `online()` for this process under `zone` every
/// `b.report_interval_ms`, until `stop` resolves. `port` is used when
/// `b.port` is 0.
pub async fn report_loop(
    b: BalancerReport,
    zone: u32,
    port: u16,
    online: impl Fn() -> u64,
    stop: impl Future<Output = ()>,
) {
    report_loop_with(b, zone, port, online, stop, None).await
}

/// How often a process reads its zone's list for [`report_loop_with`]'s
/// alternative, in report intervals.
const ALTERNATIVE_EVERY_REPORTS: u32 = 4;

/// [`report_loop`], and every few reports the zone's least-loaded other
/// running process with room, as `host:port`, into `alternative` (seed 002:
/// a full gateway answers with another one).
pub async fn report_loop_with(
    b: BalancerReport,
    zone: u32,
    port: u16,
    online: impl Fn() -> u64,
    stop: impl Future<Output = ()>,
    alternative: Option<&parking_lot::Mutex<Option<String>>>,
) {
    let addrs: Vec<SocketAddr> = b.addrs.iter().filter_map(|a| a.parse().ok()).collect();
    if addrs.len() != b.addrs.len() {
        warn!(addrs = ?b.addrs, "some balancer addresses are not ip:port; they are skipped");
    }
    let mut client = balancer::client::Client::new(addrs).with_secret(b.secret.clone());
    let id = if b.process_id.is_empty() {
        balancer::client::local_process_id()
    } else {
        b.process_id.clone()
    };
    let port = if b.port == 0 { port } else { b.port };
    let mut tick = tokio::time::interval(Duration::from_millis(b.report_interval_ms.max(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    let mut failing = false;
    let mut reports = 0u32;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => return,
        }
        let push = balancer::registry::StatusPush {
            id: id.clone(),
            zone: zone as i64,
            host: b.host.clone(),
            port: port as i64,
            online: online() as i64,
            used_memory_mb: (rss_bytes() >> 20) as i64,
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: Some(std::process::id()),
            claimed: Vec::new(),
        };
        match client.push_status(&push).await {
            Ok(_) if failing => {
                failing = false;
                info!("status reports to the balancer work again");
            }
            Ok(_) => {}
            Err(e) if !failing => {
                failing = true;
                warn!(error = %e, "status report to the balancer failed; retrying every interval");
            }
            Err(e) => tracing::debug!(error = %e, "status report failed"),
        }
        reports = reports.wrapping_add(1);
        if let Some(alt) = alternative.filter(|_| reports % ALTERNATIVE_EVERY_REPORTS == 1) {
            if let Ok(z) = client.zone(zone).await {
                // Sorted by the balancer: running first, then fewest online.
                let best = z.processes.iter().find(|p| {
                    p.id != id
                        && p.status_name == "running"
                        && !p.draining
                        && p.online + p.reserved < z.process_online_max
                });
                *alt.lock() = best.map(|p| std::net::SocketAddr::new(p.host, p.port).to_string());
            }
        }
    }
}
