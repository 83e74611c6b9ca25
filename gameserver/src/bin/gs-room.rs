//! `gs-room`: one node of a room-server pair (see `gameserver::roomserver`).
//!
//! Prints `ROOMSERVER hs=ADDR link=ADDR admin=ADDR` when it listens, then
//! `EVENT <debug>` for role changes, rollbacks and resyncs.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use gameserver::game::GameKind;
use gameserver::room::RoomConfig;
use gameserver::roomserver::{RoomServer, RoomServerConfig};

#[derive(Parser, Debug)]
#[command(about = "A room server: many rooms of a table game, replicated to a standby through hs")]
struct Args {
    #[command(flatten)]
    hs: gameserver::pairnode::HsArgs,
    /// Where gateways connect.
    #[arg(long, default_value = "127.0.0.1:0")]
    link: SocketAddr,
    /// The other node's link address (told to gateways that reach this one while it is standby).
    #[arg(long)]
    peer_link: Option<SocketAddr>,
    /// Admin port (lines: ROLE, STATS, SWITCHOVER, ROOMS).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Prefer to be master when both nodes start.
    #[arg(long)]
    prefer_master: bool,
    #[arg(long, default_value_t = 1)]
    pair_id: u64,
    /// Rooms served: first id and count.
    #[arg(long, default_value_t = 1)]
    first_room: u32,
    #[arg(long, default_value_t = 10)]
    rooms: u32,
    /// Game of every room (gomoku).
    #[arg(long, default_value = "gomoku")]
    game: String,
    /// Tables per room.
    #[arg(long, default_value_t = 100)]
    tables: u16,
    /// Players per room at most.
    #[arg(long, default_value_t = 400)]
    capacity: u32,
    /// Time per turn before the timer plays for an idle player, ms.
    #[arg(long, default_value_t = 15_000)]
    turn_ms: u32,
    /// Balancer to report status to (repeat for a balancer pair).
    #[arg(long = "balancer")]
    balancers: Vec<String>,
    /// Zone the room server reports under.
    #[arg(long, default_value_t = gameserver::roomserver::ROOMS_ZONE_DEFAULT)]
    report_zone: u32,
    /// How long a reply waits for a standby that is not connected, ms.
    #[arg(long, default_value_t = 1000)]
    standby_wait_ms: u64,
    /// Player-data database (`sqlite:PATH` or `postgres://...`, the login
    /// server's): data loaded at Enter, records saved at each game's end.
    /// Without it players play with default data and nothing is saved.
    #[arg(long)]
    db: Option<String>,
    /// How often a batch of players' activity is saved, ms.
    #[arg(long, default_value_t = 1000)]
    activity_save_period_ms: u64,
    /// Share of the dirty players saved per batch, percent.
    #[arg(long, default_value_t = 100)]
    activity_save_share_percent: u32,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    let Some(game) = GameKind::parse(&a.game) else {
        eprintln!("gs-room: unknown game {:?}; games: gomoku", a.game);
        return ExitCode::from(2);
    };
    let hs = a.hs.config(a.pair_id, 4 << 20);
    let rooms = (a.first_room..a.first_room + a.rooms)
        .map(|id| RoomConfig {
            id,
            name: format!("Room {id}"),
            game,
            tables: a.tables,
            capacity: a.capacity,
            turn_ms: a.turn_ms,
        })
        .collect();
    let mut cfg = RoomServerConfig::new(hs, a.link, rooms);
    cfg.prefer_master = a.prefer_master;
    cfg.peer_link = a.peer_link;
    cfg.admin_listen = a.admin;
    cfg.standby_wait_ms = a.standby_wait_ms;
    cfg.report_zone = a.report_zone;
    cfg.activity_save_period_ms = a.activity_save_period_ms;
    cfg.activity_save_share_percent = a.activity_save_share_percent;
    if let Some(url) = &a.db {
        match gameserver::accounts::open(url) {
            Ok(s) => cfg.store = Some(gameserver::roomserver::PlayerStore(s)),
            Err(e) => {
                eprintln!("gs-room: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if !a.balancers.is_empty() {
        cfg.balancer = Some(gameserver::gateway::BalancerReport {
            addrs: a.balancers.clone(),
            process_id: format!("{}-room", balancer::client::local_process_id()),
            host: a.link.ip().to_string(),
            port: 0,
            secret: None,
            report_interval_ms: 500,
        });
    }
    let rs = match RoomServer::start(cfg) {
        Ok(rs) => rs,
        Err(e) => {
            eprintln!("gs-room: {e}");
            return ExitCode::FAILURE;
        }
    };
    let node = rs.node().clone();
    println!(
        "ROOMSERVER hs={} link={} admin={}",
        node.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        rs.link_addr,
        rs.admin_addr.map(|a| a.to_string()).unwrap_or_default()
    );
    let _ = std::io::stdout().flush();
    gameserver::pairnode::print_events(&node)
}
