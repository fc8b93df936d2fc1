//! A store that wraps another and fails on command: the one fault-injecting store of the
//! tests, a double at the trait boundary in front of a real store.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::{
    Error, MemoryStore, Precondition, Result, SecretBytes, SecretStore, Sharing, StoreKey, Version,
    Versioned,
};

/// Wraps a store (a [`MemoryStore`] by default) and fails reads, writes and deletes while told
/// to, or hangs. The switches and counters are public atomics, so a test (or a failpoint
/// callback) flips them from anywhere. Injected failures are retryable
/// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) errors of the backend `"faulty"`.
///
/// ```
/// # async fn run() -> pleo_auth_core::Result<()> {
/// use std::sync::atomic::Ordering;
/// use pleo_auth_core::testing::FaultyStore;
/// use pleo_auth_core::{Precondition, SecretBytes, SecretStore, StoreKey};
///
/// let store = FaultyStore::default().writes_failing_only_under("pleo-auth/v1/oauth/");
/// store.fail_writes.store(true, Ordering::SeqCst);
/// let other = StoreKey::from_parts(["pleo-auth", "v1", "other"])?;
/// store.put(&other, SecretBytes::new(b"x".to_vec()), Precondition::Absent).await?;
/// let grant = StoreKey::from_parts(["pleo-auth", "v1", "oauth", "g"])?;
/// let err = store
///     .put(&grant, SecretBytes::new(b"x".to_vec()), Precondition::Absent)
///     .await
///     .unwrap_err();
/// assert!(err.is_retryable());
/// assert_eq!(store.refused_writes.load(Ordering::SeqCst), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct FaultyStore<S = MemoryStore> {
    /// The wrapped store.
    pub inner: S,
    /// Fail every read (and list).
    pub fail_reads: AtomicBool,
    /// Answer no call until cleared (a store that hangs).
    pub stall: AtomicBool,
    /// Fail every write and delete (of the keys under the prefix, if one is set).
    pub fail_writes: AtomicBool,
    /// Fail this many more writes (of the keys under the prefix, if one is set), then succeed.
    pub fail_next_writes: AtomicU64,
    /// Writes refused so far.
    pub refused_writes: AtomicU64,
    /// Reads (`get`) refused so far.
    pub refused_reads: AtomicU64,
    /// Writes that reached the wrapped store.
    pub writes: AtomicU64,
    /// Only writes and deletes of keys starting with this fail.
    only_under: Option<String>,
}

impl Default for FaultyStore<MemoryStore> {
    fn default() -> Self {
        Self::new(MemoryStore::new())
    }
}

impl<S> FaultyStore<S> {
    /// Wraps `inner`; nothing fails until told.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            fail_reads: AtomicBool::new(false),
            stall: AtomicBool::new(false),
            fail_writes: AtomicBool::new(false),
            fail_next_writes: AtomicU64::new(0),
            refused_writes: AtomicU64::new(0),
            refused_reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            only_under: None,
        }
    }

    /// Makes write and delete failures apply only to keys that start with `prefix` (for
    /// example `"pleo-auth/v1/oauth/"`, the OAuth grants); other writes always go through.
    pub fn writes_failing_only_under(mut self, prefix: impl Into<String>) -> Self {
        self.only_under = Some(prefix.into());
        self
    }

    /// Fails reads and writes (the store is down) or lets them through.
    pub fn set_down(&self, down: bool) {
        self.fail_reads.store(down, Ordering::SeqCst);
        self.fail_writes.store(down, Ordering::SeqCst);
    }

    /// Hangs while [`FaultyStore::stall`] is set.
    async fn maybe_stall(&self) {
        while self.stall.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn covers(&self, key: &StoreKey) -> bool {
        self.only_under
            .as_deref()
            .is_none_or(|prefix| key.as_str().starts_with(prefix))
    }

    fn refuse_write(&self, key: &StoreKey) -> bool {
        if !self.covers(key) {
            return false;
        }
        if self.fail_writes.load(Ordering::SeqCst) {
            return true;
        }
        self.fail_next_writes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn refuse_read(&self) -> bool {
        let refused = self.fail_reads.load(Ordering::SeqCst);
        if refused {
            self.refused_reads.fetch_add(1, Ordering::SeqCst);
        }
        refused
    }
}

fn injected(what: &str) -> Error {
    Error::unavailable(format!("injected {what} failure")).with_backend("faulty")
}

#[async_trait]
impl<S: SecretStore> SecretStore for FaultyStore<S> {
    async fn get(&self, key: &StoreKey) -> Result<Option<Versioned>> {
        self.maybe_stall().await;
        if self.refuse_read() {
            return Err(injected("read"));
        }
        self.inner.get(key).await
    }

    async fn put(
        &self,
        key: &StoreKey,
        value: SecretBytes,
        precondition: Precondition,
    ) -> Result<Version> {
        self.maybe_stall().await;
        if self.refuse_write(key) {
            self.refused_writes.fetch_add(1, Ordering::SeqCst);
            return Err(injected("write"));
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.put(key, value, precondition).await
    }

    async fn delete(&self, key: &StoreKey, precondition: Precondition) -> Result<()> {
        if self.covers(key) && self.fail_writes.load(Ordering::SeqCst) {
            return Err(injected("delete"));
        }
        self.inner.delete(key, precondition).await
    }

    async fn list(&self, prefix: &StoreKey) -> Result<Vec<StoreKey>> {
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(injected("list"));
        }
        self.inner.list(prefix).await
    }

    fn sharing(&self) -> Sharing {
        self.inner.sharing()
    }
}
