//! `gs-bench handshakes`: new sessions per second by transport (plain TCP,
//! Noise TCP, wss) against an in-process gateway: connect, the transport's
//! handshake, Auth, Welcome, close, by `clients` concurrent loops. The
//! difference between the rows is what the encryption's handshake costs
//! (the clients run in the same process and share its cores: a lower bound
//! for the gateway alone).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gameserver::client::{Client, Options, Target};
use gameserver::gateway::{secure, Gateway, GatewayConfig};
use gameserver::proto::noise::StaticKey;
use gameserver::token::{self, Claims};
use serde_json::{json, Value};

const SECRET: &str = "bench-secret";

/// Runs each transport for `seconds` with `clients` concurrent loops.
pub fn handshakes(clients: usize, seconds: f64) -> Result<Value, String> {
    let dir = std::env::temp_dir().join(format!(
        "gs-bench-hs-{}-{}",
        std::process::id(),
        token::now_ms()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (cert_pem, key_pem) = secure::self_signed(&["localhost"])?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &cert_pem).map_err(|e| e.to_string())?;
    std::fs::write(&key, key_pem).map_err(|e| e.to_string())?;
    let noise_key = StaticKey::generate();
    let mut c = GatewayConfig::new(SECRET, Vec::new());
    c.tcp = "127.0.0.1:0".into();
    c.ws = None;
    c.tcp_noise = Some("127.0.0.1:0".into());
    c.noise_key = Some(noise_key.private_hex());
    c.wss = Some("127.0.0.1:0".into());
    c.tls_cert = Some(cert.display().to_string());
    c.tls_key = Some(key.display().to_string());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let r = rt.block_on(async move {
        let g = Gateway::start(c).await.map_err(|e| e.to_string())?;
        let targets = [
            ("plain_tcp", Target::Tcp(g.tcp_addr())),
            (
                "noise_tcp",
                Target::Noise {
                    addr: g.noise_addr().expect("configured"),
                    gateway_key: noise_key.public(),
                },
            ),
            (
                "wss",
                Target::Wss {
                    url: format!(
                        "wss://localhost:{}/",
                        g.wss_addr().expect("configured").port()
                    ),
                    ca_pem: cert_pem,
                },
            ),
        ];
        let mut rows = serde_json::Map::new();
        let next_player = Arc::new(AtomicU64::new(1));
        for (name, t) in targets {
            let done = Arc::new(AtomicU64::new(0));
            let failed = Arc::new(AtomicU64::new(0));
            let until = Instant::now() + Duration::from_secs_f64(seconds);
            let t0 = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..clients.max(1) {
                let (t, done, failed, next) =
                    (t.clone(), done.clone(), failed.clone(), next_player.clone());
                tasks.push(tokio::spawn(async move {
                    let opts = || Options {
                        heartbeat: false,
                        connect_timeout: Duration::from_secs(5),
                        ..Options::default()
                    };
                    while Instant::now() < until {
                        let claims = Claims {
                            player: next.fetch_add(1, Relaxed),
                            zone: 1,
                            expires_ms: token::now_ms() + 60_000,
                            name: "b".into(),
                            kind: 0,
                        };
                        let tok = token::mint(SECRET.as_bytes(), &claims);
                        match Client::connect_with(&t, &tok, opts()).await {
                            Ok(c) => {
                                done.fetch_add(1, Relaxed);
                                c.close();
                            }
                            Err(_) => {
                                failed.fetch_add(1, Relaxed);
                            }
                        }
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
            let secs = t0.elapsed().as_secs_f64();
            rows.insert(
                name.into(),
                json!({
                    "sessions": done.load(Relaxed),
                    "failed": failed.load(Relaxed),
                    "sessions_per_s": done.load(Relaxed) as f64 / secs,
                }),
            );
        }
        let s = g.stats();
        g.shutdown().await;
        Ok::<Value, String>(json!({
            "scenario": "handshakes", "clients": clients, "seconds": seconds,
            "transports": Value::Object(rows),
            "handshake_failures": s.handshake_failures, "decrypt_failures": s.decrypt_failures,
        }))
    });
    let _ = std::fs::remove_dir_all(&dir);
    r
}
