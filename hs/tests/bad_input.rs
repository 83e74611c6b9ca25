//! Bad input from a peer gets a clear error, the connection is dropped, the log
//! is untouched, and the slave reconnects and resumes. The peer here is a fake
//! written against the wire format, on 127.0.0.1 with port 0.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hs::proto::frame::{Action, Frame};
use hs::proto::record::{encode_into, encoded_len};
use hs::{Apply, Config, Event, Node, Op, RecordRef, Role};

const HISTORY: u128 = 0x5eed;
const SEG: u64 = 1 << 20;
const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Clone, Default)]
struct Count(Arc<Mutex<Vec<u64>>>);
impl Apply for Count {
    fn apply(&mut self, r: &RecordRef<'_>) {
        self.0.lock().unwrap().push(r.pos);
    }
    fn reset(&mut self) {
        self.0.lock().unwrap().clear();
    }
    fn restore(&mut self, _: &[u8], _: &[u8]) {}
}

fn records(pos: u64, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut p = pos;
    for i in 0..n {
        let v = vec![i as u8; 20];
        let mut b = vec![0u8; encoded_len(3, v.len())];
        encode_into(&mut b, p, 1, Op::Put, b"key", &v);
        p += b.len() as u64;
        out.extend_from_slice(&b);
    }
    out
}

fn send(s: &mut TcpStream, f: &Frame) {
    let mut b = BytesMut::new();
    f.encode(&mut b);
    s.write_all(&b).unwrap();
}

/// Reads exactly one frame (header, then its payload), so nothing is read ahead and lost.
fn recv(s: &mut TcpStream) -> Option<Frame> {
    let mut hdr = [0u8; 12];
    s.read_exact(&mut hdr).ok()?;
    let len = u32::from_le_bytes(hdr[0..4].try_into().unwrap()) as usize;
    let mut buf = BytesMut::from(&hdr[..]);
    buf.resize(12 + len, 0);
    s.read_exact(&mut buf[12..]).ok()?;
    Some(
        Frame::decode(&mut buf, 1 << 20)
            .unwrap()
            .expect("a whole frame"),
    )
}

/// Accepts the slave's next session, skipping the bare connections with which a
/// slave probes whether a lost master's process is still there.
fn accept_hello(l: &TcpListener) -> (TcpStream, Frame) {
    for _ in 0..8 {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        if let Some(f) = recv(&mut s) {
            return (s, f);
        }
    }
    panic!("no Hello in 8 connections");
}

/// Accepts the slave, checks its Hello says `tail`, welcomes it to continue there.
fn accept(l: &TcpListener, tail: u64, history: u128) -> TcpStream {
    let (mut s, hello) = accept_hello(l);
    match hello {
        Frame::Hello {
            tail: t,
            history: h,
            ..
        } => {
            assert_eq!(t, tail, "slave did not resume from its own tail");
            assert!(h == history || (h == 0 && tail == 0));
        }
        other => panic!("expected Hello, got {other:?}"),
    }
    send(
        &mut s,
        &Frame::Welcome {
            history,
            epoch: 1,
            segment_bytes: SEG,
            action: Action::Continue,
            start: tail,
            snapshot_bytes: 0,
            node: 77,
        },
    );
    s
}

