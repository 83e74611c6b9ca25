//! Per-key token buckets for pushes, with time as a parameter.
//!
//! Not replicated: after a failover the standby starts with full buckets,
//! which at worst lets one burst through.

use std::collections::HashMap;

use crate::registry::Millis;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Tokens in thousandths, so refill has no rounding drift.
    milli_tokens: u64,
    last_ms: Millis,
}

/// A push was refused; retry after this long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// This key used its burst; one token comes back after `retry_after_ms`.
    Limited {
        /// Wait before retrying.
        retry_after_ms: u64,
    },
    /// The table is full of keys that are all active.
    TableFull,
}

/// Token buckets keyed by process id, at most `entries_max` keys.
#[derive(Debug)]
pub struct RateLimiter {
    rate_per_s: u64,
    burst: u64,
    entries_max: usize,
    buckets: HashMap<String, Bucket>,
}

impl RateLimiter {
    /// `rate_per_s` tokens per second refill, `burst` tokens at most, and at
    /// most `entries_max` keys tracked (about 64 bytes each).
    pub fn new(rate_per_s: u32, burst: u32, entries_max: usize) -> RateLimiter {
        RateLimiter {
            rate_per_s: rate_per_s.max(1) as u64,
            burst: burst.max(1) as u64,
            entries_max: entries_max.max(1),
            buckets: HashMap::new(),
        }
    }

    fn refill(&self, b: &mut Bucket, now_ms: Millis) {
        let elapsed = now_ms.saturating_sub(b.last_ms);
        b.milli_tokens =
            (b.milli_tokens + elapsed.saturating_mul(self.rate_per_s)).min(self.burst * 1000);
        b.last_ms = b.last_ms.max(now_ms);
    }

    /// Takes one token for `key`, or says why not.
    pub fn check(&mut self, key: &str, now_ms: Millis) -> Result<(), Refused> {
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.entries_max {
            self.evict_full(now_ms);
            if self.buckets.len() >= self.entries_max {
                return Err(Refused::TableFull);
            }
        }
        let fresh = Bucket {
            milli_tokens: self.burst * 1000,
            last_ms: now_ms,
        };
        let mut b = self.buckets.get(key).copied().unwrap_or(fresh);
        self.refill(&mut b, now_ms);
        let result = if b.milli_tokens >= 1000 {
            b.milli_tokens -= 1000;
            Ok(())
        } else {
            let missing = 1000 - b.milli_tokens;
            Err(Refused::Limited {
                retry_after_ms: missing.div_ceil(self.rate_per_s),
            })
        };
        self.buckets.insert(key.to_string(), b);
        result
    }

    /// Drops keys whose bucket has refilled: forgetting them changes nothing.
    fn evict_full(&mut self, now_ms: Millis) {
        let full = self.burst * 1000;
        let rate = self.rate_per_s;
        self.buckets.retain(|_, b| {
            b.milli_tokens + now_ms.saturating_sub(b.last_ms).saturating_mul(rate) < full
        });
    }

    /// Keys tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True when no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let mut r = RateLimiter::new(10, 3, 100);
        for _ in 0..3 {
            r.check("a", 0).unwrap();
        }
        assert_eq!(
            r.check("a", 0),
            Err(Refused::Limited {
                retry_after_ms: 100
            })
        );
        assert!(r.check("b", 0).is_ok(), "keys are independent");
        assert_eq!(
            r.check("a", 50),
            Err(Refused::Limited { retry_after_ms: 50 })
        );
        assert!(r.check("a", 100).is_ok());
        assert!(r.check("a", 100).is_err());
    }

    #[test]
    fn table_is_bounded_and_evicts_idle_keys() {
        let mut r = RateLimiter::new(10, 2, 2);
        r.check("a", 0).unwrap();
        r.check("b", 0).unwrap();
        assert_eq!(r.check("c", 0), Err(Refused::TableFull));
        assert_eq!(r.len(), 2);
        // After 100 ms a and b have refilled and can be forgotten.
        r.check("c", 100).unwrap();
        assert_eq!(r.len(), 1);
    }
}
