//! `EncryptedStore`: authenticated encryption of every value, on top of any [`SecretStore`].
//!
//! Values are sealed with XChaCha20-Poly1305 under a 32-byte key before the inner store sees
//! them, so a backend (a file, Redis, a shared Vault) holds only ciphertext. Keys, versions and
//! preconditions pass through unchanged; compare-and-swap, listing and leases work exactly as on
//! the inner store.
//!
//! # Value format
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic and format version: `PAE` then `1` |
//! | 1 | length `n` of the key id |
//! | n | the key id (printable ASCII) |
//! | 24 | a random nonce, new for every write |
//! | rest | the ciphertext and its 16-byte Poly1305 tag |
//!
//! The associated data is the header (everything before the nonce) followed by the store key, so
//! a value copied to another key, or relabelled with another key id, fails to decrypt. Every
//! value that cannot be opened (wrong key, unknown key id, tampered or truncated bytes) is an
//! [`ErrorKind::Corrupt`] error naming the store key; it is never read as absent.
//!
//! # Key rotation
//!
//! [`EncryptionKeys`] holds one primary key, used for every write, and any number of older keys,
//! used only to read values written before a rotation. To rotate: make the new key primary and
//! keep the old one as an older key, call [`EncryptedStore::reencrypt`] on the stored keys (or
//! let normal writes replace them), then drop the old key. Values still sealed with a dropped key
//! read as `Corrupt`.
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

use std::fmt;
use std::sync::Arc;

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

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(Key::from_slice(&*self.key))
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

/// A [`SecretStore`] that seals every value before it reaches the inner store `S`.
#[derive(Clone)]
pub struct EncryptedStore<S> {
    inner: S,
    keys: Arc<EncryptionKeys>,
}

impl<S: SecretStore> EncryptedStore<S> {
    /// Wraps `inner`, sealing new values with the primary key of `keys`.
    pub fn new(inner: S, keys: EncryptionKeys) -> Self {
        Self {
            inner,
            keys: Arc::new(keys),
        }
    }

    /// The inner store, which holds the sealed values.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The keys in use.
    pub fn keys(&self) -> &EncryptionKeys {
        &self.keys
    }

    /// The id of the key that sealed the value of `key`, without opening it; `None` when the key
    /// holds no value.
    pub async fn key_id(&self, key: &StoreKey) -> Result<Option<String>> {
        let Some(stored) = self.inner.get(key).await? else {
            return Ok(None);
        };
        let sealed = Sealed::parse(stored.value.expose_secret(), key)?;
        Ok(Some(String::from_utf8_lossy(sealed.key_id).into_owned()))
    }

    /// Seals the value of `key` again with the primary key if an older key sealed it, using
    /// compare-and-swap on the version read. Returns the new version, or `None` when there was
    /// nothing to do (no value, or already sealed with the primary key).
    ///
    /// A concurrent write makes this fail with [`ErrorKind::Conflict`]; that write used the
    /// primary key already.
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    pub async fn reencrypt(&self, key: &StoreKey) -> Result<Option<Version>> {
        let Some(stored) = self.inner.get(key).await? else {
            return Ok(None);
        };
        let sealed = Sealed::parse(stored.value.expose_secret(), key)?;
        if sealed.key_id == self.keys.primary.id.as_bytes() {
            return Ok(None);
        }
        let plain = self.open(sealed, key)?;
        let resealed = self.seal(key, &plain)?;
        let version = self
            .inner
            .put(key, resealed, Precondition::Version(stored.version))
            .await?;
        Ok(Some(version))
    }

    fn seal(&self, key: &StoreKey, plain: &SecretBytes) -> Result<SecretBytes> {
        let primary = &self.keys.primary;
        let id = primary.id.as_bytes();
        let header_len = MAGIC.len() + 2 + id.len();
        let mut out = Zeroizing::new(Vec::with_capacity(
            header_len + NONCE_LEN + plain.len() + TAG_LEN,
        ));
        out.extend_from_slice(MAGIC);
        out.push(FORMAT_VERSION);
        out.push(u8::try_from(id.len()).expect("key ids are at most 64 bytes"));
        out.extend_from_slice(id);
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.try_fill_bytes(&mut nonce).map_err(random_error)?;
        out.extend_from_slice(&nonce);
        let body_start = out.len();
        out.extend_from_slice(plain.expose_secret());
        let aad = associated_data(&out[..header_len], key);
        let (head, body) = out.split_at_mut(body_start);
        let tag = primary
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

    fn open(&self, sealed: Sealed<'_>, key: &StoreKey) -> Result<SecretBytes> {
        let Some(secret) = self.keys.find(sealed.key_id) else {
            let id = std::str::from_utf8(sealed.key_id)
                .ok()
                .filter(|id| check_key_id(id).is_ok())
                .unwrap_or("(invalid)");
            return Err(corrupt(key, &format!("sealed with unknown key id {id}")));
        };
        let aad = associated_data(sealed.header, key);
        let mut plain = sealed.ciphertext.to_vec();
        secret
            .cipher()
            .decrypt_in_place_detached(
                XNonce::from_slice(sealed.nonce),
                &aad,
                &mut plain,
                Tag::from_slice(sealed.tag),
            )
            .map_err(|_| corrupt(key, "cannot be decrypted (wrong key, moved or tampered)"))?;
        Ok(SecretBytes::new(plain))
    }
}

impl<S: fmt::Debug> fmt::Debug for EncryptedStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptedStore")
            .field("inner", &self.inner)
            .field("keys", &self.keys)
            .finish()
    }
}

#[async_trait]
impl<S: SecretStore> SecretStore for EncryptedStore<S> {
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn get(&self, key: &StoreKey) -> Result<Option<Versioned>> {
        let Some(stored) = self.inner.get(key).await? else {
            return Ok(None);
        };
        let sealed = Sealed::parse(stored.value.expose_secret(), key)?;
        Ok(Some(Versioned {
            value: self.open(sealed, key)?,
            version: stored.version,
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn put(
        &self,
        key: &StoreKey,
        value: SecretBytes,
        precondition: Precondition,
    ) -> Result<Version> {
        let sealed = self.seal(key, &value)?;
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
        keys.iter()
            .zip(stored)
            .map(|(key, stored)| match stored {
                None => Ok(None),
                Some(stored) => {
                    let sealed = Sealed::parse(stored.value.expose_secret(), key)?;
                    Ok(Some(Versioned {
                        value: self.open(sealed, key)?,
                        version: stored.version,
                    }))
                }
            })
            .collect()
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
            FORMAT_VERSION => {}
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
        if rest.len() < id_len + NONCE_LEN + TAG_LEN {
            return Err(truncated());
        }
        let header_len = MAGIC.len() + 2 + id_len;
        let (key_id, rest) = rest.split_at(id_len);
        let (nonce, rest) = rest.split_at(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        Ok(Self {
            header: &bytes[..header_len],
            key_id,
            nonce,
            ciphertext,
            tag,
        })
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
