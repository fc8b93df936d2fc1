//! `VaultStore`: a [`SecretStore`] on the KV version 2 secrets engine of HashiCorp Vault or
//! OpenBao.
//!
//! # Layout
//!
//! Each [`StoreKey`] `k` is the KV v2 secret `<mount>/data/<path prefix>/<k>` (the prefix is
//! optional). Key segments are `A-Z a-z 0-9 _ - % +`, so they need no escaping in a Vault path.
//! The secret's data holds the value in base64:
//!
//! ```json
//! { "value": "<base64 of the bytes>" }
//! ```
//!
//! A delete writes a tombstone, which reads as absent (see [Deletes](#deletes)).
//!
//! # Versions
//!
//! A [`Version`] is the KV version number, for example `7`. Compare-and-swap
//! is KV v2 check-and-set (`cas`), in one request: `cas: 0` creates only, `cas: n` writes only
//! if version `n` is current; Vault answers a mismatch with HTTP 400 "check-and-set parameter did
//! not match", which is [`ErrorKind::Conflict`].
//!
//! The version number alone names one write because this store never deletes a secret's
//! metadata, where KV v2 keeps the count: deleting the metadata would restart the numbers at 1,
//! and a writer holding version `n` of the old secret could then overwrite a new secret that
//! reached `n` again. So delete secrets through the store, not with `kv metadata delete`, while
//! replicas that may hold versions of them run.
//!
//! # Deletes
//!
//! A delete is a tombstone, `{ "deleted_at_ms": <unix ms> }`, written with
//! check-and-set (for [`Precondition::Version`], against the expected version, so the check is
//! atomic; for [`Precondition::None`], against the current version, retried on a conflict). From
//! then on the key reads as absent and is not listed. Then the data of every earlier version is
//! destroyed (`PUT <mount>/destroy/<path>`), so no value stays readable in the secret's history;
//! the metadata, with the version count, stays. Data of any other shape than a value or a
//! tombstone is an [`ErrorKind::Corrupt`] error.
//!
//! A version that Vault itself deleted (`kv delete`, or a mount's `delete_version_after` that
//! passed) or destroyed reads as absent too: a version counts as deleted once its
//! `deletion_time` is at or before now on the store's clock. With `delete_version_after` set,
//! Vault gives every live version a deletion time in the future; such a version is live until
//! then. (Keep `delete_version_after` well above the longest time a grant may sit unrefreshed,
//! or Vault deletes credentials that are still needed.)
//!
//! If destroying fails, `delete` returns the error; the key already reads as absent, and a later
//! delete or create of it destroys what is left (a create writes over the tombstone at once: the
//! version numbers a destroy names all lie below the tombstone, so it can never remove a newer
//! write). The store's Vault policy needs `create`, `read` and `update` on `<mount>/data/...`,
//! `update` on `<mount>/destroy/...` and `read` and `list` on `<mount>/metadata/...`.
//!
//! # Authentication
//!
//! - A token ([`VaultStoreBuilder::token`]).
//! - A token file ([`VaultStoreBuilder::token_file`]), such as the sink of a Vault Agent: read on
//!   first use and again whenever the file changes (its modification time or length), and once
//!   more when Vault answers 403.
//! - AppRole ([`VaultStoreBuilder::approle`]).
//! - Kubernetes ([`VaultStoreBuilder::kubernetes`]): logs in with the pod's service-account JWT,
//!   read from [`KUBERNETES_JWT_PATH`] (or another path) at every login, since projected tokens
//!   rotate.
//!
//! AWS IAM auth is not offered: vaultrs 0.8 has the login call, but the request it carries must
//! be a SigV4-signed `sts:GetCallerIdentity` (the AWS signing crates in every Vault user's build),
//! and OpenBao, which the tests run against, has no `aws` auth method, so it could not be tested
//! against a real server. Run a Vault Agent with `auto_auth` method `aws` and give the store its
//! sink ([`VaultStoreBuilder::token_file`]).
//!
//! Every token is renewed before it expires: at first use the store learns the token's TTL (from
//! the login, or `auth/token/lookup-self` for a given token), and when two thirds of it have
//! passed (on the injected [`Clock`]) it calls `auth/token/renew-self`. When renewal fails, or
//! gives less than half the TTL back (the token reached its max TTL), a login method logs in
//! again; a given token keeps working until it expires and is then refused with
//! [`ErrorKind::Config`] ("the Vault token expired ..., give the store a new token"). A 403 makes
//! a login method log in again (a token file is read again) and retries the request once; a 403
//! that persists is [`ErrorKind::PermissionDenied`] when the token is valid (the policy lacks a
//! capability) and `Config` when Vault rejects the token itself (expired, revoked or invalid). A
//! rejected login is `Config`. Renewal and lookup use the `default` policy's
//! `auth/token/renew-self` and `auth/token/lookup-self`.
//!
//! # Transport
//!
//! The address must be `https`, or `http` on a loopback host. [`VaultStoreBuilder::ca_cert_pem`]
//! trusts only the given CA certificates instead of the system's roots. Requests never follow
//! redirects. The KV mount may require check-and-set (`cas_required`): unconditional writes then
//! read the current version first.
//!
//! # Errors and logs
//!
//! Errors name the backend `"vault"`. Connection failures, timeouts, 5xx, 412 and a sealed
//! server are [`ErrorKind::Unavailable`] (retryable), 429 is [`ErrorKind::RateLimited`]. No error
//! holds a token, a secret id or a value. `vaultrs` logs every error answer of Vault at `ERROR`
//! under the target `vaultrs`, expected check-and-set conflicts included; filter that target if
//! it is noise.
//!
//! # Example
//!
//! ```no_run
//! use pleo_auth_core::{Precondition, SecretBytes, SecretStore, StoreKey};
//! use pleo_auth_stores::vault::VaultStore;
//!
//! # async fn run() -> pleo_auth_core::Result<()> {
//! let store = VaultStore::builder("https://vault.internal:8200")
//!     .approle("role-id", "secret-id")
//!     .mount("secret")
//!     .path_prefix("integrations/acme")
//!     .build()?;
//! let key = StoreKey::from_parts(["tenants", "acme"])?;
//! let version = store
//!     .put(&key, SecretBytes::new(b"value".to_vec()), Precondition::Absent)
//!     .await?;
//! let read = store.get(&key).await?.expect("just written");
//! assert_eq!(read.version, version);
//! # Ok(())
//! # }
//! ```
//!
//! [`Clock`]: pleo_auth_core::Clock

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures::StreamExt as _;
use pleo_auth_core::{
    DynClock, Error, ErrorKind, Precondition, Result, SecretBytes, SecretStore, StoreKey,
    SystemClock, Timestamp, Version, Versioned, check_transport_security,
};
use serde::{Deserialize, Serialize};
use url::Url;
use vaultrs::api::kv2::requests::{ReadSecretRequest, SetSecretRequestOptions};
use vaultrs::api::kv2::responses::ReadSecretResponse;
use vaultrs::api::{self as vault_api, EndpointMiddleware};
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

