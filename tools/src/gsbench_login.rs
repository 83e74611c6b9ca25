//! `gs-bench logins`: password logins per second against an in-process login
//! server (`gameserver::login`, accounts in SQLite in a temp dir), argon2id
//! at the given cost (production by default).
//!
//! `clients` accounts are registered first; then each of `runs` runs has
//! `clients` concurrent clients, each on its own keep-alive HTTP connection,
//! logging in as its account over and over for `seconds`. The rate limits
//! are lifted (every client is 127.0.0.1); the hash concurrency is the
//! server's default (one per core) unless given. Reports the median and the
//! slowest run's logins/s and the login latency; with `guest`, the same for
//! device guest logins (no argon2), which shows what the HTTP, store and
//! token cost alone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gameserver::login::{GatewayAddr, HashParams, LoginConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Answers over this are an error (a login answer is well under 2 KiB).
const ANSWER_BYTES_MAX: usize = 64 * 1024;
/// One request's answer is awaited this long at most.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct LoginBench {
    pub clients: usize,
    pub seconds: f64,
    pub runs: usize,
    pub hash: HashParams,
    pub hash_concurrency: Option<usize>,
    /// Also measure device guest logins.
    pub guest: bool,
    pub dir: Option<PathBuf>,
}

/// One HTTP/1.1 POST on a keep-alive connection: the status.
async fn post(c: &mut BufReader<TcpStream>, path: &str, body: &str) -> Result<u16, String> {
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    c.get_mut()
        .write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    let mut status = 0u16;
    let mut len = 0usize;
    let mut first = true;
    loop {
        line.clear();
        if c.read_line(&mut line).await.map_err(|e| e.to_string())? == 0 {
            return Err("connection closed".into());
        }
        if line.len() > ANSWER_BYTES_MAX {
            return Err("header line too long".into());
        }
        let l = line.trim_end();
        if first {
            status = l
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad status line {l:?}"))?;
            first = false;
        } else if l.is_empty() {
            break;
        } else if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().map_err(|_| "bad content-length")?;
            }
        }
    }
    if len > ANSWER_BYTES_MAX {
        return Err(format!("answer of {len} bytes"));
    }
    let mut b = vec![0; len];
    c.read_exact(&mut b).await.map_err(|e| e.to_string())?;
    Ok(status)
}

struct Run {
    logins: u64,
    failures: u64,
    secs: f64,
    latencies_us: Vec<u64>,
}

/// `clients` connections posting `body(i)` to `path` for `seconds`.
async fn run(
    addr: SocketAddr,
    clients: usize,
    seconds: f64,
    path: &'static str,
    body: Arc<dyn Fn(usize) -> String + Send + Sync>,
) -> Result<Run, String> {
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for i in 0..clients {
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = BufReader::new(
                TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect: {e}"))?,
            );
            let (mut ok, mut failed, mut lat) = (0u64, 0u64, Vec::new());
            let b = body(i);
            while Instant::now() < deadline {
                let t = Instant::now();
                match tokio::time::timeout(REQUEST_TIMEOUT, post(&mut c, path, &b)).await {
                    Ok(Ok(200)) => {
                        ok += 1;
                        lat.push(t.elapsed().as_micros() as u64);
                    }
                    Ok(Ok(_)) => failed += 1,
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Err("a login took over 30 s".into()),
                }
            }
            Ok::<_, String>((ok, failed, lat))
        }));
    }
    let mut r = Run {
        logins: 0,
        failures: 0,
        secs: 0.0,
        latencies_us: Vec::new(),
    };
    for t in tasks {
        let (ok, failed, lat) = t.await.map_err(|e| e.to_string())??;
        r.logins += ok;
        r.failures += failed;
        r.latencies_us.extend(lat);
    }
    r.secs = t0.elapsed().as_secs_f64();
    Ok(r)
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Median and min logins/s of `runs` runs, and the latency over all of them.
async fn series(
    addr: SocketAddr,
    b: &LoginBench,
    path: &'static str,
    body: Arc<dyn Fn(usize) -> String + Send + Sync>,
) -> Result<Value, String> {
    let mut rates = Vec::new();
    let mut lat = Vec::new();
    let mut failures = 0;
    for _ in 0..b.runs.max(1) {
        let r = run(addr, b.clients, b.seconds, path, body.clone()).await?;
        rates.push(r.logins as f64 / r.secs);
        failures += r.failures;
        lat.extend(r.latencies_us);
    }
    let mut sorted = rates.clone();
    sorted.sort_by(f64::total_cmp);
    lat.sort_unstable();
    Ok(json!({
        "median": sorted[sorted.len() / 2],
        "min": sorted[0],
        "runs": rates,
        "failures": failures,
        "latency_ms_p50": pct(&lat, 0.5),
        "latency_ms_p99": pct(&lat, 0.99),
    }))
}

