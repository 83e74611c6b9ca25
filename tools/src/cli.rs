//! The `hs-node` command line: run a master or a slave by hand and watch its
//! stats, or `demo` a local pair. Also what the whole-system tests start.
//!
//! Machine-readable lines on stdout: `LISTEN <addr>` (master, once bound) and
//! `DONE <json>` (at the end). Human-readable stats and events go to stderr.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use hs::{Config, FlushPolicy, Node, NodeError, Role, Stats};

use crate::app::KvApp;
use crate::workload::Workload;

#[derive(Parser, Debug)]
#[command(
    name = "hs-node",
    about = "Run an hs master or slave by hand, or a local demo pair"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run a master; optionally publish a deterministic workload.
    Master(MasterArgs),
    /// Run a slave following a master.
    Slave(SlaveArgs),
    /// A local master and a late slave in one process: records flowing, catch-up, digests compared.
    Demo(DemoArgs),
    /// One node of a failover pair, with a line-based client port (see `tools::pair`).
    Pair(crate::pair::PairArgs),
    /// The witness (as `hs-witness`).
    Witness(crate::witness::WitnessArgs),
}

#[derive(Args, Debug, Clone)]
pub struct NodeOpts {
    /// Bytes of records per segment file.
    #[arg(long, default_value_t = 64 << 20)]
    pub segment_bytes: u64,
    /// Bytes of log kept on disk before old segments are folded into a snapshot.
    #[arg(long, default_value_t = 4 << 30)]
    pub retention_bytes: u64,
    /// Largest record in bytes, header included.
    #[arg(long, default_value_t = 1 << 20)]
    pub record_bytes_max: usize,
    /// Catch-up rate limit in bytes per second (0: unlimited).
    #[arg(long, default_value_t = 0)]
    pub catchup_rate: u64,
    /// Flush policy: never, batch, or a period in milliseconds.
    #[arg(long, default_value = "100")]
    pub flush: String,
    /// Heartbeat period in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_ms: u64,
    /// Silent heartbeat ticks before the peer is declared dead.
    #[arg(long, default_value_t = 5)]
    pub dead_ticks: u32,
    /// Largest Data frame in bytes.
    #[arg(long, default_value_t = 256 << 10)]
    pub batch_bytes: usize,
    /// Print stats to stderr every this many milliseconds (0: never).
    #[arg(long, default_value_t = 0)]
    pub stats_ms: u64,
}

/// `--flush`: `never`, `batch`, or a period in milliseconds.
pub fn parse_flush(s: &str) -> Result<FlushPolicy, String> {
    Ok(match s {
        "never" => FlushPolicy::Never,
        "batch" => FlushPolicy::EveryBatch,
        ms => FlushPolicy::EveryMs(
            ms.parse()
                .map_err(|_| format!("--flush takes never, batch or milliseconds, not {ms:?}"))?,
        ),
    })
}

impl NodeOpts {
    pub fn config(&self, dir: PathBuf) -> Result<Config, String> {
        let mut c = Config::new(dir);
        c.segment_bytes = self.segment_bytes;
        c.retention_bytes_max = self.retention_bytes;
        c.record_bytes_max = self.record_bytes_max;
        c.catchup_rate_bytes_per_s = self.catchup_rate;
        c.flush = parse_flush(&self.flush)?;
        c.heartbeat_interval_ms = self.heartbeat_ms;
        c.heartbeat_dead_ticks = self.dead_ticks;
        c.batch_bytes_max = self.batch_bytes;
        Ok(c)
    }
}

#[derive(Args, Debug, Clone)]
pub struct WorkloadOpts {
    /// Records to publish; a comma-separated list runs phases: after each phase the
    /// master prints `PUBLISHED <tail>` and, before the next, waits for a line on stdin.
    #[arg(long, default_value = "0", value_delimiter = ',')]
    pub records: Vec<u64>,
    /// Index of the first record (continue a workload after a restart).
    #[arg(long, default_value_t = 0)]
    pub start_index: u64,
    /// Bytes of each value.
    #[arg(long, default_value_t = 64)]
    pub value_bytes: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Every Nth record is a delete (0: none).
    #[arg(long, default_value_t = 0)]
    pub delete_every: u64,
    /// Records per second (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
}

