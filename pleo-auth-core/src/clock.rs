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
