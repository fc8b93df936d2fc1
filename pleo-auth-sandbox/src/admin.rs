//! JSON bodies of the `/_sandbox/` administration endpoints.
//!
//! A sandbox started as a separate process (the binary, or `pleo-auth sandbox`) is driven over
//! HTTP with these types; an in-process sandbox offers the same actions as methods of
//! [`SandboxHandle`](crate::SandboxHandle). The endpoints are listed in the crate documentation.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Company, Endpoint, Fault, Organisation};

/// Which grants an administrative revocation applies to.
///
/// `Debug` does not print tokens.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeTarget {
    /// The grant that this access or refresh token (current or old) belongs to.
    Token(String),
    /// A grant by ID (see [`Stats::grants`](crate::Stats::grants)).
    Grant(String),
    /// Every grant of `client_id` whose subject is `subject` or covers the company `subject`.
    Client {
        /// The OAuth client.
        client_id: String,
        /// A company or organisation ID.
        subject: Uuid,
    },
    /// Every grant.
    All,
}

impl fmt::Debug for RevokeTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Token(_) => f.write_str("Token([redacted])"),
            Self::Grant(id) => f.debug_tuple("Grant").field(id).finish(),
            Self::Client { client_id, subject } => f
                .debug_struct("Client")
                .field("client_id", client_id)
                .field("subject", subject)
                .finish(),
            Self::All => f.write_str("All"),
        }
    }
}

impl From<&str> for RevokeTarget {
    fn from(token: &str) -> Self {
        Self::Token(token.to_owned())
    }
}

impl From<String> for RevokeTarget {
    fn from(token: String) -> Self {
        Self::Token(token)
    }
}

impl From<&String> for RevokeTarget {
    fn from(token: &String) -> Self {
        Self::Token(token.clone())
    }
}

/// What `POST /_sandbox/revoke` revokes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeWhat {
    /// The whole grant: every access and refresh token (cause `admin`).
    Grant,
    /// Only the current access tokens; the refresh token stays valid.
    AccessTokens,
}

/// Body of `POST /_sandbox/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeRequest {
    /// Grants or access tokens.
    pub what: RevokeWhat,
    /// Which grants.
    pub target: RevokeTarget,
}

/// Answer of `POST /_sandbox/revoke` and `POST /_sandbox/api-keys/revoke`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeResponse {
    /// How many live grants (or keys) were affected.
    pub revoked: usize,
}

/// Body of `POST /_sandbox/api-keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MintApiKeyRequest {
    /// An Integrated API key for the installation of `client_id` in `company`, with the
    /// client's registered scopes. It replaces (revokes) an earlier key of that installation.
    Integrated {
        /// The registered client.
        client_id: String,
        /// The company.
        company: Uuid,
    },
    /// A Standalone API key.
    Standalone {
        /// A company or organisation ID (organisation level covers all its companies).
        subject: Uuid,
        /// The chosen scopes.
        scopes: Vec<String>,
        /// Lifetime in seconds; `None` never expires.
        #[serde(default)]
        expires_in_secs: Option<u64>,
        /// A display name, returned as `applicationName` by `/v1/introspect`.
        #[serde(default)]
        name: Option<String>,
    },
}

/// Answer of `POST /_sandbox/api-keys`. `Debug` does not print the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintApiKeyResponse {
    /// The new key, to send as `Authorization: Basic base64(key + ":")`.
    pub api_key: String,
}

impl fmt::Debug for MintApiKeyResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MintApiKeyResponse").finish_non_exhaustive()
    }
}

/// Body of `POST /_sandbox/api-keys/revoke`. `Debug` does not print the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeApiKeyRequest {
    /// The key to revoke.
    pub api_key: String,
}

impl fmt::Debug for RevokeApiKeyRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevokeApiKeyRequest")
            .finish_non_exhaustive()
    }
}

