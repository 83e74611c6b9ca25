//! Token bucket for catch-up traffic (seed 004 §5), sans-IO: time is a parameter.
//!
//! Tokens are bytes. They accrue at `rate_bytes_per_s` up to `burst_bytes`;
//! sending `n` bytes spends `n`. Over a long catch-up the bytes sent are
//! `burst + rate * elapsed`, so the error of the average rate is
//! `burst / (rate * elapsed)`: keep the burst a small fraction of a second's worth.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_bytes_per_s: u64,
    burst_bytes: u64,
    /// Tokens, in bytes scaled by 1e9 (byte-nanoseconds per second) to stay exact.
    tokens_scaled: u128,
    last: Instant,
}

const SCALE: u128 = 1_000_000_000;

impl TokenBucket {
    /// A bucket that starts empty, so the first second sends `rate` bytes, not `rate + burst`.
    pub fn new(now: Instant, rate_bytes_per_s: u64, burst_bytes: u64) -> Self {
        assert!(rate_bytes_per_s > 0, "rate limit must be positive");
        TokenBucket {
            rate_bytes_per_s,
            burst_bytes: burst_bytes.max(1),
            tokens_scaled: 0,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last);
        self.last = now;
        let add = dt.as_nanos() * self.rate_bytes_per_s as u128;
        self.tokens_scaled = (self.tokens_scaled + add).min(self.burst_bytes as u128 * SCALE);
    }

    /// Bytes that may be sent now (at most `want`); they are spent.
    pub fn take(&mut self, now: Instant, want: u64) -> u64 {
        self.refill(now);
        let avail = (self.tokens_scaled / SCALE) as u64;
        let n = avail.min(want);
        self.tokens_scaled -= n as u128 * SCALE;
        n
    }

    /// Spends `n` bytes (capped at the burst) if they are all there; otherwise spends nothing.
    pub fn try_take(&mut self, now: Instant, n: u64) -> bool {
        self.refill(now);
        let need = n.min(self.burst_bytes) as u128 * SCALE;
        if self.tokens_scaled >= need {
            self.tokens_scaled -= need;
            true
        } else {
            false
        }
    }

    /// When `want` bytes (capped at the burst) will be available.
    pub fn ready_at(&self, now: Instant, want: u64) -> Instant {
        let want = (want.min(self.burst_bytes) as u128) * SCALE;
        let dt =
            now.saturating_duration_since(self.last).as_nanos() * self.rate_bytes_per_s as u128;
        let have = self.tokens_scaled + dt;
        if have >= want {
            return now;
        }
        let missing = want - have;
        let nanos = missing.div_ceil(self.rate_bytes_per_s as u128);
        now + Duration::from_nanos(nanos.min(u64::MAX as u128) as u64)
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
}
