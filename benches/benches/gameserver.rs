//! Micro-benchmarks of the game server's per-message work: the gateway's
//! token check at login (HMAC-SHA256 and decode), a request frame's decode,
//! a room's plan + apply of one move, and frame compression (deflate-raw)
//! of real game traffic: a busy room's snapshot, the hall's room list, a
//! chat push (the sizes before and after are printed once).
//!
//! `cargo bench -p benches --bench gameserver`

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gameserver::game::GameKind;
use gameserver::proto::frame::{self, Frame, Kind};
use gameserver::proto::msg::{self, Answer, Push, Reply, Request, RoomEvent, RoomInfo};
use gameserver::room::{Plan, RoomConfig, RoomState};
use gameserver::token::{mint, verify, Claims};

const SECRET: &[u8] = b"a 32-byte secret for the bench..";

fn tokens(c: &mut Criterion) {
    let claims = Claims {
        player: 123_456_789,
        zone: 1,
        expires_ms: u64::MAX / 2,
        name: "player-123456789".into(),
        kind: 1,
    };
    let t = mint(SECRET, &claims);
    let mut g = c.benchmark_group("token");
    g.throughput(Throughput::Elements(1));
    g.bench_function("verify", |b| {
        b.iter(|| verify(SECRET, std::hint::black_box(&t), 1, 1_000).expect("valid"))
    });
    g.bench_function("mint", |b| {
        b.iter(|| mint(SECRET, std::hint::black_box(&claims)))
    });
    g.finish();
}

fn frames(c: &mut Criterion) {
    let req = Request::Move {
        room: 7,
        table: 3,
        mv: vec![7, 7],
    };
    let wire = Frame::new(Kind::Request, 42, 1, Bytes::from(msg::encode(&req))).to_bytes();
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_request", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&wire[..]);
            let f = frame::decode(&mut buf, 64 << 10).unwrap().unwrap();
            msg::decode::<Request>(&f.payload).unwrap()
        })
    });
    g.finish();
}

/// Plan and apply one move on a table with a running game (the game is
/// restored from a clone outside the timed part every 8 moves, before
/// anyone has five in a row).
fn room_move(c: &mut Criterion) {
    let now = Instant::now();
    let mut st = RoomState::new(RoomConfig {
        id: 1,
        name: "r".into(),
        game: GameKind::Gomoku,
        tables: 1,
        capacity: 10,
        turn_ms: 60_000,
    });
    let act = |st: &mut RoomState, p: u64, r: Request| {
        let Ok(Plan::Events(ev)) = st.plan(p, "p", &r) else {
            panic!("{r:?} refused")
        };
        ev.iter().for_each(|e| st.apply(e, now));
    };
    for p in [1, 2] {
        act(&mut st, p, Request::Enter { room: 1 });
        let seat = (p - 1) as u8;
        act(
            &mut st,
            p,
            Request::Sit {
                room: 1,
                table: 0,
                seat,
            },
        );
    }
    let start = st.clone();
    let mut g = c.benchmark_group("room");
    g.throughput(Throughput::Elements(1));
    g.bench_function("plan_apply_move", |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            let mut n = 0u64;
            while n < iters {
                let mut s = start.clone();
                let t0 = Instant::now();
                for i in 0..8u64.min(iters - n) {
                    // Black on row 0, white on row 5: four each.
                    let (p, x, y) = (1 + i % 2, (i / 2) as u8, (i % 2 * 5) as u8);
                    act(
                        &mut s,
                        p,
                        Request::Move {
                            room: 1,
                            table: 0,
                            mv: vec![x, y],
                        },
                    );
                    n += 1;
                }
                total += t0.elapsed();
            }
            total
        })
    });
    g.finish();
}

