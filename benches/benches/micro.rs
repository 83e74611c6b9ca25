//! Micro-benchmarks of hs's hot functions: record encode/decode, CRC, frame
//! codec, log append, publish on a master with no slave, and the slave's path
//! (`Log::append_replicated` then decoding each record for `Apply`).
//!
//! `cargo bench -p benches --bench micro` (set CARGO_TARGET_DIR as you like).
//! Logs live in the system temp dir and are recreated (outside the timed part)
//! whenever one reaches `LOG_BYTES_MAX`, so a run uses bounded disk.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hs::log::{for_each_in, Log, LogConfig};
use hs::proto::frame::Frame;
use hs::proto::record::{self, Decoded};
use hs::{Apply, Config, FlushPolicy, Node, Op, RecordRef, Role};

/// Value sizes measured (bytes); keys are 16 bytes, as in hs-bench and redis-benchmark.
const SIZES: [usize; 2] = [64, 1024];
const KEY: &[u8; 16] = b"key:000000001234";
/// A log is recreated once it holds this much (untimed), to bound disk use.
const LOG_BYTES_MAX: u64 = 256 << 20;
const SEGMENT_BYTES: u64 = 64 << 20;

static DIR_SEQ: AtomicU64 = AtomicU64::new(0);

/// A fresh directory under the temp dir, removed on drop.
struct TmpDir(PathBuf);
impl TmpDir {
    fn new(name: &str) -> TmpDir {
        let p = std::env::temp_dir().join(format!(
            "hs-micro-{}-{name}-{}",
            std::process::id(),
            DIR_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TmpDir(p)
    }
}
impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn log_config(dir: &TmpDir) -> LogConfig {
    LogConfig {
        segment_bytes: SEGMENT_BYTES,
        record_bytes_max: 1 << 20,
        retention_bytes_max: 1 << 40,
        ..LogConfig::new(dir.0.clone())
    }
}

/// A writable log with a history (what a master has).
fn master_log() -> (Arc<Log>, TmpDir) {
    let d = TmpDir::new("log");
    let (log, _) = Log::open(log_config(&d)).expect("open log");
    log.start_history(hs::log::meta::new_history_id())
        .expect("history");
    log.ensure_writable().expect("segment");
    (log, d)
}

fn value(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

fn bench_record(c: &mut Criterion) {
    let mut g = c.benchmark_group("record");
    for &s in &SIZES {
        let v = value(s);
        let len = record::encoded_len(KEY.len(), s);
        let mut buf = vec![0u8; len];
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::new("encode_into", s), &s, |b, _| {
            b.iter(|| {
                record::encode_into(std::hint::black_box(&mut buf), 4096, 1, Op::Put, KEY, &v)
            })
        });
        record::encode_into(&mut buf, 4096, 1, Op::Put, KEY, &v);
        g.bench_with_input(BenchmarkId::new("decode", s), &s, |b, _| {
            b.iter(
                || match record::decode(std::hint::black_box(&buf), 4096, 1 << 20) {
                    Ok(Decoded::Record { size, .. }) => size,
                    _ => unreachable!("valid record"),
                },
            )
        });
    }
    g.finish();
}

/// hs's checksum (CRC32C, SSE4.2) beside the CRC32 of format 1 it replaced.
fn bench_crc(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc");
    for n in [64usize, 1024, 64 << 10] {
        let b = value(n);
        g.throughput(Throughput::Bytes(n as u64));
        g.bench_with_input(BenchmarkId::new("crc32c", n), &n, |bch, _| {
            bch.iter(|| hs::proto::checksum::crc(std::hint::black_box(&b)))
        });
        g.bench_with_input(BenchmarkId::new("crc32_ieee", n), &n, |bch, _| {
            bch.iter(|| crc32fast::hash(std::hint::black_box(&b)))
        });
    }
    g.finish();
}

/// Records of one value size laid out from position `base` (as a segment would hold them).
fn records_at(base: u64, value_bytes: usize, total_bytes: usize) -> Vec<u8> {
    let v = value(value_bytes);
    let size = record::encoded_len(KEY.len(), value_bytes);
    let n = total_bytes / size;
    let mut out = vec![0u8; n * size];
    for i in 0..n {
        record::encode_into(
            &mut out[i * size..(i + 1) * size],
            base + (i * size) as u64,
            1,
            Op::Put,
            KEY,
            &v,
        );
    }
    out
}

fn bench_frame(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_data_256KiB");
    let recs = bytes::Bytes::from(records_at(0, 64, 256 << 10));
    let f = Frame::Data {
        pos: 0,
        epoch: 1,
        tail: recs.len() as u64,
        records: recs.clone(),
    };
    g.throughput(Throughput::Bytes(recs.len() as u64));
    g.bench_function("encode", |b| {
        let mut dst = BytesMut::with_capacity(300 << 10);
        b.iter(|| {
            dst.clear();
            f.encode(&mut dst);
            dst.len()
        })
    });
    let mut enc = BytesMut::new();
    f.encode(&mut enc);
    let enc = enc.freeze();
    g.bench_function("decode", |b| {
        b.iter(|| {
            let mut src = BytesMut::from(&enc[..]);
            Frame::decode(&mut src, 1 << 21)
                .expect("valid")
                .expect("whole")
        })
    });
    g.finish();
}

fn bench_log_append(c: &mut Criterion) {
    let mut g = c.benchmark_group("log_append");
    g.measurement_time(Duration::from_secs(4));
    for &s in &SIZES {
        let v = value(s);
        g.throughput(Throughput::Bytes(s as u64));
        let mut cur = Some(master_log());
        g.bench_with_input(BenchmarkId::from_parameter(s), &s, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    if cur.as_ref().is_none_or(|(l, _)| l.tail() >= LOG_BYTES_MAX) {
                        cur = None;
                        cur = Some(master_log());
                    }
                    let log = &cur.as_ref().unwrap().0;
                    let room =
                        (LOG_BYTES_MAX - log.tail()) / record::encoded_len(KEY.len(), s) as u64 + 1;
                    let n = room.min(iters - done);
                    let t = Instant::now();
                    for _ in 0..n {
                        log.append_wait(Op::Put, KEY, &v, Duration::from_secs(5))
                            .expect("append");
                    }
                    total += t.elapsed();
                    done += n;
                }
                total
            })
        });
    }
    g.finish();
}

