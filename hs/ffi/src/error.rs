//! Statuses, the thread's last-error slot, and the body every exported function
//! runs in: a `Failure` becomes its status and message, a panic `HS_STATUS_PANIC`.

use std::cell::RefCell;
use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use hs_rust::log::LogError;
use hs_rust::node::NodeError;

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

/// A failed call: its status and message (without the function's name).
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: hs_status,
    pub(crate) msg: String,
}

impl Failure {
    pub(crate) fn new(status: hs_status, msg: impl Into<String>) -> Failure {
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

pub(crate) fn set_last_error(msg: String) {
    // `try_with`: during thread teardown the slot may be gone; the status still tells.
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = msg);
}

pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> &str {
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
pub(crate) fn guard(name: &str, body: impl FnOnce() -> Result<(), Failure>) -> hs_status {
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
        $crate::error::guard($name, || -> Result<(), $crate::error::Failure> { $body })
    };
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
