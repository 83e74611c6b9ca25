//! The C ABI: the only module with `extern "C"` (`hs/include/hs.h` is generated
//! from this file by cbindgen; `hs/tests/header.rs` checks it is up to date).
//!
//! Conventions (rustls-ffi's):
//! - every fallible function returns an [`hs_status`]; out-params come last and
//!   are written only when it returns `HS_STATUS_OK`;
//! - every buffer travels with its length; a NULL buffer is accepted only with
//!   length 0 (it is then the empty buffer), never dereferenced;
//! - the node is an opaque handle, created by `hs_node_start` and released by
//!   `hs_node_free`;
//! - every exported body runs inside [`catch_unwind`]: a Rust panic becomes
//!   `HS_STATUS_PANIC`, never an unwind into C;
//! - enumerations the caller passes in are taken as `uint32_t` and checked, so an
//!   out-of-range value is an `HS_STATUS_INVALID_ARGUMENT`, not undefined behaviour;
//! - structs the caller fills or receives (`hs_config`, `hs_stats`) start with
//!   their own size, so later versions can append fields.
//!
//! Threads: the C application's threads call in; the node's `hs-io` thread calls
//! `apply` / `reset` / `restore` (and the thread in `hs_node_start` does, for the
//! replay of the node's own log); a dispatcher thread per handle (`hs-ffi-events`,
//! only when an event callback is set) polls [`Node::next_event`] and calls
//! `role_changed`, `rolled_back` and `event`.

#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::log::LogError;
use crate::node::{
    Apply, Config, Durability, Event, FlushPolicy, LagPolicy, Node, NodeError, Role,
};
use crate::proto::record::{Op, RecordRef};

/// Longest text an address takes, with its terminating NUL ("[ffff:...]:65535").
/// A buffer of this size always holds what `hs_node_master_addr` and
/// `hs_node_local_addr` write.
pub const HS_ADDR_LEN_MAX: usize = 64;

/// Largest millisecond value a config field may hold (about 100 years). Timeouts
/// passed to functions are clamped to it, so `UINT64_MAX` means "no limit".
pub const HS_MS_MAX: u64 = 3_153_600_000_000;

/// How often the event dispatcher re-checks whether its handle is being freed;
/// bounds how long `hs_node_free` waits for it when no callback is running.
const DISPATCH_POLL: Duration = Duration::from_millis(20);

/// What a call did. Every fallible function returns one; `hs_last_error` gives
/// the message of the last failure on the calling thread.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum hs_status {
    /// Success; out-params were written.
    Ok = 0,
    /// A required pointer argument was NULL (or a buffer was NULL with a non-zero
    /// length). Nothing was done.
    NullParameter = 1,
    /// An argument is malformed or out of range: an unknown enum value, an address
    /// that is not `IP:port`, a path that is not UTF-8, a `struct_size` smaller
    /// than this library's first version of the struct.
    InvalidArgument = 2,
    /// The node refused its configuration (the message says which field and why).
    Config = 3,
    /// This node does not take writes (slave, candidate, handing over, or its
    /// lease ran out). `hs_node_master_addr` tells where the master is, if known.
    NotMaster = 4,
    /// The slave lags more than `lag_bytes_max`; retry when it has caught up.
    LagExceeded = 5,
    /// `hs_node_switchover`: no slave is connected to hand over to.
    NoStandby = 6,
    /// The timeout passed before the condition was met.
    Timeout = 7,
    /// The log has no room now (the next segment is not ready, or the disk is
    /// full); retry, or check disk space and `retention_bytes_max`.
    Full = 8,
    /// The record exceeds `record_bytes_max`, or the key exceeds 65535 bytes.
    TooLarge = 9,
    /// An operating-system call failed (bind, file, thread creation).
    Io = 10,
    /// The log refused: corruption, an earlier failed flush (the node refuses
    /// writes until it is restarted), an inconsistent directory.
    Log = 11,
    /// The node is shutting down.
    Shutdown = 12,
    /// The caller's buffer is too small; nothing was written.
    BufferTooSmall = 13,
    /// There is nothing to report (for example no master address is known).
    NotFound = 14,
    /// A Rust panic was caught at the boundary, or the node stopped for good after
    /// a panic on its data path (`HS_EVENT_KIND_FATAL`). The node may be unusable:
    /// free it.
    Panic = 15,
}

/// A node's role.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum hs_role {
    /// Accepts writes and streams them to its slave.
    Master = 1,
    /// Follows a master and applies its records.
    Slave = 2,
    /// Starting, or just stepped down: finding out who the master is.
    Candidate = 3,
}

/// A record's operation.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum hs_op {
    /// Set the key to the value.
    Put = 1,
    /// Remove the key (the value is usually empty).
    Delete = 2,
}

/// How far a write must have travelled before `hs_node_wait` returns.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum hs_durability {
    /// At once: in the master's memory-mapped log (survives a process crash).
    Async = 0,
    /// In the slave's log (survives the master's crash).
    Received = 1,
    /// On the slave's disk (survives the slave's machine crashing too).
    Flushed = 2,
    /// Through the slave's `apply` callback.
    Applied = 3,
}

/// When the log is written to disk. The log survives a process crash either way.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum hs_flush_policy {
    /// Let the kernel write pages back when it likes.
    Never = 0,
    /// Every `flush_interval_ms` milliseconds (the default, 100 ms).
    EveryMs = 1,
    /// As soon as possible (the slave flushes each batch before acknowledging it).
    EveryBatch = 2,
}

/// What `publish` does while the slave lags more than `lag_bytes_max`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum hs_lag_policy {
    /// Wait up to `publish_timeout_ms` for the slave, then `HS_STATUS_LAG_EXCEEDED`.
    Wait = 0,
    /// Fail at once with `HS_STATUS_LAG_EXCEEDED`.
    Refuse = 1,
}

/// What an `hs_event` reports. Fields of `hs_event` that a kind does not use are 0 or "".
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum hs_event_kind {
    /// This node's role changed: `role`, `epoch`, `reason`.
    RoleChanged = 1,
    /// This node's log diverged and was cut back: records in `[pos, end)` are gone
    /// and the application's state was rebuilt without them (reset, restore, apply).
    RolledBack = 2,
    /// Master: a slave connected: `peer_node`, `addr`, `pos` (where it starts).
    SlaveConnected = 3,
    /// Master: the slave reached the tail: `peer_node`, `pos`.
    SlaveCaughtUp = 4,
    /// Master: the slave's connection ended: `peer_node`, `reason`.
    SlaveLost = 5,
    /// Slave: connected to the master: `addr`, `pos` (where it continues).
    MasterConnected = 6,
    /// Slave: reached the master's tail: `pos`.
    CaughtUp = 7,
    /// Slave: the master's connection ended: `reason`.
    MasterLost = 8,
    /// Slave: the log was dropped and replaced by the master's snapshot at `pos`
    /// holding `keys` keys (the application saw reset, then restore per key).
    Resynced = 9,
    /// A frame from the peer was refused and the connection dropped: `reason`.
    FrameRejected = 10,
    /// Master: the slave lags `lag_bytes` bytes, over `lag_bytes_max`.
    LagOverLimit = 11,
    /// An event this version of the C API does not describe: `reason` holds its text.
    Other = 12,
    /// The node stopped for good: the application's data callback path panicked
    /// (`reason` says how). Every call now returns `HS_STATUS_PANIC`; free the
    /// node and start it again (its log is intact and replayed at start).
    Fatal = 13,
}

/// A record, passed to `apply` on the slave (and on any node replaying its own
/// log at start or after a rollback). `key` and `value` point into the node's
/// log and are valid only during the call: copy what you keep. When a length is
/// 0 the pointer is not NULL but must not be read.
pub type hs_apply_callback = Option<
    unsafe extern "C" fn(
        user: *mut c_void,
        key: *const u8,
        key_len: usize,
        op: hs_op,
        value: *const u8,
        value_len: usize,
        pos: u64,
        epoch: u32,
    ),
