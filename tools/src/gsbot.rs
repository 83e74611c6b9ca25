//! `gs-bot`: K players over TCP or WebSocket, each with a guest token,
//! entering a room, sitting at a table (bots 2p and 2p+1 share one), playing
//! legal Gomoku moves at a chosen pace, sending Ready after each game, and
//! chatting; then a report of what they measured and saw.
//!
//! Every bot does one request at a time and keeps reading its pushes while
//! the request is in flight, so a push's arrival time is when it arrived,
//! not when the bot got round to it:
//! - action latency: request sent → its reply;
//! - chat latency: chat sent → the bot's own chat event in the room's pushes;
//! - what the room's pushes looked like ([`RoomView`]: gaps, replays, snapshots);
//! - every acknowledged move, `(room, table, game_no, seat, mv, seq)`, for a
//!   drill to find exactly once in the server's final state.
//!
//! [`run_bots`] is the library entry; the binary parses flags ([`BotArgs`]).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use gameserver::client::{Applied, Client, ClientError, Closed, Options, RoomView, Target};
use gameserver::proto::msg::{Answer, Push, Request, RoomEvent};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::{watch, Notify, Semaphore};

/// Connections per source address to one destination before the next source
/// address (the ephemeral port range 32768–60999 holds ~28,000; margin left).
pub const CONNECTIONS_PER_SOURCE_MAX: usize = 25_000;
/// Chats a bot remembers while waiting to see them come back.
const CHATS_WAITING_MAX: usize = 64;
/// Longest a bot waits for anything before looking at the clock again.
const IDLE_WAKE: Duration = Duration::from_millis(100);
/// With `--games` and no `--seconds`, the run stops after this long anyway
/// (a table whose partner never came would wait for ever).
pub const GAMES_SECONDS_MAX: f64 = 600.0;
/// Pushes a bot keeps while its Enter is unanswered (the rest would be a gap).
const EARLY_PUSHES_MAX: usize = 4096;
/// Times a bot tries to enter its room before it gives up and only holds its session.
const ENTER_ATTEMPTS_MAX: u32 = 5;
/// Wait before re-sending a request the room did not answer.
const RETRY_AFTER: Duration = Duration::from_millis(200);
/// Gomoku's board side (moves are `[x, y]`, each below it).
const BOARD: i32 = 15;
/// Latencies recorded up to this many µs (longer ones are clamped).
const LATENCY_US_MAX: u64 = 120_000_000;

/// Where a bot's token comes from.
#[derive(Clone, Debug)]
pub enum TokenSource {
    /// Minted here with the gateways' secret; players `first_player..`.
    Secret {
        secret: Vec<u8>,
        zone: u32,
        first_player: u64,
    },
    /// `POST {url}/v1/guest` of the login endpoint, one guest per bot.
    Login { url: String },
}

/// What [`run_bots`] runs.
#[derive(Clone, Debug)]
pub struct BotConfig {
    /// Gateways (TCP addresses, or WebSocket ones with `ws`); bot i uses
    /// `gateways[i % len]`. May be empty with a login, which names one.
    pub gateways: Vec<SocketAddr>,
    pub ws: bool,
    pub tokens: TokenSource,
    pub bots: usize,
    /// Rooms `first_room..first_room + rooms`; table pair p plays in room
    /// `first_room + p % rooms`, at table `p / rooms`.
    pub first_room: u32,
    pub rooms: u32,
    /// Tables from this one (a room of an earlier run may still seat its players).
    pub first_table: u16,
    /// Think time before each move.
    pub move_ms: u64,
    /// A chat to the room every this many ms (0: never).
    pub chat_ms: u64,
    /// Play this long (from the start of the run, connecting included).
    pub seconds: Option<f64>,
    /// Or stop once each table has finished this many games.
    pub games: Option<u32>,
    /// Bind TCP source addresses across 127.0.0.0/8 ([`CONNECTIONS_PER_SOURCE_MAX`] each).
    pub spread_sources: bool,
    /// Connections being opened at once (a listener's backlog is 4096 here).
    pub connect_concurrency: usize,
    pub request_timeout: Duration,
    pub seed: u64,
    /// Keep each bot's acknowledged moves and final view in the report.
    pub keep_logs: bool,
}

impl BotConfig {
    /// Two bots against `gateway` with tokens minted from `secret`, playing one game.
    pub fn new(gateway: SocketAddr, secret: &[u8], zone: u32) -> BotConfig {
        BotConfig {
            gateways: vec![gateway],
            ws: false,
            tokens: TokenSource::Secret {
                secret: secret.to_vec(),
                zone,
                first_player: 1_000_000,
            },
            bots: 2,
            first_room: 1,
            rooms: 1,
            first_table: 0,
            move_ms: 200,
            chat_ms: 0,
            seconds: None,
            games: Some(1),
            spread_sources: false,
            connect_concurrency: 256,
            request_timeout: Duration::from_secs(10),
            seed: 1,
            keep_logs: false,
        }
    }
}

/// A move the server acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AckedMove {
    pub room: u32,
    pub table: u16,
    pub game_no: u32,
    pub seat: u8,
    pub mv: Vec<u8>,
    /// The room sequence number the reply gave (`Answer::Done::seq`).
    pub seq: u64,
}

