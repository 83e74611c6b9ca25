//! Unit tests of the C ABI, called from Rust as C would call it.

use std::ffi::{c_char, c_void, CStr, CString};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hs_rust::node::{Apply, Config, Event, Node, Role};
use hs_rust::proto::record::RecordRef;

use crate::config::*;
use crate::error::*;
use crate::events::*;
use crate::node::*;
use crate::stats::*;
use crate::*;

#[test]
fn status_names_match_the_enum() {
    for (s, name) in [
        (hs_status::Ok, "HS_STATUS_OK"),
        (hs_status::NotMaster, "HS_STATUS_NOT_MASTER"),
        (hs_status::Panic, "HS_STATUS_PANIC"),
    ] {
        // SAFETY: a static C string.
        assert_eq!(
            unsafe { CStr::from_ptr(hs_status_name(s as u32)) }
                .to_str()
                .unwrap(),
            name
        );
    }
    // SAFETY: as above.
    assert_eq!(
        unsafe { CStr::from_ptr(hs_status_name(99)) }
            .to_str()
            .unwrap(),
        "HS_STATUS_UNKNOWN"
    );
}

fn last_error() -> String {
    let mut buf = [0 as c_char; 512];
    let mut n = 0usize;
    // SAFETY: a valid buffer and length.
    assert_eq!(
        unsafe { hs_last_error(buf.as_mut_ptr(), buf.len(), &mut n) },
        hs_status::Ok
    );
    // SAFETY: NUL-terminated by hs_last_error.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_str()
        .unwrap()
        .to_string()
}

#[test]
fn null_pointers_are_refused_not_dereferenced() {
    // SAFETY: every pointer is NULL or valid; NULL ones must be refused.
    unsafe {
        assert_eq!(
            hs_config_init(std::ptr::null_mut()),
            hs_status::NullParameter
        );
        assert!(last_error().contains("`cfg` is NULL"), "{}", last_error());
        let mut out = std::ptr::null_mut();
        assert_eq!(
            hs_node_start(std::ptr::null(), 1, &mut out),
            hs_status::NullParameter
        );
        assert!(out.is_null());
        assert_eq!(
            hs_node_put(
                std::ptr::null(),
                b"k".as_ptr(),
                1,
                std::ptr::null(),
                0,
                std::ptr::null_mut()
            ),
            hs_status::NullParameter
        );
        assert_eq!(
            hs_node_wait(std::ptr::null(), 0, 1, 0),
            hs_status::NullParameter
        );
        assert_eq!(
            hs_node_switchover(std::ptr::null(), 0),
            hs_status::NullParameter
        );
        assert_eq!(
            hs_node_stats(std::ptr::null(), std::ptr::null_mut()),
            hs_status::NullParameter
        );
        assert_eq!(
            hs_node_role(std::ptr::null(), std::ptr::null_mut()),
            hs_status::NullParameter
        );
        assert_eq!(
            hs_node_is_writable(std::ptr::null(), std::ptr::null_mut()),
            hs_status::NullParameter
        );
        assert_eq!(
            hs_node_master_addr(
                std::ptr::null(),
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut()
            ),
            hs_status::NullParameter
        );
        assert_eq!(
            hs_node_flush(std::ptr::null(), std::ptr::null_mut()),
            hs_status::NullParameter
        );
        assert_eq!(hs_node_compact(std::ptr::null()), hs_status::NullParameter);
        assert_eq!(
            hs_last_error(std::ptr::null_mut(), 10, std::ptr::null_mut()),
            hs_status::NullParameter
        );
        hs_node_free(std::ptr::null_mut());
    }
}

fn config(dir: &CStr) -> hs_config {
    // SAFETY: an all-zero hs_config is valid (integers, NULL pointers, None, false).
    let mut c: hs_config = unsafe { std::mem::zeroed() };
    c.struct_size = std::mem::size_of::<hs_config>();
    // SAFETY: a valid struct of the declared size.
    assert_eq!(unsafe { hs_config_init(&mut c) }, hs_status::Ok);
    c.dir = dir.as_ptr();
    c
}

