//! The replication stream after the handshake, as two sans-IO state machines:
//! [`MasterStream`] (send the snapshot, catch up under the rate limit, stream
//! live, heartbeat, watch the slave's liveness, check its acks, hand over) and
//! [`SlaveStream`] (check each frame, ask the driver to write and apply data,
//! acknowledge, watch the master's liveness, accept a handover).
//!
//! No socket, log, clock or task inside: the driver (`node::master`,
//! `node::slave`, or a simulation) feeds frames and the time in, asks
//! `poll_transmit` / `poll_ack` what to send and `poll_timeout` when to come
//! back, and does the IO. The same machines run in the node and in
//! `hs/tests/sim_stream.rs`, which drives them over real logs on a failing
//! in-memory disk.

use std::time::{Duration, Instant};

use crate::proto::frame::{kind_name, Frame};
use crate::proto::heartbeat::{Liveness, Tick};
use crate::proto::ratelimit::TokenBucket;

/// What ends a stream. The driver closes the connection and reports it; it
/// never needs to read the message to know which it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("{peer} silent for {ticks} heartbeat ticks")]
    Silent { peer: &'static str, ticks: u32 },
    #[error("{what} of epoch {got} in a session of epoch {session}")]
    WrongEpoch {
        what: &'static str,
        got: u32,
        session: u32,
    },
    #[error("ack beyond what was written: received {received} flushed {flushed} applied {applied} tail {tail}")]
    AckBeyondWritten {
        received: u64,
        flushed: u64,
        applied: u64,
        tail: u64,
    },
    #[error("handover at {tail} of epoch {epoch}, but this slave is at {mine} (applied {applied}) of epoch {session}")]
    BadHandover {
        tail: u64,
        epoch: u32,
        mine: u64,
        applied: u64,
        session: u32,
    },
    #[error("{peer} reported error {code}: {message}")]
    PeerError {
        peer: &'static str,
        code: u16,
        message: String,
    },
    #[error("unexpected {kind} frame from the {peer}")]
    Unexpected {
        peer: &'static str,
        kind: &'static str,
    },
    #[error("the master's snapshot is {bytes} bytes, over snapshot_bytes_max ({max} bytes): raise it on this node if the state really is that large")]
    SnapshotTooLarge { bytes: u64, max: u64 },
    #[error("snapshot bytes at {offset} (+{len}), expected {expected} of {total}")]
    SnapshotOutOfOrder {
        offset: u64,
        len: u64,
        expected: u64,
        total: u64,
    },
}

/// The master side's settings for one session.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    pub epoch: u32,
    pub heartbeat_interval: Duration,
    pub dead_ticks: u32,
    /// Catch-up rate limit, bytes per second; 0: none.
    pub catchup_rate_bytes_per_s: u64,
    /// Largest data batch, bytes.
    pub batch_bytes_max: usize,
    /// Largest frame the slave accepts, bytes (the rate limit's burst is at least one).
    pub frame_bytes_max: usize,
    /// How long a heartbeat's echo keeps the lease, if the master holds one.
    pub lease: Option<Duration>,
}

/// What the master's driver sends next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasterTransmit {
    /// A heartbeat: `{ epoch, tail, flushed, sent_ns }` as of now.
    Heartbeat,
    /// Bytes `[offset, offset + len)` of the snapshot; then call `snapshot_sent`.
    Snapshot { offset: u64, len: u64 },
    /// Records from `pos`, at most `max_bytes` (cut at a record boundary);
    /// then call `data_sent` with the end of what was sent.
    Data { pos: u64, max_bytes: usize },
    /// The planned switchover: the slave has applied everything to `tail`.
    Handover { tail: u64 },
}