/// One bot's record, kept when [`BotConfig::keep_logs`].
#[derive(Clone, Debug)]
pub struct BotLog {
    pub index: usize,
    pub player: u64,
    pub room: u32,
    pub table: u16,
    pub seat: u8,
    pub acked: Vec<AckedMove>,
    /// The bot's view of its room when it stopped (`None`: never entered).
    pub view: Option<RoomView>,
    /// Why its session ended before the stop, if it did.
    pub closed: Option<Closed>,
}

/// Latency percentiles, ms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// What a run of bots measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BotReport {
    pub bots: usize,
    /// Sessions that authenticated.
    pub connected: usize,
    /// Sessions still up when the run stopped.
    pub connections_held: usize,
    /// Bots that could not connect or authenticate.
    pub connect_failed: usize,
    /// Sessions that ended before the stop.
    pub disconnects: usize,
    pub seconds: f64,
    /// Requests answered (acknowledged or refused).
    pub actions: u64,
    pub actions_per_s: f64,
    pub action: Latency,
    pub chat: Latency,
    /// Heartbeat round trips at the end, one per held session.
    pub rtt: Latency,
    pub moves_acked: u64,
    /// Games seen to end (each table counted once, by its seat-0 bot).
    pub games: u64,
    pub chats_sent: u64,
    /// Requests that failed, by error code (`Timeout`, `Closed`, ... for the others).
    pub errors: BTreeMap<String, u64>,
    /// Room pushes: gaps in the event sequence, events missed in them,
    /// replays, re-basing snapshots, events that did not fit the view.
    pub gaps: u64,
    pub missed: u64,
    pub stale: u64,
    pub snapshots: u64,
    pub mismatches: u64,
    /// Each bot's record (with [`BotConfig::keep_logs`]).
    #[serde(skip)]
    pub logs: Vec<BotLog>,
}

/// Histograms and counters all bots add to.
struct Totals {
    action: Histogram<u64>,
    chat: Histogram<u64>,
    rtt: Histogram<u64>,
    report: BotReport,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record((d.as_micros() as u64).clamp(1, LATENCY_US_MAX));
}

/// Where bot `i` plays: (room, table, seat).
pub fn placement(cfg: &BotConfig, i: usize) -> (u32, u16, u8) {
    let pair = i / 2;
    let rooms = cfg.rooms.max(1) as usize;
    (
        cfg.first_room + (pair % rooms) as u32,
        cfg.first_table + (pair / rooms) as u16,
        (i % 2) as u8,
    )
}

/// The source address of connection `i` when spreading: 127.0.0.1 for the
/// first [`CONNECTIONS_PER_SOURCE_MAX`], then 127.0.0.2, ... across 127.0.0.0/8.
pub fn source_addr(i: usize) -> IpAddr {
    let k = (i / CONNECTIONS_PER_SOURCE_MAX) as u32 + 1;
    IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | (k & 0x00ff_ffff)))
}

/// A random free cell within two of the last stone of either player (its own
/// or the opponent's, chosen at random), else any free cell; centre first.
pub fn pick_move(moves: &[(u8, Vec<u8>, bool)], rng: &mut impl Rng) -> Option<Vec<u8>> {
    let taken: HashSet<(i32, i32)> = moves
        .iter()
        .filter_map(|(_, m, _)| match m[..] {
            [x, y] => Some((x as i32, y as i32)),
            _ => None,
        })
        .collect();
    let free = |x: i32, y: i32| {
        (0..BOARD).contains(&x) && (0..BOARD).contains(&y) && !taken.contains(&(x, y))
    };
    let Some((cx, cy)) = moves
        .iter()
        .rev()
        .take(2)
        .nth(rng.gen_range(0..2usize.min(moves.len()).max(1)))
        .and_then(|(_, m, _)| match m[..] {
            [x, y] => Some((x as i32, y as i32)),
            _ => None,
        })
    else {
        return Some(vec![(BOARD / 2) as u8, (BOARD / 2) as u8]);
    };
    let near: Vec<(i32, i32)> = (-2..=2)
        .flat_map(|dy| (-2..=2).map(move |dx| (cx + dx, cy + dy)))
        .filter(|&(x, y)| free(x, y))
        .collect();
    let pick = if near.is_empty() {
        let all: Vec<(i32, i32)> = (0..BOARD)
            .flat_map(|y| (0..BOARD).map(move |x| (x, y)))
            .filter(|&(x, y)| free(x, y))
            .collect();
        *all.get(rng.gen_range(0..all.len().max(1)))?
    } else {
        near[rng.gen_range(0..near.len())]
    };
    Some(vec![pick.0 as u8, pick.1 as u8])
}

