//! `gs-bench rooms` and `gs-bench chat`: a local cluster ([`crate::gscluster`])
//! under bots run as `gs-bot` processes (a process may hold at most 20,000
//! file descriptors here, so past [`BOTS_PER_PROCESS_MAX`] the bots are
//! split), with the CPU the server processes spent read from /proc.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::gscluster::{Cluster, ClusterOpts};
use crate::proc::Proc;

/// Bots one `gs-bot` process runs (its descriptors, with margin).
pub const BOTS_PER_PROCESS_MAX: usize = 15_000;
/// Sessions one gateway takes in these benches (its descriptors, with margin).
pub const SESSIONS_PER_GATEWAY_MAX: usize = 19_000;

/// CPU time (user + system) of a process, ms, from /proc/PID/stat.
pub fn cpu_ms(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    let hz = 100.0; // USER_HZ on Linux
    Some((utime + stime) * 1000.0 / hz)
}

fn cluster_cpu_ms(cl: &Cluster) -> f64 {
    cl.pids().iter().filter_map(|(_, pid)| cpu_ms(*pid)).sum()
}

/// One bench run's bots: `bots` players over `rooms` rooms, split into processes.
struct BotRun {
    bots: usize,
    rooms: u32,
    move_ms: u64,
    chat_ms: u64,
    seconds: f64,
    ws: bool,
}

fn run_bots(cl: &Cluster, r: &BotRun) -> Result<Vec<Value>, String> {
    let exe = crate::gscluster::bin_dir().join("gs-bot");
    // Whole tables of every room per process, so processes never share a table.
    let per_proc_pairs = (BOTS_PER_PROCESS_MAX / 2 / r.rooms as usize).max(1) * r.rooms as usize;
    let mut procs = Vec::new();
    let (mut done, mut first_table) = (0usize, 0usize);
    let mut k = 0;
    while done < r.bots {
        let n = (r.bots - done).min(per_proc_pairs * 2);
        let gw = &cl.gateways[k % cl.gateways.len()];
        let addr = if r.ws {
            gw.ws.unwrap_or(gw.tcp)
        } else {
            gw.tcp
        };
        let mut args: Vec<String> = vec![
            "--gateway".into(),
            addr.to_string(),
            "--secret".into(),
            cl.opts.secret.clone(),
            "--zone".into(),
            cl.opts.zone.to_string(),
            "--first-player".into(),
            (1_000_000 + done as u64).to_string(),
            "--bots".into(),
            n.to_string(),
            "--rooms".into(),
            r.rooms.to_string(),
            "--first-table".into(),
            first_table.to_string(),
            "--move-ms".into(),
            r.move_ms.to_string(),
            "--chat-ms".into(),
            r.chat_ms.to_string(),
            "--seconds".into(),
            r.seconds.to_string(),
            "--json".into(),
        ];
        if r.ws {
            args.push("--ws".into());
        }
        if n > 20_000 {
            args.push("--spread-sources".into());
        }
        procs.push(Proc::spawn(
            &format!("bots{k}"),
            &exe,
            &args,
            Stdio::null(),
            false,
        )?);
        first_table += n.div_ceil(2).div_ceil(r.rooms as usize);
        done += n;
        k += 1;
    }
    let mut out = Vec::new();
    let wait = Duration::from_secs_f64(r.seconds + 120.0);
    for mut p in procs {
        // wait_line strips the prefix: put the brace back.
        let line = format!("{{{}", p.wait_line("{", wait)?);
        out.push(serde_json::from_str(&line).map_err(|e| format!("gs-bot JSON: {e}: {line}"))?);
        let _ = p.wait_exit(Duration::from_secs(30));
    }
    Ok(out)
}

fn sum(reports: &[Value], key: &str) -> f64 {
    reports.iter().map(|r| r[key].as_f64().unwrap_or(0.0)).sum()
}

/// The worst of the processes' values (their latencies cannot be merged
/// exactly from percentiles; the worst process is what a player may meet).
fn worst(reports: &[Value], a: &str, b: &str) -> f64 {
    reports
        .iter()
        .map(|r| r[a][b].as_f64().unwrap_or(0.0))
        .fold(0.0, f64::max)
}

fn start(
    dir: &Option<PathBuf>,
    bots: usize,
    rooms: u32,
    tables: u16,
) -> Result<(Cluster, PathBuf), String> {
    let tmp = std::env::temp_dir().join(format!(
        "gs-bench-{}-{}",
        std::process::id(),
        gameserver::token::now_ms()
    ));
    let path = dir.clone().unwrap_or_else(|| tmp.clone());
    let mut o = ClusterOpts::new(&path);
    o.pairs = if rooms >= 2 { 2 } else { 1 };
    o.rooms_per_pair = rooms.div_ceil(o.pairs as u32);
    o.tables = tables;
    o.capacity = 400.max((bots as u32).div_ceil(rooms));
    o.turn_ms = 60_000;
    o.gateways = bots.div_ceil(SESSIONS_PER_GATEWAY_MAX).max(1);
    o.segment_mb = 64;
    o.balancer = false;
    o.gateway_args = vec![
        "--sessions-max".into(),
        "20000".into(),
        "--requests-per-s-max".into(),
        "1000".into(),
    ];
    Ok((Cluster::start(o)?, path))
}

