//! Rate limiting of failed lookups (validate, activate): a keyed GCRA
//! limiter (governor) counts failures; once a client exceeds its quota, all
//! its lookups are refused until the quota refills, so a hit cannot be told
//! apart from a miss while blocked. Trials are limited otherwise: every
//! attempt counts ([`AttemptLimiter`]), since a trial that succeeds is what
//! an abuser wants.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failure limiter for one kind of key (client address, license key hash).
pub struct FailureLimiter<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    blocked: Mutex<HashMap<K, Instant>>,
}

impl<K: Hash + Eq + Clone> FailureLimiter<K> {
    /// At most `per_minute` failures a minute per key.
    pub fn per_minute(per_minute: NonZeroU32) -> Self {
        Self { limiter: RateLimiter::keyed(Quota::per_minute(per_minute)), blocked: Mutex::default() }
    }

    /// `Err(retry_after)` while `key` is blocked.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        let mut blocked = self.blocked.lock().expect("limiter lock is never poisoned");
        match blocked.get(key) {
            Some(until) if *until > Instant::now() => Err(*until - Instant::now()),
            Some(_) => {
                blocked.remove(key);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Counts a failure; `Err(retry_after)` when it exceeds the quota (the
    /// key is then blocked for that long).
    pub fn record_failure(&self, key: &K) -> Result<(), Duration> {
        match self.limiter.check_key(key) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now()).max(Duration::from_secs(1));
                self.blocked.lock().expect("limiter lock is never poisoned").insert(key.clone(), Instant::now() + wait);
                Err(wait)
            }
        }
    }

    /// Forgets keys whose state no longer matters (call periodically).
    pub fn prune(&self) {
        self.limiter.retain_recent();
        let now = Instant::now();
        self.blocked.lock().expect("limiter lock is never poisoned").retain(|_, until| *until > now);
    }
}

/// Attempts per key and hour, every attempt counted (trials per client
/// address): a burst of the quota, then one more each `1/quota` hour.
pub struct AttemptLimiter<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
}

impl<K: Hash + Eq + Clone> AttemptLimiter<K> {
    /// At most `per_hour` attempts an hour per key.
    pub fn per_hour(per_hour: NonZeroU32) -> Self {
        Self { limiter: RateLimiter::keyed(Quota::per_hour(per_hour)) }
    }

    /// Counts an attempt; `Err(retry_after)` when it is one too many (it
    /// then counts for nothing).
    pub fn attempt(&self, key: &K) -> Result<(), Duration> {
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()).max(Duration::from_secs(1)))
    }

    /// Forgets keys whose state no longer matters (call periodically).
    pub fn prune(&self) {
        self.limiter.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_attempt_counts_and_the_one_past_the_quota_is_refused() {
        let limiter = AttemptLimiter::per_hour(NonZeroU32::new(2).unwrap());
        assert!(limiter.attempt(&"a").is_ok() && limiter.attempt(&"a").is_ok());
        let wait = limiter.attempt(&"a").unwrap_err();
        assert!(wait >= Duration::from_secs(60) && wait <= Duration::from_secs(1800), "{wait:?}");
        assert!(limiter.attempt(&"b").is_ok(), "other keys are unaffected");
    }

    #[test]
    fn blocks_after_quota_and_refuses_everything_while_blocked() {
        let limiter = FailureLimiter::per_minute(NonZeroU32::new(3).unwrap());
        for _ in 0..3 {
            assert!(limiter.record_failure(&"a").is_ok());
        }
        let wait = limiter.record_failure(&"a").unwrap_err();
        assert!(wait >= Duration::from_secs(1) && wait <= Duration::from_secs(60), "{wait:?}");
        assert!(limiter.check(&"a").is_err());
        assert!(limiter.check(&"b").is_ok(), "other keys are unaffected");
    }
}
