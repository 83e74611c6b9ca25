//! Player data through a real room server (a lone hs master on 127.0.0.1)
//! spoken to over its gateway link: data loaded at Enter, a game's records
//! saved before its end leaves the server, activity saved in batches, a
//! store that fails, and the login fence against a taken-over session.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use gameserver::accounts::{
    Account, Activity, PlayerData, PlayerRecord, Store, StoreError, RATING_START,
};
use gameserver::game::GameKind;
use gameserver::link::{FromRoom, ToRoom, LINK_VERSION};
use gameserver::proto::frame::{self, Frame, Kind};
use gameserver::proto::msg::{self, Answer, ErrorCode, Request, RoomEvent};
use gameserver::room::RoomConfig;
use gameserver::roomserver::{PlayerStore, RoomServer, RoomServerConfig};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every wait of these tests ends by this.
const DEADLINE: Duration = Duration::from_secs(10);

/// A store in memory that can be told to fail.
#[derive(Default)]
struct MemStore {
    data: Mutex<HashMap<u64, PlayerData>>,
    /// Every save_records call, in order.
    record_saves: Mutex<Vec<Vec<(u64, PlayerRecord)>>>,
    fail_loads: std::sync::atomic::AtomicBool,
}

impl Store for MemStore {
    fn register(&self, name: &str, _: &str) -> Result<Account, StoreError> {
        Err(StoreError::Duplicate(name.into()))
    }
    fn password_account(&self, _: &str) -> Result<Option<(Account, String)>, StoreError> {
        Ok(None)
    }
    fn guest(&self, _: &str, _: &str) -> Result<Account, StoreError> {
        Err(StoreError::Db("not in this test".into()))
    }
    fn new_guest(&self, _: &str) -> Result<Account, StoreError> {
        Err(StoreError::Db("not in this test".into()))
    }
    fn platform(&self, _: &str, _: &str, _: &str) -> Result<Account, StoreError> {
        Err(StoreError::Db("not in this test".into()))
    }
    fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(1)
    }
    fn load(&self, player: u64) -> Result<PlayerData, StoreError> {
        if self.fail_loads.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StoreError::Db("connection refused".into()));
        }
        Ok(self.data.lock().get(&player).copied().unwrap_or_default())
    }
    fn save_records(&self, records: &[(u64, PlayerRecord)]) -> Result<(), StoreError> {
        let mut d = self.data.lock();
        for (p, r) in records {
            d.entry(*p).or_default().record = *r;
        }
        self.record_saves.lock().push(records.to_vec());
        Ok(())
    }
    fn save_activity(&self, activity: &[(u64, Activity)]) -> Result<(), StoreError> {
        let mut d = self.data.lock();
        for (p, a) in activity {
            d.entry(*p).or_default().activity = *a;
        }
        Ok(())
    }
}

fn start(store: Arc<MemStore>, dir: &std::path::Path) -> RoomServer {
    start_with(store, dir, 10)
}

/// Rooms 1 and 2, each holding `capacity` players.
fn start_with(store: Arc<MemStore>, dir: &std::path::Path, capacity: u32) -> RoomServer {
    let mut hs = hs::Config::new(dir);
    hs.listen = Some("127.0.0.1:0".parse().unwrap());
    hs.segment_bytes = 1 << 20;
    hs.record_bytes_max = 256 << 10;
    let rooms = (1..=2)
        .map(|id| RoomConfig {
            id,
            name: format!("R{id}"),
            game: GameKind::Gomoku,
            tables: 2,
            capacity,
            turn_ms: 60_000,
        })
        .collect();
    let mut cfg = RoomServerConfig::new(hs, "127.0.0.1:0".parse().unwrap(), rooms);
    cfg.prefer_master = true;
    // No standby in this test: replies leave after this wait.
    cfg.standby_wait_ms = 10;
    cfg.store = Some(PlayerStore(store));
    cfg.activity_save_period_ms = 50;
    RoomServer::start(cfg).expect("room server starts")
}

/// One gateway link, spoken by hand.
struct Link {
    sock: TcpStream,
    buf: BytesMut,
}

