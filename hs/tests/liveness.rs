//! Seed 004's heartbeat: a silent peer is declared dead after N idle ticks; a
//! peer whose process died (its kernel closed the connection) is noticed at once.
//! Fake peers on 127.0.0.1, port 0.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hs::proto::frame::{Action, Frame};
use hs::{Apply, Config, Event, Node, RecordRef, Role};

struct Nop;
impl Apply for Nop {
    fn apply(&mut self, _: &RecordRef<'_>) {}
    fn reset(&mut self) {}
    fn restore(&mut self, _: &[u8], _: &[u8]) {}
}

fn send(s: &mut TcpStream, f: &Frame) {
    let mut b = BytesMut::new();
    f.encode(&mut b);
    s.write_all(&b).unwrap();
}

fn slave_node(dir: &std::path::Path, master: std::net::SocketAddr, hb_ms: u64, ticks: u32) -> Node {
    let mut cfg = Config::new(dir);
    cfg.peer = Some(master);
    cfg.segment_bytes = 1 << 20;
    cfg.record_bytes_max = 4096;
    cfg.heartbeat_interval_ms = hb_ms;
    cfg.heartbeat_dead_ticks = ticks;
    cfg.reconnect_backoff_min_ms = 10_000; // one session is enough to observe
    Node::start(cfg, Role::Slave, Nop).unwrap()
}

fn accept_and_welcome(l: &TcpListener) -> TcpStream {
    let (mut s, _) = l.accept().unwrap();
    let mut hdr = [0u8; 12];
    s.read_exact(&mut hdr).unwrap();
    let len = u32::from_le_bytes(hdr[0..4].try_into().unwrap()) as usize;
    let mut rest = vec![0u8; len];
    s.read_exact(&mut rest).unwrap();
    send(
        &mut s,
        &Frame::Welcome {
            history: 9,
            epoch: 1,
            segment_bytes: 1 << 20,
            action: Action::Continue,
            start: 0,
            snapshot_bytes: 0,
            node: 77,
        },
    );
    s
}

fn master_lost(node: &Node, within: Duration) -> (String, Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if let Some(Event::MasterLost { reason }) = node.next_event(Duration::from_millis(10)) {
            return (reason, t0.elapsed());
        }
    }
    panic!("master never declared lost within {within:?}");
}

#[test]
fn a_silent_master_is_declared_dead_after_the_idle_ticks() {
    let d = tempfile::tempdir().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let node = slave_node(d.path(), l.local_addr().unwrap(), 20, 3);
    let _s = accept_and_welcome(&l); // kept open, never written to again
    let (reason, _) = master_lost(&node, Duration::from_secs(20));
    assert!(reason.contains("silent for 3 heartbeat ticks"), "{reason}");
}

#[test]
fn a_closed_connection_is_noticed_without_waiting_for_ticks() {
    let d = tempfile::tempdir().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    // Ticks of 10 s: 5 of them would take 50 s; the close must be seen long before.
    let node = slave_node(d.path(), l.local_addr().unwrap(), 10_000, 5);
    let s = accept_and_welcome(&l);
    drop(s);
    let (reason, _) = master_lost(&node, Duration::from_secs(20));
    assert!(reason.contains("closed"), "{reason}");
}

#[test]
fn master_drops_a_silent_slave_and_keeps_its_log() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(d.path());
    cfg.listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.segment_bytes = 1 << 20;
    cfg.record_bytes_max = 4096;
    cfg.heartbeat_interval_ms = 20;
    cfg.heartbeat_dead_ticks = 3;
    let node = Node::start(cfg, Role::Master, Nop).unwrap();
    let mut s = TcpStream::connect(node.local_addr().unwrap()).unwrap();
    send(
        &mut s,
        &Frame::Hello {
            node: 5,
            history: 0,
            epoch: 0,
            last_epoch: 0,
            tail: 0,
            role: 2,
            epochs: vec![],
        },
    );
    for i in 0..100u32 {
        node.put(&i.to_le_bytes(), b"x").unwrap();
    }
    let t0 = Instant::now();
    let reason = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "silent slave never dropped"
        );
        if let Some(Event::SlaveLost { reason, .. }) = node.next_event(Duration::from_millis(10)) {
            break reason;
        }
    };
    assert!(reason.contains("silent"), "{reason}");
    assert!(!node.stats().slave_connected);
    // The log is kept, and publishing goes on.
    assert_eq!(node.stats().records_published, 100);
    node.put(b"after", b"x").unwrap();
}

/// Records every applied record's position and value length.
struct Seen(std::sync::Arc<std::sync::Mutex<Vec<(u64, usize)>>>);
impl Apply for Seen {
    fn apply(&mut self, r: &RecordRef<'_>) {
        self.0.lock().unwrap().push((r.pos, r.value.len()));
    }
    fn reset(&mut self) {
        self.0.lock().unwrap().clear();
    }
    fn restore(&mut self, _: &[u8], _: &[u8]) {}
}

/// With `spin_us` on (the sender spinning on the tail, the applier on a
/// non-blocking `recv`), every record arrives whole and in order — frames far
/// larger than one `recv` too — and a closed connection is still noticed at
/// once, not after the heartbeat ticks.
#[test]
fn spinning_nodes_replicate_every_record_and_notice_a_close() {
    let (dm, ds) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut mc = Config::new(dm.path());
    mc.listen = Some("127.0.0.1:0".parse().unwrap());
    mc.segment_bytes = 1 << 22;
    mc.record_bytes_max = 1 << 20;
    mc.spin_us = 2_000;
    let master = Node::start(mc, Role::Master, Nop).unwrap();
    let mut sc = Config::new(ds.path());
    sc.peer = master.local_addr();
    sc.segment_bytes = 1 << 22;
    sc.record_bytes_max = 1 << 20;
    sc.spin_us = 2_000;
    sc.heartbeat_interval_ms = 10_000; // a close must be seen without ticks
    sc.reconnect_backoff_min_ms = 10_000;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let slave = Node::start(sc, Role::Slave, Seen(seen.clone())).unwrap();
    let mut want = Vec::new();
    for i in 0..600usize {
        // Mostly small records, now and then one of 300 KiB (a frame of many reads).
        let len = if i % 97 == 0 { 300 << 10 } else { i % 200 };
        let pos = master
            .put(&(i as u32).to_le_bytes(), &vec![i as u8; len])
            .unwrap();
        want.push((pos, len));
        if i % 50 == 0 {
            // A pause longer than the spin: the applier parks and is woken again.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let last = want.last().unwrap().0;
    master
        .wait(last, hs::Durability::Applied, Duration::from_secs(20))
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), want);
    master.shutdown();
    let (reason, took) = master_lost(&slave, Duration::from_secs(9));
    assert!(took < Duration::from_secs(9), "{reason} after {took:?}");
}