use crate::cause::{Cause, is_tls_failure};

const BACKEND: &str = "vault";
/// The default KV v2 mount of a Vault or OpenBao dev server.
pub const DEFAULT_MOUNT: &str = "secret";
/// The default mount of the AppRole auth method.
pub const DEFAULT_APPROLE_MOUNT: &str = "approle";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How many concurrent LIST requests one `list` call makes.
const LIST_CONCURRENCY: usize = 8;
/// How often a write retries when another writer or a delete keeps moving the key.
const WRITE_ATTEMPTS: usize = 5;
const CAS_MISMATCH: &str = "check-and-set parameter did not match";
const CAS_REQUIRED: &str = "check-and-set parameter required";

/// The standard path of a Kubernetes pod's service-account token.
pub const KUBERNETES_JWT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The default mount of the Kubernetes auth method.
pub const DEFAULT_KUBERNETES_MOUNT: &str = "kubernetes";

/// How the store authenticates to Vault.
#[derive(Clone)]
enum Auth {
    Token(Zeroizing<String>),
    TokenFile(PathBuf),
    AppRole {
        mount: String,
        role_id: Zeroizing<String>,
        secret_id: Zeroizing<String>,
    },
    Kubernetes {
        mount: String,
        role: String,
        jwt_path: PathBuf,
    },
}

impl Auth {
    /// Whether the store gets its tokens by logging in (and can log in again).
    fn logs_in(&self) -> bool {
        matches!(self, Auth::AppRole { .. } | Auth::Kubernetes { .. })
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Token(_) => f.write_str("Token([redacted])"),
            Auth::TokenFile(path) => f.debug_tuple("TokenFile").field(path).finish(),
            Auth::AppRole { mount, .. } => f
                .debug_struct("AppRole")
                .field("mount", mount)
                .finish_non_exhaustive(),
            Auth::Kubernetes {
                mount,
                role,
                jwt_path,
            } => f
                .debug_struct("Kubernetes")
                .field("mount", mount)
                .field("role", role)
                .field("jwt_path", jwt_path)
                .finish(),
        }
    }
}

/// Configures a [`VaultStore`]; start with [`VaultStore::builder`].
#[derive(Clone)]
pub struct VaultStoreBuilder {
    address: String,
    auth: Option<Auth>,
    mount: String,
    path_prefix: Option<String>,
    namespace: Option<String>,
    ca_cert_pem: Option<Vec<u8>>,
    timeout: Duration,
    connect_timeout: Duration,
    clock: DynClock,
}

