//! Disconnecting a grant: ending it at the authorization server (RFC 7009 revocation of its
//! refresh token, or Pleo's `DELETE /v1/installations/me`), or leaving a tombstone whose
//! revocation is retried.

use std::sync::{Arc, Weak};

use pleo_auth_core::{ErrorKind as CoreKind, Subject};
use pleo_auth_http::api;
use tracing::Instrument;

use crate::error::{Error, ErrorKind, Result};
use crate::events::OAuthEvent;
use crate::grant::cell::{ActiveToken, GrantCell};
use crate::grant::flight::obtain;
use crate::grant::persist::write_status;
use crate::grant::phase::{Life, Trigger, not_connected, revoke_locally, tombstone};
use crate::inner::Inner;

/// What [`TokenManager::disconnect`](crate::TokenManager::disconnect) achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectOutcome {
    /// The authorization server ended the grant (or it was gone already); the record is marked
    /// revoked and its tokens are discarded.
    Revoked,
    /// The server could not be reached; the record is a tombstone (revoked locally, tokens
    /// kept) and the revocation is retried in the background and by
    /// [`TokenManager::keep_alive`](crate::TokenManager::keep_alive).
    RevocationPending,
    /// The server could not be asked (the grant needed reauthorization, or the server refused
    /// its token); the record is marked revoked locally.
    LocalOnly,
}

pub(crate) async fn disconnect(inner: &Arc<Inner>, subject: Subject) -> Result<DisconnectOutcome> {
    let cell = inner.cell_or_insert(subject);
    if let Err(err) = inner.reconcile(&cell).await {
        if err.kind() == &ErrorKind::NotConnected {
            inner.forget(&subject, &cell);
        }
        return Err(err);
    }
    let life = cell.lock().phase.life();
    match life {
        Life::Unloaded => return Err(not_connected()),
        Life::RevocationPending => return retry_revocation(inner, subject).await,
        Life::Revoked => return Ok(DisconnectOutcome::Revoked),
        Life::NeedsReauthorization => return finish_locally(inner, &cell).await,
        Life::Active => {}
    }
    if inner.config.server().revocation_endpoint().is_some() {
        return revoke_at_endpoint(inner, &cell).await;
    }
    let token = match obtain(inner, subject, Trigger::Fresh).await {
        Ok(token) => token,
        Err(err) if err.kind() == &ErrorKind::NeedsReauthorization => {
            return finish_locally(inner, &cell).await;
        }
        Err(err) if err.is_retryable() => {
            return leave_tombstone(inner, &cell).await;
        }
        Err(err) => return Err(err),
    };
    revoke_at_pleo(inner, &cell, &token).await
}

/// RFC 7009: revokes the grant's refresh token at the configured revocation endpoint and
/// records the outcome. No access token is needed, so nothing is refreshed first.
async fn revoke_at_endpoint(
    inner: &Arc<Inner>,
    cell: &Arc<GrantCell>,
) -> Result<DisconnectOutcome> {
    match revoke_refresh_token(inner, cell).await {
        Ok(outcome) => Ok(outcome),
        Err(err) if err.is_retryable() => {
            tracing::debug!(error = %err, "revocation failed; leaving a tombstone");
            leave_tombstone(inner, cell).await
        }
        Err(err) => {
            tracing::warn!(error = %err, "the revocation endpoint refused to revoke the grant; disconnected locally");
            finish_locally(inner, cell).await
        }
    }
}

/// One RFC 7009 revocation of the grant's refresh token; on success the record is marked
/// revoked. A grant without a refresh token is finished locally.
async fn revoke_refresh_token(
    inner: &Arc<Inner>,
    cell: &Arc<GrantCell>,
) -> std::result::Result<DisconnectOutcome, pleo_auth_core::Error> {
    let Some(endpoint) = inner.config.server().revocation_endpoint() else {
        return Err(pleo_auth_core::Error::new(
            CoreKind::Config,
            "no revocation endpoint is configured",
        ));
    };
    let refresh = {
        let st = cell.lock();
        st.phase.record().and_then(|r| r.refresh_token.clone())
    };
    let Some(refresh) = refresh else {
        return finish_locally(inner, cell).await.map_err(Into::into);
    };
    crate::dangling::revoke_token(inner, endpoint, refresh.expose_secret(), "refresh_token")
        .await?;
    write_status(inner, cell, revoke_locally).await?;
    inner.emit(OAuthEvent::Disconnected {
        subject: cell.subject,
        revoked_at_pleo: true,
    });
    Ok(DisconnectOutcome::Revoked)
}

