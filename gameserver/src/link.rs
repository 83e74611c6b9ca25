//! The gateway ↔ room-server link: the same [`crate::proto::frame`] format,
//! kinds `ToRoom` (64) and `FromRoom` (65), postcard payloads.
//!
//! One TCP connection per (gateway, room-server pair), held by the gateway to
//! whichever node of the pair is master. Order on the link is the room
//! server's release order: a reply or push leaves only once the records
//! behind it are on the standby (hs `Received`).
//!
//! ```text
//! gateway                                   room server (master)
//!   Hello{gateway, version} ───────────────►
//!                           ◄─────────────── Welcome{node, rooms}  | NotMaster{master}
//!   Subscribe{room, after} ────────────────► (resume: events > after, or a snapshot)
//!   Request{player, seq, name, req} ───────► plan → publish → Received →
//!                           ◄─────────────── Events{room, first_seq, events}
//!                           ◄─────────────── Reply{player, seq, reply}
//! ```
//!
//! A node that is not (or stops being) master answers `NotMaster` and closes;
//! the gateway tries the other node. After reconnecting, the gateway sends a
//! `Subscribe` per room it has players in, then re-sends every request not yet
//! answered (at most one per player): the room server answers a request it
//! already did from its replicated state instead of doing it twice.

use serde::{Deserialize, Serialize};

use crate::proto::msg::{Reply, Request, RoomEvent, RoomInfo, RoomSnapshot};

/// Link protocol version.
pub const LINK_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToRoom {
    Hello {
        gateway: u64,
        version: u32,
    },
    /// A player's request. `name` is the player's name (from the token),
    /// needed when the request enters a room.
    Request {
        player: u64,
        /// The player's session, unique across gateways: with `seq` it
        /// names the request (a reconnected player starts a new session,
        /// whose `seq` starts again).
        session: u64,
        seq: u32,
        name: String,
        req: Request,
        /// The center's login number of this session (0 without a center):
        /// it only grows for a player, so a room refuses a request carrying
        /// a lower one than it has seen (the old session of a takeover).
        login: u64,
    },
    /// Send this link the room's events after `after` (exclusive), then every
    /// new one; a snapshot when the room no longer holds them all.
    Subscribe {
        room: u32,
        after: u64,
    },
    /// No more events of this room on this link.
    Unsubscribe {
        room: u32,
    },
    /// The rooms with their online counts.
    Rooms,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromRoom {
    Welcome {
        node: u64,
        rooms: Vec<RoomInfo>,
    },
    /// This node does not take requests; `master` is where it thinks the
    /// master's link port is, if it knows.
    NotMaster {
        master: Option<String>,
    },
    Reply {
        player: u64,
        seq: u32,
        reply: Reply,
    },
    /// Consecutive events of one room, the first numbered `first_seq`.
    Events {
        room: u32,
        first_seq: u64,
        events: Vec<RoomEvent>,
    },
    /// The room as of `snapshot.seq`: what a subscriber gets when the events
    /// it asked for are gone. Events continue from `seq + 1`.
    Snapshot(RoomSnapshot),
    Rooms(Vec<RoomInfo>),
}

/// Bytes one write of a server-side link gathers at most from its queue.
pub const LINK_WRITE_COALESCE_BYTES_MAX: usize = 256 << 10;

/// The writer task of a server-side link (room or center server): writes
/// what the queue holds, coalescing queued frames into one write, until the
/// queue's senders are gone (then shuts the socket down) or a write fails.
pub fn spawn_link_writer(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
) -> tokio::task::JoinHandle<()> {
    use tokio::io::AsyncWriteExt;
    tokio::spawn(async move {
        let mut buf = Vec::with_capacity(64 << 10);
        while let Some(b) = rx.recv().await {
            buf.clear();
            buf.extend_from_slice(&b);
            while buf.len() < LINK_WRITE_COALESCE_BYTES_MAX {
                match rx.try_recv() {
                    Ok(b) => buf.extend_from_slice(&b),
                    Err(_) => break,
                }
            }
            if wr.write_all(&buf).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    })
}
