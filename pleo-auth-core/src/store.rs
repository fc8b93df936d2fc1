//! The `SecretStore` trait: a small, versioned key-value interface every backend implements.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{Error, ErrorKind, Result};
use crate::key::StoreKey;
use crate::lease::{DynLease, Sharing};
use crate::record::Record;
use crate::secret::SecretBytes;

/// The version of a stored value, as the backend names it (a counter, a Vault version, an AWS
/// version id). Opaque: compare for equality only.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(Arc<str>);

impl Version {
    /// A version from the backend's own representation.
    pub fn new(v: impl Into<Arc<str>>) -> Self {
        Self(v.into())
    }

    /// A version from a counter.
    pub fn from_u64(v: u64) -> Self {
        Self(v.to_string().into())
    }

    /// The backend's representation.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The version as a counter, when the backend uses counters.
    pub fn as_u64(&self) -> Option<u64> {
        self.0.parse().ok()
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A stored value with its version.
#[derive(Debug, Clone)]
pub struct Versioned {
    /// The value.
    pub value: SecretBytes,
    /// The version to name in a later [`Precondition::Version`].
    pub version: Version,
}

/// What must be true of a key for a write or delete to go ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// Nothing: write or delete unconditionally.
    None,
    /// The key must not exist (create only).
    Absent,
    /// The key must exist at exactly this version (compare-and-swap).
    Version(Version),
}

/// One page of keys from [`SecretStore::list_page`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    /// Keys below the prefix, in ascending order.
    pub keys: Vec<StoreKey>,
    /// The key to pass as `after` for the next page; `None` when this page is the last.
    pub next: Option<StoreKey>,
}

impl ListPage {
    /// The page of `sorted` (ascending, without duplicates) that starts after `after` and holds at
    /// most `limit` keys. For stores that list everything and page in memory.
    pub fn from_sorted(sorted: Vec<StoreKey>, after: Option<&StoreKey>, limit: usize) -> Self {
        let start = after.map_or(0, |after| sorted.partition_point(|k| k <= after));
        let mut keys: Vec<StoreKey> = sorted.into_iter().skip(start).take(limit + 1).collect();
        let next = if keys.len() > limit {
            keys.truncate(limit);
            keys.last().cloned()
        } else {
            None
        };
        Self { keys, next }
    }
}

/// The most keys a single [`SecretStore::list_page`] call may ask for.
pub const MAX_PAGE_SIZE: usize = 10_000;

/// Checks the `limit` of a [`SecretStore::list_page`] call.
pub fn check_page_limit(limit: usize) -> Result<()> {
    if limit == 0 || limit > MAX_PAGE_SIZE {
        return Err(Error::invalid_input(format!(
            "a page holds 1 to {MAX_PAGE_SIZE} keys"
        )));
    }
    Ok(())
}

/// A versioned key-value store for secrets, implemented by every backend (memory, file, Vault,
/// AWS Secrets Manager, Redis, or a user's own).
///
/// Contract (checked by [`testing::conformance`](crate::testing::conformance)):
/// - `put` with a failed precondition returns an error of kind [`ErrorKind::Conflict`] and
///   changes nothing; exactly one of several concurrent writers naming the same version wins.
/// - Every successful `put` returns a version different from all earlier versions of that key.
/// - `get` of a missing key is `Ok(None)`; bytes that cannot be read are an error, never `None`.
/// - `delete` with [`Precondition::None`] of a missing key succeeds; with a version that does not
///   match it is a `Conflict`. [`Precondition::Absent`] makes no sense for delete and is
///   `InvalidInput`.
/// - `list(prefix)` returns every key that [`StoreKey::starts_with`] `prefix` (not the prefix
///   itself), and nothing else.
/// - `get_many(keys)` answers exactly what `get` answers for each key, in the order asked
///   (duplicates included); `list_page` pages through what `list` returns, in ascending order.
/// - Errors carry the backend's name and never a secret value.
#[async_trait]
pub trait SecretStore: Send + Sync + fmt::Debug + 'static {
    /// Reads a value and its version.
    async fn get(&self, key: &StoreKey) -> Result<Option<Versioned>>;

    /// Writes a value if the precondition holds, returning its new version.
    async fn put(
        &self,
        key: &StoreKey,
        value: SecretBytes,
        precondition: Precondition,
    ) -> Result<Version>;

    /// Deletes a value (all of its versions) if the precondition holds.
    async fn delete(&self, key: &StoreKey, precondition: Precondition) -> Result<()>;

    /// Lists the keys below `prefix`.
    async fn list(&self, prefix: &StoreKey) -> Result<Vec<StoreKey>>;

    /// Reads many values at once: element `i` of the answer is what [`SecretStore::get`] answers
    /// for `keys[i]`. The default calls `get` once per key; backends with a batch read
    /// (PostgreSQL `= ANY`, a Redis pipeline, AWS `BatchGetSecretValue`) answer in few round
    /// trips. Any key that cannot be read fails the whole call.
    async fn get_many(&self, keys: &[StoreKey]) -> Result<Vec<Option<Versioned>>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.get(key).await?);
        }
        Ok(out)
    }

    /// One page of the keys below `prefix`, in ascending order, starting after `after` (`None`
    /// for the first page), with at most `limit` keys (1 to [`MAX_PAGE_SIZE`]). The default
    /// lists every key and pages in memory; backends that can, page on the server.
    async fn list_page(
        &self,
        prefix: &StoreKey,
        after: Option<&StoreKey>,
        limit: usize,
    ) -> Result<ListPage> {
        check_page_limit(limit)?;
        let mut keys = self.list(prefix).await?;
        keys.sort();
        keys.dedup();
        Ok(ListPage::from_sorted(keys, after, limit))
    }

    /// Who besides this process can see what the store holds. The default,
    /// [`Sharing::CrossProcess`], is the safe assumption for a store of your own: refreshes are
    /// then coordinated with a lease that spans processes. Only a store that no other process
    /// can reach ([`MemoryStore`](crate::MemoryStore)) says [`Sharing::ProcessLocal`].
    fn sharing(&self) -> Sharing {
        Sharing::CrossProcess
    }

    /// A lease native to this backend that coordinates the processes sharing it (the Redis
    /// store's `SET NX PX` lease), if it has one better than a
    /// [`StoreLease`](crate::StoreLease) on the store itself. Default `None`.
    fn native_lease(&self) -> Option<DynLease> {
        None
    }
}

