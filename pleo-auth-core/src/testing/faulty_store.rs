//! A store that wraps another, counts the calls that reach it and fails on command: the one
//! store double of the tests and benchmarks, at the trait boundary in front of a real store.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::{
    DynLease, Error, ListPage, MemoryStore, Precondition, Result, SecretBytes, SecretStore,
    Sharing, StoreKey, Version, Versioned,
};

/// Wraps a store (a [`MemoryStore`] by default), counts every call ([`FaultyStore::calls`]),
/// and fails reads, writes and deletes while told to, hangs, or lets a rival writer land just
/// before a write ([`FaultyStore::rival_write_before_next_put`]). The switches and counters are
/// public atomics, so a test (or a failpoint callback) flips them from anywhere. Injected
/// failures are retryable [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) errors of
/// the backend `"faulty"`.
///
/// Batch reads and pages are passed to the wrapped store's own `get_many` and `list_page`, so a
/// count of calls is a count of the round trips a networked backend makes. The wrapped store's
/// native lease is not offered unless asked for ([`FaultyStore::with_native_lease`]): leases then
/// live in the store, where the injected faults reach them.
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
    /// Whether [`SecretStore::native_lease`] offers the wrapped store's lease.
    native_lease: bool,
    /// Calls that reached this store, refused ones included.
    counts: CallCounters,
    /// Writes of another writer, each landing just before one `put`.
    rivals: Mutex<VecDeque<(StoreKey, SecretBytes)>>,
}

/// How many calls of each kind reached a [`FaultyStore`] (refused ones included).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreCalls {
    /// `get` calls.
    pub get: u64,
    /// `get_many` calls.
    pub get_many: u64,
    /// Keys asked for by the `get_many` calls.
    pub batched_keys: u64,
    /// `put` calls.
    pub put: u64,
    /// `delete` calls.
    pub delete: u64,
    /// `list` calls.
    pub list: u64,
    /// `list_page` calls.
    pub list_page: u64,
}

impl StoreCalls {
    /// Every call: the round trips a networked backend would make.
    pub fn round_trips(&self) -> u64 {
        self.get + self.get_many + self.put + self.delete + self.list + self.list_page
    }
}

#[derive(Debug, Default)]
struct CallCounters {
    get: AtomicU64,
    get_many: AtomicU64,
    batched_keys: AtomicU64,
    put: AtomicU64,
    delete: AtomicU64,
    list: AtomicU64,
    list_page: AtomicU64,
}

