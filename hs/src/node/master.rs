//! The master's side: accept the slave, decide how it catches up, stream the
//! log to it (rate-limited until it is live), watch its heartbeat.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tracing::Instrument;

use super::net::{
    challenge, kind_name, read_first, write_data, write_first, write_frame, FrameReader, Handshake,
    NetError, Pending,
};
use super::{Event, Outcome, Shared};
use crate::proto::catchup::{decide, Decision, MasterView, SlaveView};
use crate::proto::frame::{code, Action, Frame};
use crate::proto::role::{
    after_call, after_renewal, lease_holds, may_fence, should_call_peer, Lease, Renewal,
};
use crate::proto::stream::{MasterConfig, MasterEvent, MasterStream, MasterTransmit};

/// How long a connecting slave has to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Lag samples kept (one per millisecond at most): covers at least 4 s of lag.
const LAG_SAMPLES_MAX: usize = 4096;
/// Connections at the replication port not yet proven (no valid Hello yet, or no
/// valid Auth with a secret). Each costs a task, a socket and a 256 KiB read
/// buffer for up to `HELLO_TIMEOUT`; past the cap the oldest is closed.
pub(crate) const HANDSHAKES_MAX: usize = 8;
/// Largest first frame from an unproven peer: a Hello with 256 epochs is 3,135 bytes.
pub(crate) const HANDSHAKE_FRAME_BYTES_MAX: usize = 4096;

/// A connection whose Hello was read (and proven, with a secret): only now may
/// it replace the current slave.
struct Proven {
    reader: FrameReader,
    wr: tokio::net::tcp::OwnedWriteHalf,
    addr: SocketAddr,
    hs: Option<Handshake>,
    node: u64,
    history: u128,
    epoch: u32,
    tail: u64,
    epochs: Vec<(u32, u64)>,
}

/// Serves as master until shutdown or a step-down (fenced, lease lost, handed over).
pub async fn run(s: Arc<Shared>, listener: Arc<tokio::net::TcpListener>) -> Outcome {
    let epoch = s.log.meta().epoch;
    *s.master_addr.lock() = *s.local_addr.lock();
    let mut helpers = Vec::new();
    if let Some(w) = s.cfg.witness {
        helpers.push(AbortOnDrop(tokio::spawn(renew_with_witness(
            s.clone(),
            w,
            epoch,
        ))));
    }
    if s.lease.required {
        helpers.push(AbortOnDrop(tokio::spawn(watch_lease(s.clone()))));
    }
    if let Some(peer) = s.cfg.peer {
        helpers.push(AbortOnDrop(tokio::spawn(look_for_a_newer_master(
            s.clone(),
            peer,
            epoch,
        ))));
    }
    let mut current: Option<tokio::task::JoinHandle<()>> = None;
    let mut conn_id = 0u64;
    let mut pending = Pending::new(HANDSHAKES_MAX);
    let (proven_tx, mut proven_rx) = tokio::sync::mpsc::channel::<Proven>(HANDSHAKES_MAX);
    // Aborted with this loop: a handshake never outlives the master role.
    let mut handshakes = tokio::task::JoinSet::new();
    let out = loop {
        let shutdown = s.shutdown_notify.notified();
        let step_down = s.step_down_notify.notified();
        if s.is_shutdown() {
            break Outcome::Shutdown;
        }
        if let Some(why) = s.step_down.lock().take() {
            break Outcome::SteppedDown(why);
        }
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, addr)) => {
                    if pending.make_room() {
                        tracing::debug!(%addr, "too many connections still saying Hello; closed the oldest");
                    }
                    let (s2, tx) = (s.clone(), proven_tx.clone());
                    let h = handshakes.spawn(async move {
                        match handshake(&s2, stream, addr).await {
                            Ok(Some(p)) => {
                                let _ = tx.send(p).await;
                            }
                            Ok(None) => {}
                            Err(e) => {
                                // The current slave is untouched: an unproven peer changes nothing.
                                tracing::warn!(%addr, error = %e, "connection refused before it became the slave");
                                s2.link.frames_rejected.fetch_add(1, Ordering::Relaxed);
                                s2.emit(Event::FrameRejected { reason: format!("{addr}: {e}") });
                            }
                        }
                    });
                    pending.push(h);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(p) = proven_rx.recv() => {
                conn_id += 1;
                // One slave at a time: a newcomer that proved itself (a slave that
                // reconnected before its old connection timed out) replaces the old one.
                if let Some(old) = current.take() {
                    old.abort();
                    let _ = old.await;
                    tracing::info!(addr = %p.addr, "a new slave connection replaces the previous one");
                }
                let s2 = s.clone();
                let addr = p.addr;
                let span = tracing::info_span!("slave_conn", id = conn_id, %addr);
                current = Some(tokio::spawn(async move {
                    let guard = ConnectedGuard(s2.clone());
                    let r = session(&s2, p).await;
                    // Flags first, so whoever sees the event also sees them cleared.
                    drop(guard);
                    match r {
                        Ok(()) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "slave connection ended");
                            let rejected = e.is_rejection();
                            if rejected {
                                s2.link.frames_rejected.fetch_add(1, Ordering::Relaxed);
                                s2.emit(Event::FrameRejected { reason: e.to_string() });
                            }
                            s2.emit(Event::SlaveLost { node: 0, reason: e.to_string() });
                        }
                    }
                }.instrument(span)));
            }
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            _ = step_down => {}
            _ = shutdown => break Outcome::Shutdown,
        }
    };
    handshakes.abort_all();
    s.writable.store(false, Ordering::Release);
    if let Some(old) = current.take() {
        old.abort();
        let _ = old.await;
    }
    drop(helpers);
    out
}

