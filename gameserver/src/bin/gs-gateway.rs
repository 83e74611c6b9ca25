//! `gs-gateway`: the process players connect to (see `gameserver::gateway`).
//!
//! Prints `gateway listening tcp=ADDR ws=ADDR` (`ws=-` without WebSocket;
//! ` admin=ADDR` appended with `--admin`, ` noise=ADDR noise_public=HEX` with
//! `--tcp-noise`, ` wss=ADDR` with `--wss`) on stdout once it accepts connections; stops on SIGTERM or Ctrl-C, saying
//! Bye ShuttingDown to its sessions.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gameserver::gateway::{BalancerReport, Gateway, GatewayConfig, PairConfig};
use gameserver::proto::noise;

#[derive(Parser, Debug)]
#[command(
    about = "The gateway: players' TCP and WebSocket connections, routed to room-server pairs"
)]
struct Args {
    /// A JSON GatewayConfig to start from; the flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// TCP listener (frames back to back). Default 0.0.0.0:7600.
    #[arg(long)]
    tcp: Option<String>,
    /// WebSocket listener (one binary message per frame). Default 0.0.0.0:7601.
    #[arg(long)]
    ws: Option<String>,
    /// Admin listener (a line `STATS` answers the counters as JSON).
    #[arg(long)]
    admin: Option<String>,
    /// No WebSocket listener.
    #[arg(long)]
    no_ws: bool,
    /// Noise TCP listener (NK handshake, then encrypted frames); needs --noise-key.
    #[arg(long)]
    tcp_noise: Option<String>,
    /// The gateway's Noise private key: 64 hex digits or a file holding them.
    #[arg(long)]
    noise_key: Option<String>,
    /// Write a new Noise private key to this file (mode 0600), print its
    /// public key for the clients, and exit.
    #[arg(long, value_name = "FILE")]
    gen_noise_key: Option<PathBuf>,
    /// WebSocket over TLS listener (wss://); needs --tls-cert and --tls-key.
    #[arg(long)]
    wss: Option<String>,
    /// PEM certificate chain of the wss listener.
    #[arg(long)]
    tls_cert: Option<String>,
    /// PEM private key of the wss listener.
    #[arg(long)]
    tls_key: Option<String>,
    /// SO_REUSEPORT: several gateway processes share the ports.
    #[arg(long)]
    reuse_port: bool,
    /// Token secret shared with the login side (or env GS_TOKEN_SECRET).
    #[arg(long)]
    secret: Option<String>,
    /// Zone served (tokens of other zones are refused).
    #[arg(long)]
    zone: Option<u32>,
    /// A room-server pair: ROOMS@NODE,NODE, e.g. 1-10@127.0.0.1:7101,127.0.0.1:7102 (repeat per pair).
    #[arg(long = "pair")]
    pairs: Vec<String>,
    /// The center pair's link addresses, comma-separated (none: no center).
    #[arg(long, value_delimiter = ',')]
    center: Vec<String>,
    /// How long a login waits for the center's first answer, ms.
    #[arg(long)]
    center_login_timeout_ms: Option<u64>,

    /// Balancer address to push status to (repeat for the balancer pair).
    #[arg(long = "balancer")]
    balancers: Vec<String>,
    /// Process id in the balancer (default: MAC + pid).
    #[arg(long)]
    process_id: Option<String>,
    /// Address the balancer hands to clients.
    #[arg(long, default_value = "127.0.0.1")]
    advertise_host: String,
    /// Port the balancer hands to clients (default: the TCP port).
    #[arg(long)]
    advertise_port: Option<u16>,
    /// The balancer API's secret (or env BALANCER_SECRET).
    #[arg(long)]
    balancer_secret: Option<String>,
    /// Status push period, ms.
    #[arg(long, default_value_t = 500)]
    report_interval_ms: u64,

