//! The sans-IO core: record and frame codecs, liveness, rate limit, and the
//! catch-up decision. Nothing here touches a socket, a file or the clock:
//! time comes in as a parameter, so tests drive it deterministically.

pub mod auth;
pub mod catchup;
pub mod checksum;
pub mod election;
pub mod frame;
pub mod heartbeat;
pub mod ratelimit;
pub mod record;
pub mod witness;
