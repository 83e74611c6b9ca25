//! The balancer: the registry that game-server processes report to (seed
//! 000), with seed 003's dispatcher (pick the least-loaded process, spawn one
//! when all are full).
//!
//! Layers, inside out:
//! - [`registry`]: the sans-IO state machine. Every change is a
//!   [`registry::RegistryOp`] applied by [`registry::Registry::apply`], with
//!   time in the op. No clock, no sockets, no processes.
//! - [`server`]: the driver. Holds the registry behind a lock, turns HTTP
//!   requests, probe results and timer ticks into ops, hands every applied op
//!   to an [`server::OpSink`] (where hs replication plugs in), spawns and
//!   reaps children.
//! - [`standby`]: the balancer's own hot standby: an embedded hs node, the
//!   entity records the master publishes, the replica's `Apply`, and the role
//!   watcher that opens and closes the master gate.
//! - [`http`]: the axum routes and the HTTP/1.1 server loop; [`stream`]:
//!   push streams (one connection, a push per line, no answer per push);
//!   [`api`]: wire types and seed 000's XML.
//! - [`client`]: the library a game server or game client links to push
//!   status and pick; [`rolling`]: rolling restart; [`fake`]: a simulated
//!   game server for tests and demos; [`cli`]: the binaries' front ends.

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod fake;
#[doc(hidden)]
pub mod fuzz;
pub mod http;
pub mod metrics;
pub mod ratelimit;
pub mod registry;
pub mod rolling;
pub mod server;
pub mod standby;
pub mod stream;