/// What happened in the master's stream, for the driver to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasterEvent {
    /// The slave holds the snapshot (acknowledged its position): records follow.
    SnapshotLoaded { pos: u64 },
    /// The stream reached the tail for the first time: from now on it is live
    /// and not rate-limited.
    CaughtUp { pos: u64 },
    /// `Handover` was sent: the session is over, this node steps down.
    HandedOver { pos: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Snapshot { offset: u64, len: u64 },
    SnapshotLoading,
    Catchup,
    Live,
    Done,
}

/// One slave connection, seen from the master, after the Welcome.
#[derive(Debug)]
pub struct MasterStream {
    cfg: MasterConfig,
    phase: Phase,
    start: u64,
    sent: u64,
    bucket: Option<TokenBucket>,
    burst: u64,
    liveness: Liveness,
    next_tick: Instant,
    heartbeat_due: bool,
    /// This session's acknowledgements (0 until the slave's first): what an
    /// earlier session heard says nothing of this connection's log.
    received: u64,
    flushed: u64,
    applied: u64,
    events: std::collections::VecDeque<MasterEvent>,
}

impl MasterStream {
    /// A stream from `start`; with `snapshot_bytes`, the snapshot of that many
    /// bytes goes first (a resync).
    pub fn new(now: Instant, cfg: MasterConfig, start: u64, snapshot_bytes: Option<u64>) -> Self {
        let rate = cfg.catchup_rate_bytes_per_s;
        // A twentieth of a second's worth, at least one frame: over a catch-up of
        // a few seconds the average is within a percent or two of the setting.
        let burst = (rate / 20).max(cfg.frame_bytes_max as u64);
        MasterStream {
            phase: match snapshot_bytes {
                Some(len) => Phase::Snapshot { offset: 0, len },
                None => Phase::Catchup,
            },
            start,
            sent: start,
            bucket: (rate > 0).then(|| TokenBucket::new(now, rate, burst)),
            burst,
            liveness: Liveness::new(cfg.dead_ticks),
            next_tick: now + cfg.heartbeat_interval,
            heartbeat_due: false,
            received: 0,
            flushed: 0,
            applied: 0,
            events: Default::default(),
            cfg,
        }
    }

    pub fn start(&self) -> u64 {
        self.start
    }
    /// One past the last byte handed to the driver to send.
    pub fn sent(&self) -> u64 {
        self.sent
    }
    /// The slave's latest acknowledgement in this session: (received, flushed, applied).
    pub fn acked(&self) -> (u64, u64, u64) {
        (self.received, self.flushed, self.applied)
    }
    pub fn is_live(&self) -> bool {
        self.phase == Phase::Live
    }
    pub fn is_streaming(&self) -> bool {
        matches!(self.phase, Phase::Catchup | Phase::Live)
    }
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// An acknowledgement from the slave. `tail`: the log's tail now. Returns
    /// the lease's new end (`echo_ns` + the lease), when the ack renews it.
    pub fn handle_ack(
        &mut self,
        epoch: u32,
        received: u64,
        flushed: u64,
        applied: u64,
        echo_ns: u64,
        tail: u64,
    ) -> Result<Option<u64>, StreamError> {
        self.liveness.on_frame();
        if epoch != self.cfg.epoch {
            return Err(StreamError::WrongEpoch {
                what: "ack",
                got: epoch,
                session: self.cfg.epoch,
            });
        }
        if received > tail || applied > received || flushed > received {
            return Err(StreamError::AckBeyondWritten {
                received,
                flushed,
                applied,
                tail,
            });
        }
        self.received = self.received.max(received);
        self.flushed = self.flushed.max(flushed);
        self.applied = self.applied.max(applied);
        if self.phase == Phase::SnapshotLoading && self.received >= self.start {
            self.phase = Phase::Catchup;
            self.events
                .push_back(MasterEvent::SnapshotLoaded { pos: self.start });
        }
        Ok(match self.cfg.lease {
            Some(l) if echo_ns > 0 => Some(echo_ns + l.as_nanos() as u64),
            _ => None,
        })
    }

