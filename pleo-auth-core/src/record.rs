//! Stored records: OAuth grants, API key credentials, pending authorizations, tenant links.
//!
//! Every record is stored as JSON with a `schema` version and a `kind`. A record written by a
//! newer schema, of another kind, or that is not JSON at all is an error
//! ([`ErrorKind::UnsupportedSchema`] or [`ErrorKind::Corrupt`]), never "absent": a reader that
//! cannot understand a record must not conclude that there is no credential.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::environment::EnvironmentName;
use crate::error::{Error, ErrorKind, Result};
use crate::key::{ClientId, CredentialKey, StoreKey, TenantId, layout};
use crate::scope::ScopeSet;
use crate::secret::{
    AccessToken, ApiKey, PkceVerifier, RefreshToken, SecretBytes, expose_for_storage,
};
use crate::subject::Subject;

/// A point in wall-clock time, in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    /// From milliseconds since the Unix epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// From a `SystemTime` (times before 1970 become 0).
    pub fn from_system_time(t: SystemTime) -> Self {
        let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
        Self(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// As a `SystemTime`.
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// This time plus `d`, saturating.
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    /// How long after `earlier` this time is (zero if it is not later).
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// The state of a stored credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialStatus {
    /// Usable.
    Active,
    /// The OAuth grant was refused (`invalid_grant`); the customer must consent again.
    NeedsReauthorization,
    /// The API key was rejected; the customer must paste a new one.
    NeedsReplacement,
    /// Disconnected on purpose.
    Revoked,
}

impl CredentialStatus {
    /// A short lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialStatus::Active => "active",
            CredentialStatus::NeedsReauthorization => "needs_reauthorization",
            CredentialStatus::NeedsReplacement => "needs_replacement",
            CredentialStatus::Revoked => "revoked",
        }
    }
}

impl fmt::Display for CredentialStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a credential was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// OAuth 2.0 access and refresh tokens.
    OAuth,
    /// An Integrated API key (one per customer installation).
    IntegratedApiKey,
    /// A Standalone API key (made by hand).
    StandaloneApiKey,
}

