//! Who may be master, decided without IO.
//!
//! - **Start-up settlement** (seed 004 fig. 4): two nodes that find each other
//!   not serving compare [`Rank`]s; the higher becomes master, the other follows.
//!   The order puts the newest history first (epoch taken or seen, epoch of the
//!   last record, then log length), so
//!   the node holding the most acknowledged data wins; the preferred-master flag
//!   and the node id only break ties. Both sides compute the same answer.
//! - **Lease** (`lease_ms`): a master with a witness configured accepts writes
//!   only while its lease runs. The lease is renewed by the slave's acks, which
//!   echo the send time of the master's latest heartbeat, and by the witness. A
//!   slave promotes on silence only after `heartbeat_dead_ticks` ticks without a
//!   frame, which is longer than the lease, so the old master has stopped
//!   writing before the new one starts:
//!   `old lease ends = send(last heartbeat the slave saw) + lease < receive(last frame) + silence = promotion`.

/// What a node says of itself when it is not serving as master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rank {
    /// The highest epoch the node has taken or seen: a node that just promoted
    /// (its epoch is durable) outranks any node that has not seen that epoch.
    pub epoch: u32,
    pub last_epoch: u32,
    pub tail: u64,
    pub prefer_master: bool,
    pub node: u64,
}

impl Rank {
    fn key(&self) -> (u32, u32, u64, bool, u64) {
        (
            self.epoch,
            self.last_epoch,
            self.tail,
            self.prefer_master,
            self.node,
        )
    }
}

/// Whether `me` should become master rather than `peer` (exactly one of the two
/// calls `settle(a, b)` and `settle(b, a)` is true, unless the ranks are equal,
/// which two distinct nodes never are).
pub fn settle(me: Rank, peer: Rank) -> bool {
    me.key() > peer.key()
}

/// Why a slave is considering promotion; it decides what evidence is enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The master's port refused a connection after this node had followed it:
    /// its process is gone — or something between refuses for it (a REJECT rule,
    /// a relay or middlebox that resets and refuses while the master lives). Not
    /// proof on its own: see [`Verdict::Confirm`] and the witness's own probe.
    MasterRefused,
    /// No frame for `heartbeat_dead_ticks` ticks: dead, or cut off — cannot tell.
    MasterSilent,
    /// The master handed over on purpose (planned switchover), after we applied everything.
    Handover,
    /// Start-up: the peer is not serving and ranks below us.
    Settled,
    /// Start-up: the peer cannot be reached at all.
    PeerUnreachable,
}

/// The promotion policy's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Promote without asking anyone.
    Promote,
    /// Promote if the witness grants it.
    AskWitness,
    /// Do not promote: silence alone must not make two masters.
    Refuse,
    /// Promote once the refusal is confirmed by the master's own silence towards
    /// this node: nothing from it (no frame, no call at this node's port) for
    /// [`refusal_hold_ms`]. A live master whose slave is gone calls its peer
    /// every tick, so only a master that cannot reach its peer either (dead, or
    /// cut off both ways) stays quiet that long.
    Confirm,
}

/// What a node may do about `cause`, given its configuration.
pub fn verdict(
    cause: Cause,
    has_witness: bool,
    accept_split_risk: bool,
    prefer_master: bool,
) -> Verdict {
    match (cause, has_witness) {
        // The old master asked for it after it stopped writing.
        (Cause::Handover, _) => Verdict::Promote,
        // With a witness, every promotion goes through it: it grants each epoch
        // once and fences a lingering old master. (Promoting on the kernel's word
        // while the witness was unreachable let a later grant reuse the epoch.)
        (Cause::MasterRefused | Cause::Settled, true) => Verdict::AskWitness,
        (Cause::Settled, false) => Verdict::Promote,
        // A refusal may come from a filter in front of a live master: the old
        // instant promotion, only when the split risk is accepted.
        (Cause::MasterRefused, false) if accept_split_risk => Verdict::Promote,
        (Cause::MasterRefused, false) => Verdict::Confirm,
        (Cause::MasterSilent | Cause::PeerUnreachable, true) => Verdict::AskWitness,
        (Cause::MasterSilent, false) if accept_split_risk => Verdict::Promote,
        (Cause::PeerUnreachable, false) if accept_split_risk && prefer_master => Verdict::Promote,
        _ => Verdict::Refuse,
    }
}

