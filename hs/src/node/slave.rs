//! The slave's side, and the candidate's: find the master (settling with the
//! peer at start-up), follow it — say where the log ends, do what the master
//! decides (continue, truncate, or resync from a snapshot), then write, apply
//! and acknowledge every batch — and decide, when it is gone, whether to take over.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tracing::Instrument;

use super::net::{
    await_challenge, challenge, read_first, write_first, write_frame, FrameReader, NetError,
};
use super::{Event, FlushPolicy, Outcome, Role, Shared};
use crate::log::for_each_checked;
use crate::log::snapshot::{for_each_entry, Incoming};
use crate::proto::election::{Cause, Rank};
use crate::proto::frame::{code, Action, Frame};
use crate::proto::role::{
    accept_welcome, after_probe, after_session, consider, promotion_granted, retry_wait,
    witness_epoch_seen, AfterSession, Follow, Heard, Probe, SessionEnd, SlaveLog, Step,
};
use crate::proto::stream::{
    Receive, SlaveAction, SlaveConfig, SlaveStream, SnapshotReceiver, StreamError,
};

/// How long connecting and the Welcome may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the probe of a lost master's port may take: refused means its
/// process is gone; no answer at all means it may be cut off.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// Follows the peer while it is master; returns when this node should take
/// over (the epoch is already durable) or on shutdown.
pub async fn run(s: Arc<Shared>, listener: Option<Arc<tokio::net::TcpListener>>) -> Outcome {
    let Some(peer) = s.cfg.peer else {
        // A lone master that lost its lease: nobody to follow; the witness decides.
        return lone(&s).await;
    };
    let _answer = listener
        .as_ref()
        .map(|l| AbortOnDrop(tokio::spawn(answer_hellos(s.clone(), l.clone()))));
    let can_promote = listener.is_some();
    let min = Duration::from_millis(s.cfg.reconnect_backoff_min_ms.max(1));
    let max = Duration::from_millis(
        s.cfg
            .reconnect_backoff_max_ms
            .max(s.cfg.reconnect_backoff_min_ms)
            .max(1),
    );
    let mut backoff = min;
    let mut attempt = 0u64;
    // The highest epoch the witness said it holds for the pair.
    let mut witness_epoch = 0;
    while !s.is_shutdown() {
        attempt += 1;
        let span = tracing::info_span!("master_conn", attempt, %peer);
        let r = async {
            let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(peer)).await
            {
                Err(_) => return Err(Failure::new(End::ConnectTimeout)),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Err(Failure::new(End::ConnectRefused))
                }
                Ok(Err(e)) => return Err(e.into()),
                Ok(Ok(st)) => st,
            };
            follow(&s, stream, &mut backoff, min).await
        }
        .instrument(span)
        .await;
        if s.poisoned() {
            return Outcome::Shutdown;
        }
        if s.role.load(Ordering::Acquire) == Role::Slave.to_u8() {
            s.set_role(Role::Candidate, "lost the master");
        }
        let mut peer_epoch = 0;
        let next = match r {
            Ok(End::Shutdown) => return Outcome::Shutdown,
            Ok(End::Handover) => AfterSession::Consider(Cause::Handover),
            Ok(_) => AfterSession::Retry,
            Err(Failure {
                err,
                connected,
                end,
            }) => {
                if s.is_shutdown() {
                    return Outcome::Shutdown;
                }
                if err.is_rejection() {
                    s.link.frames_rejected.fetch_add(1, Ordering::Relaxed);
                    s.emit(Event::FrameRejected {
                        reason: err.to_string(),
                    });
                }
                if connected {
                    tracing::warn!(error = %err, "lost the master");
                    s.emit(Event::MasterLost {
                        reason: err.to_string(),
                    });
                } else {
                    tracing::debug!(error = %err, ?backoff, "no master at the peer yet");
                }
                s.link.reconnects.fetch_add(1, Ordering::Relaxed);
                let end = match end {
                    End::PeerStatus(rank, following) => {
                        peer_epoch = rank.epoch;
                        SessionEnd::PeerStatus { rank, following }
                    }
                    End::Silent => SessionEnd::Silent,
                    End::Closed => SessionEnd::Closed,
                    End::ConnectRefused => SessionEnd::ConnectRefused,
                    End::ConnectTimeout => SessionEnd::ConnectTimeout,
                    End::Shutdown | End::Handover | End::Other => SessionEnd::Other,
                };
                match after_session(end, connected, connected_before(&s), my_rank(&s)) {
                    AfterSession::Probe => {
                        let p = match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(peer))
                            .await
                        {
                            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                                Probe::Refused
                            }
                            Ok(_) => Probe::Answered,
                            Err(_) => Probe::NoAnswer,
                        };
                        after_probe(p)
                    }
                    next => next,
                }
            }
        };
        let cause = match next {
            AfterSession::Consider(c) => Some(c),
            AfterSession::Probe | AfterSession::Retry => None,
        };
        if let (Some(cause), true) = (cause, can_promote) {
            if let Some(why) = try_promote(&s, cause, peer_epoch, &mut witness_epoch).await {
                return Outcome::Promoted(why);
            }
        }
        // Created before the flag is checked, so a shutdown in between is not missed.
        let shutdown = s.shutdown_notify.notified();
        if s.is_shutdown() {
            return Outcome::Shutdown;
        }
        // A promotion that was refused (the witness still hears the master, or the
        // peer outranks us) is retried within a tick, not after a long backoff.
        let wait = retry_wait(&s.role_config(), cause.is_some(), backoff, min);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown => return Outcome::Shutdown,
        }
        backoff = (backoff * 2).min(max);
    }
    Outcome::Shutdown
}

