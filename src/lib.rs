//! Authenticate integrations to the **Pleo External API**, for many customer companies at once.
//!
//! `pleo-auth` is a facade over the crates of the toolkit, each behind a feature (see
//! [Features](#features)):
//!
//! | module | what it holds |
//! |---|---|
//! | crate root | environments, subjects, scopes, secret newtypes, records, the `SecretStore`, `Lease` and `CredentialProvider` traits, tenant links (from `pleo-auth-core`), and [`PleoAuth`] |
//! | [`oauth`] | OAuth 2.0 with PKCE: authorization URL, callback, code exchange, refresh manager |
//! | [`apikey`] | Integrated and Standalone API keys |
//! | [`http`] | the authenticated client with company and environment guards, middleware, the loopback callback listener; with `axum`, the `/connect` and `/callback` routes and the operator view |
//! | [`stores`] | the file, Vault / OpenBao, AWS Secrets Manager, Redis and PostgreSQL stores, and envelope encryption (local keys, AWS KMS, Vault Transit) |
//! | [`sandbox`] | a local emulator of Pleo's authorization server and External API |
//! | [`testing`] | the store and lease conformance suites, for a store of your own |
//! | [`metrics`] | metric names, units and labels; counters, histograms and gauges through the `metrics` facade |
//!
//! A feature that is off builds nothing of its crate: without `aws`, the AWS SDK is never
//! compiled.
//!
//! # Features
//!
//! From the `[features]` of this package's `Cargo.toml`, the one place they are described:
//!
#![doc = document_features::document_features!()]
//!
//! # One builder for everything
//!
//! [`PleoAuth::builder`] wires a store, the methods and the client:
//!
//! ```no_run
//! use pleo_auth::apikey::ApiKeyConfig;
//! use pleo_auth::oauth::{AuthorizeOptions, OAuthConfig};
//! use pleo_auth::{ClientId, ClientSecret, Environment, PleoAuth, TenantId};
//!
//! # async fn run(callback_query: &str) -> Result<(), Box<dyn std::error::Error>> {
//! let environment = Environment::staging();
//! let auth = PleoAuth::builder()
//!     .environment(environment.clone())
//!     .file_store("/var/lib/my-integration/pleo")
//!     .oauth(
//!         OAuthConfig::builder()
//!             .environment(environment.clone())
//!             .client_id("my-client-id")
//!             .client_secret(ClientSecret::new(std::env::var("PLEO_CLIENT_SECRET")?))
//!             .redirect_uri("https://my-integration.example/pleo/callback")
//!             .scopes("users:read")
//!             .build()?,
//!     )
//!     .api_keys(ApiKeyConfig::new(environment, ClientId::new("my-integration")?))
//!     .build()?;
//!
//! // "Connect to Pleo" for your customer "erp-4711": send their browser here ...
//! let request = auth
//!     .oauth()?
//!     .authorize(AuthorizeOptions::new().tenant(TenantId::new("erp-4711")?))
//!     .await?;
//! println!("{}", request.url);
//! // ... and finish on the callback.
//! let connection = auth.oauth()?.complete(callback_query).await?;
//! println!("connected {}", connection.subject);
//!
//! // Call the API for that customer: its OAuth grant, or else its Integrated key, is used.
//! let employees: serde_json::Value =
//!     auth.client().get("/v2/employees").tenant("erp-4711").json().await?;
//! # let _ = employees;
//! # Ok(())
//! # }
//! ```
//!
//! # Running for months without a person
//!
//! [`PleoAuth::spawn_keep_alive`] sweeps on a schedule (one replica per interval, by a lease),
//! [`PleoAuth::health`] says whether the store and the lease backend answer and who needs a
//! person, and every credential's events arrive as one [`PleoEvent`] stream
//! ([`PleoAuthBuilder::on_event`], [`PleoAuth::subscribe`]).
//!
//! Per subject, the client uses the OAuth grant if one exists, else the Integrated key, else the
//! Standalone key ([`CompositeProvider`]). A request for one company is never sent with another
//! company's credential, nor with a credential of another environment.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "axum")]
mod admin;
mod builder;
#[cfg(all(feature = "oauth", feature = "http"))]
mod connect;
mod connections;
mod error;
#[cfg_attr(
    not(any(feature = "oauth", feature = "apikey")),
    expect(dead_code, reason = "no method crate is compiled in to emit events")
)]
mod events;
mod health;
mod inventory;
#[cfg(feature = "oauth")]
mod keep_alive;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
mod provider;

// The core's items, each named once (its `Error` and `Result` are `CoreError` and
// `CoreResult` here, next to the facade's own).
#[doc(inline)]
pub use pleo_auth_core::{
    AccessToken, ApiKey, ApiKeyCredential, ApiKeyKind, AuthorizationCode, AuthorizationHeader,
    Backoff, BrowserBinding, Change, ClientId, ClientSecret, Clock, CompanyId, Credential,
    CredentialId, CredentialKey, CredentialKind, CredentialProvider, CredentialStatus,
    DanglingGrant, DanglingReason, DynClock, DynCredentialProvider, DynLease, DynSecretStore,
    Environment, EnvironmentName, ErrorKind, InProcessLease, Lease, LeaseGuard, LeaseRelease,
    LinkError, LinkOutcome, LinkRequest, LinkStatus, ListPage, MAX_PAGE_SIZE, MAX_SCOPE_LEN,
    MAX_SCOPES, MAX_SEGMENT_LEN, MAX_STORE_KEY_LEN, MAX_UPDATE_ROUNDS, ManualClock, MemoryStore,
    OAuthGrant, OrganisationId, PENDING_LINK_TIMEOUT, PendingAuthorization, PkceVerifier,
    Precondition, Record, RecordStoreExt, RefreshToken, RevocationState, Scope, ScopeSet,
    SecretBytes, SecretStore, Sharing, StoreKey, StoreLease, Subject, SystemClock, TenantId,
    TenantLink, TenantLinks, Timestamp, Version, Versioned, check_page_limit, check_precondition,
    check_transport_security, expose_for_storage, is_conflict, is_loopback, layout, lease_for,
    parse_base_url, random_urlsafe,
};