struct Nop;
impl Apply for Nop {
    fn apply(&mut self, _: &RecordRef<'_>) {}
    fn reset(&mut self) {}
    fn restore(&mut self, _: &[u8], _: &[u8]) {}
}

fn master_node() -> (Node, TmpDir) {
    let d = TmpDir::new("node");
    let mut cfg = Config::new(&d.0);
    cfg.listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.flush = FlushPolicy::Never;
    cfg.retention_bytes_max = 1 << 40;
    cfg.publish_timeout_ms = 5000;
    let n = Node::start(cfg, Role::Master, Nop).expect("start master");
    (n, d)
}

fn bench_publish(c: &mut Criterion) {
    let mut g = c.benchmark_group("publish_no_slave");
    g.measurement_time(Duration::from_secs(4));
    for &s in &SIZES {
        let v = value(s);
        g.throughput(Throughput::Bytes(s as u64));
        let mut cur = Some(master_node());
        g.bench_with_input(BenchmarkId::from_parameter(s), &s, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    if cur
                        .as_ref()
                        .is_none_or(|(n, _)| n.stats().written >= LOG_BYTES_MAX)
                    {
                        cur = None;
                        cur = Some(master_node());
                    }
                    let node = &cur.as_ref().unwrap().0;
                    let room = (LOG_BYTES_MAX - node.stats().written)
                        / record::encoded_len(KEY.len(), s) as u64
                        + 1;
                    let n = room.min(iters - done);
                    let t = Instant::now();
                    for _ in 0..n {
                        node.publish(KEY, Op::Put, &v).expect("publish");
                    }
                    total += t.elapsed();
                    done += n;
                }
                total
            })
        });
    }
    g.finish();
}

/// The slave's per-batch work: check and copy a 256 KiB Data payload into its
/// log (`append_replicated`), then decode every record again for `Apply`.
fn bench_slave_apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("slave_apply_batch_256KiB");
    g.measurement_time(Duration::from_secs(4));
    for &s in &SIZES {
        let size = record::encoded_len(KEY.len(), s);
        let batch = (256 << 10) / size * size;
        // One segment's worth of records from position 0; each iteration takes the next batch.
        let seg = records_at(0, s, (SEGMENT_BYTES as usize / batch) * batch);
        g.throughput(Throughput::Bytes(batch as u64));
        let fresh = || {
            let d = TmpDir::new("slave");
            let (log, _) = Log::open(log_config(&d)).expect("open");
            log.adopt_history(hs::log::meta::new_history_id(), SEGMENT_BYTES)
                .expect("adopt");
            (log, d)
        };
        let mut cur = Some(fresh());
        g.bench_with_input(BenchmarkId::from_parameter(s), &s, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut applied = 0u64;
                for _ in 0..iters {
                    if cur
                        .as_ref()
                        .is_none_or(|(l, _)| l.tail() as usize + batch > seg.len())
                    {
                        cur = None;
                        cur = Some(fresh());
                        // The first replicated append waits for the segment: do it untimed.
                        let log = &cur.as_ref().unwrap().0;
                        log.append_replicated(0, &seg[..batch])
                            .expect("first batch");
                    }
                    let log = &cur.as_ref().unwrap().0;
                    let pos = log.tail();
                    let bytes = &seg[pos as usize..pos as usize + batch];
                    let t = Instant::now();
                    log.append_replicated(pos, bytes)
                        .expect("replicated append");
                    let mut f = |r: &RecordRef<'_>| applied += r.value.len() as u64;
                    for_each_in(bytes, pos, 1 << 20, &mut f).expect("decode");
                    total += t.elapsed();
                }
                std::hint::black_box(applied);
                total
            })
        });
    }
    g.finish();
}

/// Preparing a segment (what `hs-prepare` does for every `segment_bytes` of log,
/// on master and slave alike), against re-zeroing memory that is already mapped
/// and resident (what recycling a retired segment's mapping would cost).
fn bench_segment_prepare(c: &mut Criterion) {
    let mut g = c.benchmark_group("segment_prepare_64MiB");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Bytes(SEGMENT_BYTES));
    let d = TmpDir::new("seg");
    let mut base = 0u64;
    g.bench_function("create", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let s = hs::log::segment::Segment::create(
                    &hs::log::storage::FileStorage,
                    &d.0,
                    1,
                    base,
                    SEGMENT_BYTES,
                )
                .expect("create segment");
                total += t.elapsed();
                let _ = std::fs::remove_file(&s.path);
                drop(s);
                base += SEGMENT_BYTES;
            }
            total
        })
    });
    let mut resident = vec![1u8; SEGMENT_BYTES as usize];
    g.bench_function("rezero_resident", |b| {
        b.iter(|| {
            resident.fill(0);
            std::hint::black_box(&mut resident);
        })
    });
    g.finish();
}

criterion_group! {
    name = micro;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2)).sample_size(30);
    targets = bench_record, bench_crc, bench_segment_prepare, bench_frame, bench_log_append, bench_publish, bench_slave_apply
}
criterion_main!(micro);
