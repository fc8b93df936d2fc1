//! `AwsKmsKeyProvider`: data keys for [`EncryptedStore`](crate::encrypted::EncryptedStore) from
//! AWS KMS.
//!
//! # How values are sealed
//!
//! Every write asks KMS for a new data key (`GenerateDataKey`, `AES_256`) under the configured
//! KMS key, with the encryption context `{"pleo-auth:store-key": <the record's store key>}`. The
//! value is sealed with the plaintext data key; the encrypted data key (KMS's ciphertext blob)
//! and the key's ARN are stored in front of it (format 2 of the
//! [encrypted module](crate::encrypted)). A read calls `Decrypt` with the same context, naming the
//! ARN, so a value (or its data key) moved to another record does not open: KMS answers
//! `InvalidCiphertextException`, which is [`ErrorKind::Corrupt`] naming the record.
//!
//! Writes are rare (one per token refresh), so a data key per write costs one KMS call per
//! write, and no data key ever seals two records. Reads are frequent: opened data keys are
//! cached in memory, per record and wrapped key, for [`AwsKmsKeyProviderBuilder::cache_ttl`]
//! (default 5 minutes; zero turns the cache off), so a warm read makes no KMS call.
//!
//! # Checks
//!
//! [`AwsKmsKeyProviderBuilder::connect`] describes every configured key (`DescribeKey`) and
//! refuses, with [`ErrorKind::Config`] naming the key and what to change, a key that is not a
//! symmetric encryption key (`SYMMETRIC_DEFAULT`, `ENCRYPT_DECRYPT`) and a current key that is
//! not enabled (disabled, pending deletion or import). A key disabled later makes writes and
//! cold reads fail with `Config` (`DisabledException`, `KMSInvalidStateException`); nothing is
//! written when a data key cannot be had.
//!
//! # Rotation
//!
//! KMS's automatic key rotation needs nothing from you: the key keeps its ARN and `Decrypt`
//! opens data keys of every earlier backing key. To move to another KMS key, configure it as the
//! key and the old one with [`AwsKmsKeyProviderBuilder::older_key_id`], run
//! [`EncryptedStore::rewrap_below`](crate::encrypted::EncryptedStore::rewrap_below), then drop
//! the old key. A value sealed under a key the provider does not list is `Config`.
//!
//! The IAM policy needs `kms:DescribeKey`, `kms:GenerateDataKey` and `kms:Decrypt` on the keys,
//! and may require the encryption context key `pleo-auth:store-key`
//! (`kms:EncryptionContextKeys`).
//!
//! # Example
//!
//! ```no_run
//! use pleo_auth_core::MemoryStore;
//! use pleo_auth_stores::encrypted::EncryptedStore;
//! use pleo_auth_stores::kms::AwsKmsKeyProvider;
//!
//! # async fn run() -> pleo_auth_core::Result<()> {
//! let keys = AwsKmsKeyProvider::builder("alias/pleo-auth")
//!     .region("eu-west-1")
//!     .connect()
//!     .await?;
//! let store = EncryptedStore::new(MemoryStore::new(), keys);
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_kms::Client;
use aws_sdk_kms::config::Region;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, KeyMetadata, KeySpec, KeyState, KeyUsageType};
use pleo_auth_core::{Error, ErrorKind, Result, StoreKey, check_transport_security};
use url::Url;
use zeroize::Zeroizing;

use crate::aws_error::AwsError;
use crate::encrypted::{DataKey, DataKeyCache, KeyProvider};

const BACKEND: &str = "kms";
/// The encryption context key that names the record a data key seals.
pub const CONTEXT_KEY: &str = "pleo-auth:store-key";
const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(300);
const DEFAULT_CACHE_CAPACITY: usize = 100_000;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Configures an [`AwsKmsKeyProvider`]; start with [`AwsKmsKeyProvider::builder`].
#[derive(Clone)]
pub struct AwsKmsKeyProviderBuilder {
    key_id: String,
    older_key_ids: Vec<String>,
    sdk_config: Option<aws_config::SdkConfig>,
    region: Option<String>,
    endpoint_url: Option<String>,
    cache_ttl: Duration,
    cache_capacity: usize,
    timeout: Duration,
}

impl fmt::Debug for AwsKmsKeyProviderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKmsKeyProviderBuilder")
            .field("key_id", &self.key_id)
            .field("older_key_ids", &self.older_key_ids)
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field("cache_ttl", &self.cache_ttl)
            .finish_non_exhaustive()
    }
}

impl AwsKmsKeyProviderBuilder {
    /// Adds a KMS key (id, ARN or alias) that only opens values sealed before a move to the
    /// current key.
    pub fn older_key_id(mut self, key_id: impl Into<String>) -> Self {
        self.older_key_ids.push(key_id.into());
        self
    }