pub use builder::{PleoAuth, PleoAuthBuilder};
#[cfg(all(feature = "oauth", feature = "http"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "oauth", feature = "http"))))]
pub use connect::OAuthConnectFlow;
pub use connections::{ConnectionInfo, ConnectionState};
pub use error::{Error, Result};
pub use events::{DEFAULT_EVENT_CAPACITY, DynPleoEventSink, EventKind, PleoEvent, PleoEventSink};
pub use health::{Health, Probe};
#[cfg(feature = "oauth")]
#[cfg_attr(docsrs, doc(cfg(feature = "oauth")))]
pub use keep_alive::{
    DEFAULT_KEEP_ALIVE_EVERY, KeepAliveConfig, KeepAliveHandle, KeepAliveRun, ONCE_LEASE_TTL,
};
/// The `/connect` and `/callback` routes of a web integration, over
/// [`PleoAuth::connect_flow`] and your app's authorization, and the operator view over
/// [`PleoAuth::admin_view`] (also at `pleo_auth::http`).
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
#[doc(inline)]
pub use pleo_auth_http::{
    ConnectAuthorization, ConnectRoutes, Rejection, SameOriginPath, admin_router, connect_router,
};
pub use provider::{CompositeProvider, ROUTE_TTL};

/// The error of `pleo-auth-core` and of every [`SecretStore`] (the crate root's [`Error`] is the
/// facade's).
pub type CoreError = pleo_auth_core::Error;

/// `Result` with [`CoreError`].
pub type CoreResult<T, E = CoreError> = pleo_auth_core::Result<T, E>;

/// The store and lease conformance suites, to check a store of your own.
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
#[doc(inline)]
pub use pleo_auth_core::testing;

/// OAuth 2.0 for the Pleo External API (`pleo-auth-oauth`).
#[cfg(feature = "oauth")]
#[cfg_attr(docsrs, doc(cfg(feature = "oauth")))]
#[doc(inline)]
pub use pleo_auth_oauth as oauth;

/// Integrated and Standalone API keys (`pleo-auth-apikey`).
#[cfg(feature = "apikey")]
#[cfg_attr(docsrs, doc(cfg(feature = "apikey")))]
#[doc(inline)]
pub use pleo_auth_apikey as apikey;

/// The authenticated HTTP client (`pleo-auth-http`).
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
#[doc(inline)]
pub use pleo_auth_http as http;

/// The local emulator of Pleo (`pleo-auth-sandbox`).
#[cfg(feature = "sandbox")]
#[cfg_attr(docsrs, doc(cfg(feature = "sandbox")))]
#[doc(inline)]
pub use pleo_auth_sandbox as sandbox;

/// Secret stores (`pleo-auth-stores`), each behind its own feature.
#[cfg(any(
    feature = "file",
    feature = "vault",
    feature = "aws",
    feature = "redis",
    feature = "postgres",
    feature = "encryption"
))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(
        feature = "file",
        feature = "vault",
        feature = "aws",
        feature = "redis",
        feature = "postgres",
        feature = "encryption"
    )))
)]
pub mod stores {
    /// The embedded file store.
    #[cfg(feature = "file")]
    #[cfg_attr(docsrs, doc(cfg(feature = "file")))]
    #[doc(inline)]
    pub use pleo_auth_stores::file;

    /// HashiCorp Vault / OpenBao KV v2.
    #[cfg(feature = "vault")]
    #[cfg_attr(docsrs, doc(cfg(feature = "vault")))]
    #[doc(inline)]
    pub use pleo_auth_stores::vault;

    /// AWS Secrets Manager.
    #[cfg(feature = "aws")]
    #[cfg_attr(docsrs, doc(cfg(feature = "aws")))]
    #[doc(inline)]
    pub use pleo_auth_stores::aws;

    /// Redis store and lease.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    #[doc(inline)]
    pub use pleo_auth_stores::redis;

    /// PostgreSQL store and lease.
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    #[doc(inline)]
    pub use pleo_auth_stores::postgres;

    /// Envelope encryption for any store.
    #[cfg(feature = "encryption")]
    #[cfg_attr(docsrs, doc(cfg(feature = "encryption")))]
    #[doc(inline)]
    pub use pleo_auth_stores::encrypted;

    /// Data keys from AWS KMS for the encryption wrapper.
    #[cfg(feature = "kms")]
    #[cfg_attr(docsrs, doc(cfg(feature = "kms")))]
    #[doc(inline)]
    pub use pleo_auth_stores::kms;

    /// Data keys from Vault/OpenBao Transit for the encryption wrapper.
    #[cfg(feature = "transit")]
    #[cfg_attr(docsrs, doc(cfg(feature = "transit")))]
    #[doc(inline)]
    pub use pleo_auth_stores::transit;
}