>;

/// Drop all application state: a snapshot (`restore` per key) and records
/// (`apply`) follow. Called before the initial replay, on a rollback and on a resync.
pub type hs_reset_callback = Option<unsafe extern "C" fn(user: *mut c_void)>;

/// One key's value from a snapshot, after `reset`. Pointers valid during the call only.
pub type hs_restore_callback = Option<
    unsafe extern "C" fn(
        user: *mut c_void,
        key: *const u8,
        key_len: usize,
        value: *const u8,
        value_len: usize,
    ),
>;

/// This node's role changed (promotion, step-down, switchover, start-up).
pub type hs_role_changed_callback =
    Option<unsafe extern "C" fn(user: *mut c_void, role: hs_role, epoch: u32)>;

/// Records in `[from, to)` were rolled back (the state was rebuilt without them).
pub type hs_rolled_back_callback =
    Option<unsafe extern "C" fn(user: *mut c_void, from: u64, to: u64)>;

/// Every event, including the two above. `ev` and its strings are valid during the call only.
pub type hs_event_callback = Option<unsafe extern "C" fn(user: *mut c_void, ev: *const hs_event)>;

/// An event, as given to the `event` callback.
#[repr(C)]
#[derive(Debug)]
pub struct hs_event {
    /// What happened; says which of the fields below are set.
    pub kind: hs_event_kind,
    /// `HS_EVENT_KIND_ROLE_CHANGED`: the new role (an `hs_role`); 0 otherwise.
    pub role: u32,
    /// `HS_EVENT_KIND_ROLE_CHANGED`: the epoch.
    pub epoch: u32,
    /// The peer's node id (`SLAVE_CONNECTED`, `SLAVE_CAUGHT_UP`, `SLAVE_LOST`).
    pub peer_node: u64,
    /// A log position: where the peer starts (`*_CONNECTED`), the tail reached
    /// (`*CAUGHT_UP`), the first position rolled back, the snapshot's position.
    pub pos: u64,
    /// `ROLLED_BACK`: one past the last position rolled back.
    pub end: u64,
    /// `RESYNCED`: keys in the snapshot.
    pub keys: u64,
    /// `LAG_OVER_LIMIT`: the slave's lag in bytes.
    pub lag_bytes: u64,
    /// The peer's address (`SLAVE_CONNECTED`, `MASTER_CONNECTED`), NUL-terminated; "" otherwise.
    pub addr: *const c_char,
    pub addr_len: usize,
    /// Why (`ROLE_CHANGED`, `SLAVE_LOST`, `MASTER_LOST`, `FRAME_REJECTED`, `FATAL`, `OTHER`), NUL-terminated; "" otherwise.
    pub reason: *const c_char,
    pub reason_len: usize,
}

/// A node's configuration. Fill it with `hs_config_init`, change what you need,
/// pass it to `hs_node_start`; the node copies what it needs (strings included),
/// so the struct and its strings may be freed as soon as `hs_node_start` returns.
///
/// Growth: set `struct_size = sizeof(hs_config)` before `hs_config_init`. A later
/// library appends fields and fills only the `struct_size` bytes its caller
/// declared; a caller built against a newer header than the library may set
/// fields this library does not know only to zero (`hs_config_init` does),
/// otherwise `hs_node_start` refuses the config.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct hs_config {
    /// `sizeof(hs_config)` as the caller's header declares it.
    pub struct_size: usize,
    /// Directory of the log, snapshots and meta file (created if missing). One node
    /// per directory. Required, UTF-8.
    pub dir: *const c_char,
    /// This node's id (in handshakes and the witness's records). 0: random.
    pub node_id: u64,
    /// Address this node accepts its peer on, as `IP:port` ("127.0.0.1:7000",
    /// "[::1]:7000"; port 0 picks a free one, see `hs_node_local_addr`). Required
    /// for a node that may become master. NULL or "": none.
    pub listen: *const c_char,
    /// The other node's `listen` address: followed when it is master, asked at
    /// start-up who is. NULL or "": none — a lone master.
    pub peer: *const c_char,
    /// A witness (`hs-witness` or the balancer) that must agree to a promotion on
    /// silence and renews the master's lease. NULL or "": none.
    pub witness: *const c_char,
    /// Identifies the pair at the witness; both nodes of a pair use the same (default 1).
    pub pair_id: u64,
    /// Accept the risk of two masters: without a witness, a slave promotes when its
    /// master goes silent. Default false (a master whose process died is still
    /// replaced at once: its kernel closes the connection).
    pub accept_split_risk: bool,
    /// Most bytes the slave may lag behind while connected; 0 = no limit (default).
    pub lag_bytes_max: u64,
    /// An `hs_lag_policy` (default `HS_LAG_POLICY_WAIT`).
    pub lag_policy: u32,
    /// Size of one log segment file, a multiple of 4096 (default 64 MiB).
    pub segment_bytes: u64,
    /// Largest record (24-byte header + key + value), at most half a segment (default 1 MiB).
    pub record_bytes_max: u64,
    /// Log kept on disk before older segments are folded into a snapshot (default 4 GiB).
    pub retention_bytes_max: u64,
    /// An `hs_flush_policy` (default `HS_FLUSH_POLICY_EVERY_MS`).
    pub flush_policy: u32,
    /// Period of `HS_FLUSH_POLICY_EVERY_MS` (default 100).
    pub flush_interval_ms: u64,
    /// Catch-up traffic limit; 0 = unlimited (default). Live traffic is never limited.
    pub catchup_rate_bytes_per_s: u64,
    /// Largest batch the master sends, at least 4096 (default 256 KiB).
    pub batch_bytes_max: u64,
    /// Heartbeat timer period (default 100).
    pub heartbeat_interval_ms: u64,
    /// Idle ticks after which the peer is declared dead (default 5).
    pub heartbeat_dead_ticks: u32,
    /// First and longest wait between a slave's reconnection attempts (default 20, 1000).
    pub reconnect_backoff_min_ms: u64,
    pub reconnect_backoff_max_ms: u64,
    /// How long a publish waits for log space before `HS_STATUS_FULL`; 0 = fail at once (default 100).
    pub publish_timeout_ms: u64,
    /// Passed as the first argument of every callback. The library never reads it.
    pub user: *mut c_void,
    /// Data callbacks, called on the `hs-io` thread (and, for the replay of the
    /// node's own log, on the thread inside `hs_node_start`), never two at once.
    /// NULL: records are not delivered (the log still holds them).
    pub apply: hs_apply_callback,
    pub reset: hs_reset_callback,
    pub restore: hs_restore_callback,
    /// Event callbacks, called on the handle's `hs-ffi-events` thread, one at a
    /// time, in order. When all three are NULL that thread is not started. The
    /// first role is reported too: a node with a peer starts as candidate, then
    /// becomes master or slave; a lone master gets (`HS_ROLE_MASTER`, epoch) at once.
    pub role_changed: hs_role_changed_callback,
    pub rolled_back: hs_rolled_back_callback,
    pub event: hs_event_callback,
    /// (Since the second version of the struct.) A secret shared by both nodes of
    /// the pair and their witness, `secret_len` bytes (any bytes; 16 or more random
    /// ones recommended). Every connection to the replication port and to the
    /// witness proves it (HMAC-SHA256 challenge and response) before anything it
    /// says is used. NULL / 0 (the default): no authentication — anyone who can
    /// reach the ports is trusted. Copied by `hs_node_start`.
    pub secret: *const u8,
    pub secret_len: usize,
}

