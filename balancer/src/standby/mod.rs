//! The balancer's own hot standby: hs embedded.
//!
//! **What is replicated: entities, not ops.** After every op the master
//! publishes the current value of each entity the op changed
//! ([`Changes::of`]), one hs key per entity:
//!
//! | key | op | value |
//! |---|---|---|
//! | `p/<process id>` | put / delete | the whole [`Process`] (status, load, reservations, spawn record) |
//! | `z/<zone id>` | put | `{"last_spawn_ms": ...}` (the spawn rate limit) |
//! | `t` | put | the next reservation token (a standby also lifts its counter past every token of each `p/` record it loads, so a master dying between a pick's `p/<id>` and `t` records cannot make the next master reuse the token) |
//! | `m` | put | `{"http": "IP:PORT"}`: the master's HTTP address, published on promotion |
//!
//! Every value is `{ format u8 = 2 | at_ms u64 | JSON }`, `at_ms` being the
//! master's clock when it wrote the value: a replica carries each time in
//! it onto its own clock as an age ([`decode_at`]), so deadlines survive a
//! failover between machines whose clocks disagree. hs folds old segments into
//! "latest value per key", and the latest value of every key *is* the
//! registry, so a snapshot needs nothing from the balancer; applying a record
//! and restoring a key are the same upsert ([`load`]). Zone specs and limits
//! are not replicated: each balancer takes them from its own config, so both
//! of a pair need the same `[[zones]]` (a process of a zone the standby does
//! not know is refused and counted in `balancer_replica_errors_total`).
//!
//! **Roles.** hs decides who is master; a watcher thread
//! ([`crate::server::RoleWatcher`]) follows [`hs::Node::role`] and its
//! events and opens or closes the gate: on a non-master the HTTP mutations
//! answer 503 `not_master` (with the master's HTTP address from its `m`
//! record), and the prober and ticker idle. A publish that fails after the op was applied locally (the node lost
//! its role in between, or the disk is full) leaves the local registry ahead
//! of the log; the watcher then restarts the node, which rebuilds the
//! registry from the log (`reset` + `restore` + `apply`).
//!
//! Layout: `records` (the entity records: keys, stamped values, decoding,
//! loading into a registry), `sink` (the publishing side, [`HsSink`]). The
//! watcher and the replica's `Apply` drive the shared state, so they live
//! with the server (`server::role`, `server::replica`).

mod records;
mod sink;

pub use records::{
    decode, decode_at, load, master_record, records, Entity, EntityError, Record, VALUE_BYTES_MAX,
};
pub use sink::HsSink;

/// Settings of the embedded hs node (the `[hs]` config table, resolved).
#[derive(Clone, Debug)]
pub struct StandbyConfig {
    /// The hs node's configuration.
    pub node: hs::Config,
    /// Preferred role at start.
    pub prefer_master: bool,
}

#[cfg(test)]
mod tests;
