//! The slave's side: connect (with backoff), say where its log ends, follow
//! what the master decides (continue, truncate, or resync from a snapshot),
//! then write, apply and acknowledge every batch; declare the master lost after
//! `heartbeat_dead_ticks` silent ticks or when the connection closes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tracing::Instrument;

use super::net::{write_frame, FrameReader, NetError};
use super::{Event, FlushPolicy, Shared};
use crate::log::snapshot::Snapshot;
use crate::log::for_each_in;
use crate::proto::frame::{code, Action, Frame};
use crate::proto::heartbeat::{Liveness, Tick};

/// How long connecting and the Welcome may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn run(s: Arc<Shared>) {
    let master = s.cfg.master.expect("checked in Config::check");
    let min = Duration::from_millis(s.cfg.reconnect_backoff_min_ms.max(1));
    let max = Duration::from_millis(s.cfg.reconnect_backoff_max_ms.max(s.cfg.reconnect_backoff_min_ms).max(1));
    let mut backoff = min;
    let mut attempt = 0u64;
    while !s.is_shutdown() {
        attempt += 1;
        let span = tracing::info_span!("master_conn", attempt, %master);
        let r = async {
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(master))
                .await
                .map_err(|_| NetError::Protocol("connect timed out".into()))??;
            follow(&s, stream, &mut backoff, min).await
        }
        .instrument(span)
        .await;
        match r {
            Ok(()) => return,
            Err(Failure { err, connected }) => {
                if s.is_shutdown() {
                    return;
                }
                if matches!(err, NetError::Frame(_) | NetError::Protocol(_)) {
                    s.frames_rejected.fetch_add(1, Ordering::Relaxed);
                    s.emit(Event::FrameRejected { reason: err.to_string() });
                }
                if connected {
                    tracing::warn!(error = %err, "lost the master; reconnecting");
                    s.emit(Event::MasterLost { reason: err.to_string() });
                } else {
                    tracing::debug!(error = %err, ?backoff, "cannot reach the master yet");
                }
                s.reconnects.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Created before the flag is checked, so a shutdown in between is not missed.
        let shutdown = s.shutdown_notify.notified();
        if s.is_shutdown() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown => return,
        }
        backoff = (backoff * 2).min(max);
    }
}

struct Failure {
    err: NetError,
    /// Whether the session got past the handshake (the master was really there).
    connected: bool,
}

impl<E: Into<NetError>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure { err: e.into(), connected: false }
    }
}

fn proto_err(msg: impl Into<String>) -> NetError {
    NetError::Protocol(msg.into())
}

async fn follow(s: &Arc<Shared>, stream: TcpStream, backoff: &mut Duration, backoff_min: Duration) -> Result<(), Failure> {
    stream.set_nodelay(true)?;
    let addr = stream.peer_addr()?;
    let (rd, mut wr) = stream.into_split();
    let mut reader = FrameReader::new(rd, s.cfg.frame_bytes_max());
    let log = &s.log;
    let meta = log.meta();
    write_frame(
        &mut wr,
        &Frame::Hello { node: s.cfg.node_id, history: meta.history, epoch: meta.epoch, last_epoch: log.last_epoch(), tail: log.tail(), role: 2 },
    )
    .await?;
    let welcome = tokio::time::timeout(CONNECT_TIMEOUT, reader.next()).await.map_err(|_| proto_err("no Welcome within 3 s"))??;
    let (history, epoch, segment_bytes, action, start, snapshot_bytes) = match welcome {
        Frame::Welcome { history, epoch, segment_bytes, action, start, snapshot_bytes } => (history, epoch, segment_bytes, action, start, snapshot_bytes),
        Frame::Error { code, message } => return Err(proto_err(format!("master refused us (code {code}): {message}")).into()),
        other => return Err(proto_err(format!("expected Welcome, got {other:?}")).into()),
    };
    if epoch < meta.epoch {
        let msg = format!("master is at epoch {epoch}, this node has seen {}: refusing a stale master", meta.epoch);
        let _ = write_frame(&mut wr, &Frame::Error { code: code::FENCED, message: msg.clone() }).await;
        return Err(proto_err(msg).into());
    }
    if history == 0 {
        return Err(proto_err("master sent no history id").into());
    }
    if segment_bytes % 4096 != 0 || segment_bytes == 0 {
        return Err(proto_err(format!("master's segment size {segment_bytes} is not a multiple of 4096")).into());
    }
    let map_log = |e: crate::log::LogError| proto_err(format!("log: {e}"));
    match action {
        Action::Continue => {
            if meta.history == 0 {
                if start != 0 {
                    return Err(proto_err("master continues an empty slave at a non-zero position").into());
                }
                log.adopt_history(history, segment_bytes).map_err(map_log)?;
            } else if history != meta.history || start != log.tail() {
                return Err(proto_err(format!("master continues at {start} of history {history:x}; we are at {} of {:x}", log.tail(), meta.history)).into());
            }
        }
        Action::Truncate => {
            let old = log.tail();
            if history != meta.history || start > old {
                return Err(proto_err(format!("master asks to truncate to {start}, our tail is {old}")).into());
            }
            log.truncate(start).map_err(map_log)?;
            // The application saw records past `start`: rebuild it without them.
            s.replay().map_err(map_log)?;
            tracing::warn!(from = start, to = old, "log diverged from the master's; rolled back");
            s.emit(Event::RolledBack { from: start, to: old });
        }
        Action::Resync => {
            let mut buf: Vec<u8> = Vec::new();
            while (buf.len() as u64) < snapshot_bytes {
                match tokio::time::timeout(Duration::from_millis(s.cfg.heartbeat_interval_ms * s.cfg.heartbeat_dead_ticks as u64).max(CONNECT_TIMEOUT), reader.next())
                    .await
                    .map_err(|_| proto_err("snapshot transfer stalled"))??
                {
                    Frame::Snapshot { offset, bytes } if offset == buf.len() as u64 && buf.len() as u64 + bytes.len() as u64 <= snapshot_bytes => {
                        buf.extend_from_slice(&bytes)
                    }
                    other => return Err(proto_err(format!("expected snapshot bytes at {}, got {other:?}", buf.len())).into()),
                }
            }
            let snap = Snapshot::decode(&buf).map_err(|e| proto_err(format!("snapshot from master: {e}")))?;
            if snap.pos != start || snap.history != history {
                return Err(proto_err("snapshot does not match the Welcome").into());
            }
            log.reset_to(&snap, &buf, segment_bytes).map_err(map_log)?;
            {
                let mut app = s.app.lock();
                app.reset();
                for (k, v) in &snap.state.map {
                    app.restore(k, v);
                }
            }
            s.applied.store(start, Ordering::Release);
            tracing::info!(pos = start, keys = snap.state.map.len(), "resynced from the master's snapshot");
            s.emit(Event::Resynced { pos: start, keys: snap.state.map.len() as u64 });
        }
    }
    if epoch > log.meta().epoch {
        log.set_epoch(epoch).map_err(map_log)?;
    }
    *backoff = backoff_min;
    s.emit(Event::MasterConnected { addr, from: start });
    tracing::info!(from = start, epoch, "following the master");
    stream_loop(s, &mut reader, &mut wr, epoch).await.map_err(|err| Failure { err, connected: true })
}