/// Reads until the slave closes the connection; returns whether it did in time.
fn closed_by_peer(s: &mut TcpStream) -> bool {
    let t0 = Instant::now();
    let mut tmp = [0u8; 4096];
    while t0.elapsed() < DEADLINE {
        match s.read(&mut tmp) {
            Ok(0) => return true,
            Ok(_) => continue, // acks
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
    false
}

fn wait_rejection(node: &Node) -> String {
    let t0 = Instant::now();
    while t0.elapsed() < DEADLINE {
        if let Some(Event::FrameRejected { reason }) = node.next_event(Duration::from_millis(50)) {
            return reason;
        }
    }
    panic!("no FrameRejected event");
}

#[test]
fn slave_refuses_each_bad_frame_keeps_its_log_and_resumes() {
    let d = tempfile::tempdir().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = Config::new(d.path());
    cfg.peer = Some(l.local_addr().unwrap());
    cfg.segment_bytes = SEG;
    cfg.record_bytes_max = 4096;
    cfg.batch_bytes_max = 8192;
    cfg.reconnect_backoff_min_ms = 1;
    cfg.reconnect_backoff_max_ms = 20;
    let app = Count::default();
    let node = Node::start(cfg, Role::Slave, app.clone()).unwrap();

    // A good start: 5 records.
    let mut s = accept(&l, 0, HISTORY);
    let good = records(0, 5);
    let tail = good.len() as u64;
    send(
        &mut s,
        &Frame::Data {
            pos: 0,
            epoch: 1,
            tail,
            records: good.clone().into(),
        },
    );
    let t0 = Instant::now();
    while node.stats().applied < tail {
        assert!(t0.elapsed() < DEADLINE, "good records never applied");
        std::thread::sleep(Duration::from_millis(1));
    }
    let applied_before = app.0.lock().unwrap().clone();
    assert_eq!(applied_before.len(), 5);

    let mut bad_crc = records(tail, 2);
    bad_crc[30] ^= 1;
    let mut oversized_record = records(tail, 1);
    oversized_record[0..4].copy_from_slice(&5000u32.to_le_bytes());
    let mut unknown_kind = BytesMut::new();
    Frame::Heartbeat {
        epoch: 1,
        tail,
        flushed: 0,
        sent_ns: 0,
    }
    .encode(&mut unknown_kind);
    unknown_kind[4] = 42;
    let mut short_data = BytesMut::new();
    Frame::Data {
        pos: tail,
        epoch: 1,
        tail,
        records: Default::default(),
    }
    .encode(&mut short_data);
    // Claim 4 payload bytes and fix nothing else: a Data payload needs 24.
    short_data.truncate(12 + 4);
    short_data[0..4].copy_from_slice(&4u32.to_le_bytes());
    let crc = crc32c::crc32c(&short_data[12..16]);
    short_data[8..12].copy_from_slice(&crc.to_le_bytes());
    let mut too_large = BytesMut::new();
    too_large.extend_from_slice(&(u32::MAX - 1).to_le_bytes());
    too_large.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0]);
    let frame = |f: Frame| {
        let mut b = BytesMut::new();
        f.encode(&mut b);
        b.to_vec()
    };
    // (what is sent, what the reason must mention, close the connection right after?)
    let cases: Vec<(&str, Vec<u8>, &str, bool)> = vec![
        (
            "bad record CRC",
            frame(Frame::Data {
                pos: tail,
                epoch: 1,
                tail: tail + 200,
                records: bad_crc.into(),
            }),
            "CRC",
            false,
        ),
        (
            "record over the size limit",
            frame(Frame::Data {
                pos: tail,
                epoch: 1,
                tail: tail + 200,
                records: oversized_record.into(),
            }),
            "impossible length",
            false,
        ),
        (
            "unknown message type",
            unknown_kind.to_vec(),
            "unknown",
            false,
        ),
        ("malformed frame", short_data.to_vec(), "malformed", false),
        (
            "frame over the size limit",
            too_large.to_vec(),
            "exceeds the limit",
            false,
        ),
        (
            "truncated frame",
            frame(Frame::Data {
                pos: tail,
                epoch: 1,
                tail: tail + 200,
                records: records(tail, 2).into(),
            })[..40]
                .to_vec(),
            "inside a frame",
            true,
        ),
        (
            "data at the wrong position",
            frame(Frame::Data {
                pos: tail + 64,
                epoch: 1,
                tail: tail + 200,
                records: records(tail + 64, 1).into(),
            }),
            "expected data at position",
            false,
        ),
        (
            "data of another epoch",
            frame(Frame::Data {
                pos: tail,
                epoch: 7,
                tail: tail + 200,
                records: records(tail, 1).into(),
            }),
            "epoch",
            false,
        ),
    ];
    for (what, bytes, needle, close) in cases {
        s.write_all(&bytes).unwrap();
        if close {
            s.shutdown(std::net::Shutdown::Write).unwrap();
        }
        assert!(closed_by_peer(&mut s), "{what}: slave kept the connection");
        let reason = wait_rejection(&node);
        assert!(
            reason.contains(needle),
            "{what}: reason {reason:?} does not mention {needle:?}"
        );
        assert_eq!(node.stats().written, tail, "{what}: the log changed");
        assert_eq!(
            *app.0.lock().unwrap(),
            applied_before,
            "{what}: something was applied"
        );
        // The slave comes back, from its own tail.
        s = accept(&l, tail, node.stats().history);
    }

    // A master of another history that pretends to continue is refused too.
    drop(s);
    let (mut s, hello) = accept_hello(&l);
    assert!(matches!(hello, Frame::Hello { .. }));
    send(
        &mut s,
        &Frame::Welcome {
            history: HISTORY + 1,
            epoch: 1,
            segment_bytes: SEG,
            action: Action::Continue,
            start: tail,
            snapshot_bytes: 0,
            node: 77,
        },
    );
    assert!(
        closed_by_peer(&mut s),
        "slave followed a master of another history"
    );
    assert!(wait_rejection(&node).contains("history"));
    assert_eq!(node.stats().written, tail);

    // And after all that, good data still flows from where it stopped.
    let mut s = accept(&l, tail, node.stats().history);
    let more = records(tail, 3);
    let t2 = tail + more.len() as u64;
    send(
        &mut s,
        &Frame::Data {
            pos: tail,
            epoch: 1,
            tail: t2,
            records: more.into(),
        },
    );
    let t0 = Instant::now();
    while node.stats().applied < t2 {
        assert!(
            t0.elapsed() < DEADLINE,
            "good records after bad ones never applied"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(app.0.lock().unwrap().len(), 8);
}

#[test]
fn master_drops_a_peer_that_sends_garbage_and_keeps_serving() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(d.path());
    cfg.listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.segment_bytes = SEG;
    cfg.record_bytes_max = 4096;
    let node = Node::start(cfg, Role::Master, Count::default()).unwrap();
    let addr = node.local_addr().unwrap();
    for i in 0..10u32 {
        node.put(&i.to_le_bytes(), b"v").unwrap();
    }
    // Not an hs peer at all.
    let mut g = TcpStream::connect(addr).unwrap();
    g.set_read_timeout(Some(DEADLINE)).unwrap();
    g.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(closed_by_peer(&mut g), "master kept a garbage connection");
    let reason = wait_rejection(&node);
    assert!(
        reason.contains("exceeds the limit") || reason.contains("unknown"),
        "{reason}"
    );
    // A Hello with the wrong magic.
    let mut g = TcpStream::connect(addr).unwrap();
    g.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut b = BytesMut::new();
    Frame::Hello {
        node: 1,
        history: 0,
        epoch: 0,
        last_epoch: 0,
        tail: 0,
        role: 2,
        epochs: vec![],
    }
    .encode(&mut b);
    b[12] ^= 0xff;
    let crc = crc32c::crc32c(&b[12..]);
    b[8..12].copy_from_slice(&crc.to_le_bytes());
    g.write_all(&b).unwrap();
    assert!(closed_by_peer(&mut g));
    assert!(wait_rejection(&node).contains("not an hs node"));
    // A well-behaved slave is still served from position 0.
    let mut ok = TcpStream::connect(addr).unwrap();
    ok.set_read_timeout(Some(DEADLINE)).unwrap();
    send(
        &mut ok,
        &Frame::Hello {
            node: 2,
            history: 0,
            epoch: 0,
            last_epoch: 0,
            tail: 0,
            role: 2,
            epochs: vec![],
        },
    );
    match recv(&mut ok) {
        Some(Frame::Welcome {
            action: Action::Continue,
            start: 0,
            ..
        }) => {}
        other => panic!("expected Welcome, got {other:?}"),
    }
    match recv(&mut ok) {
        Some(Frame::Data {
            pos: 0, records, ..
        }) => assert!(!records.is_empty()),
        other => panic!("expected Data, got {other:?}"),
    }
    assert_eq!(node.stats().records_published, 10);
}

/// A second node (an operator's mistake: two processes, one directory) must not
/// start on a directory in use; the error names the holder's pid.
#[test]
fn a_second_node_on_the_same_directory_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let mut c = Config::new(d.path());
    c.listen = Some("127.0.0.1:0".parse().unwrap());
    c.segment_bytes = SEG;
    c.record_bytes_max = 4096;
    let a = Node::start(c.clone(), Role::Master, Count::default()).unwrap();
    a.put(b"k", b"v").unwrap();
    let err = match Node::start(c.clone(), Role::Master, Count::default()) {
        Ok(_) => panic!("two nodes run on one directory"),
        Err(e) => e,
    };
    assert!(
        matches!(err, hs::NodeError::Log(hs::LogError::Locked { pid: Some(p), .. }) if p == std::process::id()),
        "{err}"
    );
    assert!(err.to_string().contains("in use by process"), "{err}");
    // The first node is untouched.
    a.put(b"k2", b"v").unwrap();
    assert_eq!(a.stats().records_published, 2);
    drop(a);
    let b = Node::start(c, Role::Master, Count::default()).unwrap();
    assert_eq!(b.recovery().records, 2);
}

