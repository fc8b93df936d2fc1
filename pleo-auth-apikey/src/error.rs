//! The one public error of `pleo-auth-apikey`.

use std::borrow::Cow;

use pleo_auth_core::{EnvironmentName, ErrorKind as CoreKind, ScopeSet, Subject, TenantId};

/// A core error, kept as the cause of an [`Error`].
pub type CoreError = pleo_auth_core::Error;

/// What went wrong in an API key operation.
///
/// Retry logic reads [`Error::is_retryable`] and [`ErrorKind::core_kind`], never the message.
/// No kind ever holds a key: kinds name subjects, scopes, environments, tenants and client ids
/// only.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The key is not of the accepted shape (see [`validate_key_format`](crate::validate_key_format)).
    /// Nothing was sent to Pleo.
    InvalidKeyFormat {
        /// What is wrong with it, without quoting it.
        reason: &'static str,
    },
    /// Pleo answered `/v1/introspect` with 401: the key is unknown, revoked, expired, or was
    /// issued in another environment. The HTTP-level cause, when the rejection was just
    /// observed, is the error's source.
    KeyRejected,
    /// Pleo says the credential is not an API key (for example an OAuth access token).
    NotAnApiKey,
    /// Pleo names no integration for the key: it is a Standalone API key, which cannot stand in
    /// for an Integrated key (use [`StandaloneKey`](crate::StandaloneKey) for it).
    NotAnIntegratedKey,
    /// The key belongs to an organisation, but an Integrated key must belong to one company.
    NotACompanyKey {
        /// The key's subject.
        subject: Subject,
    },
    /// The key belongs to another company than the one expected.
    WrongCompany {
        /// The company the integration expected.
        expected: Subject,
        /// The company Pleo says the key belongs to.
        actual: Subject,
    },
    /// The key lacks scopes the integration needs; nothing was activated.
    MissingScopes {
        /// The required scopes the key does not carry.
        missing: ScopeSet,
        /// The scopes the key carries.
        granted: ScopeSet,
    },
    /// Pleo says the key was issued to another integration than the configured one.
    WrongIntegration {
        /// The Pleo client id the configuration expects.
        expected: String,
        /// The client id Pleo reports, if any.
        actual: Option<String>,
    },
    /// A stored key belongs to another environment than the one asked for.
    WrongEnvironment {
        /// The environment asked for.
        expected: EnvironmentName,
        /// The environment of the key.
        actual: EnvironmentName,
    },
    /// A credential was asked for a subject the key does not act for.
    SubjectNotCovered {
        /// The subject asked for.
        requested: Subject,
        /// The subject of the key.
        key_subject: Subject,
    },
    /// No key is stored for the subject.
    NotFound {
        /// The subject asked for.
        subject: Subject,
    },
    /// Pleo rejected the key earlier; the customer must provide a new one.
    NeedsReplacement {
        /// The subject whose key must be replaced.
        subject: Subject,
    },
    /// The stored key was revoked or removed on purpose.
    Revoked {
        /// The subject whose key was revoked.
        subject: Subject,
    },
    /// The tenant or the company is already linked elsewhere; neither the key nor the link
    /// was stored. The tenant-link error naming the existing link is the source.
    TenantConflict {
        /// The tenant asked for.
        tenant: TenantId,
        /// The subject of the key.
        subject: Subject,
    },
    /// The stored record changed between read and write; nothing was changed. The store's
    /// conflict error is the source.
    ConcurrentChange {
        /// The subject of the record.
        subject: Subject,
    },
    /// A stored record is of another kind or does not match where it is stored.
    Corrupt {
        /// The subject of the record.
        subject: Subject,
        /// What does not match.
        reason: &'static str,
    },
    /// An environment variable that should hold a key is not set.
    MissingEnvVar {
        /// The variable's name.
        name: String,
    },
    /// The configuration cannot work; what is wrong is the source.
    Config,
    /// `/v1/introspect` failed for another reason than a rejected key (unreachable, 5xx, 429,
    /// or an answer that is not the documented JSON). Holds the HTTP-level cause's kind.
    Introspection(CoreKind),
    /// `POST /v1/installations/me` failed; nothing was stored. Holds the HTTP-level cause's
    /// kind.
    Installation(CoreKind),
    /// The secret store failed; the core kind says how.
    Store(CoreKind),
}