/// Noise (`proto::noise`): one frame sealed by the client and opened and
/// decoded by the gateway (a Move frame, and a 4 KiB snapshot-sized one),
/// and one whole NK handshake (both sides).
fn noise(c: &mut Criterion) {
    use gameserver::proto::noise::{next_frame, respond, take_message, Initiator, StaticKey};
    let key = StaticKey::generate();
    let session = || {
        let mut wire = BytesMut::new();
        let i = Initiator::start(&key.public(), &mut wire).unwrap();
        let m1 = take_message(&mut wire).unwrap();
        let g = respond(&key, &m1, &mut wire).unwrap();
        let m2 = take_message(&mut wire).unwrap();
        (i.finish(&m2).unwrap(), g)
    };
    let req = Request::Move {
        room: 7,
        table: 3,
        mv: vec![7, 7],
    };
    let small = Frame::new(Kind::Request, 42, 1, Bytes::from(msg::encode(&req))).to_bytes();
    let big = Frame::new(Kind::Push, 0, 1, Bytes::from(vec![5u8; 4096])).to_bytes();
    let mut g = c.benchmark_group("noise");
    for (name, f) in [("seal_open_move", &small), ("seal_open_4k", &big)] {
        let ((mut cs, _), (_, mut go)) = session();
        let (mut wire, mut plain) = (BytesMut::new(), BytesMut::new());
        g.throughput(Throughput::Bytes(f.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                cs.seal(f, &mut wire).unwrap();
                next_frame(&mut go, &mut wire, &mut plain, 64 << 10)
                    .unwrap()
                    .unwrap()
            })
        });
    }
    g.throughput(Throughput::Elements(1));
    g.bench_function("handshake", |b| b.iter(session));
    g.finish();
}

/// A room as the bots leave it: 300 members, 40 tables with games running.
fn busy_room() -> RoomState {
    let now = Instant::now();
    let mut st = RoomState::new(RoomConfig {
        id: 1,
        name: "Room 1".into(),
        game: GameKind::Gomoku,
        tables: 100,
        capacity: 400,
        turn_ms: 60_000,
    });
    let mut act = |p: u64, r: Request| {
        if let Ok(Plan::Events(ev)) = st.plan(p, &format!("bot-{p}"), &r) {
            ev.iter().for_each(|e| st.apply(e, now));
        }
    };
    for p in 1..=300u64 {
        act(p, Request::Enter { room: 1 });
    }
    for t in 0..40u16 {
        for s in 0..2u8 {
            let p = 1 + t as u64 * 2 + s as u64;
            act(
                p,
                Request::Sit {
                    room: 1,
                    table: t,
                    seat: s,
                },
            );
        }
        for i in 0..12u8 {
            let p = 1 + t as u64 * 2 + (i % 2) as u64;
            act(
                p,
                Request::Move {
                    room: 1,
                    table: t,
                    mv: vec![(i * 3 + t as u8) % 15, (i * 7) % 15],
                },
            );
        }
    }
    st
}

/// Deflate (level 1, the gateway's, and level 6) and inflate of the
/// payloads the gateway sends most bytes of.
fn compression(c: &mut Criterion) {
    let snapshot = msg::encode::<Reply>(&Ok(Answer::Entered(busy_room().snapshot())));
    let rooms: Vec<RoomInfo> = (1..=100)
        .map(|id| RoomInfo {
            id,
            name: format!("Room {id}"),
            game: "gomoku".into(),
            online: (id * 37) % 400,
            capacity: 400,
        })
        .collect();
    let rooms = msg::encode::<Reply>(&Ok(Answer::Rooms(rooms)));
    let chat = msg::encode(&Push::Event {
        room: 1,
        seq: 123_456,
        event: RoomEvent::Chat {
            player: 1_000_017,
            table: None,
            text: "good game, one more? 再来一局".into(),
        },
    });
    let mut g = c.benchmark_group("deflate");
    for (name, plain) in [("snapshot", &snapshot), ("rooms", &rooms), ("chat", &chat)] {
        let l1 = frame::deflate_at(plain, 1);
        let l6 = frame::deflate_at(plain, 6);
        eprintln!(
            "deflate {name}: {} bytes -> {} at level 1 ({:.1}%), {} at level 6 ({:.1}%)",
            plain.len(),
            l1.len(),
            100.0 * l1.len() as f64 / plain.len() as f64,
            l6.len(),
            100.0 * l6.len() as f64 / plain.len() as f64
        );
        g.throughput(Throughput::Bytes(plain.len() as u64));
        g.bench_function(format!("level1/{name}"), |b| {
            b.iter(|| frame::deflate_at(std::hint::black_box(plain), 1))
        });
        g.bench_function(format!("level6/{name}"), |b| {
            b.iter(|| frame::deflate_at(std::hint::black_box(plain), 6))
        });
        g.bench_function(format!("inflate/{name}"), |b| {
            b.iter(|| frame::inflate(std::hint::black_box(&l1), 1 << 20).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, tokens, frames, room_move, noise, compression);
criterion_main!(benches);