impl fmt::Debug for VaultStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultStoreBuilder")
            .field("address", &self.address)
            .field("auth", &self.auth)
            .field("mount", &self.mount)
            .field("path_prefix", &self.path_prefix)
            .field("namespace", &self.namespace)
            .field("custom_ca", &self.ca_cert_pem.is_some())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl VaultStoreBuilder {
    /// Authenticates with a Vault token, renewed before it expires when it is renewable.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.auth = Some(Auth::Token(Zeroizing::new(token.into())));
        self
    }

    /// Authenticates with the token in the file at `path` (a Vault Agent sink), read again
    /// whenever the file changes.
    pub fn token_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.auth = Some(Auth::TokenFile(path.into()));
        self
    }

    /// Authenticates with Kubernetes auth as `role`, at the mount [`DEFAULT_KUBERNETES_MOUNT`],
    /// with the service-account JWT at [`KUBERNETES_JWT_PATH`]; see
    /// [`VaultStoreBuilder::kubernetes_mount`] and [`VaultStoreBuilder::kubernetes_jwt_path`].
    pub fn kubernetes(mut self, role: impl Into<String>) -> Self {
        self.auth = Some(Auth::Kubernetes {
            mount: DEFAULT_KUBERNETES_MOUNT.to_owned(),
            role: role.into(),
            jwt_path: PathBuf::from(KUBERNETES_JWT_PATH),
        });
        self
    }

    /// The mount of the Kubernetes auth method. Call after [`VaultStoreBuilder::kubernetes`];
    /// without it it does nothing.
    pub fn kubernetes_mount(mut self, mount: impl Into<String>) -> Self {
        if let Some(Auth::Kubernetes { mount: m, .. }) = &mut self.auth {
            *m = mount.into();
        }
        self
    }

    /// Where the service-account JWT is read from. Call after [`VaultStoreBuilder::kubernetes`];
    /// without it it does nothing.
    pub fn kubernetes_jwt_path(mut self, path: impl Into<PathBuf>) -> Self {
        if let Some(Auth::Kubernetes { jwt_path, .. }) = &mut self.auth {
            *jwt_path = path.into();
        }
        self
    }

    /// Authenticates with AppRole at the mount [`DEFAULT_APPROLE_MOUNT`]; see
    /// [`VaultStoreBuilder::approle_mount`].
    pub fn approle(mut self, role_id: impl Into<String>, secret_id: impl Into<String>) -> Self {
        self.auth = Some(Auth::AppRole {
            mount: DEFAULT_APPROLE_MOUNT.to_owned(),
            role_id: Zeroizing::new(role_id.into()),
            secret_id: Zeroizing::new(secret_id.into()),
        });
        self
    }

    /// The mount of the AppRole auth method, when it is not [`DEFAULT_APPROLE_MOUNT`]. Call after
    /// [`VaultStoreBuilder::approle`]; without AppRole it does nothing.
    pub fn approle_mount(mut self, mount: impl Into<String>) -> Self {
        if let Some(Auth::AppRole { mount: m, .. }) = &mut self.auth {
            *m = mount.into();
        }
        self
    }

    /// The mount of the KV v2 engine (default [`DEFAULT_MOUNT`]).
    pub fn mount(mut self, mount: impl Into<String>) -> Self {
        self.mount = mount.into();
        self
    }

    /// A path inside the mount below which every key is stored, such as `apps/billing`.
    pub fn path_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.path_prefix = Some(prefix.into());
        self
    }

    /// The Vault Enterprise or OpenBao namespace (`X-Vault-Namespace`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Trusts only these PEM-encoded CA certificates for the server's TLS certificate.
    pub fn ca_cert_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_cert_pem = Some(pem.into());
        self
    }

    /// The timeout of each request (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The timeout of establishing a connection (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The clock that schedules token renewals and re-logins and dates tombstones.
    pub fn clock(mut self, clock: DynClock) -> Self {
        self.clock = clock;
        self
    }

    /// Validates the configuration and builds the store. No request is made until first use.
    pub fn build(self) -> Result<VaultStore> {
        let address = Url::parse(&self.address)
            .map_err(|_| config_error("the Vault address is not a valid URL"))?;
        check_transport_security(&address).map_err(|e| e.with_backend(BACKEND))?;
        if address.query().is_some() || address.fragment().is_some() {
            return Err(config_error(
                "the Vault address must not have a query or fragment",
            ));
        }
        let auth = self.auth.ok_or_else(|| {
            config_error("choose token, token file, AppRole or Kubernetes authentication")
        })?;
        match &auth {
            Auth::Token(token) => check_header_value(token, "the Vault token")?,
            Auth::TokenFile(path) => {
                if path.as_os_str().is_empty() {
                    return Err(config_error("the token file path is empty"));
                }
            }
            Auth::Kubernetes {
                mount,
                role,
                jwt_path,
            } => {
                validate_path(mount, "the Kubernetes mount")?;
                if role.is_empty() || jwt_path.as_os_str().is_empty() {
                    return Err(config_error("Kubernetes auth needs a role and a JWT path"));
                }
            }
            Auth::AppRole {
                mount,
                role_id,
                secret_id,
            } => {
                validate_path(mount, "the AppRole mount")?;
                if role_id.is_empty() || secret_id.is_empty() {
                    return Err(config_error("AppRole role id and secret id must be set"));
                }
            }
        }
        let mount = validate_path(&self.mount, "the KV mount")?;
        let path_prefix = match &self.path_prefix {
            Some(p) if !p.trim_matches('/').is_empty() => {
                Some(validate_path(p, "the path prefix")?)
            }
            _ => None,
        };
        if let Some(ns) = &self.namespace {
            check_header_value(ns, "the namespace")?;
        }

        let mut http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout);
        if let Some(pem) = &self.ca_cert_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|_| config_error("the CA certificate is not valid PEM"))?;
            if certs.is_empty() {
                return Err(config_error("the CA PEM holds no certificate"));
            }
            http = http.tls_certs_only(certs);
        } else if address.scheme() == "http" {
            // Plain http needs no roots; this skips loading the platform verifier.
            http = http.tls_certs_only(Vec::new());
        }
        let http = http.build().map_err(|e| {
            config_error("building the HTTP client failed").with_source(Cause::from_chain(&e))
        })?;

        let settings = VaultClientSettingsBuilder::default()
            .address(address.as_str())
            .token(String::new())
            .ca_certs(Vec::new())
            .identity(None)
            .verify(true)
            .timeout(Some(self.timeout))
            .namespace(self.namespace.clone())
            .build()
            .map_err(|_| config_error("the Vault client settings are invalid"))?;

        let inner = Inner {
            http,
            address,
            settings,
            auth,
            mount,
            path_prefix,
            namespace: self.namespace,
            clock: self.clock,
            session: RwLock::new(None),
            login_lock: tokio::sync::Mutex::new(()),
        };
        Ok(VaultStore {
            inner: Arc::new(inner),
        })
    }
}

/// A [`SecretStore`] on a Vault or OpenBao KV v2 engine; see the [module documentation](self).
///
/// Cloning is cheap and shares the connection pool and the login.
#[derive(Clone)]
pub struct VaultStore {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    address: Url,
    settings: vaultrs::client::VaultClientSettings,
    auth: Auth,
    mount: String,
    path_prefix: Option<String>,
    namespace: Option<String>,
    clock: DynClock,
    session: RwLock<Option<Session>>,
    login_lock: tokio::sync::Mutex<()>,
}

/// The token in use and what the store knows of its life.
#[derive(Clone)]
struct Session {
    client: Arc<VaultClient>,
    /// When to renew the token (or log in again); `None` for a token that does not expire.
    renew_at: Option<Instant>,
    /// When the token expires; `None` for a token that does not expire.
    expires_at: Option<Instant>,
    renewable: bool,
    /// The token's TTL when it was obtained, asked for again on renewal.
    ttl: Duration,
    /// Counts sessions, so that concurrent callers replace a session only once.
    generation: u64,
    /// For a token file: how the file looked when it was read.
    stamp: Option<FileStamp>,
}

/// A token file's modification time and length.
type FileStamp = (SystemTime, u64);

impl Session {
    fn new(
        client: Arc<VaultClient>,
        started: Instant,
        ttl_secs: u64,
        renewable: bool,
        generation: u64,
        stamp: Option<FileStamp>,
    ) -> Self {
        let ttl = Duration::from_secs(ttl_secs);
        let (renew_at, expires_at) = if ttl.is_zero() {
            (None, None)
        } else {
            (Some(started + ttl * 2 / 3), Some(started + ttl))
        };
        Self {
            client,
            renew_at,
            expires_at,
            renewable,
            ttl,
            generation,
            stamp,
        }
    }
}

