//! Hostile clients against a real gateway (seed 001's message protection,
//! issue 13), with honest clients (the real `gameserver::client`) playing
//! beside them. Each attack is refused, throttled or closed and counted
//! (the assertions are on the gateway's counters), and the honest clients
//! see no error. Their request latency is measured quiet and during the
//! attack and printed (not asserted: timing goals live in benchmarks).
//!
//! The room pair is a fake that speaks the link protocol (one master node),
//! as in `tests/gateway.rs`. Honest clients connect from 127.0.0.1, the
//! attackers from other addresses of 127.0.0.0/8 (the per-address cap).

use crate::fake_room;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gameserver::client::{Client as GameClient, Options, Target};
use gameserver::gateway::{Gateway, GatewayConfig, PairConfig, StatsSnapshot};
use gameserver::link::{FromRoom, ToRoom};
use gameserver::proto::frame::{self, Frame, Kind, FLAG_COMPRESSED};
use gameserver::proto::msg::{
    self, Answer, Auth, Bye, ErrorCode, MemberView, Reply, Request, RoomEvent, RoomInfo,
    RoomSnapshot,
};
use gameserver::token::{self, Claims};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

use fake_room::{link_frame, next_frame, rooms_with};

const SECRET: &str = "hostile-secret";
/// Every wait of these tests ends by this.
const WAIT: Duration = Duration::from_secs(15);
/// Honest clients beside each attack.
const HONEST: u64 = 4;

// ---------------------------------------------------------------- fake room pair

/// Rooms with long names and some players: a hall list of real size.
fn rooms() -> Vec<RoomInfo> {
    rooms_with(40, |id| {
        format!("room {id}: the great hall of the five-in-a-row players")
    })
}

/// A room of 60 members: a snapshot of a few KiB, as a real room's.
fn snapshot(room: u32, seq: u64) -> RoomSnapshot {
    RoomSnapshot {
        room,
        name: format!("room {room}"),
        game: "gomoku".into(),
        seq,
        capacity: 400,
        members: (1..=60)
            .map(|p| MemberView {
                player: 10_000 + p,
                name: format!("player-{p}"),
                seat: None,
                watching: None,
                wins: p as u32,
                losses: 3,
                draws: 0,
                games: p as u32 + 3,
                rating: 1200 + p as i32,
                coins: 1000,
            })
            .collect(),
        tables: Vec::new(),
    }
}

/// A master node that answers every request at once.
async fn fake_master() -> (SocketAddr, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let t = tokio::spawn(async move {
        let seqs = Arc::new(Mutex::new(std::collections::HashMap::<u32, u64>::new()));
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let _ = s.set_nodelay(true); // the events and the reply: two writes
            tokio::spawn(serve_link(s, seqs.clone()));
        }
    });
    (addr, t)
}

