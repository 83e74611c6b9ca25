//! The node handle: start, free, publish, wait, switchover, role, addresses,
//! flush, compact.

use std::ffi::c_char;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hs_rust::node::{Durability, Event, Node, Role};
use hs_rust::proto::record::Op;

use crate::args::{arg, bytes, null, out, out_opt, timeout};
use crate::config::{hs_config, read_config, to_config};
use crate::error::{hs_status, Failure};
use crate::events::{dispatch, CApply, Callbacks};

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

/// A running node (opaque). Created by `hs_node_start`, released by `hs_node_free`.
pub struct hs_node {
    pub(crate) node: Arc<Node>,
    pub(crate) dispatcher: Option<Dispatcher>,
    /// Shared with the callbacks: cleared when the handle is freed.
    pub(crate) alive: Arc<AtomicBool>,
}

pub(crate) struct Dispatcher {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) thread: std::thread::JoinHandle<()>,
}

pub(crate) fn op_from(v: u32) -> Result<Op, Failure> {
    match v {
        1 => Ok(Op::Put),
        2 => Ok(Op::Delete),
        _ => Err(Failure::new(
            hs_status::InvalidArgument,
            format!("`op` = {v} is not an hs_op (1 put, 2 delete)"),
        )),
    }
}

pub(crate) fn role_to_c(r: Role) -> hs_role {
    match r {
        Role::Master => hs_role::Master,
        Role::Slave => hs_role::Slave,
        Role::Candidate => hs_role::Candidate,
    }
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
pub(crate) unsafe fn write_addr(
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
