//! How rooms live in hs.
//!
//! hs compacts old segments into "the latest value per key", so the keys are
//! chosen for that to be the state:
//!
//! ```text
//! key "r" | room u32 BE | "c"                 checkpoint: postcard(RoomState) at its `index`
//! key "r" | room u32 BE | "d" | slot u16 BE   delta: postcard(Delta), slot = index % DELTA_SLOTS
//! ```
//!
//! Every request that changes a room is one [`Delta`] record (its events and
//! the request's `(player, session, seq)` mark, so effect and deduplication are one
//! atomic write). Before a delta whose index would be `CHECKPOINT_EVERY` past
//! the last checkpoint, the master publishes a checkpoint of the room. The
//! deltas after the newest checkpoint always fit in the ring (`DELTA_SLOTS` >
//! `CHECKPOINT_EVERY`), so after compaction the latest values are a checkpoint
//! plus the deltas after it: exactly the room.
//!
//! A standby that receives a checkpoint for a room it holds at the same index
//! compares it byte for byte with its own state: a difference is a fork,
//! counted in [`Rooms::divergences`] and logged as an error; the standby adopts
//! the master's state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{RoomConfig, RoomState};
use crate::proto::msg::{decode, encode, RoomEvent};

/// Deltas between checkpoints of a room.
pub const CHECKPOINT_EVERY: u64 = 64;
/// Ring slots for deltas; must exceed `CHECKPOINT_EVERY`.
pub const DELTA_SLOTS: u64 = 128;
const _: () = assert!(DELTA_SLOTS > CHECKPOINT_EVERY);

/// One request's (or one timer's) change to one room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// One more than the room's index before it.
    pub index: u64,
    /// The sequence number of `events[0]`.
    pub first_seq: u64,
    pub events: Vec<RoomEvent>,
    /// The request it answers. None for timer events.
    pub mark: Option<Mark>,
}

/// Names a request: a player's session and its sequence number there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub player: u64,
    pub session: u64,
    pub seq: u32,
    /// The session's center login number (0 without a center).
    pub login: u64,
}

/// What an hs key names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Checkpoint(u32),
    Delta(u32, u16),
}

impl Key {
    pub fn encode(self) -> Vec<u8> {
        let mut k = vec![b'r'];
        match self {
            Key::Checkpoint(r) => {
                k.extend_from_slice(&r.to_be_bytes());
                k.push(b'c');
            }
            Key::Delta(r, slot) => {
                k.extend_from_slice(&r.to_be_bytes());
                k.push(b'd');
                k.extend_from_slice(&slot.to_be_bytes());
            }
        }
        k
    }

    pub fn parse(k: &[u8]) -> Option<Key> {
        match k {
            [b'r', a, b, c, d, b'c'] => Some(Key::Checkpoint(u32::from_be_bytes([*a, *b, *c, *d]))),
            [b'r', a, b, c, d, b'd', s0, s1] => Some(Key::Delta(
                u32::from_be_bytes([*a, *b, *c, *d]),
                u16::from_be_bytes([*s0, *s1]),
            )),
            _ => None,
        }
    }

    pub fn delta(room: u32, index: u64) -> Key {
        Key::Delta(room, (index % DELTA_SLOTS) as u16)
    }
}

/// Why a record could not be applied. Each is logged as an error and counted:
/// the standby's state can no longer be trusted for that room.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("record key {0:02x?} is not a room key")]
    BadKey(Vec<u8>),
    #[error("record for room {room} does not decode: {err}")]
    Decode { room: u32, err: postcard::Error },
    #[error("delta for room {0}, which has no checkpoint")]
    NoRoom(u32),
    #[error("room {room}: delta {got} after index {have} (sequence {seq_got} after {seq_have})")]
    OutOfOrder {
        room: u32,
        have: u64,
        got: u64,
        seq_have: u64,
        seq_got: u64,
    },
}

