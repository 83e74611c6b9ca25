//! A node's role decisions, sans-IO: what a candidate makes of the end of its
//! session with the master, whether and how it may take over, what a slave
//! accepts in a Welcome, and when a master's lease holds or ends.
//!
//! `election` says who may be master (the policy); this module applies it
//! over time. Every input is a value — the clock as nanoseconds on the node's
//! monotonic clock, what was last heard and when, the witness's reply — and
//! every output is a decision the driver carries out (`node::slave`,
//! `node::master`: connect, probe, ask the witness, make an epoch durable, step
//! down). The pair simulation (`tests/sim_pair.rs`) runs the same functions
//! against the same stream machines and logs, with virtual time.

use std::time::Duration;

use super::election::{
    lease_ms, next_epoch, refusal_hold_ms, settle, verdict, Cause, Rank, Verdict,
};
use super::frame::Action;
use super::witness::Reply;

/// The settings the role decisions depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleConfig {
    pub heartbeat_interval_ms: u64,
    pub heartbeat_dead_ticks: u32,
    pub has_witness: bool,
    pub accept_split_risk: bool,
    pub prefer_master: bool,
}

impl RoleConfig {
    /// How long an ack's echo or a witness's grant keeps a master's lease.
    pub fn lease_ns(&self) -> u64 {
        ms_ns(lease_ms(
            self.heartbeat_interval_ms,
            self.heartbeat_dead_ticks,
        ))
    }
    /// The silence after which a slave takes its master for gone.
    pub fn silence_ns(&self) -> u64 {
        ms_ns(self.heartbeat_interval_ms * self.heartbeat_dead_ticks as u64)
    }
    fn refusal_hold_ns(&self) -> u64 {
        ms_ns(refusal_hold_ms(
            self.heartbeat_interval_ms,
            self.heartbeat_dead_ticks,
        ))
    }
    fn tick_ns(&self) -> u64 {
        ms_ns(self.heartbeat_interval_ms)
    }
}

fn ms_ns(ms: u64) -> u64 {
    ms.saturating_mul(1_000_000)
}

/// How a candidate's (or slave's) session with its peer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The master handed over (planned switchover) after everything was applied.
    Handover,
    /// The peer answered the Hello with its rank: it is not serving.
    /// `following`: it says it is a slave — it follows a master (this node's
    /// previous life, or this node that just handed over to it), so it is
    /// not a start-up to settle: it takes over, or finds its master gone,
    /// on its own.
    PeerStatus { rank: Rank, following: bool },
    /// No frame from the master for the dead ticks.
    Silent,
    /// The connection ended without a goodbye.
    Closed,
    /// Connecting was refused (nothing listens at the peer's port, or something
    /// in between refuses for it).
    ConnectRefused,
    /// Connecting got no answer.
    ConnectTimeout,
    /// Anything else: a refused Welcome, a protocol error, a failing log.
    Other,
}

/// What to do after a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterSession {
    /// Consider taking over for this cause ([`consider`]).
    Consider(Cause),
    /// Knock once at the master's port and decide on the answer ([`after_probe`]).
    Probe,
    /// Connect again after the backoff.
    Retry,
}

/// Maps a session's end to what the candidate does next. `connected`: the
/// session got past the handshake (the master was really there).
/// `followed_before`: this node has followed a master since it started, so a
/// refused connection means that master died (or something refuses for it),
/// not that the peer is not up yet. `me`: this node's rank, for settlement.
pub fn after_session(
    end: SessionEnd,
    connected: bool,
    followed_before: bool,
    me: Rank,
) -> AfterSession {
    use AfterSession::{Consider, Probe, Retry};
    match end {
        SessionEnd::Handover => Consider(Cause::Handover),
        SessionEnd::PeerStatus {
            rank,
            following: false,
        } if settle(me, rank) => Consider(Cause::Settled),
        SessionEnd::PeerStatus { .. } => Retry,
        SessionEnd::Silent => Consider(Cause::MasterSilent),
        // Ended without a goodbye: refused means the process is gone, an
        // answer that it lives, no answer that it may be cut off.
        SessionEnd::Closed if connected => Probe,
        SessionEnd::ConnectRefused if followed_before => Consider(Cause::MasterRefused),
        SessionEnd::ConnectRefused | SessionEnd::ConnectTimeout => Consider(Cause::PeerUnreachable),
        SessionEnd::Closed | SessionEnd::Other => Retry,
    }
}

