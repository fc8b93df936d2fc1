//! What is connected: one line per stored credential, without secrets.

use std::fmt;

use pleo_auth_core::{CredentialKind, EnvironmentName, ScopeSet, Subject, TenantId, Timestamp};

/// The state of a connection, as the store (and this process) sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Usable.
    Active,
    /// A refresh is in flight in this process.
    Refreshing,
    /// Rotated tokens are held in memory; the store write is being retried.
    PersistPending,
    /// A refresh failed recently; refreshes fail fast until the cooldown ends.
    CoolingDown,
    /// Pleo refused the OAuth grant; the customer must consent again.
    NeedsReauthorization,
    /// Pleo rejected the API key; the customer must provide a new one.
    NeedsReplacement,
    /// Disconnected locally; the revocation at Pleo is being retried.
    RevocationPending,
    /// Disconnected or revoked.
    Revoked,
    /// A state this version of pleo-auth does not name.
    Unknown,
}

impl ConnectionState {
    /// A short, stable, lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Active => "active",
            ConnectionState::Refreshing => "refreshing",
            ConnectionState::PersistPending => "persist_pending",
            ConnectionState::CoolingDown => "cooling_down",
            ConnectionState::NeedsReauthorization => "needs_reauthorization",
            ConnectionState::NeedsReplacement => "needs_replacement",
            ConnectionState::RevocationPending => "revocation_pending",
            ConnectionState::Revoked => "revoked",
            ConnectionState::Unknown => "unknown",
        }
    }

    /// Whether requests can use the connection.
    pub fn is_usable(self) -> bool {
        matches!(
            self,
            ConnectionState::Active
                | ConnectionState::Refreshing
                | ConnectionState::PersistPending
                | ConnectionState::CoolingDown
        )
    }
}

impl fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stored connection of a Pleo company or organisation, without secrets.
///
/// Returned by [`PleoAuth::connections`](crate::PleoAuth::connections).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// Your tenant linked to the subject, if any.
    pub tenant: Option<TenantId>,
    /// The Pleo company or organisation.
    pub subject: Subject,
    /// How the credential was obtained.
    pub method: CredentialKind,
    /// The environment the credential belongs to.
    pub environment: EnvironmentName,
    /// Whether it can be used, and if not, why.
    pub state: ConnectionState,
    /// The scopes granted.
    pub scopes: ScopeSet,
    /// How often the credential was rotated (OAuth) or replaced (API keys).
    pub generation: u64,
    /// When the current access token expires (OAuth).
    pub access_token_expires_at: Option<Timestamp>,
    /// When the credential was last refreshed (OAuth: when the current refresh token was
    /// issued) or last changed (API keys: connected, replaced or marked).
    pub refreshed_at: Option<Timestamp>,
    /// The API key for display, such as `****a1b2` (API keys).
    pub masked_key: Option<String>,
}

#[cfg(feature = "oauth")]
impl ConnectionState {
    pub(crate) fn from_grant(state: pleo_auth_oauth::GrantState) -> Self {
        use pleo_auth_oauth::GrantState;
        match state {
            GrantState::Active => ConnectionState::Active,
            GrantState::Refreshing => ConnectionState::Refreshing,
            GrantState::PersistPending => ConnectionState::PersistPending,
            GrantState::CoolingDown => ConnectionState::CoolingDown,
            GrantState::NeedsReauthorization => ConnectionState::NeedsReauthorization,
            GrantState::RevocationPending => ConnectionState::RevocationPending,
            GrantState::Revoked => ConnectionState::Revoked,
            _ => ConnectionState::Unknown,
        }
    }
}

#[cfg(feature = "apikey")]
impl ConnectionState {
    pub(crate) fn from_status(status: pleo_auth_core::CredentialStatus) -> Self {
        use pleo_auth_core::CredentialStatus;
        match status {
            CredentialStatus::Active => ConnectionState::Active,
            CredentialStatus::NeedsReauthorization => ConnectionState::NeedsReauthorization,
            CredentialStatus::NeedsReplacement => ConnectionState::NeedsReplacement,
            CredentialStatus::Revoked => ConnectionState::Revoked,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_working_states_are_usable() {
        assert!(ConnectionState::Active.is_usable());
        assert!(ConnectionState::PersistPending.is_usable());
        assert!(!ConnectionState::NeedsReauthorization.is_usable());
        assert!(!ConnectionState::Revoked.is_usable());
        assert_eq!(
            ConnectionState::NeedsReplacement.to_string(),
            "needs_replacement"
        );
    }
}
