//! The one public error of `pleo-auth-oauth`, classified by [`ErrorKind`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use pleo_auth_core::{ErrorKind as CoreKind, Subject, TenantId};

/// What went wrong in an OAuth operation.
///
/// Retry and refresh logic read the kind, never the message. Data carried by a kind (an OAuth
/// error code, a description from Pleo, subjects) never includes a secret value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The [`OAuthConfig`](crate::OAuthConfig) or a builder setting cannot work.
    InvalidConfig,
    /// The callback query is malformed: a parameter is repeated, both `code` and `error` are
    /// present, `state` or `code` is missing, or the query is too long.
    InvalidCallback,
    /// The callback's `state` names no pending authorization of this client (never issued,
    /// already used, or issued by another client or environment).
    UnknownState,
    /// The pending authorization named by the callback's `state` has expired.
    StateExpired,
    /// The callback arrived in another browser than the one that started the flow (its
    /// browser binding is missing or different), or a flow bound to a browser was completed
    /// without one. Refused before any token request; the state is used up.
    BrowserMismatch,
    /// The authorization response's `iss` names another authorization server than the
    /// configured one (RFC 9207, a mix-up defence); refused before any token request.
    IssuerMismatch,
    /// The user (or Pleo) refused consent: the callback carried `error=access_denied`.
    AccessDenied {
        /// Pleo's `error_description`, shortened and stripped of control characters.
        description: Option<String>,
    },
    /// The callback carried another OAuth error code than `access_denied`.
    AuthorizationError {
        /// The OAuth `error` code, such as `invalid_scope` or `server_error`.
        code: String,
        /// Pleo's `error_description`, shortened and stripped of control characters.
        description: Option<String>,
    },
    /// The token endpoint refused the authorization code (for example `invalid_grant`: the
    /// code expired or was used already). The customer must start the flow again.
    CodeRejected {
        /// The OAuth `error` code.
        code: String,
    },
    /// The customer connected another company or organisation than the flow expected;
    /// nothing was stored.
    WrongCompany {
        /// The subject the flow expected.
        expected: Subject,
        /// The subject Pleo connected.
        actual: Subject,
    },
    /// The tenant, or the subject, is already linked to another party; nothing was stored.
    TenantConflict {
        /// The tenant the flow asked to link.
        tenant: TenantId,
        /// The subject Pleo connected.
        subject: Subject,
    },
    /// The grant can no longer be refreshed (`invalid_grant`); the customer must consent again
    /// through [`OAuthClient::authorize`](crate::OAuthClient::authorize).
    NeedsReauthorization,
    /// The grant was disconnected.
    Revoked,
    /// Pleo refused the client credentials (`invalid_client` or `unauthorized_client`): a
    /// configuration error. Grants are not touched.
    InvalidClient,
    /// Pleo asked us to slow down.
    RateLimited {
        /// How long Pleo asked us to wait, when it said.
        retry_after: Option<Duration>,
    },
    /// Pleo could not be reached or answered with a transient failure (timeout, 5xx), or the
    /// refresh is cooling down after such failures.
    Unavailable,
    /// Another replica holds the refresh lease and did not finish in time.
    LeaseUnavailable,
    /// The secret store failed; the core kind says how.
    Store(CoreKind),
    /// No grant is stored for this subject.
    NotConnected,
    /// Pleo answered something that does not follow the protocol (a malformed token response,
    /// an introspection without subject, an unexpected status).
    UnexpectedResponse,
}

impl ErrorKind {
    /// Whether an operation that failed with this kind may succeed if retried later, unchanged.
    pub fn is_retryable(&self) -> bool {
        match self {
            ErrorKind::RateLimited { .. }
            | ErrorKind::Unavailable
            | ErrorKind::LeaseUnavailable => true,
            ErrorKind::Store(kind) => kind.is_retryable(),
            _ => false,
        }
    }

    /// The matching kind of [`pleo_auth_core::Error`].
    pub fn core_kind(&self) -> CoreKind {
        match self {
            ErrorKind::InvalidConfig | ErrorKind::InvalidClient => CoreKind::Config,
            ErrorKind::InvalidCallback
            | ErrorKind::UnknownState
            | ErrorKind::StateExpired
            | ErrorKind::BrowserMismatch
            | ErrorKind::IssuerMismatch => CoreKind::InvalidInput,
            ErrorKind::AccessDenied { .. } => CoreKind::PermissionDenied,
            ErrorKind::AuthorizationError { .. } | ErrorKind::CodeRejected { .. } => {
                CoreKind::Unauthenticated
            }
            ErrorKind::WrongCompany { .. } => CoreKind::WrongCompany,
            ErrorKind::TenantConflict { .. } => CoreKind::Conflict,
            ErrorKind::NeedsReauthorization => CoreKind::NeedsReauthorization,
            ErrorKind::Revoked => CoreKind::Revoked,
            ErrorKind::RateLimited { .. } => CoreKind::RateLimited,
            ErrorKind::Unavailable => CoreKind::Unavailable,
            ErrorKind::LeaseUnavailable => CoreKind::LeaseUnavailable,
            ErrorKind::Store(kind) => *kind,
            ErrorKind::NotConnected => CoreKind::NotFound,
            ErrorKind::UnexpectedResponse => CoreKind::Unexpected,
        }
    }
}

