use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::replica::{Key, Rooms};
use super::*;
use crate::accounts::{COINS_START, RATING_START};
use crate::proto::msg::{Outcome, Request, RoomEvent, WinReason};

fn cfg(id: u32) -> RoomConfig {
    RoomConfig {
        id,
        name: format!("room {id}"),
        game: GameKind::Gomoku,
        tables: 4,
        capacity: 3,
        turn_ms: 1000,
    }
}

/// Plans and applies a request; panics if refused.
fn act(st: &mut RoomState, player: u64, req: Request, now: Instant) -> Vec<RoomEvent> {
    match st
        .plan(player, &format!("p{player}"), &req)
        .unwrap_or_else(|e| panic!("{req:?}: {e}"))
    {
        Plan::Events(ev) => {
            for e in &ev {
                st.apply(e, now);
            }
            ev
        }
        Plan::Answer(_) => Vec::new(),
    }
}

fn seated_pair(now: Instant) -> RoomState {
    let mut st = RoomState::new(cfg(1));
    for p in [1, 2] {
        act(&mut st, p, Request::Enter { room: 1 }, now);
    }
    act(
        &mut st,
        1,
        Request::Sit {
            room: 1,
            table: 0,
            seat: 0,
        },
        now,
    );
    let ev = act(
        &mut st,
        2,
        Request::Sit {
            room: 1,
            table: 0,
            seat: 1,
        },
        now,
    );
    assert!(
        matches!(ev.last(), Some(RoomEvent::Started { game_no: 1, .. })),
        "{ev:?}"
    );
    st
}

#[test]
fn a_game_is_played_to_a_win_and_recorded() {
    let now = Instant::now();
    let mut st = seated_pair(now);
    let mv = |x: u8, y: u8| Request::Move {
        room: 1,
        table: 0,
        mv: vec![x, y],
    };
    for i in 0..4 {
        act(&mut st, 1, mv(i, 0), now);
        act(&mut st, 2, mv(i, 5), now);
    }
    let ev = act(&mut st, 1, mv(4, 0), now);
    let rec = |wins, losses, rating, coins| PlayerRecord {
        games: 1,
        wins,
        losses,
        draws: 0,
        rating,
        coins,
    };
    // Equal ratings: the winner takes 16 points and the stake.
    assert_eq!(
        ev.last(),
        Some(&RoomEvent::Ended {
            table: 0,
            game_no: 1,
            outcome: Outcome::Win {
                seat: 0,
                player: 1,
                reason: WinReason::Rule
            },
            moves: 9,
            records: vec![
                (1, rec(1, 0, RATING_START + 16, COINS_START + STAKE_COINS)),
                (2, rec(0, 1, RATING_START - 16, COINS_START - STAKE_COINS)),
            ],
        })
    );
    assert_eq!(
        (st.members[&1].record.wins, st.members[&2].record.losses),
        (1, 1)
    );
    // Moves count as the players' activity.
    assert_eq!(
        (st.members[&1].activity.moves, st.members[&2].activity.moves),
        (5, 4)
    );
    // A new game needs both players ready again.
    assert!(st.plan(1, "", &mv(7, 7)).unwrap_err().code == ErrorCode::NoGame);
    act(&mut st, 1, Request::Ready { room: 1 }, now);
    let ev = act(&mut st, 2, Request::Ready { room: 1 }, now);
    assert!(matches!(
        ev.last(),
        Some(RoomEvent::Started { game_no: 2, .. })
    ));
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let now = Instant::now();
    let mut st = seated_pair(now);
    let before = st.clone();
    let code = |st: &RoomState, p, r: Request| st.plan(p, "", &r).unwrap_err().code;
    assert_eq!(
        code(
            &st,
            2,
            Request::Move {
                room: 1,
                table: 0,
                mv: vec![1, 1]
            }
        ),
        ErrorCode::NotYourTurn
    );
    assert_eq!(
        code(
            &st,
            1,
            Request::Move {
                room: 1,
                table: 0,
                mv: vec![15, 1]
            }
        ),
        ErrorCode::IllegalMove
    );
    assert_eq!(
        code(
            &st,
            1,
            Request::Move {
                room: 1,
                table: 0,
                mv: vec![]
            }
        ),
        ErrorCode::IllegalMove
    );
    assert_eq!(
        code(
            &st,
            1,
            Request::Move {
                room: 1,
                table: 3,
                mv: vec![1, 1]
            }
        ),
        ErrorCode::NotSeated
    );
    assert_eq!(
        code(
            &st,
            9,
            Request::Move {
                room: 1,
                table: 0,
                mv: vec![1, 1]
            }
        ),
        ErrorCode::NotInRoom
    );
    assert_eq!(
        code(
            &st,
            1,
            Request::Sit {
                room: 1,
                table: 9,
                seat: 0
            }
        ),
        ErrorCode::NoSuchTable
    );
    assert_eq!(
        code(
            &st,
            1,
            Request::Sit {
                room: 1,
                table: 0,
                seat: 1
            }
        ),
        ErrorCode::SeatTaken
    );
    let long = "x".repeat(crate::proto::msg::CHAT_TEXT_BYTES_MAX + 1);
    assert_eq!(
        code(
            &st,
            1,
            Request::Chat {
                room: 1,
                table: None,
                text: long
            }
        ),
        ErrorCode::BadRequest
    );
    act(&mut st, 3, Request::Enter { room: 1 }, now);
    assert_eq!(
        code(&st, 4, Request::Enter { room: 1 }),
        ErrorCode::RoomFull
    );
    st.apply(&RoomEvent::Left { player: 3 }, now);
    // Only the two events above changed anything.
    assert_eq!(st.seq, before.seq + 2);
    assert_eq!(st.members, before.members);
}