/// Whether the last move made five in a row: its game is over and the
/// `Ended` event is on its way (a move sent now would be refused with NoGame).
pub fn last_move_won(moves: &[(u8, Vec<u8>, bool)]) -> bool {
    let Some((seat, last, _)) = moves.last() else {
        return false;
    };
    let &[x, y] = &last[..] else { return false };
    let mine: HashSet<(i32, i32)> = moves
        .iter()
        .filter(|(s, _, _)| s == seat)
        .filter_map(|(_, m, _)| match m[..] {
            [x, y] => Some((x as i32, y as i32)),
            _ => None,
        })
        .collect();
    let (x, y) = (x as i32, y as i32);
    [(1, 0), (0, 1), (1, 1), (1, -1)].iter().any(|&(dx, dy)| {
        let run = |sx: i32, sy: i32| {
            (1..5)
                .take_while(|k| mine.contains(&(x + sx * k, y + sy * k)))
                .count()
        };
        1 + run(dx, dy) + run(-dx, -dy) >= 5
    })
}

/// A guest token from the login endpoint: (player, token, tcp gateway, ws url).
pub async fn guest_login(
    url: &str,
    name: &str,
) -> Result<(u64, String, Option<String>, Option<String>), String> {
    #[derive(serde::Deserialize)]
    struct Guest {
        player: u64,
        token: String,
        #[serde(default)]
        gateway: Option<String>,
        #[serde(default)]
        ws: Option<String>,
    }
    let body = serde_json::json!({ "name": name }).to_string();
    let text = http_post(url, "/v1/guest", &body).await?;
    let g: Guest = serde_json::from_str(&text)
        .map_err(|e| format!("login answer is not the guest JSON: {e}"))?;
    Ok((g.player, g.token, g.gateway, g.ws))
}

/// A minimal HTTP/1.1 POST of JSON (`Connection: close`); the body of a 200.
async fn http_post(base: &str, path: &str, body: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const ANSWER_BYTES_MAX: u64 = 1 << 16;
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| format!("{base}: only http:// URLs"))?;
    let (host, prefix) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    let path = format!("/{}{path}", prefix.trim_end_matches('/')).replace("//", "/");
    let mut s = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|e| format!("{host}: {e}"))?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    s.take(ANSWER_BYTES_MAX)
        .read_to_end(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or("the login's answer has no header end")?;
    let status = head.split(' ').nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!(
            "login answered {}: {body}",
            head.lines().next().unwrap_or("")
        ));
    }
    Ok(body.to_string())
}

/// What a bot's one in-flight request was for.
enum Action {
    Enter,
    Sit,
    Move { game_no: u32, mv: Vec<u8> },
    Ready,
    Chat,
    Snapshot,
}

type InFlight<'a> =
    Pin<Box<dyn Future<Output = (Action, Instant, Result<Answer, ClientError>)> + Send + 'a>>;

/// Whether a failed request is worth sending again (the room was unreachable).
fn retryable(e: &ClientError) -> bool {
    use gameserver::proto::msg::ErrorCode;
    match e {
        ClientError::Timeout(_) => true,
        ClientError::Fail(f) => matches!(
            f.code,
            ErrorCode::Unavailable | ErrorCode::RateLimited | ErrorCode::TooManyInFlight
        ),
        _ => false,
    }
}

fn error_key(e: &ClientError) -> String {
    match e {
        ClientError::Fail(f) => format!("{:?}", f.code),
        ClientError::Closed { code: Some(c), .. } => format!("{c:?}"),
        ClientError::Closed { code: None, .. } => "Closed".into(),
        ClientError::Timeout(_) => "Timeout".into(),
        ClientError::Connect { .. } => "Connect".into(),
    }
}

/// The run's shared parts.
struct Run {
    cfg: BotConfig,
    totals: Mutex<Totals>,
    connect: Semaphore,
    /// Bots that finished their games (or failed): the run stops when all have.
    done: AtomicUsize,
    all_done: Notify,
}

impl Run {
    fn finish(&self) {
        if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.cfg.bots {
            self.all_done.notify_one();
        }
    }
}

