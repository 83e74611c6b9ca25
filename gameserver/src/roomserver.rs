//! The room server: many rooms in one process, run as an hs pair.
//!
//! ```text
//!  gateway links (tokio) ──ToRoom──► game task ──plan / publish / commit──► hs master log
//!        ▲                              │  (one thread owns the rooms' rules)      │
//!        │                              ▼                                          ▼
//!        └──── FromRoom ◄── release thread: waits hs Received(pos), then sends  standby applies
//!                                                                                the same records
//! ```
//!
//! - The **game task** (its own thread and current-thread runtime) is the only
//!   writer of the rooms: it plans each request with [`RoomState::plan`],
//!   publishes the resulting records to hs, applies them ([`Rooms::commit`]),
//!   and queues the replies and pushes in publication order. It also runs the
//!   turn timers (master only).
//! - The **release thread** takes that queue in order and lets an entry go
//!   only once hs says the standby has its records (`Received`): a reply or a
//!   push a player sees is always on the standby. Entries without records
//!   (refusals, answers from state) keep their place in the order.
//! - A node that is not master answers a gateway's Hello with `NotMaster`.
//!   When the node loses the master role, every link is closed: the gateways
//!   go to the new master, re-subscribe and re-send what was not answered.
//!
//! Player data ([`crate::accounts`]), with a store configured: a player's
//! saved data is loaded when they enter a room (off the game task; the
//! `Entered` event carries it, so it is in hs with the room). A game's end
//! carries every player's new record; the release thread saves those to the
//! database after hs `Received` and before the end leaves for the players
//! (immediate level). Activity counters are saved by the `gs-saver` thread
//! in batches: each `activity_save_period_ms`, `activity_save_share_percent`
//! of the dirty players, oldest first, and a leaving player's at once. A new
//! master saves every member's record and activity again (absolute values:
//! repeating a save is harmless).
//!
//! With no standby connected (or one still catching up), a reply waits at
//! most `standby_wait_ms`, then leaves anyway: counted in
//! `released_unreplicated` and logged, because a room that stops answering
//! when its standby dies is worse than one that runs without a standby for a
//! while (the operator sees it and restarts the standby).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hs::{Node, NodeError, Op, Role};

use crate::standby::Waited;
use parking_lot::Mutex;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::accounts::{Activity, PlayerData, PlayerRecord, Store};
use crate::link::{FromRoom, ToRoom, LINK_VERSION};
use crate::proto::frame::{self, Frame, Kind};
use crate::proto::msg::{encode, Answer, ErrorCode, Fail, Reply, Request, RoomEvent, RoomInfo};
use crate::room::replica::{Replica, Rooms, Writes};
use crate::room::{Plan, RoomConfig, RoomState};

/// The player-data store of a room server (a handle that prints as its kind).
#[derive(Clone)]
pub struct PlayerStore(pub Arc<dyn Store>);

impl std::fmt::Debug for PlayerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PlayerStore")
    }
}

/// Limits and settings of a room server.
#[derive(Clone, Debug)]
pub struct RoomServerConfig {
    /// The hs node: dir, listen, peer, witness, pair id, heartbeat...
    pub hs: hs::Config,
    /// Prefer to be master when both nodes start.
    pub prefer_master: bool,
    /// Where gateways connect.
    pub link_listen: SocketAddr,
    /// The other node's link address, given to gateways in `NotMaster`.
    pub peer_link: Option<SocketAddr>,
    /// Line-based admin port (ROLE, STATS, SWITCHOVER).
    pub admin_listen: Option<SocketAddr>,
    /// Status reports to the balancer (online = players in this server's
    /// rooms, port = the link port), under `report_zone`.
    pub balancer: Option<crate::gateway::BalancerReport>,
    pub report_zone: u32,
    pub rooms: Vec<RoomConfig>,
    /// How long a reply waits for the standby when none is connected and live.
    pub standby_wait_ms: u64,
    /// Largest link frame payload accepted from a gateway, bytes.
    pub link_frame_bytes_max: usize,
    /// Frames queued per gateway link before it is dropped as too slow.
    pub link_queue_frames_max: usize,
    /// Gateway links at once.
    pub links_max: usize,
    /// Messages queued for the game task.
    pub inbox_max: usize,
    /// Entries waiting for the standby before the game task waits too.
    pub release_queue_max: usize,
    /// Where player data is loaded from and saved to; none: players enter
    /// with default data and nothing is saved.
    pub store: Option<PlayerStore>,
    /// How often the saver writes a batch of activity, ms.
    pub activity_save_period_ms: u64,
    /// Share of the dirty players saved per batch, percent (1..=100): with
    /// 100 a SIGKILL of every process loses at most one period of activity;
    /// with 20, five periods.
    pub activity_save_share_percent: u32,
}