    /// A frame from the slave: an ack (see `handle_ack`); anything else ends
    /// the session.
    pub fn handle_frame(&mut self, f: &Frame, tail: u64) -> Result<Option<u64>, StreamError> {
        match *f {
            Frame::Ack {
                epoch,
                received,
                flushed,
                applied,
                echo_ns,
            } => self.handle_ack(epoch, received, flushed, applied, echo_ns, tail),
            Frame::Error { code, ref message } => Err(StreamError::PeerError {
                peer: "slave",
                code,
                message: message.clone(),
            }),
            ref other => Err(StreamError::Unexpected {
                peer: "slave",
                kind: kind_name(other),
            }),
        }
    }

    /// The time passed: a due heartbeat tick checks the slave's liveness and
    /// queues a heartbeat (its echo in the slave's ack renews the lease).
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), StreamError> {
        if now < self.next_tick || self.phase == Phase::Done {
            return Ok(());
        }
        self.next_tick = now + self.cfg.heartbeat_interval;
        if self.liveness.on_tick() == Tick::Dead {
            return Err(StreamError::Silent {
                peer: "slave",
                ticks: self.cfg.dead_ticks,
            });
        }
        self.heartbeat_due = true;
        Ok(())
    }

    /// What to send now, if anything. `tail`: the log's tail; `handover`: a
    /// planned switchover is asked for (writes are stopped).
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        tail: u64,
        handover: bool,
    ) -> Option<MasterTransmit> {
        if std::mem::take(&mut self.heartbeat_due) {
            return Some(MasterTransmit::Heartbeat);
        }
        match self.phase {
            Phase::Snapshot { offset, len } => {
                if offset >= len {
                    self.phase = Phase::SnapshotLoading;
                    return None;
                }
                let n = self.piece_max().min(len - offset);
                self.take_tokens(now, n)
                    .then_some(MasterTransmit::Snapshot { offset, len: n })
            }
            Phase::SnapshotLoading | Phase::Done => None,
            Phase::Catchup | Phase::Live => {
                if self.sent < tail {
                    let max = self.piece_max() as usize;
                    let limited = self.phase == Phase::Catchup && self.bucket.is_some();
                    if limited && !self.tokens_ready(now, max as u64) {
                        return None;
                    }
                    return Some(MasterTransmit::Data {
                        pos: self.sent,
                        max_bytes: max,
                    });
                }
                if self.phase == Phase::Catchup {
                    self.phase = Phase::Live;
                    self.events
                        .push_back(MasterEvent::CaughtUp { pos: self.sent });
                }
                if handover && self.applied >= self.sent && self.sent == tail {
                    self.phase = Phase::Done;
                    self.events
                        .push_back(MasterEvent::HandedOver { pos: self.sent });
                    return Some(MasterTransmit::Handover { tail: self.sent });
                }
                None
            }
        }
    }

    /// The driver sent snapshot bytes `[offset, offset + len)`.
    pub fn snapshot_sent(&mut self, len: u64) {
        if let Phase::Snapshot { offset, len: total } = &mut self.phase {
            *offset += len;
            if *offset >= *total {
                self.phase = Phase::SnapshotLoading;
            }
        }
    }

    /// The driver sent records `[pos, end)` (from a `Data` transmit).
    pub fn data_sent(&mut self, now: Instant, pos: u64, end: u64) {
        assert_eq!(pos, self.sent, "data sent out of order");
        assert!(end > pos, "no progress sending data at {pos}");
        if self.phase == Phase::Catchup {
            if let Some(b) = &mut self.bucket {
                // `poll_transmit` waited for a whole batch's tokens; spend what went.
                let spent = b.try_take(now, end - pos);
                debug_assert!(spent, "rate limit overdrawn");
            }
        }
        self.sent = end;
    }

    /// When to call `handle_timeout` / `poll_transmit` again at the latest
    /// (besides on new data or a frame).
    pub fn poll_timeout(&self, now: Instant, tail: u64) -> Instant {
        let mut t = self.next_tick;
        if let Some(b) = &self.bucket {
            let waiting = match self.phase {
                Phase::Snapshot { offset, len } => Some(self.piece_max().min(len - offset)),
                Phase::Catchup if self.sent < tail => Some(self.piece_max()),
                _ => None,
            };
            if let Some(n) = waiting {
                t = t.min(b.ready_at(now, n));
            }
        }
        t
    }

    pub fn poll_event(&mut self) -> Option<MasterEvent> {
        self.events.pop_front()
    }

    fn piece_max(&self) -> u64 {
        let batch = self.cfg.batch_bytes_max as u64;
        if self.bucket.is_some() && self.phase != Phase::Live {
            batch.min(self.burst)
        } else {
            batch
        }
    }

    fn tokens_ready(&self, now: Instant, n: u64) -> bool {
        self.bucket
            .as_ref()
            .is_none_or(|b| b.ready_at(now, n) <= now)
    }

    fn take_tokens(&mut self, now: Instant, n: u64) -> bool {
        match &mut self.bucket {
            Some(b) => b.try_take(now, n),
            None => true,
        }
    }
}