/// Runs the bots until `seconds` pass, every table has played `games`, or
/// `stop` turns true (whichever first); then reports.
pub async fn run_bots_until(cfg: BotConfig, mut stop: watch::Receiver<bool>) -> BotReport {
    let started = Instant::now();
    let run = Arc::new(Run {
        connect: Semaphore::new(cfg.connect_concurrency.max(1)),
        totals: Mutex::new(Totals {
            action: histogram(),
            chat: histogram(),
            rtt: histogram(),
            report: BotReport {
                bots: cfg.bots,
                ..BotReport::default()
            },
        }),
        done: AtomicUsize::new(0),
        all_done: Notify::new(),
        cfg,
    });
    let (halt_tx, halt) = watch::channel(false);
    let tasks: Vec<_> = (0..run.cfg.bots)
        .map(|i| tokio::spawn(bot(run.clone(), i, halt.clone())))
        .collect();
    let deadline = run
        .cfg
        .seconds
        .map(|s| started + Duration::from_secs_f64(s));
    let until_deadline = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    let stopped = async {
        let _ = stop.wait_for(|s| *s).await;
    };
    if run.cfg.bots > 0 {
        tokio::select! {
            _ = until_deadline => {}
            _ = run.all_done.notified(), if run.cfg.games.is_some() => {}
            _ = stopped => {}
        }
    }
    let _ = halt_tx.send(true);
    let mut logs = Vec::new();
    for t in tasks {
        if let Ok(Some(log)) = t.await {
            logs.push(log);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut t = run.totals.lock().expect("no bot panics holding the totals");
    let mut r = std::mem::take(&mut t.report);
    r.seconds = elapsed;
    r.actions_per_s = if elapsed > 0.0 {
        r.actions as f64 / elapsed
    } else {
        0.0
    };
    r.action = Latency::of(&t.action);
    r.chat = Latency::of(&t.chat);
    r.rtt = Latency::of(&t.rtt);
    logs.sort_by_key(|l| l.index);
    r.logs = logs;
    r
}

/// [`run_bots_until`] without an outside stop.
pub async fn run_bots(cfg: BotConfig) -> BotReport {
    let (_tx, rx) = watch::channel(false);
    run_bots_until(cfg, rx).await
}

/// One bot's whole life; its log when [`BotConfig::keep_logs`].
async fn bot(run: Arc<Run>, i: usize, mut halt: watch::Receiver<bool>) -> Option<BotLog> {
    let cfg = &run.cfg;
    let (room, table, seat) = placement(cfg, i);
    let connected = {
        let _permit = run.connect.acquire().await.ok()?;
        tokio::select! {
            c = connect(cfg, i) => c,
            _ = halt.wait_for(|h| *h) => Err(ClientError::Connect { target: "-".into(), message: "stopped before connecting".into() }),
        }
    };
    let client = match connected {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(bot = i, error = %e, "bot could not connect");
            let mut t = run.totals.lock().expect("totals");
            t.report.connect_failed += 1;
            *t.report.errors.entry(error_key(&e)).or_default() += 1;
            drop(t);
            run.finish();
            return None;
        }
    };
    run.totals.lock().expect("totals").report.connected += 1;
    let mut b = BotState {
        room,
        table,
        seat,
        me: client.player(),
        rng: StdRng::seed_from_u64(cfg.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        view: None,
        acked: Vec::new(),
        acked_seq: 0,
        ready_for: 0,
        games_seen: 0,
        done: false,
        chats: VecDeque::new(),
        chat_no: 0,
        // The first line at once, then every chat_ms: every chatting bot
        // chats at least once, however short its games.
        next_chat: (cfg.chat_ms > 0).then(Instant::now),
        move_at: None,
        want_snapshot: false,
        sat: false,
        early: Vec::new(),
        enter_at: None,
        enter_attempts: 1,
        stuck: false,
    };
    let mut inflight: Option<InFlight<'_>> =
        Some(send(&client, Action::Enter, Request::Enter { room }));
    let closed_early = loop {
        if *halt.borrow() {
            break None;
        }
        if let Some(c) = client.closed() {
            break Some(c);
        }
        if inflight.is_none() {
            inflight = b.next_action(cfg, &client);
        }
        let wake = [b.move_at, b.next_chat, b.enter_at]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + IDLE_WAKE);
        tokio::select! {
            p = client.next_push() => match p {
                Some(p) => {
                    b.on_push(&run, &p);
                    // Decide on everything already here (a Moved is often
                    // followed by the Ended of the same move).
                    while let Some(p) = client.try_next_push() {
                        b.on_push(&run, &p);
                    }
                }
                None => continue, // closed: seen at the top
            },
            r = async { inflight.as_mut().expect("guarded").await }, if inflight.is_some() => {
                inflight = None;
                b.on_answer(&run, r);
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = halt.changed() => {}
        }
        let finished = b.stuck || cfg.games.is_some_and(|g| b.games_seen >= g);
        if !b.done && finished && inflight.is_none() {
            b.done = true;
            run.finish();
        }
    };
    drop(inflight);
    let disconnected = closed_early.is_some();
    {
        let mut t = run.totals.lock().expect("totals");
        if disconnected {
            t.report.disconnects += 1;
        } else {
            t.report.connections_held += 1;
            if let Some(rtt) = client.rtt() {
                record(&mut t.rtt, rtt);
            }
        }
        if let Some(v) = &b.view {
            t.report.gaps += v.gaps;
            t.report.missed += v.missed;
            t.report.stale += v.stale;
            t.report.snapshots += v.snapshots;
            t.report.mismatches += v.mismatches;
        }
        t.report.moves_acked += b.acked.len() as u64;
        if seat == 0 {
            t.report.games += b.games_seen as u64;
        }
    }
    if !b.done {
        run.finish();
    }
    client.close();
    cfg.keep_logs.then_some(BotLog {
        index: i,
        player: b.me,
        room,
        table,
        seat,
        acked: b.acked,
        view: b.view,
        closed: closed_early,
    })
}

async fn connect(cfg: &BotConfig, i: usize) -> Result<Client, ClientError> {
    let failed = |message: String| ClientError::Connect {
        target: "login".into(),
        message,
    };
    let (token, login_gw) = match &cfg.tokens {
        TokenSource::Secret {
            secret,
            zone,
            first_player,
        } => {
            let player = first_player + i as u64;
            let claims = gameserver::token::Claims {
                player,
                zone: *zone,
                expires_ms: gameserver::token::now_ms() + 24 * 3600 * 1000,
                name: format!("bot{i}"),
                kind: 0,
            };
            (gameserver::token::mint(secret, &claims), None)
        }
        TokenSource::Login { url } => {
            let (_, token, tcp, ws) = guest_login(url, &format!("bot{i}")).await.map_err(failed)?;
            (token, if cfg.ws { ws } else { tcp })
        }
    };
    let bind = cfg.spread_sources.then(|| source_addr(i));
    let target = if cfg.gateways.is_empty() {
        let gw = login_gw.ok_or_else(|| failed("no --gateway and the login named none".into()))?;
        if cfg.ws {
            let url = if gw.starts_with("ws://") {
                gw
            } else {
                format!("ws://{gw}/")
            };
            match bind {
                Some(bind) => Target::WsFrom { url, bind },
                None => Target::Ws(url),
            }
        } else {
            let addr: SocketAddr = gw
                .parse()
                .map_err(|e| failed(format!("gateway {gw}: {e}")))?;
            match bind {
                Some(bind) => Target::TcpFrom { addr, bind },
                None => Target::Tcp(addr),
            }
        }
    } else {
        let addr = cfg.gateways[i % cfg.gateways.len()];
        match (cfg.ws, bind) {
            (true, None) => Target::ws(addr),
            (true, Some(bind)) => Target::WsFrom {
                url: format!("ws://{addr}/"),
                bind,
            },
            (false, None) => Target::Tcp(addr),
            (false, Some(bind)) => Target::TcpFrom { addr, bind },
        }
    };
    let opts = Options {
        request_timeout: cfg.request_timeout,
        ..Options::default()
    };
    Client::connect_with(&target, &token, opts).await
}

fn send<'a>(c: &'a Client, action: Action, req: Request) -> InFlight<'a> {
    Box::pin(async move {
        let t0 = Instant::now();
        let r = c.request(req).await;
        (action, t0, r)
    })
}

