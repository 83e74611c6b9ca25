//! A full disk: the next segment cannot be allocated. Publishing gets a clear
//! `Full` error naming the cause, nothing written before is lost, and when space
//! comes back publishing resumes. Simulated with RLIMIT_FSIZE (a per-file size
//! limit) in this test binary's own process; SIGXFSZ is ignored so the
//! allocation fails with EFBIG instead of killing the process.

use std::time::{Duration, Instant};

use hs::{Apply, Config, LogError, Node, NodeError, RecordRef, Role};

struct Nop;
impl Apply for Nop {
    fn apply(&mut self, _: &RecordRef<'_>) {}
    fn reset(&mut self) {}
    fn restore(&mut self, _: &[u8], _: &[u8]) {}
}

fn set_fsize(limit: u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with valid pointers.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut r), 0);
        r.rlim_cur = if limit == u64::MAX {
            r.rlim_max
        } else {
            limit as libc::rlim_t
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &r), 0);
    }
}

#[test]
fn full_disk_gives_a_clear_error_loses_nothing_and_recovers() {
    // SAFETY: setting a signal disposition to ignore.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let d = tempfile::tempdir().unwrap();
    let seg = 1u64 << 20;
    let mut cfg = Config::new(d.path());
    cfg.listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.segment_bytes = seg;
    cfg.record_bytes_max = 4096;
    cfg.publish_timeout_ms = 200;
    let node = Node::start(cfg.clone(), Role::Master, Nop).unwrap();
    // Let the spare of the first segment be prepared, then "fill the disk".
    let t0 = Instant::now();
    while d
        .path()
        .read_dir()
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .count()
        < 2
    {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "spare segment never prepared"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    set_fsize(seg / 2);
    let mut written = 0u64;
    let err = loop {
        match node.put(&written.to_le_bytes(), &[7u8; 1000]) {
            Ok(_) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 10_000, "never ran out of space");
    };
    let msg = err.to_string();
    assert!(
        matches!(err, NodeError::Log(LogError::Full { .. })),
        "{err:?}"
    );
    assert!(
        msg.contains("File too large") || msg.contains("os error 27"),
        "the cause is not named: {msg}"
    );
    // Two segments' worth fitted (the open one and the prepared spare).
    assert!(written > 1000, "only {written} records fitted");
    // Space comes back: publishing resumes.
    set_fsize(u64::MAX);
    let t0 = Instant::now();
    loop {
        match node.put(b"after", b"space is back") {
            Ok(_) => break,
            Err(NodeError::Log(LogError::Full { .. }))
                if t0.elapsed() < Duration::from_secs(20) =>
            {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("did not recover: {e}"),
        }
    }
    let tail = node.stats().written;
    drop(node);
    // Nothing written before the error was lost.
    let (log, rec) = hs::log::Log::open(hs::LogConfig {
        segment_bytes: seg,
        record_bytes_max: 4096,
        retention_bytes_max: 1 << 30,
        ..hs::LogConfig::new(d.path().to_path_buf())
    })
    .unwrap();
    assert_eq!(rec.truncated_at, None);
    assert_eq!(rec.tail, tail);
    assert_eq!(rec.records, written + 1);
    drop(log);
}
