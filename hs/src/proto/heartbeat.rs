//! Seed 004 §6's liveness scheme, sans-IO.
//!
//! Every received frame bumps a counter (`on_frame`). Each timer tick
//! (`on_tick`) compares the counter with the copy taken at the previous tick:
//! changed means alive (copy it over), unchanged means one more idle tick, and
//! `dead_ticks` idle ticks in a row mean the peer is dead. TCP keepalive is not
//! used (seed 004: system-wide settings, hours by default, unreliable in practice).

/// Liveness of one peer connection.
#[derive(Debug, Clone)]
pub struct Liveness {
    received: u64,
    seen_at_last_tick: u64,
    idle_ticks: u32,
    dead_ticks: u32,
}

/// What a tick concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Something arrived since the last tick.
    Alive,
    /// Nothing arrived for this many ticks (fewer than the limit).
    Idle(u32),
    /// Nothing arrived for `dead_ticks` ticks: the peer is dead or cut off.
    Dead,
}

impl Liveness {
    /// `dead_ticks`: idle ticks that mean the peer is dead (at least 1).
    pub fn new(dead_ticks: u32) -> Self {
        assert!(dead_ticks >= 1, "heartbeat_dead_ticks must be at least 1");
        Liveness {
            received: 0,
            seen_at_last_tick: 0,
            idle_ticks: 0,
            dead_ticks,
        }
    }

    /// A frame arrived from the peer.
    #[inline]
    pub fn on_frame(&mut self) {
        self.received = self.received.wrapping_add(1);
    }

    /// The heartbeat timer fired.
    pub fn on_tick(&mut self) -> Tick {
        if self.received != self.seen_at_last_tick {
            self.seen_at_last_tick = self.received;
            self.idle_ticks = 0;
            return Tick::Alive;
        }
        self.idle_ticks += 1;
        if self.idle_ticks >= self.dead_ticks {
            Tick::Dead
        } else {
            Tick::Idle(self.idle_ticks)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_after_exactly_n_idle_ticks_and_revived_by_a_frame() {
        let mut l = Liveness::new(3);
        l.on_frame();
        assert_eq!(l.on_tick(), Tick::Alive);
        assert_eq!(l.on_tick(), Tick::Idle(1));
        assert_eq!(l.on_tick(), Tick::Idle(2));
        l.on_frame();
        assert_eq!(l.on_tick(), Tick::Alive);
        assert_eq!(l.on_tick(), Tick::Idle(1));
        assert_eq!(l.on_tick(), Tick::Idle(2));
        assert_eq!(l.on_tick(), Tick::Dead);
    }
}