/// A node's counters, filled by `hs_node_stats`. Set `struct_size = sizeof(hs_stats)`
/// first; the library fills what it knows and zeroes any fields past its own
/// version of the struct.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct hs_stats {
    /// `sizeof(hs_stats)` as the caller's header declares it (left as it was).
    pub struct_size: usize,
    pub role: hs_role,
    pub epoch: u32,
    /// The history id (128 bits), high and low halves.
    pub history_hi: u64,
    pub history_lo: u64,
    /// Oldest position still in the log.
    pub first: u64,
    /// One past the last record written to this node's log.
    pub written: u64,
    pub flushed: u64,
    /// Master: sent to the slave.
    pub sent: u64,
    /// Master: the slave's reported positions.
    pub acked_received: u64,
    pub acked_flushed: u64,
    pub acked_applied: u64,
    /// Slave: passed through `apply`.
    pub applied: u64,
    /// The master's tail (own tail on a master, last heard on a slave).
    pub master_tail: u64,
    /// Bytes and records not yet applied by the slave, and the oldest one's age.
    pub lag_bytes: u64,
    pub lag_records: u64,
    pub lag_ms: u64,
    /// Bytes written but not yet sent.
    pub queue_bytes: u64,
    pub records_published: u64,
    pub records_applied: u64,
    /// Catch-up progress: bytes sent since the session started, the target, the rate.
    pub catchup_done_bytes: u64,
    pub catchup_total_bytes: u64,
    pub catchup_rate_bytes_per_s: u64,
    pub reconnects: u64,
    pub frames_rejected: u64,
    /// Events dropped because nobody read them (the queue holds 1024).
    pub events_dropped: u64,
    pub disk_bytes: u64,
    pub slave_connected: bool,
    pub catching_up: bool,
}

/// Bytes of the first version of `hs_config` (it ends with `event`): the least
/// `struct_size` a caller may declare. Later versions append fields and keep this.
const CONFIG_V1_BYTES: usize =
    std::mem::offset_of!(hs_config, event) + std::mem::size_of::<hs_event_callback>();
/// Bytes of the first version of `hs_stats` (it ends with `catching_up`).
const STATS_V1_BYTES: usize =
    std::mem::offset_of!(hs_stats, catching_up) + std::mem::size_of::<bool>();

/// Copies the first `min(size, size_of::<T>())` bytes of `v` to `dst` and zeroes
/// the caller's bytes past `size_of::<T>()` (fields of a newer header than ours).
///
/// # Safety
/// `dst` is valid for writes of `size` bytes and aligned for `T`.
unsafe fn write_sized<T>(dst: *mut T, size: usize, v: &T) {
    let ours = std::mem::size_of::<T>();
    // SAFETY: the caller's contract; an untyped byte copy (padding included).
    unsafe {
        std::ptr::copy_nonoverlapping(
            (v as *const T).cast::<u8>(),
            dst.cast::<u8>(),
            size.min(ours),
        );
        if size > ours {
            std::ptr::write_bytes(dst.cast::<u8>().add(ours), 0, size - ours);
        }
    }
}

/// A running node (opaque). Created by `hs_node_start`, released by `hs_node_free`.
pub struct hs_node {
    node: Arc<Node>,
    dispatcher: Option<Dispatcher>,
    /// Shared with the callbacks: cleared when the handle is freed.
    alive: Arc<AtomicBool>,
}

