//! `hs-bench`: the system benchmark. The master runs in this process, the slave
//! in a child process (this binary re-executed with the hidden `__slave`
//! subcommand), both on 127.0.0.1, so the numbers include the real socket,
//! two address spaces and two schedulers' worth of threads on one machine.
//!
//! Scenarios (each prints a table; `--json` adds one JSON object as the last line):
//! - `replicate`: publish as fast as one thread can for `--secs`, then wait until
//!   the slave has applied everything: records/s and bytes/s published-to-applied.
//! - `latency`: publish at a fixed `--rate`; each value carries the publish time
//!   (CLOCK_MONOTONIC, shared by all processes of a Linux machine) and the slave's
//!   `Apply` records `now - then` in an HDR histogram.
//! - `catchup`: the master writes `--volume` with no slave, then a slave with an
//!   empty log starts: time until it has applied everything, and the accuracy of
//!   `--rate-limit` when one is set.
//! - `recovery`: write `--volume` of log, close it, time `Log::open` (the recovery
//!   scan) and `Node::start` (scan + replay through `Apply`).
//! - `loopback`: one TCP stream on 127.0.0.1 between two threads, bytes/s: the
//!   ceiling of any replication stream on this machine, measured beside it.
//! - `report`: merge hs and Redis results, print the side-by-side table, write SVGs.
//!
//! With `--runs` > 1 the JSON line is the median of each number, with the
//! runs' `min` and `max` of each beside it.
//!
//! Record size means the value's bytes (as `redis-benchmark -d`); keys are 16
//! bytes, `key:000000001234`, like redis-benchmark's `-r` keys.

mod report;
mod scenarios;
mod slave;

use std::io::Write;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Map, Value};

#[derive(Parser, Debug)]
#[command(
    name = "hs-bench",
    about = "Benchmarks of hs: master and slave as two processes on 127.0.0.1"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Sustained records/s and bytes/s, published to applied on the slave.
    Replicate(ReplicateArgs),
    /// Publish → applied latency at a fixed rate (HDR histogram).
    Latency(LatencyArgs),
    /// A slave attached after the master wrote a volume: time to catch up.
    Catchup(CatchupArgs),
    /// Time to reopen (recover) a log of a given volume.
    Recovery(RecoveryArgs),
    /// One loopback TCP stream between two threads: bytes/s (the ceiling).
    Loopback(LoopbackArgs),
    /// Segment preparation alone: create, first touch, recycle (ms each).
    Prepare(PrepareArgs),
    /// Merge hs and Redis results: side-by-side table, JSON and SVG plots.
    Report(report::ReportArgs),
    /// The slave side (started by the other scenarios).
    #[command(name = "__slave", hide = true)]
    Slave(slave::SlaveArgs),
}

/// Options every scenario shares.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Print one JSON object (the median of the runs) as the last line.
    #[arg(long)]
    pub json: bool,
    /// Repeat the measurement this many times and report the median.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Where the logs go (a fresh directory inside it, removed at the end).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Bytes of records per segment file.
    #[arg(long, default_value_t = 64 << 20)]
    pub segment_bytes: u64,
    /// Largest Data frame in bytes.
    #[arg(long, default_value_t = 256 << 10)]
    pub batch_bytes: usize,
    /// Flush policy of both nodes: never (the kernel writes back; as a Redis
    /// replica without persistence), batch, or a period in milliseconds.
    #[arg(long, default_value = "never")]
    pub flush: String,
    /// What the slave's `Apply` does: count (touch each record) or kv (a HashMap, as a Redis replica's dict).
    #[arg(long, default_value = "count")]
    pub apply: String,
    /// Microseconds both nodes spin before parking (`Config::spin_us`).
    #[arg(long, default_value_t = hs::Config::new("").spin_us)]
    pub spin_us: u64,
    /// Retention of both logs (`Config::retention_bytes_max`); by default so
    /// large that compaction never runs during a measurement.
    #[arg(long, default_value_t = scenarios::RETENTION_BYTES, value_parser = parse_bytes)]
    pub retention_bytes: u64,
}

#[derive(Args, Debug, Clone)]
pub struct ReplicateArgs {
    #[command(flatten)]
    pub common: Common,
    /// Bytes of each value.
    #[arg(long, default_value_t = 64)]
    pub record_size: usize,
    /// Seconds of publishing per run.
    #[arg(long, default_value_t = 3.0)]
    pub secs: f64,
    /// Stop publishing after this many records, whichever comes first (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub records: u64,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Before the measurement, publish this many value bytes and compact both
    /// logs, so that (with a `--retention-bytes` below it) both are at their
    /// retention and later rolls recycle retired segments, as a long-running
    /// node's do. The row's scenario is then `replicate_at_retention`.
    #[arg(long, default_value = "0", value_parser = parse_bytes)]
    pub warm_bytes: u64,
}