/// A lone master (no `peer`) that stepped down (its lease ran out, or the witness
/// fenced it): it asks the witness to serve again every tick, until shutdown.
async fn lone(s: &Arc<Shared>) -> Outcome {
    let tick = Duration::from_millis(s.cfg.heartbeat_interval_ms);
    let mut witness_epoch = 0;
    loop {
        let shutdown = s.shutdown_notify.notified();
        if s.is_shutdown() || s.poisoned() {
            return Outcome::Shutdown;
        }
        if let Some(why) = try_promote(s, Cause::PeerUnreachable, 0, &mut witness_epoch).await {
            return Outcome::Promoted(why);
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown => return Outcome::Shutdown,
        }
    }
}

/// Whether this node has followed a master since it started (a refused
/// connection then means that master died, not that the peer is not up yet).
fn connected_before(s: &Shared) -> bool {
    s.master_addr.lock().is_some()
}

fn my_rank(s: &Shared) -> Rank {
    let meta = s.log.meta();
    Rank {
        epoch: meta.epoch,
        last_epoch: s.log.last_epoch(),
        tail: s.log.tail(),
        prefer_master: s.prefer_master,
        node: s.node_id,
    }
}

/// Decides on promotion for `cause`, asking the witness where the policy says
/// so; on yes, makes epoch+1 durable before anything is served in it.
async fn try_promote(
    s: &Arc<Shared>,
    cause: Cause,
    peer_epoch: u32,
    witness_epoch: &mut u32,
) -> Option<String> {
    let cfg = s.role_config();
    let heard = Heard {
        now_ns: s.now_ns(),
        last_master_frame_ns: s.link.last_master_frame_ns.load(Ordering::Acquire),
        master_called_ns: s.link.master_called_ns.load(Ordering::Acquire),
        handed_over_ns: s.link.handed_over_ns.load(Ordering::Acquire),
    };
    let meta = s.log.meta();
    let epoch = match consider(
        &cfg,
        cause,
        heard,
        meta.epoch.max(peer_epoch).max(*witness_epoch),
        s.node_id,
        meta.peer,
    ) {
        Step::Wait(why) => {
            tracing::debug!(?cause, "not promoting yet: {why}");
            return None;
        }
        Step::Refuse(why) => {
            tracing::warn!(?cause, "not promoting: {why}");
            return None;
        }
        Step::Promote { epoch } => epoch,
        Step::AskWitness { epoch, dead } => {
            let w = s
                .cfg
                .witness
                .expect("the policy asks only when there is one");
            let sent = s.now_ns();
            let req = crate::proto::witness::Request::Promote {
                pair: s.cfg.pair_id,
                node: s.node_id,
                epoch,
                // The witness tries the master itself: a refusal it gets too is the proof.
                dead,
                // A log below what the pair acknowledged is refused.
                tail: s.log_mark(s.log.tail()),
            };
            let reply = super::witness::ask_with(
                w,
                req,
                Duration::from_millis(s.cfg.heartbeat_interval_ms.max(50) * 2),
                s.cfg.secret.as_ref(),
            )
            .await;
            *witness_epoch = witness_epoch_seen(*witness_epoch, reply.as_ref());
            match (promotion_granted(&cfg, sent, reply.as_ref()), reply) {
                (Some(until), _) => s.renew_lease(until),
                (None, Some(r)) => {
                    tracing::warn!(
                        ?cause,
                        witness_epoch = r.epoch,
                        holder = r.holder,
                        "the witness refused the promotion"
                    );
                    return None;
                }
                (None, None) => {
                    tracing::warn!(?cause, "the witness cannot be reached: not promoting");
                    return None;
                }
            }
            epoch
        }
    };
    if let Err(e) = s.log.set_epoch(epoch) {
        tracing::error!(error = %e, "cannot make the new epoch durable; not promoting");
        return None;
    }
    tracing::info!(?cause, epoch, tail = s.log.tail(), "taking over as master");
    Some(format!("promoted: {cause:?}"))
}

