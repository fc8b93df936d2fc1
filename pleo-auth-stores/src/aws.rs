//! `AwsStore`: a [`SecretStore`] on AWS Secrets Manager.
//!
//! # Names
//!
//! Each [`StoreKey`] is one secret named `<name prefix><encoded key>`. Store keys use
//! `A-Z a-z 0-9 _ - % + /`; Secrets Manager allows `A-Z a-z 0-9 / _ + = . @ -`, so the encoding
//! maps `%` to `@` (which no store key contains) and keeps everything else: it is injective and
//! reversible. Secret names are at most 512 characters; a longer name is replaced by its first
//! 447 characters, `=` and the hex SHA-256 of the whole store key (`=` never appears in a plain
//! name, so the two forms cannot meet). Such a secret also stores its full key in front of the
//! value, and a read checks it, so a hash collision reads as [`ErrorKind::Corrupt`] rather than
//! as another key's value. End the prefix with `/` (for example `pleo-auth/`) to keep it apart
//! from other names.
//!
//! # Values
//!
//! A value is the secret's `SecretBinary`, as is; Secrets Manager holds at most 64 KiB
//! (65,536 bytes), less the key for hashed names. A delete first writes a tombstone
//! (`SecretString` = `pleo-auth:tombstone`), which reads as absent; any other `SecretString` is
//! [`ErrorKind::Corrupt`]. Every read names `VersionStage=AWSCURRENT` (moto otherwise returns a
//! stale value after a stage move; on AWS it is the same as the default).
//!
//! # Versions and compare-and-swap
//!
//! A [`Version`] is the Secrets Manager version id, a random UUID the store sends as
//! `ClientRequestToken` (so the SDK's retries of one write are idempotent). Version ids are never
//! reused, also not after a delete. A write with [`Precondition::Version`] is two calls:
//! 1. `PutSecretValue` with the staging label `pleo-auth-pending` (the same for every writer),
//!    which does not touch `AWSCURRENT`. A label is on at most one version of a secret, so the
//!    service takes it from whichever version had it: labels never pile up, and no call is
//!    needed to remove one afterwards;
//! 2. `UpdateSecretVersionStage` moving `AWSCURRENT` to the new version with
//!    `RemoveFromVersionId` set to the expected version. Secrets Manager refuses the move unless
//!    `AWSCURRENT` is still on that version, so of several writers exactly one wins; a stale
//!    writer's move is rejected and reported as [`ErrorKind::Conflict`]. When the SDK sent the
//!    move again because the answer to the first one was lost, the refusal may be of our own
//!    earlier move: before reporting a conflict the store reads where `AWSCURRENT` is
//!    (`DescribeSecret`, a third call only on this path), and if it is on the new version the
//!    write won.
//!
//! The label only makes the put leave `AWSCURRENT` alone (without `VersionStages` the put would
//! move it); step 2 names versions by id and does not need it. When two writers race, the second
//! put takes the label from the first writer's version, which then has no label: Secrets Manager
//! calls such a version deprecated, but removes deprecated versions only while a secret has more
//! than 100 versions and never one created less than 24 hours ago, so the first writer's move
//! still finds its version (a writer that stalls for a day between its calls at worst gets a
//! `Conflict`, never a wrong value). moto, which the tests run against, moves labels the same way
//! and never removes a version. Its threaded server does not make each call atomic as Secrets
//! Manager does (two concurrent `CreateSecret` calls for one name can both succeed), so
//! `cargo xtask services` runs it with one request at a time. The last staged version keeps the
//! label (usually it is also `AWSCURRENT`; after a lost race it is the loser's version, until the
//! next write).
//!
//! A create ([`Precondition::Absent`]) is one `CreateSecret` (`ResourceExistsException` is
//! `Conflict`). An unconditional write ([`Precondition::None`]) reads the current version and
//! swaps from it as above, again on a conflict; it never puts `AWSCURRENT` directly, because
//! moto then leaves two versions labelled `AWSCURRENT` after an earlier stage move.

//! # Deletes
//!
//! `delete` writes a tombstone (with compare-and-swap for [`Precondition::Version`], so the
//! version check is atomic) and then `DeleteSecret` with the configured [`Deletion`]: a recovery
//! window (7 days by default) or `ForceDeleteWithoutRecovery`. Pending authorizations
//! ([`layout::is_pending_authorization`]: single-use, minutes-lived, never recreated) are always
//! deleted without recovery, so abandoned consents are not billed for a recovery window. A
//! secret scheduled for deletion
//! reads as absent and is not listed. Creating it again restores it and moves `AWSCURRENT` from
//! its tombstone to the new value by compare-and-swap, so a reader never sees the deleted value
//! come back and of two racing creators one wins. (A secret deleted by other means than this
//! store has no tombstone: between the restore and the move, about one round trip, its old value
//! is readable.) To recover a value deleted by this store, restore the secret and move
//! `AWSCURRENT` back to `AWSPREVIOUS`. If the `DeleteSecret` call fails, `delete` returns the
//! error and the tombstone stays: the key reads as absent, and [`SecretStore::list`] names it
//! until it is deleted or created again.
//!
//! # Batch reads
//!
//! [`SecretStore::get_many`] names up to 20 secrets in one `BatchGetSecretValue`, which answers
//! each secret's `AWSCURRENT` version (the IAM policy needs `secretsmanager:BatchGetSecretValue`
//! and `GetSecretValue` on the secrets). An answer that is not `AWSCURRENT` (moto answers the
//! version last written rather than the one a stage move made current) and a secret the call
//! cannot read (one scheduled for deletion) are read again one by one, as `get` reads them.
//!
//! # Listing
//!
//! `ListSecrets` with a `name` filter on the key prefix, paginated; the filter is
//! case-insensitive, so names are compared again exactly. Hashed names are read to learn their
//! keys. `ListSecrets` is eventually consistent on AWS: a key written a moment ago may be
//! missing from a list.
//!
//! # Rate of writes
//!
//! AWS asks for at most about one `PutSecretValue` per secret every 10 minutes, since it keeps
//! versions for a while. The store writes only when asked to, and pleo-auth asks only when a
//! credential changes (a token rotated, a status changed), never on a read: one write per refresh
//! of a grant, that is about once per access-token lifetime (`expires_in`). Each grant is its own
//! secret, so the guidance applies per grant.

