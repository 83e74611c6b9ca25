//! The application's callbacks: `apply` / `reset` / `restore` on the node's
//! `hs-io` thread (through [`CApply`]), and the event dispatcher thread
//! (`hs-ffi-events`) that turns [`Event`]s into `hs_event`s.

use std::ffi::{c_char, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hs_rust::node::{Apply, Event, Node};
use hs_rust::proto::record::{Op, RecordRef};

use crate::node::{hs_op, hs_role, role_to_c};

/// How often the event dispatcher re-checks whether its handle is being freed;
/// bounds how long `hs_node_free` waits for it when no callback is running.
pub(crate) const DISPATCH_POLL: Duration = Duration::from_millis(20);

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

#[derive(Clone)]
pub(crate) struct Callbacks {
    /// Cleared by `hs_node_free` first: no callback starts after it.
    pub(crate) alive: Arc<AtomicBool>,
    pub(crate) user: *mut c_void,
    pub(crate) apply: hs_apply_callback,
    pub(crate) reset: hs_reset_callback,
    pub(crate) restore: hs_restore_callback,
    pub(crate) role_changed: hs_role_changed_callback,
    pub(crate) rolled_back: hs_rolled_back_callback,
    pub(crate) event: hs_event_callback,
}

// SAFETY: `user` is the application's pointer, handed back to its own callbacks;
// the header documents which threads call them, so the application knows what
// it must make thread-safe. The library never dereferences it.
unsafe impl Send for Callbacks {}

impl Callbacks {
    pub(crate) fn on(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
    pub(crate) fn wants_events(&self) -> bool {
        self.role_changed.is_some() || self.rolled_back.is_some() || self.event.is_some()
    }
}

/// The node's `Apply`, forwarding to C.
pub(crate) struct CApply(pub(crate) Callbacks);

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
pub(crate) fn c_text(s: &str) -> CString {
    CString::new(s.replace('\0', "?")).unwrap_or_default()
}

/// Calls the event callbacks for one event, on the dispatcher thread.
pub(crate) fn deliver(cb: &Callbacks, e: &Event) {
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

pub(crate) fn dispatch(
    node: Arc<Node>,
    cb: Callbacks,
    stop: Arc<AtomicBool>,
    first: Option<Event>,
) {
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
