//! The client against a tiny fake gateway (frames over TCP or WebSocket on
//! 127.0.0.1, port 0) that answers in ways the tests choose.

use super::*;
use crate::accounts::PlayerRecord;
use crate::proto::msg::{MemberView, Outcome, TableView};
use tokio::net::TcpListener;

/// Every test ends by itself within this.
const DEADLINE: Duration = Duration::from_secs(10);

/// Requests the fake holds back (`Ready`) until this many are waiting, then
/// answers them in reverse order.
const HELD: usize = 8;

fn welcome() -> Welcome {
    Welcome {
        player: 7,
        name: "ann".into(),
        session: 1,
        heartbeat_ms: 20,
        dead_ticks: 3,
        server_time_ms: now_ms(),
    }
}

fn frame<T: serde::Serialize>(kind: Kind, seq: u32, v: &T) -> Frame {
    Frame::new(kind, seq, now_ms(), Bytes::from(msg::encode(v)))
}

fn snapshot(room: u32, seq: u64) -> RoomSnapshot {
    RoomSnapshot {
        room,
        name: format!("R{room}"),
        game: "gomoku".into(),
        seq,
        capacity: 400,
        members: vec![MemberView {
            player: 7,
            name: "ann".into(),
            seat: None,
            watching: None,
            wins: 0,
            losses: 0,
            draws: 0,
            games: 0,
            rating: 1200,
            coins: 1000,
        }],
        tables: vec![TableView {
            table: 0,
            seats: vec![None, None],
            ready: vec![false, false],
            game: None,
        }],
    }
}

/// What the fake noticed that a test asserts on.
#[derive(Default)]
struct Seen {
    /// A request whose seq was not above the previous one.
    seq_out_of_order: bool,
    pings: u32,
}

/// One fake session over frames in and out; `None` out closes the connection.
///
/// - Auth with token "good": Welcome; otherwise Bye{BadToken}.
/// - Enter{room}: Entered(snapshot at seq 10).
/// - Chat{room, text = n}: pushes events 11..=10+n, then Done{room, seq}.
/// - Ready{room}: held until [`HELD`] are waiting, answered in reverse order
///   with Done{room, seq: request seq}.
/// - Move: refused with IllegalMove.
/// - Stand: Bye{ShuttingDown} and close.
/// - Ping: Pong echoing the ping's time.
async fn fake_session(
    mut rx: mpsc::Receiver<Frame>,
    tx: mpsc::Sender<Option<Frame>>,
    seen: Arc<parking_lot::Mutex<Seen>>,
) {
    let Some(auth) = rx.recv().await else { return };
    let a: Auth = msg::decode(&auth.payload).unwrap();
    if auth.kind != Kind::Auth || a.token != "good" {
        let bye = Bye {
            code: ErrorCode::BadToken,
            message: "token refused".into(),
        };
        let _ = tx.send(Some(frame(Kind::Bye, 0, &bye))).await;
        let _ = tx.send(None).await;
        return;
    }
    tx.send(Some(frame(Kind::Welcome, 0, &welcome())))
        .await
        .unwrap();
    let (mut last_seq, mut held) = (0u32, Vec::new());
    while let Some(f) = rx.recv().await {
        match f.kind {
            Kind::Ping => {
                seen.lock().pings += 1;
                let pong = Pong {
                    client_time_ms: f.time_ms,
                    rtt_ms: 0,
                };
                let _ = tx.send(Some(frame(Kind::Pong, 0, &pong))).await;
            }
            Kind::Request => {
                if f.seq <= last_seq {
                    seen.lock().seq_out_of_order = true;
                }
                last_seq = f.seq;
                let req: Request = msg::decode(&f.payload).unwrap();
                let reply: Reply = match req {
                    Request::Enter { room } => Ok(Answer::Entered(snapshot(room, 10))),
                    Request::Chat { room, text, .. } => {
                        let n: u64 = text.parse().unwrap();
                        for seq in 11..=10 + n {
                            let event = RoomEvent::Chat {
                                player: 7,
                                table: None,
                                text: seq.to_string(),
                            };
                            let _ = tx
                                .send(Some(frame(
                                    Kind::Push,
                                    0,
                                    &Push::Event { room, seq, event },
                                )))
                                .await;
                        }
                        Ok(Answer::Done { room, seq: 10 + n })
                    }
                    Request::Ready { room } => {
                        held.push((f.seq, room));
                        if held.len() == HELD {
                            for (seq, room) in held.drain(..).rev() {
                                let r: Reply = Ok(Answer::Done {
                                    room,
                                    seq: seq as u64,
                                });
                                let _ = tx.send(Some(frame(Kind::Reply, seq, &r))).await;
                            }
                        }
                        continue;
                    }
                    Request::Stand { .. } => {
                        let bye = Bye {
                            code: ErrorCode::ShuttingDown,
                            message: "bye".into(),
                        };
                        let _ = tx.send(Some(frame(Kind::Bye, 0, &bye))).await;
                        let _ = tx.send(None).await;
                        return;
                    }
                    _ => Err(Fail::new(ErrorCode::IllegalMove, "no")),
                };
                let _ = tx.send(Some(frame(Kind::Reply, f.seq, &reply))).await;
            }
            _ => {}
        }
    }
}

