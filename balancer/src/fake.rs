//! A simulated game-server process, for tests, demos and the spawn helper
//! binary `balancer-fake-server`.
//!
//! It listens on TCP; a connection that sends the byte `P` is a player (the
//! server answers `W` and counts it online until it disconnects); any other
//! connection (the balancer's probe) is not counted. It pushes its status to
//! the balancer every `push_interval_ms`. Stopping it drops the listener and
//! every player connection, as a crash would.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tracing::debug;

use crate::client::{Client, PushStream};

/// How a fake server reports.
enum Pusher {
    Http(Client),
    Stream(PushStream),
}
use crate::registry::{StatusPush, ZoneId};

/// Byte a player sends after connecting.
pub const PLAYER_HELLO: u8 = b'P';
/// Byte the server answers to a player.
pub const SERVER_WELCOME: u8 = b'W';
/// Time a new connection has to say hello before it is closed.
pub const HELLO_TIMEOUT_MS: u64 = 2_000;
/// Connections held at once; more are closed at accept.
pub const CONNECTIONS_MAX: usize = 10_000;

/// How to run a fake server.
#[derive(Clone, Debug)]
pub struct FakeOptions {
    /// Balancer addresses (master first).
    pub balancer: Vec<SocketAddr>,
    /// Shared secret for pushes.
    pub secret: Option<String>,
    /// Zone to report.
    pub zone: ZoneId,
    /// Address to listen on and report.
    pub host: IpAddr,
    /// Port to listen on; 0 picks one.
    pub port: u16,
    /// Process id to report; `None` uses [`crate::client::local_process_id`].
    pub id: Option<String>,
    /// Time between pushes.
    pub push_interval_ms: u64,
    /// Memory figure to report, MiB.
    pub used_memory_mb: i64,
    /// Push over a push stream (one connection, a line per push) instead of
    /// an HTTP request per push.
    pub stream: bool,
}

/// A running fake server.
#[derive(Debug)]
pub struct FakeServer {
    addr: SocketAddr,
    id: String,
    online: Arc<AtomicU32>,
    pushes_ok: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl FakeServer {
    /// Binds and starts accepting and pushing.
    pub async fn start(opts: FakeOptions) -> std::io::Result<FakeServer> {
        let listener = TcpListener::bind((opts.host, opts.port)).await?;
        let addr = listener.local_addr()?;
        let id = opts
            .id
            .clone()
            .unwrap_or_else(crate::client::local_process_id);
        let online = Arc::new(AtomicU32::new(0));
        let pushes_ok = Arc::new(AtomicU64::new(0));

        let on = online.clone();
        let accept = tokio::spawn(async move {
            // Dropping this set (when the task is aborted) closes every player.
            let mut conns = JoinSet::new();
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    continue;
                };
                while conns.try_join_next().is_some() {}
                if conns.len() >= CONNECTIONS_MAX {
                    continue;
                }
                let on = on.clone();
                conns.spawn(async move {
                    let mut hello = [0u8; 1];
                    let said = tokio::time::timeout(
                        Duration::from_millis(HELLO_TIMEOUT_MS),
                        sock.read(&mut hello),
                    )
                    .await;
                    if !matches!(said, Ok(Ok(1))) || hello[0] != PLAYER_HELLO {
                        return;
                    }
                    on.fetch_add(1, Ordering::SeqCst);
                    if sock.write_all(&[SERVER_WELCOME]).await.is_ok() {
                        let mut buf = [0u8; 64];
                        // Until the player leaves: bounded by the connection's life.
                        while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
                    }
                    on.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });

        let on = online.clone();
        let ok = pushes_ok.clone();
        let push_id = id.clone();
        let push = tokio::spawn(async move {
            let client = Client::new(opts.balancer.clone())
                .with_secret(opts.secret.clone())
                .with_timeout(Duration::from_millis(opts.push_interval_ms.max(200) * 2));
            let mut pusher = if opts.stream {
                Pusher::Stream(PushStream::new(client))
            } else {
                Pusher::Http(client)
            };
            let mut interval =
                tokio::time::interval(Duration::from_millis(opts.push_interval_ms.max(1)));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let push = StatusPush {
                    id: push_id.clone(),
                    zone: opts.zone as i64,
                    host: addr.ip().to_string(),
                    port: addr.port() as i64,
                    online: on.load(Ordering::SeqCst) as i64,
                    used_memory_mb: opts.used_memory_mb,
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    pid: Some(std::process::id()),
                    claimed: Vec::new(),
                };
                let sent = match &mut pusher {
                    Pusher::Http(c) => c.push_status(&push).await.map(drop),
                    Pusher::Stream(s) => s.push(&push).await,
                };
                match sent {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => debug!(id = push_id, error = %e, "push failed"),
                }
            }
        });
        Ok(FakeServer {
            addr,
            id,
            online,
            pushes_ok,
            tasks: vec![accept, push],
        })
    }

    /// Address players connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Process id it reports.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Players connected now.
    pub fn online(&self) -> u32 {
        self.online.load(Ordering::SeqCst)
    }

    /// Pushes the balancer accepted.
    pub fn pushes_ok(&self) -> u64 {
        self.pushes_ok.load(Ordering::SeqCst)
    }

    /// Stops at once: closes the listener and every player (a crash).
    pub fn kill(self) {
        drop(self);
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
