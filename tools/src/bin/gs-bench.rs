//! `gs-bench`: game-server benchmarks against running gateways; prints a
//! table, and with --json one JSON object last.
//!
//! - `connections --count N`: N idle authenticated sessions with heartbeats
//!   on; `connections_held`, and with `--gateway-pid` the gateways' RSS and
//!   `rss_bytes_per_connection`.
//! - `rooms --bots N --rooms R --interval-ms I` and `chat --players P --rate M`
//!   start a local cluster themselves (`tools::gsbench`).
//! - `logins --clients N`: password logins/s (argon2id at production cost by
//!   default) against an in-process login server (`tools::gsbench::login`).
//! - `handshakes --clients N`: new sessions/s over plain TCP, Noise TCP and
//!   wss against an in-process gateway (`tools::gsbench::crypto`).
//! - `center --players N --registrations R --runs K`: the center pair's
//!   registrations/s and the time until the last of N players has an
//!   operator broadcast (`tools::gsbench::center`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tools::gsbot::{hold_connections, HoldConfig, HoldReport};

#[derive(Parser, Debug)]
#[command(
    name = "gs-bench",
    about = "Game-server benchmarks against running gateways"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Idle authenticated connections with heartbeats: how many are held, and their gateway memory.
    Connections {
        /// Connections to open (past ~19,000 a process runs out of file descriptors here: run several).
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Gateway address (repeatable; connections take them in turn). With --ws, the WebSocket port.
        /// Without one, the bench starts a local cluster with enough gateways.
        #[arg(long = "gateway")]
        gateways: Vec<SocketAddr>,
        #[arg(long)]
        ws: bool,
        /// Noise sessions: with --gateway, the gateways' Noise ports and this
        /// public key (hex); without, `--noise-key -` uses the cluster's.
        #[arg(long)]
        noise_key: Option<String>,
        /// wss sessions: with --gateway, the gateways' wss ports, trusting
        /// this certificate (PEM file); without, `--wss-ca -` uses the cluster's.
        #[arg(long)]
        wss_ca: Option<std::path::PathBuf>,
        /// The gateways' token secret (its bytes are the HMAC key).
        #[arg(long, default_value = "")]
        secret: String,
        #[arg(long, default_value_t = 1)]
        zone: u32,
        /// Print `HELD n` once all are open (for a parent bench process).
        #[arg(long, hide = true)]
        announce_held: bool,
        /// With a started cluster: where its room servers keep their logs.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 5_000_000)]
        first_player: u64,
        /// Gateway process ids whose RSS to measure (repeatable).
        #[arg(long = "gateway-pid")]
        gateway_pids: Vec<u32>,
        /// Bind source addresses across 127.0.0.0/8 (25,000 connections each).
        #[arg(long)]
        spread_sources: bool,
        #[arg(long, default_value_t = 256)]
        connect_concurrency: usize,
        /// Seconds to hold the connections once all are open.
        #[arg(long, default_value_t = 5.0)]
        hold_secs: f64,
        /// Print one JSON object last.
        #[arg(long)]
        json: bool,
    },
    /// Bots acting every --interval-ms, every action broadcast to its room (starts a cluster).
    Rooms {
        #[arg(long, default_value_t = 2000)]
        bots: usize,
        #[arg(long, default_value_t = 10)]
        rooms: u32,
        #[arg(long, default_value_t = 2000)]
        interval_ms: u64,
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        #[arg(long)]
        ws: bool,
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// One room, every player chatting --rate times a second (starts a cluster).
    Chat {
        #[arg(long, default_value_t = 400)]
        players: usize,
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        #[arg(long)]
        ws: bool,
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// New sessions per second over plain TCP, Noise TCP and wss (in-process gateway).
    Handshakes {
        /// Concurrent connect-authenticate-close loops.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Seconds per transport.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long)]
        json: bool,
    },
    /// A flood of Ping frames from authenticated clients: the gateway's CPU, throttling and closes.
    Flood {
        /// Flooding connections, each writing as fast as its socket takes it.
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// How long each flooder tries, seconds (the gateway closes a flooder after flood_close_ms).
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long)]
        json: bool,
    },
    /// Password logins per second against an in-process login server (argon2id).
    Logins {
        /// Concurrent clients, each its own account and keep-alive connection.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Runs (the median and the slowest are reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Argon2id memory (KiB), passes, lanes.
        #[arg(long, default_value_t = gameserver::login::ARGON2_M_KIB)]
        m_kib: u32,
        #[arg(long, default_value_t = gameserver::login::ARGON2_T)]
        t: u32,
        #[arg(long, default_value_t = gameserver::login::ARGON2_P)]
        p: u32,
        /// Hashes at once (default: one per core).
        #[arg(long)]
        hash_concurrency: Option<usize>,
        /// Also measure device guest logins (no argon2).
        #[arg(long)]
        guest: bool,
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// The center pair: registrations/s, and the time until the last of N players has a broadcast.
    Center {
        /// Connected players that get the broadcast (at most 15,000 in this process).
        #[arg(long, default_value_t = 10_000)]
        players: usize,
        /// Logins registered per run.
        #[arg(long, default_value_t = 20_000)]
        registrations: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

fn cluster_bench(r: Result<serde_json::Value, String>, json: bool) -> ExitCode {
    report(r, json, tools::gsbench::table)
}

/// Prints a bench's result (`render` on stderr, one JSON line on stdout with
/// `--json`) and turns it into the exit code.
fn report(
    r: Result<serde_json::Value, String>,
    json: bool,
    render: fn(&serde_json::Value) -> String,
) -> ExitCode {
    match r {
        Ok(v) => {
            eprint!("{}", render(&v));
            if json {
                println!("{v}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gs-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn pretty(v: &serde_json::Value) -> String {
    format!("{v:#}\n")
}

fn print_hold(r: &HoldReport, out: &mut impl std::io::Write) -> std::io::Result<()> {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    writeln!(out, "connections            {}", r.count)?;
    writeln!(out, "connections_held       {}", r.connections_held)?;
    writeln!(out, "connect_failed         {}", r.connect_failed)?;
    writeln!(out, "connect_seconds        {:.2}", r.connect_seconds)?;
    writeln!(out, "gateways               {}", r.gateways)?;
    writeln!(
        out,
        "gateway_rss            {:.1} MiB (before {:.1} MiB)",
        mib(r.gateway_rss_bytes),
        mib(r.gateway_rss_before_bytes)
    )?;
    writeln!(
        out,
        "rss_bytes_per_conn     {:.0}",
        r.rss_bytes_per_connection
    )?;
    writeln!(
        out,
        "client_rss             {:.1} MiB",
        mib(r.client_rss_bytes)
    )?;
    if !r.errors.is_empty() {
        let e: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
        writeln!(out, "errors                 {}", e.join(", "))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cmd = Cli::parse().cmd;
    let cmd = match cmd {
        Cmd::Flood {
            connections,
            seconds,
            json,
        } => {
            return report(
                tools::gsbench::flood::flood(connections, seconds),
                json,
                pretty,
            )
        }
        Cmd::Handshakes {
            clients,
            seconds,
            json,
        } => {
            return report(
                tools::gsbench::crypto::handshakes(clients, seconds),
                json,
                pretty,
            )
        }
        Cmd::Center {
            players,
            registrations,
            runs,
            dir,
            json,
        } => {
            return match tools::gsbench::center::center(players, registrations, runs, &dir) {
                Ok(v) => {
                    if json {
                        println!("{v}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("gs-bench: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Rooms {
            bots,
            rooms,
            interval_ms,
            seconds,
            ws,
            dir,
            json,
        } => {
            return cluster_bench(
                tools::gsbench::rooms(bots, rooms, interval_ms, seconds, ws, &dir),
                json,
            )
        }
        Cmd::Chat {
            players,
            rate,
            seconds,
            ws,
            dir,
            json,
        } => return cluster_bench(tools::gsbench::chat(players, rate, seconds, ws, &dir), json),
        Cmd::Logins {
            clients,
            seconds,
            runs,
            m_kib,
            t,
            p,
            hash_concurrency,
            guest,
            dir,
            json,
        } => {
            let b = tools::gsbench::login::LoginBench {
                clients,
                seconds,
                runs,
                hash: gameserver::login::HashParams { m_kib, t, p },
                hash_concurrency,
                guest,
                dir,
            };
            return cluster_bench(tools::gsbench::login::logins(&b), json);
        }
        c => c,
    };
    let Cmd::Connections {
        count,
        gateways,
        ws,
        noise_key,
        wss_ca,
        secret,
        zone,
        first_player,
        gateway_pids,
        spread_sources,
        connect_concurrency,
        hold_secs,
        json,
        announce_held,
        dir,
    } = cmd
    else {
        unreachable!("the other commands returned above")
    };
    if gateways.is_empty() {
        return cluster_bench(
            tools::gsbench::connections(
                count,
                hold_secs,
                ws,
                noise_key.is_some(),
                wss_ca.is_some(),
                &dir,
            ),
            json,
        );
    }
    if count > 19_000 {
        eprintln!("gs-bench: warning: {count} connections need more file descriptors than the 20,000 a process may hold here; run several processes");
    }
    let noise_key = match noise_key
        .as_deref()
        .map(gameserver::proto::noise::key_from_hex)
    {
        None => None,
        Some(Ok(k)) => Some(k),
        Some(Err(e)) => {
            eprintln!("gs-bench: --noise-key: {e}");
            return ExitCode::from(2);
        }
    };
    let wss_ca = match wss_ca.map(std::fs::read_to_string) {
        None => None,
        Some(Ok(pem)) => Some(pem),
        Some(Err(e)) => {
            eprintln!("gs-bench: --wss-ca: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = HoldConfig {
        gateways: gateways.clone(),
        ws,
        noise_key,
        wss_ca,
        secret: secret.into_bytes(),
        zone,
        first_player,
        count,
        spread_sources,
        connect_concurrency,
        hold: Duration::from_secs_f64(hold_secs.max(0.0)),
        gateway_pids,
        announce_held,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gs-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(hold_connections(cfg));
    if json {
        let _ = print_hold(&r, &mut std::io::stderr());
        println!(
            "{}",
            serde_json::to_string(&r).expect("the report serializes")
        );
    } else {
        let _ = print_hold(&r, &mut std::io::stdout());
    }
    if r.connections_held == 0 && count > 0 {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
