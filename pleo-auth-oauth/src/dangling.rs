//! Grants we do not keep: held while a connection completes, revoked when refused or replaced.
//!
//! The rule is "revoke what we don't keep, never what we keep":
//! - With an RFC 7009 revocation endpoint, exactly the unwanted refresh token is revoked.
//! - With Pleo, which documents no revocation endpoint, the only way to end a grant is
//!   `DELETE /v1/installations/me`, which ends **every** token of the client for that company.
//!   It is called only when no grant of that company is kept in this environment; otherwise the
//!   unwanted grant is recorded as [`RevocationState::Unsafe`] and shown by `status` until it
//!   becomes safe (the kept grant is disconnected) or dies by itself.
//! - A revocation that failed transiently is [`RevocationState::Pending`] and retried by
//!   [`TokenManager::keep_alive`](crate::TokenManager::keep_alive).
//!
//! The tokens of a connection being completed are written to a dangling record
//! ([`DanglingReason::Connecting`]) right after the code exchange, before anything is judged,
//! so a crash or an error between the exchange and the stored grant never leaves a live grant
//! that nobody knows about.

use std::fmt;
use std::time::Duration;

use pleo_auth_core::{
    AccessToken, AuthorizationHeader, CredentialStatus, DanglingGrant, DanglingReason,
    ErrorKind as CoreKind, OAuthGrant, Precondition, RecordStoreExt, RefreshToken, RevocationState,
    StoreKey, Subject, Timestamp, Version, is_conflict, layout,
};
use pleo_auth_http::api;
use pleo_auth_http::transport::{DEFAULT_MAX_BODY_BYTES, read_body_capped, transport_error};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use sha2::{Digest as _, Sha256};
use url::form_urlencoded;

use crate::error::{Error, ErrorKind, Result};
use crate::inner::Inner;
use crate::token::{self, Access, Answer};

/// How many times a dangling record is written before its write is given up (logged).
const WRITE_ATTEMPTS: u32 = 3;

/// What happened to a grant we did not keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disposal {
    /// Revoked at the authorization server (or it was dead already); nothing is left.
    Revoked,
    /// Recorded as dangling: the revocation failed and is retried by keep-alive.
    RetryLater,
    /// Recorded as dangling: revoking it would end a grant that is kept.
    Unsafe,
}

/// A dangling grant as `status` shows it, without secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DanglingStatus {
    /// The company or organisation, if it was learned.
    pub subject: Option<Subject>,
    /// Why it is not kept.
    pub reason: DanglingReason,
    /// Whether revoking it is being retried or would be unsafe.
    pub revocation: RevocationState,
    /// Revocation attempts so far.
    pub attempts: u32,
    /// When the grant was issued.
    pub created_at: Timestamp,
}

impl DanglingStatus {
    pub(crate) fn of(record: &DanglingGrant) -> Self {
        Self {
            subject: record.subject,
            reason: record.reason,
            revocation: record.revocation,
            attempts: record.attempts,
            created_at: record.created_at,
        }
    }
}

