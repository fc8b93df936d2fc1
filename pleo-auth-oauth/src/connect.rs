//! Connecting a company: the authorization URL, the callback, the code exchange, and binding
//! the grant to the company Pleo names.

use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;

use oauth2::{CsrfToken, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl};
use pleo_auth_core::{
    BrowserBinding, Change, CredentialKey, CredentialKind, DanglingReason, ErrorKind as CoreKind,
    LinkError, LinkOutcome, LinkRequest, OAuthGrant, PendingAuthorization, PkceVerifier,
    Precondition, RecordStoreExt, RevocationState, ScopeSet, Subject, TenantId, UpdateError,
    Updated, Version, is_conflict, layout, random_urlsafe,
};
use sha2::{Digest as _, Sha256};
use url::Url;

use crate::callback::{self, Outcome};
use crate::config::OAuthConfig;
use crate::dangling::{Disposal, Held};
use crate::error::{Error, ErrorKind, Result};
use crate::events::OAuthEvent;
use crate::inner::Inner;
use crate::manager::TokenManager;
use crate::subject::resolve_subject;
use crate::token::{self, Access};

/// Bytes of randomness in `state` (256 bits).
const STATE_BYTES: usize = 32;
/// Bytes of randomness in the PKCE verifier (64 characters once encoded).
const VERIFIER_BYTES: usize = 48;
/// Pleo's parameter that names the company or organisation to connect.
const SUBJECT_PARAM: &str = "urn_pleo_params_oauth_subject";

/// Options of one authorization request.
///
/// ```
/// use pleo_auth_core::{Subject, TenantId};
/// use pleo_auth_oauth::AuthorizeOptions;
///
/// let company: Subject = "urn:pleo:company:0b6f1c7e-8a55-4c2e-9d43-0d8a2a7a1f10".parse()?;
/// let options = AuthorizeOptions::new()
///     .expect_subject(company)
///     .tenant(TenantId::new("erp-4711")?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct AuthorizeOptions {
    expected_subject: Option<Subject>,
    subject_hint: Option<Subject>,
    tenant: Option<TenantId>,
    relink: bool,
    scopes: Option<ScopeSet>,
    /// The digest of the browser binding, never the binding.
    browser_binding: Option<String>,
}

impl AuthorizeOptions {
    /// No expectations: whichever company the customer picks is connected.
    pub fn new() -> Self {
        Self::default()
    }

    /// Connect only `subject`: it is sent to Pleo as `urn_pleo_params_oauth_subject`, and if
    /// Pleo connects another company, [`OAuthClient::complete`] stores nothing and fails with
    /// [`ErrorKind::WrongCompany`].
    pub fn expect_subject(mut self, subject: Subject) -> Self {
        self.expected_subject = Some(subject);
        self.subject_hint = Some(subject);
        self
    }

    /// Sends `subject` as `urn_pleo_params_oauth_subject`, or nothing with `None`, without
    /// changing which subject is expected.
    pub fn subject_hint(mut self, subject: Option<Subject>) -> Self {
        self.subject_hint = subject;
        self
    }

    /// Links the connected subject to the integrator's `tenant` when the flow completes.
    pub fn tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// Allows the link to move an existing link of the tenant or of the subject.
    pub fn relink(mut self, relink: bool) -> Self {
        self.relink = relink;
        self
    }

    /// Requests these scopes instead of the configured ones.
    pub fn scopes(mut self, scopes: ScopeSet) -> Self {
        self.scopes = Some(scopes);
        self
    }

    /// Binds the flow to the browser that holds `binding` (in an `HttpOnly` cookie): only
    /// [`OAuthClient::complete_in_browser`] with the same binding completes it. A callback
    /// with no binding or another one is refused before any token request
    /// ([`ErrorKind::BrowserMismatch`]), and its state is used up, so a callback URL carried to
    /// another browser (login CSRF) never connects anything. Only a digest is stored.
    pub fn bind_to_browser(mut self, binding: &BrowserBinding) -> Self {
        self.browser_binding = Some(hex_digest(binding.expose_secret()));
        self
    }
}

/// The hex SHA-256 of `value`: how states and browser bindings are kept in the store.
fn hex_digest(value: &str) -> String {
    format!("{:x}", Sha256::digest(value.as_bytes()))
}

/// Compares two strings in constant time (for equal lengths).
fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `state` of an authorization request. `Debug` does not print it.
#[derive(Clone)]
pub struct AuthorizationState(String);

