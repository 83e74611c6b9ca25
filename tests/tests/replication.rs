//! Master and slave as two real processes on 127.0.0.1: live streaming, a slave
//! killed and restarted, a late slave under a rate limit, a resync forced by retention.

use std::time::Duration;

use system_tests::{args, Proc};

const EXE: &str = env!("CARGO_BIN_EXE_hs-testnode");
const LONG: Duration = Duration::from_secs(120);

fn u(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

fn path(d: &tempfile::TempDir, n: &str) -> String {
    d.path().join(n).display().to_string()
}

fn assert_same_state(master: &serde_json::Value, slave: &serde_json::Value) {
    assert_eq!(
        u(slave, "digest"),
        u(master, "digest"),
        "state differs: master {master} slave {slave}"
    );
    assert_eq!(u(slave, "keys"), u(master, "keys"));
    assert_eq!(u(slave, "gaps"), 0, "{slave}");
    assert_eq!(u(slave, "duplicates"), 0, "{slave}");
}

/// One million records streamed live; the slave's state equals the master's,
/// and a fresh process rebuilds the same state from the slave's log alone.
#[test]
fn million_records_reach_the_slave_identically() {
    let _heavy = system_tests::heavy();
    let d = tempfile::tempdir().unwrap();
    let mut m = Proc::spawn(
        "master",
        EXE,
        &args![
            "master",
            "--dir",
            path(&d, "m"),
            "--records",
            1_000_000,
            "--keys",
            50_000,
            "--value-bytes",
            40,
            "--delete-every",
            7,
            "--wait-slave-ms",
            60_000
        ],
    );
    let addr = m.wait_line("LISTEN ", LONG);
    let mut s = Proc::spawn(
        "slave",
        EXE,
        &args![
            "slave",
            "--dir",
            path(&d, "s"),
            "--master",
            addr,
            "--timeout-ms",
            90_000
        ],
    );
    let tail: u64 = m.wait_line("PUBLISHED ", LONG).parse().unwrap();
    s.send_line(&format!("UNTIL {tail}"));
    let sd = s.done(LONG);
    let md = m.done(LONG);
    assert_eq!(
        md["synced"], true,
        "slave never acknowledged everything: {md}"
    );
    assert_same_state(&md, &sd);
    assert_eq!(u(&sd, "records_applied"), 1_000_000);
    assert_eq!(s.wait_exit(LONG), 0);
    // No master this time (port 9 on loopback refuses): the state comes from the log.
    let mut s2 = Proc::spawn(
        "slave-replay",
        EXE,
        &args![
            "slave",
            "--dir",
            path(&d, "s"),
            "--master",
            "127.0.0.1:9",
            "--until-pos",
            tail
        ],
    );
    let rd = s2.done(LONG);
    assert_same_state(&md, &rd);
    assert_eq!(u(&rd, "records_applied"), 1_000_000);
}

/// A slave SIGKILLed mid-stream and restarted resumes from its own log:
/// every record applied exactly once, none missing.
#[test]
fn slave_killed_mid_stream_resumes_without_gap_or_duplicate() {
    let _heavy = system_tests::heavy();
    let d = tempfile::tempdir().unwrap();
    let n = 600_000u64;
    let mut m = Proc::spawn(
        "master",
        EXE,
        &args![
            "master",
            "--dir",
            path(&d, "m"),
            "--records",
            n,
            "--rate",
            200_000,
            "--keys",
            20_000,
            "--value-bytes",
            60,
            "--delete-every",
            11,
            "--wait-slave-ms",
            90_000,
            "--segment-bytes",
            4 << 20
        ],
    );
    let addr = m.wait_line("LISTEN ", LONG);
    let slave_args = |extra: &[&str]| {
        let mut a = args![
            "slave",
            "--dir",
            path(&d, "s"),
            "--master",
            addr,
            "--timeout-ms",
            90_000,
            "--segment-bytes",
            4 << 20
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let mut s1 = Proc::spawn("slave1", EXE, &slave_args(&["--progress-ms", "10"]));
    // Kill it once it has applied a good part, while the master is still writing.
    loop {
        let applied: u64 = s1.wait_line("PROGRESS ", LONG).parse().unwrap();
        if applied > 10 << 20 {
            break;
        }
    }
    s1.kill9();
    let mut s2 = Proc::spawn("slave2", EXE, &slave_args(&[]));
    let tail: u64 = m.wait_line("PUBLISHED ", LONG).parse().unwrap();
    s2.send_line(&format!("UNTIL {tail}"));
    let sd = s2.done(LONG);
    let md = m.done(LONG);
    assert_eq!(md["synced"], true, "{md}");
    assert_same_state(&md, &sd);
    // The restarted process replayed what slave1 had written, then followed: each record once.
    assert_eq!(u(&sd, "records_applied"), n, "{sd}");
}

/// A slave that arrives after 256 MiB were written catches up under a rate
/// limit, and the rate measured by the master is within 5% of the setting.
#[test]
fn late_slave_catches_up_at_the_configured_rate() {
    let _heavy = system_tests::heavy();
    let d = tempfile::tempdir().unwrap();
    let rate = 64u64 << 20;
    let n = 256u64 << 10; // 256 Ki records of ~1 KiB: 256 MiB
    let mut m = Proc::spawn(
        "master",
        EXE,
        &args![
            "master",
            "--dir",
            path(&d, "m"),
            "--records",
            n,
            "--keys",
            4096,
            "--value-bytes",
            1000,
            "--catchup-rate",
            rate,
            "--wait-slave-ms",
            90_000
        ],
    );
    let addr = m.wait_line("LISTEN ", LONG);
    let tail: u64 = m.wait_line("PUBLISHED ", LONG).parse().unwrap();
    assert!(tail >= 256 << 20, "wrote only {tail} bytes");
    let mut s = Proc::spawn(
        "slave",
        EXE,
        &args![
            "slave",
            "--dir",
            path(&d, "s"),
            "--master",
            addr,
            "--until-pos",
            tail,
            "--timeout-ms",
            90_000
        ],
    );
    let sd = s.done(LONG);
    let md = m.done(LONG);
    assert_same_state(&md, &sd);
    assert_eq!(u(&md, "catchup_bytes"), tail);
    let measured = u(&md, "catchup_rate") as f64;
    let err = measured / rate as f64 - 1.0;
    eprintln!(
        "catch-up: {:.1} MiB/s for a limit of {} MiB/s ({:+.2}%)",
        measured / (1 << 20) as f64,
        rate >> 20,
        err * 100.0
    );
    assert!(
        err.abs() <= 0.05,
        "catch-up rate {measured} B/s is not within 5% of {rate} B/s"
    );
}

/// The master's retention drops history a returning slave needs: the slave is
/// resynced from a snapshot, and its state is still identical.
#[test]
fn retention_forces_a_full_resync_with_identical_state() {
    let _heavy = system_tests::heavy();
    let d = tempfile::tempdir().unwrap();
    let seg = 1u64 << 20;
    let mut m = Proc::spawn(
        "master",
        EXE,
        &args![
            "master",
            "--dir",
            path(&d, "m"),
            "--records",
            "20000,200000",
            "--keys",
            30_000,
            "--value-bytes",
            80,
            "--delete-every",
            5,
            "--segment-bytes",
            seg,
            "--retention-bytes",
            4 * seg,
            "--record-bytes-max",
            65536,
            "--compact",
            "--wait-slave-ms",
            90_000
        ],
    );
    let addr = m.wait_line("LISTEN ", LONG);
    let t1: u64 = m.wait_line("PUBLISHED ", LONG).parse().unwrap();
    let sargs = args![
        "slave",
        "--dir",
        path(&d, "s"),
        "--master",
        addr,
        "--timeout-ms",
        90_000,
        "--segment-bytes",
        seg,
        "--record-bytes-max",
        65536
    ];
    let mut s1 = Proc::spawn("slave1", EXE, &sargs);
    s1.send_line(&format!("UNTIL {t1}"));
    s1.done(LONG);
    assert_eq!(s1.wait_exit(LONG), 0);
    // While the slave is away the master writes far past its retention.
    m.send_line("go");
    let t2: u64 = m.wait_line("PUBLISHED ", LONG).parse().unwrap();
    let mut s2 = Proc::spawn("slave2", EXE, &sargs);
    s2.send_line(&format!("UNTIL {t2}"));
    let sd = s2.done(LONG);
    let md = m.done(LONG);
    assert!(
        u(&md, "first") > t1,
        "master kept the history the slave needed; nothing forced a resync: {md}"
    );
    assert_same_state(&md, &sd);
    // Replay at start is one reset; the resync is another.
    assert!(u(&sd, "resets") >= 2, "slave was not resynced: {sd}");
    assert_eq!(
        u(&sd, "first"),
        u(&md, "first"),
        "slave's log should start at the master's snapshot"
    );
}
