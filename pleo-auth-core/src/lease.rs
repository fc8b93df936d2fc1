//! Leases: at most one holder of a key at a time, across tasks or processes, with fencing.
//!
//! A lease only saves work (one refresh instead of many). Correctness comes from the store's
//! compare-and-swap: a holder paused past its lease can still try to write, and the version
//! check rejects it.
//!
//! A holder that needs the lease longer than its TTL renews it ([`LeaseGuard::renew`]) before it
//! expires. Renewal succeeds only while the holder still holds the lease, and keeps its fencing
//! number.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::clock::{DynClock, SystemClock};
use crate::error::{Error, Result};
use crate::key::StoreKey;

/// Who can see what a store or a lease holds besides this process.
///
/// The refresh manager needs a lease that reaches every process that shares the store: two
/// processes that share grants but coordinate refreshes only among their own tasks present the
/// same refresh token twice, and Pleo revokes the grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Sharing {
    /// Only this process (an in-memory store, an in-process lease).
    ProcessLocal,
    /// Other processes too (a file, a database, a network service).
    CrossProcess,
}

/// Grants a time-limited, exclusive hold on a key.
#[async_trait]
pub trait Lease: Send + Sync + fmt::Debug + 'static {
    /// Takes the lease on `key` for `ttl`, or returns `None` at once if someone else holds it.
    async fn acquire(&self, key: &StoreKey, ttl: Duration) -> Result<Option<LeaseGuard>>;

    /// Which holders the lease excludes: those of this process only
    /// ([`InProcessLease`]), or those of every process that reaches its backend (the default).
    fn sharing(&self) -> Sharing {
        Sharing::CrossProcess
    }
}

/// A shared, type-erased lease.
pub type DynLease = Arc<dyn Lease>;

#[async_trait]
impl<T: Lease + ?Sized> Lease for Arc<T> {
    async fn acquire(&self, key: &StoreKey, ttl: Duration) -> Result<Option<LeaseGuard>> {
        (**self).acquire(key, ttl).await
    }

    fn sharing(&self) -> Sharing {
        (**self).sharing()
    }
}

/// The backend's handle on one held lease, kept inside its [`LeaseGuard`]: gives the lease back
/// and renews it.
#[async_trait]
pub trait LeaseRelease: Send + Sync + 'static {
    /// Releases the lease if it is still held by this holder. Called at most once, by
    /// [`LeaseGuard`].
    async fn release(&self) -> Result<()>;

    /// Extends the lease to `ttl` from now, keeping its fencing number, if this holder still holds
    /// it. Fails with [`ErrorKind::Conflict`](crate::ErrorKind::Conflict) when the lease expired,
    /// was released, or was taken by another holder; it is never taken back. A backend that cannot
    /// renew answers [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported); its holders then
    /// cannot keep the lease past its TTL.
    async fn renew(&self, ttl: Duration) -> Result<()>;
}

/// The error of a renewal by a holder that no longer holds the lease.
pub(crate) fn not_held() -> Error {
    Error::conflict("the lease is no longer held by this holder")
}

/// Proof of holding a lease. Released by [`LeaseGuard::release`], or in the background when
/// dropped inside a Tokio runtime; otherwise the lease expires after its TTL unless renewed.
#[must_use = "a lease is released when its guard is dropped"]
pub struct LeaseGuard {
    key: StoreKey,
    fencing: u64,
    handle: Option<Box<dyn LeaseRelease>>,
    released: AtomicBool,
}

impl LeaseGuard {
    /// A guard for `key` with a fencing number that increases with every acquisition.
    pub fn new(key: StoreKey, fencing: u64, release: impl LeaseRelease) -> Self {
        Self {
            key,
            fencing,
            handle: Some(Box::new(release)),
            released: AtomicBool::new(false),
        }
    }

    /// The leased key.
    pub fn key(&self) -> &StoreKey {
        &self.key
    }

    /// The fencing number: greater than that of every earlier holder of this key.
    pub fn fencing(&self) -> u64 {
        self.fencing
    }

    /// Releases the lease now. Only the first call reaches the backend; the guard cannot be
    /// renewed afterwards.
    pub async fn release(&self) -> Result<()> {
        if self.released.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        match &self.handle {
            Some(handle) => handle.release().await,
            None => Ok(()),
        }
    }

    /// Extends the lease to `ttl` from now, keeping the fencing number. Fails with
    /// [`ErrorKind::Conflict`](crate::ErrorKind::Conflict) if this holder no longer holds the lease
    /// (it expired, was released, or another holder took it), and with
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) if the lease implementation cannot
    /// renew.
    pub async fn renew(&self, ttl: Duration) -> Result<()> {
        match &self.handle {
            Some(handle) => handle.renew(ttl).await,
            None => Err(not_held()),
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if !*self.released.get_mut()
            && let Some(r) = self.handle.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(async move {
                if let Err(e) = r.release().await {
                    tracing::debug!(error = %e, "lease release on drop failed; it expires by TTL");
                }
            });
        }
    }
}

impl fmt::Debug for LeaseGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseGuard")
            .field("key", &self.key)
            .field("fencing", &self.fencing)
            .finish_non_exhaustive()
    }
}

/// A lease within one process: it keeps the tasks of this process from refreshing a grant
/// twice, and nothing else. Replicas that share a store need a lease that spans them
/// ([`lease_for`](crate::lease_for)).
#[derive(Debug, Clone)]
pub struct InProcessLease {
    state: Arc<Mutex<HashMap<StoreKey, Held>>>,
    clock: DynClock,
}

#[derive(Debug)]
struct Held {
    holder: u64,
    fencing: u64,
    expires: Option<Instant>,
}

impl InProcessLease {
    /// A lease on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// A lease on an injected clock.
    pub fn with_clock(clock: DynClock) -> Self {
        Self {
            state: Arc::default(),
            clock,
        }
    }
}

impl Default for InProcessLease {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Lease for InProcessLease {
    async fn acquire(&self, key: &StoreKey, ttl: Duration) -> Result<Option<LeaseGuard>> {
        let now = self.clock.instant();
        let mut state = self.state.lock().expect("lease lock");
        let held = state.entry(key.clone()).or_insert(Held {
            holder: 0,
            fencing: 0,
            expires: None,
        });
        if held.expires.is_some_and(|e| e > now) {
            return Ok(None);
        }
        held.fencing += 1;
        held.holder = held.fencing;
        held.expires = Some(now + ttl);
        let release = InProcessRelease {
            state: self.state.clone(),
            clock: self.clock.clone(),
            key: key.clone(),
            holder: held.holder,
        };
        Ok(Some(LeaseGuard::new(key.clone(), held.fencing, release)))
    }

    fn sharing(&self) -> Sharing {
        Sharing::ProcessLocal
    }
}

struct InProcessRelease {
    state: Arc<Mutex<HashMap<StoreKey, Held>>>,
    clock: DynClock,
    key: StoreKey,
    holder: u64,
}

#[async_trait]
impl LeaseRelease for InProcessRelease {
    async fn release(&self) -> Result<()> {
        let mut state = self.state.lock().expect("lease lock");
        if let Some(held) = state.get_mut(&self.key)
            && held.holder == self.holder
        {
            held.expires = None;
        }
        Ok(())
    }

    async fn renew(&self, ttl: Duration) -> Result<()> {
        let now = self.clock.instant();
        let mut state = self.state.lock().expect("lease lock");
        match state.get_mut(&self.key) {
            Some(held) if held.holder == self.holder && held.expires.is_some_and(|e| e > now) => {
                held.expires = Some(now + ttl);
                Ok(())
            }
            _ => Err(not_held()),
        }
    }
}
