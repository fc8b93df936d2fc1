//! Events about connections and refreshes, for the integrator's monitoring and UI.

use std::fmt;
use std::sync::Arc;

use pleo_auth_core::{DanglingReason, Subject, TenantId};

use crate::error::ErrorKind;

/// Something that happened to a grant. Events carry ids, never secret values.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OAuthEvent {
    /// [`OAuthClient::complete`](crate::OAuthClient::complete) stored a grant.
    Connected {
        /// The company or organisation.
        subject: Subject,
        /// The linked tenant, if any.
        tenant: Option<TenantId>,
        /// Whether an earlier grant of this subject was replaced.
        reconnected: bool,
    },
    /// A refresh rotated the grant's tokens.
    Refreshed {
        /// The company or organisation.
        subject: Subject,
        /// The grant's generation after the rotation.
        generation: u64,
    },
    /// Another replica had rotated the tokens already; this one adopted them from the store.
    Adopted {
        /// The company or organisation.
        subject: Subject,
        /// The adopted generation.
        generation: u64,
    },
    /// A refresh failed; the grant is unchanged.
    RefreshFailed {
        /// The company or organisation.
        subject: Subject,
        /// Why.
        kind: ErrorKind,
        /// Whether a later refresh may succeed.
        retryable: bool,
    },
    /// Pleo refused the grant (`invalid_grant`); the customer must consent again.
    ReauthorizationRequired {
        /// The company or organisation.
        subject: Subject,
    },
    /// Rotated tokens could not be written to the store; they are kept in memory, served, and
    /// written again with backoff.
    PersistPending {
        /// The company or organisation.
        subject: Subject,
        /// The generation held in memory.
        generation: u64,
    },
    /// Tokens that were pending are now in the store.
    PersistRecovered {
        /// The company or organisation.
        subject: Subject,
        /// The generation written.
        generation: u64,
    },
    /// A grant the server issued is not kept (refused at connect, or replaced by a reconnect)
    /// and could not be revoked yet: it is recorded as dangling. See
    /// [`TokenManager::dangling`](crate::TokenManager::dangling).
    GrantDangling {
        /// The company or organisation, if it was learned.
        subject: Option<Subject>,
        /// Why it is not kept.
        reason: DanglingReason,
        /// Revoking it would end a grant that is kept (so it is left alone); otherwise the
        /// revocation is retried by keep-alive.
        unsafe_to_revoke: bool,
    },
    /// A stored grant record could not be read (corrupt, a newer schema, stored at the wrong
    /// key); keep-alive leaves it as it is and goes on with the others.
    RecordUnreadable {
        /// The company or organisation, if the record's key names one.
        subject: Option<Subject>,
        /// Why.
        kind: ErrorKind,
    },
    /// A grant was disconnected.
    Disconnected {
        /// The company or organisation.
        subject: Subject,
        /// Whether Pleo confirmed the revocation; `false` leaves a tombstone that is retried.
        revoked_at_pleo: bool,
    },
}

/// Receives [`OAuthEvent`]s. Called inline on the refresh path: return quickly and never block.
pub trait EventSink: Send + Sync + fmt::Debug + 'static {
    /// Handles one event.
    fn emit(&self, event: &OAuthEvent);
}

impl<T: EventSink + ?Sized> EventSink for Arc<T> {
    fn emit(&self, event: &OAuthEvent) {
        (**self).emit(event);
    }
}

/// A shared event sink.
pub type DynEventSink = Arc<dyn EventSink>;

/// The default sink: one `tracing` event per [`OAuthEvent`] (target `pleo_auth_oauth::events`),
/// `warn` for failures and `info` otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingEvents;

impl EventSink for TracingEvents {
    fn emit(&self, event: &OAuthEvent) {
        const T: &str = "pleo_auth_oauth::events";
        match event {
            OAuthEvent::Connected {
                subject,
                tenant,
                reconnected,
            } => tracing::info!(
                target: T,
                %subject,
                tenant = tenant.as_ref().map(TenantId::as_str),
                reconnected,
                "grant connected"
            ),
            OAuthEvent::Refreshed {
                subject,
                generation,
            } => tracing::info!(target: T, %subject, generation, "grant refreshed"),
            OAuthEvent::Adopted {
                subject,
                generation,
            } => tracing::info!(target: T, %subject, generation, "tokens adopted from the store"),
            OAuthEvent::RefreshFailed {
                subject,
                kind,
                retryable,
            } => tracing::warn!(target: T, %subject, ?kind, retryable, "refresh failed"),
            OAuthEvent::ReauthorizationRequired { subject } => {
                tracing::warn!(target: T, %subject, "grant needs reauthorization")
            }
            OAuthEvent::PersistPending {
                subject,
                generation,
            } => tracing::warn!(
                target: T,
                %subject,
                generation,
                "rotated tokens kept in memory; store write pending"
            ),
            OAuthEvent::PersistRecovered {
                subject,
                generation,
            } => tracing::info!(target: T, %subject, generation, "pending tokens written"),
            OAuthEvent::Disconnected {
                subject,
                revoked_at_pleo,
            } => tracing::info!(target: T, %subject, revoked_at_pleo, "grant disconnected"),
            OAuthEvent::RecordUnreadable { subject, kind } => tracing::warn!(
                target: T,
                subject = subject.map(|s| s.to_string()),
                ?kind,
                "a grant record is unreadable"
            ),
            OAuthEvent::GrantDangling {
                subject,
                reason,
                unsafe_to_revoke,
            } => tracing::warn!(
                target: T,
                subject = subject.map(|s| s.to_string()),
                reason = reason.as_str(),
                unsafe_to_revoke,
                "a grant that is not kept could not be revoked yet"
            ),
        }
    }
}
