//! Request limits, with time as a parameter: a token bucket per key (pushes
//! per process id, picks per source address) and a single one (all picks).
//! The bucket is hs's ([`hs::proto::ratelimit::TokenBucket`]); this module
//! adds the keyed, bounded table and the refusal a client is told.
//!
//! Not replicated: after a failover the standby starts with full buckets,
//! which at worst lets one burst through.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

use crate::registry::Millis;

/// One token bucket on the balancer's clock: tokens are requests. hs's
/// bucket (the one that paces catch-up), on milliseconds.
pub type TokenBucket = hs::proto::ratelimit::TokenBucket<Millis>;

/// A full bucket at `now_ms`: `rate_per_s` tokens a second (at least 1), at
/// most `burst` (at least 1).
pub fn bucket(rate_per_s: u32, burst: u32, now_ms: Millis) -> TokenBucket {
    TokenBucket::full(now_ms, rate_per_s.max(1) as u64, burst.max(1) as u64)
}

/// Takes one token, or says how long until one is back.
pub fn take(bucket: &mut TokenBucket, now_ms: Millis) -> Result<(), Refused> {
    if bucket.try_take(now_ms, 1) {
        return Ok(());
    }
    Err(Refused::Limited {
        retry_after_ms: bucket.ready_at(now_ms, 1).saturating_sub(now_ms),
    })
}

/// A request was refused; retry after this long.
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

/// Token buckets keyed by process id (or any key: picks use the source
/// address), at most `entries_max` keys.
#[derive(Debug)]
pub struct RateLimiter<K = String> {
    rate_per_s: u32,
    burst: u32,
    entries_max: usize,
    buckets: HashMap<K, TokenBucket>,
}

impl<K: Hash + Eq> RateLimiter<K> {
    /// `rate_per_s` tokens per second refill, `burst` tokens at most, and at
    /// most `entries_max` keys tracked (about 64 bytes each).
    pub fn new(rate_per_s: u32, burst: u32, entries_max: usize) -> RateLimiter<K> {
        RateLimiter {
            rate_per_s,
            burst,
            entries_max: entries_max.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `key`, or says why not.
    pub fn check<Q>(&mut self, key: &Q, now_ms: Millis) -> Result<(), Refused>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(b) = self.buckets.get_mut(key) {
            return take(b, now_ms);
        }
        if self.buckets.len() >= self.entries_max {
            self.evict_full(now_ms);
            if self.buckets.len() >= self.entries_max {
                return Err(Refused::TableFull);
            }
        }
        let mut b = bucket(self.rate_per_s, self.burst, now_ms);
        let result = take(&mut b, now_ms);
        self.buckets.insert(key.to_owned(), b);
        result
    }

    /// Drops keys whose bucket has refilled: forgetting them changes nothing.
    fn evict_full(&mut self, now_ms: Millis) {
        self.buckets.retain(|_, b| !b.is_full_at(now_ms));
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

    #[test]
    fn a_single_bucket_refills_at_its_rate() {
        let mut b = bucket(2, 2, 0);
        assert!(take(&mut b, 0).is_ok());
        assert!(take(&mut b, 0).is_ok());
        assert_eq!(
            take(&mut b, 0),
            Err(Refused::Limited {
                retry_after_ms: 500
            })
        );
        assert_eq!(
            take(&mut b, 250),
            Err(Refused::Limited {
                retry_after_ms: 250
            })
        );
        assert!(take(&mut b, 500).is_ok());
    }

    #[test]
    fn keys_can_be_addresses() {
        let mut r: RateLimiter<std::net::IpAddr> = RateLimiter::new(1, 1, 10);
        let a: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let b: std::net::IpAddr = "10.0.0.2".parse().unwrap();
        assert!(r.check(&a, 0).is_ok());
        assert!(r.check(&a, 0).is_err());
        assert!(r.check(&b, 0).is_ok());
    }
}
