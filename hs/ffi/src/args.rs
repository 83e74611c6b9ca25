//! Argument checks and conversions: nothing is dereferenced before it is known
//! not to be NULL; out-params are written only on success.

use std::ffi::{c_char, CStr};
use std::net::SocketAddr;
use std::time::Duration;

use crate::error::{hs_status, Failure};
use crate::HS_MS_MAX;

/// Copies the first `min(size, size_of::<T>())` bytes of `v` to `dst` and zeroes
/// the caller's bytes past `size_of::<T>()` (fields of a newer header than ours).
///
/// # Safety
/// `dst` is valid for writes of `size` bytes and aligned for `T`.
pub(crate) unsafe fn write_sized<T>(dst: *mut T, size: usize, v: &T) {
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

pub(crate) fn null(name: &str) -> Failure {
    Failure::new(hs_status::NullParameter, format!("`{name}` is NULL"))
}

/// # Safety
/// `p` is NULL or valid for reads of a `T` for `'a`.
pub(crate) unsafe fn arg<'a, T>(p: *const T, name: &str) -> Result<&'a T, Failure> {
    // SAFETY: the caller's contract; NULL was refused.
    unsafe { p.as_ref() }.ok_or_else(|| null(name))
}

/// # Safety
/// `p` is NULL or valid for writes of a `T`.
pub(crate) unsafe fn out<T>(p: *mut T, name: &str, v: T) -> Result<(), Failure> {
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
pub(crate) unsafe fn out_opt<T>(p: *mut T, v: T) {
    if !p.is_null() {
        // SAFETY: not NULL; the caller promises it is valid for writes.
        unsafe { p.write(v) };
    }
}

/// A buffer argument: NULL with length 0 is the empty buffer.
///
/// # Safety
/// `p` is NULL or valid for reads of `len` bytes for `'a`.
pub(crate) unsafe fn bytes<'a>(p: *const u8, len: usize, name: &str) -> Result<&'a [u8], Failure> {
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
pub(crate) unsafe fn cstr_opt<'a>(
    p: *const c_char,
    name: &str,
) -> Result<Option<&'a str>, Failure> {
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

pub(crate) fn parse_addr(s: Option<&str>, name: &str) -> Result<Option<SocketAddr>, Failure> {
    s.map(|s| {
        s.trim().parse::<SocketAddr>().map_err(|e| {
            Failure::new(hs_status::InvalidArgument, format!("`{name}` = {s:?} is not an address like \"127.0.0.1:7000\" or \"[::1]:7000\" (an IP, not a host name, and a port): {e}"))
        })
    })
    .transpose()
}

pub(crate) fn ms(v: u64, name: &str) -> Result<u64, Failure> {
    if v > HS_MS_MAX {
        return Err(Failure::new(
            hs_status::InvalidArgument,
            format!("`{name}` = {v} ms is over HS_MS_MAX ({HS_MS_MAX})"),
        ));
    }
    Ok(v)
}

/// A timeout argument, clamped so that `now + timeout` cannot overflow.
pub(crate) fn timeout(ms: u64) -> Duration {
    Duration::from_millis(ms.min(HS_MS_MAX))
}
