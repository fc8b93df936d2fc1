//! `EncryptedStore`: envelope encryption of every value, on top of any [`SecretStore`].
//!
//! Values are sealed with XChaCha20-Poly1305 under a 32-byte data key before the inner store sees
//! them, so a backend (a file, Redis, PostgreSQL, a shared Vault) holds only ciphertext. Keys,
//! versions and preconditions pass through unchanged; compare-and-swap, listing, batch reads and
//! leases work exactly as on the inner store.
//!
//! # Where the keys come from
//!
//! A [`KeyProvider`] hands out the data keys:
//!
//! - [`EncryptionKeys`]: local 32-byte keys (from configuration) that seal values directly;
//! - `kms::AwsKmsKeyProvider` (feature `kms`): a new data key per write from AWS KMS
//!   `GenerateDataKey`, stored wrapped in front of the value and opened with `Decrypt`, with the
//!   record's store key as the encryption context; opened data keys are cached for a TTL;
//! - `transit::TransitKeyProvider` (feature `transit`): the same with Vault/OpenBao Transit
//!   (`datakey`, `decrypt`) on a derived key, with the store key as the context.
//!
//! # Value format
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic and format version: `PAE` then `1` (a key used directly) or `2` (a wrapped data key) |
//! | 1 | length `n` of the master key id |
//! | n | the master key id (printable ASCII: a local key id, a KMS key ARN, a Transit key name) |
//! | 2 | format 2 only: length `m` of the wrapped data key (big-endian) |
//! | m | format 2 only: the wrapped data key, as the provider returned it |
//! | 24 | a random nonce, new for every write |
//! | rest | the ciphertext and its 16-byte Poly1305 tag |
//!
//! The associated data is the header (everything before the nonce) followed by the store key, so
//! a value copied to another key, or relabelled with another key id or wrapped key, fails to
//! decrypt. Every value that cannot be opened (wrong key, unknown key id, a wrapped key that does
//! not open under this record's context, tampered or truncated bytes) is an
//! [`ErrorKind::Corrupt`] error naming the store key; it is never read as absent. A master key
//! that is missing, disabled or of the wrong kind is an [`ErrorKind::Config`] error naming it.
//!
//! # Key rotation
//!
//! New writes always use the provider's newest master key: the primary of [`EncryptionKeys`],
//! the configured KMS key, the latest version of the Transit key. Older keys still open the
//! values they sealed (older local keys, older KMS keys listed on the provider, older Transit
//! key versions above `min_decryption_version`). [`EncryptedStore::rewrap`] and
//! [`EncryptedStore::rewrap_below`] (the `pleo-auth rewrap` command) seal values under an older
//! key again with the newest one, each with compare-and-swap on the version read, so a
//! concurrent refresh is never overwritten; then the old key can go. Values still sealed with a
//! dropped key read as `Corrupt`.
//!
//! # Example
//!
//! ```
//! use pleo_auth_core::{MemoryStore, Precondition, SecretBytes, SecretStore, StoreKey};
//! use pleo_auth_stores::encrypted::{EncryptedStore, EncryptionKey, EncryptionKeys};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> pleo_auth_core::Result<()> {
//! // In production the key comes from configuration, e.g. an environment variable.
//! let primary = EncryptionKey::from_base64("2026-11", "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8=")?;
//! let store = EncryptedStore::new(MemoryStore::new(), EncryptionKeys::new(primary));
//!
//! let key = StoreKey::from_parts(["example", "token"])?;
//! store.put(&key, SecretBytes::new(b"s3cret".to_vec()), Precondition::Absent).await?;
//!
//! let sealed = store.inner().get(&key).await?.expect("written above");
//! assert!(!sealed.value.expose_secret().windows(6).any(|w| w == b"s3cret"));
//! let opened = store.get(&key).await?.expect("written above");
//! assert_eq!(opened.value.expose_secret(), b"s3cret");
//! assert_eq!(opened.version, sealed.version);
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use chacha20poly1305::aead::rand_core::RngCore as _;
use chacha20poly1305::aead::{AeadInPlace, KeyInit, OsRng};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use pleo_auth_core::{
    DynLease, Error, ErrorKind, ListPage, Precondition, Result, SecretBytes, SecretStore, Sharing,
    StoreKey, Version, Versioned,
};
use zeroize::Zeroizing;