#[test]
fn bad_config_values_fail_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = CString::new(dir.path().to_str().unwrap()).unwrap();
    let mut out = std::ptr::null_mut();
    let mut c = config(&d);
    c.struct_size = 8;
    // SAFETY: valid pointers throughout.
    unsafe {
        assert_eq!(hs_node_start(&c, 1, &mut out), hs_status::InvalidArgument);
        assert!(last_error().contains("struct_size"), "{}", last_error());
        let mut c = config(&d);
        let bad = c"localhost:notaport";
        c.listen = bad.as_ptr();
        assert_eq!(hs_node_start(&c, 1, &mut out), hs_status::InvalidArgument);
        assert!(
            last_error().contains("cfg->listen") && last_error().contains("127.0.0.1:7000"),
            "{}",
            last_error()
        );
        let mut c = config(&d);
        c.flush_policy = 7;
        assert_eq!(hs_node_start(&c, 1, &mut out), hs_status::InvalidArgument);
        let c = config(&d);
        assert_eq!(hs_node_start(&c, 9, &mut out), hs_status::InvalidArgument);
        let mut c = config(&d);
        c.segment_bytes = 1000;
        assert_eq!(hs_node_start(&c, 1, &mut out), hs_status::Config);
        assert!(last_error().contains("segment_bytes"), "{}", last_error());
        // A master without `listen` is refused by the node.
        let c = config(&d);
        assert_eq!(hs_node_start(&c, 1, &mut out), hs_status::Config);
        assert!(out.is_null(), "out_node written on failure");
    }
}

#[test]
fn a_newer_callers_unknown_fields_must_be_zero() {
    #[repr(C)]
    struct Newer {
        c: hs_config,
        extra: u64,
    }
    let dir = tempfile::tempdir().unwrap();
    let d = CString::new(dir.path().to_str().unwrap()).unwrap();
    // SAFETY: all-zero is valid for these fields.
    let mut n: Newer = unsafe { std::mem::zeroed() };
    n.c.struct_size = std::mem::size_of::<Newer>();
    n.extra = 0xdead;
    // SAFETY: the struct holds `struct_size` bytes.
    unsafe {
        assert_eq!(hs_config_init(&mut n.c), hs_status::Ok);
        assert_eq!(n.extra, 0, "init zeroes fields it does not know");
        assert_eq!(n.c.struct_size, std::mem::size_of::<Newer>());
        n.c.dir = d.as_ptr();
        n.c.listen = c"127.0.0.1:0".as_ptr();
        n.extra = 1;
        let mut out = std::ptr::null_mut();
        assert_eq!(hs_node_start(&n.c, 1, &mut out), hs_status::InvalidArgument);
        assert!(last_error().contains("does not know"), "{}", last_error());
    }
}

#[derive(Default)]
struct Seen {
    applied: Vec<(Vec<u8>, u64)>,
    resets: u32,
    roles: Vec<(hs_role, u32)>,
}

unsafe extern "C" fn on_apply(
    user: *mut c_void,
    key: *const u8,
    key_len: usize,
    _op: hs_op,
    _v: *const u8,
    _vl: usize,
    pos: u64,
    _epoch: u32,
) {
    // SAFETY: `user` is the test's Mutex<Seen>; the key is valid during the call.
    let (seen, key) = unsafe {
        (
            &*(user as *const std::sync::Mutex<Seen>),
            std::slice::from_raw_parts(key, key_len),
        )
    };
    seen.lock().unwrap().applied.push((key.to_vec(), pos));
}
unsafe extern "C" fn on_reset(user: *mut c_void) {
    // SAFETY: as above.
    let seen = unsafe { &*(user as *const std::sync::Mutex<Seen>) };
    seen.lock().unwrap().resets += 1;
}
unsafe extern "C" fn on_role(user: *mut c_void, role: hs_role, epoch: u32) {
    // SAFETY: as above.
    let seen = unsafe { &*(user as *const std::sync::Mutex<Seen>) };
    seen.lock().unwrap().roles.push((role, epoch));
}