#[test]
fn the_turn_timer_plays_for_an_idle_player_then_forfeits_them() {
    let t0 = Instant::now();
    let mut st = seated_pair(t0);
    assert!(st.expired(t0).is_empty());
    let t1 = t0 + Duration::from_millis(1001);
    let ev = st.expired(t1);
    assert_eq!(
        ev,
        vec![RoomEvent::Moved {
            table: 0,
            seat: 0,
            mv: vec![7, 7],
            auto: true
        }]
    );
    st.apply(&ev[0], t1);
    act(
        &mut st,
        2,
        Request::Move {
            room: 1,
            table: 0,
            mv: vec![0, 0],
        },
        t1,
    );
    let t2 = t1 + Duration::from_millis(1001);
    let ev = st.expired(t2);
    assert!(
        matches!(
            ev[0],
            RoomEvent::Ended {
                outcome: Outcome::Win {
                    seat: 1,
                    reason: WinReason::Timeout,
                    ..
                },
                ..
            }
        ),
        "{ev:?}"
    );
}

#[test]
fn standing_up_forfeits_a_running_game() {
    let now = Instant::now();
    let mut st = seated_pair(now);
    let ev = act(&mut st, 2, Request::Leave { room: 1 }, now);
    assert!(matches!(
        ev[0],
        RoomEvent::Ended {
            outcome: Outcome::Win {
                seat: 0,
                reason: WinReason::Forfeit,
                ..
            },
            ..
        }
    ));
    assert!(
        matches!(ev[1], RoomEvent::Stood { .. }) && matches!(ev[2], RoomEvent::Left { player: 2 })
    );
}

#[test]
fn events_after_fills_gaps_or_says_it_cannot() {
    let now = Instant::now();
    let mut st = seated_pair(now);
    let all = st.events_after(0).unwrap();
    assert_eq!(all.len() as u64, st.seq);
    assert_eq!(st.events_after(st.seq).unwrap(), vec![]);
    for i in 0..RECENT_EVENTS_MAX as u64 {
        st.apply(
            &RoomEvent::Chat {
                player: 1,
                table: None,
                text: i.to_string(),
            },
            now,
        );
    }
    assert_eq!(st.events_after(0), None);
    assert_eq!(st.events_after(st.seq - 3).unwrap().len(), 3);
}