/// A bot's own state between pushes and answers.
struct BotState {
    room: u32,
    table: u16,
    seat: u8,
    me: u64,
    rng: StdRng,
    view: Option<RoomView>,
    acked: Vec<AckedMove>,
    /// The room sequence of the last acknowledged move: until the view has
    /// reached it, the view may still show this bot's turn.
    acked_seq: u64,
    /// The game after which Ready was sent last.
    ready_for: u32,
    /// Games of this table seen to end.
    games_seen: u32,
    done: bool,
    /// Chats sent and not yet seen back: (text, when sent).
    chats: VecDeque<(String, Instant)>,
    chat_no: u64,
    next_chat: Option<Instant>,
    move_at: Option<Instant>,
    want_snapshot: bool,
    sat: bool,
    /// Pushes that came before the view (the reply to Enter).
    early: Vec<Push>,
    /// When to send Enter again after a failed one.
    enter_at: Option<Instant>,
    enter_attempts: u32,
    /// The bot cannot play (not in the room, seat taken): it only watches.
    stuck: bool,
}

impl BotState {
    /// The next request to send, if one is due now.
    fn next_action<'a>(&mut self, cfg: &BotConfig, c: &'a Client) -> Option<InFlight<'a>> {
        let room = self.room;
        let now = Instant::now();
        if self.view.is_none() {
            if self.enter_at.is_some_and(|at| at <= now) {
                self.enter_at = None;
                self.enter_attempts += 1;
                return Some(send(c, Action::Enter, Request::Enter { room }));
            }
            return None;
        }
        let view = self.view.as_ref()?;
        if self.want_snapshot {
            self.want_snapshot = false;
            return Some(send(c, Action::Snapshot, Request::Snapshot { room }));
        }
        if !self.sat {
            self.sat = true;
            let req = Request::Sit {
                room,
                table: self.table,
                seat: self.seat,
            };
            return Some(send(c, Action::Sit, req));
        }
        let game = view.game(self.table);
        let my_turn = game.is_some_and(|g| {
            g.outcome.is_none()
                && !last_move_won(&g.moves)
                && g.turn == self.seat
                && g.players.get(self.seat as usize) == Some(&self.me)
        }) && view.seq >= self.acked_seq;
        if !my_turn {
            self.move_at = None;
        } else if self.move_at.is_none() {
            self.move_at = Some(now + Duration::from_millis(cfg.move_ms));
        }
        if let (true, Some(at), Some(g)) = (my_turn, self.move_at, game) {
            if at <= now {
                self.move_at = None;
                let mv = pick_move(&g.moves, &mut self.rng)?;
                let (game_no, table) = (g.game_no, self.table);
                let req = Request::Move {
                    room,
                    table,
                    mv: mv.clone(),
                };
                return Some(send(c, Action::Move { game_no, mv }, req));
            }
        }
        if let Some(g) = game.filter(|g| g.outcome.is_some() && g.game_no > self.ready_for) {
            let more = cfg.games.is_none_or(|n| self.games_seen < n);
            if more && view.seat_of(self.me) == Some((self.table, self.seat)) {
                self.ready_for = g.game_no;
                return Some(send(c, Action::Ready, Request::Ready { room }));
            }
        }
        if let Some(at) = self.next_chat.filter(|at| *at <= now) {
            let every = Duration::from_millis(cfg.chat_ms);
            self.next_chat = Some(if at + every < now {
                now + every
            } else {
                at + every
            });
            self.chat_no += 1;
            let text = format!("{}:{}", self.me, self.chat_no);
            if self.chats.len() == CHATS_WAITING_MAX {
                self.chats.pop_front();
            }
            self.chats.push_back((text.clone(), now));
            let req = Request::Chat {
                room,
                table: None,
                text,
            };
            return Some(send(c, Action::Chat, req));
        }
        None
    }

    fn on_push(&mut self, run: &Run, p: &Push) {
        let Some(view) = self.view.as_mut() else {
            // Pushes may come before the reply to Enter: kept for the view.
            if self.early.len() < EARLY_PUSHES_MAX {
                self.early.push(p.clone());
            }
            return;
        };
        let before = view.seq;
        let applied = view.apply_push(p);
        if let Applied::AfterGap { missed } = applied {
            tracing::warn!(
                player = self.me,
                room = self.room,
                before,
                missed,
                push = ?p,
                "gap in the room's pushes; asking for a snapshot"
            );
            self.want_snapshot = true;
        }
        if !matches!(applied, Applied::Event | Applied::AfterGap { .. }) {
            return;
        }
        let Push::Event { event, .. } = p else { return };
        match event {
            RoomEvent::Ended { table, .. } if *table == self.table => self.games_seen += 1,
            RoomEvent::Chat { player, text, .. } if *player == self.me => {
                if let Some(i) = self.chats.iter().position(|(t, _)| t == text) {
                    let (_, sent) = self.chats.remove(i).expect("index from position");
                    record(&mut run.totals.lock().expect("totals").chat, sent.elapsed());
                }
            }
            _ => {}
        }
    }

    fn on_answer(
        &mut self,
        run: &Run,
        (action, t0, r): (Action, Instant, Result<Answer, ClientError>),
    ) {
        let took = t0.elapsed();
        {
            let mut t = run.totals.lock().expect("totals");
            t.report.actions += 1;
            record(&mut t.action, took);
            if let Err(e) = &r {
                *t.report.errors.entry(error_key(e)).or_default() += 1;
            }
            if matches!(action, Action::Chat) {
                t.report.chats_sent += r.is_ok() as u64;
            }
        }
        match (action, r) {
            (Action::Enter, Ok(Answer::Entered(s))) => {
                tracing::debug!(player = self.me, room = s.room, seq = s.seq, "entered");
                let at = s.seq;
                self.view = Some(RoomView::new(s));
                for p in std::mem::take(&mut self.early) {
                    let after = match &p {
                        Push::Event { seq, .. } => *seq > at,
                        Push::Snapshot(s) => s.seq > at,
                        _ => false, // notices and queue positions: not room state
                    };
                    if after {
                        self.on_push(run, &p);
                    }
                }
            }
            (Action::Snapshot, Ok(Answer::Snapshot(s))) => {
                if let Some(v) = self.view.as_mut() {
                    v.rebase(s);
                }
            }
            (Action::Move { game_no, mv }, Ok(Answer::Done { room, seq })) => {
                self.acked_seq = seq;
                self.acked.push(AckedMove {
                    room,
                    table: self.table,
                    game_no,
                    seat: self.seat,
                    mv,
                    seq,
                });
            }
            // The room did not answer (a failover): try again.
            (Action::Ready, Err(e)) if retryable(&e) => self.ready_for = 0,
            (Action::Sit, Err(e)) if retryable(&e) => self.sat = false,
            (Action::Sit, Err(_)) => self.stuck = true, // the seat is someone else's: watch
            (Action::Enter, Err(e))
                if retryable(&e) && self.enter_attempts < ENTER_ATTEMPTS_MAX =>
            {
                self.enter_at = Some(Instant::now() + RETRY_AFTER);
            }
            (Action::Enter, _) => self.stuck = true,
            _ => {}
        }
    }
}

