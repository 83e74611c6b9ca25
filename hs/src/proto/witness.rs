//! The witness, sans-IO: a third party that several master/slave pairs share.
//! It remembers, per pair, which node is master in which epoch and when that
//! master last renewed. It grants a promotion only to a newer epoch, and only
//! when the recorded master has been silent longer than a lease plus a margin,
//! or when the master's port refused both the requester and the witness itself
//! *and* a second sign says the master is gone: the connection of its latest
//! renewal, which a living master holds open, was closed from its end
//! ([`Witness::link_closed`]), or it has missed its renewals for two of its own
//! renewal intervals. A REJECT rule on the master's host refuses everyone while
//! the master lives, and a living master renews.
//! Renewals from an older epoch are answered `Fenced`: that node must step down.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Most pairs one witness tracks; a request for a new pair past it is refused.
pub const PAIRS_MAX: usize = 100_000;

/// A position in a pair's history: what a master's slave has acknowledged
/// (in a renewal), or where a candidate's log ends (in a promotion request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogMark {
    pub history: u128,
    pub pos: u64,
}

impl LogMark {
    /// What the witness keeps of what it knew and what a renewal reports:
    /// the higher position in one history; a new history replaces the old.
    pub fn higher(known: Option<LogMark>, new: Option<LogMark>) -> Option<LogMark> {
        match (known, new) {
            (Some(k), Some(n)) if k.history == n.history => Some(LogMark {
                history: k.history,
                pos: k.pos.max(n.pos),
            }),
            (k, None) => k,
            (_, n) => n,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// "I am master of `pair` in `epoch`; keep my lease." `addr`: its replication
    /// address, kept for [`Witness::holder_addr`].
    Renew {
        pair: u64,
        node: u64,
        epoch: u32,
        addr: Option<SocketAddr>,
        /// Where its slave's acknowledgements at Received have reached (the
        /// witness keeps the highest per history). None from older nodes.
        acked: Option<LogMark>,
    },
    /// "May I become master of `pair` in `epoch`?" `dead`: the old master's port
    /// refused the requester. The witness's server tries the holder's address
    /// (as the holder gave it, never one the requester names) before it hands
    /// the request to [`Witness::handle`], and keeps `dead` only if it is refused
    /// too (a filter or relay on the requester's path is not on the witness's):
    /// here `dead` means both were refused.
    Promote {
        pair: u64,
        node: u64,
        epoch: u32,
        dead: bool,
        /// Where the requester's log ends. A log below what the pair's slave
        /// acknowledged in the same history is refused: taking over from it
        /// would lose acknowledged writes (a master back from a power cut
        /// that lost its page cache, while its slave holds them). None from
        /// older nodes: not checked.
        tail: Option<LogMark>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub granted: bool,
    /// The epoch the witness holds for the pair after this request.
    pub epoch: u32,
    /// The node it holds as master.
    pub holder: u64,
}

#[derive(Debug, Clone, Copy)]
struct PairState {
    epoch: u32,
    holder: u64,
    renewed: Instant,
    /// The longest recent interval between two renewals of the holder (it
    /// decays by an eighth a renewal), learned from the renewals themselves:
    /// the witness needs no copy of the pair's tick. `None` until the second.
    gap: Option<Duration>,
    /// The connection that carried the holder's latest renewal was closed by
    /// the holder's end, with no newer renewal: see [`Witness::link_closed`].
    link_closed: bool,
    /// The holder's replication address, from its renewals.
    addr: Option<SocketAddr>,
    /// The highest position acknowledged at Received that the pair's
    /// masters reported, in their latest history. Kept across grants.
    acked: Option<LogMark>,
}

impl PairState {
    /// Whether the holder still renews: its last renewal is younger than two
    /// of its renewal intervals (the hold while no interval is known yet),
    /// and never less than a quarter of the hold (a tick at least: renewals
    /// that came in a burst say nothing of the interval).
    /// A confirmed refusal grants a promotion only once this is false.
    fn renewing(&self, now: Instant, hold: Duration) -> bool {
        let window = self.gap.map_or(hold, |g| (2 * g).max(hold / 4).min(hold));
        now.saturating_duration_since(self.renewed) <= window
    }
}

#[derive(Debug)]
pub struct Witness {
    /// How long a renewal keeps a master alive in the witness's eyes (lease + margin).
    hold: Duration,
    pairs: HashMap<u64, PairState>,
    /// When this witness started: it remembers nothing from before, so for one
    /// hold period a master may still run on a lease granted by its previous life.
    started: Option<Instant>,
}

impl Witness {
    pub fn new(hold: Duration) -> Self {
        Witness {
            hold,
            pairs: HashMap::new(),
            started: None,
        }
    }

    /// Where the master the witness holds for `pair` said it serves: what the
    /// server tries itself to confirm a reported refusal.
    pub fn holder_addr(&self, pair: u64) -> Option<SocketAddr> {
        self.pairs.get(&pair).and_then(|p| p.addr)
    }

    /// Records `node` as the master of `pair` in `epoch` (a grant), if there is room.
    fn record(
        &mut self,
        now: Instant,
        pair: u64,
        node: u64,
        epoch: u32,
        addr: Option<SocketAddr>,
    ) -> Reply {
        if !self.pairs.contains_key(&pair) && self.pairs.len() >= PAIRS_MAX {
            return Reply {
                granted: false,
                epoch: 0,
                holder: 0,
            };
        }
        let acked = self.pairs.get(&pair).and_then(|p| p.acked);
        self.pairs.insert(
            pair,
            PairState {
                epoch,
                holder: node,
                renewed: now,
                gap: None,
                link_closed: false,
                addr,
                acked,
            },
        );
        Reply {
            granted: true,
            epoch,
            holder: node,
        }
    }

    /// The connection that carried `node`'s renewal of `pair` in `epoch`,
    /// answered at `renewed`, was closed by the node's end (end of stream or
    /// reset). A living master holds that connection open until its next
    /// renewal has been answered, and the kernel closes a dead process's
    /// sockets: if no newer renewal came in between, the process is gone (or
    /// has stopped renewing on purpose), and a refusal confirmed from here
    /// needs no wait for its renewals to stop.
    pub fn link_closed(&mut self, pair: u64, node: u64, epoch: u32, renewed: Instant) {
        if let Some(p) = self.pairs.get_mut(&pair) {
            if p.holder == node && p.epoch == epoch && p.renewed == renewed {
                p.link_closed = true;
            }
        }
    }

    pub fn handle(&mut self, now: Instant, req: Request) -> Reply {
        let started = *self.started.get_or_insert(now);
        let refuse = |p: &PairState| Reply {
            granted: false,
            epoch: p.epoch,
            holder: p.holder,
        };
        match req {
            Request::Renew {
                pair,
                node,
                epoch,
                addr,
                acked,
            } => match self.pairs.get_mut(&pair) {
                Some(p) if p.holder == node && p.epoch == epoch => {
                    p.acked = LogMark::higher(p.acked, acked);
                    let gap = now.saturating_duration_since(p.renewed);
                    p.gap = Some(match p.gap {
                        Some(g) => gap.max(g - g / 8),
                        None => gap,
                    });
                    p.renewed = now;
                    p.link_closed = false;
                    if addr.is_some() {
                        p.addr = addr;
                    }
                    Reply {
                        granted: true,
                        epoch,
                        holder: node,
                    }
                }
                // A master the witness has not heard of (first contact, or the
                // witness restarted): recorded if nothing newer is known.
                Some(p) if epoch <= p.epoch => refuse(p),
                _ => {
                    let r = self.record(now, pair, node, epoch, addr);
                    if let Some(p) = self.pairs.get_mut(&pair) {
                        p.acked = LogMark::higher(p.acked, acked);
                    }
                    r
                }
            },
            Request::Promote {
                pair,
                node,
                epoch,
                dead,
                tail,
            } => {
                let fresh = now.saturating_duration_since(started) <= self.hold;
                let hold = self.hold;
                match self.pairs.get(&pair) {
                    // The requester's log ends below what the pair's slave
                    // acknowledged: granting would lose acknowledged writes.
                    // The node that holds them takes over (or the operator
                    // restarts the witness to accept the loss).
                    Some(p) if behind(p.acked, tail) => refuse(p),
                    // The holder asks again for the epoch it was granted: its
                    // grant never became durable (a failed sync, a crash in
                    // between), so it never served in it. Granted again, or
                    // the pair would wait forever for an epoch nobody holds.
                    Some(p) if p.holder == node && p.epoch == epoch => {
                        self.record(now, pair, node, epoch, p.addr)
                    }
                    Some(p) if epoch <= p.epoch => refuse(p),
                    // Refused both to the requester and to the witness, but the
                    // holder still renews and holds its renewal link open:
                    // something on its host refuses for it (a REJECT rule on
                    // its port) while it lives and serves.
                    Some(p)
                        if dead && p.holder != node && !p.link_closed && p.renewing(now, hold) =>
                    {
                        refuse(p)
                    }
                    // Refused to both, and its renewal link closed or its
                    // renewals stopped: the process is gone.
                    _ if dead => self.record(now, pair, node, epoch, None),
                    // Just started: a master may still run on a lease from our previous life.
                    Some(p) if fresh && p.holder != node => refuse(p),
                    None if fresh => Reply {
                        granted: false,
                        epoch: 0,
                        holder: 0,
                    },
                    Some(p)
                        if p.holder != node
                            && now.saturating_duration_since(p.renewed) <= self.hold =>
                    {
                        refuse(p)
                    }
                    _ => self.record(now, pair, node, epoch, None),
                }
            }
        }
    }
}

/// Whether a log ending at `tail` lacks records acknowledged at `acked`.
/// Another history (or an older node that does not say) is not compared.
fn behind(acked: Option<LogMark>, tail: Option<LogMark>) -> bool {
    matches!((acked, tail), (Some(a), Some(t)) if a.history == t.history && t.pos < a.pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_below_what_the_slave_acknowledged_is_never_granted() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut w = Witness::new(Duration::from_millis(300));
        let h = 0xabc;
        let mark = |history, pos| Some(LogMark { history, pos });
        let renew = |acked| Request::Renew {
            pair: 1,
            node: 10,
            epoch: 1,
            addr: None,
            acked,
        };
        let promote = |node, epoch, tail| Request::Promote {
            pair: 1,
            node,
            epoch,
            dead: false,
            tail,
        };
        assert!(w.handle(ms(0), renew(mark(h, 1000))).granted);
        // A lower report never lowers what was acknowledged.
        assert!(w.handle(ms(10), renew(mark(h, 400))).granted);
        // The holder back from a power cut with 800: refused, at once or later.
        assert!(!w.handle(ms(20), promote(10, 3, mark(h, 800))).granted);
        assert!(!w.handle(ms(900), promote(10, 3, mark(h, 800))).granted);
        // Its slave, holding 1000, is granted once the holder is silent.
        assert!(w.handle(ms(900), promote(20, 2, mark(h, 1000))).granted);
        // Kept across the grant: the old holder still cannot take over below it.
        assert!(!w.handle(ms(2000), promote(10, 5, mark(h, 999))).granted);
        assert!(w.handle(ms(2000), promote(10, 5, mark(h, 1000))).granted);
        // Another history (a blank node) and an older node (no mark) are not compared.
        assert!(w.handle(ms(3000), promote(20, 6, mark(7, 0))).granted);
        assert!(w.handle(ms(4000), promote(10, 9, None)).granted);
        // A new history replaces the old mark.
        assert!(
            w.handle(
                ms(4010),
                Request::Renew {
                    pair: 1,
                    node: 10,
                    epoch: 9,
                    addr: None,
                    acked: mark(8, 5),
                }
            )
            .granted
        );
        assert!(w.handle(ms(5000), promote(20, 10, mark(8, 5))).granted);
    }

    #[test]
    fn a_grant_that_never_became_durable_is_granted_again_to_its_holder_only() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut w = Witness::new(Duration::from_millis(300));
        let promote = |node, epoch| Request::Promote {
            pair: 1,
            node,
            epoch,
            dead: false,
            tail: None,
        };
        assert!(!w.handle(ms(0), promote(20, 3)).granted, "fresh");
        assert!(w.handle(ms(400), promote(20, 3)).granted);
        // Node 20 failed to make epoch 3 durable and asks again: granted.
        assert!(w.handle(ms(410), promote(20, 3)).granted);
        // Nobody else gets it, nor anything at or below it.
        assert!(!w.handle(ms(420), promote(10, 3)).granted);
        assert!(!w.handle(ms(420), promote(10, 2)).granted);
        assert!(!w.handle(ms(420), promote(20, 2)).granted);
    }

    #[test]
    fn grants_only_newer_epochs_and_only_when_the_master_is_silent() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut w = Witness::new(Duration::from_millis(300));
        assert!(
            w.handle(
                ms(0),
                Request::Renew {
                    pair: 1,
                    node: 10,
                    epoch: 1,
                    addr: None,
                    acked: None,
                }
            )
            .granted
        );
        // Just started, it knows nothing of other pairs' masters: no promotion on silence yet.
        assert!(
            !w.handle(
                ms(10),
                Request::Promote {
                    pair: 3,
                    node: 10,
                    epoch: 1,
                    dead: false,
                    tail: None,
                }
            )
            .granted
        );
        // The master renews: the slave may not take over.
        assert!(
            w.handle(
                ms(100),
                Request::Renew {
                    pair: 1,
                    node: 10,
                    epoch: 1,
                    addr: None,
                    acked: None,
                }
            )
            .granted
        );
        assert!(
            !w.handle(
                ms(200),
                Request::Promote {
                    pair: 1,
                    node: 20,
                    epoch: 2,
                    dead: false,
                    tail: None,
                }
            )
            .granted
        );
        // Silent longer than the hold: granted, once.
        assert!(
            w.handle(
                ms(500),
                Request::Promote {
                    pair: 1,
                    node: 20,
                    epoch: 2,
                    dead: false,
                    tail: None,
                }
            )
            .granted
        );
        assert!(
            !w.handle(
                ms(501),
                Request::Promote {
                    pair: 1,
                    node: 30,
                    epoch: 2,
                    dead: false,
                    tail: None,
                }
            )
            .granted
        );
        // The old master comes back: fenced, told who holds which epoch.
        let r = w.handle(
            ms(600),
            Request::Renew {
                pair: 1,
                node: 10,
                epoch: 1,
                addr: None,
                acked: None,
            },
        );
        assert_eq!(
            r,
            Reply {
                granted: false,
                epoch: 2,
                holder: 20
            }
        );
        // Refused to the requester and to the witness, but the holder renews
        // (a REJECT rule on its host refuses everyone while it lives): no grant
        // while it keeps renewing, within two of its renewal intervals.
        let mut w = Witness::new(Duration::from_millis(300));
        let renew = |w: &mut Witness, at| {
            w.handle(
                ms(at),
                Request::Renew {
                    pair: 1,
                    node: 20,
                    epoch: 2,
                    addr: None,
                    acked: None,
                },
            )
            .granted
        };
        let dead = |w: &mut Witness, at, epoch| {
            w.handle(
                ms(at),
                Request::Promote {
                    pair: 1,
                    node: 10,
                    epoch,
                    dead: true,
                    tail: None,
                },
            )
            .granted
        };
        assert!(renew(&mut w, 400));
        // One renewal: no interval known yet, so the hold is the window.
        assert!(
            !dead(&mut w, 650, 3),
            "granted within the hold after one renewal"
        );
        for at in [450, 500, 550, 600] {
            assert!(renew(&mut w, at));
        }
        assert!(!dead(&mut w, 601, 3), "granted right after a renewal");
        assert!(!dead(&mut w, 690, 3), "granted a tick after a renewal");
        // Its renewals stopped for two intervals (2 x 50 ms): the process is gone.
        assert!(
            dead(&mut w, 701, 3),
            "a confirmed refusal and no renewals: grant"
        );
        assert!(!renew(&mut w, 702), "the old holder is fenced");

        // A held renewal link: its close after a newer renewal is the normal
        // hand-over (no effect); its close with no newer renewal is a death,
        // and a confirmed refusal is then granted at once.
        let mut w = Witness::new(Duration::from_millis(300));
        assert!(renew(&mut w, 400));
        assert!(renew(&mut w, 450));
        w.link_closed(1, 20, 2, ms(400));
        assert!(
            !dead(&mut w, 451, 3),
            "an older link's close is the hand-over"
        );
        w.link_closed(1, 20, 2, ms(450));
        assert!(
            dead(&mut w, 452, 3),
            "the latest link closed and refused: grant"
        );
        // A closed link alone (no refusal confirmed) is not a grant.
        let mut w = Witness::new(Duration::from_millis(300));
        assert!(renew(&mut w, 400));
        w.link_closed(1, 20, 2, ms(400));
        assert!(
            !w.handle(
                ms(401),
                Request::Promote {
                    pair: 1,
                    node: 10,
                    epoch: 3,
                    dead: false,
                    tail: None,
                }
            )
            .granted
        );
        // Pairs are independent (and past the first hold period, a new pair is granted).
        assert!(
            w.handle(
                ms(701),
                Request::Promote {
                    pair: 2,
                    node: 10,
                    epoch: 1,
                    dead: false,
                    tail: None,
                }
            )
            .granted
        );
    }
}