const BACKEND: &str = "encryption";

const MAGIC: &[u8; 3] = b"PAE";
const FORMAT_VERSION: u8 = 1;
const ENVELOPE_FORMAT_VERSION: u8 = 2;
/// The longest wrapped data key, in bytes.
const MAX_WRAPPED_LEN: usize = 4096;
/// The longest master key id of a [`KeyProvider`], in bytes.
const MAX_PROVIDER_KEY_ID_LEN: usize = 255;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// The length of an encryption key in bytes.
pub const KEY_LEN: usize = 32;
/// The longest key id, in bytes.
pub const MAX_KEY_ID_LEN: usize = 64;

/// One 32-byte XChaCha20-Poly1305 key with an id that names it in every value it seals.
///
/// The key bytes are zeroized on drop and never appear in `Debug`.
#[derive(Clone)]
pub struct EncryptionKey {
    id: String,
    key: Zeroizing<[u8; KEY_LEN]>,
}

impl EncryptionKey {
    /// A key from its 32 raw bytes. The id is 1 to 64 printable ASCII characters (no spaces);
    /// it is stored in every value, so it must not be secret.
    ///
    /// The caller's copy of `key` is not zeroized; prefer [`EncryptionKey::from_base64`] or
    /// [`EncryptionKey::from_slice`] on a buffer the caller zeroizes.
    pub fn new(id: impl Into<String>, key: [u8; KEY_LEN]) -> Result<Self> {
        Self::from_array(id.into(), Zeroizing::new(key))
    }

    fn from_array(id: String, key: Zeroizing<[u8; KEY_LEN]>) -> Result<Self> {
        check_key_id(&id)?;
        Ok(Self { id, key })
    }

    /// A key from a slice that must be exactly 32 bytes long.
    pub fn from_slice(id: impl Into<String>, key: &[u8]) -> Result<Self> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        if key.len() != KEY_LEN {
            return Err(wrong_key_length());
        }
        bytes.copy_from_slice(key);
        Self::from_array(id.into(), bytes)
    }

    /// A key from base64 text (standard or URL-safe alphabet, padding optional, surrounding
    /// whitespace ignored), as kept in an environment variable or a configuration file.
    ///
    /// Errors never repeat the text.
    pub fn from_base64(id: impl Into<String>, text: &str) -> Result<Self> {
        const LENIENT: GeneralPurposeConfig =
            GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
        let text = text.trim();
        let engine = if text.contains(['-', '_']) {
            GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT)
        } else {
            GeneralPurpose::new(&alphabet::STANDARD, LENIENT)
        };
        let decoded = Zeroizing::new(
            engine
                .decode(text)
                .map_err(|_| Error::invalid_input("encryption key is not valid base64"))?,
        );
        Self::from_slice(id, &decoded)
    }

    /// A new random key from the operating system's random source.
    pub fn generate(id: impl Into<String>) -> Result<Self> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        OsRng.try_fill_bytes(&mut *bytes).map_err(random_error)?;
        Self::from_array(id.into(), bytes)
    }

    /// The key id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The raw key bytes. Every call site is a place where the key leaves its wrapper.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.key
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptionKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The keys of an [`EncryptedStore`]: a primary key for writing, older keys for reading.
#[derive(Clone)]
pub struct EncryptionKeys {
    primary: EncryptionKey,
    older: Vec<EncryptionKey>,
}

impl EncryptionKeys {
    /// Keys with `primary` only.
    pub fn new(primary: EncryptionKey) -> Self {
        Self {
            primary,
            older: Vec::new(),
        }
    }

    /// Adds a key that still opens values written before a rotation. Its id must differ from
    /// every key already held.
    pub fn with_older(mut self, key: EncryptionKey) -> Result<Self> {
        if self.ids().any(|id| id == key.id) {
            return Err(Error::invalid_input(format!(
                "encryption key id {} is used twice",
                key.id
            )));
        }
        self.older.push(key);
        Ok(self)
    }