/// Renews the lease with the witness every heartbeat tick; a refusal naming a
/// newer epoch means another node is master: step down.
async fn renew_with_witness(s: Arc<Shared>, w: SocketAddr, epoch: u32) {
    let hb = Duration::from_millis(s.cfg.heartbeat_interval_ms);
    let cfg = s.role_config();
    // The connection of the latest granted renewal, held open until the next
    // one is answered: the witness takes its close (this process's death) as
    // proof beside a refusal it confirms itself.
    let mut _held: Option<super::witness::HeldLink> = None;
    loop {
        let sent = s.now_ns();
        let req = crate::proto::witness::Request::Renew {
            pair: s.cfg.pair_id,
            node: s.node_id,
            epoch,
            // Where the witness tries this master itself when a slave reports it refused.
            addr: *s.local_addr.lock(),
            // What the slave holds: the witness refuses a promotion from a log below it.
            acked: s.log_mark(s.progress.acked_received.load(Ordering::Acquire)),
        };
        let answer = super::witness::renew_held(w, req, hb, s.cfg.secret.as_ref()).await;
        let answer = answer.map(|(r, link)| {
            if r.granted {
                _held = Some(link);
            }
            r
        });
        match after_renewal(&cfg, epoch, sent, answer.as_ref()) {
            Renewal::Extend(until) => s.renew_lease(until),
            Renewal::StepDown(why) => {
                s.request_step_down(why);
                return;
            }
            Renewal::Nothing => match answer {
                Some(r) => tracing::warn!(
                    epoch = r.epoch,
                    holder = r.holder,
                    "witness refused the lease renewal"
                ),
                None => tracing::debug!("witness unreachable"),
            },
        }
        tokio::time::sleep(hb).await;
    }
}

