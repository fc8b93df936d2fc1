//! What a stored key looks like from the outside: everything but the key.

use pleo_auth_core::{
    ApiKeyCredential, ApiKeyKind, ClientId, CompanyId, CredentialStatus, EnvironmentName, ScopeSet,
    Subject, TenantId, Timestamp,
};
use serde::Serialize;

use crate::format::masked;

/// A stored API key, described without the key itself: safe to log, display and serialize.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// The environment the key belongs to.
    pub environment: EnvironmentName,
    /// The integration the key is stored under.
    pub integration_id: ClientId,
    /// The company or organisation the key acts for.
    pub subject: Subject,
    /// The tenant linked to the subject when the key was stored, if any.
    pub tenant: Option<TenantId>,
    /// Integrated or Standalone.
    pub kind: ApiKeyKind,
    /// Whether the key can be used.
    pub status: CredentialStatus,
    /// Why the status is not `Active`.
    pub status_reason: Option<String>,
    /// The scopes the key carries.
    pub scopes: ScopeSet,
    /// Incremented on every replacement.
    pub generation: u64,
    /// When the key was first connected.
    pub created_at: Timestamp,
    /// When the record last changed.
    pub updated_at: Timestamp,
    /// The key for display: see [`masked`](crate::masked).
    pub masked_key: String,
}

impl KeyInfo {
    /// The company, if the key belongs to a company.
    pub fn company(&self) -> Option<CompanyId> {
        self.subject.company()
    }

    pub(crate) fn from_record(record: &ApiKeyCredential) -> Self {
        Self {
            environment: record.environment.clone(),
            integration_id: record.integration_id.clone(),
            subject: record.subject,
            tenant: record.tenant.clone(),
            kind: record.kind,
            status: record.status,
            status_reason: record.status_reason.clone(),
            scopes: record.scopes.clone(),
            generation: record.generation,
            created_at: record.created_at,
            updated_at: record.updated_at,
            masked_key: record
                .key
                .as_ref()
                .map_or_else(|| "****".to_owned(), masked),
        }
    }
}
