//! The gateway against a fake room-server pair (written here, speaking the
//! link protocol), with a raw frame client: auth, bad input, heartbeat,
//! ordering, failover, gaps, fan-out, WebSocket.

use crate::fake_room::{link_frame, next_frame, rooms};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use gameserver::gateway::{Gateway, GatewayConfig, PairConfig};
use gameserver::link::{FromRoom, ToRoom, LINK_VERSION};
use gameserver::proto::frame::{self, Frame, Kind};
use gameserver::proto::msg::{
    self, Answer, Auth, Bye, ErrorCode, Push, Reply, Request, RoomEvent, RoomSnapshot, Welcome,
};
use gameserver::token::{self, Claims};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

const SECRET: &str = "test-secret";
/// Every wait of these tests ends by this.
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- fake pair

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Apply requests and answer them.
    Answer,
    /// Record requests, do nothing.
    Hold,
    /// Apply requests and send their events, but never the reply (as if
    /// the master died between the two).
    ApplyNoReply,
}

/// What both nodes of the fake pair share (as hs would replicate it).
struct RoomsState {
    /// Each room's events; event `seq` is `history[room][seq - 1]`.
    history: HashMap<u32, Vec<RoomEvent>>,
    /// (player, room) → last request done.
    done: HashMap<(u64, u32), u32>,
    mode: Mode,
    /// Requests applied (not answered from state).
    applied: u64,
}

fn snapshot(room: u32, seq: u64) -> RoomSnapshot {
    RoomSnapshot {
        room,
        name: format!("room {room}"),
        game: "gomoku".into(),
        seq,
        capacity: 400,
        members: Vec::new(),
        tables: Vec::new(),
    }
}

struct FakeNode {
    addr: SocketAddr,
    master: Arc<AtomicBool>,
    /// Reads and answers nothing (a stopped process: its sockets stay open).
    frozen: Arc<AtomicBool>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    links: Arc<Mutex<Vec<mpsc::UnboundedSender<Bytes>>>>,
}

impl FakeNode {
    /// Starts a node; `log` gets every message a gateway sends it.
    async fn start(
        name: &'static str,
        master: bool,
        hint: Arc<Mutex<Option<String>>>,
        state: Arc<Mutex<RoomsState>>,
        log: mpsc::UnboundedSender<(&'static str, ToRoom)>,
    ) -> FakeNode {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let master = Arc::new(AtomicBool::new(master));
        let frozen = Arc::new(AtomicBool::new(false));
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let links: Arc<Mutex<Vec<mpsc::UnboundedSender<Bytes>>>> = Arc::default();
        let ctx = NodeCtx {
            name,
            master: master.clone(),
            frozen: frozen.clone(),
            hint,
            state,
            log,
            links: links.clone(),
        };
        let t = tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                let conn = tokio::spawn(serve_link(ctx.clone(), s));
                t.lock().push(conn);
            }
        });
        tasks.lock().push(accept);
        FakeNode {
            addr,
            master,
            frozen,
            tasks,
            links,
        }
    }

    /// SIGKILL as far as the gateway can tell: the listener and every link close.
    fn kill(&self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        self.links.lock().clear();
    }

    /// Sends `m` on every link of this node.
    fn inject(&self, m: &FromRoom) {
        let b = link_frame(m);
        for l in self.links.lock().iter() {
            let _ = l.send(b.clone());
        }
    }
}

/// What every link of one fake node shares.
#[derive(Clone)]
struct NodeCtx {
    name: &'static str,
    master: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    /// The master's address this node tells when it is not master.
    hint: Arc<Mutex<Option<String>>>,
    state: Arc<Mutex<RoomsState>>,
    log: mpsc::UnboundedSender<(&'static str, ToRoom)>,
    links: Arc<Mutex<Vec<mpsc::UnboundedSender<Bytes>>>>,
}

async fn serve_link(ctx: NodeCtx, s: TcpStream) {
    let NodeCtx {
        name,
        master,
        frozen,
        hint,
        state,
        log,
        links,
    } = ctx;
    let (mut rd, mut wr) = s.into_split();
    // Unbounded on purpose and cannot grow past the test: it holds what this fake
    // sends in one test's bounded steps, written out as fast as the socket takes it.
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                return;
            }
        }
    });
    let mut buf = BytesMut::new();
    loop {
        let Some(f) = next_frame(&mut rd, &mut buf).await else {
            writer.abort();
            return;
        };
        assert_eq!(f.kind, Kind::ToRoom);
        let m: ToRoom = msg::decode(&f.payload).unwrap();
        let _ = log.send((name, m.clone()));
        if frozen.load(Ordering::SeqCst) {
            continue;
        }
        match m {
            ToRoom::Hello { version, .. } => {
                assert_eq!(version, LINK_VERSION);
                if master.load(Ordering::SeqCst) {
                    let _ = tx.send(link_frame(&FromRoom::Welcome {
                        node: 7,
                        rooms: rooms(),
                    }));
                    links.lock().push(tx.clone());
                } else {
                    let master = hint.lock().clone();
                    let _ = tx.send(link_frame(&FromRoom::NotMaster { master }));
                    drop(tx);
                    let _ = writer.await;
                    return;
                }
            }
            ToRoom::Subscribe { room, after } => {
                let st = state.lock();
                let h = st.history.get(&room).cloned().unwrap_or_default();
                if (after as usize) < h.len() {
                    let _ = tx.send(link_frame(&FromRoom::Events {
                        room,
                        first_seq: after + 1,
                        events: h[after as usize..].to_vec(),
                    }));
                }
            }
            ToRoom::Request {
                player,
                seq,
                name,
                req,
                ..
            } => {
                let mut st = state.lock();
                let mode = st.mode;
                if mode == Mode::Hold {
                    continue;
                }
                let room = req.room().expect("the gateway answers Rooms itself");
                let len = st.history.get(&room).map_or(0, |h| h.len()) as u64;
                if st.done.get(&(player, room)).is_some_and(|d| *d >= seq) {
                    let a = match req {
                        Request::Enter { .. } => Answer::Entered(snapshot(room, len)),
                        _ => Answer::Done { room, seq: len },
                    };
                    let _ = tx.send(link_frame(&FromRoom::Reply {
                        player,
                        seq,
                        reply: Ok(a),
                    }));
                    continue;
                }
                let ev = match &req {
                    Request::Enter { .. } => Some(RoomEvent::Entered {
                        player,
                        name,
                        data: Default::default(),
                    }),
                    Request::Leave { .. } => Some(RoomEvent::Left { player }),
                    Request::Chat { table, text, .. } => Some(RoomEvent::Chat {
                        player,
                        table: *table,
                        text: text.clone(),
                    }),
                    _ => None,
                };
                st.done.insert((player, room), seq);
                st.applied += 1;
                let h = st.history.entry(room).or_default();
                if let Some(e) = ev {
                    h.push(e.clone());
                    let _ = tx.send(link_frame(&FromRoom::Events {
                        room,
                        first_seq: h.len() as u64,
                        events: vec![e],
                    }));
                }
                let len = h.len() as u64;
                if mode == Mode::ApplyNoReply {
                    continue;
                }
                let a = match req {
                    Request::Enter { .. } => Answer::Entered(snapshot(room, len)),
                    _ => Answer::Done { room, seq: len },
                };
                let _ = tx.send(link_frame(&FromRoom::Reply {
                    player,
                    seq,
                    reply: Ok(a),
                }));
            }
            ToRoom::Unsubscribe { .. } | ToRoom::Rooms => {}
        }
    }
}

