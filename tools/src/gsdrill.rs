//! `gs-drill`: players at tables through a gateway while the room-server
//! master is SIGKILLed K times and switched over J times; then proof of what
//! the players saw.
//!
//! Each bot is a checking player: it keeps every room event it was pushed
//! (by sequence number) and every reply it was acknowledged. At the end:
//! - `acked_lost`: an acknowledged move or chat whose event is not the one
//!   at the sequence number its reply gave;
//! - `duplicated`: a chat text (unique per message) or a move seen twice;
//! - `event_gaps`: pushes whose sequence skipped (healing snapshots are
//!   counted apart, as `snapshots`);
//! - `disconnected`: sessions that ended;
//! - `server_mismatch`: tables whose current game on the master differs from
//!   the players' view;
//! - per round, the time from the fault until the room answered again: the
//!   first reply after the old master was gone (killed and reaped, or its
//!   handover done); and the longest a request still open then waited past
//!   the fault (`stall_ms_max`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use gameserver::client::{Client, ClientError, Options, RoomView, Target};
use gameserver::proto::msg::{Answer, Push, Request, RoomEvent};
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};

use crate::gscluster::{Cluster, ClusterOpts};

#[derive(Args, Debug, Clone)]
pub struct GsDrillArgs {
    /// Players (two per table).
    #[arg(long, default_value_t = 40)]
    pub bots: usize,
    /// Rounds in which the room-server master is SIGKILLed (then restarted as the standby).
    #[arg(long, default_value_t = 5)]
    pub kills: u32,
    /// Rounds of planned switchover (the old master restarted afterwards, as for an upgrade).
    #[arg(long, default_value_t = 2)]
    pub switchovers: u32,
    /// Play between faults, ms (a random time in [min, max]).
    #[arg(long, default_value_t = 800)]
    pub load_ms_min: u64,
    #[arg(long, default_value_t = 1600)]
    pub load_ms_max: u64,
    /// A bot's think time before a move, ms.
    #[arg(long, default_value_t = 20)]
    pub move_ms: u64,
    /// A bot chats every this many ms (0: never).
    #[arg(long, default_value_t = 250)]
    pub chat_ms: u64,
    /// Half the bots over WebSocket, half over TCP.
    #[arg(long)]
    pub ws: bool,
    /// Seed of the fault times and the bots' moves.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where the room servers keep their logs (default: a fresh temp directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Copy the processes' output to stderr.
    #[arg(long)]
    pub echo: bool,
    /// Print one JSON object at the end (the table goes to stderr).
    #[arg(long)]
    pub json: bool,
}

/// What a reply acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Did {
    Move { table: u16, seat: u8, mv: Vec<u8> },
    Chat { text: String },
}

#[derive(Default)]
struct BotLog {
    /// (reply's room seq, what).
    acked: Vec<(u64, Did)>,
    /// Every event pushed, by sequence number.
    events: BTreeMap<u64, RoomEvent>,
    /// (sent, answered, ok) of every request.
    requests: Vec<(Instant, Instant, bool)>,
    errors: BTreeMap<String, u64>,
    disconnected: Option<String>,
    view: Option<RoomView>,
}

/// The drill's result, printed as a table and (with `--json`) one object.
#[derive(Debug, Default, serde::Serialize)]
pub struct GsDrillReport {
    pub rounds: u32,
    pub kills: u32,
    pub switchovers: u32,
    pub bots: usize,
    pub actions: u64,
    pub disconnected: u64,
    pub acked_lost: u64,
    pub duplicated: u64,
    pub event_gaps: u64,
    pub snapshots: u64,
    pub unverified: u64,
    pub server_mismatch: u64,
    pub errors: BTreeMap<String, u64>,
    pub action_ms_p50: f64,
    pub action_ms_p99: f64,
    pub action_ms_max: f64,
    pub failover_ms_p50: f64,
    pub failover_ms_max: f64,
    pub failover_ms: Vec<f64>,
    /// Mean time a reply waited for the standby (hs `Received`), on the last
    /// master: what "acknowledged means replicated" costs an action.
    pub replicate_wait_us_mean: f64,
    /// Replies released without a live standby (on the last master).
    pub released_unreplicated: u64,
    /// The longest a request open when the master went was held past the fault.
    pub stall_ms_max: f64,
    pub games_finished: u64,
    pub seed: u64,
}

