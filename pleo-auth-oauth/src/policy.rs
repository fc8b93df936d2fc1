//! When to refresh, how to retry, and how long to wait for others.

use std::time::Duration;

use pleo_auth_core::Backoff;

use crate::error::{Error, Result};

/// Timing of the refresh manager. [`RefreshPolicy::default`] suits production; tests shorten the
/// backoffs.
///
/// ```
/// use std::time::Duration;
/// use pleo_auth_oauth::RefreshPolicy;
///
/// let policy = RefreshPolicy {
///     refresh_margin: Duration::from_secs(120),
///     ..RefreshPolicy::default()
/// };
/// assert!(policy.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshPolicy {
    /// Refresh this long before the access token expires (default 60 s, at least 1 s: the
    /// request must still reach Pleo in time, and the cache's freshness check reads a clock that
    /// may be a few milliseconds off).
    pub refresh_margin: Duration,
    /// An extra margin between zero and this, so grants do not all refresh at the same instant
    /// (default 30 s). The share is random per manager instance (and spread across grants), so
    /// replicas reach the refresh window one after another: the first one refreshes under the
    /// lease, the others find the rotated pair in the store. Margin plus jitter is capped at
    /// half the token's lifetime.
    pub refresh_jitter: Duration,
    /// The lifetime assumed when a token response has no `expires_in` (default 5 minutes).
    pub assumed_lifetime: Duration,
    /// How long the refresh lease is held without renewal (default 60 s). Another replica takes
    /// over a lease whose holder died (or was paused) after this. It must exceed the HTTP request
    /// timeout plus [`store_timeout`](Self::store_timeout): right before a refresh token is
    /// presented, the holder renews the lease (which confirms it still holds it), so the token
    /// request and the first write of its answer end before the lease can. A live holder also
    /// renews the lease every third of this while it refreshes and writes, and while rotated
    /// tokens wait for their store write.
    pub lease_ttl: Duration,
    /// The longest a refresh waits for the first store write of a rotated pair (default 10 s);
    /// a write that takes longer leaves the pair pending (kept, served, retried in the
    /// background, the lease renewed).
    pub store_timeout: Duration,
    /// How long a replica that did not get the lease waits for the holder's result, polling the
    /// store, before it gives up with a retryable error (default 70 s; at least `lease_ttl`).
    pub lease_wait: Duration,
    /// Token requests per refresh, including the first (default 3).
    pub max_attempts: u32,
    /// The first retry delay; it doubles per attempt, with jitter (default 250 ms).
    pub initial_backoff: Duration,
    /// The largest retry delay (default 5 s).
    pub max_backoff: Duration,
    /// The longest `Retry-After` waited for within one refresh (default 5 s). A longer one ends
    /// the refresh with [`ErrorKind::RateLimited`](crate::ErrorKind::RateLimited) and a cooldown
    /// of that length.
    pub max_inline_retry_after: Duration,
    /// After a refresh failed, further refreshes of that grant fail fast for this long (default
    /// 30 s), so a failing grant cannot hammer Pleo. A longer `Retry-After` extends it.
    pub cooldown: Duration,
    /// How often a grant that needs reauthorization or was disconnected is read again from the
    /// store (default 30 s), so a reconnect made on another replica is noticed. Between reads,
    /// calls fail fast without I/O.
    pub recheck_interval: Duration,
    /// [`TokenManager::keep_alive`](crate::TokenManager::keep_alive) refreshes grants whose
    /// refresh token is older than this (default 30 days; Pleo keeps them for at least 60).
    pub keep_alive_after: Duration,
    /// The first delay between retries of a failed store write; it doubles (default 100 ms).
    pub persist_initial_backoff: Duration,
    /// The largest delay between retries of a failed store write (default 30 s).
    pub persist_max_backoff: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            refresh_margin: Duration::from_secs(60),
            refresh_jitter: Duration::from_secs(30),
            assumed_lifetime: Duration::from_secs(300),
            lease_ttl: Duration::from_secs(60),
            store_timeout: Duration::from_secs(10),
            lease_wait: Duration::from_secs(70),
            max_attempts: 3,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
            max_inline_retry_after: Duration::from_secs(5),
            cooldown: Duration::from_secs(30),
            recheck_interval: Duration::from_secs(30),
            keep_alive_after: Duration::from_secs(30 * 24 * 3600),
            persist_initial_backoff: Duration::from_millis(100),
            persist_max_backoff: Duration::from_secs(30),
        }
    }
}