/// Writes as the master publishes them, and a log of every record.
struct Master {
    rooms: Rooms,
    log: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Master {
    fn new(cfgs: &[RoomConfig]) -> Master {
        let mut m = Master {
            rooms: Rooms::default(),
            log: Vec::new(),
        };
        for (_, w) in m.rooms.create_missing(cfgs) {
            m.rooms.commit(&w, Instant::now());
            m.log.extend(w);
        }
        m
    }
    fn request(&mut self, room: u32, player: u64, seq: u32, req: Request) -> bool {
        let st = &self.rooms.get()[&room];
        if st.done(player, 1, seq).is_some() {
            return false;
        }
        let Ok(Plan::Events(ev)) = st.plan(player, "p", &req) else {
            return false;
        };
        let w = self.rooms.prepare(
            room,
            ev,
            Some(super::replica::Mark {
                player,
                session: 1,
                seq,
                login: 0,
            }),
        );
        self.rooms.commit(&w, Instant::now());
        self.log.extend(w);
        true
    }
}

fn encoded(r: &mut Rooms) -> BTreeMap<u32, Vec<u8>> {
    r.get()
        .iter()
        .map(|(k, v)| (*k, crate::proto::msg::encode(v)))
        .collect()
}

/// The standby, fed the master's records, holds the same rooms; so does a
/// node restored from "the latest value per key" at any point (hs compaction).
#[test]
fn standby_and_compacted_snapshots_equal_the_master() {
    let cfgs = [cfg(1), cfg(2)];
    let mut m = Master::new(&cfgs);
    let mut seq = 0;
    let mut req = |m: &mut Master, room, p, r| {
        seq += 1;
        m.request(room, p, seq, r)
    };
    for room in [1, 2] {
        req(&mut m, room, 1, Request::Enter { room });
        req(&mut m, room, 2, Request::Enter { room });
        req(
            &mut m,
            room,
            1,
            Request::Sit {
                room,
                table: 0,
                seat: 0,
            },
        );
        req(
            &mut m,
            room,
            2,
            Request::Sit {
                room,
                table: 0,
                seat: 1,
            },
        );
    }
    // Enough moves and chat for several checkpoints and ring laps.
    let mut checks = 0;
    for i in 0..400u32 {
        let room = 1 + i % 2;
        let p = if m.rooms.get()[&room].tables[0]
            .game
            .as_ref()
            .unwrap()
            .moves
            .len()
            .is_multiple_of(2)
        {
            1
        } else {
            2
        };
        let st = &m.rooms.get()[&room];
        let g = st.tables[0].game.as_ref().unwrap();
        if g.running() {
            let mv = g.board().idle_move(p as u8 - 1);
            req(&mut m, room, p, Request::Move { room, table: 0, mv });
        } else {
            req(&mut m, room, 1, Request::Ready { room });
            req(&mut m, room, 2, Request::Ready { room });
        }
        req(
            &mut m,
            room,
            1,
            Request::Chat {
                room,
                table: Some(0),
                text: format!("hi {i}"),
            },
        );
        if i % 37 == 0 {
            // Compaction at this point: the latest value of each key, in key order.
            let mut latest = BTreeMap::new();
            for (k, v) in &m.log {
                latest.insert(k.clone(), v.clone());
            }
            let mut r = Rooms::default();
            let mut rep = super::replica::Replica(std::sync::Arc::new(parking_lot::Mutex::new(r)));
            hs::Apply::reset(&mut rep);
            for (k, v) in &latest {
                hs::Apply::restore(&mut rep, k, v);
            }
            r = std::mem::take(&mut *rep.0.lock());
            assert_eq!(
                encoded(&mut r),
                encoded(&mut m.rooms),
                "restore after {i} rounds"
            );
            assert_eq!(r.errors, 0);
            checks += 1;
        }
    }
    assert!(checks > 5);
    assert!(
        m.log
            .iter()
            .filter(|(k, _)| matches!(Key::parse(k), Some(Key::Checkpoint(_))))
            .count()
            > 4
    );
    let mut slave = Rooms::default();
    for (k, v) in &m.log {
        slave.apply_record(k, v, Instant::now()).unwrap();
    }
    assert_eq!(encoded(&mut slave), encoded(&mut m.rooms));
    assert_eq!((slave.divergences, slave.errors), (0, 0));
    // A re-sent request is recognised as done, on the standby too.
    let last = seq;
    assert!(
        slave.get()[&1].done(1, 1, last).is_some() || slave.get()[&2].done(1, 1, last).is_some()
    );
    // The same sequence number from another session (a reconnect) is new.
    assert!(
        slave.get()[&1].done(1, 2, last).is_none() && slave.get()[&2].done(1, 2, last).is_none()
    );
}

#[test]
fn a_forked_checkpoint_is_counted_and_the_masters_state_adopted() {
    let mut m = Master::new(&[cfg(1)]);
    let mut slave = Rooms::default();
    for (k, v) in &m.log {
        slave.apply_record(k, v, Instant::now()).unwrap();
    }
    // The standby's copy drifts (a bug), then the master checkpoints.
    slave.get().get_mut(&1).unwrap().members.insert(
        99,
        Member {
            name: "ghost".into(),
            seat: None,
            watching: None,
            last_session: 0,
            last_req: 0,
            last_seq: 0,
            login: 0,
            record: PlayerRecord::default(),
            activity: Default::default(),
        },
    );
    let cp = (
        Key::Checkpoint(1).encode(),
        crate::proto::msg::encode(&m.rooms.get()[&1]),
    );
    slave.apply_record(&cp.0, &cp.1, Instant::now()).unwrap();
    assert_eq!(slave.divergences, 1);
    assert_eq!(encoded(&mut slave), encoded(&mut m.rooms));
}

#[test]
fn out_of_order_and_garbage_records_are_refused() {
    let mut m = Master::new(&[cfg(1)]);
    m.request(1, 1, 1, Request::Enter { room: 1 });
    m.request(
        1,
        1,
        2,
        Request::Chat {
            room: 1,
            table: None,
            text: "a".into(),
        },
    );
    let mut s = Rooms::default();
    s.apply_record(&m.log[0].0, &m.log[0].1, Instant::now())
        .unwrap();
    assert!(
        s.apply_record(&m.log[2].0, &m.log[2].1, Instant::now())
            .is_err(),
        "a skipped delta is refused"
    );
    assert!(s.apply_record(b"zz", b"", Instant::now()).is_err());
    assert!(s
        .apply_record(&m.log[1].0, b"\xff\xff", Instant::now())
        .is_err());
    assert_eq!(s.get()[&1].seq, 0, "nothing applied from refused records");
}

/// The loaded data rides in `Entered`; a game's end moves ratings by the
/// linear Elo (an upset pays more) and never takes coins below zero.
#[test]
fn loaded_data_enters_and_a_game_end_moves_rating_and_coins() {
    let now = Instant::now();
    let mut st = RoomState::new(cfg(1));
    let data = |rating, coins| PlayerData {
        record: PlayerRecord {
            rating,
            coins,
            ..PlayerRecord::default()
        },
        activity: Activity::default(),
    };
    for (p, d) in [(1, data(1000, 50)), (2, data(1500, 3))] {
        let Plan::Events(mut ev) = st.plan(p, "x", &Request::Enter { room: 1 }).unwrap() else {
            panic!("Enter plans events");
        };
        RoomState::with_data(&mut ev, p, d);
        ev.iter().for_each(|e| st.apply(e, now));
    }
    assert_eq!(st.members[&1].record.rating, 1000);
    assert_eq!(st.members[&1].activity.rooms_entered, 1);
    for (p, seat) in [(1, 0), (2, 1)] {
        act(
            &mut st,
            p,
            Request::Sit {
                room: 1,
                table: 0,
                seat,
            },
            now,
        );
    }
    // The weaker player (seat 0) wins on the rule: 16 + 500/25 = 36, capped at 31.
    for i in 0..4 {
        for (p, y) in [(1, 0), (2, 5)] {
            act(
                &mut st,
                p,
                Request::Move {
                    room: 1,
                    table: 0,
                    mv: vec![i, y],
                },
                now,
            );
        }
    }
    let ev = act(
        &mut st,
        1,
        Request::Move {
            room: 1,
            table: 0,
            mv: vec![4, 0],
        },
        now,
    );
    let recs = RoomState::ended_records(&ev);
    assert_eq!(recs.len(), 2);
    assert_eq!((recs[0].1.rating, recs[1].1.rating), (1031, 1469));
    assert_eq!((recs[0].1.coins, recs[1].1.coins), (53, 0));
    assert_eq!(st.members[&2].record, recs[1].1);
    assert_eq!(st.snapshot().members[0].rating, 1031);
}

/// A login number, once seen with a request, stays with the player through
/// leaving and coming back: the room can refuse an older session.
#[test]
fn the_highest_login_is_kept_across_leave_and_enter() {
    use super::replica::{Delta, Mark};
    let now = Instant::now();
    let mut st = RoomState::new(cfg(1));
    let delta = |st: &RoomState, events, login| Delta {
        index: st.index + 1,
        first_seq: st.seq + 1,
        events,
        mark: Some(Mark {
            player: 1,
            session: login,
            seq: 1,
            login,
        }),
    };
    let enter = |st: &RoomState| match st.plan(1, "a", &Request::Enter { room: 1 }).unwrap() {
        Plan::Events(ev) => ev,
        p => panic!("{p:?}"),
    };
    let d = delta(&st, enter(&st), 7);
    st.apply_delta(&d, now);
    assert_eq!(st.login_of(1), 7);
    let d = delta(&st, vec![RoomEvent::Left { player: 1 }], 5);
    st.apply_delta(&d, now);
    assert_eq!(st.login_of(1), 7, "a lower login never lowers it");
    let d = delta(&st, enter(&st), 9);
    st.apply_delta(&d, now);
    assert_eq!(st.login_of(1), 9);
}