//! # Configuration
//!
//! Credentials and region come from the standard AWS chain (environment, profile, web identity,
//! ECS and EC2 instance metadata) unless set on the builder. [`AwsStoreBuilder::endpoint_url`]
//! points at a VPC endpoint or a local emulator (`https`, or `http` on a loopback host).
//! [`AwsStoreBuilder::kms_key_id`] names the KMS key new secrets are encrypted with.
//!
//! # Errors
//!
//! Errors name the backend `"aws"`. Timeouts, connection failures and 5xx are
//! [`ErrorKind::Unavailable`] (retryable), throttling is [`ErrorKind::RateLimited`],
//! `AccessDenied` is [`ErrorKind::PermissionDenied`], rejected credentials and KMS failures are
//! [`ErrorKind::Config`]. No error holds a credential or a value.
//!
//! # Example
//!
//! ```no_run
//! use pleo_auth_core::{Precondition, SecretBytes, SecretStore, StoreKey};
//! use pleo_auth_stores::aws::{AwsStore, Deletion};
//!
//! # async fn run() -> pleo_auth_core::Result<()> {
//! let store = AwsStore::builder()
//!     .region("eu-west-1")
//!     .name_prefix("pleo-auth/")
//!     .deletion(Deletion::RecoveryWindow { days: 7 })
//!     .build()
//!     .await?;
//! let key = StoreKey::from_parts(["tenants", "acme"])?;
//! store
//!     .put(&key, SecretBytes::new(b"value".to_vec()), Precondition::Absent)
//!     .await?;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::{Credentials, Region};
use aws_sdk_secretsmanager::primitives::Blob;
use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType};
use pleo_auth_core::{
    Backoff, Error, ErrorKind, Precondition, Result, SecretBytes, SecretStore, StoreKey, Version,
    Versioned, check_transport_security, layout,
};
use sha2::{Digest, Sha256};
use url::Url;
use zeroize::Zeroizing;

use crate::aws_error::AwsError;

const BACKEND: &str = "aws";
const CURRENT: &str = "AWSCURRENT";
const TOMBSTONE: &str = "pleo-auth:tombstone";
/// The staging label of every staged version (see the module documentation); it is on at most
/// one version of a secret at a time.
const PENDING_LABEL: &str = "pleo-auth-pending";
/// Longest secret name Secrets Manager accepts.
const MAX_NAME_LEN: usize = 512;
/// Length of the readable head of a hashed name: the rest is `=` and 64 hex digits.
const HASHED_HEAD_LEN: usize = MAX_NAME_LEN - 1 - 64;
/// Longest name prefix, so that a hashed name keeps at least 191 characters of its key.
const MAX_PREFIX_LEN: usize = 256;
/// Largest `SecretBinary` Secrets Manager accepts.
const MAX_SECRET_BYTES: usize = 65_536;
/// Magic of a value stored under a hashed name: `PAK` and format 1, then the key's length (u32,
/// big-endian), the key and the value.
const KEY_FRAME_MAGIC: [u8; 4] = *b"PAK\x01";
const WRITE_ATTEMPTS: u32 = 5;
/// The most secrets one `BatchGetSecretValue` names.
const BATCH: usize = 20;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What `delete` asks of Secrets Manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// Schedule the deletion after a recovery window of 7 to 30 days, during which the secret can
    /// be restored (and reads as absent).
    RecoveryWindow {
        /// Days until the secret is gone, 7 to 30.
        days: u8,
    },
    /// Delete at once, without recovery (`ForceDeleteWithoutRecovery`).
    Force,
}

impl Default for Deletion {
    fn default() -> Self {
        Deletion::RecoveryWindow { days: 7 }
    }
}

/// An access key pair for [`AwsStoreBuilder::static_credentials`].
#[derive(Clone)]
struct StaticCredentials {
    access_key_id: String,
    secret_access_key: Zeroizing<String>,
    session_token: Option<Zeroizing<String>>,
}

/// Configures an [`AwsStore`]; start with [`AwsStore::builder`].
#[derive(Clone, Default)]
pub struct AwsStoreBuilder {
    sdk_config: Option<aws_config::SdkConfig>,
    region: Option<String>,
    endpoint_url: Option<String>,
    credentials: Option<StaticCredentials>,
    name_prefix: String,
    kms_key_id: Option<String>,
    deletion: Deletion,
    timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
}

impl fmt::Debug for AwsStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsStoreBuilder")
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field("static_credentials", &self.credentials.is_some())
            .field("name_prefix", &self.name_prefix)
            .field("kms_key_id", &self.kms_key_id)
            .field("deletion", &self.deletion)
            .finish_non_exhaustive()
    }
}

