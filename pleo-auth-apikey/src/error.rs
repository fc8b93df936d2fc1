//! The one public error of `pleo-auth-apikey`.

use pleo_auth_core::{EnvironmentName, ErrorKind, ScopeSet, Subject, TenantId};

/// A core error, kept as the cause of an [`Error`].
pub type CoreError = pleo_auth_core::Error;

/// Why an API key operation failed.
///
/// Read [`Error::kind`] and [`Error::is_retryable`] to decide what to do; the message is for
/// people. No variant ever holds or prints a key: `Display` and `Debug` name subjects,
/// scopes, environments and tenants only. Converts into [`pleo_auth_core::Error`] (the error
/// of [`CredentialProvider`](pleo_auth_core::CredentialProvider)) without losing the kind.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key is not of the accepted shape (see [`validate_key_format`](crate::validate_key_format)).
    /// Nothing was sent to Pleo.
    #[error("api key is malformed: it {reason}")]
    InvalidKeyFormat {
        /// What is wrong with it, without quoting it.
        reason: &'static str,
    },
    /// Pleo answered `/v1/introspect` with 401: the key is unknown, revoked, expired, or was
    /// issued in another environment.
    #[error(
        "pleo rejected the api key: it is unknown, revoked, expired or from another environment"
    )]
    KeyRejected {
        /// The HTTP-level cause, when the rejection was just observed.
        #[source]
        source: Option<CoreError>,
    },
    /// Pleo says the credential is not an API key (for example an OAuth access token).
    #[error("the credential is not a pleo api key (pleo reports another authentication method)")]
    NotAnApiKey,
    /// Pleo names no integration for the key: it is a Standalone API key, which cannot stand in
    /// for an Integrated key (use [`StandaloneKey`](crate::StandaloneKey) for it).
    #[error(
        "the key is a standalone api key (pleo names no integration for it), not an integrated api key"
    )]
    NotAnIntegratedKey,
    /// The key belongs to an organisation, but an Integrated key must belong to one company.
    #[error("the api key belongs to {subject}; an integrated api key must belong to one company")]
    NotACompanyKey {
        /// The key's subject.
        subject: Subject,
    },
    /// The key belongs to another company than the one expected.
    #[error("the api key belongs to {actual}, not to the expected {expected}")]
    WrongCompany {
        /// The company the integration expected.
        expected: Subject,
        /// The company Pleo says the key belongs to.
        actual: Subject,
    },
    /// The key lacks scopes the integration needs; nothing was activated.
    #[error("the api key lacks the required scopes: {missing}")]
    MissingScopes {
        /// The required scopes the key does not carry.
        missing: ScopeSet,
        /// The scopes the key carries.
        granted: ScopeSet,
    },
    /// Pleo says the key was issued to another integration than the configured one.
    #[error("the api key was issued to another integration than {expected:?}")]
    WrongIntegration {
        /// The Pleo client id the configuration expects.
        expected: String,
        /// The client id Pleo reports, if any.
        actual: Option<String>,
    },
    /// A stored key belongs to another environment than the one asked for.
    #[error("the api key belongs to environment {actual}, not to {expected}")]
    WrongEnvironment {
        /// The environment asked for.
        expected: EnvironmentName,
        /// The environment of the key.
        actual: EnvironmentName,
    },
    /// A credential was asked for a subject the key does not act for.
    #[error("the api key acts for {key_subject}, not for {requested}")]
    SubjectNotCovered {
        /// The subject asked for.
        requested: Subject,
        /// The subject of the key.
        key_subject: Subject,
    },
    /// No key is stored for the subject.
    #[error("no api key is stored for {subject}")]
    NotFound {
        /// The subject asked for.
        subject: Subject,
    },
    /// Pleo rejected the key earlier; the customer must provide a new one.
    #[error("the api key of {subject} was rejected by pleo and must be replaced")]
    NeedsReplacement {
        /// The subject whose key must be replaced.
        subject: Subject,
    },
    /// The stored key was revoked or removed on purpose.
    #[error("the api key of {subject} was revoked")]
    Revoked {
        /// The subject whose key was revoked.
        subject: Subject,
    },
    /// The tenant or the company is already linked elsewhere; neither the key nor the link
    /// was stored.
    #[error(
        "tenant {:?} cannot be linked to {subject}: one of them is already linked elsewhere; nothing was stored",
        tenant.as_str()
    )]
    TenantConflict {
        /// The tenant asked for.
        tenant: TenantId,
        /// The subject of the key.
        subject: Subject,
        /// The tenant-link error naming the existing link.
        #[source]
        source: CoreError,
    },
    /// The stored record changed between read and write; nothing was changed.
    #[error("the stored api key of {subject} changed concurrently; nothing was changed")]
    ConcurrentChange {
        /// The subject of the record.
        subject: Subject,
        /// The store's conflict error.
        #[source]
        source: CoreError,
    },
    /// A stored record is of another kind or does not match where it is stored.
    #[error("the stored api key record of {subject} is unusable: {reason}")]
    Corrupt {
        /// The subject of the record.
        subject: Subject,
        /// What does not match.
        reason: &'static str,
    },
    /// An environment variable that should hold a key is not set.
    #[error("environment variable {name} is not set")]
    MissingEnvVar {
        /// The variable's name.
        name: String,
    },
    /// The configuration cannot work.
    #[error("invalid api key configuration")]
    Config {
        /// What is wrong.
        #[source]
        source: CoreError,
    },
    /// `/v1/introspect` failed for another reason than a rejected key (unreachable, 5xx, 429,
    /// or an answer that is not the documented JSON).
    #[error("introspecting the api key failed")]
    Introspection {
        /// The HTTP-level cause.
        #[source]
        source: CoreError,
    },
    /// `POST /v1/installations/me` failed; nothing was stored.
    #[error("creating the installation failed; nothing was stored")]
    Installation {
        /// The HTTP-level cause.
        #[source]
        source: CoreError,
    },
    /// The secret store failed.
    #[error("secret store operation failed")]
    Store {
        /// The store's error.
        #[source]
        source: CoreError,
    },
}