/// `gs-bot`'s flags.
#[derive(Args, Debug, Clone)]
pub struct BotArgs {
    /// Gateway address (repeatable; bots take them in turn). With --ws, the WebSocket port.
    #[arg(long = "gateway")]
    pub gateways: Vec<SocketAddr>,
    /// Connect over WebSocket (binary messages) instead of TCP.
    #[arg(long)]
    pub ws: bool,
    /// Guest tokens from this login endpoint (`POST {URL}/v1/guest`), instead of --secret.
    #[arg(long)]
    pub login: Option<String>,
    /// The gateways' token secret (its bytes are the HMAC key): tokens minted here.
    #[arg(long)]
    pub secret: Option<String>,
    /// The zone of minted tokens.
    #[arg(long, default_value_t = 1)]
    pub zone: u32,
    /// Player id of bot 0 with --secret (bot i is first + i).
    #[arg(long, default_value_t = 1_000_000)]
    pub first_player: u64,
    /// Bots (two per table).
    #[arg(long, default_value_t = 2)]
    pub bots: usize,
    /// Rooms to spread the tables over: first-room .. first-room + rooms - 1.
    #[arg(long, default_value_t = 1)]
    pub rooms: u32,
    #[arg(long, default_value_t = 1)]
    pub first_room: u32,
    /// Tables from this one (table pair p sits at first-table + p / rooms).
    #[arg(long, default_value_t = 0)]
    pub first_table: u16,
    /// Think time before each move, ms.
    #[arg(long, default_value_t = 200)]
    pub move_ms: u64,
    /// Chat to the room every this many ms (0: never).
    #[arg(long, default_value_t = 0)]
    pub chat_ms: u64,
    /// Play this many seconds (default 10; with --games, at most 600).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Stop once each table has finished this many games.
    #[arg(long)]
    pub games: Option<u32>,
    /// Bind source addresses across 127.0.0.0/8 (25,000 connections each).
    #[arg(long)]
    pub spread_sources: bool,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// A request's answer at most, ms.
    #[arg(long, default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print one JSON object last.
    #[arg(long)]
    pub json: bool,
}