/// Calls the peer every tick while no slave acknowledges (no ack for
/// `CALL_AFTER_QUIET_TICKS` ticks), with the Hello a slave would send.
/// Two things come of it:
/// - the peer learns this master lives: a slave whose link to it broke and whose
///   connections are refused (a relay, a REJECT rule) does not take that for a
///   dead process while the calls arrive (`election::Verdict::Confirm`);
/// - a peer that promoted anyway (with a witness's grant, or the split risk
///   accepted) answers Welcome with its newer epoch: this master is stale and
///   steps down (then follows it). A peer at an older epoch is fenced by the Hello.
async fn look_for_a_newer_master(s: Arc<Shared>, peer: SocketAddr, epoch: u32) {
    let tick = Duration::from_millis(s.cfg.heartbeat_interval_ms);
    let cfg = s.role_config();
    loop {
        tokio::time::sleep(tick).await;
        let heard = s.link.last_slave_frame_ns.load(Ordering::Acquire);
        if !should_call_peer(&cfg, s.now_ns(), heard) {
            continue;
        }
        let ask = async {
            let stream = TcpStream::connect(peer).await.ok()?;
            stream.set_nodelay(true).ok()?;
            let (rd, mut wr) = stream.into_split();
            let mut reader = FrameReader::new(rd, HANDSHAKE_FRAME_BYTES_MAX);
            let mut hs = super::net::await_challenge(&mut reader, s.cfg.secret.as_ref())
                .await
                .ok()?;
            let log = &s.log;
            let hello = Frame::Hello {
                node: s.node_id,
                history: log.meta().history,
                epoch,
                last_epoch: log.last_epoch(),
                tail: log.tail(),
                role: 1,
                epochs: log.epochs().as_slice().to_vec(),
            };
            write_first(&mut wr, &hs, &hello).await.ok()?;
            read_first(&mut reader, &mut hs).await.ok()
        };
        // One call at a time; a call that hangs ends before the next is due.
        let answer = tokio::time::timeout(tick.max(Duration::from_millis(100)), ask)
            .await
            .ok()
            .flatten();
        if let Some(Frame::Welcome {
            epoch: theirs,
            node,
            ..
        }) = answer
        {
            if let Some(why) = after_call(epoch, theirs, node) {
                s.request_step_down(format!("{why} (at {peer})"));
                return;
            }
        }
    }
}

/// Keeps `writable` in step with the lease. A master whose lease ran out steps
/// down: by then its slave may have been promoted.
async fn watch_lease(s: Arc<Shared>) {
    // A fresh master gets one lease period to hear from its slave or the witness.
    s.renew_lease(Lease::start(&s.role_config(), true, s.now_ns()).until_ns);
    loop {
        let until = s.lease.until_ns.load(Ordering::Acquire);
        let now = s.now_ns();
        if !lease_holds(true, until, now) {
            s.request_step_down(
                "lease expired: neither the slave nor the witness confirmed this master in time"
                    .into(),
            );
            return;
        }
        let renewed = s.lease.notify.notified();
        if !s.demoting.load(Ordering::Acquire) && !s.poisoned() {
            s.writable.store(true, Ordering::Release);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_nanos(until - now)) => {}
            _ = renewed => {}
        }
    }
}

/// Clears the connected flags when a session ends, however it ends.
struct ConnectedGuard(Arc<Shared>);
impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.0.link.slave_connected.store(false, Ordering::Release);
        self.0.link.catching_up.store(false, Ordering::Release);
        self.0.log.pin(u64::MAX);
        self.0.acks_moved();
    }
}