/// The epoch a node takes when it promotes, above `seen` (the highest it has
/// taken or seen). Once both ids are known, each node owns one parity of the
/// epoch space (the node with the larger id the odd epochs), so the two nodes
/// of a pair can never take the same epoch, even both promoting at once without
/// a witness. Unknown peer (0): just the next one; only a witness (which grants
/// each epoch once) or an accepted split risk allows promoting then.
pub fn next_epoch(seen: u32, me: u64, peer: u64) -> u32 {
    if peer == 0 || peer == me {
        return seen + 1;
    }
    let parity = (me > peer) as u32;
    let e = seen + 1;
    if e % 2 == parity {
        e
    } else {
        e + 1
    }
}

/// How long a slave refused by its master's port waits, hearing nothing from
/// the master (no frame on the link, no call at its own port), before it takes
/// the refusal for the master's death (no witness, split risk not accepted).
///
/// A live master calls its peer every tick once its slave has been quiet for
/// two ticks (or at once when the session ends): with the link cut at `c`, the
/// slave's last frame came after `c - 1 tick` and the master's first call
/// leaves before `c + 3 ticks`. Waiting `N + 4` ticks from the last frame
/// (`N = heartbeat_dead_ticks` ≥ 1) leaves at least one tick for the call to arrive.
pub fn refusal_hold_ms(heartbeat_interval_ms: u64, heartbeat_dead_ticks: u32) -> u64 {
    heartbeat_interval_ms * (heartbeat_dead_ticks as u64 + 4)
}

/// Ticks without an ack after which a master calls its peer (see [`refusal_hold_ms`]).
pub const CALL_AFTER_QUIET_TICKS: u64 = 2;

/// How long a lease lasts, from the heartbeat settings: the silence that makes a
/// slave promote, minus two ticks of margin (at least one tick).
pub fn lease_ms(heartbeat_interval_ms: u64, heartbeat_dead_ticks: u32) -> u64 {
    let silence = heartbeat_interval_ms * heartbeat_dead_ticks as u64;
    silence
        .saturating_sub(2 * heartbeat_interval_ms)
        .max(heartbeat_interval_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn exactly_one_of_two_distinct_nodes_wins(a in (0u32..4, 0u64..4, any::<bool>(), 0u64..3),
                                                   b in (0u32..4, 0u64..4, any::<bool>(), 0u64..3)) {
            let ra = Rank { epoch: a.0, last_epoch: a.0, tail: a.1, prefer_master: a.2, node: a.3 };
            let rb = Rank { epoch: b.0, last_epoch: b.0, tail: b.1, prefer_master: b.2, node: b.3 + 3 };
            prop_assert!(settle(ra, rb) != settle(rb, ra));
            // The newer history always wins, whatever the preference.
            if (ra.last_epoch, ra.tail) > (rb.last_epoch, rb.tail) { prop_assert!(settle(ra, rb)); }
        }
    }

    #[test]
    fn silence_alone_never_promotes_without_a_witness_or_consent() {
        assert_eq!(
            verdict(Cause::MasterSilent, false, false, true),
            Verdict::Refuse
        );
        assert_eq!(
            verdict(Cause::MasterSilent, false, true, false),
            Verdict::Promote
        );
        assert_eq!(
            verdict(Cause::MasterSilent, true, false, false),
            Verdict::AskWitness
        );
        assert_eq!(
            verdict(Cause::PeerUnreachable, false, true, false),
            Verdict::Refuse
        );
        assert_eq!(
            verdict(Cause::PeerUnreachable, false, true, true),
            Verdict::Promote
        );
        // A refusal alone is not proof: confirmed by the master's silence, or the witness.
        assert_eq!(
            verdict(Cause::MasterRefused, false, false, false),
            Verdict::Confirm
        );
        assert_eq!(
            verdict(Cause::MasterRefused, false, true, false),
            Verdict::Promote
        );
        assert_eq!(
            verdict(Cause::MasterRefused, true, false, false),
            Verdict::AskWitness
        );
        // The hold outlasts the master's first call (quiet ticks + a tick of its
        // loop + a tick between the last frame and the cut) by at least a tick.
        for n in 1..10 {
            assert!(refusal_hold_ms(10, n) >= 10 * (CALL_AFTER_QUIET_TICKS + 3));
            assert!(refusal_hold_ms(10, n) > 10 * n as u64);
        }
        assert!(lease_ms(100, 5) < 100 * 5);
        // Each node owns a parity once both ids are known: never the same epoch.
        for seen in 0..10 {
            assert_ne!(next_epoch(seen, 7, 9), next_epoch(seen, 9, 7));
            assert!(next_epoch(seen, 7, 9) > seen && next_epoch(seen, 9, 7) > seen);
            assert_eq!(next_epoch(seen, 9, 7) % 2, 1);
        }
        assert_eq!(next_epoch(4, 3, 0), 5);
        assert_eq!(lease_ms(50, 6), 200);
    }
}