async fn stream_loop(s: &Arc<Shared>, reader: &mut FrameReader, wr: &mut tokio::net::tcp::OwnedWriteHalf, epoch: u32) -> Result<(), NetError> {
    let log = &s.log;
    let hb = Duration::from_millis(s.cfg.heartbeat_interval_ms);
    let mut next_tick = Instant::now() + hb;
    let mut liveness = Liveness::new(s.cfg.heartbeat_dead_ticks);
    let mut caught_up = false;
    let mut acked_at_tick = u64::MAX;
    let flush_each = s.cfg.flush == FlushPolicy::EveryBatch;
    let max = s.cfg.record_bytes_max;
    loop {
        let shutdown = s.shutdown_notify.notified();
        if s.is_shutdown() {
            return Ok(());
        }
        let first = tokio::select! {
            f = reader.next() => Some(f?),
            _ = tokio::time::sleep_until(next_tick.into()) => None,
            _ = shutdown => return Ok(()),
        };
        let mut got_data = false;
        let mut next = first;
        while let Some(f) = next {
            liveness.on_frame();
            match f {
                Frame::Data { pos, epoch: e, tail: master_tail, records } => {
                    s.master_tail.fetch_max(master_tail, Ordering::Relaxed);
                    if e != epoch {
                        return Err(NetError::Protocol(format!("data of epoch {e} in a session of epoch {epoch}")));
                    }
                    let tail = log.append_replicated(pos, &records).map_err(|e| NetError::Protocol(format!("refused data at {pos}: {e}")))?;
                    let mut n = 0u64;
                    {
                        let mut app = s.app.lock();
                        for_each_in(&records, pos, max, &mut |r| {
                            app.apply(r);
                            n += 1;
                        })
                        .map_err(|e| NetError::Protocol(format!("re-reading data at {pos}: {e}")))?;
                    }
                    s.records_applied.fetch_add(n, Ordering::Relaxed);
                    s.applied.store(tail, Ordering::Release);
                    s.master_tail.fetch_max(tail, Ordering::Relaxed);
                    got_data = true;
                }
                Frame::Heartbeat { epoch: e, tail, .. } => {
                    if e != epoch {
                        return Err(NetError::Protocol(format!("heartbeat of epoch {e} in a session of epoch {epoch}")));
                    }
                    s.master_tail.fetch_max(tail, Ordering::Relaxed);
                }
                Frame::Error { code, message } => return Err(NetError::Protocol(format!("master reported error {code}: {message}"))),
                other => return Err(NetError::Protocol(format!("unexpected frame from master: {other:?}"))),
            }
            next = reader.try_next()?;
        }
        let tail = log.tail();
        if !caught_up && tail >= s.master_tail.load(Ordering::Relaxed) {
            caught_up = true;
            tracing::info!(pos = tail, "caught up with the master");
            s.emit(Event::CaughtUp { pos: tail });
        }
        let now = Instant::now();
        let tick = now >= next_tick;
        if tick {
            next_tick = now + hb;
            if liveness.on_tick() == Tick::Dead {
                return Err(NetError::Protocol(format!("master silent for {} heartbeat ticks", s.cfg.heartbeat_dead_ticks)));
            }
        }
        // Acknowledge each batch, and on every tick (the ack is our heartbeat).
        if got_data || tick {
            if got_data && flush_each {
                log.flush().map_err(|e| NetError::Protocol(format!("flush: {e}")))?;
            }
            let applied = s.applied.load(Ordering::Acquire);
            if got_data || tick || applied != acked_at_tick {
                acked_at_tick = applied;
                write_frame(wr, &Frame::Ack { epoch, received: tail, flushed: log.flushed(), applied }).await?;
            }
        }
    }
}
