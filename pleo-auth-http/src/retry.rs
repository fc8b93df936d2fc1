//! Bounded retries of transient failures: exponential backoff with jitter, `Retry-After`, and
//! a per-call deadline.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pleo_auth_core::Backoff;
use reqwest::Method;

/// How transient failures (HTTP 429, 502, 503, 504 and connection errors) are retried.
///
/// Retries apply to idempotent methods (`GET`, `HEAD`, `OPTIONS`, `PUT`, `DELETE`); a `POST` or
/// `PATCH` is retried only when the caller opts in with
/// [`RequestOptions::retry_non_idempotent`](crate::RequestOptions::retry_non_idempotent). A
/// connection that could not be established is retried for every method, since nothing was
/// sent. The one retry after a rejected credential (HTTP 401) is separate and not counted here.
///
/// ```
/// use std::time::Duration;
/// use pleo_auth_http::RetryPolicy;
///
/// let policy = RetryPolicy::default()
///     .with_max_attempts(5)
///     .with_max_retry_after(Duration::from_secs(10))
///     .with_deadline(Some(Duration::from_secs(30)));
/// assert_eq!(policy.max_attempts(), 5);
/// assert_eq!(RetryPolicy::none().max_attempts(), 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    base_backoff: Duration,
    max_backoff: Duration,
    jitter: bool,
    max_retry_after: Duration,
    deadline: Option<Duration>,
}

impl Default for RetryPolicy {
    /// Three attempts, 250 ms base backoff doubling up to 8 s, jitter on, `Retry-After`
    /// honoured up to 30 s, and a 60 s deadline per call.
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
            jitter: true,
            max_retry_after: Duration::from_secs(30),
            deadline: Some(Duration::from_secs(60)),
        }
    }
}

impl RetryPolicy {
    /// No transient retries (one attempt); the 401 retry still applies. Use it when another
    /// layer of your middleware stack retries.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Total attempts for transient failures, including the first (at least 1).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The first backoff; each further retry doubles it, up to [`Self::with_max_backoff`].
    pub fn with_base_backoff(mut self, backoff: Duration) -> Self {
        self.base_backoff = backoff;
        self
    }

    /// The longest backoff between two attempts.
    pub fn with_max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }

    /// Whether backoffs are randomised (half fixed, half random), so that many clients do not
    /// retry in lockstep.
    pub fn with_jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// The longest `Retry-After` that is waited out; a longer one ends the call at once with the
    /// server's answer (and [`Error::retry_after`](crate::Error::retry_after) set).
    pub fn with_max_retry_after(mut self, limit: Duration) -> Self {
        self.max_retry_after = limit;
        self
    }

    /// The time one call may take, all attempts and waits included; `None` for no limit beyond
    /// the HTTP client's timeouts. A wait that would pass the deadline is not started.
    pub fn with_deadline(mut self, deadline: Option<Duration>) -> Self {
        self.deadline = deadline;
        self
    }

    /// Total attempts for transient failures.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The per-call deadline.
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// The wait before retry number `retry` (1 for the first retry), or `None` if the server's
    /// `Retry-After` is longer than [`Self::with_max_retry_after`].
    pub(crate) fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let backoff = Backoff::new(self.base_backoff, self.max_backoff)
            .with_jitter(self.jitter)
            .delay(retry);
        match retry_after {
            Some(wait) if wait > self.max_retry_after => None,
            Some(wait) => {
                let spread = if self.jitter {
                    self.base_backoff.mul_f64(random_fraction())
                } else {
                    Duration::ZERO
                };
                Some(wait + spread)
            }
            None => Some(backoff),
        }
    }
}

/// Whether `method` may be sent twice with the same effect (RFC 9110 §9.2.2).
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// A number in `[0, 1)`, good enough for jitter (not for secrets).
fn random_fraction() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy::default()
            .with_jitter(false)
            .with_base_backoff(Duration::from_millis(100))
            .with_max_backoff(Duration::from_millis(350));
        assert_eq!(p.delay(1, None), Some(Duration::from_millis(100)));
        assert_eq!(p.delay(2, None), Some(Duration::from_millis(200)));
        assert_eq!(p.delay(3, None), Some(Duration::from_millis(350)));
        assert_eq!(p.delay(40, None), Some(Duration::from_millis(350)));
    }

    #[test]
    fn jitter_stays_within_half_and_full_backoff() {
        let p = RetryPolicy::default().with_base_backoff(Duration::from_millis(100));
        for _ in 0..200 {
            let d = p.delay(1, None).unwrap();
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_millis(100),
                "{d:?}"
            );
        }
    }

    #[test]
    fn retry_after_is_a_floor_and_has_a_cap() {
        let p = RetryPolicy::default().with_max_retry_after(Duration::from_secs(5));
        for _ in 0..50 {
            let d = p.delay(1, Some(Duration::from_secs(2))).unwrap();
            assert!(
                d >= Duration::from_secs(2) && d <= Duration::from_millis(2250),
                "{d:?}"
            );
        }
        assert_eq!(p.delay(1, Some(Duration::from_secs(6))), None);
    }

    #[test]
    fn idempotent_methods() {
        assert!(is_idempotent(&Method::GET));
        assert!(is_idempotent(&Method::DELETE));
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
        assert_eq!(
            RetryPolicy::default().with_max_attempts(0).max_attempts(),
            1
        );
    }
}
