//! Push streams (`GET /v1/status/stream`): a killed process is stopped by
//! its stream closing, not by the next probe round; an open stream spares
//! the prober; bad lines are refused one by one and lose nothing else.

use crate::common;

use std::process::{Command, Stdio};
use std::time::Duration;

use balancer::config::Config;
use balancer::stream::StreamReply;
use common::*;
use testkit::ChildGuard;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Longest wait for anything in these tests.
const DEADLINE_MS: u64 = 10_000;

/// A `balancer-fake-server` child process; SIGKILLed on drop (by its pid).
fn fake_child(b: &balancer::server::ServerHandle, id: &str, stream: bool) -> ChildGuard {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_balancer-fake-server"));
    cmd.args(["--balancer", &b.addr().to_string(), "--zone", "1"])
        .args([
            "--id",
            id,
            "--push-interval-ms",
            "50",
            "--lifetime-ms",
            "60000",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if stream {
        cmd.arg("--stream");
    }
    ChildGuard::new(cmd.spawn().expect("balancer-fake-server starts"))
}

async fn metric(b: &balancer::server::ServerHandle, name: &str) -> u64 {
    let body = client(b)
        .request("GET", "/metrics", None)
        .await
        .expect("metrics")
        .body;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_stream_process_is_stopped_by_its_stream_closing() {
    // Probe rounds a minute apart: only the stream's close can catch it fast.
    let b = balancer(Config {
        probe_interval_ms: 60_000,
        push_timeout_ms: 60_000,
        ..config(zone(100, None))
    })
    .await;
    let mut child = fake_child(&b, "gs-stream", true);
    let mut c = client(&b);
    eventually!(
        "gs-stream running",
        DEADLINE_MS,
        status_of(&mut c, "gs-stream").await == Some(101)
    );
    assert!(metric(&b, "balancer_streams_opened_total").await >= 1);

    let killed = tokio::time::Instant::now();
    child.kill(); // SIGKILL our own child, by its pid; reaped
    eventually!(
        "gs-stream stopped",
        DEADLINE_MS,
        status_of(&mut c, "gs-stream").await == Some(105)
    );
    let took = killed.elapsed();
    // Well under one probe interval: the close probed it at once.
    assert!(
        took < Duration::from_millis(1_000),
        "stopped {took:?} after the kill"
    );
    assert!(metric(&b, "balancer_streams_closed_total").await >= 1);
    assert!(c.pick(ZONE).await.is_err(), "a dead process was picked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_spares_the_prober() {
    // Probe rounds every 50 ms; port checks of streamed processes a minute
    // apart.
    let cfg = || Config {
        probe_interval_ms: 50,
        stream_probe_interval_ms: 60_000,
        ..config(zone(100, None))
    };
    let (by_stream, by_http) = (balancer(cfg()).await, balancer(cfg()).await);
    let _s = fake_child(&by_stream, "gs-s", true);
    let _h = fake_child(&by_http, "gs-h", false);
    for (b, id) in [(&by_stream, "gs-s"), (&by_http, "gs-h")] {
        let mut c = client(b);
        eventually!(
            "both running",
            DEADLINE_MS,
            status_of(&mut c, id).await == Some(101)
        );
    }
    let before = [
        metric(&by_stream, "balancer_probes_total").await,
        metric(&by_http, "balancer_probes_total").await,
    ];
    // Wait until the HTTP-pushing one has had ten probes; count the other's.
    eventually!(
        "ten probes of the HTTP-pushing process",
        DEADLINE_MS,
        metric(&by_http, "balancer_probes_total").await >= before[1] + 10
    );
    let streamed = metric(&by_stream, "balancer_probes_total").await - before[0];
    // At most the one port check a 60 s spread can put in this window.
    assert!(
        streamed <= 1,
        "{streamed} probes of a process its stream vouched for"
    );
}

/// Opens a push stream by hand: the upgrade request, the 101 head.
async fn open_raw(b: &balancer::server::ServerHandle) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(b.addr()).await.unwrap();
    s.write_all(
        b"GET /v1/status/stream HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: balancer-push\r\n\r\n",
    )
    .await
    .unwrap();
    let mut r = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        assert!(!line.is_empty(), "closed before the end of the head");
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    r
}

async fn reply(r: &mut BufReader<TcpStream>) -> StreamReply {
    let mut line = String::new();
    tokio::time::timeout(Duration::from_millis(DEADLINE_MS), r.read_line(&mut line))
        .await
        .expect("a reply line in time")
        .unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

fn push_line(id: &str, port: u16, online: i64) -> String {
    format!(
        "{{\"id\":\"{id}\",\"zone\":1,\"host\":\"127.0.0.1\",\"port\":{port},\"online\":{online},\"used_memory_mb\":5,\"version\":\"v\"}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_are_refused_one_by_one() {
    let b = balancer(Config {
        request_body_bytes_max: 1024,
        ..config(zone(100, None))
    })
    .await;
    let listener = std::net::TcpListener::bind((LOCAL, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut r = open_raw(&b).await;

    r.get_mut().write_all(b"{not json\n").await.unwrap();
    let e = reply(&mut r).await;
    assert_eq!(e.error.as_deref(), Some("malformed_json"), "{e:?}");

    r.get_mut()
        .write_all(push_line("gs-bad", port, -3).as_bytes())
        .await
        .unwrap();
    let e = reply(&mut r).await;
    assert_eq!(e.error.as_deref(), Some("invalid_report"), "{e:?}");
    assert_eq!(e.id.as_deref(), Some("gs-bad"), "the refused line is named");

    // The stream goes on: a good push after two bad ones is applied.
    r.get_mut()
        .write_all(push_line("gs-good", port, 2).as_bytes())
        .await
        .unwrap();
    let ok = reply(&mut r).await;
    assert_eq!((ok.id.as_deref(), ok.status), (Some("gs-good"), Some(101)));
    // The same status again is not news: no line. A drain is, at the next push.
    r.get_mut()
        .write_all(push_line("gs-good", port, 2).as_bytes())
        .await
        .unwrap();
    let mut c = client(&b);
    c.drain("gs-good").await.unwrap();
    r.get_mut()
        .write_all(push_line("gs-good", port, 2).as_bytes())
        .await
        .unwrap();
    let drained = reply(&mut r).await;
    assert_eq!(
        (drained.status, drained.draining),
        (Some(103), Some(true)),
        "{drained:?}"
    );

    // A line over request_body_bytes_max ends the stream, with a reason.
    let long = format!("{}\n", "x".repeat(2048));
    r.get_mut().write_all(long.as_bytes()).await.unwrap();
    let e = reply(&mut r).await;
    assert_eq!(e.error.as_deref(), Some("line_too_long"), "{e:?}");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_millis(DEADLINE_MS), r.read_to_end(&mut rest))
        .await
        .expect("the balancer closes the stream");
    assert!(n.is_err() || rest.is_empty(), "nothing after line_too_long");

    // Nothing but gs-good reached the registry, with its last good values.
    let v = zone_view(&mut c).await;
    assert_eq!(v.processes.len(), 1, "{v:?}");
    assert_eq!(
        (v.processes[0].id.as_str(), v.processes[0].online),
        ("gs-good", 2)
    );
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_needs_the_upgrade_and_the_secret() {
    let b = balancer(Config {
        secret: Some("s3cret".into()),
        ..config(zone(100, None))
    })
    .await;
    let mut c = client(&b).with_secret(Some("s3cret".into()));
    let plain = c.request("GET", "/v1/status/stream", None).await.unwrap();
    assert_eq!(plain.status, 400, "no Upgrade header");
    assert!(String::from_utf8_lossy(&plain.body).contains("bad_upgrade"));

    let mut no_secret = balancer::client::PushStream::new(client(&b));
    let push = balancer::registry::StatusPush {
        id: "gs-x".into(),
        zone: 1,
        host: "127.0.0.1".into(),
        port: 9,
        online: 0,
        used_memory_mb: 1,
        version: String::new(),
        pid: None,
        claimed: vec![],
    };
    match no_secret.push(&push).await {
        Err(balancer::client::ClientError::Http { status: 401, .. }) => {}
        other => panic!("expected 401, got {other:?}"),
    }
    let mut with_secret =
        balancer::client::PushStream::new(client(&b).with_secret(Some("s3cret".into())));
    with_secret
        .push(&push)
        .await
        .expect("stream opens with the secret");
    eventually!(
        "gs-x registered",
        DEADLINE_MS,
        status_of(&mut c, "gs-x").await.is_some()
    );
}