    /// The id of the key that seals every new value.
    pub fn primary_id(&self) -> &str {
        &self.primary.id
    }

    /// The ids of all keys, the primary first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&self.primary)
            .chain(&self.older)
            .map(|k| k.id.as_str())
    }

    fn find(&self, id: &[u8]) -> Option<&EncryptionKey> {
        std::iter::once(&self.primary)
            .chain(&self.older)
            .find(|k| k.id.as_bytes() == id)
    }
}

impl fmt::Debug for EncryptionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let older: Vec<&str> = self.older.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("EncryptionKeys")
            .field("primary", &self.primary.id)
            .field("older", &older)
            .finish_non_exhaustive()
    }
}

/// A data key: the 32 bytes that seal one value, with the id of the master key that wraps it and
/// the wrapped form stored in front of the value.
///
/// A provider that uses its master key directly (the local [`EncryptionKeys`]) returns the master
/// key itself with no wrapped form; the value then has the format-1 layout.
pub struct DataKey {
    key: Zeroizing<[u8; KEY_LEN]>,
    key_id: String,
    wrapped: Vec<u8>,
}

impl DataKey {
    /// A data key from its plaintext bytes (exactly 32), the id of the master key that wrapped it
    /// (1 to 255 printable ASCII characters) and the wrapped bytes (at most 4096).
    pub fn new(key: &[u8], key_id: impl Into<String>, wrapped: Vec<u8>) -> Result<Self> {
        let key_id = key_id.into();
        check_provider_key_id(&key_id)?;
        if wrapped.len() > MAX_WRAPPED_LEN {
            return Err(
                Error::invalid_input("a wrapped data key holds at most 4096 bytes")
                    .with_backend(BACKEND),
            );
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        if key.len() != KEY_LEN {
            return Err(wrong_key_length());
        }
        bytes.copy_from_slice(key);
        Ok(Self {
            key: bytes,
            key_id,
            wrapped,
        })
    }

    /// The id of the master key.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The wrapped form, as stored.
    pub fn wrapped(&self) -> &[u8] {
        &self.wrapped
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(Key::from_slice(&*self.key))
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("key_id", &self.key_id)
            .field("wrapped_len", &self.wrapped.len())
            .finish_non_exhaustive()
    }
}

/// Where an [`EncryptedStore`] gets the keys that seal values: local keys ([`EncryptionKeys`]),
/// AWS KMS (`kms::AwsKmsKeyProvider`, feature `kms`) or Vault/OpenBao Transit
/// (`transit::TransitKeyProvider`, feature `transit`), or a provider of your own.
///
/// Every data key is bound to the store key of the record it seals (`record`): a provider that
/// wraps data keys passes it as the encryption context, so a wrapped key copied to another record
/// does not open; the value's authenticated data binds it again.
#[async_trait]
pub trait KeyProvider: Send + Sync + fmt::Debug + 'static {
    /// A data key for a new value of `record`, under the newest master key.
    async fn data_key(&self, record: &StoreKey) -> Result<DataKey>;

    /// The plaintext of the data key of a value of `record`, sealed under master key `key_id`
    /// with the wrapped form `wrapped` (empty for a master key used directly). A wrapped key that
    /// does not open is [`ErrorKind::Corrupt`]; a master key that is gone, disabled or unknown is
    /// [`ErrorKind::Config`].
    async fn open_data_key(
        &self,
        key_id: &str,
        wrapped: &[u8],
        record: &StoreKey,
    ) -> Result<DataKey>;

    /// Whether a value sealed under `key_id` and `wrapped` uses the newest master key; values
    /// for which this is `false` are what [`EncryptedStore::rewrap`] moves forward.
    async fn is_current(&self, key_id: &str, wrapped: &[u8]) -> Result<bool>;
}

#[async_trait]
impl<T: KeyProvider + ?Sized> KeyProvider for Arc<T> {
    async fn data_key(&self, record: &StoreKey) -> Result<DataKey> {
        (**self).data_key(record).await
    }