impl AuthorizationState {
    /// The value. Bind it to the user's session (a cookie) and compare it on the callback to
    /// make sure the user who returns is the one who started the flow.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// Compares with a value from a callback or session, in constant time.
    pub fn matches(&self, other: &str) -> bool {
        constant_time_eq(&self.0, other)
    }
}

impl fmt::Debug for AuthorizationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthorizationState([redacted])")
    }
}

/// Where to send the customer, and the state that identifies the flow.
#[derive(Clone)]
pub struct AuthorizationRequest {
    /// The authorization URL (`{authorization server}/oauth/authorize?...`).
    pub url: Url,
    /// The flow's `state` (also in `url`).
    pub state: AuthorizationState,
}

impl fmt::Debug for AuthorizationRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.url.clone();
        shown.set_query(None);
        f.debug_struct("AuthorizationRequest")
            .field("url", &shown.as_str())
            .field("state", &self.state)
            .finish()
    }
}

/// A completed connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Connection {
    /// The company or organisation that consented.
    pub subject: Subject,
    /// The scopes granted.
    pub scopes: ScopeSet,
    /// The tenant linked to it, if the flow named one.
    pub tenant: Option<TenantId>,
    /// What linking the tenant changed, if the flow named one.
    pub link: Option<LinkOutcome>,
    /// Whether an earlier grant of this subject (for example one that needed reauthorization)
    /// was replaced; its settings were kept.
    pub reconnected: bool,
}

/// Connects companies: builds authorization URLs and completes callbacks.
///
/// Cheap to clone. The pending authorization lives in the store, so the callback can land on
/// any replica. See the crate documentation for an example.
#[derive(Clone)]
pub struct OAuthClient {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthClient")
            .field("inner", &self.inner)
            .finish()
    }
}

impl OAuthClient {
    pub(crate) fn from_inner(inner: Arc<Inner>) -> Self {
        Self { inner }
    }

    /// The configuration.
    pub fn config(&self) -> &OAuthConfig {
        &self.inner.config
    }

    /// The refresh manager sharing this client's store and cache; `complete()` seeds it.
    pub fn token_manager(&self) -> TokenManager {
        TokenManager::new(self.inner.clone())
    }

    /// The pending authorizations of this client and environment (flows started whose
    /// callback has not arrived), without secrets.
    pub async fn pending(&self) -> Result<Vec<crate::PendingStatus>> {
        crate::pending::list(&self.inner).await
    }

    /// Deletes every expired pending authorization of this client and environment (abandoned
    /// consents). [`TokenManager::keep_alive`] runs it too.
    pub async fn sweep_pending(&self) -> Result<crate::PendingSweep> {
        crate::pending::sweep(&self.inner).await
    }

    /// Starts a flow: stores the pending authorization (state digest, PKCE verifier, redirect
    /// URI, scopes, expected subject, tenant) and returns the URL to send the customer to.
    #[tracing::instrument(skip_all, fields(environment = %self.inner.config.environment().name()))]
    pub async fn authorize(&self, options: AuthorizeOptions) -> Result<AuthorizationRequest> {
        let inner = &self.inner;
        let config = &inner.config;
        let state = random_urlsafe(STATE_BYTES);
        let verifier = PkceVerifier::new(random_urlsafe(VERIFIER_BYTES));
        let challenge = PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(
            verifier.expose_secret().to_owned(),
        ));
        let scopes = options.scopes.unwrap_or_else(|| config.scopes().clone());
        let redirect = RedirectUrl::from_url(config.redirect_uri().clone());
        let mut request = inner
            .authorize
            .authorize_url(|| CsrfToken::new(state.clone()))
            .set_pkce_challenge(challenge)
            .set_redirect_uri(Cow::Owned(redirect))
            .add_scopes(
                scopes
                    .iter()
                    .map(|s| oauth2::Scope::new(s.as_str().to_owned())),
            );
        if let Some(subject) = options.subject_hint {
            request = request.add_extra_param(SUBJECT_PARAM, subject.to_string());
        }
        let (url, _) = request.url();