#[derive(Args, Debug, Clone)]
pub struct LatencyArgs {
    #[command(flatten)]
    pub common: Common,
    /// Bytes of each value (at least 8: the publish timestamp).
    #[arg(long, default_value_t = 64)]
    pub record_size: usize,
    /// Records per second.
    #[arg(long, default_value_t = 100_000)]
    pub rate: u64,
    /// Seconds measured per run (after `--warmup-secs`).
    #[arg(long, default_value_t = 3.0)]
    pub secs: f64,
    #[arg(long, default_value_t = 0.5)]
    pub warmup_secs: f64,
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
}

#[derive(Args, Debug, Clone)]
pub struct CatchupArgs {
    #[command(flatten)]
    pub common: Common,
    /// Bytes of each value.
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Value bytes written before the slave starts (1GiB, 256MiB, 100MB or a number).
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    pub volume: u64,
    /// Catch-up limit in bytes per second (0: none).
    #[arg(long, default_value = "0", value_parser = parse_bytes)]
    pub rate_limit: u64,
    /// Distinct keys (default: every record its own key, as a filled Redis).
    #[arg(long, default_value_t = 0)]
    pub keys: u64,
}

#[derive(Args, Debug, Clone)]
pub struct LoopbackArgs {
    #[command(flatten)]
    pub common: Common,
    /// Seconds of writing per run.
    #[arg(long, default_value_t = 2.0)]
    pub secs: f64,
    /// Bytes per write call (as the sender's largest Data frame).
    #[arg(long, default_value_t = 256 << 10)]
    pub write_bytes: usize,
}

#[derive(Args, Debug, Clone)]
pub struct PrepareArgs {
    #[command(flatten)]
    pub common: Common,
    /// Segments to create, then to recycle (each `--segment-bytes`).
    #[arg(long, default_value_t = 8)]
    pub count: usize,
}

#[derive(Args, Debug, Clone)]
pub struct RecoveryArgs {
    #[command(flatten)]
    pub common: Common,
    /// Bytes of each value.
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Log bytes to write and recover.
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    pub volume: u64,
}

