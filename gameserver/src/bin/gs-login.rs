//! `gs-login`: the login server (see `gameserver::login`).
//!
//! Prints `login listening http=ADDR` on stdout once it accepts requests;
//! stops on SIGTERM or Ctrl-C.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use gameserver::login::{GatewayAddr, HashParams, LoginConfig, TestPlatform};

#[derive(Parser, Debug)]
#[command(about = "The login server: accounts in a database, tokens and gateways out")]
struct Args {
    /// HTTP listener.
    #[arg(long, default_value = "0.0.0.0:7500")]
    listen: SocketAddr,
    /// Zone the tokens are for (the gateways of this zone accept them).
    #[arg(long, default_value_t = 1)]
    zone: u32,
    /// Token secret shared with the gateways (or env GS_TOKEN_SECRET).
    #[arg(long)]
    secret: Option<String>,
    /// Account database: sqlite:PATH, a plain path, or postgres://USER@HOST/DB.
    #[arg(long, default_value = "sqlite:./accounts.db")]
    db: String,
    /// A gateway to hand out: TCP[,WS], e.g. 127.0.0.1:7600,127.0.0.1:7601 (repeatable).
    #[arg(long = "gateway")]
    gateways: Vec<String>,
    /// Balancer to pick the least-loaded gateway from (repeat for the balancer pair).
    #[arg(long = "balancer")]
    balancers: Vec<SocketAddr>,
    /// Token lifetime, ms.
    #[arg(long, default_value_t = gameserver::login::TOKEN_TTL_MS)]
    token_ttl_ms: u64,
    /// Requests per second at most, all sources together.
    #[arg(long, default_value_t = gameserver::login::RATE_PER_S)]
    rate_per_s: u64,
    /// Per source address: burst, then requests per second.
    #[arg(long, default_value_t = gameserver::login::ADDR_BURST)]
    addr_burst: u32,
    #[arg(long, default_value_t = gameserver::login::ADDR_PER_S)]
    addr_per_s: f64,
    /// Argon2id memory (KiB), passes and lanes of new hashes.
    #[arg(long, default_value_t = gameserver::login::ARGON2_M_KIB)]
    argon2_m_kib: u32,
    #[arg(long, default_value_t = gameserver::login::ARGON2_T)]
    argon2_t: u32,
    #[arg(long, default_value_t = gameserver::login::ARGON2_P)]
    argon2_p: u32,
    /// Hashes running at once at most (default: one per core).
    #[arg(long)]
    hash_concurrency: Option<usize>,
    /// Enables the `test` platform (HMAC-signed user tokens) with this key.
    /// For test setups only.
    #[arg(long)]
    test_platform_key: Option<String>,
}

fn gateway(s: &str) -> Result<GatewayAddr, String> {
    let (tcp, ws) = s.split_once(',').map_or((s, None), |(t, w)| (t, Some(w)));
    let addr = |a: &str| {
        a.parse::<SocketAddr>()
            .map_err(|e| format!("--gateway {s}: {a:?}: {e}"))
    };
    Ok(GatewayAddr {
        tcp: addr(tcp)?,
        ws: ws.map(addr).transpose()?,
    })
}

fn config(a: &Args) -> Result<LoginConfig, String> {
    let secret = a
        .secret
        .clone()
        .or_else(|| std::env::var("GS_TOKEN_SECRET").ok())
        .filter(|s| !s.is_empty())
        .ok_or("no token secret: give --secret or GS_TOKEN_SECRET")?;
    let gateways = a
        .gateways
        .iter()
        .map(|g| gateway(g))
        .collect::<Result<Vec<_>, _>>()?;
    if gateways.is_empty() && a.balancers.is_empty() {
        return Err("no gateway to hand out: give --gateway or --balancer".into());
    }
    let store = gameserver::accounts::open(&a.db).map_err(|e| e.to_string())?;
    let mut c = LoginConfig::new(a.listen, secret.into_bytes(), a.zone, store);
    c.gateways = gateways;
    c.balancer = a.balancers.clone();
    c.token_ttl_ms = a.token_ttl_ms;
    c.rate_per_s = a.rate_per_s;
    c.limits.addr_burst = a.addr_burst;
    c.limits.addr_per_s = a.addr_per_s;
    c.hash = HashParams {
        m_kib: a.argon2_m_kib,
        t: a.argon2_t,
        p: a.argon2_p,
    };
    if let Some(n) = a.hash_concurrency {
        c.hash_concurrency = n.max(1);
    }
    if let Some(k) = &a.test_platform_key {
        c.platforms.push((
            TestPlatform::NAME.to_string(),
            Arc::new(TestPlatform::new(k.as_bytes())),
        ));
    }
    Ok(c)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let cfg = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gs-login: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gs-login: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let l = match tokio::net::TcpListener::bind(cfg.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("gs-login: cannot listen on {}: {e}", cfg.listen);
                return ExitCode::FAILURE;
            }
        };
        match l.local_addr() {
            Ok(a) => println!("login listening http={a}"),
            Err(e) => {
                eprintln!("gs-login: {e}");
                return ExitCode::FAILURE;
            }
        }
        let _ = std::io::stdout().flush();
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("gs-login: cannot handle SIGTERM: {e}");
                    return ExitCode::FAILURE;
                }
            };
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        match gameserver::login::serve(cfg, l, stop).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gs-login: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