        let now = inner.clock.timestamp();
        let state_digest = hex_digest(&state);
        let pending = PendingAuthorization {
            environment: config.environment().name().clone(),
            client_id: config.client_id().clone(),
            state_digest,
            browser_binding: options.browser_binding,
            verifier,
            redirect_uri: config.redirect_uri().as_str().to_owned(),
            scopes,
            expected_subject: options.expected_subject,
            tenant: options.tenant,
            relink: options.relink,
            created_at: now,
            expires_at: now.saturating_add(config.pending_ttl()),
        };
        let key = layout::pending_authorization(
            &pending.environment,
            &pending.client_id,
            &pending.state_digest,
        );
        inner
            .store
            .put_record(&key, &pending, Precondition::Absent)
            .await
            .map_err(|e| Error::store("storing the pending authorization failed", e))?;
        tracing::debug!(expected_subject = ?pending.expected_subject, "authorization started");
        Ok(AuthorizationRequest {
            url,
            state: AuthorizationState(state),
        })
    }

    fn pending_key(&self, state: &str) -> pleo_auth_core::StoreKey {
        layout::pending_authorization(
            self.inner.config.environment().name(),
            self.inner.config.client_id(),
            &hex_digest(state),
        )
    }

    /// Finishes a flow from the callback's query string (or the whole redirect URL).
    ///
    /// Malformed callbacks, an `iss` that names another issuer (RFC 9207), and unknown, reused
    /// or expired states are refused before any network call. The pending authorization is
    /// consumed (deleted with a version check) before anything else is judged, so two
    /// callbacks with the same state cannot both succeed and a refused callback leaves nothing
    /// behind. A flow bound to a browser ([`AuthorizeOptions::bind_to_browser`]) is refused
    /// here ([`ErrorKind::BrowserMismatch`]); complete it with
    /// [`complete_in_browser`](Self::complete_in_browser). Then the code is exchanged (client_secret_basic, PKCE verifier, redirect URI),
    /// and the tokens are written to the store at once (a dangling record), before anything
    /// about them is judged. The subject is learned (by default from `GET /v1/introspect`), and
    /// the grant is stored under (environment, client id, subject), together with the tenant
    /// link if the flow named a tenant.
    ///
    /// A grant that is refused here (another company than expected, a tenant linked
    /// elsewhere, a subject that cannot be learned) is revoked when that is safe, or recorded
    /// as dangling (see [`TokenManager::dangling`](crate::TokenManager::dangling)).
    #[tracing::instrument(skip_all, fields(environment = %self.inner.config.environment().name()))]
    pub async fn complete(&self, callback_query: &str) -> Result<Connection> {
        self.finish(callback_query, None).await
    }

    /// Finishes a flow started with [`AuthorizeOptions::bind_to_browser`], in the browser that
    /// presents `browser` (read from its cookie). Like [`complete`](Self::complete), and
    /// before any token request: a flow bound to another browser, or to none, is refused with
    /// [`ErrorKind::BrowserMismatch`], and its state is used up so it cannot be completed later.
    #[tracing::instrument(skip_all, fields(environment = %self.inner.config.environment().name()))]
    pub async fn complete_in_browser(
        &self,
        callback_query: &str,
        browser: &BrowserBinding,
    ) -> Result<Connection> {
        self.finish(callback_query, Some(browser)).await
    }

    async fn finish(
        &self,
        callback_query: &str,
        browser: Option<&BrowserBinding>,
    ) -> Result<Connection> {
        let callback = callback::parse(callback_query)?;
        let pending = self.consume(&callback.state).await?;
        self.inner
            .config
            .server()
            .check_issuer(callback.iss.as_deref())?;
        check_browser(&pending, browser)?;
        let code = match callback.outcome {
            Outcome::Code(code) => code,
            Outcome::Refused(err) => {
                tracing::info!(kind = ?err.kind(), "the authorization was refused");
                return Err(err);
            }
        };
        let inner = &self.inner;
        let answer = token::exchange_code(
            &inner.http,
            &inner.token_endpoint,
            inner.clock.now(),
            &code,
            &pending.verifier,
            &pending.redirect_uri,
        )
        .await?;
        let Some(mut held) = Held::connecting(inner, &answer) else {
            return Err(answer
                .access
                .err()
                .unwrap_or_else(|| Error::unexpected("the token response holds no token")));
        };
        // Install before judging: the tokens are in the store before anything may fail.
        held.save(inner).await;
        match self.settle(&pending, &mut held, answer.access).await {
            Ok(connection) => {
                held.discard(inner).await;
                inner.emit(OAuthEvent::Connected {
                    subject: connection.subject,
                    tenant: connection.tenant.clone(),
                    reconnected: connection.reconnected,
                });
                Ok(connection)
            }
            Err(err) => {
                let subject = held.record.subject;
                let disposal = held.dispose(inner, DanglingReason::Refused).await;
                if disposal != Disposal::Revoked {
                    inner.emit(OAuthEvent::GrantDangling {
                        subject,
                        reason: DanglingReason::Refused,
                        unsafe_to_revoke: disposal == Disposal::Unsafe,
                    });
                }
                Err(err)
            }
        }
    }

    /// Turns held tokens into a stored connection, or says why not.
    async fn settle(
        &self,
        pending: &PendingAuthorization,
        held: &mut Held,
        access: Result<Access>,
    ) -> Result<Connection> {
        let inner = &self.inner;
        let access = match access {
            Ok(access) => access,
            Err(judgement) => {
                // The server issued a refresh token but nothing usable with it: one refresh
                // (its answer stored before it is judged) makes the grant usable.
                let Some(refresh) = held.record.refresh_token.clone() else {
                    return Err(judgement);
                };
                tracing::info!("the code exchange gave no usable access token; refreshing once");
                let again = token::refresh(
                    &inner.http,
                    &inner.token_endpoint,
                    inner.clock.now(),
                    &refresh,
                )
                .await?;
                held.rotate(inner, &again);
                held.save(inner).await;
                again.access?
            }
        };
        let refresh_token = held
            .record
            .refresh_token
            .clone()
            .ok_or_else(|| Error::unexpected("the token response has no refresh token"))?;
        let lifetime = access.expires_in.unwrap_or(inner.policy.assumed_lifetime);
        let received = inner.clock.timestamp();
        let (subject, introspected_scopes) = resolve_subject(inner, &access.access_token).await?;
        held.record.subject = Some(subject);
        held.save(inner).await;
        if let Some(expected) = pending.expected_subject
            && expected != subject
        {
            tracing::warn!(%expected, actual = %subject, "another company was connected than expected; nothing stored");
            return Err(Error::new(
                ErrorKind::WrongCompany {
                    expected,
                    actual: subject,
                },
                "the customer connected another company than expected",
            ));
        }
        let scopes = match introspected_scopes.filter(|s| !s.is_empty()) {
            Some(scopes) => scopes,
            None => access.scopes.unwrap_or_else(|| pending.scopes.clone()),
        };
        let key = CredentialKey::new(
            inner.config.environment().name().clone(),
            inner.config.client_id().clone(),
            subject,
        );
        let fresh = OAuthGrant {
            tenant: pending.tenant.clone(),
            ..OAuthGrant::connected(
                key,
                access.access_token.clone(),
                refresh_token,
                scopes.clone(),
                received,
                lifetime,
            )
        };
        let (written, link) = match &pending.tenant {
            None => (write_grant(inner, fresh).await?, None),
            Some(tenant) => {
                let request = LinkRequest {
                    environment: inner.config.environment().name().clone(),
                    tenant: tenant.clone(),
                    subject,
                    credential_kind: CredentialKind::OAuth,
                    client_id: inner.config.client_id().clone(),
                    relink: pending.relink,
                };
                match inner
                    .links
                    .link_with(&request, write_grant(inner, fresh))
                    .await
                {
                    Ok((written, outcome)) => (written, Some(outcome)),
                    Err(LinkError::Write(e)) => return Err(e),
                    Err(LinkError::Link(e)) if is_conflict(&e) => {
                        return Err(Error::new(
                            ErrorKind::TenantConflict {
                                tenant: tenant.clone(),
                                subject,
                            },
                            "the tenant or the company is already linked to another party",
                        )
                        .with_source(e));
                    }
                    Err(LinkError::Link(e)) => {
                        return Err(Error::store("linking the tenant failed", e));
                    }
                }
            }
        };
        let Written {
            record,
            version,
            replaced,
        } = written;
        let reconnected = replaced.is_some();
        if let Some(old) = replaced {
            self.handle_replaced(&old, &record).await;
        }
        let tenant = record.tenant.clone();
        inner.seed(record, version, lifetime);
        Ok(Connection {
            subject,
            scopes,
            tenant,
            link,
            reconnected,
        })
    }

    /// A reconnect replaced `old`: with an RFC 7009 endpoint its refresh token is revoked
    /// (exactly that token). With Pleo nothing can end it without ending the new grant too
    /// (deleting the installation ends every token of the company), so it is recorded as
    /// dangling and unsafe to revoke.
    async fn handle_replaced(&self, old: &OAuthGrant, new: &OAuthGrant) {
        let inner = &self.inner;
        let same = match (&old.refresh_token, &new.refresh_token) {
            (Some(a), Some(b)) => a.expose_secret() == b.expose_secret(),
            _ => false,
        };
        if same {
            return;
        }
        let Some(mut held) = Held::replaced(inner, old) else {
            return;
        };
        if inner.config.server().revocation_endpoint().is_none() {
            held.record.revocation = RevocationState::Unsafe;
            held.save(inner).await;
            inner.emit(OAuthEvent::GrantDangling {
                subject: Some(old.subject),
                reason: DanglingReason::Replaced,
                unsafe_to_revoke: true,
            });
            return;
        }
        held.save(inner).await;
        let disposal = held.dispose(inner, DanglingReason::Replaced).await;
        if disposal != Disposal::Revoked {
            inner.emit(OAuthEvent::GrantDangling {
                subject: Some(old.subject),
                reason: DanglingReason::Replaced,
                unsafe_to_revoke: disposal == Disposal::Unsafe,
            });
        }
    }

    /// Reads and deletes the pending authorization of `state` (single use).
    async fn consume(&self, state: &str) -> Result<PendingAuthorization> {
        let inner = &self.inner;
        let key = self.pending_key(state);
        let (pending, version) = inner
            .store
            .get_record::<PendingAuthorization>(&key)
            .await
            .map_err(|e| Error::store("reading the pending authorization failed", e))?
            .ok_or_else(unknown_state)?;
        match inner
            .store
            .delete(&key, Precondition::Version(version))
            .await
        {
            Ok(()) => {}
            Err(e) if is_conflict(&e) => return Err(unknown_state()),
            Err(e) => {
                return Err(Error::store(
                    "consuming the pending authorization failed",
                    e,
                ));
            }
        }
        if pending.environment != *inner.config.environment().name()
            || pending.client_id != *inner.config.client_id()
        {
            return Err(unknown_state());
        }
        if inner.clock.timestamp() >= pending.expires_at {
            return Err(Error::new(
                ErrorKind::StateExpired,
                "the authorization request has expired",
            ));
        }
        Ok(pending)
    }
}

