//! `RedisStore` and `RedisLease`: a [`SecretStore`] and a [`Lease`] on Redis.
//!
//! # Redis is not a secret store by itself
//!
//! Redis keeps values in memory and in its persistence files in plain text, and anyone who can
//! reach it with the right ACL reads everything. Use it for credentials only behind the
//! encryption wrapper of this crate (feature `encryption`), with an ACL user limited to the key
//! prefix, over `rediss://`. Durability depends on the server: with the default `appendfsync
//! everysec` a crash can lose the last second of writes, that is a refresh token that was
//! rotated at Pleo and then forgotten; run `appendonly yes` with `appendfsync always` where that
//! matters, and note that a replica promoted after a failover can miss acknowledged writes.
//! Redis Cluster is not supported (a write touches the record and the store's version counter).
//!
//! # Layout
//!
//! With key prefix `p` (empty by default), a [`StoreKey`] `k` is the hash `p` + `k` with the
//! fields `v` (the value, as bytes) and `n` (its version). The store's version counter is the
//! string `p#version`; a lease on `k` is `p` + `k` + `#lease` (holder token, with the TTL) and
//! `p` + `k` + `#fencing` (its fencing counter). Store keys never contain `#`, so these never
//! meet a record. Any other key under the prefix is ignored by `list`.
//!
//! # Versions and compare-and-swap
//!
//! Versions come from the counter (`INCR`), shared by all keys of the store, so a key deleted and
//! written again never gets an old version back. Each `put` and `delete` is one Lua script, one
//! round trip: it compares the stored `n` with the precondition, and only then increments the
//! counter and writes (or deletes). Scripts run atomically, so of several writers naming one
//! version exactly one wins; the others get [`ErrorKind::Conflict`].
//!
//! `get_many` sends one pipeline of `HMGET`s per 1,000 keys, one round trip each.
//!
//! `list` walks the whole database with `SCAN ... MATCH <prefix>*`, so its cost grows with every
//! key of the database, not only with the keys below the prefix; give pleo-auth its own database
//! when that matters.
//!
//! # Leases
//!
//! [`RedisLease`] takes a lease with `SET <key>#lease <random token> NX PX <ttl>` and, in the
//! same script, `INCR <key>#fencing`: the fencing number grows with every acquisition and never
//! resets, also after the lease expired. Release deletes the lease only if it still holds the
//! holder's token (compare-and-delete in Lua), so a holder whose lease expired cannot release its
//! successor's. Renewal is the same comparison followed by `PEXPIRE`, in one script: it extends
//! only a lease that still holds the holder's token, and leaves the fencing counter alone. Expiry
//! runs on the Redis server's clock.
//!
//! # Connections
//!
//! The URL is `redis://` or `rediss://` (TLS with rustls; the system's roots, or only the CA of
//! [`RedisStoreBuilder::ca_cert_pem`]). An ACL user and password go in the URL:
//! `rediss://user:password@host:6380/0`. Plain `redis://` is refused for hosts other than
//! loopback unless [`RedisStoreBuilder::allow_plaintext`] is set, since it would send the
//! password and the values in clear. The connection is a multiplexed
//! [`ConnectionManager`] that reconnects by itself.
//!
//! # Errors
//!
//! Errors name the backend `"redis"`. Connection failures, timeouts and a server that is loading
//! or read-only are [`ErrorKind::Unavailable`] (retryable); rejected credentials are
//! [`ErrorKind::Config`], a missing ACL permission [`ErrorKind::PermissionDenied`], a key of
//! another type under the prefix [`ErrorKind::Corrupt`]. The password never appears in an error
//! or in `Debug`.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use pleo_auth_core::{Lease, Precondition, SecretBytes, SecretStore, StoreKey};
//! use pleo_auth_stores::redis::RedisStore;
//!
//! # async fn run() -> pleo_auth_core::Result<()> {
//! let store = RedisStore::builder("rediss://pleo:password@redis.internal:6380")
//!     .key_prefix("billing:")
//!     .connect()
//!     .await?;
//! let key = StoreKey::from_parts(["tenants", "acme"])?;
//! store
//!     .put(&key, SecretBytes::new(b"value".to_vec()), Precondition::Absent)
//!     .await?;
//! let lease = store.lease();
//! if let Some(guard) = lease.acquire(&key, Duration::from_secs(30)).await? {
//!     println!("holder number {}", guard.fencing());
//!     guard.release().await?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! [`Lease`]: pleo_auth_core::Lease

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisError, Script, TlsCertificates};
use async_trait::async_trait;
use pleo_auth_core::{
    DynLease, Error, ErrorKind, Lease, LeaseGuard, LeaseRelease, Precondition, Result, SecretBytes,
    SecretStore, StoreKey, Version, Versioned, random_urlsafe,
};
use url::Url;
use zeroize::Zeroizing;