    async fn open_data_key(
        &self,
        key_id: &str,
        wrapped: &[u8],
        record: &StoreKey,
    ) -> Result<DataKey> {
        (**self).open_data_key(key_id, wrapped, record).await
    }

    async fn is_current(&self, key_id: &str, wrapped: &[u8]) -> Result<bool> {
        (**self).is_current(key_id, wrapped).await
    }
}

/// Local keys seal values directly (format 1): the primary key for writes, older keys for reads.
#[async_trait]
impl KeyProvider for EncryptionKeys {
    async fn data_key(&self, _record: &StoreKey) -> Result<DataKey> {
        Ok(self.primary.as_data_key())
    }

    async fn open_data_key(
        &self,
        key_id: &str,
        wrapped: &[u8],
        record: &StoreKey,
    ) -> Result<DataKey> {
        if !wrapped.is_empty() {
            return Err(corrupt(
                record,
                &format!("holds a wrapped data key, which local key {key_id} does not use"),
            ));
        }
        match self.find(key_id.as_bytes()) {
            Some(key) => Ok(key.as_data_key()),
            None => Err(corrupt(
                record,
                &format!("sealed with unknown key id {key_id}"),
            )),
        }
    }

    async fn is_current(&self, key_id: &str, _wrapped: &[u8]) -> Result<bool> {
        Ok(key_id == self.primary.id)
    }
}

/// Plaintext data keys opened recently, by record, master key and wrapped form, for a
/// [`KeyProvider`] whose unwrapping is a network call (KMS `Decrypt`, Transit `decrypt`). Entries
/// live for a TTL; the cache holds at most `capacity` keys and, when full, drops the expired ones,
/// or all of them. A key cached for one record is never handed out for another.
pub struct DataKeyCache {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<CacheId, (Instant, DataKey)>>,
}

/// What a [`DataKeyCache`] entry is for: the record's store key, the master key id and the
/// wrapped data key.
type CacheId = (String, String, Vec<u8>);

impl DataKeyCache {
    /// A cache of at most `capacity` keys, each kept for `ttl` (zero: nothing is cached).
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The data key opened for `record` from `key_id` and `wrapped`, if cached and fresh.
    pub fn get(&self, record: &StoreKey, key_id: &str, wrapped: &[u8]) -> Option<DataKey> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().expect("data key cache lock");
        let id = (
            record.as_str().to_owned(),
            key_id.to_owned(),
            wrapped.to_vec(),
        );
        match entries.get(&id) {
            Some((at, key)) if at.elapsed() < self.ttl => Some(key.duplicate()),
            _ => None,
        }
    }

    /// Remembers `key`, opened (or generated) for `record`.
    pub fn insert(&self, record: &StoreKey, key: &DataKey) {
        if self.ttl.is_zero() || self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.lock().expect("data key cache lock");
        if entries.len() >= self.capacity {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(
            (
                record.as_str().to_owned(),
                key.key_id.clone(),
                key.wrapped.clone(),
            ),
            (Instant::now(), key.duplicate()),
        );
    }
}

impl fmt::Debug for DataKeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKeyCache")
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl DataKey {
    fn duplicate(&self) -> Self {
        Self {
            key: self.key.clone(),
            key_id: self.key_id.clone(),
            wrapped: self.wrapped.clone(),
        }
    }
}

impl EncryptionKey {
    fn as_data_key(&self) -> DataKey {
        DataKey {
            key: self.key.clone(),
            key_id: self.id.clone(),
            wrapped: Vec::new(),
        }
    }
}

/// A [`SecretStore`] that seals every value before it reaches the inner store `S`, with data
/// keys from the [`KeyProvider`] `K` (local keys by default).
#[derive(Clone)]
pub struct EncryptedStore<S, K = EncryptionKeys> {
    inner: S,
    keys: Arc<K>,
}