/// What the free-from-a-callback tests share with their callbacks.
struct FreeFrom {
    handle: std::sync::atomic::AtomicPtr<hs_node>,
    freed: AtomicBool,
}

/// Frees the handle from inside a callback, once `hs_node_start` has stored it.
fn free_from_callback(user: *mut c_void) {
    // SAFETY: `user` is the test's FreeFrom, alive for the whole test.
    let f = unsafe { &*(user as *const FreeFrom) };
    let h = f.handle.swap(std::ptr::null_mut(), Ordering::AcqRel);
    if !h.is_null() {
        // SAFETY: the live handle, taken once.
        unsafe { hs_node_free(h) };
        f.freed.store(true, Ordering::Release);
    }
}
unsafe extern "C" fn free_on_event(user: *mut c_void, _ev: *const hs_event) {
    free_from_callback(user);
}
unsafe extern "C" fn free_on_apply(
    user: *mut c_void,
    _k: *const u8,
    _kl: usize,
    _op: hs_op,
    _v: *const u8,
    _vl: usize,
    _pos: u64,
    _e: u32,
) {
    free_from_callback(user);
}

fn until(what: &str, f: impl FnMut() -> bool) {
    testkit::wait_until(what, Duration::from_secs(20), f);
}

fn local_addr(node: *const hs_node) -> SocketAddr {
    let mut buf = [0 as c_char; HS_ADDR_LEN_MAX];
    let mut n = 0;
    // SAFETY: a live handle and a buffer of its length.
    unsafe {
        assert_eq!(
            hs_node_local_addr(node, buf.as_mut_ptr(), buf.len(), &mut n),
            hs_status::Ok
        );
        CStr::from_ptr(buf.as_ptr())
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }
}

#[test]
fn free_from_an_event_callback_stops_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let d = CString::new(dir.path().to_str().unwrap()).unwrap();
    let f = FreeFrom {
        handle: Default::default(),
        freed: AtomicBool::new(false),
    };
    let mut c = config(&d);
    c.listen = c"127.0.0.1:0".as_ptr();
    c.segment_bytes = 1 << 20;
    c.record_bytes_max = 4096;
    c.user = &f as *const _ as *mut c_void;
    c.event = Some(free_on_event);
    let mut node = std::ptr::null_mut();
    // SAFETY: valid pointers; `f` outlives the node.
    assert_eq!(unsafe { hs_node_start(&c, 1, &mut node) }, hs_status::Ok);
    let addr = local_addr(node);
    f.handle.store(node, Ordering::Release);
    until("the event callback to free the handle", || {
        f.freed.load(Ordering::Acquire)
    });
    // The node stops once the callback has returned: its listener closes.
    until("the listener to close", || {
        std::net::TcpStream::connect(addr).is_err()
    });
}

#[test]
fn free_from_an_apply_callback_stops_the_node() {
    let (dm, ds) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (dm, ds) = (
        CString::new(dm.path().to_str().unwrap()).unwrap(),
        CString::new(ds.path().to_str().unwrap()).unwrap(),
    );
    let mut m = config(&dm);
    m.listen = c"127.0.0.1:0".as_ptr();
    m.segment_bytes = 1 << 20;
    m.record_bytes_max = 4096;
    let mut master = std::ptr::null_mut();
    // SAFETY: valid pointers.
    assert_eq!(unsafe { hs_node_start(&m, 1, &mut master) }, hs_status::Ok);
    let peer = CString::new(local_addr(master).to_string()).unwrap();
    let f = FreeFrom {
        handle: Default::default(),
        freed: AtomicBool::new(false),
    };
    let mut s = config(&ds);
    s.peer = peer.as_ptr();
    s.user = &f as *const _ as *mut c_void;
    s.apply = Some(free_on_apply);
    let mut slave = std::ptr::null_mut();
    let stats = |n: *const hs_node| {
        let mut raw = std::mem::MaybeUninit::<hs_stats>::uninit();
        // SAFETY: struct_size set, then filled by hs_node_stats.
        unsafe {
            raw.as_mut_ptr()
                .cast::<usize>()
                .write(std::mem::size_of::<hs_stats>());
            assert_eq!(hs_node_stats(n, raw.as_mut_ptr()), hs_status::Ok);
            raw.assume_init()
        }
    };
    // SAFETY: valid pointers; `f` outlives the slave.
    unsafe {
        assert_eq!(hs_node_start(&s, 2, &mut slave), hs_status::Ok);
        f.handle.store(slave, Ordering::Release);
        until("the slave to connect", || stats(master).slave_connected);
        assert_eq!(
            hs_node_put(
                master,
                b"k".as_ptr(),
                1,
                b"v".as_ptr(),
                1,
                std::ptr::null_mut()
            ),
            hs_status::Ok
        );
        until("the apply callback to free the handle", || {
            f.freed.load(Ordering::Acquire)
        });
        // The slave stops once `apply` has returned: the master loses it.
        until("the master to lose its slave", || {
            !stats(master).slave_connected
        });
        hs_node_free(master);
    }
}

