//! The balancer's own standby: two real `balancer` processes on 127.0.0.1,
//! each with its embedded hs node in its own directory. Game-server
//! "processes" (in this test process) push to both addresses; the master is
//! SIGKILLed; the standby takes over with the same registry and the client
//! library reaches it without being told. Also: a standby refuses mutations
//! with 503 `not_master`, and the balancer answers as an hs witness.

use crate::common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::time::Duration;
use testkit::ChildGuard;

use balancer::api::{RoleReply, ZoneView};
use balancer::client::{Client, ClientError};
use balancer::fake::{FakeOptions, FakeServer};
use common::*;

/// Longest wait for anything in these tests.
const DEADLINE_MS: u64 = 20_000;

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// One balancer of the pair: its addresses and config file.
struct Side {
    config: PathBuf,
}

fn write_config(
    dir: &Path,
    name: &str,
    http: SocketAddr,
    hs_listen: SocketAddr,
    peer: SocketAddr,
    prefer: bool,
) -> Side {
    let hs_dir = dir.join(format!("{name}-hs"));
    let text = format!(
        r#"
listen = "{http}"
probe_interval_ms = 100
probe_timeout_ms = 200
tick_interval_ms = 50
reservation_ttl_ms = 600000
push_timeout_ms = 5000

[hs]
dir = "{hs_dir}"
listen = "{hs_listen}"
peer = "{peer}"
prefer_master = {prefer}
heartbeat_interval_ms = 20
heartbeat_dead_ticks = 5
segment_bytes = 1048576
retention_bytes_max = 4194304
flush_interval_ms = 10

[[zones]]
id = 1
name = "天上人间"
version = "v1.0.0 20131104"
process_online_max = 100
"#,
        hs_dir = hs_dir.display()
    );
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, text).unwrap();
    Side { config }
}