/// A shared, type-erased store.
pub type DynSecretStore = Arc<dyn SecretStore>;

#[async_trait]
impl<T: SecretStore + ?Sized> SecretStore for Arc<T> {
    async fn get(&self, key: &StoreKey) -> Result<Option<Versioned>> {
        (**self).get(key).await
    }

    async fn put(
        &self,
        key: &StoreKey,
        value: SecretBytes,
        precondition: Precondition,
    ) -> Result<Version> {
        (**self).put(key, value, precondition).await
    }

    async fn delete(&self, key: &StoreKey, precondition: Precondition) -> Result<()> {
        (**self).delete(key, precondition).await
    }

    async fn list(&self, prefix: &StoreKey) -> Result<Vec<StoreKey>> {
        (**self).list(prefix).await
    }

    async fn get_many(&self, keys: &[StoreKey]) -> Result<Vec<Option<Versioned>>> {
        (**self).get_many(keys).await
    }

    async fn list_page(
        &self,
        prefix: &StoreKey,
        after: Option<&StoreKey>,
        limit: usize,
    ) -> Result<ListPage> {
        (**self).list_page(prefix, after, limit).await
    }

    fn sharing(&self) -> Sharing {
        (**self).sharing()
    }

    fn native_lease(&self) -> Option<DynLease> {
        (**self).native_lease()
    }
}

/// Typed access to [`Record`]s on any [`SecretStore`].
#[async_trait]
pub trait RecordStoreExt: SecretStore {
    /// Reads and decodes a record; bytes that do not decode are an error, never `None`, and a
    /// record that names another key ([`Record::belongs_at`]) is an
    /// [`ErrorKind::KeyMismatch`] error.
    async fn get_record<R: Record>(&self, key: &StoreKey) -> Result<Option<(R, Version)>> {
        match self.get(key).await? {
            None => Ok(None),
            Some(v) => Ok(Some((
                R::decode_at(v.value.expose_secret(), key)?,
                v.version,
            ))),
        }
    }

    /// Reads and decodes many records with one [`SecretStore::get_many`]; element `i` answers
    /// `keys[i]`. Bytes that do not decode, or a record that names another key, fail the
    /// whole call.
    async fn get_records<R: Record>(&self, keys: &[StoreKey]) -> Result<Vec<Option<(R, Version)>>> {
        self.get_many(keys)
            .await?
            .into_iter()
            .zip(keys)
            .map(|(read, key)| match read {
                None => Ok(None),
                Some(v) => Ok(Some((
                    R::decode_at(v.value.expose_secret(), key)?,
                    v.version,
                ))),
            })
            .collect()
    }

