//! Strangers at the replication port: a well-formed Hello from a node that is not
//! the pair's, silent connections, floods. The master stays master and keeps
//! serving its real slave. All on 127.0.0.1, port 0, with deadlines.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hs::proto::frame::Frame;
use hs::{Apply, Config, Event, Node, RecordRef, Role};

const DEADLINE: Duration = Duration::from_secs(20);

struct Nop;
impl Apply for Nop {
    fn apply(&mut self, _: &RecordRef<'_>) {}
    fn reset(&mut self) {}
    fn restore(&mut self, _: &[u8], _: &[u8]) {}
}

fn base(dir: &std::path::Path) -> Config {
    let mut c = Config::new(dir);
    c.segment_bytes = 1 << 20;
    c.record_bytes_max = 4096;
    // Ticks long enough that a loaded test machine never drops the real slave
    // for silence: these tests count its reconnects (there must be none).
    c.heartbeat_interval_ms = 50;
    c.heartbeat_dead_ticks = 10;
    c.reconnect_backoff_min_ms = 5;
    c.reconnect_backoff_max_ms = 50;
    c
}

fn until(what: &str, f: impl FnMut() -> bool) {
    testkit::wait_until(what, DEADLINE, f);
}

/// A lone master and its slave (which cannot become master: no `listen`).
fn lone_pair(
    dm: &std::path::Path,
    ds: &std::path::Path,
    secret: Option<&[u8]>,
) -> (Node, Node, SocketAddr) {
    let mut cm = base(dm);
    cm.listen = Some("127.0.0.1:0".parse().unwrap());
    cm.secret = secret.map(hs::node::Secret::new);
    let m = Node::start(cm, Role::Master, Nop).unwrap();
    let addr = m.local_addr().unwrap();
    let mut cs = base(ds);
    cs.peer = Some(addr);
    cs.secret = secret.map(hs::node::Secret::new);
    let s = Node::start(cs, Role::Slave, Nop).unwrap();
    until("the slave to follow", || {
        s.role() == Role::Slave && m.stats().slave_connected
    });
    (m, s, addr)
}

/// Writes a frame, as a stranger would.
fn send(st: &mut TcpStream, f: &Frame) {
    let mut b = BytesMut::new();
    f.encode(&mut b);
    st.write_all(&b).unwrap();
}

fn strangers_hello() -> Frame {
    Frame::Hello {
        node: 0x5742_a4e1,
        history: 0x1234_5678_9abc_def0,
        epoch: 1_000_000,
        last_epoch: 999_999,
        tail: 1 << 30,
        role: 2,
        epochs: vec![(999_999, 0)],
    }
}

/// The master serves and the slave follows, without a reconnect, for `d`.
fn still_serving(m: &Node, s: &Node, reconnects: u64, d: Duration) {
    let t0 = Instant::now();
    let mut last = 0;
    while t0.elapsed() < d {
        assert_eq!(m.role(), Role::Master, "the master left its role");
        assert!(m.is_writable());
        last = m.put(b"k", b"v").unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    until("the slave to apply the master's writes", || {
        s.stats().applied > last
    });
    assert_eq!(
        s.stats().reconnects,
        reconnects,
        "the real slave was dropped"
    );
    while let Some(e) = m.next_event(Duration::ZERO) {
        assert!(
            !matches!(e, Event::SlaveLost { .. } | Event::RoleChanged { .. }),
            "{e:?}"
        );
    }
}

fn drain(n: &Node) {
    while n.next_event(Duration::ZERO).is_some() {}
}

#[test]
fn a_strangers_hello_with_a_high_epoch_does_not_move_a_lone_master() {
    let (dm, ds) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (m, s, addr) = lone_pair(dm.path(), ds.path(), None);
    drain(&m);
    let reconnects = s.stats().reconnects;
    let mut st = TcpStream::connect(addr).unwrap();
    st.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    send(&mut st, &strangers_hello());
    // It is refused (an error frame, then EOF) ...
    let mut buf = Vec::new();
    let _ = st.read_to_end(&mut buf);
    // ... and nothing changed for the pair.
    still_serving(&m, &s, reconnects, Duration::from_millis(300));
    let meta = hs::log::meta::Meta::load(&hs::log::storage::FileStorage, dm.path())
        .unwrap()
        .unwrap();
    assert_ne!(
        meta.peer, 0x5742_a4e1,
        "a stranger's id was recorded as the peer's"
    );
}

#[test]
fn a_silent_connection_does_not_replace_the_slave() {
    let (dm, ds) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (m, s, addr) = lone_pair(dm.path(), ds.path(), None);
    drain(&m);
    let reconnects = s.stats().reconnects;
    let _quiet = TcpStream::connect(addr).unwrap();
    still_serving(&m, &s, reconnects, Duration::from_millis(300));
}

#[test]
fn a_flood_of_connections_is_capped_and_the_slave_keeps_its_place() {
    let (dm, ds) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (m, s, addr) = lone_pair(dm.path(), ds.path(), None);
    drain(&m);
    let reconnects = s.stats().reconnects;
    let mut conns: Vec<TcpStream> = (0..64).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // Past the cap, the master closes a connection at once instead of holding a
    // task for it until the Hello timeout.
    let t0 = Instant::now();
    let mut closed = 0;
    for c in &mut conns {
        c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut b = [0u8; 64];
        if matches!(c.read(&mut b), Ok(0))
            || matches!(c.read(&mut b), Err(ref e) if e.kind() == std::io::ErrorKind::ConnectionReset)
        {
            closed += 1;
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(
        closed >= 48,
        "only {closed} of 64 idle connections were refused"
    );
    still_serving(&m, &s, reconnects, Duration::from_millis(200));
}

/// Reads frames until EOF or the deadline; returns them.
fn frames_until_eof(st: &mut TcpStream) -> Vec<Frame> {
    st.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let _ = st.read_to_end(&mut buf);
    let mut src = BytesMut::from(&buf[..]);
    let mut out = Vec::new();
    while let Ok(Some(f)) = Frame::decode(&mut src, 1 << 20) {
        out.push(f);
    }
    out
}

#[test]
fn with_a_secret_only_a_proven_peer_is_served() {
    let (dm, ds) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (m, s, addr) = lone_pair(dm.path(), ds.path(), Some(b"pair secret, 16+ bytes"));
    drain(&m);
    let reconnects = s.stats().reconnects;
    let rejected = m.stats().frames_rejected;

    // A stranger who does not answer the challenge: refused, nothing changes.
    let mut st = TcpStream::connect(addr).unwrap();
    send(&mut st, &strangers_hello());
    let got = frames_until_eof(&mut st);
    assert!(
        matches!(got.first(), Some(Frame::Challenge { .. })),
        "{got:?}"
    );
    assert!(
        got.iter().any(|f| matches!(f, Frame::Error { code, .. } if *code == hs::proto::frame::code::UNAUTHENTICATED)),
        "{got:?}"
    );
    // One with a forged proof, at a low epoch (it would be welcomed as the slave).
    let mut st = TcpStream::connect(addr).unwrap();
    send(
        &mut st,
        &Frame::Auth {
            nonce: [3; 16],
            mac: [4; 32],
        },
    );
    send(
        &mut st,
        &Frame::Hello {
            node: 0x5742_a4e1,
            history: 0,
            epoch: 0,
            last_epoch: 0,
            tail: 0,
            role: 2,
            epochs: vec![],
        },
    );
    let got = frames_until_eof(&mut st);
    assert!(
        !got.iter().any(|f| matches!(f, Frame::Welcome { .. })),
        "a forged proof was welcomed: {got:?}"
    );
    still_serving(&m, &s, reconnects, Duration::from_millis(300));
    assert!(m.stats().frames_rejected >= rejected + 2);

    // A node with another secret cannot follow, and does not displace the slave.
    let dx = tempfile::tempdir().unwrap();
    let mut cx = base(dx.path());
    cx.peer = Some(addr);
    cx.secret = Some(hs::Secret::new(b"another secret entirely"));
    let x = Node::start(cx, Role::Slave, Nop).unwrap();
    until("the wrong secret to be refused", || {
        x.stats().reconnects >= 2
    });
    assert_ne!(x.role(), Role::Slave);
    still_serving(&m, &s, reconnects, Duration::from_millis(100));
    let meta = hs::log::meta::Meta::load(&hs::log::storage::FileStorage, dm.path())
        .unwrap()
        .unwrap();
    assert_ne!(meta.peer, 0x5742_a4e1);
    drop(x);
}

#[test]
fn a_pair_with_a_secret_settles_fails_over_and_ignores_a_strangers_epoch() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pa = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let pb = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (pa, pb) = {
        let x = (pa.local_addr().unwrap(), pb.local_addr().unwrap());
        drop((pa, pb));
        x
    };
    let mk = |d: &std::path::Path, me, peer, id| {
        let mut c = base(d);
        (c.listen, c.peer, c.node_id) = (Some(me), Some(peer), id);
        c.secret = Some(hs::Secret::new(b"the pair's secret"));
        c
    };
    let a = Node::start(mk(da.path(), pa, pb, 1), Role::Master, Nop).unwrap();
    let b = Node::start(mk(db.path(), pb, pa, 2), Role::Slave, Nop).unwrap();
    until("the pair to settle", || {
        a.role() == Role::Master && b.role() == Role::Slave && a.stats().slave_connected
    });
    drain(&a);
    let reconnects = b.stats().reconnects;
    // A stranger's Hello at a huge epoch, to both ports: no proof, no effect.
    for port in [pa, pb] {
        let mut st = TcpStream::connect(port).unwrap();
        send(&mut st, &strangers_hello());
        let _ = frames_until_eof(&mut st);
    }
    still_serving(&a, &b, reconnects, Duration::from_millis(300));
    assert!(b.stats().epoch < 1_000_000);
    // The real failover still works with the secret.
    let written = a.stats().written;
    drop(a);
    until("B to take over", || {
        b.role() == Role::Master && b.is_writable()
    });
    assert!(b.stats().written >= written);
}

#[test]
fn a_witness_with_a_secret_answers_only_proven_requests() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let secret = hs::Secret::new(b"witness secret");
    let l = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let w = l.local_addr().unwrap();
    let s2 = secret.clone();
    rt.spawn(async move {
        hs::node::witness::serve_with(l, Duration::from_millis(100), Some(s2)).await
    });
    let req = hs::proto::witness::Request::Renew {
        pair: 9,
        node: 1,
        epoch: 1,
        addr: None,
        acked: None,
    };
    let t = Duration::from_secs(2);
    let ok = rt.block_on(hs::node::witness::ask_with(w, req, t, Some(&secret)));
    assert!(ok.is_some_and(|r| r.granted), "{ok:?}");
    let none = rt.block_on(hs::node::witness::ask_with(w, req, t, None));
    assert_eq!(none, None, "an unproven request was answered");
    let wrong = hs::Secret::new(b"not the witness secret");
    let bad = rt.block_on(hs::node::witness::ask_with(w, req, t, Some(&wrong)));
    assert_eq!(bad, None, "a request with the wrong secret was answered");
}

#[test]
fn idle_sockets_holding_every_slot_cannot_lock_out_a_real_slave() {
    let (dm, ds) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (m, s, addr) = lone_pair(dm.path(), ds.path(), None);
    drop(s);
    until("the master to notice", || !m.stats().slave_connected);
    // More idle sockets than unproven slots, all kept open.
    let _idle: Vec<TcpStream> = (0..16).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let ds2 = tempfile::tempdir().unwrap();
    let mut c = base(ds2.path());
    c.peer = Some(addr);
    let t0 = Instant::now();
    let s2 = Node::start(c, Role::Slave, Nop).unwrap();
    until("the new slave to follow", || {
        s2.role() == Role::Slave && m.stats().slave_connected
    });
    // Well before the 5 s an idle socket may hold its slot: it evicted the oldest.
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
}
