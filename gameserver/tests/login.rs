//! The login server over real HTTP on 127.0.0.1, accounts in SQLite; and the
//! Store suite against SQLite.

use crate::store_suite;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use gameserver::accounts::sqlite::SqliteStore;
use gameserver::accounts::{PlayerRecord, Store};
use gameserver::login::{
    GatewayAddr, HashParams, LoginConfig, LoginReply, TestPlatform, BODY_BYTES_MAX,
};
use serde_json::{json, Value};

const SECRET: &[u8] = b"login-test-secret";
const ZONE: u32 = 3;
/// Every test finishes within this, or fails.
const DEADLINE: Duration = Duration::from_secs(60);
const PLATFORM_KEY: &[u8] = b"platform-key";

struct Server {
    addr: SocketAddr,
    store: Arc<dyn Store>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

fn gateways() -> Vec<GatewayAddr> {
    vec![
        GatewayAddr {
            tcp: "127.0.0.1:7600".parse().unwrap(),
            ws: Some("127.0.0.1:7601".parse().unwrap()),
        },
        GatewayAddr {
            tcp: "127.0.0.1:7700".parse().unwrap(),
            ws: None,
        },
    ]
}

async fn start(tweak: impl FnOnce(&mut LoginConfig)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("a.db")).unwrap());
    let mut cfg = LoginConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        SECRET.to_vec(),
        ZONE,
        store.clone(),
    );
    cfg.gateways = gateways();
    cfg.hash = HashParams::insecure_for_tests();
    cfg.platforms.push((
        TestPlatform::NAME.into(),
        Arc::new(TestPlatform::new(PLATFORM_KEY)),
    ));
    tweak(&mut cfg);
    let l = tokio::net::TcpListener::bind(cfg.listen).await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(gameserver::login::serve(cfg, l, async {
        let _ = rx.await;
    }));
    Server {
        addr,
        store,
        stop: Some(tx),
        task,
        _dir: dir,
    }
}

impl Server {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }

    async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        post_from(self.addr, "127.0.0.1".parse().unwrap(), path, body).await
    }

    async fn ok(&self, path: &str, body: Value) -> LoginReply {
        let (status, v) = self.post(path, &body.to_string()).await;
        assert_eq!(status, 200, "{path} {body}: {v}");
        serde_json::from_value(v).unwrap()
    }
}

/// One HTTP/1.1 POST from source address `from` (any of 127.0.0.0/8 on Linux).
async fn post_from(to: SocketAddr, from: IpAddr, path: &str, body: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from, 0)).unwrap();
    let mut s = sock.connect(to).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let out = String::from_utf8(out).unwrap();
    let status: u16 = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {out:?}"));
    let body = out.split_once("\r\n\r\n").map_or("", |b| b.1);
    let v = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    (status, v)
}

fn run<F: std::future::Future<Output = ()>>(f: F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            tokio::time::timeout(DEADLINE, f)
                .await
                .expect("the test ran past its deadline")
        })
}

fn pw(name: &str, password: &str) -> Value {
    json!({ "name": name, "password": password })
}

#[test]
fn register_then_login_gives_a_token_that_verifies_and_carries_the_kind() {
    run(async {
        let s = start(|_| {}).await;
        let r = s.ok("/v1/register", pw("Alice", "correct horse")).await;
        assert_eq!((r.name.as_str(), r.kind), ("Alice", 1));
        assert_eq!(r.record, PlayerRecord::default());
        let l = s.ok("/v1/login", pw("alice", "correct horse")).await;
        assert_eq!((l.player, l.kind, l.name.as_str()), (r.player, 1, "Alice"));
        let now = gameserver::token::now_ms();
        let c = gameserver::token::verify(SECRET, &l.token, ZONE, now).unwrap();
        assert_eq!((c.player, c.kind, c.name.as_str()), (r.player, 1, "Alice"));
        assert_eq!(c.expires_ms, l.expires_ms);
        assert!(l.expires_ms > now);
        // All the gateways, the first one also in `gateway` and `ws`.
        assert_eq!(l.gateways.len(), 2);
        assert_eq!(l.gateway, l.gateways[0].tcp);
        assert_eq!(l.ws, l.gateways[0].ws);
        assert!(gameserver::token::verify(b"other", &l.token, ZONE, now).is_err());
        s.stop().await;
    });
}

#[test]
fn a_taken_name_is_409_whatever_its_case() {
    run(async {
        let s = start(|_| {}).await;
        s.ok("/v1/register", pw("bob", "password1")).await;
        for n in ["bob", "BOB"] {
            let (status, v) = s
                .post("/v1/register", &pw(n, "password2").to_string())
                .await;
            assert_eq!(status, 409, "{v}");
            assert!(v["error"].as_str().unwrap().contains("taken"), "{v}");
        }
        // The first password still logs in, the second does not.
        s.ok("/v1/login", pw("bob", "password1")).await;
        let (status, _) = s
            .post("/v1/login", &pw("bob", "password2").to_string())
            .await;
        assert_eq!(status, 401);
        s.stop().await;
    });
}