struct Dispatcher {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

// ---------------------------------------------------------------------------
// Errors, the last-error slot and the panic-catching body.

/// A failed call: its status and message (without the function's name).
#[derive(Debug)]
struct Failure {
    status: hs_status,
    msg: String,
}

impl Failure {
    fn new(status: hs_status, msg: impl Into<String>) -> Failure {
        Failure {
            status,
            msg: msg.into(),
        }
    }
}

impl From<NodeError> for Failure {
    fn from(e: NodeError) -> Failure {
        let status = match &e {
            NodeError::Log(LogError::TooLarge { .. } | LogError::KeyTooLarge { .. }) => {
                hs_status::TooLarge
            }
            NodeError::Log(LogError::Full { .. }) => hs_status::Full,
            NodeError::Log(LogError::Io { .. }) | NodeError::Io { .. } => hs_status::Io,
            NodeError::Log(LogError::Sealed) | NodeError::NotMaster { .. } => hs_status::NotMaster,
            NodeError::Log(_) => hs_status::Log,
            NodeError::LagExceeded { .. } => hs_status::LagExceeded,
            NodeError::NoStandby => hs_status::NoStandby,
            NodeError::Timeout(_) => hs_status::Timeout,
            NodeError::Config(_) => hs_status::Config,
            NodeError::Shutdown => hs_status::Shutdown,
            NodeError::ApplyPanicked { .. } => hs_status::Panic,
        };
        Failure::new(status, e.to_string())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

fn set_last_error(msg: String) {
    // `try_with`: during thread teardown the slot may be gone; the status still tells.
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = msg);
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = p.downcast_ref::<&str>() {
        s
    } else if let Some(s) = p.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

/// Runs an exported function's body: a `Failure` becomes its status and the
/// thread's last error ("<function>: <message>"), a panic becomes `Panic`.
fn guard(name: &str, body: impl FnOnce() -> Result<(), Failure>) -> hs_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => hs_status::Ok,
        Ok(Err(f)) => {
            set_last_error(format!("{name}: {}", f.msg));
            f.status
        }
        Err(p) => {
            set_last_error(format!("{name}: panic: {}", panic_message(&*p)));
            hs_status::Panic
        }
    }
}

/// The exported-function wrapper: `ffi!("hs_x", { ...; Ok(()) })`.
macro_rules! ffi {
    ($name:literal, $body:block) => {
        guard($name, || -> Result<(), Failure> { $body })
    };
}

// ---------------------------------------------------------------------------
// Argument checks: nothing is dereferenced before it is known not to be NULL.

fn null(name: &str) -> Failure {
    Failure::new(hs_status::NullParameter, format!("`{name}` is NULL"))
}

/// # Safety
/// `p` is NULL or valid for reads of a `T` for `'a`.
unsafe fn arg<'a, T>(p: *const T, name: &str) -> Result<&'a T, Failure> {
    // SAFETY: the caller's contract; NULL was refused.
    unsafe { p.as_ref() }.ok_or_else(|| null(name))
}

/// # Safety
/// `p` is NULL or valid for writes of a `T`.
unsafe fn out<T>(p: *mut T, name: &str, v: T) -> Result<(), Failure> {
    if p.is_null() {
        return Err(null(name));
    }
    // SAFETY: not NULL; the caller promises it is valid for writes.
    unsafe { p.write(v) };
    Ok(())
}

/// Writes `v` to an optional out-param (NULL: the caller does not want it).
///
/// # Safety
/// `p` is NULL or valid for writes of a `T`.
unsafe fn out_opt<T>(p: *mut T, v: T) {
    if !p.is_null() {
        // SAFETY: not NULL; the caller promises it is valid for writes.
        unsafe { p.write(v) };
    }
}

/// A buffer argument: NULL with length 0 is the empty buffer.
///
/// # Safety
/// `p` is NULL or valid for reads of `len` bytes for `'a`.
unsafe fn bytes<'a>(p: *const u8, len: usize, name: &str) -> Result<&'a [u8], Failure> {
    if p.is_null() {
        return if len == 0 {
            Ok(&[])
        } else {
            Err(Failure::new(
                hs_status::NullParameter,
                format!("`{name}` is NULL with length {len}"),
            ))
        };
    }
    if len > isize::MAX as usize {
        return Err(Failure::new(
            hs_status::InvalidArgument,
            format!("`{name}` length {len} is impossible"),
        ));
    }
    // SAFETY: not NULL, length checked; the caller promises `len` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// An optional C string: NULL or "" is None.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string valid for `'a`.
unsafe fn cstr_opt<'a>(p: *const c_char, name: &str) -> Result<Option<&'a str>, Failure> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: not NULL; the caller promises a NUL-terminated string.
    let s = unsafe { CStr::from_ptr(p) };
    let s = s
        .to_str()
        .map_err(|_| Failure::new(hs_status::InvalidArgument, format!("`{name}` is not UTF-8")))?;
    Ok(if s.is_empty() { None } else { Some(s) })
}

fn parse_addr(s: Option<&str>, name: &str) -> Result<Option<SocketAddr>, Failure> {
    s.map(|s| {
        s.trim().parse::<SocketAddr>().map_err(|e| {
            Failure::new(hs_status::InvalidArgument, format!("`{name}` = {s:?} is not an address like \"127.0.0.1:7000\" or \"[::1]:7000\" (an IP, not a host name, and a port): {e}"))
        })
    })
    .transpose()
}

fn ms(v: u64, name: &str) -> Result<u64, Failure> {
    if v > HS_MS_MAX {
        return Err(Failure::new(
            hs_status::InvalidArgument,
            format!("`{name}` = {v} ms is over HS_MS_MAX ({HS_MS_MAX})"),
        ));
    }
    Ok(v)
}

/// A timeout argument, clamped so that `now + timeout` cannot overflow.
fn timeout(ms: u64) -> Duration {
    Duration::from_millis(ms.min(HS_MS_MAX))
}

fn op_from(v: u32) -> Result<Op, Failure> {
    match v {
        1 => Ok(Op::Put),
        2 => Ok(Op::Delete),
        _ => Err(Failure::new(
            hs_status::InvalidArgument,
            format!("`op` = {v} is not an hs_op (1 put, 2 delete)"),
        )),
    }
}

fn role_to_c(r: Role) -> hs_role {
    match r {
        Role::Master => hs_role::Master,
        Role::Slave => hs_role::Slave,
        Role::Candidate => hs_role::Candidate,
    }
}

// ---------------------------------------------------------------------------
// Callbacks.

#[derive(Clone)]
struct Callbacks {
    /// Cleared by `hs_node_free` first: no callback starts after it.
    alive: Arc<AtomicBool>,
    user: *mut c_void,
    apply: hs_apply_callback,
    reset: hs_reset_callback,
    restore: hs_restore_callback,
    role_changed: hs_role_changed_callback,
    rolled_back: hs_rolled_back_callback,
    event: hs_event_callback,
}

// SAFETY: `user` is the application's pointer, handed back to its own callbacks;
// the header documents which threads call them, so the application knows what
// it must make thread-safe. The library never dereferences it.
unsafe impl Send for Callbacks {}

impl Callbacks {
    fn on(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
    fn wants_events(&self) -> bool {
        self.role_changed.is_some() || self.rolled_back.is_some() || self.event.is_some()
    }
}

/// The node's `Apply`, forwarding to C.
struct CApply(Callbacks);

impl Apply for CApply {
    fn apply(&mut self, r: &RecordRef<'_>) {
        if let (Some(f), true) = (self.0.apply, self.0.on()) {
            let op = match r.op {
                Op::Put => hs_op::Put,
                Op::Delete => hs_op::Delete,
            };
            // SAFETY: the application's callback; the slices outlive the call.
            unsafe {
                f(
                    self.0.user,
                    r.key.as_ptr(),
                    r.key.len(),
                    op,
                    r.value.as_ptr(),
                    r.value.len(),
                    r.pos,
                    r.epoch,
                )
            };
        }
    }
    fn reset(&mut self) {
        if let (Some(f), true) = (self.0.reset, self.0.on()) {
            // SAFETY: the application's callback.
            unsafe { f(self.0.user) };
        }
    }
    fn restore(&mut self, key: &[u8], value: &[u8]) {
        if let (Some(f), true) = (self.0.restore, self.0.on()) {
            // SAFETY: the application's callback; the slices outlive the call.
            unsafe {
                f(
                    self.0.user,
                    key.as_ptr(),
                    key.len(),
                    value.as_ptr(),
                    value.len(),
                )
            };
        }
    }
}

/// A C string for an event field (a NUL inside the text becomes '?').
fn c_text(s: &str) -> CString {
    CString::new(s.replace('\0', "?")).unwrap_or_default()
}

/// Calls the event callbacks for one event, on the dispatcher thread.
fn deliver(cb: &Callbacks, e: &Event) {
    let mut ev = hs_event {
        kind: hs_event_kind::Other,
        role: 0,
        epoch: 0,
        peer_node: 0,
        pos: 0,
        end: 0,
        keys: 0,
        lag_bytes: 0,
        addr: std::ptr::null(),
        addr_len: 0,
        reason: std::ptr::null(),
        reason_len: 0,
    };
    let mut addr = String::new();
    let mut reason = String::new();
    #[allow(unreachable_patterns)] // `Other` keeps this compiling when `Event` grows
    match e {
        Event::RoleChanged {
            role,
            epoch,
            reason: why,
        } => {
            (ev.kind, ev.role, ev.epoch) =
                (hs_event_kind::RoleChanged, role_to_c(*role) as u32, *epoch);
            reason.clone_from(why);
            if let (Some(f), true) = (cb.role_changed, cb.on()) {
                // SAFETY: the application's callback.
                unsafe { f(cb.user, role_to_c(*role), *epoch) };
            }
        }
        Event::RolledBack { from, to, .. } => {
            (ev.kind, ev.pos, ev.end) = (hs_event_kind::RolledBack, *from, *to);
            if let (Some(f), true) = (cb.rolled_back, cb.on()) {
                // SAFETY: the application's callback.
                unsafe { f(cb.user, *from, *to) };
            }
        }
        Event::SlaveConnected {
            node,
            addr: a,
            from,
        } => {
            (ev.kind, ev.peer_node, ev.pos) = (hs_event_kind::SlaveConnected, *node, *from);
            addr = a.to_string();
        }
        Event::SlaveCaughtUp { node, pos } => {
            (ev.kind, ev.peer_node, ev.pos) = (hs_event_kind::SlaveCaughtUp, *node, *pos)
        }
        Event::SlaveLost { node, reason: why } => {
            (ev.kind, ev.peer_node) = (hs_event_kind::SlaveLost, *node);
            reason.clone_from(why);
        }
        Event::MasterConnected { addr: a, from } => {
            (ev.kind, ev.pos) = (hs_event_kind::MasterConnected, *from);
            addr = a.to_string();
        }
        Event::CaughtUp { pos } => (ev.kind, ev.pos) = (hs_event_kind::CaughtUp, *pos),
        Event::MasterLost { reason: why } => {
            ev.kind = hs_event_kind::MasterLost;
            reason.clone_from(why);
        }
        Event::Resynced { pos, keys } => {
            (ev.kind, ev.pos, ev.keys) = (hs_event_kind::Resynced, *pos, *keys)
        }
        Event::FrameRejected { reason: why } => {
            ev.kind = hs_event_kind::FrameRejected;
            reason.clone_from(why);
        }
        Event::LagOverLimit { lag } => {
            (ev.kind, ev.lag_bytes) = (hs_event_kind::LagOverLimit, *lag)
        }
        Event::Fatal { reason: why } => {
            ev.kind = hs_event_kind::Fatal;
            reason.clone_from(why);
        }
        other => reason = format!("{other:?}"),
    }
    if let (Some(f), true) = (cb.event, cb.on()) {
        let (addr, reason) = (c_text(&addr), c_text(&reason));
        (ev.addr, ev.addr_len) = (addr.as_ptr(), addr.as_bytes().len());
        (ev.reason, ev.reason_len) = (reason.as_ptr(), reason.as_bytes().len());
        // SAFETY: the application's callback; `ev` and its strings outlive the call.
        unsafe { f(cb.user, &ev) };
    }
}

fn dispatch(node: Arc<Node>, cb: Callbacks, stop: Arc<AtomicBool>, first: Option<Event>) {
    if let Some(e) = first {
        let _ = catch_unwind(AssertUnwindSafe(|| deliver(&cb, &e)));
    }
    while !stop.load(Ordering::Acquire) {
        if let Some(e) = node.next_event(DISPATCH_POLL) {
            // A panic here would be in our own code; keep the thread (and the
            // application's events) going rather than unwinding out of it.
            let _ = catch_unwind(AssertUnwindSafe(|| deliver(&cb, &e)));
        }
    }
}

// ---------------------------------------------------------------------------
// Config.

fn defaults() -> hs_config {
    let c = Config::new("");
    let (flush_policy, flush_interval_ms) = match c.flush {
        FlushPolicy::Never => (hs_flush_policy::Never, 100),
        FlushPolicy::EveryMs(ms) => (hs_flush_policy::EveryMs, ms),
        FlushPolicy::EveryBatch => (hs_flush_policy::EveryBatch, 100),
    };
    hs_config {
        struct_size: std::mem::size_of::<hs_config>(),
        dir: std::ptr::null(),
        node_id: 0,
        listen: std::ptr::null(),
        peer: std::ptr::null(),
        witness: std::ptr::null(),
        pair_id: c.pair_id,
        accept_split_risk: c.accept_split_risk,
        lag_bytes_max: c.lag_bytes_max,
        lag_policy: match c.lag_policy {
            LagPolicy::Wait => hs_lag_policy::Wait as u32,
            LagPolicy::Refuse => hs_lag_policy::Refuse as u32,
        },
        segment_bytes: c.segment_bytes,
        record_bytes_max: c.record_bytes_max as u64,
        retention_bytes_max: c.retention_bytes_max,
        flush_policy: flush_policy as u32,
        flush_interval_ms,
        catchup_rate_bytes_per_s: c.catchup_rate_bytes_per_s,
        batch_bytes_max: c.batch_bytes_max as u64,
        heartbeat_interval_ms: c.heartbeat_interval_ms,
        heartbeat_dead_ticks: c.heartbeat_dead_ticks,
        reconnect_backoff_min_ms: c.reconnect_backoff_min_ms,
        reconnect_backoff_max_ms: c.reconnect_backoff_max_ms,
        publish_timeout_ms: c.publish_timeout_ms,
        user: std::ptr::null_mut(),
        apply: None,
        reset: None,
        restore: None,
        role_changed: None,
        rolled_back: None,
        event: None,
        secret: std::ptr::null(),
        secret_len: 0,
    }
}

/// Reads the caller's config: checks its declared size, copies our version's
/// fields, and requires any newer fields to be zero.
///
/// # Safety
/// `p` is NULL or points to `struct_size` readable bytes starting with an `hs_config`.
unsafe fn read_config(p: *const hs_config) -> Result<hs_config, Failure> {
    if p.is_null() {
        return Err(null("cfg"));
    }
    // SAFETY: not NULL; every version of the struct starts with `struct_size`.
    let size = unsafe { p.cast::<usize>().read() };
    let ours = std::mem::size_of::<hs_config>();
    if size < CONFIG_V1_BYTES {
        return Err(Failure::new(
            hs_status::InvalidArgument,
            format!("cfg->struct_size is {size}, less than any hs_config ({CONFIG_V1_BYTES} bytes): set it to sizeof(hs_config) and call hs_config_init"),
        ));
    }
    if size > ours {
        // SAFETY: the caller declared `size` readable bytes.
        let extra = unsafe { std::slice::from_raw_parts(p.cast::<u8>().add(ours), size - ours) };
        if let Some(i) = extra.iter().position(|&b| b != 0) {
            return Err(Failure::new(
                hs_status::InvalidArgument,
                format!("cfg sets byte {} of a field this older library ({ours}-byte hs_config) does not know", ours + i),
            ));
        }
    }
    // Fields the caller's (older) header lacks keep their defaults.
    let mut c = defaults();
    // SAFETY: `min(size, ours)` bytes are readable, and end at a field boundary of
    // some version of the struct. Every field's type accepts any bit pattern a C
    // caller can store in it (integers, pointers, `Option<fn>`, and `bool`, which
    // C's `_Bool` keeps at 0 or 1).
    unsafe {
        std::ptr::copy_nonoverlapping(
            p.cast::<u8>(),
            (&mut c as *mut hs_config).cast::<u8>(),
            size.min(ours),
        )
    };
    c.struct_size = size;
    Ok(c)
}

/// # Safety
/// The strings in `c` are NULL or NUL-terminated.
unsafe fn to_config(c: &hs_config) -> Result<Config, Failure> {
    // SAFETY: the caller's contract for the strings.
    let dir = unsafe { cstr_opt(c.dir, "cfg->dir") }?.ok_or_else(|| {
        Failure::new(
            hs_status::NullParameter,
            "`cfg->dir` is NULL or empty: give the log directory",
        )
    })?;
    let mut cfg = Config::new(PathBuf::from(dir));
    if c.node_id != 0 {
        cfg.node_id = c.node_id;
    }
    // SAFETY: as above.
    unsafe {
        cfg.listen = parse_addr(cstr_opt(c.listen, "cfg->listen")?, "cfg->listen")?;
        cfg.peer = parse_addr(cstr_opt(c.peer, "cfg->peer")?, "cfg->peer")?;
        cfg.witness = parse_addr(cstr_opt(c.witness, "cfg->witness")?, "cfg->witness")?;
    }
    cfg.pair_id = c.pair_id;
    cfg.accept_split_risk = c.accept_split_risk;
    cfg.lag_bytes_max = c.lag_bytes_max;
    cfg.lag_policy = match c.lag_policy {
        0 => LagPolicy::Wait,
        1 => LagPolicy::Refuse,
        v => {
            return Err(Failure::new(
                hs_status::InvalidArgument,
                format!("`cfg->lag_policy` = {v} is not an hs_lag_policy (0 wait, 1 refuse)"),
            ))
        }
    };
    cfg.segment_bytes = c.segment_bytes;
    let usize_field = |v: u64, name: &str| {
        usize::try_from(v).map_err(|_| {
            Failure::new(
                hs_status::InvalidArgument,
                format!("`{name}` = {v} does not fit in size_t"),
            )
        })
    };
    cfg.record_bytes_max = usize_field(c.record_bytes_max, "cfg->record_bytes_max")?;
    cfg.retention_bytes_max = c.retention_bytes_max;
    cfg.flush = match c.flush_policy {
        0 => FlushPolicy::Never,
        1 => FlushPolicy::EveryMs(ms(c.flush_interval_ms, "cfg->flush_interval_ms")?.max(1)),
        2 => FlushPolicy::EveryBatch,
        v => return Err(Failure::new(hs_status::InvalidArgument, format!("`cfg->flush_policy` = {v} is not an hs_flush_policy (0 never, 1 every_ms, 2 every_batch)"))),
    };
    cfg.catchup_rate_bytes_per_s = c.catchup_rate_bytes_per_s;
    cfg.batch_bytes_max = usize_field(c.batch_bytes_max, "cfg->batch_bytes_max")?;
    cfg.heartbeat_interval_ms = ms(c.heartbeat_interval_ms, "cfg->heartbeat_interval_ms")?;
    cfg.heartbeat_dead_ticks = c.heartbeat_dead_ticks;
    cfg.reconnect_backoff_min_ms = ms(c.reconnect_backoff_min_ms, "cfg->reconnect_backoff_min_ms")?;
    cfg.reconnect_backoff_max_ms = ms(c.reconnect_backoff_max_ms, "cfg->reconnect_backoff_max_ms")?;
    cfg.publish_timeout_ms = ms(c.publish_timeout_ms, "cfg->publish_timeout_ms")?;
    // SAFETY: the caller's contract: `secret` points to `secret_len` readable bytes.
    let secret = unsafe { bytes(c.secret, c.secret_len, "cfg->secret") }?;
    cfg.secret = (!secret.is_empty()).then(|| crate::node::Secret::new(secret));
    Ok(cfg)
}

// ---------------------------------------------------------------------------
// Exported functions.

/// Fills `*cfg` with the defaults: no addresses, no callbacks, the Rust
/// `hs::Config::new` limits. Set `cfg->struct_size = sizeof(hs_config)` first;
/// it is kept. Then set `dir` (required), `listen` / `peer` and the callbacks.
///
/// Returns `HS_STATUS_NULL_PARAMETER` if `cfg` is NULL, `HS_STATUS_INVALID_ARGUMENT`
/// if `struct_size` is smaller than the first version of `hs_config`. Fields
/// past this library's `hs_config` (a newer header's) are set to 0. Any thread.
///
/// # Safety
/// `cfg` is NULL or points to `cfg->struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn hs_config_init(cfg: *mut hs_config) -> hs_status {
    ffi!("hs_config_init", {
        if cfg.is_null() {
            return Err(null("cfg"));
        }
        // SAFETY: not NULL; every version of the struct starts with `struct_size`.
        let size = unsafe { cfg.cast::<usize>().read() };
        if size < CONFIG_V1_BYTES {
            return Err(Failure::new(
                hs_status::InvalidArgument,
                format!("cfg->struct_size is {size}, less than any hs_config ({CONFIG_V1_BYTES} bytes): set it to sizeof(hs_config) first"),
            ));
        }
        let mut d = defaults();
        d.struct_size = size;
        // SAFETY: `size` writable bytes: the fields both versions know, then zeros.
        unsafe { write_sized(cfg, size, &d) };
        Ok(())
    })
}

/// Starts a node: opens (or creates) the log in `cfg->dir`, recovers a torn tail,
/// rebuilds the application's state from it — `reset`, `restore` per snapshot key,
/// `apply` per record, all on the calling thread before this returns — then
/// starts replicating. On success writes the new handle to `*out_node`; the
/// caller owns it and must release it with `hs_node_free`.
///
/// `role` is the preferred role (an `hs_role`): `HS_ROLE_MASTER` for the node
/// that should serve when both start, `HS_ROLE_SLAVE` for the standby. A node
/// without `peer` is a lone master. With a `peer`, the node first finds out who
/// is master (it is `HS_ROLE_CANDIDATE` meanwhile); watch `role_changed`. A
/// master needs `listen`; a slave needs `peer` (and `listen` to be able to take
/// over).
///
/// The config and its strings are copied: free them when this returns.
/// `cfg->user` and the callbacks must stay valid until `hs_node_free` returns.
///
/// Errors: `HS_STATUS_NULL_PARAMETER` (cfg, cfg->dir or out_node NULL),
/// `HS_STATUS_INVALID_ARGUMENT` (bad address, enum, size), `HS_STATUS_CONFIG`,
/// `HS_STATUS_IO` (bind, files, threads), `HS_STATUS_LOG`. Any thread.
///
/// # Safety
/// `cfg` is NULL or a valid `hs_config` of `cfg->struct_size` bytes whose strings
/// are NULL or NUL-terminated; `out_node` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn hs_node_start(
    cfg: *const hs_config,
    role: u32,
    out_node: *mut *mut hs_node,
) -> hs_status {
    ffi!("hs_node_start", {
        // SAFETY: the caller's contract.
        let c = unsafe { read_config(cfg) }?;
        if out_node.is_null() {
            return Err(null("out_node"));
        }
        let role = match role {
            1 => Role::Master,
            2 => Role::Slave,
            3 => Role::Candidate,
            v => {
                return Err(Failure::new(
                    hs_status::InvalidArgument,
                    format!("`role` = {v} is not an hs_role (1 master, 2 slave, 3 candidate)"),
                ))
            }
        };
        // SAFETY: the caller's contract for the strings.
        let config = unsafe { to_config(&c) }?;
        let alive = Arc::new(AtomicBool::new(true));
        let cb = Callbacks {
            alive: alive.clone(),
            user: c.user,
            apply: c.apply,
            reset: c.reset,
            restore: c.restore,
            role_changed: c.role_changed,
            rolled_back: c.rolled_back,
            event: c.event,
        };
        let lone = config.peer.is_none();
        let node = Arc::new(Node::start(config, role, CApply(cb.clone()))?);
        let dispatcher = if cb.wants_events() {
            // The Rust API reports role changes; a lone master starts in the role it
            // was given, so it has none. C callers get their first role either way.
            let first = lone.then(|| Event::RoleChanged {
                role: node.role(),
                epoch: node.stats().epoch,
                reason: "started".into(),
            });
            let stop = Arc::new(AtomicBool::new(false));
            let (n2, s2) = (node.clone(), stop.clone());
            let thread = std::thread::Builder::new()
                .name("hs-ffi-events".into())
                .spawn(move || dispatch(n2, cb, s2, first))
                .map_err(|e| {
                    Failure::new(
                        hs_status::Io,
                        format!("spawn the hs-ffi-events thread: {e}"),
                    )
                })?;
            Some(Dispatcher { stop, thread })
        } else {
            None
        };
        let h = Box::into_raw(Box::new(hs_node {
            node,
            dispatcher,
            alive,
        }));
        // SAFETY: checked not NULL above; the caller promises it is writable.
        unsafe { out_node.write(h) };
        Ok(())
    })
}

