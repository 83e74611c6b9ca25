//! The center server (seed 001, 中心服务器): the zone's global user table,
//! single sign-on, the login queue, the blacklist, and the routing of
//! broadcasts, run as an hs pair like the room servers.
//!
//! - [`link`]: the gateway ↔ center messages (frame kinds 66 and 67);
//! - [`core`]: the rules, sans-IO: `(state, input, now) → (records, messages)`;
//! - [`server`]: the process: hs node, link listener, release thread, admin HTTP;
//! - [`admin`]: a small blocking HTTP client of the admin API (the CLI, tests).
//!
//! # State and records
//!
//! Every change is one hs record, keyed so that "latest value per key" (what
//! hs compaction keeps) is the state itself (see [`core::Rec`]):
//! `u/<player>` the admitted session (gateway, session, login number, zone,
//! name, source address), `q/<player>` a place in a zone's queue (ticket),
//! `b/<account or address>` a blacklist entry (reason, expiry), `n` the
//! login numbers reserved. An admission is the one `u` record (it also
//! takes the player out of the queue).
//!
//! | step | a crash leaves | after |
//! |---|---|---|
//! | Login decided, record not published | nothing | the gateway re-sends the Login to the new master |
//! | `u` published, not on the standby | the old master's log only; no Admitted sent | the new master never had it; the re-sent Login is decided again (a higher number) |
//! | `u` on the standby, Admitted not sent | the table has the session | the re-sent Login finds `(gateway, session)` and answers Admitted with the same number |
//! | Admitted sent | both nodes have it | a takeover on any gateway still kicks it |
//! | `n` published, numbers not used | a reserved block | the new master starts above it: numbers never repeat |
//! | Logout not recorded (link down) | a stale row | the gateway's Sync after reconnecting drops it; a gateway that never comes back is logged out after `gateway_grace_ms` |
//! | a Kick or a blacklist published, Kick not sent | the row gone / the ban | the gateway's Sync names the session; the center kicks it (it does not know it) |
//!
//! # Invariants
//!
//! - One row per player: a second login (any gateway) replaces the row in
//!   one record, and its gateway hears Admitted only after the old one was
//!   sent its Kick on its link (both after `Received`).
//! - A gateway Welcomes a client only after Admitted; it closes a session
//!   the center kicked or does not know.
//! - Login numbers only grow, across failovers (`n` is reserved before use
//!   and a new master starts above it): a room seeing number `k` refuses
//!   anything below it from that player.
//! - The master's state is exactly its published records applied
//!   ([`core::State::apply`], the same function the standby runs): a record
//!   refused by hs stops the decision and the node steps down.
//! - Bounded: players (`players_max`), queue per zone (`queue_max`),
//!   blacklist (`bans_max`), gateways (`gateways_max`), channels per gateway,
//!   players per list, records per tick, frames per link queue.

pub mod admin;
pub mod core;
pub mod link;
pub mod server;

pub use self::core::{AdminCmd, BanKey, CoreConfig};
pub use server::{CenterConfig, CenterServer};
