//! A room's rules as a pure state machine (no IO; time is a parameter).
//!
//! - [`RoomState::plan`] validates a request against the state and returns the
//!   events it causes, changing nothing;
//! - [`RoomState::apply`] applies one event; infallible and deterministic, so
//!   the master (after publishing) and the standby (from hs) build the same
//!   state from the same events.
//!
//! The room server publishes each request's events as one hs record (a
//! [`replica::Delta`]) together with the request's `(player, seq)` mark, so
//! "this request was done" and its effect are replicated atomically.

pub mod replica;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::accounts::{Activity, PlayerData, PlayerRecord};
use crate::game::{Board, End, GameKind, MoveError};
use crate::proto::msg::{
    Answer, ErrorCode, Fail, GameView, MemberView, Outcome, Request, RoomEvent, RoomSnapshot,
    TableView, WinReason, CHAT_TEXT_BYTES_MAX,
};

/// Events kept per room for gateways that resume after a failover (the gap
/// between what they forwarded and the room's sequence).
pub const RECENT_EVENTS_MAX: usize = 256;
/// Departed players whose last request stays known for deduplication.
pub const DEPARTED_MAX: usize = 1024;
/// Consecutive turns the timer may play for one player before they forfeit.
pub const IDLE_TURNS_MAX: u8 = 2;
/// Coins the loser of a game pays the winner (at most what they have).
pub const STAKE_COINS: i64 = 10;

/// A room as configured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomConfig {
    pub id: u32,
    pub name: String,
    pub game: GameKind,
    pub tables: u16,
    /// Players in the room at most (QQ Game: 400).
    pub capacity: u32,
    /// Time per turn, ms; the timer plays for an idle player after it.
    pub turn_ms: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub seat: Option<(u16, u8)>,
    pub watching: Option<u16>,
    /// The last request of this player that changed the room (its session
    /// and sequence), and the room's sequence after it: a re-sent request of
    /// that session at or below it is answered from here.
    pub last_session: u64,
    pub last_req: u32,
    pub last_seq: u64,
    /// The highest center login number seen from this player: a request
    /// with a lower one comes from a session that was taken over.
    pub login: u64,
    /// Saved at once when a game ends ([`crate::accounts`]).
    pub record: PlayerRecord,
    /// Saved in batches.
    pub activity: Activity,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TableGame {
    pub game_no: u32,
    pub players: Vec<u64>,
    pub moves: Vec<(u8, Vec<u8>, bool)>,
    pub turn_ms: u32,
    /// Consecutive timer moves per seat.
    pub idle: Vec<u8>,
    pub outcome: Option<Outcome>,
    /// Rebuilt from `moves` (never serialized).
    #[serde(skip)]
    pub board: Option<Board>,
    /// When the turn timer fires, on this node's clock (never serialized: each
    /// node sets it when it applies the event that started the turn).
    #[serde(skip)]
    pub deadline: Option<Instant>,
}

impl PartialEq for TableGame {
    fn eq(&self, o: &Self) -> bool {
        (
            self.game_no,
            &self.players,
            &self.moves,
            self.turn_ms,
            &self.idle,
            self.outcome,
        ) == (
            o.game_no, &o.players, &o.moves, o.turn_ms, &o.idle, o.outcome,
        )
    }
}

impl TableGame {
    pub fn running(&self) -> bool {
        self.outcome.is_none()
    }
    fn board(&self) -> &Board {
        self.board.as_ref().expect("boards are rebuilt on decode")
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Table {
    pub seats: Vec<Option<u64>>,
    pub ready: Vec<bool>,
    pub games_played: u32,
    /// The running game, or the last one.
    pub game: Option<TableGame>,
}

impl Table {
    fn running(&self) -> Option<&TableGame> {
        self.game.as_ref().filter(|g| g.running())
    }
}

/// One room's whole state: what hs replicates (checkpoints hold it encoded).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoomState {
    pub cfg: RoomConfig,
    /// The last event's sequence number.
    pub seq: u64,
    /// The last delta applied ([`replica::Delta::index`]).
    pub index: u64,
    pub members: BTreeMap<u64, Member>,
    pub tables: Vec<Table>,
    pub recent: VecDeque<(u64, RoomEvent)>,
    /// (player, last_session, last_req, last_seq, login) of players who left.
    pub departed: VecDeque<(u64, u64, u32, u64, u64)>,
}

fn fail(code: ErrorCode, m: impl Into<String>) -> Fail {
    Fail::new(code, m)
}

impl From<MoveError> for Fail {
    fn from(e: MoveError) -> Fail {
        match e {
            MoveError::NotYourTurn => fail(ErrorCode::NotYourTurn, e.to_string()),
            MoveError::Illegal(_) => fail(ErrorCode::IllegalMove, e.to_string()),
        }
    }
}

/// What a request comes to.
#[derive(Debug, PartialEq)]
pub enum Plan {
    /// These events, to publish and apply in order.
    Events(Vec<RoomEvent>),
    /// Nothing changes; answer now.
    Answer(Answer),
}

impl RoomState {
    pub fn new(cfg: RoomConfig) -> RoomState {
        let seats = cfg.game.seats() as usize;
        let tables = (0..cfg.tables)
            .map(|_| Table {
                seats: vec![None; seats],
                ready: vec![false; seats],
                games_played: 0,
                game: None,
            })
            .collect();
        RoomState {
            cfg,
            seq: 0,
            index: 0,
            members: BTreeMap::new(),
            tables,
            recent: VecDeque::new(),
            departed: VecDeque::new(),
        }
    }

