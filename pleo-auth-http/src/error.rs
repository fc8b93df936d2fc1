//! The one public error of `pleo-auth-http`.

use std::borrow::Cow;
use std::time::Duration;

use pleo_auth_core::{ErrorKind, ScopeSet};

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Longest server message kept in an [`Error`], in bytes.
pub const MAX_SERVER_MESSAGE_BYTES: usize = 1024;

/// The error of every fallible operation in `pleo-auth-http`.
///
/// Classified by [`ErrorKind`] (shared with `pleo-auth-core`); retry logic reads
/// [`Error::kind`] and [`Error::is_retryable`], never the message. `Display` states only what
/// this layer was doing (plus the HTTP status, when there is one); the cause is in
/// [`std::error::Error::source`]. An error never holds a header value, token, key, request body
/// or a URL with its query string; what the server said is kept, sanitised and capped at
/// [`MAX_SERVER_MESSAGE_BYTES`], in [`Error::server_message`].
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Error(Box<Inner>);

#[derive(Debug, thiserror::Error)]
#[error("{message}{}", .status.map(|status| format!(" (HTTP {status})")).unwrap_or_default())]
struct Inner {
    kind: ErrorKind,
    message: Cow<'static, str>,
    status: Option<u16>,
    server_message: Option<String>,
    required_scopes: ScopeSet,
    retry_after: Option<Duration>,
    retryable: Option<bool>,
    #[source]
    source: Option<Source>,
}

impl Error {
    /// A new error of `kind` with a message that says what failed (no secret values).
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self(Box::new(Inner {
            kind,
            message: message.into(),
            status: None,
            server_message: None,
            required_scopes: ScopeSet::new(),
            retry_after: None,
            retryable: None,
            source: None,
        }))
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.0.source = Some(source.into());
        self
    }

    /// Overrides the retryability implied by the kind.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.0.retryable = Some(retryable);
        self
    }

    /// A core error as the cause of this layer's `message`, keeping its kind and retryability.
    pub(crate) fn wrap(core: pleo_auth_core::Error, message: &'static str) -> Self {
        let retryable = core.is_retryable();
        Self::new(core.kind(), message)
            .with_retryable(retryable)
            .with_source(core)
    }

    pub(crate) fn with_status(mut self, status: u16) -> Self {
        self.0.status = Some(status);
        self
    }

    pub(crate) fn with_server_message(mut self, message: Option<String>) -> Self {
        self.0.server_message = message;
        self
    }

    pub(crate) fn with_required_scopes(mut self, scopes: ScopeSet) -> Self {
        self.0.required_scopes = scopes;
        self
    }

    pub(crate) fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.0.retry_after = retry_after;
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// Whether retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.0
            .retryable
            .unwrap_or_else(|| self.0.kind.is_retryable())
    }

    /// The message of this layer, without the cause.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The HTTP status the API answered with, if the error comes from a response.
    pub fn status(&self) -> Option<u16> {
        self.0.status
    }

    /// What the server said (its JSON `message`, or the body text), sanitised and capped at
    /// [`MAX_SERVER_MESSAGE_BYTES`].
    pub fn server_message(&self) -> Option<&str> {
        self.0.server_message.as_deref()
    }

    /// The scopes the endpoint needs, where known: from the server's `WWW-Authenticate`
    /// challenge or from [`RequestOptions::required_scope`](crate::RequestOptions::required_scope).
    /// Empty when unknown.
    pub fn required_scopes(&self) -> &ScopeSet {
        &self.0.required_scopes
    }

    /// How long the server asked to wait (`Retry-After`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        self.0.retry_after
    }

    /// This crate's error inside a `reqwest_middleware::Error` returned by
    /// [`PleoAuthMiddleware`](crate::PleoAuthMiddleware), if it is one.
    pub fn from_middleware_ref(err: &reqwest_middleware::Error) -> Option<&Error> {
        match err {
            reqwest_middleware::Error::Middleware(inner) => {
                let inner: &(dyn std::error::Error + Send + Sync + 'static) = &**inner;
                inner.downcast_ref::<Error>()
            }
            reqwest_middleware::Error::Reqwest(_) => None,
        }
    }
}