    /// Every key below `prefix`, read page by page with [`SecretStore::list_page`] (pages of
    /// `page_size` keys).
    async fn list_paged(&self, prefix: &StoreKey, page_size: usize) -> Result<Vec<StoreKey>> {
        let mut keys = Vec::new();
        let mut after: Option<StoreKey> = None;
        loop {
            let page = self.list_page(prefix, after.as_ref(), page_size).await?;
            keys.extend(page.keys);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// Encodes and writes a record if the precondition holds.
    async fn put_record<R: Record>(
        &self,
        key: &StoreKey,
        record: &R,
        precondition: Precondition,
    ) -> Result<Version> {
        let bytes = record.encode()?;
        self.put(key, bytes, precondition).await
    }

    /// The one read-modify-compare-and-swap loop over a record: reads the record at `key`,
    /// asks `decide` what to do with it (write a record, delete it or keep the store as it
    /// is), and writes that with the version read as the precondition. When another writer
    /// got in between (a `Conflict`), it reads again and asks again, up to
    /// [`MAX_UPDATE_ROUNDS`] rounds. Returns what was done and the value `decide` returned
    /// with its last decision.
    ///
    /// `decide` sees `None` when the key is absent; it may be called several times and should
    /// have no effect other than its answer. Its error ends the update with nothing written.
    ///
    async fn update<R, T, E, F>(
        &self,
        key: &StoreKey,
        mut decide: F,
    ) -> std::result::Result<(Updated<R>, T), UpdateError<E>>
    where
        R: Record,
        T: Send,
        E: Send,
        F: FnMut(Option<(R, Version)>) -> std::result::Result<(Change<R>, T), E> + Send,
    {
        for _ in 0..MAX_UPDATE_ROUNDS {
            let read = self.get_record::<R>(key).await.map_err(UpdateError::Read)?;
            let precondition = match &read {
                Some((_, version)) => Precondition::Version(version.clone()),
                None => Precondition::Absent,
            };
            let (change, value) = decide(read).map_err(UpdateError::Rejected)?;
            let done = match change {
                Change::Keep => Ok(Updated::Kept),
                Change::Put(record) => self
                    .put_record(key, &record, precondition)
                    .await
                    .map(|version| Updated::Written(record, version)),
                Change::Delete if precondition == Precondition::Absent => Ok(Updated::Kept),
                Change::Delete => self
                    .delete(key, precondition)
                    .await
                    .map(|()| Updated::Deleted),
            };
            match done {
                Ok(done) => return Ok((done, value)),
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(UpdateError::Write(e)),
            }
        }
        Err(UpdateError::Contended)
    }
}

impl<S: SecretStore + ?Sized> RecordStoreExt for S {}

/// Rounds of [`RecordStoreExt::update`] (read, decide, compare-and-swap) before it gives up on
/// a record that keeps changing.
pub const MAX_UPDATE_ROUNDS: usize = 8;

/// What the closure of [`RecordStoreExt::update`] decided for the record it was shown.
#[derive(Debug)]
pub enum Change<R> {
    /// Write this record: create it if the key was absent, else replace the version read.
    Put(R),
    /// Delete the record read (nothing is done if the key was absent).
    Delete,
    /// Leave the store as it is.
    Keep,
}

/// What [`RecordStoreExt::update`] did.
#[derive(Debug)]
pub enum Updated<R> {
    /// The record was written; the version is the new one.
    Written(R, Version),
    /// The record was deleted.
    Deleted,
    /// Nothing was written.
    Kept,
}

/// Why [`RecordStoreExt::update`] failed. Nothing was written by the failing round.
#[derive(Debug)]
pub enum UpdateError<E> {
    /// The closure refused, with its own error.
    Rejected(E),
    /// Reading (or decoding) the record failed.
    Read(Error),
    /// Writing or deleting failed for another reason than a concurrent change.
    Write(Error),
    /// Another writer changed the record in every one of [`MAX_UPDATE_ROUNDS`] rounds.
    Contended,
}

impl UpdateError<Error> {
    /// One core error for every cause: the closure's, the store's, or a `Conflict` when the
    /// record kept changing.
    pub fn into_error(self) -> Error {
        match self {
            UpdateError::Rejected(e) | UpdateError::Read(e) | UpdateError::Write(e) => e,
            UpdateError::Contended => {
                Error::conflict("the record kept changing while it was updated")
            }
        }
    }
}

/// Checks `precondition` against the current version of a key (`None` when absent), returning
/// the `Conflict` error a backend should report. For backends that compare versions themselves.
pub fn check_precondition(
    current: Option<&Version>,
    precondition: &Precondition,
    backend: &'static str,
) -> Result<()> {
    match (precondition, current) {
        (Precondition::None, _) => Ok(()),
        (Precondition::Absent, None) => Ok(()),
        (Precondition::Absent, Some(_)) => {
            Err(Error::conflict("key already exists").with_backend(backend))
        }
        (Precondition::Version(want), Some(have)) if want == have => Ok(()),
        (Precondition::Version(_), _) => {
            Err(Error::conflict("version does not match").with_backend(backend))
        }
    }
}

/// Whether an error means a precondition failed.
pub fn is_conflict(err: &Error) -> bool {
    err.kind() == ErrorKind::Conflict
}
