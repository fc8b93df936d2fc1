//! `TransitKeyProvider`: data keys for [`EncryptedStore`](crate::encrypted::EncryptedStore) from
//! the Transit secrets engine of Vault or OpenBao.
//!
//! # How values are sealed
//!
//! Every write asks Transit for a new data key (`POST <mount>/datakey/plaintext/<key>`, 256
//! bits) with the record's store key as the key-derivation context; the value is sealed with the
//! plaintext data key, and Transit's ciphertext of it (`vault:v<n>:...`) is stored in front of
//! the value with the key's name (format 2 of the [encrypted module](crate::encrypted)). A read
//! calls `POST <mount>/decrypt/<key>` with the same context, so a value moved to another record
//! does not open ([`ErrorKind::Corrupt`]). Opened data keys are cached in memory for
//! [`TransitKeyProviderBuilder::cache_ttl`] (default 5 minutes).
//!
//! The Transit key must be created with `derived=true` (so the context takes part in every
//! operation) and be of a type that encrypts (`aes256-gcm96`, `aes128-gcm96`,
//! `chacha20-poly1305`):
//!
//! ```text
//! bao write -f transit/keys/pleo-auth derived=true
//! ```
//!
//! [`TransitKeyProviderBuilder::connect`] reads the key and refuses a missing key, a key that is
//! not derived or cannot encrypt, with [`ErrorKind::Config`] saying what to fix. A key deleted
//! later makes writes and cold reads fail with `Config` naming the key; nothing is written when a
//! data key cannot be had.
//!
//! # Connection and rotation
//!
//! The provider talks to Vault through a [`VaultStore`]'s connection and login (token, AppRole,
//! Kubernetes, token file), so it needs a `VaultStore` even where the records live in another
//! store. The policy needs `update` on `<mount>/datakey/plaintext/<key>` and
//! `<mount>/decrypt/<key>` and `read` on `<mount>/keys/<key>`.
//!
//! After `bao write -f transit/keys/<key>/rotate`, new writes use the new key version at once;
//! values under older versions still open (down to the key's `min_decryption_version`), and
//! [`EncryptedStore::rewrap_below`](crate::encrypted::EncryptedStore::rewrap_below) moves them to
//! the newest version.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use pleo_auth_core::{Error, ErrorKind, Result, StoreKey};
use vaultrs::api::transit::requests::{DataKeyType, DecryptDataRequest, GenerateDataKeyRequest};
use zeroize::Zeroizing;

use crate::encrypted::{DataKey, DataKeyCache, KeyProvider};
use crate::vault::{VaultStore, vault_said};

const BACKEND: &str = "transit";
/// The default mount of the Transit engine.
pub const DEFAULT_TRANSIT_MOUNT: &str = "transit";
const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(300);
const DEFAULT_CACHE_CAPACITY: usize = 100_000;
/// How long the newest key version, read for `is_current`, is trusted.
const LATEST_VERSION_TTL: Duration = Duration::from_secs(30);

/// Configures a [`TransitKeyProvider`]; start with [`TransitKeyProvider::builder`].
#[derive(Debug, Clone)]
pub struct TransitKeyProviderBuilder {
    vault: VaultStore,
    mount: String,
    key: String,
    cache_ttl: Duration,
    cache_capacity: usize,
}

impl TransitKeyProviderBuilder {
    /// The mount of the Transit engine (default [`DEFAULT_TRANSIT_MOUNT`]).
    pub fn mount(mut self, mount: impl Into<String>) -> Self {
        self.mount = mount.into();
        self
    }

    /// How long an opened data key stays cached (default 5 minutes; zero: no cache).
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// The most data keys the cache holds (default 100,000).
    pub fn cache_capacity(mut self, capacity: usize) -> Self {
        self.cache_capacity = capacity;
        self
    }

    /// Reads the Transit key and checks that it can seal data keys bound to their record.
    pub async fn connect(self) -> Result<TransitKeyProvider> {
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
        };
        if !valid(&self.mount) || !valid(&self.key) || self.key.contains('/') {
            return Err(config_error(
                "the Transit mount and key name must be A-Z a-z 0-9 _ - . (and / in the mount)"
                    .to_owned(),
            ));
        }
        let provider = TransitKeyProvider {
            vault: self.vault,
            mount: self.mount.trim_matches('/').to_owned(),
            key: self.key,
            cache: DataKeyCache::new(self.cache_ttl, self.cache_capacity),
            latest: Mutex::new(None),
        };
        let info = provider.read_key().await?;
        if !info.supports_encryption {
            return Err(config_error(format!(
                "Transit key {} cannot encrypt (type {}); create an aes256-gcm96 key",
                provider.key, info.key_type
            )));
        }
        if !info.derived {
            return Err(config_error(format!(
                "Transit key {} is not derived, so its ciphertexts would not be bound to their \
                 record; create it with derived=true",
                provider.key
            )));
        }
        Ok(provider)
    }
}