/// A cause shared by the clones of one error. It derefs to the cause instead of being an error
/// itself, so `source()` hands out the cause (a [`pleo_auth_core::Error`] can be downcast) and
/// no wrapper shows up in the error chain.
#[derive(Clone)]
struct SharedSource(Arc<dyn std::error::Error + Send + Sync + 'static>);

impl std::ops::Deref for SharedSource {
    type Target = dyn std::error::Error + Send + Sync + 'static;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl fmt::Debug for SharedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// The error of every fallible operation in `pleo-auth-oauth`.
///
/// `Display` says what this layer was doing, lowercase and without the cause; the cause (a
/// store or transport error) is in [`std::error::Error::source`]. Neither contains a secret.
/// Cloning is cheap, so one refresh result can be handed to every waiting caller.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: &'static str,
    #[source]
    source: Option<SharedSource>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: &'static str) -> Self {
        Self {
            kind,
            message,
            source: None,
        }
    }

    pub(crate) fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        self.source = Some(SharedSource(Arc::from(source.into())));
        self
    }

    pub(crate) fn config(message: &'static str) -> Self {
        Self::new(ErrorKind::InvalidConfig, message)
    }

    pub(crate) fn callback(message: &'static str) -> Self {
        Self::new(ErrorKind::InvalidCallback, message)
    }

    pub(crate) fn unexpected(message: &'static str) -> Self {
        Self::new(ErrorKind::UnexpectedResponse, message)
    }

    /// A store failure while doing `message`, keeping the store's error as the source.
    pub(crate) fn store(message: &'static str, err: pleo_auth_core::Error) -> Self {
        Self::new(ErrorKind::Store(err.kind()), message).with_source(err)
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// Whether retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// The message of this layer, without the cause.
    pub fn message(&self) -> &str {
        self.message
    }

    /// How long Pleo asked us to wait, for [`ErrorKind::RateLimited`].
    pub fn retry_after(&self) -> Option<Duration> {
        match &self.kind {
            ErrorKind::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }
}

impl From<Error> for pleo_auth_core::Error {
    fn from(err: Error) -> Self {
        let retryable = err.is_retryable();
        let message = match &err.kind {
            ErrorKind::WrongCompany { expected, actual } => {
                format!("{}: expected {expected}, got {actual}", err.message)
            }
            _ => err.message.to_owned(),
        };
        pleo_auth_core::Error::new(err.kind.core_kind(), message)
            .with_retryable(retryable)
            .with_source(err)
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shortens text that came from outside (an `error_description`) and drops control characters.
pub(crate) fn sanitize(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_core_kinds_and_retryability() {
        let cases = [
            (
                ErrorKind::NeedsReauthorization,
                CoreKind::NeedsReauthorization,
                false,
            ),
            (
                ErrorKind::RateLimited { retry_after: None },
                CoreKind::RateLimited,
                true,
            ),
            (ErrorKind::Unavailable, CoreKind::Unavailable, true),
            (ErrorKind::InvalidClient, CoreKind::Config, false),
            (ErrorKind::NotConnected, CoreKind::NotFound, false),
            (
                ErrorKind::Store(CoreKind::Unavailable),
                CoreKind::Unavailable,
                true,
            ),
            (
                ErrorKind::Store(CoreKind::Corrupt),
                CoreKind::Corrupt,
                false,
            ),
        ];
        for (kind, core, retryable) in cases {
            let err = Error::new(kind.clone(), "refresh failed");
            assert_eq!(err.is_retryable(), retryable, "{kind:?}");
            let core_err: pleo_auth_core::Error = err.into();
            assert_eq!(core_err.kind(), core, "{kind:?}");
            assert_eq!(core_err.is_retryable(), retryable, "{kind:?}");
        }
    }

    #[test]
    fn display_is_this_layer_only() {
        let err = Error::store(
            "reading the grant failed",
            pleo_auth_core::Error::unavailable("connection reset").with_backend("redis"),
        );
        assert_eq!(err.to_string(), "reading the grant failed");
        let source = std::error::Error::source(&err).expect("source kept");
        assert_eq!(source.to_string(), "redis: connection reset");
        assert!(err.is_retryable());
    }

    #[test]
    fn clones_share_the_cause_and_it_stays_a_core_error() {
        let err = Error::store(
            "writing the grant failed",
            pleo_auth_core::Error::unavailable("connection reset").with_backend("redis"),
        );
        let clone = err.clone();
        for err in [&err, &clone] {
            let source = std::error::Error::source(err).expect("source kept");
            let core = source
                .downcast_ref::<pleo_auth_core::Error>()
                .expect("the cause is the store's error, not a wrapper");
            assert_eq!(core.backend(), Some("redis"));
            assert!(std::error::Error::source(core).is_none());
        }
        assert_eq!(err.message(), "writing the grant failed");
    }

    #[test]
    fn sanitize_strips_control_characters_and_bounds_length() {
        assert_eq!(sanitize("a\nb\u{7}c"), "abc");
        assert_eq!(sanitize(&"x".repeat(500)).len(), 200);
    }
}
