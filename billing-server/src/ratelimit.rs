//! Rate limiting of failed lookups (validate, activate): a keyed GCRA
//! limiter (governor) counts failures; once a client exceeds its quota, all
//! its lookups are refused until the quota refills, so a hit cannot be told
//! apart from a miss while blocked.

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

#[cfg(test)]
mod tests {
    use super::*;

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
