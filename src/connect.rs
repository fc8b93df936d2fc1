//! The OAuth connect flow as the web routes and the loopback listener of `pleo-auth-http` need it.

use async_trait::async_trait;
use pleo_auth_core::{BrowserBinding, TenantId};
use pleo_auth_http::ConnectFlow;
use pleo_auth_oauth::{AuthorizeOptions, OAuthClient};
use url::Url;

/// [`ConnectFlow`] over an [`OAuthClient`]: `authorize` starts a flow for a tenant, bound to the
/// browser that asked; `complete` finishes it in that browser only and summarises what was
/// connected.
///
/// Obtain it from [`PleoAuth::connect_flow`](crate::PleoAuth::connect_flow) and hand it to
/// `pleo_auth::http::connect_router` (feature `axum`).
#[derive(Debug, Clone)]
pub struct OAuthConnectFlow {
    oauth: OAuthClient,
    relink: bool,
}

impl OAuthConnectFlow {
    /// A flow over `oauth`.
    pub fn new(oauth: OAuthClient) -> Self {
        Self {
            oauth,
            relink: false,
        }
    }

    /// Lets a flow move an existing link of its tenant or of the connected company (default:
    /// refused, and nothing is stored).
    pub fn relink(mut self, relink: bool) -> Self {
        self.relink = relink;
        self
    }
}

fn http_error(err: pleo_auth_oauth::Error) -> pleo_auth_http::Error {
    let kind = err.kind().core_kind();
    let retryable = err.is_retryable();
    pleo_auth_http::Error::new(kind, err.to_string())
        .with_retryable(retryable)
        .with_source(err)
}

#[async_trait]
impl ConnectFlow for OAuthConnectFlow {
    fn redirect_uri(&self) -> &Url {
        self.oauth.config().redirect_uri()
    }

    async fn authorize(
        &self,
        tenant: TenantId,
        browser: &BrowserBinding,
    ) -> pleo_auth_http::Result<Url> {
        let options = AuthorizeOptions::new()
            .relink(self.relink)
            .tenant(tenant)
            .bind_to_browser(browser);
        self.oauth
            .authorize(options)
            .await
            .map(|request| request.url)
            .map_err(http_error)
    }

    async fn complete(
        &self,
        query: &str,
        browser: &BrowserBinding,
    ) -> pleo_auth_http::Result<String> {
        let connection = self
            .oauth
            .complete_in_browser(query, browser)
            .await
            .map_err(http_error)?;
        let mut summary = format!(
            "Connected Pleo {} {}",
            connection.subject.kind_str(),
            match connection.subject.company() {
                Some(company) => company.to_string(),
                None => connection
                    .subject
                    .organisation()
                    .map(|o| o.to_string())
                    .unwrap_or_default(),
            }
        );
        if let Some(tenant) = &connection.tenant {
            summary.push_str(&format!(" to {:?}", tenant.as_str()));
        }
        Ok(summary)
    }
}
