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
//! **Roles.** hs decides who is master; a watcher thread ([`RoleWatcher`])
//! follows [`hs::Node::role`] and its events and opens or closes the gate:
//! on a non-master the HTTP mutations answer 503 `not_master` (with the
//! master's HTTP address from its `m` record), and the prober and ticker
//! idle. A publish that fails after the op was applied locally (the node lost
//! its role in between, or the disk is full) leaves the local registry ahead
//! of the log; the watcher then restarts the node, which rebuilds the
//! registry from the log (`reset` + `restore` + `apply`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use hs::{Apply, Event as HsEvent, Node, Op, RecordRef, Role};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, warn};

use crate::registry::{Changes, Millis, Process, Registry, RegistryError, ZoneId};
use crate::server::{Balancer, NotMaster};

/// Format byte of values written before times were stamped: their times
/// are taken as they are (read, never written).
const VALUE_FORMAT_UNSTAMPED: u8 = 1;
/// Format byte in front of every replicated value written now: `{ 2 u8 |
/// at_ms u64 | JSON }`, `at_ms` = the master's clock when it wrote it.
const VALUE_FORMAT_VERSION: u8 = 2;
/// Bytes in front of a stamped value's JSON.
const VALUE_HEADER_BYTES: usize = 9;
/// Largest replicated value accepted; checked before parsing. A process
/// with 20,000 reservations is about 800 KiB.
pub const VALUE_BYTES_MAX: usize = 1 << 20;
/// How often the watcher re-reads the node's role when no event arrives.
pub const ROLE_POLL_MS: u64 = 50;
/// Longest wait between two attempts to restart the embedded node.
pub const RESTART_BACKOFF_MAX_MS: u64 = 5_000;

const KEY_PROCESS: &[u8] = b"p/";
const KEY_ZONE: &[u8] = b"z/";
const KEY_TOKEN: &[u8] = b"t";
const KEY_MASTER: &[u8] = b"m";

/// One replicated entity, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entity {
    /// A process's whole current state.
    Process(Box<Process>),
    /// A process the master removed.
    ProcessGone(String),
    /// A zone's last spawn time.
    LastSpawn {
        /// Zone.
        zone: ZoneId,
        /// Time, if it ever spawned.
        last_spawn_ms: Option<Millis>,
    },
    /// The next reservation token.
    NextToken(u64),
    /// The master's HTTP address (for `not_master` answers).
    Master {
        /// Address clients use.
        http: SocketAddr,
    },
}

/// Why a replicated record was not understood.
#[derive(Debug, thiserror::Error)]
pub enum EntityError {
    /// The key names no entity this build knows.
    #[error(
        "replicated key {0:?} is not a balancer entity: the master runs an incompatible version"
    )]
    Key(String),
    /// The value is too long, has an unknown format byte, or does not parse.
    #[error("replicated value of {key:?} is invalid: {why}")]
    Value {
        /// Key.
        key: String,
        /// What is wrong.
        why: String,
    },
    /// The registry refused it (a zone this balancer's config lacks).
    #[error("replicated {key:?} refused: {source}; give both balancers the same [[zones]]")]
    Refused {
        /// Key.
        key: String,
        /// Registry error.
        source: RegistryError,
    },
}

#[derive(Serialize, Deserialize)]
struct ZoneValue {
    last_spawn_ms: Option<Millis>,
}

#[derive(Serialize, Deserialize)]
struct MasterValue {
    http: SocketAddr,
}

// { format u8 = 2 | at_ms u64 | JSON }
fn encode_value<T: Serialize>(v: &T, at_ms: Millis) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(VALUE_FORMAT_VERSION);
    out.extend_from_slice(&at_ms.to_le_bytes());
    serde_json::to_writer(&mut out, v).expect("plain data serialises");
    out
}