/// What [`EncryptedStore::rewrap_below`] did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct RewrapReport {
    /// Keys read.
    pub checked: usize,
    /// Keys sealed again under the newest master key.
    pub rewrapped: Vec<StoreKey>,
    /// Keys a concurrent write replaced meanwhile (that write used the newest key already).
    pub raced: Vec<StoreKey>,
    /// Keys that could not be read or sealed again, with the reason; nothing was written to them.
    pub failed: Vec<(StoreKey, Error)>,
}

impl<S: SecretStore, K: KeyProvider> EncryptedStore<S, K> {
    /// Wraps `inner`, sealing new values with data keys from `keys` (for [`EncryptionKeys`], the
    /// primary key).
    pub fn new(inner: S, keys: K) -> Self {
        Self {
            inner,
            keys: Arc::new(keys),
        }
    }

    /// The inner store, which holds the sealed values.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The key provider.
    pub fn keys(&self) -> &K {
        &self.keys
    }

    /// The id of the master key that sealed the value of `key`, without opening it; `None` when
    /// the key holds no value.
    pub async fn key_id(&self, key: &StoreKey) -> Result<Option<String>> {
        let Some(stored) = self.inner.get(key).await? else {
            return Ok(None);
        };
        let sealed = Sealed::parse(stored.value.expose_secret(), key)?;
        Ok(Some(sealed.key_id_text()))
    }

    /// Seals the value of `key` again under the newest master key if an older one sealed it,
    /// with compare-and-swap on the version read. Returns the new version, or `None` when there
    /// was nothing to do (no value, or already under the newest key).
    ///
    /// A concurrent write makes this fail with [`ErrorKind::Conflict`] and changes nothing; that
    /// write used the newest key already.
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    pub async fn rewrap(&self, key: &StoreKey) -> Result<Option<Version>> {
        let Some(stored) = self.inner.get(key).await? else {
            return Ok(None);
        };
        self.rewrap_stored(key, stored).await
    }

    async fn rewrap_stored(&self, key: &StoreKey, stored: Versioned) -> Result<Option<Version>> {
        let sealed = Sealed::parse(stored.value.expose_secret(), key)?;
        let key_id = sealed.key_id_text();
        if self.keys.is_current(&key_id, sealed.wrapped).await? {
            return Ok(None);
        }
        let plain = self.open(sealed, key).await?;
        let resealed = self.seal(key, &plain).await?;
        let version = self
            .inner
            .put(key, resealed, Precondition::Version(stored.version))
            .await?;
        Ok(Some(version))
    }