/// A [`Fault`] as JSON, e.g. `{"kind":"too_many_requests","retry_after_secs":30}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultSpec {
    /// [`Fault::TooManyRequests`].
    TooManyRequests {
        /// The `Retry-After` value, in seconds.
        retry_after_secs: u64,
    },
    /// [`Fault::ServerError`].
    ServerError {
        /// A status from 500 to 599.
        status: u16,
    },
    /// [`Fault::Delay`].
    Delay {
        /// The delay in milliseconds.
        millis: u64,
    },
    /// [`Fault::DropConnection`].
    DropConnection,
    /// [`Fault::Unauthorized`].
    Unauthorized,
}

impl From<Fault> for FaultSpec {
    fn from(fault: Fault) -> Self {
        match fault {
            Fault::TooManyRequests { retry_after_secs } => {
                Self::TooManyRequests { retry_after_secs }
            }
            Fault::ServerError(status) => Self::ServerError { status },
            Fault::Delay(d) => Self::Delay {
                millis: u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            },
            Fault::DropConnection => Self::DropConnection,
            Fault::Unauthorized => Self::Unauthorized,
        }
    }
}

impl From<FaultSpec> for Fault {
    fn from(spec: FaultSpec) -> Self {
        match spec {
            FaultSpec::TooManyRequests { retry_after_secs } => {
                Self::TooManyRequests { retry_after_secs }
            }
            FaultSpec::ServerError { status } => Self::ServerError(status),
            FaultSpec::Delay { millis } => Self::Delay(Duration::from_millis(millis)),
            FaultSpec::DropConnection => Self::DropConnection,
            FaultSpec::Unauthorized => Self::Unauthorized,
        }
    }
}

/// Body of `POST /_sandbox/faults`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRequest {
    /// The endpoint class.
    pub endpoint: Endpoint,
    /// The fault.
    pub fault: FaultSpec,
    /// How many of the next requests get it.
    pub count: u32,
}

/// Body of `POST /_sandbox/clock/advance`; the two fields add up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvanceClockRequest {
    /// Seconds to add.
    #[serde(default)]
    pub secs: u64,
    /// Milliseconds to add.
    #[serde(default)]
    pub millis: u64,
}

/// Answer of `GET /_sandbox/clock` and `POST /_sandbox/clock/advance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockResponse {
    /// The sandbox's now, in Unix seconds.
    pub now_unix: u64,
    /// How far the sandbox clock is ahead of the wall clock, in milliseconds.
    pub offset_millis: u64,
}

/// Body of `PUT /_sandbox/auto-approve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoApproveRequest {
    /// The company or organisation to approve for, or `None` to show the consent page.
    pub subject: Option<Uuid>,
}

/// Body of `POST /_sandbox/grant-id`. `Debug` does not print the token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantIdRequest {
    /// Any access or refresh token the sandbox issued.
    pub token: String,
}

impl fmt::Debug for GrantIdRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrantIdRequest").finish_non_exhaustive()
    }
}

/// Answer of `POST /_sandbox/grant-id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantIdResponse {
    /// The grant the token belongs to, if the sandbox issued it.
    pub grant_id: Option<String>,
}

/// A registered client as listed by `GET /_sandbox/seed` (without its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// Client ID.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Registered redirect URIs.
    pub redirect_uris: Vec<String>,
    /// Allowed scopes.
    pub scopes: Vec<String>,
    /// Whether `client_secret_post` is accepted.
    pub accept_client_secret_post: bool,
}

/// Answer of `GET /_sandbox/seed`: what the sandbox knows about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedResponse {
    /// The environment name.
    pub environment_name: String,
    /// Organisations.
    pub organisations: Vec<Organisation>,
    /// Companies.
    pub companies: Vec<Company>,
    /// Registered clients.
    pub clients: Vec<ClientInfo>,
}

/// The JSON error body of every `/_sandbox/` endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminError {
    /// A short code: `bad_request`, `unknown_client`, `unknown_subject`, `not_a_company`.
    pub error: String,
    /// A human-readable explanation.
    pub message: String,
}