impl AwsStoreBuilder {
    /// Starts from an already loaded AWS configuration instead of the standard chain; the
    /// builder's other settings override it.
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
    /// local emulator such as moto.
    pub fn endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.endpoint_url = Some(url.into());
        self
    }

    /// Uses this access key instead of the standard credential chain.
    pub fn static_credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        self.credentials = Some(StaticCredentials {
            access_key_id: access_key_id.into(),
            secret_access_key: Zeroizing::new(secret_access_key.into()),
            session_token: None,
        });
        self
    }

    /// Adds a session token to [`AwsStoreBuilder::static_credentials`]; call after it.
    pub fn session_token(mut self, token: impl Into<String>) -> Self {
        if let Some(c) = &mut self.credentials {
            c.session_token = Some(Zeroizing::new(token.into()));
        }
        self
    }

    /// Prepended to every secret name, such as `pleo-auth/` (default: none).
    pub fn name_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.name_prefix = prefix.into();
        self
    }

    /// The KMS key (id, ARN or alias) that encrypts new secrets; default: the account's
    /// `aws/secretsmanager` key.
    pub fn kms_key_id(mut self, key_id: impl Into<String>) -> Self {
        self.kms_key_id = Some(key_id.into());
        self
    }

    /// What `delete` asks for (default: a 7-day recovery window).
    pub fn deletion(mut self, deletion: Deletion) -> Self {
        self.deletion = deletion;
        self
    }

    /// The timeout of each attempt of a request (default 10 s; the SDK retries up to 3 times).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The timeout of establishing a connection (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Loads the AWS configuration (unless given) and builds the store. Makes no request to
    /// Secrets Manager.
    pub async fn build(self) -> Result<AwsStore> {
        if !self.name_prefix.bytes().all(allowed_name_byte)
            || self.name_prefix.len() > MAX_PREFIX_LEN
        {
            return Err(config_error(
                "the name prefix must be at most 256 characters of A-Z a-z 0-9 / _ + = . @ -",
            ));
        }
        if let Deletion::RecoveryWindow { days } = self.deletion
            && !(7..=30).contains(&days)
        {
            return Err(config_error("the recovery window must be 7 to 30 days"));
        }
        if let Some(endpoint) = &self.endpoint_url {
            let url = Url::parse(endpoint)
                .map_err(|_| config_error("the endpoint URL is not a valid URL"))?;
            check_transport_security(&url).map_err(|e| e.with_backend(BACKEND))?;
        }
        let sdk_config = match self.sdk_config {
            Some(config) => config,
            None => aws_config::defaults(BehaviorVersion::latest()).load().await,
        };
        let mut config = aws_sdk_secretsmanager::config::Builder::from(&sdk_config);
        if let Some(region) = self.region {
            config = config.region(Region::new(region));
        }
        if let Some(endpoint) = self.endpoint_url.clone() {
            config = config.endpoint_url(endpoint);
        }
        if let Some(c) = &self.credentials {
            config = config.credentials_provider(Credentials::new(
                c.access_key_id.clone(),
                c.secret_access_key.as_str(),
                c.session_token.as_ref().map(|t| t.as_str().to_owned()),
                None,
                "pleo-auth-static",
            ));
        }
        let timeouts = aws_sdk_secretsmanager::config::timeout::TimeoutConfig::builder()
            .connect_timeout(self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT))
            .operation_attempt_timeout(self.timeout.unwrap_or(DEFAULT_TIMEOUT))
            .build();
        config = config.timeout_config(timeouts);
        let config = config.build();
        if config.region().is_none() {
            return Err(config_error(
                "no AWS region: set one on the builder or in the environment",
            ));
        }
        let region = config.region().map(|r| r.to_string());
        Ok(AwsStore {
            client: Client::from_conf(config),
            name_prefix: self.name_prefix,
            kms_key_id: self.kms_key_id,
            deletion: self.deletion,
            region,
            endpoint_url: self.endpoint_url,
        })
    }
}

/// A [`SecretStore`] on AWS Secrets Manager; see the [module documentation](self).
///
/// Cloning is cheap and shares the client.
#[derive(Clone)]
pub struct AwsStore {
    client: Client,
    name_prefix: String,
    kms_key_id: Option<String>,
    deletion: Deletion,
    region: Option<String>,
    endpoint_url: Option<String>,
}

impl fmt::Debug for AwsStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsStore")
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field("name_prefix", &self.name_prefix)
            .field("kms_key_id", &self.kms_key_id)
            .field("deletion", &self.deletion)
            .finish_non_exhaustive()
    }
}

/// The secret that holds a key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Name {
    Plain(String),
    Hashed(String),
}

impl Name {
    fn as_str(&self) -> &str {
        match self {
            Name::Plain(n) | Name::Hashed(n) => n,
        }
    }
}

/// What a secret's `AWSCURRENT` version holds.
enum State {
    Live {
        version: String,
        value: SecretBytes,
    },
    Tombstone {
        version: String,
    },
    /// Scheduled for deletion.
    Deleted,
    Missing,
}

/// What a write stores.
enum Payload<'a> {
    Value(&'a SecretBytes),
    Tombstone,
}

impl AwsStore {
    /// A builder; credentials and region default to the standard AWS chain.
    pub fn builder() -> AwsStoreBuilder {
        AwsStoreBuilder::default()
    }

    /// The Secrets Manager client the store uses.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The name of the secret that holds `key`.
    pub fn secret_name(&self, key: &StoreKey) -> String {
        self.name(key).as_str().to_owned()
    }

    fn name(&self, key: &StoreKey) -> Name {
        let plain = format!("{}{}", self.name_prefix, key.as_str().replace('%', "@"));
        if plain.len() <= MAX_NAME_LEN {
            return Name::Plain(plain);
        }
        let digest = hex::encode(Sha256::digest(key.as_str().as_bytes()));
        Name::Hashed(format!("{}={digest}", &plain[..HASHED_HEAD_LEN]))
    }

    fn encode(&self, name: &Name, key: &StoreKey, value: &SecretBytes) -> Result<Blob> {
        let mut bytes = Zeroizing::new(match name {
            Name::Plain(_) => value.expose_secret().to_vec(),
            Name::Hashed(_) => {
                let key = key.as_str().as_bytes();
                let len = u32::try_from(key.len()).expect("store keys are at most 16 KiB");
                let mut framed = Vec::with_capacity(8 + key.len() + value.expose_secret().len());
                framed.extend_from_slice(&KEY_FRAME_MAGIC);
                framed.extend_from_slice(&len.to_be_bytes());
                framed.extend_from_slice(key);
                framed.extend_from_slice(value.expose_secret());
                framed
            }
        });
        if bytes.len() > MAX_SECRET_BYTES {
            return Err(Error::invalid_input(
                "the value is larger than the 64 KiB a secret can hold",
            )
            .with_backend(BACKEND));
        }
        // The SDK owns the request from here on and does not zeroize it.
        Ok(Blob::new(std::mem::take(&mut *bytes)))
    }

    /// Reads a stored value; for hashed names, returns the stored key too.
    fn decode(name: &Name, blob: &Blob) -> Result<(Option<String>, SecretBytes)> {
        let bytes = blob.as_ref();
        match name {
            Name::Plain(_) => Ok((None, SecretBytes::new(bytes.to_vec()))),
            Name::Hashed(_) => {
                let corrupt = || {
                    Error::corrupt("the secret does not hold a pleo-auth key frame")
                        .with_backend(BACKEND)
                };
                let rest = bytes.strip_prefix(&KEY_FRAME_MAGIC).ok_or_else(corrupt)?;
                let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(corrupt)?;
                let len = u32::from_be_bytes(*len) as usize;
                if rest.len() < len {
                    return Err(corrupt());
                }
                let (key, value) = rest.split_at(len);
                let key = String::from_utf8(key.to_vec()).map_err(|_| corrupt())?;
                Ok((Some(key), SecretBytes::new(value.to_vec())))
            }
        }
    }

