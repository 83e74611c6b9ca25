//! The failover drill: a master/slave pair and a witness as real processes on
//! 127.0.0.1, a write load acknowledged at a chosen durability level, and, round
//! after round, the master killed (SIGKILL) or stopped (SIGSTOP, a partition as
//! its peers see it). Each round measures the time from the fault to the first
//! write accepted by the new master, restarts or resumes the old one (it must
//! come back as a slave), and checks that every acknowledged write survived.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use rand::{Rng, SeedableRng};

#[derive(Args, Debug, Clone)]
pub struct DrillArgs {
    /// Rounds in which the master is killed with SIGKILL.
    #[arg(long, default_value_t = 10)]
    pub kills: u32,
    /// Rounds in which the master is stopped (SIGSTOP) longer than the failure timeout.
    #[arg(long, default_value_t = 2)]
    pub partitions: u32,
    /// Durability every write is acknowledged at: async, received, flushed, applied.
    #[arg(long, default_value = "received")]
    pub level: String,
    /// Heartbeat period of the pair, milliseconds.
    #[arg(long, default_value_t = 50)]
    pub heartbeat_ms: u64,
    /// Silent ticks before a peer is dead.
    #[arg(long, default_value_t = 6)]
    pub dead_ticks: u32,
    /// Load between faults, milliseconds (a random time in [min, max]).
    #[arg(long, default_value_t = 200)]
    pub load_ms_min: u64,
    #[arg(long, default_value_t = 600)]
    pub load_ms_max: u64,
    /// Seed of the random fault times (printed, so a run can be repeated).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where the nodes keep their logs (default: a fresh temp directory, removed after).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print one JSON object at the end (the table goes to stderr).
    #[arg(long)]
    pub json: bool,
}

/// How long any single step of a round may take before the drill gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// A client request without an answer in this long counts as unacknowledged
/// (above the nodes' --wait-ms, so only a dead or stopped node hits it).
const REQUEST_TIMEOUT: Duration = Duration::from_millis(200);
/// How long the per-round check of every write (one HAVE over all keys) may take.
const BULK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node waits for a write's durability level before answering TIMEOUT.
const NODE_WAIT_MS: u64 = 100;

use crate::proc::Proc;

/// Starts one of the drill's processes (this binary, re-executed).
/// HS_DRILL_LOG=1 shows their logs (set RUST_LOG too).
fn spawn(exe: &std::path::Path, args: &[String]) -> Result<Proc, String> {
    let stderr = if std::env::var_os("HS_DRILL_LOG").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    };
    Proc::spawn(
        &args.get(1).cloned().unwrap_or_default(),
        exe,
        args,
        stderr,
        false,
    )
}

/// One request on a fresh connection (control queries).
fn ask(addr: SocketAddr, req: &str) -> Option<String> {
    ask_within(addr, req, REQUEST_TIMEOUT)
}

fn ask_within(addr: SocketAddr, req: &str, timeout: Duration) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(format!("{req}\n").as_bytes()).ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    Some(line.trim().to_string())
}