    /// [`EncryptedStore::rewrap`] for every key below `prefix`, read a page of `page_size` keys
    /// at a time with one batch read each. Keys that fail are reported, not fatal: the others
    /// are still rewrapped; run it again until the report holds no failure.
    pub async fn rewrap_below(&self, prefix: &StoreKey, page_size: usize) -> Result<RewrapReport> {
        let mut report = RewrapReport::default();
        let mut after: Option<StoreKey> = None;
        loop {
            let page = self
                .inner
                .list_page(prefix, after.as_ref(), page_size)
                .await?;
            let stored = self.inner.get_many(&page.keys).await?;
            for (key, stored) in page.keys.into_iter().zip(stored) {
                let Some(stored) = stored else { continue };
                report.checked += 1;
                match self.rewrap_stored(&key, stored).await {
                    Ok(Some(_)) => report.rewrapped.push(key),
                    Ok(None) => {}
                    Err(e) if e.kind() == ErrorKind::Conflict => report.raced.push(key),
                    Err(e) => report.failed.push((key, e)),
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(report),
            }
        }
    }

    async fn seal(&self, key: &StoreKey, plain: &SecretBytes) -> Result<SecretBytes> {
        let data_key = self.keys.data_key(key).await?;
        seal_with(&data_key, key, plain)
    }

    async fn open(&self, sealed: Sealed<'_>, key: &StoreKey) -> Result<SecretBytes> {
        let data_key = self
            .keys
            .open_data_key(&sealed.key_id_text(), sealed.wrapped, key)
            .await?;
        let aad = associated_data(sealed.header, key);
        let mut plain = Zeroizing::new(sealed.ciphertext.to_vec());
        data_key
            .cipher()
            .decrypt_in_place_detached(
                XNonce::from_slice(sealed.nonce),
                &aad,
                &mut plain,
                Tag::from_slice(sealed.tag),
            )
            .map_err(|_| corrupt(key, "cannot be decrypted (wrong key, moved or tampered)"))?;
        Ok(SecretBytes::new(std::mem::take(&mut *plain)))
    }

    async fn open_stored(&self, key: &StoreKey, stored: Versioned) -> Result<Versioned> {
        let sealed = Sealed::parse(stored.value.expose_secret(), key)?;
        Ok(Versioned {
            value: self.open(sealed, key).await?,
            version: stored.version,
        })
    }
}

/// Seals `plain` for `key` with `data_key`: format 1 for a key used directly, format 2 with the
/// wrapped data key otherwise.
fn seal_with(data_key: &DataKey, key: &StoreKey, plain: &SecretBytes) -> Result<SecretBytes> {
    let id = data_key.key_id.as_bytes();
    let wrapped = &data_key.wrapped;
    let mut out = Zeroizing::new(Vec::with_capacity(
        MAGIC.len() + 4 + id.len() + wrapped.len() + NONCE_LEN + plain.len() + TAG_LEN,
    ));
    out.extend_from_slice(MAGIC);
    out.push(if wrapped.is_empty() {
        FORMAT_VERSION
    } else {
        ENVELOPE_FORMAT_VERSION
    });
    out.push(u8::try_from(id.len()).expect("key ids are at most 255 bytes"));
    out.extend_from_slice(id);
    if !wrapped.is_empty() {
        let len = u16::try_from(wrapped.len()).expect("wrapped keys are at most 4096 bytes");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(wrapped);
    }
    let header_len = out.len();
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.try_fill_bytes(&mut nonce).map_err(random_error)?;
    out.extend_from_slice(&nonce);
    let body_start = out.len();
    out.extend_from_slice(plain.expose_secret());
    let aad = associated_data(&out[..header_len], key);
    let (head, body) = out.split_at_mut(body_start);
    let tag = data_key
        .cipher()
        .encrypt_in_place_detached(XNonce::from_slice(&head[header_len..]), &aad, body)
        .map_err(|_| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("cannot seal the value of key {key}"),
            )
            .with_backend(BACKEND)
        })?;
    out.extend_from_slice(&tag);
    Ok(SecretBytes::new(std::mem::take(&mut *out)))
}

impl<S: fmt::Debug, K: fmt::Debug> fmt::Debug for EncryptedStore<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptedStore")
            .field("inner", &self.inner)
            .field("keys", &self.keys)
            .finish()
    }
}

#[async_trait]
impl<S: SecretStore, K: KeyProvider> SecretStore for EncryptedStore<S, K> {
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn get(&self, key: &StoreKey) -> Result<Option<Versioned>> {
        match self.inner.get(key).await? {
            None => Ok(None),
            Some(stored) => Ok(Some(self.open_stored(key, stored).await?)),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn put(
        &self,
        key: &StoreKey,
        value: SecretBytes,
        precondition: Precondition,
    ) -> Result<Version> {
        let sealed = self.seal(key, &value).await?;
        self.inner.put(key, sealed, precondition).await
    }

    async fn delete(&self, key: &StoreKey, precondition: Precondition) -> Result<()> {
        self.inner.delete(key, precondition).await
    }

    async fn list(&self, prefix: &StoreKey) -> Result<Vec<StoreKey>> {
        self.inner.list(prefix).await
    }

    /// One batch read of the inner store, then each value opened.
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, keys = keys.len()))]
    async fn get_many(&self, keys: &[StoreKey]) -> Result<Vec<Option<Versioned>>> {
        let stored = self.inner.get_many(keys).await?;
        let mut out = Vec::with_capacity(keys.len());
        for (key, stored) in keys.iter().zip(stored) {
            out.push(match stored {
                None => None,
                Some(stored) => Some(self.open_stored(key, stored).await?),
            });
        }
        Ok(out)
    }

    async fn list_page(
        &self,
        prefix: &StoreKey,
        after: Option<&StoreKey>,
        limit: usize,
    ) -> Result<ListPage> {
        self.inner.list_page(prefix, after, limit).await
    }

    fn sharing(&self) -> Sharing {
        self.inner.sharing()
    }

    /// The wrapped store's native lease: lease records hold no secret.
    fn native_lease(&self) -> Option<DynLease> {
        self.inner.native_lease()
    }
}