impl RoomState {
    /// Applies a delta (master after publishing, standby from hs).
    pub fn apply_delta(&mut self, d: &Delta, now: Instant) {
        for e in &d.events {
            self.apply(e, now);
        }
        self.index = d.index;
        if let Some(Mark {
            player,
            session,
            seq: req,
            login,
        }) = d.mark
        {
            let seq = self.seq;
            if let Some(m) = self.members.get_mut(&player) {
                (m.last_session, m.last_req, m.last_seq) = (session, req, seq);
                m.login = m.login.max(login);
            } else if let Some(e) = self.departed.iter_mut().rev().find(|e| e.0 == player) {
                (e.1, e.2, e.3, e.4) = (session, req, seq, e.4.max(login));
            } else {
                self.departed.push_back((player, session, req, seq, login));
                if self.departed.len() > super::DEPARTED_MAX {
                    self.departed.pop_front();
                }
            }
        }
    }

    fn check_next(&self, d: &Delta) -> Result<(), ReplicaError> {
        if d.index != self.index + 1 || d.first_seq != self.seq + 1 {
            return Err(ReplicaError::OutOfOrder {
                room: self.cfg.id,
                have: self.index,
                got: d.index,
                seq_have: self.seq,
                seq_got: d.first_seq,
            });
        }
        Ok(())
    }
}

/// One room's keys from an hs snapshot: its checkpoint and its deltas.
type Restoring = (Option<RoomState>, Vec<Delta>);

/// Every room of a server, shared by the room server and hs's `Apply`.
#[derive(Default)]
pub struct Rooms {
    rooms: BTreeMap<u32, RoomState>,
    /// Index of each room's newest checkpoint.
    checkpoint: BTreeMap<u32, u64>,
    /// Keys from an hs snapshot, folded into rooms on the next access.
    restoring: Option<BTreeMap<u32, Restoring>>,
    /// Checkpoints that differed from this node's own state.
    pub divergences: u64,
    /// Records that could not be applied.
    pub errors: u64,
}

/// What the master writes for one change: each record's key and value, in order.
pub type Writes = Vec<(Vec<u8>, Vec<u8>)>;

impl Rooms {
    /// The rooms, after folding any pending snapshot.
    pub fn get(&mut self) -> &mut BTreeMap<u32, RoomState> {
        self.finish_restore(Instant::now());
        &mut self.rooms
    }

    /// The records that create rooms this server should hold and does not.
    pub fn create_missing(&mut self, cfgs: &[RoomConfig]) -> Vec<(u32, Writes)> {
        self.finish_restore(Instant::now());
        cfgs.iter()
            .filter(|c| !self.rooms.contains_key(&c.id))
            .map(|c| {
                let st = RoomState::new(c.clone());
                (c.id, vec![(Key::Checkpoint(c.id).encode(), encode(&st))])
            })
            .collect()
    }

    /// The records for `events` on `room` (a checkpoint first when one is due).
    /// Nothing changes until [`Self::commit`].
    pub fn prepare(&mut self, room: u32, events: Vec<RoomEvent>, mark: Option<Mark>) -> Writes {
        self.finish_restore(Instant::now());
        let st = self
            .rooms
            .get(&room)
            .expect("prepare for a room this server holds");
        let mut w = Vec::with_capacity(2);
        let cp = self.checkpoint.get(&room).copied().unwrap_or(0);
        if st.index - cp >= CHECKPOINT_EVERY {
            w.push((Key::Checkpoint(room).encode(), encode(st)));
        }
        let d = Delta {
            index: st.index + 1,
            first_seq: st.seq + 1,
            events,
            mark,
        };
        w.push((Key::delta(room, d.index).encode(), encode(&d)));
        w
    }

    /// Applies what the master just published (the records of [`Self::prepare`]
    /// or [`Self::create_missing`]).
    pub fn commit(&mut self, writes: &Writes, now: Instant) {
        for (k, v) in writes {
            if let Err(e) = self.apply_record(k, v, now) {
                panic!("the master cannot apply its own record: {e}");
            }
        }
    }