impl CredentialKind {
    /// A short lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::OAuth => "oauth",
            CredentialKind::IntegratedApiKey => "integrated_api_key",
            CredentialKind::StandaloneApiKey => "standalone_api_key",
        }
    }
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record type that can be stored in a [`SecretStore`](crate::SecretStore).
pub trait Record: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The `kind` written into every stored record of this type.
    const KIND: &'static str;
    /// The newest schema version this code writes and reads.
    const SCHEMA: u32;

    /// Whether this record belongs at `key`, judged from the record's own fields (its
    /// environment, client, subject, tenant or state digest). Every typed read
    /// ([`RecordStoreExt::get_record`](crate::RecordStoreExt::get_record)) checks it, so a
    /// record found under another key (a backend that took two ids for one name, a copied or
    /// tampered value) is an [`ErrorKind::KeyMismatch`] error, never another party's record.
    fn belongs_at(&self, key: &StoreKey) -> bool;

    /// Decodes a record read under `key` and checks that it [belongs there](Self::belongs_at).
    fn decode_at(bytes: &[u8], key: &StoreKey) -> Result<Self> {
        let record = Self::decode(bytes)?;
        if !record.belongs_at(key) {
            return Err(Error::new(
                ErrorKind::KeyMismatch,
                format!(
                    "the {} record stored at {key} names another key; it is not used",
                    Self::KIND
                ),
            ));
        }
        Ok(record)
    }

    /// Encodes the record as JSON with `schema` and `kind` fields.
    fn encode(&self) -> Result<SecretBytes> {
        #[derive(Serialize)]
        struct Envelope<'a, R> {
            schema: u32,
            kind: &'static str,
            #[serde(flatten)]
            record: &'a R,
        }
        let envelope = Envelope {
            schema: Self::SCHEMA,
            kind: Self::KIND,
            record: self,
        };
        serde_json::to_vec(&envelope)
            .map(SecretBytes::new)
            .map_err(|e| Error::new(ErrorKind::Unexpected, "record encoding failed").with_source(e))
    }

    /// Decodes a record, refusing other kinds, newer schemas and malformed bytes.
    fn decode(bytes: &[u8]) -> Result<Self> {
        #[derive(Deserialize)]
        struct Header {
            schema: u32,
            kind: String,
        }
        let header: Header = serde_json::from_slice(bytes).map_err(|_| {
            Error::corrupt(format!(
                "stored {} record is not valid JSON with schema and kind",
                Self::KIND
            ))
        })?;
        if header.kind != Self::KIND {
            return Err(Error::corrupt(format!(
                "stored record is of kind {:?}, expected {}",
                truncate(&header.kind),
                Self::KIND
            )));
        }
        if header.schema > Self::SCHEMA {
            return Err(Error::new(
                ErrorKind::UnsupportedSchema,
                format!(
                    "stored {} record has schema {}; this version reads up to {}",
                    Self::KIND,
                    header.schema,
                    Self::SCHEMA
                ),
            ));
        }
        if header.schema == 0 {
            return Err(Error::corrupt("stored record has schema 0"));
        }
        // The serde error may quote input; it is not attached, so no secret reaches an error.
        serde_json::from_slice(bytes).map_err(|e| {
            Error::corrupt(format!(
                "stored {} record is malformed at line {} column {}",
                Self::KIND,
                e.line(),
                e.column()
            ))
        })
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// An OAuth 2.0 grant of one company (or organisation) to one client in one environment.
#[derive(Clone, Serialize, Deserialize)]
pub struct OAuthGrant {
    /// Where the grant is valid.
    pub environment: EnvironmentName,
    /// The OAuth client the grant was issued to.
    pub client_id: ClientId,
    /// The company or organisation that consented.
    pub subject: Subject,
    /// The integrator's tenant linked to this subject, if any.
    #[serde(default)]
    pub tenant: Option<TenantId>,
    /// Whether the grant can be used.
    pub status: CredentialStatus,
    /// Why the status is not `Active` (an OAuth error code such as `invalid_grant`).
    #[serde(default)]
    pub status_reason: Option<String>,
    /// The current access token; `None` once the grant needs reauthorization.
    #[serde(default, with = "expose_for_storage::option")]
    pub access_token: Option<AccessToken>,
    /// When the access token expires.
    #[serde(default)]
    pub access_token_expires_at: Option<Timestamp>,
    /// The current refresh token; `None` once the grant needs reauthorization.
    #[serde(default, with = "expose_for_storage::option")]
    pub refresh_token: Option<RefreshToken>,
    /// When the current refresh token was issued (for keep-alive).
    #[serde(default)]
    pub refresh_token_issued_at: Option<Timestamp>,
    /// The scopes granted.
    pub scopes: ScopeSet,
    /// Incremented on every rotation; replicas compare it to adopt the newest pair.
    pub generation: u64,
    /// When the grant was first connected.
    pub created_at: Timestamp,
    /// When the record last changed.
    pub updated_at: Timestamp,
    /// The integrator's own settings for this connection, kept across reauthorization.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

impl OAuthGrant {
    /// A grant just connected for `key`: active, generation 1, no tenant and no settings, its
    /// tokens received at `received` and the access token valid for `lifetime`. Set the other
    /// fields with struct update syntax.
    ///
    /// ```
    /// use std::time::Duration;
    /// use pleo_auth_core::{
    ///     AccessToken, CredentialKey, CredentialStatus, EnvironmentName, OAuthGrant, RefreshToken,
    ///     Timestamp,
    /// };
    ///
    /// let key = CredentialKey::new(
    ///     EnvironmentName::new("staging")?,
    ///     "my-client".parse()?,
    ///     "urn:pleo:company:0b6f1c7e-8a55-4c2e-9d43-000000000001".parse()?,
    /// );
    /// let received = Timestamp::from_millis(1_790_000_000_000);
    /// let grant = OAuthGrant::connected(
    ///     key,
    ///     AccessToken::new("at"),
    ///     RefreshToken::new("rt"),
    ///     "users:read".parse()?,
    ///     received,
    ///     Duration::from_secs(900),
    /// );
    /// assert_eq!(grant.status, CredentialStatus::Active);
    /// assert_eq!(grant.generation, 1);
    /// assert_eq!(grant.access_token_expires_at, Some(received.saturating_add(Duration::from_secs(900))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn connected(
        key: CredentialKey,
        access_token: AccessToken,
        refresh_token: RefreshToken,
        scopes: ScopeSet,
        received: Timestamp,
        lifetime: Duration,
    ) -> Self {
        Self {
            environment: key.environment,
            client_id: key.client,
            subject: key.subject,
            tenant: None,
            status: CredentialStatus::Active,
            status_reason: None,
            access_token: Some(access_token),
            access_token_expires_at: Some(received.saturating_add(lifetime)),
            refresh_token: Some(refresh_token),
            refresh_token_issued_at: Some(received),
            scopes,
            generation: 1,
            created_at: received,
            updated_at: received,
            settings: BTreeMap::new(),
        }
    }

    /// The key this grant is stored under.
    pub fn credential_key(&self) -> CredentialKey {
        CredentialKey::new(
            self.environment.clone(),
            self.client_id.clone(),
            self.subject,
        )
    }
}

impl fmt::Debug for OAuthGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthGrant")
            .field("environment", &self.environment)
            .field("client_id", &self.client_id)
            .field("subject", &self.subject)
            .field("tenant", &self.tenant)
            .field("status", &self.status)
            .field("status_reason", &self.status_reason)
            .field("has_access_token", &self.access_token.is_some())
            .field("access_token_expires_at", &self.access_token_expires_at)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("scopes", &self.scopes)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Record for OAuthGrant {
    const KIND: &'static str = "oauth_grant";
    const SCHEMA: u32 = 1;

    fn belongs_at(&self, key: &StoreKey) -> bool {
        *key == layout::oauth_grant(&self.credential_key())
    }
}

/// Which kind of API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiKeyKind {
    /// Generated by Pleo at install time of an approved integration; one per customer.
    Integrated,
    /// Created by hand in the Pleo web app; one environment, a company or an organisation.
    Standalone,
}