/// What this provider reads of a Transit key.
#[derive(serde::Deserialize)]
struct KeyInfo {
    #[serde(rename = "type")]
    key_type: String,
    derived: bool,
    supports_encryption: bool,
    latest_version: u64,
}

/// `GET <mount>/keys/<name>`, answering only the fields the provider needs (vaultrs's own
/// request wants fields that OpenBao leaves out).
struct ReadKeyRequest {
    mount: String,
    name: String,
}

impl rustify::endpoint::Endpoint for ReadKeyRequest {
    type Response = KeyInfo;
    const REQUEST_BODY_TYPE: rustify::enums::RequestType = rustify::enums::RequestType::JSON;
    const RESPONSE_BODY_TYPE: rustify::enums::ResponseType = rustify::enums::ResponseType::JSON;

    fn path(&self) -> String {
        format!("{}/keys/{}", self.mount, self.name)
    }

    fn method(&self) -> rustify::enums::RequestMethod {
        rustify::enums::RequestMethod::GET
    }
}

/// A [`KeyProvider`] on Vault/OpenBao Transit; see the [module documentation](self).
pub struct TransitKeyProvider {
    vault: VaultStore,
    mount: String,
    key: String,
    cache: DataKeyCache,
    latest: Mutex<Option<(u64, Instant)>>,
}

impl fmt::Debug for TransitKeyProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransitKeyProvider")
            .field("vault", &self.vault)
            .field("mount", &self.mount)
            .field("key", &self.key)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl TransitKeyProvider {
    /// A builder for a provider on the Transit key `key` (at the mount
    /// [`DEFAULT_TRANSIT_MOUNT`]), reached through `vault`'s connection and login.
    pub fn builder(vault: &VaultStore, key: impl Into<String>) -> TransitKeyProviderBuilder {
        TransitKeyProviderBuilder {
            vault: vault.clone(),
            mount: DEFAULT_TRANSIT_MOUNT.to_owned(),
            key: key.into(),
            cache_ttl: DEFAULT_CACHE_TTL,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
        }
    }

    async fn read_key(&self) -> Result<KeyInfo> {
        let (mount, name) = (self.mount.as_str(), self.key.as_str());
        let info: KeyInfo = self
            .vault
            .call("read the Transit key", |client| async move {
                let endpoint = ReadKeyRequest {
                    mount: mount.to_owned(),
                    name: name.to_owned(),
                };
                vaultrs::api::exec_with_result(&*client, endpoint).await
            })
            .await
            .map_err(|e| self.use_error(e, None))?;
        *self.latest.lock().expect("latest version lock") =
            Some((info.latest_version, Instant::now()));
        Ok(info)
    }

    /// The newest version of the key, read again after [`LATEST_VERSION_TTL`].
    async fn latest_version(&self) -> Result<u64> {
        let known = *self.latest.lock().expect("latest version lock");
        match known {
            Some((version, at)) if at.elapsed() < LATEST_VERSION_TTL => Ok(version),
            _ => Ok(self.read_key().await?.latest_version),
        }
    }

    fn context(record: &StoreKey) -> String {
        STANDARD.encode(record.as_str())
    }

    /// The error of a Transit call, saying what to fix; `record` names the value being opened.
    fn use_error(&self, e: Error, record: Option<&StoreKey>) -> Error {
        let message = if e.kind() == ErrorKind::NotFound
            || vault_said(&e, "encryption key not found")
            || vault_said(&e, "key not found")
        {
            Some((
                ErrorKind::Config,
                format!(
                    "Transit key {} at {} does not exist (deleted?); restore it or configure \
                     another key",
                    self.key, self.mount
                ),
            ))
        } else if let Some(record) = record
            && (vault_said(&e, "message authentication failed")
                || vault_said(&e, "invalid ciphertext"))
        {
            Some((
                ErrorKind::Corrupt,
                format!(
                    "value of key {record}: its data key does not open under this record's \
                     context (moved from another record, or tampered)"
                ),
            ))
        } else if vault_said(&e, "disallowed by policy") {
            Some((
                ErrorKind::Config,
                format!(
                    "Transit key {}: the value's key version is below min_decryption_version",
                    self.key
                ),
            ))
        } else {
            None
        };
        match message {
            Some((kind, message)) => Error::new(kind, message)
                .with_backend(BACKEND)
                .with_source(e),
            None => e,
        }
    }
}