impl RoomServerConfig {
    pub fn new(hs: hs::Config, link_listen: SocketAddr, rooms: Vec<RoomConfig>) -> Self {
        RoomServerConfig {
            hs,
            prefer_master: false,
            link_listen,
            peer_link: None,
            admin_listen: None,
            balancer: None,
            report_zone: ROOMS_ZONE_DEFAULT,
            rooms,
            standby_wait_ms: 1000,
            link_frame_bytes_max: 64 << 10,
            link_queue_frames_max: 1 << 16,
            links_max: 256,
            inbox_max: 1 << 16,
            release_queue_max: 1 << 16,
            store: None,
            activity_save_period_ms: 1000,
            activity_save_share_percent: 100,
        }
    }
}

/// Counters an operator reads (admin `STATS`).
#[derive(Default)]
pub struct RoomStats {
    pub requests: AtomicU64,
    pub refused: AtomicU64,
    pub deduplicated: AtomicU64,
    pub records: AtomicU64,
    pub timer_moves: AtomicU64,
    pub released_unreplicated: AtomicU64,
    pub links: AtomicU64,
    pub links_dropped_slow: AtomicU64,
    pub snapshots_sent: AtomicU64,
    /// Microseconds spent waiting for `Received`, summed, and the count.
    pub replicate_wait_us: AtomicU64,
    pub replicate_waits: AtomicU64,
    /// Player data: loads, records saved at a game's end, activity saved in
    /// batches, saves that failed (retried by the saver).
    pub data_loads: AtomicU64,
    pub data_load_errors: AtomicU64,
    pub records_saved: AtomicU64,
    pub activity_saved: AtomicU64,
    pub save_errors: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum RoomServerError {
    #[error("hs node: {0}")]
    Node(#[from] NodeError),
    #[error("{what} {addr}: {err}; is another process using the port?")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        err: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("room server configuration: {0}")]
    Config(String),
}

type LinkId = u64;

/// Rooms one server holds at most (each costs its state and a timer scan).
pub const ROOMS_PER_SERVER_MAX: usize = 10_000;
/// The balancer zone room servers report under by default (gateways report
/// under the players' zone, so a login never picks a room server).
pub const ROOMS_ZONE_DEFAULT: u32 = 1001;

/// The game task's tick: role checks and turn timers, milliseconds.
const TICK_MS: u64 = 10;

enum Inbox {
    Opened(LinkId, mpsc::Sender<Bytes>),
    Closed(LinkId),
    Msg(LinkId, ToRoom),
    /// A player's data, loaded for an Enter (`Err`: the store's message).
    Loaded(Box<Req>, Result<PlayerData, String>),
}

/// A gateway's request as the game task handles it.
struct Req {
    link: LinkId,
    player: u64,
    session: u64,
    seq: u32,
    name: String,
    req: Request,
    login: u64,
    /// Loaded for an Enter (None: not yet, or no store).
    data: Option<PlayerData>,
}

/// One entry of the release queue: frames that may leave once `pos` is on
/// the standby and `records` are saved.
#[derive(Default)]
struct Release {
    pos: Option<u64>,
    out: Vec<(LinkId, Bytes)>,
    /// Records a game's end changed: saved before `out` leaves.
    records: Vec<(u64, PlayerRecord)>,
    /// Activity of players who left: saved before `out` leaves.
    activity: Vec<(u64, Activity)>,
}

/// What the saver thread has to write.
#[derive(Default)]
struct Unsaved {
    /// Players whose activity changed, oldest first, with their room.
    dirty: std::collections::VecDeque<(u64, u32)>,
    dirty_set: HashSet<u64>,
    /// Records whose save failed or that a new master saves again.
    records: HashMap<u64, PlayerRecord>,
}

impl Unsaved {
    fn mark(&mut self, player: u64, room: u32) {
        if self.dirty_set.insert(player) {
            self.dirty.push_back((player, room));
        }
    }
}

struct Shared {
    node: Arc<Node>,
    rooms: Arc<Mutex<Rooms>>,
    stats: RoomStats,
    links: Mutex<HashMap<LinkId, mpsc::Sender<Bytes>>>,
    stop: AtomicBool,
    cfg: RoomServerConfig,
    /// Random id of this process, told to gateways.
    instance: u64,
    unsaved: Mutex<Unsaved>,
}

/// A running room server.
pub struct RoomServer {
    shared: Arc<Shared>,
    pub link_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn link_frame(msg: &FromRoom) -> Bytes {
    Frame::new(
        Kind::FromRoom,
        0,
        crate::token::now_ms(),
        Bytes::from(encode(msg)),
    )
    .to_bytes()
}

impl RoomServer {
    pub fn start(cfg: RoomServerConfig) -> Result<RoomServer, RoomServerError> {
        if cfg.rooms.len() > ROOMS_PER_SERVER_MAX {
            return Err(RoomServerError::Config(format!(
                "{} rooms configured; a server holds at most {ROOMS_PER_SERVER_MAX}: split them over more pairs",
                cfg.rooms.len()
            )));
        }
        let mut ids: Vec<u32> = cfg.rooms.iter().map(|r| r.id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(RoomServerError::Config("two rooms share an id".into()));
        }
        let rooms = Arc::new(Mutex::new(Rooms::default()));
        let role = if cfg.prefer_master {
            Role::Master
        } else {
            Role::Slave
        };
        let node = Arc::new(Node::start(cfg.hs.clone(), role, Replica(rooms.clone()))?);
        let std_link = StdListener::bind(cfg.link_listen).map_err(|err| RoomServerError::Bind {
            what: "link port",
            addr: cfg.link_listen,
            err,
        })?;
        std_link.set_nonblocking(true)?;
        let link_addr = std_link.local_addr()?;
        let admin = match cfg.admin_listen {
            Some(a) => Some(StdListener::bind(a).map_err(|err| RoomServerError::Bind {
                what: "admin port",
                addr: a,
                err,
            })?),
            None => None,
        };
        let admin_addr = admin.as_ref().map(|l| l.local_addr()).transpose()?;
        let shared = Arc::new(Shared {
            node,
            rooms,
            stats: RoomStats::default(),
            links: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
            cfg: cfg.clone(),
            instance: crate::token::now_ms() ^ ((std::process::id() as u64) << 40),
            unsaved: Mutex::new(Unsaved::default()),
        });
        let (inbox_tx, inbox_rx) = mpsc::channel(cfg.inbox_max);
        let (rel_tx, rel_rx) = sync_channel(cfg.release_queue_max);
        let mut threads = Vec::new();
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("gs-release".into())
                .spawn(move || release_loop(&s, rel_rx))?,
        );
        if cfg.store.is_some() {
            let s = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("gs-saver".into())
                    .spawn(move || saver_loop(&s))?,
            );
        }
        let s = shared.clone();
        let own_inbox = inbox_tx.downgrade();
        threads.push(
            std::thread::Builder::new()
                .name("gs-game".into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("tokio runtime");
                    rt.block_on(Game::new(s, rel_tx, own_inbox).run(inbox_rx));
                })?,
        );
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("gs-links".into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("tokio runtime");
                    if let Some(b) = s.cfg.balancer.clone() {
                        let r = s.clone();
                        let port = link_addr.port();
                        rt.spawn(async move {
                            let online = || {
                                r.rooms
                                    .lock()
                                    .get()
                                    .values()
                                    .map(|x| x.members.len() as u64)
                                    .sum()
                            };
                            let stop = async {
                                while !r.stop.load(Ordering::Acquire) {
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                            };
                            crate::report::report_loop(b, r.cfg.report_zone, port, online, stop)
                                .await;
                        });
                    }
                    rt.block_on(accept_links(s, std_link, inbox_tx));
                })?,
        );
        if let Some(l) = admin {
            let s = shared.clone();
            std::thread::Builder::new()
                .name("gs-admin".into())
                .spawn(move || admin_loop(&s, l))?;
        }
        Ok(RoomServer {
            shared,
            link_addr,
            admin_addr,
            threads,
        })
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.shared.node
    }

    pub fn stats(&self) -> &RoomStats {
        &self.shared.stats
    }

    /// The rooms' state (for tests and the admin port).
    pub fn rooms(&self) -> &Arc<Mutex<Rooms>> {
        &self.shared.rooms
    }

    /// Stops the threads; the hs node is dropped with the last reference.
    pub fn shutdown(mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.links.lock().clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

async fn accept_links(s: Arc<Shared>, l: StdListener, inbox: mpsc::Sender<Inbox>) {
    let l = TcpListener::from_std(l).expect("a non-blocking std listener");
    let mut next: LinkId = 1;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            r = l.accept() => {
                let Ok((sock, _)) = r else { continue };
                if s.links.lock().len() >= s.cfg.links_max {
                    tracing::warn!(max = s.cfg.links_max, "gateway link refused: links_max reached");
                    continue;
                }
                let _ = sock.set_nodelay(true);
                let id = next;
                next += 1;
                tokio::spawn(serve_link(s.clone(), id, sock, inbox.clone()));
            }
            _ = tick.tick() => if s.stop.load(Ordering::Acquire) { return },
        }
    }
}