#[test]
fn lone_master_publishes_and_replays_its_log_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = CString::new(dir.path().to_str().unwrap()).unwrap();
    let seen = std::sync::Mutex::new(Seen::default());
    let mut c = config(&d);
    c.listen = c"127.0.0.1:0".as_ptr();
    c.segment_bytes = 1 << 20;
    c.record_bytes_max = 4096;
    c.user = &seen as *const _ as *mut c_void;
    c.apply = Some(on_apply);
    c.reset = Some(on_reset);
    c.role_changed = Some(on_role);
    let mut positions = Vec::new();
    // SAFETY: valid pointers; `seen` outlives the node.
    unsafe {
        let mut node = std::ptr::null_mut();
        assert_eq!(
            hs_node_start(&c, hs_role::Master as u32, &mut node),
            hs_status::Ok
        );
        assert!(!node.is_null());
        let mut role = hs_role::Candidate;
        assert_eq!(hs_node_role(node, &mut role), hs_status::Ok);
        assert_eq!(role, hs_role::Master);
        for i in 0..10u64 {
            let k = format!("player:{i}");
            let mut pos = u64::MAX;
            assert_eq!(
                hs_node_put(node, k.as_ptr(), k.len(), b"1".as_ptr(), 1, &mut pos),
                hs_status::Ok
            );
            positions.push(pos);
        }
        assert_eq!(
            hs_node_delete(node, b"player:3".as_ptr(), 8, std::ptr::null_mut()),
            hs_status::Ok
        );
        assert_eq!(
            hs_node_publish(
                node,
                b"k".as_ptr(),
                1,
                9,
                std::ptr::null(),
                0,
                std::ptr::null_mut()
            ),
            hs_status::InvalidArgument
        );
        assert_eq!(
            hs_node_wait(node, positions[9], hs_durability::Async as u32, 0),
            hs_status::Ok
        );
        // No slave: Received cannot be reached.
        assert_eq!(
            hs_node_wait(node, positions[9], hs_durability::Received as u32, 10),
            hs_status::Timeout
        );
        assert_eq!(hs_node_switchover(node, 10), hs_status::NoStandby);
        // As a C caller would: only struct_size set (all-zero is not a valid
        // `hs_stats` in Rust, whose `role` has no 0).
        let mut raw = std::mem::MaybeUninit::<hs_stats>::zeroed();
        raw.as_mut_ptr().cast::<usize>().write(8);
        assert_eq!(
            hs_node_stats(node, raw.as_mut_ptr()),
            hs_status::InvalidArgument
        );
        let bytes =
            std::slice::from_raw_parts(raw.as_ptr().cast::<u8>(), std::mem::size_of::<hs_stats>());
        assert!(bytes[8..].iter().all(|&b| b == 0), "out written on failure");
        // A caller that declares only the first version's bytes gets no more written.
        #[repr(C, align(8))]
        struct Aligned([u8; 512]);
        let mut buf = Aligned([0xAA; 512]);
        let p = buf.0.as_mut_ptr().cast::<hs_stats>();
        p.cast::<usize>().write(STATS_V1_BYTES);
        assert_eq!(hs_node_stats(node, p), hs_status::Ok);
        assert!(
            buf.0[STATS_V1_BYTES..].iter().all(|&b| b == 0xAA),
            "wrote past struct_size"
        );
        raw.as_mut_ptr()
            .cast::<usize>()
            .write(std::mem::size_of::<hs_stats>());
        assert_eq!(hs_node_stats(node, raw.as_mut_ptr()), hs_status::Ok);
        let st = raw.assume_init();
        assert_eq!(st.role, hs_role::Master);
        assert_eq!(st.records_published, 11);
        assert!(st.written > positions[9]);
        let mut buf = [0 as c_char; HS_ADDR_LEN_MAX];
        let mut n = 0;
        assert_eq!(
            hs_node_local_addr(node, buf.as_mut_ptr(), 4, &mut n),
            hs_status::BufferTooSmall
        );
        assert_eq!(
            hs_node_local_addr(node, buf.as_mut_ptr(), buf.len(), &mut n),
            hs_status::Ok
        );
        let addr = CStr::from_ptr(buf.as_ptr()).to_str().unwrap();
        assert!(
            addr.starts_with("127.0.0.1:") && addr.len() == n && !addr.ends_with(":0"),
            "{addr}"
        );
        // The role-changed callback arrives on the event thread.
        let t0 = std::time::Instant::now();
        while seen.lock().unwrap().roles.is_empty() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no role_changed callback"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(seen.lock().unwrap().roles[0].0, hs_role::Master);
        hs_node_free(node);
        // A master's own publishes are not applied back to it.
        assert!(seen.lock().unwrap().applied.is_empty());

        // Restart: the state is rebuilt from the log on this thread, inside start.
        let mut node = std::ptr::null_mut();
        assert_eq!(
            hs_node_start(&c, hs_role::Master as u32, &mut node),
            hs_status::Ok
        );
        let s = seen.lock().unwrap();
        assert_eq!(s.resets, 2);
        assert_eq!(s.applied.len(), 11);
        assert_eq!(
            s.applied.iter().take(10).map(|a| a.1).collect::<Vec<_>>(),
            positions
        );
        assert_eq!(s.applied[10].0, b"player:3");
        drop(s);
        hs_node_free(node);
    }
}

