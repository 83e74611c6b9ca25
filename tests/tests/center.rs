//! The center pair as real processes: its master is SIGKILLed; the standby
//! takes over and still knows every online player and every blacklist
//! entry: a takeover afterwards still closes the old session, the
//! blacklisted account is still refused, and login numbers keep growing.

use std::time::{Duration, Instant};

use common::*;
use gameserver::client::{Client, ClientError, Target};
use gameserver::proto::msg::{Answer, ErrorCode, Request};
use tools::gscluster::{Cluster, ClusterOpts};

mod common;

fn login_of(cl: &Cluster, player: u64) -> u64 {
    let (s, v) = cl
        .center_admin("GET", &format!("/v1/players/{player}"), None)
        .expect("admin");
    assert_eq!(s, 200, "{v}");
    v["login"]
        .as_u64()
        .unwrap_or_else(|| panic!("player {player} not online: {v}"))
}

#[test]
fn a_killed_center_master_is_replaced_by_a_standby_that_knows_everyone() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = ClusterOpts::new(dir.path());
    o.pairs = 1;
    o.rooms_per_pair = 1;
    o.tables = 4;
    o.gateways = 2;
    o.turn_ms = 60_000;
    o.balancer = false;
    o.echo = true;
    let mut cl = Cluster::start(o).expect("cluster starts");
    let rt = rt();
    let (g0, g1) = (
        Target::Tcp(cl.gateways[0].tcp),
        Target::Tcp(cl.gateways[1].tcp),
    );
    let (a, _b, _c) = rt.block_on(async {
        let a = Client::connect(&g0, &cl.token(1, "a")).await.unwrap();
        let b = Client::connect(&g0, &cl.token(2, "b")).await.unwrap();
        let c = Client::connect(&g1, &cl.token(3, "c")).await.unwrap();
        a.request(Request::Enter { room: ROOM }).await.unwrap();
        a.request(Request::Sit {
            room: ROOM,
            table: TABLE,
            seat: 0,
        })
        .await
        .unwrap();
        (a, b, c)
    });
    let (s, v) = cl
        .center_admin(
            "POST",
            "/v1/blacklist",
            Some(&serde_json::json!({ "player": 9, "reason": "cheating" })),
        )
        .unwrap();
    assert_eq!(s, 200, "{v}");
    let before = login_of(&cl, 1);
    assert!(before > 0);

    let killed = cl.kill_center_master().expect("kill the center master");
    let deadline = Instant::now() + STEP;
    let new = loop {
        match cl.center_master() {
            Some(m) if m != killed => break m,
            _ if Instant::now() >= deadline => panic!("no new center master within {STEP:?}"),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    // Both gateways come back and re-sync; every player is still online.
    let deadline = Instant::now() + STEP;
    loop {
        // The node's hs role changes first; its admin port follows within a tick.
        let st = match cl.center_admin("GET", "/v1/stats", None) {
            Ok((_, st)) => st,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the new master never answered: {e}"
                );
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        let connected = st["gateways"]
            .as_array()
            .map(|g| g.iter().filter(|g| g["connected"] == true).count())
            .unwrap_or(0);
        if connected == 2 {
            assert_eq!(st["online"], 3, "the new master knows every player: {st}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gateways did not come back: {st}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(login_of(&cl, 1), before, "the same row survived");

    // `a2` lives until the checks below are done (dropping it logs it out).
    let _a2 = rt.block_on(async {
        // A takeover on the other gateway still closes the old session.
        let a2 = Client::connect(&g1, &cl.token(1, "a")).await.unwrap();
        let closed = tokio::time::timeout(STEP, a.wait_closed()).await.unwrap();
        assert_eq!(closed.code, Some(ErrorCode::LoggedInElsewhere));
        // The seat is inherited.
        let Answer::Entered(s) = a2.request(Request::Enter { room: ROOM }).await.unwrap() else {
            panic!("not entered")
        };
        let me = s.members.iter().find(|m| m.player == 1).unwrap();
        assert_eq!(me.seat, Some((TABLE, 0)));
        // The blacklist survived.
        let r = Client::connect(&g0, &cl.token(9, "x")).await;
        assert!(
            matches!(
                r,
                Err(ClientError::Closed {
                    code: Some(ErrorCode::Blacklisted),
                    ..
                })
            ),
            "{r:?}"
        );
        a2
    });
    let after = login_of(&cl, 1);
    assert!(
        after > before,
        "login numbers grow across the failover: {before} then {after}"
    );
    // The killed node comes back as the standby.
    cl.restart_center(killed).expect("restart");
    assert_eq!(cl.wait_center(STEP).expect("center whole again"), new);
}
