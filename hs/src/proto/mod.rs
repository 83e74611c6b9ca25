//! The sans-IO core: record and frame codecs, liveness, rate limit, and the
//! catch-up decision. Nothing here touches a socket, a file or the clock:
//! time comes in as a parameter, so tests drive it deterministically.
//!
//! What applications use is public: the record's `Op`, `RecordRef` and sizes,
//! the witness protocol (`hs-witness`, the balancer's embedded witness), the
//! election and catch-up rules (the simulation drives them), the token bucket
//! (the balancer's limits too). The wire frames are hs's own business: `frame`
//! is public only for hs's tests, benchmarks and fuzz targets, and hidden from
//! the docs; the connection handshake and the liveness counter are internal.

pub(crate) mod auth;
pub mod catchup;
pub mod checksum;
pub mod election;
#[doc(hidden)]
pub mod frame;
pub(crate) mod heartbeat;
pub mod ratelimit;
pub mod record;
pub mod role;
pub mod stream;
pub mod witness;