/// Stops the node and releases the handle: stops the event thread (waiting for
/// a callback in progress to return; events not yet delivered are dropped),
/// stops replication, joins the node's threads and flushes the log. NULL is a
/// no-op. Once it returns no callback runs and `user` is no longer used.
///
/// The caller must make sure no other call on this handle is in progress or
/// will be made. It may be called from inside one of this handle's callbacks:
/// then no other callback starts, and the node finishes stopping once the
/// calling callback has returned (on the event thread, or on a helper thread
/// for `apply` / `reset` / `restore`); `user` is not used after that callback.
///
/// # Safety
/// `node` is NULL or a handle from `hs_node_start` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn hs_node_free(node: *mut hs_node) {
    let _ = ffi!("hs_node_free", {
        if node.is_null() {
            return Ok(());
        }
        // SAFETY: a handle from `hs_node_start` (Box::into_raw), freed once.
        let h = unsafe { Box::from_raw(node) };
        let hs_node {
            node,
            dispatcher,
            alive,
        } = *h;
        // From here on no callback starts (one in progress may be our caller).
        alive.store(false, Ordering::Release);
        let here = std::thread::current();
        let stop_events = |d: Dispatcher| {
            d.stop.store(true, Ordering::Release);
            if d.thread.thread().id() != here.id() {
                let _ = d.thread.join();
            }
            // On the event thread itself (inside an event callback) it ends after the
            // callback returns, dropping its reference to the node last.
        };
        if let Some(d) = dispatcher {
            stop_events(d);
        }
        if here.name() == Some("hs-io") {
            // Inside a data callback: stopping the node joins this very thread, so
            // a helper does it once the callback has returned.
            std::thread::Builder::new()
                .name("hs-ffi-free".into())
                .spawn(move || drop(node))
                .map_err(|e| {
                    Failure::new(hs_status::Io, format!("spawn the hs-ffi-free thread: {e}"))
                })?;
        } else {
            // Stops the node unless the event thread still holds it (see above).
            drop(node);
        }
        Ok(())
    });
}

