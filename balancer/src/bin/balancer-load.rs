//! `balancer-load`: measures picks per second over HTTP keep-alive on
//! loopback, and optionally a balancer's CPU while many processes push.
//!
//! Without `--balancer` it starts a balancer in this process on 127.0.0.1:0
//! with `--processes` registered processes (real listeners, so probes pass).
//! With `--balancer IP:PORT --balancer-pid PID` it loads an external one and
//! reports that process's CPU use from /proc.
//!
//! Every loop is bounded by `--duration-ms`; only loopback is accepted.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use balancer::client::{Client, PushStream};
use balancer::config::{Config, ZoneConfig};
use balancer::registry::StatusPush;
use balancer::server::{start, NoSink};
use clap::Parser;

/// Flags.
#[derive(Debug, Parser)]
#[command(
    name = "balancer-load",
    about = "Pick throughput and push cost of a balancer on loopback"
)]
struct Args {
    /// External balancer (loopback only); default: start one in-process.
    #[arg(long)]
    balancer: Option<SocketAddr>,
    /// Pid of the external balancer, to report its CPU use.
    #[arg(long)]
    balancer_pid: Option<u32>,
    /// Zone to pick from / push to.
    #[arg(long, default_value_t = 1)]
    zone: u32,
    /// Keep-alive connections picking in parallel (0: no picks).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Picks sent per write on each connection (HTTP/1.1 pipelining); 1
    /// sends one and waits for its answer.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Processes registered by the tool, each pushing every `push_interval_ms`.
    #[arg(long, default_value_t = 10)]
    processes: usize,
    /// Time between two pushes of one process.
    #[arg(long, default_value_t = 1000)]
    push_interval_ms: u64,
    /// Connections used for pushing (each carries every Nth process; their
    /// timers are staggered over the interval).
    #[arg(long, default_value_t = 4)]
    push_connections: usize,
    /// Push over push streams (GET /v1/status/stream: a line per push, no
    /// answer) instead of one HTTP request per push.
    #[arg(long)]
    stream: bool,
    /// Length of the measured run.
    #[arg(long, default_value_t = 5000)]
    duration_ms: u64,
    /// Load before the measured run, not counted: streams open, the first
    /// probe rounds after registration pass.
    #[arg(long, default_value_t = 2000)]
    warmup_ms: u64,
}

/// Processes the tool will register; bounds listeners and push work.
const PROCESSES_MAX: usize = 100_000;
/// Linux clock ticks per second for /proc/PID/stat (USER_HZ).
const CLOCK_TICKS_PER_S: f64 = 100.0;

fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit(')').next()?;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime); `after` starts at field 3.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / CLOCK_TICKS_PER_S)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !(1..=balancer::client::PIPELINE_DEPTH_MAX).contains(&args.pipeline) {
        eprintln!(
            "error: --pipeline is 1..={}",
            balancer::client::PIPELINE_DEPTH_MAX
        );
        return ExitCode::from(2);
    }
    if args.processes > PROCESSES_MAX {
        eprintln!("error: --processes is at most {PROCESSES_MAX}");
        return ExitCode::from(2);
    }
    if args.balancer.is_some_and(|a| !a.ip().is_loopback()) {
        eprintln!("error: --balancer must be a loopback address");
        return ExitCode::from(2);
    }
    let rt = match balancer::cli::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let (addr, _server) = match args.balancer {
        Some(a) => (a, None),
        None => {
            let config = Config {
                listen: SocketAddr::new(local, 0),
                zones: vec![ZoneConfig {
                    id: args.zone,
                    name: "load".into(),
                    version: String::new(),
                    process_online_max: u32::MAX,
                    spawn: None,
                }],
                push_rate_per_s: 1000,
                push_burst: 1000,
                // All picks come from one address, as fast as they go: the
                // pick limits would measure themselves.
                pick_rate_per_s: u32::MAX,
                pick_burst: u32::MAX,
                pick_global_rate_per_s: u32::MAX,
                pick_global_burst: u32::MAX,
                ..Config::default()
            };
            match start(config, Arc::new(NoSink)).await {
                Ok(h) => (h.addr(), Some(h)),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    // Real listeners so probes succeed; the kernel's backlog answers them.
    let mut listeners = Vec::with_capacity(args.processes);
    for _ in 0..args.processes {
        match std::net::TcpListener::bind((local, 0)) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                eprintln!(
                    "error: cannot bind listener {} of {}: {e} (raise ulimit -n?)",
                    listeners.len(),
                    args.processes
                );
                return ExitCode::FAILURE;
            }
        }
    }
    let ports: Vec<u16> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.port())
        .collect();
    let push_for = |i: usize| StatusPush {
        id: format!("load-{i}"),
        zone: args.zone as i64,
        host: "127.0.0.1".into(),
        port: ports[i] as i64,
        online: 0,
        used_memory_mb: 1,
        version: String::new(),
        pid: None,
        claimed: Vec::new(),
    };
    let mut c = Client::new(vec![addr]);
    for i in 0..ports.len() {
        if let Err(e) = c.push_status(&push_for(i)).await {
            eprintln!("error: registering process {i}: {e}");
            return ExitCode::FAILURE;
        }
    }

    let warm = Instant::now() + Duration::from_millis(args.warmup_ms);
    let deadline = warm + Duration::from_millis(args.duration_ms);
    let pushes = Arc::new(AtomicU64::new(0));
    let push_errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let pc = args.push_connections.max(1);
    for k in 0..pc {
        let mine: Vec<StatusPush> = (0..ports.len())
            .filter(|i| i % pc == k)
            .map(push_for)
            .collect();
        let (pushes, errors, interval) = (
            pushes.clone(),
            push_errors.clone(),
            args.push_interval_ms.max(1),
        );
        let stream = args.stream;
        let offset = Duration::from_millis(interval * k as u64 / pc as u64);
        tasks.push(tokio::spawn(async move {
            let mut http = Client::new(vec![addr]);
            let mut lines = PushStream::new(Client::new(vec![addr]));
            let start = tokio::time::Instant::now() + offset;
            let mut tick = tokio::time::interval_at(start, Duration::from_millis(interval));
            while Instant::now() < deadline {
                tick.tick().await;
                // Refused lines come back on the stream, not as errors of `push`.
                errors.fetch_add(lines.take_errors().len() as u64, Ordering::Relaxed);
                for p in &mine {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let ok = if stream {
                        lines.push(p).await.is_ok()
                    } else {
                        http.push_status(p).await.is_ok()
                    };
                    if ok {
                        pushes.fetch_add(1, Ordering::Relaxed);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let picks = Arc::new(AtomicU64::new(0));
    let pick_errors = Arc::new(AtomicU64::new(0));
    for _ in 0..args.connections {
        let (picks, errors, zone) = (picks.clone(), pick_errors.clone(), args.zone);
        let depth = args.pipeline;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::new(vec![addr]);
            let path = format!("/v1/zones/{zone}/pick");
            let batch = vec![("POST", path.as_str()); depth];
            while Instant::now() < deadline {
                if depth == 1 {
                    match c.pick(zone).await {
                        Ok(_) => picks.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                    continue;
                }
                match c.pipeline(&batch).await {
                    Ok(answers) => {
                        let ok = answers.iter().filter(|r| r.status == 200).count() as u64;
                        picks.fetch_add(ok, Ordering::Relaxed);
                        errors.fetch_add(depth as u64 - ok, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(depth as u64, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // Steady state only: counted from the end of the warm-up to the
    // deadline, before the streams close (each close probes the processes it
    // vouched for).
    tokio::time::sleep_until(warm.into()).await;
    let cpu_before = args.balancer_pid.and_then(cpu_seconds);
    let counted = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let before = [&picks, &pick_errors, &pushes, &push_errors].map(|c| counted(c));
    let started = Instant::now();
    tokio::time::sleep_until(deadline.into()).await;
    let cpu_after = args.balancer_pid.and_then(cpu_seconds);
    let secs = started.elapsed().as_secs_f64();
    let [picks, pick_errors, pushes, push_errors] =
        [&picks, &pick_errors, &pushes, &push_errors].map(|c| counted(c));
    let (picks, pick_errors, pushes, push_errors) = (
        picks - before[0],
        pick_errors - before[1],
        pushes - before[2],
        push_errors - before[3],
    );
    for t in tasks {
        let _ = t.await;
    }
    println!("duration_s        {secs:.2}");
    println!(
        "picks             {picks} ({:.0}/s), errors {}",
        picks as f64 / secs,
        pick_errors
    );
    println!(
        "pushes            {pushes} ({:.0}/s), errors {}",
        pushes as f64 / secs,
        push_errors
    );
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        println!(
            "balancer_cpu      {:.1}% of one core",
            100.0 * (after - before) / secs
        );
    }
    drop(listeners);
    ExitCode::SUCCESS
}
