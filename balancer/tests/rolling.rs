//! Rolling restart under a steady stream of simulated players: no player is
//! kicked, no pick lands on a dead process.

use crate::common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use balancer::api::ProcessView;
use balancer::fake::FakeServer;
use balancer::rolling::{rolling_restart, Restarter, RollingOptions};
use balancer::server::ServerHandle;
use common::*;
use tokio::sync::Mutex;

/// Restarts in-process fake servers on the same port with a new id.
struct FakeRestarter {
    balancer: Arc<ServerHandle>,
    servers: Arc<Mutex<BTreeMap<u16, FakeServer>>>,
    generation: u32,
    /// Players that were still connected when a server was stopped.
    killed_with_players: Arc<AtomicU64>,
}

impl Restarter for FakeRestarter {
    fn restart(
        &mut self,
        p: &ProcessView,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send {
        self.generation += 1;
        let id = format!("gen{}-{}", self.generation, p.port);
        let servers = self.servers.clone();
        let killed = self.killed_with_players.clone();
        let b = self.balancer.clone();
        let port = p.port;
        async move {
            let old = servers.lock().await.remove(&port).ok_or("no such server")?;
            killed.fetch_add(old.online() as u64, Ordering::SeqCst);
            old.kill();
            // The old listener closes as its task is cancelled: retry the bind
            // until the port is free, with a deadline.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            let new = loop {
                match FakeServer::start(balancer::fake::FakeOptions {
                    balancer: vec![b.addr()],
                    secret: None,
                    zone: ZONE,
                    host: LOCAL,
                    port,
                    id: Some(id.clone()),
                    push_interval_ms: 50,
                    used_memory_mb: 10,
                    stream: false,
                })
                .await
                {
                    Ok(s) => break s,
                    Err(e) if tokio::time::Instant::now() < deadline => {
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(e) => return Err(format!("rebind {port}: {e}")),
                }
            };
            servers.lock().await.insert(port, new);
            Ok(())
        }
    }
}

#[derive(Default)]
struct Tally {
    sessions: AtomicU64,
    kicked: AtomicU64,
    join_failed: AtomicU64,
    refused: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_kicks_no_player() {
    let mut cfg = config(zone(1000, None));
    cfg.reservation_ttl_ms = 2_000;
    // Players pick as fast as they can from one address (127.0.0.1) for
    // the whole restart: lift the per-source pick limit out of the way.
    cfg.pick_rate_per_s = 1_000_000;
    cfg.pick_burst = 1_000_000;
    cfg.probe_interval_ms = 100;
    cfg.probe_timeout_ms = 100;
    let b = Arc::new(balancer(cfg).await);
    let mut c = client(&b);
    let servers = Arc::new(Mutex::new(BTreeMap::new()));
    for i in 0..3 {
        let s = fake(&b, &format!("gen0-{i}"), 0).await;
        servers.lock().await.insert(s.addr().port(), s);
    }
    eventually!(
        "three running",
        3_000,
        zone_view(&mut c)
            .await
            .processes
            .iter()
            .filter(|p| p.status == 101)
            .count()
            == 3
    );

    // Players: pick, connect, play 150 ms, leave; again, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut players = Vec::new();
    for _ in 0..6 {
        let (stop, tally, mut pc) = (stop.clone(), tally.clone(), client(&b));
        players.push(tokio::spawn(async move {
            for _ in 0..10_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(pick) = pc.pick(ZONE).await else {
                    tally.refused.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                match Player::join(SocketAddr::new(pick.host, pick.port)).await {
                    Ok(p) => {
                        tokio::time::sleep(Duration::from_millis(150)).await;
                        if p.connected() {
                            tally.sessions.fetch_add(1, Ordering::SeqCst);
                        } else {
                            tally.kicked.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Err(_) => {
                        tally.join_failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    eventually!(
        "players playing",
        3_000,
        tally.sessions.load(Ordering::SeqCst) >= 6
    );

    let killed_with_players = Arc::new(AtomicU64::new(0));
    let mut restarter = FakeRestarter {
        balancer: b.clone(),
        servers: servers.clone(),
        generation: 0,
        killed_with_players: killed_with_players.clone(),
    };
    let opts = RollingOptions {
        drain_timeout_ms: 10_000,
        ready_timeout_ms: 10_000,
        poll_interval_ms: 50,
    };
    let done = tokio::time::timeout(
        Duration::from_secs(60),
        rolling_restart(&mut c, ZONE, &mut restarter, &opts),
    )
    .await
    .expect("rolling restart finishes")
    .expect("rolling restart succeeds");
    let sessions_during = tally.sessions.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    for p in players {
        tokio::time::timeout(Duration::from_secs(10), p)
            .await
            .expect("player stops")
            .unwrap();
    }

    assert_eq!(done.len(), 3);
    for r in &done {
        assert!(r.new_id.starts_with("gen") && r.new_id != r.old_id, "{r:?}");
    }
    let view = zone_view(&mut c).await;
    let running: Vec<&str> = view
        .processes
        .iter()
        .filter(|p| p.status == 101)
        .map(|p| p.id.as_str())
        .collect();
    assert_eq!(running.len(), 3, "{view:?}");
    assert!(
        running.iter().all(|id| !id.starts_with("gen0-")),
        "all restarted: {running:?}"
    );
    assert_eq!(
        killed_with_players.load(Ordering::SeqCst),
        0,
        "a server was stopped with players on it"
    );
    assert_eq!(tally.kicked.load(Ordering::SeqCst), 0, "players kicked");
    assert_eq!(
        tally.join_failed.load(Ordering::SeqCst),
        0,
        "a pick handed out a process that refused the player"
    );
    assert_eq!(tally.refused.load(Ordering::SeqCst), 0, "picks refused");
    assert!(
        sessions_during > 6,
        "players kept playing during the restart ({sessions_during} sessions)"
    );
}
