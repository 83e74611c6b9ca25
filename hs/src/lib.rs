//! hs: a hot-standby library.
//!
//! The application calls [`Node::publish`] on every state change. The record is
//! written in place into a segmented, memory-mapped log (the log *is* the queue)
//! and the call returns its position at once. A replication thread streams the
//! log to a slave, which checks each record, writes the same bytes at the same
//! position in its own log and hands it to the application's [`Apply`] callback.
//! A slave that connects late catches up from the log (rate-limited), or from a
//! snapshot when the history it needs was retired.
//!
//! Layout: `proto` is the sans-IO core (codecs, liveness, rate limit, catch-up
//! decision); `log` is the only module that maps files or syncs them; `node` is
//! the driver (threads, sockets, timers, the public API). The C ABI is a crate
//! of its own, `hs/ffi` (`libhs.so`, `libhs.a`, `hs.h`).

#[doc(hidden)]
pub mod fuzz;
pub mod log;
pub mod node;
pub mod proto;

pub use log::{LogConfig, LogError, Recovery};

pub use node::{
    Apply, Config, Durability, Event, FlushPolicy, Node, NodeError, Role, Secret, Stats,
};
pub use proto::record::{Op, RecordRef};