/// `GET auth/token/lookup-self`, answering only what the store needs (vaultrs's own response
/// type wants fields that OpenBao leaves out).
struct LookupSelf;

/// What the store reads of `lookup-self`.
#[derive(Deserialize)]
struct TokenLife {
    ttl: u64,
    #[serde(default)]
    renewable: bool,
}

impl rustify::endpoint::Endpoint for LookupSelf {
    type Response = TokenLife;
    const REQUEST_BODY_TYPE: rustify::enums::RequestType = rustify::enums::RequestType::JSON;
    const RESPONSE_BODY_TYPE: rustify::enums::ResponseType = rustify::enums::ResponseType::JSON;

    fn path(&self) -> String {
        "auth/token/lookup-self".to_owned()
    }

    fn method(&self) -> rustify::enums::RequestMethod {
        rustify::enums::RequestMethod::GET
    }
}

impl fmt::Debug for VaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultStore")
            .field("address", &self.inner.address.as_str())
            .field("auth", &self.inner.auth)
            .field("mount", &self.inner.mount)
            .field("path_prefix", &self.inner.path_prefix)
            .field("namespace", &self.inner.namespace)
            .finish_non_exhaustive()
    }
}

impl VaultStore {
    /// A builder for a store at `address`, such as `https://vault.internal:8200`.
    pub fn builder(address: impl Into<String>) -> VaultStoreBuilder {
        VaultStoreBuilder {
            address: address.into(),
            auth: None,
            mount: DEFAULT_MOUNT.to_owned(),
            path_prefix: None,
            namespace: None,
            ca_cert_pem: None,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            clock: Arc::new(SystemClock),
        }
    }

    fn path(&self, key: &StoreKey) -> String {
        match &self.inner.path_prefix {
            Some(prefix) => format!("{prefix}/{key}"),
            None => key.as_str().to_owned(),
        }
    }

    /// Runs one Vault call with a valid session. On a 403 a login method logs in again (a token
    /// file is read again) and the call is retried once; a 403 that remains is told apart: a
    /// token Vault rejects is [`ErrorKind::Config`], a valid token without the capability
    /// [`ErrorKind::PermissionDenied`].
    pub(crate) async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T>
    where
        F: Fn(Arc<VaultClient>) -> Fut,
        Fut: Future<Output = std::result::Result<T, ClientError>>,
    {
        let mut session = self.session().await?;
        let mut retried = false;
        loop {
            match f(session.client.clone()).await {
                Err(ClientError::APIError { code: 403, .. })
                    if !retried && !matches!(self.inner.auth, Auth::Token(_)) =>
                {
                    retried = true;
                    session = self.login(session.generation).await?;
                }
                Err(e @ ClientError::APIError { code: 403, .. }) => {
                    return Err(match self.lookup(&session.client).await {
                        Err(rejected) if rejected.kind() == ErrorKind::Config => {
                            rejected.with_source(cause_of(&e))
                        }
                        _ => map_error(op, e),
                    });
                }
                other => return other.map_err(|e| map_error(op, e)),
            }
        }
    }

    async fn session(&self) -> Result<Session> {
        let current = self.inner.session.read().expect("session lock").clone();
        let Some(session) = current else {
            return self.login(0).await;
        };
        if let Auth::TokenFile(path) = &self.inner.auth
            && file_stamp(path).ok() != session.stamp
        {
            return self.login(session.generation).await;
        }
        if session
            .renew_at
            .is_some_and(|at| self.inner.clock.instant() >= at)
        {
            return self.renew(session.generation).await;
        }
        Ok(session)
    }

    /// Obtains a new token (logs in, or reads the given token or the token file) unless another
    /// task already replaced session `seen`.
    async fn login(&self, seen: u64) -> Result<Session> {
        let _single_flight = self.inner.login_lock.lock().await;
        if let Some(s) = self.current_if_replaced(seen) {
            return Ok(s);
        }
        self.login_locked(seen).await
    }

    /// The current session if it is no longer session `seen`.
    fn current_if_replaced(&self, seen: u64) -> Option<Session> {
        self.inner
            .session
            .read()
            .expect("session lock")
            .clone()
            .filter(|s| s.generation != seen)
    }

    async fn login_locked(&self, seen: u64) -> Result<Session> {
        let started = self.inner.clock.instant();
        let session = match &self.inner.auth {
            Auth::Token(token) => {
                let client = self.inner.client_with_token(token);
                let life = self.lookup(&client).await?;
                Session::new(client, started, life.ttl, life.renewable, seen + 1, None)
            }
            Auth::TokenFile(path) => {
                let (token, stamp) = read_token_file(path)?;
                let client = self.inner.client_with_token(&token);
                let life = self.lookup(&client).await?;
                Session::new(
                    client,
                    started,
                    life.ttl,
                    life.renewable,
                    seen + 1,
                    Some(stamp),
                )
            }
            Auth::AppRole {
                mount,
                role_id,
                secret_id,
            } => {
                let anonymous = self.inner.client_with_token("");
                let auth = vaultrs::auth::approle::login(&*anonymous, mount, role_id, secret_id)
                    .await
                    .map_err(|e| login_error(e, "AppRole"))?;
                self.logged_in(auth, started, seen)
            }
            Auth::Kubernetes {
                mount,
                role,
                jwt_path,
            } => {
                let jwt = Zeroizing::new(
                    std::fs::read_to_string(jwt_path)
                        .map_err(|e| {
                            Error::new(
                                ErrorKind::Config,
                                format!(
                                    "cannot read the service-account token at {}",
                                    jwt_path.display()
                                ),
                            )
                            .with_backend(BACKEND)
                            .with_source(e)
                        })?
                        .trim()
                        .to_owned(),
                );
                let anonymous = self.inner.client_with_token("");
                let auth = vaultrs::auth::kubernetes::login(&*anonymous, mount, role, &jwt)
                    .await
                    .map_err(|e| login_error(e, "Kubernetes"))?;
                self.logged_in(auth, started, seen)
            }
        };
        tracing::debug!(
            backend = BACKEND,
            ttl_secs = session.ttl.as_secs(),
            renewable = session.renewable,
            "vault token obtained"
        );
        *self.inner.session.write().expect("session lock") = Some(session.clone());
        Ok(session)
    }