impl ErrorKind {
    /// The matching kind of [`pleo_auth_core::Error`], the vocabulary shared by every
    /// pleo-auth crate.
    pub fn core_kind(&self) -> CoreKind {
        match self {
            ErrorKind::InvalidKeyFormat { .. }
            | ErrorKind::NotAnApiKey
            | ErrorKind::NotAnIntegratedKey
            | ErrorKind::NotACompanyKey { .. }
            | ErrorKind::WrongIntegration { .. } => CoreKind::InvalidInput,
            ErrorKind::KeyRejected => CoreKind::Unauthenticated,
            ErrorKind::WrongCompany { .. } | ErrorKind::SubjectNotCovered { .. } => {
                CoreKind::WrongCompany
            }
            ErrorKind::MissingScopes { .. } => CoreKind::PermissionDenied,
            ErrorKind::WrongEnvironment { .. } => CoreKind::WrongEnvironment,
            ErrorKind::NotFound { .. } => CoreKind::NotFound,
            ErrorKind::NeedsReplacement { .. } => CoreKind::NeedsReplacement,
            ErrorKind::Revoked { .. } => CoreKind::Revoked,
            ErrorKind::TenantConflict { .. } | ErrorKind::ConcurrentChange { .. } => {
                CoreKind::Conflict
            }
            ErrorKind::Corrupt { .. } => CoreKind::Corrupt,
            ErrorKind::MissingEnvVar { .. } | ErrorKind::Config => CoreKind::Config,
            // Pleo's answer was not usable input; it is not the caller's input.
            ErrorKind::Introspection(CoreKind::InvalidInput)
            | ErrorKind::Installation(CoreKind::InvalidInput) => CoreKind::Unexpected,
            ErrorKind::Introspection(kind)
            | ErrorKind::Installation(kind)
            | ErrorKind::Store(kind) => *kind,
        }
    }

    /// What this layer says about the kind: lowercase, without a cause or a secret.
    fn message(&self) -> Cow<'static, str> {
        match self {
            ErrorKind::InvalidKeyFormat { reason } => {
                format!("api key is malformed: it {reason}").into()
            }
            ErrorKind::KeyRejected => {
                "pleo rejected the api key: it is unknown, revoked, expired or from another environment".into()
            }
            ErrorKind::NotAnApiKey => {
                "the credential is not a pleo api key (pleo reports another authentication method)".into()
            }
            ErrorKind::NotAnIntegratedKey => {
                "the key is a standalone api key (pleo names no integration for it), not an integrated api key".into()
            }
            ErrorKind::NotACompanyKey { subject } => format!(
                "the api key belongs to {subject}; an integrated api key must belong to one company"
            )
            .into(),
            ErrorKind::WrongCompany { expected, actual } => {
                format!("the api key belongs to {actual}, not to the expected {expected}").into()
            }
            ErrorKind::MissingScopes { missing, .. } => {
                format!("the api key lacks the required scopes: {missing}").into()
            }
            ErrorKind::WrongIntegration { expected, .. } => {
                format!("the api key was issued to another integration than {expected:?}").into()
            }
            ErrorKind::WrongEnvironment { expected, actual } => {
                format!("the api key belongs to environment {actual}, not to {expected}").into()
            }
            ErrorKind::SubjectNotCovered {
                requested,
                key_subject,
            } => format!("the api key acts for {key_subject}, not for {requested}").into(),
            ErrorKind::NotFound { subject } => {
                format!("no api key is stored for {subject}").into()
            }
            ErrorKind::NeedsReplacement { subject } => {
                format!("the api key of {subject} was rejected by pleo and must be replaced").into()
            }
            ErrorKind::Revoked { subject } => format!("the api key of {subject} was revoked").into(),
            ErrorKind::TenantConflict { tenant, subject } => format!(
                "tenant {:?} cannot be linked to {subject}: one of them is already linked elsewhere; nothing was stored",
                tenant.as_str()
            )
            .into(),
            ErrorKind::ConcurrentChange { subject } => format!(
                "the stored api key of {subject} changed concurrently; nothing was changed"
            )
            .into(),
            ErrorKind::Corrupt { subject, reason } => {
                format!("the stored api key record of {subject} is unusable: {reason}").into()
            }
            ErrorKind::MissingEnvVar { name } => {
                format!("environment variable {name} is not set").into()
            }
            ErrorKind::Config => "invalid api key configuration".into(),
            ErrorKind::Introspection(_) => "introspecting the api key failed".into(),
            ErrorKind::Installation(_) => {
                "creating the installation failed; nothing was stored".into()
            }
            ErrorKind::Store(_) => "secret store operation failed".into(),
        }
    }
}

/// Why an API key operation failed.
///
/// Read [`Error::kind`] and [`Error::is_retryable`] to decide what to do; the message is for
/// people. No error ever holds or prints a key: `Display` and `Debug` name subjects, scopes,
/// environments and tenants only, and the cause (a store or HTTP error) is in
/// [`std::error::Error::source`]. Converts into [`pleo_auth_core::Error`] (the error of
/// [`CredentialProvider`](pleo_auth_core::CredentialProvider)) without losing the kind.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Error(Box<Inner>);

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct Inner {
    kind: ErrorKind,
    message: Cow<'static, str>,
    #[source]
    source: Option<CoreError>,
}

