//! Every bad input gets a clear 4xx and leaves the registry as it was.

use crate::common;

use balancer::api::ErrorBody;
use balancer::client::Client;
use common::*;
use serde_json::json;

async fn snapshot(c: &mut Client) -> String {
    let r = c.request("GET", "/v1/servers", None).await.unwrap();
    assert_eq!(r.status, 200);
    String::from_utf8(r.body).unwrap()
}

fn good_push(port: u16) -> serde_json::Value {
    json!({"id": "00:16:3E:00:14:A6-9894", "zone": 1, "host": "127.0.0.1", "port": port,
           "online": 4, "used_memory_mb": 57, "version": "v1"})
}

async fn expect_error(
    c: &mut Client,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    status: u16,
    code: &str,
) -> String {
    let r = c.request(method, path, body).await.unwrap();
    assert_eq!(
        r.status,
        status,
        "{method} {path}: {}",
        String::from_utf8_lossy(&r.body)
    );
    let err: ErrorBody = serde_json::from_slice(&r.body)
        .unwrap_or_else(|_| panic!("JSON error body: {:?}", String::from_utf8_lossy(&r.body)));
    assert_eq!(err.error, code, "{}", err.message);
    assert!(!err.message.is_empty());
    err.message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_absurd_pushes_are_refused_without_damage() {
    let mut cfg = config(zone(1000, None));
    cfg.push_rate_per_s = 1000;
    cfg.push_burst = 1000;
    let b = balancer(cfg).await;
    let mut c = client(&b);
    let listener = std::net::TcpListener::bind((LOCAL, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let ok = c
        .request(
            "POST",
            "/v1/status",
            Some(&serde_json::to_vec(&good_push(port)).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    let before = snapshot(&mut c).await;

    let with = |k: &str, v: serde_json::Value| {
        let mut p = good_push(port);
        p[k] = v;
        serde_json::to_vec(&p).unwrap()
    };
    let cases: Vec<(Vec<u8>, u16, &str, &str)> = vec![
        (
            b"{not json".to_vec(),
            400,
            "malformed_json",
            "not valid JSON",
        ),
        (b"".to_vec(), 400, "malformed_json", "not valid JSON"),
        (b"[1,2]".to_vec(), 400, "malformed_json", "not valid JSON"),
        (
            with("online", json!("four")),
            400,
            "malformed_json",
            "not valid JSON",
        ),
        (
            with("surprise", json!(1)),
            400,
            "malformed_json",
            "unknown field",
        ),
        (
            with("online", json!(-1)),
            400,
            "invalid_report",
            "online -1",
        ),
        (
            with("online", json!(1e12)),
            400,
            "malformed_json",
            "not valid JSON",
        ),
        (with("port", json!(0)), 400, "invalid_report", "port 0"),
        (
            with("port", json!(70000)),
            400,
            "invalid_report",
            "port 70000",
        ),
        (
            with("host", json!("not-an-address")),
            400,
            "invalid_report",
            "not an IPv4 or IPv6 address",
        ),
        (
            with("host", json!("0.0.0.0")),
            400,
            "invalid_report",
            "cannot be connected",
        ),
        (
            with("used_memory_mb", json!(-3)),
            400,
            "invalid_report",
            "used_memory_mb -3",
        ),
        (with("id", json!("")), 400, "invalid_report", "process id"),
        (
            with("id", json!("<script>")),
            400,
            "invalid_report",
            "character",
        ),
        (with("zone", json!(-1)), 400, "invalid_report", "zone -1"),
        (
            with("zone", json!(42)),
            404,
            "unknown_zone",
            "unknown zone 42",
        ),
    ];
    for (body, status, code, needle) in cases {
        let msg = expect_error(&mut c, "POST", "/v1/status", Some(&body), status, code).await;
        assert!(
            msg.contains(needle),
            "{msg:?} should mention {needle:?} (body {})",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(
            snapshot(&mut c).await,
            before,
            "registry changed by {}",
            String::from_utf8_lossy(&body)
        );
    }
    // A body over request_body_bytes_max is refused before parsing.
    let huge = vec![b' '; 64 * 1024];
    let r = c.request("POST", "/v1/status", Some(&huge)).await.unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(snapshot(&mut c).await, before);

    let mut c = client(&b);
    expect_error(
        &mut c,
        "POST",
        "/v1/zones/42/pick",
        None,
        404,
        "unknown_zone",
    )
    .await;
    expect_error(&mut c, "POST", "/v1/zones/abc/pick", None, 400, "bad_zone").await;
    expect_error(&mut c, "GET", "/v1/zones/-1", None, 400, "bad_zone").await;
    expect_error(
        &mut c,
        "GET",
        "/v1/zones/1?format=yaml",
        None,
        400,
        "bad_format",
    )
    .await;
    expect_error(
        &mut c,
        "GET",
        "/v1/processes/nobody",
        None,
        404,
        "unknown_process",
    )
    .await;
    expect_error(
        &mut c,
        "POST",
        "/v1/processes/nobody/drain",
        None,
        404,
        "unknown_process",
    )
    .await;
    expect_error(
        &mut c,
        "POST",
        "/v1/processes/a%20b/drain",
        None,
        400,
        "bad_process_id",
    )
    .await;
    expect_error(&mut c, "GET", "/v1/nothing", None, 404, "not_found").await;
    assert_eq!(snapshot(&mut c).await, before);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_pushes_is_rate_limited_per_process() {
    let mut cfg = config(zone(1000, None));
    cfg.push_rate_per_s = 5;
    cfg.push_burst = 10;
    let b = balancer(cfg).await;
    let mut c = client(&b);
    let body = serde_json::to_vec(&good_push(4000)).unwrap();
    let mut codes = Vec::new();
    for _ in 0..50 {
        codes.push(
            c.request("POST", "/v1/status", Some(&body))
                .await
                .unwrap()
                .status,
        );
    }
    let accepted = codes.iter().filter(|s| **s == 200).count();
    let limited = codes.iter().filter(|s| **s == 429).count();
    assert!(
        (10..=12).contains(&accepted),
        "burst of 10 (+ refill) accepted, got {accepted}: {codes:?}"
    );
    assert_eq!(accepted + limited, 50, "{codes:?}");
    let r = c.request("POST", "/v1/status", Some(&body)).await.unwrap();
    assert_eq!(r.status, 429);
    let err: ErrorBody = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(err.error, "rate_limited");
    // Another process is not affected by the flood.
    let mut other = good_push(4001);
    other["id"] = json!("other-1");
    let r = c
        .request(
            "POST",
            "/v1/status",
            Some(&serde_json::to_vec(&other).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let metrics =
        String::from_utf8(c.request("GET", "/metrics", None).await.unwrap().body).unwrap();
    assert!(
        metrics.contains(&format!(
            "balancer_pushes_rate_limited_total {}",
            limited + 1
        )),
        "{metrics}"
    );
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_and_drains_need_the_secret_when_configured() {
    let mut cfg = config(zone(1000, None));
    cfg.secret = Some("s3cret".into());
    let b = balancer(cfg).await;
    // A real listener, so the prober keeps the process running while we drain it.
    let game = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let body = serde_json::to_vec(&good_push(game.local_addr().unwrap().port())).unwrap();
    let mut anonymous = client(&b);
    expect_error(
        &mut anonymous,
        "POST",
        "/v1/status",
        Some(&body),
        401,
        "unauthorized",
    )
    .await;
    let mut wrong = client(&b).with_secret(Some("s3creT".into()));
    expect_error(
        &mut wrong,
        "POST",
        "/v1/status",
        Some(&body),
        401,
        "unauthorized",
    )
    .await;
    assert_eq!(snapshot(&mut anonymous).await, snapshot(&mut wrong).await);
    assert!(
        anonymous.zone(ZONE).await.unwrap().processes.is_empty(),
        "nothing registered without the secret"
    );

    let mut good = client(&b).with_secret(Some("s3cret".into()));
    let r = good
        .request("POST", "/v1/status", Some(&body))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let id = "00:16:3E:00:14:A6-9894";
    expect_error(
        &mut anonymous,
        "POST",
        &format!("/v1/processes/{id}/drain"),
        None,
        401,
        "unauthorized",
    )
    .await;
    assert_eq!(good.drain(id).await.unwrap().status, 103);
    // Reading and picking stay open.
    assert_eq!(anonymous.process(id).await.unwrap().status, 103);
    b.shutdown().await;
}