    fn logged_in(&self, auth: vaultrs::api::AuthInfo, started: Instant, seen: u64) -> Session {
        let token = Zeroizing::new(auth.client_token);
        Session::new(
            self.inner.client_with_token(&token),
            started,
            auth.lease_duration,
            auth.renewable,
            seen + 1,
            None,
        )
    }

    /// The TTL of the token of `client`; a token Vault rejects is [`ErrorKind::Config`].
    async fn lookup(&self, client: &VaultClient) -> Result<TokenLife> {
        vault_api::exec_with_result(client, LookupSelf)
            .await
            .map_err(|e| match e {
                ClientError::APIError {
                    code: 401 | 403, ..
                } => rejected_token().with_source(cause_of(&e)),
                other => map_error("look up the token", other),
            })
    }

    /// Renews the token of session `seen` (`renew-self`), or, when that fails or gives back less
    /// than half of the TTL, logs in again (login methods) or reads the token file again. A
    /// given token that cannot be renewed is used until it expires, then refused.
    async fn renew(&self, seen: u64) -> Result<Session> {
        let _single_flight = self.inner.login_lock.lock().await;
        if let Some(s) = self.current_if_replaced(seen) {
            return Ok(s);
        }
        let Some(old) = self.inner.session.read().expect("session lock").clone() else {
            return self.login_locked(seen).await;
        };
        let now = self.inner.clock.instant();
        let mut failure = None;
        if old.renewable {
            match vaultrs::token::renew_self(&*old.client, None).await {
                Ok(auth) if auth.lease_duration > 0 => {
                    let ttl = Duration::from_secs(auth.lease_duration);
                    if !self.inner.auth.logs_in() || ttl >= old.ttl / 2 {
                        let mut renewed = Session::new(
                            old.client.clone(),
                            now,
                            auth.lease_duration,
                            true,
                            0,
                            None,
                        );
                        renewed.ttl = old.ttl;
                        renewed.generation = old.generation + 1;
                        renewed.stamp = old.stamp;
                        tracing::debug!(
                            backend = BACKEND,
                            ttl_secs = ttl.as_secs(),
                            "vault token renewed"
                        );
                        *self.inner.session.write().expect("session lock") = Some(renewed.clone());
                        return Ok(renewed);
                    }
                }
                Ok(_) => {}
                Err(e) => failure = Some(map_error("renew the token", e)),
            }
        }
        if !matches!(self.inner.auth, Auth::Token(_)) {
            return self.login_locked(old.generation).await;
        }
        if old.expires_at.is_some_and(|at| now < at) {
            // Still valid: use it, and try again halfway to its expiry.
            let left = old.expires_at.map_or(Duration::ZERO, |at| at - now);
            let mut kept = old.clone();
            kept.renew_at = Some(now + (left / 2).max(Duration::from_secs(1)).min(left));
            kept.generation += 1;
            *self.inner.session.write().expect("session lock") = Some(kept.clone());
            return Ok(kept);
        }
        let error = Error::new(
            ErrorKind::Config,
            "the Vault token expired and could not be renewed; give the store a new token",
        )
        .with_backend(BACKEND);
        Err(match failure {
            Some(cause) => error.with_source(cause),
            None => error,
        })
    }

    async fn read(&self, path: &str) -> Result<Current> {
        let mount = self.inner.mount.as_str();
        let result = self
            .call("read", |client| async move {
                let endpoint = ReadSecretRequest::builder()
                    .mount(mount)
                    .path(path)
                    .build()
                    .expect("all fields set");
                vault_api::exec_with_result(&*client, endpoint).await
            })
            .await;
        match result {
            Ok(response) => Current::from_response(response, self.inner.clock.timestamp()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Current::Missing),
            Err(e) => Err(e),
        }
    }