async fn serve_link(s: Arc<Shared>, id: LinkId, sock: TcpStream, inbox: mpsc::Sender<Inbox>) {
    let (mut rd, wr) = sock.into_split();
    let (tx, rx) = mpsc::channel::<Bytes>(s.cfg.link_queue_frames_max);
    if inbox.send(Inbox::Opened(id, tx)).await.is_err() {
        return;
    }
    s.stats.links.fetch_add(1, Ordering::Relaxed);
    let writer = crate::link::spawn_link_writer(wr, rx);
    let mut buf = BytesMut::with_capacity(16 << 10);
    'read: loop {
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            match frame::decode(&mut buf, s.cfg.link_frame_bytes_max) {
                Ok(None) => break,
                Ok(Some(f)) if f.kind == Kind::ToRoom => {
                    match crate::proto::msg::decode::<ToRoom>(&f.payload) {
                        Ok(m) => {
                            if inbox.send(Inbox::Msg(id, m)).await.is_err() {
                                break 'read;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(link = id, error = %e, "undecodable link message; closing the link");
                            break 'read;
                        }
                    }
                }
                Ok(Some(f)) => {
                    tracing::warn!(link = id, kind = ?f.kind, "unexpected frame kind on a link; closing it");
                    break 'read;
                }
                Err(e) => {
                    tracing::warn!(link = id, error = %e, "bad link frame; closing the link");
                    break 'read;
                }
            }
        }
    }
    let _ = inbox.send(Inbox::Closed(id)).await;
    // The game task drops the link's sender; the writer then ends.
    let _ = writer.await;
}

