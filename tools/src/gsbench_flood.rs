//! `gs-bench flood`: what a flood of frames costs the gateway (issue 13).
//! `connections` authenticated clients each write Ping frames as fast as the
//! socket takes them, for `seconds`, against an in-process gateway on a
//! runtime of its own (one worker thread, named so): the gateway's CPU is
//! read per thread from /proc/self/task, apart from the flooders'. Reported:
//! the gateway's share of a core during the flood and when idle, the frames
//! it read against those written, its throttle pauses and flood closes, and
//! how long each flooder lasted before it was closed.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use gameserver::gateway::{Gateway, GatewayConfig};
use gameserver::proto::frame::{Frame, Kind};
use gameserver::proto::msg::{self, Auth, FEATURES_ALL, PROTOCOL_VERSION};
use gameserver::token::{self, Claims};

const SECRET: &str = "bench-secret";
/// The gateway runtime's thread name (15 bytes at most: /proc's comm).
const GATEWAY_THREAD: &str = "gw-flood-bench";
/// Ping frames per write: a flooder's batch.
const PINGS_PER_WRITE: usize = 512;

/// CPU time (user + system), ms, of this process's threads named `name`.
fn threads_cpu_ms(name: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .map(|c| c.trim_end() == name)
                .unwrap_or(false)
        })
        .filter_map(|e| {
            let s = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let (u, k): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
            Some((u + k) * 10.0) // USER_HZ = 100
        })
        .sum()
}

pub fn flood(connections: usize, seconds: f64) -> Result<Value, String> {
    let gw_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(GATEWAY_THREAD)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut c = GatewayConfig::new(SECRET, Vec::new());
    c.tcp = "127.0.0.1:0".into();
    c.ws = None;
    let cfg = json!({
        "conn_frames_per_s_max": c.conn_frames_per_s_max,
        "conn_bytes_per_s_max": c.conn_bytes_per_s_max,
        "flood_close_ms": c.flood_close_ms,
    });
    let g = gw_rt
        .block_on(Gateway::start(c))
        .map_err(|e| e.to_string())?;
    let addr = g.tcp_addr();
    // Idle: what the gateway costs with nothing to do, over one second.
    let idle0 = threads_cpu_ms(GATEWAY_THREAD);
    std::thread::sleep(Duration::from_secs(1));
    let idle_ms = threads_cpu_ms(GATEWAY_THREAD) - idle0;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("flooder")
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let written = Arc::new(AtomicU64::new(0));
    let cpu0 = threads_cpu_ms(GATEWAY_THREAD);
    let t0 = Instant::now();
    let lasted: Vec<Option<f64>> = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..connections.max(1) {
            let written = written.clone();
            tasks.push(tokio::spawn(async move {
                let claims = Claims {
                    player: 1 + i as u64,
                    zone: 1,
                    expires_ms: token::now_ms() + 600_000,
                    name: format!("flood-{i}"),
                    kind: 0,
                };
                let auth = Auth {
                    token: token::mint(SECRET.as_bytes(), &claims),
                    client_version: PROTOCOL_VERSION,
                    features: FEATURES_ALL,
                };
                let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
                let f = Frame::new(
                    Kind::Auth,
                    0,
                    token::now_ms(),
                    Bytes::from(msg::encode(&auth)),
                );
                s.write_all(&f.to_bytes()).await.ok()?;
                let (mut rd, mut wr) = s.into_split();
                let start = Instant::now();
                // Whatever comes back (Welcome, Pongs, the Bye) is read and dropped.
                let reader = tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n) = rd.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                });
                let until = start + Duration::from_secs_f64(seconds);
                let mut batch = Vec::with_capacity(PINGS_PER_WRITE * 24);
                let mut closed = None;
                while Instant::now() < until {
                    batch.clear();
                    let ping = Frame::new(Kind::Ping, 0, token::now_ms(), Bytes::new()).to_bytes();
                    for _ in 0..PINGS_PER_WRITE {
                        batch.extend_from_slice(&ping);
                    }
                    let left = until.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, wr.write_all(&batch)).await {
                        Ok(Ok(())) => {
                            written.fetch_add(PINGS_PER_WRITE as u64, Relaxed);
                        }
                        Ok(Err(_)) => {
                            closed = Some(start.elapsed().as_secs_f64() * 1000.0);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if closed.is_none() && reader.is_finished() {
                    closed = Some(start.elapsed().as_secs_f64() * 1000.0);
                }
                reader.abort();
                closed
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.ok().flatten());
        }
        out
    });
    let secs = t0.elapsed().as_secs_f64();
    let flood_ms = threads_cpu_ms(GATEWAY_THREAD) - cpu0;
    let s = g.stats();
    gw_rt.block_on(g.shutdown());
    let closed: Vec<f64> = lasted.iter().flatten().copied().collect();
    Ok(json!({
        "scenario": "flood", "connections": connections, "seconds": secs, "limits": cfg,
        "gateway_core_share_idle": idle_ms / 1000.0,
        "gateway_core_share_flood": flood_ms / 1000.0 / secs,
        "gateway_cpu_ms_flood": flood_ms,
        "pings_written": written.load(Relaxed),
        "frames_read_by_gateway": s.frames_in,
        "throttle_pauses": s.throttle_pauses,
        "throttled_connections": s.throttled_connections,
        "flood_closed": s.flood_closed,
        "flooders_closed": closed.len(),
        "closed_after_ms_max": closed.iter().copied().fold(0.0, f64::max),
    }))
}
