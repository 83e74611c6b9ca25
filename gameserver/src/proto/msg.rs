//! Payloads of the client frames, encoded with postcard (serde; varint
//! integers, length-prefixed strings and vectors, enums as a varint variant
//! index, no field names). The order of variants and fields is the format:
//! append, never reorder. `gameserver/web/` mirrors these types in JS.

use serde::{Deserialize, Serialize};

/// Payload limits, checked by the server on what a client sends.
pub const CHAT_TEXT_BYTES_MAX: usize = 512;
/// Longest token accepted in [`Auth`].
pub const TOKEN_BYTES_MAX: usize = 1024;
/// Longest player name carried in a token.
pub const NAME_BYTES_MAX: usize = 32;

/// The first frame of a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auth {
    /// A signed token ([`crate::token`]).
    pub token: String,
    /// The client's protocol version ([`PROTOCOL_VERSION`] for this build).
    pub client_version: u32,
    /// What the client understands beyond version 1 ([`FEATURE_DEFLATE`],
    /// [`FEATURE_RTT`]); appended: an Auth without it reads as 0, so an
    /// older client never gets what it cannot read.
    pub features: u32,
}

/// [`Auth::features`]: the client inflates frames flagged compressed.
pub const FEATURE_DEFLATE: u32 = 1;
/// [`Auth::features`]: the client reads [`Pong::rtt_ms`] and answers the
/// gateway's Ping frames with a Pong (the gateway's round-trip probe).
pub const FEATURE_RTT: u32 = 2;
/// Every feature this build has.
pub const FEATURES_ALL: u32 = FEATURE_DEFLATE | FEATURE_RTT;

/// Auth as version-1 clients send it (no `features`).
#[derive(Deserialize)]
struct AuthV1 {
    token: String,
    client_version: u32,
}

impl Auth {
    /// Decodes an Auth with or without the appended `features`.
    pub fn decode(b: &[u8]) -> Result<Auth, postcard::Error> {
        let (v1, rest): (AuthV1, &[u8]) = postcard::take_from_bytes(b)?;
        let features = if rest.is_empty() { 0 } else { decode(rest)? };
        Ok(Auth {
            token: v1.token,
            client_version: v1.client_version,
            features,
        })
    }
}

/// This build's protocol version.
pub const PROTOCOL_VERSION: u32 = 1;

/// The gateway's answer to a good [`Auth`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub player: u64,
    pub name: String,
    /// This session's id on the gateway.
    pub session: u64,
    /// Ping at least this often; `dead_ticks` silent intervals close the session.
    pub heartbeat_ms: u32,
    pub dead_ticks: u32,
    /// The gateway's clock, unix ms.
    pub server_time_ms: u64,
}

/// A player's request. Answered by one [`Reply`] carrying the request's `seq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The rooms this gateway routes to, with online counts.
    Rooms,
    /// Enter a room (leaves the one the player is in first, on the same server).
    Enter {
        room: u32,
    },
    Leave {
        room: u32,
    },
    /// Sit at a table's seat (stands up from any other seat first).
    Sit {
        room: u32,
        table: u16,
        seat: u8,
    },
    Stand {
        room: u32,
    },
    /// Ready for the next game at the player's table (sitting makes a player ready).
    Ready {
        room: u32,
    },
    /// A move in the table's game; the bytes are the game's ([`crate::game`]).
    Move {
        room: u32,
        table: u16,
        mv: Vec<u8>,
    },
    /// Chat to the room, or to one table (`table` set).
    Chat {
        room: u32,
        table: Option<u16>,
        text: String,
    },
    /// Watch a table (`None`: stop watching).
    Spectate {
        room: u32,
        table: Option<u16>,
    },
    /// The room's full current state.
    Snapshot {
        room: u32,
    },
}

impl Request {
    /// The room the request is for, if any.
    pub fn room(&self) -> Option<u32> {
        match *self {
            Request::Rooms => None,
            Request::Enter { room }
            | Request::Leave { room }
            | Request::Sit { room, .. }
            | Request::Stand { room }
            | Request::Ready { room }
            | Request::Move { room, .. }
            | Request::Chat { room, .. }
            | Request::Spectate { room, .. }
            | Request::Snapshot { room } => Some(room),
        }
    }
}