use crate::address::{is_loopback_host, redact_url};
use crate::cause::{Cause, is_tls_failure};

const BACKEND: &str = "redis";
const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
const SCAN_COUNT: usize = 1000;
/// How many keys one pipeline of `get_many` reads.
const BATCH: usize = 1000;

/// Writes a record if the precondition holds; returns the new version, or 0 on a conflict.
/// KEYS: record, counter. ARGV: mode (`none`, `absent`, `version`), expected version, value.
static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local current = redis.call('HGET', KEYS[1], 'n')
if ARGV[1] == 'absent' and current then return 0 end
if ARGV[1] == 'version' and current ~= ARGV[2] then return 0 end
local n = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'v', ARGV[3], 'n', n)
return n
",
    )
});

/// Deletes a record if the precondition holds; returns 1, or 0 on a conflict.
/// KEYS: record. ARGV: mode (`none`, `version`), expected version.
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if ARGV[1] == 'version' and redis.call('HGET', KEYS[1], 'n') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
return 1
",
    )
});

/// Takes a lease; returns the new fencing number, or 0 if the lease is held.
/// KEYS: lease, fencing counter. ARGV: holder token, TTL in milliseconds.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0
",
    )
});

/// Releases a lease if it is still held by the token. KEYS: lease. ARGV: holder token.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

/// Renews a lease if it is still held by the token; returns 1, or 0 if it is not.
/// KEYS: lease. ARGV: holder token, TTL in milliseconds.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
",
    )
});

/// Configures a [`RedisStore`]; start with [`RedisStore::builder`].
#[derive(Clone)]
pub struct RedisStoreBuilder {
    url: Zeroizing<String>,
    key_prefix: String,
    ca_cert_pem: Option<Vec<u8>>,
    allow_plaintext: bool,
    connection_timeout: Duration,
    response_timeout: Duration,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("url", &redact_url(&self.url, false))
            .field("key_prefix", &self.key_prefix)
            .field("custom_ca", &self.ca_cert_pem.is_some())
            .field("allow_plaintext", &self.allow_plaintext)
            .finish_non_exhaustive()
    }
}

