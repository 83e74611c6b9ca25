//! The slave process of a benchmark: runs an hs slave with a measuring `Apply`,
//! prints `READY` once started, and on `STOP` (a line on stdin) prints
//! `RESULT <json>` and exits. A closed stdin (the parent died) also ends it.

use std::collections::HashMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use clap::Args;
use hdrhistogram::Histogram;
use hs::{Apply, Node, Op, RecordRef, Role};
use serde_json::{json, Value};

use super::{mono_ns, num, Row};

#[derive(Args, Debug, Clone)]
pub struct SlaveArgs {
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long)]
    pub master: SocketAddr,
    /// count, kv, or latency (count plus the publish→apply histogram).
    #[arg(long, default_value = "count")]
    pub apply: String,
    #[arg(long, default_value = "never")]
    pub flush: String,
    #[arg(long, default_value_t = 64 << 20)]
    pub segment_bytes: u64,
    #[arg(long, default_value_t = 256 << 10)]
    pub batch_bytes: usize,
    #[arg(long, default_value_t = hs::Config::new("").spin_us)]
    pub spin_us: u64,
    #[arg(long, default_value_t = super::scenarios::RETENTION_BYTES)]
    pub retention_bytes: u64,
}

/// Latency samples are nanoseconds from 1 ns to 60 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

#[derive(Default)]
struct Counters {
    records: AtomicU64,
    value_bytes: AtomicU64,
    /// A sum over the first byte of every value, so the compiler cannot skip reading it.
    touch: AtomicU64,
}

struct BenchApp {
    counters: Arc<Counters>,
    /// Latency mode: publish → apply, from the timestamp in the value's first 8 bytes.
    hist: Option<Arc<Mutex<Histogram<u64>>>>,
    /// kv mode: the state, as a Redis replica keeps its dict.
    kv: Option<HashMap<Vec<u8>, Vec<u8>>>,
    local_records: u64,
    local_bytes: u64,
    local_touch: u64,
}

impl Apply for BenchApp {
    #[inline]
    fn apply(&mut self, r: &RecordRef<'_>) {
        // Plain stores of this thread's running totals (no locked instructions).
        self.local_records += 1;
        self.local_bytes += r.value.len() as u64;
        self.local_touch = self
            .local_touch
            .wrapping_add(r.value.first().copied().unwrap_or(0) as u64);
        let c = &self.counters;
        c.records.store(self.local_records, Ordering::Relaxed);
        c.value_bytes.store(self.local_bytes, Ordering::Relaxed);
        c.touch.store(self.local_touch, Ordering::Relaxed);
        if let Some(h) = &self.hist {
            if r.value.len() >= 8 {
                let then = u64::from_le_bytes(r.value[..8].try_into().unwrap());
                // 0: a warm-up record, not measured.
                if then != 0 {
                    let now = mono_ns();
                    h.lock()
                        .unwrap()
                        .saturating_record(now.saturating_sub(then).max(1));
                }
            }
        }
        if let Some(m) = &mut self.kv {
            match r.op {
                Op::Put => match m.get_mut(r.key) {
                    Some(v) => {
                        v.clear();
                        v.extend_from_slice(r.value);
                    }
                    None => {
                        m.insert(r.key.to_vec(), r.value.to_vec());
                    }
                },
                Op::Delete => {
                    m.remove(r.key);
                }
            }
        }
    }
    fn reset(&mut self) {
        if let Some(m) = &mut self.kv {
            m.clear();
        }
    }
    fn restore(&mut self, key: &[u8], value: &[u8]) {
        if let Some(m) = &mut self.kv {
            m.insert(key.to_vec(), value.to_vec());
        }
    }
}

/// Quantiles for the latency-distribution plot: 0, 0.5, ... up to 1 - 10^-5, then the max.
pub fn distribution(h: &Histogram<u64>) -> Value {
    let mut pts = Vec::new();
    let mut x = 0.0f64;
    while x <= 5.0 + 1e-9 {
        let q = 1.0 - 10f64.powf(-x);
        if h.len() as f64 * (1.0 - q) < 1.0 {
            break;
        }
        pts.push(json!([
            num(q * 100.0),
            num(h.value_at_quantile(q) as f64 / 1000.0)
        ]));
        x += 0.1;
    }
    pts.push(json!([100, num(h.max() as f64 / 1000.0)]));
    Value::Array(pts)
}