impl Error {
    /// What went wrong, in the vocabulary shared by every pleo-auth crate.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidKeyFormat { .. }
            | Error::NotAnApiKey
            | Error::NotAnIntegratedKey
            | Error::NotACompanyKey { .. }
            | Error::WrongIntegration { .. } => ErrorKind::InvalidInput,
            Error::KeyRejected { .. } => ErrorKind::Unauthenticated,
            Error::WrongCompany { .. } | Error::SubjectNotCovered { .. } => ErrorKind::WrongCompany,
            Error::MissingScopes { .. } => ErrorKind::PermissionDenied,
            Error::WrongEnvironment { .. } => ErrorKind::WrongEnvironment,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::NeedsReplacement { .. } => ErrorKind::NeedsReplacement,
            Error::Revoked { .. } => ErrorKind::Revoked,
            Error::TenantConflict { .. } | Error::ConcurrentChange { .. } => ErrorKind::Conflict,
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::MissingEnvVar { .. } | Error::Config { .. } => ErrorKind::Config,
            Error::Introspection { source } | Error::Installation { source } => {
                // Pleo's answer was not usable input; it is not the caller's input.
                match source.kind() {
                    ErrorKind::InvalidInput => ErrorKind::Unexpected,
                    kind => kind,
                }
            }
            Error::Store { source } => source.kind(),
        }
    }

    /// Whether the same call may succeed if retried later, unchanged.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Introspection { source }
            | Error::Installation { source }
            | Error::Store { source } => source.is_retryable(),
            other => other.kind().is_retryable(),
        }
    }

    /// Moves the cause out, for the conversion into a core error.
    fn into_source(self) -> Option<CoreError> {
        match self {
            Error::KeyRejected { source } => source,
            Error::TenantConflict { source, .. }
            | Error::ConcurrentChange { source, .. }
            | Error::Config { source }
            | Error::Introspection { source }
            | Error::Installation { source }
            | Error::Store { source } => Some(source),
            _ => None,
        }
    }

    pub(crate) fn store(source: CoreError) -> Self {
        Error::Store { source }
    }
}

impl From<Error> for pleo_auth_core::Error {
    fn from(err: Error) -> Self {
        let converted =
            CoreError::new(err.kind(), err.to_string()).with_retryable(err.is_retryable());
        match err.into_source() {
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
        let err = Error::Introspection {
            source: CoreError::unavailable("introspection answered HTTP 503"),
        };
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.is_retryable());
        let core: CoreError = err.into();
        assert_eq!(core.kind(), ErrorKind::Unavailable);
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
            Error::InvalidKeyFormat { reason: "is empty" },
            Error::KeyRejected {
                source: Some(CoreError::new(
                    ErrorKind::Unauthenticated,
                    "introspection answered HTTP 401",
                )),
            },
            Error::NotAnApiKey,
            Error::Store {
                source: CoreError::unavailable("vault down"),
            },
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
        let err = Error::Introspection {
            source: CoreError::invalid_input("subject must be urn:pleo:company:<uuid>"),
        };
        assert_eq!(err.kind(), ErrorKind::Unexpected);
        assert!(!err.is_retryable());
    }
}
