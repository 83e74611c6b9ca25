//! Probes, lists, picks and drain against real TCP listeners on 127.0.0.1.

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use balancer::client::ClientError;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_process_is_stopped_within_one_second_at_defaults_and_never_picked() {
    // Default probe and push timers: the bound the issue asks for.
    let b = balancer(config(zone(1000, None))).await;
    let mut c = client(&b);
    let a = fake(&b, "proc-a", 0).await;
    let _alive = fake(&b, "proc-b", 0).await;
    eventually!(
        "both running",
        3_000,
        zone_view(&mut c)
            .await
            .processes
            .iter()
            .filter(|p| p.status == 101)
            .count()
            == 2
    );

    let killed_at = Instant::now();
    a.kill();
    eventually!(
        "proc-a stopped",
        3_000,
        status_of(&mut c, "proc-a").await == Some(105)
    );
    let detected_in = killed_at.elapsed();
    assert!(
        detected_in < Duration::from_millis(1000),
        "dead process detected after {detected_in:?}, bound is 1 s"
    );

    for _ in 0..50 {
        let p = c.pick(ZONE).await.expect("proc-b has seats");
        assert_eq!(p.id, "proc-b", "a stopped process was handed out");
    }
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_that_stops_pushing_is_stopped_even_if_it_accepts_connections() {
    let mut cfg = config(zone(1000, None));
    cfg.push_timeout_ms = 300;
    let b = balancer(cfg).await;
    let mut c = client(&b);
    // Pushes once, by hand, then goes silent; its listener stays open.
    let listener = std::net::TcpListener::bind((LOCAL, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let push = balancer::registry::StatusPush {
        id: "hung".into(),
        zone: ZONE as i64,
        host: "127.0.0.1".into(),
        port: port as i64,
        online: 0,
        used_memory_mb: 0,
        version: String::new(),
        pid: None,
        claimed: vec![],
    };
    assert_eq!(c.push_status(&push).await.unwrap().status, 101);
    eventually!(
        "hung stopped",
        3_000,
        status_of(&mut c, "hung").await == Some(105)
    );
    let err = c.pick(ZONE).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Http { status: 503, .. }),
        "{err}"
    );
    drop(listener);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_picks_spread_by_reservation_and_never_overfill() {
    let mut cfg = config(zone(10, None));
    cfg.pick_wait_ms = 0;
    let b = balancer(cfg).await;
    let mut c = client(&b);
    let _f: Vec<_> = futures_free_join(&b, &["p1", "p2", "p3"]).await;
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

    // 30 clients race for 30 seats at once, each on its own connection.
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let mut c = client(&b);
        tasks.push(tokio::spawn(async move { c.pick(ZONE).await }));
    }
    let mut per_process = BTreeMap::new();
    for t in tasks {
        let p = t.await.unwrap().expect("a seat is free");
        *per_process.entry(p.id).or_insert(0) += 1;
    }
    assert_eq!(
        per_process,
        BTreeMap::from([
            ("p1".to_string(), 10),
            ("p2".to_string(), 10),
            ("p3".to_string(), 10)
        ])
    );
    match c.pick(ZONE).await {
        Err(ClientError::Http {
            status: 503, code, ..
        }) => assert_eq!(code, "zone_full"),
        other => panic!("31st pick should be refused, got {other:?}"),
    }
    b.shutdown().await;
}

async fn futures_free_join(
    b: &balancer::server::ServerHandle,
    ids: &[&str],
) -> Vec<balancer::fake::FakeServer> {
    let mut out = Vec::new();
    for id in ids {
        out.push(fake(b, id, 0).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_sorted_running_first_then_online_in_json_and_xml() {
    let b = balancer(config(zone(1000, None))).await;
    let mut c = client(&b);
    let busy = fake(&b, "busy", 0).await;
    let idle = fake(&b, "idle", 0).await;
    let dead = fake(&b, "dead", 0).await;
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
    let mut players = Vec::new();
    for _ in 0..3 {
        players.push(Player::join(busy.addr()).await.unwrap());
    }
    players.push(Player::join(idle.addr()).await.unwrap());
    dead.kill();
    eventually!("sorted", 3_000, {
        let ids: Vec<(String, u16, u32)> = zone_view(&mut c)
            .await
            .processes
            .into_iter()
            .map(|p| (p.id, p.status, p.online))
            .collect();
        ids == [
            ("idle".to_string(), 101, 1),
            ("busy".to_string(), 101, 3),
            ("dead".to_string(), 105, 0),
        ]
    });
    let xml = c
        .request("GET", "/v1/zones/1?format=xml", None)
        .await
        .unwrap();
    assert_eq!(xml.status, 200);
    assert!(xml.content_type.unwrap().starts_with("application/xml"));
    let text = String::from_utf8(xml.body).unwrap();
    let idle_line = format!("<process id=\"idle\" host=\"127.0.0.1\" port=\"{}\" online=\"1\" usedMemory=\"10\" status=\"101\"/>", idle.addr().port());
    assert!(
        text.contains("<server id=\"1\" name=\"天上人间\" version=\"v1.0.0 20131104\" size=\"3\">"),
        "{text}"
    );
    let (i, j, k) = (
        text.find("id=\"idle\"").unwrap(),
        text.find("id=\"busy\"").unwrap(),
        text.find("id=\"dead\"").unwrap(),
    );
    assert!(i < j && j < k, "XML order: {text}");
    assert!(text.contains(&idle_line), "{text}");
    let all = c
        .request("GET", "/v1/servers?format=xml", None)
        .await
        .unwrap();
    assert!(String::from_utf8(all.body)
        .unwrap()
        .starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<servers>"));
    let zones = c.zones().await.unwrap();
    assert_eq!(
        (zones[0].size, zones[0].running, zones[0].online),
        (3, 2, 4)
    );
    let metrics =
        String::from_utf8(c.request("GET", "/metrics", None).await.unwrap().body).unwrap();
    assert!(
        metrics.contains("balancer_processes{zone=\"1\",status=\"stopped\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("balancer_online{zone=\"1\"} 4"),
        "{metrics}"
    );
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_gets_no_picks_reports_empty_and_kicks_nobody() {
    let b = balancer(config(zone(1000, None))).await;
    let mut c = client(&b);
    let a = fake(&b, "a", 0).await;
    let _other = fake(&b, "other", 0).await;
    eventually!(
        "both running",
        3_000,
        zone_view(&mut c)
            .await
            .processes
            .iter()
            .filter(|p| p.status == 101)
            .count()
            == 2
    );
    let p1 = Player::join(a.addr()).await.unwrap();
    let p2 = Player::join(a.addr()).await.unwrap();
    eventually!(
        "a reports 2",
        3_000,
        view(&mut c, "a").await.map(|v| v.online) == Some(2)
    );

    let v = c.drain("a").await.unwrap();
    assert_eq!((v.status, v.drained), (103, false));
    let drained_at = v.last_push_ms;
    for _ in 0..20 {
        assert_eq!(
            c.pick(ZONE).await.unwrap().id,
            "other",
            "draining process picked"
        );
    }
    // Pushes keep it draining; players stay: wait for a push after the drain.
    eventually!(
        "a push after the drain",
        3_000,
        view(&mut c, "a")
            .await
            .is_some_and(|v| v.last_push_ms > drained_at)
    );
    assert_eq!(status_of(&mut c, "a").await, Some(103));
    assert!(p1.connected() && p2.connected(), "drain kicked a player");
    drop(p1);
    drop(p2);
    eventually!(
        "a drained",
        3_000,
        view(&mut c, "a")
            .await
            .is_some_and(|v| v.drained && v.online == 0)
    );
    let metrics =
        String::from_utf8(c.request("GET", "/metrics", None).await.unwrap().body).unwrap();
    assert!(
        metrics.contains("balancer_drains_complete_total 1"),
        "{metrics}"
    );
    let v = c.undrain("a").await.unwrap();
    assert_eq!(v.status, 101);
    b.shutdown().await;
}

/// Records encoded ops, as the hs publisher will.
#[derive(Default)]
struct RecordingSink {
    ops: parking_lot::Mutex<Vec<Vec<u8>>>,
    /// The entity records hs would carry.
    records: parking_lot::Mutex<Vec<balancer::standby::Record>>,
}

/// Ops the recording keeps at most; a run here makes a few hundred.
const RECORDED_OPS_MAX: usize = 100_000;

impl balancer::server::OpSink for RecordingSink {
    fn applied(
        &self,
        op: &balancer::registry::RegistryOp,
        out: &balancer::registry::Outcome,
        registry: &balancer::registry::Registry,
    ) -> Result<(), balancer::server::NotMaster> {
        let mut ops = self.ops.lock();
        assert!(ops.len() < RECORDED_OPS_MAX, "recording sink overflow");
        ops.push(op.encode());
        let changes = balancer::registry::Changes::of(op, out);
        self.records.lock().extend(balancer::standby::records(
            &changes,
            registry,
            op.now_ms().unwrap_or_default(),
        ));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_published_ops_rebuilds_the_same_registry() {
    let cfg = config(zone(3, None));
    let sink = std::sync::Arc::new(RecordingSink::default());
    let b = balancer::server::start(cfg.clone(), sink.clone())
        .await
        .unwrap();
    let mut c = client(&b);
    let a = fake(&b, "a", 0).await;
    let _b2 = fake(&b, "b", 0).await;
    eventually!(
        "both running",
        3_000,
        zone_view(&mut c)
            .await
            .processes
            .iter()
            .filter(|p| p.status == 101)
            .count()
            == 2
    );
    let _player = Player::join(a.addr()).await.unwrap();
    for _ in 0..4 {
        c.pick(ZONE).await.unwrap();
    }
    c.drain("b").await.unwrap();
    a.kill();
    eventually!(
        "a stopped",
        3_000,
        status_of(&mut c, "a").await == Some(105)
    );
    let master = b.balancer().clone();
    b.shutdown().await;

    let mut standby = balancer::registry::Registry::new(cfg.zone_specs(), cfg.limits());
    let ops = sink.ops.lock().clone();
    assert!(ops.len() > 10, "ops were published: {}", ops.len());
    for bytes in &ops {
        let op = balancer::registry::RegistryOp::decode(bytes).unwrap();
        standby.apply(&op).unwrap();
    }
    master.read(|m| assert_eq!(m, &standby, "standby diverged from master"));

    // The entity records the hs sink publishes rebuild the same registry.
    let mut replica = balancer::registry::Registry::new(cfg.zone_specs(), cfg.limits());
    for (key, op, value) in sink.records.lock().iter() {
        let e = balancer::standby::decode(key, *op, value).unwrap();
        balancer::standby::load(&mut replica, e).unwrap();
    }
    master.read(|m| assert_eq!(m, &replica, "entity replica diverged from master"));
}
