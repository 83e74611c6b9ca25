//! The center server process: the [`super::core`] rules over an hs node, the
//! gateway link listener and the admin HTTP.
//!
//! ```text
//!  gateway links (tokio) ──ToCenter──► center task: Center::handle → publish → apply
//!  admin HTTP (axum)     ──AdminCmd──►      │  (one thread owns the decisions)
//!        ▲                                  ▼
//!        └── FromCenter / answers ◄── release thread: waits hs Received(pos), then sends
//! ```
//!
//! Like the room server: a node that is not master answers a gateway's
//! Hello with `NotMaster{peer_link}` and closes; losing the master role
//! closes every link; with no live standby an answer waits at most
//! `standby_wait_ms` and then leaves anyway (counted in
//! `released_unreplicated`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::{Bytes, BytesMut};
use hs::{Node, NodeError, Op, Role};
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use super::core::{AdminCmd, BanKey, Center, CoreConfig, Input, LinkId, Rec, Sink, State, Stopped};
use super::link::{FromCenter, Targets, ToCenter, CENTER_FRAME_BYTES_MAX, CENTER_LINK_VERSION};
use crate::proto::frame::{self, Frame, Kind};
use crate::proto::msg;

/// Longest operator notice, bytes.
pub const NOTICE_TEXT_BYTES_MAX: usize = 2048;
/// The center task's tick (role checks, queue positions, expiries), ms.
const TICK_MS: u64 = 20;
/// How long an admin request waits for the center task's answer.
const ADMIN_WAIT_MS: u64 = 5000;
/// Header carrying the admin secret.
pub const SECRET_HEADER: &str = "x-center-secret";

/// Limits and settings of a center server node.
#[derive(Clone, Debug)]
pub struct CenterConfig {
    pub hs: hs::Config,
    pub prefer_master: bool,
    /// Where gateways connect.
    pub link_listen: SocketAddr,
    /// The other node's link address, told to gateways in `NotMaster`.
    pub peer_link: Option<SocketAddr>,
    /// Admin HTTP (stats, kick, blacklist, broadcast).
    pub admin_listen: Option<SocketAddr>,
    /// Required in the `x-center-secret` header when set. A non-loopback
    /// admin listener without one refuses to start.
    pub admin_secret: Option<String>,
    pub core: CoreConfig,
    /// How long an answer waits for a standby that is not connected, ms.
    pub standby_wait_ms: u64,
    /// A gateway must say Hello within this, ms, or its link is dropped.
    pub hello_timeout_ms: u64,
    /// Frames queued to one gateway link before it is dropped as too slow.
    pub link_queue_frames_max: usize,
    /// Gateway links at once (with or without Hello).
    pub links_max: usize,
    /// Messages queued for the center task.
    pub inbox_max: usize,
    /// Answers waiting for the standby before the center task waits too.
    pub release_queue_max: usize,
}

