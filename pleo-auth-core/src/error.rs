//! The one public error type of `pleo-auth-core`, classified by kind.

use std::fmt;

/// What went wrong, independent of which backend or method reported it.
///
/// Retry and refresh logic read the kind, never the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input was malformed or out of range (a URN, a scope, a key, a URL).
    InvalidInput,
    /// The configuration cannot work (a bad URL, a missing setting, a rejected client).
    Config,
    /// The requested item does not exist.
    NotFound,
    /// A precondition failed: the item exists, or its version moved on.
    Conflict,
    /// A backend or peer could not be reached or answered with a transient failure.
    Unavailable,
    /// The peer asked us to slow down.
    RateLimited,
    /// The backend refused the operation for lack of permission.
    PermissionDenied,
    /// The credential was missing, expired or rejected.
    Unauthenticated,
    /// Stored bytes could not be read as a record (garbage, tampering, a wrong key).
    Corrupt,
    /// A stored record was written by a newer, unknown schema version.
    UnsupportedSchema,
    /// A stored record names another key than the one it was read under: a backend that took
    /// two ids for one name, or a copied or tampered value. It is never used in place of the
    /// record that was asked for.
    KeyMismatch,
    /// The OAuth grant can no longer be refreshed; the customer must consent again.
    NeedsReauthorization,
    /// The API key was rejected; the customer must provide a new one.
    NeedsReplacement,
    /// The credential was revoked or disconnected.
    Revoked,
    /// The credential belongs to another company or organisation than the request names.
    WrongCompany,
    /// The credential belongs to another environment than the request targets.
    WrongEnvironment,
    /// A lease or lock could not be acquired in time.
    LeaseUnavailable,
    /// The implementation does not support the operation (for example a lease that cannot be
    /// renewed).
    Unsupported,
    /// Anything else: a bug or an unexpected answer.
    Unexpected,
}

impl ErrorKind {
    /// Whether an operation that failed with this kind may succeed if retried later, unchanged.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Unavailable | ErrorKind::RateLimited | ErrorKind::LeaseUnavailable
        )
    }

    /// A short, stable, lowercase name of the kind, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Config => "config",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::UnsupportedSchema => "unsupported_schema",
            ErrorKind::KeyMismatch => "key_mismatch",
            ErrorKind::NeedsReauthorization => "needs_reauthorization",
            ErrorKind::NeedsReplacement => "needs_replacement",
            ErrorKind::Revoked => "revoked",
            ErrorKind::WrongCompany => "wrong_company",
            ErrorKind::WrongEnvironment => "wrong_environment",
            ErrorKind::LeaseUnavailable => "lease_unavailable",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Unexpected => "unexpected",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error of every fallible operation in `pleo-auth-core` and of every [`SecretStore`].
///
/// `Display` states only what this layer was doing (prefixed with the backend, when one is
/// named); the cause is in [`std::error::Error::source`]. Messages never contain secret values.
///
/// [`SecretStore`]: crate::SecretStore
#[derive(Debug, thiserror::Error)]
#[error("{}{}{message}", .backend.unwrap_or(""), if .backend.is_some() { ": " } else { "" })]
pub struct Error {
    kind: ErrorKind,
    message: String,
    backend: Option<&'static str>,
    retryable: Option<bool>,
    #[source]
    source: Option<Source>,
}

impl Error {
    /// A new error of `kind` with a message that says what failed (no secret values).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            backend: None,
            retryable: None,
            source: None,
        }
    }

    /// Names the backend that failed (`"vault"`, `"redis"`, `"file"`, ...).
    pub fn with_backend(mut self, backend: &'static str) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Overrides the retryability implied by the kind.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = Some(retryable);
        self
    }

    /// Moves the underlying cause out, for a layer that takes this error over as its own
    /// (its message, kind and retryability) and keeps only the cause as its source.
    pub fn into_source(self) -> Option<Source> {
        self.source
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The backend that failed, if one was named.
    pub fn backend(&self) -> Option<&'static str> {
        self.backend
    }

    /// The message of this layer, without the cause.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable.unwrap_or_else(|| self.kind.is_retryable())
    }

    /// Shorthand for an [`ErrorKind::InvalidInput`] error.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// Shorthand for an [`ErrorKind::Conflict`] error.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }

    /// Shorthand for an [`ErrorKind::Unavailable`] error.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    /// Shorthand for an [`ErrorKind::Corrupt`] error.
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, message)
    }
}

/// `Result` with the core [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_backend_and_message_but_not_source() {
        let err = Error::unavailable("store write failed")
            .with_backend("redis")
            .with_source(std::io::Error::other("connection reset"));
        assert_eq!(err.to_string(), "redis: store write failed");
        assert!(err.is_retryable());
        let source = std::error::Error::source(&err).expect("source kept");
        assert_eq!(source.to_string(), "connection reset");
    }

    #[test]
    fn retryability_follows_kind_unless_overridden() {
        assert!(!Error::conflict("version moved").is_retryable());
        assert!(Error::new(ErrorKind::RateLimited, "slow down").is_retryable());
        assert!(
            !Error::unavailable("permanently gone")
                .with_retryable(false)
                .is_retryable()
        );
    }
}
