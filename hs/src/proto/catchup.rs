//! How a slave starts following, decided from its Hello (sans-IO).
//!
//! Divergence detection follows Kafka's leader-epoch scheme: the log knows, for
//! each epoch, where its records start. A slave whose last record is in epoch
//! `e` may keep its log up to where the master's epoch `e` ended; anything past
//! that was written by a master that lost its role and is truncated.

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
        self.starts.iter().find(|e| e.0 > epoch).map_or(tail, |e| e.1)
    }

    /// Forgets epochs whose records start at or after `pos` (the log was truncated).
    pub fn truncate(&mut self, pos: u64) {
        self.starts.retain(|e| e.1 < pos);
    }

    /// Forgets everything (a full resync).
    pub fn clear(&mut self) {
        self.starts.clear();
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

/// What the slave said of its own log.
#[derive(Debug, Clone, Copy)]
pub struct SlaveView {
    /// 0 for a slave with no log yet.
    pub history: u128,
    pub epoch: u32,
    pub last_epoch: u32,
    pub tail: u64,
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

pub fn decide(m: MasterView<'_>, s: SlaveView) -> Decision {
    if s.epoch > m.epoch {
        return Decision::Fenced { slave_epoch: s.epoch };
    }
    if s.history == 0 && s.tail == 0 {
        return if m.first == 0 { Decision::Continue { from: 0 } } else { Decision::Resync };
    }
    if s.history != m.history {
        return Decision::Resync;
    }
    let end = m.epochs.end_of(s.last_epoch, m.tail);
    let resume = s.tail.min(end);
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
        let m = MasterView { history: 7, epoch: 3, epochs: &e, first: 0, tail: 5000 };
        let s = |history, epoch, last_epoch, tail| SlaveView { history, epoch, last_epoch, tail };
        // Behind in the same history: continue from its tail.
        assert_eq!(decide(m, s(7, 3, 3, 2000)), Decision::Continue { from: 2000 });
        // Old master of epoch 1 wrote past 1000 after the promotion at 1000: truncate.
        assert_eq!(decide(m, s(7, 1, 1, 1800)), Decision::Truncate { to: 1000 });
        // Empty slave, full history on disk: stream from 0.
        assert_eq!(decide(m, s(0, 0, 0, 0)), Decision::Continue { from: 0 });
        // Another history: resync.
        assert_eq!(decide(m, s(8, 1, 1, 10)), Decision::Resync);
        // History needed is gone.
        let m2 = MasterView { first: 4096, ..m };
        assert_eq!(decide(m2, s(7, 3, 3, 2000)), Decision::Resync);
        assert_eq!(decide(m2, s(0, 0, 0, 0)), Decision::Resync);
        // Slave has seen epoch 4: this master is stale.
        assert_eq!(decide(m, s(7, 4, 3, 10)), Decision::Fenced { slave_epoch: 4 });
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