impl GsDrillReport {
    pub fn ok(&self) -> bool {
        self.disconnected == 0
            && self.acked_lost == 0
            && self.duplicated == 0
            && self.event_gaps == 0
            && self.server_mismatch == 0
            && self.unverified == 0
    }
}

fn pick_move(v: &RoomView, table: u16, rng: &mut rand::rngs::StdRng) -> Option<Vec<u8>> {
    let g = v.game(table)?;
    let taken: std::collections::HashSet<&[u8]> =
        g.moves.iter().map(|(_, m, _)| m.as_slice()).collect();
    // Near the last stone, else anywhere free.
    let (cx, cy) = g
        .moves
        .last()
        .map(|(_, m, _)| (m[0] as i32, m[1] as i32))
        .unwrap_or((7, 7));
    for _ in 0..40 {
        let (x, y) = (cx + rng.gen_range(-2..=2), cy + rng.gen_range(-2..=2));
        if (0..15).contains(&x) && (0..15).contains(&y) && !taken.contains(&[x as u8, y as u8][..])
        {
            return Some(vec![x as u8, y as u8]);
        }
    }
    (0..225u16)
        .map(|i| vec![(i % 15) as u8, (i / 15) as u8])
        .find(|m| !taken.contains(m.as_slice()))
}

struct BotSpec {
    player: u64,
    token: String,
    target: Target,
    room: u32,
    table: u16,
    seat: u8,
    seed: u64,
    move_ms: u64,
    chat_ms: u64,
}