struct Pair {
    a: FakeNode,
    b: FakeNode,
    state: Arc<Mutex<RoomsState>>,
    log: mpsc::UnboundedReceiver<(&'static str, ToRoom)>,
}

impl Pair {
    async fn start() -> Pair {
        let state = Arc::new(Mutex::new(RoomsState {
            history: HashMap::new(),
            done: HashMap::new(),
            mode: Mode::Answer,
            applied: 0,
        }));
        // Unbounded on purpose and cannot grow past the test: it carries one test's
        // bounded steps to its assertions (a fake's log of what it received).
        let (tx, log) = mpsc::unbounded_channel();
        let hint_b = Arc::new(Mutex::new(None));
        let a = FakeNode::start(
            "a",
            true,
            Arc::new(Mutex::new(None)),
            state.clone(),
            tx.clone(),
        )
        .await;
        *hint_b.lock() = Some(a.addr.to_string());
        let b = FakeNode::start("b", false, hint_b, state.clone(), tx).await;
        Pair { a, b, state, log }
    }

    fn mode(&self, m: Mode) {
        self.state.lock().mode = m;
    }

    /// The next message a node got that `pred` accepts (others skipped).
    async fn wait_for(
        &mut self,
        what: &str,
        pred: impl Fn(&str, &ToRoom) -> bool,
    ) -> (&'static str, ToRoom) {
        let deadline = Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.log.recv()).await {
                Ok(Some((n, m))) if pred(n, &m) => return (n, m),
                Ok(Some(_)) => {}
                _ => panic!("the fake pair never got {what}"),
            }
        }
    }

    /// Forgets what the log holds now.
    fn drain(&mut self) {
        while self.log.try_recv().is_ok() {}
    }

    /// Nothing accepted by `pred` is in the log now.
    fn none_yet(&mut self, pred: impl Fn(&str, &ToRoom) -> bool) -> bool {
        while let Ok((n, m)) = self.log.try_recv() {
            if pred(n, &m) {
                return false;
            }
        }
        true
    }

    fn config(&self) -> GatewayConfig {
        let mut c = GatewayConfig::new(
            SECRET,
            vec![PairConfig {
                rooms: vec![1, 2, 3],
                nodes: vec![self.a.addr.to_string(), self.b.addr.to_string()],
            }],
        );
        c.tcp = "127.0.0.1:0".into();
        c.ws = Some("127.0.0.1:0".into());
        c
    }
}

// ---------------------------------------------------------------- client

fn tok(player: u64, expires_in_ms: i64) -> String {
    let claims = Claims {
        player,
        zone: 1,
        expires_ms: (token::now_ms() as i64 + expires_in_ms) as u64,
        name: format!("p{player}"),
        kind: 0,
    };
    token::mint(SECRET.as_bytes(), &claims)
}

