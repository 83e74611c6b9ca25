//! The balancer: the registry that game-server processes report to.
//!
//! - [`registry`]: the sans-IO state machine (status, probes' verdicts,
//!   sorting, pick with reservations, drain, spawn decisions). No clock, no IO.
pub mod registry;