impl BotArgs {
    /// The run these flags describe, or what is wrong with them.
    pub fn config(&self) -> Result<BotConfig, String> {
        let tokens = match (&self.login, &self.secret) {
            (Some(url), None) => TokenSource::Login { url: url.clone() },
            (None, Some(s)) => TokenSource::Secret {
                secret: s.as_bytes().to_vec(),
                zone: self.zone,
                first_player: self.first_player,
            },
            (Some(_), Some(_)) => return Err("give --login or --secret, not both".into()),
            (None, None) => {
                return Err("give --secret (mint tokens) or --login URL (guest tokens)".into())
            }
        };
        if self.gateways.is_empty() && self.login.is_none() {
            return Err("give at least one --gateway ADDR (or a --login that names one)".into());
        }
        Ok(BotConfig {
            gateways: self.gateways.clone(),
            ws: self.ws,
            tokens,
            bots: self.bots,
            first_room: self.first_room,
            first_table: self.first_table,
            rooms: self.rooms.max(1),
            move_ms: self.move_ms,
            chat_ms: self.chat_ms,
            seconds: Some(self.seconds.unwrap_or(if self.games.is_none() {
                10.0
            } else {
                GAMES_SECONDS_MAX
            })),
            games: self.games,
            spread_sources: self.spread_sources,
            connect_concurrency: self.connect_concurrency,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            seed: self.seed.unwrap_or_else(gameserver::token::now_ms),
            keep_logs: false,
        })
    }
}

/// The report as a table for people.
pub fn print_table(r: &BotReport, out: &mut impl std::io::Write) -> std::io::Result<()> {
    let lat = |l: &Latency| {
        format!(
            "p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (n={})",
            l.p50_ms, l.p99_ms, l.max_ms, l.count
        )
    };
    writeln!(out, "bots               {}", r.bots)?;
    writeln!(
        out,
        "connected          {} ({} failed)",
        r.connected, r.connect_failed
    )?;
    writeln!(out, "connections held   {}", r.connections_held)?;
    writeln!(out, "disconnects        {}", r.disconnects)?;
    writeln!(out, "seconds            {:.1}", r.seconds)?;
    writeln!(
        out,
        "actions            {} ({:.1}/s)",
        r.actions, r.actions_per_s
    )?;
    writeln!(out, "action → answer    {}", lat(&r.action))?;
    writeln!(out, "chat → received    {}", lat(&r.chat))?;
    writeln!(out, "heartbeat rtt      {}", lat(&r.rtt))?;
    writeln!(out, "moves acked        {}", r.moves_acked)?;
    writeln!(out, "games finished     {}", r.games)?;
    writeln!(out, "chats sent         {}", r.chats_sent)?;
    writeln!(
        out,
        "pushes             gaps {} (missed {}), replays {}, snapshots {}, mismatches {}",
        r.gaps, r.missed, r.stale, r.snapshots, r.mismatches
    )?;
    if r.errors.is_empty() {
        writeln!(out, "errors             none")?;
    } else {
        let e: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
        writeln!(out, "errors             {}", e.join(", "))?;
    }
    Ok(())
}

/// What [`hold_connections`] opens: idle sessions that only ping.
#[derive(Clone, Debug)]
pub struct HoldConfig {
    /// Gateways (TCP, or WebSocket with `ws`); connection i uses `gateways[i % len]`.
    pub gateways: Vec<SocketAddr>,
    pub ws: bool,
    /// Noise sessions (`Target::Noise`) with this gateway public key: the
    /// addresses are the gateways' Noise ports (overrides `ws`; no `spread_sources`).
    pub noise_key: Option<[u8; 32]>,
    /// `wss://localhost:PORT/` sessions trusting this certificate (PEM): the
    /// addresses are the gateways' wss ports (overrides `ws`; no `spread_sources`).
    pub wss_ca: Option<String>,
    /// Tokens minted with this secret (the gateways'), players `first_player..`.
    pub secret: Vec<u8>,
    pub zone: u32,
    pub first_player: u64,
    pub count: usize,
    pub spread_sources: bool,
    pub connect_concurrency: usize,
    /// How long the sessions are held once all are open (heartbeats keep them up).
    pub hold: Duration,
    /// Gateway processes whose RSS is measured (`/proc/PID/status` VmRSS).
    pub gateway_pids: Vec<u32>,
    /// Print `HELD <n>` on stdout once every connection is open (a parent
    /// running several of these measures the gateways while all hold).
    pub announce_held: bool,
}