/// p50 / p99 / p999 / max / mean in microseconds.
pub fn percentiles(h: &Histogram<u64>, out: &mut Row) {
    let us = |v: u64| num(v as f64 / 1000.0);
    out.insert("samples".into(), json!(h.len()));
    out.insert("p50_us".into(), us(h.value_at_quantile(0.5)));
    out.insert("p90_us".into(), us(h.value_at_quantile(0.9)));
    out.insert("p99_us".into(), us(h.value_at_quantile(0.99)));
    out.insert("p999_us".into(), us(h.value_at_quantile(0.999)));
    out.insert("p9999_us".into(), us(h.value_at_quantile(0.9999)));
    out.insert("max_us".into(), us(h.max()));
    out.insert(
        "mean_us".into(),
        num((h.mean() / 1000.0 * 1000.0).round() / 1000.0),
    );
}

pub fn run(a: &SlaveArgs) -> Result<(), String> {
    let mut cfg = hs::Config::new(&a.dir);
    cfg.peer = Some(a.master);
    cfg.segment_bytes = a.segment_bytes;
    cfg.batch_bytes_max = a.batch_bytes;
    cfg.retention_bytes_max = a.retention_bytes;
    cfg.spin_us = a.spin_us;
    cfg.flush = tools::cli::parse_flush(&a.flush)?;
    let counters = Arc::new(Counters::default());
    let hist = (a.apply == "latency").then(|| Arc::new(Mutex::new(new_histogram())));
    let app = BenchApp {
        counters: counters.clone(),
        hist: hist.clone(),
        kv: (a.apply == "kv").then(HashMap::new),
        local_records: 0,
        local_bytes: 0,
        local_touch: 0,
    };
    if !matches!(a.apply.as_str(), "count" | "kv" | "latency") {
        return Err(format!(
            "--apply takes count, kv or latency, not {:?}",
            a.apply
        ));
    }
    let node = Node::start(cfg, Role::Slave, app).map_err(|e| format!("slave: {e}"))?;
    // Segment preparation counted from here, or from the last `COMPACT`.
    let mut prep0 = hs::log::segment::prepare_stats();
    println!("READY");
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        line.clear();
        match stdin.lock().read_line(&mut line) {
            Ok(0) | Err(_) => {
                // The parent is gone: stop quietly.
                node.shutdown();
                return Ok(());
            }
            Ok(_) if line.trim() == "STOP" => break,
            Ok(_) if line.trim() == "COMPACT" => {
                let first = node.compact().map_err(|e| format!("slave compact: {e}"))?;
                prep0 = hs::log::segment::prepare_stats();
                println!("COMPACTED {}", first.unwrap_or(0));
            }
            Ok(_) => {}
        }
    }
    let st = node.stats();
    let mut out = Row::new();
    out.insert(
        "slave_records".into(),
        json!(counters.records.load(Ordering::Relaxed)),
    );
    out.insert(
        "slave_value_bytes".into(),
        json!(counters.value_bytes.load(Ordering::Relaxed)),
    );
    out.insert("slave_applied_pos".into(), json!(st.applied));
    out.insert("slave_reconnects".into(), json!(st.reconnects));
    out.insert("slave_first".into(), json!(st.first));
    // Snapshot bytes of a resync (the master's log no longer held what this
    // slave needed): its records then never went through `Apply`.
    out.insert("slave_resync_bytes".into(), json!(st.resync_received_bytes));
    super::scenarios::prepare_fields(
        &hs::log::segment::prepare_stats().since(&prep0),
        "slave_",
        &mut out,
    );
    out.insert(
        "touch".into(),
        json!(counters.touch.load(Ordering::Relaxed)),
    );
    if let Some(h) = &hist {
        let h = h.lock().unwrap();
        percentiles(&h, &mut out);
        out.insert("distribution".into(), distribution(&h));
    }
    println!("RESULT {}", Value::Object(out));
    node.shutdown();
    Ok(())
}