struct Client {
    s: TcpStream,
    buf: BytesMut,
    seq: u32,
    /// Pushes read while waiting for a reply.
    pushes: std::collections::VecDeque<Push>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
            seq: 0,
            pushes: Default::default(),
        }
    }

    async fn login(addr: SocketAddr, player: u64) -> Client {
        let mut c = Client::connect(addr).await;
        c.auth(&tok(player, 60_000)).await;
        let f = c.recv().await;
        assert_eq!(f.kind, Kind::Welcome, "{f:?}");
        let w: Welcome = msg::decode(&f.payload).unwrap();
        assert_eq!(w.player, player);
        c
    }

    async fn auth(&mut self, token: &str) {
        let a = Auth {
            token: token.into(),
            client_version: msg::PROTOCOL_VERSION,
            features: 0,
        };
        self.send(Kind::Auth, 0, msg::encode(&a)).await;
    }

    async fn send(&mut self, kind: Kind, seq: u32, payload: Vec<u8>) {
        let f = Frame::new(kind, seq, token::now_ms(), Bytes::from(payload));
        self.s.write_all(&f.to_bytes()).await.unwrap();
    }

    async fn request(&mut self, req: &Request) -> u32 {
        self.seq += 1;
        let seq = self.seq;
        self.send(Kind::Request, seq, msg::encode(req)).await;
        seq
    }

    /// The next frame; `None` when the gateway closed.
    async fn try_recv(&mut self) -> Option<Frame> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(f) = frame::decode(&mut self.buf, 1 << 20).unwrap() {
                return Some(f);
            }
            match tokio::time::timeout_at(deadline, self.s.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(_)) => {}
                Err(_) => panic!("no frame from the gateway in {WAIT:?}"),
            }
        }
    }

    async fn recv(&mut self) -> Frame {
        self.try_recv()
            .await
            .expect("the gateway closed the connection")
    }

    /// The reply to `seq`, skipping pushes.
    async fn reply(&mut self, seq: u32) -> Reply {
        loop {
            let f = self.recv().await;
            match f.kind {
                Kind::Reply => {
                    assert_eq!(f.seq, seq, "replies come in request order");
                    return msg::decode(&f.payload).unwrap();
                }
                Kind::Push => self.pushes.push_back(msg::decode(&f.payload).unwrap()),
                Kind::Pong => {}
                _ => panic!("unexpected {f:?}"),
            }
        }
    }

    /// The next push (skips pongs).
    async fn push(&mut self) -> Push {
        if let Some(p) = self.pushes.pop_front() {
            return p;
        }
        loop {
            let f = self.recv().await;
            match f.kind {
                Kind::Push => return msg::decode(&f.payload).unwrap(),
                Kind::Pong => {}
                _ => panic!("expected a push, got {f:?}"),
            }
        }
    }

    /// The Bye that ends the session, then the close.
    async fn bye(&mut self) -> Bye {
        loop {
            let f = self.recv().await;
            if f.kind == Kind::Bye {
                let b: Bye = msg::decode(&f.payload).unwrap();
                assert!(
                    self.try_recv().await.is_none(),
                    "the connection closes after Bye"
                );
                return b;
            }
        }
    }

    async fn enter(&mut self, room: u32) -> RoomSnapshot {
        let seq = self.request(&Request::Enter { room }).await;
        match self.reply(seq).await {
            Ok(Answer::Entered(s)) => s,
            r => panic!("enter: {r:?}"),
        }
    }

    async fn chat(&mut self, room: u32, text: &str) -> u32 {
        self.request(&Request::Chat {
            room,
            table: None,
            text: text.into(),
        })
        .await
    }
}