/// While not master, answer a peer's Hello with this node's rank, so a starting
/// peer can settle who serves. At most `HANDSHAKES_MAX` at once (the oldest is
/// closed past that); with a secret, only a proven Hello is answered.
async fn answer_hellos(s: Arc<Shared>, l: Arc<tokio::net::TcpListener>) {
    let mut pending = super::net::Pending::new(super::master::HANDSHAKES_MAX);
    // Aborted with this task (when the node becomes master): no answer outlives it.
    let mut answers = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        pending.make_room();
        while answers.try_join_next().is_some() {}
        let s2 = s.clone();
        let h = answers.spawn(async move {
            let (rd, mut wr) = stream.into_split();
            let mut reader = FrameReader::new(rd, super::master::HANDSHAKE_FRAME_BYTES_MAX);
            let _ = tokio::time::timeout(CONNECT_TIMEOUT, async {
                let mut hs = challenge(&mut wr, s2.cfg.secret.as_ref()).await?;
                if let Frame::Hello {
                    node, epoch, role, ..
                } = read_first(&mut reader, &mut hs).await?
                {
                    // A master calling: it lives, whatever its port says to us
                    // (`Verdict::Confirm`). Only the pair's other node counts, at
                    // an epoch this node has not left behind.
                    let meta = s2.log.meta();
                    let ours = hs.is_some() || meta.peer == 0 || meta.peer == node;
                    if role == 1 && ours && node != s2.node_id && epoch >= meta.epoch {
                        s2.link
                            .master_called_ns
                            .store(s2.now_ns(), Ordering::Release);
                    }
                    let r = my_rank(&s2);
                    let role = s2.role.load(Ordering::Acquire);
                    write_first(
                        &mut wr,
                        &hs,
                        &Frame::Status {
                            node: r.node,
                            epoch: r.epoch,
                            last_epoch: r.last_epoch,
                            tail: r.tail,
                            role,
                            prefer: r.prefer_master as u8,
                        },
                    )
                    .await?;
                }
                Ok::<(), NetError>(())
            })
            .await;
        });
        pending.push(h);
    }
}

/// How a session with the peer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Shutdown,
    /// The master handed over (planned switchover): take over now.
    Handover,
    /// The peer is not master; its rank, and whether it says it is a slave.
    PeerStatus(Rank, bool),
    Silent,
    Closed,
    ConnectRefused,
    ConnectTimeout,
    Other,
}

struct Failure {
    err: NetError,
    /// Whether the session got past the handshake (the master was really there).
    connected: bool,
    end: End,
}

impl Failure {
    fn new(end: End) -> Self {
        let err = match end {
            End::ConnectRefused => NetError::Protocol("connection refused".into()),
            End::ConnectTimeout => NetError::Protocol("connect timed out".into()),
            _ => NetError::Closed,
        };
        Failure {
            err,
            connected: false,
            end,
        }
    }
}