impl ApiKeyKind {
    /// The credential kind of this key kind.
    pub fn credential_kind(self) -> CredentialKind {
        match self {
            ApiKeyKind::Integrated => CredentialKind::IntegratedApiKey,
            ApiKeyKind::Standalone => CredentialKind::StandaloneApiKey,
        }
    }
}

/// An API key of one company (or organisation) for one integration in one environment.
#[derive(Clone, Serialize, Deserialize)]
pub struct ApiKeyCredential {
    /// Where the key is valid.
    pub environment: EnvironmentName,
    /// The integration the key belongs to.
    pub integration_id: ClientId,
    /// The company or organisation the key acts for (learned from `/v1/introspect`).
    pub subject: Subject,
    /// The integrator's tenant linked to this subject, if any.
    #[serde(default)]
    pub tenant: Option<TenantId>,
    /// Integrated or Standalone. Stored as `key_kind`, because every record's envelope already
    /// has a `kind` (the record type).
    #[serde(rename = "key_kind")]
    pub kind: ApiKeyKind,
    /// Whether the key can be used.
    pub status: CredentialStatus,
    /// Why the status is not `Active`.
    #[serde(default)]
    pub status_reason: Option<String>,
    /// The key; `None` once removed.
    #[serde(default, with = "expose_for_storage::option")]
    pub key: Option<ApiKey>,
    /// The scopes the key carries.
    pub scopes: ScopeSet,
    /// Incremented on every replacement.
    pub generation: u64,
    /// When the key was first connected.
    pub created_at: Timestamp,
    /// When the record last changed.
    pub updated_at: Timestamp,
    /// The integrator's own settings for this connection.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

impl ApiKeyCredential {
    /// The key this credential is stored under.
    pub fn credential_key(&self) -> CredentialKey {
        CredentialKey::new(
            self.environment.clone(),
            self.integration_id.clone(),
            self.subject,
        )
    }
}

impl fmt::Debug for ApiKeyCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyCredential")
            .field("environment", &self.environment)
            .field("integration_id", &self.integration_id)
            .field("subject", &self.subject)
            .field("tenant", &self.tenant)
            .field("kind", &self.kind)
            .field("status", &self.status)
            .field("has_key", &self.key.is_some())
            .field("scopes", &self.scopes)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Record for ApiKeyCredential {
    const KIND: &'static str = "api_key";
    const SCHEMA: u32 = 1;

    fn belongs_at(&self, key: &StoreKey) -> bool {
        *key == layout::api_key(&self.credential_key())
    }
}

/// An authorization request in flight: what the callback needs to finish it on any replica.
/// Single use and short-lived: deleted when its callback arrives (whatever the outcome) and,
/// once expired, by the sweep of pending authorizations.
#[derive(Clone, Serialize, Deserialize)]
pub struct PendingAuthorization {
    /// The environment the flow runs against.
    pub environment: EnvironmentName,
    /// The OAuth client.
    pub client_id: ClientId,
    /// The digest of the flow's `state` that names its key (see
    /// [`layout::pending_authorization`]); never the state itself.
    pub state_digest: String,
    /// The digest of the [`BrowserBinding`](crate::BrowserBinding) of the browser that started
    /// the flow, if it was bound to one: the callback is then completed only in a browser
    /// that presents the same binding.
    #[serde(default)]
    pub browser_binding: Option<String>,
    /// The PKCE verifier (never sent until the code exchange).
    #[serde(with = "expose_for_storage")]
    pub verifier: PkceVerifier,
    /// The redirect URI sent in the authorization request.
    pub redirect_uri: String,
    /// The scopes requested.
    pub scopes: ScopeSet,
    /// The company or organisation the integration expects to be connected, if it said so.
    #[serde(default)]
    pub expected_subject: Option<Subject>,
    /// The tenant to link on success, if any.
    #[serde(default)]
    pub tenant: Option<TenantId>,
    /// Whether linking may move an existing tenant link.
    #[serde(default)]
    pub relink: bool,
    /// When the flow started.
    pub created_at: Timestamp,
    /// When the flow expires.
    pub expires_at: Timestamp,
}

impl fmt::Debug for PendingAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingAuthorization")
            .field("environment", &self.environment)
            .field("client_id", &self.client_id)
            .field("redirect_uri", &self.redirect_uri)
            .field("scopes", &self.scopes)
            .field("expected_subject", &self.expected_subject)
            .field("tenant", &self.tenant)
            .field("browser_bound", &self.browser_binding.is_some())
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Schema 2 added the state digest and the browser binding; a replica that reads only
/// schema 1 refuses these records instead of completing a flow without checking the browser.
impl Record for PendingAuthorization {
    const KIND: &'static str = "pending_authorization";
    const SCHEMA: u32 = 2;