async fn serve_link(s: TcpStream, seqs: Arc<Mutex<std::collections::HashMap<u32, u64>>>) {
    let (mut rd, mut wr) = s.into_split();
    let mut buf = BytesMut::new();
    loop {
        let Some(f) = next_frame(&mut rd, &mut buf).await else {
            return;
        };
        let m: ToRoom = msg::decode(&f.payload).unwrap();
        let out = match m {
            ToRoom::Hello { .. } => vec![FromRoom::Welcome {
                node: 7,
                rooms: rooms(),
            }],
            ToRoom::Rooms => vec![FromRoom::Rooms(rooms())],
            ToRoom::Request {
                player,
                seq,
                name: _,
                req,
                ..
            } => {
                let room = req.room().unwrap_or(1);
                let mut st = seqs.lock();
                let n = st.entry(room).or_insert(0);
                let (events, answer) = match req {
                    Request::Enter { .. } => (Vec::new(), Answer::Entered(snapshot(room, *n))),
                    Request::Chat { table, text, .. } => {
                        *n += 1;
                        let e = RoomEvent::Chat {
                            player,
                            table,
                            text,
                        };
                        (vec![(*n, e)], Answer::Done { room, seq: *n })
                    }
                    _ => (Vec::new(), Answer::Done { room, seq: *n }),
                };
                drop(st);
                let mut out: Vec<FromRoom> = events
                    .into_iter()
                    .map(|(first_seq, e)| FromRoom::Events {
                        room,
                        first_seq,
                        events: vec![e],
                    })
                    .collect();
                out.push(FromRoom::Reply {
                    player,
                    seq,
                    reply: Ok(answer),
                });
                out
            }
            _ => Vec::new(),
        };
        for m in out {
            if wr.write_all(&link_frame(&m)).await.is_err() {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------- the arena

fn tok(player: u64) -> String {
    tok_in(player, 0)
}

/// A token of a player in group (account kind) `kind`.
fn tok_in(player: u64, kind: u8) -> String {
    let claims = Claims {
        player,
        zone: 1,
        expires_ms: token::now_ms() + 600_000,
        name: format!("p{player}"),
        kind,
    };
    token::mint(SECRET.as_bytes(), &claims)
}

/// A gateway, its fake pair, and honest clients chatting in room 1.
struct Arena {
    g: Gateway,
    _pair: JoinHandle<()>,
    honest: Vec<JoinHandle<Result<u64, String>>>,
    stop: Arc<AtomicBool>,
    attacking: Arc<AtomicBool>,
    /// Request latencies in µs: (quiet, during the attack).
    lat: Arc<Mutex<(Vec<u64>, Vec<u64>)>>,
}

fn config(pair: SocketAddr) -> GatewayConfig {
    let mut c = GatewayConfig::new(
        SECRET,
        vec![PairConfig {
            rooms: vec![1, 2, 3],
            nodes: vec![pair.to_string()],
        }],
    );
    c.tcp = "127.0.0.1:0".into();
    c.ws = None;
    c.admin = Some("127.0.0.1:0".into());
    c.heartbeat_ms = 100;
    c.dead_ticks = 10;
    c.auth_timeout_ms = 400;
    c.flood_close_ms = 500;
    c.conn_frames_per_s_max = 200;
    c.conn_bytes_per_s_max = 32_768;
    c.unauth_per_addr_max = 64;
    c
}

impl Arena {
    async fn start(tweak: impl FnOnce(&mut GatewayConfig)) -> Arena {
        let (pair, pair_task) = fake_master().await;
        let mut cfg = config(pair);
        tweak(&mut cfg);
        let g = Gateway::start(cfg).await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let attacking = Arc::new(AtomicBool::new(false));
        let lat = Arc::new(Mutex::new((Vec::new(), Vec::new())));
        let ready = Arc::new(AtomicU64::new(0));
        let mut honest = Vec::new();
        for i in 0..HONEST {
            let (addr, stop, attacking, lat, ready) = (
                g.tcp_addr(),
                stop.clone(),
                attacking.clone(),
                lat.clone(),
                ready.clone(),
            );
            honest.push(tokio::spawn(async move {
                honest_client(addr, 1 + i, stop, attacking, lat, ready).await
            }));
        }
        let deadline = Instant::now() + WAIT;
        while ready.load(Ordering::SeqCst) < HONEST {
            assert!(
                Instant::now() < deadline,
                "the honest clients never got going"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A quiet phase: some requests of every honest client before the attack.
        let deadline = Instant::now() + WAIT;
        while lat.lock().0.len() < 40 * HONEST as usize {
            assert!(Instant::now() < deadline, "the honest clients are too slow");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        attacking.store(true, Ordering::SeqCst);
        Arena {
            g,
            _pair: pair_task,
            honest,
            stop,
            attacking,
            lat,
        }
    }

    fn stats(&self) -> StatsSnapshot {
        self.g.stats()
    }

    /// Waits until `pred` holds for the counters.
    async fn until(&self, what: &str, pred: impl Fn(&StatsSnapshot) -> bool) -> StatsSnapshot {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.stats();
            if pred(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "{what} never happened: {s:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the honest clients, checks they saw no error, prints the p99s.
    async fn finish(self, attack: &str) {
        // Some honest requests during the attack, whatever its length.
        let deadline = Instant::now() + WAIT;
        while self.lat.lock().1.len() < 10 * HONEST as usize {
            assert!(
                Instant::now() < deadline,
                "no honest requests during the attack"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.attacking.store(false, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
        let mut done = 0;
        for h in self.honest {
            match timeout(WAIT, h).await {
                Ok(Ok(Ok(n))) => done += n,
                other => panic!("an honest client failed during {attack}: {other:?}"),
            }
        }
        let (mut quiet, mut busy) = std::mem::take(&mut *self.lat.lock());
        println!(
            "{attack}: honest requests {done}; p99 quiet {} µs ({} requests), during the attack {} µs ({} requests)",
            p99(&mut quiet),
            quiet.len(),
            p99(&mut busy),
            busy.len()
        );
        self.g.shutdown().await;
    }
}

fn p99(v: &mut [u64]) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

/// Enters room 1 (a compressed snapshot), then chats and lists rooms until
/// told to stop; any error fails it. Returns its requests done.
async fn honest_client(
    addr: SocketAddr,
    player: u64,
    stop: Arc<AtomicBool>,
    attacking: Arc<AtomicBool>,
    lat: Arc<Mutex<(Vec<u64>, Vec<u64>)>>,
    ready: Arc<AtomicU64>,
) -> Result<u64, String> {
    let opts = Options {
        keep_pushes: false, // counted, not read: the chat of the others
        ..Options::default()
    };
    let c = GameClient::connect_with(&Target::Tcp(addr), &tok(player), opts)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    match c.request(Request::Enter { room: 1 }).await {
        Ok(Answer::Entered(s)) if s.members.len() == 60 => {}
        other => return Err(format!("enter: {other:?}")),
    }
    ready.fetch_add(1, Ordering::SeqCst);
    let mut n = 0u64;
    // Bounded: the arena stops it within WAIT of its start at most.
    let end = Instant::now() + 4 * WAIT;
    while !stop.load(Ordering::SeqCst) && Instant::now() < end {
        let req = match n % 4 {
            3 => Request::Rooms,
            _ => Request::Chat {
                room: 1,
                table: None,
                text: format!("hello {n}"),
            },
        };
        let during = attacking.load(Ordering::SeqCst);
        let t = std::time::Instant::now();
        c.request(req)
            .await
            .map_err(|e| format!("request {n}: {e}"))?;
        let us = t.elapsed().as_micros() as u64;
        {
            let mut l = lat.lock();
            match during {
                false => l.0.push(us),
                true => l.1.push(us),
            }
        }
        n += 1;
        // Under the gateway's 50 requests a second.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    if let Some(e) = c.last_error() {
        return Err(format!("an error frame: {e}"));
    }
    if let Some(c) = c.closed() {
        return Err(format!("closed: {c:?}"));
    }
    Ok(n)
}

// ---------------------------------------------------------------- the attacker

/// A raw frame client from `from`.
struct Raw {
    s: TcpStream,
    buf: BytesMut,
}

fn attacker_ip(a: u8, b: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, a, b))
}

async fn connect_from(addr: SocketAddr, from: IpAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(from, 0)).unwrap();
    s.connect(addr).await.unwrap()
}

impl Raw {
    async fn connect(addr: SocketAddr, from: IpAddr) -> Raw {
        Raw {
            s: connect_from(addr, from).await,
            buf: BytesMut::new(),
        }
    }

    fn auth_frame(player: u64, version: u32) -> Bytes {
        Raw::auth_frame_in(player, version, 0)
    }

    fn auth_frame_in(player: u64, version: u32, group: u8) -> Bytes {
        let a = Auth {
            token: tok_in(player, group),
            client_version: version,
            features: 0,
        };
        Frame::new(Kind::Auth, 0, token::now_ms(), Bytes::from(msg::encode(&a))).to_bytes()
    }

    async fn login(addr: SocketAddr, from: IpAddr, player: u64) -> Raw {
        let mut r = Raw::connect(addr, from).await;
        r.s.write_all(&Raw::auth_frame(player, msg::PROTOCOL_VERSION))
            .await
            .unwrap();
        let f = r.recv().await.expect("Welcome");
        assert_eq!(f.kind, Kind::Welcome, "{f:?}");
        r
    }

    async fn send(&mut self, kind: Kind, seq: u32, time_ms: u64, payload: Vec<u8>) {
        let f = Frame::new(kind, seq, time_ms, Bytes::from(payload)).to_bytes();
        self.s.write_all(&f).await.unwrap();
    }

    /// The next frame, `None` at the end of the connection.
    async fn recv(&mut self) -> Option<Frame> {
        timeout(WAIT, async {
            loop {
                if let Some(f) = frame::decode(&mut self.buf, 1 << 20).unwrap() {
                    return Some(f.inflated(1 << 20).unwrap());
                }
                match self.s.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("the gateway answers within the wait")
    }

    /// The reply to request `seq` (skipping pushes and pongs).
    async fn reply(&mut self, seq: u32) -> Reply {
        loop {
            let f = self.recv().await.expect("a reply");
            if f.kind == Kind::Reply && f.seq == seq {
                return msg::decode(&f.payload).unwrap();
            }
        }
    }

    /// Reads until the Bye; its code.
    async fn bye(&mut self) -> ErrorCode {
        loop {
            match self.recv().await {
                Some(f) if f.kind == Kind::Bye => {
                    return msg::decode::<Bye>(&f.payload).unwrap().code
                }
                Some(_) => {}
                None => panic!("closed without a Bye"),
            }
        }
    }
}

fn chat(n: u32) -> Vec<u8> {
    msg::encode(&Request::Chat {
        room: 1,
        table: None,
        text: format!("attacker {n}"),
    })
}

// ---------------------------------------------------------------- the attacks

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_crc_ends_the_session_and_is_counted() {
    let a = Arena::start(|_| {}).await;
    let before = a.stats();
    let mut r = Raw::login(a.g.tcp_addr(), attacker_ip(0, 2), 900).await;
    let mut b = BytesMut::from(
        &Frame::new(Kind::Request, 1, token::now_ms(), chat(1).into()).to_bytes()[..],
    );
    let last = b.len() - 1;
    b[last] ^= 0x20; // the payload altered in transit
    r.s.write_all(&b).await.unwrap();
    assert_eq!(r.bye().await, ErrorCode::BadCrc);
    let s = a.stats();
    assert_eq!(s.errors_frame, before.errors_frame + 1);
    assert_eq!(a.g.stats_handle().errors_with(ErrorCode::BadCrc), 1);
    a.finish("forged CRC").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_and_a_reused_sequence_are_refused_and_the_session_goes_on() {
    let a = Arena::start(|_| {}).await;
    let mut r = Raw::login(a.g.tcp_addr(), attacker_ip(0, 2), 900).await;
    r.send(Kind::Request, 1, token::now_ms(), chat(1)).await;
    assert!(r.reply(1).await.is_ok());
    r.send(Kind::Request, 3, token::now_ms(), chat(3)).await;
    assert_eq!(r.reply(3).await.unwrap_err().code, ErrorCode::SeqSkipped);
    r.send(Kind::Request, 1, token::now_ms(), chat(1)).await; // a replay
    assert_eq!(r.reply(1).await.unwrap_err().code, ErrorCode::SeqReused);
    r.send(Kind::Request, 2, token::now_ms(), chat(2)).await;
    assert!(r.reply(2).await.is_ok(), "the next number is still served");
    assert_eq!(a.stats().seq_refused, 2);
    let h = a.g.stats_handle();
    assert_eq!(
        (
            h.errors_with(ErrorCode::SeqSkipped),
            h.errors_with(ErrorCode::SeqReused)
        ),
        (1, 1)
    );
    a.finish("skipped and reused sequence").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_and_future_timestamps_are_dropped_and_counted() {
    let a = Arena::start(|c| {
        c.frame_age_max_ms = 5_000;
        c.frame_ahead_max_ms = 2_000;
    })
    .await;
    let mut r = Raw::login(a.g.tcp_addr(), attacker_ip(0, 2), 900).await;
    let now = token::now_ms();
    r.send(Kind::Request, 1, now - 60_000, chat(1)).await;
    assert_eq!(r.reply(1).await.unwrap_err().code, ErrorCode::StaleTime);
    r.send(Kind::Request, 2, now + 60_000, chat(2)).await;
    assert_eq!(r.reply(2).await.unwrap_err().code, ErrorCode::StaleTime);
    // A stale ping gets no Pong; a fresh one does.
    r.send(Kind::Ping, 0, now - 60_000, Vec::new()).await;
    r.send(Kind::Ping, 0, token::now_ms(), Vec::new()).await;
    let pong = loop {
        let f = r.recv().await.expect("a pong");
        if f.kind == Kind::Pong {
            break msg::Pong::decode(&f.payload).unwrap();
        }
    };
    assert!(
        pong.client_time_ms > now - 1000,
        "the stale ping was answered"
    );
    r.send(Kind::Request, 3, token::now_ms(), chat(3)).await;
    assert!(r.reply(3).await.is_ok());
    assert_eq!(a.stats().stale_frames, 3);
    assert_eq!(a.g.stats_handle().errors_with(ErrorCode::StaleTime), 2);
    a.finish("stale and future timestamps").await;
}

/// Floods with `frame` (a fresh copy each time) as fast as the socket takes
/// it, reading (and dropping) what comes back, until the gateway closes.
async fn flood(
    addr: SocketAddr,
    from: IpAddr,
    player: u64,
    frame: impl Fn(u32) -> Bytes + Send + 'static,
) -> ErrorCode {
    let r = Raw::login(addr, from, player).await;
    let (mut rd, mut wr) = r.s.into_split();
    let writer = tokio::spawn(async move {
        // Bounded: the gateway closes it well before.
        for i in 0..2_000_000u32 {
            if wr.write_all(&frame(i)).await.is_err() {
                return;
            }
        }
    });
    let mut buf = BytesMut::from(&r.buf[..]);
    let code = timeout(WAIT, async {
        loop {
            while let Some(f) = frame::decode(&mut buf, 1 << 20).unwrap() {
                if f.kind == Kind::Bye {
                    return msg::decode::<Bye>(&f.payload).unwrap().code;
                }
            }
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => panic!("closed without a Bye"),
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the flood is closed within the wait");
    writer.abort();
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_flood_is_slowed_then_closed() {
    let a = Arena::start(|_| {}).await;
    let code = flood(a.g.tcp_addr(), attacker_ip(0, 2), 900, |_| {
        Frame::new(Kind::Ping, 0, token::now_ms(), Bytes::new()).to_bytes()
    })
    .await;
    assert_eq!(code, ErrorCode::Flooding);
    let s = a.until("the flood close", |s| s.flood_closed == 1).await;
    assert!(
        s.throttle_pauses > 0 && s.throttled_connections == 1,
        "{s:?}"
    );
    a.finish("frame flood").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_flood_is_slowed_then_closed() {
    let a = Arena::start(|_| {}).await;
    // 8 KiB requests: few frames, many bytes (refused as unreadable, but read).
    let code = flood(a.g.tcp_addr(), attacker_ip(0, 2), 900, |i| {
        Frame::new(
            Kind::Request,
            i + 1,
            token::now_ms(),
            Bytes::from(vec![200u8; 8192]),
        )
        .to_bytes()
    })
    .await;
    assert_eq!(code, ErrorCode::Flooding);
    let s = a.until("the flood close", |s| s.flood_closed == 1).await;
    assert!(
        s.throttle_pauses > 0 && s.throttled_connections == 1,
        "{s:?}"
    );
    // 8 KiB frames at 32 KiB/s: the frames a second stayed far under 200.
    assert!(s.bytes_in > 32_768, "{s:?}");
    a.finish("byte flood").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_silent_and_dribbled_auth_are_closed() {
    let a = Arena::start(|_| {}).await;
    let before = a.stats();
    let mut silent = Raw::connect(a.g.tcp_addr(), attacker_ip(0, 2)).await;
    let mut dribble = Raw::connect(a.g.tcp_addr(), attacker_ip(0, 3)).await;
    let auth = Raw::auth_frame(900, msg::PROTOCOL_VERSION);
    let t = std::time::Instant::now();
    let mut sent = 0;
    // One byte every 20 ms: the Auth would take seconds, the limit is 400 ms.
    for b in auth.iter() {
        if dribble.s.write_all(&[*b]).await.is_err() {
            break;
        }
        sent += 1;
        if t.elapsed() > Duration::from_secs(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sent < auth.len(), "the whole Auth went through");
    assert_eq!(dribble.bye().await, ErrorCode::NotAuthenticated);
    assert_eq!(silent.bye().await, ErrorCode::NotAuthenticated);
    let s = a.stats();
    assert_eq!(s.errors_auth, before.errors_auth + 2);
    assert_eq!(
        a.g.stats_handle().errors_with(ErrorCode::NotAuthenticated),
        2
    );
    a.finish("slowloris").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_and_a_decompression_bomb_are_refused() {
    let a = Arena::start(|c| c.frame_bytes_max = 16_384).await;
    let mut r = Raw::login(a.g.tcp_addr(), attacker_ip(0, 2), 900).await;
    let big = Frame::new(
        Kind::Request,
        1,
        token::now_ms(),
        Bytes::from(vec![0u8; 100_000]),
    )
    .to_bytes();
    r.s.write_all(&big[..frame::HEADER_BYTES]).await.unwrap();
    assert_eq!(r.bye().await, ErrorCode::FrameTooLarge);

    // A compressed request inflates: served.
    let mut r = Raw::login(a.g.tcp_addr(), attacker_ip(0, 2), 901).await;
    let mut b = BytesMut::new();
    frame::encode_parts(
        Kind::Request,
        FLAG_COMPRESSED,
        1,
        token::now_ms(),
        &frame::deflate(&chat(1)),
        &mut b,
    );
    r.s.write_all(&b).await.unwrap();
    assert!(r.reply(1).await.is_ok());
    // A bomb: 16 MiB of zeros in a few KiB, under the frame limit.
    let bomb = {
        use std::io::Write;
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&vec![0u8; 16 << 20]).unwrap();
        e.finish().unwrap()
    };
    assert!(bomb.len() < 16_384);
    let mut b = BytesMut::new();
    frame::encode_parts(
        Kind::Request,
        FLAG_COMPRESSED,
        2,
        token::now_ms(),
        &bomb,
        &mut b,
    );
    r.s.write_all(&b).await.unwrap();
    assert_eq!(r.bye().await, ErrorCode::FrameTooLarge);
    let s = a.stats();
    assert_eq!(s.errors_frame, 2);
    assert_eq!(s.inflated_frames, 2);
    a.finish("oversized frame and decompression bomb").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_silent_connections_are_closed_and_the_address_cap_holds() {
    let a = Arena::start(|c| c.auth_timeout_ms = 5_000).await;
    let before = a.stats();
    // 2,000 connections that never send, 50 from each of 40 addresses (under the cap).
    let mut conns = Vec::new();
    for i in 0..2_000u32 {
        let from = attacker_ip(1, 1 + (i / 50) as u8);
        conns.push(connect_from(a.g.tcp_addr(), from).await);
    }
    // 100 more from one address: 64 are held, 36 closed at once.
    let from = attacker_ip(2, 1);
    for _ in 0..100 {
        conns.push(connect_from(a.g.tcp_addr(), from).await);
    }
    let s = a
        .until("the per-address refusals", |s| s.refused_per_addr == 36)
        .await;
    assert!(s.connections >= 2_000 + HONEST, "{s:?}");
    // Every held one is closed at the auth timeout (NotAuthenticated).
    let s = a
        .until("the auth timeouts", |s| {
            s.errors_auth >= before.errors_auth + 2_064
        })
        .await;
    assert_eq!(s.errors_auth, before.errors_auth + 2_064, "{s:?}");
    drop(conns);
    a.until("the connections gone", |s| s.connections == HONEST)
        .await;
    a.finish("2,100 silent connections").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_below_the_minimum_version_is_told_to_upgrade() {
    let a = Arena::start(|_| {}).await;
    let mut r = Raw::connect(a.g.tcp_addr(), attacker_ip(0, 2)).await;
    r.s.write_all(&Raw::auth_frame(900, 0)).await.unwrap();
    assert_eq!(r.bye().await, ErrorCode::UpgradeRequired);
    assert_eq!(a.stats().upgrade_required, 1);
    a.finish("old client version").await;
}

/// The counters as Prometheus reads them: HTTP GET /metrics on the admin port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_over_http_show_compression_rtt_and_refusals() {
    let a = Arena::start(|_| {}).await;
    let mut r = Raw::connect(a.g.tcp_addr(), attacker_ip(0, 2)).await;
    r.s.write_all(&Raw::auth_frame(900, 0)).await.unwrap();
    assert_eq!(r.bye().await, ErrorCode::UpgradeRequired);
    // The honest clients' heartbeats give RTT samples (the probe every 100 ms).
    let s = a
        .until("RTT samples", |s| {
            s.rtt_samples >= HONEST && s.compressed_frames > 0
        })
        .await;
    assert!(
        s.compress_packed_bytes < s.compress_plain_bytes / 2,
        "{s:?}"
    );
    let admin = a.g.admin_addr().unwrap();
    let mut h = TcpStream::connect(admin).await.unwrap();
    h.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    timeout(WAIT, h.read_to_string(&mut text))
        .await
        .unwrap()
        .unwrap();
    assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
    for want in [
        "gateway_upgrade_required 1\n",
        "gateway_errors_by_code{code=\"UpgradeRequired\"} 1\n",
        "gateway_heartbeat_rtt_ms_bucket{le=\"+Inf\"}",
        "gateway_frames_out_by_kind{kind=\"Reply\"}",
        "gateway_compression_ratio 0.",
        "# TYPE gateway_sessions gauge\ngateway_sessions 4\n",
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
    // The line protocol's METRICS answers the same, ended by # EOF.
    let mut h = TcpStream::connect(admin).await.unwrap();
    h.write_all(b"METRICS\n").await.unwrap();
    let mut got = Vec::new();
    timeout(WAIT, async {
        let mut b = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("# EOF\n") {
            let n = h.read(&mut b).await.unwrap();
            assert!(n > 0, "closed before # EOF");
            got.extend_from_slice(&b[..n]);
        }
    })
    .await
    .unwrap();
    assert!(String::from_utf8_lossy(&got).contains("gateway_upgrade_required 1\n"));
    a.finish("metrics").await;
}

/// Routing by client version and group: a route's sessions see and reach
/// only its pairs (here: group 7 none, version 2 the one pair).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_version_and_group_keep_a_client_to_its_pairs() {
    let a = Arena::start(|c| {
        c.routes = vec![
            gameserver::gateway::RouteConfig {
                versions: Some((2, 2)),
                groups: Vec::new(),
                pairs: vec![0],
            },
            gameserver::gateway::RouteConfig {
                versions: None,
                groups: vec![7],
                pairs: Vec::new(),
            },
        ];
    })
    .await;
    let addr = a.g.tcp_addr();
    let login = |version, group, player| async move {
        let mut r = Raw::connect(addr, attacker_ip(0, 2)).await;
        r.s.write_all(&Raw::auth_frame_in(player, version, group))
            .await
            .unwrap();
        assert_eq!(r.recv().await.expect("Welcome").kind, Kind::Welcome);
        r
    };
    // Group 7 (and version 1): no pair; its room list is empty.
    let mut g7 = login(1, 7, 900).await;
    g7.send(
        Kind::Request,
        1,
        token::now_ms(),
        msg::encode(&Request::Rooms),
    )
    .await;
    assert_eq!(g7.reply(1).await, Ok(Answer::Rooms(Vec::new())));
    g7.send(
        Kind::Request,
        2,
        token::now_ms(),
        msg::encode(&Request::Enter { room: 1 }),
    )
    .await;
    assert_eq!(g7.reply(2).await.unwrap_err().code, ErrorCode::UnknownRoom);
    // Version 2 in group 7: the version route comes first, pair 0.
    let mut v2 = login(2, 7, 901).await;
    v2.send(
        Kind::Request,
        1,
        token::now_ms(),
        msg::encode(&Request::Enter { room: 1 }),
    )
    .await;
    assert!(matches!(v2.reply(1).await, Ok(Answer::Entered(_))));
    a.finish("routing").await;
}