/// The value and, for a stamped value, the writer's clock when it wrote it.
fn decode_value<'a, T: Deserialize<'a>>(
    key: &[u8],
    bytes: &'a [u8],
) -> Result<(T, Option<Millis>), EntityError> {
    let bad = |why: String| EntityError::Value {
        key: String::from_utf8_lossy(key).into_owned(),
        why,
    };
    if bytes.len() > VALUE_BYTES_MAX {
        return Err(bad(format!(
            "{} bytes, more than {VALUE_BYTES_MAX}",
            bytes.len()
        )));
    }
    let (json, at_ms) = match bytes.first() {
        Some(&VALUE_FORMAT_VERSION) if bytes.len() >= VALUE_HEADER_BYTES => {
            let at: [u8; 8] = bytes[1..VALUE_HEADER_BYTES]
                .try_into()
                .expect("eight bytes");
            (&bytes[VALUE_HEADER_BYTES..], Some(u64::from_le_bytes(at)))
        }
        Some(&VALUE_FORMAT_VERSION) => {
            return Err(bad(format!(
                "{} bytes, shorter than the {VALUE_HEADER_BYTES}-byte header",
                bytes.len()
            )))
        }
        Some(&VALUE_FORMAT_UNSTAMPED) => (&bytes[1..], None),
        found => {
            return Err(bad(format!(
                "format byte {found:?}, this build reads {VALUE_FORMAT_UNSTAMPED} and {VALUE_FORMAT_VERSION}"
            )))
        }
    };
    let v = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    Ok((v, at_ms))
}

/// One record to publish: key, put or delete, value.
pub type Record = (Vec<u8>, Op, Vec<u8>);

/// The records that carry `changes` (read from `registry`, the state after
/// the op, at `at_ms` on the master's clock): removals first, then
/// processes, zones, the token counter.
pub fn records(changes: &Changes, registry: &Registry, at_ms: Millis) -> Vec<Record> {
    let mut out = Vec::with_capacity(changes.processes.len() + changes.zones.len() + 1);
    for id in &changes.processes {
        let key = [KEY_PROCESS, id.as_bytes()].concat();
        match registry.process(id) {
            Some(p) => out.push((key, Op::Put, encode_value(p, at_ms))),
            None => out.push((key, Op::Delete, Vec::new())),
        }
    }
    for zone in &changes.zones {
        let key = [KEY_ZONE, zone.to_string().as_bytes()].concat();
        out.push((
            key,
            Op::Put,
            encode_value(
                &ZoneValue {
                    last_spawn_ms: registry.last_spawn(*zone),
                },
                at_ms,
            ),
        ));
    }
    if changes.next_token {
        out.push((
            KEY_TOKEN.to_vec(),
            Op::Put,
            encode_value(&registry.next_token(), at_ms),
        ));
    }
    out
}

/// The record naming this balancer's HTTP address as the master's.
pub fn master_record(http: SocketAddr) -> Record {
    (
        KEY_MASTER.to_vec(),
        Op::Put,
        encode_value(&MasterValue { http }, 0),
    )
}

/// Decodes one record (or one restored key, as a put), with its times as
/// the writer's clock read them.
pub fn decode(key: &[u8], op: Op, value: &[u8]) -> Result<Entity, EntityError> {
    decode_stamped(key, op, value).map(|(e, _)| e)
}

/// Decodes one record as [`decode`] does, with its times carried onto this
/// node's clock, which reads `now_ms`: each time keeps its age at the
/// moment the master wrote the record (`t' = now_ms - (at_ms - t)`), so a
/// reservation keeps its remaining ttl and a push its freshness whatever
/// the two machines' clocks say. The replication lag (and, for a node
/// replaying its own log at start, the time it was down) is added to every
/// deadline: a reservation held a little longer, never dropped early.
pub fn decode_at(key: &[u8], op: Op, value: &[u8], now_ms: Millis) -> Result<Entity, EntityError> {
    let (entity, at_ms) = decode_stamped(key, op, value)?;
    let Some(at_ms) = at_ms else {
        return Ok(entity);
    };
    let shift = |t: Millis| -> Millis {
        let age = at_ms.saturating_sub(t);
        let ahead = t.saturating_sub(at_ms);
        now_ms.saturating_sub(age).saturating_add(ahead)
    };
    Ok(match entity {
        Entity::Process(mut p) => {
            p.last_push_ms = shift(p.last_push_ms);
            p.status_since_ms = shift(p.status_since_ms);
            for r in p.reservations.iter_mut() {
                r.expires_ms = shift(r.expires_ms);
            }
            if let Some(s) = p.spawned.as_mut() {
                s.started_ms = shift(s.started_ms);
            }
            Entity::Process(p)
        }
        Entity::LastSpawn {
            zone,
            last_spawn_ms,
        } => Entity::LastSpawn {
            zone,
            last_spawn_ms: last_spawn_ms.map(shift),
        },
        other => other,
    })
}

