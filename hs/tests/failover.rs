//! Failover with two real nodes in one process on 127.0.0.1 (port 0): start-up
//! settlement, promotion when the master's process is gone, rejoin with the
//! divergent tail rolled back, planned switchover, fencing by the witness.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hs::{Apply, Config, Durability, Event, LogConfig, Node, NodeError, RecordRef, Role};

const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Clone, Default)]
struct Kv(Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>);
impl Apply for Kv {
    fn apply(&mut self, r: &RecordRef<'_>) {
        let mut m = self.0.lock().unwrap();
        match r.op {
            hs::Op::Put => {
                m.insert(r.key.to_vec(), r.value.to_vec());
            }
            hs::Op::Delete => {
                m.remove(r.key);
            }
        }
    }
    fn reset(&mut self) {
        self.0.lock().unwrap().clear();
    }
    fn restore(&mut self, k: &[u8], v: &[u8]) {
        self.0.lock().unwrap().insert(k.to_vec(), v.to_vec());
    }
}

/// Two free ports on 127.0.0.1 (bound then released; the nodes bind them again).
fn two_ports() -> (SocketAddr, SocketAddr) {
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    (a.local_addr().unwrap(), b.local_addr().unwrap())
}

fn cfg(dir: &Path, listen: SocketAddr, peer: SocketAddr, id: u64) -> Config {
    let mut c = Config::new(dir);
    c.listen = Some(listen);
    c.peer = Some(peer);
    c.node_id = id;
    c.segment_bytes = 1 << 20;
    c.record_bytes_max = 4096;
    c.heartbeat_interval_ms = 20;
    c.heartbeat_dead_ticks = 5;
    c.reconnect_backoff_min_ms = 5;
    c.reconnect_backoff_max_ms = 50;
    c
}

/// A witness on 127.0.0.1 (port 0) on a runtime of its own, for pairs with
/// `cfg`'s heartbeat (20 ms, 5 ticks): the runtime (drop it to stop the
/// witness), its address and its hold.
fn start_witness() -> (tokio::runtime::Runtime, SocketAddr, Duration) {
    let wl = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let waddr = wl.local_addr().unwrap();
    wl.set_nonblocking(true).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let hold = hs::node::witness::hold_for(20, 5);
    rt.spawn(async move {
        hs::node::witness::serve(tokio::net::TcpListener::from_std(wl).unwrap(), hold).await
    });
    (rt, waddr, hold)
}

fn until(what: &str, f: impl FnMut() -> bool) {
    testkit::wait_until(what, DEADLINE, f);
}

fn wait_event(n: &Node, what: &str, mut f: impl FnMut(&Event) -> bool) -> Event {
    let t0 = Instant::now();
    while t0.elapsed() < DEADLINE {
        if let Some(e) = n.next_event(Duration::from_millis(10)) {
            if f(&e) {
                return e;
            }
        }
    }
    panic!("no {what} event");
}

/// Publishes `count` records with keys `prefix-i`, each acknowledged at
/// `Received`; like any master's application, it applies them to its own state too.
fn write_acked(n: &Node, kv: &Kv, prefix: &str, count: usize) {
    for i in 0..count {
        let k = format!("{prefix}-{i}");
        let pos = n.put(k.as_bytes(), b"v").unwrap();
        kv.0.lock().unwrap().insert(k.into_bytes(), b"v".to_vec());
        n.wait(pos, Durability::Received, DEADLINE).unwrap();
    }
}

/// The same state, compared without printing it.
fn assert_same(a: &Kv, b: &Kv) {
    let (a, b) = (a.0.lock().unwrap(), b.0.lock().unwrap());
    assert!(
        *a == *b,
        "states differ: {} keys vs {} keys",
        a.len(),
        b.len()
    );
}

fn write_async(n: &Node, kv: &Kv, prefix: &str, count: usize) {
    for i in 0..count {
        let k = format!("{prefix}-{i}");
        n.put(k.as_bytes(), b"v").unwrap();
        kv.0.lock().unwrap().insert(k.into_bytes(), b"v".to_vec());
    }
}

