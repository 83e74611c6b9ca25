//! The bots against a fake gateway on 127.0.0.1:0 whose rooms are the real
//! [`RoomState`] (plan, apply, snapshot): games are played to their end by
//! the real rules, and what the bots saw is compared with the room's state.

use super::*;
use std::collections::HashMap;

use gameserver::game::GameKind;
use gameserver::proto::frame::{self, Frame, Kind};
use gameserver::proto::msg::{self, Auth, Pong, Reply, Welcome};
use gameserver::room::{Plan, RoomConfig, RoomState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const SECRET: &[u8] = b"bot-test-secret";
const DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn moves_are_legal_and_near_the_last_stones() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut moves: Vec<(u8, Vec<u8>, bool)> = Vec::new();
    assert_eq!(pick_move(&moves, &mut rng), Some(vec![7, 7]));
    for i in 0..225 {
        let mv = pick_move(&moves, &mut rng).expect("a free cell while the board is not full");
        assert!(mv[0] < 15 && mv[1] < 15);
        assert!(
            !moves.iter().any(|(_, m, _)| *m == mv),
            "cell {mv:?} played twice"
        );
        moves.push(((i % 2) as u8, mv, false));
    }
    assert_eq!(
        pick_move(&moves, &mut rng),
        None,
        "a full board has no move"
    );
    let near = pick_move(&moves[..1], &mut rng).unwrap();
    assert!((near[0] as i32 - 7).abs() <= 2 && (near[1] as i32 - 7).abs() <= 2);
}

#[test]
fn five_in_a_row_is_seen_before_the_ended_event() {
    let mv = |seat: u8, x: u8, y: u8| (seat, vec![x, y], false);
    let mut moves = vec![
        mv(0, 3, 3),
        mv(1, 0, 0),
        mv(0, 4, 4),
        mv(1, 0, 1),
        mv(0, 6, 6),
        mv(1, 0, 2),
        mv(0, 7, 7),
    ];
    assert!(!last_move_won(&moves));
    moves.push(mv(1, 9, 9));
    assert!(!last_move_won(&moves), "the other seat's move");
    moves.push(mv(0, 5, 5)); // fills the diagonal's gap: 3..=7
    assert!(last_move_won(&moves));
    assert!(!last_move_won(&[]));
}

#[test]
fn bots_pair_at_tables_and_spread_over_rooms() {
    let mut cfg = BotConfig::new("127.0.0.1:1".parse().unwrap(), b"s", 1);
    cfg.rooms = 3;
    cfg.first_room = 10;
    assert_eq!(placement(&cfg, 0), (10, 0, 0));
    assert_eq!(placement(&cfg, 1), (10, 0, 1));
    assert_eq!(placement(&cfg, 2), (11, 0, 0));
    assert_eq!(placement(&cfg, 7), (10, 1, 1));
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(source_addr(0), ip("127.0.0.1"));
    assert_eq!(source_addr(CONNECTIONS_PER_SOURCE_MAX - 1), ip("127.0.0.1"));
    assert_eq!(source_addr(CONNECTIONS_PER_SOURCE_MAX), ip("127.0.0.2"));
    assert_eq!(
        source_addr(CONNECTIONS_PER_SOURCE_MAX * 300),
        ip("127.0.1.45")
    );
}

#[test]
fn flags_make_a_config_or_say_what_is_missing() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: BotArgs,
    }
    let parse = |args: &[&str]| {
        Cli::try_parse_from(std::iter::once("gs-bot").chain(args.iter().copied()))
            .unwrap()
            .a
    };
    assert!(parse(&["--gateway", "127.0.0.1:5"])
        .config()
        .unwrap_err()
        .contains("--secret"));
    assert!(parse(&["--secret", "s"])
        .config()
        .unwrap_err()
        .contains("--gateway"));
    let c = parse(&[
        "--gateway",
        "127.0.0.1:5",
        "--secret",
        "s",
        "--bots",
        "6",
        "--games",
        "3",
    ])
    .config()
    .unwrap();
    assert_eq!(
        (c.bots, c.games, c.seconds),
        (6, Some(3), Some(GAMES_SECONDS_MAX))
    );
    assert!(
        matches!(c.tokens, TokenSource::Secret { ref secret, zone: 1, first_player: 1_000_000 } if secret == b"s")
    );
    let c = parse(&["--login", "http://127.0.0.1:9"]).config().unwrap();
    assert_eq!(c.seconds, Some(10.0));
}

