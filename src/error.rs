//! The one public error of the facade.

use std::borrow::Cow;

use pleo_auth_core::ErrorKind;

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error of the facade's own operations: building a [`PleoAuth`](crate::PleoAuth), asking
/// it for a method that is not configured, listing connections.
///
/// [`kind`](Error::kind) is the shared [`ErrorKind`] of every pleo-auth crate. `Display` says
/// what the facade was doing; the error of the crate that failed is the
/// [`source`](std::error::Error::source). Neither contains a secret.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
    retryable: bool,
    #[source]
    source: Option<Source>,
}

impl Error {
    /// A new error of `kind` that says what failed (no secret values).
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            message: message.into(),
            retryable: kind.is_retryable(),
            source: None,
        }
    }

    /// A setting the operation needs is missing or unusable.
    pub(crate) fn config(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    /// `what` was asked for but not configured on the builder.
    #[cfg(any(feature = "oauth", feature = "apikey"))]
    pub(crate) fn not_configured(what: &'static str) -> Self {
        Self::config(format!(
            "{what} is not configured on this PleoAuth; set it on the builder"
        ))
    }

    /// Wraps the error of another pleo-auth crate, keeping its kind and retryability.
    pub(crate) fn wrap(
        kind: ErrorKind,
        retryable: bool,
        message: &'static str,
        source: impl Into<Source>,
    ) -> Self {
        Self {
            kind,
            message: Cow::Borrowed(message),
            retryable,
            source: Some(source.into()),
        }
    }

    /// Wraps a core error.
    pub(crate) fn core(message: &'static str, err: pleo_auth_core::Error) -> Self {
        Self::wrap(err.kind(), err.is_retryable(), message, err)
    }

    /// Wraps an OAuth error.
    #[cfg(feature = "oauth")]
    pub(crate) fn oauth(message: &'static str, err: pleo_auth_oauth::Error) -> Self {
        Self::wrap(err.kind().core_kind(), err.is_retryable(), message, err)
    }

    /// Wraps an API key error.
    #[cfg(feature = "apikey")]
    pub(crate) fn apikey(message: &'static str, err: pleo_auth_apikey::Error) -> Self {
        Self::wrap(err.kind().core_kind(), err.is_retryable(), message, err)
    }

    /// Wraps an HTTP client error.
    #[cfg(feature = "http")]
    pub(crate) fn http(message: &'static str, err: pleo_auth_http::Error) -> Self {
        Self::wrap(err.kind(), err.is_retryable(), message, err)
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether retrying the same operation later, unchanged, may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The message of this layer, without the cause.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<Error> for pleo_auth_core::Error {
    fn from(err: Error) -> Self {
        let converted =
            pleo_auth_core::Error::new(err.kind, err.message.clone()).with_retryable(err.retryable);
        match err.source {
            Some(source) => converted.with_source(source),
            None => converted,
        }
    }
}

/// `Result` with the facade's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_this_layer_and_the_cause_is_the_source() {
        let cause = pleo_auth_core::Error::unavailable("store write failed").with_backend("file");
        let err = Error::core("reading the tenant links failed", cause);
        assert_eq!(err.to_string(), "reading the tenant links failed");
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.is_retryable());
        let source = std::error::Error::source(&err).expect("cause kept");
        assert_eq!(source.to_string(), "file: store write failed");

        let core: pleo_auth_core::Error = err.into();
        assert_eq!(core.kind(), ErrorKind::Unavailable);
        assert!(core.is_retryable());
    }

    #[test]
    #[cfg(feature = "oauth")]
    fn not_configured_is_a_config_error() {
        let err = Error::not_configured("OAuth");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("OAuth is not configured"));
    }
}