impl CenterConfig {
    pub fn new(hs: hs::Config, link_listen: SocketAddr) -> CenterConfig {
        CenterConfig {
            hs,
            prefer_master: false,
            link_listen,
            peer_link: None,
            admin_listen: None,
            admin_secret: None,
            core: CoreConfig::default(),
            standby_wait_ms: 1000,
            hello_timeout_ms: 5000,
            link_queue_frames_max: 1 << 16,
            links_max: 2048,
            inbox_max: 1 << 16,
            release_queue_max: 1 << 16,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CenterError {
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
    #[error("center configuration: {0}")]
    Config(String),
}

/// Counters of the server (the core's are in its stats).
#[derive(Default)]
pub struct ServerStats {
    pub records: AtomicU64,
    pub released_unreplicated: AtomicU64,
    pub links: AtomicU64,
    pub links_dropped_slow: AtomicU64,
    pub links_bad: AtomicU64,
    pub apply_errors: AtomicU64,
}

enum Inbox {
    Opened(LinkId, mpsc::Sender<Bytes>),
    Closed(LinkId),
    Msg(LinkId, ToCenter),
    Admin(AdminCmd, oneshot::Sender<(StatusCode, serde_json::Value)>),
}

type Answer = (
    oneshot::Sender<(StatusCode, serde_json::Value)>,
    serde_json::Value,
);

/// Frames (and an admin answer) that may leave once `pos` is on the standby.
struct Release {
    pos: Option<u64>,
    out: Vec<(LinkId, Bytes)>,
    close: Vec<LinkId>,
    answer: Option<Answer>,
}

struct Shared {
    node: Arc<Node>,
    state: Arc<Mutex<State>>,
    links: Mutex<HashMap<LinkId, mpsc::Sender<Bytes>>>,
    stop: AtomicBool,
    cfg: CenterConfig,
    stats: ServerStats,
}

/// A running center server node.
pub struct CenterServer {
    shared: Arc<Shared>,
    pub link_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// The [`hs::Apply`] of the center: every record into the shared [`State`].
struct Replica(Arc<Mutex<State>>, Arc<Shared2>);

/// What the Apply needs before `Shared` exists.
#[derive(Default)]
struct Shared2 {
    errors: AtomicU64,
}

impl Replica {
    fn put(&mut self, key: &[u8], put: bool, value: &[u8], pos: u64) {
        match Rec::from_kv(key, put, value) {
            Ok(r) => self.0.lock().apply(&r),
            Err(e) => {
                self.1.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(pos, error = %e, "center record not applied");
            }
        }
    }
}

impl hs::Apply for Replica {
    fn apply(&mut self, rec: &hs::RecordRef<'_>) {
        self.put(rec.key, rec.op == Op::Put, rec.value, rec.pos);
    }
    fn reset(&mut self) {
        *self.0.lock() = State::default();
    }
    fn restore(&mut self, key: &[u8], value: &[u8]) {
        self.put(key, true, value, 0);
    }
}

/// Publishes records to hs; remembers the last position.
struct NodeSink<'a> {
    node: &'a Node,
    last: Option<u64>,
    n: u64,
}

impl Sink for NodeSink<'_> {
    fn write(&mut self, r: &Rec) -> Result<(), Stopped> {
        let (k, put, v) = r.to_kv();
        let op = if put { Op::Put } else { Op::Delete };
        let pos = self
            .node
            .publish(&k, op, &v)
            .map_err(|e| Stopped(e.to_string()))?;
        self.last = Some(pos);
        self.n += 1;
        Ok(())
    }
}

fn link_frame(m: &FromCenter) -> Bytes {
    Frame::new(
        Kind::FromCenter,
        0,
        crate::token::now_ms(),
        Bytes::from(msg::encode(m)),
    )
    .to_bytes()
}

impl CenterServer {
    pub fn start(cfg: CenterConfig) -> Result<CenterServer, CenterError> {
        if let Some(a) = cfg.admin_listen {
            if !a.ip().is_loopback() && cfg.admin_secret.is_none() {
                return Err(CenterError::Config(format!(
                    "admin listener {a} is not loopback and has no secret: anyone could kick and blacklist"
                )));
            }
        }
        let state = Arc::new(Mutex::new(State::default()));
        let s2 = Arc::new(Shared2::default());
        let role = if cfg.prefer_master {
            Role::Master
        } else {
            Role::Slave
        };
        let node = Arc::new(Node::start(
            cfg.hs.clone(),
            role,
            Replica(state.clone(), s2.clone()),
        )?);
        let std_link = StdListener::bind(cfg.link_listen).map_err(|err| CenterError::Bind {
            what: "link port",
            addr: cfg.link_listen,
            err,
        })?;
        std_link.set_nonblocking(true)?;
        let link_addr = std_link.local_addr()?;
        let admin = match cfg.admin_listen {
            Some(a) => {
                let l = StdListener::bind(a).map_err(|err| CenterError::Bind {
                    what: "admin port",
                    addr: a,
                    err,
                })?;
                l.set_nonblocking(true)?;
                Some(l)
            }
            None => None,
        };
        let admin_addr = admin.as_ref().map(|l| l.local_addr()).transpose()?;
        let shared = Arc::new(Shared {
            node,
            state,
            links: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
            cfg: cfg.clone(),
            stats: ServerStats::default(),
        });
        let (inbox_tx, inbox_rx) = mpsc::channel(cfg.inbox_max);
        let (rel_tx, rel_rx) = sync_channel(cfg.release_queue_max);
        let mut threads = Vec::new();
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("center-release".into())
                .spawn(move || release_loop(&s, rel_rx))?,
        );
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("center-core".into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("tokio runtime");
                    rt.block_on(Task::new(s, rel_tx, s2).run(inbox_rx));
                })?,
        );
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("center-io".into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(1)
                        .enable_all()
                        .build()
                        .expect("tokio runtime");
                    if let Some(l) = admin {
                        rt.spawn(serve_admin(s.clone(), l, inbox_tx.clone()));
                    }
                    rt.block_on(accept_links(s, std_link, inbox_tx));
                })?,
        );
        Ok(CenterServer {
            shared,
            link_addr,
            admin_addr,
            threads,
        })
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.shared.node
    }

    /// The replicated state (for tests).
    pub fn state(&self) -> &Arc<Mutex<State>> {
        &self.shared.state
    }

    pub fn stats(&self) -> &ServerStats {
        &self.shared.stats
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
    let open = Arc::new(AtomicU64::new(0));
    let mut next: LinkId = 1;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            r = l.accept() => {
                let Ok((sock, peer)) = r else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if open.load(Ordering::Relaxed) as usize >= s.cfg.links_max {
                    tracing::warn!(max = s.cfg.links_max, %peer, "gateway link refused: links_max reached");
                    continue;
                }
                let _ = sock.set_nodelay(true);
                let id = next;
                next += 1;
                open.fetch_add(1, Ordering::Relaxed);
                let (s, inbox, open) = (s.clone(), inbox.clone(), open.clone());
                tokio::spawn(async move {
                    serve_link(s, id, sock, peer, inbox).await;
                    open.fetch_sub(1, Ordering::Relaxed);
                });
            }
            _ = tick.tick() => if s.stop.load(Ordering::Acquire) { return },
        }
    }
}

