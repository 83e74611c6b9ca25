//! What a hostile client cannot do: hold connections with a slow request
//! head, open more connections than `connections_max`, flood picks, or find
//! a public balancer without a secret.

use crate::common;

use std::time::Duration;

use balancer::api::ErrorBody;
use balancer::client::{Client, ClientError};
use balancer::server::StartError;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until EOF or a reset; None if the connection is still open at
/// `deadline_ms`.
async fn closed_within(s: &mut TcpStream, deadline_ms: u64) -> Option<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(deadline_ms);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_head_is_cut_off_at_the_timeout() {
    let mut cfg = config(zone(10, None));
    cfg.request_head_timeout_ms = 300;
    let b = balancer(cfg).await;

    // Slowloris: a head that never ends, one byte every 50 ms.
    let mut s = TcpStream::connect(b.addr()).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut closed = false;
    for _ in 0..100 {
        // At most 100 x 50 ms = 5 s: far past the 300 ms timeout.
        if s.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    let took = started.elapsed();
    assert!(closed, "a slow head held its connection for {took:?}");
    assert!(
        took < Duration::from_millis(2_000),
        "closed only after {took:?} (timeout 300 ms)"
    );

    // A connection that sends nothing at all is closed too.
    let mut idle = TcpStream::connect(b.addr()).await.unwrap();
    assert!(
        closed_within(&mut idle, 2_000).await.is_some(),
        "a silent connection stayed open"
    );

    // Clients that send their requests are served.
    let mut c = client(&b);
    assert_eq!(
        c.request("GET", "/healthz", None).await.unwrap().status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_body_is_cut_off_at_the_timeout() {
    let mut cfg = config(zone(10, None));
    cfg.request_body_timeout_ms = 300;
    let b = balancer(cfg).await;
    let mut s = TcpStream::connect(b.addr()).await.unwrap();
    s.write_all(b"POST /v1/status HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut closed = false;
    for _ in 0..100 {
        // One body byte every 50 ms: at most 5 s, far past the 300 ms timeout.
        if s.write_all(b" ").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    let took = started.elapsed();
    assert!(closed, "a slow body held its connection for {took:?}");
    assert!(
        took < Duration::from_millis(2_000),
        "closed only after {took:?} (timeout 300 ms)"
    );
    let mut c = client(&b);
    assert_eq!(
        c.request("GET", "/healthz", None).await.unwrap().status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_get_503_and_are_closed() {
    let mut cfg = config(zone(10, None));
    cfg.connections_max = 2;
    let b = balancer(cfg).await;
    // Two keep-alive clients hold the two slots.
    let mut one = client(&b);
    let mut two = client(&b);
    assert_eq!(
        one.request("GET", "/healthz", None).await.unwrap().status,
        200
    );
    assert_eq!(
        two.request("GET", "/healthz", None).await.unwrap().status,
        200
    );

    let mut third = TcpStream::connect(b.addr()).await.unwrap();
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let answer = closed_within(&mut third, 5_000)
        .await
        .expect("the balancer closes a connection over the cap");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 503"), "{text:?}");
    assert!(text.contains("too_many_connections"), "{text:?}");
    assert!(
        text.contains("connections_max"),
        "names the limit: {text:?}"
    );

    // A slot frees when a client leaves; a new client gets it.
    drop(one);
    let mut four = client(&b);
    eventually!(
        "a freed slot is reused",
        5_000,
        matches!(four.request("GET", "/healthz", None).await, Ok(r) if r.status == 200)
    );
    assert_eq!(
        two.request("GET", "/healthz", None).await.unwrap().status,
        200
    );
}

fn rate_limited(r: &Result<balancer::api::PickReply, ClientError>) -> bool {
    matches!(r, Err(ClientError::Http { status: 429, code, .. }) if code == "rate_limited")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pick_flood_from_one_address_gets_429() {
    let mut cfg = config(zone(1000, None));
    cfg.pick_rate_per_s = 1;
    cfg.pick_burst = 5;
    let b = balancer(cfg).await;
    let _gs = fake(&b, "gs-1", 0).await;
    let mut c = client(&b);
    eventually!(
        "gs-1 running",
        3_000,
        status_of(&mut c, "gs-1").await == Some(101)
    );
    let mut ok = 0;
    let mut limited = 0;
    for _ in 0..20 {
        let r = c.pick(ZONE).await;
        if r.is_ok() {
            ok += 1;
        } else if rate_limited(&r) {
            limited += 1;
        } else {
            panic!("unexpected answer {r:?}");
        }
    }
    // The burst, plus at most a token or two refilled during the loop.
    assert!((5..=7).contains(&ok), "{ok} picks answered, burst 5 at 1/s");
    assert_eq!(ok + limited, 20);
    let mut raw = TcpStream::connect(b.addr()).await.unwrap();
    raw.write_all(
        format!("POST /v1/zones/{ZONE}/pick HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let answer = closed_within(&mut raw, 5_000)
        .await
        .expect("answered and closed");
    let text = String::from_utf8_lossy(&answer).to_string();
    assert!(text.starts_with("HTTP/1.1 429"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("\r\nretry-after: "),
        "429 says when to retry: {text}"
    );
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let err: ErrorBody = serde_json::from_str(body).unwrap();
    assert!(err.message.contains("pick_rate_per_s"), "{}", err.message);
    let reserved = zone_view(&mut c).await.processes[0].reserved;
    assert_eq!(reserved as usize, ok, "refused picks hold no seat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_pick_limit_holds_for_every_source_together() {
    let mut cfg = config(zone(1000, None));
    cfg.pick_global_rate_per_s = 1;
    cfg.pick_global_burst = 3;
    cfg.pick_token = Some("login-server".into());
    let b = balancer(cfg).await;
    let _gs = fake(&b, "gs-1", 0).await;
    let mut anonymous = client(&b);
    eventually!(
        "gs-1 running",
        3_000,
        status_of(&mut anonymous, "gs-1").await == Some(101)
    );
    // With a pick token configured, a pick without it is refused (and
    // spends nothing).
    let r = anonymous.pick(ZONE).await;
    assert!(
        matches!(&r, Err(ClientError::Http { status: 401, .. })),
        "{r:?}"
    );
    let mut login = client(&b).with_secret(Some("login-server".into()));
    let results: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..10 {
            v.push(login.pick(ZONE).await);
        }
        v
    };
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert!((3..=4).contains(&ok), "{ok} picks answered, global burst 3");
    assert!(results.iter().all(|r| r.is_ok() || rate_limited(r)));
}

#[tokio::test]
async fn a_public_listen_address_without_a_secret_is_refused() {
    let mut cfg = config(zone(10, None));
    cfg.listen = "0.0.0.0:0".parse().unwrap();
    let err = balancer::server::start(cfg.clone(), std::sync::Arc::new(balancer::server::NoSink))
        .await
        .expect_err("a public balancer without a secret does not start");
    let msg = err.to_string();
    assert!(matches!(err, StartError::Config(_)), "{msg}");
    assert!(
        msg.contains("secret") && msg.contains("insecure_no_secret"),
        "the operator is told both ways out: {msg}"
    );
    // Either way out is accepted (checked without binding a public port).
    let mut with_secret = cfg.clone();
    with_secret.secret = Some("s".into());
    with_secret.validate().unwrap();
    let mut insecure = cfg.clone();
    insecure.insecure_no_secret = true;
    insecure.validate().unwrap();
    // Loopback needs neither.
    config(zone(10, None)).validate().unwrap();
    let mut v6 = config(zone(10, None));
    v6.listen = "[::1]:0".parse().unwrap();
    v6.validate().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_also_opens_picks_when_a_pick_token_is_set() {
    let mut cfg = config(zone(1000, None));
    cfg.secret = Some("operator".into());
    cfg.pick_token = Some("login-server".into());
    let b = balancer(cfg).await;
    let _gs = fake(&b, "gs-1", 0).await;
    let mut op = Client::new(vec![b.addr()]).with_secret(Some("operator".into()));
    eventually!(
        "gs-1 running",
        3_000,
        status_of(&mut op, "gs-1").await == Some(101)
    );
    op.pick(ZONE).await.unwrap();
    let mut wrong = Client::new(vec![b.addr()]).with_secret(Some("guess".into()));
    assert!(matches!(
        wrong.pick(ZONE).await,
        Err(ClientError::Http { status: 401, .. })
    ));
    // The pick token opens picks, not operator changes.
    let mut login = Client::new(vec![b.addr()]).with_secret(Some("login-server".into()));
    login.pick(ZONE).await.unwrap();
    assert!(matches!(
        login.drain("gs-1").await,
        Err(ClientError::Http { status: 401, .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_push_stream_is_closed_at_the_timeout() {
    let mut cfg = config(zone(10, None));
    cfg.request_head_timeout_ms = 300;
    let b = balancer(cfg).await;
    let mut s = TcpStream::connect(b.addr()).await.unwrap();
    s.write_all(
        b"GET /v1/status/stream HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: balancer-push\r\n\r\n",
    )
    .await
    .unwrap();
    // The 101 first (as `PushStream` waits for it: hyper, flushing
    // pipelined answers together, does not send it when the client's
    // first line came in the same read as the upgrade request).
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 4096, "head too long");
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut byte))
            .await
            .expect("the 101 arrives")
            .unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    let started = tokio::time::Instant::now();
    // A line that never ends.
    s.write_all(b"{\"id\":").await.unwrap();
    let got = closed_within(&mut s, 3_000)
        .await
        .expect("a silent stream is closed");
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("stream_idle"), "{text}");
    assert!(started.elapsed() < Duration::from_millis(2_000));
}
