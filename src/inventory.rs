//! [`PleoAuth::connections`]: every stored connection, without secrets.

use std::collections::HashMap;

use crate::PleoAuth;
use crate::connections::ConnectionInfo;
use crate::error::{Error, Result};

impl PleoAuth {
    /// Every stored connection of this environment: the OAuth grants of the configured client
    /// and the Integrated keys of the configured integration, each with its tenant (from the
    /// tenant links), state and scopes, sorted by tenant and subject. Holds no secret.
    pub async fn connections(&self) -> Result<Vec<ConnectionInfo>> {
        let environment = self.environment().name();
        let tenants: HashMap<_, _> = self
            .tenant_links()
            .list(environment)
            .await
            .map_err(|e| Error::core("reading the tenant links failed", e))?
            .into_iter()
            .map(|link| (link.subject, link.tenant))
            .collect();
        #[cfg(not(any(feature = "oauth", feature = "apikey")))]
        drop(tenants);
        let mut out: Vec<ConnectionInfo> = Vec::new();

        #[cfg(feature = "oauth")]
        if let Ok(oauth) = self.oauth() {
            let grants = oauth
                .token_manager()
                .list()
                .await
                .map_err(|e| Error::oauth("listing the OAuth grants failed", e))?;
            out.extend(grants.into_iter().map(|grant| ConnectionInfo {
                tenant: tenants.get(&grant.subject).cloned().or(grant.tenant),
                subject: grant.subject,
                method: pleo_auth_core::CredentialKind::OAuth,
                environment: environment.clone(),
                state: crate::ConnectionState::from_grant(grant.state),
                scopes: grant.scopes,
                generation: grant.generation,
                access_token_expires_at: grant.access_token_expires_at,
                refreshed_at: grant.refresh_token_issued_at,
                masked_key: None,
            }));
        }

        #[cfg(feature = "apikey")]
        if let Ok(keys) = self.api_keys() {
            let listed = keys
                .list()
                .await
                .map_err(|e| Error::apikey("listing the Integrated API keys failed", e))?;
            out.extend(listed.into_iter().map(|key| ConnectionInfo {
                tenant: tenants.get(&key.subject).cloned().or(key.tenant),
                subject: key.subject,
                method: key.kind.credential_kind(),
                environment: environment.clone(),
                state: crate::ConnectionState::from_status(key.status),
                scopes: key.scopes,
                generation: key.generation,
                access_token_expires_at: None,
                refreshed_at: Some(key.updated_at),
                masked_key: Some(key.masked_key),
            }));
        }

        out.sort_by(|a, b| {
            (a.tenant.as_ref(), a.subject, a.method.as_str()).cmp(&(
                b.tenant.as_ref(),
                b.subject,
                b.method.as_str(),
            ))
        });
        Ok(out)
    }
}