/// The game task's state: who is subscribed to which room.
struct Game {
    s: Arc<Shared>,
    release: SyncSender<Release>,
    /// Where loads of player data report back (weak: the links own the inbox).
    inbox: mpsc::WeakSender<Inbox>,
    subs: BTreeMap<u32, HashSet<LinkId>>,
    /// Links that said Hello while this node was master.
    live: HashSet<LinkId>,
    pending: HashMap<LinkId, mpsc::Sender<Bytes>>,
    master: bool,
}

impl Game {
    fn new(s: Arc<Shared>, release: SyncSender<Release>, inbox: mpsc::WeakSender<Inbox>) -> Game {
        Game {
            s,
            release,
            inbox,
            subs: BTreeMap::new(),
            live: HashSet::new(),
            pending: HashMap::new(),
            master: false,
        }
    }

    async fn run(mut self, mut inbox: mpsc::Receiver<Inbox>) {
        // Role changes are noticed within a tick; turn timers have the same resolution.
        let mut tick = tokio::time::interval(Duration::from_millis(TICK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                m = inbox.recv() => match m {
                    Some(m) => self.handle(m),
                    None => return,
                },
                _ = tick.tick() => {
                    if self.s.stop.load(Ordering::Acquire) { return }
                    self.check_role();
                    self.timers();
                }
            }
        }
    }

    fn check_role(&mut self) {
        let writable = self.s.node.role() == Role::Master && self.s.node.is_writable();
        if writable == self.master {
            return;
        }
        if writable {
            tracing::info!(
                epoch = self.s.node.stats().epoch,
                "master: taking gateway links"
            );
            self.master = true;
            let cfgs = self.s.cfg.rooms.clone();
            let created = self.s.rooms.lock().create_missing(&cfgs);
            for (room, w) in created {
                match self.publish(&w) {
                    Ok(_) => self.s.rooms.lock().commit(&w, Instant::now()),
                    Err(e) => {
                        tracing::warn!(room, error = %e, "could not create room");
                        self.step_down();
                        return;
                    }
                }
            }
            if self.s.cfg.store.is_some() {
                // The old master may have died between hs and the database.
                let mut rooms = self.s.rooms.lock();
                let mut u = self.s.unsaved.lock();
                for (id, r) in rooms.get() {
                    for (p, m) in &r.members {
                        u.records.insert(*p, m.record);
                        u.mark(*p, *id);
                    }
                }
            }
        } else {
            tracing::info!(role = ?self.s.node.role(), "not master: closing gateway links");
            self.step_down();
        }
    }

    /// Closes every link: gateways find the new master and re-send.
    fn step_down(&mut self) {
        self.master = false;
        self.subs.clear();
        let mut links = self.s.links.lock();
        for id in self.live.drain() {
            links.remove(&id);
        }
    }

    fn send_now(&self, link: LinkId, f: Bytes) {
        self.queue(Release {
            out: vec![(link, f)],
            ..Release::default()
        });
    }

    fn queue(&self, r: Release) {
        if r.out.is_empty() && r.pos.is_none() && r.records.is_empty() && r.activity.is_empty() {
            return;
        }
        // Blocks when the standby is far behind: back-pressure on the game task.
        let _ = self.release.send(r);
    }