    /// The current version number of `path`, whatever its latest version holds; 0 if none.
    async fn current_number(&self, path: &str) -> Result<u64> {
        let mount = self.inner.mount.as_str();
        let result = self
            .call("read metadata", |client| async move {
                vaultrs::kv2::read_metadata(&*client, mount, path).await
            })
            .await;
        match result {
            Ok(meta) => Ok(meta.current_version),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Writes `data`, with check-and-set `cas` when given.
    async fn write(&self, path: &str, data: &KvData, cas: Option<u64>) -> Result<u64> {
        let mount = self.inner.mount.as_str();
        let cas = match cas {
            Some(n) => Some(u32::try_from(n).map_err(|_| {
                Error::new(ErrorKind::Unexpected, "version number out of range")
                    .with_backend(BACKEND)
            })?),
            None => None,
        };
        let meta = self
            .call("write", |client| async move {
                match cas {
                    Some(cas) => {
                        vaultrs::kv2::set_with_options(
                            &*client,
                            mount,
                            path,
                            data,
                            SetSecretRequestOptions { cas },
                        )
                        .await
                    }
                    None => vaultrs::kv2::set(&*client, mount, path, data).await,
                }
            })
            .await?;
        Ok(meta.version)
    }

    /// Destroys the data of every version of `path` below `number` that still holds some.
    async fn destroy_before(&self, path: &str, number: u64) -> Result<()> {
        let mount = self.inner.mount.as_str();
        let result = self
            .call("read metadata", |client| async move {
                vaultrs::kv2::read_metadata(&*client, mount, path).await
            })
            .await;
        let meta = match result {
            Ok(meta) => meta,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut versions: Vec<u64> = meta
            .versions
            .iter()
            .filter(|(_, v)| !v.destroyed)
            .filter_map(|(n, _)| n.parse().ok())
            .filter(|n| *n < number)
            .collect();
        if versions.is_empty() {
            return Ok(());
        }
        versions.sort_unstable();
        self.call("destroy", |client| {
            let versions = versions.clone();
            async move { vaultrs::kv2::destroy_versions(&*client, mount, path, versions).await }
        })
        .await
    }

    /// Writes a tombstone over version `number` and destroys the data of the versions before it.
    async fn bury(&self, path: &str, number: u64) -> Result<()> {
        let tombstone = KvData::tombstone(self.inner.clock.timestamp());
        let buried = self.write(path, &tombstone, Some(number)).await?;
        self.destroy_before(path, buried).await
    }

    async fn list_folder(&self, folder: String) -> Result<(String, Vec<String>)> {
        let mount = self.inner.mount.as_str();
        let path = folder.as_str();
        let result = self
            .call("list", |client| async move {
                vaultrs::kv2::list(&*client, mount, path).await
            })
            .await;
        match result {
            Ok(names) => Ok((folder, names)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok((folder, Vec::new())),
            Err(e) => Err(e),
        }
    }

    async fn put_absent(&self, path: &str, value: &SecretBytes) -> Result<Version> {
        for _ in 0..WRITE_ATTEMPTS {
            let data = KvData::live(value);
            match self.write(path, &data, Some(0)).await {
                Ok(n) => return Ok(Version::from_u64(n)),
                Err(e) if e.kind() != ErrorKind::Conflict => return Err(e),
                Err(_) => {}
            }
            let (cas, tombstone) = match self.read(path).await? {
                Current::Live { .. } => return Err(exists()),
                Current::Tombstone { number, .. } => (number, true),
                // The latest version was deleted or destroyed by other means, or the metadata
                // went away meanwhile: the key is absent, continue from its current number.
                Current::Missing => (self.current_number(path).await?, false),
            };
            let data = KvData::live(value);
            match self.write(path, &data, Some(cas)).await {
                Ok(n) => {
                    if tombstone {
                        // What an interrupted delete left in the history (versions below its
                        // tombstone only, never this write).
                        if let Err(e) = self.destroy_before(path, cas).await {
                            tracing::debug!(
                                backend = BACKEND,
                                kind = ?e.kind(),
                                "destroying the versions before a tombstone failed"
                            );
                        }
                    }
                    return Ok(Version::from_u64(n));
                }
                Err(e) if e.kind() != ErrorKind::Conflict => return Err(e),
                Err(_) => {}
            }
        }
        Err(contended())
    }

    async fn put_unconditional(&self, path: &str, value: &SecretBytes) -> Result<Version> {
        let data = KvData::live(value);
        match self.write(path, &data, None).await {
            Ok(n) => return Ok(Version::from_u64(n)),
            Err(e) if !is_cas_required(&e) => return Err(e),
            Err(_) => {}
        }
        for _ in 0..WRITE_ATTEMPTS {
            let cas = self.current_number(path).await?;
            let data = KvData::live(value);
            match self.write(path, &data, Some(cas)).await {
                Ok(n) => return Ok(Version::from_u64(n)),
                Err(e) if e.kind() != ErrorKind::Conflict => return Err(e),
                Err(_) => {}
            }
        }
        Err(contended())
    }
}

/// The KV version number of `want`: a version this store did not hand out matches nothing.
fn expected_number(want: &Version) -> Result<u64> {
    match want.as_str().parse::<u64>() {
        Ok(number) if number > 0 && Version::from_u64(number) == *want => Ok(number),
        _ => Err(mismatch()),
    }
}

impl Inner {
    fn client_with_token(&self, token: &str) -> Arc<VaultClient> {
        let mut settings = self.settings.clone();
        settings.token = token.to_owned();
        Arc::new(VaultClient {
            http: rustify::clients::reqwest::Client::new(self.address.as_str(), self.http.clone()),
            middle: EndpointMiddleware {
                token: token.to_owned(),
                version: "v1".to_owned(),
                wrap: None,
                namespace: self.namespace.clone(),
            },
            settings,
        })
    }
}

#[async_trait]
impl SecretStore for VaultStore {
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn get(&self, key: &StoreKey) -> Result<Option<Versioned>> {
        match self.read(&self.path(key)).await? {
            Current::Live { number, value } => Ok(Some(Versioned {
                value,
                version: Version::from_u64(number),
            })),
            Current::Tombstone { .. } | Current::Missing => Ok(None),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn put(
        &self,
        key: &StoreKey,
        value: SecretBytes,
        precondition: Precondition,
    ) -> Result<Version> {
        let path = self.path(key);
        match precondition {
            Precondition::None => self.put_unconditional(&path, &value).await,
            Precondition::Absent => self.put_absent(&path, &value).await,
            Precondition::Version(want) => {
                let data = KvData::live(&value);
                let n = self
                    .write(&path, &data, Some(expected_number(&want)?))
                    .await?;
                Ok(Version::from_u64(n))
            }
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn delete(&self, key: &StoreKey, precondition: Precondition) -> Result<()> {
        let path = self.path(key);
        match precondition {
            Precondition::Absent => {
                Err(Error::invalid_input("delete cannot require absence").with_backend(BACKEND))
            }
            Precondition::Version(want) => self.bury(&path, expected_number(&want)?).await,
            Precondition::None => {
                for _ in 0..WRITE_ATTEMPTS {
                    let number = match self.read(&path).await? {
                        Current::Live { number, .. } => number,
                        Current::Tombstone { number, .. } => {
                            return self.destroy_before(&path, number).await;
                        }
                        Current::Missing => return Ok(()),
                    };
                    match self.bury(&path, number).await {
                        Err(e) if e.kind() == ErrorKind::Conflict => {}
                        done => return done,
                    }
                }
                Err(contended())
            }
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, prefix = %prefix))]
    async fn list(&self, prefix: &StoreKey) -> Result<Vec<StoreKey>> {
        let root = self.path(prefix);
        let mut keys = Vec::new();
        let mut folders = vec![format!("{root}/")];
        while !folders.is_empty() {
            let batch = std::mem::take(&mut folders);
            let mut listed = futures::stream::iter(batch)
                .map(|folder| self.list_folder(folder))
                .buffer_unordered(LIST_CONCURRENCY);
            while let Some(result) = listed.next().await {
                let (folder, names) = result?;
                for name in names {
                    let full = format!("{folder}{name}");
                    if name.ends_with('/') {
                        folders.push(full);
                    } else {
                        let relative = &full[root.len() - prefix.as_str().len()..];
                        match StoreKey::parse(relative) {
                            Ok(key) => keys.push((key, full)),
                            Err(_) => tracing::debug!(
                                backend = BACKEND,
                                "skipping a secret whose name is not a store key"
                            ),
                        }
                    }
                }
            }
        }
        // Deleted keys keep their metadata (see Deletes), so LIST names them: read each and
        // keep those that hold a value, or data that is not ours (for the caller to see).
        let mut present = Vec::with_capacity(keys.len());
        let mut reads = futures::stream::iter(keys)
            .map(|(key, path)| async move { (key, self.read(&path).await) })
            .buffer_unordered(LIST_CONCURRENCY);
        while let Some((key, read)) = reads.next().await {
            match read {
                Ok(Current::Live { .. }) => present.push(key),
                Ok(Current::Tombstone { .. } | Current::Missing) => {}
                Err(e) if e.kind() == ErrorKind::Corrupt => present.push(key),
                Err(e) => return Err(e),
            }
        }
        present.sort();
        Ok(present)
    }
}

/// The data of one KV v2 secret version written by this store.
#[derive(Serialize, Deserialize)]
struct KvData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deleted_at_ms: Option<u64>,
}

impl KvData {
    fn live(value: &SecretBytes) -> Self {
        Self {
            value: Some(STANDARD.encode(value.expose_secret())),
            deleted_at_ms: None,
        }
    }

    fn tombstone(now: Timestamp) -> Self {
        Self {
            value: None,
            deleted_at_ms: Some(now.as_millis()),
        }
    }
}

impl Drop for KvData {
    fn drop(&mut self) {
        if let Some(value) = self.value.take() {
            drop(Zeroizing::new(value));
        }
    }
}

/// What a key's latest version holds.
enum Current {
    Live { number: u64, value: SecretBytes },
    Tombstone { number: u64 },
    Missing,
}

impl Current {
    /// What a read of the latest version says, `now` on the store's clock. A version is deleted
    /// once its `deletion_time` has passed: a mount with `delete_version_after` gives every live
    /// version a deletion time in the future.
    fn from_response(response: ReadSecretResponse, now: Timestamp) -> Result<Self> {
        let number = response.metadata.version;
        if response.metadata.destroyed || is_deleted(&response.metadata.deletion_time, now)? {
            return Ok(Current::Missing);
        }
        let mut data: KvData = serde_json::from_value(response.data).map_err(|_| {
            Error::corrupt("the secret's data is not a pleo-auth record").with_backend(BACKEND)
        })?;
        match (data.value.take(), data.deleted_at_ms) {
            (Some(encoded), None) => {
                let encoded = Zeroizing::new(encoded);
                let bytes = STANDARD.decode(encoded.as_bytes()).map_err(|_| {
                    Error::corrupt("the secret's value is not valid base64").with_backend(BACKEND)
                })?;
                Ok(Current::Live {
                    number,
                    value: SecretBytes::new(bytes),
                })
            }
            (None, Some(_)) => Ok(Current::Tombstone { number }),
            _ => Err(
                Error::corrupt("the secret's data is not a pleo-auth record").with_backend(BACKEND),
            ),
        }
    }
}

/// Whether a KV v2 `deletion_time` (empty, or RFC 3339) lies at or before `now`.
fn is_deleted(deletion_time: &str, now: Timestamp) -> Result<bool> {
    if deletion_time.is_empty() {
        return Ok(false);
    }
    let at = time::OffsetDateTime::parse(
        deletion_time,
        &time::format_description::well_known::Rfc3339,
    )
    .map_err(|_| {
        Error::new(
            ErrorKind::Unexpected,
            "vault answered a deletion_time that is not an RFC 3339 time",
        )
        .with_backend(BACKEND)
    })?;
    let at_ms = at.unix_timestamp_nanos() / 1_000_000;
    Ok(at_ms <= i128::from(now.as_millis()))
}

fn is_cas_required(e: &Error) -> bool {
    vault_said(e, CAS_REQUIRED)
}

/// Whether Vault's answer behind `e` says `needle`.
pub(crate) fn vault_said(e: &Error, needle: &str) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<Cause>())
        .is_some_and(|c| c.as_str().contains(needle))
}

fn mismatch() -> Error {
    Error::conflict("version does not match").with_backend(BACKEND)
}

fn exists() -> Error {
    Error::conflict("key already exists").with_backend(BACKEND)
}

/// What a token file holds (trimmed) and how it looked.
fn read_token_file(path: &Path) -> Result<(Zeroizing<String>, FileStamp)> {
    let unreadable = |e: std::io::Error| {
        Error::new(
            ErrorKind::Config,
            format!("cannot read the Vault token file {}", path.display()),
        )
        .with_backend(BACKEND)
        .with_source(e)
    };
    let stamp = file_stamp(path).map_err(unreadable)?;
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(unreadable)?);
    let token = Zeroizing::new(text.trim().to_owned());
    check_header_value(&token, "the token in the token file")?;
    Ok((token, stamp))
}

fn file_stamp(path: &Path) -> std::io::Result<FileStamp> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.modified()?, meta.len()))
}

