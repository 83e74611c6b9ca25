//! Token bucket, sans-IO: time is a parameter. hs paces catch-up traffic with
//! it (seed 004 §5: tokens are bytes, time an [`Instant`]); the balancer
//! limits pushes and picks with it (tokens are requests, time its own
//! millisecond clock). One implementation, so both get the same arithmetic.
//!
//! Tokens accrue at `rate_per_s` up to `burst`; spending `n` takes `n`. Over
//! a long run the tokens spent are `rate * elapsed`, plus `burst` from a full
//! bucket, so the error of the average rate is at most `burst / (rate *
//! elapsed)`: keep the burst a small fraction of a second's worth where the
//! average matters.

use std::time::{Duration, Instant};

/// A point on a monotonic clock a bucket measures intervals on.
pub trait BucketTime: Copy + Ord {
    /// Nanoseconds from `earlier` to `self`; 0 if `earlier` is not earlier.
    fn nanos_since(self, earlier: Self) -> u128;
    /// The first point at least `nanos` after `self`.
    fn after_nanos(self, nanos: u64) -> Self;
}

impl BucketTime for Instant {
    fn nanos_since(self, earlier: Self) -> u128 {
        self.saturating_duration_since(earlier).as_nanos()
    }
    fn after_nanos(self, nanos: u64) -> Self {
        self + Duration::from_nanos(nanos)
    }
}

/// Milliseconds on the caller's monotonic clock (the balancer's `Millis`).
impl BucketTime for u64 {
    fn nanos_since(self, earlier: Self) -> u128 {
        self.saturating_sub(earlier) as u128 * 1_000_000
    }
    fn after_nanos(self, nanos: u64) -> Self {
        self.saturating_add(nanos.div_ceil(1_000_000))
    }
}

/// A token bucket: `rate_per_s` tokens a second, at most `burst` held.
#[derive(Debug, Clone)]
pub struct TokenBucket<T: BucketTime = Instant> {
    rate_per_s: u64,
    burst: u64,
    /// Tokens scaled by 1e9 (token-nanoseconds per second), so refill is exact.
    tokens_scaled: u128,
    last: T,
}

const SCALE: u128 = 1_000_000_000;

impl<T: BucketTime> TokenBucket<T> {
    /// A bucket that starts empty, so the first second spends `rate` tokens,
    /// not `rate + burst` (catch-up pacing).
    pub fn new(now: T, rate_per_s: u64, burst: u64) -> Self {
        assert!(rate_per_s > 0, "rate limit must be positive");
        TokenBucket {
            rate_per_s,
            burst: burst.max(1),
            tokens_scaled: 0,
            last: now,
        }
    }

    /// A bucket that starts full: a new client may spend its burst at once
    /// (request limits).
    pub fn full(now: T, rate_per_s: u64, burst: u64) -> Self {
        let mut b = TokenBucket::new(now, rate_per_s, burst);
        b.tokens_scaled = b.burst as u128 * SCALE;
        b
    }

    fn refill(&mut self, now: T) {
        let add = now.nanos_since(self.last) * self.rate_per_s as u128;
        self.last = self.last.max(now);
        self.tokens_scaled = (self.tokens_scaled + add).min(self.burst as u128 * SCALE);
    }

    /// Tokens that may be spent now (at most `want`); they are spent.
    pub fn take(&mut self, now: T, want: u64) -> u64 {
        self.refill(now);
        let avail = (self.tokens_scaled / SCALE) as u64;
        let n = avail.min(want);
        self.tokens_scaled -= n as u128 * SCALE;
        n
    }

    /// Spends `n` tokens (capped at the burst) if they are all there;
    /// otherwise spends nothing.
    pub fn try_take(&mut self, now: T, n: u64) -> bool {
        self.refill(now);
        let need = n.min(self.burst) as u128 * SCALE;
        if self.tokens_scaled >= need {
            self.tokens_scaled -= need;
            true
        } else {
            false
        }
    }

    /// When `want` tokens (capped at the burst) will be available.
    pub fn ready_at(&self, now: T, want: u64) -> T {
        let want = (want.min(self.burst) as u128) * SCALE;
        let have = self.tokens_scaled + now.nanos_since(self.last) * self.rate_per_s as u128;
        if have >= want {
            return now;
        }
        let missing = want - have;
        let nanos = missing.div_ceil(self.rate_per_s as u128);
        now.after_nanos(nanos.min(u64::MAX as u128) as u64)
    }

    /// Whether the bucket is full at `now` (forgetting it changes nothing).
    pub fn is_full_at(&self, now: T) -> bool {
        self.tokens_scaled + now.nanos_since(self.last) * self.rate_per_s as u128
            >= self.burst as u128 * SCALE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn starts_empty_and_refills_at_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0, 1000, 500);
        assert_eq!(b.take(t0, 100), 0);
        assert_eq!(b.take(t0 + Duration::from_millis(100), 1000), 100);
        // capped at the burst
        assert_eq!(b.take(t0 + Duration::from_secs(10), 10_000), 500);
        assert_eq!(
            b.ready_at(t0 + Duration::from_secs(10), 250),
            t0 + Duration::from_secs(10) + Duration::from_millis(250)
        );
    }

    proptest! {
        /// Driven the way the sender drives it (`master.rs::wait_tokens`: try to
        /// take a chunk, else sleep until it is ready),
        /// the long-run rate is the setting within the burst's share.
        #[test]
        fn long_run_rate_is_accurate(rate in 1_000u64..1_000_000_000, chunk_frac in 1u64..50) {
            let t0 = Instant::now();
            let burst = (rate / 20).max(1);
            let chunk = (burst * chunk_frac / 50).max(1);
            let mut b = TokenBucket::new(t0, rate, burst);
            let mut now = t0;
            let mut sent = 0u64;
            let end = t0 + Duration::from_secs(4);
            let mut steps = 0;
            while now < end && steps < 10_000_000 {
                steps += 1;
                if b.try_take(now, chunk) {
                    sent += chunk;
                } else {
                    now = b.ready_at(now, chunk).max(now + Duration::from_nanos(1));
                }
            }
            let secs = now.duration_since(t0).as_secs_f64();
            let measured = sent as f64 / secs;
            prop_assert!((measured / rate as f64 - 1.0).abs() < 0.02, "measured {measured} vs {rate}");
        }
    }

    #[test]
    fn a_full_bucket_on_a_millisecond_clock() {
        let mut b = TokenBucket::full(0u64, 2, 2);
        assert!(b.try_take(0, 1));
        assert!(b.try_take(0, 1));
        assert!(!b.try_take(0, 1));
        assert_eq!(b.ready_at(0, 1), 500);
        assert_eq!(b.ready_at(250, 1), 500, "half a token back after 250 ms");
        assert!(!b.is_full_at(999));
        assert!(b.is_full_at(1000));
        assert!(b.try_take(500, 1));
        // Time that goes back refills nothing and loses nothing.
        assert!(!b.try_take(400, 1));
        assert_eq!(b.ready_at(500, 1), 1000);
    }
}
