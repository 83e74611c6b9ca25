//! `hs_stats`: the C view of the node's [`Stats`](hs_rust::Stats).

use crate::args::{arg, null, write_sized};
use crate::error::{hs_status, Failure};
use crate::node::{hs_node, hs_role, role_to_c};

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

/// Bytes of the first version of `hs_stats` (it ends with `catching_up`).
pub(crate) const STATS_V1_BYTES: usize =
    std::mem::offset_of!(hs_stats, catching_up) + std::mem::size_of::<bool>();

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