    /// After decoding: rebuild boards from move lists and give each running
    /// game a full turn from `now`.
    pub fn rebuild(&mut self, now: Instant) {
        let kind = self.cfg.game;
        for t in &mut self.tables {
            if let Some(g) = &mut t.game {
                let mut b = kind.new_board();
                for (seat, mv, _) in &g.moves {
                    b.play(*seat, mv);
                }
                g.board = Some(b);
                g.deadline = g
                    .running()
                    .then(|| now + Duration::from_millis(g.turn_ms as u64));
            }
        }
    }

    /// The highest center login number seen from `player` (0: none).
    pub fn login_of(&self, player: u64) -> u64 {
        match self.members.get(&player) {
            Some(m) => m.login,
            None => self
                .departed
                .iter()
                .rev()
                .find(|d| d.0 == player)
                .map_or(0, |d| d.4),
        }
    }

    /// Puts `player`'s loaded data into the `Entered` event of a plan.
    pub fn with_data(events: &mut [RoomEvent], player: u64, loaded: PlayerData) {
        for e in events {
            if let RoomEvent::Entered {
                player: p, data, ..
            } = e
            {
                if *p == player {
                    *data = loaded;
                }
            }
        }
    }

    /// The players whose record a game's end in `events` changed, with the record.
    pub fn ended_records(events: &[RoomEvent]) -> Vec<(u64, PlayerRecord)> {
        events
            .iter()
            .filter_map(|e| match e {
                RoomEvent::Ended { records, .. } => Some(records.iter().copied()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// If request `req` of `session` was already done, the room sequence after it.
    pub fn done(&self, player: u64, session: u64, req: u32) -> Option<u64> {
        if let Some(m) = self.members.get(&player) {
            return (m.last_session == session && req <= m.last_req).then_some(m.last_seq);
        }
        self.departed
            .iter()
            .rev()
            .find(|d| d.0 == player)
            .filter(|d| d.1 == session && req <= d.2)
            .map(|d| d.3)
    }

    /// The answer to a request done before (a re-send after a failover).
    pub fn answer_done(&self, req: &Request, seq: u64) -> Answer {
        match req {
            Request::Enter { .. } => Answer::Entered(self.snapshot()),
            Request::Snapshot { .. } => Answer::Snapshot(self.snapshot()),
            _ => Answer::Done {
                room: self.cfg.id,
                seq,
            },
        }
    }

    /// The events a request causes, or why it is refused. Changes nothing.
    pub fn plan(&self, player: u64, name: &str, req: &Request) -> Result<Plan, Fail> {
        let id = self.cfg.id;
        let member = self.members.get(&player);
        let need_member = || {
            member.ok_or_else(|| fail(ErrorCode::NotInRoom, format!("you are not in room {id}")))
        };
        let mut ev = Vec::new();
        match req {
            Request::Rooms => {
                return Err(fail(
                    ErrorCode::BadRequest,
                    "Rooms is answered by the gateway",
                ))
            }
            Request::Snapshot { .. } => return Ok(Plan::Answer(Answer::Snapshot(self.snapshot()))),
            Request::Enter { .. } => {
                if member.is_some() {
                    return Ok(Plan::Answer(Answer::Entered(self.snapshot())));
                }
                if self.members.len() as u32 >= self.cfg.capacity {
                    return Err(fail(
                        ErrorCode::RoomFull,
                        format!(
                            "room {id} holds its {} players; try another room",
                            self.cfg.capacity
                        ),
                    ));
                }
                ev.push(RoomEvent::Entered {
                    player,
                    name: name.to_string(),
                    // The room server puts the loaded data in (`with_data`).
                    data: PlayerData::default(),
                });
            }
            Request::Leave { .. } => {
                let m = need_member()?;
                self.stand_events(player, m, &mut ev);
                ev.push(RoomEvent::Left { player });
            }
            &Request::Sit { table, seat, .. } => {
                let m = need_member()?;
                let t = self.table(table)?;
                let slot = t.seats.get(seat as usize).ok_or_else(|| {
                    fail(
                        ErrorCode::NoSuchTable,
                        format!("table {table} has no seat {seat}"),
                    )
                })?;
                match slot {
                    Some(p) if *p == player => {
                        return Ok(Plan::Answer(Answer::Done {
                            room: id,
                            seq: self.seq,
                        }));
                    }
                    Some(_) => {
                        return Err(fail(
                            ErrorCode::SeatTaken,
                            format!("seat {seat} of table {table} is taken"),
                        ))
                    }
                    None => {}
                }
                if t.running().is_some() {
                    return Err(fail(
                        ErrorCode::SeatTaken,
                        format!("a game is running at table {table}"),
                    ));
                }
                self.stand_events(player, m, &mut ev);
                ev.push(RoomEvent::Sat {
                    table,
                    seat,
                    player,
                });
                // Sitting makes the player ready; the last one ready starts the game.
                let (mut seats, mut ready) = (t.seats.clone(), t.ready.clone());
                if let Some((_, os)) = m.seat.filter(|s| s.0 == table) {
                    (seats[os as usize], ready[os as usize]) = (None, false);
                }
                (seats[seat as usize], ready[seat as usize]) = (Some(player), true);
                if seats.iter().zip(&ready).all(|(p, r)| p.is_some() && *r) {
                    ev.push(self.start_event(table, t, seats));
                }
            }
            Request::Stand { .. } => {
                let m = need_member()?;
                if m.seat.is_none() {
                    return Err(fail(ErrorCode::NotSeated, "you are not seated"));
                }
                self.stand_events(player, m, &mut ev);
            }
            Request::Ready { .. } => {
                let m = need_member()?;
                let (table, seat) = m
                    .seat
                    .ok_or_else(|| fail(ErrorCode::NotSeated, "you are not seated"))?;
                let t = &self.tables[table as usize];
                if t.running().is_some() || t.ready[seat as usize] {
                    return Ok(Plan::Answer(Answer::Done {
                        room: id,
                        seq: self.seq,
                    }));
                }
                ev.push(RoomEvent::Ready { table, seat });
                let all = t
                    .seats
                    .iter()
                    .zip(&t.ready)
                    .enumerate()
                    .all(|(i, (p, r))| p.is_some() && (*r || i == seat as usize));
                if all {
                    ev.push(self.start_event(table, t, t.seats.clone()));
                }
            }
            Request::Move { table, mv, .. } => {
                let m = need_member()?;
                let t = self.table(*table)?;
                let (st, seat) = m.seat.ok_or_else(|| {
                    fail(ErrorCode::NotSeated, "you are not seated: sit down to play")
                })?;
                if st != *table {
                    return Err(fail(
                        ErrorCode::NotSeated,
                        format!("you sit at table {st}, not {table}"),
                    ));
                }
                let g = t.running().ok_or_else(|| {
                    fail(
                        ErrorCode::NoGame,
                        format!("no game is running at table {table}"),
                    )
                })?;
                g.board().check(seat, mv)?;
                self.move_events(*table, g, seat, mv.clone(), false, &mut ev);
            }
            Request::Chat { table, text, .. } => {
                need_member()?;
                if text.len() > CHAT_TEXT_BYTES_MAX {
                    return Err(fail(
                        ErrorCode::BadRequest,
                        format!(
                            "chat text of {} bytes is over {CHAT_TEXT_BYTES_MAX}",
                            text.len()
                        ),
                    ));
                }
                if let Some(t) = table {
                    self.table(*t)?;
                }
                ev.push(RoomEvent::Chat {
                    player,
                    table: *table,
                    text: text.clone(),
                });
            }
            Request::Spectate { table, .. } => {
                let m = need_member()?;
                if let Some(t) = table {
                    self.table(*t)?;
                }
                if m.watching == *table {
                    return Ok(Plan::Answer(Answer::Done {
                        room: id,
                        seq: self.seq,
                    }));
                }
                ev.push(RoomEvent::Spectating {
                    player,
                    table: *table,
                });
            }
        }
        Ok(Plan::Events(ev))
    }

    fn table(&self, table: u16) -> Result<&Table, Fail> {
        self.tables.get(table as usize).ok_or_else(|| {
            fail(
                ErrorCode::NoSuchTable,
                format!("room {} has tables 0..{}", self.cfg.id, self.tables.len()),
            )
        })
    }

    fn start_event(&self, table: u16, t: &Table, seats: Vec<Option<u64>>) -> RoomEvent {
        RoomEvent::Started {
            table,
            game_no: t.games_played + 1,
            players: seats
                .into_iter()
                .map(|p| p.expect("all seats taken"))
                .collect(),
            turn_ms: self.cfg.turn_ms,
        }
    }

    /// Standing up from a running game forfeits it.
    fn stand_events(&self, player: u64, m: &Member, ev: &mut Vec<RoomEvent>) {
        let Some((table, seat)) = m.seat else { return };
        let t = &self.tables[table as usize];
        if let Some(g) = t.running() {
            let other = 1 - seat; // two-seat games (asserted in apply)
            let outcome = Outcome::Win {
                seat: other,
                player: g.players[other as usize],
                reason: WinReason::Forfeit,
            };
            ev.push(self.end_event(table, g, outcome, g.moves.len() as u16));
        }
        ev.push(RoomEvent::Stood {
            table,
            seat,
            player,
        });
    }

    fn move_events(
        &self,
        table: u16,
        g: &TableGame,
        seat: u8,
        mv: Vec<u8>,
        auto: bool,
        ev: &mut Vec<RoomEvent>,
    ) {
        let mut b = g.board().clone();
        let end = b.play(seat, &mv);
        ev.push(RoomEvent::Moved {
            table,
            seat,
            mv,
            auto,
        });
        if let Some(end) = end {
            let outcome = match end {
                End::Win { seat } => Outcome::Win {
                    seat,
                    player: g.players[seat as usize],
                    reason: WinReason::Rule,
                },
                End::Draw => Outcome::Draw,
            };
            ev.push(self.end_event(table, g, outcome, g.moves.len() as u16 + 1));
        }
    }

    /// A game's end with each player's record after it: games and results
    /// counted, the rating moved (a linear Elo, integers only so every
    /// replica computes the same), [`STAKE_COINS`] paid by the loser.
    fn end_event(&self, table: u16, g: &TableGame, outcome: Outcome, moves: u16) -> RoomEvent {
        let mut records: Vec<(u64, PlayerRecord)> = g
            .players
            .iter()
            .map(|p| {
                (
                    *p,
                    self.members.get(p).map(|m| m.record).unwrap_or_default(),
                )
            })
            .collect();
        for (_, r) in &mut records {
            r.games += 1;
        }
        match outcome {
            Outcome::Win { seat, .. } => {
                let w = seat as usize;
                let l = 1 - w;
                let (rw, rl) = (records[w].1.rating, records[l].1.rating);
                let delta = (16 + (rl - rw) / 25).clamp(1, 31);
                let coins = STAKE_COINS.min(records[l].1.coins.max(0));
                let win = &mut records[w].1;
                (win.wins, win.rating, win.coins) = (win.wins + 1, rw + delta, win.coins + coins);
                let lose = &mut records[l].1;
                (lose.losses, lose.rating, lose.coins) =
                    (lose.losses + 1, rl - delta, lose.coins - coins);
            }
            Outcome::Draw => {
                let (r0, r1) = (records[0].1.rating, records[1].1.rating);
                let delta = ((r1 - r0) / 50).clamp(-15, 15);
                records[0].1.rating += delta;
                records[1].1.rating -= delta;
                records.iter_mut().for_each(|(_, r)| r.draws += 1);
            }
        }
        RoomEvent::Ended {
            table,
            game_no: g.game_no,
            outcome,
            moves,
            records,
        }
    }

    /// The earliest turn deadline, for the master's timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.tables
            .iter()
            .filter_map(|t| t.running().and_then(|g| g.deadline))
            .min()
    }

    /// Events for every table whose turn timer ran out at `now`: the timer
    /// plays for the idle player, who forfeits after [`IDLE_TURNS_MAX`] in a row.
    pub fn expired(&self, now: Instant) -> Vec<RoomEvent> {
        let mut ev = Vec::new();
        for (i, t) in self.tables.iter().enumerate() {
            let Some(g) = t.running() else { continue };
            match g.deadline {
                Some(d) if d <= now => {}
                _ => continue,
            }
            let table = i as u16;
            let seat = g.board().turn();
            if g.idle[seat as usize] + 1 >= IDLE_TURNS_MAX {
                let other = 1 - seat;
                let outcome = Outcome::Win {
                    seat: other,
                    player: g.players[other as usize],
                    reason: WinReason::Timeout,
                };
                ev.push(self.end_event(table, g, outcome, g.moves.len() as u16));
            } else {
                let mv = g.board().idle_move(seat);
                self.move_events(table, g, seat, mv, true, &mut ev);
            }
        }
        ev
    }

    /// Applies one event (planned by [`Self::plan`] or [`Self::expired`] on
    /// the master). Panics on an event that does not fit the state: that is a
    /// fork between master and standby, and a crash beats a silent one.
    pub fn apply(&mut self, e: &RoomEvent, now: Instant) {
        self.seq += 1;
        match e {
            RoomEvent::Entered { player, name, data } => {
                let mut activity = data.activity;
                activity.rooms_entered += 1;
                let prev = self.members.insert(
                    *player,
                    Member {
                        name: name.clone(),
                        seat: None,
                        watching: None,
                        last_session: 0,
                        last_req: 0,
                        last_seq: 0,
                        login: 0,
                        record: data.record,
                        activity,
                    },
                );
                assert!(
                    prev.is_none(),
                    "Entered for player {player} already in room"
                );
                // A player who comes back keeps deduplication of what was done before.
                if let Some(i) = self.departed.iter().rposition(|d| d.0 == *player) {
                    let d = self.departed.remove(i).expect("index from rposition");
                    let m = self.members.get_mut(player).expect("just inserted");
                    (m.last_session, m.last_req, m.last_seq, m.login) = (d.1, d.2, d.3, d.4);
                }
            }
            RoomEvent::Left { player } => {
                let m = self
                    .members
                    .remove(player)
                    .expect("Left for a player not in room");
                assert!(m.seat.is_none(), "Left while seated");
                self.departed
                    .push_back((*player, m.last_session, m.last_req, m.last_seq, m.login));
                if self.departed.len() > DEPARTED_MAX {
                    self.departed.pop_front();
                }
            }
            &RoomEvent::Sat {
                table,
                seat,
                player,
            } => {
                let t = &mut self.tables[table as usize];
                assert!(t.seats[seat as usize].is_none(), "Sat on a taken seat");
                t.seats[seat as usize] = Some(player);
                t.ready[seat as usize] = true;
                let m = self.members.get_mut(&player).expect("Sat by a non-member");
                assert!(m.seat.is_none(), "Sat while seated");
                m.seat = Some((table, seat));
                m.watching = None;
            }
            &RoomEvent::Stood {
                table,
                seat,
                player,
            } => {
                let t = &mut self.tables[table as usize];
                assert_eq!(
                    t.seats[seat as usize],
                    Some(player),
                    "Stood from a seat not held"
                );
                assert!(
                    t.running().is_none(),
                    "Stood from a running game (Ended comes first)"
                );
                t.seats[seat as usize] = None;
                t.ready[seat as usize] = false;
                self.members
                    .get_mut(&player)
                    .expect("Stood by a non-member")
                    .seat = None;
            }
            &RoomEvent::Ready { table, seat } => {
                let t = &mut self.tables[table as usize];
                assert!(t.seats[seat as usize].is_some(), "Ready on an empty seat");
                t.ready[seat as usize] = true;
            }
            RoomEvent::Started {
                table,
                game_no,
                players,
                turn_ms,
            } => {
                let kind = self.cfg.game;
                assert_eq!(kind.seats(), 2, "the room rules assume two seats");
                let t = &mut self.tables[*table as usize];
                assert!(t.running().is_none(), "Started over a running game");
                assert_eq!(*game_no, t.games_played + 1, "game numbers go up by one");
                assert!(
                    t.seats.iter().zip(players).all(|(s, p)| *s == Some(*p)),
                    "Started with players not seated"
                );
                t.games_played = *game_no;
                t.game = Some(TableGame {
                    game_no: *game_no,
                    players: players.clone(),
                    moves: Vec::new(),
                    turn_ms: *turn_ms,
                    idle: vec![0; players.len()],
                    outcome: None,
                    board: Some(kind.new_board()),
                    deadline: Some(now + Duration::from_millis(*turn_ms as u64)),
                });
            }
            RoomEvent::Moved {
                table,
                seat,
                mv,
                auto,
            } => {
                let g = self.tables[*table as usize]
                    .game
                    .as_mut()
                    .filter(|g| g.running())
                    .expect("Moved without a running game");
                let b = g.board.as_mut().expect("boards are rebuilt on decode");
                assert!(
                    b.check(*seat, mv).is_ok(),
                    "Moved breaks the rules: {mv:?} by seat {seat}"
                );
                b.play(*seat, mv);
                g.moves.push((*seat, mv.clone(), *auto));
                let player = g.players[*seat as usize];
                g.idle[*seat as usize] = if *auto { g.idle[*seat as usize] + 1 } else { 0 };
                g.deadline = Some(now + Duration::from_millis(g.turn_ms as u64));
                if let Some(m) = self.members.get_mut(&player) {
                    if *auto {
                        m.activity.auto_moves += 1;
                    } else {
                        m.activity.moves += 1;
                    }
                }
            }
            RoomEvent::Ended {
                table,
                game_no,
                outcome,
                moves,
                records,
            } => {
                let t = &mut self.tables[*table as usize];
                let g = t
                    .game
                    .as_mut()
                    .filter(|g| g.running())
                    .expect("Ended without a running game");
                assert_eq!(
                    (g.game_no, g.moves.len()),
                    (*game_no, *moves as usize),
                    "Ended another game"
                );
                g.outcome = Some(*outcome);
                g.deadline = None;
                t.ready.iter_mut().for_each(|r| *r = false);
                assert!(
                    records.iter().map(|r| r.0).eq(g.players.iter().copied()),
                    "Ended with records of other players"
                );
                for (p, r) in records {
                    if let Some(m) = self.members.get_mut(p) {
                        m.record = *r;
                    }
                }
            }
            RoomEvent::Chat { player, .. } => {
                if let Some(m) = self.members.get_mut(player) {
                    m.activity.chat_lines += 1;
                }
            }
            RoomEvent::Spectating { player, table } => {
                self.members
                    .get_mut(player)
                    .expect("Spectating by a non-member")
                    .watching = *table;
            }
        }
        self.recent.push_back((self.seq, e.clone()));
        if self.recent.len() > RECENT_EVENTS_MAX {
            self.recent.pop_front();
        }
    }

    /// Events after `from` (exclusive) still held, or `None` when some are gone.
    pub fn events_after(&self, from: u64) -> Option<Vec<(u64, RoomEvent)>> {
        if from >= self.seq {
            return Some(Vec::new());
        }
        let first = self.recent.front().map(|(s, _)| *s)?;
        if first > from + 1 {
            return None;
        }
        Some(
            self.recent
                .iter()
                .filter(|(s, _)| *s > from)
                .cloned()
                .collect(),
        )
    }

    pub fn info(&self) -> crate::proto::msg::RoomInfo {
        crate::proto::msg::RoomInfo {
            id: self.cfg.id,
            name: self.cfg.name.clone(),
            game: self.cfg.game.name().to_string(),
            online: self.members.len() as u32,
            capacity: self.cfg.capacity,
        }
    }

    pub fn snapshot(&self) -> RoomSnapshot {
        RoomSnapshot {
            room: self.cfg.id,
            name: self.cfg.name.clone(),
            game: self.cfg.game.name().to_string(),
            seq: self.seq,
            capacity: self.cfg.capacity,
            members: self
                .members
                .iter()
                .map(|(p, m)| MemberView {
                    player: *p,
                    name: m.name.clone(),
                    seat: m.seat,
                    watching: m.watching,
                    wins: m.record.wins,
                    losses: m.record.losses,
                    draws: m.record.draws,
                    games: m.record.games,
                    rating: m.record.rating,
                    coins: m.record.coins,
                })
                .collect(),
            tables: self
                .tables
                .iter()
                .enumerate()
                .map(|(i, t)| TableView {
                    table: i as u16,
                    seats: t.seats.clone(),
                    ready: t.ready.clone(),
                    game: t.game.as_ref().map(|g| GameView {
                        game_no: g.game_no,
                        players: g.players.clone(),
                        moves: g.moves.clone(),
                        turn: g.board().turn(),
                        turn_ms: g.turn_ms,
                        outcome: g.outcome,
                    }),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