/// Appends a state change (an `hs_op`) and writes its log position to `*out_pos`
/// (optional: NULL if not wanted). Returns at once: never waits for the network,
/// the disk or the slave (only for log space, at most `publish_timeout_ms`, and
/// for a lagging slave under `HS_LAG_POLICY_WAIT`). The bytes are copied.
///
/// Only a master accepts writes (`HS_STATUS_NOT_MASTER` otherwise). The master's
/// own application state is the caller's business: `apply` is not called for
/// records published here (it is on the slave).
///
/// Errors: `HS_STATUS_NULL_PARAMETER`, `HS_STATUS_INVALID_ARGUMENT` (op),
/// `HS_STATUS_NOT_MASTER`, `HS_STATUS_LAG_EXCEEDED`, `HS_STATUS_FULL`,
/// `HS_STATUS_TOO_LARGE`, `HS_STATUS_LOG`. Thread-safe: any thread, concurrently.
///
/// # Safety
/// `node` is NULL or a live handle; `key` / `value` are NULL (with length 0) or
/// readable for their lengths; `out_pos` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn hs_node_publish(
    node: *const hs_node,
    key: *const u8,
    key_len: usize,
    op: u32,
    value: *const u8,
    value_len: usize,
    out_pos: *mut u64,
) -> hs_status {
    ffi!("hs_node_publish", {
        // SAFETY: the caller's contract.
        let (h, key, value) = unsafe {
            (
                arg(node, "node")?,
                bytes(key, key_len, "key")?,
                bytes(value, value_len, "value")?,
            )
        };
        let pos = h.node.publish(key, op_from(op)?, value)?;
        // SAFETY: the caller's contract.
        unsafe { out_opt(out_pos, pos) };
        Ok(())
    })
}