    fn handle(&mut self, m: Inbox) {
        match m {
            Inbox::Opened(id, tx) => {
                self.pending.insert(id, tx);
            }
            Inbox::Closed(id) => {
                self.pending.remove(&id);
                self.live.remove(&id);
                self.s.links.lock().remove(&id);
                for subs in self.subs.values_mut() {
                    subs.remove(&id);
                }
            }
            Inbox::Msg(id, ToRoom::Hello { gateway, version }) => {
                let Some(tx) = self.pending.remove(&id) else {
                    return;
                };
                if !self.master || version != LINK_VERSION {
                    let master = self.s.cfg.peer_link.map(|a| a.to_string());
                    if version != LINK_VERSION {
                        tracing::warn!(
                            gateway,
                            version,
                            "gateway speaks another link version; refused"
                        );
                    }
                    let _ = tx.try_send(link_frame(&FromRoom::NotMaster { master }));
                    return; // dropping tx closes the link after the frame
                }
                tracing::info!(link = id, gateway, "gateway link up");
                self.s.links.lock().insert(id, tx);
                self.live.insert(id);
                let rooms = self.room_infos();
                let node = self.s.instance;
                self.send_now(id, link_frame(&FromRoom::Welcome { node, rooms }));
            }
            Inbox::Msg(id, m) => {
                if !self.live.contains(&id) {
                    return; // no Hello yet, or from before a step-down
                }
                match m {
                    ToRoom::Hello { .. } => {}
                    ToRoom::Rooms => {
                        let rooms = self.room_infos();
                        self.send_now(id, link_frame(&FromRoom::Rooms(rooms)));
                    }
                    ToRoom::Subscribe { room, after } => self.subscribe(id, room, after),
                    ToRoom::Unsubscribe { room } => {
                        if let Some(s) = self.subs.get_mut(&room) {
                            s.remove(&id);
                        }
                    }
                    ToRoom::Request {
                        player,
                        session,
                        seq,
                        name,
                        req,
                        login,
                    } => self.request(Req {
                        link: id,
                        player,
                        session,
                        seq,
                        name,
                        req,
                        login,
                        data: None,
                    }),
                }
            }
            Inbox::Loaded(r, loaded) => {
                if !self.live.contains(&r.link) {
                    return; // the link closed, or this node stepped down, meanwhile
                }
                match loaded {
                    Ok(d) => self.request(Req {
                        data: Some(d),
                        ..*r
                    }),
                    Err(e) => {
                        self.s
                            .stats
                            .data_load_errors
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(player = r.player, error = %e, "player data could not be loaded");
                        let reply = Err(Fail::new(
                            ErrorCode::Unavailable,
                            "your saved data could not be loaded; retry in a moment",
                        ));
                        self.reply(r.link, r.player, r.seq, reply, None, Vec::new());
                    }
                }
            }
        }
    }

    fn room_infos(&self) -> Vec<RoomInfo> {
        self.s
            .rooms
            .lock()
            .get()
            .values()
            .map(|r| r.info())
            .collect()
    }

    fn subscribe(&mut self, link: LinkId, room: u32, after: u64) {
        let mut rooms = self.s.rooms.lock();
        let Some(st) = rooms.get().get(&room) else {
            return;
        };
        self.subs.entry(room).or_default().insert(link);
        let msg = match st.events_after(after) {
            Some(ev) if ev.is_empty() => return,
            Some(ev) => FromRoom::Events {
                room,
                first_seq: ev[0].0,
                events: ev.into_iter().map(|(_, e)| e).collect(),
            },
            None => {
                self.s.stats.snapshots_sent.fetch_add(1, Ordering::Relaxed);
                FromRoom::Snapshot(st.snapshot())
            }
        };
        drop(rooms);
        self.send_now(link, link_frame(&msg));
    }

    fn reply(
        &self,
        link: LinkId,
        player: u64,
        seq: u32,
        reply: Reply,
        pos: Option<u64>,
        mut out: Vec<(LinkId, Bytes)>,
    ) {
        out.push((link, link_frame(&FromRoom::Reply { player, seq, reply })));
        self.queue(Release {
            pos,
            out,
            ..Release::default()
        });
    }