    async fn state(&self, name: &Name, key: Option<&StoreKey>) -> Result<(State, Option<String>)> {
        let mut attempt = 0;
        let out = loop {
            let result = self
                .client
                .get_secret_value()
                .secret_id(name.as_str())
                .version_stage(CURRENT)
                .send()
                .await;
            let e = match result {
                Ok(out) => break out,
                Err(e) => AwsError::from_sdk(e),
            };
            match e.code() {
                Some("ResourceNotFoundException") => return Ok((State::Missing, None)),
                Some("InvalidRequestException") => match self.describe(name).await? {
                    Described::Deleted { .. } => return Ok((State::Deleted, None)),
                    Described::Missing => return Ok((State::Missing, None)),
                    // Restored since the read: read again.
                    Described::Active if attempt < WRITE_ATTEMPTS => attempt += 1,
                    Described::Active => return Err(e.into_error("read", BACKEND)),
                },
                _ => return Err(e.into_error("read", BACKEND)),
            }
        };
        Self::read_state(
            name,
            key,
            out.version_id(),
            out.secret_binary(),
            out.secret_string(),
        )
    }

    /// What one version of a secret holds, from the fields of a read.
    fn read_state(
        name: &Name,
        key: Option<&StoreKey>,
        version: Option<&str>,
        binary: Option<&Blob>,
        string: Option<&str>,
    ) -> Result<(State, Option<String>)> {
        let version = version
            .ok_or_else(|| unexpected("the answer has no version id"))?
            .to_owned();
        if let Some(blob) = binary {
            let (stored_key, value) = Self::decode(name, blob)?;
            if let (Some(stored), Some(key)) = (&stored_key, key)
                && stored != key.as_str()
            {
                return Err(Error::corrupt(
                    "the secret holds another key (a hash collision or tampering)",
                )
                .with_backend(BACKEND));
            }
            return Ok((State::Live { version, value }, stored_key));
        }
        match string {
            Some(TOMBSTONE) => Ok((State::Tombstone { version }, None)),
            _ => {
                Err(Error::corrupt("the secret does not hold a pleo-auth value")
                    .with_backend(BACKEND))
            }
        }
    }