/// What a request did. `Err` changed nothing.
pub type Reply = Result<Answer, Fail>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    Rooms(Vec<RoomInfo>),
    /// Entered: the room as of `snapshot.seq`; pushes continue from `seq + 1`.
    Entered(RoomSnapshot),
    /// Done; the last room event it caused has this sequence number.
    Done {
        room: u32,
        seq: u64,
    },
    Snapshot(RoomSnapshot),
    /// Done, nothing to tell (a [`CenterRequest`]).
    Ack,
}

/// A request the center server answers (frame kind `Center`), numbered in
/// the session's one sequence with [`Request`]s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CenterRequest {
    /// Receive the channel's messages (at most [`CHANNELS_PER_SESSION_MAX`]).
    Subscribe {
        channel: u32,
    },
    Unsubscribe {
        channel: u32,
    },
    /// A message to a channel's subscribers or to one player.
    Say {
        to: SayTo,
        text: String,
    },
}

/// Channels one session may be subscribed to at once.
pub const CHANNELS_PER_SESSION_MAX: usize = 16;

/// Where a player's message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SayTo {
    Channel(u32),
    Player(u64),
}

/// How a [`Notice`] was addressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoticeTo {
    /// Every player of the zone.
    All,
    /// The channel's subscribers.
    Channel(u32),
    /// A list of players (a guild, a party).
    Players,
    /// This player only (a private message).
    Private,
}

/// A message from the center: an operator's broadcast or a player's words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// The sender; 0 for the operator (the system).
    pub from: u64,
    pub name: String,
    pub to: NoticeTo,
    pub text: String,
    /// The center's clock when it routed the message, unix ms.
    pub at_ms: u64,
}

/// An error: a code a program can act on and a message a person can read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fail {
    pub code: ErrorCode,
    pub message: String,
}

impl Fail {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Fail {
        Fail {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

/// Error codes, stable: encoded as the variant index (append only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// 0: the frame or payload could not be read (the session is closed).
    BadFrame,
    /// 1: the frame is over the size limit (the session is closed).
    FrameTooLarge,
    /// 2: the frame's CRC does not match (the session is closed).
    BadCrc,
    /// 3: a frame other than Auth before authentication (the session is closed).
    NotAuthenticated,
    /// 4: the token's signature or form is wrong.
    BadToken,
    /// 5: the token has expired: log in again.
    TokenExpired,
    /// 6: the token is for another zone.
    WrongZone,
    /// 7: the request sequence number is not above the last one.
    SeqReused,
    /// 8: no room server serves this room.
    UnknownRoom,
    /// 9: the room is at capacity.
    RoomFull,
    /// 10: the player is not in that room.
    NotInRoom,
    /// 11: the move breaks the game's rules.
    IllegalMove,
    /// 12: it is the other player's turn.
    NotYourTurn,
    /// 13: the seat is taken.
    SeatTaken,
    /// 14: no such table or seat.
    NoSuchTable,
    /// 15: no game is running at that table.
    NoGame,
    /// 16: too many requests: slow down.
    RateLimited,
    /// 17: the room's server cannot be reached right now; retry.
    Unavailable,
    /// 18: the gateway holds its maximum of sessions.
    TooManySessions,
    /// 19: the same player logged in on another connection.
    LoggedInElsewhere,
    /// 20: a bug or an unexpected state on the server.
    Internal,
    /// 21: the request is not valid (text too long, wrong table, ...).
    BadRequest,
    /// 22: the player is not seated.
    NotSeated,
    /// 23: the client is too old for this server.
    UpgradeRequired,
    /// 24: the session was idle past the heartbeat window.
    HeartbeatTimeout,
    /// 25: the client could not keep up with its room's pushes.
    SlowConsumer,
    /// 26: too many requests queued for this session.
    TooManyInFlight,
    /// 27: the server is shutting down.
    ShuttingDown,
    /// 28: the account or the address is on the center's blacklist.
    Blacklisted,
    /// 29: an operator kicked the player off.
    Kicked,
    /// 30: the zone's login queue is full: try later.
    QueueFull,
    /// 31: the session waits in the login queue: no requests until admitted.
    NotAdmitted,
    /// 32: the player named is not online.
    NotOnline,
    /// 33: the frame's `time_ms` is outside the gateway's window (a replayed
    /// frame, or a client clock that jumped): the frame was dropped.
    StaleTime,
    /// 34: the request sequence skipped numbers (each is the last plus one).
    SeqSkipped,
    /// 35: the connection sent more bytes or frames a second than allowed,
    /// for too long (the session is closed).
    Flooding,
}

/// A room in a list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    pub id: u32,
    pub name: String,
    pub game: String,
    pub online: u32,
    pub capacity: u32,
}

/// A push from the gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Push {
    /// One room event, numbered: `seq` is one more than the last one pushed for this room.
    Event {
        room: u32,
        seq: u64,
        event: RoomEvent,
    },
    /// The room's state replaces what the client knew: a gap the gateway could
    /// not fill. Pushes continue from `seq + 1`.
    Snapshot(RoomSnapshot),
    /// A broadcast, channel, list or private message routed by the center.
    Notice(Notice),
    /// Before Welcome: the session waits in the zone's login queue at
    /// `position` (1 = next) of `of`; ping every `heartbeat_ms` meanwhile.
    Queued {
        position: u32,
        of: u32,
        heartbeat_ms: u32,
    },
}