/// `hs_node_publish` with `HS_OP_PUT`.
///
/// # Safety
/// As `hs_node_publish`.
#[no_mangle]
pub unsafe extern "C" fn hs_node_put(
    node: *const hs_node,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
    out_pos: *mut u64,
) -> hs_status {
    ffi!("hs_node_put", {
        // SAFETY: the caller's contract.
        let (h, key, value) = unsafe {
            (
                arg(node, "node")?,
                bytes(key, key_len, "key")?,
                bytes(value, value_len, "value")?,
            )
        };
        let pos = h.node.put(key, value)?;
        // SAFETY: the caller's contract.
        unsafe { out_opt(out_pos, pos) };
        Ok(())
    })
}

/// `hs_node_publish` with `HS_OP_DELETE` and an empty value.
///
/// # Safety
/// As `hs_node_publish`.
#[no_mangle]
pub unsafe extern "C" fn hs_node_delete(
    node: *const hs_node,
    key: *const u8,
    key_len: usize,
    out_pos: *mut u64,
) -> hs_status {
    ffi!("hs_node_delete", {
        // SAFETY: the caller's contract.
        let (h, key) = unsafe { (arg(node, "node")?, bytes(key, key_len, "key")?) };
        let pos = h.node.delete(key)?;
        // SAFETY: the caller's contract.
        unsafe { out_opt(out_pos, pos) };
        Ok(())
    })
}

/// Waits until the record at `pos` (a position a publish returned) has reached
/// `level` (an `hs_durability`), or `timeout_ms` passes (`HS_STATUS_TIMEOUT`;
/// `UINT64_MAX`: no limit). `HS_DURABILITY_ASYNC` returns at once. Blocks the
/// calling thread only. Thread-safe.
///
/// # Safety
/// `node` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn hs_node_wait(
    node: *const hs_node,
    pos: u64,
    level: u32,
    timeout_ms: u64,
) -> hs_status {
    ffi!("hs_node_wait", {
        // SAFETY: the caller's contract.
        let h = unsafe { arg(node, "node") }?;
        let level = match level {
            0 => Durability::Async,
            1 => Durability::Received,
            2 => Durability::Flushed,
            3 => Durability::Applied,
            v => return Err(Failure::new(hs_status::InvalidArgument, format!("`level` = {v} is not an hs_durability (0 async, 1 received, 2 flushed, 3 applied)"))),
        };
        h.node.wait(pos, level, timeout(timeout_ms))?;
        Ok(())
    })
}

/// Planned switchover (for upgrades): stops taking writes, waits until the slave
/// has applied everything, hands mastership over and continues as its slave.
/// Nothing is lost. On `HS_STATUS_TIMEOUT` the node keeps the master role.
/// Errors: `HS_STATUS_NOT_MASTER`, `HS_STATUS_NO_STANDBY`, `HS_STATUS_TIMEOUT`.
/// Blocks the calling thread; do not call it from a callback. Thread-safe.
///
/// # Safety
/// `node` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn hs_node_switchover(node: *const hs_node, timeout_ms: u64) -> hs_status {
    ffi!("hs_node_switchover", {
        // SAFETY: the caller's contract.
        let h = unsafe { arg(node, "node") }?;
        h.node.switchover(timeout(timeout_ms))?;
        Ok(())
    })
}

/// Writes the node's counters to `*out`. Set `out->struct_size = sizeof(hs_stats)`
/// first (`HS_STATUS_INVALID_ARGUMENT` if smaller than the first version's).
/// Thread-safe; cheap (atomic loads).
///
/// # Safety
/// `node` is NULL or a live handle; `out` is NULL or points to `out->struct_size`
/// writable bytes.
#[no_mangle]
pub unsafe extern "C" fn hs_node_stats(node: *const hs_node, out: *mut hs_stats) -> hs_status {
    ffi!("hs_node_stats", {
        // SAFETY: the caller's contract.
        let h = unsafe { arg(node, "node") }?;
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: not NULL; every version of the struct starts with `struct_size`.
        let size = unsafe { out.cast::<usize>().read() };
        if size < STATS_V1_BYTES {
            return Err(Failure::new(hs_status::InvalidArgument, format!("out->struct_size is {size}, less than any hs_stats ({STATS_V1_BYTES} bytes): set it to sizeof(hs_stats)")));
        }
        let s = h.node.stats();
        let v = hs_stats {
            struct_size: size,
            role: role_to_c(s.role.unwrap_or_else(|| h.node.role())),
            epoch: s.epoch,
            history_hi: (s.history >> 64) as u64,
            history_lo: s.history as u64,
            first: s.first,
            written: s.written,
            flushed: s.flushed,
            sent: s.sent,
            acked_received: s.acked_received,
            acked_flushed: s.acked_flushed,
            acked_applied: s.acked_applied,
            applied: s.applied,
            master_tail: s.master_tail,
            lag_bytes: s.lag_bytes,
            lag_records: s.lag_records,
            lag_ms: s.lag_ms,
            queue_bytes: s.queue_bytes,
            records_published: s.records_published,
            records_applied: s.records_applied,
            catchup_done_bytes: s.catchup_done_bytes,
            catchup_total_bytes: s.catchup_total_bytes,
            catchup_rate_bytes_per_s: s.catchup_rate_bytes_per_s,
            reconnects: s.reconnects,
            frames_rejected: s.frames_rejected,
            events_dropped: s.events_dropped,
            disk_bytes: s.disk_bytes,
            slave_connected: s.slave_connected,
            catching_up: s.catching_up,
        };
        // SAFETY: `size` writable bytes: the fields both versions know, then zeros.
        unsafe { write_sized(out, size, &v) };
        Ok(())
    })
}

/// Writes the node's current role to `*out_role`. Thread-safe.
///
/// # Safety
/// `node` is NULL or a live handle; `out_role` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn hs_node_role(node: *const hs_node, out_role: *mut hs_role) -> hs_status {
    ffi!("hs_node_role", {
        // SAFETY: the caller's contract.
        let h = unsafe { arg(node, "node") }?;
        // SAFETY: the caller's contract.
        unsafe { out(out_role, "out_role", role_to_c(h.node.role())) }
    })
}