/// The slave side's settings for one session.
#[derive(Debug, Clone)]
pub struct SlaveConfig {
    pub epoch: u32,
    pub heartbeat_interval: Duration,
    pub dead_ticks: u32,
}

/// What the slave's driver does with a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum SlaveAction {
    /// Nothing but what `poll_ack` will say.
    None,
    /// Write these records at `pos` (`Log::append_replicated` checks them) and
    /// apply them; then report with `written`.
    Append { pos: u64, records: bytes::Bytes },
    /// The master handed over at `tail`: this node takes over.
    Handover { tail: u64 },
}

/// One connection to the master, seen from the slave, after the Welcome.
#[derive(Debug)]
pub struct SlaveStream {
    cfg: SlaveConfig,
    liveness: Liveness,
    next_tick: Instant,
    ack_due: bool,
    echo_ns: u64,
    master_tail: u64,
    caught_up: bool,
}

impl SlaveStream {
    pub fn new(now: Instant, cfg: SlaveConfig, master_tail: u64) -> Self {
        SlaveStream {
            liveness: Liveness::new(cfg.dead_ticks),
            next_tick: now + cfg.heartbeat_interval,
            ack_due: false,
            echo_ns: 0,
            master_tail,
            caught_up: false,
            cfg,
        }
    }

    /// The highest tail the master has told of.
    pub fn master_tail(&self) -> u64 {
        self.master_tail
    }

    /// A frame from the master. `tail` and `applied`: this node's, now.
    pub fn handle_frame(
        &mut self,
        f: Frame,
        tail: u64,
        applied: u64,
    ) -> Result<SlaveAction, StreamError> {
        self.liveness.on_frame();
        let epoch = self.cfg.epoch;
        let check = |what, got| {
            if got == epoch {
                Ok(())
            } else {
                Err(StreamError::WrongEpoch {
                    what,
                    got,
                    session: epoch,
                })
            }
        };
        match f {
            Frame::Data {
                pos,
                epoch: e,
                tail: master_tail,
                records,
            } => {
                check("data", e)?;
                self.master_tail = self.master_tail.max(master_tail);
                self.ack_due = true;
                Ok(SlaveAction::Append { pos, records })
            }
            Frame::Heartbeat {
                epoch: e,
                tail: master_tail,
                sent_ns,
                ..
            } => {
                check("heartbeat", e)?;
                self.master_tail = self.master_tail.max(master_tail);
                // Echoed at once: the master's lease depends on it.
                self.echo_ns = sent_ns;
                self.ack_due = true;
                Ok(SlaveAction::None)
            }
            Frame::Handover { epoch: e, tail: at } => {
                if e != epoch || at != tail || applied != tail {
                    return Err(StreamError::BadHandover {
                        tail: at,
                        epoch: e,
                        mine: tail,
                        applied,
                        session: epoch,
                    });
                }
                Ok(SlaveAction::Handover { tail: at })
            }
            Frame::Error { code, message } => Err(StreamError::PeerError {
                peer: "master",
                code,
                message,
            }),
            other => Err(StreamError::Unexpected {
                peer: "master",
                kind: kind_name(&other),
            }),
        }
    }