/// How a game ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Win {
        seat: u8,
        player: u64,
        reason: WinReason,
    },
    Draw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WinReason {
    /// The game's rule (five in a row).
    Rule,
    /// The other player used up their timeouts.
    Timeout,
    /// The other player stood up or left.
    Forfeit,
}

/// Everything that changes a room, in the order it happened. These are both
/// what players are pushed and what hs replicates (inside a delta record).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoomEvent {
    /// `data` is the player's saved data, loaded by the room server.
    Entered {
        player: u64,
        name: String,
        data: crate::accounts::PlayerData,
    },
    Left {
        player: u64,
    },
    Sat {
        table: u16,
        seat: u8,
        player: u64,
    },
    Stood {
        table: u16,
        seat: u8,
        player: u64,
    },
    Ready {
        table: u16,
        seat: u8,
    },
    /// A game began; `turn_ms` is each turn's time.
    Started {
        table: u16,
        game_no: u32,
        players: Vec<u64>,
        turn_ms: u32,
    },
    /// A move; `auto` when the turn timer played it for an idle player.
    Moved {
        table: u16,
        seat: u8,
        mv: Vec<u8>,
        auto: bool,
    },
    /// `records`: each player's record after this game (rating, coins,
    /// counts), computed by the master; saved to the database before this
    /// event leaves the room server.
    Ended {
        table: u16,
        game_no: u32,
        outcome: Outcome,
        moves: u16,
        records: Vec<(u64, crate::accounts::PlayerRecord)>,
    },
    Chat {
        player: u64,
        table: Option<u16>,
        text: String,
    },
    Spectating {
        player: u64,
        table: Option<u16>,
    },
}

/// A room's full state as a client sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSnapshot {
    pub room: u32,
    pub name: String,
    pub game: String,
    /// The last event included.
    pub seq: u64,
    pub capacity: u32,
    pub members: Vec<MemberView>,
    pub tables: Vec<TableView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub player: u64,
    pub name: String,
    /// Seated at (table, seat).
    pub seat: Option<(u16, u8)>,
    pub watching: Option<u16>,
    /// The player's record (all games, not only this room's).
    pub wins: u32,
    pub losses: u32,
    pub draws: u32,
    pub games: u32,
    pub rating: i32,
    pub coins: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableView {
    pub table: u16,
    pub seats: Vec<Option<u64>>,
    pub ready: Vec<bool>,
    /// The game in progress, or the last one played.
    pub game: Option<GameView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GameView {
    pub game_no: u32,
    pub players: Vec<u64>,
    /// Every move so far: (seat, move bytes, auto).
    pub moves: Vec<(u8, Vec<u8>, bool)>,
    /// Whose turn it is (meaningless once ended).
    pub turn: u8,
    pub turn_ms: u32,
    pub outcome: Option<Outcome>,
}

/// The gateway's answer to a ping: the client's own `time_ms`, so it can
/// measure the round trip, and the round trip the gateway measured last.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    pub client_time_ms: u64,
    /// The round trip the gateway measured last with its own probe, ms (0:
    /// none yet). Appended: sent only to clients with [`FEATURE_RTT`].
    pub rtt_ms: u32,
}