/// Writes whether a publish would be accepted now (master, lease valid, not
/// handing over) to `*out_writable`. Thread-safe.
///
/// # Safety
/// `node` is NULL or a live handle; `out_writable` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn hs_node_is_writable(
    node: *const hs_node,
    out_writable: *mut bool,
) -> hs_status {
    ffi!("hs_node_is_writable", {
        // SAFETY: the caller's contract.
        let h = unsafe { arg(node, "node") }?;
        // SAFETY: the caller's contract.
        unsafe { out(out_writable, "out_writable", h.node.is_writable()) }
    })
}

/// Writes an address as a NUL-terminated string into `buf` and its length
/// (without the NUL) into `*out_len`.
///
/// # Safety
/// `buf` is NULL or writable for `len` bytes; `out_len` is NULL or writable.
unsafe fn write_addr(
    a: Option<SocketAddr>,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> Result<(), Failure> {
    if buf.is_null() {
        return Err(null("buf"));
    }
    if out_len.is_null() {
        return Err(null("out_len"));
    }
    let a = a
        .ok_or_else(|| Failure::new(hs_status::NotFound, "no address is known"))?
        .to_string();
    if a.len() + 1 > len {
        return Err(Failure::new(
            hs_status::BufferTooSmall,
            format!(
                "the address needs {} bytes, the buffer has {len} (HS_ADDR_LEN_MAX always fits)",
                a.len() + 1
            ),
        ));
    }
    // SAFETY: `buf` holds `len > a.len()` writable bytes; `out_len` is writable.
    unsafe {
        std::ptr::copy_nonoverlapping(a.as_ptr(), buf.cast::<u8>(), a.len());
        buf.add(a.len()).write(0);
        out_len.write(a.len());
    }
    Ok(())
}

/// Writes where the master is, as far as this node knows (its own listen
/// address if it is master), as "IP:port" with a NUL into `buf` (`len` bytes;
/// `HS_ADDR_LEN_MAX` always fits) and the length without the NUL into
/// `*out_len`. `HS_STATUS_NOT_FOUND` if no master is known. Thread-safe.
///
/// # Safety
/// `node` is NULL or a live handle; `buf` is NULL or writable for `len` bytes;
/// `out_len` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn hs_node_master_addr(
    node: *const hs_node,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> hs_status {
    ffi!("hs_node_master_addr", {
        // SAFETY: the caller's contract.
        unsafe {
            let h = arg(node, "node")?;
            write_addr(h.node.master_addr(), buf, len, out_len)
        }
    })
}

/// Writes the address this node listens on (learn the port after `listen` with
/// port 0) like `hs_node_master_addr`. `HS_STATUS_NOT_FOUND` without `listen`.
/// Thread-safe.
///
/// # Safety
/// As `hs_node_master_addr`.
#[no_mangle]
pub unsafe extern "C" fn hs_node_local_addr(
    node: *const hs_node,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> hs_status {
    ffi!("hs_node_local_addr", {
        // SAFETY: the caller's contract.
        unsafe {
            let h = arg(node, "node")?;
            write_addr(h.node.local_addr(), buf, len, out_len)
        }
    })
}

/// Writes the log to disk now (msync) and the position flushed up to into
/// `*out_pos` (optional: NULL if not wanted). Blocks for the disk. Thread-safe.
///
/// # Safety
/// `node` is NULL or a live handle; `out_pos` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn hs_node_flush(node: *const hs_node, out_pos: *mut u64) -> hs_status {
    ffi!("hs_node_flush", {
        // SAFETY: the caller's contract.
        let h = unsafe { arg(node, "node") }?;
        let pos = h.node.flush()?;
        // SAFETY: the caller's contract.
        unsafe { out_opt(out_pos, pos) };
        Ok(())
    })
}

/// Applies retention now (it also runs once a second on its own): folds
/// segments beyond `retention_bytes_max` into a snapshot and deletes them. The
/// new first position is in `hs_stats.first`. Blocks for the disk. Thread-safe.
///
/// # Safety
/// `node` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn hs_node_compact(node: *const hs_node) -> hs_status {
    ffi!("hs_node_compact", {
        // SAFETY: the caller's contract.
        let h = unsafe { arg(node, "node") }?;
        h.node.compact()?;
        Ok(())
    })
}

/// Copies the message of the last call that failed on the calling thread into
/// `buf` (`len` bytes), NUL-terminated and cut at a character boundary if
/// longer, and the bytes written (without the NUL) into `*out_len`; "" if no
/// call failed yet. Messages say which function, which argument and what to do.
/// A call that succeeds leaves the message as it was. The message is per thread.
///
/// Errors: `HS_STATUS_NULL_PARAMETER`, `HS_STATUS_BUFFER_TOO_SMALL` (`len` is 0).
/// It does not change the message itself.
///
/// # Safety
/// `buf` is NULL or writable for `len` bytes; `out_len` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn hs_last_error(
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> hs_status {
    let r = catch_unwind(AssertUnwindSafe(|| {
        if buf.is_null() || out_len.is_null() {
            return hs_status::NullParameter;
        }
        if len == 0 {
            return hs_status::BufferTooSmall;
        }
        let msg = LAST_ERROR
            .try_with(|e| e.borrow().clone())
            .unwrap_or_default();
        let mut n = msg.len().min(len - 1);
        while !msg.is_char_boundary(n) {
            n -= 1;
        }
        // SAFETY: `buf` holds `len > n` writable bytes; `out_len` is writable.
        unsafe {
            std::ptr::copy_nonoverlapping(msg.as_ptr(), buf.cast::<u8>(), n);
            buf.add(n).write(0);
            out_len.write(n);
        }
        hs_status::Ok
    }));
    r.unwrap_or(hs_status::Panic)
}

/// The length in bytes (without a NUL) of the calling thread's last error
/// message: a buffer of this plus 1 holds it whole. 0 if none.
#[no_mangle]
pub extern "C" fn hs_last_error_len() -> usize {
    catch_unwind(|| LAST_ERROR.try_with(|e| e.borrow().len()).unwrap_or(0)).unwrap_or(0)
}

/// A static, NUL-terminated name for a status ("HS_STATUS_NOT_MASTER");
/// "HS_STATUS_UNKNOWN" for a value that is none. Never free it. Any thread.
#[no_mangle]
pub extern "C" fn hs_status_name(status: u32) -> *const c_char {
    let s: &'static CStr = match status {
        0 => c"HS_STATUS_OK",
        1 => c"HS_STATUS_NULL_PARAMETER",
        2 => c"HS_STATUS_INVALID_ARGUMENT",
        3 => c"HS_STATUS_CONFIG",
        4 => c"HS_STATUS_NOT_MASTER",
        5 => c"HS_STATUS_LAG_EXCEEDED",
        6 => c"HS_STATUS_NO_STANDBY",
        7 => c"HS_STATUS_TIMEOUT",
        8 => c"HS_STATUS_FULL",
        9 => c"HS_STATUS_TOO_LARGE",
        10 => c"HS_STATUS_IO",
        11 => c"HS_STATUS_LOG",
        12 => c"HS_STATUS_SHUTDOWN",
        13 => c"HS_STATUS_BUFFER_TOO_SMALL",
        14 => c"HS_STATUS_NOT_FOUND",
        15 => c"HS_STATUS_PANIC",
        _ => c"HS_STATUS_UNKNOWN",
    };
    s.as_ptr()
}

/// The library's version ("0.1.0"), static and NUL-terminated. Never free it.
#[no_mangle]
pub extern "C" fn hs_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn until(what: &str, mut f: impl FnMut() -> bool) {
        let t0 = std::time::Instant::now();
        while !f() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
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
            let bytes = std::slice::from_raw_parts(
                raw.as_ptr().cast::<u8>(),
                std::mem::size_of::<hs_stats>(),
            );
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
        assert_eq!(cfg.secret, Some(crate::node::Secret::new(key)));
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
}