    /// Reads up to [`BATCH`] secrets with one `BatchGetSecretValue`. Each answer that is the
    /// secret's `AWSCURRENT` version is used as it is; a secret the call reports as not found is
    /// absent; every other key (an error such as a secret scheduled for deletion, or an answer
    /// without `AWSCURRENT`, which moto gives after a stage move) is read with `get`.
    async fn get_batch(&self, keys: &[StoreKey]) -> Result<Vec<Option<Versioned>>> {
        let names: Vec<Name> = keys.iter().map(|key| self.name(key)).collect();
        let mut unique: Vec<String> = names.iter().map(|n| n.as_str().to_owned()).collect();
        unique.sort();
        unique.dedup();
        let out = self
            .client
            .batch_get_secret_value()
            .set_secret_id_list(Some(unique))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(e).into_error("read many", BACKEND))?;
        let answers: HashMap<&str, _> = out
            .secret_values()
            .iter()
            .filter(|entry| entry.version_stages().iter().any(|s| s == CURRENT))
            .filter_map(|entry| entry.name().map(|name| (name, entry)))
            .collect();
        let not_found: Vec<&str> = out
            .errors()
            .iter()
            .filter(|e| e.error_code() == Some("ResourceNotFoundException"))
            .filter_map(|e| e.secret_id())
            .collect();
        let mut result = Vec::with_capacity(keys.len());
        for (key, name) in keys.iter().zip(&names) {
            if let Some(entry) = answers.get(name.as_str()) {
                let (state, _) = Self::read_state(
                    name,
                    Some(key),
                    entry.version_id(),
                    entry.secret_binary(),
                    entry.secret_string(),
                )?;
                result.push(match state {
                    State::Live { version, value } => Some(Versioned {
                        value,
                        version: Version::new(version),
                    }),
                    State::Tombstone { .. } | State::Deleted | State::Missing => None,
                });
            } else if not_found.contains(&name.as_str()) {
                result.push(None);
            } else {
                result.push(self.get(key).await?);
            }
        }
        Ok(result)
    }

    async fn describe(&self, name: &Name) -> Result<Described> {
        match self
            .client
            .describe_secret()
            .secret_id(name.as_str())
            .send()
            .await
        {
            Ok(out) => {
                let current = out.version_ids_to_stages().and_then(current_version);
                Ok(if out.deleted_date().is_some() {
                    Described::Deleted { current }
                } else {
                    Described::Active
                })
            }
            Err(e) => {
                let e = AwsError::from_sdk(e);
                match e.code() {
                    Some("ResourceNotFoundException") => Ok(Described::Missing),
                    _ => Err(e.into_error("describe", BACKEND)),
                }
            }
        }
    }

    fn payload(&self, name: &Name, key: &StoreKey, payload: &Payload<'_>) -> Result<Body> {
        Ok(match payload {
            Payload::Value(v) => Body::Binary(self.encode(name, key, v)?),
            Payload::Tombstone => Body::Tombstone,
        })
    }

    /// Stages `payload` as a new version, then moves `AWSCURRENT` from `from` to it: two calls.
    async fn compare_and_swap(
        &self,
        name: &Name,
        key: &StoreKey,
        payload: &Payload<'_>,
        from: &str,
    ) -> Result<String> {
        // Version ids are 32 to 64 characters; anything else cannot be current.
        if !(32..=64).contains(&from.len()) {
            return Err(mismatch());
        }
        let version = self.stage(name, key, payload).await?;
        self.promote(name, &version, from).await?;
        Ok(version)
    }

    /// `PutSecretValue` of a new version under [`PENDING_LABEL`], which takes the label from
    /// whichever version had it and leaves `AWSCURRENT` where it is. Returns the new version id.
    async fn stage(&self, name: &Name, key: &StoreKey, payload: &Payload<'_>) -> Result<String> {
        let token = new_token();
        let request = self
            .client
            .put_secret_value()
            .secret_id(name.as_str())
            .client_request_token(&token)
            .version_stages(PENDING_LABEL);
        let request = match self.payload(name, key, payload)? {
            Body::Binary(blob) => request.secret_binary(blob),
            Body::Tombstone => request.secret_string(TOMBSTONE),
        };
        match request.send().await {
            Ok(_) => Ok(token),
            Err(e) => {
                let e = AwsError::from_sdk(e);
                match e.code() {
                    Some("ResourceNotFoundException" | "InvalidRequestException") => {
                        Err(mismatch())
                    }
                    _ => Err(e.into_error("write", BACKEND)),
                }
            }
        }
    }

    /// `UpdateSecretVersionStage` moving `AWSCURRENT` to `version` if it is still on `from`.
    async fn promote(&self, name: &Name, version: &str, from: &str) -> Result<()> {
        match self
            .client
            .update_secret_version_stage()
            .secret_id(name.as_str())
            .version_stage(CURRENT)
            .move_to_version_id(version)
            .remove_from_version_id(from)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = AwsError::from_sdk(e);
                match e.code() {
                    Some(
                        "InvalidParameterException"
                        | "ResourceNotFoundException"
                        | "InvalidRequestException",
                    ) => {
                        // The SDK may have sent this move again after its first answer was
                        // lost: if that first one went through, the write won.
                        if self.current_version_id(name).await?.as_deref() == Some(version) {
                            Ok(())
                        } else {
                            Err(mismatch())
                        }
                    }
                    _ => Err(e.into_error("promote", BACKEND)),
                }
            }
        }
    }

    /// The version id `AWSCURRENT` is on (read from the secret's description, not its value).
    async fn current_version_id(&self, name: &Name) -> Result<Option<String>> {
        let out = match self
            .client
            .describe_secret()
            .secret_id(name.as_str())
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let e = AwsError::from_sdk(e);
                return match e.code() {
                    Some("ResourceNotFoundException") => Ok(None),
                    _ => Err(e.into_error("describe", BACKEND)),
                };
            }
        };
        Ok(out.version_ids_to_stages().and_then(|stages| {
            stages
                .iter()
                .find(|(_, labels)| labels.iter().any(|l| l == CURRENT))
                .map(|(id, _)| id.clone())
        }))
    }

    async fn create(&self, name: &Name, key: &StoreKey, value: &SecretBytes) -> Result<String> {
        let token = new_token();
        let mut request = self
            .client
            .create_secret()
            .name(name.as_str())
            .client_request_token(&token)
            .secret_binary(self.encode(name, key, value)?);
        if let Some(kms) = &self.kms_key_id {
            request = request.kms_key_id(kms);
        }
        match request.send().await {
            Ok(_) => Ok(token),
            Err(e) => {
                let e = AwsError::from_sdk(e);
                match e.code() {
                    Some("ResourceExistsException" | "InvalidRequestException") => Err(exists()),
                    _ => Err(e.into_error("create", BACKEND)),
                }
            }
        }
    }

    /// Restores a secret scheduled for deletion and moves `AWSCURRENT` from the version that was
    /// current when it was deleted (its tombstone) to `value`.
    async fn restore_and_swap(
        &self,
        name: &Name,
        key: &StoreKey,
        value: &SecretBytes,
    ) -> Result<String> {
        let current = match self.describe(name).await? {
            Described::Deleted { current: Some(v) } => v,
            // Restored (or deleted for good) by someone else meanwhile.
            _ => return Err(exists()),
        };
        if let Err(e) = self
            .client
            .restore_secret()
            .secret_id(name.as_str())
            .send()
            .await
        {
            let e = AwsError::from_sdk(e);
            return match e.code() {
                Some("ResourceNotFoundException" | "InvalidRequestException") => Err(exists()),
                _ => Err(e.into_error("restore", BACKEND)),
            };
        }
        self.compare_and_swap(name, key, &Payload::Value(value), &current)
            .await
    }

    async fn put_absent(&self, name: &Name, key: &StoreKey, value: &SecretBytes) -> Result<String> {
        for attempt in 0..WRITE_ATTEMPTS {
            match self.create(name, key, value).await {
                Ok(version) => return Ok(version),
                Err(e) if e.kind() != ErrorKind::Conflict => return Err(e),
                Err(_) => {}
            }
            match self.state(name, Some(key)).await?.0 {
                State::Live { .. } => return Err(exists()),
                State::Tombstone { version } => {
                    return self
                        .compare_and_swap(name, key, &Payload::Value(value), &version)
                        .await
                        .map_err(conflict_as_exists);
                }
                State::Deleted => {
                    return self
                        .restore_and_swap(name, key, value)
                        .await
                        .map_err(conflict_as_exists);
                }
                // Deleted without recovery a moment ago; AWS may need a moment to finish.
                State::Missing => backoff(attempt).await,
            }
        }
        Err(
            Error::conflict("a deletion of this key is still completing")
                .with_backend(BACKEND)
                .with_retryable(true),
        )
    }

    async fn put_unconditional(
        &self,
        name: &Name,
        key: &StoreKey,
        value: &SecretBytes,
    ) -> Result<String> {
        for attempt in 0..WRITE_ATTEMPTS {
            let result = match self.state(name, Some(key)).await?.0 {
                State::Live { version, .. } | State::Tombstone { version } => {
                    self.compare_and_swap(name, key, &Payload::Value(value), &version)
                        .await
                }
                State::Missing => self.create(name, key, value).await,
                State::Deleted => self.restore_and_swap(name, key, value).await,
            };
            match result {
                Ok(version) => return Ok(version),
                Err(e) if e.kind() != ErrorKind::Conflict => return Err(e),
                Err(_) => backoff(attempt).await,
            }
        }
        Err(contended())
    }

    async fn delete_secret(&self, name: &Name, key: &StoreKey) -> Result<()> {
        let request = self.client.delete_secret().secret_id(name.as_str());
        let request = match self.deletion {
            _ if layout::is_pending_authorization(key) => {
                request.force_delete_without_recovery(true)
            }
            Deletion::RecoveryWindow { days } => request.recovery_window_in_days(i64::from(days)),
            Deletion::Force => request.force_delete_without_recovery(true),
        };
        match request.send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = AwsError::from_sdk(e);
                match e.code() {
                    // Gone already, or already scheduled for deletion.
                    Some("ResourceNotFoundException" | "InvalidRequestException") => Ok(()),
                    _ => Err(e.into_error("delete", BACKEND)),
                }
            }
        }
    }

    async fn list_names(&self, filter: &str) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let out = self
                .client
                .list_secrets()
                .filters(
                    Filter::builder()
                        .key(FilterNameStringType::Name)
                        .values(filter)
                        .build(),
                )
                .max_results(100)
                .set_next_token(next.take())
                .send()
                .await
                .map_err(|e| AwsError::from_sdk(e).into_error("list", BACKEND))?;
            names.extend(
                out.secret_list()
                    .iter()
                    .filter(|s| s.deleted_date().is_none())
                    .filter_map(|s| s.name())
                    .filter(|n| n.starts_with(filter))
                    .map(str::to_owned),
            );
            match out.next_token() {
                Some(token) if !token.is_empty() => next = Some(token.to_owned()),
                _ => return Ok(names),
            }
        }
    }
}