impl Link {
    async fn open(rs: &RoomServer) -> Link {
        let t0 = Instant::now();
        loop {
            let sock = TcpStream::connect(rs.link_addr).await.expect("connect");
            let mut l = Link {
                sock,
                buf: BytesMut::new(),
            };
            l.send(&ToRoom::Hello {
                gateway: 1,
                version: LINK_VERSION,
            })
            .await;
            match l.recv().await {
                Some(FromRoom::Welcome { .. }) => return l,
                // Not master yet: the node is still starting.
                _ if t0.elapsed() < DEADLINE => tokio::time::sleep(Duration::from_millis(20)).await,
                other => panic!("no Welcome: {other:?}"),
            }
        }
    }

    async fn send(&mut self, m: &ToRoom) {
        let f = Frame::new(Kind::ToRoom, 0, 0, Bytes::from(msg::encode(m))).to_bytes();
        self.sock.write_all(&f).await.expect("write");
    }

    /// The next message, or None when the link closed.
    async fn recv(&mut self) -> Option<FromRoom> {
        loop {
            if let Some(f) = frame::decode(&mut self.buf, 1 << 20).expect("good frames") {
                return Some(msg::decode(&f.payload).expect("a FromRoom"));
            }
            let n = tokio::time::timeout(DEADLINE, self.sock.read_buf(&mut self.buf))
                .await
                .expect("the room server answers in time")
                .ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    async fn request(&mut self, player: u64, seq: u32, login: u64, req: Request) {
        self.send(&ToRoom::Request {
            player,
            session: 100 + player,
            seq,
            name: format!("p{player}"),
            req,
            login,
        })
        .await;
    }

    /// Messages until the reply to (player, seq); returns it and what came before.
    async fn reply(&mut self, player: u64, seq: u32) -> (msg::Reply, Vec<FromRoom>) {
        let mut before = Vec::new();
        loop {
            match self.recv().await.expect("link open") {
                FromRoom::Reply {
                    player: p,
                    seq: s,
                    reply,
                } if p == player && s == seq => return (reply, before),
                m => before.push(m),
            }
        }
    }
}

fn has_end(msgs: &[FromRoom]) -> bool {
    msgs.iter().any(|m| {
        matches!(m, FromRoom::Events { events, .. }
            if events.iter().any(|e| matches!(e, RoomEvent::Ended { .. })))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_is_loaded_at_enter_and_a_games_records_are_saved_before_its_end_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemStore::default());
    let mut saved = PlayerData::default();
    saved.record.rating = 1500;
    saved.record.games = 7;
    saved.activity.moves = 40;
    store.data.lock().insert(1, saved);
    let rs = start(store.clone(), dir.path());
    let mut l = Link::open(&rs).await;
    let mut seq = HashMap::<u64, u32>::new();
    let mut next = |p: u64| {
        let s = seq.entry(p).or_default();
        *s += 1;
        *s
    };
    for p in [1, 2] {
        let s = next(p);
        l.request(p, s, 0, Request::Enter { room: 1 }).await;
        let (r, _) = l.reply(p, s).await;
        let Ok(Answer::Entered(snap)) = r else {
            panic!("enter: {r:?}")
        };
        let me = snap.members.iter().find(|m| m.player == p).unwrap();
        let want = if p == 1 { 1500 } else { RATING_START };
        assert_eq!(me.rating, want, "player {p}'s saved rating came in");
    }
    for (p, seat) in [(1, 0), (2, 1)] {
        let s = next(p);
        let sit = Request::Sit {
            room: 1,
            table: 0,
            seat,
        };
        l.request(p, s, 0, sit).await;
        assert!(l.reply(p, s).await.0.is_ok());
    }
    // Black (player 1) wins on its fifth move.
    let mut ended_before_reply = false;
    for i in 0..5u8 {
        for (p, y) in [(1u64, 0u8), (2, 5)] {
            if i == 4 && p == 2 {
                break;
            }
            let s = next(p);
            let mv = Request::Move {
                room: 1,
                table: 0,
                mv: vec![i, y],
            };
            // The store holds no record of this game yet: nothing ended.
            let saves_before = store.record_saves.lock().len();
            l.request(p, s, 0, mv).await;
            let (r, before) = l.reply(p, s).await;
            assert!(r.is_ok(), "move {i} of {p}: {r:?}");
            if has_end(&before) {
                ended_before_reply = true;
                // The records were saved before the end left the server.
                let saves = store.record_saves.lock();
                assert_eq!(saves.len(), saves_before + 1);
                let recs = &saves[saves_before];
                assert_eq!(recs.len(), 2);
                assert_eq!((recs[0].0, recs[0].1.games, recs[0].1.wins), (1, 8, 1));
                assert!(recs[0].1.rating > 1500 && recs[1].1.rating < RATING_START);
            }
        }
    }
    assert!(ended_before_reply, "the game ended and its end was pushed");
    // Activity reaches the store in a batch (period 50 ms), counted from
    // the saved 40 moves on.
    let t0 = Instant::now();
    loop {
        let a = store.data.lock().get(&1).unwrap().activity;
        if a.moves == 45 {
            assert_eq!(a.rooms_entered, 1);
            assert!(a.last_seen_ms > 0);
            break;
        }
        assert!(t0.elapsed() < DEADLINE, "activity never saved: {a:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats: serde_json::Value = {
        // The counters an operator reads say the same.
        let st = rs.stats();
        serde_json::json!({
            "records_saved": st.records_saved.load(std::sync::atomic::Ordering::Relaxed),
            "data_loads": st.data_loads.load(std::sync::atomic::Ordering::Relaxed),
        })
    };
    assert_eq!(stats["records_saved"], 2);
    assert_eq!(stats["data_loads"], 2);
    drop(l);
    rs.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_load_refuses_the_enter_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemStore::default());
    store
        .fail_loads
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let rs = start(store.clone(), dir.path());
    let mut l = Link::open(&rs).await;
    l.request(1, 1, 0, Request::Enter { room: 1 }).await;
    let (r, _) = l.reply(1, 1).await;
    assert_eq!(r.unwrap_err().code, ErrorCode::Unavailable);
    assert!(rs.rooms().lock().get()[&1].members.is_empty());
    // Once the database is back, the same player enters.
    store
        .fail_loads
        .store(false, std::sync::atomic::Ordering::Relaxed);
    l.request(1, 2, 0, Request::Enter { room: 1 }).await;
    assert!(matches!(l.reply(1, 2).await.0, Ok(Answer::Entered(_))));
    drop(l);
    rs.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_from_a_taken_over_session_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rs = start(Arc::new(MemStore::default()), dir.path());
    let mut l = Link::open(&rs).await;
    // The newer login (9) enters; the older one (4) then tries to chat.
    l.request(1, 1, 9, Request::Enter { room: 1 }).await;
    assert!(l.reply(1, 1).await.0.is_ok());
    let chat = |text: &str| Request::Chat {
        room: 1,
        table: None,
        text: text.into(),
    };
    l.send(&ToRoom::Request {
        player: 1,
        session: 555,
        seq: 1,
        name: "p1".into(),
        req: chat("from the old session"),
        login: 4,
    })
    .await;
    let (r, _) = l.reply(1, 1).await;
    assert_eq!(r.unwrap_err().code, ErrorCode::LoggedInElsewhere);
    // The newer session goes on.
    l.request(1, 2, 9, chat("still here")).await;
    assert!(l.reply(1, 2).await.0.is_ok());
    drop(l);
    rs.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_room_proposes_another_of_the_same_game() {
    let dir = tempfile::tempdir().unwrap();
    let rs = start_with(Arc::new(MemStore::default()), dir.path(), 1);
    let mut l = Link::open(&rs).await;
    l.request(1, 1, 0, Request::Enter { room: 1 }).await;
    assert!(l.reply(1, 1).await.0.is_ok());
    l.request(2, 1, 0, Request::Enter { room: 1 }).await;
    let f = l.reply(2, 1).await.0.unwrap_err();
    assert_eq!(f.code, ErrorCode::RoomFull);
    assert!(f.message.ends_with("room 2 has space"), "{}", f.message);
    drop(l);
    rs.shutdown();
}
