//! AWS SDK errors (Secrets Manager, KMS) reduced to what is safe to keep, classified by kind.

use std::fmt;

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use pleo_auth_core::{Error, ErrorKind};

use crate::cause::{Cause, is_tls_failure};

/// An SDK error reduced to what is safe to keep: the service's error code and message, the HTTP
/// status, or the transport failure; never a request or response body.
pub(crate) struct AwsError {
    kind: ErrorKind,
    code: Option<String>,
    pub(crate) cause: Cause,
}

impl AwsError {
    pub(crate) fn from_sdk<E, R>(e: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: fmt::Debug,
    {
        match &e {
            SdkError::ServiceError(service) => {
                let err = service.err();
                let code = err.code().map(str::to_owned);
                let kind = code.as_deref().map_or(ErrorKind::Unexpected, service_kind);
                let text = match (err.code(), err.message()) {
                    (Some(c), Some(m)) => format!("{c}: {m}"),
                    (Some(c), None) => c.to_owned(),
                    _ => "unknown service error".to_owned(),
                };
                AwsError {
                    kind,
                    code,
                    cause: Cause::new(text),
                }
            }
            SdkError::TimeoutError(_) => AwsError {
                kind: ErrorKind::Unavailable,
                code: None,
                cause: Cause::new("the request timed out"),
            },
            SdkError::DispatchFailure(failure) => {
                let connector = failure.as_connector_error();
                let tls = connector.is_some_and(|c| is_tls_failure(c));
                let kind = if tls || failure.is_user() {
                    ErrorKind::Config
                } else {
                    ErrorKind::Unavailable
                };
                let text = connector.map_or_else(
                    || "the request could not be sent".to_owned(),
                    |c| Cause::from_chain(c).as_str().to_owned(),
                );
                AwsError {
                    kind,
                    code: None,
                    cause: Cause::new(text),
                }
            }
            SdkError::ResponseError(_) => AwsError {
                kind: ErrorKind::Unavailable,
                code: None,
                cause: Cause::new("the response could not be read"),
            },
            // Credentials that cannot be loaded, an invalid request: a configuration problem.
            SdkError::ConstructionFailure(_) => AwsError {
                kind: ErrorKind::Config,
                code: None,
                cause: Cause::new(e.to_string()),
            },
            _ => AwsError {
                kind: ErrorKind::Unexpected,
                code: None,
                cause: Cause::new(e.to_string()),
            },
        }
    }

    pub(crate) fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    pub(crate) fn into_error(self, op: &'static str, backend: &'static str) -> Error {
        let message = match self.kind {
            ErrorKind::Config if self.code.is_none() => {
                format!("{op} failed: check the credentials, region and TLS settings")
            }
            _ => format!("{op} failed"),
        };
        Error::new(self.kind, message)
            .with_backend(backend)
            .with_source(self.cause)
    }
}

fn service_kind(code: &str) -> ErrorKind {
    match code {
        "ResourceNotFoundException" => ErrorKind::NotFound,
        "ResourceExistsException" => ErrorKind::Conflict,
        "ThrottlingException" | "TooManyRequestsException" | "RequestLimitExceeded" => {
            ErrorKind::RateLimited
        }
        "AccessDeniedException" | "AccessDenied" => ErrorKind::PermissionDenied,
        "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "InvalidSignatureException"
        | "SignatureDoesNotMatch"
        | "IncompleteSignature"
        | "MissingAuthenticationToken"
        | "ExpiredTokenException"
        | "DecryptionFailure"
        | "EncryptionFailure"
        // KMS: the key is disabled, pending deletion, missing or not for encryption.
        | "DisabledException"
        | "KMSInvalidStateException"
        | "NotFoundException"
        | "InvalidKeyUsageException" => ErrorKind::Config,
        // KMS: the ciphertext does not open (another key, another encryption context, tampered).
        "InvalidCiphertextException" | "IncorrectKeyException" => ErrorKind::Corrupt,
        "KeyUnavailableException" | "DependencyTimeoutException" => ErrorKind::Unavailable,
        "InternalServiceError" | "InternalFailure" | "ServiceUnavailable" => ErrorKind::Unavailable,
        _ => ErrorKind::Unexpected,
    }
}
