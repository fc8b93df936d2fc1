//! Inspection data: counters and the API request log.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::faults::Endpoint;
use crate::secrets::token_fingerprint;

/// Why a grant (all its access and refresh tokens) was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationCause {
    /// An already-rotated refresh token was presented (strict rotation).
    RefreshTokenReuse,
    /// An expired refresh token was presented.
    RefreshTokenExpired,
    /// The authorization code the grant came from was presented again.
    CodeReplay,
    /// `DELETE /v1/installations/me` removed the installation.
    InstallationDeleted,
    /// The client revoked its refresh token at the revocation endpoint (RFC 7009).
    RevocationEndpoint,
    /// A test revoked it through [`SandboxHandle::revoke_grant`](crate::SandboxHandle::revoke_grant)
    /// or `POST /_sandbox/revoke`.
    Admin,
}

/// How an API request authenticated, as in `/v1/introspect`'s `authMethod`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AuthMethod {
    /// An OAuth 2.0 access token (`Authorization: Bearer`).
    #[serde(rename = "OAUTH2")]
    OAuth2,
    /// An Integrated or Standalone API key (`Authorization: Basic base64(key + ":")`).
    #[serde(rename = "API_KEY")]
    ApiKey,
}

/// Request counts by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCounts {
    /// Every request.
    pub total: u64,
    /// Requests answered with success.
    pub success: u64,
    /// Failed requests by error code (`invalid_grant`, `invalid_client`, …).
    pub errors: BTreeMap<String, u64>,
}

impl OutcomeCounts {
    pub(crate) fn record(&mut self, outcome: Result<(), &str>) {
        self.total += 1;
        match outcome {
            Ok(()) => self.success += 1,
            Err(code) => *self.errors.entry(code.to_owned()).or_default() += 1,
        }
    }

    /// The number of failures with this error code.
    pub fn errors_with(&self, code: &str) -> u64 {
        self.errors.get(code).copied().unwrap_or(0)
    }
}

/// One OAuth grant (the tokens descending from one authorization code).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantStats {
    /// The client the grant belongs to.
    pub client_id: String,
    /// The subject URN (`urn:pleo:company:<id>` or `urn:pleo:organisation:<id>`).
    pub subject_urn: String,
    /// Successful refreshes (rotations) of this grant.
    pub refreshes: u64,
    /// Why the grant was revoked, if it was.
    pub revoked: Option<RevocationCause>,
}

/// A snapshot of the sandbox's counters. Secrets never appear: tokens are named by
/// [`token_fingerprint`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Token-endpoint requests by `grant_type` (`authorization_code`, `refresh_token`,
    /// `unsupported` for any other value, `missing`, or `unparsed` when the body could not be read),
    /// each by outcome. Requests answered by an injected fault are not included (see
    /// [`Self::faults_injected`]).
    pub token_requests: BTreeMap<String, OutcomeCounts>,
    /// Successful refreshes (rotations), over all grants.
    pub refreshes: u64,
    /// Times an already-rotated refresh token was presented.
    pub refresh_token_reuses: u64,
    /// Refresh requests per presented refresh token (keyed by [`token_fingerprint`]), whatever the
    /// outcome. A count above 1 means the same refresh token was sent more than once.
    pub refresh_token_uses: BTreeMap<String, u64>,
    /// Grant revocations by cause (each grant is revoked at most once).
    pub grant_revocations: BTreeMap<RevocationCause, u64>,
    /// Every grant by grant ID (see [`SandboxHandle::grant_id`](crate::SandboxHandle::grant_id)).
    pub grants: BTreeMap<String, GrantStats>,
    /// Authorization-endpoint requests (GET and the consent form POST).
    pub authorization_requests: u64,
    /// Authorization codes issued.
    pub codes_issued: u64,
    /// Token-introspection requests by outcome.
    pub introspection_requests: OutcomeCounts,
    /// Token revocation requests (RFC 7009) by outcome. Unknown, spent and expired tokens count
    /// as successes, as the endpoint answers them with 200.
    pub revocation_requests: OutcomeCounts,
    /// Live access tokens revoked at the revocation endpoint (a revoked refresh token instead
    /// counts under [`RevocationCause::RevocationEndpoint`]).
    pub access_tokens_revoked: u64,
    /// Successful token responses replaced by the token-response rewrite hook
    /// ([`SandboxHandle::set_token_response_rewrite`](crate::SandboxHandle::set_token_response_rewrite)).
    /// Each one was issued (and its grant rotated) before it was replaced.
    pub token_responses_rewritten: u64,
    /// External API requests (those that reached a handler; see the request log).
    pub api_requests: u64,
    /// Requests per endpoint class, including those answered by an injected fault. Paths that
    /// belong to no class count under [`Endpoint::Any`]; `/_sandbox/` paths are not counted.
    pub endpoint_hits: BTreeMap<Endpoint, u64>,
    /// Injected faults served, by the endpoint class of the request that received them.
    pub faults_injected: BTreeMap<Endpoint, u64>,
}

impl Stats {
    /// Requests of this endpoint class so far ([`Stats::endpoint_hits`]; 0 if none).
    pub fn hits(&self, endpoint: Endpoint) -> u64 {
        self.endpoint_hits.get(&endpoint).copied().unwrap_or(0)
    }

    /// Token requests with this `grant_type`, any outcome.
    pub fn token_requests_for(&self, grant_type: &str) -> u64 {
        self.token_requests.get(grant_type).map_or(0, |c| c.total)
    }

    /// Successful token requests with this `grant_type`.
    pub fn token_successes_for(&self, grant_type: &str) -> u64 {
        self.token_requests.get(grant_type).map_or(0, |c| c.success)
    }

    /// Refresh requests that presented this refresh token.
    pub fn uses_of_refresh_token(&self, refresh_token: &str) -> u64 {
        self.refresh_token_uses
            .get(&token_fingerprint(refresh_token))
            .copied()
            .unwrap_or(0)
    }

    /// Grant revocations with this cause.
    pub fn revocations(&self, cause: RevocationCause) -> u64 {
        self.grant_revocations.get(&cause).copied().unwrap_or(0)
    }

    /// Grant revocations of any cause.
    pub fn total_revocations(&self) -> u64 {
        self.grant_revocations.values().sum()
    }
}

/// One External API request as the sandbox saw it (never the secret itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiRequestRecord {
    /// HTTP method.
    pub method: String,
    /// Path, without the query.
    pub path: String,
    /// The `company_id` query parameter exactly as sent, if any.
    pub company_id: Option<String>,
    /// How the request authenticated; `None` when no usable credential was presented.
    pub auth_method: Option<AuthMethod>,
    /// [`token_fingerprint`] of the presented token or API key, if one was presented.
    pub credential_fingerprint: Option<String>,
    /// The grant ID (OAuth) or key ID (API key) of a recognised credential.
    pub credential_id: Option<String>,
    /// The OAuth client (or Integrated key's client) of a recognised credential.
    pub client_id: Option<String>,
    /// The subject URN of a recognised credential.
    pub subject_urn: Option<String>,
    /// The companies a recognised credential covers.
    pub covered_companies: Vec<Uuid>,
    /// The HTTP status of the answer.
    pub status: u16,
}