/// `rooms --bots N --rooms R --interval-ms I`: bots acting every I ms (a move
/// on their turn; each bot's turn comes every other move), every action
/// broadcast to its room, room pairs replicating.
pub fn rooms(
    bots: usize,
    rooms: u32,
    interval_ms: u64,
    seconds: f64,
    ws: bool,
    dir: &Option<PathBuf>,
) -> Result<Value, String> {
    let tables = (bots.div_ceil(2) as u32).div_ceil(rooms).max(1) as u16;
    let (cl, path) = start(dir, bots, rooms, tables)?;
    let cpu0 = cluster_cpu_ms(&cl);
    let t0 = Instant::now();
    let reports = run_bots(
        &cl,
        &BotRun {
            bots,
            rooms,
            move_ms: (interval_ms / 2).max(1),
            chat_ms: 0,
            seconds,
            ws,
        },
    )?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cluster_cpu_ms(&cl) - cpu0;
    let actions = sum(&reports, "actions");
    let secs = reports
        .iter()
        .map(|r| r["seconds"].as_f64().unwrap_or(seconds))
        .fold(0.0, f64::max)
        .max(1e-3);
    let members = (bots as f64 / rooms as f64).min(bots as f64);
    let v = json!({
        "scenario": "rooms", "bots": bots, "rooms": rooms, "interval_ms": interval_ms, "seconds": secs,
        "gateways": cl.gateways.len(), "pairs": cl.pairs.len(), "bot_processes": reports.len(),
        "connections_held": sum(&reports, "connections_held"),
        "actions": actions, "actions_per_s": actions / secs,
        "deliveries_per_s": actions / secs * members,
        "p50_ms": worst(&reports, "action", "p50_ms"), "p99_ms": worst(&reports, "action", "p99_ms"),
        "max_ms": worst(&reports, "action", "max_ms"),
        "disconnects": sum(&reports, "disconnects"), "connect_failed": sum(&reports, "connect_failed"),
        "gaps": sum(&reports, "gaps"), "errors": reports.iter().map(|r| r["errors"].clone()).collect::<Vec<_>>(),
        "server_cpu_ms": cpu, "server_cpu_share": cpu / 1000.0 / wall,
    });
    drop(cl);
    if dir.is_none() {
        let _ = std::fs::remove_dir_all(path);
    }
    Ok(v)
}

/// `chat --players P --rate M`: one room of P players, each sending M
/// messages a second; every message is delivered to all P.
pub fn chat(
    players: usize,
    rate_per_s: f64,
    seconds: f64,
    ws: bool,
    dir: &Option<PathBuf>,
) -> Result<Value, String> {
    let tables = players.div_ceil(2) as u16;
    let (cl, path) = start(dir, players, 1, tables)?;
    let cpu0 = cluster_cpu_ms(&cl);
    let t0 = Instant::now();
    let reports = run_bots(
        &cl,
        &BotRun {
            bots: players,
            rooms: 1,
            move_ms: 3_600_000, // chat only: nobody moves
            chat_ms: (1000.0 / rate_per_s).max(1.0) as u64,
            seconds,
            ws,
        },
    )?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cluster_cpu_ms(&cl) - cpu0;
    let secs = reports
        .iter()
        .map(|r| r["seconds"].as_f64().unwrap_or(seconds))
        .fold(0.0, f64::max)
        .max(1e-3);
    let chats = sum(&reports, "chats_sent");
    let deliveries = chats * players as f64;
    let v = json!({
        "scenario": "chat", "players": players, "rate_per_s": rate_per_s, "seconds": secs,
        "chats": chats, "deliveries": deliveries, "deliveries_per_s": deliveries / secs,
        "p50_ms": worst(&reports, "chat", "p50_ms"), "p99_ms": worst(&reports, "chat", "p99_ms"),
        "max_ms": worst(&reports, "chat", "max_ms"),
        "disconnects": sum(&reports, "disconnects"), "gaps": sum(&reports, "gaps"),
        "server_cpu_ms": cpu, "server_cpu_share": cpu / 1000.0 / wall,
        "server_cpu_ms_per_1000_deliveries": if deliveries > 0.0 { cpu / (deliveries / 1000.0) } else { 0.0 },
    });
    drop(cl);
    if dir.is_none() {
        let _ = std::fs::remove_dir_all(path);
    }
    Ok(v)
}

/// A report as aligned `key value` lines.
pub fn table(v: &Value) -> String {
    let mut s = String::new();
    if let Some(m) = v.as_object() {
        for (k, x) in m {
            let x = match x {
                Value::Number(n) if n.is_f64() => format!("{:.2}", n.as_f64().unwrap_or(0.0)),
                other => other.to_string(),
            };
            s.push_str(&format!("  {k:<24} {x}\n"));
        }
    }
    s
}

