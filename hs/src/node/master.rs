//! The master's side: accept the slave, decide how it catches up, stream the
//! log to it (rate-limited until it is live), watch its heartbeat.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
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
use crate::proto::election::{lease_ms, CALL_AFTER_QUIET_TICKS};
use crate::proto::frame::{code, Action, Frame};
use crate::proto::heartbeat::{Liveness, Tick};
use crate::proto::ratelimit::TokenBucket;

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
    if s.lease_required {
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
                                s2.frames_rejected.fetch_add(1, Ordering::Relaxed);
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
                            if matches!(e, NetError::Frame(_) | NetError::Protocol(_)) {
                                s2.frames_rejected.fetch_add(1, Ordering::Relaxed);
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
    let lease = Duration::from_millis(lease_ms(
        s.cfg.heartbeat_interval_ms,
        s.cfg.heartbeat_dead_ticks,
    ))
    .as_nanos() as u64;
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
        };
        let answer = super::witness::renew_held(w, req, hb, s.cfg.secret.as_ref()).await;
        let answer = answer.map(|(r, link)| {
            if r.granted {
                _held = Some(link);
            }
            r
        });
        match answer {
            Some(r) if r.granted => s.renew_lease(sent + lease),
            Some(r) if r.epoch > epoch => {
                s.request_step_down(format!(
                    "the witness holds epoch {} (node {}): this master is stale",
                    r.epoch, r.holder
                ));
                return;
            }
            Some(r) => tracing::warn!(
                epoch = r.epoch,
                holder = r.holder,
                "witness refused the lease renewal"
            ),
            None => tracing::debug!("witness unreachable"),
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
    let quiet_ns = (tick * CALL_AFTER_QUIET_TICKS as u32).as_nanos() as u64;
    loop {
        tokio::time::sleep(tick).await;
        let heard = s.last_slave_frame_ns.load(Ordering::Acquire);
        if heard != 0 && s.now_ns().saturating_sub(heard) < quiet_ns {
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
            if theirs > epoch {
                s.request_step_down(format!(
                    "the peer at {peer} (node {node}) serves as master at epoch {theirs}, newer than this master's {epoch}"
                ));
                return;
            }
        }
    }
}

/// Keeps `writable` in step with the lease. A master whose lease ran out steps
/// down: by then its slave may have been promoted.
async fn watch_lease(s: Arc<Shared>) {
    // A fresh master gets one lease period to hear from its slave or the witness.
    let grace = Duration::from_millis(lease_ms(
        s.cfg.heartbeat_interval_ms,
        s.cfg.heartbeat_dead_ticks,
    ))
    .as_nanos() as u64;
    s.renew_lease(s.now_ns() + grace);
    loop {
        let until = s.lease_until_ns.load(Ordering::Acquire);
        let now = s.now_ns();
        if now >= until {
            s.request_step_down(
                "lease expired: neither the slave nor the witness confirmed this master in time"
                    .into(),
            );
            return;
        }
        let renewed = s.lease_notify.notified();
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
        self.0.slave_connected.store(false, Ordering::Release);
        self.0.catching_up.store(false, Ordering::Release);
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
        let stranger = if s.cfg.peer.is_none() {
            Some("this master serves alone (no `peer`): no Hello can fence it")
        } else if hs.is_none() && mine.peer != 0 && node != mine.peer {
            Some("the Hello is not from this pair's other node")
        } else {
            None
        };
        if let Some(why) = stranger {
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
    let rate = s.cfg.catchup_rate_bytes_per_s;
    // Burst: a twentieth of a second's worth, at least one frame, so the average
    // over a catch-up of a few seconds is within a percent or two of the setting.
    let burst = (rate / 20).max(s.cfg.frame_bytes_max() as u64);
    let mut bucket = (rate > 0).then(|| TokenBucket::new(start_t, rate, burst));
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
    let lease_ns = Duration::from_millis(lease_ms(
        s.cfg.heartbeat_interval_ms,
        s.cfg.heartbeat_dead_ticks,
    ))
    .as_nanos() as u64;
    // The slave's acknowledgements arrive on their own task.
    let seen = Arc::new(AtomicU64::new(0));
    let (closed_tx, mut closed_rx) = tokio::sync::oneshot::channel::<NetError>();
    let s_ack = s.clone();
    let seen2 = seen.clone();
    let ack_task = tokio::spawn(async move {
        let err = loop {
            match reader.next().await {
                Ok(Frame::Ack {
                    received,
                    flushed,
                    applied,
                    echo_ns,
                    epoch: e,
                }) => {
                    seen2.fetch_add(1, Ordering::Relaxed);
                    s_ack
                        .last_slave_frame_ns
                        .store(s_ack.now_ns(), Ordering::Release);
                    if e != epoch {
                        break NetError::Protocol(format!(
                            "ack of epoch {e} in a session of epoch {epoch}"
                        ));
                    }
                    if s_ack.lease_required && echo_ns > 0 {
                        s_ack.renew_lease(echo_ns + lease_ns);
                    }
                    let tail = s_ack.log.tail();
                    if received > tail || applied > received || flushed > received {
                        break NetError::Protocol(format!("ack beyond what was written: received {received} flushed {flushed} applied {applied} tail {tail}"));
                    }
                    s_ack.acked_received.fetch_max(received, Ordering::AcqRel);
                    s_ack.acked_flushed.fetch_max(flushed, Ordering::AcqRel);
                    s_ack.acked_applied.fetch_max(applied, Ordering::AcqRel);
                    s_ack.acks_moved();
                    if s_ack.handover.load(Ordering::Acquire) {
                        // The session waits for these acks to hand over.
                        s_ack.data_notify.notify_one();
                    }
                }
                Ok(Frame::Error { code, message }) => {
                    break NetError::Protocol(format!("slave reported error {code}: {message}"))
                }
                Ok(other) => {
                    break NetError::Protocol(format!("unexpected frame from slave: {other:?}"))
                }
                Err(e) => break e,
            }
        };
        let _ = closed_tx.send(err);
    });
    let _abort_acks = AbortOnDrop(ack_task);

    let hb = Duration::from_millis(s.cfg.heartbeat_interval_ms);
    let mut next_tick = Instant::now() + hb;
    let mut liveness = Liveness::new(s.cfg.heartbeat_dead_ticks);
    let mut seen_last = 0u64;
    if let Some(src) = snapshot {
        let mut ticker = Ticker {
            next_tick: &mut next_tick,
            liveness: &mut liveness,
            seen: &seen,
            seen_last: &mut seen_last,
            hb,
            epoch,
        };
        send_snapshot(
            s,
            &mut wr,
            src,
            &mut ticker,
            bucket.as_mut(),
            burst,
            &mut closed_rx,
        )
        .await?;
        // The slave checks, stores and loads it before it can take records: it
        // acknowledges `start` when done (heartbeats go on meanwhile).
        while s.acked_received.load(Ordering::Acquire) < start {
            if s.is_shutdown() {
                return Ok(());
            }
            if let Ok(e) = closed_rx.try_recv() {
                return Err(e);
            }
            ticker.tick(s, &mut wr).await?;
            tokio::time::sleep(Duration::from_millis(5).min(hb)).await;
        }
    }
    log.pin(start);
    s.slave_connected.store(true, Ordering::Release);
    s.emit(Event::SlaveConnected {
        node,
        addr,
        from: start,
    });
    let mut sent = start;
    s.sent.store(sent, Ordering::Release);
    let catchup_total = log.tail().saturating_sub(start);
    s.catchup_total.store(catchup_total, Ordering::Relaxed);
    s.catchup_done.store(0, Ordering::Relaxed);
    let mut live = false;
    s.catching_up.store(true, Ordering::Relaxed);
    let mut samples: VecDeque<(u64, u64, Instant)> = VecDeque::new();
    let batch = s.cfg.batch_bytes_max;

    loop {
        if s.is_shutdown() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= next_tick {
            // Every tick, even while streaming: the slave echoes `sent_ns` in its
            // acks, which is what renews the lease.
            Ticker {
                next_tick: &mut next_tick,
                liveness: &mut liveness,
                seen: &seen,
                seen_last: &mut seen_last,
                hb,
                epoch,
            }
            .tick(s, &mut wr)
            .await?;
            update_lag(s, &mut samples, now);
        }
        if let Ok(e) = closed_rx.try_recv() {
            return Err(e);
        }
        let tail = log.tail();
        if sent < tail {
            let limited = !live && bucket.is_some();
            let max = if limited {
                batch.min(burst as usize)
            } else {
                batch
            };
            let chunk = match log.read(sent, max) {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(e) => {
                    return Err(NetError::Protocol(format!(
                        "cannot read the log at {sent}: {e}"
                    )))
                }
            };
            if limited {
                wait_tokens(s, bucket.as_mut().unwrap(), (chunk.len as u64).min(burst)).await?;
            }
            write_data(&mut wr, chunk.pos, epoch, tail, chunk.bytes()).await?;
            sent = chunk.pos + chunk.len as u64;
            s.sent.store(sent, Ordering::Release);
            log.pin(
                s.acked_received
                    .load(Ordering::Relaxed)
                    .max(start)
                    .min(sent),
            );
            if !live {
                let done = sent - start;
                s.catchup_done.store(done, Ordering::Relaxed);
                let secs = start_t.elapsed().as_secs_f64();
                if secs > 0.0 {
                    s.catchup_rate
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
                samples.push_back((sent, s.records_published.load(Ordering::Relaxed), now));
            }
            continue;
        }
        if s.handover.load(Ordering::Acquire)
            && s.acked_applied.load(Ordering::Acquire) >= sent
            && sent == log.tail()
        {
            // Planned switchover: writes are stopped and the slave has applied
            // everything. It takes over; this node steps down and will follow it.
            write_frame(&mut wr, &Frame::Handover { epoch, tail: sent }).await?;
            tracing::info!(pos = sent, "handed over to the slave");
            s.handover.store(false, Ordering::Release);
            s.request_step_down(format!("planned switchover at {sent}"));
            return Ok(());
        }
        if !live {
            live = true;
            s.catching_up.store(false, Ordering::Relaxed);
            tracing::info!(
                pos = sent,
                bytes = sent - start,
                secs = start_t.elapsed().as_secs_f64(),
                "slave caught up; streaming live"
            );
            s.emit(Event::SlaveCaughtUp { node, pos: sent });
        }
        // A record due within `spin_us` is sent without a wake-up.
        if spin_until(s.cfg.spin_us, || log.tail() > sent) {
            continue;
        }
        // Park until a publisher wakes us, the heartbeat is due, or the slave goes away.
        s.sender_parked.store(true, Ordering::SeqCst);
        if log.tail() > sent {
            s.sender_parked.store(false, Ordering::SeqCst);
            continue;
        }
        let shutdown = s.shutdown_notify.notified();
        if s.is_shutdown() {
            return Ok(());
        }
        tokio::select! {
            // Publishers, and acks while a handover waits for them, wake us here.
            _ = s.data_notify.notified() => {}
            _ = tokio::time::sleep_until(next_tick.into()) => {}
            r = &mut closed_rx => {
                s.sender_parked.store(false, Ordering::SeqCst);
                return Err(r.unwrap_or(NetError::Closed));
            }
            _ = shutdown => {}
        }
        s.sender_parked.store(false, Ordering::SeqCst);
    }
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

/// The session's heartbeat clock, shared by the snapshot transfer and the stream.
struct Ticker<'a> {
    next_tick: &'a mut Instant,
    liveness: &'a mut Liveness,
    seen: &'a AtomicU64,
    seen_last: &'a mut u64,
    hb: Duration,
    epoch: u32,
}

impl Ticker<'_> {
    /// On a due tick: checks the slave's liveness and sends a heartbeat (its
    /// echo in the slave's ack renews the lease).
    async fn tick(
        &mut self,
        s: &Shared,
        wr: &mut tokio::net::tcp::OwnedWriteHalf,
    ) -> Result<(), NetError> {
        let now = Instant::now();
        if now < *self.next_tick {
            return Ok(());
        }
        *self.next_tick = now + self.hb;
        let n = self.seen.load(Ordering::Relaxed);
        if n != *self.seen_last {
            *self.seen_last = n;
            self.liveness.on_frame();
        }
        if self.liveness.on_tick() == Tick::Dead {
            return Err(NetError::Protocol(format!(
                "slave silent for {} heartbeat ticks",
                s.cfg.heartbeat_dead_ticks
            )));
        }
        write_frame(
            wr,
            &Frame::Heartbeat {
                epoch: self.epoch,
                tail: s.log.tail(),
                flushed: s.log.flushed(),
                sent_ns: s.now_ns(),
            },
        )
        .await
    }
}

/// Sends the snapshot in pieces of at most `batch_bytes_max` (and the rate
/// limit's burst), read from its file off the hs-io thread one piece at a time,
/// with a heartbeat whenever a tick is due: memory stays at one piece whatever
/// the state's size, and the slave's acks go on renewing the lease.
async fn send_snapshot(
    s: &Arc<Shared>,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    src: crate::log::SnapshotSource,
    ticker: &mut Ticker<'_>,
    mut bucket: Option<&mut TokenBucket>,
    burst: u64,
    closed_rx: &mut tokio::sync::oneshot::Receiver<NetError>,
) -> Result<(), NetError> {
    let len = src.len();
    let src = Arc::new(src);
    let piece_max = if bucket.is_some() {
        (s.cfg.batch_bytes_max as u64).min(burst)
    } else {
        s.cfg.batch_bytes_max as u64
    };
    let t0 = Instant::now();
    let mut off = 0u64;
    while off < len {
        if s.is_shutdown() {
            return Err(NetError::Closed);
        }
        if let Ok(e) = closed_rx.try_recv() {
            return Err(e);
        }
        ticker.tick(s, wr).await?;
        let n = piece_max.min(len - off);
        if let Some(b) = bucket.as_deref_mut() {
            wait_tokens(s, b, n).await?;
        }
        let src2 = src.clone();
        let piece = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; n as usize];
            src2.read_at(off, &mut buf).map(|()| buf)
        })
        .await
        .map_err(|e| NetError::Protocol(format!("reading the snapshot: {e}")))?
        .map_err(|e| NetError::Protocol(format!("reading the snapshot: {e}")))?;
        write_frame(
            wr,
            &Frame::Snapshot {
                offset: off,
                bytes: bytes::Bytes::from(piece),
            },
        )
        .await?;
        off += n;
    }
    tracing::info!(
        bytes = len,
        secs = t0.elapsed().as_secs_f64(),
        "snapshot sent"
    );
    Ok(())
}

/// Waits (on the runtime's timer) until the bucket grants `n` bytes, and spends them.
async fn wait_tokens(s: &Shared, b: &mut TokenBucket, n: u64) -> Result<(), NetError> {
    loop {
        let now = Instant::now();
        if b.try_take(now, n) {
            return Ok(());
        }
        if s.is_shutdown() {
            return Err(NetError::Closed);
        }
        tokio::time::sleep_until(b.ready_at(now, n).into()).await;
    }
}

fn update_lag(s: &Shared, samples: &mut VecDeque<(u64, u64, Instant)>, now: Instant) {
    let applied = s.acked_applied.load(Ordering::Relaxed);
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
        s.acked_records.fetch_max(r, Ordering::Relaxed);
    }
    if applied >= s.log.tail() {
        s.acked_records.fetch_max(
            s.records_published.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
    }
    let lag = samples
        .front()
        .map_or(0, |f| now.duration_since(f.2).as_millis() as u64);
    s.lag_ms.store(lag, Ordering::Relaxed);
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