    fn belongs_at(&self, key: &StoreKey) -> bool {
        !self.state_digest.is_empty()
            && *key
                == layout::pending_authorization(
                    &self.environment,
                    &self.client_id,
                    &self.state_digest,
                )
    }
}

/// Why a [`DanglingGrant`] exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DanglingReason {
    /// The tokens of a connection being completed, stored right after the code exchange so a
    /// crash before the grant is stored loses nothing. Deleted when the connection completes.
    Connecting,
    /// The connection was refused (another company than expected, a tenant linked elsewhere,
    /// a subject that could not be learned).
    Refused,
    /// A reconnect of the same company replaced this grant.
    Replaced,
}

impl DanglingReason {
    /// A short lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            DanglingReason::Connecting => "connecting",
            DanglingReason::Refused => "refused",
            DanglingReason::Replaced => "replaced",
        }
    }
}

/// Whether a dangling grant can be revoked now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RevocationState {
    /// Not tried yet, or failed transiently: keep-alive retries it.
    Pending,
    /// Revoking it would also end a grant that is kept (Pleo documents no revocation endpoint,
    /// and deleting the installation ends every token of the company): left alone while that
    /// grant is kept, and shown by `status`.
    Unsafe,
}

/// A grant the authorization server issued that pleo-auth does not keep as a connection, held
/// until it is revoked. Its tokens are secrets, stored like a grant's.
#[derive(Clone, Serialize, Deserialize)]
pub struct DanglingGrant {
    /// Where the grant is valid.
    pub environment: EnvironmentName,
    /// The OAuth client it was issued to.
    pub client_id: ClientId,
    /// The company or organisation, once learned.
    #[serde(default)]
    pub subject: Option<Subject>,
    /// Why it is not kept.
    pub reason: DanglingReason,
    /// Whether revoking it can be tried now.
    pub revocation: RevocationState,
    /// The access token, while it may be usable.
    #[serde(default, with = "expose_for_storage::option")]
    pub access_token: Option<AccessToken>,
    /// When the access token expires.
    #[serde(default)]
    pub access_token_expires_at: Option<Timestamp>,
    /// The refresh token (rotated here if the grant has to be refreshed to be revoked).
    #[serde(default, with = "expose_for_storage::option")]
    pub refresh_token: Option<RefreshToken>,
    /// Revocation attempts so far.
    #[serde(default)]
    pub attempts: u32,
    /// When the grant was issued.
    pub created_at: Timestamp,
    /// When the record last changed.
    pub updated_at: Timestamp,
}