#[test]
fn pair_settles_fails_over_rejoins_and_switches_over() {
    let da = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    let (pa, pb) = two_ports();
    let (ka, kb) = (Kv::default(), Kv::default());
    // Both start at once; A prefers to be master. Exactly one serves: A.
    let a = Node::start(cfg(da.path(), pa, pb, 1), Role::Master, ka.clone()).unwrap();
    let b = Node::start(cfg(db.path(), pb, pa, 2), Role::Slave, kb.clone()).unwrap();
    until("A to serve and B to follow", || {
        a.role() == Role::Master && b.role() == Role::Slave
    });
    assert!(a.is_writable());
    assert!(matches!(b.put(b"x", b"y"), Err(NodeError::NotMaster { master: Some(m) }) if m == pa));
    write_acked(&a, &ka, "first", 200);
    let epoch_a = a.stats().epoch;

    // A's process goes away (its listener closes with it): B takes over once A
    // has been quiet for the refusal hold (no witness: a refusal alone is not proof).
    drop(a);
    let e = wait_event(&b, "RoleChanged", |e| {
        matches!(
            e,
            Event::RoleChanged {
                role: Role::Master,
                ..
            }
        )
    });
    assert!(
        matches!(e, Event::RoleChanged { ref reason, .. } if reason.contains("MasterRefused")),
        "{e:?}"
    );
    assert!(b.stats().epoch > epoch_a);
    // Nothing acknowledged at Received is lost.
    for i in 0..200 {
        assert!(
            kb.0.lock()
                .unwrap()
                .contains_key(format!("first-{i}").as_bytes()),
            "lost first-{i}"
        );
    }
    // B serves alone for now: these are async writes, acknowledged by nobody.
    write_async(&b, &kb, "second", 100);

    // A comes back: it must follow B, not serve.
    let ka2 = Kv::default();
    let a = Node::start(cfg(da.path(), pa, pb, 1), Role::Master, ka2.clone()).unwrap();
    until("A to rejoin as slave", || {
        a.role() == Role::Slave && a.stats().applied == b.stats().written
    });
    assert_same(&ka2, &kb);
    assert!(a.put(b"no", b"").is_err());

    // Planned switchover back to A: stop, drain, hand over; nothing lost.
    write_acked(&b, &kb, "third", 50);
    b.switchover(DEADLINE).unwrap();
    until("A to serve after the switchover", || {
        a.role() == Role::Master && a.is_writable()
    });
    until("B to follow A", || b.role() == Role::Slave);
    assert_same(&ka2, &kb);
    assert_eq!(ka2.0.lock().unwrap().len(), 350);
    write_acked(&a, &ka2, "fourth", 10);
    until("B to apply A's writes", || {
        b.stats().applied == a.stats().written
    });
    assert_eq!(kb.0.lock().unwrap().len(), 360);
}