#[test]
fn a_wrong_password_and_an_unknown_account_get_the_same_answer() {
    run(async {
        let s = start(|_| {}).await;
        s.ok("/v1/register", pw("carol", "password1")).await;
        let wrong = s
            .post("/v1/login", &pw("carol", "password2").to_string())
            .await;
        let unknown = s
            .post("/v1/login", &pw("nobody", "password2").to_string())
            .await;
        // A guest's name is no password account either.
        s.ok("/v1/guest", json!({ "name": "dave" })).await;
        let guest_name = s
            .post("/v1/login", &pw("dave", "password2").to_string())
            .await;
        assert_eq!(wrong.0, 401);
        assert_eq!(wrong, unknown);
        assert_eq!(wrong, guest_name);
        s.stop().await;
    });
}

#[test]
fn a_guest_device_is_the_same_player_each_time_and_old_bodies_still_work() {
    run(async {
        let s = start(|_| {}).await;
        let dev = json!({ "device": "device-0001", "name": "Eve" });
        let a = s.ok("/v1/guest", dev.clone()).await;
        let b = s.ok("/v1/guest", dev).await;
        assert_eq!((a.player, a.kind, a.name.as_str()), (b.player, 0, "Eve"));
        let other = s.ok("/v1/guest", json!({ "device": "device-0002" })).await;
        assert_ne!(other.player, a.player);
        // The old bodies: `{name}` only, or none: a new guest each time.
        let (n1, n2) = (
            s.ok("/v1/guest", json!({ "name": "g" })).await,
            s.ok("/v1/guest", json!({ "name": "g" })).await,
        );
        assert_ne!(n1.player, n2.player);
        assert_eq!(n1.name, "g");
        let (status, v) = s.post("/v1/guest", "").await;
        assert_eq!(status, 200, "{v}");
        assert!(v["name"].as_str().unwrap().starts_with("guest"), "{v}");
        let c = gameserver::token::verify(
            SECRET,
            v["token"].as_str().unwrap(),
            ZONE,
            gameserver::token::now_ms(),
        )
        .unwrap();
        assert_eq!((c.kind, c.player), (0, v["player"].as_u64().unwrap()));
        // Player ids fit JavaScript's numbers.
        assert!(v["player"].as_u64().unwrap() < 1 << 53);
        s.stop().await;
    });
}

#[test]
fn a_platform_token_logs_in_and_a_forged_one_is_refused() {
    run(async {
        let s = start(|_| {}).await;
        let exp = gameserver::token::now_ms() + 60_000;
        let good = TestPlatform::new(PLATFORM_KEY).mint("u-77", "Frank", exp);
        let body = json!({ "platform": "test", "user_token": good });
        let a = s.ok("/v1/platform", body.clone()).await;
        assert_eq!((a.kind, a.name.as_str()), (2, "Frank"));
        assert_eq!(s.ok("/v1/platform", body).await.player, a.player);
        let forged = TestPlatform::new(b"not the key").mint("u-77", "Frank", exp);
        let (status, v) = s
            .post(
                "/v1/platform",
                &json!({ "platform": "test", "user_token": forged }).to_string(),
            )
            .await;
        assert_eq!(status, 401, "{v}");
        assert!(v["error"]
            .as_str()
            .unwrap()
            .contains("platform token refused"));
        let expired = TestPlatform::new(PLATFORM_KEY).mint("u-77", "Frank", 1);
        let (status, _) = s
            .post(
                "/v1/platform",
                &json!({ "platform": "test", "user_token": expired }).to_string(),
            )
            .await;
        assert_eq!(status, 401);
        let (status, v) = s
            .post(
                "/v1/platform",
                &json!({ "platform": "nope", "user_token": "x" }).to_string(),
            )
            .await;
        assert_eq!(status, 400);
        assert!(
            v["error"].as_str().unwrap().contains("unknown platform"),
            "{v}"
        );
        s.stop().await;
    });
}