    /// Starts from an already loaded AWS configuration (credentials, region) instead of the
    /// standard chain.
    pub fn sdk_config(mut self, config: aws_config::SdkConfig) -> Self {
        self.sdk_config = Some(config);
        self
    }

    /// The AWS region, such as `eu-west-1`.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Sends requests to this endpoint instead of the region's public one: a VPC endpoint or a
    /// local emulator such as moto (`https`, or `http` on a loopback host).
    pub fn endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.endpoint_url = Some(url.into());
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

    /// The timeout of each attempt of a KMS request (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Loads the AWS configuration (unless given), describes the keys and checks them.
    pub async fn connect(self) -> Result<AwsKmsKeyProvider> {
        if let Some(endpoint) = &self.endpoint_url {
            let url = Url::parse(endpoint)
                .map_err(|_| config_error("the KMS endpoint URL is not a valid URL".to_owned()))?;
            check_transport_security(&url).map_err(|e| e.with_backend(BACKEND))?;
        }
        let sdk_config = match self.sdk_config {
            Some(config) => config,
            None => aws_config::defaults(BehaviorVersion::latest()).load().await,
        };
        let mut config = aws_sdk_kms::config::Builder::from(&sdk_config);
        if let Some(region) = self.region {
            config = config.region(Region::new(region));
        }
        if let Some(endpoint) = self.endpoint_url {
            config = config.endpoint_url(endpoint);
        }
        let timeouts = aws_sdk_kms::config::timeout::TimeoutConfig::builder()
            .operation_attempt_timeout(self.timeout)
            .build();
        let config = config.timeout_config(timeouts).build();
        if config.region().is_none() {
            return Err(config_error(
                "no AWS region: set one on the builder or in the environment".to_owned(),
            ));
        }
        let client = Client::from_conf(config);
        let key_arn = describe(&client, &self.key_id, true).await?;
        let mut older_arns = Vec::new();
        for older in &self.older_key_ids {
            older_arns.push(describe(&client, older, false).await?);
        }
        Ok(AwsKmsKeyProvider {
            client,
            key_arn,
            older_arns,
            cache: DataKeyCache::new(self.cache_ttl, self.cache_capacity),
        })
    }
}

/// Describes `key_id` and checks that it can seal data keys; returns its ARN. An older key need
/// not be enabled (it only has to be the right kind).
async fn describe(client: &Client, key_id: &str, current: bool) -> Result<String> {
    let out = client
        .describe_key()
        .key_id(key_id)
        .send()
        .await
        .map_err(|e| {
            let e = AwsError::from_sdk(e);
            match e.code() {
                Some("NotFoundException") => config_error(format!(
                    "KMS key {key_id} does not exist in this account and region"
                )),
                _ => e.into_error("describe the KMS key", BACKEND),
            }
        })?;
    let meta = out
        .key_metadata()
        .ok_or_else(|| config_error(format!("KMS did not describe key {key_id}")))?;
    check_key(meta, key_id, current)?;
    Ok(meta.arn().unwrap_or(meta.key_id()).to_owned())
}

/// Refuses a key that is not a symmetric encryption key, or, if `current`, not enabled.
fn check_key(meta: &KeyMetadata, key_id: &str, current: bool) -> Result<()> {
    // KMS's defaults when a description leaves them out (moto does, for keys created without).
    let spec = meta.key_spec().unwrap_or(&KeySpec::SymmetricDefault);
    let usage = meta.key_usage().unwrap_or(&KeyUsageType::EncryptDecrypt);
    if spec != &KeySpec::SymmetricDefault || usage != &KeyUsageType::EncryptDecrypt {
        return Err(config_error(format!(
            "KMS key {key_id} is a {} key for {}; envelope encryption needs a symmetric \
             encryption key (key spec SYMMETRIC_DEFAULT, key usage ENCRYPT_DECRYPT)",
            spec.as_str(),
            usage.as_str(),
        )));
    }
    match meta.key_state() {
        _ if !current => Ok(()),
        Some(KeyState::Enabled) => Ok(()),
        Some(KeyState::Disabled) => Err(config_error(format!(
            "KMS key {key_id} is disabled; enable it or configure another key"
        ))),
        Some(KeyState::PendingDeletion) => Err(config_error(format!(
            "KMS key {key_id} is scheduled for deletion; cancel the deletion or configure \
             another key"
        ))),
        state => Err(config_error(format!(
            "KMS key {key_id} is in state {}; it must be Enabled",
            state.map_or("(unknown)", KeyState::as_str)
        ))),
    }
}

/// A [`KeyProvider`] on AWS KMS; see the [module documentation](self).
pub struct AwsKmsKeyProvider {
    client: Client,
    key_arn: String,
    older_arns: Vec<String>,
    cache: DataKeyCache,
}