#[test]
fn old_master_rejoining_rolls_back_its_unreplicated_tail() {
    let da = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    let (pa, pb) = two_ports();
    let ka0 = Kv::default();
    let a = Node::start(cfg(da.path(), pa, pb, 1), Role::Master, ka0.clone()).unwrap();
    let b = Node::start(cfg(db.path(), pb, pa, 2), Role::Slave, Kv::default()).unwrap();
    until("pair", || {
        a.role() == Role::Master && b.role() == Role::Slave
    });
    write_acked(&a, &ka0, "k", 50);
    // B goes away; A keeps writing: those records exist only on A.
    drop(b);
    until("A to notice", || !a.stats().slave_connected);
    for i in 0..30 {
        a.put(format!("lonely-{i}").as_bytes(), b"v").unwrap();
    }
    let a_tail = a.stats().written;
    drop(a);
    // B restarts alone. It has not followed A in this life, so A's refused port is
    // no proof of anything: only an accepted split risk (and a preference) lets it serve.
    let mut cb = cfg(db.path(), pb, pa, 2);
    cb.accept_split_risk = true;
    let kb = Kv::default();
    let b = Node::start(cb, Role::Master, kb.clone()).unwrap();
    until("B to serve alone", || b.role() == Role::Master);
    write_async(&b, &kb, "new", 5);
    // A returns: its 30 lonely records diverge from B's history and are rolled back.
    let ka = Kv::default();
    let a = Node::start(cfg(da.path(), pa, pb, 1), Role::Slave, ka.clone()).unwrap();
    let e = wait_event(&a, "RolledBack", |e| matches!(e, Event::RolledBack { .. }));
    let Event::RolledBack { from, to, records } = e else {
        unreachable!()
    };
    assert_eq!(to, a_tail);
    assert_eq!(records, 30, "the lonely records are the ones rolled back");
    assert!(from < to);
    until("A to follow B", || {
        a.role() == Role::Slave && a.stats().applied == b.stats().written
    });
    assert!(
        ka.0.lock()
            .unwrap()
            .keys()
            .all(|k| !k.starts_with(b"lonely")),
        "rolled-back records still applied"
    );
    assert_same(&ka, &kb);
    assert_eq!(ka.0.lock().unwrap().len(), 55);
}

#[test]
fn a_witness_fences_a_stale_master() {
    // The witness runs in this process on its own runtime.
    let (rt, waddr, _) = start_witness();

    let da = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    let (pa, pb) = two_ports();
    let mut ca = cfg(da.path(), pa, pb, 1);
    ca.witness = Some(waddr);
    let mut cb = cfg(db.path(), pb, pa, 2);
    cb.witness = Some(waddr);
    let ka = Kv::default();
    let a = Node::start(ca, Role::Master, ka.clone()).unwrap();
    let b = Node::start(cb, Role::Slave, Kv::default()).unwrap();
    until("pair with a witness", || {
        a.role() == Role::Master && a.is_writable() && b.role() == Role::Slave
    });
    write_acked(&a, &ka, "w", 20);
    // B asks the witness for epoch+1 as if A had died: refused, on silence or
    // on a refusal the witness does not get itself (A's port answers it).
    let reply = rt.block_on(hs::node::witness::ask(
        waddr,
        hs::proto::witness::Request::Promote {
            pair: 1,
            node: 2,
            epoch: a.stats().epoch + 1,
            dead: false,
            tail: None,
        },
        Duration::from_secs(1),
    ));
    assert_eq!(
        reply.map(|r| r.granted),
        Some(false),
        "the witness granted a promotion while the master renews"
    );
    let reply = rt.block_on(hs::node::witness::ask(
        waddr,
        hs::proto::witness::Request::Promote {
            pair: 1,
            node: 2,
            epoch: a.stats().epoch + 1,
            dead: true,
            tail: None,
        },
        Duration::from_secs(1),
    ));
    assert_eq!(
        reply.map(|r| r.granted),
        Some(false),
        "the witness granted on a refusal its own try at A's port does not confirm"
    );
    // Another node serving at a newer epoch (say, granted by this witness's
    // previous life) renews: the witness records it, and A learns from the
    // witness that it is stale and steps down.
    let reply = rt.block_on(hs::node::witness::ask(
        waddr,
        hs::proto::witness::Request::Renew {
            pair: 1,
            node: 2,
            epoch: a.stats().epoch + 1,
            addr: None,
            acked: None,
        },
        Duration::from_secs(1),
    ));
    assert_eq!(reply.map(|r| r.granted), Some(true));
    let e = wait_event(
        &a,
        "step-down",
        |e| matches!(e, Event::RoleChanged { role: Role::Candidate, reason, .. } if reason.contains("stale")),
    );
    assert!(
        matches!(e, Event::RoleChanged { ref reason, .. } if reason.contains("stale")),
        "{e:?}"
    );
    assert!(
        a.put(b"after", b"").is_err(),
        "a fenced master accepted a write"
    );
}

