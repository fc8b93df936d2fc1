//! Injected time, so expiry, skew and backoff logic are tested without sleeping.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::record::Timestamp;

/// A source of wall-clock and monotonic time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Wall-clock time, for stored timestamps shared between processes.
    fn now(&self) -> SystemTime;
    /// Monotonic time, for expiry computed in this process.
    fn instant(&self) -> Instant;

    /// Monotonic time for checks that are made very often and have a margin of seconds, such
    /// as "is the cached token still fresh". It may differ from [`Clock::instant`] by up to one
    /// tick of the operating system's timer (1 to 10 ms) in either direction, and is cheaper to
    /// read. The default is [`Clock::instant`].
    fn coarse_instant(&self) -> Instant {
        self.instant()
    }

    /// [`Clock::now`] as a [`Timestamp`].
    fn timestamp(&self) -> Timestamp {
        Timestamp::from_system_time(self.now())
    }
}

/// A shared clock.
pub type DynClock = Arc<dyn Clock>;

/// The operating system's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }

    /// `CLOCK_MONOTONIC_COARSE` (read from the vDSO, about a fifth of the cost of
    /// `Instant::now()`), placed on `Instant`'s time line by one pair of readings taken together.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn coarse_instant(&self) -> Instant {
        use std::sync::LazyLock;
        static ORIGIN: LazyLock<(Instant, Duration)> =
            LazyLock::new(|| (Instant::now(), monotonic_coarse()));
        let (instant, coarse) = *ORIGIN;
        instant + monotonic_coarse().saturating_sub(coarse)
    }
}

/// The coarse monotonic clock as time since boot.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn monotonic_coarse() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

/// A clock that moves only when told to; both of its times advance together.
///
/// ```
/// use std::time::Duration;
/// use pleo_auth_core::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// let before = clock.instant();
/// clock.advance(Duration::from_secs(900));
/// assert_eq!(clock.instant() - before, Duration::from_secs(900));
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    wall_base: SystemTime,
    mono_base: Instant,
    offset_nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock starting at the current time.
    pub fn new() -> Self {
        Self {
            wall_base: SystemTime::now(),
            mono_base: Instant::now(),
            offset_nanos: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Moves both times forward by `d`.
    pub fn advance(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.offset_nanos.fetch_add(nanos, Ordering::SeqCst);
    }

    fn offset(&self) -> Duration {
        Duration::from_nanos(self.offset_nanos.load(Ordering::SeqCst))
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        self.wall_base + self.offset()
    }

    fn instant(&self) -> Instant {
        self.mono_base + self.offset()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More than the longest timer tick (10 ms at 100 Hz).
    const TICK_BOUND: Duration = Duration::from_millis(20);

    #[test]
    fn coarse_system_time_stays_within_a_tick_of_the_precise_time() {
        let clock = SystemClock;
        let mut last = clock.coarse_instant();
        for _ in 0..10_000 {
            let before = clock.instant();
            let coarse = clock.coarse_instant();
            let after = clock.instant();
            assert!(
                coarse + TICK_BOUND >= before,
                "coarse time trails by more than a tick"
            );
            assert!(
                coarse <= after + TICK_BOUND,
                "coarse time leads by more than a tick"
            );
            assert!(coarse >= last, "coarse time went backwards");
            last = coarse;
        }
    }

    #[test]
    fn a_manual_clock_reads_the_same_coarse_and_precise_time() {
        let clock = ManualClock::new();
        clock.advance(Duration::from_secs(61));
        assert_eq!(clock.coarse_instant(), clock.instant());
    }
}