/// The parts of a sealed value, borrowed from its bytes.
struct Sealed<'a> {
    header: &'a [u8],
    key_id: &'a [u8],
    wrapped: &'a [u8],
    nonce: &'a [u8],
    ciphertext: &'a [u8],
    tag: &'a [u8],
}

impl<'a> Sealed<'a> {
    fn parse(bytes: &'a [u8], key: &StoreKey) -> Result<Self> {
        let truncated = || corrupt(key, "is truncated");
        let Some((magic, rest)) = bytes.split_first_chunk::<3>() else {
            return Err(truncated());
        };
        if magic != MAGIC {
            return Err(corrupt(key, "is not an encrypted value"));
        }
        let Some((&format, rest)) = rest.split_first() else {
            return Err(truncated());
        };
        match format {
            FORMAT_VERSION | ENVELOPE_FORMAT_VERSION => {}
            0 => return Err(corrupt(key, "has an invalid format version")),
            v => {
                return Err(Error::new(
                    ErrorKind::UnsupportedSchema,
                    format!("value of key {key} has unknown encryption format version {v}"),
                )
                .with_backend(BACKEND));
            }
        }
        let Some((&id_len, rest)) = rest.split_first() else {
            return Err(truncated());
        };
        let id_len = usize::from(id_len);
        if rest.len() < id_len {
            return Err(truncated());
        }
        let (key_id, rest) = rest.split_at(id_len);
        let (wrapped, rest) = if format == ENVELOPE_FORMAT_VERSION {
            let Some((len, rest)) = rest.split_first_chunk::<2>() else {
                return Err(truncated());
            };
            let len = usize::from(u16::from_be_bytes(*len));
            if len == 0 {
                return Err(corrupt(key, "has an empty wrapped data key"));
            }
            if rest.len() < len {
                return Err(truncated());
            }
            rest.split_at(len)
        } else {
            (&[][..], rest)
        };
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(truncated());
        }
        let header_len = bytes.len() - rest.len();
        let (nonce, rest) = rest.split_at(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        Ok(Self {
            header: &bytes[..header_len],
            key_id,
            wrapped,
            nonce,
            ciphertext,
            tag,
        })
    }

    /// The key id as text; ids that are not printable ASCII show as `(invalid)`.
    fn key_id_text(&self) -> String {
        std::str::from_utf8(self.key_id)
            .ok()
            .filter(|id| check_provider_key_id(id).is_ok())
            .unwrap_or("(invalid)")
            .to_owned()
    }
}

fn associated_data(header: &[u8], key: &StoreKey) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + key.as_str().len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(key.as_str().as_bytes());
    aad
}

fn check_key_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_KEY_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid_input(
            "encryption key ids must be 1-64 printable ASCII characters without spaces",
        ));
    }
    Ok(())
}

fn check_provider_key_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > MAX_PROVIDER_KEY_ID_LEN
        || !id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(Error::invalid_input(
            "master key ids must be 1-255 printable ASCII characters without spaces",
        )
        .with_backend(BACKEND));
    }
    Ok(())
}

fn wrong_key_length() -> Error {
    Error::invalid_input("encryption key must be exactly 32 bytes (44 base64 characters)")
}

fn random_error(e: chacha20poly1305::aead::rand_core::Error) -> Error {
    Error::new(
        ErrorKind::Unexpected,
        "the operating system's random source failed",
    )
    .with_source(std::io::Error::other(e.to_string()))
    .with_backend(BACKEND)
}

fn corrupt(key: &StoreKey, why: &str) -> Error {
    Error::corrupt(format!("value of key {key} {why}")).with_backend(BACKEND)
}