fn decode_stamped(
    key: &[u8],
    op: Op,
    value: &[u8],
) -> Result<(Entity, Option<Millis>), EntityError> {
    let key_text = || String::from_utf8_lossy(key).into_owned();
    if let Some(id) = key.strip_prefix(KEY_PROCESS) {
        let id = std::str::from_utf8(id).map_err(|_| EntityError::Key(key_text()))?;
        return Ok(match op {
            Op::Delete => (Entity::ProcessGone(id.to_string()), None),
            Op::Put => {
                let (p, at): (Process, _) = decode_value(key, value)?;
                if p.id != id {
                    return Err(EntityError::Value {
                        key: key_text(),
                        why: format!("holds process {:?}", p.id),
                    });
                }
                (Entity::Process(Box::new(p)), at)
            }
        });
    }
    if let Some(zone) = key.strip_prefix(KEY_ZONE) {
        let zone = std::str::from_utf8(zone)
            .ok()
            .and_then(|z| z.parse().ok())
            .ok_or_else(|| EntityError::Key(key_text()))?;
        let (v, at): (ZoneValue, _) = match op {
            Op::Put => decode_value(key, value)?,
            Op::Delete => (
                ZoneValue {
                    last_spawn_ms: None,
                },
                None,
            ),
        };
        return Ok((
            Entity::LastSpawn {
                zone,
                last_spawn_ms: v.last_spawn_ms,
            },
            at,
        ));
    }
    match (key, op) {
        (KEY_TOKEN, Op::Put) => {
            let (t, at) = decode_value(key, value)?;
            Ok((Entity::NextToken(t), at))
        }
        (KEY_MASTER, Op::Put) => {
            let (m, at): (MasterValue, _) = decode_value(key, value)?;
            Ok((Entity::Master { http: m.http }, at))
        }
        _ => Err(EntityError::Key(key_text())),
    }
}

/// Loads an entity into a replica registry. [`Entity::Master`] is not
/// registry state and is ignored here.
pub fn load(registry: &mut Registry, entity: Entity) -> Result<(), RegistryError> {
    match entity {
        Entity::Process(p) => registry.put_process(*p),
        Entity::ProcessGone(id) => {
            registry.remove_process(&id);
            Ok(())
        }
        Entity::LastSpawn {
            zone,
            last_spawn_ms,
        } => {
            registry.set_last_spawn(zone, last_spawn_ms);
            Ok(())
        }
        Entity::NextToken(t) => {
            registry.set_next_token(t);
            Ok(())
        }
        Entity::Master { .. } => Ok(()),
    }
}

/// Settings of the embedded hs node (the `[hs]` config table, resolved).
#[derive(Clone, Debug)]
pub struct StandbyConfig {
    /// The hs node's configuration.
    pub node: hs::Config,
    /// Preferred role at start.
    pub prefer_master: bool,
}

/// The publishing side, and the gate's view of the node. Shared by the
/// balancer (as its [`crate::server::OpSink`]), the replica's `Apply` and the
/// role watcher.
#[derive(Default)]
pub struct HsSink {
    node: RwLock<Option<Arc<Node>>>,
    /// The local registry has a change the log lacks: restart the node.
    diverged: AtomicBool,
    /// The master's HTTP address, from its `m` record.
    master_http: Mutex<Option<SocketAddr>>,
    /// Records published.
    pub published: AtomicU64,
    /// Publishes that failed after the op was applied locally.
    pub publish_failed: AtomicU64,
    /// Replicated records that could not be applied.
    pub replica_errors: AtomicU64,
    /// Log position of the last record published (0: none yet).
    last_published: AtomicU64,
}

impl std::fmt::Debug for HsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsSink")
            .field("master_http", &*self.master_http.lock())
            .finish_non_exhaustive()
    }
}

impl HsSink {
    /// The master's HTTP address as far as this balancer knows (None while
    /// no master is known, e.g. during a failover).
    pub fn master_http(&self) -> Option<SocketAddr> {
        let role = self.node.read().as_ref().map(|n| n.role());
        match role {
            Some(Role::Slave) | Some(Role::Master) => *self.master_http.lock(),
            _ => None,
        }
    }