/// Whether process `pid` is stopped (state `T` in /proc/<pid>/stat).
fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|st| {
            st.rsplit(')')
                .next()
                .map(|rest| rest.trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}

fn role_of(addr: SocketAddr) -> Option<(String, bool)> {
    let r = ask(addr, "ROLE")?;
    let w: Vec<&str> = r.split_whitespace().collect();
    (w.len() == 4 && w[0] == "ROLE").then(|| (w[1].to_string(), w[3] == "1"))
}

fn stat(addr: SocketAddr, key: &str) -> Option<u64> {
    let r = ask(addr, "STATS")?;
    let v: serde_json::Value = serde_json::from_str(r.strip_prefix("STATS ")?).ok()?;
    v[key].as_u64()
}

/// What the writer knows of each write: 0 not sent, 1 sent without acknowledgement, 2 acknowledged.
struct Ledger {
    state: Vec<u8>,
    /// First write accepted (acknowledged or not) after the mark (the fault), by
    /// whichever node serves then: usually the slave; sometimes the killed master,
    /// restarted fast enough to settle back into the role (it is preferred, and
    /// the two logs were equal). The acceptance time excludes writes the old
    /// master accepted before the fault.
    first_accept_after_mark: Option<Instant>,
    mark: Option<Instant>,
}

/// How long a node that did not answer is avoided.
const SUSPECT_FOR: Duration = Duration::from_secs(1);

fn writer(
    clients: [SocketAddr; 2],
    level: String,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let mut target = 0usize;
    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
    let mut suspect_until = [Instant::now(); 2];
    let mut seq = 0usize;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            conn = TcpStream::connect_timeout(&clients[target], REQUEST_TIMEOUT)
                .ok()
                .and_then(|s| {
                    s.set_read_timeout(Some(REQUEST_TIMEOUT)).ok()?;
                    s.set_nodelay(true).ok()?;
                    let r = BufReader::new(s.try_clone().ok()?);
                    Some((s, r))
                });
            if conn.is_none() {
                // Refused or no answer: try the other node next.
                suspect_until[target] = Instant::now() + SUSPECT_FOR;
                target = 1 - target;
                std::thread::sleep(Duration::from_micros(500));
                continue;
            }
        }
        let (s, r) = conn.as_mut().expect("connected");
        {
            let mut l = ledger.lock().unwrap();
            if l.state.len() <= seq {
                l.state.push(0);
            }
            l.state[seq] = 1;
        }
        let mut line = String::new();
        let ok = s
            .write_all(format!("PUT k{seq} v{seq} {level}\n").as_bytes())
            .is_ok()
            && r.read_line(&mut line).is_ok()
            && !line.is_empty();
        seq += 1;
        if !ok {
            // No answer: the node is dead or stopped. Go to the other, and do not let
            // its NOTMASTER replies send us back here for a while.
            conn = None;
            suspect_until[target] = Instant::now() + SUSPECT_FOR;
            target = 1 - target;
            continue;
        }
        let accepted = line.starts_with("OK") || line.starts_with("TIMEOUT");
        if accepted {
            suspect_until[target] = Instant::now();
            let mut l = ledger.lock().unwrap();
            if line.starts_with("OK") {
                l.state[seq - 1] = 2;
            }
            if let (Some(m), None) = (l.mark, l.first_accept_after_mark) {
                // When the node accepted it: now, less the time it then waited for the level.
                let waited = line
                    .split_whitespace()
                    .nth(2)
                    .and_then(|u| u.parse::<u64>().ok())
                    .unwrap_or(0);
                let at = Instant::now()
                    .checked_sub(Duration::from_micros(waited))
                    .unwrap_or_else(Instant::now);
                if at > m {
                    l.first_accept_after_mark = Some(at);
                }
            }
        } else if line.starts_with("NOTMASTER") {
            conn = None;
            let other = 1 - target;
            // A suspect node may have come back as master (a fast restart that won
            // the settlement): a quick look, rather than waiting the suspicion out.
            let serves = || {
                ask_within(clients[other], "ROLE", Duration::from_millis(50))
                    .is_some_and(|r| r.starts_with("ROLE master") && r.ends_with(" 1"))
            };
            if Instant::now() >= suspect_until[other] || serves() {
                suspect_until[other] = Instant::now();
                target = other;
            }
            std::thread::sleep(Duration::from_micros(500));
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

struct Node {
    proc: Proc,
    args: Vec<String>,
    client: SocketAddr,
}

fn start_node(exe: &std::path::Path, args: Vec<String>) -> Result<Node, String> {
    let mut proc = spawn(exe, &args)?;
    proc.wait_line("LISTEN ", STEP_TIMEOUT)?;
    let client = proc
        .wait_line("CLIENT ", STEP_TIMEOUT)?
        .parse()
        .map_err(|e| format!("bad CLIENT line: {e}"))?;
    Ok(Node { proc, args, client })
}

fn free_port() -> Result<SocketAddr, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map_err(|e| e.to_string())
}

fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T, String> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("gave up waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[derive(Debug, Default, Clone)]
struct Round {
    kind: &'static str,
    failover_ms: f64,
    acked_lost: u64,
    unacked_lost: u64,
    rolled_back: u64,
    acked_total: u64,
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s[((s.len() - 1) as f64 * p).round() as usize]
}

#[derive(clap::Parser, Debug)]
#[command(
    name = "hs-drill",
    about = "Failover drill for an hs pair: kill the master under load, measure, check"
)]
struct DrillCli {
    #[command(flatten)]
    args: DrillArgs,
}