impl From<pleo_auth_core::Error> for Error {
    /// Takes over the core error's kind, retryability, message and cause.
    fn from(core: pleo_auth_core::Error) -> Self {
        let mut err = Self::new(core.kind(), core.to_string()).with_retryable(core.is_retryable());
        err.0.source = core.into_source();
        err
    }
}

impl From<reqwest_middleware::Error> for Error {
    /// Unwraps this crate's error from a middleware stack, or classifies any other failure
    /// without its URL.
    fn from(err: reqwest_middleware::Error) -> Self {
        match err {
            reqwest_middleware::Error::Middleware(inner) => match inner.downcast::<Error>() {
                Ok(ours) => ours,
                Err(other) => {
                    let source: Source = other.into();
                    Error::new(ErrorKind::Unexpected, "a middleware failed").with_source(source)
                }
            },
            reqwest_middleware::Error::Reqwest(e) => Error::wrap(
                crate::transport::transport_error(e),
                "sending the request failed",
            ),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Makes a server's words safe to keep: control characters become spaces, the `secrets` are
/// replaced by `[redacted]`, and the text is cut to [`MAX_SERVER_MESSAGE_BYTES`].
pub(crate) fn sanitize_server_message(raw: &str, secrets: &[&str]) -> Option<String> {
    let mut text: String = raw
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        if text.contains(secret) {
            text = text.replace(secret, "[redacted]");
        }
    }
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return None;
    }
    let mut end = trimmed.len().min(MAX_SERVER_MESSAGE_BYTES);
    while !trimmed.is_char_boundary(end) {
        end -= 1;
    }
    Some(trimmed[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_this_layer_and_status_only() {
        let err = Error::new(ErrorKind::PermissionDenied, "the API refused the request")
            .with_status(403)
            .with_server_message(Some("lacks scope".to_owned()))
            .with_source(std::io::Error::other("inner cause"));
        assert_eq!(err.to_string(), "the API refused the request (HTTP 403)");
        assert_eq!(
            std::error::Error::source(&err).unwrap().to_string(),
            "inner cause"
        );
        let debug = format!("{err:?}");
        assert!(debug.contains("lacks scope"), "{debug}");
        assert!(!err.is_retryable());
    }

    #[test]
    fn core_errors_are_taken_over_transparently() {
        let core = pleo_auth_core::Error::unavailable("store write failed")
            .with_backend("redis")
            .with_source(std::io::Error::other("connection reset"));
        let err = Error::from(core);
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.is_retryable());
        assert_eq!(err.to_string(), "redis: store write failed");
        assert_eq!(
            std::error::Error::source(&err).unwrap().to_string(),
            "connection reset"
        );
    }

    #[test]
    fn wrapped_core_errors_keep_kind_and_retryability() {
        let core = pleo_auth_core::Error::new(ErrorKind::NeedsReauthorization, "grant revoked");
        let err = Error::wrap(core, "no usable credential");
        assert_eq!(err.kind(), ErrorKind::NeedsReauthorization);
        assert_eq!(err.to_string(), "no usable credential");
        assert_eq!(
            std::error::Error::source(&err).unwrap().to_string(),
            "grant revoked"
        );
    }

    #[test]
    fn middleware_errors_round_trip() {
        let ours = Error::new(ErrorKind::WrongCompany, "refused");
        let wrapped = reqwest_middleware::Error::middleware(ours);
        assert_eq!(
            Error::from_middleware_ref(&wrapped).map(Error::kind),
            Some(ErrorKind::WrongCompany)
        );
        assert_eq!(Error::from(wrapped).kind(), ErrorKind::WrongCompany);
        let other = reqwest_middleware::Error::middleware(std::io::Error::other("x"));
        assert!(Error::from_middleware_ref(&other).is_none());
        assert_eq!(Error::from(other).kind(), ErrorKind::Unexpected);
    }

    #[test]
    fn server_messages_are_sanitised_redacted_and_capped() {
        let raw = format!("bad\ntoken Bearer CANARY-tok {}", "é".repeat(2000));
        let msg = sanitize_server_message(&raw, &["Bearer CANARY-tok", "CANARY-tok"]).unwrap();
        assert!(!msg.contains("CANARY"));
        assert!(!msg.contains('\n'));
        assert!(msg.starts_with("bad token [redacted]"));
        assert!(msg.len() <= MAX_SERVER_MESSAGE_BYTES);
        assert_eq!(sanitize_server_message(" \r\n ", &[]), None);
    }
}