impl Error {
    /// A new error of `kind`, with the message that kind implies and no cause.
    pub fn new(kind: ErrorKind) -> Self {
        Self(Box::new(Inner {
            message: kind.message(),
            kind,
            source: None,
        }))
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: CoreError) -> Self {
        self.0.source = Some(source);
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.0.kind
    }

    /// The message of this layer, without the cause.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// Whether the same call may succeed if retried later, unchanged. For a failed store,
    /// introspection or installation the cause decides.
    pub fn is_retryable(&self) -> bool {
        match (&self.0.kind, &self.0.source) {
            (
                ErrorKind::Introspection(_) | ErrorKind::Installation(_) | ErrorKind::Store(_),
                Some(source),
            ) => source.is_retryable(),
            (kind, _) => kind.core_kind().is_retryable(),
        }
    }

    /// The secret store failed with `source`.
    pub(crate) fn store(source: CoreError) -> Self {
        Self::new(ErrorKind::Store(source.kind())).with_source(source)
    }

    /// Writing the key record of `subject` failed with `source`: a lost compare-and-swap is a
    /// [`ErrorKind::ConcurrentChange`], anything else a store failure.
    pub(crate) fn record_write(subject: Subject, source: CoreError) -> Self {
        if source.kind() == CoreKind::Conflict {
            Self::new(ErrorKind::ConcurrentChange { subject }).with_source(source)
        } else {
            Self::store(source)
        }
    }

    /// `/v1/introspect` failed with `source`.
    pub(crate) fn introspection(source: CoreError) -> Self {
        Self::new(ErrorKind::Introspection(source.kind())).with_source(source)
    }

    /// `POST /v1/installations/me` failed with `source`.
    pub(crate) fn installation(source: CoreError) -> Self {
        Self::new(ErrorKind::Installation(source.kind())).with_source(source)
    }
}

impl From<Error> for pleo_auth_core::Error {
    fn from(err: Error) -> Self {
        let retryable = err.is_retryable();
        let Inner {
            kind,
            message,
            source,
        } = *err.0;
        let converted = CoreError::new(kind.core_kind(), message).with_retryable(retryable);
        match source {
            Some(source) => converted.with_source(source),
            None => converted,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn conversion_keeps_kind_retryability_and_cause() {
        let err = Error::introspection(CoreError::unavailable("introspection answered HTTP 503"));
        assert_eq!(err.kind().core_kind(), CoreKind::Unavailable);
        assert!(err.is_retryable());
        let core: CoreError = err.into();
        assert_eq!(core.kind(), CoreKind::Unavailable);
        assert!(core.is_retryable());
        assert_eq!(core.to_string(), "introspecting the api key failed");
        assert_eq!(
            core.source().unwrap().to_string(),
            "introspection answered HTTP 503"
        );
    }

    #[test]
    fn display_is_lowercase_without_trailing_period_and_without_cause() {
        let errors = [
            Error::new(ErrorKind::InvalidKeyFormat { reason: "is empty" }),
            Error::new(ErrorKind::KeyRejected).with_source(CoreError::new(
                CoreKind::Unauthenticated,
                "introspection answered HTTP 401",
            )),
            Error::new(ErrorKind::NotAnApiKey),
            Error::store(CoreError::unavailable("vault down")),
        ];
        for err in errors {
            let shown = err.to_string();
            assert!(!shown.ends_with('.'), "{shown}");
            assert!(shown.starts_with(|c: char| c.is_lowercase()), "{shown}");
            assert!(!shown.contains("HTTP 401") && !shown.contains("vault down"));
        }
    }

    #[test]
    fn pleo_answers_that_do_not_parse_are_unexpected_not_invalid_input() {
        let err = Error::introspection(CoreError::invalid_input(
            "subject must be urn:pleo:company:<uuid>",
        ));
        assert_eq!(err.kind().core_kind(), CoreKind::Unexpected);
        assert!(!err.is_retryable());
    }

    #[test]
    fn a_retryability_override_of_the_cause_wins_for_store_failures() {
        let err = Error::store(CoreError::unavailable("gone for good").with_retryable(false));
        assert_eq!(err.kind(), &ErrorKind::Store(CoreKind::Unavailable));
        assert!(!err.is_retryable());
        let err = Error::new(ErrorKind::NotAnApiKey);
        assert_eq!(err.kind().core_kind(), CoreKind::InvalidInput);
        assert!(!err.is_retryable());
    }
}