    /// Waits until the standby has applied everything this master published
    /// so far, up to `timeout`. True at once when no standby is connected
    /// (nothing to wait for: a lone master answers as before) or nothing was
    /// published. False on timeout: the change is applied here but a master
    /// death now could lose it.
    pub fn wait_standby(&self, timeout: std::time::Duration) -> bool {
        let pos = self.last_published.load(Ordering::Acquire);
        let Some(node) = self.node.read().clone() else {
            return false;
        };
        if pos == 0 || !node.stats().slave_connected {
            return true;
        }
        node.wait(pos, hs::Durability::Applied, timeout).is_ok()
    }

    /// Runs `f` with the node, if one is running.
    pub fn with_node<T>(&self, f: impl FnOnce(&Node) -> T) -> Option<T> {
        self.node.read().as_deref().map(f)
    }

    fn not_master(&self) -> NotMaster {
        NotMaster {
            master: self.master_http(),
        }
    }
}

impl crate::server::OpSink for HsSink {
    fn check(&self) -> Result<(), NotMaster> {
        match self.node.read().as_deref() {
            Some(n) if n.is_writable() => Ok(()),
            _ => Err(self.not_master()),
        }
    }

    fn applied(
        &self,
        op: &crate::registry::RegistryOp,
        out: &crate::registry::Outcome,
        registry: &Registry,
    ) -> Result<(), NotMaster> {
        let changes = Changes::of(op, out);
        if changes.is_empty() {
            return Ok(());
        }
        let guard = self.node.read();
        let Some(node) = guard.as_deref() else {
            self.diverged.store(true, Ordering::Release);
            return Err(self.not_master());
        };
        let at_ms = op.now_ms().unwrap_or_default();
        for (key, op, value) in records(&changes, registry, at_ms) {
            match node.publish(&key, op, &value) {
                Ok(pos) => {
                    self.last_published.fetch_max(pos, Ordering::AcqRel);
                }
                Err(e) => {
                    self.publish_failed.fetch_add(1, Ordering::Relaxed);
                    self.diverged.store(true, Ordering::Release);
                    warn!(error = %e, key = %String::from_utf8_lossy(&key), "publish failed after the op was applied; rebuilding from the log");
                    drop(guard);
                    return Err(self.not_master());
                }
            }
            self.published.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The replica side: hs calls it for every record on a standby, and on any
/// node when it rebuilds from its own log.
struct ReplicaApply {
    balancer: Weak<Balancer>,
    sink: Arc<HsSink>,
}

impl ReplicaApply {
    fn load(&self, key: &[u8], op: Op, value: &[u8]) {
        let Some(b) = self.balancer.upgrade() else {
            return;
        };
        let result = decode_at(key, op, value, b.now_ms()).and_then(|entity| {
            if let Entity::Master { http } = entity {
                *self.sink.master_http.lock() = Some(http);
                return Ok(());
            }
            b.load_replicated(entity)
                .map_err(|source| EntityError::Refused {
                    key: String::from_utf8_lossy(key).into_owned(),
                    source,
                })
        });
        if let Err(e) = result {
            self.sink.replica_errors.fetch_add(1, Ordering::Relaxed);
            error!(error = %e, "replicated record not applied");
        }
    }
}

impl Apply for ReplicaApply {
    fn apply(&mut self, rec: &RecordRef<'_>) {
        self.load(rec.key, rec.op, rec.value);
    }

    fn reset(&mut self) {
        if let Some(b) = self.balancer.upgrade() {
            b.clear_replica();
        }
        *self.sink.master_http.lock() = None;
    }

    fn restore(&mut self, key: &[u8], value: &[u8]) {
        self.load(key, Op::Put, value);
    }
}

/// Why the embedded node did not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the hs node in {dir}: {source}")]
pub struct StandbyError {
    /// Its directory.
    pub dir: PathBuf,
    /// hs's error.
    pub source: hs::NodeError,
}

fn start_node(
    cfg: &StandbyConfig,
    balancer: &Arc<Balancer>,
    sink: &Arc<HsSink>,
) -> Result<Node, StandbyError> {
    let role = if cfg.prefer_master {
        Role::Master
    } else {
        Role::Slave
    };
    let app = ReplicaApply {
        balancer: Arc::downgrade(balancer),
        sink: sink.clone(),
    };
    Node::start(cfg.node.clone(), role, app).map_err(|source| StandbyError {
        dir: cfg.node.dir.clone(),
        source,
    })
}

/// Follows the node's role, opens and closes the balancer's gate, and
/// restarts the node when the registry got ahead of the log.
pub struct RoleWatcher {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for RoleWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleWatcher").finish_non_exhaustive()
    }
}

impl RoleWatcher {
    /// Starts the node (replaying its log into the registry: this blocks for
    /// the replay) and the watcher thread.
    pub fn start(
        cfg: StandbyConfig,
        balancer: &Arc<Balancer>,
        sink: Arc<HsSink>,
    ) -> Result<RoleWatcher, StandbyError> {
        let node = start_node(&cfg, balancer, &sink)?;
        info!(dir = %cfg.node.dir.display(), listen = ?node.local_addr(), peer = ?cfg.node.peer, prefer_master = cfg.prefer_master, "hs node started");
        *sink.node.write() = Some(Arc::new(node));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s) = (Arc::downgrade(balancer), stop.clone());
        let thread = std::thread::Builder::new()
            .name("balancer-role".into())
            .spawn(move || watch(cfg, b, sink, s))
            .map_err(|e| StandbyError {
                dir: PathBuf::new(),
                source: hs::NodeError::Io {
                    op: "spawn the role watcher",
                    source: e,
                },
            })?;
        Ok(RoleWatcher {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the watcher and the node (joins their threads).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Asks the watcher to stop the node without waiting for it.
    pub fn stop_later(&self) {
        self.stop.store(true, Ordering::Release);
    }
}

impl Drop for RoleWatcher {
    fn drop(&mut self) {
        self.stop_later();
    }
}

fn log_event(e: &HsEvent) {
    match e {
        HsEvent::RoleChanged {
            role,
            epoch,
            reason,
        } => info!(?role, epoch, reason, "hs role changed"),
        HsEvent::RolledBack { from, to, records } => {
            warn!(
                from,
                to, records, "registry changes the new master never had were rolled back"
            )
        }
        HsEvent::Resynced { pos, keys } => {
            info!(pos, keys, "registry loaded from the master's snapshot")
        }
        HsEvent::MasterLost { reason } => warn!(reason, "lost the master balancer"),
        HsEvent::SlaveLost { reason, .. } => warn!(reason, "lost the standby balancer"),
        HsEvent::SlaveConnected { addr, .. } => info!(%addr, "standby balancer connected"),
        HsEvent::MasterConnected { addr, .. } => info!(%addr, "following the master balancer"),
        other => debug!(event = ?other, "hs event"),
    }
}

/// The watcher thread's loop: bounded by `stop`.
fn watch(cfg: StandbyConfig, balancer: Weak<Balancer>, sink: Arc<HsSink>, stop: Arc<AtomicBool>) {
    let mut serving = false;
    let mut backoff_ms = 50;
    while !stop.load(Ordering::Acquire) {
        let Some(b) = balancer.upgrade() else { break };
        let node = sink.node.read().clone();
        let Some(node) = node else {
            // The node is down (a restart failed): try again with backoff.
            std::thread::sleep(Duration::from_millis(backoff_ms));
            backoff_ms = (backoff_ms * 2).min(RESTART_BACKOFF_MAX_MS);
            match start_node(&cfg, &b, &sink) {
                Ok(n) => {
                    info!("hs node restarted");
                    backoff_ms = 50;
                    *sink.node.write() = Some(Arc::new(n));
                }
                Err(e) => error!(error = %e, "hs node restart failed; retrying"),
            }
            continue;
        };
        if let Some(e) = node.next_event(Duration::from_millis(ROLE_POLL_MS)) {
            log_event(&e);
        }
        if sink.diverged.swap(false, Ordering::AcqRel) {
            warn!("the registry has changes the log lacks; restarting the hs node to rebuild it from the log");
            serving = false;
            b.set_master(false, None);
            sink.node.write().take();
            // The last reference: dropping it joins the node's threads.
            drop(node);
            continue;
        }
        let master_now = node.role() == Role::Master && node.is_writable();
        if master_now && !serving {
            // Name this balancer as master before any op of its reign.
            let (key, op, value) = master_record(b.advertised());
            match node.publish(&key, op, &value) {
                Ok(_) => {
                    *sink.master_http.lock() = Some(b.advertised());
                    serving = true;
                    b.set_master(true, Some(node.stats().epoch));
                }
                Err(e) => debug!(error = %e, "not writable yet"),
            }
        } else if !master_now && serving {
            serving = false;
            b.set_master(false, Some(node.stats().epoch));
        }
    }
    if let Some(b) = balancer.upgrade() {
        b.set_master(false, None);
    }
    let node = sink.node.write().take();
    drop(node);
    debug!("role watcher stopped");
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::registry::{Outcome, RegistryLimits, RegistryOp, SpawnSpec, StatusReport, ZoneSpec};

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn registry() -> Registry {
        let zone = |id, spawn: bool| ZoneSpec {
            id,
            name: format!("z{id}"),
            version: "v1".into(),
            process_online_max: 3,
            spawn: spawn.then_some(SpawnSpec {
                host: LOCAL,
                port_min: 7000,
                port_max: 7003,
            }),
        };
        Registry::new(
            vec![zone(1, true), zone(2, false)],
            RegistryLimits::default(),
        )
    }

    /// xorshift64*: deterministic from the seed, no dependency.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
        }
    }

    /// Ops over few ids, ports and zones, so endpoints collide, processes
    /// move, spawns get replaced, reservations fill zones and expire.
    fn random_op(rng: &mut Rng, now_ms: &mut Millis, next_token: u64) -> RegistryOp {
        *now_ms += rng.below(1500);
        let ids = ["a", "b", "c", "d", "e", "spawn-1-7000", "spawn-1-7001"];
        let id = ids[rng.below(ids.len() as u64) as usize].to_string();
        let now_ms = *now_ms;
        match rng.below(12) {
            0..=3 => RegistryOp::Push {
                now_ms,
                report: StatusReport {
                    id,
                    zone: 1 + rng.below(2) as ZoneId,
                    host: LOCAL,
                    port: 7000 + rng.below(5) as u16,
                    online: rng.below(4) as u32,
                    used_memory_mb: rng.below(100),
                    version: "v1".into(),
                    pid: Some(rng.below(1000) as u32),
                    claimed: (0..rng.below(3))
                        .map(|_| rng.below(next_token + 1))
                        .collect(),
                },
            },
            4 | 5 => RegistryOp::Pick {
                now_ms,
                zone: 1 + rng.below(2) as ZoneId,
            },
            6 => RegistryOp::Tick {
                now_ms: now_ms + rng.below(8000),
            },
            7 => RegistryOp::ProbeFailed { now_ms, id },
            8 => RegistryOp::ProbeOk { now_ms, id },
            9 => match rng.below(2) {
                0 => RegistryOp::Drain { now_ms, id },
                _ => RegistryOp::Undrain { now_ms, id },
            },
            10 => match rng.below(3) {
                0 => RegistryOp::SpawnFailed { now_ms, zone: 1 },
                _ => RegistryOp::SpawnStarted {
                    now_ms,
                    zone: 1,
                    port: 7000 + rng.below(4) as u16,
                    pid: rng.below(1000) as u32,
                },
            },
            _ => RegistryOp::Forget { id },
        }
    }

    /// A registry rebuilt from "latest value per key", as an hs snapshot restores it.
    fn from_snapshot(kv: &BTreeMap<Vec<u8>, Vec<u8>>) -> Registry {
        let mut r = registry();
        for (k, v) in kv {
            let e = decode(k, Op::Put, v).expect("snapshot value decodes");
            load(&mut r, e).expect("snapshot value loads");
        }
        r
    }

    #[test]
    fn replicated_entities_rebuild_the_master_registry_for_random_ops() {
        let mut applied_ops = 0;
        for seed in 1..=150u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut master = registry();
            let mut replica = registry();
            let mut kv: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            let mut now_ms = 1_000_000;
            for step in 0..250 {
                let op = random_op(&mut rng, &mut now_ms, master.next_token());
                let Ok(out): Result<Outcome, _> = master.apply(&op) else {
                    continue;
                };
                applied_ops += 1;
                let recs = records(
                    &Changes::of(&op, &out),
                    &master,
                    op.now_ms().unwrap_or(now_ms),
                );
                if let Some(picked) = &out.picked {
                    // A master that dies after any prefix of a pick's
                    // records leaves a standby that never reuses its token.
                    for k in 1..recs.len() {
                        let mut cut = replica.clone();
                        for (key, hs_op, value) in &recs[..k] {
                            load(&mut cut, decode(key, *hs_op, value).unwrap()).unwrap();
                        }
                        assert!(
                            cut.next_token() > picked.reservation,
                            "seed {seed} step {step}: after {k} of {} records the next token is {}, token {} was handed out",
                            recs.len(),
                            cut.next_token(),
                            picked.reservation
                        );
                    }
                }
                for (key, hs_op, value) in recs {
                    let e = decode(&key, hs_op, &value).expect("record decodes");
                    load(&mut replica, e).expect("record loads");
                    match hs_op {
                        Op::Put => kv.insert(key, value),
                        Op::Delete => kv.remove(&key),
                    };
                }
                assert_eq!(
                    replica, master,
                    "seed {seed} step {step}: replica diverged after {op:?}"
                );
                if step % 50 == 49 {
                    assert_eq!(
                        from_snapshot(&kv),
                        master,
                        "seed {seed} step {step}: snapshot differs"
                    );
                }
            }
            assert_eq!(
                from_snapshot(&kv),
                master,
                "seed {seed}: final snapshot differs"
            );
        }
        assert!(
            applied_ops > 10_000,
            "the generator makes mostly valid ops: {applied_ops}"
        );
    }

    fn report(id: &str, port: u16) -> StatusReport {
        StatusReport {
            id: id.into(),
            zone: 1,
            host: LOCAL,
            port,
            online: 0,
            used_memory_mb: 0,
            version: String::new(),
            pid: None,
            claimed: vec![],
        }
    }

    /// The master dies after publishing a pick's first record: the standby
    /// that promotes with only that record must not hand the same token out
    /// again (a game server would take one player's token for another's).
    #[test]
    fn a_failover_inside_a_pick_never_hands_its_token_out_again() {
        let mut master = registry();
        let mut standby = registry();
        let push = RegistryOp::Push {
            now_ms: 1,
            report: report("a", 7000),
        };
        let out = master.apply(&push).unwrap();
        for (key, hs_op, value) in records(&Changes::of(&push, &out), &master, 1) {
            load(&mut standby, decode(&key, hs_op, &value).unwrap()).unwrap();
        }
        let pick = RegistryOp::Pick { now_ms: 2, zone: 1 };
        let out = master.apply(&pick).unwrap();
        let handed_out = out.picked.as_ref().unwrap().reservation;
        let recs = records(&Changes::of(&pick, &out), &master, 2);
        // Only the first record reaches the standby before the master dies.
        let (key, hs_op, value) = &recs[0];
        load(&mut standby, decode(key, *hs_op, value).unwrap()).unwrap();
        // The standby promotes and serves the next pick.
        let again = standby
            .apply(&RegistryOp::Pick { now_ms: 3, zone: 1 })
            .unwrap();
        assert_ne!(
            again.picked.unwrap().reservation,
            handed_out,
            "token {handed_out} handed out twice across a failover"
        );
    }

    /// The master answers a pick (async: in its log only) and dies before any
    /// of the pick's records reach the standby. The standby promotes at a newer
    /// epoch and must not hand the same token out again: it starts its reign's
    /// tokens above every token of an older epoch.
    #[test]
    fn a_pick_the_standby_never_received_is_not_reissued_after_failover() {
        let mut master = registry();
        let mut standby = registry();
        master.begin_reign(1);
        let push = RegistryOp::Push {
            now_ms: 1,
            report: report("a", 7000),
        };
        let out = master.apply(&push).unwrap();
        for (key, hs_op, value) in records(&Changes::of(&push, &out), &master, 1) {
            load(&mut standby, decode(&key, hs_op, &value).unwrap()).unwrap();
        }
        let out = master
            .apply(&RegistryOp::Pick { now_ms: 2, zone: 1 })
            .unwrap();
        let handed_out = out.picked.unwrap().reservation;
        // None of the pick's records reaches the standby; it promotes at epoch 2.
        standby.begin_reign(2);
        let again = standby
            .apply(&RegistryOp::Pick { now_ms: 3, zone: 1 })
            .unwrap()
            .picked
            .unwrap()
            .reservation;
        assert!(
            again > handed_out,
            "token {again} after failover, the lost pick had {handed_out}"
        );
        assert!(again < 1 << 53, "token {again} not exact in JSON");
    }

    /// Master and standby clocks disagree (the standby's wall clock is an
    /// hour ahead, and each process's monotonic clock has its own origin):
    /// a reservation and a push the master made keep their remaining time
    /// on the standby that takes over, and a wall-clock step there changes
    /// nothing.
    #[test]
    fn replicated_deadlines_keep_their_remaining_time_on_a_skewed_standby() {
        use crate::server::{Clock, ManualTime};
        let master_time = Arc::new(ManualTime::new(5_000, 1_700_000_000_000));
        let standby_time = Arc::new(ManualTime::new(987_654, 1_700_000_000_000 + 3_600_000));
        let master_clock = Clock::with_source(master_time.clone());
        let standby_clock = Clock::with_source(standby_time.clone());
        let limits = RegistryLimits::default();
        let mut master = registry();
        let mut standby = registry();
        let publish = |master: &mut Registry, op: RegistryOp, standby: &mut Registry| {
            let out = master.apply(&op).unwrap();
            let at_ms = op.now_ms().unwrap();
            for (key, hs_op, value) in records(&Changes::of(&op, &out), master, at_ms) {
                let e = decode_at(&key, hs_op, &value, standby_clock.now_ms()).unwrap();
                load(standby, e).unwrap();
            }
        };
        let now = master_clock.now_ms();
        publish(
            &mut master,
            RegistryOp::Push {
                now_ms: now,
                report: report("a", 7000),
            },
            &mut standby,
        );
        publish(
            &mut master,
            RegistryOp::Pick {
                now_ms: now,
                zone: 1,
            },
            &mut standby,
        );
        // The master dies; the standby's wall clock is stepped back an hour
        // meanwhile (NTP corrects it). Two seconds pass.
        standby_time.step_wall(-3_600_000);
        master_time.advance(2_000);
        standby_time.advance(2_000);
        let out = standby.apply(&RegistryOp::Tick {
            now_ms: standby_clock.now_ms(),
        });
        let out = out.unwrap();
        assert_eq!(
            out.events,
            vec![],
            "nothing is due 2 s after the push and the pick"
        );
        let a = standby.process("a").unwrap();
        assert_eq!(a.status, crate::registry::Status::Running);
        assert_eq!(a.reservations.len(), 1, "the reservation holds for its ttl");
        // Once the ttl has passed on the standby's own clock, it expires.
        standby_time.advance(limits.reservation_ttl_ms - 2_000);
        let out = standby
            .apply(&RegistryOp::Tick {
                now_ms: standby_clock.now_ms(),
            })
            .unwrap();
        assert!(
            out.events
                .contains(&crate::registry::Event::ReservationsExpired {
                    id: "a".into(),
                    count: 1
                }),
            "{:?}",
            out.events
        );
    }

    #[test]
    fn bad_records_are_refused() {
        assert!(matches!(
            decode(b"x/1", Op::Put, b"\x01{}"),
            Err(EntityError::Key(_))
        ));
        assert!(matches!(
            decode(b"t", Op::Put, b"{}"),
            Err(EntityError::Value { .. })
        ));
        assert!(matches!(
            decode(b"t", Op::Put, b"\x02 1"),
            Err(EntityError::Value { .. })
        ));
        assert!(matches!(
            decode(b"z/nope", Op::Put, b"\x01{}"),
            Err(EntityError::Key(_))
        ));
        let big = vec![1u8; VALUE_BYTES_MAX + 1];
        assert!(matches!(
            decode(b"p/a", Op::Put, &big),
            Err(EntityError::Value { .. })
        ));
        // A process record under another process's key.
        let mut r = registry();
        let op = RegistryOp::Push {
            now_ms: 1,
            report: StatusReport {
                id: "a".into(),
                zone: 1,
                host: LOCAL,
                port: 7000,
                online: 0,
                used_memory_mb: 0,
                version: String::new(),
                pid: None,
                claimed: vec![],
            },
        };
        let out = r.apply(&op).unwrap();
        let (_, _, value) = records(&Changes::of(&op, &out), &r, 1).remove(0);
        assert!(matches!(
            decode(b"p/b", Op::Put, &value),
            Err(EntityError::Value { .. })
        ));
        assert_eq!(
            decode(b"p/a", Op::Delete, b"").unwrap(),
            Entity::ProcessGone("a".into())
        );
        // A process of a zone this balancer's config lacks is refused, not half-loaded.
        let Entity::Process(mut p) = decode(b"p/a", Op::Put, &value).unwrap() else {
            panic!("a process")
        };
        p.zone = 9;
        let before = r.clone();
        assert!(load(&mut r, Entity::Process(p)).is_err());
        assert_eq!(r, before);
        let (k, o, v) = master_record("127.0.0.1:7700".parse().unwrap());
        assert_eq!(
            decode(&k, o, &v).unwrap(),
            Entity::Master {
                http: "127.0.0.1:7700".parse().unwrap()
            }
        );
    }
}