/// The `hs-drill` program: the drill, or (`__node ...`) one of its processes.
pub fn main() -> std::process::ExitCode {
    use clap::Parser;
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "__node") {
        argv.remove(1);
        return crate::cli::main_from(argv);
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("hs-drill: cannot find my own executable: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match run(DrillCli::parse().args, exe) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hs-drill: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

pub fn run(a: DrillArgs, exe: PathBuf) -> Result<std::process::ExitCode, String> {
    if !["async", "received", "flushed", "applied"].contains(&a.level.as_str()) {
        return Err(format!(
            "--level takes async, received, flushed or applied, not {:?}",
            a.level
        ));
    }
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let base = a
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("hs-drill-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).map_err(|e| format!("create {}: {e}", base.display()))?;
    // Fixed ports, so a restarted node is where the writer and its peer expect it.
    let (wa, ra, rb, ca, cb) = (
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
    );
    let hb = a.heartbeat_ms.to_string();
    let dt = a.dead_ticks.to_string();
    let mut witness = spawn(
        &exe,
        &[
            "__node".into(),
            "witness".into(),
            "--listen".into(),
            wa.to_string(),
            "--heartbeat-ms".into(),
            hb.clone(),
            "--dead-ticks".into(),
            dt.clone(),
        ],
    )?;
    witness.wait_line("LISTEN ", STEP_TIMEOUT)?;
    let node_args =
        |name: &str, listen: SocketAddr, peer: SocketAddr, client: SocketAddr, prefer: bool| {
            let mut v: Vec<String> = vec!["__node", "pair", "--dir"]
                .into_iter()
                .map(String::from)
                .collect();
            v.push(base.join(name).display().to_string());
            for (k, val) in [
                ("--listen", listen.to_string()),
                ("--peer", peer.to_string()),
                ("--witness", wa.to_string()),
                ("--heartbeat-ms", hb.clone()),
                ("--dead-ticks", dt.clone()),
                ("--flush", "never".to_string()),
                ("--wait-ms", NODE_WAIT_MS.to_string()),
                ("--client", client.to_string()),
            ] {
                v.push(k.into());
                v.push(val);
            }
            if prefer {
                v.push("--prefer-master".into());
            }
            v
        };
    let mut nodes = [
        start_node(&exe, node_args("a", ra, rb, ca, true))?,
        start_node(&exe, node_args("b", rb, ra, cb, false))?,
    ];
    let clients = [nodes[0].client, nodes[1].client];
    until("a master", || {
        clients
            .iter()
            .position(|c| role_of(*c).is_some_and(|(r, w)| r == "master" && w))
    })?;

    let ledger = Arc::new(Mutex::new(Ledger {
        state: Vec::new(),
        first_accept_after_mark: None,
        mark: None,
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let w = {
        let (l, s, lvl) = (ledger.clone(), stop.clone(), a.level.clone());
        std::thread::spawn(move || writer(clients, lvl, l, s))
    };
    let mut plan: VecDeque<&'static str> = std::iter::repeat_n("kill", a.kills as usize)
        .chain(std::iter::repeat_n("partition", a.partitions as usize))
        .collect();
    // Interleave partitions among the kills.
    let total = plan.len();
    let mut kinds: Vec<&'static str> = Vec::with_capacity(total);
    while let Some(k) = plan.pop_front() {
        kinds.push(k);
    }
    for i in (1..kinds.len()).rev() {
        let j = rng.gen_range(0..=i);
        kinds.swap(i, j);
    }
    let mut rounds: Vec<Round> = Vec::new();
    let mut out: Box<dyn Write> = if a.json {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    writeln!(
        out,
        "hs-drill: {} kills, {} partitions, writes acknowledged at {}, seed {seed}",
        a.kills, a.partitions, a.level
    )
    .ok();
    writeln!(
        out,
        "{:>5} {:>9} {:>12} {:>10} {:>12} {:>11} {:>11}",
        "round", "fault", "failover_ms", "acked_lost", "unacked_lost", "rolled_back", "acked_total"
    )
    .ok();
    let result = (|| -> Result<(), String> {
        for (i, kind) in kinds.iter().enumerate() {
            let load = rng.gen_range(a.load_ms_min..=a.load_ms_max.max(a.load_ms_min));
            std::thread::sleep(Duration::from_millis(load));
            let m = until("a writable master", || {
                clients
                    .iter()
                    .position(|c| role_of(*c).is_some_and(|(r, w)| r == "master" && w))
            })?;
            // The fault first, then the mark: a signal takes effect after kill()
            // returns, and a write the old master accepted before it died or stopped
            // must not count as the new master's.
            if *kind == "kill" {
                nodes[m].proc.kill9();
            } else {
                nodes[m].proc.signal(libc::SIGSTOP);
                let pid = nodes[m].proc.pid();
                until("the master to stop", || is_stopped(pid).then_some(()))?;
            }
            let t0 = Instant::now();
            {
                let mut l = ledger.lock().unwrap();
                l.mark = Some(t0);
                l.first_accept_after_mark = None;
            }
            if std::env::var_os("HS_DRILL_LOG").is_some() {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                eprintln!(
                    "hs-drill: round {} {kind} of node {m} at unix {}.{:06}",
                    i + 1,
                    t.as_secs(),
                    t.subsec_micros()
                );
            }
            if *kind == "kill" {
                // Restarted at once by its supervisor (us): it must rejoin as a slave.
                nodes[m] = start_node(&exe, nodes[m].args.clone())?;
            }
            let failover_at = until("the first write accepted by the new master", || {
                ledger.lock().unwrap().first_accept_after_mark
            })?;
            let failover_ms = failover_at.duration_since(t0).as_secs_f64() * 1e3;
            if *kind != "kill" {
                // Keep it stopped a little longer, then let it run: it must have
                // stopped taking writes (its lease ran out) and come back as a slave.
                std::thread::sleep(Duration::from_millis(a.heartbeat_ms * 2));
                nodes[m].proc.signal(libc::SIGCONT);
            }
            // One node serves, the other follows it and has caught up.
            let master = until("one master and one caught-up slave", || {
                for (i, j) in [(0usize, 1usize), (1, 0)] {
                    let (ri, wi) = role_of(clients[i])?;
                    let (rj, _) = role_of(clients[j])?;
                    if ri == "master" && wi && rj == "slave" {
                        let applied = stat(clients[j], "applied")?;
                        let written = stat(clients[i], "written")?;
                        if applied + 4096 >= written {
                            return Some(i);
                        }
                    }
                }
                None
            })?;
            let rolled_back: u64 = nodes[m]
                .proc
                .drain("EVENT RolledBack")
                .iter()
                .filter_map(|l| {
                    l.split("records: ")
                        .nth(1)?
                        .trim_end_matches(" }")
                        .parse::<u64>()
                        .ok()
                })
                .sum();
            // Every acknowledged write must be on the new master.
            let snapshot: Vec<u8> = ledger.lock().unwrap().state.clone();
            let n = snapshot.len() as u64;
            let bits = ask_within(clients[master], &format!("HAVE k 0 {n}"), BULK_TIMEOUT)
                .ok_or("HAVE query failed")?;
            let hex = bits
                .strip_prefix("BITS ")
                .ok_or_else(|| format!("bad HAVE reply {bits:?}"))?;
            let present = |i: usize| -> bool {
                let byte = u8::from_str_radix(&hex[(i / 8) * 2..(i / 8) * 2 + 2], 16).unwrap_or(0);
                byte & (1 << (i % 8)) != 0
            };
            let mut r = Round {
                kind,
                failover_ms,
                rolled_back,
                ..Default::default()
            };
            for (i, st) in snapshot.iter().enumerate() {
                match st {
                    2 => {
                        r.acked_total += 1;
                        if !present(i) {
                            r.acked_lost += 1;
                        }
                    }
                    1 if !present(i) => r.unacked_lost += 1,
                    _ => {}
                }
            }
            writeln!(
                out,
                "{:>5} {:>9} {:>12.1} {:>10} {:>12} {:>11} {:>11}",
                i + 1,
                kind,
                r.failover_ms,
                r.acked_lost,
                r.unacked_lost,
                r.rolled_back,
                r.acked_total
            )
            .ok();
            eprint!(
                "\r[{}{}] {}/{}",
                "#".repeat(i + 1),
                " ".repeat(total - i - 1),
                i + 1,
                total
            );
            rounds.push(r);
        }
        eprintln!();
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = w.join();
    drop(nodes);
    if a.dir.is_none() {
        let _ = std::fs::remove_dir_all(&base);
    }
    result?;
    let kill_ms: Vec<f64> = rounds
        .iter()
        .filter(|r| r.kind == "kill")
        .map(|r| r.failover_ms)
        .collect();
    let part_ms: Vec<f64> = rounds
        .iter()
        .filter(|r| r.kind == "partition")
        .map(|r| r.failover_ms)
        .collect();
    let acked_lost: u64 = rounds.iter().map(|r| r.acked_lost).sum();
    // A write lost in one round stays lost: the last round's counts are the totals.
    let last = rounds.last().cloned().unwrap_or_default();
    let summary = serde_json::json!({
        "kills": a.kills, "partitions": a.partitions, "level": a.level, "seed": seed,
        "failover_ms_p50": percentile(&kill_ms, 0.5), "failover_ms_p99": percentile(&kill_ms, 0.99),
        "failover_ms_max": kill_ms.iter().cloned().fold(0.0, f64::max),
        "partition_failover_ms_p50": percentile(&part_ms, 0.5),
        "partition_failover_ms_max": part_ms.iter().cloned().fold(0.0, f64::max),
        "acked_lost": last.acked_lost, "unacked_lost": last.unacked_lost,
        "rolled_back": rounds.iter().map(|r| r.rolled_back).sum::<u64>(),
        "writes_acked": last.acked_total, "acked_lost_any_round": acked_lost,
    });
    writeln!(out, "failover after SIGKILL: p50 {:.1} ms, p99 {:.1} ms; after a partition: p50 {:.1} ms; acknowledged writes lost: {}",
        percentile(&kill_ms, 0.5), percentile(&kill_ms, 0.99), percentile(&part_ms, 0.5), last.acked_lost).ok();
    if a.json {
        println!("{summary}");
    }
    let zero_loss_expected = a.level != "async";
    Ok(if zero_loss_expected && acked_lost > 0 {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    })
}