async fn serve_link(
    s: Arc<Shared>,
    id: LinkId,
    sock: TcpStream,
    peer: SocketAddr,
    inbox: mpsc::Sender<Inbox>,
) {
    let (mut rd, wr) = sock.into_split();
    let (tx, rx) = mpsc::channel::<Bytes>(s.cfg.link_queue_frames_max);
    if inbox.send(Inbox::Opened(id, tx)).await.is_err() {
        return;
    }
    s.stats.links.fetch_add(1, Ordering::Relaxed);
    let writer = crate::link::spawn_link_writer(wr, rx);
    let hello_by = tokio::time::Instant::now() + Duration::from_millis(s.cfg.hello_timeout_ms);
    let mut hello = false;
    let mut buf = BytesMut::with_capacity(16 << 10);
    let bad = |why: &str| {
        s.stats.links_bad.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(link = id, %peer, why, "closing the gateway link");
    };
    'read: loop {
        let r = if hello {
            rd.read_buf(&mut buf).await
        } else {
            match tokio::time::timeout_at(hello_by, rd.read_buf(&mut buf)).await {
                Ok(r) => r,
                Err(_) => {
                    bad("no Hello in time");
                    break;
                }
            }
        };
        match r {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        // Bounded: each turn consumes a frame from a finite buffer.
        loop {
            match frame::decode(&mut buf, CENTER_FRAME_BYTES_MAX) {
                Ok(None) => break,
                Ok(Some(f)) if f.kind == Kind::ToCenter => {
                    match msg::decode::<ToCenter>(&f.payload) {
                        Ok(m) => {
                            if !hello && !matches!(m, ToCenter::Hello { .. }) {
                                bad("the first message is not Hello");
                                break 'read;
                            }
                            hello = true;
                            if inbox.send(Inbox::Msg(id, m)).await.is_err() {
                                break 'read;
                            }
                        }
                        Err(e) => {
                            bad(&format!("undecodable message: {e}"));
                            break 'read;
                        }
                    }
                }
                Ok(Some(f)) => {
                    bad(&format!("unexpected {:?} frame", f.kind));
                    break 'read;
                }
                Err(e) => {
                    bad(&format!("bad frame: {e}"));
                    break 'read;
                }
            }
        }
    }
    let _ = inbox.send(Inbox::Closed(id)).await;
    // The center task drops the link's sender; the writer then ends.
    let _ = writer.await;
}

/// The center task: owns the decisions (see the module doc).
struct Task {
    s: Arc<Shared>,
    release: SyncSender<Release>,
    core: Option<Center>,
    /// Links before their Hello.
    pending: HashMap<LinkId, mpsc::Sender<Bytes>>,
    apply_errors: Arc<Shared2>,
}

impl Task {
    fn new(s: Arc<Shared>, release: SyncSender<Release>, apply_errors: Arc<Shared2>) -> Task {
        Task {
            s,
            release,
            core: None,
            pending: HashMap::new(),
            apply_errors,
        }
    }