impl RefreshPolicy {
    /// Checks that the settings can work together.
    pub fn validate(&self) -> Result<()> {
        if self.max_attempts == 0 {
            return Err(Error::config("max_attempts must be at least 1"));
        }
        if self.refresh_margin < Duration::from_secs(1) {
            return Err(Error::config("refresh_margin must be at least 1 second"));
        }
        if self.lease_ttl.is_zero() || self.store_timeout.is_zero() {
            return Err(Error::config(
                "lease_ttl and store_timeout must be positive",
            ));
        }
        if self.lease_wait < self.lease_ttl {
            return Err(Error::config("lease_wait must be at least lease_ttl"));
        }
        if self.assumed_lifetime.is_zero() {
            return Err(Error::config("assumed_lifetime must be positive"));
        }
        if self.initial_backoff > self.max_backoff
            || self.persist_initial_backoff > self.persist_max_backoff
            || self.persist_initial_backoff.is_zero()
        {
            return Err(Error::config(
                "initial backoffs must be positive and at most the maximum backoffs",
            ));
        }
        Ok(())
    }

    /// How long before expiry a token of `lifetime` is refreshed: margin plus `share` (in
    /// `[0, 1)`) of the jitter, at most half the lifetime.
    pub(crate) fn margin_for(&self, lifetime: Duration, share: f64) -> Duration {
        let jitter = self.refresh_jitter.mul_f64(share.clamp(0.0, 1.0));
        (self.refresh_margin + jitter).min(lifetime / 2)
    }

    /// The delay before retry number `attempt` (1 for the first retry): exponential, capped,
    /// with "equal jitter" (between half and all of the step).
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        Backoff::new(self.initial_backoff, self.max_backoff).delay(attempt)
    }

    /// The delay before store write retry number `attempt`.
    pub(crate) fn persist_backoff(&self, attempt: u32) -> Duration {
        Backoff::new(self.persist_initial_backoff, self.persist_max_backoff).delay(attempt)
    }
}

/// A random number from the operating system's random source (the time, if it has none).
pub(crate) fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    if getrandom::getrandom(&mut buf).is_err() {
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos()
            .into();
    }
    u64::from_le_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_is_capped_at_half_the_lifetime() {
        let policy = RefreshPolicy::default();
        for step in 0..100 {
            let share = f64::from(step) / 100.0;
            let m = policy.margin_for(Duration::from_secs(900), share);
            assert!(
                m >= Duration::from_secs(60) && m <= Duration::from_secs(90),
                "{m:?}"
            );
            assert_eq!(
                policy.margin_for(Duration::from_secs(20), share),
                Duration::from_secs(10)
            );
        }
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        let policy = RefreshPolicy::default();
        for _ in 0..100 {
            let first = policy.backoff(1);
            assert!(first >= Duration::from_millis(125) && first <= Duration::from_millis(250));
            let late = policy.backoff(30);
            assert!(late >= Duration::from_millis(2500) && late <= Duration::from_secs(5));
        }
    }

    #[test]
    fn validation_rejects_unworkable_settings() {
        assert!(RefreshPolicy::default().validate().is_ok());
        let bad = [
            RefreshPolicy {
                max_attempts: 0,
                ..RefreshPolicy::default()
            },
            RefreshPolicy {
                refresh_margin: Duration::from_millis(999),
                ..RefreshPolicy::default()
            },
            RefreshPolicy {
                lease_wait: Duration::from_secs(1),
                ..RefreshPolicy::default()
            },
            RefreshPolicy {
                initial_backoff: Duration::from_secs(10),
                ..RefreshPolicy::default()
            },
        ];
        for policy in bad {
            assert!(policy.validate().is_err(), "{policy:?}");
        }
    }
}