/// What holding idle connections cost.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HoldReport {
    pub count: usize,
    /// Sessions still up at the end of the hold.
    pub connections_held: usize,
    pub connect_failed: usize,
    /// Connect failures by error code.
    pub errors: BTreeMap<String, u64>,
    /// From the first connect to the last session open.
    pub connect_seconds: f64,
    pub gateways: usize,
    /// Gateway RSS before the connections and at the end (all pids together).
    pub gateway_rss_before_bytes: u64,
    pub gateway_rss_bytes: u64,
    /// (RSS at the end − RSS before) / connections held.
    pub rss_bytes_per_connection: f64,
    /// This process's RSS at the end (the client side's cost).
    pub client_rss_bytes: u64,
}

/// `VmRSS` of a process in bytes (`None`: no such process or no Linux /proc).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn rss_total(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| rss_bytes(*p)).sum()
}

/// Opens `count` authenticated sessions with heartbeats on, holds them for
/// `hold`, and measures the gateways' memory per connection.
pub async fn hold_connections(cfg: HoldConfig) -> HoldReport {
    let before = rss_total(&cfg.gateway_pids);
    let started = Instant::now();
    let connect = Arc::new(Semaphore::new(cfg.connect_concurrency.max(1)));
    let cfg = Arc::new(cfg);
    let tasks: Vec<_> = (0..cfg.count)
        .map(|i| {
            let (cfg, connect) = (cfg.clone(), connect.clone());
            tokio::spawn(async move {
                let _permit = connect.acquire().await.ok()?;
                Some(hold_one(&cfg, i).await)
            })
        })
        .collect();
    let mut report = HoldReport {
        count: cfg.count,
        gateways: cfg.gateways.len(),
        ..HoldReport::default()
    };
    let mut clients = Vec::with_capacity(cfg.count);
    for t in tasks {
        match t.await.ok().flatten() {
            Some(Ok(c)) => clients.push(c),
            Some(Err(e)) => {
                report.connect_failed += 1;
                *report.errors.entry(error_key(&e)).or_default() += 1;
            }
            None => report.connect_failed += 1,
        }
    }
    report.connect_seconds = started.elapsed().as_secs_f64();
    if cfg.announce_held {
        use std::io::Write as _;
        println!("HELD {}", clients.len());
        let _ = std::io::stdout().flush();
    }
    tokio::time::sleep(cfg.hold).await;
    report.connections_held = clients.iter().filter(|c| c.closed().is_none()).count();
    for c in clients.iter().filter(|c| c.closed().is_some()) {
        let st = c.stats();
        tracing::warn!(player = c.player(), pings = st.pings, pongs = st.pongs, closed = ?c.closed(), "a held session ended");
    }
    for c in clients.iter().filter_map(|c| c.closed()) {
        let code = c
            .code
            .map_or("without Bye".to_string(), |c| format!("{c:?}"));
        *report.errors.entry(format!("closed {code}")).or_default() += 1;
    }
    report.gateway_rss_before_bytes = before;
    report.gateway_rss_bytes = rss_total(&cfg.gateway_pids);
    if report.connections_held > 0 && !cfg.gateway_pids.is_empty() {
        report.rss_bytes_per_connection =
            report.gateway_rss_bytes.saturating_sub(before) as f64 / report.connections_held as f64;
    }
    report.client_rss_bytes = rss_bytes(std::process::id()).unwrap_or(0);
    for c in &clients {
        c.close();
    }
    report
}

async fn hold_one(cfg: &HoldConfig, i: usize) -> Result<Client, ClientError> {
    let player = cfg.first_player + i as u64;
    let claims = gameserver::token::Claims {
        player,
        zone: cfg.zone,
        expires_ms: gameserver::token::now_ms() + 24 * 3600 * 1000,
        name: format!("idle{i}"),
        kind: 0,
    };
    let token = gameserver::token::mint(&cfg.secret, &claims);
    let addr = *cfg
        .gateways
        .get(i % cfg.gateways.len().max(1))
        .ok_or(ClientError::Connect {
            target: "-".into(),
            message: "no gateway".into(),
        })?;
    let bind = cfg.spread_sources.then(|| source_addr(i));
    let target = match (cfg.ws, bind) {
        _ if cfg.noise_key.is_some() => Target::Noise {
            addr,
            gateway_key: cfg.noise_key.expect("guarded"),
        },
        _ if cfg.wss_ca.is_some() => Target::Wss {
            url: format!("wss://localhost:{}/", addr.port()),
            ca_pem: cfg.wss_ca.clone().expect("guarded"),
        },
        (true, None) => Target::ws(addr),
        (true, Some(bind)) => Target::WsFrom {
            url: format!("ws://{addr}/"),
            bind,
        },
        (false, None) => Target::Tcp(addr),
        (false, Some(bind)) => Target::TcpFrom { addr, bind },
    };
    let opts = Options {
        keep_pushes: false,
        push_capacity: 1,
        ..Options::default()
    };
    Client::connect_with(&target, &token, opts).await
}

#[cfg(test)]
mod tests;