    async fn run(mut self, mut inbox: mpsc::Receiver<Inbox>) {
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
                    let e = self.apply_errors.errors.load(Ordering::Relaxed);
                    self.s.stats.apply_errors.store(e, Ordering::Relaxed);
                    self.check_role();
                    if self.core.is_some() {
                        self.run_input(Input::Tick, None);
                    }
                }
            }
        }
    }

    fn check_role(&mut self) {
        let writable = self.s.node.role() == Role::Master && self.s.node.is_writable();
        if writable == self.core.is_some() {
            return;
        }
        if writable {
            let st = self.s.state.lock();
            tracing::info!(
                epoch = self.s.node.stats().epoch,
                online = st.users.len(),
                waiting = st.waiting.len(),
                bans = st.bans.len(),
                "master: taking gateway links"
            );
            self.core = Some(Center::new(self.s.cfg.core.clone(), &st));
        } else {
            tracing::info!(role = ?self.s.node.role(), "not master: closing gateway links");
            self.step_down();
        }
    }

    /// Closes every link: the gateways find the new master and re-sync.
    fn step_down(&mut self) {
        self.core = None;
        self.s.links.lock().clear();
    }

    fn handle(&mut self, m: Inbox) {
        match m {
            Inbox::Opened(id, tx) => {
                self.pending.insert(id, tx);
            }
            Inbox::Closed(id) => {
                self.pending.remove(&id);
                // Also when the release thread dropped it already (too slow):
                // the core starts the gateway's grace either way.
                self.s.links.lock().remove(&id);
                if self.core.is_some() {
                    self.run_input(Input::Closed(id), None);
                }
            }
            Inbox::Msg(id, m @ ToCenter::Hello { .. }) => {
                let Some(tx) = self.pending.remove(&id) else {
                    return;
                };
                let ToCenter::Hello {
                    gateway, version, ..
                } = &m
                else {
                    unreachable!("matched Hello")
                };
                if self.core.is_none() || *version != CENTER_LINK_VERSION {
                    if *version != CENTER_LINK_VERSION {
                        tracing::warn!(
                            gateway,
                            version,
                            "gateway speaks another center link version; refused"
                        );
                    }
                    let master = self.s.cfg.peer_link.map(|a| a.to_string());
                    let _ = tx.try_send(link_frame(&FromCenter::NotMaster { master }));
                    return; // dropping tx closes the link after the frame
                }
                tracing::info!(link = id, gateway, "gateway link up");
                self.s.links.lock().insert(id, tx);
                self.run_input(Input::Msg(id, m), None);
            }
            Inbox::Msg(id, m) => {
                if self.core.is_some() && self.s.links.lock().contains_key(&id) {
                    self.run_input(Input::Msg(id, m), None);
                }
            }
            Inbox::Admin(cmd, reply) => {
                if self.core.is_none() {
                    let master = self.s.cfg.peer_link.map(|a| a.to_string());
                    let _ = reply.send((
                        StatusCode::CONFLICT,
                        serde_json::json!({ "error": "not_master", "message": "this center node is not master", "peer_link": master }),
                    ));
                    return;
                }
                self.run_input(Input::Admin(cmd), Some(reply));
            }
        }
    }

    fn run_input(
        &mut self,
        input: Input,
        reply: Option<oneshot::Sender<(StatusCode, serde_json::Value)>>,
    ) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let stats = matches!(input, Input::Admin(AdminCmd::Stats));
        let mut sink = NodeSink {
            node: &self.s.node,
            last: None,
            n: 0,
        };
        let mut st = self.s.state.lock();
        let r = core.handle(&mut st, input, crate::token::now_ms(), &mut sink);
        drop(st);
        let (pos, n) = (sink.last, sink.n);
        self.s.stats.records.fetch_add(n, Ordering::Relaxed);
        match r {
            Ok(out) => {
                let mut answer = out.admin;
                if let (true, Some(a)) = (stats, answer.as_mut()) {
                    let g = |x: &AtomicU64| x.load(Ordering::Relaxed);
                    let ss = &self.s.stats;
                    let ns = self.s.node.stats();
                    a["server"] = serde_json::json!({ "records": g(&ss.records),
                        "released_unreplicated": g(&ss.released_unreplicated), "links": g(&ss.links),
                        "links_dropped_slow": g(&ss.links_dropped_slow), "links_bad": g(&ss.links_bad),
                        "apply_errors": g(&ss.apply_errors), "role": format!("{:?}", self.s.node.role()),
                        "epoch": ns.epoch, "slave_connected": ns.slave_connected });
                }
                let out_frames = out.sends.iter().map(|(l, m)| (*l, link_frame(m))).collect();
                let answer = reply.zip(answer);
                self.queue(Release {
                    pos,
                    out: out_frames,
                    close: out.close,
                    answer,
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "publish refused; stepping down from the links");
                if let Some(r) = reply {
                    let _ = r.send((
                        StatusCode::SERVICE_UNAVAILABLE,
                        serde_json::json!({ "error": "not_master", "message": e.to_string() }),
                    ));
                }
                self.step_down();
            }
        }
    }

    fn queue(&self, r: Release) {
        if r.out.is_empty() && r.pos.is_none() && r.close.is_empty() && r.answer.is_none() {
            return;
        }
        // Blocks when the standby is far behind: back-pressure on the center task.
        let _ = self.release.send(r);
    }
}

