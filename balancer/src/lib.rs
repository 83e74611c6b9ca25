//! The balancer: the registry that game-server processes report to (seed
//! 000), with seed 003's dispatcher (pick the least-loaded process, spawn one
//! when all are full).
//!
//! Layers, inside out (each module uses only those above it in this list;
//! no two import each other):
//! - [`registry`]: the sans-IO state machine. Every change is a
//!   [`registry::RegistryOp`] applied by [`registry::Registry::apply`], with
//!   time in the op. No clock, no sockets, no processes.
//! - [`clock`] (the balancer's time), [`sink`] (where applied ops go:
//!   [`sink::OpSink`], and [`sink::NotMaster`]), [`ratelimit`], [`api`] (wire
//!   types and seed 000's XML): small modules on the registry alone.
//! - [`standby`]: the entity records the master publishes to its embedded hs
//!   node, and the publishing sink ([`standby::HsSink`]).
//! - [`config`] (the TOML file, resolved), [`metrics`] (counters, the
//!   Prometheus text).
//! - [`state`]: the shared state, in one place: [`state::Balancer`] holds the
//!   registry behind a lock, the sink, the master gate, the rate limiters,
//!   spawned children and push streams; picks, spawns and probe rounds.
//! - [`http`]: the axum routes and the HTTP/1.1 server loop, and
//!   [`http::stream`]: push streams (one connection, a push per line, no
//!   answer per push).
//! - [`server`]: the driver. Binds, starts the HTTP server, the prober, the
//!   ticker and (replicated) the hs node, its role watcher and the replica's
//!   `Apply`; [`server::ServerHandle`] stops them.
//! - [`client`]: the library a game server or game client links to push
//!   status and pick; [`rolling`]: rolling restart; [`fake`]: a simulated
//!   game server for tests and demos; [`cli`]: the binaries' front ends.

pub mod api;
pub mod cli;
pub mod client;
pub mod clock;
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
pub mod sink;
pub mod standby;
pub mod state;

// The push stream is an HTTP upgrade: it lives in `http`; its old path stays.
pub use http::stream;