/// Calls `DELETE /v1/installations/me` with `token` and records the outcome.
async fn revoke_at_pleo(
    inner: &Arc<Inner>,
    cell: &Arc<GrantCell>,
    token: &ActiveToken,
) -> Result<DisconnectOutcome> {
    let result = api::delete_installation(
        &inner.http,
        inner.config.environment(),
        &token.credential.header,
        cell.subject.company(),
    )
    .await;
    match result {
        Ok(()) => {
            write_status(inner, cell, revoke_locally).await?;
            inner.emit(OAuthEvent::Disconnected {
                subject: cell.subject,
                revoked_at_pleo: true,
            });
            Ok(DisconnectOutcome::Revoked)
        }
        Err(err) if err.is_retryable() => {
            tracing::debug!(error = %err, "revocation at pleo failed; leaving a tombstone");
            leave_tombstone(inner, cell).await
        }
        Err(err)
            if matches!(
                err.kind(),
                CoreKind::Unauthenticated | CoreKind::PermissionDenied
            ) =>
        {
            finish_locally(inner, cell).await
        }
        Err(err) => {
            Err(Error::unexpected("pleo refused to delete the installation").with_source(err))
        }
    }
}

async fn finish_locally(inner: &Arc<Inner>, cell: &Arc<GrantCell>) -> Result<DisconnectOutcome> {
    write_status(inner, cell, revoke_locally).await?;
    inner.emit(OAuthEvent::Disconnected {
        subject: cell.subject,
        revoked_at_pleo: false,
    });
    Ok(DisconnectOutcome::LocalOnly)
}

async fn leave_tombstone(inner: &Arc<Inner>, cell: &Arc<GrantCell>) -> Result<DisconnectOutcome> {
    write_status(inner, cell, tombstone).await?;
    inner.emit(OAuthEvent::Disconnected {
        subject: cell.subject,
        revoked_at_pleo: false,
    });
    let spawn = !std::mem::replace(&mut cell.lock().revoke_task, true);
    if spawn {
        let span = tracing::info_span!("pleo_auth_revoke", subject = %cell.subject);
        tokio::spawn(revoke_loop(Arc::downgrade(inner), cell.subject).instrument(span));
    }
    Ok(DisconnectOutcome::RevocationPending)
}

/// Retries the revocation of a tombstoned grant.
pub(crate) async fn retry_revocation(
    inner: &Arc<Inner>,
    subject: Subject,
) -> Result<DisconnectOutcome> {
    let cell = inner.cell_or_insert(subject);
    inner.reconcile(&cell).await?;
    if cell.lock().phase.life() != Life::RevocationPending {
        return Ok(DisconnectOutcome::Revoked);
    }
    if inner.config.server().revocation_endpoint().is_some() {
        return match revoke_refresh_token(inner, &cell).await {
            Ok(outcome) => Ok(outcome),
            Err(err) if err.is_retryable() => Ok(DisconnectOutcome::RevocationPending),
            Err(_) => finish_locally(inner, &cell).await,
        };
    }
    let token = match obtain(inner, subject, Trigger::Revoke).await {
        Ok(token) => token,
        Err(err) if err.is_retryable() => return Ok(DisconnectOutcome::RevocationPending),
        Err(err) if err.kind() == &ErrorKind::NeedsReauthorization => {
            return finish_locally(inner, &cell).await;
        }
        Err(err) => return Err(err),
    };
    let result = api::delete_installation(
        &inner.http,
        inner.config.environment(),
        &token.credential.header,
        subject.company(),
    )
    .await;
    match result {
        Ok(()) => {
            write_status(inner, &cell, revoke_locally).await?;
            inner.emit(OAuthEvent::Disconnected {
                subject,
                revoked_at_pleo: true,
            });
            Ok(DisconnectOutcome::Revoked)
        }
        Err(err) if err.is_retryable() => Ok(DisconnectOutcome::RevocationPending),
        Err(err)
            if matches!(
                err.kind(),
                CoreKind::Unauthenticated | CoreKind::PermissionDenied
            ) =>
        {
            finish_locally(inner, &cell).await
        }
        Err(err) => {
            Err(Error::unexpected("pleo refused to delete the installation").with_source(err))
        }
    }
}

/// Retries a pending revocation with backoff until it succeeds, fails for good, or the manager
/// is dropped.
async fn revoke_loop(inner: Weak<Inner>, subject: Subject) {
    let mut attempt = 0u32;
    loop {
        attempt = attempt.saturating_add(1);
        let Some(delay) = inner.upgrade().map(|i| i.policy.persist_backoff(attempt)) else {
            return;
        };
        tokio::time::sleep(delay).await;
        let Some(strong) = inner.upgrade() else {
            return;
        };
        match retry_revocation(&strong, subject).await {
            Ok(DisconnectOutcome::RevocationPending) => {}
            Err(err) if err.is_retryable() => {}
            other => {
                if let Err(err) = &other {
                    tracing::warn!(kind = ?err.kind(), "pending revocation failed for good");
                }
                if let Some(cell) = strong.cell(&subject) {
                    cell.lock().revoke_task = false;
                }
                return;
            }
        }
    }
}