/// `connections --count N` on a cluster it starts: N idle authenticated
/// sessions with heartbeats, over `ceil(N / SESSIONS_PER_GATEWAY_MAX)`
/// gateways on their own ports, held by `gs-bench connections` child
/// processes of at most [`BOTS_PER_PROCESS_MAX`] each. The gateways' RSS is
/// read once every child holds all of its sessions.
pub fn connections(
    count: usize,
    hold_secs: f64,
    ws: bool,
    noise: bool,
    wss: bool,
    dir: &Option<PathBuf>,
) -> Result<Value, String> {
    let tmp = std::env::temp_dir().join(format!(
        "gs-bench-{}-{}",
        std::process::id(),
        gameserver::token::now_ms()
    ));
    let path = dir.clone().unwrap_or_else(|| tmp.clone());
    let mut o = ClusterOpts::new(&path);
    o.pairs = 1;
    o.rooms_per_pair = 1;
    o.tables = 1;
    o.gateways = count.div_ceil(SESSIONS_PER_GATEWAY_MAX).max(1);
    o.balancer = false;
    o.gateway_args = vec!["--sessions-max".into(), "20000".into()];
    let cl = Cluster::start(o)?;
    let pids: Vec<u32> = cl.gateways.iter().map(|g| g.proc.pid()).collect();
    let rss = |pids: &[u32]| -> u64 {
        pids.iter()
            .filter_map(|p| crate::gsbot::rss_bytes(*p))
            .sum()
    };
    let before = rss(&pids);
    let exe = crate::gscluster::bin_dir().join("gs-bench");
    let procs_n = count.div_ceil(BOTS_PER_PROCESS_MAX).max(1);
    let mut procs = Vec::new();
    let t0 = Instant::now();
    for k in 0..procs_n {
        let n = count / procs_n + usize::from(k < count % procs_n);
        let mut args: Vec<String> = vec!["connections".into(), "--count".into(), n.to_string()];
        // Each child spreads over every gateway; child k starts at gateway k.
        for i in 0..cl.gateways.len() {
            let g = &cl.gateways[(k + i) % cl.gateways.len()];
            let addr = match (noise, g.noise, wss, g.wss) {
                (true, Some(n), _, _) => n,
                (_, _, true, Some(w)) => w,
                _ if ws => g.ws.unwrap_or(g.tcp),
                _ => g.tcp,
            };
            args.extend(["--gateway".into(), addr.to_string()]);
        }
        if let (true, Some(k)) = (noise, cl.gateways[0].noise_public) {
            args.extend(["--noise-key".into(), gameserver::proto::noise::hex(&k)]);
        }
        if wss {
            let ca = cl.gateways[0].tls_cert.display().to_string();
            args.extend(["--wss-ca".into(), ca]);
        }
        args.extend([
            "--secret".into(),
            cl.opts.secret.clone(),
            "--first-player".into(),
            (10_000_000 + (k * BOTS_PER_PROCESS_MAX) as u64).to_string(),
            "--hold-secs".into(),
            (hold_secs + 60.0).to_string(),
            "--announce-held".into(),
            "--json".into(),
        ]);
        if ws {
            args.push("--ws".into());
        }
        procs.push(Proc::spawn(
            &format!("hold{k}"),
            &exe,
            &args,
            Stdio::null(),
            false,
        )?);
    }
    let mut opened = 0.0;
    for p in &mut procs {
        opened += p
            .wait_line("HELD", Duration::from_secs(600))?
            .parse::<f64>()
            .unwrap_or(0.0);
    }
    let connect_seconds = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs_f64(hold_secs));
    let after = rss(&pids);
    let mut reports = Vec::new();
    for p in &mut procs {
        let line = format!(
            "{{{}",
            p.wait_line("{", Duration::from_secs_f64(hold_secs + 180.0))?
        );
        reports.push(
            serde_json::from_str::<Value>(&line)
                .map_err(|e| format!("gs-bench child JSON: {e}"))?,
        );
    }
    let held = sum(&reports, "connections_held");
    let v = json!({
        "scenario": "connections", "count": count, "noise": noise, "wss": wss, "opened": opened, "connections_held": held,
        "connect_failed": sum(&reports, "connect_failed"), "connect_seconds": connect_seconds,
        "gateways": cl.gateways.len(), "client_processes": procs_n,
        "gateway_rss_before_bytes": before, "gateway_rss_bytes": after,
        "rss_bytes_per_connection": if opened > 0.0 { after.saturating_sub(before) as f64 / opened } else { 0.0 },
        "errors": reports.iter().map(|r| r["errors"].clone()).collect::<Vec<_>>(),
    });
    drop(cl);
    if dir.is_none() {
        let _ = std::fs::remove_dir_all(path);
    }
    Ok(v)
}

/// `gs-bench handshakes`: new sessions/s by transport (plain, Noise, wss).
#[path = "gsbench_crypto.rs"]
pub mod crypto;

/// `gs-bench flood`: the gateway's CPU under a flood of frames.
#[path = "gsbench_flood.rs"]
pub mod flood;

/// `gs-bench logins`: logins/s against an in-process login server.
#[path = "gsbench_login.rs"]
pub mod login;

/// `gs-bench center`: registrations/s and broadcast time on the center pair.
#[path = "gsbench_center.rs"]
pub mod center;