pub fn logins(b: &LoginBench) -> Result<Value, String> {
    let tmp = std::env::temp_dir().join(format!(
        "gs-bench-logins-{}-{}",
        std::process::id(),
        gameserver::token::now_ms()
    ));
    let dir = b.dir.clone().unwrap_or_else(|| tmp.clone());
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let r = logins_in(b, &dir);
    if b.dir.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    r
}

fn logins_in(b: &LoginBench, dir: &std::path::Path) -> Result<Value, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let db = format!("sqlite:{}", dir.join("accounts.db").display());
    let store = gameserver::accounts::open(&db).map_err(|e| e.to_string())?;
    let mut cfg = LoginConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        b"bench-secret".to_vec(),
        1,
        store,
    );
    cfg.gateways = vec![GatewayAddr {
        tcp: "127.0.0.1:7600".parse().expect("addr"),
        ws: None,
    }];
    cfg.hash = b.hash;
    if let Some(n) = b.hash_concurrency {
        cfg.hash_concurrency = n.max(1);
    }
    // Every client is 127.0.0.1 and logs in as one name over and over.
    cfg.rate_per_s = 1_000_000_000;
    cfg.limits.addr_burst = 1_000_000_000;
    cfg.limits.addr_per_s = 1e9;
    cfg.limits.name_burst = 1_000_000_000;
    cfg.limits.name_per_s = 1e9;
    let hash_concurrency = cfg.hash_concurrency;
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| e.to_string())?;
        let addr = l.local_addr().map_err(|e| e.to_string())?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(gameserver::login::serve(cfg, l, async {
            let _ = rx.await;
        }));
        let account = |i: usize| {
            json!({ "name": format!("bench{i}"), "password": format!("bench-password-{i}") })
                .to_string()
        };
        // Accounts first, one per client (concurrently: the hashes are the cost).
        let mut regs = Vec::new();
        for i in 0..b.clients {
            let body = account(i);
            regs.push(tokio::spawn(async move {
                let mut c =
                    BufReader::new(TcpStream::connect(addr).await.map_err(|e| e.to_string())?);
                match post(&mut c, "/v1/register", &body).await? {
                    200 => Ok(()),
                    s => Err(format!("register answered {s}")),
                }
            }));
        }
        for r in regs {
            r.await.map_err(|e| e.to_string())??;
        }
        let password = series(addr, b, "/v1/login", Arc::new(account)).await?;
        let guest = if b.guest {
            let dev = |i: usize| json!({ "device": format!("bench-device-{i:06}") }).to_string();
            Some(series(addr, b, "/v1/guest", Arc::new(dev)).await?)
        } else {
            None
        };
        let _ = tx.send(());
        let _ = server.await;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut v = json!({
            "bench": "logins",
            "clients": b.clients,
            "seconds_per_run": b.seconds,
            "runs": b.runs.max(1),
            "argon2": format!("argon2id m={} KiB t={} p={}", b.hash.m_kib, b.hash.t, b.hash.p),
            "hash_concurrency": hash_concurrency,
            "cores": cores,
            "logins_per_s_median": password["median"],
            "logins_per_s_min": password["min"],
            "logins_per_s_per_core": password["median"].as_f64().unwrap_or(0.0) / cores as f64,
            "login_latency_ms_p50": password["latency_ms_p50"],
            "login_latency_ms_p99": password["latency_ms_p99"],
            "login_runs": password["runs"],
            "login_failures": password["failures"],
        });
        if let Some(g) = guest {
            v["guest_logins_per_s_median"] = g["median"].clone();
            v["guest_logins_per_s_min"] = g["min"].clone();
            v["guest_latency_ms_p50"] = g["latency_ms_p50"].clone();
            v["guest_failures"] = g["failures"].clone();
        }
        Ok(v)
    })
}