impl WorkloadOpts {
    fn workload(&self) -> Workload {
        Workload {
            keys: self.keys,
            value_bytes: self.value_bytes,
            delete_every: self.delete_every,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct MasterArgs {
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub node: NodeOpts,
    #[command(flatten)]
    pub work: WorkloadOpts,
    /// After publishing, wait this long for the slave to apply everything.
    #[arg(long, default_value_t = 0)]
    pub wait_slave_ms: u64,
    /// After that, keep serving this long before exiting.
    #[arg(long, default_value_t = 0)]
    pub linger_ms: u64,
    /// Fold old segments into a snapshot after each phase (retention, now rather than within a second).
    #[arg(long)]
    pub compact: bool,
}

#[derive(Args, Debug, Clone)]
pub struct SlaveArgs {
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long)]
    pub master: SocketAddr,
    #[command(flatten)]
    pub node: NodeOpts,
    /// Exit (printing DONE) once applied reaches this position.
    #[arg(long)]
    pub until_pos: Option<u64>,
    /// Give up after this long (exit code 1).
    #[arg(long, default_value_t = 600_000)]
    pub timeout_ms: u64,
    /// Print `PROGRESS <applied>` on stdout every this many milliseconds (0: never).
    #[arg(long, default_value_t = 0)]
    pub progress_ms: u64,
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Records the master writes before the slave starts (they are caught up, rate-limited).
    #[arg(long, default_value_t = 2_000_000)]
    pub backlog: u64,
    /// Records written live once the slave has caught up.
    #[arg(long, default_value_t = 1_000_000)]
    pub live: u64,
    /// Live records per second.
    #[arg(long, default_value_t = 500_000)]
    pub live_rate: u64,
    /// Catch-up limit, bytes per second.
    #[arg(long, default_value_t = 100 << 20)]
    pub catchup_rate: u64,
    /// Bytes of each value.
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// Where to put the two logs (default: a fresh directory under the system temp dir, removed after).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// `main` with explicit arguments (the drill re-executes itself through this).
pub fn main_from<I: IntoIterator<Item = std::ffi::OsString>>(args: I) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let cli = Cli::parse_from(args);
    let r = match cli.cmd {
        Cmd::Master(a) => master(a),
        Cmd::Slave(a) => slave(a),
        Cmd::Demo(a) => demo(a),
        Cmd::Pair(a) => crate::pair::run(a),
        Cmd::Witness(a) => Ok(crate::witness::run(a)),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hs-node: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn stats_line(name: &str, s: &Stats) -> String {
    format!(
        "{name:>6} {:?} epoch {} written {} applied {} acked {} lag {} B / {} rec / {} ms  queue {} B  catch-up {}{}/{} @ {:.1} MB/s",
        s.role.unwrap_or(Role::Slave),
        s.epoch,
        s.written,
        s.applied,
        s.acked_applied,
        s.lag_bytes,
        s.lag_records,
        s.lag_ms,
        s.queue_bytes,
        if s.catching_up { "* " } else { "" },
        s.catchup_done_bytes,
        s.catchup_total_bytes,
        s.catchup_rate_bytes_per_s as f64 / 1e6,
    )
}

fn drain_events(name: &str, node: &Node) {
    while let Some(e) = node.next_event(Duration::ZERO) {
        eprintln!("{name:>6} event: {e:?}");
    }
}

/// Publishes records `[start, start + n)`, waiting out `Full` (bounded), pacing at `rate`/s.
pub fn publish_workload(
    node: &Node,
    app: Option<&KvApp>,
    w: Workload,
    start: u64,
    n: u64,
    rate: u64,
) -> Result<u64, String> {
    let t0 = Instant::now();
    let (mut k, mut v) = (Vec::new(), Vec::new());
    let mut full_waits = 0u64;
    for i in start..start + n {
        let op = w.record(i, &mut k, &mut v);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match node.publish(&k, op, &v) {
                Ok(_) => break,
                Err(NodeError::Log(hs::LogError::Full { .. })) if Instant::now() < deadline => {
                    full_waits += 1;
                    std::thread::sleep(Duration::from_micros(100));
                }
                Err(e) => return Err(format!("publish record {i}: {e}")),
            }
        }
        if let Some(a) = app {
            a.0.lock().unwrap().apply_op(op, &k, &v);
        }
        if rate > 0 && (i - start) % 64 == 63 {
            let due = t0 + Duration::from_secs_f64((i - start + 1) as f64 / rate as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
    }
    Ok(full_waits)
}

fn master(a: MasterArgs) -> Result<ExitCode, String> {
    let mut cfg = a.node.config(a.dir.clone())?;
    cfg.listen = Some(a.listen);
    let app = KvApp::new(cfg.segment_bytes);
    let node = Node::start(cfg, Role::Master, app.clone()).map_err(|e| e.to_string())?;
    println!(
        "LISTEN {}",
        node.local_addr().expect("master has a listener")
    );
    let _ = std::io::stdout().flush();
    let t0 = Instant::now();
    let (full_waits, publish_secs, tail, synced) =
        with_stats("master", &node, a.node.stats_ms, || -> Result<_, String> {
            let mut full_waits = 0;
            let mut index = a.work.start_index;
            for (phase, &n) in a.work.records.iter().enumerate() {
                if phase > 0 {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .map_err(|e| format!("reading stdin between phases: {e}"))?;
                }
                full_waits +=
                    publish_workload(&node, Some(&app), a.work.workload(), index, n, a.work.rate)?;
                index += n;
                if a.compact {
                    node.compact().map_err(|e| e.to_string())?;
                }
                println!("PUBLISHED {}", node.stats().written);
                let _ = std::io::stdout().flush();
            }
            let publish_secs = t0.elapsed().as_secs_f64();
            let tail = node.stats().written;
            let mut synced = false;
            if a.wait_slave_ms > 0 {
                let deadline = Instant::now() + Duration::from_millis(a.wait_slave_ms);
                while Instant::now() < deadline {
                    if node.stats().acked_applied >= tail {
                        synced = true;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            let linger_end = Instant::now() + Duration::from_millis(a.linger_ms);
            while Instant::now() < linger_end {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok((full_waits, publish_secs, tail, synced))
        })?;
    let s = node.stats();
    let st = app.0.lock().unwrap();
    let out = serde_json::json!({
        "tail": tail, "records": a.work.records.iter().sum::<u64>(), "digest": st.digest(),
        "catchup_rate": s.catchup_rate_bytes_per_s, "catchup_bytes": s.catchup_done_bytes, "first": s.first, "keys": st.map.len(),
        "acked_applied": s.acked_applied, "synced": synced, "full_waits": full_waits,
        "publish_secs": publish_secs, "records_applied_at_start": st.applied,
        "duplicates": st.duplicates, "gaps": st.gaps,
    });
    println!("DONE {out}");
    Ok(if a.wait_slave_ms > 0 && !synced {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn slave(a: SlaveArgs) -> Result<ExitCode, String> {
    let mut cfg = a.node.config(a.dir.clone())?;
    cfg.peer = Some(a.master);
    let app = KvApp::new(cfg.segment_bytes);
    let node = Node::start(cfg, Role::Slave, app.clone()).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_millis(a.timeout_ms);
    // `UNTIL <pos>` on stdin sets (or replaces) the target position.
    let target = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(
        a.until_pos.unwrap_or(u64::MAX),
    ));
    let t2 = target.clone();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if let Some(p) = line
                .strip_prefix("UNTIL ")
                .and_then(|p| p.trim().parse().ok())
            {
                t2.store(p, std::sync::atomic::Ordering::Release);
            }
        }
    });
    let done = with_stats("slave", &node, a.node.stats_ms, || {
        let mut next_progress = Instant::now();
        while Instant::now() < deadline {
            let applied = node.stats().applied;
            if applied >= target.load(std::sync::atomic::Ordering::Acquire) {
                return true;
            }
            if a.progress_ms > 0 && Instant::now() >= next_progress {
                next_progress += Duration::from_millis(a.progress_ms);
                println!("PROGRESS {applied}");
                let _ = std::io::stdout().flush();
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    });
    let s = node.stats();
    let st = app.0.lock().unwrap();
    let out = serde_json::json!({
        "applied": s.applied, "digest": st.digest(), "keys": st.map.len(),
        "records_applied": st.applied, "duplicates": st.duplicates, "gaps": st.gaps, "resets": st.resets,
        "first": s.first, "written": s.written, "reconnects": s.reconnects, "frames_rejected": s.frames_rejected,
        "catchup_rate": s.catchup_rate_bytes_per_s, "timeout": !done,
    });
    println!("DONE {out}");
    Ok(if done {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs `f` while a scoped thread prints the node's stats and events to stderr every `ms` (0: never).
pub fn with_stats<R>(name: &'static str, node: &Node, ms: u64, f: impl FnOnce() -> R) -> R {
    if ms == 0 {
        return f();
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let mut next = Instant::now() + Duration::from_millis(ms);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
                if Instant::now() >= next {
                    next += Duration::from_millis(ms);
                    eprintln!("{}", stats_line(name, &node.stats()));
                    drain_events(name, node);
                }
            }
        });
        let r = f();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        r
    })
}

fn demo(a: DemoArgs) -> Result<ExitCode, String> {
    let base = a
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("hs-demo-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&base);
    let w = Workload {
        keys: 100_000,
        value_bytes: a.value_bytes,
        delete_every: 50,
    };
    let mk = |name: &str| {
        let mut c = Config::new(base.join(name));
        c.catchup_rate_bytes_per_s = a.catchup_rate;
        c
    };
    let mut mc = mk("master");
    mc.listen = Some("127.0.0.1:0".parse().unwrap());
    let mapp = KvApp::new(mc.segment_bytes);
    let master = Node::start(mc, Role::Master, mapp.clone()).map_err(|e| e.to_string())?;
    let addr = master.local_addr().unwrap();
    println!(
        "master listening on {addr}; log in {}",
        base.join("master").display()
    );
    let t0 = Instant::now();
    publish_workload(&master, Some(&mapp), w, 0, a.backlog, 0)?;
    let s = master.stats();
    println!(
        "wrote a backlog of {} records ({:.1} MB) in {:.2} s with no slave attached",
        a.backlog,
        s.written as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    let mut sc = mk("slave");
    sc.peer = Some(addr);
    let sapp = KvApp::new(sc.segment_bytes);
    let slave = Node::start(sc, Role::Slave, sapp.clone()).map_err(|e| e.to_string())?;
    println!(
        "slave started late; catching up at most {:.0} MB/s",
        a.catchup_rate as f64 / 1e6
    );
    let print = |master: &Node, slave: &Node| {
        eprintln!("{}", stats_line("master", &master.stats()));
        eprintln!("{}", stats_line("slave", &slave.stats()));
        drain_events("master", master);
        drain_events("slave", slave);
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = Instant::now();
    while master.stats().acked_applied < master.stats().written && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        if last.elapsed() >= Duration::from_millis(500) {
            last = Instant::now();
            print(&master, &slave);
        }
    }
    let s = master.stats();
    println!(
        "caught up: {} bytes at {:.1} MB/s",
        s.catchup_done_bytes,
        s.catchup_rate_bytes_per_s as f64 / 1e6
    );
    println!("now {} records live at {} records/s", a.live, a.live_rate);
    std::thread::scope(|sc| -> Result<(), String> {
        let h =
            sc.spawn(|| publish_workload(&master, Some(&mapp), w, a.backlog, a.live, a.live_rate));
        while !h.is_finished() {
            std::thread::sleep(Duration::from_millis(500));
            print(&master, &slave);
        }
        h.join()
            .map_err(|_| "publisher panicked".to_string())?
            .map(|_| ())
    })?;
    let tail = master.stats().written;
    let deadline = Instant::now() + Duration::from_secs(30);
    while slave.stats().applied < tail && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    print(&master, &slave);
    let (md, sd) = (
        mapp.0.lock().unwrap().digest(),
        sapp.0.lock().unwrap().digest(),
    );
    let ss = sapp.0.lock().unwrap();
    println!(
        "master digest {md:016x}, slave digest {sd:016x}; slave applied {} records, {} duplicates, {} gaps",
        ss.applied, ss.duplicates, ss.gaps
    );
    let ok = md == sd && ss.duplicates == 0 && ss.gaps == 0;
    drop(ss);
    drop(slave);
    drop(master);
    if a.dir.is_none() {
        let _ = std::fs::remove_dir_all(&base);
    }
    println!(
        "{}",
        if ok {
            "OK: the slave holds exactly the master's state"
        } else {
            "MISMATCH"
        }
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