enum Body {
    Binary(Blob),
    Tombstone,
}

enum Described {
    Active,
    Deleted { current: Option<String> },
    Missing,
}

fn current_version(stages: &HashMap<String, Vec<String>>) -> Option<String> {
    stages
        .iter()
        .find(|(_, labels)| labels.iter().any(|l| l == CURRENT))
        .map(|(version, _)| version.clone())
}

#[async_trait]
impl SecretStore for AwsStore {
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn get(&self, key: &StoreKey) -> Result<Option<Versioned>> {
        match self.state(&self.name(key), Some(key)).await?.0 {
            State::Live { version, value } => Ok(Some(Versioned {
                value,
                version: Version::new(version),
            })),
            State::Tombstone { .. } | State::Deleted | State::Missing => Ok(None),
        }
    }

    /// One `BatchGetSecretValue` per 20 keys; see [`AwsStore`]'s module documentation.
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, keys = keys.len()))]
    async fn get_many(&self, keys: &[StoreKey]) -> Result<Vec<Option<Versioned>>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(BATCH) {
            out.extend(self.get_batch(chunk).await?);
        }
        Ok(out)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn put(
        &self,
        key: &StoreKey,
        value: SecretBytes,
        precondition: Precondition,
    ) -> Result<Version> {
        let name = self.name(key);
        let version = match precondition {
            Precondition::None => self.put_unconditional(&name, key, &value).await?,
            Precondition::Absent => self.put_absent(&name, key, &value).await?,
            Precondition::Version(from) => {
                self.compare_and_swap(&name, key, &Payload::Value(&value), from.as_str())
                    .await?
            }
        };
        Ok(Version::new(version))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn delete(&self, key: &StoreKey, precondition: Precondition) -> Result<()> {
        let name = self.name(key);
        match precondition {
            Precondition::Absent => {
                Err(Error::invalid_input("delete cannot require absence").with_backend(BACKEND))
            }
            Precondition::Version(from) => {
                self.compare_and_swap(&name, key, &Payload::Tombstone, from.as_str())
                    .await?;
                self.delete_secret(&name, key).await
            }
            Precondition::None => {
                for attempt in 0..WRITE_ATTEMPTS {
                    let version = match self.state(&name, Some(key)).await?.0 {
                        State::Missing | State::Deleted => return Ok(()),
                        State::Live { version, .. } | State::Tombstone { version } => version,
                    };
                    match self
                        .compare_and_swap(&name, key, &Payload::Tombstone, &version)
                        .await
                    {
                        Ok(_) => return self.delete_secret(&name, key).await,
                        Err(e) if e.kind() == ErrorKind::Conflict => backoff(attempt).await,
                        Err(e) => return Err(e),
                    }
                }
                Err(contended())
            }
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, prefix = %prefix))]
    async fn list(&self, prefix: &StoreKey) -> Result<Vec<StoreKey>> {
        // Every name below the prefix starts with this, or, when hashed, with its first
        // `HASHED_HEAD_LEN` characters.
        let mut filter = format!("{}{}/", self.name_prefix, prefix.as_str().replace('%', "@"));
        filter.truncate(HASHED_HEAD_LEN);
        let mut keys = Vec::new();
        for name in self.list_names(&filter).await? {
            let Some(rest) = name.strip_prefix(self.name_prefix.as_str()) else {
                continue;
            };
            let key = if rest.contains('=') {
                match self.state(&Name::Hashed(name.clone()), None).await? {
                    (State::Live { .. }, Some(stored)) => StoreKey::parse(&stored).ok(),
                    _ => None,
                }
            } else {
                StoreKey::parse(&rest.replace('@', "%")).ok()
            };
            match key {
                Some(key) if key.starts_with(prefix) && &key != prefix => keys.push(key),
                Some(_) => {}
                None => tracing::debug!(
                    backend = BACKEND,
                    "skipping a secret whose name is not a store key"
                ),
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}

fn allowed_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'+' | b'=' | b'.' | b'@' | b'-')
}

/// A random UUID (version 4) for `ClientRequestToken`, which becomes the version id.
fn new_token() -> String {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).expect("the operating system's random source is available");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Waits before write retry `attempt` (0 for the first): 50 ms doubling up to 1.6 s.
async fn backoff(attempt: u32) {
    const BACKOFF: Backoff =
        Backoff::new(Duration::from_millis(50), Duration::from_millis(1600)).without_jitter();
    tokio::time::sleep(BACKOFF.delay(attempt.saturating_add(1))).await;
}

fn mismatch() -> Error {
    Error::conflict("version does not match").with_backend(BACKEND)
}

fn exists() -> Error {
    Error::conflict("key already exists").with_backend(BACKEND)
}

fn conflict_as_exists(e: Error) -> Error {
    if e.kind() == ErrorKind::Conflict {
        exists()
    } else {
        e
    }
}

fn contended() -> Error {
    Error::conflict("the key kept changing during the write")
        .with_backend(BACKEND)
        .with_retryable(true)
}

fn unexpected(message: &'static str) -> Error {
    Error::new(ErrorKind::Unexpected, message).with_backend(BACKEND)
}