/// What knocking at a lost master's port gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Refused,
    Answered,
    NoAnswer,
}

pub fn after_probe(p: Probe) -> AfterSession {
    match p {
        Probe::Refused => AfterSession::Consider(Cause::MasterRefused),
        Probe::Answered => AfterSession::Retry,
        Probe::NoAnswer => AfterSession::Consider(Cause::MasterSilent),
    }
}

/// What a candidate has heard from the master, on its own clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Heard {
    pub now_ns: u64,
    /// The last frame from the master on the replication link (0: none).
    pub last_master_frame_ns: u64,
    /// The last call of a living master at this node's port (0: none).
    pub master_called_ns: u64,
    /// When this node last handed over to its peer (0: never).
    pub handed_over_ns: u64,
}

/// A candidate's decision about taking over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Not now, maybe later (a silence not yet complete, a hold running);
    /// the reason is for the log.
    Wait(&'static str),
    /// Never for this cause with this configuration; the reason tells the
    /// operator what would allow it.
    Refuse(&'static str),
    /// Ask the witness for `epoch`; `dead`: the master's port refused us (the
    /// witness tries it too).
    AskWitness { epoch: u32, dead: bool },
    /// Take `epoch` (make it durable before anything is served in it).
    Promote { epoch: u32 },
}

/// Whether a candidate may take over for `cause`. `seen_epoch`: the highest
/// epoch it has taken or seen (its own, or the peer's from a Status);
/// `node`, `peer`: the ids (the peer's 0 while unknown).
pub fn consider(
    cfg: &RoleConfig,
    cause: Cause,
    heard: Heard,
    seen_epoch: u32,
    node: u64,
    peer: u64,
) -> Step {
    if cause != Cause::Handover
        && heard.handed_over_ns != 0
        && heard.now_ns.saturating_sub(heard.handed_over_ns) < cfg.silence_ns()
    {
        // The peer took over on this node's Handover, without the witness,
        // which still holds this node and would grant it a newer epoch at
        // once: whatever the cause, wait until the lease the peer started
        // with has run out. A peer that serves renews with the witness
        // meanwhile and holds the pair from then on. (A Handover back from
        // that peer is the planned path: it stopped writing first.)
        return Step::Wait("handed over: the new master's first lease may run");
    }
    if matches!(cause, Cause::MasterSilent | Cause::PeerUnreachable)
        && heard.now_ns.saturating_sub(heard.last_master_frame_ns) < cfg.silence_ns()
    {
        // The old master's lease may still run on acks this node sent (maybe
        // in a previous life): only a full silence heard by this node ends it.
        return Step::Wait("a master may still hold a lease on our acks");
    }
    let epoch = next_epoch(seen_epoch, node, peer);
    match verdict(
        cause,
        cfg.has_witness,
        cfg.accept_split_risk,
        cfg.prefer_master,
    ) {
        Verdict::Refuse => Step::Refuse(
            "without a witness, silence alone must not make a second master (set accept_split_risk to allow it)",
        ),
        Verdict::Promote => Step::Promote { epoch },
        Verdict::Confirm => {
            // Refused, but a filter or relay in front of a live master refuses
            // too. A live master whose slave is gone calls this node every
            // tick: only silence from it — no frame, no call — for the whole
            // hold confirms.
            let heard_at = heard.last_master_frame_ns.max(heard.master_called_ns);
            if heard.now_ns.saturating_sub(heard_at) < cfg.refusal_hold_ns() {
                Step::Wait("the master's port refuses, but it has not been quiet for the whole hold")
            } else {
                Step::Promote { epoch }
            }
        }
        Verdict::AskWitness => Step::AskWitness {
            epoch,
            dead: cause == Cause::MasterRefused,
        },
    }
}

/// The witness's answer to a promotion asked at `sent_ns`: `Some(lease end)`
/// when granted (the lease runs from the request's departure, never from the
/// answer's arrival), `None` when refused or unanswered — every promotion
/// needs the grant, or an epoch could be taken twice.
pub fn promotion_granted(cfg: &RoleConfig, sent_ns: u64, reply: Option<&Reply>) -> Option<u64> {
    reply
        .filter(|r| r.granted)
        .map(|_| sent_ns + cfg.lease_ns())
}

/// The epoch a refusing witness holds for the pair, when it is above
/// `seen`: the candidate's next request must ask above it, or a witness that
/// holds an epoch for a node that is gone would refuse it forever.
pub fn witness_epoch_seen(seen: u32, reply: Option<&Reply>) -> u32 {
    reply.map_or(seen, |r| seen.max(r.epoch))
}

/// How long to wait before connecting again: a cause that was considered (and
/// refused) is retried within a tick, anything else after the backoff.
pub fn retry_wait(
    cfg: &RoleConfig,
    considered: bool,
    backoff: Duration,
    min: Duration,
) -> Duration {
    if considered {
        min.min(Duration::from_millis(cfg.heartbeat_interval_ms))
    } else {
        backoff
    }
}

/// What a Welcome tells a slave to do, checked against its own log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// Start an empty log in the master's history, then continue at 0.
    Adopt,
    Continue,
    /// Cut the log back to `start`.
    Truncate,
    /// Replace the log with the master's snapshot.
    Resync,
}