impl RedisStoreBuilder {
    /// Prepended to every Redis key, such as `billing:` (default: none).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Trusts only these PEM-encoded CA certificates for a `rediss://` server.
    pub fn ca_cert_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_cert_pem = Some(pem.into());
        self
    }

    /// Allows plain `redis://` to hosts other than loopback (passwords and values in clear).
    pub fn allow_plaintext(mut self, allow: bool) -> Self {
        self.allow_plaintext = allow;
        self
    }

    /// The timeout of establishing a connection (default 5 s).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// The timeout of each command (default 5 s).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Checks the configuration and connects.
    pub async fn connect(self) -> Result<RedisStore> {
        let url = Url::parse(&self.url).map_err(|_| config_error("the Redis URL is not valid"))?;
        match url.scheme() {
            "rediss" => {}
            "redis" if self.allow_plaintext || is_loopback_url(&url) => {}
            "redis" => {
                return Err(Error::invalid_input(
                    "redis:// is allowed only for loopback hosts; use rediss://",
                )
                .with_backend(BACKEND));
            }
            _ => {
                return Err(config_error(
                    "the Redis URL must start with redis:// or rediss://",
                ));
            }
        }
        if url.fragment().is_some() || url.query().is_some() {
            return Err(config_error(
                "the Redis URL must not have a query or fragment",
            ));
        }
        if self.key_prefix.contains(['#', '*', '?', '[', ']', '\\']) {
            return Err(config_error(
                "the key prefix must not contain # * ? [ ] or a backslash",
            ));
        }
        let client = match &self.ca_cert_pem {
            Some(pem) => {
                if url.scheme() != "rediss" {
                    return Err(config_error("a CA certificate needs a rediss:// URL"));
                }
                Client::build_with_tls(
                    self.url.as_str(),
                    TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem.clone()),
                    },
                )
            }
            None => Client::open(self.url.as_str()),
        }
        .map_err(|e| map_error("connect", &e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connection_timeout))
            .set_response_timeout(Some(self.response_timeout))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| map_error("connect", &e))?;
        Ok(RedisStore {
            inner: Arc::new(Shared {
                conn,
                prefix: self.key_prefix,
                url: redact_url(&self.url, false),
            }),
        })
    }
}

struct Shared {
    conn: ConnectionManager,
    prefix: String,
    /// The URL with its password replaced, for `Debug`.
    url: String,
}

/// A [`SecretStore`] on Redis; see the [module documentation](self).
///
/// Cloning is cheap and shares the connection.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Shared>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.inner.url)
            .field("key_prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A builder for a store at `url`: `redis://` or `rediss://`, with an optional ACL user and
    /// password (`rediss://user:password@host:port/db`).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: Zeroizing::new(url.into()),
            key_prefix: String::new(),
            ca_cert_pem: None,
            allow_plaintext: false,
            connection_timeout: DEFAULT_CONNECTION_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
        }
    }

    /// A lease on the same connection and key prefix.
    pub fn lease(&self) -> RedisLease {
        RedisLease {
            inner: self.inner.clone(),
        }
    }

    fn record(&self, key: &StoreKey) -> String {
        format!("{}{key}", self.inner.prefix)
    }

    fn counter(&self) -> String {
        format!("{}#version", self.inner.prefix)
    }

    fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }
}