    /// This node's log reaches `tail` after a batch of frames: whether this is
    /// the first time it reached the master's tail (caught up).
    pub fn reached(&mut self, tail: u64) -> bool {
        if !self.caught_up && tail >= self.master_tail {
            self.caught_up = true;
            return true;
        }
        false
    }

    /// A due tick checks the master's liveness and makes an ack due (the ack
    /// is the slave's heartbeat).
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), StreamError> {
        if now < self.next_tick {
            return Ok(());
        }
        self.next_tick = now + self.cfg.heartbeat_interval;
        if self.liveness.on_tick() == Tick::Dead {
            return Err(StreamError::Silent {
                peer: "master",
                ticks: self.cfg.dead_ticks,
            });
        }
        self.ack_due = true;
        Ok(())
    }

    /// The ack to send now, if one is due (after data, a heartbeat or a tick).
    pub fn poll_ack(&mut self, received: u64, flushed: u64, applied: u64) -> Option<Frame> {
        std::mem::take(&mut self.ack_due).then_some(Frame::Ack {
            epoch: self.cfg.epoch,
            received,
            flushed,
            applied,
            echo_ns: self.echo_ns,
        })
    }

    pub fn poll_timeout(&self) -> Instant {
        self.next_tick
    }
}

/// What the slave's driver does with a frame during a resync.
#[derive(Debug, PartialEq, Eq)]
pub enum Receive {
    /// Append these bytes to the snapshot file (they follow what came before).
    Piece(bytes::Bytes),
    /// Send this ack now: a heartbeat's echo (the master's lease runs on it),
    /// at positions 0 — nothing of the session's log is here yet.
    Echo(Frame),
    /// The snapshot is whole and loading: keep this frame for after the load
    /// (read no further meanwhile).
    Hold(Frame),
}

/// The slave's side of a resync, before it has a log to stream into: the
/// snapshot's pieces, in order and within the announced size, and the
/// master's heartbeats meanwhile. Once the snapshot is whole the driver
/// checks, stores and loads it (which takes a while) and then sends
/// [`SnapshotReceiver::loaded_ack`]; a `SlaveStream` from `start` takes over.
#[derive(Debug)]
pub struct SnapshotReceiver {
    epoch: u32,
    start: u64,
    total: u64,
    got: u64,
    echo_ns: u64,
}

impl SnapshotReceiver {
    /// A Welcome announced `snapshot_bytes` at `start`; refused at once past
    /// `snapshot_bytes_max` (it bounds the disk a resync takes).
    pub fn new(
        epoch: u32,
        start: u64,
        snapshot_bytes: u64,
        snapshot_bytes_max: u64,
    ) -> Result<Self, StreamError> {
        if snapshot_bytes > snapshot_bytes_max {
            return Err(StreamError::SnapshotTooLarge {
                bytes: snapshot_bytes,
                max: snapshot_bytes_max,
            });
        }
        Ok(SnapshotReceiver {
            epoch,
            start,
            total: snapshot_bytes,
            got: 0,
            echo_ns: 0,
        })
    }

    /// Bytes of the snapshot received so far.
    pub fn received(&self) -> u64 {
        self.got
    }

    pub fn is_complete(&self) -> bool {
        self.got == self.total
    }

