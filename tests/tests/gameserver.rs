//! The game cluster as real processes on 127.0.0.1: room-server pairs (hs),
//! a gateway, and players over TCP and WebSocket. A room-server master is
//! SIGKILLed or switched over mid-game; the players must not notice.

use std::time::{Duration, Instant};

use common::*;
use gameserver::client::{Client, Target};
use gameserver::proto::msg::{Answer, ErrorCode, Request};
use tools::gscluster::{Cluster, ClusterOpts};

mod common;

fn cluster(dir: &tempfile::TempDir) -> Cluster {
    let mut o = ClusterOpts::new(dir.path());
    o.pairs = 1;
    o.rooms_per_pair = 2;
    o.tables = 4;
    o.turn_ms = 60_000; // no timer moves in these games
    o.balancer = false;
    o.echo = true;
    Cluster::start(o).expect("cluster starts")
}

#[test]
fn two_players_play_a_game_to_a_result() {
    let dir = tempfile::tempdir().unwrap();
    let cl = cluster(&dir);
    rt().block_on(async {
        let gw = cl.gateways[0].tcp;
        let mut a = Player::join(&cl, 1, Target::Tcp(gw), 0).await;
        let mut b = Player::join(&cl, 2, Target::ws(cl.gateways[0].ws.unwrap()), 1).await;
        play_game(&mut a, &mut b, usize::MAX, || {}).await;
        b.see(a.acked.last().unwrap().0).await;
        a.see(a.acked.last().unwrap().0).await;
        check_outcome(&a, 1);
        check_outcome(&b, 1);
        check_players(&cl, &a, &b);
        // The result is recorded in the room.
        let Answer::Snapshot(s) = a.c.request(Request::Snapshot { room: ROOM }).await.unwrap()
        else {
            panic!()
        };
        let m = s.members.iter().find(|m| m.player == 1).unwrap();
        assert_eq!((m.wins, m.losses), (1, 0));
    });
}

#[test]
fn a_killed_master_mid_game_is_not_noticed_by_the_players() {
    let dir = tempfile::tempdir().unwrap();
    let mut cl = cluster(&dir);
    rt().block_on(async {
        let gw = cl.gateways[0].tcp;
        let mut a = Player::join(&cl, 1, Target::Tcp(gw), 0).await;
        let mut b = Player::join(&cl, 2, Target::Tcp(gw), 1).await;
        let mut killed = None;
        let cl_ref = &mut cl;
        play_game(&mut a, &mut b, 3, || {
            killed = Some(cl_ref.kill_master(0).expect("kill the master"))
        })
        .await;
        let killed = killed.expect("the master was killed mid-game");
        a.see(a.acked.last().unwrap().0).await;
        b.see(a.acked.last().unwrap().0).await;
        check_outcome(&a, 1);
        check_players(&cl, &a, &b);
        assert_ne!(cl.master(0), Some(killed), "the standby took over");
        // The killed node comes back as the standby; a second game survives a second kill.
        cl.restart(0, killed).expect("restart");
        cl.wait_pair(0, STEP).expect("pair whole again");
        a.c.request(Request::Ready { room: ROOM }).await.unwrap();
        b.c.request(Request::Ready { room: ROOM }).await.unwrap();
        a.acked.clear();
        b.acked.clear();
        let cl_ref = &mut cl;
        play_game(&mut a, &mut b, 5, || {
            cl_ref.kill_master(0).expect("kill the new master");
        })
        .await;
        a.see(a.acked.last().unwrap().0).await;
        b.see(a.acked.last().unwrap().0).await;
        check_players(&cl, &a, &b);
        assert_eq!(a.view.finished.len(), 2);
    });
}

#[test]
fn a_switchover_and_a_restart_of_the_old_master_kick_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let mut cl = cluster(&dir);
    rt().block_on(async {
        let gw = cl.gateways[0].tcp;
        let mut a = Player::join(&cl, 1, Target::Tcp(gw), 0).await;
        let mut b = Player::join(&cl, 2, Target::Tcp(gw), 1).await;
        let mut old = None;
        let cl_ref = &cl;
        play_game(&mut a, &mut b, 2, || {
            old = Some(cl_ref.switchover(0).expect("switchover"))
        })
        .await;
        let old = old.unwrap();
        a.see(a.acked.last().unwrap().0).await;
        b.see(a.acked.last().unwrap().0).await;
        check_players(&cl, &a, &b);
        let new = cl.master(0).expect("a master after the switchover");
        assert_ne!(new, old);
        // The old master, now the standby, is restarted (an upgrade): nobody notices.
        let mut p = cl.pairs[0].nodes[old].proc.take().unwrap();
        p.kill9();
        let _ = p.wait_exit(STEP);
        cl.restart(0, old).unwrap();
        cl.wait_pair(0, STEP).unwrap();
        a.drain();
        b.drain();
        let Answer::Done { .. } =
            a.c.request(Request::Chat {
                room: ROOM,
                table: None,
                text: "still here".into(),
            })
            .await
            .unwrap()
        else {
            panic!()
        };
        assert!(a.c.closed().is_none() && b.c.closed().is_none());
    });
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cl = cluster(&dir);
    rt().block_on(async {
        let gw = Target::Tcp(cl.gateways[0].tcp);
        let mut a = Player::join(&cl, 1, gw.clone(), 0).await;
        let mut b = Player::join(&cl, 2, gw.clone(), 1).await;
        let code = |r: Result<Answer, gameserver::client::ClientError>| match r {
            Err(gameserver::client::ClientError::Fail(f)) => f.code,
            other => panic!("expected a refusal, got {other:?}"),
        };
        let Answer::Snapshot(s0) = a.c.request(Request::Snapshot { room: ROOM }).await.unwrap()
        else {
            panic!("Snapshot answered without one")
        };
        let before = s0.seq;
        assert_eq!(
            code(
                b.c.request(Request::Move {
                    room: ROOM,
                    table: TABLE,
                    mv: vec![7, 7]
                })
                .await
            ),
            ErrorCode::NotYourTurn
        );
        assert_eq!(
            code(
                a.c.request(Request::Move {
                    room: ROOM,
                    table: TABLE,
                    mv: vec![20, 7]
                })
                .await
            ),
            ErrorCode::IllegalMove
        );
        assert_eq!(
            code(a.c.request(Request::Enter { room: 999 }).await),
            ErrorCode::UnknownRoom
        );
        assert_eq!(
            code(
                a.c.request(Request::Sit {
                    room: ROOM,
                    table: 99,
                    seat: 0
                })
                .await
            ),
            ErrorCode::NoSuchTable
        );
        a.play(7, 7).await;
        assert_eq!(
            code(
                b.c.request(Request::Move {
                    room: ROOM,
                    table: TABLE,
                    mv: vec![7, 7]
                })
                .await
            ),
            ErrorCode::IllegalMove
        );
        // Only the one good move happened.
        b.see(before + 1).await;
        b.drain();
        assert_eq!(b.view.seq, before + 1);
        assert!(matches!(b.view.game(TABLE).map(|g| g.moves.len()), Some(1)));
        // A forged token is refused with a clear reason.
        let forged = cl.token(3, "x").replace('a', "b");
        match Client::connect(&gw, &forged).await {
            Err(e) => assert!(e.to_string().contains("token"), "{e}"),
            Ok(_) => panic!("a forged token was accepted"),
        }
    });
}