/// `1GiB`, `256MiB`, `64KiB`, `100MB`, `5GB`, or plain bytes.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1048576.0,
        "gib" => 1073741824.0,
        u => {
            return Err(format!(
                "unknown unit {u:?} in {s:?} (B, KB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    Ok((n * mult) as u64)
}

pub fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Replicate(a) => runs(&a.common.clone(), scenarios::replicate_name(&a), |dir| {
            scenarios::replicate(&a, dir)
        }),
        Cmd::Latency(a) => runs(&a.common.clone(), "latency", |dir| {
            scenarios::latency(&a, dir)
        }),
        Cmd::Catchup(a) => runs(&a.common.clone(), "catchup", |dir| {
            scenarios::catchup(&a, dir)
        }),
        Cmd::Recovery(a) => runs(&a.common.clone(), "recovery", |dir| {
            scenarios::recovery(&a, dir)
        }),
        Cmd::Loopback(a) => runs(&a.common.clone(), "loopback", |_| scenarios::loopback(&a)),
        Cmd::Prepare(a) => runs(&a.common.clone(), "prepare", |dir| {
            scenarios::prepare(&a, dir)
        }),
        Cmd::Report(a) => report::run(&a),
        Cmd::Slave(a) => slave::run(&a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hs-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One measurement: an ordered set of named numbers (and a few strings).
pub type Row = Map<String, Value>;

/// Runs a scenario `common.runs` times, each in a fresh directory; prints each
/// run and the median; with `--json` the median as the last line.
fn runs(
    common: &Common,
    name: &str,
    mut f: impl FnMut(&std::path::Path) -> Result<Row, String>,
) -> Result<(), String> {
    let base = common.dir.clone().unwrap_or_else(std::env::temp_dir);
    let n = common.runs.max(1);
    let mut rows = Vec::with_capacity(n);
    for i in 0..n {
        let dir = base.join(format!("hs-bench-{}-{name}-{i}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let r = f(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        let row = r?;
        eprintln!("run {}/{n}: {}", i + 1, Value::Object(row.clone()));
        rows.push(row);
    }
    let med = median_row(&rows);
    print_table(name, &rows, &med);
    if common.json {
        println!("{}", Value::Object(med));
    }
    Ok(())
}

/// Per field: the median of the numbers; strings and the like from the first run.
fn median_row(rows: &[Row]) -> Row {
    let mut out = Row::new();
    let Some(first) = rows.first() else {
        return out;
    };
    // Non-numbers (a latency distribution) come from the run with the median p99
    // (or the first run), so a plot agrees with the table.
    let mut by_p99: Vec<&Row> = rows.iter().collect();
    by_p99.sort_by(|a, b| {
        a.get("p99_us")
            .and_then(Value::as_f64)
            .unwrap_or(0.0)
            .total_cmp(&b.get("p99_us").and_then(Value::as_f64).unwrap_or(0.0))
    });
    let typical = if first.contains_key("p99_us") {
        by_p99[by_p99.len() / 2]
    } else {
        first
    };
    for (k, v) in first {
        let v = if v.is_number() {
            v
        } else {
            typical.get(k).unwrap_or(v)
        };
        if v.is_number() && rows.len() > 1 {
            let mut xs: Vec<f64> = rows
                .iter()
                .filter_map(|r| r.get(k).and_then(Value::as_f64))
                .collect();
            xs.sort_by(f64::total_cmp);
            let m = if xs.len() % 2 == 1 {
                xs[xs.len() / 2]
            } else {
                (xs[xs.len() / 2 - 1] + xs[xs.len() / 2]) / 2.0
            };
            out.insert(k.clone(), num(m));
        } else {
            out.insert(k.clone(), v.clone());
        }
    }
    // The spread beside the median: `min` and `max` of each number over the runs.
    if rows.len() > 1 {
        let (mut lo, mut hi) = (Row::new(), Row::new());
        for (k, v) in first {
            if !v.is_number() {
                continue;
            }
            let xs = rows.iter().filter_map(|r| r.get(k).and_then(Value::as_f64));
            lo.insert(k.clone(), num(xs.clone().fold(f64::INFINITY, f64::min)));
            hi.insert(k.clone(), num(xs.fold(f64::NEG_INFINITY, f64::max)));
        }
        out.insert("min".into(), Value::Object(lo));
        out.insert("max".into(), Value::Object(hi));
    }
    out.insert("runs".into(), json!(rows.len()));
    out
}

/// A JSON number, integral when the value is (so tables read well).
pub fn num(x: f64) -> Value {
    if x.is_finite() && x.fract() == 0.0 && x.abs() < 9e15 {
        json!(x as i64)
    } else if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

fn print_table(name: &str, rows: &[Row], med: &Row) {
    let keys: Vec<&String> = med
        .keys()
        .filter(|k| med[*k].is_number() || med[*k].is_string())
        .filter(|k| *k != "runs")
        .collect();
    let cell = |v: Option<&Value>| match v {
        Some(Value::Number(n)) => fmt_num(n.as_f64().unwrap_or(0.0)),
        Some(Value::String(s)) => s.clone(),
        _ => "-".into(),
    };
    let mut out = String::new();
    out.push_str(&format!("\n{name}\n"));
    let w = keys.iter().map(|k| k.len()).max().unwrap_or(8).max(8);
    out.push_str(&format!("{:<w$}", "metric"));
    for i in 0..rows.len() {
        out.push_str(&format!(" {:>14}", format!("run {}", i + 1)));
    }
    if rows.len() > 1 {
        out.push_str(&format!(" {:>14}", "median"));
    }
    out.push('\n');
    for k in keys {
        out.push_str(&format!("{k:<w$}"));
        for r in rows {
            out.push_str(&format!(" {:>14}", cell(r.get(k))));
        }
        if rows.len() > 1 {
            out.push_str(&format!(" {:>14}", cell(med.get(k))));
        }
        out.push('\n');
    }
    print!("{out}");
    let _ = std::io::stdout().flush();
}

/// Human form of a number: thousands separated, at most 3 decimals.
pub fn fmt_num(x: f64) -> String {
    if x.fract() != 0.0 && x.abs() < 1000.0 {
        return format!("{x:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string();
    }
    let s = format!("{}", x.round() as i64);
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut o = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            o.push(',');
        }
        o.push(c);
    }
    format!("{sign}{o}")
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process of the machine,
/// so a slave process can compare it with a timestamp its master wrote.
#[inline]
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The 16-byte key of index `i`: `key:000000001234`, as redis-benchmark's.
pub fn key_of(i: u64) -> [u8; 16] {
    let mut k = *b"key:000000000000";
    let mut n = i % 1_000_000_000_000;
    for j in (4..16).rev() {
        k[j] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    k
}

/// A child process running `hs-bench __slave` (killed by its pid when dropped
/// if it has not exited by then).
pub struct SlaveProc {
    proc: tools::proc::Proc,
}

impl SlaveProc {
    pub fn spawn(args: &[String]) -> Result<SlaveProc, String> {
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
        let mut all = vec!["__slave".to_string()];
        all.extend_from_slice(args);
        Ok(SlaveProc {
            proc: tools::proc::Proc::spawn("slave", &exe, &all, Stdio::inherit(), false)?,
        })
    }

    /// Waits for a stdout line starting with `prefix`; returns the rest.
    pub fn expect(&mut self, prefix: &str, timeout: Duration) -> Result<String, String> {
        self.proc.wait_line(prefix, timeout)
    }

    pub fn send(&mut self, line: &str) -> Result<(), String> {
        self.proc.send_line(line)
    }

    /// Asks the slave for its result and waits for it to exit.
    pub fn finish(mut self, timeout: Duration) -> Result<Row, String> {
        self.send("STOP")?;
        let r = self.expect("RESULT ", timeout)?;
        let v: Value =
            serde_json::from_str(&r).map_err(|e| format!("slave result is not JSON: {e}"))?;
        self.proc.close_stdin();
        let _ = self.proc.wait_exit(Duration::from_secs(10));
        match v {
            Value::Object(m) => Ok(m),
            _ => Err("slave result is not an object".into()),
        }
    }
}