impl fmt::Debug for AwsKmsKeyProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKmsKeyProvider")
            .field("key_arn", &self.key_arn)
            .field("older_arns", &self.older_arns)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl AwsKmsKeyProvider {
    /// A builder for a provider that seals new values under the KMS key `key_id` (id, ARN or
    /// alias).
    pub fn builder(key_id: impl Into<String>) -> AwsKmsKeyProviderBuilder {
        AwsKmsKeyProviderBuilder {
            key_id: key_id.into(),
            older_key_ids: Vec::new(),
            sdk_config: None,
            region: None,
            endpoint_url: None,
            cache_ttl: DEFAULT_CACHE_TTL,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The ARN of the key that seals new values (what values store as their key id).
    pub fn key_arn(&self) -> &str {
        &self.key_arn
    }

    /// The KMS client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn context(record: &StoreKey) -> HashMap<String, String> {
        HashMap::from([(CONTEXT_KEY.to_owned(), record.as_str().to_owned())])
    }
}

#[async_trait]
impl KeyProvider for AwsKmsKeyProvider {
    /// `GenerateDataKey` under the current key, bound to `record`.
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %record))]
    async fn data_key(&self, record: &StoreKey) -> Result<DataKey> {
        let out = self
            .client
            .generate_data_key()
            .key_id(&self.key_arn)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(Self::context(record)))
            .send()
            .await
            .map_err(|e| self.use_error(AwsError::from_sdk(e), "generate a data key", record))?;
        let plain = Zeroizing::new(
            out.plaintext
                .map(Blob::into_inner)
                .ok_or_else(|| unexpected("KMS answered no plaintext data key"))?,
        );
        let wrapped = out
            .ciphertext_blob
            .map(Blob::into_inner)
            .ok_or_else(|| unexpected("KMS answered no encrypted data key"))?;
        let key = DataKey::new(&plain, self.key_arn.clone(), wrapped)?;
        self.cache.insert(record, &key);
        Ok(key)
    }

    /// The cached data key, or `Decrypt` naming the key and `record` as the context.
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %record))]
    async fn open_data_key(
        &self,
        key_id: &str,
        wrapped: &[u8],
        record: &StoreKey,
    ) -> Result<DataKey> {
        if wrapped.is_empty() {
            return Err(Error::corrupt(format!(
                "value of key {record} is sealed with local key {key_id}, not a KMS data key"
            ))
            .with_backend(BACKEND));
        }
        if key_id != self.key_arn && !self.older_arns.iter().any(|arn| arn == key_id) {
            return Err(config_error(format!(
                "value of key {record} is sealed under KMS key {key_id}, which this provider does \
                 not list; add it with older_key_id"
            )));
        }
        if let Some(key) = self.cache.get(record, key_id, wrapped) {
            return Ok(key);
        }
        let out = self
            .client
            .decrypt()
            .key_id(key_id)
            .ciphertext_blob(Blob::new(wrapped.to_vec()))
            .set_encryption_context(Some(Self::context(record)))
            .send()
            .await
            .map_err(|e| self.use_error(AwsError::from_sdk(e), "decrypt the data key", record))?;
        let plain = Zeroizing::new(
            out.plaintext
                .map(Blob::into_inner)
                .ok_or_else(|| unexpected("KMS answered no plaintext"))?,
        );
        let key = DataKey::new(&plain, key_id, wrapped.to_vec()).map_err(|_| {
            Error::corrupt(format!(
                "value of key {record} holds a data key of the wrong length"
            ))
            .with_backend(BACKEND)
        })?;
        self.cache.insert(record, &key);
        Ok(key)
    }

    async fn is_current(&self, key_id: &str, _wrapped: &[u8]) -> Result<bool> {
        Ok(key_id == self.key_arn)
    }
}

impl AwsKmsKeyProvider {
    /// The error of a KMS call about `record`, saying what to fix.
    fn use_error(&self, e: AwsError, op: &'static str, record: &StoreKey) -> Error {
        let message = match e.code() {
            Some("InvalidCiphertextException" | "IncorrectKeyException") => format!(
                "value of key {record}: its data key does not open under this record's \
                 encryption context (moved from another record, or tampered)"
            ),
            Some("DisabledException") => format!(
                "KMS key {} is disabled; enable it or configure another key",
                self.key_arn
            ),
            Some("KMSInvalidStateException") => format!(
                "KMS key {} is not usable in its state (pending deletion or import); cancel \
                 that or configure another key",
                self.key_arn
            ),
            Some("NotFoundException") => {
                format!("KMS key {} does not exist any more", self.key_arn)
            }
            _ => return e.into_error(op, BACKEND),
        };
        let source = e.into_error(op, BACKEND);
        Error::new(source.kind(), message)
            .with_backend(BACKEND)
            .with_source(source)
    }
}

fn config_error(message: String) -> Error {
    Error::new(ErrorKind::Config, message).with_backend(BACKEND)
}

fn unexpected(message: &'static str) -> Error {
    Error::new(ErrorKind::Unexpected, message).with_backend(BACKEND)
}