/// A master's Welcome that claims a snapshot larger than this node accepts is
/// refused at once, before a byte of it is buffered (a resync's buffer holds
/// the whole snapshot until it decodes).
#[test]
fn a_resync_claiming_more_than_snapshot_bytes_max_is_refused_at_once() {
    let d = tempfile::tempdir().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = Config::new(d.path());
    cfg.peer = Some(l.local_addr().unwrap());
    cfg.segment_bytes = SEG;
    cfg.record_bytes_max = 4096;
    cfg.reconnect_backoff_min_ms = 1;
    cfg.reconnect_backoff_max_ms = 20;
    let node = Node::start(cfg, Role::Slave, Count::default()).unwrap();
    let (mut s, _hello) = accept_hello(&l);
    let t0 = Instant::now();
    send(
        &mut s,
        &Frame::Welcome {
            history: HISTORY,
            epoch: 1,
            segment_bytes: SEG,
            action: Action::Resync,
            start: 0,
            snapshot_bytes: 1 << 50,
            node: 77,
        },
    );
    let why = wait_rejection(&node);
    assert!(why.contains("snapshot_bytes_max"), "{why}");
    // Refused on the claim, not after waiting for bytes that never come.
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(closed_by_peer(&mut s));
}

/// `f` as a peer of protocol version 1 sends it: CRC32 (IEEE) instead of
/// CRC32C, and a Hello says version 1.
fn as_version_1(f: &Frame) -> BytesMut {
    let mut b = BytesMut::new();
    f.encode(&mut b);
    if matches!(f, Frame::Hello { .. }) {
        b[16..18].copy_from_slice(&1u16.to_le_bytes());
    }
    let crc = crc32fast::hash(&b[12..]);
    b[8..12].copy_from_slice(&crc.to_le_bytes());
    b
}

