//! `gs-center`: one node of the center pair (see `gameserver::center`), and
//! the operator's commands against its admin HTTP.
//!
//! `gs-center serve ...` prints `CENTER hs=ADDR link=ADDR admin=ADDR` when it
//! listens, then `EVENT <debug>` for role changes. The other commands print
//! the master's JSON answer and exit non-zero on an error:
//! `gs-center kick --admin A,B --player 42 --reason cheating [--ban-ms 0]`,
//! `gs-center blacklist add|remove|list --admin A,B (--player P | --addr IP) ...`,
//! `gs-center stats --admin A,B`, `gs-center broadcast --admin A,B --text ...`.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gameserver::center::{admin, CenterConfig, CenterServer};

#[derive(Parser, Debug)]
#[command(
    about = "The center server: the zone's user table, login queue, blacklist and broadcasts, replicated through hs"
)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Debug)]
struct AdminArgs {
    /// The center nodes' admin addresses (comma-separated): the master answers.
    #[arg(long, value_delimiter = ',', required = true)]
    admin: Vec<String>,
    /// The admin secret (or env GS_CENTER_SECRET).
    #[arg(long)]
    secret: Option<String>,
}

#[derive(Subcommand, Debug)]
enum BanCmd {
    /// Blacklist an account or an address (and close its sessions).
    Add {
        #[command(flatten)]
        a: AdminArgs,
        #[arg(long)]
        player: Option<u64>,
        #[arg(long)]
        addr: Option<IpAddr>,
        #[arg(long, default_value = "")]
        reason: String,
        /// Expires after this long, ms (default: for good).
        #[arg(long)]
        expires_ms: Option<u64>,
    },
    Remove {
        #[command(flatten)]
        a: AdminArgs,
        #[arg(long)]
        player: Option<u64>,
        #[arg(long)]
        addr: Option<IpAddr>,
    },
    List {
        #[command(flatten)]
        a: AdminArgs,
    },
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a center node.
    Serve(Box<Serve>),
    /// Close a player's session (optionally blacklisting the account).
    Kick {
        #[command(flatten)]
        a: AdminArgs,
        #[arg(long)]
        player: u64,
        #[arg(long, default_value = "")]
        reason: String,
        /// Also blacklist the account this long, ms (0: for good).
        #[arg(long)]
        ban_ms: Option<u64>,
    },
    #[command(subcommand)]
    Blacklist(BanCmd),
    /// Online statistics per zone and gateway.
    Stats {
        #[command(flatten)]
        a: AdminArgs,
    },
    /// A notice to everyone, a channel, or a list of players.
    Broadcast {
        #[command(flatten)]
        a: AdminArgs,
        #[arg(long)]
        text: String,
        #[arg(long)]
        channel: Option<u32>,
        #[arg(long, value_delimiter = ',')]
        players: Option<Vec<u64>>,
    },
}

#[derive(clap::Args, Debug)]
struct Serve {
    #[command(flatten)]
    hs: gameserver::pairnode::HsArgs,
    /// Where gateways connect.
    #[arg(long, default_value = "127.0.0.1:0")]
    link: SocketAddr,
    /// The other node's link address (told to gateways reaching the standby).
    #[arg(long)]
    peer_link: Option<SocketAddr>,
    /// Admin HTTP address.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Admin secret (or env GS_CENTER_SECRET); required off loopback.
    #[arg(long)]
    secret: Option<String>,
    #[arg(long)]
    prefer_master: bool,
    #[arg(long, default_value_t = 100)]
    pair_id: u64,
    /// Players admitted per zone before logins wait in the queue.
    #[arg(long, default_value_t = 100_000)]
    online_max: u64,
    /// Per-zone override, ZONE=MAX (repeat).
    #[arg(long = "zone-online-max")]
    zone_online_max: Vec<String>,
    /// Sessions waiting per zone at most.
    #[arg(long, default_value_t = 10_000)]
    queue_max: usize,
    /// A gateway's players stay this long after its link went, ms.
    #[arg(long, default_value_t = 10_000)]
    gateway_grace_ms: u64,
    #[arg(long, default_value_t = 1000)]
    standby_wait_ms: u64,
}

fn secret(s: &Option<String>) -> Option<String> {
    s.clone().or_else(|| std::env::var("GS_CENTER_SECRET").ok())
}

fn serve(a: Serve) -> ExitCode {
    let hs = a.hs.config(a.pair_id, 1 << 20);
    let mut cfg = CenterConfig::new(hs, a.link);
    cfg.prefer_master = a.prefer_master;
    cfg.peer_link = a.peer_link;
    cfg.admin_listen = a.admin;
    cfg.admin_secret = secret(&a.secret);
    cfg.standby_wait_ms = a.standby_wait_ms;
    cfg.core.node = std::process::id() as u64;
    cfg.core.online_max = a.online_max;
    cfg.core.queue_max = a.queue_max;
    cfg.core.gateway_grace_ms = a.gateway_grace_ms;
    for z in &a.zone_online_max {
        let Some((zone, max)) = z
            .split_once('=')
            .and_then(|(z, m)| Some((z.parse().ok()?, m.parse().ok()?)))
        else {
            eprintln!("gs-center: --zone-online-max {z:?}: expected ZONE=MAX");
            return ExitCode::from(2);
        };
        cfg.core.zone_online_max.insert(zone, max);
    }
    let c = match CenterServer::start(cfg) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gs-center: {e}");
            return ExitCode::FAILURE;
        }
    };
    let node = c.node().clone();
    println!(
        "CENTER hs={} link={} admin={}",
        node.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        c.link_addr,
        c.admin_addr.map(|a| a.to_string()).unwrap_or_default()
    );
    let _ = std::io::stdout().flush();
    gameserver::pairnode::print_events(&node)
}

fn ask(a: &AdminArgs, method: &str, path: &str, body: Option<serde_json::Value>) -> ExitCode {
    match admin::call_master(
        &a.admin,
        secret(&a.secret).as_deref(),
        method,
        path,
        body.as_ref(),
    ) {
        Ok((status, v)) => {
            println!("{v}");
            if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                eprintln!("gs-center: HTTP {status}");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("gs-center: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    use serde_json::json;
    match args.cmd {
        Cmd::Serve(s) => serve(*s),
        Cmd::Kick {
            a,
            player,
            reason,
            ban_ms,
        } => ask(
            &a,
            "POST",
            "/v1/kick",
            Some(json!({ "player": player, "reason": reason, "ban_ms": ban_ms })),
        ),
        Cmd::Blacklist(BanCmd::Add {
            a,
            player,
            addr,
            reason,
            expires_ms,
        }) => ask(
            &a,
            "POST",
            "/v1/blacklist",
            Some(json!({ "player": player, "addr": addr, "reason": reason, "ttl_ms": expires_ms })),
        ),
        Cmd::Blacklist(BanCmd::Remove { a, player, addr }) => ask(
            &a,
            "POST",
            "/v1/blacklist/remove",
            Some(json!({ "player": player, "addr": addr })),
        ),
        Cmd::Blacklist(BanCmd::List { a }) => ask(&a, "GET", "/v1/blacklist", None),
        Cmd::Stats { a } => ask(&a, "GET", "/v1/stats", None),
        Cmd::Broadcast {
            a,
            text,
            channel,
            players,
        } => ask(
            &a,
            "POST",
            "/v1/broadcast",
            Some(json!({ "text": text, "channel": channel, "players": players })),
        ),
    }
}