    /// Applies one hs record (the standby's path, and the master's replay).
    pub fn apply_record(
        &mut self,
        key: &[u8],
        value: &[u8],
        now: Instant,
    ) -> Result<(), ReplicaError> {
        self.finish_restore(now);
        match Key::parse(key).ok_or_else(|| ReplicaError::BadKey(key.to_vec()))? {
            Key::Checkpoint(room) => {
                let mut st: RoomState =
                    decode(value).map_err(|err| ReplicaError::Decode { room, err })?;
                if let Some(mine) = self.rooms.get(&room) {
                    if mine.index == st.index && encode(mine) != value {
                        self.divergences += 1;
                        tracing::error!(room, index = st.index, "standby state differs from the master's checkpoint; adopting the master's");
                    }
                }
                st.rebuild(now);
                // Deadlines of running games continue from this node's own view when it had one.
                if let Some(mine) = self.rooms.get(&room) {
                    for (t, m) in st.tables.iter_mut().zip(&mine.tables) {
                        if let (Some(g), Some(mg)) = (&mut t.game, &m.game) {
                            if g.game_no == mg.game_no
                                && g.moves.len() == mg.moves.len()
                                && g.running()
                            {
                                g.deadline = mg.deadline;
                            }
                        }
                    }
                }
                self.checkpoint.insert(room, st.index);
                self.rooms.insert(room, st);
            }
            Key::Delta(room, _) => {
                let d: Delta = decode(value).map_err(|err| ReplicaError::Decode { room, err })?;
                let st = self
                    .rooms
                    .get_mut(&room)
                    .ok_or(ReplicaError::NoRoom(room))?;
                st.check_next(&d)?;
                st.apply_delta(&d, now);
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.rooms.clear();
        self.checkpoint.clear();
        self.restoring = Some(BTreeMap::new());
    }

    fn restore(&mut self, key: &[u8], value: &[u8]) -> Result<(), ReplicaError> {
        let r = self.restoring.get_or_insert_with(BTreeMap::new);
        match Key::parse(key).ok_or_else(|| ReplicaError::BadKey(key.to_vec()))? {
            Key::Checkpoint(room) => {
                let st: RoomState =
                    decode(value).map_err(|err| ReplicaError::Decode { room, err })?;
                r.entry(room).or_default().0 = Some(st);
            }
            Key::Delta(room, _) => {
                let d: Delta = decode(value).map_err(|err| ReplicaError::Decode { room, err })?;
                r.entry(room).or_default().1.push(d);
            }
        }
        Ok(())
    }

    /// Folds a snapshot's keys: each room's checkpoint, then its deltas after it.
    fn finish_restore(&mut self, now: Instant) {
        let Some(pending) = self.restoring.take() else {
            return;
        };
        for (room, (cp, mut deltas)) in pending {
            let Some(mut st) = cp else {
                self.errors += 1;
                tracing::error!(
                    room,
                    "snapshot holds deltas but no checkpoint for room; dropping it"
                );
                continue;
            };
            st.rebuild(now);
            self.checkpoint.insert(room, st.index);
            deltas.retain(|d| d.index > st.index);
            deltas.sort_by_key(|d| d.index);
            for d in &deltas {
                if let Err(e) = st.check_next(d) {
                    self.errors += 1;
                    tracing::error!(room, error = %e, "snapshot deltas are not contiguous; room kept at its last good index");
                    break;
                }
                st.apply_delta(d, now);
            }
            self.rooms.insert(room, st);
        }
    }
}

/// The [`hs::Apply`] of a room server: every record goes into the shared [`Rooms`].
pub struct Replica(pub Arc<Mutex<Rooms>>);

impl hs::Apply for Replica {
    fn apply(&mut self, rec: &hs::RecordRef<'_>) {
        let mut rooms = self.0.lock();
        if rec.op != hs::Op::Put {
            return;
        }
        if let Err(e) = rooms.apply_record(rec.key, rec.value, Instant::now()) {
            rooms.errors += 1;
            tracing::error!(pos = rec.pos, error = %e, "room record not applied");
        }
    }

    fn reset(&mut self) {
        self.0.lock().reset();
    }

    fn restore(&mut self, key: &[u8], value: &[u8]) {
        let mut rooms = self.0.lock();
        if let Err(e) = rooms.restore(key, value) {
            rooms.errors += 1;
            tracing::error!(error = %e, "snapshot key not restored");
        }
    }
}
