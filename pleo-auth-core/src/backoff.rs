//! The one backoff of the toolkit: exponential, capped, with optional jitter.

use std::time::Duration;

/// Exponential backoff: the delay before retry `n` (1 for the first retry) is
/// `initial * 2^(n-1)`, at most `max`. With jitter (the default) the delay is drawn uniformly
/// between half and all of that step ("equal jitter"), so that many clients that failed
/// together do not retry in lockstep, while none retries much earlier than the step.
///
/// ```
/// use std::time::Duration;
/// use pleo_auth_core::Backoff;
///
/// let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
/// let first = backoff.delay(1);
/// assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
/// let exact = backoff.without_jitter();
/// assert_eq!(exact.delay(3), Duration::from_millis(400));
/// assert_eq!(exact.delay(30), Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: bool,
}

impl Backoff {
    /// Backoff from `initial`, doubling up to `max`, with jitter.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            jitter: true,
        }
    }

    /// The same backoff with exact delays (no jitter).
    pub const fn without_jitter(self) -> Self {
        self.with_jitter(false)
    }

    /// The same backoff with jitter on or off.
    pub const fn with_jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// The delay before retry number `attempt` (1 for the first retry; 0 counts as 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(31);
        let step = self
            .initial
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(self.max);
        if self.jitter {
            step / 2 + (step / 2).mul_f64(random_fraction())
        } else {
            step
        }
    }
}

/// A uniformly distributed number in `[0, 1)` from the operating system's random source (0.5
/// if it has none: the middle of the jitter range).
fn random_fraction() -> f64 {
    let mut buf = [0u8; 8];
    if getrandom::getrandom(&mut buf).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(buf) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_double_from_the_initial_delay_and_stop_at_the_maximum() {
        let backoff =
            Backoff::new(Duration::from_millis(10), Duration::from_secs(1)).without_jitter();
        let delays: Vec<u128> = (0..=9).map(|n| backoff.delay(n).as_millis()).collect();
        assert_eq!(delays, [10, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_the_step_and_varies() {
        let backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let delays: Vec<Duration> = (0..200).map(|_| backoff.delay(2)).collect();
        for delay in &delays {
            assert!(
                *delay >= Duration::from_millis(200) && *delay <= Duration::from_millis(400),
                "{delay:?}"
            );
        }
        assert!(delays.iter().any(|d| *d != delays[0]), "jitter varies");
    }
}