fn chat_text(p: &Push) -> (u64, String) {
    match p {
        Push::Event {
            seq,
            event: RoomEvent::Chat { text, .. },
            ..
        } => (*seq, text.clone()),
        p => panic!("expected a chat event, got {p:?}"),
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_ok_welcome_ping_pong_and_rooms() {
    let p = Pair::start().await;
    let g = Gateway::start(p.config()).await.unwrap();
    let mut c = Client::login(g.tcp_addr(), 1).await;
    c.send(Kind::Ping, 0, Vec::new()).await;
    let f = c.recv().await;
    assert_eq!(f.kind, Kind::Pong);
    let pong = msg::Pong::decode(&f.payload).unwrap();
    assert!(pong.client_time_ms > 0 && f.time_ms > 0);
    // Rooms: from the pair's Welcome (the link may still be coming up).
    let deadline = Instant::now() + WAIT;
    loop {
        let seq = c.request(&Request::Rooms).await;
        match c.reply(seq).await {
            Ok(Answer::Rooms(r)) if r.len() == 3 => break,
            Ok(Answer::Rooms(_)) => assert!(Instant::now() < deadline, "rooms never listed"),
            r => panic!("{r:?}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seq = c.request(&Request::Enter { room: 99 }).await;
    assert_eq!(c.reply(seq).await.unwrap_err().code, ErrorCode::UnknownRoom);
    assert_eq!(g.stats().sessions, 1);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_expired_token_and_frame_before_auth_are_refused() {
    let p = Pair::start().await;
    let g = Gateway::start(p.config()).await.unwrap();
    let mut c = Client::connect(g.tcp_addr()).await;
    c.auth("nonsense.token").await;
    assert_eq!(c.bye().await.code, ErrorCode::BadToken);

    let mut c = Client::connect(g.tcp_addr()).await;
    let mut claims = Claims {
        player: 5,
        zone: 1,
        expires_ms: token::now_ms() + 60_000,
        name: "x".into(),
        kind: 0,
    };
    c.auth(&token::mint(b"other secret", &claims)).await;
    assert_eq!(c.bye().await.code, ErrorCode::BadToken);

    let mut c = Client::connect(g.tcp_addr()).await;
    c.auth(&tok(5, -1000)).await;
    assert_eq!(c.bye().await.code, ErrorCode::TokenExpired);

    let mut c = Client::connect(g.tcp_addr()).await;
    claims.zone = 2;
    c.auth(&token::mint(SECRET.as_bytes(), &claims)).await;
    assert_eq!(c.bye().await.code, ErrorCode::WrongZone);

    let mut c = Client::connect(g.tcp_addr()).await;
    c.send(Kind::Ping, 0, Vec::new()).await;
    assert_eq!(c.bye().await.code, ErrorCode::NotAuthenticated);

    assert_eq!(g.stats().errors_auth, 5);
    assert_eq!(g.stats().sessions, 0);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_timeout_closes() {
    let p = Pair::start().await;
    let mut cfg = p.config();
    cfg.auth_timeout_ms = 100;
    let g = Gateway::start(cfg).await.unwrap();
    let mut c = Client::connect(g.tcp_addr()).await;
    assert_eq!(c.bye().await.code, ErrorCode::NotAuthenticated);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_crc_and_oversized_frames_end_the_session() {
    let p = Pair::start().await;
    let mut cfg = p.config();
    cfg.frame_bytes_max = 1024;
    let g = Gateway::start(cfg).await.unwrap();

    let mut c = Client::login(g.tcp_addr(), 1).await;
    let mut b = BytesMut::from(&Frame::new(Kind::Ping, 0, 1, Bytes::new()).to_bytes()[..]);
    b[12] ^= 1; // a bit of time_ms
    c.s.write_all(&b).await.unwrap();
    assert_eq!(c.bye().await.code, ErrorCode::BadCrc);

    let mut c = Client::login(g.tcp_addr(), 2).await;
    let big = Frame::new(Kind::Request, 1, 1, Bytes::from(vec![0u8; 2000])).to_bytes();
    c.s.write_all(&big[..frame::HEADER_BYTES]).await.unwrap();
    assert_eq!(c.bye().await.code, ErrorCode::FrameTooLarge);

    let mut c = Client::login(g.tcp_addr(), 3).await;
    let mut b = BytesMut::new();
    frame::encode_parts(Kind::Ping, frame::FLAG_ENCRYPTED, 0, 1, b"", &mut b);
    c.s.write_all(&b).await.unwrap();
    assert_eq!(c.bye().await.code, ErrorCode::BadFrame);

    // A kind only servers send.
    let mut c = Client::login(g.tcp_addr(), 4).await;
    c.send(Kind::Welcome, 0, Vec::new()).await;
    assert_eq!(c.bye().await.code, ErrorCode::BadFrame);
    assert_eq!(g.stats().errors_frame, 4);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_reused_and_unreadable_requests_are_refused_and_the_session_goes_on() {
    let p = Pair::start().await;
    let g = Gateway::start(p.config()).await.unwrap();
    let mut c = Client::login(g.tcp_addr(), 1).await;
    c.enter(1).await;
    let seq = c.chat(1, "hi").await;
    assert!(c.reply(seq).await.is_ok());
    c.send(Kind::Request, seq, msg::encode(&Request::Stand { room: 1 }))
        .await;
    assert_eq!(c.reply(seq).await.unwrap_err().code, ErrorCode::SeqReused);
    c.send(
        Kind::Request,
        seq - 1,
        msg::encode(&Request::Stand { room: 1 }),
    )
    .await;
    assert_eq!(
        c.reply(seq - 1).await.unwrap_err().code,
        ErrorCode::SeqReused
    );
    c.seq += 1;
    c.send(Kind::Request, c.seq, vec![200, 1, 2]).await;
    assert_eq!(
        c.reply(c.seq).await.unwrap_err().code,
        ErrorCode::BadRequest
    );
    let seq = c.chat(1, "still here").await;
    assert!(c.reply(seq).await.is_ok());
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_refuses_over_the_burst() {
    let p = Pair::start().await;
    let mut cfg = p.config();
    cfg.requests_per_s_max = 1;
    cfg.requests_burst_max = 3;
    let g = Gateway::start(cfg).await.unwrap();
    let mut c = Client::login(g.tcp_addr(), 1).await;
    let mut codes = Vec::new();
    for _ in 0..5 {
        let seq = c.request(&Request::Rooms).await;
        codes.push(c.reply(seq).await.err().map(|f| f.code));
    }
    assert_eq!(codes[..3], [None, None, None]);
    assert_eq!(
        codes[3..],
        [Some(ErrorCode::RateLimited), Some(ErrorCode::RateLimited)]
    );
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_keeps_a_pinging_session_and_closes_a_silent_one() {
    let p = Pair::start().await;
    let mut cfg = p.config();
    cfg.heartbeat_ms = 40;
    cfg.dead_ticks = 3;
    let g = Gateway::start(cfg).await.unwrap();
    let mut silent = Client::login(g.tcp_addr(), 1).await;
    let mut alive = Client::login(g.tcp_addr(), 2).await;
    // The pinging one lives through twice the dead window.
    for _ in 0..12 {
        alive.send(Kind::Ping, 0, Vec::new()).await;
        assert_eq!(alive.recv().await.kind, Kind::Pong);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(silent.bye().await.code, ErrorCode::HeartbeatTimeout);
    assert_eq!(g.stats().heartbeat_timeouts, 1);
    assert_eq!(g.stats().sessions, 1);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_in_flight_in_order() {
    let mut p = Pair::start().await;
    let g = Gateway::start(p.config()).await.unwrap();
    let mut c = Client::login(g.tcp_addr(), 1).await;
    c.enter(1).await;
    p.drain();
    p.mode(Mode::Hold);
    let seqs = [
        c.chat(1, "a").await,
        c.chat(1, "b").await,
        c.chat(1, "c").await,
    ];
    let is_req = |_: &str, m: &ToRoom| matches!(m, ToRoom::Request { .. });
    let (_, first) = p.wait_for("the first chat", is_req).await;
    assert!(matches!(first, ToRoom::Request { seq, .. } if seq == seqs[0]));
    // Held: the second is not sent while the first is unanswered.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        p.none_yet(is_req),
        "a second request went out while the first was in flight"
    );
    p.mode(Mode::Answer);
    // Answer the held one by hand (as the master would).
    p.a.inject(&FromRoom::Reply {
        player: 1,
        seq: seqs[0],
        reply: Ok(Answer::Done { room: 1, seq: 1 }),
    });
    for s in seqs {
        assert!(c.reply(s).await.is_ok());
    }
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_over_in_flight_max_is_refused() {
    let p = Pair::start().await;
    let mut cfg = p.config();
    cfg.in_flight_max = 2;
    let g = Gateway::start(cfg).await.unwrap();
    let mut c = Client::login(g.tcp_addr(), 1).await;
    c.enter(1).await;
    p.mode(Mode::Hold);
    let s1 = c.chat(1, "1").await; // in flight
    let _ = c.chat(1, "2").await; // queued
    let _ = c.chat(1, "3").await; // queued
    let s4 = c.chat(1, "4").await; // over
    let f = loop {
        let f = c.recv().await;
        if f.kind == Kind::Reply {
            break f;
        }
    };
    assert_eq!(f.seq, s4);
    let r: Reply = msg::decode(&f.payload).unwrap();
    assert_eq!(r.unwrap_err().code, ErrorCode::TooManyInFlight);
    let _ = s1;
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_resubscribes_and_resends_the_unanswered_request() {
    let mut p = Pair::start().await;
    let g = Gateway::start(p.config()).await.unwrap();
    let mut c = Client::login(g.tcp_addr(), 1).await;
    let mut other = Client::login(g.tcp_addr(), 2).await;
    let snap = c.enter(1).await;
    other.enter(1).await;
    assert!(matches!(
        c.push().await,
        Push::Event {
            event: RoomEvent::Entered { player: 2, .. },
            ..
        }
    ));
    // The master applies the chat and dies before its reply leaves.
    p.drain();
    p.mode(Mode::ApplyNoReply);
    let seq = c.chat(1, "once").await;
    p.wait_for("the chat on a", |n, m| {
        n == "a" && matches!(m, ToRoom::Request { .. })
    })
    .await;
    // `other` saw the event: it was released before the master died.
    assert_eq!(
        chat_text(&other.push().await),
        (snap.seq + 2, "once".into())
    );
    p.a.kill();
    p.b.master.store(true, Ordering::SeqCst);
    p.mode(Mode::Answer);
    let (_, sub) = p
        .wait_for("a Subscribe on b", |n, m| {
            n == "b" && matches!(m, ToRoom::Subscribe { .. })
        })
        .await;
    assert_eq!(
        sub,
        ToRoom::Subscribe {
            room: 1,
            after: snap.seq + 2
        }
    );
    let (_, re) = p
        .wait_for("the re-sent chat on b", |n, m| {
            n == "b" && matches!(m, ToRoom::Request { .. })
        })
        .await;
    assert!(matches!(re, ToRoom::Request { seq: s, player: 1, .. } if s == seq));
    // Answered from state: done once, its event seen once.
    let r = c.reply(seq).await;
    assert_eq!(
        r,
        Ok(Answer::Done {
            room: 1,
            seq: snap.seq + 2
        })
    );
    assert_eq!(p.state.lock().applied, 3);
    assert_eq!(chat_text(&c.push().await), (snap.seq + 2, "once".into()));
    // The room goes on through the new master, without a repeat.
    let seq = other.chat(1, "after").await;
    assert!(other.reply(seq).await.is_ok());
    assert_eq!(chat_text(&c.push().await), (snap.seq + 3, "after".into()));
    let st = g.stats();
    assert!(st.link_connects >= 2 && st.resent_requests >= 1, "{st:?}");
    assert_eq!(st.sessions, 2, "nobody was disconnected");
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_master_is_given_up_and_the_request_goes_to_the_new_one() {
    let mut p = Pair::start().await;
    let mut cfg = p.config();
    cfg.link_dead_ms = 300;
    let g = Gateway::start(cfg).await.unwrap();
    let mut c = Client::login(g.tcp_addr(), 1).await;
    let snap = c.enter(1).await;
    // The master stops (SIGSTOP): its link stays open and says nothing.
    p.a.frozen.store(true, Ordering::SeqCst);
    p.b.master.store(true, Ordering::SeqCst);
    p.drain();
    let seq = c.chat(1, "to the new master").await;
    // The silent link is probed, then given up; b gets the request.
    p.wait_for("a probe on a", |n, m| n == "a" && *m == ToRoom::Rooms)
        .await;
    p.wait_for("the chat on b", |n, m| {
        n == "b" && matches!(m, ToRoom::Request { .. })
    })
    .await;
    assert_eq!(
        c.reply(seq).await,
        Ok(Answer::Done {
            room: 1,
            seq: snap.seq + 1
        })
    );
    let st = g.stats();
    assert!(st.link_downs >= 1 && st.link_connects >= 2, "{st:?}");
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_a_port_with_reuse_port() {
    let p = Pair::start().await;
    let mut cfg = p.config();
    cfg.reuse_port = true;
    cfg.ws = None;
    let g1 = Gateway::start(cfg.clone()).await.unwrap();
    cfg.tcp = g1.tcp_addr().to_string();
    let g2 = Gateway::start(cfg.clone()).await.unwrap();
    assert_eq!(g1.tcp_addr(), g2.tcp_addr());
    // Without the option the port is taken.
    cfg.reuse_port = false;
    assert!(Gateway::start(cfg).await.is_err());
    // Connections land on one or the other; each is served.
    let mut clients = Vec::new();
    for i in 0..16 {
        clients.push(Client::login(g1.tcp_addr(), 100 + i).await);
    }
    assert_eq!(g1.stats().sessions + g2.stats().sessions, 16);
    g1.shutdown().await;
    g2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_says_bye_and_the_admin_port_answers_stats() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let p = Pair::start().await;
    let mut cfg = p.config();
    cfg.admin = Some("127.0.0.1:0".into());
    let g = Gateway::start(cfg).await.unwrap();
    let mut c = Client::login(g.tcp_addr(), 1).await;
    let admin = TcpStream::connect(g.admin_addr().unwrap()).await.unwrap();
    let (rd, mut wr) = admin.into_split();
    let mut rd = BufReader::new(rd);
    wr.write_all(b"STATS\nNOPE\n").await.unwrap();
    let mut line = String::new();
    timeout(WAIT, rd.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["sessions"], 1);
    assert!(v["rss_bytes"].as_u64().unwrap() > 0);
    line.clear();
    timeout(WAIT, rd.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert!(line.starts_with("ERR"), "{line}");
    g.shutdown().await;
    assert_eq!(c.bye().await.code, ErrorCode::ShuttingDown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_pushed_to_the_balancer() {
    let p = Pair::start().await;
    // A fake balancer: answers each POST /v1/status and hands over its body.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let baddr = l.local_addr().unwrap();
    // Unbounded on purpose and cannot grow past the test: it carries one test's
    // bounded steps to its assertions (a fake's log of what it received).
    let (tx, mut bodies) = mpsc::unbounded_channel::<serde_json::Value>();
    let fake = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = Vec::new();
        loop {
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).await.unwrap();
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            assert!(head.starts_with("post /v1/status "), "{head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap();
            while buf.len() < head_end + len {
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
            }
            let body: serde_json::Value =
                serde_json::from_slice(&buf[head_end..head_end + len]).unwrap();
            buf.drain(..head_end + len);
            let _ = tx.send(body);
            let reply = r#"{"status":200,"status_name":"up","draining":false}"#;
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
                reply.len()
            );
            s.write_all(resp.as_bytes()).await.unwrap();
        }
    });
    let mut cfg = p.config();
    cfg.balancer = Some(gameserver::gateway::BalancerReport {
        addrs: vec![baddr.to_string()],
        process_id: "gw-test-1".into(),
        host: "127.0.0.1".into(),
        port: 0,
        secret: None,
        report_interval_ms: 20,
    });
    let g = Gateway::start(cfg).await.unwrap();
    let _c = Client::login(g.tcp_addr(), 1).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let b = tokio::time::timeout_at(deadline, bodies.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b["id"], "gw-test-1");
        assert_eq!(b["port"], g.tcp_addr().port());
        assert_eq!(b["pid"], std::process::id());
        if b["online"] == 1 {
            break;
        }
    }
    g.shutdown().await;
    fake.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entering_a_room_of_another_pair_leaves_the_current_one_first() {
    let mut p1 = Pair::start().await;
    let mut p2 = Pair::start().await;
    let mut cfg = p1.config();
    cfg.pairs.push(PairConfig {
        rooms: vec![4, 5, 6],
        nodes: vec![p2.a.addr.to_string(), p2.b.addr.to_string()],
    });
    let g = Gateway::start(cfg).await.unwrap();
    let mut c = Client::login(g.tcp_addr(), 1).await;
    c.enter(1).await;
    p1.drain();
    let seq = c.request(&Request::Enter { room: 4 }).await;
    let (_, leave) = p1
        .wait_for("the Leave", |_, m| matches!(m, ToRoom::Request { .. }))
        .await;
    assert!(
        matches!(leave, ToRoom::Request { seq: s, req: Request::Leave { room: 1 }, .. } if s == seq)
    );
    p1.wait_for("the Unsubscribe", |_, m| {
        *m == ToRoom::Unsubscribe { room: 1 }
    })
    .await;
    let (_, enter) = p2
        .wait_for("the Enter", |_, m| matches!(m, ToRoom::Request { .. }))
        .await;
    assert!(
        matches!(enter, ToRoom::Request { seq: s, req: Request::Enter { room: 4 }, .. } if s == seq)
    );
    // One reply, for the Enter; the gateway's Leave was answered to it alone.
    assert!(matches!(c.reply(seq).await, Ok(Answer::Entered(s)) if s.room == 4));
    let seq = c.chat(4, "in four").await;
    assert!(matches!(
        c.reply(seq).await,
        Ok(Answer::Done { room: 4, .. })
    ));
    // It saw itself leave room 1 (sent before the Leave's reply), then room 4 only.
    assert!(matches!(
        c.push().await,
        Push::Event {
            room: 1,
            event: RoomEvent::Left { player: 1 },
            ..
        }
    ));
    assert!(matches!(
        c.push().await,
        Push::Event {
            room: 4,
            event: RoomEvent::Chat { .. },
            ..
        }
    ));
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_wait_for_a_master_then_fail_unavailable() {
    let p = Pair::start().await;
    let mut cfg = p.config();
    cfg.unavailable_after_ms = 150;
    let g = Gateway::start(cfg).await.unwrap();
    let mut c = Client::login(g.tcp_addr(), 1).await;
    c.enter(1).await;
    p.a.kill();
    let seq = c.chat(1, "nobody").await;
    assert_eq!(c.reply(seq).await.unwrap_err().code, ErrorCode::Unavailable);
    // The session is still up.
    c.send(Kind::Ping, 0, Vec::new()).await;
    assert_eq!(c.recv().await.kind, Kind::Pong);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_resubscribes_and_duplicates_are_dropped() {
    let mut p = Pair::start().await;
    let g = Gateway::start(p.config()).await.unwrap();
    let mut c = Client::login(g.tcp_addr(), 1).await;
    let snap = c.enter(1).await;
    let n = snap.seq;
    // The first session of the room subscribes from its snapshot.
    let (_, first) = p
        .wait_for("the first Subscribe", |_, m| {
            matches!(m, ToRoom::Subscribe { .. })
        })
        .await;
    assert_eq!(first, ToRoom::Subscribe { room: 1, after: n });
    let chat = |t: &str| RoomEvent::Chat {
        player: 9,
        table: None,
        text: t.into(),
    };
    // Events n+3.. arrive first: a gap.
    p.a.inject(&FromRoom::Events {
        room: 1,
        first_seq: n + 3,
        events: vec![chat("c"), chat("d")],
    });
    let (_, sub) = p
        .wait_for(
            "a Subscribe",
            |_, m| matches!(m, ToRoom::Subscribe { after, .. } if *after == n),
        )
        .await;
    assert_eq!(sub, ToRoom::Subscribe { room: 1, after: n });
    // The fill, overlapping what came before and what comes after.
    p.a.inject(&FromRoom::Events {
        room: 1,
        first_seq: n + 1,
        events: vec![chat("a"), chat("b"), chat("c")],
    });
    p.a.inject(&FromRoom::Events {
        room: 1,
        first_seq: n + 2,
        events: vec![chat("b"), chat("c"), chat("d")],
    });
    for (i, t) in ["a", "b", "c", "d"].iter().enumerate() {
        assert_eq!(
            chat_text(&c.push().await),
            (n + 1 + i as u64, t.to_string())
        );
    }
    // A snapshot past everything replaces it; older events are dropped.
    p.a.inject(&FromRoom::Snapshot(snapshot(1, n + 10)));
    p.a.inject(&FromRoom::Events {
        room: 1,
        first_seq: n + 5,
        events: vec![chat("old")],
    });
    p.a.inject(&FromRoom::Events {
        room: 1,
        first_seq: n + 11,
        events: vec![chat("new")],
    });
    assert!(matches!(c.push().await, Push::Snapshot(s) if s.seq == n + 10));
    assert_eq!(chat_text(&c.push().await), (n + 11, "new".into()));
    let st = g.stats();
    assert!(
        st.gaps >= 1 && st.duplicate_events >= 3 && st.snapshots_forwarded == 1,
        "{st:?}"
    );
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_fan_out_to_every_session_in_the_room() {
    let p = Pair::start().await;
    let g = Gateway::start(p.config()).await.unwrap();
    let mut a = Client::login(g.tcp_addr(), 1).await;
    let mut b = Client::login(g.tcp_addr(), 2).await;
    let mut elsewhere = Client::login(g.tcp_addr(), 3).await;
    a.enter(1).await;
    let sb = b.enter(1).await;
    elsewhere.enter(2).await;
    assert!(
        matches!(a.push().await, Push::Event { seq, event: RoomEvent::Entered { player: 2, .. }, .. } if seq == sb.seq)
    );
    let seq = a.chat(1, "hello").await;
    assert!(a.reply(seq).await.is_ok());
    assert_eq!(chat_text(&a.push().await), (sb.seq + 1, "hello".into()));
    assert_eq!(chat_text(&b.push().await), (sb.seq + 1, "hello".into()));
    // Room 2's session got nothing of room 1: its next frame is its own pong.
    elsewhere.send(Kind::Ping, 0, Vec::new()).await;
    assert_eq!(elsewhere.recv().await.kind, Kind::Pong);
    // b leaves: it gets no more of room 1.
    let seq = b.request(&Request::Leave { room: 1 }).await;
    assert!(b.reply(seq).await.is_ok());
    assert!(matches!(
        a.push().await,
        Push::Event {
            event: RoomEvent::Left { player: 2 },
            ..
        }
    ));
    let seq = a.chat(1, "gone?").await;
    assert!(a.reply(seq).await.is_ok());
    assert_eq!(chat_text(&a.push().await).1, "gone?");
    b.send(Kind::Ping, 0, Vec::new()).await;
    assert_eq!(b.recv().await.kind, Kind::Pong);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_ahead_of_the_link_does_not_hide_events_from_the_others() {
    let mut p = Pair::start().await;
    let g = Gateway::start(p.config()).await.unwrap();
    let mut a = Client::login(g.tcp_addr(), 1).await;
    let mut b = Client::login(g.tcp_addr(), 2).await;
    let n = a.enter(1).await.seq;
    p.drain();
    p.mode(Mode::Hold);
    let seq = b.request(&Request::Enter { room: 1 }).await;
    p.wait_for("b's Enter", |_, m| {
        matches!(m, ToRoom::Request { player: 2, .. })
    })
    .await;
    // b's snapshot includes n+1 and n+2, which the link carries after it.
    p.a.inject(&FromRoom::Reply {
        player: 2,
        seq,
        reply: Ok(Answer::Entered(snapshot(1, n + 2))),
    });
    let chat = |t: &str| RoomEvent::Chat {
        player: 9,
        table: None,
        text: t.into(),
    };
    p.a.inject(&FromRoom::Events {
        room: 1,
        first_seq: n + 1,
        events: vec![chat("x"), chat("y"), chat("z")],
    });
    assert!(matches!(b.reply(seq).await, Ok(Answer::Entered(s)) if s.seq == n + 2));
    for (i, t) in ["x", "y", "z"].iter().enumerate() {
        assert_eq!(
            chat_text(&a.push().await),
            (n + 1 + i as u64, t.to_string())
        );
    }
    assert_eq!(chat_text(&b.push().await), (n + 3, "z".into()));
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_login_closes_the_first() {
    let p = Pair::start().await;
    let g = Gateway::start(p.config()).await.unwrap();
    let mut old = Client::login(g.tcp_addr(), 1).await;
    let mut new = Client::login(g.tcp_addr(), 1).await;
    assert_eq!(old.bye().await.code, ErrorCode::LoggedInElsewhere);
    new.send(Kind::Ping, 0, Vec::new()).await;
    assert_eq!(new.recv().await.kind, Kind::Pong);
    assert_eq!(g.stats().logged_in_elsewhere, 1);
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_sessions_are_refused() {
    let p = Pair::start().await;
    let mut cfg = p.config();
    cfg.sessions_max = 1;
    let g = Gateway::start(cfg).await.unwrap();
    let _a = Client::login(g.tcp_addr(), 1).await;
    let mut b = Client::connect(g.tcp_addr()).await;
    let f = b.recv().await;
    assert_eq!(f.kind, Kind::Bye);
    assert_eq!(
        msg::decode::<Bye>(&f.payload).unwrap().code,
        ErrorCode::TooManySessions
    );
    g.shutdown().await;
}

/// Seed 002: a full gateway names another one of its zone with room,
/// learnt from the balancer both report to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_gateway_names_another_with_room() {
    let bcfg = balancer::config::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        zones: vec![balancer::config::ZoneConfig {
            id: 1,
            name: "z".into(),
            version: "gs".into(),
            process_online_max: 10,
            spawn: None,
        }],
        ..balancer::config::Config::default()
    };
    let bal = balancer::server::start(bcfg, Arc::new(balancer::server::NoSink))
        .await
        .unwrap();
    let p = Pair::start().await;
    let mut gws = Vec::new();
    for i in 0..2 {
        let mut cfg = p.config();
        cfg.sessions_max = 1;
        cfg.zone = 1;
        cfg.balancer = Some(gameserver::gateway::BalancerReport {
            addrs: vec![bal.addr().to_string()],
            process_id: format!("gw{i}"),
            host: "127.0.0.1".into(),
            port: 0,
            secret: None,
            report_interval_ms: 20,
        });
        gws.push(Gateway::start(cfg).await.unwrap());
    }
    let _a = Client::login(gws[0].tcp_addr(), 1).await;
    let want = format!("try {}", gws[1].tcp_addr());
    let t0 = Instant::now();
    loop {
        let mut b = Client::connect(gws[0].tcp_addr()).await;
        let f = b.recv().await;
        assert_eq!(f.kind, Kind::Bye);
        let bye = msg::decode::<Bye>(&f.payload).unwrap();
        assert_eq!(bye.code, ErrorCode::TooManySessions);
        if bye.message.ends_with(&want) {
            break;
        }
        // Until the first zone read, the gateway knows no other.
        assert!(bye.message.ends_with("try another"), "{}", bye.message);
        assert!(t0.elapsed() < WAIT, "never named the other gateway");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for g in gws {
        g.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_session_works_and_text_is_refused() {
    use tokio_tungstenite::tungstenite::Message;
    let p = Pair::start().await;
    let g = Gateway::start(p.config()).await.unwrap();
    let addr = g.ws_addr().unwrap();
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), s)
        .await
        .unwrap();
    let next = |f: Option<Result<Message, _>>| -> Frame {
        match f {
            Some(Ok(Message::Binary(b))) => frame::decode_message(&b, 1 << 20).unwrap(),
            m => panic!("expected a binary message, got {m:?}"),
        }
    };
    let a = Auth {
        token: tok(1, 60_000),
        client_version: msg::PROTOCOL_VERSION,
        features: 0,
    };
    let auth = Frame::new(Kind::Auth, 0, 1, Bytes::from(msg::encode(&a))).to_bytes();
    ws.send(Message::Binary(auth)).await.unwrap();
    let f = next(timeout(WAIT, ws.next()).await.unwrap());
    assert_eq!(f.kind, Kind::Welcome);
    let enter = Frame::new(
        Kind::Request,
        1,
        1,
        Bytes::from(msg::encode(&Request::Enter { room: 1 })),
    )
    .to_bytes();
    ws.send(Message::Binary(enter)).await.unwrap();
    let f = next(timeout(WAIT, ws.next()).await.unwrap());
    assert_eq!((f.kind, f.seq), (Kind::Reply, 1));
    assert!(matches!(
        msg::decode::<Reply>(&f.payload).unwrap(),
        Ok(Answer::Entered(_))
    ));
    ws.send(Message::Binary(
        Frame::new(Kind::Ping, 0, 1, Bytes::new()).to_bytes(),
    ))
    .await
    .unwrap();
    assert_eq!(
        next(timeout(WAIT, ws.next()).await.unwrap()).kind,
        Kind::Pong
    );
    ws.send(Message::Text("hello".into())).await.unwrap();
    let f = next(timeout(WAIT, ws.next()).await.unwrap());
    assert_eq!(f.kind, Kind::Bye);
    assert_eq!(
        msg::decode::<Bye>(&f.payload).unwrap().code,
        ErrorCode::BadFrame
    );
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed() {
    let p = Pair::start().await;
    let mut cfg = p.config();
    cfg.session_queue_frames_max = 4;
    let g = Gateway::start(cfg).await.unwrap();
    let mut c = Client::login(g.tcp_addr(), 1).await;
    let snap = c.enter(1).await;
    // The client stops reading; pushes pile up past its socket buffers
    // and its queue of 4 frames (16 MiB of 8 KiB chat events).
    let text = "x".repeat(8000);
    let events: Vec<RoomEvent> = (0..2000)
        .map(|_| RoomEvent::Chat {
            player: 9,
            table: None,
            text: text.clone(),
        })
        .collect();
    for (i, ev) in events.chunks(50).enumerate() {
        p.a.inject(&FromRoom::Events {
            room: 1,
            first_seq: snap.seq + 1 + 50 * i as u64,
            events: ev.to_vec(),
        });
    }
    let deadline = Instant::now() + WAIT;
    while g.stats().slow_consumers == 0 {
        assert!(
            Instant::now() < deadline,
            "the slow consumer was never closed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Reading now, it finds the connection closed (after what was buffered).
    let mut frames = 0;
    while let Some(f) = c.try_recv().await {
        assert!(matches!(f.kind, Kind::Push | Kind::Bye), "{f:?}");
        frames += 1;
    }
    assert!(frames < 2000, "it got everything: nothing was slow");
    while g.stats().sessions != 0 {
        assert!(Instant::now() < deadline, "the slow session never ended");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    g.shutdown().await;
}