/// What the slave knows of its own log when a Welcome arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlaveLog {
    pub history: u128,
    pub epoch: u32,
    pub tail: u64,
}

/// The checks a slave makes on a Welcome before it touches its log: never a
/// stale master (an epoch below one it has seen), never a history or a
/// position that does not fit its log. `Err`: the reason, for the operator.
pub fn accept_welcome(
    mine: SlaveLog,
    history: u128,
    epoch: u32,
    segment_bytes: u64,
    action: Action,
    start: u64,
) -> Result<Follow, String> {
    if epoch < mine.epoch {
        return Err(format!(
            "master is at epoch {epoch}, this node has seen {}: refusing a stale master",
            mine.epoch
        ));
    }
    if history == 0 {
        return Err("master sent no history id".into());
    }
    if !segment_bytes.is_multiple_of(4096) || segment_bytes == 0 {
        return Err(format!(
            "master's segment size {segment_bytes} is not a multiple of 4096"
        ));
    }
    match action {
        Action::Continue if mine.history == 0 => {
            if start != 0 {
                return Err("master continues an empty slave at a non-zero position".into());
            }
            Ok(Follow::Adopt)
        }
        Action::Continue => {
            if history != mine.history || start != mine.tail {
                return Err(format!(
                    "master continues at {start} of history {history:x}; we are at {} of {:x}",
                    mine.tail, mine.history
                ));
            }
            Ok(Follow::Continue)
        }
        Action::Truncate => {
            if history != mine.history || start > mine.tail {
                return Err(format!(
                    "master asks to truncate to {start}, our tail is {}",
                    mine.tail
                ));
            }
            Ok(Follow::Truncate)
        }
        Action::Resync => Ok(Follow::Resync),
    }
}

/// A master's lease: it accepts writes only while one runs (when one is
/// required: a witness is configured and the split risk is not accepted).
/// Renewed by acks echoing a heartbeat (`stream::MasterStream`) and by the
/// witness's grants; never shortened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub required: bool,
    /// The lease runs until this point of the node's clock (nanoseconds).
    pub until_ns: u64,
}