/// Sends each entry once its records are on the standby.
fn release_loop(s: &Shared, rx: Receiver<Release>) {
    let mut standby = crate::standby::StandbyWait::new(s.cfg.standby_wait_ms, "center answers");
    loop {
        let r = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) if s.stop.load(Ordering::Acquire) => return,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if let Some(pos) = r.pos {
            match standby.wait(&s.node, pos, &s.stop, &s.stats.released_unreplicated) {
                crate::standby::Waited::Replicated | crate::standby::Waited::Unreplicated => {}
                crate::standby::Waited::NotMaster => {
                    // Never acknowledged: the gateways re-send to the new master.
                    if let Some((tx, _)) = r.answer {
                        let _ = tx.send((
                            StatusCode::SERVICE_UNAVAILABLE,
                            serde_json::json!({ "error": "not_master", "message": "lost the master role before the standby had it; retry" }),
                        ));
                    }
                    continue;
                }
                crate::standby::Waited::Stopped => return,
            }
        }
        let mut links = s.links.lock();
        for (l, f) in r.out {
            if let Some(tx) = links.get(&l) {
                if tx.try_send(f).is_err() {
                    s.stats.links_dropped_slow.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        link = l,
                        "gateway link queue full; dropping the link (the gateway reconnects and re-syncs)"
                    );
                    links.remove(&l);
                }
            }
        }
        for l in r.close {
            links.remove(&l);
        }
        drop(links);
        if let Some((tx, v)) = r.answer {
            let code = if v.get("error").is_some() {
                StatusCode::CONFLICT
            } else {
                StatusCode::OK
            };
            let _ = tx.send((code, v));
        }
    }
}

// ------------------------------------------------------------------ admin HTTP

#[derive(Clone)]
struct Admin {
    s: Arc<Shared>,
    inbox: mpsc::Sender<Inbox>,
}

type Reply = (StatusCode, Json<serde_json::Value>);

fn err(code: StatusCode, error: &str, message: impl Into<String>) -> Reply {
    (
        code,
        Json(serde_json::json!({ "error": error, "message": message.into() })),
    )
}