async fn bot(spec: BotSpec, stop: Arc<AtomicBool>, log: Arc<Mutex<BotLog>>) {
    let opts = Options {
        request_timeout: Duration::from_secs(30),
        ..Options::default()
    };
    let c = match Client::connect_with(&spec.target, &spec.token, opts).await {
        Ok(c) => c,
        Err(e) => {
            log.lock().disconnected = Some(format!("connect: {e}"));
            return;
        }
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
    let room = spec.room;
    let timed = |log: &Mutex<BotLog>, t0: Instant, r: &Result<Answer, ClientError>| {
        let mut l = log.lock();
        l.requests.push((t0, Instant::now(), r.is_ok()));
        if let Err(e) = r {
            let k = match e {
                ClientError::Fail(f) => format!("{:?}", f.code),
                other => format!("{other}"),
            };
            *l.errors.entry(k).or_default() += 1;
        }
    };
    let t0 = Instant::now();
    let r = c.request(Request::Enter { room }).await;
    timed(&log, t0, &r);
    let Ok(Answer::Entered(snap)) = r else {
        log.lock().disconnected = Some(format!("enter: {r:?}"));
        return;
    };
    let mut view = RoomView::new(snap);
    let t0 = Instant::now();
    let r = c
        .request(Request::Sit {
            room,
            table: spec.table,
            seat: spec.seat,
        })
        .await;
    timed(&log, t0, &r);
    let mut chats = 0u64;
    let mut next_chat =
        Instant::now() + Duration::from_millis(rng.gen_range(0..spec.chat_ms.max(1)));
    let mut ready_sent_for = 0u32;
    while !stop.load(Ordering::Acquire) {
        while let Some(p) = c.try_next_push() {
            if let Push::Event { seq, event, .. } = &p {
                log.lock().events.insert(*seq, event.clone());
            }
            view.apply_push(&p);
        }
        if let Some(cl) = c.closed() {
            log.lock().disconnected = Some(format!("{cl:?}"));
            break;
        }
        let game = view.game(spec.table).cloned();
        let my_turn = game
            .as_ref()
            .is_some_and(|g| g.outcome.is_none() && g.turn == spec.seat);
        if my_turn {
            tokio::time::sleep(Duration::from_millis(spec.move_ms)).await;
            if let Some(mv) = pick_move(&view, spec.table, &mut rng) {
                let t0 = Instant::now();
                let r = c
                    .request(Request::Move {
                        room,
                        table: spec.table,
                        mv: mv.clone(),
                    })
                    .await;
                timed(&log, t0, &r);
                if let Ok(Answer::Done { seq, .. }) = r {
                    log.lock().acked.push((
                        seq,
                        Did::Move {
                            table: spec.table,
                            seat: spec.seat,
                            mv,
                        },
                    ));
                }
                // A refused move (the view was behind) is retried once pushes catch up.
                continue;
            }
        }
        if let Some(g) = &game {
            if g.outcome.is_some() && ready_sent_for < g.game_no {
                ready_sent_for = g.game_no;
                let t0 = Instant::now();
                let r = c.request(Request::Ready { room }).await;
                timed(&log, t0, &r);
                continue;
            }
        }
        if spec.chat_ms > 0 && Instant::now() >= next_chat {
            next_chat += Duration::from_millis(spec.chat_ms);
            chats += 1;
            let text = format!("b{}-{chats}", spec.player);
            let t0 = Instant::now();
            let r = c
                .request(Request::Chat {
                    room,
                    table: None,
                    text: text.clone(),
                })
                .await;
            timed(&log, t0, &r);
            if let Ok(Answer::Done { seq, .. }) = r {
                log.lock().acked.push((seq, Did::Chat { text }));
            }
            continue;
        }
        let _ = tokio::time::timeout(Duration::from_millis(10), async {
            if let Some(p) = c.next_push().await {
                if let Push::Event { seq, event, .. } = &p {
                    log.lock().events.insert(*seq, event.clone());
                }
                view.apply_push(&p);
            }
        })
        .await;
    }
    // Let the last pushes arrive, then keep the view for the checks.
    let until = Instant::now() + Duration::from_millis(500);
    while let Ok(Some(p)) = tokio::time::timeout(
        until.saturating_duration_since(Instant::now()),
        c.next_push(),
    )
    .await
    {
        if let Push::Event { seq, event, .. } = &p {
            log.lock().events.insert(*seq, event.clone());
        }
        view.apply_push(&p);
    }
    if let Some(cl) = c.closed() {
        log.lock().disconnected.get_or_insert(format!("{cl:?}"));
    }
    log.lock().view = Some(view);
    c.close();
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Runs the drill; `progress` gets one line per round.
pub fn run(a: &GsDrillArgs, mut progress: impl FnMut(&str)) -> Result<GsDrillReport, String> {
    let seed = a.seed.unwrap_or_else(gameserver::token::now_ms);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tmp = std::env::temp_dir().join(format!("gs-drill-{}-{seed}", std::process::id()));
    let dir = a.dir.clone().unwrap_or_else(|| tmp.clone());
    let mut o = ClusterOpts::new(&dir);
    o.pairs = 1;
    o.rooms_per_pair = 2;
    o.tables = (a.bots / 2).max(1) as u16;
    o.turn_ms = 10_000;
    o.echo = a.echo;
    o.balancer = false;
    let mut cl = Cluster::start(o)?;
    progress(&format!(
        "cluster up: gateway tcp={} ws={:?}, room pair rooms {}-{}; {} bots, seed {seed}",
        cl.gateways[0].tcp,
        cl.gateways[0].ws,
        cl.pairs[0].first_room,
        cl.pairs[0].first_room + 1,
        a.bots
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut logs = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..a.bots {
        let table = (i / 2) as u16;
        let room = cl.pairs[0].first_room + (table % 2) as u32;
        let player = 1000 + i as u64;
        let target = match (a.ws, cl.gateways[0].ws) {
            (true, Some(w)) if i % 4 >= 2 => Target::ws(w),
            _ => Target::Tcp(cl.gateways[0].tcp),
        };
        let spec = BotSpec {
            player,
            token: cl.token(player, &format!("bot{i}")),
            target,
            room,
            table,
            seat: (i % 2) as u8,
            seed: seed ^ (i as u64 * 0x9e37_79b9),
            move_ms: a.move_ms,
            chat_ms: a.chat_ms,
        };
        let log = Arc::new(Mutex::new(BotLog::default()));
        logs.push((spec.player, spec.room, spec.table, log.clone()));
        tasks.push(rt.spawn(bot(spec, stop.clone(), log)));
    }
    let mut faults: Vec<bool> = (0..a.kills)
        .map(|_| true)
        .chain((0..a.switchovers).map(|_| false))
        .collect();
    // Shuffle so kills and switchovers mix (deterministic from the seed).
    for i in (1..faults.len()).rev() {
        faults.swap(i, rng.gen_range(0..=i));
    }
    let mut fault_times = Vec::new();
    std::thread::sleep(Duration::from_millis(a.load_ms_min));
    for (round, &kill) in faults.iter().enumerate() {
        std::thread::sleep(Duration::from_millis(
            rng.gen_range(a.load_ms_min..=a.load_ms_max.max(a.load_ms_min)),
        ));
        let t = Instant::now();
        let who = if kill {
            let m = cl.kill_master(0)?;
            fault_times.push((t, Instant::now()));
            cl.restart(0, m)?;
            m
        } else {
            let m = cl.switchover(0)?;
            fault_times.push((t, Instant::now()));
            // The old master, now the standby, restarts (an upgrade).
            let mut p = cl.pairs[0].nodes[m]
                .proc
                .take()
                .expect("old master running");
            p.kill9();
            let _ = p.wait_exit(Duration::from_secs(10));
            cl.restart(0, m)?;
            m
        };
        let new = cl.wait_pair(0, Duration::from_secs(30))?;
        progress(&format!(
            "round {:>2}: {} node {who}; node {new} is master, node {who} its standby again",
            round + 1,
            if kill {
                "SIGKILL of master"
            } else {
                "switchover from master"
            },
        ));
    }
    std::thread::sleep(Duration::from_millis(a.load_ms_min));
    stop.store(true, Ordering::Release);
    for t in tasks {
        let _ = rt.block_on(t);
    }
    // The master's view of every table, to hold the players' views against.
    let server: Vec<serde_json::Value> = cl.rooms(0)?.as_array().cloned().unwrap_or_default();
    let stats = cl.stats(0)?;
    let mut r = GsDrillReport {
        rounds: faults.len() as u32,
        kills: a.kills,
        switchovers: a.switchovers,
        bots: a.bots,
        seed,
        ..Default::default()
    };
    let waits = stats["replicate_waits"].as_u64().unwrap_or(0).max(1);
    r.replicate_wait_us_mean =
        stats["replicate_wait_us"].as_u64().unwrap_or(0) as f64 / waits as f64;
    r.released_unreplicated = stats["released_unreplicated"].as_u64().unwrap_or(0);
    let mut lat = Vec::new();
    let mut all_requests = Vec::new();
    let mut seen_tables = std::collections::HashSet::new();
    for (_player, room, table, log) in &logs {
        let l = log.lock();
        if l.disconnected.is_some() {
            r.disconnected += 1;
            progress(&format!("disconnected: {:?}", l.disconnected));
        }
        for (k, n) in &l.errors {
            *r.errors.entry(k.clone()).or_default() += n;
        }
        for &(s, e, ok) in &l.requests {
            lat.push((e - s).as_secs_f64() * 1000.0);
            all_requests.push((s, e, ok));
        }
        r.actions += l.requests.len() as u64;
        let Some(v) = &l.view else { continue };
        r.event_gaps += v.gaps;
        r.snapshots += v.snapshots;
        for (seq, did) in &l.acked {
            // A move that ended the game is answered with the Ended event's number.
            let at = match l.events.get(seq) {
                Some(RoomEvent::Ended { .. }) => l.events.get(&(seq - 1)),
                e => e,
            };
            match (did, at) {
                (_, None) if v.snapshots > 0 => r.unverified += 1,
                (_, None) => r.acked_lost += 1,
                (
                    Did::Move { table, seat, mv },
                    Some(RoomEvent::Moved {
                        table: t,
                        seat: s,
                        mv: m,
                        auto: false,
                    }),
                ) if t == table && s == seat && m == mv => {}
                (Did::Chat { text }, Some(RoomEvent::Chat { text: t, .. })) if t == text => {}
                _ => r.acked_lost += 1,
            }
        }
        let mut texts: HashMap<&str, u32> = HashMap::new();
        for e in l.events.values() {
            if let RoomEvent::Chat { text, .. } = e {
                *texts.entry(text.as_str()).or_default() += 1;
            }
        }
        r.duplicated += texts.values().filter(|&&n| n > 1).count() as u64;
        if seen_tables.insert((*room, *table)) {
            r.games_finished += v.finished.iter().filter(|g| g.table == *table).count() as u64;
            let mine = v.game(*table).map(|g| g.moves.clone()).unwrap_or_default();
            let theirs: Vec<(u8, Vec<u8>, bool)> = server
                .iter()
                .find(|x| x["room"] == *room)
                .and_then(|x| x["tables"].as_array())
                .and_then(|ts| ts.iter().find(|t| t["table"] == *table))
                .map(|t| {
                    t["moves"]
                        .as_array()
                        .map(|ms| {
                            ms.iter()
                                .filter_map(|m| serde_json::from_value(m.clone()).ok())
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .unwrap_or_default();
            if mine != theirs {
                r.server_mismatch += 1;
                progress(&format!(
                    "room {room} table {table}: players saw {} moves, the master holds {}",
                    mine.len(),
                    theirs.len()
                ));
            }
        }
    }
    lat.sort_by(f64::total_cmp);
    r.action_ms_p50 = percentile(&lat, 0.50);
    r.action_ms_p99 = percentile(&lat, 0.99);
    r.action_ms_max = lat.last().copied().unwrap_or(0.0);
    for (t, dead) in &fault_times {
        // The room answers again with the first reply after the old master
        // was gone (killed and reaped, or the handover done); a player waited
        // at worst as long as the oldest request still open then.
        if let Some(first) = all_requests
            .iter()
            .filter(|(_, e, ok)| *ok && e > dead)
            .map(|(_, e, _)| *e)
            .min()
        {
            r.failover_ms.push((first - *t).as_secs_f64() * 1000.0);
        }
        let stall = all_requests
            .iter()
            .filter(|(s, e, ok)| *ok && s <= dead && e > dead)
            .map(|(s, e, _)| (*e - (*s).max(*t)).as_secs_f64() * 1000.0)
            .fold(0.0, f64::max);
        r.stall_ms_max = r.stall_ms_max.max(stall);
    }
    let mut f = r.failover_ms.clone();
    f.sort_by(f64::total_cmp);
    r.failover_ms_p50 = percentile(&f, 0.5);
    r.failover_ms_max = f.last().copied().unwrap_or(0.0);
    drop(cl);
    if a.dir.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(r)
}

/// The report as a table, for people.
pub fn table(r: &GsDrillReport) -> String {
    let mut s = String::new();
    let mut row = |k: &str, v: String| s.push_str(&format!("  {k:<22} {v}\n"));
    row(
        "rounds",
        format!(
            "{} ({} SIGKILL, {} switchover)",
            r.rounds, r.kills, r.switchovers
        ),
    );
    row("bots", r.bots.to_string());
    row("actions", r.actions.to_string());
    row("games finished", r.games_finished.to_string());
    row("disconnected", r.disconnected.to_string());
    row("acked moves lost", r.acked_lost.to_string());
    row("applied twice", r.duplicated.to_string());
    row(
        "event gaps",
        format!("{} (healing snapshots: {})", r.event_gaps, r.snapshots),
    );
    row("server mismatch", r.server_mismatch.to_string());
    row(
        "action p50/p99/max",
        format!(
            "{:.1} / {:.1} / {:.1} ms",
            r.action_ms_p50, r.action_ms_p99, r.action_ms_max
        ),
    );
    row(
        "failover p50/max",
        format!("{:.1} / {:.1} ms", r.failover_ms_p50, r.failover_ms_max),
    );
    row(
        "wait for standby",
        format!(
            "{:.0} µs mean per change (last master)",
            r.replicate_wait_us_mean
        ),
    );
    row("longest stall", format!("{:.1} ms", r.stall_ms_max));
    row(
        "per round",
        r.failover_ms
            .iter()
            .map(|m| format!("{m:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
            + " ms",
    );
    if !r.errors.is_empty() {
        row("refused requests", format!("{:?}", r.errors));
    }
    s
}