/// A node that was master, then followed a master whose history it lacked (its
/// log cut back), then became master again must not count its old standby's
/// acknowledgements: no standby holds its new records yet.
#[test]
fn acknowledgements_from_an_earlier_role_do_not_carry_over() {
    let da = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    let (pa, pb) = two_ports();
    let ka = Kv::default();
    let a = Node::start(cfg(da.path(), pa, pb, 1), Role::Master, ka.clone()).unwrap();
    let b = Node::start(cfg(db.path(), pb, pa, 2), Role::Slave, Kv::default()).unwrap();
    until("pair", || {
        a.role() == Role::Master && b.role() == Role::Slave
    });
    write_acked(&a, &ka, "acked", 100);
    let stale = a.stats().acked_received;
    assert!(stale >= 100 * 32, "{stale}");
    drop(b);
    until("A to notice", || !a.stats().slave_connected);

    // B's replacement holds another history, at a newer epoch, with 3 records:
    // far fewer bytes than A's old standby acknowledged.
    let db2 = tempfile::tempdir().unwrap();
    {
        let c = cfg(db2.path(), pb, pa, 2);
        let (log, _) = hs::log::Log::open(LogConfig {
            segment_bytes: c.segment_bytes,
            record_bytes_max: c.record_bytes_max,
            retention_bytes_max: c.retention_bytes_max,
            ..LogConfig::new(db2.path().to_path_buf())
        })
        .unwrap();
        log.start_history(0xb2).unwrap();
        log.set_ids(2, 1).unwrap();
        log.set_epoch(a.stats().epoch + 7).unwrap();
        for i in 0..3u8 {
            log.append_wait(hs::Op::Put, &[i], b"v", DEADLINE).unwrap();
        }
        log.flush().unwrap();
    }
    let b2 = Node::start(cfg(db2.path(), pb, pa, 2), Role::Master, Kv::default()).unwrap();
    // A is fenced by B2's newer epoch, resyncs from it (its log is replaced)...
    wait_event(&a, "Resynced", |e| matches!(e, Event::Resynced { .. }));
    until("A to follow B2", || {
        a.role() == Role::Slave && b2.role() == Role::Master
    });
    // ...and takes over when B2's process is gone.
    drop(b2);
    until("A to serve again", || {
        a.role() == Role::Master && a.is_writable()
    });
    let pos = a.put(b"new", b"v").unwrap();
    assert!(pos < stale, "the test needs a position below the old acks");
    let st = a.stats();
    assert!(!st.slave_connected);
    assert!(
        st.acked_received <= pos && st.acked_flushed <= pos && st.acked_applied <= pos,
        "stale acknowledgements carried over: {st:?}"
    );
    assert_eq!(
        st.lag_bytes, st.written,
        "nothing is applied by any standby"
    );
    assert!(
        matches!(
            a.wait(pos, Durability::Received, Duration::from_millis(200)),
            Err(NodeError::Timeout(_))
        ),
        "wait(Received) answered for a record no standby holds"
    );
}

/// An `Apply` that panics on the key "boom".
#[derive(Clone, Default)]
struct Fragile(Kv);
impl Apply for Fragile {
    fn apply(&mut self, r: &RecordRef<'_>) {
        assert!(r.key != b"boom", "the application cannot handle boom");
        self.0.apply(r);
    }
    fn reset(&mut self) {
        self.0.reset();
    }
    fn restore(&mut self, k: &[u8], v: &[u8]) {
        self.0.restore(k, v);
    }
}

