//! The measured scenarios. Each returns one row of numbers; `runs` in mod.rs
//! repeats it and takes medians.

use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use hs::log::segment::{prepare_stats, PrepareStats};
use hs::log::{Log, LogConfig};
use hs::{Apply, Config, Durability, FlushPolicy, Node, Op, RecordRef, Role};
use serde_json::json;

use super::{
    key_of, mono_ns, num, CatchupArgs, Common, LatencyArgs, LoopbackArgs, PrepareArgs,
    RecoveryArgs, ReplicateArgs, Row, SlaveProc,
};

/// Retention for benchmark logs: large enough that compaction never runs
/// during a measurement (the directories are deleted after each run).
pub const RETENTION_BYTES: u64 = 1 << 40;
/// Longest a slave may take to start, connect, or apply what was published.
const SLAVE_START_TIMEOUT: Duration = Duration::from_secs(20);
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// The master's `Apply`: only used if it replays its own log at start (never here).
struct Nop;
impl Apply for Nop {
    fn apply(&mut self, _: &RecordRef<'_>) {}
    fn reset(&mut self) {}
    fn restore(&mut self, _: &[u8], _: &[u8]) {}
}

/// A counting `Apply` for the recovery replay.
struct CountApp(u64);
impl Apply for CountApp {
    fn apply(&mut self, r: &RecordRef<'_>) {
        self.0 += r.value.len() as u64;
    }
    fn reset(&mut self) {}
    fn restore(&mut self, _: &[u8], _: &[u8]) {}
}

fn master_config(c: &Common, dir: &Path) -> Result<Config, String> {
    let mut cfg = Config::new(dir.join("master"));
    cfg.listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.segment_bytes = c.segment_bytes;
    cfg.batch_bytes_max = c.batch_bytes;
    cfg.retention_bytes_max = c.retention_bytes;
    cfg.spin_us = c.spin_us;
    cfg.flush = tools::cli::parse_flush(&c.flush)?;
    // A publisher outrunning segment preparation waits rather than failing.
    cfg.publish_timeout_ms = 2000;
    Ok(cfg)
}

fn start_master(c: &Common, dir: &Path, catchup_rate: u64) -> Result<Node, String> {
    let mut cfg = master_config(c, dir)?;
    cfg.catchup_rate_bytes_per_s = catchup_rate;
    Node::start(cfg, Role::Master, Nop).map_err(|e| format!("master: {e}"))
}

fn spawn_slave(c: &Common, dir: &Path, master: &Node, apply: &str) -> Result<SlaveProc, String> {
    let addr = master.local_addr().ok_or("master has no listen address")?;
    let args: Vec<String> = vec![
        "--dir".into(),
        dir.join("slave").display().to_string(),
        "--master".into(),
        addr.to_string(),
        "--apply".into(),
        apply.into(),
        "--flush".into(),
        c.flush.clone(),
        "--segment-bytes".into(),
        c.segment_bytes.to_string(),
        "--batch-bytes".into(),
        c.batch_bytes.to_string(),
        "--spin-us".into(),
        c.spin_us.to_string(),
        "--retention-bytes".into(),
        c.retention_bytes.to_string(),
    ];
    let mut p = SlaveProc::spawn(&args)?;
    p.expect("READY", SLAVE_START_TIMEOUT)?;
    Ok(p)
}

/// Waits until the slave is connected and live (caught up with the master's tail).
fn wait_live(master: &Node) -> Result<(), String> {
    let deadline = Instant::now() + SLAVE_START_TIMEOUT;
    loop {
        let s = master.stats();
        if s.slave_connected && !s.catching_up && s.acked_applied >= s.written {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the slave did not connect within {SLAVE_START_TIMEOUT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn value_of(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

fn keys(n: u64) -> Vec<[u8; 16]> {
    (0..n.max(1)).map(key_of).collect()
}

fn check_slave(res: &Row, want_records: u64) -> Result<(), String> {
    let got = res
        .get("slave_records")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    let resync = res
        .get("slave_resync_bytes")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    if resync > 0 && got != want_records {
        return Err(format!(
            "the slave was resynced from a {resync}-byte snapshot (it lagged more than twice the retention behind; raise --retention-bytes): applied {got} of {want_records} records through Apply"
        ));
    }
    if got != want_records {
        return Err(format!(
            "the slave applied {got} records, the master published {want_records}"
        ));
    }
    Ok(())
}

/// The scenario's name: `replicate`, or `replicate_at_retention` after a warm-up.
pub fn replicate_name(a: &ReplicateArgs) -> &'static str {
    if a.warm_bytes > 0 {
        "replicate_at_retention"
    } else {
        "replicate"
    }
}

/// Segment preparation counts as row fields, names prefixed by `prefix`.
pub fn prepare_fields(p: &PrepareStats, prefix: &str, r: &mut Row) {
    let ms = |ns: u64, n: u64| num((ns as f64 / 1e6 / n.max(1) as f64 * 100.0).round() / 100.0);
    r.insert(format!("{prefix}segments_created"), json!(p.created));
    r.insert(format!("{prefix}segments_recycled"), json!(p.recycled));
    r.insert(
        format!("{prefix}create_ms_each"),
        ms(p.create_ns, p.created),
    );
    r.insert(
        format!("{prefix}recycle_ms_each"),
        ms(p.recycle_ns, p.recycled),
    );
    r.insert(format!("{prefix}roll_waits"), json!(p.roll_waits));
    r.insert(format!("{prefix}roll_wait_ms"), ms(p.roll_wait_ns, 1));
}

/// The warm-up of `replicate --warm-bytes`: publishes `bytes` of values, waits
/// until the slave applied them, and compacts both logs, so both are at their
/// retention with retired segments waiting to be recycled. Returns the records
/// published.
fn warm_up(
    a: &ReplicateArgs,
    node: &Node,
    slave: &mut SlaveProc,
    ks: &[[u8; 16]],
    value: &[u8],
) -> Result<u64, String> {
    let n = a.warm_bytes / a.record_size.max(1) as u64;
    let mut last = 0;
    for i in 0..n {
        last = node
            .publish(&ks[(i % ks.len() as u64) as usize], Op::Put, value)
            .map_err(|e| format!("publish: {e}"))?;
    }
    node.wait(last, Durability::Applied, APPLY_TIMEOUT)
        .map_err(|e| format!("waiting for the slave to apply the warm-up: {e}"))?;
    node.compact().map_err(|e| format!("compact: {e}"))?;
    slave.send("COMPACT")?;
    slave.expect("COMPACTED", APPLY_TIMEOUT)?;
    if node.stats().first == 0 {
        return Err(format!(
            "--warm-bytes {} did not bring the log to its retention ({} bytes): nothing was compacted",
            a.warm_bytes, a.common.retention_bytes
        ));
    }
    Ok(n)
}

pub fn replicate(a: &ReplicateArgs, dir: &Path) -> Result<Row, String> {
    let c = &a.common;
    let node = start_master(c, dir, 0)?;
    let mut slave = spawn_slave(c, dir, &node, &c.apply)?;
    wait_live(&node)?;
    let ks = keys(a.keys);
    let value = value_of(a.record_size);
    let warm = if a.warm_bytes > 0 {
        warm_up(a, &node, &mut slave, &ks, &value)?
    } else {
        0
    };
    let prep0 = prepare_stats();
    let tail0 = node.stats().written;
    let limit = if a.records == 0 { u64::MAX } else { a.records };
    let secs = Duration::from_secs_f64(a.secs);
    // Publish cost: each batch of 64 calls is timed together; the histogram holds
    // the per-call average of each batch (a clock read costs about as much as a publish).
    let mut pub_hist: Histogram<u64> = Histogram::new_with_bounds(1, 1_000_000_000, 3).unwrap();
    const BATCH: u64 = 64;
    let mut n = 0u64;
    let mut last = 0u64;
    let t0 = Instant::now();
    let mut nk = 0usize;
    'outer: while n < limit {
        let b0 = Instant::now();
        let m = BATCH.min(limit - n);
        for _ in 0..m {
            last = node
                .publish(&ks[nk], Op::Put, &value)
                .map_err(|e| format!("publish: {e}"))?;
            nk += 1;
            if nk == ks.len() {
                nk = 0;
            }
        }
        n += m;
        pub_hist.saturating_record((b0.elapsed().as_nanos() as u64 / m).max(1));
        if (n & (BATCH * 64 - 1)) == 0 && t0.elapsed() >= secs {
            break 'outer;
        }
    }
    let t_pub = t0.elapsed();
    node.wait(last, Durability::Applied, APPLY_TIMEOUT)
        .map_err(|e| format!("waiting for the slave to apply: {e}"))?;
    let t_all = t0.elapsed();
    let prep = prepare_stats().since(&prep0);
    let res = slave.finish(Duration::from_secs(10))?;
    check_slave(&res, warm + n)?;
    let st = node.stats();
    drop(node);
    let secs_all = t_all.as_secs_f64();
    let mut r = Row::new();
    r.insert("scenario".into(), json!(replicate_name(a)));
    r.insert("record_size".into(), json!(a.record_size));
    r.insert("apply".into(), json!(c.apply));
    if a.warm_bytes > 0 {
        r.insert("warm_bytes".into(), json!(a.warm_bytes));
        r.insert("retention_bytes".into(), json!(c.retention_bytes));
    }
    r.insert("records".into(), json!(n));
    r.insert("secs".into(), num((secs_all * 1000.0).round() / 1000.0));
    r.insert("records_per_s".into(), num((n as f64 / secs_all).round()));
    r.insert(
        "bytes_per_s".into(),
        num((n as f64 * a.record_size as f64 / secs_all).round()),
    );
    r.insert(
        "log_bytes_per_s".into(),
        num(((st.written - tail0) as f64 / secs_all).round()),
    );
    r.insert(
        "publish_records_per_s".into(),
        num((n as f64 / t_pub.as_secs_f64()).round()),
    );
    r.insert(
        "publish_p50_ns".into(),
        json!(pub_hist.value_at_quantile(0.5)),
    );
    r.insert(
        "publish_p99_ns".into(),
        json!(pub_hist.value_at_quantile(0.99)),
    );
    r.insert(
        "drain_ms".into(),
        num(((t_all - t_pub).as_secs_f64() * 1e3).round()),
    );
    // Segments prepared during the measurement, by each side.
    prepare_fields(&prep, "", &mut r);
    for (k, v) in &res {
        if k.starts_with("slave_") && k != "slave_records" && k != "slave_value_bytes" {
            r.insert(k.clone(), v.clone());
        }
    }
    Ok(r)
}

pub fn latency(a: &LatencyArgs, dir: &Path) -> Result<Row, String> {
    if a.record_size < 8 {
        return Err("--record-size must be at least 8 (the value carries the publish time)".into());
    }
    let c = &a.common;
    let node = start_master(c, dir, 0)?;
    let slave = spawn_slave(c, dir, &node, "latency")?;
    wait_live(&node)?;
    let ks = keys(a.keys);
    let mut value = value_of(a.record_size);
    let rate = a.rate.max(1) as f64;
    let warm = Duration::from_secs_f64(a.warmup_secs);
    let total = warm + Duration::from_secs_f64(a.secs);
    let t0 = Instant::now();
    let mut n = 0u64;
    let mut measured = 0u64;
    let mut last = 0u64;
    let mut t_measure: Option<Instant> = None;
    loop {
        let el = t0.elapsed();
        if el >= total {
            break;
        }
        // Publish what is due, each value stamped just before its publish; then
        // sleep (short sleeps are ~50-100 µs here, so records go in small bursts).
        let due = (el.as_secs_f64() * rate) as u64 + 1;
        let measuring = el >= warm;
        if measuring && t_measure.is_none() {
            t_measure = Some(Instant::now());
        }
        while n < due {
            let ts = if measuring { mono_ns() } else { 0 };
            value[..8].copy_from_slice(&ts.to_le_bytes());
            last = node
                .publish(&ks[(n % ks.len() as u64) as usize], Op::Put, &value)
                .map_err(|e| format!("publish: {e}"))?;
            n += 1;
            measured += measuring as u64;
        }
        std::thread::sleep(Duration::from_micros(20));
    }
    let t_m = t_measure.map_or(Duration::ZERO, |t| t.elapsed());
    node.wait(last, Durability::Applied, APPLY_TIMEOUT)
        .map_err(|e| format!("waiting for the slave to apply: {e}"))?;
    let res = slave.finish(Duration::from_secs(10))?;
    check_slave(&res, n)?;
    drop(node);
    let mut r = Row::new();
    r.insert("scenario".into(), json!("latency"));
    r.insert("record_size".into(), json!(a.record_size));
    r.insert("rate".into(), json!(a.rate));
    r.insert(
        "records_per_s".into(),
        num((measured as f64 / t_m.as_secs_f64().max(1e-9)).round()),
    );
    r.insert(
        "bytes_per_s".into(),
        num((measured as f64 * a.record_size as f64 / t_m.as_secs_f64().max(1e-9)).round()),
    );
    for k in [
        "samples",
        "p50_us",
        "p90_us",
        "p99_us",
        "p999_us",
        "p9999_us",
        "max_us",
        "mean_us",
        "distribution",
    ] {
        if let Some(v) = res.get(k) {
            r.insert(k.into(), v.clone());
        }
    }
    Ok(r)
}

pub fn catchup(a: &CatchupArgs, dir: &Path) -> Result<Row, String> {
    let c = &a.common;
    let node = start_master(c, dir, a.rate_limit)?;
    let n = (a.volume / a.record_size.max(1) as u64).max(1);
    let ks = keys(if a.keys == 0 { n } else { a.keys });
    let value = value_of(a.record_size);
    let tw = Instant::now();
    let mut last = 0;
    for i in 0..n {
        last = node
            .publish(&ks[(i % ks.len() as u64) as usize], Op::Put, &value)
            .map_err(|e| format!("publish: {e}"))?;
    }
    let fill_secs = tw.elapsed().as_secs_f64();
    let tail = node.stats().written;
    let t0 = Instant::now();
    let slave = spawn_slave(c, dir, &node, &c.apply)?;
    // Poll: when the slave connected (start of the transfer) and when it applied all.
    let deadline = t0
        + APPLY_TIMEOUT
        + Duration::from_secs_f64(if a.rate_limit > 0 {
            2.0 * tail as f64 / a.rate_limit as f64
        } else {
            0.0
        });
    let mut t_conn: Option<Duration> = None;
    let t_done = loop {
        let s = node.stats();
        if t_conn.is_none() && s.slave_connected {
            t_conn = Some(t0.elapsed());
        }
        if s.acked_applied > last {
            break t0.elapsed();
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the slave did not catch up in time (applied {} of {tail})",
                s.acked_applied
            ));
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    let st = node.stats();
    let res = slave.finish(Duration::from_secs(10))?;
    check_slave(&res, n)?;
    drop(node);
    let secs = t_done.as_secs_f64();
    let t_conn = t_conn.unwrap_or(Duration::ZERO);
    let transfer = (t_done - t_conn).as_secs_f64().max(1e-9);
    let mut r = Row::new();
    r.insert("scenario".into(), json!("catchup"));
    r.insert("record_size".into(), json!(a.record_size));
    r.insert("records".into(), json!(n));
    r.insert("volume_bytes".into(), json!(n * a.record_size as u64));
    r.insert("log_bytes".into(), json!(tail));
    r.insert(
        "fill_secs".into(),
        num((fill_secs * 1000.0).round() / 1000.0),
    );
    r.insert("secs".into(), num((secs * 1000.0).round() / 1000.0));
    r.insert(
        "connect_ms".into(),
        num((t_conn.as_secs_f64() * 1e3 * 10.0).round() / 10.0),
    );
    r.insert("records_per_s".into(), num((n as f64 / secs).round()));
    r.insert(
        "bytes_per_s".into(),
        num((n as f64 * a.record_size as f64 / secs).round()),
    );
    r.insert(
        "log_bytes_per_s".into(),
        num((tail as f64 / transfer).round()),
    );
    r.insert("rate_limit".into(), json!(a.rate_limit));
    if a.rate_limit > 0 {
        // The master's own measure (bytes sent over the session's time) and ours.
        let master_rate = st.catchup_rate_bytes_per_s as f64;
        r.insert("master_rate_bytes_per_s".into(), num(master_rate));
        r.insert(
            "limit_error_pct".into(),
            num(((tail as f64 / transfer / a.rate_limit as f64 - 1.0) * 1e4).round() / 100.0),
        );
    }
    // The slave's segment preparation while it caught up.
    for (k, v) in &res {
        if k.starts_with("slave_") && k != "slave_records" && k != "slave_value_bytes" {
            r.insert(k.clone(), v.clone());
        }
    }
    Ok(r)
}

pub fn recovery(a: &RecoveryArgs, dir: &Path) -> Result<Row, String> {
    let c = &a.common;
    let cfg = LogConfig {
        segment_bytes: c.segment_bytes,
        record_bytes_max: 1 << 20,
        retention_bytes_max: RETENTION_BYTES,
        ..LogConfig::new(dir.join("log"))
    };
    let tw = Instant::now();
    let n;
    {
        let (log, _) = Log::open(cfg.clone()).map_err(|e| format!("open: {e}"))?;
        log.start_history(hs::log::meta::new_history_id())
            .map_err(|e| format!("history: {e}"))?;
        log.ensure_writable().map_err(|e| format!("segment: {e}"))?;
        let value = value_of(a.record_size);
        let ks = keys(10_000);
        let mut i = 0u64;
        while log.tail() < a.volume {
            log.append_wait(
                Op::Put,
                &ks[(i % 10_000) as usize],
                &value,
                Duration::from_secs(5),
            )
            .map_err(|e| format!("append: {e}"))?;
            i += 1;
        }
        n = i;
        log.flush().map_err(|e| format!("flush: {e}"))?;
    }
    let fill_secs = tw.elapsed().as_secs_f64();
    // The scan: Log::open checks every record (length, CRC, position, epoch order).
    let (log, rec) = Log::open(cfg).map_err(|e| format!("reopen: {e}"))?;
    let open = rec.duration;
    if rec.records != n || rec.truncated_at.is_some() {
        return Err(format!(
            "recovery found {} records (wrote {n}), cut at {:?}",
            rec.records, rec.truncated_at
        ));
    }
    let tail = log.tail();
    drop(log);
    // A node restart: the scan plus the replay of every record through Apply.
    let mut ncfg = Config::new(dir.join("log"));
    ncfg.listen = Some("127.0.0.1:0".parse().unwrap());
    ncfg.segment_bytes = c.segment_bytes;
    ncfg.retention_bytes_max = RETENTION_BYTES;
    ncfg.flush = FlushPolicy::Never;
    // A panic inside hs (a bug to report) must not hide the scan's result: catch it.
    let t1 = Instant::now();
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|i| {
        eprintln!("hs panicked during Node::start: {i}")
    }));
    let started = std::panic::catch_unwind(|| Node::start(ncfg, Role::Master, CountApp(0)));
    std::panic::set_hook(prev);
    let start = t1.elapsed();
    let (start_ms, start_err) = match started {
        Ok(Ok(node)) => {
            node.shutdown();
            (num((start.as_secs_f64() * 1e4).round() / 10.0), None)
        }
        Ok(Err(e)) => (serde_json::Value::Null, Some(format!("node start: {e}"))),
        Err(_) => (
            serde_json::Value::Null,
            Some("hs panicked in Node::start (replay)".to_string()),
        ),
    };
    let mut r = Row::new();
    r.insert("scenario".into(), json!("recovery"));
    r.insert("record_size".into(), json!(a.record_size));
    r.insert("records".into(), json!(n));
    r.insert("log_bytes".into(), json!(tail));
    r.insert(
        "fill_secs".into(),
        num((fill_secs * 1000.0).round() / 1000.0),
    );
    r.insert(
        "open_ms".into(),
        num((open.as_secs_f64() * 1e4).round() / 10.0),
    );
    r.insert("node_start_ms".into(), start_ms);
    if let Some(e) = start_err {
        r.insert("node_start_error".into(), json!(e));
    }
    r.insert(
        "records_per_s".into(),
        num((n as f64 / open.as_secs_f64()).round()),
    );
    r.insert(
        "bytes_per_s".into(),
        num((tail as f64 / open.as_secs_f64()).round()),
    );
    Ok(r)
}

/// One TCP stream on 127.0.0.1: a thread writes `write_bytes` at a time for
/// `secs`, another reads and discards. What any replication stream here can
/// reach at most.
pub fn loopback(a: &LoopbackArgs) -> Result<Row, String> {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let reader = std::thread::spawn(move || -> Result<u64, String> {
        let (mut s, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
        let mut buf = vec![0u8; 256 << 10];
        let mut n = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Ok(n),
                Ok(k) => n += k as u64,
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    });
    let mut w = std::net::TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    let _ = w.set_nodelay(true);
    let buf = vec![7u8; a.write_bytes.max(1)];
    let secs = Duration::from_secs_f64(a.secs);
    let t0 = Instant::now();
    while t0.elapsed() < secs {
        w.write_all(&buf).map_err(|e| format!("write: {e}"))?;
    }
    drop(w);
    let got = reader.join().map_err(|_| "reader panicked".to_string())??;
    let el = t0.elapsed().as_secs_f64();
    let mut r = Row::new();
    r.insert("scenario".into(), json!("loopback"));
    r.insert("write_bytes".into(), json!(a.write_bytes));
    r.insert("bytes".into(), json!(got));
    r.insert("secs".into(), num((el * 1000.0).round() / 1000.0));
    r.insert("bytes_per_s".into(), num((got as f64 / el).round()));
    Ok(r)
}

/// Segment preparation alone, one thread, real files: what the `hs-prepare`
/// thread pays per segment. Creates `count` segments (each timed), then
/// stores over every record byte of each as a publisher would (timed: the
/// faults a publisher would take, if the preparation left any), then
/// recycles each at a later base (timed; every other one written back to disk
/// first). Medians of the segments, in ms.
pub fn prepare(a: &PrepareArgs, dir: &Path) -> Result<Row, String> {
    use hs::log::segment::Segment;
    use hs::log::storage::FileStorage;
    let size = a.common.segment_bytes;
    let n = a.count.max(1);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        num((v[v.len() / 2] * 100.0).round() / 100.0)
    };
    let (mut create, mut touch, mut recycle) = (Vec::new(), Vec::new(), Vec::new());
    let mut segs = Vec::new();
    for i in 0..n as u64 {
        let t = Instant::now();
        let mut s = Segment::create(&FileStorage, dir, 1, i * size, size)
            .map_err(|e| format!("create: {e}"))?;
        create.push(ms(t.elapsed()));
        let t = Instant::now();
        s.fill(0x5a);
        touch.push(ms(t.elapsed()));
        segs.push(s);
    }
    // Every other one is first written back (msync), as the kernel does to a
    // retired segment's pages sooner or later: its pages are clean and
    // write-protected again, so re-zeroing them faults.
    let mut recycle_clean = Vec::new();
    for (i, s) in segs.into_iter().enumerate() {
        let clean = i % 2 == 1;
        if clean {
            s.flush(s.base, s.end())
                .map_err(|e| format!("msync: {e}"))?;
        }
        let t = Instant::now();
        let s = s
            .recycle(&FileStorage, dir, 1, (n + i) as u64 * size)
            .map_err(|e| format!("recycle: {e}"))?;
        if clean {
            &mut recycle_clean
        } else {
            &mut recycle
        }
        .push(ms(t.elapsed()));
        drop(s);
    }
    let mut r = Row::new();
    r.insert("scenario".into(), json!("prepare"));
    r.insert("segment_bytes".into(), json!(size));
    r.insert("segments".into(), json!(n));
    r.insert("create_ms".into(), med(create));
    r.insert("first_fill_ms".into(), med(touch));
    r.insert("recycle_dirty_ms".into(), med(recycle));
    if !recycle_clean.is_empty() {
        r.insert("recycle_written_back_ms".into(), med(recycle_clean));
    }
    Ok(r)
}