impl<E: Into<NetError>> From<E> for Failure {
    fn from(e: E) -> Self {
        let err = e.into();
        let end = match &err {
            NetError::Closed => End::Closed,
            NetError::Io(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                End::Closed
            }
            _ => End::Other,
        };
        Failure {
            err,
            connected: false,
            end,
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn proto_err(msg: impl Into<String>) -> NetError {
    NetError::Protocol(msg.into())
}

async fn follow(
    s: &Arc<Shared>,
    stream: TcpStream,
    backoff: &mut Duration,
    backoff_min: Duration,
) -> Result<End, Failure> {
    stream.set_nodelay(true)?;
    let addr = stream.peer_addr()?;
    let (rd, mut wr) = stream.into_split();
    let mut reader = FrameReader::new(rd, s.cfg.frame_bytes_max());
    let log = &s.log;
    let meta = log.meta();
    let mut hs = tokio::time::timeout(
        CONNECT_TIMEOUT,
        await_challenge(&mut reader, s.cfg.secret.as_ref()),
    )
    .await
    .map_err(|_| {
        NetError::Unauthenticated(
            "the peer sent no challenge within 3 s: is `secret` set on both nodes?".into(),
        )
    })??;
    write_first(
        &mut wr,
        &hs,
        &Frame::Hello {
            node: s.node_id,
            history: meta.history,
            epoch: meta.epoch,
            last_epoch: log.last_epoch(),
            tail: log.tail(),
            role: if s.prefer_master { 3 } else { 2 },
            epochs: log.epochs().as_slice().to_vec(),
        },
    )
    .await?;
    // With a secret, nothing in the answer (ids, epochs, rank) is used unless proven.
    let welcome = tokio::time::timeout(CONNECT_TIMEOUT, read_first(&mut reader, &mut hs))
        .await
        .map_err(|_| proto_err("no Welcome within 3 s"))??;
    let (history, epoch, segment_bytes, action, start, snapshot_bytes) = match welcome {
        Frame::Welcome {
            history,
            epoch,
            segment_bytes,
            action,
            start,
            snapshot_bytes,
            node,
        } => {
            if node != 0 && node != s.node_id {
                log.set_ids(0, node)
                    .map_err(|e| proto_err(format!("cannot record the peer's id: {e}")))?;
            }
            (history, epoch, segment_bytes, action, start, snapshot_bytes)
        }
        Frame::Status {
            node,
            epoch,
            last_epoch,
            tail,
            prefer,
            role,
        } => {
            if node != 0 && node != s.node_id {
                log.set_ids(0, node)
                    .map_err(|e| proto_err(format!("cannot record the peer's id: {e}")))?;
            }
            let rank = Rank {
                epoch,
                last_epoch,
                tail,
                prefer_master: prefer != 0,
                node,
            };
            return Err(Failure {
                err: proto_err(format!("peer is not master ({rank:?})")),
                connected: false,
                end: End::PeerStatus(rank, Role::from_u8(role) == Role::Slave),
            });
        }
        Frame::Error { code, message } => {
            return Err(proto_err(format!("master refused us (code {code}): {message}")).into())
        }
        other => return Err(proto_err(format!("expected Welcome, got {other:?}")).into()),
    };
    let follow = accept_welcome(
        SlaveLog {
            history: meta.history,
            epoch: meta.epoch,
            tail: log.tail(),
        },
        history,
        epoch,
        segment_bytes,
        action,
        start,
    );
    let follow = match follow {
        Ok(f) => f,
        Err(msg) => {
            if epoch < meta.epoch {
                // Tell the stale master why, so it steps down.
                let _ = write_frame(
                    &mut wr,
                    &Frame::Error {
                        code: code::FENCED,
                        message: msg.clone(),
                    },
                )
                .await;
            }
            return Err(proto_err(msg).into());
        }
    };
    let map_log = |e: crate::log::LogError| proto_err(format!("log: {e}"));
    // A frame the master sent while a resync's snapshot was still loading.
    let mut pending: Option<Frame> = None;
    match follow {
        Follow::Adopt => log.adopt_history(history, segment_bytes).map_err(map_log)?,
        Follow::Continue => {}
        Follow::Truncate => {
            let old = log.tail();
            let records = log.truncate(start).map_err(map_log)?;
            // The application saw records past `start`: rebuild it without them.
            s.replay()
                .map_err(|e| proto_err(format!("rebuilding the application: {e}")))?;
            tracing::warn!(
                from = start,
                to = old,
                records,
                "log diverged from the master's; rolled back"
            );
            s.emit(Event::RolledBack {
                from: start,
                to: old,
                records,
            });
        }
        Follow::Resync => {
            let keys = resync(
                s,
                &mut reader,
                &mut wr,
                epoch,
                history,
                start,
                snapshot_bytes,
                segment_bytes,
                &mut pending,
            )
            .await?;
            tracing::info!(pos = start, keys, "resynced from the master's snapshot");
            s.emit(Event::Resynced { pos: start, keys });
        }
    }
    if epoch > log.meta().epoch {
        log.set_epoch(epoch).map_err(map_log)?;
    }
    if action != Action::Continue {
        // The log was cut back or replaced: positions heard before describe
        // another log (a master's tail above ours would hide CaughtUp forever).
        s.forget_standby();
        s.progress.master_tail.store(start, Ordering::Release);
    } else {
        // Continuing at our own tail: the application holds everything before it
        // (replayed, applied as a slave, or published by it as a master).
        s.progress.applied.fetch_max(start, Ordering::AcqRel);
    }
    *backoff = backoff_min;
    *s.master_addr.lock() = Some(addr);
    s.set_role(Role::Slave, "following the master");
    s.emit(Event::MasterConnected { addr, from: start });
    tracing::info!(from = start, epoch, "following the master");
    stream_loop(s, &mut reader, &mut wr, epoch, pending)
        .await
        .map_err(|err| {
            let end = match &err {
                NetError::Closed => End::Closed,
                NetError::Io(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::BrokenPipe
                            | std::io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    End::Closed
                }
                NetError::Stream(StreamError::Silent { .. }) => End::Silent,
                _ => End::Other,
            };
            Failure {
                err,
                connected: true,
                end,
            }
        })
}

/// Receives the master's snapshot (`snapshot_bytes` at `start`) piece by piece
/// into a temporary snapshot file — never more than one piece in memory — and
/// acknowledges the master's heartbeats meanwhile (the master's lease runs on
/// them); then replaces the log with it and loads it into the application in
/// one streaming pass. Returns the number of keys.
#[allow(clippy::too_many_arguments)]
async fn resync(
    s: &Arc<Shared>,
    reader: &mut FrameReader,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    epoch: u32,
    history: u128,
    start: u64,
    snapshot_bytes: u64,
    segment_bytes: u64,
    pending: &mut Option<Frame>,
) -> Result<u64, Failure> {
    let log = &s.log;
    let mut rx = SnapshotReceiver::new(epoch, start, snapshot_bytes, s.cfg.snapshot_bytes_max)
        .map_err(NetError::Stream)?;
    let io = |e: std::io::Error| proto_err(format!("writing the snapshot: {e}"));
    s.link.resync_received.store(0, Ordering::Relaxed);
    let mut inc = Incoming::create(log.config().storage.clone(), log.dir(), start).map_err(io)?;
    let stall =
        Duration::from_millis(s.cfg.heartbeat_interval_ms * s.cfg.heartbeat_dead_ticks as u64)
            .max(CONNECT_TIMEOUT);
    while !rx.is_complete() {
        let f = tokio::time::timeout(stall, reader.next())
            .await
            .map_err(|_| proto_err("snapshot transfer stalled"))??;
        s.link
            .last_master_frame_ns
            .store(s.now_ns(), Ordering::Release);
        match rx.handle_frame(f).map_err(NetError::Stream)? {
            Receive::Piece(bytes) => {
                s.link
                    .resync_buffer_max
                    .fetch_max(bytes.len() as u64, Ordering::Relaxed);
                inc.write(&bytes).map_err(io)?;
                s.link
                    .resync_received
                    .store(rx.received(), Ordering::Relaxed);
            }
            Receive::Echo(ack) => {
                s.link.resync_heartbeats.fetch_add(1, Ordering::Relaxed);
                write_frame(wr, &ack).await?;
            }
            Receive::Hold(_) => unreachable!("held only once the snapshot is whole"),
        }
    }
    // Checking, storing and loading a large snapshot takes a while: on a
    // blocking thread, while this task goes on acknowledging heartbeats (the
    // master streams nothing else until this node acknowledges `start`).
    let s2 = s.clone();
    let load = tokio::task::spawn_blocking(move || -> Result<u64, NetError> {
        let (tmp, head) = inc
            .finish()
            .map_err(|e| proto_err(format!("snapshot from master: {e}")))?;
        if head.pos != start || head.history != history {
            let _ = s2.log.config().storage.remove(&tmp);
            return Err(proto_err("snapshot does not match the Welcome"));
        }
        s2.log
            .reset_to_file(&head, &tmp, segment_bytes)
            .map_err(|e| proto_err(format!("log: {e}")))?;
        let path = s2.log.dir().join(crate::log::snapshot::file_name(start));
        let mut app = s2.app.lock();
        s2.call_app(|| {
            app.reset();
            for_each_entry(&*s2.log.config().storage, &path, |k, v| app.restore(k, v))
        })
        .map_err(|e| proto_err(e.to_string()))?
        .map_err(|e| proto_err(format!("reading the stored snapshot: {e}")))?;
        drop(app);
        s2.progress.applied.store(start, Ordering::Release);
        Ok(head.count)
    });
    tokio::pin!(load);
    let keys = loop {
        tokio::select! {
            r = &mut load => {
                break r.map_err(|e| proto_err(format!("loading the snapshot: {e}")))??;
            }
            f = reader.next(), if pending.is_none() => {
                let f = f?;
                s.link.last_master_frame_ns.store(s.now_ns(), Ordering::Release);
                match rx.handle_frame(f).map_err(NetError::Stream)? {
                    Receive::Echo(ack) => {
                        s.link.resync_heartbeats.fetch_add(1, Ordering::Relaxed);
                        write_frame(wr, &ack).await?;
                    }
                    // Anything else waits for the load (read no further meanwhile).
                    Receive::Hold(f) => *pending = Some(f),
                    Receive::Piece(_) => unreachable!("the snapshot is whole"),
                }
            }
        }
    };
    // Loaded: the master may stream the log from `start` now.
    write_frame(wr, &rx.loaded_ack()).await?;
    Ok(keys)
}

async fn stream_loop(
    s: &Arc<Shared>,
    reader: &mut FrameReader,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    epoch: u32,
    mut pending: Option<Frame>,
) -> Result<End, NetError> {
    let log = &s.log;
    // The protocol (epochs, liveness, what to ack, a handover's check) is the
    // sans-IO `SlaveStream`; this loop moves bytes, writes and applies.
    let mut st = SlaveStream::new(
        Instant::now(),
        SlaveConfig {
            epoch,
            heartbeat_interval: Duration::from_millis(s.cfg.heartbeat_interval_ms),
            dead_ticks: s.cfg.heartbeat_dead_ticks,
        },
        s.progress.master_tail.load(Ordering::Relaxed),
    );
    let flush_each = s.cfg.flush == FlushPolicy::EveryBatch;
    loop {
        let shutdown = s.shutdown_notify.notified();
        if s.is_shutdown() {
            return Ok(End::Shutdown);
        }
        let first = if let Some(f) = pending.take() {
            Some(f)
        } else if let Some(f) = reader.spin_next(s.cfg.spin_us)? {
            Some(f)
        } else {
            tokio::select! {
            f = reader.next() => Some(f?),
            _ = tokio::time::sleep_until(st.poll_timeout().into()) => None,
            _ = shutdown => return Ok(End::Shutdown),
            }
        };
        let mut got_data = false;
        let mut next = first;
        if next.is_some() {
            s.link
                .last_master_frame_ns
                .store(s.now_ns(), Ordering::Release);
        }
        while let Some(f) = next {
            match st.handle_frame(f, log.tail(), s.progress.applied.load(Ordering::Acquire))? {
                SlaveAction::Append { pos, records } => {
                    s.progress
                        .master_tail
                        .fetch_max(st.master_tail(), Ordering::Relaxed);
                    let tail = log
                        .append_replicated(pos, &records)
                        .map_err(|e| NetError::Protocol(format!("refused data at {pos}: {e}")))?;
                    let mut n = 0u64;
                    {
                        // `append_replicated` checked every record (CRC too) before writing.
                        let mut app = s.app.lock();
                        s.call_app(|| {
                            for_each_checked(&records, pos, &mut |r| {
                                app.apply(r);
                                n += 1;
                            })
                        })
                        .map_err(|e| NetError::Protocol(e.to_string()))?;
                    }
                    s.progress.records_applied.fetch_add(n, Ordering::Relaxed);
                    s.progress.applied.store(tail, Ordering::Release);
                    got_data = true;
                }
                SlaveAction::Handover { tail } => {
                    tracing::info!(pos = tail, "the master handed over");
                    return Ok(End::Handover);
                }
                SlaveAction::None => {}
            }
            s.progress
                .master_tail
                .fetch_max(st.master_tail(), Ordering::Relaxed);
            next = reader.try_next()?;
        }
        let tail = log.tail();
        s.progress.master_tail.fetch_max(tail, Ordering::Relaxed);
        if st.reached(tail) {
            tracing::info!(pos = tail, "caught up with the master");
            s.emit(Event::CaughtUp { pos: tail });
        }
        st.handle_timeout(Instant::now())?;
        // Acknowledge each batch, and on every tick (the ack is our heartbeat).
        if got_data && flush_each {
            log.flush()
                .map_err(|e| NetError::Protocol(format!("flush: {e}")))?;
        }
        if let Some(ack) = st.poll_ack(
            tail,
            log.flushed(),
            s.progress.applied.load(Ordering::Acquire),
        ) {
            write_frame(wr, &ack).await?;
        }
    }
}