#[test]
fn oversized_malformed_and_out_of_limit_bodies_are_refused_clearly() {
    run(async {
        let s = start(|_| {}).await;
        let big = json!({ "name": "x".repeat(BODY_BYTES_MAX), "password": "password1" });
        let (status, v) = s.post("/v1/register", &big.to_string()).await;
        assert_eq!(status, 413, "{v}");
        assert!(v["error"].as_str().unwrap().contains("over"), "{v}");
        for path in ["/v1/register", "/v1/login", "/v1/guest", "/v1/platform"] {
            let (status, v) = s.post(path, "{\"name\": ").await;
            assert_eq!(status, 400, "{path}: {v}");
            assert!(
                v["error"].as_str().unwrap().contains("malformed JSON"),
                "{v}"
            );
        }
        let (status, v) = s.post("/v1/register", r#"{"name": "x"}"#).await;
        assert_eq!(status, 400, "a missing field: {v}");
        for (body, what) in [
            (pw("ab", "password1"), "name"),
            (pw("has space", "password1"), "name"),
            (pw(&"n".repeat(33), "password1"), "name"),
            (pw("george", "short"), "password"),
            (pw("george", &"p".repeat(129)), "password"),
        ] {
            let (status, v) = s.post("/v1/register", &body.to_string()).await;
            assert_eq!(status, 400, "{body}: {v}");
            assert!(v["error"].as_str().unwrap().contains(what), "{v}");
        }
        let (status, _) = s
            .post("/v1/guest", &json!({ "device": "short" }).to_string())
            .await;
        assert_eq!(status, 400);
        let (status, _) = s
            .post("/v1/guest", &json!({ "name": "n".repeat(33) }).to_string())
            .await;
        assert_eq!(status, 400);
        s.stop().await;
    });
}

#[test]
fn a_flood_from_one_address_gets_429_while_another_address_logs_in() {
    run(async {
        let s = start(|c| {
            c.limits.addr_burst = 5;
            c.limits.addr_per_s = 0.001;
            c.limits.name_burst = 3;
            c.limits.name_per_s = 0.001;
        })
        .await;
        let flooder: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let mut codes = Vec::new();
        for _ in 0..8 {
            codes.push(post_from(s.addr, flooder, "/v1/guest", "{}").await);
        }
        assert!(codes[..5].iter().all(|c| c.0 == 200), "{codes:?}");
        for (status, v) in &codes[5..] {
            assert_eq!(*status, 429);
            assert!(v["error"].as_str().unwrap().contains("your address"), "{v}");
        }
        let (status, v) = post_from(
            s.addr,
            other,
            "/v1/register",
            &pw("henry", "password1").to_string(),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        // One name: 3 attempts, then 429 from any address (third address here).
        let third: IpAddr = "127.0.0.3".parse().unwrap();
        let (status, _) = post_from(
            s.addr,
            other,
            "/v1/login",
            &pw("HENRY", "wrong-one").to_string(),
        )
        .await;
        assert_eq!(status, 401);
        let (status, _) = post_from(
            s.addr,
            third,
            "/v1/login",
            &pw("henry", "password1").to_string(),
        )
        .await;
        assert_eq!(status, 200);
        let (status, v) = post_from(
            s.addr,
            third,
            "/v1/login",
            &pw("henry", "password1").to_string(),
        )
        .await;
        assert_eq!(status, 429, "{v}");
        assert!(v["error"].as_str().unwrap().contains("this name"), "{v}");
        s.stop().await;
    });
}

#[test]
fn the_global_limit_answers_429() {
    run(async {
        let s = start(|c| c.rate_per_s = 1).await;
        let t0 = std::time::Instant::now();
        let mut statuses = Vec::new();
        for _ in 0..10 {
            statuses.push(s.post("/v1/guest", "").await.0);
        }
        let elapsed = t0.elapsed().as_secs_f64();
        // A burst of 1, then 1/s: at most 1 + elapsed of them pass.
        let passed = statuses.iter().filter(|&&c| c == 200).count();
        assert_eq!(statuses[0], 200);
        assert!(
            passed as f64 <= 1.0 + elapsed.ceil(),
            "{statuses:?} in {elapsed}s"
        );
        assert!(
            statuses.iter().all(|&c| c == 200 || c == 429),
            "{statuses:?}"
        );
        s.stop().await;
    });
}

#[test]
fn the_record_at_login_is_what_save_records_saved() {
    run(async {
        let s = start(|_| {}).await;
        let r = s.ok("/v1/register", pw("ivy", "password1")).await;
        let rec = PlayerRecord {
            games: 10,
            wins: 6,
            losses: 3,
            draws: 1,
            rating: 1288,
            coins: 1450,
        };
        let store = s.store.clone();
        tokio::task::spawn_blocking(move || store.save_records(&[(r.player, rec)]))
            .await
            .unwrap()
            .unwrap();
        let l = s.ok("/v1/login", pw("ivy", "password1")).await;
        assert_eq!(l.record, rec);
        let g = s.ok("/v1/guest", json!({ "device": "device-ivy-1" })).await;
        assert_eq!(g.record, PlayerRecord::default());
        s.stop().await;
    });
}

#[test]
fn production_argon2_params_log_in_too() {
    run(async {
        let s = start(|c| c.hash = HashParams::default()).await;
        let r = s.ok("/v1/register", pw("judy", "password1")).await;
        let hash = s.store.password_account("judy").unwrap().unwrap().1;
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert_eq!(
            s.ok("/v1/login", pw("judy", "password1")).await.player,
            r.player
        );
        let (status, _) = s
            .post("/v1/login", &pw("judy", "password2").to_string())
            .await;
        assert_eq!(status, 401);
        s.stop().await;
    });
}

#[test]
fn sqlite_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("a.db")).unwrap();
    store_suite::store_suite(&s);
    let mem = gameserver::accounts::open("sqlite::memory:").unwrap();
    store_suite::store_suite(&*mem);
}

#[test]
fn sqlite_two_openers_race_and_exactly_one_registration_wins() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("a.db").display());
    store_suite::concurrent_first_uses(&|| gameserver::accounts::open(&url).unwrap());
}

#[test]
fn open_refuses_an_empty_url() {
    let e = gameserver::accounts::open("sqlite:")
        .err()
        .expect("refused");
    assert!(e.to_string().contains("names no database"), "{e}");
}
