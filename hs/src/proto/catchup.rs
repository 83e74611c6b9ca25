//! How a slave starts following, decided from its Hello (sans-IO).
//!
//! Divergence detection follows Kafka's leader-epoch scheme, in one round trip:
//! each log knows where each epoch's records start, and the slave sends its
//! list in Hello. Epochs are unique to one term (each node owns a parity of
//! the epoch space, and the witness grants each epoch once), so the latest
//! epoch both logs hold has the same records in both, up to where the first of
//! them moved on (Raft's log-matching property). The slave keeps its log up to
//! there; anything past it was written by a master that lost its role.

/// Where each epoch's records start in a log, ascending in both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Epochs {
    starts: Vec<(u32, u64)>,
}

impl Epochs {
    /// Notes a record of `epoch` at `pos`. Epochs never go backwards in a log:
    /// a record of an older epoch after a newer one is a forked history.
    pub fn observe(&mut self, epoch: u32, pos: u64) -> Result<(), (u32, u32)> {
        match self.starts.last() {
            Some(&(last, _)) if epoch < last => Err((last, epoch)),
            Some(&(last, _)) if epoch == last => Ok(()),
            _ => {
                self.starts.push((epoch, pos));
                Ok(())
            }
        }
    }

    /// The epoch of the last record, 0 for an empty log.
    pub fn last_epoch(&self) -> u32 {
        self.starts.last().map_or(0, |e| e.0)
    }

    /// Where the records of `epoch` (and older) end in this log: the start of the
    /// first newer epoch, or `tail`.
    pub fn end_of(&self, epoch: u32, tail: u64) -> u64 {
        self.starts
            .iter()
            .find(|e| e.0 > epoch)
            .map_or(tail, |e| e.1)
    }

    /// Forgets epochs whose records start at or after `pos` (the log was truncated).
    pub fn truncate(&mut self, pos: u64) {
        self.starts.retain(|e| e.1 < pos);
    }

    /// Epoch boundaries, oldest first.
    pub fn as_slice(&self) -> &[(u32, u64)] {
        &self.starts
    }
}

/// What the master knows of its own log when a slave says Hello.
#[derive(Debug, Clone, Copy)]
pub struct MasterView<'a> {
    pub history: u128,
    pub epoch: u32,
    pub epochs: &'a Epochs,
    /// Oldest position still in the log (a snapshot covers what is before it).
    pub first: u64,
    pub tail: u64,
}

/// Most epoch boundaries a Hello carries (the latest ones); a slave whose common
/// epoch with the master is older than that is resynced.
pub const HELLO_EPOCHS_MAX: usize = 256;

/// What the slave said of its own log.
#[derive(Debug, Clone, Copy)]
pub struct SlaveView<'a> {
    /// 0 for a slave with no log yet.
    pub history: u128,
    pub epoch: u32,
    pub tail: u64,
    /// Where each of its epochs starts (the latest `HELLO_EPOCHS_MAX`), ascending.
    pub epochs: &'a [(u32, u64)],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Stream from `from` (the slave's own tail); adopt the master's history if it had none.
    Continue { from: u64 },
    /// The slave's tail past `to` diverged: truncate, then stream from `to`.
    Truncate { to: u64 },
    /// Nothing usable in common: the slave drops its log and loads a snapshot.
    Resync,
    /// The slave has seen a newer epoch than this master: this master is stale.
    Fenced { slave_epoch: u32 },
}

impl Epochs {
    /// Where `epoch` starts in this log, if it has records of it.
    pub fn start_of(&self, epoch: u32) -> Option<u64> {
        self.starts.iter().find(|e| e.0 == epoch).map(|e| e.1)
    }
}

