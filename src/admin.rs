//! The operator view's data over [`PleoAuth`]: connections, dangling grants, waiting flows,
//! health.

use std::collections::HashMap;
use std::fmt;

use async_trait::async_trait;
use pleo_auth_core::{CredentialKind, ErrorKind, Subject, TenantId};
use pleo_auth_http::{
    AdminConnection, AdminDisconnect, AdminHealth, AdminView, DynAdminView, WAITING_FOR_CONSENT,
};

use crate::{ConnectionState, PleoAuth};

/// [`AdminView`] over a [`PleoAuth`]; obtain it from [`PleoAuth::admin_view`].
#[derive(Clone)]
pub(crate) struct PleoAuthAdmin {
    auth: PleoAuth,
}

impl fmt::Debug for PleoAuthAdmin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PleoAuthAdmin")
            .field("auth", &self.auth)
            .finish()
    }
}

impl PleoAuth {
    /// The operator view's data for `pleo_auth::http::admin_router` (feature `axum`): every
    /// connection with its dangling grants, every flow waiting for consent, and
    /// [`health`](Self::health) (`GET /health` and the page's health line).
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    pub fn admin_view(&self) -> DynAdminView {
        std::sync::Arc::new(PleoAuthAdmin { auth: self.clone() })
    }
}

fn http_error(message: &'static str, err: impl Into<crate::Error>) -> pleo_auth_http::Error {
    let err: crate::Error = err.into();
    pleo_auth_http::Error::new(err.kind(), message)
        .with_retryable(err.is_retryable())
        .with_source(err)
}

fn oauth_error(message: &'static str, err: pleo_auth_oauth::Error) -> pleo_auth_http::Error {
    http_error(message, crate::Error::oauth(message, err))
}

#[async_trait]
impl AdminView for PleoAuthAdmin {
    async fn connections(&self) -> pleo_auth_http::Result<Vec<AdminConnection>> {
        let auth = &self.auth;
        let connections = auth
            .connections()
            .await
            .map_err(|e| http_error("listing the connections failed", e))?;
        let mut dangling: HashMap<Subject, usize> = HashMap::new();
        let mut waiting = Vec::new();
        if let Ok(oauth) = auth.oauth() {
            for grant in oauth
                .token_manager()
                .dangling()
                .await
                .map_err(|e| oauth_error("listing the dangling grants failed", e))?
            {
                if let Some(subject) = grant.subject {
                    *dangling.entry(subject).or_default() += 1;
                }
            }
            waiting = oauth
                .pending()
                .await
                .map_err(|e| oauth_error("listing the pending authorizations failed", e))?;
        }
        let environment = auth.environment().name();
        let mut rows: Vec<AdminConnection> = connections
            .into_iter()
            .map(|c| {
                let mut row = AdminConnection::new(c.environment, c.method, c.state.as_str());
                row.reauthorization_needed = matches!(
                    c.state,
                    ConnectionState::NeedsReauthorization | ConnectionState::NeedsReplacement
                );
                row.dangling_grants = if c.method == CredentialKind::OAuth {
                    dangling.remove(&c.subject).unwrap_or(0)
                } else {
                    0
                };
                row.tenant = c.tenant;
                row.subject = Some(c.subject);
                row.last_refresh = c.refreshed_at;
                row.next_expiry = c.access_token_expires_at;
                row
            })
            .collect();
        // Dangling grants of companies that are not connected (any more) get their own rows.
        for (subject, count) in dangling {
            let mut row =
                AdminConnection::new(environment.clone(), CredentialKind::OAuth, "dangling");
            row.subject = Some(subject);
            row.dangling_grants = count;
            rows.push(row);
        }
        for flow in waiting.into_iter().filter(|p| !p.expired) {
            let mut row = AdminConnection::new(
                environment.clone(),
                CredentialKind::OAuth,
                WAITING_FOR_CONSENT,
            );
            row.tenant = flow.tenant;
            row.next_expiry = Some(flow.expires_at);
            rows.push(row);
        }
        Ok(rows)
    }

    async fn health(&self) -> Option<AdminHealth> {
        let health = self.auth.health().await;
        Some(AdminHealth::new(
            health.store.reachable,
            health.lease.reachable,
            health.needing_attention.len(),
            health.listing_error,
        ))
    }

    async fn disconnect(
        &self,
        tenant: &TenantId,
    ) -> pleo_auth_http::Result<Option<AdminDisconnect>> {
        let auth = &self.auth;
        let Some(link) = auth
            .tenant_links()
            .subject_for(auth.environment().name(), tenant)
            .await
            .map_err(|e| {
                http_error(
                    "reading the tenant link failed",
                    crate::Error::core("reading the tenant link failed", e),
                )
            })?
        else {
            return Ok(None);
        };
        let subject = link.subject;
        match link.credential_kind {
            CredentialKind::OAuth => {
                let manager = auth
                    .token_manager()
                    .map_err(|e| http_error("OAuth is not configured", e))?;
                match manager.disconnect(&subject).await {
                    Ok(outcome) => {
                        let outcome = match outcome {
                            pleo_auth_oauth::DisconnectOutcome::Revoked => "revoked",
                            pleo_auth_oauth::DisconnectOutcome::RevocationPending => {
                                "revocation_pending"
                            }
                            _ => "local_only",
                        };
                        Ok(Some(AdminDisconnect::new(
                            subject,
                            CredentialKind::OAuth,
                            outcome,
                        )))
                    }
                    Err(e) if e.kind() == &pleo_auth_oauth::ErrorKind::NotConnected => Ok(None),
                    Err(e) => Err(oauth_error("disconnecting the grant failed", e)),
                }
            }
            #[cfg(feature = "apikey")]
            CredentialKind::IntegratedApiKey => {
                let (Some(company), Ok(keys)) = (subject.company(), auth.api_keys()) else {
                    return Ok(None);
                };
                match keys.remove(company).await {
                    Ok(Some(_)) => Ok(Some(AdminDisconnect::new(
                        subject,
                        CredentialKind::IntegratedApiKey,
                        "removed",
                    ))),
                    Ok(None) => Ok(None),
                    Err(e) => Err(http_error(
                        "removing the api key failed",
                        crate::Error::apikey("removing the api key failed", e),
                    )),
                }
            }
            _ => Err(pleo_auth_http::Error::new(
                ErrorKind::Unsupported,
                "only OAuth grants and Integrated API keys are disconnected here",
            )),
        }
    }
}