fn rejected_token() -> Error {
    Error::new(
        ErrorKind::Config,
        "vault rejected the token (expired, revoked or invalid); give the store a valid token",
    )
    .with_backend(BACKEND)
}

fn login_error(e: ClientError, method: &'static str) -> Error {
    match e {
        ClientError::APIError {
            code: 400 | 401 | 403,
            ..
        } => Error::new(
            ErrorKind::Config,
            format!("vault rejected the {method} login"),
        )
        .with_backend(BACKEND)
        .with_source(cause_of(&e)),
        other => map_error("log in", other),
    }
}

fn contended() -> Error {
    Error::conflict("the key kept changing during the write")
        .with_backend(BACKEND)
        .with_retryable(true)
}

fn config_error(message: &'static str) -> Error {
    Error::new(ErrorKind::Config, message).with_backend(BACKEND)
}

fn check_header_value(value: &str, what: &'static str) -> Result<()> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::new(
            ErrorKind::Config,
            format!("{what} must be non-empty visible ASCII"),
        )
        .with_backend(BACKEND));
    }
    Ok(())
}

/// Trims slashes and checks that every segment is a plain name (no `.`, `..` or empty segment).
fn validate_path(path: &str, what: &'static str) -> Result<String> {
    let trimmed = path.trim_matches('/');
    let valid = !trimmed.is_empty()
        && trimmed.split('/').all(|s| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        });
    if !valid {
        return Err(Error::new(
            ErrorKind::Config,
            format!("{what} must be segments of A-Z a-z 0-9 _ - . separated by /"),
        )
        .with_backend(BACKEND));
    }
    Ok(trimmed.to_owned())
}

