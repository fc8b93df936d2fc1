//! The records the sandbox keeps: consents, codes, grants, tokens, API keys, installations and
//! export jobs.

use std::time::SystemTime;

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::config::Subject;
use crate::stats::RevocationCause;

/// An authorization request waiting on the consent page.
#[derive(Debug)]
pub(crate) struct PendingConsent {
    pub(crate) client_id: String,
    pub(crate) redirect_uri: String,
    pub(crate) state: String,
    pub(crate) challenge: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) expires_at: SystemTime,
}

/// An authorization code.
#[derive(Debug)]
pub(crate) struct CodeRecord {
    pub(crate) client_id: String,
    pub(crate) redirect_uri: String,
    pub(crate) challenge: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) subject: Subject,
    pub(crate) expires_at: SystemTime,
    pub(crate) used: bool,
    pub(crate) grant: Option<u64>,
}

/// One authorization: the family of tokens descending from one code.
#[derive(Debug)]
pub(crate) struct Grant {
    pub(crate) client_id: String,
    pub(crate) subject: Subject,
    pub(crate) scopes: Vec<String>,
    /// Incremented by every rotation; only tokens of the current generation are valid.
    pub(crate) generation: u64,
    /// Cleared by an administrative access-token revocation; set again by the next rotation.
    pub(crate) access_valid: bool,
    pub(crate) refreshes: u64,
    pub(crate) revoked: Option<RevocationCause>,
}

#[derive(Debug)]
pub(crate) struct AccessRecord {
    pub(crate) grant: u64,
    pub(crate) generation: u64,
    pub(crate) issued_at: SystemTime,
    pub(crate) expires_at: SystemTime,
    pub(crate) jti: Uuid,
    pub(crate) scopes: Vec<String>,
    /// Set by a revocation request (RFC 7009) for this one token.
    pub(crate) revoked: bool,
}

#[derive(Debug)]
pub(crate) struct RefreshRecord {
    pub(crate) grant: u64,
    pub(crate) generation: u64,
    pub(crate) issued_at: SystemTime,
    pub(crate) expires_at: SystemTime,
    pub(crate) jti: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Integrated { client_id: String },
    Standalone,
}

#[derive(Debug)]
pub(crate) struct KeyRecord {
    pub(crate) id: String,
    pub(crate) kind: KeyKind,
    pub(crate) name: String,
    pub(crate) subject: Subject,
    pub(crate) scopes: Vec<String>,
    pub(crate) expires_at: Option<SystemTime>,
    pub(crate) revoked: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Installation {
    pub(crate) id: Uuid,
    pub(crate) client_id: Option<String>,
    pub(crate) company: Uuid,
    pub(crate) status: String,
    pub(crate) error_code: Option<String>,
    pub(crate) metadata: Map<String, Value>,
    pub(crate) created_at: SystemTime,
    pub(crate) updated_at: SystemTime,
}

#[derive(Debug, Clone)]
pub(crate) struct ExportJob {
    pub(crate) id: Uuid,
    pub(crate) company: Uuid,
    pub(crate) created_at: SystemTime,
}

/// A freshly issued access and refresh token pair.
pub(crate) struct IssuedTokens {
    pub(crate) grant: u64,
    pub(crate) access_token: String,
    pub(crate) refresh_token: String,
    pub(crate) expires_in: u64,
    pub(crate) scopes: Vec<String>,
}

/// The public ID of a grant, as used in [`Stats::grants`].
pub(crate) fn grant_label(id: u64) -> String {
    format!("grant-{id:06}")
}
