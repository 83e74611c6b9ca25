//! Helpers shared by the balancer's integration tests. Everything listens on
//! 127.0.0.1 with port 0 and every wait has a deadline.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use balancer::api::{ProcessView, ZoneView};
use balancer::client::Client;
use balancer::config::{Config, SpawnConfig, ZoneConfig};
use balancer::fake::{FakeOptions, FakeServer, PLAYER_HELLO, SERVER_WELCOME};
use balancer::server::{start, NoSink, ServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
pub const ZONE: u32 = 1;

/// Polls `$cond` every 10 ms until it is true; panics after `$ms`.
#[macro_export]
macro_rules! eventually {
    ($what:expr, $ms:expr, $cond:expr) => {{
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis($ms);
        loop {
            if $cond {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {} ms waiting for {}",
                $ms,
                $what
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }};
}

pub fn zone(cap: u32, spawn: Option<SpawnConfig>) -> ZoneConfig {
    ZoneConfig {
        id: ZONE,
        name: "天上人间".into(),
        version: "v1.0.0 20131104".into(),
        process_online_max: cap,
        spawn,
    }
}

/// A config on 127.0.0.1:0 with default timers and one zone.
pub fn config(zone: ZoneConfig) -> Config {
    Config {
        listen: SocketAddr::new(LOCAL, 0),
        zones: vec![zone],
        kill_spawned_on_exit: true,
        ..Config::default()
    }
}

pub async fn balancer(config: Config) -> ServerHandle {
    start(config, Arc::new(NoSink))
        .await
        .expect("balancer starts on 127.0.0.1:0")
}

pub fn client(b: &ServerHandle) -> Client {
    Client::new(vec![b.addr()]).with_timeout(Duration::from_secs(10))
}

/// An in-process game server on 127.0.0.1:`port` pushing every 50 ms.
pub async fn fake(b: &ServerHandle, id: &str, port: u16) -> FakeServer {
    FakeServer::start(FakeOptions {
        balancer: vec![b.addr()],
        secret: b.balancer().config().secret.clone(),
        zone: ZONE,
        host: LOCAL,
        port,
        id: Some(id.to_string()),
        push_interval_ms: 50,
        used_memory_mb: 10,
        stream: false,
    })
    .await
    .expect("fake server binds 127.0.0.1")
}

pub async fn view(c: &mut Client, id: &str) -> Option<ProcessView> {
    c.process(id).await.ok()
}

pub async fn zone_view(c: &mut Client) -> ZoneView {
    c.zone(ZONE).await.expect("zone list")
}

pub async fn status_of(c: &mut Client, id: &str) -> Option<u16> {
    view(c, id).await.map(|v| v.status)
}

/// A simulated player connected to a game server.
pub struct Player {
    stream: TcpStream,
}

impl Player {
    /// Connects and says hello; fails if the server does not welcome it.
    pub async fn join(addr: SocketAddr) -> std::io::Result<Player> {
        let mut stream =
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await??;
        stream.write_all(&[PLAYER_HELLO]).await?;
        let mut b = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut b)).await??;
        if b[0] != SERVER_WELCOME {
            return Err(std::io::Error::other("no welcome"));
        }
        Ok(Player { stream })
    }

    /// False when the server closed the connection (the player was kicked).
    pub fn connected(&self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// A port that was free a moment ago (for spawn port ranges).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind((LOCAL, 0))
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local addr")
        .port()
}