#[test]
fn the_secret_is_read_from_the_second_version_of_hs_config_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = CString::new(dir.path().to_str().unwrap()).unwrap();
    let key = b"pair secret";
    let mut c = config(&d);
    assert!(
        c.secret.is_null() && c.secret_len == 0,
        "default: no secret"
    );
    c.secret = key.as_ptr();
    c.secret_len = key.len();
    // SAFETY: a valid config of its declared size; strings and secret live.
    let cfg = unsafe { to_config(&read_config(&c).unwrap()) }.unwrap();
    assert_eq!(cfg.secret, Some(hs_rust::node::Secret::new(key)));
    assert!(
        !format!("{cfg:?}").contains("pair secret"),
        "the secret was printed"
    );
    // A caller built against the first header: its struct ends before `secret`.
    c.struct_size = CONFIG_V1_BYTES;
    // SAFETY: as above; only the first CONFIG_V1_BYTES are read.
    let cfg = unsafe { to_config(&read_config(&c).unwrap()) }.unwrap();
    assert_eq!(cfg.secret, None);
    // A length without bytes is refused, not dereferenced.
    let mut c = config(&d);
    c.secret_len = 8;
    // SAFETY: as above.
    let r = unsafe { read_config(&c).and_then(|c| to_config(&c)) };
    assert!(matches!(r, Err(ref f) if f.status == hs_status::NullParameter));
}

/// A Rust `Apply` that panics on the key "boom" (a C callback cannot unwind:
/// a panic on the data path comes from Rust code, such as a wrapper's).
struct Boom;
impl Apply for Boom {
    fn apply(&mut self, r: &RecordRef<'_>) {
        assert!(r.key != b"boom", "boom is not handled");
    }
    fn reset(&mut self) {}
    fn restore(&mut self, _: &[u8], _: &[u8]) {}
}