impl Pong {
    /// The payload for a client with `features`: without [`FEATURE_RTT`]
    /// the version-1 Pong (no `rtt_ms`).
    pub fn encode_for(&self, features: u32) -> Vec<u8> {
        match features & FEATURE_RTT {
            0 => encode(&self.client_time_ms),
            _ => encode(self),
        }
    }

    /// Decodes a Pong with or without the appended `rtt_ms`.
    pub fn decode(b: &[u8]) -> Result<Pong, postcard::Error> {
        let (client_time_ms, rest): (u64, &[u8]) = postcard::take_from_bytes(b)?;
        let rtt_ms = if rest.is_empty() { 0 } else { decode(rest)? };
        Ok(Pong {
            client_time_ms,
            rtt_ms,
        })
    }
}

/// The last frame of a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bye {
    pub code: ErrorCode,
    pub message: String,
}

/// Encodes a payload (postcard into a `Vec`).
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("postcard encodes every type of this module")
}

/// Decodes a payload; trailing bytes are an error (a frame holds one value).
pub fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, postcard::Error> {
    let (v, rest) = postcard::take_from_bytes(b)?;
    if !rest.is_empty() {
        return Err(postcard::Error::DeserializeBadEncoding);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            Just(Request::Rooms),
            any::<u32>().prop_map(|room| Request::Enter { room }),
            (any::<u32>(), any::<u16>(), any::<u8>())
                .prop_map(|(room, table, seat)| Request::Sit { room, table, seat }),
            (
                any::<u32>(),
                any::<u16>(),
                prop::collection::vec(any::<u8>(), 0..4)
            )
                .prop_map(|(room, table, mv)| Request::Move { room, table, mv }),
            (any::<u32>(), proptest::option::of(any::<u16>()), ".{0,40}")
                .prop_map(|(room, table, text)| Request::Chat { room, table, text }),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(r in request()) {
            let b = encode(&r);
            prop_assert_eq!(decode::<Request>(&b).unwrap(), r);
        }

        #[test]
        fn garbage_payloads_never_panic(b in prop::collection::vec(any::<u8>(), 0..100)) {
            let _ = decode::<Request>(&b);
            let _ = decode::<Auth>(&b);
            let _ = decode::<Reply>(&b);
            let _ = decode::<Push>(&b);
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut b = encode(&Request::Rooms);
        b.push(0);
        assert!(decode::<Request>(&b).is_err());
    }

    /// The encoding is the documented one (the JS client depends on it).
    #[test]
    fn layout_is_stable() {
        assert_eq!(encode(&Request::Enter { room: 300 }), vec![1, 0xac, 0x02]);
        let r: Reply = Err(Fail::new(ErrorCode::NotYourTurn, "x"));
        assert_eq!(encode(&r), vec![1, 12, 1, b'x']);
        let ok: Reply = Ok(Answer::Done { room: 1, seq: 2 });
        assert_eq!(encode(&ok), vec![0, 2, 1, 2]);
        // Appended fields: the old form still reads, the new one ends with them.
        let a = Auth {
            token: "t".into(),
            client_version: 1,
            features: FEATURES_ALL,
        };
        assert_eq!(encode(&a), vec![1, b't', 1, 3]);
        assert_eq!(Auth::decode(&[1, b't', 1]).unwrap().features, 0);
        assert_eq!(Auth::decode(&encode(&a)).unwrap(), a);
        assert!(Auth::decode(&[1, b't', 1, 3, 0]).is_err());
        let p = Pong {
            client_time_ms: 300,
            rtt_ms: 5,
        };
        assert_eq!(p.encode_for(0), vec![0xac, 0x02]);
        assert_eq!(p.encode_for(FEATURES_ALL), vec![0xac, 0x02, 5]);
        assert_eq!(Pong::decode(&[0xac, 0x02]).unwrap().rtt_ms, 0);
        assert_eq!(Pong::decode(&p.encode_for(FEATURE_RTT)).unwrap(), p);
        assert_eq!(encode(&ErrorCode::Flooding), vec![35]);
    }
}
