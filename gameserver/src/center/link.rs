//! The gateway ↔ center link: the same [`crate::proto::frame`] format, kinds
//! `ToCenter` (66) and `FromCenter` (67), postcard payloads (variants and
//! fields append-only, like every payload of this crate).
//!
//! One TCP connection per gateway, to whichever node of the center pair is
//! master. The center answers a change (Admitted, Kick, a Refused that
//! follows a blacklist) only once its record is on the standby (hs
//! `Received`), and sends everything on a link in the order it decided it.
//!
//! ```text
//! gateway                                       center (master)
//!   Hello{gateway, zone, addr, version} ──────►
//!                             ◄────────────────  Welcome{node} | NotMaster{master} (then closed)
//!   Sync{admitted, waiting, channels} ────────►  reconcile: unknown sessions are kicked,
//!                                                missing ones logged out
//!   Login{player, session, ...} ──────────────►  (re-sent until Admitted or Refused)
//!                             ◄────────────────  Queued{position, of}* then Admitted{login}
//!                                                | Refused{fail} (blacklisted, queue full)
//!                             ◄────────────────  Kick{player, session, fail}  (to the old
//!                                                gateway, before the new one's Admitted)
//!   Logout{player, session} ──────────────────►
//!   Subscribe/Unsubscribe{channel} ───────────►  (the gateway's first / last subscriber)
//!   Say{from, session, seq, to, text} ────────►
//!                             ◄────────────────  Deliver{targets, notice} (to each gateway concerned)
//!                             ◄────────────────  Said{session, seq, reply}
//! ```
//!
//! A gateway that says nothing within the center's `hello_timeout_ms` is
//! dropped; a frame that is not a `ToCenter`, or whose payload does not
//! decode, closes the link with a log line.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::proto::msg::{Fail, Notice, SayTo};

/// Center link protocol version.
pub const CENTER_LINK_VERSION: u32 = 1;

/// Largest center link payload, bytes: a `Sync` of a full gateway
/// (100,000 sessions of ~30 bytes) fits.
pub const CENTER_FRAME_BYTES_MAX: usize = 8 << 20;

/// A player asking to be admitted (after the gateway checked the token).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    pub player: u64,
    /// The gateway's session id (unique on that gateway).
    pub session: u64,
    pub name: String,
    /// Account kind from the token (0 guest).
    pub kind: u8,
    /// The connection's source address (blacklists name addresses).
    pub addr: IpAddr,
}

/// A session a gateway holds, admitted under `login`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub player: u64,
    pub session: u64,
    pub login: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToCenter {
    /// The first message: who the gateway is. `gateway` is random per
    /// gateway process; `addr` is where its clients connect.
    Hello {
        gateway: u64,
        zone: u32,
        addr: String,
        version: u32,
    },
    Login(Login),
    /// The session ended (admitted or still waiting in the queue).
    Logout {
        player: u64,
        session: u64,
    },
    /// After every Welcome: what the gateway holds now, so the center drops
    /// what ended while the link was down and kicks what it does not know.
    Sync {
        admitted: Vec<Held>,
        /// (player, session) of sessions waiting in the login queue.
        waiting: Vec<(u64, u64)>,
        /// Channels with at least one subscriber on this gateway.
        channels: Vec<u32>,
    },
    /// The gateway has a first subscriber of `channel`.
    Subscribe {
        channel: u32,
    },
    /// The gateway's last subscriber of `channel` left.
    Unsubscribe {
        channel: u32,
    },
    /// A player's message; answered by `Said` with the same (session, seq).
    Say {
        from: u64,
        name: String,
        session: u64,
        seq: u32,
        to: SayTo,
        text: String,
    },
    /// Liveness probe of a silent link; answered by `Pong`.
    Ping,
}

/// Who on a gateway gets a [`Notice`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Targets {
    /// Every admitted session of the gateway.
    All,
    /// The gateway's subscribers of the channel.
    Channel(u32),
    /// These players, where the gateway holds them.
    Players(Vec<u64>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromCenter {
    /// The answer to Hello: this node is master and takes the link.
    Welcome { node: u64 },
    /// This node is not master; `master` is the other node's link address.
    NotMaster { master: Option<String> },
    /// The session may play: Welcome the client. `login` only grows per
    /// player (globally, in fact) and goes on every room request.
    Admitted {
        player: u64,
        session: u64,
        login: u64,
    },
    /// The session waits in the zone's login queue (1 = next).
    Queued {
        player: u64,
        session: u64,
        position: u32,
        of: u32,
    },
    /// The login is refused (blacklisted, queue full): Bye with `fail`.
    Refused {
        player: u64,
        session: u64,
        fail: Fail,
    },
    /// Close this session with `fail` (a newer login, an operator's kick,
    /// a blacklist, a session the center does not know).
    Kick {
        player: u64,
        session: u64,
        fail: Fail,
    },
    /// Push `notice` to `targets` on this gateway.
    Deliver { targets: Targets, notice: Notice },
    /// The answer to a `Say`.
    Said {
        session: u64,
        seq: u32,
        reply: Result<(), Fail>,
    },
    /// The answer to `Ping`.
    Pong,
}