unsafe extern "C" fn note_kind(user: *mut c_void, ev: *const hs_event) {
    // SAFETY: `user` is the test's Mutex, `ev` valid during the call.
    let (seen, ev) = unsafe {
        (
            &*(user as *const std::sync::Mutex<Vec<(u32, String)>>),
            &*ev,
        )
    };
    // SAFETY: NUL-terminated for the call.
    let why = unsafe { CStr::from_ptr(ev.reason) }
        .to_string_lossy()
        .into_owned();
    seen.lock().unwrap().push((ev.kind as u32, why));
}

#[test]
fn a_panicking_apply_is_hs_status_panic_and_a_fatal_event_through_the_c_abi() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pa = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let pb = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (pa, pb) = {
        let addrs = (pa.local_addr().unwrap(), pb.local_addr().unwrap());
        drop((pa, pb)); // the nodes bind them again
        addrs
    };
    let mk = |dir: &std::path::Path, me: SocketAddr, peer: SocketAddr, id: u64| {
        let mut c = Config::new(dir);
        (c.listen, c.peer, c.node_id) = (Some(me), Some(peer), id);
        (c.segment_bytes, c.record_bytes_max) = (1 << 20, 4096);
        (c.heartbeat_interval_ms, c.reconnect_backoff_min_ms) = (20, 5);
        c
    };
    struct Nop;
    impl Apply for Nop {
        fn apply(&mut self, _: &RecordRef<'_>) {}
        fn reset(&mut self) {}
        fn restore(&mut self, _: &[u8], _: &[u8]) {}
    }
    let a = Node::start(mk(da.path(), pa, pb, 1), Role::Master, Nop).unwrap();
    let b = Node::start(mk(db.path(), pb, pa, 2), Role::Slave, Boom).unwrap();
    let t0 = std::time::Instant::now();
    while !(a.role() == Role::Master && b.role() == Role::Slave) {
        assert!(t0.elapsed() < Duration::from_secs(20), "pair");
        std::thread::sleep(Duration::from_millis(2));
    }
    // The slave as a C caller holds it.
    let h = Box::into_raw(Box::new(hs_node {
        node: Arc::new(b),
        dispatcher: None,
        alive: Arc::new(AtomicBool::new(true)),
    }));
    let pos = a.put(b"boom", b"").unwrap();
    // SAFETY: `h` is a live handle until hs_node_free below.
    unsafe {
        let t0 = std::time::Instant::now();
        loop {
            let st = hs_node_wait(h, 0, hs_durability::Async as u32, 0);
            assert!(st == hs_status::Ok || st == hs_status::Panic);
            let mut w = 0u64;
            let st = hs_node_put(h, b"k".as_ptr(), 1, std::ptr::null(), 0, &mut w);
            if st == hs_status::Panic {
                assert!(last_error().contains("Apply panicked"), "{}", last_error());
                assert!(
                    last_error().contains("boom is not handled"),
                    "{}",
                    last_error()
                );
                break;
            }
            assert_eq!(st, hs_status::NotMaster);
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "never HS_STATUS_PANIC"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(
            hs_node_wait(h, pos, hs_durability::Applied as u32, 10),
            hs_status::Panic
        );
        hs_node_free(h);
    }
    // The event as the event callback sees it.
    let seen = std::sync::Mutex::new(Vec::<(u32, String)>::new());
    let cb = Callbacks {
        alive: Arc::new(AtomicBool::new(true)),
        user: &seen as *const _ as *mut c_void,
        apply: None,
        reset: None,
        restore: None,
        role_changed: None,
        rolled_back: None,
        event: Some(note_kind),
    };
    deliver(
        &cb,
        &Event::Fatal {
            reason: "panic: boom".into(),
        },
    );
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(hs_event_kind::Fatal as u32, "panic: boom".to_string())]
    );
}