/// A fake gateway on 127.0.0.1:0, TCP or WebSocket, one session per connection.
async fn fake_gateway(ws: bool) -> (SocketAddr, Arc<parking_lot::Mutex<Seen>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(parking_lot::Mutex::new(Seen::default()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let (in_tx, in_rx) = mpsc::channel(64);
            let (out_tx, out_rx) = mpsc::channel(64);
            tokio::spawn(fake_session(in_rx, out_tx, seen2.clone()));
            if ws {
                tokio::spawn(pump_ws(s, in_tx, out_rx));
            } else {
                tokio::spawn(pump_tcp(s, in_tx, out_rx));
            }
        }
    });
    (addr, seen)
}

async fn pump_tcp(
    s: TcpStream,
    in_tx: mpsc::Sender<Frame>,
    mut out_rx: mpsc::Receiver<Option<Frame>>,
) {
    let (mut r, mut w) = s.into_split();
    tokio::spawn(async move {
        let mut buf = BytesMut::new();
        loop {
            while let Ok(Some(f)) = frame::decode(&mut buf, 1 << 20) {
                if in_tx.send(f).await.is_err() {
                    return;
                }
            }
            if r.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return;
            }
        }
    });
    while let Some(Some(f)) = out_rx.recv().await {
        if w.write_all(&f.to_bytes()).await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

async fn pump_ws(
    s: TcpStream,
    in_tx: mpsc::Sender<Frame>,
    mut out_rx: mpsc::Receiver<Option<Frame>>,
) {
    let ws = tokio_tungstenite::accept_async(s).await.unwrap();
    let (mut w, mut r) = ws.split();
    tokio::spawn(async move {
        while let Some(Ok(m)) = r.next().await {
            if let Message::Binary(b) = m {
                if in_tx
                    .send(frame::decode_message(&b, 1 << 20).unwrap())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    while let Some(Some(f)) = out_rx.recv().await {
        if w.send(Message::Binary(f.to_bytes())).await.is_err() {
            return;
        }
    }
    let _ = w.close().await;
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .expect("the test's deadline passed")
}

#[tokio::test]
async fn auth_ok_gives_the_welcome() {
    let (addr, _) = fake_gateway(false).await;
    let c = within(Client::connect(&Target::Tcp(addr), "good"))
        .await
        .unwrap();
    assert_eq!(c.player(), 7);
    assert_eq!(c.welcome().name, "ann");
    assert_eq!(c.welcome().heartbeat_ms, 20);
    assert!(c.closed().is_none());
}

#[tokio::test]
async fn auth_refused_is_closed_with_the_gateway_code() {
    let (addr, _) = fake_gateway(false).await;
    let e = within(Client::connect(&Target::Tcp(addr), "bad"))
        .await
        .unwrap_err();
    assert_eq!(
        e,
        ClientError::Closed {
            code: Some(ErrorCode::BadToken),
            message: "token refused".into()
        }
    );
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let e = within(Client::connect(&Target::Tcp(addr), "good"))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
}

#[tokio::test]
async fn concurrent_requests_get_their_own_replies() {
    let (addr, seen) = fake_gateway(false).await;
    let c = Arc::new(
        within(Client::connect(&Target::Tcp(addr), "good"))
            .await
            .unwrap(),
    );
    let tasks: Vec<_> = (0..HELD as u32)
        .map(|room| {
            let c = c.clone();
            tokio::spawn(async move { (room, c.request(Request::Ready { room }).await) })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        let (room, r) = within(t).await.unwrap();
        match r.unwrap() {
            Answer::Done { room: got, seq } => {
                assert_eq!(got, room, "a reply went to another request");
                seqs.push(seq);
            }
            a => panic!("unexpected answer {a:?}"),
        }
    }
    seqs.sort();
    assert_eq!(seqs, (1..=HELD as u64).collect::<Vec<_>>());
    assert!(
        !seen.lock().seq_out_of_order,
        "request sequence numbers reached the wire out of order"
    );
    // A refusal is a Fail; the session goes on.
    let e = within(c.request(Request::Move {
        room: 1,
        table: 0,
        mv: vec![1, 1],
    }))
    .await
    .unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Fail(Fail {
                code: ErrorCode::IllegalMove,
                ..
            })
        ),
        "{e:?}"
    );
    assert!(matches!(
        within(c.request(Request::Enter { room: 3 })).await,
        Ok(Answer::Entered(_))
    ));
}

#[tokio::test]
async fn a_request_without_answer_times_out_and_forgets_its_slot() {
    let (addr, _) = fake_gateway(false).await;
    let c = within(Client::connect(&Target::Tcp(addr), "good"))
        .await
        .unwrap();
    let e = c
        .request_within(Request::Ready { room: 1 }, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(e, ClientError::Timeout(Duration::from_millis(50)));
    assert!(c.shared.pending.lock().is_empty());
}

#[tokio::test]
async fn pushes_arrive_in_order_and_the_view_follows() {
    let (addr, _) = fake_gateway(false).await;
    let c = within(Client::connect(&Target::Tcp(addr), "good"))
        .await
        .unwrap();
    let Answer::Entered(s) = within(c.request(Request::Enter { room: 5 })).await.unwrap() else {
        panic!("not Entered")
    };
    let mut view = RoomView::new(s);
    let n = 300u64;
    let r = within(c.request(Request::Chat {
        room: 5,
        table: None,
        text: n.to_string(),
    }))
    .await
    .unwrap();
    assert_eq!(
        r,
        Answer::Done {
            room: 5,
            seq: 10 + n
        }
    );
    for want in 11..=10 + n {
        let p = within(c.next_push()).await.unwrap();
        let Push::Event { seq, .. } = &p else {
            panic!("{p:?}")
        };
        assert_eq!(*seq, want);
        assert_eq!(view.apply_push(&p), Applied::Event);
    }
    assert_eq!(
        (view.seq, view.chats, view.gaps, view.stale, view.mismatches),
        (10 + n, n, 0, 0, 0)
    );
    assert!(c.try_next_push().is_none());
    assert_eq!(c.stats().pushes, n);
}

#[tokio::test]
async fn heartbeat_measures_the_round_trip() {
    let (addr, seen) = fake_gateway(false).await;
    let c = within(Client::connect(&Target::Tcp(addr), "good"))
        .await
        .unwrap();
    within(async {
        while c.stats().pongs < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let rtt = c.rtt().expect("an rtt after pongs");
    assert!(rtt < Duration::from_secs(1), "{rtt:?}");
    assert!(seen.lock().pings >= 3);
}

#[tokio::test]
async fn a_bye_ends_the_session_and_fails_what_follows() {
    let (addr, _) = fake_gateway(false).await;
    let c = within(Client::connect(&Target::Tcp(addr), "good"))
        .await
        .unwrap();
    let e = within(c.request(Request::Stand { room: 1 }))
        .await
        .unwrap_err();
    let want = Closed {
        code: Some(ErrorCode::ShuttingDown),
        message: "bye".into(),
    };
    assert_eq!(e, ClientError::from(want.clone()));
    assert_eq!(within(c.wait_closed()).await, want);
    assert_eq!(c.closed(), Some(want.clone()));
    assert_eq!(
        within(c.request(Request::Rooms)).await.unwrap_err(),
        ClientError::from(want)
    );
    assert!(within(c.next_push()).await.is_none());
}

#[tokio::test]
async fn websocket_sessions_work_the_same() {
    let (addr, seen) = fake_gateway(true).await;
    let e = within(Client::connect(&Target::ws(addr), "bad"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Closed {
                code: Some(ErrorCode::BadToken),
                ..
            }
        ),
        "{e:?}"
    );
    let url = format!("ws://{addr}/");
    let bind: IpAddr = "127.0.0.3".parse().unwrap();
    let from = within(Client::connect(&Target::WsFrom { url, bind }, "good"))
        .await
        .unwrap();
    assert!(matches!(
        within(from.request(Request::Enter { room: 1 })).await,
        Ok(Answer::Entered(_))
    ));
    let c = within(Client::connect(&Target::ws(addr), "good"))
        .await
        .unwrap();
    assert_eq!(c.player(), 7);
    let Answer::Entered(s) = within(c.request(Request::Enter { room: 2 })).await.unwrap() else {
        panic!("not Entered")
    };
    let mut view = RoomView::new(s);
    within(c.request(Request::Chat {
        room: 2,
        table: None,
        text: "3".into(),
    }))
    .await
    .unwrap();
    for _ in 0..3 {
        assert_eq!(
            view.apply_push(&within(c.next_push()).await.unwrap()),
            Applied::Event
        );
    }
    within(async {
        while c.rtt().is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(seen.lock().pings >= 1);
}

#[tokio::test]
async fn tcp_from_a_chosen_source_address() {
    let (addr, _) = fake_gateway(false).await;
    let bind: IpAddr = "127.0.0.2".parse().unwrap();
    let c = within(Client::connect(&Target::TcpFrom { addr, bind }, "good"))
        .await
        .unwrap();
    assert!(matches!(
        within(c.request(Request::Enter { room: 1 })).await,
        Ok(Answer::Entered(_))
    ));
}

#[test]
fn ws_urls_name_their_authority() {
    assert_eq!(ws_authority("ws://127.0.0.1:9/"), Some("127.0.0.1:9"));
    assert_eq!(ws_authority("ws://h:1"), Some("h:1"));
    assert_eq!(ws_authority("http://h:1/"), None);
    assert_eq!(ws_authority("ws:///x"), None);
}

fn ev(view: &mut RoomView, e: RoomEvent) -> Applied {
    view.apply(view.seq + 1, &e)
}

#[test]
fn the_view_plays_a_game_and_counts_what_does_not_fit() {
    let mut v = RoomView::new(snapshot(1, 10));
    assert_eq!(
        ev(
            &mut v,
            RoomEvent::Entered {
                player: 8,
                name: "bob".into(),
                data: Default::default(),
            }
        ),
        Applied::Event
    );
    ev(
        &mut v,
        RoomEvent::Sat {
            table: 0,
            seat: 0,
            player: 7,
        },
    );
    ev(
        &mut v,
        RoomEvent::Sat {
            table: 0,
            seat: 1,
            player: 8,
        },
    );
    assert_eq!(v.seat_of(8), Some((0, 1)));
    ev(
        &mut v,
        RoomEvent::Started {
            table: 0,
            game_no: 1,
            players: vec![7, 8],
            turn_ms: 1000,
        },
    );
    for (i, x) in [0u8, 0, 1, 1, 2, 2, 3, 3, 4].into_iter().enumerate() {
        let seat = (i % 2) as u8;
        let mv = vec![x, seat];
        ev(
            &mut v,
            RoomEvent::Moved {
                table: 0,
                seat,
                mv,
                auto: false,
            },
        );
    }
    assert_eq!(v.game(0).unwrap().turn, 1);
    let outcome = Outcome::Win {
        seat: 0,
        player: 7,
        reason: crate::proto::msg::WinReason::Rule,
    };
    ev(
        &mut v,
        RoomEvent::Ended {
            table: 0,
            game_no: 1,
            outcome,
            moves: 9,
            records: vec![
                (
                    7,
                    PlayerRecord {
                        games: 1,
                        wins: 1,
                        rating: 1216,
                        ..PlayerRecord::default()
                    },
                ),
                (
                    8,
                    PlayerRecord {
                        games: 1,
                        losses: 1,
                        rating: 1184,
                        ..PlayerRecord::default()
                    },
                ),
            ],
        },
    );
    assert_eq!(v.mismatches, 0);
    assert_eq!(v.finished.len(), 1);
    assert_eq!(v.finished[0].game.moves.len(), 9);
    assert_eq!((v.members[&7].wins, v.members[&8].losses), (1, 1));
    assert_eq!((v.members[&7].rating, v.members[&8].rating), (1216, 1184));
    assert_eq!(v.tables[0].ready, vec![false, false]);
    // A move after the end, a replayed event, a gap.
    ev(
        &mut v,
        RoomEvent::Moved {
            table: 0,
            seat: 1,
            mv: vec![9, 9],
            auto: false,
        },
    );
    assert_eq!(v.mismatches, 1);
    let seq = v.seq;
    assert_eq!(v.apply(seq, &RoomEvent::Left { player: 8 }), Applied::Stale);
    assert_eq!(
        v.apply(seq + 3, &RoomEvent::Ready { table: 0, seat: 0 }),
        Applied::AfterGap { missed: 2 }
    );
    assert_eq!((v.gaps, v.missed, v.stale), (1, 2, 1));
    // A snapshot re-bases; an older one is a replay.
    assert_eq!(
        v.apply_push(&Push::Snapshot(snapshot(1, v.seq + 5))),
        Applied::Rebased
    );
    assert_eq!(v.snapshots, 1);
    assert_eq!(v.snapshot(), snapshot(1, v.seq));
    assert_eq!(v.rebase(snapshot(1, 3)), Applied::Stale);
    assert_eq!(
        v.apply_push(&Push::Snapshot(snapshot(2, 99))),
        Applied::OtherRoom
    );
}