    #[arg(long)]
    frame_bytes_max: Option<usize>,
    #[arg(long)]
    sessions_max: Option<usize>,
    #[arg(long)]
    requests_per_s_max: Option<u32>,
    #[arg(long)]
    requests_burst_max: Option<u32>,
    #[arg(long)]
    in_flight_max: Option<usize>,
    #[arg(long)]
    session_queue_frames_max: Option<usize>,
    #[arg(long)]
    auth_timeout_ms: Option<u64>,
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    #[arg(long)]
    dead_ticks: Option<u32>,
    #[arg(long)]
    unavailable_after_ms: Option<u64>,
    #[arg(long)]
    link_connect_timeout_ms: Option<u64>,
    #[arg(long)]
    link_dead_ms: Option<u64>,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn config(a: &Args) -> Result<GatewayConfig, String> {
    let mut c = match &a.config {
        Some(p) => {
            let s = std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            serde_json::from_str(&s).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => GatewayConfig::new(String::new(), Vec::new()),
    };
    if !a.pairs.is_empty() {
        c.pairs = a
            .pairs
            .iter()
            .map(|p| PairConfig::parse(p))
            .collect::<Result<_, _>>()?;
    }
    if !a.center.is_empty() {
        c.center = a.center.clone();
    }
    if let Some(v) = a.center_login_timeout_ms {
        c.center_login_timeout_ms = v;
    }
    if let Some(s) = a
        .secret
        .clone()
        .or_else(|| std::env::var("GS_TOKEN_SECRET").ok())
    {
        c.secret = s;
    }
    if c.secret.is_empty() {
        return Err("no token secret: give --secret or GS_TOKEN_SECRET".into());
    }
    if c.pairs.is_empty() {
        return Err("no room-server pair: give --pair ROOMS@NODE,NODE".into());
    }
    macro_rules! set {
        ($($f:ident),*) => { $(if let Some(v) = a.$f.clone() { c.$f = v; })* };
    }
    set!(
        tcp,
        zone,
        frame_bytes_max,
        sessions_max,
        requests_per_s_max,
        requests_burst_max,
        in_flight_max,
        session_queue_frames_max,
        auth_timeout_ms,
        heartbeat_ms,
        dead_ticks,
        unavailable_after_ms,
        link_connect_timeout_ms,
        link_dead_ms
    );
    if let Some(ws) = &a.ws {
        c.ws = Some(ws.clone());
    }
    if let Some(admin) = &a.admin {
        c.admin = Some(admin.clone());
    }
    macro_rules! set_some {
        ($($f:ident),*) => { $(if let Some(v) = a.$f.clone() { c.$f = Some(v); })* };
    }
    set_some!(tcp_noise, noise_key, wss, tls_cert, tls_key);
    if a.no_ws {
        c.ws = None;
    }
    c.reuse_port |= a.reuse_port;
    if !a.balancers.is_empty() {
        c.balancer = Some(BalancerReport {
            addrs: a.balancers.clone(),
            process_id: a.process_id.clone().unwrap_or_default(),
            host: a.advertise_host.clone(),
            port: a.advertise_port.unwrap_or(0),
            secret: a
                .balancer_secret
                .clone()
                .or_else(|| std::env::var("BALANCER_SECRET").ok()),
            report_interval_ms: a.report_interval_ms,
        });
    }
    c.validate()?;
    Ok(c)
}

/// `--gen-noise-key FILE`: a new private key, readable by its owner only.
fn gen_noise_key(path: &std::path::Path) -> ExitCode {
    use std::os::unix::fs::OpenOptionsExt;
    let k = noise::StaticKey::generate();
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| writeln!(f, "{}", k.private_hex()));
    match written {
        Ok(()) => {
            println!("noise_public={}", noise::hex(&k.public()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "gs-gateway: cannot create {} ({e}); it must not exist yet",
                path.display()
            );
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Some(path) = &args.gen_noise_key {
        return gen_noise_key(path);
    }
    let cfg = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gs-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gs-gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let g = match Gateway::start(cfg).await {
            Ok(g) => g,
            Err(e) => {
                eprintln!("gs-gateway: {e}");
                return ExitCode::FAILURE;
            }
        };
        let ws = g
            .ws_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into());
        let mut line = format!("gateway listening tcp={} ws={ws}", g.tcp_addr());
        if let Some(admin) = g.admin_addr() {
            line += &format!(" admin={admin}");
        }
        if let (Some(a), Some(k)) = (g.noise_addr(), g.noise_public()) {
            line += &format!(" noise={a} noise_public={}", noise::hex(&k));
        }
        if let Some(a) = g.wss_addr() {
            line += &format!(" wss={a}");
        }
        println!("{line}");
        let _ = std::io::stdout().flush();
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("gs-gateway: cannot handle SIGTERM: {e}");
                    return ExitCode::FAILURE;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!(stats = ?g.stats(), "stopping");
        g.shutdown().await;
        ExitCode::SUCCESS
    })
}