impl fmt::Debug for DanglingGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DanglingGrant")
            .field("environment", &self.environment)
            .field("client_id", &self.client_id)
            .field("subject", &self.subject)
            .field("reason", &self.reason)
            .field("revocation", &self.revocation)
            .field("has_access_token", &self.access_token.is_some())
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("attempts", &self.attempts)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

impl Record for DanglingGrant {
    const KIND: &'static str = "dangling_grant";
    const SCHEMA: u32 = 1;

    /// A dangling grant's id is derived from its first token, which a later rotation replaces,
    /// so the check is that the key is one id directly below this environment's and client's
    /// prefix.
    fn belongs_at(&self, key: &StoreKey) -> bool {
        let prefix = layout::dangling_grants(&self.environment, &self.client_id);
        key.starts_with(&prefix) && key.parts().len() == prefix.parts().len() + 1
    }
}

/// Whether a tenant link is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkStatus {
    /// Claimed while its credential is being written; settles to `Active` or is rolled back.
    Pending,
    /// In force.
    Active,
}

/// The one-to-one link between an integrator's tenant and a Pleo subject in one environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantLink {
    /// The environment.
    pub environment: EnvironmentName,
    /// The integrator's tenant.
    pub tenant: TenantId,
    /// The Pleo company or organisation.
    pub subject: Subject,
    /// How the subject is connected.
    pub credential_kind: CredentialKind,
    /// The OAuth client or integration that holds the credential.
    pub client_id: ClientId,
    /// Pending while being written, then active.
    pub status: LinkStatus,
    /// When the link was made.
    pub created_at: Timestamp,
    /// When the link last changed.
    pub updated_at: Timestamp,
}

impl Record for TenantLink {
    const KIND: &'static str = "tenant_link";
    const SCHEMA: u32 = 1;

