//! The center server in one process with a real room server, two gateways
//! and clients: single sign-on across gateways (the seat and the game are
//! inherited), racing logins, the login queue, each kind of notice, kicks
//! and blacklists of accounts and addresses, and bad links.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use gameserver::center::{admin, CenterConfig, CenterServer, CoreConfig};
use gameserver::client::{Client, ClientError, Options, Target};
use gameserver::game::GameKind;
use gameserver::gateway::{Gateway, GatewayConfig, PairConfig};
use gameserver::proto::frame::{Frame, Kind};
use gameserver::proto::msg::{
    Answer, CenterRequest, ErrorCode, Notice, NoticeTo, Push, Request, SayTo,
};
use gameserver::room::RoomConfig;
use gameserver::roomserver::{RoomServer, RoomServerConfig};
use gameserver::token::{self, Claims};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const SECRET: &str = "center-test-secret";
const ADMIN_SECRET: &str = "admin-secret";
/// Every wait of these tests ends by this.
const WAIT: Duration = Duration::from_secs(10);
const ROOM: u32 = 1;

struct World {
    _dirs: Vec<tempfile::TempDir>,
    center: Option<CenterServer>,
    rooms: Option<RoomServer>,
    gateways: Vec<Gateway>,
    admin: String,
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(c) = self.center.take() {
            c.shutdown();
        }
        if let Some(r) = self.rooms.take() {
            r.shutdown();
        }
    }
}

fn lone_hs(dir: &std::path::Path) -> hs::Config {
    let mut c = hs::Config::new(dir);
    c.listen = Some("127.0.0.1:0".parse().unwrap());
    c.segment_bytes = 4 << 20;
    c.record_bytes_max = 1 << 20;
    c
}

async fn world(online_max: u64) -> World {
    let (dc, dr) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut cc = CenterConfig::new(lone_hs(dc.path()), "127.0.0.1:0".parse().unwrap());
    cc.prefer_master = true;
    cc.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    cc.admin_secret = Some(ADMIN_SECRET.into());
    cc.standby_wait_ms = 0; // a lone node: nothing to wait for
    cc.hello_timeout_ms = 300;
    cc.core = CoreConfig {
        online_max,
        queue_max: 100,
        ..CoreConfig::default()
    };
    let center = CenterServer::start(cc).unwrap();
    let room = RoomConfig {
        id: ROOM,
        name: "room".into(),
        game: GameKind::Gomoku,
        tables: 4,
        capacity: 100,
        turn_ms: 60_000,
    };
    let mut rc = RoomServerConfig::new(
        lone_hs(dr.path()),
        "127.0.0.1:0".parse().unwrap(),
        vec![room],
    );
    rc.prefer_master = true;
    rc.standby_wait_ms = 0;
    let rooms = RoomServer::start(rc).unwrap();
    let mut gateways = Vec::new();
    for _ in 0..2 {
        let pair = PairConfig {
            rooms: vec![ROOM],
            nodes: vec![rooms.link_addr.to_string()],
        };
        let mut g = GatewayConfig::new(SECRET, vec![pair]);
        g.tcp = "127.0.0.1:0".into();
        g.ws = None;
        g.center = vec![center.link_addr.to_string()];
        g.heartbeat_ms = 200;
        gateways.push(Gateway::start(g).await.unwrap());
    }
    let admin = center.admin_addr.unwrap().to_string();
    World {
        _dirs: vec![dc, dr],
        center: Some(center),
        rooms: Some(rooms),
        gateways,
        admin,
    }
}

fn tok(player: u64) -> String {
    token::mint(
        SECRET.as_bytes(),
        &Claims {
            player,
            zone: 1,
            expires_ms: token::now_ms() + 3_600_000,
            name: format!("p{player}"),
            kind: 0,
        },
    )
}

impl World {
    fn target(&self, g: usize) -> Target {
        Target::Tcp(self.gateways[g].tcp_addr())
    }

    async fn connect(&self, g: usize, player: u64) -> Client {
        timeout(WAIT, Client::connect(&self.target(g), &tok(player)))
            .await
            .expect("connect in time")
            .expect("connected")
    }