#[async_trait]
impl SecretStore for RedisStore {
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn get(&self, key: &StoreKey) -> Result<Option<Versioned>> {
        let (value, version): (Option<Vec<u8>>, Option<String>) = ::redis::cmd("HMGET")
            .arg(self.record(key))
            .arg("v")
            .arg("n")
            .query_async(&mut self.conn())
            .await
            .map_err(|e| map_error("read", &e))?;
        versioned(value, version)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn put(
        &self,
        key: &StoreKey,
        value: SecretBytes,
        precondition: Precondition,
    ) -> Result<Version> {
        let (mode, expected) = match &precondition {
            Precondition::None => ("none", ""),
            Precondition::Absent => ("absent", ""),
            Precondition::Version(v) => ("version", v.as_str()),
        };
        let n: u64 = PUT
            .key(self.record(key))
            .key(self.counter())
            .arg(mode)
            .arg(expected)
            .arg(value.expose_secret())
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| map_error("write", &e))?;
        match (n, precondition) {
            (0, Precondition::Absent) => {
                Err(Error::conflict("key already exists").with_backend(BACKEND))
            }
            (0, _) => Err(Error::conflict("version does not match").with_backend(BACKEND)),
            (n, _) => Ok(Version::from_u64(n)),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn delete(&self, key: &StoreKey, precondition: Precondition) -> Result<()> {
        let (mode, expected) = match &precondition {
            Precondition::None => ("none", ""),
            Precondition::Absent => {
                return Err(
                    Error::invalid_input("delete cannot require absence").with_backend(BACKEND)
                );
            }
            Precondition::Version(v) => ("version", v.as_str()),
        };
        let deleted: u64 = DELETE
            .key(self.record(key))
            .arg(mode)
            .arg(expected)
            .invoke_async(&mut self.conn())
            .await
            .map_err(|e| map_error("delete", &e))?;
        if deleted == 0 {
            return Err(Error::conflict("version does not match").with_backend(BACKEND));
        }
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, prefix = %prefix))]
    async fn list(&self, prefix: &StoreKey) -> Result<Vec<StoreKey>> {
        let pattern = format!("{}/*", escape_glob(&self.record(prefix)));
        let mut conn = self.conn();
        let mut cursor = 0u64;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<Vec<u8>>) = ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(&mut conn)
                .await
                .map_err(|e| map_error("list", &e))?;
            for raw in batch {
                let parsed = std::str::from_utf8(&raw)
                    .ok()
                    .and_then(|name| name.strip_prefix(self.inner.prefix.as_str()))
                    .and_then(|rest| StoreKey::parse(rest).ok());
                if let Some(key) = parsed
                    && key.starts_with(prefix)
                    && &key != prefix
                {
                    keys.push(key);
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// One pipeline of `HMGET`s per 1,000 keys: one round trip each.
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, keys = keys.len()))]
    async fn get_many(&self, keys: &[StoreKey]) -> Result<Vec<Option<Versioned>>> {
        let mut out = Vec::with_capacity(keys.len());
        let mut conn = self.conn();
        for chunk in keys.chunks(BATCH) {
            let mut pipe = ::redis::pipe();
            for key in chunk {
                pipe.cmd("HMGET").arg(self.record(key)).arg("v").arg("n");
            }
            let answers: Vec<(Option<Vec<u8>>, Option<String>)> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| map_error("read", &e))?;
            for (value, version) in answers {
                out.push(versioned(value, version)?);
            }
        }
        Ok(out)
    }

    /// The Redis lease on the same connection ([`RedisStore::lease`]).
    fn native_lease(&self) -> Option<DynLease> {
        Some(Arc::new(self.lease()))
    }
}

/// A [`Lease`] on Redis (`SET NX PX`, compare-and-delete, `INCR` fencing); see the
/// [module documentation](self). Get one from [`RedisStore::lease`].
#[derive(Clone)]
pub struct RedisLease {
    inner: Arc<Shared>,
}

impl fmt::Debug for RedisLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLease")
            .field("url", &self.inner.url)
            .field("key_prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Lease for RedisLease {
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn acquire(&self, key: &StoreKey, ttl: Duration) -> Result<Option<LeaseGuard>> {
        let lease_key = format!("{}{key}#lease", self.inner.prefix);
        let fencing_key = format!("{}{key}#fencing", self.inner.prefix);
        let token = random_urlsafe(18);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let fencing: u64 = ACQUIRE
            .key(&lease_key)
            .key(&fencing_key)
            .arg(&token)
            .arg(ttl_ms)
            .invoke_async(&mut self.inner.conn.clone())
            .await
            .map_err(|e| map_error("acquire lease", &e))?;
        if fencing == 0 {
            return Ok(None);
        }
        Ok(Some(LeaseGuard::new(
            key.clone(),
            fencing,
            RedisRelease {
                conn: self.inner.conn.clone(),
                lease_key,
                token,
            },
        )))
    }
}

struct RedisRelease {
    conn: ConnectionManager,
    lease_key: String,
    token: String,
}

#[async_trait]
impl LeaseRelease for RedisRelease {
    async fn release(&self) -> Result<()> {
        let _: u64 = RELEASE
            .key(&self.lease_key)
            .arg(&self.token)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| map_error("release lease", &e))?;
        Ok(())
    }

    /// Compare-then-`PEXPIRE` in one script, one round trip.
    async fn renew(&self, ttl: Duration) -> Result<()> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let renewed: u64 = RENEW
            .key(&self.lease_key)
            .arg(&self.token)
            .arg(ttl_ms)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| map_error("renew lease", &e))?;
        if renewed == 0 {
            return Err(
                Error::conflict("the lease is no longer held by this holder").with_backend(BACKEND),
            );
        }
        Ok(())
    }
}

