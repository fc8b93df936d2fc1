//! A lease kept in any [`SecretStore`] ([`StoreLease`]), and [`lease_for`], which picks the lease
//! that coordinates every process that can see a store.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::clock::{DynClock, SystemClock};
use crate::error::{Error, Result};
use crate::key::StoreKey;
use crate::lease::{DynLease, InProcessLease, Lease, LeaseGuard, LeaseRelease, Sharing, not_held};
use crate::record::{Record, Timestamp};
use crate::secret::random_urlsafe;
use crate::store::{
    Change, DynSecretStore, Precondition, RecordStoreExt, SecretStore, UpdateError, is_conflict,
};

/// The lease that coordinates refreshes among every process that can see `store`: an
/// [`InProcessLease`] for a store only this process sees, else the store's
/// [native lease](SecretStore::native_lease), else a [`StoreLease`] on the store itself.
///
/// ```
/// use std::sync::Arc;
/// use pleo_auth_core::{DynSecretStore, Lease, MemoryStore, Sharing, SystemClock, lease_for};
///
/// let store: DynSecretStore = Arc::new(MemoryStore::new());
/// let lease = lease_for(&store, Arc::new(SystemClock));
/// assert_eq!(lease.sharing(), Sharing::ProcessLocal);
/// ```
pub fn lease_for(store: &DynSecretStore, clock: DynClock) -> DynLease {
    match store.sharing() {
        Sharing::ProcessLocal => Arc::new(InProcessLease::with_clock(clock)),
        Sharing::CrossProcess => store
            .native_lease()
            .unwrap_or_else(|| Arc::new(StoreLease::with_clock(store.clone(), clock))),
    }
}

/// A lease on top of any [`SecretStore`], using compare-and-swap on a lease record.
///
/// Works across processes on every backend whose store passes the conformance suite (file,
/// Vault, AWS Secrets Manager). Expiry uses wall-clock time, so hosts sharing a lease need
/// synchronised clocks (NTP); the store's version check keeps writes correct regardless.
#[derive(Debug, Clone)]
pub struct StoreLease<S: ?Sized> {
    store: Arc<S>,
    clock: DynClock,
}

impl<S: SecretStore + ?Sized> StoreLease<S> {
    /// A lease kept in `store`, on the system clock.
    pub fn new(store: Arc<S>) -> Self {
        Self::with_clock(store, Arc::new(SystemClock))
    }

    /// A lease kept in `store`, on an injected clock.
    pub fn with_clock(store: Arc<S>, clock: DynClock) -> Self {
        Self { store, clock }
    }
}

/// The stored state of a [`StoreLease`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseRecord {
    /// The key the lease is stored under.
    key: String,
    holder: String,
    fencing: u64,
    expires_at: Timestamp,
}

impl Record for LeaseRecord {
    const KIND: &'static str = "lease";
    const SCHEMA: u32 = 1;

    fn belongs_at(&self, key: &StoreKey) -> bool {
        self.key == key.as_str()
    }
}

#[async_trait]
impl<S: SecretStore + ?Sized> Lease for StoreLease<S> {
    async fn acquire(&self, key: &StoreKey, ttl: Duration) -> Result<Option<LeaseGuard>> {
        let now = self.clock.timestamp();
        let current = self.store.get_record::<LeaseRecord>(key).await?;
        let (fencing, precondition) = match current {
            Some((rec, _)) if !rec.holder.is_empty() && rec.expires_at > now => return Ok(None),
            Some((rec, version)) => (rec.fencing + 1, Precondition::Version(version)),
            None => (1, Precondition::Absent),
        };
        let holder = random_urlsafe(16);
        let record = LeaseRecord {
            key: key.as_str().to_owned(),
            holder: holder.clone(),
            fencing,
            expires_at: now.saturating_add(ttl),
        };
        match self.store.put_record(key, &record, precondition).await {
            Ok(_) => Ok(Some(LeaseGuard::new(
                key.clone(),
                fencing,
                StoreRelease {
                    store: self.store.clone(),
                    clock: self.clock.clone(),
                    key: key.clone(),
                    holder,
                },
            ))),
            Err(e) if is_conflict(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

struct StoreRelease<S: ?Sized> {
    store: Arc<S>,
    clock: DynClock,
    key: StoreKey,
    holder: String,
}

#[async_trait]
impl<S: SecretStore + ?Sized> LeaseRelease for StoreRelease<S> {
    /// A lease that another holder took (or that is gone) is left alone.
    async fn release(&self) -> Result<()> {
        self.store
            .update::<LeaseRecord, _, Error, _>(&self.key, |current| {
                Ok(match current {
                    Some((rec, _)) if rec.holder == self.holder => {
                        let released = LeaseRecord {
                            key: self.key.as_str().to_owned(),
                            holder: String::new(),
                            fencing: rec.fencing,
                            expires_at: Timestamp::from_millis(0),
                        };
                        (Change::Put(released), ())
                    }
                    _ => (Change::Keep, ()),
                })
            })
            .await
            .map(|_| ())
            .map_err(UpdateError::into_error)
    }

    /// Compare-and-swap on the lease record, only while it still names this holder and has
    /// not expired.
    async fn renew(&self, ttl: Duration) -> Result<()> {
        let now = self.clock.timestamp();
        self.store
            .update::<LeaseRecord, _, Error, _>(&self.key, |current| match current {
                Some((rec, _)) if rec.holder == self.holder && rec.expires_at > now => {
                    let renewed = LeaseRecord {
                        key: self.key.as_str().to_owned(),
                        holder: rec.holder,
                        fencing: rec.fencing,
                        expires_at: now.saturating_add(ttl),
                    };
                    Ok((Change::Put(renewed), ()))
                }
                _ => Err(not_held()),
            })
            .await
            .map(|_| ())
            .map_err(|e| match e {
                UpdateError::Contended => not_held(),
                other => other.into_error(),
            })
    }
}
