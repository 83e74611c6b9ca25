//! Spawn when full: real child processes from the zone's command template.

use crate::common;

use balancer::client::ClientError;
use balancer::config::SpawnConfig;
use common::*;

fn fake_server_template(zone_arg: &str) -> Vec<String> {
    [
        env!("CARGO_BIN_EXE_balancer-fake-server"),
        "--balancer",
        "{balancer}",
        "--zone",
        zone_arg,
        "--host",
        "{host}",
        "--port",
        "{port}",
        "--push-interval-ms",
        "100",
        "--lifetime-ms",
        "60000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn spawn_config(command: Vec<String>) -> SpawnConfig {
    let port_min = free_port();
    SpawnConfig {
        command,
        host: LOCAL,
        port_min,
        port_max: port_min.saturating_add(50),
    }
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet waited for) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_zone_spawns_a_real_process_that_reports_and_is_handed_out() {
    let spawn = spawn_config(fake_server_template("{zone}"));
    let range = spawn.port_min..=spawn.port_max;
    let mut cfg = config(zone(1, Some(spawn)));
    cfg.pick_wait_ms = 10_000;
    cfg.spawned_processes_max = 1;
    let b = balancer(cfg).await;
    let mut c = client(&b);
    let _first = fake(&b, "first", 0).await;
    eventually!(
        "first running",
        3_000,
        status_of(&mut c, "first").await == Some(101)
    );
    assert_eq!(c.pick(ZONE).await.unwrap().id, "first");

    // Full: this pick starts a child and waits for it to report.
    let picked = c
        .pick(ZONE)
        .await
        .expect("the spawned process is handed out");
    assert_ne!(picked.id, "first");
    assert!(
        range.contains(&picked.port),
        "port {} not from the spawn range",
        picked.port
    );
    let v = c.process(&picked.id).await.unwrap();
    assert!(v.spawned && v.status == 101, "{v:?}");
    let pids = b.balancer().spawned_pids();
    assert_eq!(pids.len(), 1);
    assert_eq!(
        v.pid,
        Some(pids[0]),
        "the child reported the pid we spawned"
    );
    // A real process listens there.
    let _player = Player::join(std::net::SocketAddr::new(picked.host, picked.port))
        .await
        .unwrap();

    // Both full and the spawn limit reached: a clear 503 at once.
    match c.pick(ZONE).await {
        Err(ClientError::Http {
            status: 503,
            message,
            ..
        }) => assert!(message.contains("spawned_processes_max"), "{message}"),
        other => panic!("expected 503, got {other:?}"),
    }
    let pid = pids[0];
    b.shutdown().await;
    eventually!("child killed on exit", 5_000, !alive(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawned_process_that_never_reports_is_reaped() {
    // It reports zone 999, which does not exist: every push is refused.
    let spawn = spawn_config(fake_server_template("999"));
    let mut cfg = config(zone(1, Some(spawn)));
    cfg.pick_wait_ms = 0;
    cfg.spawn_report_timeout_ms = 500;
    let b = balancer(cfg).await;
    let mut c = client(&b);
    let err = c.pick(ZONE).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Http { status: 503, .. }),
        "{err}"
    );
    let pids = b.balancer().spawned_pids();
    assert_eq!(pids.len(), 1, "one child started");
    let v = zone_view(&mut c).await;
    assert_eq!(v.processes[0].status, 102, "marked starting: {v:?}");
    eventually!(
        "placeholder removed",
        5_000,
        zone_view(&mut c).await.processes.is_empty()
    );
    eventually!("child killed", 5_000, !alive(pids[0]));
    eventually!(
        "child forgotten",
        5_000,
        b.balancer().spawned_pids().is_empty()
    );
    let metrics =
        String::from_utf8(c.request("GET", "/metrics", None).await.unwrap().body).unwrap();
    assert!(metrics.contains("balancer_reaped_total 1"), "{metrics}");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_template_fails_cleanly_and_is_rate_limited() {
    let spawn = spawn_config(vec!["/nonexistent/balancer-test-binary".into()]);
    let mut cfg = config(zone(1, Some(spawn)));
    cfg.pick_wait_ms = 0;
    cfg.spawn_interval_ms = 60_000;
    let b = balancer(cfg).await;
    let mut c = client(&b);
    for _ in 0..5 {
        let err = c.pick(ZONE).await.unwrap_err();
        assert!(
            matches!(err, ClientError::Http { status: 503, .. }),
            "{err}"
        );
    }
    // Wait until the failed attempt is counted, then check it was the only one.
    let mut metrics: String;
    eventually!("the failed spawn to be counted", 3_000, {
        metrics =
            String::from_utf8(c.request("GET", "/metrics", None).await.unwrap().body).unwrap();
        !metrics.contains("balancer_spawns_failed_total 0")
    });
    assert!(
        metrics.contains("balancer_spawns_failed_total 1"),
        "one attempt, then rate limited: {metrics}"
    );
    b.shutdown().await;
}