/// A record from the `v` and `n` fields of its hash.
fn versioned(value: Option<Vec<u8>>, version: Option<String>) -> Result<Option<Versioned>> {
    match (value, version) {
        (None, None) => Ok(None),
        (Some(value), Some(n)) if n.parse::<u64>().is_ok() => Ok(Some(Versioned {
            value: SecretBytes::new(value),
            version: Version::new(n),
        })),
        (value, _) => {
            drop(value.map(Zeroizing::new));
            Err(Error::corrupt("the record lacks its value or version").with_backend(BACKEND))
        }
    }
}

/// Escapes the glob characters of `SCAN MATCH`. Store keys have none of them, the prefix is
/// checked, but escaping keeps the pattern literal whatever it holds.
fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Whether the URL names a loopback host. `redis:` is not a special scheme to the URL parser, so
/// its host is an opaque name even when it is an IP address.
fn is_loopback_url(url: &Url) -> bool {
    url.host_str().is_some_and(is_loopback_host)
}

fn config_error(message: &'static str) -> Error {
    Error::new(ErrorKind::Config, message).with_backend(BACKEND)
}

fn map_error(op: &'static str, e: &RedisError) -> Error {
    let kind = if e.is_io_error() && is_tls_failure(e) {
        ErrorKind::Config
    } else if e.is_timeout() || e.is_connection_refusal() || e.is_connection_dropped() {
        ErrorKind::Unavailable
    } else {
        match e.code() {
            Some("NOPERM") => ErrorKind::PermissionDenied,
            Some("WRONGPASS" | "NOAUTH") => ErrorKind::Config,
            Some("WRONGTYPE") => ErrorKind::Corrupt,
            Some("LOADING" | "BUSY" | "MASTERDOWN" | "TRYAGAIN" | "READONLY" | "OOM") => {
                ErrorKind::Unavailable
            }
            _ => match e.kind() {
                ::redis::ErrorKind::AuthenticationFailed => ErrorKind::Config,
                ::redis::ErrorKind::InvalidClientConfig => ErrorKind::Config,
                ::redis::ErrorKind::Io => ErrorKind::Unavailable,
                _ => ErrorKind::Unexpected,
            },
        }
    };
    Error::new(kind, format!("{op} failed"))
        .with_backend(BACKEND)
        .with_source(Cause::new(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(escape_glob(r"a*b?c[d]e\f"), r"a\*b\?c\[d\]e\\f");
        assert_eq!(escape_glob("pleo-auth/v1/%2F+"), "pleo-auth/v1/%2F+");
    }

    #[test]
    fn urls_lose_their_password() {
        let redacted = redact_url("rediss://app:CANARY-pass@redis.example:6380/2", false);
        assert_eq!(redacted, "rediss://app:%5Bredacted%5D@redis.example:6380/2");
        assert_eq!(
            redact_url("redis://127.0.0.1:6379", false),
            "redis://127.0.0.1:6379"
        );
        let builder = RedisStore::builder("rediss://app:CANARY-pass@redis.example:6380");
        assert!(!format!("{builder:?}").contains("CANARY"));
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        for (url, loopback) in [
            ("redis://127.0.0.1:6379", true),
            ("redis://127.8.0.1", true),
            ("redis://[::1]:6379", true),
            ("redis://LOCALHOST", true),
            ("redis://10.0.0.1:6379", false),
            ("redis://localhost.example", false),
        ] {
            assert_eq!(
                is_loopback_url(&Url::parse(url).unwrap()),
                loopback,
                "{url}"
            );
        }
    }

    #[tokio::test]
    async fn plaintext_to_remote_hosts_is_refused() {
        let err = RedisStore::builder("redis://:CANARY@redis.example:6379")
            .connect()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(!format!("{err} {err:?}").contains("CANARY"));
        let err = RedisStore::builder("rediss://redis.example:6379/#insecure")
            .connect()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        let err = RedisStore::builder("redis://127.0.0.1:6379")
            .key_prefix("a*")
            .connect()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
    }
}