    /// Loads `r.player`'s data off the game task; the answer comes back as `Inbox::Loaded`.
    fn load(&self, store: PlayerStore, r: Req) {
        let Some(inbox) = self.inbox.upgrade() else {
            return;
        };
        self.s.stats.data_loads.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let player = r.player;
            let loaded = tokio::task::spawn_blocking(move || store.0.load(player))
                .await
                .map_err(|e| format!("load task: {e}"))
                .and_then(|r| r.map_err(|e| e.to_string()));
            let _ = inbox.send(Inbox::Loaded(Box::new(r), loaded)).await;
        });
    }

    /// Before a commit: the activity of the players `events` take out of
    /// the room (saved at once: after the commit the room no longer has it).
    fn leaving(&self, st: &RoomState, events: &[RoomEvent]) -> Vec<(u64, Activity)> {
        if self.s.cfg.store.is_none() {
            return Vec::new();
        }
        events
            .iter()
            .filter_map(|e| match e {
                RoomEvent::Left { player } => st.members.get(player).map(|m| (*player, m.activity)),
                _ => None,
            })
            .collect()
    }

    /// After a commit (`after`: the room with the events applied): the
    /// players whose activity changed are dirty; the records a game's end
    /// changed and the activity of those who left are saved before `rel`
    /// is released.
    fn saves(
        &self,
        room: u32,
        after: &RoomState,
        events: &[RoomEvent],
        leaving: Vec<(u64, Activity)>,
        rel: &mut Release,
    ) {
        if self.s.cfg.store.is_none() {
            return;
        }
        rel.records = RoomState::ended_records(events);
        rel.activity = leaving;
        let mut u = self.s.unsaved.lock();
        for e in events {
            match e {
                RoomEvent::Entered { player, .. } | RoomEvent::Chat { player, .. } => {
                    u.mark(*player, room)
                }
                // The game a move was made in is still the table's (a move
                // never starts a game, and an end keeps it for the record).
                RoomEvent::Moved { table, seat, .. } => {
                    let t = &after.tables[*table as usize];
                    if let Some(p) = t.game.as_ref().map(|g| g.players[*seat as usize]) {
                        u.mark(p, room);
                    }
                }
                _ => {}
            }
        }
    }

    fn publish(&self, w: &Writes) -> Result<u64, NodeError> {
        let mut pos = 0;
        for (k, v) in w {
            pos = self.s.node.publish(k, Op::Put, v)?;
            self.s.stats.records.fetch_add(1, Ordering::Relaxed);
        }
        Ok(pos)
    }

    fn request(&mut self, r: Req) {
        let (link, player, session, seq, login) = (r.link, r.player, r.session, r.seq, r.login);
        if r.data.is_none() {
            self.s.stats.requests.fetch_add(1, Ordering::Relaxed);
        }
        let Some(room) = r.req.room() else {
            let reply = Err(Fail::new(
                ErrorCode::BadRequest,
                "Rooms is answered by the gateway",
            ));
            return self.reply(link, player, seq, reply, None, Vec::new());
        };
        let mut rooms = self.s.rooms.lock();
        let Some(st) = rooms.get().get(&room) else {
            drop(rooms);
            let reply = Err(Fail::new(
                ErrorCode::UnknownRoom,
                format!("room {room} is not served here"),
            ));
            return self.reply(link, player, seq, reply, None, Vec::new());
        };
        // Events of a room a link sent a request for go to that link from now on.
        self.subs.entry(room).or_default().insert(link);
        if login != 0 && login < st.login_of(player) {
            drop(rooms);
            self.s.stats.refused.fetch_add(1, Ordering::Relaxed);
            let reply = Err(Fail::new(
                ErrorCode::LoggedInElsewhere,
                "this session was taken over by a newer login",
            ));
            return self.reply(link, player, seq, reply, None, Vec::new());
        }
        if let Some(done_seq) = st.done(player, session, seq) {
            self.s.stats.deduplicated.fetch_add(1, Ordering::Relaxed);
            let a = st.answer_done(&r.req, done_seq);
            drop(rooms);
            return self.reply(link, player, seq, Ok(a), None, Vec::new());
        }
        let entering = matches!(r.req, Request::Enter { .. }) && !st.members.contains_key(&player);
        if let (true, None, Some(store)) = (entering, &r.data, &self.s.cfg.store) {
            let store = store.clone();
            drop(rooms);
            return self.load(store, r);
        }
        let events = match st.plan(player, &r.name, &r.req) {
            Err(mut f) => {
                if f.code == ErrorCode::RoomFull {
                    // Seed 002: a full room proposes another of the same game.
                    let game = st.cfg.game;
                    let other = rooms
                        .get()
                        .values()
                        .find(|o| o.cfg.game == game && (o.members.len() as u32) < o.cfg.capacity);
                    if let Some(o) = other {
                        f.message = format!("{}; room {} has space", f.message, o.cfg.id);
                    }
                }
                drop(rooms);
                self.s.stats.refused.fetch_add(1, Ordering::Relaxed);
                return self.reply(link, player, seq, Err(f), None, Vec::new());
            }
            Ok(Plan::Answer(a)) => {
                drop(rooms);
                return self.reply(link, player, seq, Ok(a), None, Vec::new());
            }
            Ok(Plan::Events(mut ev)) => {
                if let Some(d) = r.data {
                    RoomState::with_data(&mut ev, player, d);
                }
                ev
            }
        };
        let first_seq = st.seq + 1;
        let leaving = self.leaving(st, &events);
        let mark = crate::room::replica::Mark {
            player,
            session,
            seq,
            login,
        };
        let w = rooms.prepare(room, events.clone(), Some(mark));
        let pos = match self.publish(&w) {
            Ok(p) => p,
            Err(e) => {
                drop(rooms);
                tracing::warn!(room, error = %e, "publish refused; stepping down from the links");
                // Not master any more (or the log failed): the gateways re-send elsewhere.
                self.step_down();
                return;
            }
        };
        rooms.commit(&w, Instant::now());
        let st = &rooms.get()[&room];
        let answer = match r.req {
            Request::Enter { .. } => Answer::Entered(st.snapshot()),
            _ => Answer::Done { room, seq: st.seq },
        };
        let mut rel = Release {
            pos: Some(pos),
            ..Release::default()
        };
        self.saves(room, st, &events, leaving, &mut rel);
        drop(rooms);
        rel.out = self.fanout(room, first_seq, events);
        rel.out.push((
            link,
            link_frame(&FromRoom::Reply {
                player,
                seq,
                reply: Ok(answer),
            }),
        ));
        self.queue(rel);
    }

    fn fanout(
        &self,
        room: u32,
        first_seq: u64,
        events: Vec<crate::proto::msg::RoomEvent>,
    ) -> Vec<(LinkId, Bytes)> {
        let Some(subs) = self.subs.get(&room).filter(|s| !s.is_empty()) else {
            return Vec::new();
        };
        let f = link_frame(&FromRoom::Events {
            room,
            first_seq,
            events,
        });
        subs.iter().map(|l| (*l, f.clone())).collect()
    }

    fn timers(&mut self) {
        if !self.master {
            return;
        }
        let now = Instant::now();
        let mut rooms = self.s.rooms.lock();
        let due: Vec<(u32, Vec<_>)> = rooms
            .get()
            .iter()
            .map(|(id, r)| (*id, r.expired(now)))
            .filter(|(_, e)| !e.is_empty())
            .collect();
        for (room, events) in due {
            let first_seq = rooms.get()[&room].seq + 1;
            let leaving = self.leaving(&rooms.get()[&room], &events);
            let w = rooms.prepare(room, events.clone(), None);
            match self.publish(&w) {
                Ok(pos) => {
                    rooms.commit(&w, now);
                    self.s.stats.timer_moves.fetch_add(1, Ordering::Relaxed);
                    let mut rel = Release {
                        pos: Some(pos),
                        ..Release::default()
                    };
                    self.saves(room, &rooms.get()[&room], &events, leaving, &mut rel);
                    rel.out = self.fanout(room, first_seq, events);
                    self.queue(rel);
                }
                Err(e) => {
                    drop(rooms);
                    tracing::warn!(room, error = %e, "timer publish refused; stepping down from the links");
                    self.step_down();
                    return;
                }
            }
        }
    }
}

