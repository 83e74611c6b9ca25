//! The C ABI of hs: the only crate with `extern "C"` (`include/hs.h` is generated
//! from it by cbindgen; `tests/header.rs` checks it is up to date). It builds
//! `libhs.so` and `libhs.a`; the Rust library it wraps is the `hs` crate.
//!
//! Modules, one concern each: `error` (statuses, the last-error slot, the
//! panic-catching body), `args` (argument checks), `config` (`hs_config`),
//! `node` (the handle and its calls), `events` (callbacks and the event
//! dispatcher thread), `stats` (`hs_stats`). Everything C sees is re-exported
//! here.
//!
//! Conventions (rustls-ffi's):
//! - every fallible function returns an [`hs_status`]; out-params come last and
//!   are written only when it returns `HS_STATUS_OK`;
//! - every buffer travels with its length; a NULL buffer is accepted only with
//!   length 0 (it is then the empty buffer), never dereferenced;
//! - the node is an opaque handle, created by `hs_node_start` and released by
//!   `hs_node_free`;
//! - every exported body runs inside `catch_unwind`: a Rust panic becomes
//!   `HS_STATUS_PANIC`, never an unwind into C;
//! - enumerations the caller passes in are taken as `uint32_t` and checked, so an
//!   out-of-range value is an `HS_STATUS_INVALID_ARGUMENT`, not undefined behaviour;
//! - structs the caller fills or receives (`hs_config`, `hs_stats`) start with
//!   their own size, so later versions can append fields.
//!
//! Threads: the C application's threads call in; the node's `hs-io` thread calls
//! `apply` / `reset` / `restore` (and the thread in `hs_node_start` does, for the
//! replay of the node's own log); a dispatcher thread per handle (`hs-ffi-events`,
//! only when an event callback is set) polls [`Node::next_event`](hs_rust::Node::next_event) and calls
//! `role_changed`, `rolled_back` and `event`.

#![allow(non_camel_case_types)]

// `error` first: its `ffi!` macro is used by the modules after it.
#[macro_use]
mod error;
mod args;
mod config;
mod events;
mod node;
mod stats;

#[cfg(test)]
mod tests;

use std::ffi::c_char;

pub use config::{hs_config, hs_config_init, hs_flush_policy, hs_lag_policy};
pub use error::{hs_last_error, hs_last_error_len, hs_status, hs_status_name};
pub use events::{
    hs_apply_callback, hs_event, hs_event_callback, hs_event_kind, hs_reset_callback,
    hs_restore_callback, hs_role_changed_callback, hs_rolled_back_callback,
};
pub use node::{
    hs_durability, hs_node, hs_node_compact, hs_node_delete, hs_node_flush, hs_node_free,
    hs_node_is_writable, hs_node_local_addr, hs_node_master_addr, hs_node_publish, hs_node_put,
    hs_node_role, hs_node_start, hs_node_switchover, hs_node_wait, hs_op, hs_role,
};
pub use stats::{hs_node_stats, hs_stats};

/// Longest text an address takes, with its terminating NUL ("[ffff:...]:65535").
/// A buffer of this size always holds what `hs_node_master_addr` and
/// `hs_node_local_addr` write.
pub const HS_ADDR_LEN_MAX: usize = 64;

/// Largest millisecond value a config field may hold (about 100 years). Timeouts
/// passed to functions are clamped to it, so `UINT64_MAX` means "no limit".
pub const HS_MS_MAX: u64 = 3_153_600_000_000;

/// The library's version ("0.1.0"), static and NUL-terminated. Never free it.
#[no_mangle]
pub extern "C" fn hs_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