impl Admin {
    fn check(&self, h: &HeaderMap) -> Result<(), Reply> {
        let Some(want) = self.s.cfg.admin_secret.as_deref() else {
            return Ok(());
        };
        let got = h
            .get(SECRET_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        // Constant time over the secret's length.
        let same = got.len() == want.len()
            && got
                .bytes()
                .zip(want.bytes())
                .fold(0u8, |a, (x, y)| a | (x ^ y))
                == 0;
        if same {
            Ok(())
        } else {
            Err(err(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("send the admin secret in the {SECRET_HEADER} header"),
            ))
        }
    }

    async fn ask(&self, h: &HeaderMap, cmd: AdminCmd) -> Reply {
        if let Err(r) = self.check(h) {
            return r;
        }
        let (tx, rx) = oneshot::channel();
        if self.inbox.try_send(Inbox::Admin(cmd, tx)).is_err() {
            return err(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "the center's inbox is full; retry",
            );
        }
        match tokio::time::timeout(Duration::from_millis(ADMIN_WAIT_MS), rx).await {
            Ok(Ok((code, v))) => (code, Json(v)),
            _ => err(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "no answer from the center task in time (is the standby far behind?)",
            ),
        }
    }
}

#[derive(Deserialize)]
struct KickBody {
    player: u64,
    #[serde(default)]
    reason: String,
    /// Also blacklist the account this long (0: for good).
    #[serde(default)]
    ban_ms: Option<u64>,
}

#[derive(Deserialize)]
struct BanBody {
    #[serde(default)]
    player: Option<u64>,
    #[serde(default)]
    addr: Option<IpAddr>,
    #[serde(default)]
    reason: String,
    /// Expires after this long; absent: for good.
    #[serde(default)]
    ttl_ms: Option<u64>,
}

#[derive(Deserialize)]
struct BroadcastBody {
    text: String,
    #[serde(default)]
    channel: Option<u32>,
    #[serde(default)]
    players: Option<Vec<u64>>,
}

fn ban_key(player: Option<u64>, addr: Option<IpAddr>) -> Result<BanKey, Reply> {
    match (player, addr) {
        (Some(p), None) => Ok(BanKey::Account(p)),
        (None, Some(a)) => Ok(BanKey::Addr(a)),
        _ => Err(err(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "give exactly one of \"player\" and \"addr\"",
        )),
    }
}

async fn serve_admin(s: Arc<Shared>, l: StdListener, inbox: mpsc::Sender<Inbox>) {
    let l = match TcpListener::from_std(l) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin listener");
            return;
        }
    };
    let a = Admin { s, inbox };
    let app = Router::new()
        .route(
            "/v1/role",
            get(|AxState(a): AxState<Admin>| async move {
                let st = a.s.node.stats();
                Json(serde_json::json!({ "role": format!("{:?}", a.s.node.role()),
                    "writable": a.s.node.is_writable(), "epoch": st.epoch,
                    "slave_connected": st.slave_connected }))
            }),
        )
        .route(
            "/v1/stats",
            get(|AxState(a): AxState<Admin>, h: HeaderMap| async move {
                a.ask(&h, AdminCmd::Stats).await
            }),
        )
        .route(
            "/v1/players/:id",
            get(
                |AxState(a): AxState<Admin>, h: HeaderMap, Path(player): Path<u64>| async move {
                    a.ask(&h, AdminCmd::Player { player }).await
                },
            ),
        )
        .route(
            "/v1/kick",
            post(
                |AxState(a): AxState<Admin>, h: HeaderMap, Json(b): Json<KickBody>| async move {
                    let cmd = AdminCmd::Kick {
                        player: b.player,
                        reason: b.reason,
                        ban_ms: b.ban_ms,
                    };
                    a.ask(&h, cmd).await
                },
            ),
        )
        .route(
            "/v1/blacklist",
            get(|AxState(a): AxState<Admin>, h: HeaderMap| async move {
                a.ask(&h, AdminCmd::Bans).await
            })
            .post(
                |AxState(a): AxState<Admin>, h: HeaderMap, Json(b): Json<BanBody>| async move {
                    let key = match ban_key(b.player, b.addr) {
                        Ok(k) => k,
                        Err(r) => return r,
                    };
                    let cmd = AdminCmd::Ban {
                        key,
                        reason: b.reason,
                        ttl_ms: b.ttl_ms,
                    };
                    a.ask(&h, cmd).await
                },
            ),
        )
        .route(
            "/v1/blacklist/remove",
            post(
                |AxState(a): AxState<Admin>, h: HeaderMap, Json(b): Json<BanBody>| async move {
                    match ban_key(b.player, b.addr) {
                        Ok(key) => a.ask(&h, AdminCmd::Unban { key }).await,
                        Err(r) => r,
                    }
                },
            ),
        )
        .route(
            "/v1/broadcast",
            post(
                |AxState(a): AxState<Admin>, h: HeaderMap, Json(b): Json<BroadcastBody>| async move {
                    if b.text.len() > NOTICE_TEXT_BYTES_MAX {
                        return err(StatusCode::BAD_REQUEST, "bad_request",
                            format!("text over {NOTICE_TEXT_BYTES_MAX} bytes"));
                    }
                    let targets = match (b.channel, b.players) {
                        (None, None) => Targets::All,
                        (Some(c), None) => Targets::Channel(c),
                        (None, Some(p)) if p.len() <= super::core::LIST_PLAYERS_MAX => Targets::Players(p),
                        _ => return err(StatusCode::BAD_REQUEST, "bad_request",
                            "give \"channel\" or \"players\" (at most 10,000), or neither for everyone"),
                    };
                    a.ask(&h, AdminCmd::Broadcast { targets, text: b.text }).await
                },
            ),
        )
        .with_state(a);
    if let Err(e) = axum::serve(l, app).await {
        tracing::error!(error = %e, "admin HTTP ended");
    }
}