fn config_error(message: &'static str) -> Error {
    Error::new(ErrorKind::Config, message).with_backend(BACKEND)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use aws_sdk_secretsmanager::config::interceptors::{
        BeforeDeserializationInterceptorContextMut, BeforeTransmitInterceptorContextRef,
    };
    use aws_sdk_secretsmanager::config::{ConfigBag, Intercept, RuntimeComponents};

    use super::*;

    async fn store(prefix: &str) -> AwsStore {
        AwsStore::builder()
            .region("eu-west-1")
            .static_credentials("AKIDCANARY", "SECRET-CANARY")
            .name_prefix(prefix)
            .build()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn names_map_percent_to_at_and_hash_long_keys() {
        let store = store("pleo-auth/").await;
        let key = StoreKey::from_parts(["tenants", "acme/gmbh", "+"]).unwrap();
        assert_eq!(
            store.name(&key),
            Name::Plain("pleo-auth/tenants/acme@2Fgmbh/@2B".to_owned())
        );
        let long = StoreKey::from_parts(["t", &"x".repeat(600)]).unwrap();
        let Name::Hashed(name) = store.name(&long) else {
            panic!("a long key is hashed");
        };
        assert_eq!(name.len(), MAX_NAME_LEN);
        assert!(name.starts_with("pleo-auth/t/xxx"));
        assert_eq!(name.matches('=').count(), 1);
        let other = StoreKey::from_parts(["t", &"x".repeat(601)]).unwrap();
        assert_ne!(store.name(&other), store.name(&long));
        assert!(name.bytes().all(allowed_name_byte));
    }

    #[tokio::test]
    async fn hashed_values_carry_their_key() {
        let store = store("").await;
        let key = StoreKey::from_parts(["t", &"y".repeat(600)]).unwrap();
        let name = store.name(&key);
        let blob = store
            .encode(&name, &key, &SecretBytes::new(b"v".to_vec()))
            .unwrap();
        let (stored, value) = AwsStore::decode(&name, &blob).unwrap();
        assert_eq!(stored.as_deref(), Some(key.as_str()));
        assert_eq!(value.expose_secret(), b"v");
        let err = AwsStore::decode(&name, &Blob::new(b"garbage".to_vec())).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
    }

    #[tokio::test]
    async fn debug_redacts_credentials_and_settings_are_checked() {
        let builder = AwsStore::builder()
            .region("eu-west-1")
            .static_credentials("AKIDCANARY", "SECRET-CANARY")
            .session_token("TOKEN-CANARY");
        assert!(!format!("{builder:?}").contains("CANARY"));
        let store = builder.clone().build().await.unwrap();
        assert!(!format!("{store:?}").contains("CANARY"));
        let err = builder
            .clone()
            .name_prefix("bad prefix")
            .build()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        let err = builder
            .clone()
            .deletion(Deletion::RecoveryWindow { days: 3 })
            .build()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        let err = builder
            .endpoint_url("http://secretsmanager.example")
            .build()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    /// What a [`Calls`] interceptor saw, and whether it loses the answer to the next move.
    #[derive(Debug, Default)]
    struct Seen {
        operations: Vec<String>,
        lose_next_move: bool,
    }

    /// Records the operation (`X-Amz-Target`) of every request the client transmits, retries
    /// included.
    #[derive(Debug, Clone, Default)]
    struct Calls(Arc<Mutex<Seen>>);

    impl Calls {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut self.0.lock().unwrap().operations)
        }

        /// The answer to the next `UpdateSecretVersionStage` (which moto has carried out) is
        /// replaced by a 500, so the SDK sends the move again.
        fn lose_next_move(&self) {
            self.0.lock().unwrap().lose_next_move = true;
        }
    }

    impl Intercept for Calls {
        fn name(&self) -> &'static str {
            "Calls"
        }

        fn read_before_transmit(
            &self,
            context: &BeforeTransmitInterceptorContextRef<'_>,
            _: &RuntimeComponents,
            _: &mut ConfigBag,
        ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
            let target = context.request().headers().get("x-amz-target");
            let operation = target.map_or("?", |t| t.trim_start_matches("secretsmanager."));
            let mut seen = self.0.lock().unwrap();
            seen.operations.push(operation.to_owned());
            Ok(())
        }

        fn modify_before_deserialization(
            &self,
            context: &mut BeforeDeserializationInterceptorContextMut<'_>,
            _: &RuntimeComponents,
            _: &mut ConfigBag,
        ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
            let mut seen = self.0.lock().unwrap();
            let last = seen.operations.last().map(String::as_str);
            if seen.lose_next_move && last == Some("UpdateSecretVersionStage") {
                seen.lose_next_move = false;
                let response = context.response_mut();
                *response.status_mut() = 500.try_into()?;
                response.headers_mut().remove("content-length");
                *response.body_mut() =
                    r#"{"__type":"InternalServiceError","Message":"lost"}"#.into();
            }
            Ok(())
        }
    }

    /// A store on moto (`cargo xtask services up`) whose client reports to `calls`.
    async fn moto_store(calls: &Calls) -> AwsStore {
        let store = AwsStore::builder()
            .endpoint_url(pleo_auth_core::testing::service_env(
                "PLEO_AUTH_TEST_AWS_ENDPOINT",
            ))
            .region("eu-west-1")
            .static_credentials("AKIDTESTING", "CANARY-secret-access-key")
            .name_prefix(format!("pleo-unit-{}/", pleo_auth_core::random_urlsafe(6)))
            .build()
            .await
            .unwrap();
        let config = store
            .client
            .config()
            .to_builder()
            .interceptor(calls.clone())
            .build();
        AwsStore {
            client: Client::from_conf(config),
            ..store
        }
    }

    async fn labels(store: &AwsStore, key: &StoreKey) -> HashMap<String, Vec<String>> {
        let out = store
            .client
            .describe_secret()
            .secret_id(store.secret_name(key))
            .send()
            .await
            .unwrap();
        // moto lists label-less (deprecated) versions with no labels; AWS leaves them out.
        out.version_ids_to_stages()
            .unwrap()
            .iter()
            .filter(|(_, labels)| !labels.is_empty())
            .map(|(v, labels)| (v.clone(), labels.clone()))
            .collect()
    }

    async fn read(store: &AwsStore, key: &StoreKey) -> (Vec<u8>, Version) {
        let read = store.get(key).await.unwrap().unwrap();
        (read.value.expose_secret().to_vec(), read.version)
    }

    fn bytes(s: &str) -> SecretBytes {
        SecretBytes::new(s.as_bytes().to_vec())
    }

    #[tokio::test]
    async fn a_batch_read_of_45_keys_is_three_calls() {
        let calls = Calls::default();
        let store = moto_store(&calls).await;
        let mut keys = Vec::new();
        for i in 0..40 {
            let key = StoreKey::from_parts(["batch", &format!("k{i:02}")]).unwrap();
            store
                .put(&key, bytes(&format!("v{i}")), Precondition::Absent)
                .await
                .unwrap();
            keys.push(key);
        }
        let hashed = StoreKey::from_parts(["batch", &"h".repeat(600)]).unwrap();
        store
            .put(&hashed, bytes("hashed"), Precondition::Absent)
            .await
            .unwrap();
        keys.push(hashed);
        let deleted = StoreKey::from_parts(["batch", "deleted"]).unwrap();
        store
            .put(&deleted, bytes("gone"), Precondition::Absent)
            .await
            .unwrap();
        store.delete(&deleted, Precondition::None).await.unwrap();
        keys.push(deleted);
        for i in 0..3 {
            keys.push(StoreKey::from_parts(["batch", &format!("missing{i}")]).unwrap());
        }
        calls.take();
        let got = store.get_many(&keys).await.unwrap();
        let operations = calls.take();
        let batches = operations
            .iter()
            .filter(|op| *op == "BatchGetSecretValue")
            .count();
        assert_eq!(batches, 3, "45 keys in batches of 20: {operations:?}");
        assert!(
            operations.len() <= 5,
            "only the deleted secret is read on its own: {operations:?}"
        );
        for (i, read) in got.iter().take(40).enumerate() {
            assert_eq!(
                read.as_ref().unwrap().value.expose_secret(),
                format!("v{i}").as_bytes()
            );
        }
        assert_eq!(got[40].as_ref().unwrap().value.expose_secret(), b"hashed");
        assert!(
            got[41..].iter().all(Option::is_none),
            "deleted and missing keys read as absent"
        );
    }

    #[tokio::test]
    async fn a_compare_and_swap_put_is_two_calls_and_labels_do_not_pile_up() {
        let calls = Calls::default();
        let store = moto_store(&calls).await;
        let key = StoreKey::from_parts(["calls"]).unwrap();
        let mut version = store
            .put(&key, bytes("v0"), Precondition::Absent)
            .await
            .unwrap();
        assert_eq!(calls.take(), ["CreateSecret"]);
        for n in 1..=4 {
            let value = format!("v{n}");
            version = store
                .put(&key, bytes(&value), Precondition::Version(version))
                .await
                .unwrap();
            assert_eq!(
                calls.take(),
                ["PutSecretValue", "UpdateSecretVersionStage"],
                "write {n}"
            );
            assert_eq!(
                read(&store, &key).await,
                (value.into_bytes(), version.clone())
            );
            calls.take();
        }
        // An unconditional put reads the current version first.
        let version = store
            .put(&key, bytes("v5"), Precondition::None)
            .await
            .unwrap();
        assert_eq!(
            calls.take(),
            [
                "GetSecretValue",
                "PutSecretValue",
                "UpdateSecretVersionStage"
            ]
        );
        // Whatever the number of writes: the current version, the previous one, one pending label.
        let labels = labels(&store, &key).await;
        assert_eq!(labels.len(), 2, "{labels:?}");
        assert_eq!(labels[version.as_str()], [PENDING_LABEL, CURRENT]);
        assert!(labels.values().any(|l| l == &["AWSPREVIOUS"]), "{labels:?}");
    }

    #[tokio::test]
    async fn two_writers_staged_from_one_version_have_one_winner_either_way() {
        let store = moto_store(&Calls::default()).await;
        for first_promoted_wins in [true, false] {
            let key = StoreKey::from_parts(["race", &first_promoted_wins.to_string()]).unwrap();
            let from = store
                .put(&key, bytes("v0"), Precondition::Absent)
                .await
                .unwrap();
            let name = store.name(&key);
            let a = store
                .stage(&name, &key, &Payload::Value(&bytes("a")))
                .await
                .unwrap();
            let b = store
                .stage(&name, &key, &Payload::Value(&bytes("b")))
                .await
                .unwrap();
            // B's put took the label from A's version, which now has none (deprecated).
            let staged = labels(&store, &key).await;
            assert!(!staged.contains_key(&a), "{staged:?}");
            assert_eq!(staged[&b], [PENDING_LABEL]);
            let (winner, loser, value) = if first_promoted_wins {
                (&a, &b, "a")
            } else {
                (&b, &a, "b")
            };
            store.promote(&name, winner, from.as_str()).await.unwrap();
            let err = store
                .promote(&name, loser, from.as_str())
                .await
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Conflict, "{err:?}");
            assert_eq!(
                read(&store, &key).await,
                (value.as_bytes().to_vec(), Version::new(winner.clone()))
            );
        }
    }

    #[tokio::test]
    async fn a_move_whose_answer_was_lost_and_resent_is_reported_as_won() {
        let calls = Calls::default();
        let store = moto_store(&calls).await;
        let key = StoreKey::from_parts(["lost-answer"]).unwrap();
        let v0 = store
            .put(&key, bytes("v0"), Precondition::Absent)
            .await
            .unwrap();
        calls.lose_next_move();
        calls.take();
        let v1 = store
            .put(&key, bytes("v1"), Precondition::Version(v0.clone()))
            .await
            .expect("the first move went through, so the write won");
        assert_eq!(
            calls.take(),
            [
                "PutSecretValue",
                "UpdateSecretVersionStage",
                "UpdateSecretVersionStage",
                "DescribeSecret"
            ],
            "the SDK sent the move again and the store looked where AWSCURRENT is"
        );
        assert_eq!(read(&store, &key).await, (b"v1".to_vec(), v1.clone()));
        // A writer that really lost still gets a conflict.
        let err = store
            .put(&key, bytes("stale"), Precondition::Version(v0))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict);
        assert_eq!(read(&store, &key).await, (b"v1".to_vec(), v1));
    }

    #[test]
    fn tokens_are_uuids() {
        let t = new_token();
        assert_eq!(t.len(), 36);
        assert_eq!(&t[14..15], "4");
        assert_ne!(t, new_token());
    }
}