/// Reads (and, with a secret, proves) a connection's Hello, and refuses what must
/// not touch the current slave or the role. `Ok(Some)`: it may become the slave.
async fn handshake(
    s: &Arc<Shared>,
    stream: TcpStream,
    addr: SocketAddr,
) -> Result<Option<Proven>, NetError> {
    stream.set_nodelay(true)?;
    let (rd, mut wr) = stream.into_split();
    let mut reader = FrameReader::new(rd, HANDSHAKE_FRAME_BYTES_MAX);
    let first = tokio::time::timeout(HELLO_TIMEOUT, async {
        let mut hs = challenge(&mut wr, s.cfg.secret.as_ref()).await?;
        let f = read_first(&mut reader, &mut hs).await?;
        Ok::<_, NetError>((hs, f))
    })
    .await
    .map_err(|_| NetError::Protocol("no Hello within 5 s".into()));
    let (hs, hello) = match first {
        Ok(Ok(x)) => x,
        Ok(Err(e @ NetError::Unauthenticated(_))) => {
            let _ = write_frame(
                &mut wr,
                &Frame::Error {
                    code: code::UNAUTHENTICATED,
                    message:
                        "prove you hold this pair's secret (set the same `secret` on both nodes)"
                            .into(),
                },
            )
            .await;
            return Err(e);
        }
        Ok(Err(e)) | Err(e) => return Err(e),
    };
    let Frame::Hello {
        node,
        history,
        epoch,
        tail,
        epochs,
        ..
    } = hello
    else {
        let _ = write_first(
            &mut wr,
            &hs,
            &Frame::Error {
                code: code::MALFORMED,
                message: "expected Hello".into(),
            },
        )
        .await;
        return Err(NetError::Protocol(format!(
            "expected Hello, got {}",
            kind_name(&hello)
        )));
    };
    let mine = s.log.meta();
    if epoch > mine.epoch {
        // Only the pair's other node may fence this master. A lone master has none;
        // without a secret, a known peer is known by its id.
        if let Err(why) = may_fence(s.cfg.peer.is_some(), hs.is_some(), mine.peer, node) {
            let msg = format!("refused a Hello of epoch {epoch} from node {node} at {addr}: {why}");
            let _ = write_first(
                &mut wr,
                &hs,
                &Frame::Error {
                    code: code::FENCED,
                    message: why.into(),
                },
            )
            .await;
            return Err(NetError::Protocol(msg));
        }
    }
    Ok(Some(Proven {
        reader,
        wr,
        addr,
        hs,
        node,
        history,
        epoch,
        tail,
        epochs,
    }))
}