impl CallCounters {
    fn read(&self, take: bool) -> StoreCalls {
        let read = |counter: &AtomicU64| {
            if take {
                counter.swap(0, Ordering::SeqCst)
            } else {
                counter.load(Ordering::SeqCst)
            }
        };
        StoreCalls {
            get: read(&self.get),
            get_many: read(&self.get_many),
            batched_keys: read(&self.batched_keys),
            put: read(&self.put),
            delete: read(&self.delete),
            list: read(&self.list),
            list_page: read(&self.list_page),
        }
    }
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::SeqCst);
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
            native_lease: false,
            counts: CallCounters::default(),
            rivals: Mutex::new(VecDeque::new()),
        }
    }

    /// Offers the wrapped store's native lease (a Redis or PostgreSQL lease), so leases bypass
    /// this wrapper: its faults and counts then concern the records alone.
    pub fn with_native_lease(mut self) -> Self {
        self.native_lease = true;
        self
    }

    /// The calls that reached this store so far.
    pub fn calls(&self) -> StoreCalls {
        self.counts.read(false)
    }

    /// The calls that reached this store since the last take, setting the counts to zero.
    pub fn take_calls(&self) -> StoreCalls {
        self.counts.read(true)
    }

    /// Lets another writer put `value` at `key` (unconditionally) just before the next `put`
    /// reaches the wrapped store, so that write may name a version that is no longer current.
    /// Each call arms one rival write; they land in order, one per `put`.
    pub fn rival_write_before_next_put(&self, key: StoreKey, value: SecretBytes) {
        self.rivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back((key, value));
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
        count(&self.counts.get);
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
        count(&self.counts.put);
        self.maybe_stall().await;
        if self.refuse_write(key) {
            self.refused_writes.fetch_add(1, Ordering::SeqCst);
            return Err(injected("write"));
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        let rival = self
            .rivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front();
        if let Some((rival_key, rival_value)) = rival {
            self.inner
                .put(&rival_key, rival_value, Precondition::None)
                .await?;
        }
        self.inner.put(key, value, precondition).await
    }

    async fn delete(&self, key: &StoreKey, precondition: Precondition) -> Result<()> {
        count(&self.counts.delete);
        if self.covers(key) && self.fail_writes.load(Ordering::SeqCst) {
            return Err(injected("delete"));
        }
        self.inner.delete(key, precondition).await
    }

    async fn list(&self, prefix: &StoreKey) -> Result<Vec<StoreKey>> {
        count(&self.counts.list);
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(injected("list"));
        }
        self.inner.list(prefix).await
    }

    async fn get_many(&self, keys: &[StoreKey]) -> Result<Vec<Option<Versioned>>> {
        count(&self.counts.get_many);
        self.counts
            .batched_keys
            .fetch_add(keys.len() as u64, Ordering::SeqCst);
        self.maybe_stall().await;
        if self.refuse_read() {
            return Err(injected("batch read"));
        }
        self.inner.get_many(keys).await
    }

    async fn list_page(
        &self,
        prefix: &StoreKey,
        after: Option<&StoreKey>,
        limit: usize,
    ) -> Result<ListPage> {
        count(&self.counts.list_page);
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(injected("list"));
        }
        self.inner.list_page(prefix, after, limit).await
    }

    fn sharing(&self) -> Sharing {
        self.inner.sharing()
    }

    fn native_lease(&self) -> Option<DynLease> {
        if self.native_lease {
            self.inner.native_lease()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::values::{bytes, key};

    #[tokio::test]
    async fn every_call_is_counted_and_batch_reads_reach_the_wrapped_store_whole() {
        let store = FaultyStore::default();
        let (a, b) = (key(&["t", "a"]), key(&["t", "b"]));
        store
            .put(&a, bytes("1"), Precondition::Absent)
            .await
            .unwrap();
        store
            .put(&b, bytes("2"), Precondition::Absent)
            .await
            .unwrap();
        store.get(&a).await.unwrap();
        let read = store
            .get_many(&[a.clone(), b.clone(), a.clone()])
            .await
            .unwrap();
        assert_eq!(read.iter().filter(|v| v.is_some()).count(), 3);
        store.list(&key(&["t"])).await.unwrap();
        store.list_page(&key(&["t"]), None, 10).await.unwrap();
        store.delete(&b, Precondition::None).await.unwrap();
        let calls = store.take_calls();
        assert_eq!(
            calls,
            StoreCalls {
                get: 1,
                get_many: 1,
                batched_keys: 3,
                put: 2,
                delete: 1,
                list: 1,
                list_page: 1,
            },
            "a batch read is one call, not one get per key"
        );
        assert_eq!(calls.round_trips(), 7);
        assert_eq!(
            store.calls(),
            StoreCalls::default(),
            "taking resets the counts"
        );
    }

    #[tokio::test]
    async fn failing_reads_cover_batch_reads_and_pages_and_rivals_land_in_order() {
        let store = FaultyStore::default();
        let k = key(&["t", "k"]);
        store.fail_reads.store(true, Ordering::SeqCst);
        assert!(store.get_many(std::slice::from_ref(&k)).await.is_err());
        assert!(store.list_page(&key(&["t"]), None, 10).await.is_err());
        store.fail_reads.store(false, Ordering::SeqCst);

        store.rival_write_before_next_put(k.clone(), bytes("rival-1"));
        store.rival_write_before_next_put(k.clone(), bytes("rival-2"));
        let err = store
            .put(&k, bytes("mine"), Precondition::Absent)
            .await
            .unwrap_err();
        assert!(crate::is_conflict(&err), "the rival landed first: {err:?}");
        let seen = store.inner.get(&k).await.unwrap().unwrap();
        assert_eq!(seen.value.expose_secret(), b"rival-1");
        store
            .put(&k, bytes("mine"), Precondition::Version(seen.version))
            .await
            .unwrap_err();
        let last = store.inner.get(&k).await.unwrap().unwrap();
        assert_eq!(last.value.expose_secret(), b"rival-2", "one rival per put");
        store
            .put(&k, bytes("mine"), Precondition::Version(last.version))
            .await
            .unwrap();
    }
}