    /// A link is stored twice: under its tenant and under its subject.
    fn belongs_at(&self, key: &StoreKey) -> bool {
        *key == layout::tenant_link(&self.environment, &self.tenant)
            || *key == layout::subject_link(&self.environment, &self.subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> OAuthGrant {
        OAuthGrant {
            environment: EnvironmentName::new("staging").unwrap(),
            client_id: ClientId::new("client-1").unwrap(),
            subject: "urn:pleo:company:0b6f1c7e-8a55-4c2e-9d43-0d8a2a7a1f10"
                .parse()
                .unwrap(),
            tenant: None,
            status: CredentialStatus::Active,
            status_reason: None,
            access_token: Some(AccessToken::new("CANARY-access")),
            access_token_expires_at: Some(Timestamp::from_millis(1_000)),
            refresh_token: Some(RefreshToken::new("CANARY-refresh")),
            refresh_token_issued_at: Some(Timestamp::from_millis(0)),
            scopes: "users:read".parse().unwrap(),
            generation: 3,
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
            settings: BTreeMap::new(),
        }
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let g = grant();
        let bytes = g.encode().unwrap();
        let back = OAuthGrant::decode(bytes.expose_secret()).unwrap();
        assert_eq!(back.generation, 3);
        assert_eq!(
            back.refresh_token.unwrap().expose_secret(),
            "CANARY-refresh"
        );
        assert_eq!(back.subject, g.subject);
        let text = std::str::from_utf8(bytes.expose_secret()).unwrap();
        assert!(text.contains("\"schema\":1"));
        assert!(text.contains("\"kind\":\"oauth_grant\""));
    }

    #[test]
    fn api_key_credentials_round_trip() {
        let record = ApiKeyCredential {
            environment: EnvironmentName::new("staging").unwrap(),
            integration_id: ClientId::new("erp").unwrap(),
            subject: "urn:pleo:company:0b6f1c7e-8a55-4c2e-9d43-0d8a2a7a1f10"
                .parse()
                .unwrap(),
            tenant: None,
            kind: ApiKeyKind::Standalone,
            status: CredentialStatus::Active,
            status_reason: None,
            key: Some(ApiKey::new("CANARY-key")),
            scopes: "users:read".parse().unwrap(),
            generation: 2,
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
            settings: BTreeMap::new(),
        };
        let bytes = record.encode().unwrap();
        let text = std::str::from_utf8(bytes.expose_secret()).unwrap();
        assert!(text.contains("\"kind\":\"api_key\""), "{text}");
        assert!(text.contains("\"key_kind\":\"standalone\""), "{text}");
        let back = ApiKeyCredential::decode(bytes.expose_secret()).unwrap();
        assert_eq!(back.kind, ApiKeyKind::Standalone);
        assert_eq!(back.key.unwrap().expose_secret(), "CANARY-key");
        assert_eq!(back.generation, 2);
    }

    #[test]
    fn a_record_read_under_another_key_is_a_key_mismatch() {
        let g = grant();
        let bytes = g.encode().unwrap();
        let own = layout::oauth_grant(&g.credential_key());
        assert!(OAuthGrant::decode_at(bytes.expose_secret(), &own).is_ok());
        let mut other = g.credential_key();
        other.client = ClientId::new("Client-1").unwrap();
        let err =
            OAuthGrant::decode_at(bytes.expose_secret(), &layout::oauth_grant(&other)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::KeyMismatch);
        assert!(!format!("{err} {err:?}").contains("CANARY"));
    }

    #[test]
    fn debug_hides_tokens() {
        let shown = format!("{:?}", grant());
        assert!(!shown.contains("CANARY"), "{shown}");
        assert!(shown.contains("has_refresh_token: true"));
    }

    #[test]
    fn unreadable_records_are_typed_errors() {
        let newer = br#"{"schema":99,"kind":"oauth_grant"}"#;
        assert_eq!(
            OAuthGrant::decode(newer).unwrap_err().kind(),
            ErrorKind::UnsupportedSchema
        );
        for bad in [
            &b"garbage"[..],
            b"",
            b"{}",
            br#"{"schema":1,"kind":"api_key"}"#,
            br#"{"schema":1,"kind":"oauth_grant","generation":"x"}"#,
            br#"{"schema":0,"kind":"oauth_grant"}"#,
        ] {
            let err = OAuthGrant::decode(bad).unwrap_err();
            assert_eq!(
                err.kind(),
                ErrorKind::Corrupt,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn malformed_record_errors_do_not_quote_secrets() {
        let mut bad =
            String::from_utf8(grant().encode().unwrap().expose_secret().to_vec()).unwrap();
        bad = bad.replace("\"generation\":3", "\"generation\":\"CANARY-x\"");
        let err = OAuthGrant::decode(bad.as_bytes()).unwrap_err();
        assert!(!format!("{err} {err:?}").contains("CANARY"));
    }
}