async fn session(s: &Arc<Shared>, p: Proven) -> Result<(), NetError> {
    let Proven {
        mut reader,
        mut wr,
        addr,
        hs,
        node,
        history,
        epoch,
        tail,
        epochs: slave_epochs,
    } = p;
    reader.set_frame_bytes_max(s.cfg.frame_bytes_max());
    let log = &s.log;
    let meta = log.meta();
    let epochs = log.epochs();
    let view = MasterView {
        history: meta.history,
        epoch: meta.epoch,
        epochs: &epochs,
        first: log.first(),
        tail: log.tail(),
    };
    let decision = decide(
        view,
        SlaveView {
            history,
            epoch,
            tail,
            epochs: &slave_epochs,
        },
    );
    tracing::info!(
        node,
        slave_tail = tail,
        slave_epoch = epoch,
        ?decision,
        "slave said hello"
    );
    // A new standby: nothing it holds is known until its first ack (the previous
    // session's acks may describe another node or a log since cut back).
    s.forget_standby();
    let segment_bytes = meta.segment_bytes;
    // The peer's id decides which epochs each node may take: remember it.
    if node != 0 && node != s.node_id {
        log.set_ids(0, node)
            .map_err(|e| NetError::Protocol(format!("cannot record the peer's id: {e}")))?;
    }
    let my_id = s.node_id;
    let welcome = |action, start, snapshot_bytes| Frame::Welcome {
        history: meta.history,
        epoch: meta.epoch,
        segment_bytes,
        action,
        start,
        snapshot_bytes,
        node: my_id,
    };
    let start_t = Instant::now();
    let mut snapshot = None;
    let start = match decision {
        Decision::Fenced { slave_epoch } => {
            let msg = format!(
                "peer has seen epoch {slave_epoch}, this master is at {}: it is stale",
                meta.epoch
            );
            let _ = write_first(
                &mut wr,
                &hs,
                &Frame::Error {
                    code: code::FENCED,
                    message: msg.clone(),
                },
            )
            .await;
            s.request_step_down(msg.clone());
            return Err(NetError::Protocol(msg));
        }
        Decision::Continue { from } => {
            write_first(&mut wr, &hs, &welcome(Action::Continue, from, 0)).await?;
            from
        }
        Decision::Truncate { to } => {
            write_first(&mut wr, &hs, &welcome(Action::Truncate, to, 0)).await?;
            to
        }
        Decision::Resync => {
            // The snapshot at our first position, then the log from there. Pin it so
            // retention keeps what follows while the snapshot travels; the open file
            // stays readable even if retention deletes it meanwhile.
            let first = log.first();
            log.pin(first);
            let src = log
                .open_snapshot()
                .map_err(|e| NetError::Protocol(format!("cannot open the snapshot: {e}")))?;
            write_first(&mut wr, &hs, &welcome(Action::Resync, first, src.len())).await?;
            snapshot = Some(src);
            first
        }
    };
    let epoch = meta.epoch;
    let hb = Duration::from_millis(s.cfg.heartbeat_interval_ms);
    // The protocol (snapshot pieces, rate limit, heartbeats, the slave's
    // liveness, ack checks, lease renewals, handover) is the sans-IO
    // `MasterStream`; this task and the ack task below only move bytes.
    let st = Arc::new(Mutex::new(MasterStream::new(
        start_t,
        MasterConfig {
            epoch,
            heartbeat_interval: hb,
            dead_ticks: s.cfg.heartbeat_dead_ticks,
            catchup_rate_bytes_per_s: s.cfg.catchup_rate_bytes_per_s,
            batch_bytes_max: s.cfg.batch_bytes_max,
            frame_bytes_max: s.cfg.frame_bytes_max(),
            lease: s
                .lease
                .required
                .then(|| Duration::from_nanos(s.role_config().lease_ns())),
        },
        start,
        snapshot.as_ref().map(|src| src.len()),
    )));
    // The slave's acknowledgements are read and applied on their own task, so
    // a publisher waiting for one never waits behind a write to the socket.
    let (closed_tx, mut closed_rx) = tokio::sync::oneshot::channel::<NetError>();
    let (s_ack, st_ack) = (s.clone(), st.clone());
    let ack_task = tokio::spawn(async move {
        let err = loop {
            let f = match reader.next().await {
                Ok(f) => f,
                Err(e) => break e,
            };
            s_ack
                .link
                .last_slave_frame_ns
                .store(s_ack.now_ns(), Ordering::Release);
            let mut g = st_ack.lock();
            let was_streaming = g.is_streaming();
            match g.handle_frame(&f, s_ack.log.tail()) {
                Ok(lease_until) => {
                    let (received, flushed, applied) = g.acked();
                    let woke = !was_streaming && g.is_streaming();
                    drop(g);
                    if let Some(until) = lease_until {
                        s_ack.renew_lease(until);
                    }
                    s_ack
                        .progress
                        .acked_received
                        .fetch_max(received, Ordering::AcqRel);
                    s_ack
                        .progress
                        .acked_flushed
                        .fetch_max(flushed, Ordering::AcqRel);
                    s_ack
                        .progress
                        .acked_applied
                        .fetch_max(applied, Ordering::AcqRel);
                    s_ack.acks_moved();
                    if woke || s_ack.handover.load(Ordering::Acquire) {
                        // The session waits for these acks (the snapshot loaded, a handover).
                        s_ack.data_notify.notify_one();
                    }
                }
                Err(e) => break e.into(),
            }
        };
        let _ = closed_tx.send(err);
    });
    let _abort_acks = AbortOnDrop(ack_task);
    let snapshot = snapshot.map(Arc::new);
    if snapshot.is_none() {
        start_streaming(s, node, addr, start);
    }
    let mut samples: VecDeque<(u64, u64, Instant)> = VecDeque::new();
    loop {
        if s.is_shutdown() {
            return Ok(());
        }
        if let Ok(e) = closed_rx.try_recv() {
            return Err(e);
        }
        let now = Instant::now();
        let tail = log.tail();
        let (tx, wake_at) = {
            let mut g = st.lock();
            g.handle_timeout(now)?;
            let tx = g.poll_transmit(now, tail, s.handover.load(Ordering::Acquire));
            let wake_at = g.poll_timeout(now, tail);
            while let Some(ev) = g.poll_event() {
                match ev {
                    MasterEvent::SnapshotLoaded { pos } => start_streaming(s, node, addr, pos),
                    MasterEvent::CaughtUp { pos } => {
                        s.link.catching_up.store(false, Ordering::Relaxed);
                        tracing::info!(
                            pos,
                            bytes = pos - start,
                            secs = start_t.elapsed().as_secs_f64(),
                            "slave caught up; streaming live"
                        );
                        s.emit(Event::SlaveCaughtUp { node, pos });
                    }
                    MasterEvent::HandedOver { .. } => {}
                }
            }
            (tx, wake_at)
        };
        match tx {
            Some(MasterTransmit::Heartbeat) => {
                // Every tick, even while streaming: the slave echoes `sent_ns` in
                // its acks, which is what renews the lease.
                let hb = Frame::Heartbeat {
                    epoch,
                    tail,
                    flushed: log.flushed(),
                    sent_ns: s.now_ns(),
                };
                write_frame(&mut wr, &hb).await?;
                update_lag(s, &mut samples, now);
            }
            Some(MasterTransmit::Snapshot { offset, len }) => {
                // Read off the runtime, one piece at a time: memory stays at one
                // piece whatever the state's size.
                let src = snapshot.clone().expect("a snapshot to send");
                let piece = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; len as usize];
                    src.read_at(offset, &mut buf).map(|()| buf)
                })
                .await
                .map_err(|e| NetError::Protocol(format!("reading the snapshot: {e}")))?
                .map_err(|e| NetError::Protocol(format!("reading the snapshot: {e}")))?;
                let f = Frame::Snapshot {
                    offset,
                    bytes: bytes::Bytes::from(piece),
                };
                write_frame(&mut wr, &f).await?;
                st.lock().snapshot_sent(len);
            }
            Some(MasterTransmit::Data { pos, max_bytes }) => {
                let chunk = match log.read(pos, max_bytes) {
                    Ok(Some(c)) => c,
                    Ok(None) => continue,
                    Err(e) => {
                        return Err(NetError::Protocol(format!(
                            "cannot read the log at {pos}: {e}"
                        )))
                    }
                };
                write_data(&mut wr, chunk.pos, epoch, tail, chunk.bytes()).await?;
                let sent = chunk.pos + chunk.len as u64;
                let live = {
                    let mut g = st.lock();
                    g.data_sent(Instant::now(), pos, sent);
                    g.is_live()
                };
                s.progress.sent.store(sent, Ordering::Release);
                log.pin(
                    s.progress
                        .acked_received
                        .load(Ordering::Relaxed)
                        .max(start)
                        .min(sent),
                );
                if !live {
                    let done = sent - start;
                    s.link.catchup_done.store(done, Ordering::Relaxed);
                    let secs = start_t.elapsed().as_secs_f64();
                    if secs > 0.0 {
                        s.link
                            .catchup_rate
                            .store((done as f64 / secs) as u64, Ordering::Relaxed);
                    }
                }
                if samples
                    .back()
                    .is_none_or(|b| now.duration_since(b.2) >= Duration::from_millis(1))
                {
                    if samples.len() >= LAG_SAMPLES_MAX {
                        samples.pop_front();
                    }
                    samples.push_back((
                        sent,
                        s.progress.records_published.load(Ordering::Relaxed),
                        now,
                    ));
                }
            }
            Some(MasterTransmit::Handover { tail }) => {
                // Planned switchover: writes are stopped and the slave has applied
                // everything. It takes over; this node steps down and will follow it.
                write_frame(&mut wr, &Frame::Handover { epoch, tail }).await?;
                tracing::info!(pos = tail, "handed over to the slave");
                s.handover.store(false, Ordering::Release);
                // This node takes over again only after a whole silence
                // from now (`role::consider`): the slave promotes on the
                // Handover without the witness, which still holds this node.
                s.link.handed_over_ns.store(s.now_ns(), Ordering::Release);
                s.request_step_down(format!("planned switchover at {tail}"));
                return Ok(());
            }
            None => {
                // A record due within `spin_us` is sent without a wake-up.
                if st.lock().is_streaming() && spin_until(s.cfg.spin_us, || log.tail() > tail) {
                    continue;
                }
                // Park until a publisher (or an ack the session waits for) wakes
                // us, the next tick or rate-limit refill is due, or the slave goes.
                s.sender_parked.store(true, Ordering::SeqCst);
                if log.tail() > tail && st.lock().is_streaming() {
                    s.sender_parked.store(false, Ordering::SeqCst);
                    continue;
                }
                let shutdown = s.shutdown_notify.notified();
                if s.is_shutdown() {
                    return Ok(());
                }
                tokio::select! {
                    _ = s.data_notify.notified() => {}
                    _ = tokio::time::sleep_until(wake_at.into()) => {}
                    r = &mut closed_rx => {
                        s.sender_parked.store(false, Ordering::SeqCst);
                        return Err(r.unwrap_or(NetError::Closed));
                    }
                    _ = shutdown => {}
                }
                s.sender_parked.store(false, Ordering::SeqCst);
            }
        }
    }
}