fn map_error(op: &'static str, e: ClientError) -> Error {
    let kind = match &e {
        ClientError::APIError { code, errors } if *code == 400 => {
            if errors.iter().any(|m| m.contains(CAS_MISMATCH)) {
                ErrorKind::Conflict
            } else {
                ErrorKind::Unexpected
            }
        }
        ClientError::APIError { code, .. } => status_kind(*code),
        ClientError::RestClientError { source } => match source {
            rustify::errors::ClientError::ServerResponseError { code, .. } => status_kind(*code),
            rustify::errors::ClientError::RequestError { source, .. }
                if is_tls_failure(source.as_ref()) =>
            {
                ErrorKind::Config
            }
            rustify::errors::ClientError::RequestError { .. }
            | rustify::errors::ClientError::ResponseError { .. } => ErrorKind::Unavailable,
            _ => ErrorKind::Unexpected,
        },
        _ => ErrorKind::Unexpected,
    };
    let message = match kind {
        ErrorKind::Conflict => "version does not match".to_owned(),
        ErrorKind::Config => format!("{op} failed: the TLS handshake failed"),
        _ => format!("{op} failed"),
    };
    Error::new(kind, message)
        .with_backend(BACKEND)
        .with_source(cause_of(&e))
}

fn status_kind(code: u16) -> ErrorKind {
    match code {
        401 | 403 => ErrorKind::PermissionDenied,
        404 => ErrorKind::NotFound,
        412 | 500..=599 => ErrorKind::Unavailable,
        429 => ErrorKind::RateLimited,
        _ => ErrorKind::Unexpected,
    }
}

/// The cause of a vaultrs error: Vault's messages and status, or the transport failure.
fn cause_of(e: &ClientError) -> Cause {
    match e {
        ClientError::APIError { code, errors } if errors.is_empty() => {
            Cause::new(format!("vault answered {code}"))
        }
        ClientError::APIError { code, errors } => {
            Cause::new(format!("vault answered {code}: {}", errors.join("; ")))
        }
        ClientError::RestClientError { source } => match source {
            rustify::errors::ClientError::ServerResponseError { code, .. } => {
                Cause::new(format!("vault answered {code}"))
            }
            rustify::errors::ClientError::RequestError { source, .. }
            | rustify::errors::ClientError::ResponseError { source } => {
                let inner: &(dyn std::error::Error + 'static) = source.as_ref();
                Cause::from_chain(inner)
            }
            // Parse errors may quote the response body: keep only the top-level text.
            other => Cause::new(other.to_string()),
        },
        other => Cause::new(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_kv_numbers_and_foreign_strings_match_nothing() {
        assert_eq!(expected_number(&Version::from_u64(7)).unwrap(), 7);
        for foreign in ["0", "x", "7:abc", "-1", "+7", "07", ""] {
            let err = expected_number(&Version::new(foreign)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Conflict, "{foreign}");
        }
    }

    #[test]
    fn debug_redacts_credentials() {
        let builder = VaultStore::builder("http://127.0.0.1:8200")
            .approle("ROLE-CANARY", "SECRET-CANARY")
            .path_prefix("a/b");
        let text = format!("{builder:?}");
        assert!(!text.contains("CANARY"), "{text}");
        let store = builder.build().unwrap();
        let text = format!("{store:?}");
        assert!(!text.contains("CANARY"), "{text}");
        assert!(text.contains("AppRole"), "{text}");
        let store = VaultStore::builder("http://127.0.0.1:8200")
            .token("hvs.TOKEN-CANARY")
            .build()
            .unwrap();
        let text = format!("{store:?}");
        assert!(!text.contains("CANARY"), "{text}");
    }

    #[test]
    fn configuration_is_checked() {
        let err = VaultStore::builder("http://vault.example:8200")
            .token("t")
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let err = VaultStore::builder("https://vault.example:8200")
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        for bad in ["", "/", "a/../b", "a//b", "a b"] {
            let err = VaultStore::builder("https://vault.example:8200")
                .token("t")
                .mount(bad)
                .build()
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{bad:?}");
        }
        let err = VaultStore::builder("https://vault.example:8200")
            .token("bad\ntoken")
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(!err.to_string().contains("bad"));
        let err = VaultStore::builder("https://vault.example:8200")
            .token("t")
            .ca_cert_pem("not pem")
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
    }

    #[test]
    fn conflicts_and_outages_are_classified() {
        let cas = ClientError::APIError {
            code: 400,
            errors: vec!["check-and-set parameter did not match the current version".into()],
        };
        assert_eq!(map_error("write", cas).kind(), ErrorKind::Conflict);
        let sealed = ClientError::APIError {
            code: 503,
            errors: vec!["Vault is sealed".into()],
        };
        let err = map_error("read", sealed);
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.is_retryable());
        assert_eq!(err.backend(), Some("vault"));
        let denied = ClientError::APIError {
            code: 403,
            errors: vec!["permission denied".into()],
        };
        assert_eq!(
            map_error("read", denied).kind(),
            ErrorKind::PermissionDenied
        );
    }
}