/// A fake gateway: sessions, and rooms 1..=rooms with 4 tables each.
struct Fake {
    rooms: BTreeMap<u32, RoomState>,
    /// Each player's session queue.
    sessions: HashMap<u64, mpsc::UnboundedSender<Frame>>,
}

fn frame<T: serde::Serialize>(kind: Kind, seq: u32, v: &T) -> Frame {
    Frame::new(
        kind,
        seq,
        gameserver::token::now_ms(),
        msg::encode(v).into(),
    )
}

impl Fake {
    /// Does a request the way the room server does (without hs); the
    /// reply, and the events pushed to every member but the one who entered.
    fn handle(&mut self, player: u64, name: &str, req: &Request) -> Reply {
        let room_id = req
            .room()
            .ok_or_else(|| msg::Fail::new(msg::ErrorCode::BadRequest, "no room"))?;
        let room = self
            .rooms
            .get_mut(&room_id)
            .ok_or_else(|| msg::Fail::new(msg::ErrorCode::UnknownRoom, "no such room"))?;
        let events = match room.plan(player, name, req)? {
            Plan::Answer(a) => return Ok(a),
            Plan::Events(e) => e,
        };
        for e in &events {
            room.apply(e, std::time::Instant::now());
            for p in room.members.keys() {
                let entering = matches!(e, RoomEvent::Entered { player: q, .. } if *q == *p);
                if let (false, Some(s)) = (entering, self.sessions.get(p)) {
                    let push = Push::Event {
                        room: room_id,
                        seq: room.seq,
                        event: e.clone(),
                    };
                    let _ = s.send(frame(Kind::Push, 0, &push));
                }
            }
        }
        Ok(room.answer_done(req, room.seq))
    }
}

async fn fake_gateway(rooms: u32) -> (SocketAddr, Arc<Mutex<Fake>>) {
    let mut fake = Fake {
        rooms: BTreeMap::new(),
        sessions: HashMap::new(),
    };
    for id in 1..=rooms {
        let cfg = RoomConfig {
            id,
            name: format!("R{id}"),
            game: GameKind::Gomoku,
            tables: 4,
            capacity: 400,
            turn_ms: 30_000,
        };
        fake.rooms.insert(id, RoomState::new(cfg));
    }
    let fake = Arc::new(Mutex::new(fake));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let f = fake.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(fake_session(s, f.clone()));
        }
    });
    (addr, fake)
}

async fn fake_session(s: tokio::net::TcpStream, fake: Arc<Mutex<Fake>>) {
    s.set_nodelay(true).unwrap();
    let (mut r, mut w) = s.into_split();
    // Unbounded on purpose and cannot grow past the test: it holds what this fake
    // sends in one test's bounded steps, written out as fast as the socket takes it.
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
    tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if w.write_all(&f.to_bytes()).await.is_err() {
                return;
            }
        }
    });
    let mut buf = Default::default();
    let mut who: Option<(u64, String)> = None;
    loop {
        let f = match frame::decode(&mut buf, 1 << 20).unwrap() {
            Some(f) => f,
            None => {
                if r.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                continue;
            }
        };
        match (f.kind, &who) {
            (Kind::Auth, None) => {
                let a: Auth = msg::decode(&f.payload).unwrap();
                let c = match gameserver::token::verify(
                    SECRET,
                    &a.token,
                    1,
                    gameserver::token::now_ms(),
                ) {
                    Ok(c) => c,
                    Err(f) => {
                        let bye = msg::Bye {
                            code: f.code,
                            message: f.message,
                        };
                        let _ = tx.send(frame(Kind::Bye, 0, &bye));
                        return;
                    }
                };
                fake.lock().unwrap().sessions.insert(c.player, tx.clone());
                let w = Welcome {
                    player: c.player,
                    name: c.name.clone(),
                    session: c.player,
                    heartbeat_ms: 100,
                    dead_ticks: 5,
                    server_time_ms: gameserver::token::now_ms(),
                };
                let _ = tx.send(frame(Kind::Welcome, 0, &w));
                who = Some((c.player, c.name));
            }
            (Kind::Ping, Some(_)) => {
                let _ = tx.send(frame(
                    Kind::Pong,
                    0,
                    &Pong {
                        client_time_ms: f.time_ms,
                        rtt_ms: 0,
                    },
                ));
            }
            (Kind::Request, Some((player, name))) => {
                let req: Request = msg::decode(&f.payload).unwrap();
                let reply = fake.lock().unwrap().handle(*player, name, &req);
                let _ = tx.send(frame(Kind::Reply, f.seq, &reply));
            }
            _ => panic!("the fake gateway did not expect {f:?}"),
        }
    }
}