    async fn admin(
        &self,
        method: &'static str,
        path: &'static str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let a = self.admin.clone();
        let (status, v) = tokio::task::spawn_blocking(move || {
            admin::call(&a, Some(ADMIN_SECRET), method, path, body.as_ref())
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(status, 200, "{method} {path}: {v}");
        v
    }

    /// The center's row of a player: (session, login), if online.
    fn row(&self, player: u64) -> Option<(u64, u64)> {
        let st = self.center.as_ref().unwrap().state().lock();
        st.users.get(&player).map(|o| (o.session, o.login))
    }
}

async fn closed_code(c: &Client) -> Option<ErrorCode> {
    timeout(WAIT, c.wait_closed())
        .await
        .expect("closed in time")
        .code
}

/// The next notice a client gets (other pushes are skipped).
async fn notice(c: &Client) -> Notice {
    loop {
        match timeout(WAIT, c.next_push())
            .await
            .expect("a notice in time")
        {
            Some(Push::Notice(n)) => return n,
            Some(_) => {}
            None => panic!("session closed while waiting for a notice"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_across_gateways_inherits_the_seat_and_the_game() {
    let w = world(1000).await;
    let a = w.connect(0, 1).await;
    let b = w.connect(0, 2).await;
    for (c, seat) in [(&a, 0u8), (&b, 1u8)] {
        c.request(Request::Enter { room: ROOM }).await.unwrap();
        c.request(Request::Sit {
            room: ROOM,
            table: 0,
            seat,
        })
        .await
        .unwrap();
    }
    let (_, first_login) = w.row(1).unwrap();
    // Player 1 logs in on the other gateway: the old connection is closed.
    let a2 = w.connect(1, 1).await;
    assert_eq!(closed_code(&a).await, Some(ErrorCode::LoggedInElsewhere));
    let (_, second_login) = w.row(1).unwrap();
    assert!(second_login > first_login);
    assert!(matches!(
        a.request(Request::Snapshot { room: ROOM }).await,
        Err(ClientError::Closed { .. })
    ));
    // The new session enters again and finds its seat and the game.
    let Answer::Entered(s) = a2.request(Request::Enter { room: ROOM }).await.unwrap() else {
        panic!("not entered");
    };
    let me = s.members.iter().find(|m| m.player == 1).unwrap();
    assert_eq!(me.seat, Some((0, 0)));
    let g = s.tables[0].game.clone().expect("the game runs");
    assert!(g.outcome.is_none());
    // And plays on in it.
    let mover = if g.turn == 0 { &a2 } else { &b };
    mover
        .request(Request::Move {
            room: ROOM,
            table: 0,
            mv: vec![7, 7],
        })
        .await
        .unwrap();
    let other = if g.turn == 0 { &b } else { &a2 };
    other
        .request(Request::Move {
            room: ROOM,
            table: 0,
            mv: vec![8, 8],
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_logins_leave_exactly_one_session() {
    let w = world(1000).await;
    for round in 0..10u64 {
        let player = 100 + round;
        let (t0, t1, k) = (w.target(0), w.target(1), tok(player));
        let (x, y) = tokio::join!(Client::connect(&t0, &k), Client::connect(&t1, &k));
        // Both may have been welcomed (then one is kicked), or one
        // refused before its Welcome: in the end one lives.
        let mut alive = Vec::new();
        for c in [x, y] {
            match c {
                Ok(c) => alive.push(c),
                Err(ClientError::Closed { code, .. }) => {
                    assert_eq!(code, Some(ErrorCode::LoggedInElsewhere))
                }
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        assert!(!alive.is_empty());
        if alive.len() == 2 {
            // Exactly one of them is closed, LoggedInElsewhere.
            let closed = tokio::select! {
                c = alive[0].wait_closed() => (0, c),
                c = alive[1].wait_closed() => (1, c),
                _ = tokio::time::sleep(WAIT) => panic!("round {round}: two live sessions"),
            };
            assert_eq!(closed.1.code, Some(ErrorCode::LoggedInElsewhere));
            alive.remove(closed.0);
        }
        let c = &alive[0];
        c.request(Request::Rooms).await.unwrap();
        assert_eq!(w.row(player).map(|r| r.0), Some(c.welcome().session));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_admits_in_order_and_tells_each_position() {
    let w = world(1).await;
    let first = w.connect(0, 1).await;
    let mut waiting = Vec::new();
    for (i, player) in [2u64, 3, 4].into_iter().enumerate() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let opts = Options {
            queue: Some(tx),
            connect_timeout: Duration::from_secs(30),
            ..Options::default()
        };
        let target = w.target(i % 2);
        let task = tokio::spawn(async move {
            let c = Client::connect_with(&target, &tok(player), opts).await;
            (player, c)
        });
        // Queued at the end: position i + 1.
        let (pos, _) = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
        assert_eq!(pos, i as u32 + 1);
        waiting.push((task, rx));
    }
    // Each departure admits the head; the others move up by one.
    let mut admitted = vec![first];
    for round in 0..3usize {
        admitted.remove(0).close();
        let (task, _) = waiting.remove(0);
        let (player, c) = timeout(WAIT, task).await.unwrap().unwrap();
        assert_eq!(player, 2 + round as u64, "admitted in order");
        let c = c.unwrap();
        c.request(Request::Rooms).await.unwrap();
        for (i, (_, rx)) in waiting.iter_mut().enumerate() {
            let (pos, of) = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
            assert_eq!((pos, of), (i as u32 + 1, waiting_len(round)));
        }
        admitted.push(c);
    }
    fn waiting_len(round: usize) -> u32 {
        2 - round as u32
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_notice_reaches_exactly_its_players() {
    let w = world(1000).await;
    let c = [
        w.connect(0, 1).await,
        w.connect(0, 2).await,
        w.connect(1, 3).await,
        w.connect(1, 4).await,
    ];
    for i in [0, 2] {
        c[i].center(CenterRequest::Subscribe { channel: 7 })
            .await
            .unwrap();
    }
    // Talking in a channel needs a subscription.
    assert!(c[1]
        .center(CenterRequest::Say {
            to: SayTo::Channel(7),
            text: "x".into()
        })
        .await
        .is_err());
    w.admin(
        "POST",
        "/v1/broadcast",
        Some(serde_json::json!({ "text": "all" })),
    )
    .await;
    c[0].center(CenterRequest::Say {
        to: SayTo::Channel(7),
        text: "channel".into(),
    })
    .await
    .unwrap();
    w.admin(
        "POST",
        "/v1/broadcast",
        Some(serde_json::json!({ "text": "guild", "players": [2, 3, 99] })),
    )
    .await;
    c[3].center(CenterRequest::Say {
        to: SayTo::Player(1),
        text: "private".into(),
    })
    .await
    .unwrap();
    let r = c[3]
        .center(CenterRequest::Say {
            to: SayTo::Player(99),
            text: "nobody".into(),
        })
        .await;
    assert!(matches!(r, Err(ClientError::Fail(f)) if f.code == ErrorCode::NotOnline));
    w.admin(
        "POST",
        "/v1/broadcast",
        Some(serde_json::json!({ "text": "end" })),
    )
    .await;
    let want: [&[&str]; 4] = [
        &["all", "channel", "private", "end"],
        &["all", "guild", "end"],
        &["all", "channel", "guild", "end"],
        &["all", "end"],
    ];
    for (i, want) in want.iter().enumerate() {
        let mut got = Vec::new();
        loop {
            let n = notice(&c[i]).await;
            let done = n.text == "end";
            if n.text == "private" {
                assert_eq!((n.from, n.to), (4, NoticeTo::Private));
            }
            if n.text == "channel" {
                assert_eq!((n.from, n.to), (1, NoticeTo::Channel(7)));
            }
            got.push(n.text);
            if done {
                break;
            }
        }
        assert_eq!(&got, want, "player {}", i + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kicks_and_blacklists_of_accounts_and_addresses() {
    let w = world(1000).await;
    // A plain kick: the player may come back.
    let a = w.connect(0, 1).await;
    let v = w
        .admin(
            "POST",
            "/v1/kick",
            Some(serde_json::json!({ "player": 1, "reason": "afk" })),
        )
        .await;
    assert_eq!(v["kicked"], true);
    assert_eq!(closed_code(&a).await, Some(ErrorCode::Kicked));
    let a = w.connect(1, 1).await;
    // A kick with a ban: gone, and refused at the next login.
    w.admin(
        "POST",
        "/v1/kick",
        Some(serde_json::json!({ "player": 1, "reason": "cheating", "ban_ms": 0 })),
    )
    .await;
    assert_eq!(closed_code(&a).await, Some(ErrorCode::Blacklisted));
    for g in 0..2 {
        let r = Client::connect(&w.target(g), &tok(1)).await;
        assert!(
            matches!(&r, Err(ClientError::Closed { code: Some(ErrorCode::Blacklisted), message }) if message.contains("cheating")),
            "{r:?}"
        );
    }
    let list = w.admin("GET", "/v1/blacklist", None).await;
    assert_eq!(list["bans"][0]["player"], 1);
    w.admin(
        "POST",
        "/v1/blacklist/remove",
        Some(serde_json::json!({ "player": 1 })),
    )
    .await;
    let _a = w.connect(0, 1).await;
    // An address: every session from it is closed, new ones refused,
    // other addresses unaffected.
    let bad: IpAddr = "127.0.0.2".parse().unwrap();
    let from_bad = |g: usize| Target::TcpFrom {
        addr: w.gateways[g].tcp_addr(),
        bind: bad,
    };
    let b = timeout(WAIT, Client::connect(&from_bad(0), &tok(2)))
        .await
        .unwrap()
        .unwrap();
    let c = timeout(WAIT, Client::connect(&from_bad(1), &tok(3)))
        .await
        .unwrap()
        .unwrap();
    let v = w
        .admin(
            "POST",
            "/v1/blacklist",
            Some(serde_json::json!({ "addr": "127.0.0.2", "reason": "bots", "ttl_ms": 60000 })),
        )
        .await;
    assert_eq!(v["kicked"], 2);
    assert_eq!(closed_code(&b).await, Some(ErrorCode::Blacklisted));
    assert_eq!(closed_code(&c).await, Some(ErrorCode::Blacklisted));
    let r = Client::connect(&from_bad(0), &tok(5)).await;
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
    let _d = w.connect(0, 2).await;
    // Stats per zone and gateway.
    let s = w.admin("GET", "/v1/stats", None).await;
    assert_eq!(s["online"], 2, "{s}");
    assert_eq!(s["gateways"].as_array().unwrap().len(), 2, "{s}");
    assert_eq!(s["zones"][0]["online"], 2, "{s}");
    // Without the secret: refused.
    let a = w.admin.clone();
    let (status, _) =
        tokio::task::spawn_blocking(move || admin::call(&a, None, "GET", "/v1/stats", None))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_or_garbled_link_is_closed() {
    let w = world(1000).await;
    let link: SocketAddr = w.center.as_ref().unwrap().link_addr;
    // No Hello: dropped after hello_timeout_ms (300 ms here).
    let mut s = tokio::net::TcpStream::connect(link).await.unwrap();
    let mut b = [0u8; 64];
    assert_eq!(timeout(WAIT, s.read(&mut b)).await.unwrap().unwrap_or(0), 0);
    // A frame of the wrong kind first: closed at once.
    let mut s = tokio::net::TcpStream::connect(link).await.unwrap();
    let f = Frame::new(Kind::Ping, 0, 0, bytes::Bytes::new()).to_bytes();
    s.write_all(&f).await.unwrap();
    assert_eq!(timeout(WAIT, s.read(&mut b)).await.unwrap().unwrap_or(0), 0);
    // Garbage: closed.
    let mut s = tokio::net::TcpStream::connect(link).await.unwrap();
    s.write_all(&[0xff; 64]).await.unwrap();
    assert_eq!(timeout(WAIT, s.read(&mut b)).await.unwrap().unwrap_or(0), 0);
    // The gateways still serve.
    let c = w.connect(0, 1).await;
    c.request(Request::Rooms).await.unwrap();
    assert!(
        w.center
            .as_ref()
            .unwrap()
            .stats()
            .links_bad
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 3
    );
}