/// The slave holds everything before `start`: records follow from there.
fn start_streaming(s: &Shared, node: u64, addr: SocketAddr, start: u64) {
    s.log.pin(start);
    s.link.slave_connected.store(true, Ordering::Release);
    s.emit(Event::SlaveConnected {
        node,
        addr,
        from: start,
    });
    s.progress.sent.store(start, Ordering::Release);
    s.link
        .catchup_total
        .store(s.log.tail().saturating_sub(start), Ordering::Relaxed);
    s.link.catchup_done.store(0, Ordering::Relaxed);
    s.link.catching_up.store(true, Ordering::Relaxed);
}

/// Checks `ready()` until it holds or `spin_us` microseconds have passed;
/// returns whether it became ready. Between checks the thread yields its core
/// (a thread that is ready to run there, the publisher say, goes first: on a
/// machine short of cores a pure spin would delay the very record it waits
/// for). Bounded by the clock.
pub(super) fn spin_until(spin_us: u64, mut ready: impl FnMut() -> bool) -> bool {
    if spin_us == 0 {
        return false;
    }
    let until = std::time::Instant::now() + Duration::from_micros(spin_us);
    loop {
        for _ in 0..SPIN_CHECKS_PER_YIELD {
            if ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        if std::time::Instant::now() >= until {
            return ready();
        }
        std::thread::yield_now();
    }
}

/// Checks between two yields of `spin_until` (a check is a load or a `recv`).
const SPIN_CHECKS_PER_YIELD: u32 = 16;

fn update_lag(s: &Shared, samples: &mut VecDeque<(u64, u64, Instant)>, now: Instant) {
    let applied = s.progress.acked_applied.load(Ordering::Relaxed);
    let mut acked_records = None;
    while let Some(&(pos, records, _)) = samples.front() {
        if pos <= applied {
            acked_records = Some(records);
            samples.pop_front();
        } else {
            break;
        }
    }
    if let Some(r) = acked_records {
        s.progress.acked_records.fetch_max(r, Ordering::Relaxed);
    }
    if applied >= s.log.tail() {
        s.progress.acked_records.fetch_max(
            s.progress.records_published.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
    }
    let lag = samples
        .front()
        .map_or(0, |f| now.duration_since(f.2).as_millis() as u64);
    s.progress.lag_ms.store(lag, Ordering::Relaxed);
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