/// A grant in our hands that is not (yet) kept as a connection, and its dangling record.
pub(crate) struct Held {
    key: StoreKey,
    pub(crate) record: DanglingGrant,
    version: Option<Version>,
}

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Held")
            .field("key", &self.key)
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// The store id of a dangling grant: a digest of its first token, never the token.
fn id_of(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

impl Held {
    /// Tokens of a new grant, from a code exchange's answer. `None` when the answer holds no
    /// token at all.
    pub(crate) fn connecting(inner: &Inner, answer: &Answer) -> Option<Self> {
        let now = inner.clock.timestamp();
        let access = answer.access.as_ref().ok();
        let first = answer
            .refresh_token
            .as_ref()
            .map(|t| t.expose_secret())
            .or(access.map(|a| a.access_token.expose_secret()))?;
        let key = layout::dangling_grant(
            inner.config.environment().name(),
            inner.config.client_id(),
            &id_of(first),
        );
        let mut record = DanglingGrant {
            environment: inner.config.environment().name().clone(),
            client_id: inner.config.client_id().clone(),
            subject: None,
            reason: DanglingReason::Connecting,
            revocation: RevocationState::Pending,
            access_token: None,
            access_token_expires_at: None,
            refresh_token: answer.refresh_token.clone(),
            attempts: 0,
            created_at: now,
            updated_at: now,
        };
        if let Some(access) = access {
            set_access(inner, &mut record, access);
        }
        Some(Self {
            key,
            record,
            version: None,
        })
    }

    /// A grant replaced by a reconnect.
    pub(crate) fn replaced(inner: &Inner, old: &OAuthGrant) -> Option<Self> {
        let refresh = old.refresh_token.as_ref()?;
        let now = inner.clock.timestamp();
        Some(Self {
            key: layout::dangling_grant(
                &old.environment,
                &old.client_id,
                &id_of(refresh.expose_secret()),
            ),
            record: DanglingGrant {
                environment: old.environment.clone(),
                client_id: old.client_id.clone(),
                subject: Some(old.subject),
                reason: DanglingReason::Replaced,
                revocation: RevocationState::Pending,
                access_token: old.access_token.clone(),
                access_token_expires_at: old.access_token_expires_at,
                refresh_token: Some(refresh.clone()),
                attempts: 0,
                created_at: now,
                updated_at: now,
            },
            version: None,
        })
    }

    /// Takes in a rotation: the new refresh token, and the access token if usable.
    pub(crate) fn rotate(&mut self, inner: &Inner, answer: &Answer) {
        if let Some(rotated) = &answer.refresh_token {
            self.record.refresh_token = Some(rotated.clone());
        }
        match &answer.access {
            Ok(access) => set_access(inner, &mut self.record, access),
            Err(_) => {
                self.record.access_token = None;
                self.record.access_token_expires_at = None;
            }
        }
    }

    /// Writes the record (create, or compare-and-swap on the version we wrote), retrying a few
    /// times. A write that cannot be made is logged: the tokens stay in memory for this call.
    pub(crate) async fn save(&mut self, inner: &Inner) {
        self.record.updated_at = inner.clock.timestamp();
        for attempt in 1..=WRITE_ATTEMPTS {
            let precondition = match &self.version {
                Some(version) => Precondition::Version(version.clone()),
                None => Precondition::Absent,
            };
            match inner
                .store
                .put_record(&self.key, &self.record, precondition)
                .await
            {
                Ok(version) => {
                    self.version = Some(version);
                    return;
                }
                Err(e) if is_conflict(&e) => {
                    // Someone else (a keep-alive sweep) changed it: take its version, keep ours.
                    match inner.store.get_record::<DanglingGrant>(&self.key).await {
                        Ok(Some((_, version))) => self.version = Some(version),
                        Ok(None) => self.version = None,
                        Err(_) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(kind = %e.kind(), attempt, "storing a dangling grant failed");
                    if attempt < WRITE_ATTEMPTS {
                        tokio::time::sleep(inner.policy.persist_backoff(attempt)).await;
                    }
                }
            }
        }
    }

    /// Forgets the record: the grant is kept as a connection now, or is gone.
    pub(crate) async fn discard(self, inner: &Inner) {
        let Some(version) = self.version else {
            return;
        };
        if let Err(e) = inner
            .store
            .delete(&self.key, Precondition::Version(version))
            .await
            && !is_conflict(&e)
        {
            tracing::warn!(kind = %e.kind(), "removing a settled dangling record failed; keep-alive removes it");
        }
    }

    /// Revokes the grant if that is safe, or records why not.
    pub(crate) async fn dispose(mut self, inner: &Inner, reason: DanglingReason) -> Disposal {
        self.record.reason = reason;
        let outcome = revoke(inner, &mut self).await;
        let subject = self.record.subject;
        match outcome {
            Disposal::Revoked => self.discard(inner).await,
            Disposal::RetryLater | Disposal::Unsafe => {
                self.record.revocation = if outcome == Disposal::Unsafe {
                    RevocationState::Unsafe
                } else {
                    RevocationState::Pending
                };
                self.save(inner).await;
            }
        }
        tracing::info!(
            reason = reason.as_str(),
            outcome = ?outcome,
            subject = ?subject,
            "an unwanted grant was handled"
        );
        outcome
    }
}

fn set_access(inner: &Inner, record: &mut DanglingGrant, access: &Access) {
    let lifetime = access.expires_in.unwrap_or(inner.policy.assumed_lifetime);
    record.access_token = Some(access.access_token.clone());
    record.access_token_expires_at = Some(inner.clock.timestamp().saturating_add(lifetime));
}

/// Whether a grant of `subject` is kept in this environment (any record not disconnected).
async fn kept(inner: &Inner, subject: Subject) -> Result<Option<OAuthGrant>> {
    let key = layout::oauth_grant(&inner.credential_key(subject));
    let found = inner
        .store
        .get_record::<OAuthGrant>(&key)
        .await
        .map_err(|e| Error::store("reading the kept grant failed", e))?;
    Ok(found
        .map(|(record, _)| record)
        .filter(|record| record.status != CredentialStatus::Revoked))
}

/// One revocation attempt under the rules of this module.
async fn revoke(inner: &Inner, held: &mut Held) -> Disposal {
    held.record.attempts = held.record.attempts.saturating_add(1);
    if let Some(endpoint) = inner.config.server().revocation_endpoint() {
        let (token, hint) = match (&held.record.refresh_token, &held.record.access_token) {
            (Some(refresh), _) => (refresh.expose_secret(), "refresh_token"),
            (None, Some(access)) => (access.expose_secret(), "access_token"),
            (None, None) => return Disposal::Revoked,
        };
        return match revoke_token(inner, endpoint, token, hint).await {
            Ok(()) => Disposal::Revoked,
            Err(e) => {
                tracing::warn!(kind = %e.kind(), "revoking an unwanted grant failed; retried by keep-alive");
                Disposal::RetryLater
            }
        };
    }
    // Pleo: ending the grant ends every token of the company; only when we keep none of it.
    let subject = match held.record.subject {
        Some(subject) => subject,
        None => match usable_access(inner, held).await {
            Some(access) => match crate::subject::resolve_subject(inner, &access).await {
                Ok((subject, _)) => {
                    held.record.subject = Some(subject);
                    subject
                }
                Err(_) => return Disposal::RetryLater,
            },
            None if held.record.refresh_token.is_none() => return Disposal::Revoked,
            None => return Disposal::RetryLater,
        },
    };
    match kept(inner, subject).await {
        Ok(Some(_)) => return Disposal::Unsafe,
        Ok(None) => {}
        Err(_) => return Disposal::RetryLater,
    }
    // Two tries: an access token Pleo no longer accepts is replaced by refreshing once.
    for _ in 0..2 {
        let Some(access) = usable_access(inner, held).await else {
            return if held.record.refresh_token.is_none() {
                Disposal::Revoked
            } else {
                Disposal::RetryLater
            };
        };
        let header = AuthorizationHeader::bearer(&access);
        match api::delete_installation(
            &inner.http,
            inner.config.environment(),
            &header,
            subject.company(),
        )
        .await
        {
            Ok(()) => return Disposal::Revoked,
            Err(e) if matches!(e.kind(), CoreKind::Unauthenticated) => {
                // The access token is dead; the grant is too if refreshing it fails as well.
                held.record.access_token = None;
                held.record.access_token_expires_at = None;
            }
            Err(e) => {
                tracing::warn!(kind = %e.kind(), "deleting the installation of an unwanted grant failed; retried by keep-alive");
                return Disposal::RetryLater;
            }
        }
    }
    Disposal::RetryLater
}

/// The held access token while it is fresh; else refreshes the held grant (storing the rotated
/// pair in the dangling record before using it). `None` when there is none to be had.
async fn usable_access(inner: &Inner, held: &mut Held) -> Option<AccessToken> {
    let now = inner.clock.timestamp();
    let fresh = held
        .record
        .access_token_expires_at
        .is_some_and(|at| at > now.saturating_add(inner.policy.refresh_margin));
    if fresh && let Some(access) = &held.record.access_token {
        return Some(access.clone());
    }
    let refresh: RefreshToken = held.record.refresh_token.clone()?;
    match token::refresh(
        &inner.http,
        &inner.token_endpoint,
        inner.clock.now(),
        &refresh,
    )
    .await
    {
        Ok(answer) => {
            held.rotate(inner, &answer);
            held.save(inner).await;
            held.record.access_token.clone()
        }
        Err(e) if e.kind() == &ErrorKind::NeedsReauthorization => {
            // The grant is dead: nothing is left to revoke.
            held.record.refresh_token = None;
            held.record.access_token = None;
            None
        }
        Err(_) => None,
    }
}

/// RFC 7009: `POST {endpoint}` with `token` and `token_type_hint`, client_secret_basic. A
/// 200 (also for a token the server no longer knows) is success; 503 and transport failures
/// are retryable.
pub(crate) async fn revoke_token(
    inner: &Inner,
    endpoint: &url::Url,
    token: &str,
    hint: &str,
) -> pleo_auth_core::Result<()> {
    let body = zeroize::Zeroizing::new(
        form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .append_pair("token_type_hint", hint)
            .finish(),
    );
    let basic = token::basic_auth(inner.config.client_id(), inner.config.client_secret());
    let mut authorization = HeaderValue::from_str(&basic).map_err(|_| {
        pleo_auth_core::Error::new(
            CoreKind::Config,
            "the client id or secret cannot be sent in a header",
        )
    })?;
    authorization.set_sensitive(true);
    let response = inner
        .http
        .post(endpoint.clone())
        .header(AUTHORIZATION, authorization)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(body.as_str().to_owned())
        .send()
        .await
        .map_err(transport_error)?;
    let status = response.status();
    let _ = read_body_capped(response, DEFAULT_MAX_BODY_BYTES).await;
    if status.is_success() {
        return Ok(());
    }
    Err(pleo_auth_core::Error::new(
        pleo_auth_http::transport::status_kind(status),
        format!("the revocation endpoint answered HTTP {}", status.as_u16()),
    ))
}

/// Every dangling grant of this client and environment, with its store key and version.
pub(crate) async fn list(inner: &Inner) -> Result<Vec<(StoreKey, DanglingGrant, Version)>> {
    let prefix =
        layout::dangling_grants(inner.config.environment().name(), inner.config.client_id());
    let keys = inner
        .store
        .list(&prefix)
        .await
        .map_err(|e| Error::store("listing dangling grants failed", e))?;
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        match inner.store.get_record::<DanglingGrant>(&key).await {
            Ok(Some((record, version))) => out.push((key, record, version)),
            Ok(None) => {}
            Err(e) => return Err(Error::store("reading a dangling grant failed", e)),
        }
    }
    Ok(out)
}

/// What a keep-alive sweep did with one dangling grant.
pub(crate) enum Swept {
    /// Revoked, or it turned out to be kept after all: the record is gone.
    Settled,
    /// Still dangling, as it is now.
    Left(DanglingStatus),
    /// Skipped: a connection may still be completing it.
    Young,
}

/// Retries one dangling grant: a connection that never completed (older than the pending
/// authorization lifetime plus `grace`), a pending revocation, or an unsafe one that may have
/// become safe.
pub(crate) async fn sweep_one(
    inner: &Inner,
    key: StoreKey,
    record: DanglingGrant,
    version: Version,
    grace: Duration,
) -> Result<Swept> {
    let now = inner.clock.timestamp();
    if record.reason == DanglingReason::Connecting {
        let settled_after = record
            .created_at
            .saturating_add(inner.config.pending_ttl() + grace);
        if now < settled_after {
            return Ok(Swept::Young);
        }
        // A connection that stopped after its grant was stored but before this record was
        // removed: the grant is kept (never revoke what we keep), the record is only litter.
        if let Some(subject) = record.subject
            && let Some(kept) = kept(inner, subject).await?
            && kept.created_at >= record.created_at
        {
            let held = Held {
                key,
                record,
                version: Some(version),
            };
            held.discard(inner).await;
            return Ok(Swept::Settled);
        }
    }
    let reason = match record.reason {
        DanglingReason::Connecting => DanglingReason::Refused,
        other => other,
    };
    let mut status = DanglingStatus::of(&record);
    let held = Held {
        key,
        record,
        version: Some(version),
    };
    Ok(match held.dispose(inner, reason).await {
        Disposal::Revoked => Swept::Settled,
        left => {
            status.reason = reason;
            status.attempts = status.attempts.saturating_add(1);
            status.revocation = if left == Disposal::Unsafe {
                RevocationState::Unsafe
            } else {
                RevocationState::Pending
            };
            Swept::Left(status)
        }
    })
}