/// One guest login over HTTP: the gateway it hands out.
fn guest_gateway(cl: &Cluster) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(cl.login_addr).expect("login listens");
    c.set_read_timeout(Some(STEP)).unwrap();
    let body = r#"{"name":"g"}"#;
    write!(
        c,
        "POST /v1/guest HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let json = out.split("\r\n\r\n").nth(1).expect("a body");
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["gateway"].as_str().expect("a gateway").to_string()
}

#[test]
fn a_drained_gateway_gets_no_new_players_and_keeps_its_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = ClusterOpts::new(dir.path());
    o.pairs = 1;
    o.rooms_per_pair = 1;
    o.tables = 2;
    o.gateways = 2;
    let cl = Cluster::start(o).expect("cluster starts");
    let (a, b) = (cl.gateways[0].tcp, cl.gateways[1].tcp);
    rt().block_on(async {
        let mut bal = balancer::client::Client::new(vec![cl.balancer_addr.unwrap()]);
        // Both gateways report; wait until the balancer runs both.
        let deadline = Instant::now() + STEP;
        let id_a = loop {
            let z = bal.zone(cl.opts.zone).await.expect("zone view");
            let running: Vec<_> = z.processes.iter().filter(|p| p.status == 101).collect();
            if running.len() == 2 {
                break running
                    .iter()
                    .find(|p| p.port == a.port())
                    .expect("gateway A registered")
                    .id
                    .clone();
            }
            assert!(
                Instant::now() < deadline,
                "gateways never both running: {z:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let p = Player::join(&cl, 7, Target::Tcp(a), 0).await;
        bal.drain(&id_a).await.expect("drain gateway A");
        for _ in 0..10 {
            assert_eq!(
                guest_gateway(&cl),
                b.to_string(),
                "a drained gateway was handed out"
            );
        }
        // The session on A goes on.
        p.c.request(Request::Chat {
            room: ROOM,
            table: None,
            text: "on a drained gateway".into(),
        })
        .await
        .unwrap();
        assert!(p.c.closed().is_none());
    });
}

/// A player who reconnects starts a new session whose sequence numbers start
/// again: its requests are new, not re-sends of the old session's.
#[test]
fn a_reconnected_player_is_not_taken_for_a_resend() {
    let dir = tempfile::tempdir().unwrap();
    let cl = cluster(&dir);
    let gw = Target::Tcp(cl.gateways[0].tcp);
    rt().block_on(async {
        let a = Player::join(&cl, 1, gw.clone(), 0).await; // seq 1 Enter, 2 Sit
        for i in 0..3 {
            a.c.request(Request::Chat {
                room: ROOM,
                table: None,
                text: format!("before {i}"),
            })
            .await
            .unwrap(); // seq 3..5
        }
        a.c.close();
        drop(a);
        let c = Client::connect(&gw, &cl.token(1, "p1"))
            .await
            .expect("reconnect");
        let Answer::Entered(s) = c.request(Request::Enter { room: ROOM }).await.unwrap() else {
            panic!("Enter answered without a snapshot")
        };
        let seat = |s: &gameserver::proto::msg::RoomSnapshot| {
            s.members
                .iter()
                .find(|m| m.player == 1)
                .and_then(|m| m.seat)
        };
        assert_eq!(
            seat(&s),
            Some((TABLE, 0)),
            "the seat is kept across the reconnect"
        );
        c.request(Request::Stand { room: ROOM })
            .await
            .expect("stand (seq 2 of the new session)");
        let Answer::Snapshot(s) = c.request(Request::Snapshot { room: ROOM }).await.unwrap() else {
            panic!("Snapshot answered without one")
        };
        assert_eq!(
            seat(&s),
            None,
            "the new session's Stand was done, not answered as a re-send"
        );
    });
}