impl Lease {
    /// A fresh master's lease: one lease period to hear from its slave or
    /// the witness.
    pub fn start(cfg: &RoleConfig, required: bool, now_ns: u64) -> Lease {
        Lease {
            required,
            until_ns: now_ns + cfg.lease_ns(),
        }
    }

    pub fn renew(&mut self, until_ns: u64) {
        self.until_ns = self.until_ns.max(until_ns);
    }

    /// Whether a write at `now_ns` is covered. The end itself is not.
    pub fn holds(&self, now_ns: u64) -> bool {
        !self.required || now_ns < self.until_ns
    }
}

/// Whether `until_ns` (a lease end) still covers `now_ns`: [`Lease::holds`]
/// for a driver that keeps the end in an atomic.
pub fn lease_holds(required: bool, until_ns: u64, now_ns: u64) -> bool {
    Lease { required, until_ns }.holds(now_ns)
}

/// What a master does with the witness's answer to its renewal sent at `sent_ns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// Granted: the lease runs to here.
    Extend(u64),
    /// The witness holds a newer epoch: another node is master; step down.
    StepDown(String),
    /// Refused without a newer epoch, or unanswered: nothing changes.
    Nothing,
}

pub fn after_renewal(cfg: &RoleConfig, epoch: u32, sent_ns: u64, reply: Option<&Reply>) -> Renewal {
    match reply {
        Some(r) if r.granted => Renewal::Extend(sent_ns + cfg.lease_ns()),
        Some(r) if r.epoch > epoch => Renewal::StepDown(format!(
            "the witness holds epoch {} (node {}): this master is stale",
            r.epoch, r.holder
        )),
        _ => Renewal::Nothing,
    }
}

/// Whether a master calls its peer now: no frame from a slave for
/// `CALL_AFTER_QUIET_TICKS` ticks (or never). The call tells a slave cut off
/// behind a refusing filter that its master lives, and a master that answers
/// with a newer epoch tells this one it is stale ([`after_call`]).
pub fn should_call_peer(cfg: &RoleConfig, now_ns: u64, last_slave_frame_ns: u64) -> bool {
    let quiet = cfg.tick_ns() * super::election::CALL_AFTER_QUIET_TICKS;
    last_slave_frame_ns == 0 || now_ns.saturating_sub(last_slave_frame_ns) >= quiet
}

/// A master's call answered Welcome at `theirs`: a newer epoch means the peer
/// serves as master and this one is stale. `Some(reason)`: step down.
pub fn after_call(epoch: u32, theirs: u32, node: u64) -> Option<String> {
    (theirs > epoch).then(|| {
        format!(
            "the peer (node {node}) serves as master at epoch {theirs}, newer than this master's {epoch}"
        )
    })
}

