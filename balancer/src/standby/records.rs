//! The entity records: one hs key per entity, values stamped with the
//! master's clock, decoded onto the replica's clock, loaded into a registry.

use std::net::SocketAddr;

use hs::Op;
use serde::{Deserialize, Serialize};

use crate::registry::{Changes, Millis, Process, Registry, RegistryError, ZoneId};

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
