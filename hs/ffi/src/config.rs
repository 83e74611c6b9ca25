//! `hs_config`: the C view of [`Config`], its defaults, and the checks that turn
//! it into one.

use std::ffi::{c_char, c_void};
use std::path::PathBuf;

use hs_rust::node::{Config, FlushPolicy, LagPolicy, Secret};

use crate::args::{bytes, cstr_opt, ms, null, parse_addr, write_sized};
use crate::error::{hs_status, Failure};
use crate::events::{
    hs_apply_callback, hs_event_callback, hs_reset_callback, hs_restore_callback,
    hs_role_changed_callback, hs_rolled_back_callback,
};

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

/// Bytes of the first version of `hs_config` (it ends with `event`): the least
/// `struct_size` a caller may declare. Later versions append fields and keep this.
pub(crate) const CONFIG_V1_BYTES: usize =
    std::mem::offset_of!(hs_config, event) + std::mem::size_of::<hs_event_callback>();

pub(crate) fn defaults() -> hs_config {
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
pub(crate) unsafe fn read_config(p: *const hs_config) -> Result<hs_config, Failure> {
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
pub(crate) unsafe fn to_config(c: &hs_config) -> Result<Config, Failure> {
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
    cfg.secret = (!secret.is_empty()).then(|| Secret::new(secret));
    Ok(cfg)
}

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
