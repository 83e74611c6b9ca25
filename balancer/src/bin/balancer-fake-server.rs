//! `balancer-fake-server`: a simulated game-server process that listens on a
//! port, counts players and pushes its status with the client library. The
//! spawn tests use it as the zone's command template; it is also a demo.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Flags.
#[derive(Debug, Parser)]
#[command(
    name = "balancer-fake-server",
    about = "Simulated game-server process for tests and demos"
)]
struct Args {
    /// Balancer address(es), IP:PORT.
    #[arg(long, required = true, value_delimiter = ',')]
    balancer: Vec<SocketAddr>,
    /// Zone to report.
    #[arg(long)]
    zone: u32,
    /// Port to listen on (0 picks one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Address to listen on and report.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    host: IpAddr,
    /// Time between pushes.
    #[arg(long, default_value_t = 1000)]
    push_interval_ms: u64,
    /// Exit by itself after this long, so a forgotten one cannot linger.
    #[arg(long, default_value_t = 600_000)]
    lifetime_ms: u64,
    /// Shared secret for pushes (default: env BALANCER_SECRET).
    #[arg(long)]
    secret: Option<String>,
    /// Process id to report (default: MAC + pid).
    #[arg(long)]
    id: Option<String>,
    /// Push over a push stream (a line per push on one connection).
    #[arg(long)]
    stream: bool,
}

fn main() -> ExitCode {
    balancer::cli::init_tracing();
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let opts = balancer::fake::FakeOptions {
            balancer: args.balancer,
            secret: args
                .secret
                .or_else(|| std::env::var("BALANCER_SECRET").ok()),
            zone: args.zone,
            host: args.host,
            port: args.port,
            id: args.id,
            push_interval_ms: args.push_interval_ms,
            stream: args.stream,
            used_memory_mb: 1,
        };
        let server = match balancer::fake::FakeServer::start(opts).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot listen on {}:{}: {e}", args.host, args.port);
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(addr = %server.addr(), id = server.id(), "fake server up");
        tokio::time::sleep(Duration::from_millis(args.lifetime_ms)).await;
        ExitCode::SUCCESS
    })
}