    pub fn handle_frame(&mut self, f: Frame) -> Result<Receive, StreamError> {
        match f {
            Frame::Heartbeat { epoch, sent_ns, .. } => {
                if epoch != self.epoch {
                    return Err(StreamError::WrongEpoch {
                        what: "heartbeat",
                        got: epoch,
                        session: self.epoch,
                    });
                }
                self.echo_ns = sent_ns;
                Ok(Receive::Echo(Frame::Ack {
                    epoch,
                    received: 0,
                    flushed: 0,
                    applied: 0,
                    echo_ns: sent_ns,
                }))
            }
            f if self.is_complete() => Ok(Receive::Hold(f)),
            Frame::Snapshot { offset, bytes } => {
                let len = bytes.len() as u64;
                if offset != self.got || self.got + len > self.total {
                    return Err(StreamError::SnapshotOutOfOrder {
                        offset,
                        len,
                        expected: self.got,
                        total: self.total,
                    });
                }
                self.got += len;
                Ok(Receive::Piece(bytes))
            }
            Frame::Error { code, message } => Err(StreamError::PeerError {
                peer: "master",
                code,
                message,
            }),
            other => Err(StreamError::Unexpected {
                peer: "master",
                kind: kind_name(&other),
            }),
        }
    }

    /// The snapshot is stored and loaded: the ack of `start` (echoing the
    /// latest heartbeat) after which the master streams records.
    pub fn loaded_ack(&self) -> Frame {
        assert!(self.is_complete(), "acknowledged a snapshot not yet whole");
        Frame::Ack {
            epoch: self.epoch,
            received: self.start,
            flushed: self.start,
            applied: self.start,
            echo_ns: self.echo_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mcfg(rate: u64) -> MasterConfig {
        MasterConfig {
            epoch: 3,
            heartbeat_interval: Duration::from_millis(100),
            dead_ticks: 3,
            catchup_rate_bytes_per_s: rate,
            batch_bytes_max: 64 << 10,
            frame_bytes_max: 64 << 10,
            lease: Some(Duration::from_millis(500)),
        }
    }

    /// Drives a master stream over `secs` of virtual time against a log whose
    /// tail is `tail`; returns the bytes sent.
    fn run_catchup(rate: u64, tail: u64, secs: u64) -> u64 {
        let t0 = Instant::now();
        let mut m = MasterStream::new(t0, mcfg(rate), 0, None);
        let mut now = t0;
        let end = t0 + Duration::from_secs(secs);
        while now < end && m.sent() < tail {
            m.handle_timeout(now).unwrap();
            // The slave acks every tick so it stays alive.
            m.handle_ack(3, m.sent(), 0, 0, 0, tail).unwrap();
            while let Some(t) = m.poll_transmit(now, tail, false) {
                if let MasterTransmit::Data { pos, max_bytes } = t {
                    m.data_sent(now, pos, (pos + max_bytes as u64).min(tail));
                }
            }
            now = m
                .poll_timeout(now, tail)
                .max(now + Duration::from_micros(1));
        }
        m.sent()
    }

    #[test]
    fn catchup_keeps_to_the_rate_limit_within_its_burst() {
        let rate = 10 << 20;
        let sent = run_catchup(rate, 1 << 40, 4);
        let burst = (rate / 20).max(64 << 10);
        assert!(sent <= 4 * rate + burst, "sent {sent} in 4 s at {rate}/s");
        assert!(
            sent >= 4 * rate - 2 * (64 << 10),
            "sent only {sent} in 4 s at {rate}/s"
        );
    }

    #[test]
    fn an_ack_beyond_the_tail_or_of_another_epoch_ends_the_session() {
        let t0 = Instant::now();
        let mut m = MasterStream::new(t0, mcfg(0), 100, None);
        assert!(matches!(
            m.handle_ack(3, 200, 0, 0, 0, 150),
            Err(StreamError::AckBeyondWritten { .. })
        ));
        assert!(matches!(
            m.handle_ack(2, 100, 100, 100, 0, 150),
            Err(StreamError::WrongEpoch { .. })
        ));
        assert!(matches!(
            m.handle_ack(3, 100, 120, 0, 0, 150),
            Err(StreamError::AckBeyondWritten { .. })
        ));
    }

    #[test]
    fn a_new_session_knows_nothing_of_the_slave_until_its_first_ack() {
        let t0 = Instant::now();
        let m = MasterStream::new(t0, mcfg(0), 4096, None);
        assert_eq!(m.acked(), (0, 0, 0));
    }

    #[test]
    fn the_lease_is_renewed_by_the_echo_of_a_heartbeat_only() {
        let t0 = Instant::now();
        let mut m = MasterStream::new(t0, mcfg(0), 0, None);
        assert_eq!(m.handle_ack(3, 0, 0, 0, 0, 0), Ok(None));
        assert_eq!(
            m.handle_ack(3, 0, 0, 0, 1_000, 0),
            Ok(Some(1_000 + 500_000_000))
        );
    }

    #[test]
    fn a_silent_slave_is_dead_after_exactly_dead_ticks() {
        let t0 = Instant::now();
        let mut m = MasterStream::new(t0, mcfg(0), 0, None);
        let hb = Duration::from_millis(100);
        m.handle_timeout(t0 + hb).unwrap();
        m.handle_timeout(t0 + hb * 2).unwrap();
        assert_eq!(
            m.handle_timeout(t0 + hb * 3),
            Err(StreamError::Silent {
                peer: "slave",
                ticks: 3
            })
        );
    }

    #[test]
    fn handover_waits_until_the_slave_applied_everything() {
        let t0 = Instant::now();
        let mut m = MasterStream::new(t0, mcfg(0), 0, None);
        assert_eq!(
            m.poll_transmit(t0, 64, true),
            Some(MasterTransmit::Data {
                pos: 0,
                max_bytes: 64 << 10
            })
        );
        m.data_sent(t0, 0, 64);
        assert_eq!(m.poll_transmit(t0, 64, true), None, "nothing applied yet");
        m.handle_ack(3, 64, 64, 32, 0, 64).unwrap();
        assert_eq!(m.poll_transmit(t0, 64, true), None, "half applied");
        m.handle_ack(3, 64, 64, 64, 0, 64).unwrap();
        assert_eq!(
            m.poll_transmit(t0, 64, true),
            Some(MasterTransmit::Handover { tail: 64 })
        );
        assert!(m.is_done());
    }

    #[test]
    fn a_resync_streams_the_snapshot_then_waits_for_its_ack() {
        let t0 = Instant::now();
        let mut cfg = mcfg(0);
        cfg.batch_bytes_max = 1000;
        let mut m = MasterStream::new(t0, cfg, 8192, Some(2500));
        let mut pieces = Vec::new();
        while let Some(MasterTransmit::Snapshot { offset, len }) = m.poll_transmit(t0, 9000, false)
        {
            pieces.push((offset, len));
            m.snapshot_sent(len);
        }
        assert_eq!(pieces, vec![(0, 1000), (1000, 1000), (2000, 500)]);
        assert_eq!(
            m.poll_transmit(t0, 9000, false),
            None,
            "no records before the ack"
        );
        m.handle_ack(3, 8192, 8192, 8192, 0, 9000).unwrap();
        assert_eq!(
            m.poll_event(),
            Some(MasterEvent::SnapshotLoaded { pos: 8192 })
        );
        assert!(matches!(
            m.poll_transmit(t0, 9000, false),
            Some(MasterTransmit::Data { pos: 8192, .. })
        ));
    }

    #[test]
    fn the_slave_acks_data_and_ticks_and_checks_a_handover() {
        let t0 = Instant::now();
        let mut s = SlaveStream::new(
            t0,
            SlaveConfig {
                epoch: 5,
                heartbeat_interval: Duration::from_millis(100),
                dead_ticks: 2,
            },
            0,
        );
        assert_eq!(s.poll_ack(0, 0, 0), None);
        let a = s
            .handle_frame(
                Frame::Data {
                    pos: 0,
                    epoch: 5,
                    tail: 64,
                    records: bytes::Bytes::from_static(b"x"),
                },
                0,
                0,
            )
            .unwrap();
        assert!(matches!(a, SlaveAction::Append { pos: 0, .. }));
        assert!(s.reached(64));
        assert!(matches!(
            s.poll_ack(64, 0, 64),
            Some(Frame::Ack { received: 64, .. })
        ));
        assert!(matches!(
            s.handle_frame(Frame::Handover { epoch: 5, tail: 64 }, 64, 32),
            Err(StreamError::BadHandover { .. })
        ));
        assert_eq!(
            s.handle_frame(Frame::Handover { epoch: 5, tail: 64 }, 64, 64),
            Ok(SlaveAction::Handover { tail: 64 })
        );
        assert!(matches!(
            s.handle_frame(
                Frame::Heartbeat {
                    epoch: 4,
                    tail: 0,
                    flushed: 0,
                    sent_ns: 1
                },
                64,
                64
            ),
            Err(StreamError::WrongEpoch { .. })
        ));
        // The frames above keep it alive through the first tick; then two idle ones.
        s.handle_timeout(t0 + Duration::from_millis(100)).unwrap();
        s.handle_timeout(t0 + Duration::from_millis(200)).unwrap();
        assert_eq!(
            s.handle_timeout(t0 + Duration::from_millis(300)),
            Err(StreamError::Silent {
                peer: "master",
                ticks: 2
            })
        );
    }

    #[test]
    fn a_resync_takes_pieces_in_order_within_the_size_and_echoes_heartbeats() {
        use bytes::Bytes;
        assert!(matches!(
            SnapshotReceiver::new(3, 100, 11, 10),
            Err(StreamError::SnapshotTooLarge { bytes: 11, max: 10 })
        ));
        let mut r = SnapshotReceiver::new(3, 100, 10, 10).unwrap();
        let piece = |offset, n| Frame::Snapshot {
            offset,
            bytes: Bytes::from(vec![7u8; n]),
        };
        let hb = |epoch, sent_ns| Frame::Heartbeat {
            epoch,
            tail: 0,
            flushed: 0,
            sent_ns,
        };
        assert!(matches!(r.handle_frame(piece(0, 6)), Ok(Receive::Piece(b)) if b.len() == 6));
        assert!(matches!(
            r.handle_frame(hb(3, 42)),
            Ok(Receive::Echo(Frame::Ack {
                received: 0,
                echo_ns: 42,
                ..
            }))
        ));
        assert!(matches!(
            r.handle_frame(hb(2, 43)),
            Err(StreamError::WrongEpoch { .. })
        ));
        // A gap, a repeat or a piece past the size ends the session.
        for (off, n) in [(7, 2), (0, 2), (6, 5)] {
            let mut r2 = SnapshotReceiver::new(3, 100, 10, 10).unwrap();
            r2.handle_frame(piece(0, 6)).unwrap();
            assert!(matches!(
                r2.handle_frame(piece(off, n)),
                Err(StreamError::SnapshotOutOfOrder { .. })
            ));
        }
        assert!(!r.is_complete());
        r.handle_frame(piece(6, 4)).unwrap();
        assert!(r.is_complete() && r.received() == 10);
        // Loading: records wait, heartbeats are still echoed.
        let data = Frame::Data {
            pos: 100,
            epoch: 3,
            tail: 100,
            records: Bytes::new(),
        };
        assert!(matches!(r.handle_frame(data), Ok(Receive::Hold(_))));
        r.handle_frame(hb(3, 50)).unwrap();
        assert!(matches!(
            r.loaded_ack(),
            Frame::Ack {
                received: 100,
                applied: 100,
                echo_ns: 50,
                ..
            }
        ));
    }
}