fn config(addr: SocketAddr, bots: usize) -> BotConfig {
    let mut c = BotConfig::new(addr, SECRET, 1);
    c.bots = bots;
    c.move_ms = 0;
    c.chat_ms = 20;
    c.games = Some(2);
    c.seconds = Some(DEADLINE.as_secs_f64());
    c.keep_logs = true;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_play_games_to_the_end_and_saw_what_the_room_holds() {
    let (addr, fake) = fake_gateway(2).await;
    let mut cfg = config(addr, 8);
    cfg.rooms = 2;
    let r = run_bots(cfg).await;
    eprintln!(
        "DEBUG {:?}",
        BotReport {
            logs: vec![],
            ..r.clone()
        }
    );
    assert_eq!(
        (
            r.connected,
            r.connections_held,
            r.disconnects,
            r.connect_failed
        ),
        (8, 8, 0, 0),
        "{r:?}"
    );
    assert!(
        r.seconds < DEADLINE.as_secs_f64(),
        "the run stopped on its deadline, not its games: {r:?}"
    );
    assert_eq!(r.games, 8, "4 tables × 2 games");
    assert_eq!(
        (r.gaps, r.missed, r.stale, r.snapshots, r.mismatches),
        (0, 0, 0, 0, 0)
    );
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.chat.count > 0 && r.action.count == r.actions && r.actions > 0);
    assert!(r.action.p50_ms <= r.action.max_ms);
    let fake = fake.lock().unwrap();
    for log in &r.logs {
        let room = &fake.rooms[&log.room];
        let g = room.tables[log.table as usize]
            .game
            .as_ref()
            .expect("a game was played");
        assert_eq!(g.game_no, 2);
        assert!(g.outcome.is_some());
        // Every move of the last game this bot was acknowledged is in the
        // room's move list once, in the order of the acknowledgements.
        let mine: Vec<&Vec<u8>> = log
            .acked
            .iter()
            .filter(|a| a.game_no == 2)
            .map(|a| &a.mv)
            .collect();
        let theirs: Vec<&Vec<u8>> = g
            .moves
            .iter()
            .filter(|(s, _, _)| *s == log.seat)
            .map(|(_, m, _)| m)
            .collect();
        assert_eq!(mine, theirs, "bot {} at table {}", log.index, log.table);
        assert!(log.acked.windows(2).all(|w| w[0].seq < w[1].seq));
        // The bot's view of its table is the room's.
        let view = log.view.as_ref().expect("entered");
        assert_eq!(
            view.tables[log.table as usize],
            room.snapshot().tables[log.table as usize]
        );
        assert_eq!(
            view.finished
                .iter()
                .filter(|f| f.table == log.table)
                .count(),
            2
        );
        assert!(log.closed.is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_whose_gateway_is_gone_is_counted_and_the_run_ends() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let r = run_bots(config(addr, 2)).await;
    assert_eq!(
        (r.connected, r.connect_failed, r.connections_held),
        (0, 2, 0)
    );
    assert_eq!(r.errors.get("Connect"), Some(&2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_counted_by_its_code() {
    let (addr, _fake) = fake_gateway(1).await;
    let mut cfg = config(addr, 2);
    cfg.tokens = TokenSource::Secret {
        secret: b"another secret".to_vec(),
        zone: 1,
        first_player: 1,
    };
    let r = run_bots(cfg).await;
    assert_eq!((r.connected, r.connect_failed), (0, 2));
    assert_eq!(r.errors.get("BadToken"), Some(&2), "{:?}", r.errors);
    assert!(r.seconds < DEADLINE.as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_stop_ends_the_run() {
    let (addr, _fake) = fake_gateway(1).await;
    let mut cfg = config(addr, 2);
    cfg.games = None;
    cfg.move_ms = 50;
    let (tx, rx) = watch::channel(false);
    let run = tokio::spawn(run_bots_until(cfg, rx));
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.send(true).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the run stops")
        .unwrap();
    assert_eq!((r.connected, r.connections_held), (2, 2));
    assert!(r.moves_acked > 0, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_held_and_measured() {
    let (addr, _fake) = fake_gateway(1).await;
    let cfg = HoldConfig {
        gateways: vec![addr],
        ws: false,
        noise_key: None,
        wss_ca: None,
        secret: SECRET.to_vec(),
        zone: 1,
        first_player: 1,
        count: 50,
        spread_sources: true,
        connect_concurrency: 8,
        hold: Duration::from_millis(300),
        // This process stands in for the gateway: its RSS is some number.
        gateway_pids: vec![std::process::id()],
        announce_held: false,
    };
    let r = tokio::time::timeout(DEADLINE, hold_connections(cfg))
        .await
        .unwrap();
    assert_eq!(
        (r.count, r.connections_held, r.connect_failed),
        (50, 50, 0),
        "{r:?}"
    );
    assert!(r.gateway_rss_bytes > 0 && r.client_rss_bytes > 0);
    assert!(rss_bytes(u32::MAX).is_none());
}

/// A fake login endpoint: `POST /v1/guest` answers a guest token for the
/// next player and the fake gateway's address.
async fn fake_login(gateway: SocketAddr) -> (String, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let heads = Arc::new(Mutex::new(Vec::new()));
    let h = heads.clone();
    tokio::spawn(async move {
        for player in 500u64.. {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            // The request is small: read until its JSON body has arrived.
            while !req.ends_with(b"}") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            h.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&req).into_owned());
            let claims = gameserver::token::Claims {
                player,
                zone: 1,
                expires_ms: gameserver::token::now_ms() + 60_000,
                name: format!("guest{player}"),
                kind: 0,
            };
            let body = serde_json::json!({
                "player": player,
                "name": claims.name,
                "token": gameserver::token::mint(SECRET, &claims),
                "expires_ms": claims.expires_ms,
                "gateway": gateway.to_string(),
                "ws": null,
            })
            .to_string();
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(answer.as_bytes()).await;
        }
    });
    (url, heads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_take_guest_tokens_from_the_login() {
    let (addr, _fake) = fake_gateway(1).await;
    let (url, heads) = fake_login(addr).await;
    let mut cfg = config(addr, 2);
    cfg.gateways.clear(); // the login names the gateway
    cfg.tokens = TokenSource::Login { url: url.clone() };
    cfg.games = Some(1);
    let r = run_bots(cfg).await;
    assert_eq!(
        (r.connected, r.connections_held, r.games),
        (2, 2, 1),
        "{r:?}"
    );
    let mut players: Vec<u64> = r.logs.iter().map(|l| l.player).collect();
    players.sort();
    assert_eq!(players, vec![500, 501]);
    let heads = heads.lock().unwrap().clone();
    assert!(
        heads
            .iter()
            .all(|h| h.starts_with("POST /v1/guest HTTP/1.1\r\n")),
        "{heads:?}"
    );
    assert!(guest_login("ftp://x", "n").await.is_err());
}