/// A panic in the application's `Apply` on the slave is reported (an event, an
/// error on every call) and the node stops: no more applying, no writes, no
/// promotion — its state no longer matches its log.
#[test]
fn a_panicking_apply_stops_the_node_with_a_fatal_event_and_a_clear_error() {
    let da = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    let (pa, pb) = two_ports();
    let ka = Kv::default();
    let a = Node::start(cfg(da.path(), pa, pb, 1), Role::Master, ka.clone()).unwrap();
    let fb = Fragile::default();
    let b = Node::start(cfg(db.path(), pb, pa, 2), Role::Slave, fb.clone()).unwrap();
    until("pair", || {
        a.role() == Role::Master && b.role() == Role::Slave
    });
    write_acked(&a, &ka, "fine", 10);
    let boom = a.put(b"boom", b"!").unwrap();
    let e = wait_event(&b, "Fatal", |e| matches!(e, Event::Fatal { .. }));
    assert!(
        matches!(&e, Event::Fatal { reason } if reason.contains("cannot handle boom")),
        "{e:?}"
    );
    assert_ne!(b.role(), Role::Slave);
    assert!(!b.is_writable());
    assert!(
        matches!(b.put(b"x", b"y"), Err(NodeError::ApplyPanicked { ref reason }) if reason.contains("boom")),
        "a poisoned node must say why it refuses"
    );
    // It applies nothing more, even when the master goes on.
    let after = a.put(b"after", b"v").unwrap();
    assert!(a
        .wait(after, Durability::Applied, Duration::from_millis(300))
        .is_err());
    assert!(!fb.0 .0.lock().unwrap().contains_key(b"after".as_slice()));
    assert!(b.stats().applied <= boom);
    // And it does not take over when the master's process is gone.
    drop(a);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(500) {
        assert_ne!(b.role(), Role::Master, "a poisoned node promoted itself");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(b);
}

/// A TCP relay on 127.0.0.1 in front of `target`, which the test can cut: every
/// relayed connection is reset and the port then refuses connections (as a
/// REJECT rule or a middlebox would) while the process behind it lives on.
struct Relay {
    addr: SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Relay {
    fn start(target: SocketAddr) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        l.set_nonblocking(true).unwrap();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let (cut2, conns2) = (cut.clone(), conns.clone());
        std::thread::spawn(move || {
            while !cut2.load(std::sync::atomic::Ordering::Acquire) {
                let Ok((a, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                };
                a.set_nonblocking(false).unwrap();
                let Ok(b) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (a.try_clone().unwrap(), b.try_clone().unwrap()),
                    (b.try_clone().unwrap(), a.try_clone().unwrap()),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
                conns2.lock().unwrap().extend([a, b]);
            }
            // Dropping the listener: the port now refuses connections.
        });
        Relay { addr, cut, conns }
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Release);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        // The accept loop notices within a millisecond and drops its listener.
        let t0 = Instant::now();
        while std::net::TcpStream::connect(self.addr).is_ok() {
            assert!(t0.elapsed() < DEADLINE, "the relay's port still accepts");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The slave reaches the master through a relay that then resets the link and
/// refuses connections while the master lives, and, with the split risk
/// accepted, takes the refusal for a dead process and promotes. The old master,
/// which can still reach it directly, must learn of the newer epoch and step
/// down (and follow it), not stay a second master.
#[test]
fn a_master_that_can_reach_a_newer_master_steps_down_and_follows_it() {
    let da = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    let (pa, pb) = two_ports();
    let relay = Relay::start(pa);
    let ka = Kv::default();
    let a = Node::start(cfg(da.path(), pa, pb, 1), Role::Master, ka.clone()).unwrap();
    let mut cb = cfg(db.path(), pb, relay.addr, 2);
    cb.accept_split_risk = true;
    let b = Node::start(cb, Role::Slave, Kv::default()).unwrap();
    until("the pair, through the relay", || {
        a.role() == Role::Master && b.role() == Role::Slave
    });
    write_acked(&a, &ka, "before", 20);
    relay.cut();
    until("B to promote on the refused relay", || {
        b.role() == Role::Master
    });
    let t0 = Instant::now();
    until("A to step down and follow B", || {
        a.role() == Role::Slave && !a.is_writable()
    });
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "two masters for {:?}",
        t0.elapsed()
    );
    assert!(a.put(b"x", b"y").is_err());
    until("A to apply B's log", || {
        a.stats().applied == b.stats().written
    });
}

/// Item 5 without a witness: the slave reaches its master through a relay that
/// resets the link and then refuses connections while the master lives (what a
/// REJECT rule or a middlebox does). A refusal is not proof of a dead process:
/// the master, which reaches the slave directly, keeps calling it, so the slave
/// must not promote; once the master's process is really gone, it must.
#[test]
fn a_refusing_relay_in_front_of_a_live_master_does_not_make_a_second_master() {
    let da = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    let (pa, pb) = two_ports();
    let relay = Relay::start(pa);
    let ka = Kv::default();
    let a = Node::start(cfg(da.path(), pa, pb, 1), Role::Master, ka.clone()).unwrap();
    let b = Node::start(
        cfg(db.path(), pb, relay.addr, 2),
        Role::Slave,
        Kv::default(),
    )
    .unwrap();
    until("the pair, through the relay", || {
        a.role() == Role::Master && b.role() == Role::Slave
    });
    write_acked(&a, &ka, "before", 20);
    relay.cut();
    // Watch for five times the longest a refusal is held (20 ms x (5 + 4) ticks):
    // a second master in that time is the bug.
    let watch = Duration::from_millis(5 * 20 * (5 + 4));
    let t0 = Instant::now();
    while t0.elapsed() < watch {
        assert!(
            b.role() != Role::Master,
            "B promoted {:?} after the relay refused, while A lives and serves",
            t0.elapsed()
        );
        assert!(a.role() == Role::Master, "A stopped serving");
        std::thread::sleep(Duration::from_millis(2));
    }
    a.put(b"still", b"master").unwrap();
    // Now A's process really goes: B promotes within the refusal hold (plus slack).
    drop(a);
    let t0 = Instant::now();
    until("B to promote once A is gone", || b.role() == Role::Master);
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "B took {:?} to promote after A died",
        t0.elapsed()
    );
    b.put(b"after", b"b").unwrap();
}

/// Item 5 with a witness: the witness grants a promotion on "refused" at once
/// only when its own connection to the master is refused too. Through a relay
/// that refuses while the master lives, the witness still reaches the master
/// (which also keeps renewing): no grant, no second master; once the master's
/// process is gone, the witness is refused as well and the slave promotes.
#[test]
fn the_witness_confirms_a_refusal_before_granting_on_it() {
    let (_rt, waddr, hold) = start_witness();
    let da = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    let (pa, pb) = two_ports();
    let relay = Relay::start(pa);
    let mut ca = cfg(da.path(), pa, pb, 1);
    ca.witness = Some(waddr);
    let mut cb = cfg(db.path(), pb, relay.addr, 2);
    cb.witness = Some(waddr);
    let ka = Kv::default();
    let a = Node::start(ca, Role::Master, ka.clone()).unwrap();
    let b = Node::start(cb, Role::Slave, Kv::default()).unwrap();
    until("the pair with a witness, through the relay", || {
        a.role() == Role::Master && a.is_writable() && b.role() == Role::Slave
    });
    write_acked(&a, &ka, "before", 20);
    relay.cut();
    // Five times the witness's hold: a grant in that time is the bug.
    let watch = 5 * hold;
    let t0 = Instant::now();
    while t0.elapsed() < watch {
        if b.role() == Role::Master {
            let mut why = Vec::new();
            while let Some(e) = b.next_event(Duration::ZERO) {
                why.push(e);
            }
            panic!(
                "B promoted {:?} after the relay refused, while A lives and renews: {why:?}",
                t0.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        a.is_writable(),
        "A lost its lease while the witness hears it"
    );
    drop(a);
    let t0 = Instant::now();
    until("B to promote once A is gone", || {
        b.role() == Role::Master && b.is_writable()
    });
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "B took {:?} to promote after A died",
        t0.elapsed()
    );
}

/// Item 5 with a real REJECT rule, as an operator's firewall or a middlebox
/// would add, inside a network namespace of the test's own (made with
/// unshare(2) on a thread of its own: the nodes' threads and sockets, the
/// witness and the `nft` it runs all live in it, and it goes away with them;
/// no traffic leaves its loopback). Needs root and nft (`scripts/setup.sh`
/// installs nftables); as another user it says so and checks nothing.
mod reject {
    use super::*;
    use std::process::{Command, Stdio};

    /// Runs `f` on a new thread inside a new network namespace with its
    /// loopback up. `None` when this user may not make one.
    fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: creating a network namespace needs root (CI runs as root)");
            return None;
        }
        let t = std::thread::spawn(move || {
            // SAFETY: unshare only changes this thread's namespaces; CLONE_NEWNET
            // is allowed in a multithreaded process.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET): {}",
                std::io::Error::last_os_error()
            );
            run("ip", &["link", "set", "lo", "up"], None);
            f()
        });
        Some(t.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
    }

    /// Runs a command (in the calling thread's namespace), failing the test on error.
    fn run(cmd: &str, args: &[&str], stdin: Option<&str>) {
        // Root's PATH has /usr/sbin; a stripped environment may not.
        let sbin = format!("/usr/sbin/{cmd}");
        let path = if Path::new(&sbin).exists() {
            sbin.as_str()
        } else {
            cmd
        };
        let mut c = Command::new(path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{cmd}: {e} (run scripts/setup.sh: it installs nftables and iproute2)")
            });
        if let Some(text) = stdin {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        }
        drop(c.stdin.take());
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Rejects every TCP connection to `port` with a reset, and resets the
    /// packets of the connections already open to it: the kernel's "refused",
    /// while the process behind the port lives on.
    fn reject(port: u16) {
        run(
            "nft",
            &["-f", "-"],
            Some(&format!(
                "table inet hs_reject {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  tcp dport {port} reject with tcp reset\n }}\n}}\n"
            )),
        );
    }

    fn lift() {
        run("nft", &["delete", "table", "inet", "hs_reject"], None);
    }

    /// Watches `b` for `watch`: a promotion in that time is the bug.
    fn never_promotes(a: &Node, b: &Node, watch: Duration, why: &str) {
        let t0 = Instant::now();
        while t0.elapsed() < watch {
            if b.role() == Role::Master {
                let mut events = Vec::new();
                while let Some(e) = b.next_event(Duration::ZERO) {
                    events.push(e);
                }
                panic!(
                    "B promoted {:?} after the REJECT rule, while A lives ({why}): {events:?}",
                    t0.elapsed()
                );
            }
            assert_eq!(a.role(), Role::Master, "A stopped serving");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Without a witness: B's connections to A are refused, but A's calls
    /// reach B, so B holds; once the rule lifts, the pair replicates again;
    /// once A's process is really gone (the rule still up), B promotes.
    #[test]
    fn a_reject_rule_in_front_of_a_live_master_does_not_make_a_second_master() {
        in_new_netns(|| {
            let da = tempfile::tempdir().unwrap();
            let db = tempfile::tempdir().unwrap();
            let (pa, pb) = two_ports();
            let ka = Kv::default();
            let kb = Kv::default();
            let a = Node::start(cfg(da.path(), pa, pb, 1), Role::Master, ka.clone()).unwrap();
            let b = Node::start(cfg(db.path(), pb, pa, 2), Role::Slave, kb.clone()).unwrap();
            until("the pair", || {
                a.role() == Role::Master && b.role() == Role::Slave
            });
            write_acked(&a, &ka, "before", 20);
            reject(pa.port());
            // Five times the longest a refusal is held (20 ms x (5 + 4) ticks).
            never_promotes(
                &a,
                &b,
                Duration::from_millis(5 * 20 * (5 + 4)),
                "no witness",
            );
            a.put(b"still", b"master").unwrap();
            ka.0.lock()
                .unwrap()
                .insert(b"still".to_vec(), b"master".to_vec());
            lift();
            write_acked(&a, &ka, "after-lift", 20);
            until("B to apply A's log", || {
                b.stats().applied == a.stats().written
            });
            assert_same(&ka, &kb);
            reject(pa.port());
            drop(a);
            let t0 = Instant::now();
            until("B to promote once A is gone", || b.role() == Role::Master);
            assert!(
                t0.elapsed() < Duration::from_secs(2),
                "B took {:?} to promote after A died",
                t0.elapsed()
            );
            b.put(b"after", b"b").unwrap();
        });
    }

    /// With a witness, which the REJECT rule refuses too (it sits on A's host):
    /// "refused from two places" is not enough while A renews its lease, so no
    /// grant; once A is gone its renewals stop and B promotes within a few ticks.
    #[test]
    fn a_reject_rule_that_refuses_the_witness_too_does_not_make_a_second_master() {
        in_new_netns(|| {
            let (rt, waddr, hold) = start_witness();
            let da = tempfile::tempdir().unwrap();
            let db = tempfile::tempdir().unwrap();
            let (pa, pb) = two_ports();
            let mut ca = cfg(da.path(), pa, pb, 1);
            ca.witness = Some(waddr);
            let mut cb = cfg(db.path(), pb, pa, 2);
            cb.witness = Some(waddr);
            let ka = Kv::default();
            let a = Node::start(ca, Role::Master, ka.clone()).unwrap();
            let b = Node::start(cb, Role::Slave, Kv::default()).unwrap();
            until("the pair with a witness", || {
                a.role() == Role::Master && a.is_writable() && b.role() == Role::Slave
            });
            write_acked(&a, &ka, "before", 20);
            reject(pa.port());
            never_promotes(&a, &b, 5 * hold, "it renews with the witness");
            assert!(
                a.is_writable(),
                "A lost its lease while the witness hears it"
            );
            drop(a);
            let t0 = Instant::now();
            until("B to promote once A is gone", || {
                b.role() == Role::Master && b.is_writable()
            });
            assert!(
                t0.elapsed() < Duration::from_secs(2),
                "B took {:?} to promote after A died",
                t0.elapsed()
            );
            drop(b);
            drop(rt);
        });
    }
}

/// The witness's second sign of a dead master, on its own: a refusal it
/// confirms itself is granted at once only after the master's held renewal
/// link has closed; while the link is held (the master lives, its port
/// refused by something on its host), the request is refused for as long as
/// the hold lasts.
#[test]
fn the_witness_grants_on_a_confirmed_refusal_once_the_held_renewal_link_closes() {
    use hs::proto::witness::Request;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let wl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let waddr = wl.local_addr().unwrap();
        // A hold far longer than the test: only the closed link can explain a grant.
        tokio::spawn(hs::node::witness::serve(wl, Duration::from_secs(60)));
        // The master's "replication address": a port that refuses (nothing listens).
        let refusing = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let t = Duration::from_secs(2);
        let renew = Request::Renew {
            pair: 7,
            node: 20,
            epoch: 2,
            addr: Some(refusing),
            acked: None,
        };
        let (r, link) = hs::node::witness::renew_held(waddr, renew, t, None)
            .await
            .unwrap();
        assert!(r.granted, "the first renewal records the master");
        let promote = Request::Promote {
            pair: 7,
            node: 10,
            epoch: 3,
            dead: true,
            tail: None,
        };
        for _ in 0..5 {
            let r = hs::node::witness::ask(waddr, promote, t).await.unwrap();
            assert!(
                !r.granted,
                "granted while the master holds its renewal link"
            );
            assert_eq!((r.epoch, r.holder), (2, 20));
        }
        drop(link);
        let t0 = Instant::now();
        loop {
            let r = hs::node::witness::ask(waddr, promote, t).await.unwrap();
            if r.granted {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "no grant after the link closed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The old master's next renewal is fenced.
        let r = hs::node::witness::ask(waddr, renew, t).await.unwrap();
        assert_eq!((r.granted, r.epoch, r.holder), (false, 3, 10));
    });
}