/// A balancer child process, SIGKILLed (by its own pid) on drop.
fn spawn(side: &Side, log: &Path) -> ChildGuard {
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_balancer"))
        .arg("--config")
        .arg(&side.config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the balancer binary");
    ChildGuard::new(child)
}

fn one(addr: SocketAddr) -> Client {
    Client::new(vec![addr]).with_timeout(Duration::from_secs(2))
}

async fn role(addr: SocketAddr) -> Option<RoleReply> {
    let r = one(addr).request("GET", "/v1/role", None).await.ok()?;
    serde_json::from_slice(&r.body).ok()
}

/// The zone as clients see it, without the push times (they move every push).
async fn registry_view(addr: SocketAddr) -> Option<ZoneView> {
    let mut v = one(addr).zone(ZONE).await.ok()?;
    for p in &mut v.processes {
        p.last_push_ms = 0;
    }
    Some(v)
}

async fn fake_on(addrs: Vec<SocketAddr>, id: &str) -> FakeServer {
    FakeServer::start(FakeOptions {
        balancer: addrs,
        secret: None,
        zone: ZONE,
        host: LOCAL,
        port: 0,
        id: Some(id.to_string()),
        push_interval_ms: 50,
        used_memory_mb: 10,
        // gs-2 reports over a push stream, the others one request per push:
        // both kinds must follow the master.
        stream: id == "gs-2",
    })
    .await
    .expect("fake server binds 127.0.0.1")
}

fn expect_not_master(
    r: Result<impl std::fmt::Debug, ClientError>,
    master: Option<SocketAddr>,
    what: &str,
) {
    match r {
        Err(ClientError::Http {
            status: 503,
            code,
            message,
        }) => {
            assert_eq!(code, "not_master", "{what}: {message}");
            if let Some(m) = master {
                assert!(
                    message.contains(&m.to_string()),
                    "{what}: the answer names the master {m}: {message}"
                );
            }
        }
        other => panic!("{what}: a standby must answer 503 not_master, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_with_the_same_registry() {
    let dir = testkit::temp_dir("balancer-standby-pair");
    let (http_a, http_b, hs_a, hs_b) = (free_addr(), free_addr(), free_addr(), free_addr());
    let a = write_config(dir.path(), "a", http_a, hs_a, hs_b, true);
    let b = write_config(dir.path(), "b", http_b, hs_b, hs_a, false);
    let mut proc_a = spawn(&a, &dir.path().join("a.log"));
    let _proc_b = spawn(&b, &dir.path().join("b.log"));

    eventually!("A master and B standby", DEADLINE_MS, {
        let (ra, rb) = (role(http_a).await, role(http_b).await);
        matches!((&ra, &rb), (Some(ra), Some(rb)) if ra.role == "master" && ra.serving && rb.role == "standby")
    });
    let rb = role(http_b).await.unwrap();
    assert!(!rb.serving);

    // Game servers push to both addresses, the master first.
    let both = vec![http_a, http_b];
    let fakes = [
        fake_on(both.clone(), "gs-1").await,
        fake_on(both.clone(), "gs-2").await,
        fake_on(both.clone(), "gs-3").await,
    ];
    let mut c = Client::new(both.clone()).with_timeout(Duration::from_secs(2));
    eventually!("three running on A", DEADLINE_MS, {
        registry_view(http_a)
            .await
            .is_some_and(|v| v.processes.iter().filter(|p| p.status == 101).count() == 3)
    });
    let _player = Player::join(fakes[0].addr()).await.unwrap();
    // Picks after the player is reported, so no reservation is released by
    // the rise in online (the registry's implicit claim).
    eventually!("A sees the player", DEADLINE_MS, {
        registry_view(http_a)
            .await
            .is_some_and(|v| v.processes.iter().any(|p| p.id == "gs-1" && p.online == 1))
    });
    let picks: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(c.pick(ZONE).await.expect("pick on the master"));
        }
        v
    };
    c.drain("gs-3").await.expect("drain on the master");
    eventually!("A sees the player and the drain", DEADLINE_MS, {
        registry_view(http_a).await.is_some_and(|v| {
            v.processes.iter().any(|p| p.id == "gs-1" && p.online == 1)
                && v.processes
                    .iter()
                    .any(|p| p.id == "gs-3" && p.status == 103)
        })
    });

    // The standby holds the same registry and refuses every mutation.
    eventually!("B's replica equals A's registry", DEADLINE_MS, {
        let (va, vb) = (registry_view(http_a).await, registry_view(http_b).await);
        va.is_some() && va == vb
    });
    let mut only_b = one(http_b);
    expect_not_master(only_b.pick(ZONE).await, Some(http_a), "pick");
    expect_not_master(only_b.drain("gs-1").await, Some(http_a), "drain");
    expect_not_master(only_b.undrain("gs-3").await, Some(http_a), "undrain");
    let push = balancer::registry::StatusPush {
        id: "gs-9".into(),
        zone: ZONE as i64,
        host: "127.0.0.1".into(),
        port: 9,
        online: 0,
        used_memory_mb: 1,
        version: "v".into(),
        pid: None,
        claimed: vec![],
    };
    expect_not_master(only_b.push_status(&push).await, Some(http_a), "push");
    let forget = only_b
        .request("DELETE", "/v1/processes/gs-2", None)
        .await
        .unwrap();
    assert_eq!(forget.status, 503, "forget on a standby");
    assert!(
        registry_view(http_b)
            .await
            .unwrap()
            .processes
            .iter()
            .all(|p| p.id != "gs-9"),
        "a refused push changed the replica"
    );
    let before = registry_view(http_b).await.unwrap();
    assert_eq!(
        before.processes.iter().map(|p| p.reserved).sum::<u32>(),
        5,
        "five reservations replicated"
    );

    // SIGKILL the master. The standby promotes and serves the same registry.
    proc_a.kill();
    eventually!(
        "B serving as master",
        DEADLINE_MS,
        role(http_b)
            .await
            .is_some_and(|r| r.role == "master" && r.serving)
    );
    let after = registry_view(http_b).await.unwrap();
    assert_eq!(
        after, before,
        "the new master's registry differs from what the old one had"
    );
    assert!(
        role(http_b).await.unwrap().epoch > rb.epoch,
        "promotion moves the epoch"
    );

    // Game servers keep pushing (their clients moved to B by themselves).
    let pushed: Vec<u64> = fakes.iter().map(|f| f.pushes_ok()).collect();
    eventually!(
        "pushes accepted by B",
        DEADLINE_MS,
        fakes
            .iter()
            .zip(&pushed)
            .all(|(f, n)| f.pushes_ok() > n + 3)
    );
    // gs-2's stream reopened on B (a stream push is not answered, so its
    // count alone could not tell).
    eventually!("gs-2's push stream open on B", DEADLINE_MS, {
        let m = one(http_b).request("GET", "/metrics", None).await;
        m.is_ok_and(|m| {
            String::from_utf8_lossy(&m.body)
                .lines()
                .any(|l| l.starts_with("balancer_streams_opened_total ") && !l.ends_with(" 0"))
        })
    });
    // A new process registers through the same client code.
    let gs4 = fake_on(both.clone(), "gs-4").await;
    eventually!("gs-4 running on B", DEADLINE_MS, {
        registry_view(http_b).await.is_some_and(|v| {
            v.processes
                .iter()
                .any(|p| p.id == "gs-4" && p.status == 101)
        })
    });
    // The same client object picks on B; reservation tokens are not reused.
    let p = c.pick(ZONE).await.expect("pick after failover");
    assert_eq!(c.current(), Some(http_b));
    assert!(
        picks.iter().all(|q| q.reservation < p.reservation),
        "token reused after failover"
    );
    // The new master's prober runs: a killed game server is stopped.
    gs4.kill();
    eventually!("gs-4 stopped by B's prober", DEADLINE_MS, {
        registry_view(http_b).await.is_some_and(|v| {
            v.processes
                .iter()
                .any(|p| p.id == "gs-4" && p.status == 105)
        })
    });

    // The old master comes back: it follows B and gets B's registry.
    let proc_a2 = spawn(&a, &dir.path().join("a2.log"));
    eventually!(
        "A rejoins as standby",
        DEADLINE_MS,
        role(http_a)
            .await
            .is_some_and(|r| r.role == "standby" && !r.serving)
    );
    eventually!("A's replica equals B's registry", DEADLINE_MS, {
        let (va, vb) = (registry_view(http_a).await, registry_view(http_b).await);
        vb.is_some() && va == vb
    });
    expect_not_master(
        one(http_a).pick(ZONE).await,
        Some(http_b),
        "pick on the rejoined standby",
    );
    // A client that lists the standby first is sent on by its not_master answer.
    let mut c2 = Client::new(vec![http_a, http_b]).with_timeout(Duration::from_secs(2));
    assert_eq!(c2.current(), Some(http_a));
    c2.pick(ZONE)
        .await
        .expect("pick follows not_master to the master");
    assert_eq!(c2.current(), Some(http_b));
    let gs5 = fake_on(vec![http_a, http_b], "gs-5").await;
    eventually!("gs-5 running on B (pushed to A first)", DEADLINE_MS, {
        registry_view(http_b).await.is_some_and(|v| {
            v.processes
                .iter()
                .any(|p| p.id == "gs-5" && p.status == 101)
        })
    });
    // A drain on the master is answered once the connected standby has it.
    let drained = c.drain("gs-5").await.expect("drain on B");
    assert_eq!(drained.status, 103);
    let on_a = registry_view(http_a).await.unwrap();
    assert!(
        on_a.processes
            .iter()
            .any(|p| p.id == "gs-5" && p.status == 103),
        "the drain was answered before the standby applied it"
    );

    // Planned switchover back to A (before upgrading B): nothing is lost.
    let before = registry_view(http_b).await.unwrap();
    let old = one(http_b).switchover().await.expect("switchover on B");
    assert_ne!(old.role, "master", "B still master after its switchover");
    eventually!(
        "A master and serving, B standby",
        DEADLINE_MS,
        matches!(
            (role(http_a).await, role(http_b).await),
            (Some(ra), Some(rb)) if ra.role == "master" && ra.serving && rb.role == "standby" && !rb.serving
        )
    );
    let after = registry_view(http_a).await.unwrap();
    let ids = |v: &balancer::api::ZoneView| -> Vec<(String, u16)> {
        v.processes
            .iter()
            .map(|p| (p.id.clone(), p.status))
            .collect()
    };
    assert_eq!(ids(&after), ids(&before), "the switchover lost a change");
    expect_not_master(
        one(http_b).pick(ZONE).await,
        Some(http_a),
        "pick on B after switchover",
    );
    c2.pick(ZONE).await.expect("clients follow to A");
    assert_eq!(c2.current(), Some(http_a));
    drop(gs5);
    drop(proc_a2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_answers_as_an_hs_witness() {
    let mut cfg = config(zone(10, None));
    cfg.witness_listen = Some("127.0.0.1:0".parse().unwrap());
    // Long enough that the renewal below still holds when the promotion asks.
    cfg.witness_hold_ms = 60_000;
    let b = balancer(cfg).await;
    let w = b.witness_addr().expect("witness bound");
    use hs::proto::witness::Request;
    let t = Duration::from_secs(2);
    // Just started, the witness grants no promotion on silence for one hold
    // period (a master may still run on a lease from its previous life).
    let r = hs::node::witness::ask(
        w,
        Request::Promote {
            pair: 7,
            node: 1,
            epoch: 1,
            dead: false,
            tail: None,
        },
        t,
    )
    .await
    .expect("witness answers");
    assert!(
        !r.granted,
        "a fresh witness granted a promotion on silence: {r:?}"
    );
    // A serving master of pair 7 registers by renewing; a renewal from a stale
    // epoch is refused, and a live master's pair is not handed to another node
    // without the kernel's word that it died — to the requester and to the
    // witness itself, at the address the master gave (here nothing listens).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let master_addr = closed.local_addr().unwrap();
    drop(closed);
    let r = hs::node::witness::ask(
        w,
        Request::Renew {
            pair: 7,
            node: 1,
            epoch: 1,
            addr: Some(master_addr),
            acked: None,
        },
        t,
    )
    .await
    .unwrap();
    assert!(r.granted, "{r:?}");
    assert_eq!((r.epoch, r.holder), (1, 1));
    // The master's next renewal holds its connection open, as a living
    // master's does until the one after is answered.
    let (r, link) = hs::node::witness::renew_held(
        w,
        Request::Renew {
            pair: 7,
            node: 1,
            epoch: 1,
            addr: Some(master_addr),
            acked: None,
        },
        t,
        None,
    )
    .await
    .unwrap();
    assert!(r.granted, "{r:?}");
    let promote = |dead| Request::Promote {
        pair: 7,
        node: 2,
        epoch: 2,
        dead,
        tail: None,
    };
    let r = hs::node::witness::ask(w, promote(false), t).await.unwrap();
    assert!(
        !r.granted,
        "promotion granted while the master renews: {r:?}"
    );
    // Refused to the requester and to the witness, but the master holds its
    // renewal link (a REJECT rule on its host would look the same): no grant.
    let r = hs::node::witness::ask(w, promote(true), t).await.unwrap();
    assert!(
        !r.granted,
        "granted on a refusal while the master holds its link: {r:?}"
    );
    // Its process goes: the link closes, and the confirmed refusal is granted.
    drop(link);
    let t0 = std::time::Instant::now();
    loop {
        let r = hs::node::witness::ask(w, promote(true), t).await.unwrap();
        if r.granted {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no grant after the master's link closed: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = hs::node::witness::ask(
        w,
        Request::Renew {
            pair: 7,
            node: 1,
            epoch: 1,
            addr: Some(master_addr),
            acked: None,
        },
        t,
    )
    .await
    .unwrap();
    assert!(!r.granted, "a stale master's renewal was granted: {r:?}");
    b.shutdown().await;
}

/// With `witness_secret`, the embedded witness answers only requests that
/// prove it: one without the secret (or with another) gets no answer at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_with_a_secret_refuses_an_unauthenticated_request() {
    let mut cfg = config(zone(10, None));
    cfg.witness_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.witness_secret = Some("the pairs' shared secret".into());
    let b = balancer(cfg).await;
    let w = b.witness_addr().expect("witness bound");
    let req = hs::proto::witness::Request::Renew {
        pair: 8,
        node: 1,
        epoch: 1,
        addr: None,
        acked: None,
    };
    let t = Duration::from_secs(2);
    assert_eq!(
        hs::node::witness::ask(w, req, t).await,
        None,
        "answered without the secret"
    );
    let wrong = hs::Secret::new("not the pairs' secret");
    assert_eq!(
        hs::node::witness::ask_with(w, req, t, Some(&wrong)).await,
        None,
        "answered with a wrong secret"
    );
    let right = hs::Secret::new("the pairs' shared secret");
    let r = hs::node::witness::ask_with(w, req, t, Some(&right)).await;
    assert!(r.is_some_and(|r| r.granted), "{r:?}");
    b.shutdown().await;
}

/// In process: a balancer whose standby peer is down does not serve on its
/// own (no witness, no accepted risk): every mutation answers 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_standby_refuses_mutations() {
    let dir = testkit::temp_dir("balancer-standby-lone");
    let mut cfg = config(zone(10, None));
    let mut hs = balancer::config::HsConfig::new(dir.path().join("hs"), free_addr());
    hs.peer = Some(free_addr());
    hs.segment_bytes = 1 << 20;
    hs.heartbeat_interval_ms = 20;
    cfg.hs = Some(hs);
    let b = balancer::server::start_replicated(cfg).await.unwrap();
    let mut c = client(&b);
    let r = role(b.addr()).await.unwrap();
    assert!(!r.serving && r.role != "master", "{r:?}");
    expect_not_master(c.pick(ZONE).await, None, "pick");
    expect_not_master(c.drain("x").await, None, "drain");
    // Reads are served from the (empty) replica.
    assert_eq!(c.zone(ZONE).await.unwrap().size, 0);
    assert!(!b.balancer().is_master());
    b.shutdown().await;
}