/// Sends each entry once its records are on the standby (see the module doc).
fn release_loop(s: &Shared, rx: Receiver<Release>) {
    let mut standby = crate::standby::StandbyWait::new(s.cfg.standby_wait_ms, "room replies");
    loop {
        let r = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) if s.stop.load(Ordering::Acquire) => return,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if let Some(pos) = r.pos {
            let t0 = Instant::now();
            match standby.wait(&s.node, pos, &s.stop, &s.stats.released_unreplicated) {
                Waited::Replicated | Waited::Unreplicated => {}
                // Never acknowledged: the gateways re-send to the new master.
                Waited::NotMaster => continue,
                Waited::Stopped => return,
            }
            s.stats
                .replicate_wait_us
                .fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
            s.stats.replicate_waits.fetch_add(1, Ordering::Relaxed);
        }
        save_now(s, &r);
        let links = s.links.lock();
        for (l, f) in r.out {
            if let Some(tx) = links.get(&l) {
                if tx.try_send(f).is_err() {
                    s.stats.links_dropped_slow.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        link = l,
                        "gateway link queue full; the gateway will reconnect and resume"
                    );
                }
            }
        }
    }
}

/// Attempts of a save at once before it is left to the saver thread.
const SAVE_ATTEMPTS_MAX: u32 = 3;

/// Saves what a release carries (records of a game's end, activity of
/// players who left) before its frames leave. A save that keeps failing is
/// logged and handed to the saver, which retries each period: the data is in
/// hs meanwhile (on both nodes), so only losing both nodes and the database
/// write together would lose it.
fn save_now(s: &Shared, r: &Release) {
    let Some(store) = &s.cfg.store else { return };
    if r.records.is_empty() && r.activity.is_empty() {
        return;
    }
    let now = crate::token::now_ms();
    let activity: Vec<_> = r
        .activity
        .iter()
        .map(|(p, a)| {
            (
                *p,
                Activity {
                    last_seen_ms: now,
                    ..*a
                },
            )
        })
        .collect();
    for attempt in 1..=SAVE_ATTEMPTS_MAX {
        let res = store
            .0
            .save_records(&r.records)
            .and_then(|()| store.0.save_activity(&activity));
        match res {
            Ok(()) => {
                s.stats
                    .records_saved
                    .fetch_add(r.records.len() as u64, Ordering::Relaxed);
                s.stats
                    .activity_saved
                    .fetch_add(activity.len() as u64, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                s.stats.save_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(attempt, error = %e, "saving player records failed");
                if attempt < SAVE_ATTEMPTS_MAX {
                    std::thread::sleep(Duration::from_millis(20 << attempt));
                }
            }
        }
    }
    let mut u = s.unsaved.lock();
    for (p, rec) in &r.records {
        u.records.insert(*p, *rec);
    }
    // Activity of a player who left: saved by the saver only while they are
    // in a room here, so it is written here once more, best effort.
    drop(u);
    let _ = store.0.save_activity(&activity);
}

/// The batch saver (see the module doc). On a clean stop it saves everything.
fn saver_loop(s: &Shared) {
    let Some(store) = &s.cfg.store else { return };
    let period = Duration::from_millis(s.cfg.activity_save_period_ms.max(10));
    let share = s.cfg.activity_save_share_percent.clamp(1, 100) as usize;
    let mut next = Instant::now() + period;
    loop {
        let stopping = s.stop.load(Ordering::Acquire);
        if !stopping {
            let wait = next.saturating_duration_since(Instant::now());
            std::thread::sleep(wait.min(Duration::from_millis(100)));
            if Instant::now() < next {
                continue;
            }
            next += period;
        }
        if s.node.role() != Role::Master {
            if stopping {
                return;
            }
            continue;
        }
        let (records, batch) = {
            let mut u = s.unsaved.lock();
            let n = if stopping {
                u.dirty.len()
            } else {
                u.dirty.len().saturating_mul(share).div_ceil(100)
            };
            let batch: Vec<(u64, u32)> = u.dirty.drain(..n).collect();
            for (p, _) in &batch {
                u.dirty_set.remove(p);
            }
            let records: Vec<_> = u.records.drain().collect();
            (records, batch)
        };
        let now = crate::token::now_ms();
        let activity: Vec<(u64, Activity)> = {
            let mut rooms = s.rooms.lock();
            let all = rooms.get();
            batch
                .iter()
                .filter_map(|(p, room)| {
                    let m = all.get(room)?.members.get(p)?;
                    Some((
                        *p,
                        Activity {
                            last_seen_ms: now,
                            ..m.activity
                        },
                    ))
                })
                .collect()
        };
        if !records.is_empty() {
            if let Err(e) = store.0.save_records(&records) {
                s.stats.save_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, count = records.len(), "saving player records failed; retrying next period");
                s.unsaved.lock().records.extend(records);
            } else {
                s.stats
                    .records_saved
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
            }
        }
        if !activity.is_empty() {
            if let Err(e) = store.0.save_activity(&activity) {
                s.stats.save_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, count = activity.len(), "saving player activity failed; retrying next period");
                let mut u = s.unsaved.lock();
                for (p, room) in batch {
                    u.mark(p, room);
                }
            } else {
                s.stats
                    .activity_saved
                    .fetch_add(activity.len() as u64, Ordering::Relaxed);
            }
        }
        if stopping {
            return;
        }
    }
}