/// The 32 bytes of a base64 data key from Transit.
fn decode_key(encoded: &str, key_id: &str, wrapped: Vec<u8>) -> Result<DataKey> {
    let plain = Zeroizing::new(STANDARD.decode(encoded).map_err(|_| {
        Error::new(
            ErrorKind::Unexpected,
            "Transit answered a data key that is not base64",
        )
        .with_backend(BACKEND)
    })?);
    DataKey::new(&plain, key_id, wrapped)
}

/// The key version of a Transit ciphertext `vault:v<n>:...`.
fn ciphertext_version(wrapped: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(wrapped).ok()?;
    let rest = text.strip_prefix("vault:v")?;
    rest.split_once(':')?.0.parse().ok()
}

#[async_trait]
impl KeyProvider for TransitKeyProvider {
    /// `datakey/plaintext` with `record` as the context.
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %record))]
    async fn data_key(&self, record: &StoreKey) -> Result<DataKey> {
        let (mount, name) = (self.mount.as_str(), self.key.as_str());
        let context = Self::context(record);
        let context = context.as_str();
        let out = self
            .vault
            .call("generate a Transit data key", |client| async move {
                let mut request = GenerateDataKeyRequest::builder();
                request.context(context).bits(256u16);
                vaultrs::transit::generate::data_key(
                    &*client,
                    mount,
                    name,
                    DataKeyType::Plaintext,
                    Some(&mut request),
                )
                .await
            })
            .await
            .map_err(|e| self.use_error(e, None))?;
        let encoded = Zeroizing::new(out.plaintext.clone().ok_or_else(|| {
            Error::new(
                ErrorKind::Unexpected,
                "Transit answered no plaintext data key",
            )
            .with_backend(BACKEND)
        })?);
        let key = decode_key(&encoded, &self.key, out.ciphertext.into_bytes())?;
        self.cache.insert(record, &key);
        Ok(key)
    }

    /// The cached data key, or `decrypt` with `record` as the context.
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %record))]
    async fn open_data_key(
        &self,
        key_id: &str,
        wrapped: &[u8],
        record: &StoreKey,
    ) -> Result<DataKey> {
        if key_id != self.key {
            return Err(config_error(format!(
                "value of key {record} is sealed under key {key_id}, not Transit key {}",
                self.key
            )));
        }
        if ciphertext_version(wrapped).is_none() {
            return Err(Error::corrupt(format!(
                "value of key {record} does not hold a Transit ciphertext"
            ))
            .with_backend(BACKEND));
        }
        if let Some(key) = self.cache.get(record, key_id, wrapped) {
            return Ok(key);
        }
        let ciphertext = std::str::from_utf8(wrapped).expect("checked above");
        let (mount, name) = (self.mount.as_str(), self.key.as_str());
        let context = Self::context(record);
        let context = context.as_str();
        let out = self
            .vault
            .call("decrypt a Transit data key", |client| async move {
                let mut request = DecryptDataRequest::builder();
                request.context(context);
                vaultrs::transit::data::decrypt(
                    &*client,
                    mount,
                    name,
                    ciphertext,
                    Some(&mut request),
                )
                .await
            })
            .await
            .map_err(|e| self.use_error(e, Some(record)))?;
        let encoded = Zeroizing::new(out.plaintext.clone());
        let key = decode_key(&encoded, key_id, wrapped.to_vec())?;
        self.cache.insert(record, &key);
        Ok(key)
    }

    /// Whether the ciphertext's key version is the newest.
    async fn is_current(&self, key_id: &str, wrapped: &[u8]) -> Result<bool> {
        if key_id != self.key {
            return Ok(false);
        }
        Ok(ciphertext_version(wrapped) == Some(self.latest_version().await?))
    }
}

fn config_error(message: String) -> Error {
    Error::new(ErrorKind::Config, message).with_backend(BACKEND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ciphertext_versions_are_read() {
        assert_eq!(ciphertext_version(b"vault:v3:abc"), Some(3));
        assert_eq!(ciphertext_version(b"vault:v12:"), Some(12));
        assert_eq!(ciphertext_version(b"vault:x3:abc"), None);
        assert_eq!(ciphertext_version(b"\xff"), None);
    }
}