/// A slave of the old protocol (CRC32 frames, version 1) is refused by a new
/// master with an error that says what to do, and the master keeps serving.
#[test]
fn a_master_refuses_a_version_1_slave_naming_the_upgrade() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(d.path());
    cfg.listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.segment_bytes = SEG;
    cfg.record_bytes_max = 4096;
    let node = Node::start(cfg, Role::Master, Count::default()).unwrap();
    let addr = node.local_addr().unwrap();
    node.put(b"k", b"v").unwrap();
    let hello = Frame::Hello {
        node: 1,
        history: 0,
        epoch: 0,
        last_epoch: 0,
        tail: 0,
        role: 2,
        epochs: vec![],
    };
    let mut old = TcpStream::connect(addr).unwrap();
    old.set_read_timeout(Some(DEADLINE)).unwrap();
    old.write_all(&as_version_1(&hello)).unwrap();
    assert!(closed_by_peer(&mut old), "master kept a version-1 peer");
    let reason = wait_rejection(&node);
    assert!(
        reason.contains("protocol version 1") && reason.contains("upgrade the peer"),
        "{reason}"
    );
    // A current slave is still served.
    let mut ok = TcpStream::connect(addr).unwrap();
    ok.set_read_timeout(Some(DEADLINE)).unwrap();
    send(&mut ok, &hello);
    assert!(
        matches!(recv(&mut ok), Some(Frame::Welcome { .. })),
        "current slave not welcomed"
    );
}

