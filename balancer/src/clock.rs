//! The balancer's time: the wall clock read once at start, then advanced by
//! the monotonic clock only ([`Clock`]), so no local deadline moves when the
//! wall clock steps. [`ManualTime`] is a test's hand on it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::registry::Millis;

/// Where a [`Clock`] reads time: the OS ([`OsTime`]), or a test's hand
/// ([`ManualTime`]).
pub trait TimeSource: Send + Sync + 'static {
    /// Milliseconds on a clock that never steps (`CLOCK_MONOTONIC`), from
    /// any origin.
    fn monotonic_ms(&self) -> u64;
    /// Unix milliseconds (NTP or an operator may step it).
    fn wall_ms(&self) -> u64;
}

/// The OS clocks.
#[derive(Debug)]
pub struct OsTime {
    origin: std::time::Instant,
}

impl Default for OsTime {
    fn default() -> Self {
        OsTime {
            origin: std::time::Instant::now(),
        }
    }
}

impl TimeSource for OsTime {
    fn monotonic_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }
    fn wall_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// Clocks a test moves by hand.
#[derive(Debug, Default)]
pub struct ManualTime {
    /// Monotonic milliseconds.
    pub monotonic_ms: AtomicU64,
    /// Unix milliseconds.
    pub wall_ms: AtomicU64,
}

impl ManualTime {
    /// Both clocks at these values.
    pub fn new(monotonic_ms: u64, wall_ms: u64) -> ManualTime {
        ManualTime {
            monotonic_ms: AtomicU64::new(monotonic_ms),
            wall_ms: AtomicU64::new(wall_ms),
        }
    }

    /// Time passes: both clocks move by `ms`.
    pub fn advance(&self, ms: u64) {
        self.monotonic_ms.fetch_add(ms, Ordering::SeqCst);
        self.wall_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// The wall clock is stepped by `ms` (NTP, an operator); the monotonic
    /// clock is not.
    pub fn step_wall(&self, ms: i64) {
        let w = self
            .wall_ms
            .load(Ordering::SeqCst)
            .saturating_add_signed(ms);
        self.wall_ms.store(w, Ordering::SeqCst);
    }
}

impl TimeSource for ManualTime {
    fn monotonic_ms(&self) -> u64 {
        self.monotonic_ms.load(Ordering::SeqCst)
    }
    fn wall_ms(&self) -> u64 {
        self.wall_ms.load(Ordering::SeqCst)
    }
}

impl<T: TimeSource> TimeSource for Arc<T> {
    fn monotonic_ms(&self) -> u64 {
        (**self).monotonic_ms()
    }
    fn wall_ms(&self) -> u64 {
        (**self).wall_ms()
    }
}

/// The registry's clock: unix ms read once at start, then advanced by the
/// monotonic clock only. Local deadlines (reservation expiry, push
/// timeouts, spawn and retention timers, rate limits) are differences of
/// its readings, so a wall-clock step (NTP, an operator) moves none of them;
/// the numbers still read as unix ms (off by the steps since start) in
/// lists and logs. Replicated times are carried to another balancer's clock
/// as ages (see [`crate::standby`]), never compared across machines.
pub struct Clock {
    source: Box<dyn TimeSource>,
    origin_monotonic_ms: u64,
    origin_wall_ms: u64,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clock")
            .field("origin_wall_ms", &self.origin_wall_ms)
            .finish_non_exhaustive()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::with_source(OsTime::default())
    }
}

impl Clock {
    /// A clock reading `source`, anchored at its wall time now.
    pub fn with_source(source: impl TimeSource) -> Clock {
        let origin_monotonic_ms = source.monotonic_ms();
        let origin_wall_ms = source.wall_ms();
        Clock {
            source: Box::new(source),
            origin_monotonic_ms,
            origin_wall_ms,
        }
    }

    /// Now, in registry ms: never goes backwards, never jumps.
    pub fn now_ms(&self) -> Millis {
        let elapsed = self
            .source
            .monotonic_ms()
            .saturating_sub(self.origin_monotonic_ms);
        self.origin_wall_ms.saturating_add(elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Local deadlines (reservations, push timeouts, spawn timers) are
    /// measured on the monotonic clock: a wall-clock step moves none.
    #[test]
    fn the_registry_clock_ignores_wall_clock_steps() {
        let time = Arc::new(ManualTime::new(40, 1_700_000_000_000));
        let clock = Clock::with_source(time.clone());
        let t0 = clock.now_ms();
        time.step_wall(3_600_000);
        time.advance(100);
        assert_eq!(
            clock.now_ms(),
            t0 + 100,
            "a step forward is not time passing"
        );
        time.step_wall(-7_200_000);
        time.advance(100);
        assert_eq!(clock.now_ms(), t0 + 200, "nor is a step back");
    }
}