/// Admin commands, one per line: `ROLE`, `STATS`, `SWITCHOVER`, `ROOMS`.
fn admin_loop(s: &Arc<Shared>, l: StdListener) {
    for c in l.incoming() {
        let Ok(c) = c else { continue };
        let s = s.clone();
        std::thread::spawn(move || {
            let Ok(mut out) = c.try_clone() else { return };
            for line in BufReader::new(c).lines() {
                let Ok(line) = line else { return };
                let reply = admin_command(&s, line.trim());
                if out
                    .write_all(reply.as_bytes())
                    .and_then(|_| out.write_all(b"\n"))
                    .is_err()
                {
                    return;
                }
            }
        });
    }
}

fn admin_command(s: &Shared, cmd: &str) -> String {
    match cmd {
        "ROLE" => {
            let st = s.node.stats();
            let role = match s.node.role() {
                Role::Master => "master",
                Role::Slave => "slave",
                Role::Candidate => "candidate",
            };
            format!("ROLE {role} {} {}", st.epoch, s.node.is_writable() as u8)
        }
        "SWITCHOVER" => match s.node.switchover(Duration::from_secs(5)) {
            Ok(()) => "OK".into(),
            Err(e) => format!("ERR {e}"),
        },
        "STATS" => {
            let st = s.node.stats();
            let r = &s.stats;
            let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
            let mut rooms = s.rooms.lock();
            let (divergences, errors) = (rooms.divergences, rooms.errors);
            let online: usize = rooms.get().values().map(|r| r.members.len()).sum();
            serde_json::json!({
                "role": format!("{:?}", s.node.role()), "epoch": st.epoch, "written": st.written,
                "acked_received": st.acked_received, "applied": st.applied, "slave_connected": st.slave_connected,
                "requests": g(&r.requests), "refused": g(&r.refused), "deduplicated": g(&r.deduplicated),
                "records": g(&r.records), "timer_moves": g(&r.timer_moves),
                "released_unreplicated": g(&r.released_unreplicated), "links": g(&r.links),
                "links_dropped_slow": g(&r.links_dropped_slow), "snapshots_sent": g(&r.snapshots_sent),
                "replicate_wait_us": g(&r.replicate_wait_us), "replicate_waits": g(&r.replicate_waits),
                "divergences": divergences, "apply_errors": errors, "online": online,
                "data_loads": g(&r.data_loads), "data_load_errors": g(&r.data_load_errors),
                "records_saved": g(&r.records_saved), "activity_saved": g(&r.activity_saved),
                "save_errors": g(&r.save_errors),
            })
            .to_string()
        }
        "ROOMS" => {
            let mut rooms = s.rooms.lock();
            let snaps: Vec<_> = rooms.get().values().map(|r| r.snapshot()).collect();
            serde_json::to_string(&snaps.iter().map(snapshot_json).collect::<Vec<_>>())
                .unwrap_or_default()
        }
        _ => "ERR commands: ROLE, STATS, SWITCHOVER, ROOMS".into(),
    }
}

/// A room snapshot as JSON for operators and the drill's final check.
pub fn snapshot_json(s: &crate::proto::msg::RoomSnapshot) -> serde_json::Value {
    serde_json::json!({
        "room": s.room, "seq": s.seq, "members": s.members.len(),
        "tables": s.tables.iter().filter_map(|t| t.game.as_ref().map(|g| serde_json::json!({
            "table": t.table, "game_no": g.game_no, "players": g.players,
            "moves": g.moves.iter().map(|(seat, mv, auto)| serde_json::json!([seat, mv, auto])).collect::<Vec<_>>(),
            "ended": g.outcome.is_some(),
        }))).collect::<Vec<_>>(),
    })
}