/// Whether a Hello at `hello_epoch` above this master's may fence it: only
/// the pair's other node may. `Err`: why the Hello is refused instead.
pub fn may_fence(
    has_peer: bool,
    proven: bool,
    known_peer: u64,
    hello_node: u64,
) -> Result<(), &'static str> {
    if !has_peer {
        Err("this master serves alone (no `peer`): no Hello can fence it")
    } else if !proven && known_peer != 0 && hello_node != known_peer {
        Err("the Hello is not from this pair's other node")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(witness: bool) -> RoleConfig {
        RoleConfig {
            heartbeat_interval_ms: 10,
            heartbeat_dead_ticks: 5,
            has_witness: witness,
            accept_split_risk: false,
            prefer_master: false,
        }
    }

    fn rank(epoch: u32, tail: u64, node: u64) -> Rank {
        Rank {
            epoch,
            last_epoch: epoch,
            tail,
            prefer_master: false,
            node,
        }
    }

    #[test]
    fn a_session_end_maps_to_a_cause_or_a_probe() {
        let me = rank(3, 100, 1);
        assert_eq!(
            after_session(SessionEnd::Closed, true, true, me),
            AfterSession::Probe
        );
        assert_eq!(
            after_session(SessionEnd::Closed, false, true, me),
            AfterSession::Retry
        );
        assert_eq!(
            after_session(SessionEnd::ConnectRefused, false, true, me),
            AfterSession::Consider(Cause::MasterRefused)
        );
        assert_eq!(
            after_session(SessionEnd::ConnectRefused, false, false, me),
            AfterSession::Consider(Cause::PeerUnreachable)
        );
        assert_eq!(
            after_session(
                SessionEnd::PeerStatus {
                    rank: rank(3, 50, 2),
                    following: false
                },
                false,
                false,
                me
            ),
            AfterSession::Consider(Cause::Settled)
        );
        // A peer that follows a master (maybe this node, which just handed
        // over to it) is not settled against, however it ranks.
        assert_eq!(
            after_session(
                SessionEnd::PeerStatus {
                    rank: rank(3, 50, 2),
                    following: true
                },
                false,
                false,
                me
            ),
            AfterSession::Retry
        );
        assert_eq!(
            after_session(
                SessionEnd::PeerStatus {
                    rank: rank(3, 500, 2),
                    following: false
                },
                false,
                false,
                me
            ),
            AfterSession::Retry
        );
        assert_eq!(
            after_probe(Probe::NoAnswer),
            AfterSession::Consider(Cause::MasterSilent)
        );
        assert_eq!(after_probe(Probe::Answered), AfterSession::Retry);
    }

    #[test]
    fn silence_promotes_only_after_the_whole_silence_and_through_the_witness() {
        let c = cfg(true);
        let silence = c.silence_ns();
        let heard = |now| Heard {
            now_ns: now,
            last_master_frame_ns: 1_000,
            master_called_ns: 0,
            handed_over_ns: 0,
        };
        assert!(matches!(
            consider(&c, Cause::MasterSilent, heard(1_000 + silence - 1), 4, 1, 2),
            Step::Wait(_)
        ));
        assert_eq!(
            consider(&c, Cause::MasterSilent, heard(1_000 + silence), 4, 1, 2),
            Step::AskWitness {
                epoch: next_epoch(4, 1, 2),
                dead: false
            }
        );
        // A refusal skips the silence (the witness confirms it itself).
        assert_eq!(
            consider(&c, Cause::MasterRefused, heard(1_001), 4, 1, 2),
            Step::AskWitness {
                epoch: next_epoch(4, 1, 2),
                dead: true
            }
        );
    }

    #[test]
    fn after_a_handover_no_cause_takes_over_before_a_whole_silence() {
        let c = cfg(true);
        let h = |now| Heard {
            now_ns: now,
            last_master_frame_ns: 0,
            master_called_ns: 0,
            handed_over_ns: 1_000,
        };
        // A switchover back from the new master is the planned path, at once.
        assert!(matches!(
            consider(&c, Cause::Handover, h(1_001), 4, 1, 2),
            Step::Promote { .. }
        ));
        for cause in [Cause::MasterRefused, Cause::MasterSilent, Cause::Settled] {
            assert!(matches!(
                consider(&c, cause, h(1_000 + c.silence_ns() - 1), 4, 1, 2),
                Step::Wait(_)
            ));
            assert!(matches!(
                consider(&c, cause, h(1_000 + c.silence_ns()), 4, 1, 2),
                Step::AskWitness { .. }
            ));
        }
    }

    #[test]
    fn without_a_witness_a_refusal_waits_out_the_masters_calls() {
        let c = cfg(false);
        let hold = c.refusal_hold_ns();
        let mut h = Heard {
            now_ns: 10_000 + hold,
            last_master_frame_ns: 10_000,
            master_called_ns: 0,
            handed_over_ns: 0,
        };
        assert!(matches!(
            consider(&c, Cause::MasterRefused, h, 2, 1, 2),
            Step::Promote { .. }
        ));
        // A call from the master (alive behind a refusing filter) restarts the hold.
        h.master_called_ns = 10_001;
        assert!(matches!(
            consider(&c, Cause::MasterRefused, h, 2, 1, 2),
            Step::Wait(_)
        ));
        // Silence alone never promotes without a witness.
        assert!(matches!(
            consider(&c, Cause::MasterSilent, h, 2, 1, 2),
            Step::Refuse(_)
        ));
    }

    #[test]
    fn grants_and_renewals_run_from_the_request_not_the_answer() {
        let c = cfg(true);
        let granted = Reply {
            granted: true,
            epoch: 5,
            holder: 1,
        };
        let newer = Reply {
            granted: false,
            epoch: 7,
            holder: 2,
        };
        assert_eq!(
            promotion_granted(&c, 100, Some(&granted)),
            Some(100 + c.lease_ns())
        );
        assert_eq!(promotion_granted(&c, 100, Some(&newer)), None);
        assert_eq!(promotion_granted(&c, 100, None), None);
        assert_eq!(
            after_renewal(&c, 5, 100, Some(&granted)),
            Renewal::Extend(100 + c.lease_ns())
        );
        assert!(matches!(
            after_renewal(&c, 5, 100, Some(&newer)),
            Renewal::StepDown(_)
        ));
        assert_eq!(after_renewal(&c, 5, 100, None), Renewal::Nothing);
        let mut l = Lease::start(&c, true, 0);
        assert!(l.holds(c.lease_ns() - 1) && !l.holds(c.lease_ns()));
        l.renew(5);
        assert_eq!(l.until_ns, c.lease_ns(), "a renewal never shortens");
        assert!(Lease::start(&c, false, 0).holds(u64::MAX));
    }

    #[test]
    fn a_welcome_is_checked_before_the_log_is_touched() {
        let mine = SlaveLog {
            history: 7,
            epoch: 4,
            tail: 100,
        };
        assert!(accept_welcome(mine, 7, 3, 4096, Action::Continue, 100).is_err());
        assert!(accept_welcome(mine, 0, 4, 4096, Action::Continue, 100).is_err());
        assert!(accept_welcome(mine, 7, 4, 4000, Action::Continue, 100).is_err());
        assert!(accept_welcome(mine, 7, 4, 4096, Action::Continue, 90).is_err());
        assert!(accept_welcome(mine, 8, 4, 4096, Action::Truncate, 90).is_err());
        assert!(accept_welcome(mine, 7, 4, 4096, Action::Truncate, 101).is_err());
        assert_eq!(
            accept_welcome(mine, 7, 5, 4096, Action::Truncate, 90),
            Ok(Follow::Truncate)
        );
        assert_eq!(
            accept_welcome(mine, 9, 5, 4096, Action::Resync, 0),
            Ok(Follow::Resync)
        );
        let empty = SlaveLog {
            history: 0,
            epoch: 0,
            tail: 0,
        };
        assert_eq!(
            accept_welcome(empty, 9, 5, 4096, Action::Continue, 0),
            Ok(Follow::Adopt)
        );
        assert!(accept_welcome(empty, 9, 5, 4096, Action::Continue, 10).is_err());
    }

    #[test]
    fn a_master_calls_its_peer_once_its_slave_is_quiet_and_steps_down_for_a_newer_epoch() {
        let c = cfg(true);
        assert!(should_call_peer(&c, 5, 0));
        assert!(!should_call_peer(&c, 1_000 + 19_999_999, 1_000));
        assert!(should_call_peer(&c, 1_000 + 20_000_000, 1_000));
        assert!(after_call(5, 6, 2).is_some());
        assert!(after_call(5, 5, 2).is_none());
        assert!(may_fence(false, true, 2, 2).is_err());
        assert!(may_fence(true, false, 2, 3).is_err());
        assert!(may_fence(true, false, 0, 3).is_ok());
        assert!(may_fence(true, true, 2, 3).is_ok());
    }
}