/// A master of the old protocol is refused by a new slave, which keeps its log.
#[test]
fn a_slave_refuses_a_version_1_master_naming_the_upgrade() {
    let d = tempfile::tempdir().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = Config::new(d.path());
    cfg.peer = Some(l.local_addr().unwrap());
    cfg.segment_bytes = SEG;
    cfg.record_bytes_max = 4096;
    cfg.reconnect_backoff_min_ms = 1;
    cfg.reconnect_backoff_max_ms = 20;
    let node = Node::start(cfg, Role::Slave, Count::default()).unwrap();
    let (mut s, _hello) = accept_hello(&l);
    let welcome = Frame::Welcome {
        history: HISTORY,
        epoch: 1,
        segment_bytes: SEG,
        action: Action::Continue,
        start: 0,
        snapshot_bytes: 0,
        node: 77,
    };
    s.write_all(&as_version_1(&welcome)).unwrap();
    let reason = wait_rejection(&node);
    assert!(
        reason.contains("protocol version 1") && reason.contains("upgrade the peer"),
        "{reason}"
    );
    assert!(closed_by_peer(&mut s), "slave kept a version-1 master");
    assert_eq!(node.stats().records_applied, 0);
}

/// A log directory of the old on-disk format (CRC32, meta HSMETA02) is refused
/// at start with an error that tells the operator what to do; nothing in it
/// is touched.
#[test]
fn a_node_refuses_an_old_format_log_directory() {
    let d = tempfile::tempdir().unwrap();
    // A format-2 meta file, as the previous version wrote it.
    let mut meta = Vec::new();
    meta.extend_from_slice(b"HSMETA02");
    meta.extend_from_slice(&HISTORY.to_le_bytes());
    meta.extend_from_slice(&3u32.to_le_bytes());
    meta.extend_from_slice(&SEG.to_le_bytes());
    meta.extend_from_slice(&1u64.to_le_bytes());
    meta.extend_from_slice(&2u64.to_le_bytes());
    let crc = crc32fast::hash(&meta);
    meta.extend_from_slice(&crc.to_le_bytes());
    std::fs::write(d.path().join("meta"), &meta).unwrap();
    let seg = d.path().join(format!("{:020}.seg", 0));
    std::fs::write(&seg, b"HSSEG001 old segment").unwrap();
    let mut cfg = Config::new(d.path());
    cfg.listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.segment_bytes = SEG;
    cfg.record_bytes_max = 4096;
    let err = match Node::start(cfg, Role::Master, Count::default()) {
        Ok(_) => panic!("a node started on an old-format log"),
        Err(e) => e,
    };
    assert!(
        matches!(&err, hs::NodeError::Log(hs::LogError::OldFormat { found, .. }) if found == "HSMETA02"),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("older hs") && msg.contains("move the directory away"),
        "{msg}"
    );
    assert_eq!(std::fs::read(d.path().join("meta")).unwrap(), meta);
    assert_eq!(std::fs::read(&seg).unwrap(), b"HSSEG001 old segment");
}
