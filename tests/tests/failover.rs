//! Failover with real processes on 127.0.0.1: the drill (SIGKILL and SIGSTOP of
//! the master under load, restarts, checks) and a planned switchover.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use system_tests::{args, Proc};

const NODE: &str = env!("CARGO_BIN_EXE_hs-testnode");
const DRILL: &str = env!("CARGO_BIN_EXE_hs-testdrill");
const LONG: Duration = Duration::from_secs(120);

/// Kill -9 the master under load again and again (and stop it past the failure
/// timeout twice): at `received`, no acknowledged write is ever lost, and each
/// old master comes back as a slave (the drill fails otherwise).
#[test]
fn drill_loses_no_acknowledged_write() {
    let _heavy = system_tests::heavy();
    let mut d = Proc::spawn(
        "drill",
        DRILL,
        &args![
            "--kills",
            6,
            "--partitions",
            2,
            "--level",
            "received",
            "--seed",
            42,
            "--json"
        ],
    );
    let line = d.wait_line("{", LONG);
    let v: serde_json::Value = serde_json::from_str(&format!("{{{line}")).unwrap();
    assert_eq!(d.wait_exit(LONG), 0, "drill failed: {v}");
    assert_eq!(v["acked_lost"], 0, "{v}");
    assert_eq!(v["acked_lost_any_round"], 0, "{v}");
    assert_eq!(v["kills"], 6);
    assert_eq!(v["partitions"], 2);
    assert!(
        v["writes_acked"].as_u64().unwrap() > 100,
        "too little load to mean anything: {v}"
    );
    for k in [
        "failover_ms_p50",
        "failover_ms_p99",
        "failover_ms_max",
        "partition_failover_ms_p50",
        "unacked_lost",
        "rolled_back",
    ] {
        assert!(v[k].is_number(), "missing {k}: {v}");
    }
}

fn ask(addr: SocketAddr, req: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(format!("{req}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line.trim().to_string()
}

fn role(addr: SocketAddr) -> String {
    ask(addr, "ROLE")
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

fn free() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn until(what: &str, f: impl FnMut() -> bool) {
    testkit::wait_until_every(what, LONG, Duration::from_millis(5), f);
}

/// A planned switchover between two processes: writes stop, the slave applies
/// everything and takes over, the old master follows; nothing is lost, and the
/// new master takes writes.
#[test]
fn planned_switchover_between_processes_loses_nothing() {
    let d = tempfile::tempdir().unwrap();
    let (ra, rb) = (free(), free());
    let node = |name: &str, listen: SocketAddr, peer: SocketAddr, prefer: bool| {
        let mut a = args![
            "pair",
            "--dir",
            d.path().join(name).display(),
            "--listen",
            listen,
            "--peer",
            peer,
            "--heartbeat-ms",
            20
        ];
        if prefer {
            a.push("--prefer-master".into());
        }
        let mut p = Proc::spawn(name, NODE, &a);
        p.wait_line("LISTEN ", LONG);
        let c: SocketAddr = p.wait_line("CLIENT ", LONG).parse().unwrap();
        (p, c)
    };
    let (_a, ca) = node("a", ra, rb, true);
    let (_b, cb) = node("b", rb, ra, false);
    until("a to serve and b to follow", || {
        role(ca) == "master" && role(cb) == "slave"
    });
    for i in 0..500 {
        let r = ask(ca, &format!("PUT k{i} v{i} applied"));
        assert!(r.starts_with("OK"), "write {i}: {r}");
    }
    assert_eq!(ask(ca, "SWITCHOVER"), "OK");
    until("b to serve and a to follow", || {
        role(cb) == "master" && role(ca) == "slave"
    });
    let bits = ask(cb, "HAVE k 0 500");
    let hex = bits.strip_prefix("BITS ").unwrap();
    // 500 keys: 62 full bytes of ones and one byte with the low 4 bits set.
    assert_eq!(
        hex,
        format!("{}0f", "ff".repeat(62)),
        "keys missing on the new master"
    );
    assert!(ask(ca, "PUT x y async").starts_with("NOTMASTER"));
    let r = ask(cb, "PUT after switch applied");
    assert!(r.starts_with("OK"), "{r}");
}