pub fn decide(m: MasterView<'_>, s: SlaveView<'_>) -> Decision {
    if s.epoch > m.epoch {
        return Decision::Fenced {
            slave_epoch: s.epoch,
        };
    }
    if s.history == 0 && s.tail == 0 {
        return if m.first == 0 {
            Decision::Continue { from: 0 }
        } else {
            Decision::Resync
        };
    }
    if s.history != m.history {
        return Decision::Resync;
    }
    if s.tail == 0 || s.epochs.is_empty() {
        // Same history, nothing written (or all before a snapshot): from where it is.
        return if s.tail < m.first {
            Decision::Resync
        } else if s.tail <= m.tail {
            Decision::Continue { from: s.tail }
        } else {
            Decision::Truncate { to: m.tail }
        };
    }
    // The latest epoch both logs hold: the same term, so the same records from its
    // start until either log moved on.
    let mut common = None;
    for (i, &(e, start)) in s.epochs.iter().enumerate().rev() {
        if let Some(mstart) = m.epochs.start_of(e) {
            if mstart != start {
                // One epoch, two starts: the logs are not of one history after all.
                return Decision::Resync;
            }
            let slave_end = s.epochs.get(i + 1).map_or(s.tail, |n| n.1);
            common = Some(slave_end.min(m.epochs.end_of(e, m.tail)));
            break;
        }
    }
    // None in common: if the master's log starts after a snapshot that covers the
    // slave's epochs, the master cannot tell; resync.
    let Some(resume) = common else {
        return Decision::Resync;
    };
    if resume < m.first {
        return Decision::Resync;
    }
    if resume < s.tail {
        Decision::Truncate { to: resume }
    } else {
        Decision::Continue { from: resume }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epochs(list: &[(u32, u64)]) -> Epochs {
        let mut e = Epochs::default();
        for &(ep, pos) in list {
            e.observe(ep, pos).unwrap();
        }
        e
    }

    #[test]
    fn continue_truncate_resync_fenced() {
        let e = epochs(&[(1, 0), (3, 1000)]);
        let m = MasterView {
            history: 7,
            epoch: 3,
            epochs: &e,
            first: 0,
            tail: 5000,
        };
        let s = |history, epoch, tail, ep: &'static [(u32, u64)]| SlaveView {
            history,
            epoch,
            tail,
            epochs: ep,
        };
        // Behind in the same history: continue from its tail.
        assert_eq!(
            decide(m, s(7, 3, 2000, &[(1, 0), (3, 1000)])),
            Decision::Continue { from: 2000 }
        );
        // Old master of epoch 1 wrote past 1000 after the promotion at 1000: truncate.
        assert_eq!(
            decide(m, s(7, 1, 1800, &[(1, 0)])),
            Decision::Truncate { to: 1000 }
        );
        // Empty slave, full history on disk: stream from 0.
        assert_eq!(decide(m, s(0, 0, 0, &[])), Decision::Continue { from: 0 });
        // Another history: resync.
        assert_eq!(decide(m, s(8, 1, 10, &[(1, 0)])), Decision::Resync);
        // History needed is gone.
        let m2 = MasterView { first: 4096, ..m };
        assert_eq!(
            decide(m2, s(7, 3, 2000, &[(1, 0), (3, 1000)])),
            Decision::Resync
        );
        assert_eq!(decide(m2, s(0, 0, 0, &[])), Decision::Resync);
        // Slave has seen epoch 4: this master is stale.
        assert_eq!(
            decide(m, s(7, 4, 10, &[(1, 0)])),
            Decision::Fenced { slave_epoch: 4 }
        );
    }

    /// The slave was master for a while in an epoch the master never had (2): its
    /// records of epoch 2 are cut back to where epoch 1 ended in its own log, even
    /// though the master's epoch 1 ran longer.
    #[test]
    fn an_epoch_the_master_never_had_is_cut_where_it_started() {
        let e = epochs(&[(1, 0), (3, 1000)]);
        let m = MasterView {
            history: 7,
            epoch: 3,
            epochs: &e,
            first: 0,
            tail: 5000,
        };
        let ep: &[(u32, u64)] = &[(1, 0), (2, 600)];
        assert_eq!(
            decide(
                m,
                SlaveView {
                    history: 7,
                    epoch: 2,
                    tail: 900,
                    epochs: ep
                }
            ),
            Decision::Truncate { to: 600 }
        );
        // One epoch with two different starts: not one history; resync.
        let bad: &[(u32, u64)] = &[(1, 8)];
        assert_eq!(
            decide(
                m,
                SlaveView {
                    history: 7,
                    epoch: 1,
                    tail: 900,
                    epochs: bad
                }
            ),
            Decision::Resync
        );
    }

    #[test]
    fn epochs_refuse_to_go_backwards() {
        let mut e = epochs(&[(2, 0)]);
        assert_eq!(e.observe(1, 8), Err((2, 1)));
        e.observe(5, 64).unwrap();
        assert_eq!(e.end_of(2, 100), 64);
        assert_eq!(e.end_of(5, 100), 100);
        e.truncate(64);
        assert_eq!(e.last_epoch(), 2);
    }
}