/// The callback must come from the browser the flow was bound to, and only a bound flow may be
/// completed with a browser binding.
fn check_browser(pending: &PendingAuthorization, browser: Option<&BrowserBinding>) -> Result<()> {
    let same = match (&pending.browser_binding, browser) {
        (None, None) => true,
        (Some(stored), Some(browser)) => {
            constant_time_eq(stored, &hex_digest(browser.expose_secret()))
        }
        _ => false,
    };
    if same {
        return Ok(());
    }
    tracing::warn!(
        bound = pending.browser_binding.is_some(),
        presented = browser.is_some(),
        "the callback came from another browser than the one that started the flow; refused"
    );
    Err(Error::new(
        ErrorKind::BrowserMismatch,
        "the callback came from another browser than the one that started the flow",
    ))
}

fn unknown_state() -> Error {
    Error::new(
        ErrorKind::UnknownState,
        "the callback state is unknown, used or not ours",
    )
}

/// A grant as written by [`write_grant`].
struct Written {
    record: OAuthGrant,
    version: Version,
    /// The earlier grant of the same subject it replaced, if any.
    replaced: Option<OAuthGrant>,
}

/// Writes a new grant, replacing an earlier one of the same subject and keeping its settings,
/// creation time and tenant.
async fn write_grant(inner: &Inner, fresh: OAuthGrant) -> Result<Written> {
    let key = layout::oauth_grant(&inner.credential_key(fresh.subject));
    let updated = inner
        .store
        .update::<OAuthGrant, _, Infallible, _>(&key, |existing| {
            Ok(match existing {
                None => (Change::Put(fresh.clone()), None),
                Some((old, _)) => {
                    let mut record = fresh.clone();
                    record.settings = old.settings.clone();
                    record.created_at = old.created_at;
                    record.tenant = fresh.tenant.clone().or(old.tenant.clone());
                    record.generation = old.generation + 1;
                    (Change::Put(record), Some(old))
                }
            })
        })
        .await;
    match updated {
        Ok((Updated::Written(record, version), replaced)) => Ok(Written {
            record,
            version,
            replaced,
        }),
        Ok((Updated::Deleted | Updated::Kept, _)) => Err(Error::unexpected(
            "the grant was not written, though every decision writes it",
        )),
        Err(UpdateError::Read(e)) => Err(Error::store("reading the existing grant failed", e)),
        Err(UpdateError::Write(e)) => Err(Error::store("storing the grant failed", e)),
        Err(UpdateError::Contended) => Err(Error::new(
            ErrorKind::Store(CoreKind::Conflict),
            "the grant kept changing while it was stored",
        )),
        Err(UpdateError::Rejected(never)) => match never {},
    }
}
