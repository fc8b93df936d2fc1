//! Serving the OAuth connect flow of web integrations: the [`ConnectFlow`] trait and (feature
//! `axum`) a router with `/connect` and `/callback`.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use pleo_auth_core::TenantId;
use url::Url;

use crate::error::Result;

/// The two steps of connecting a customer, as a web integration's routes need them.
///
/// The OAuth client implements it (at the facade level); the router of
/// `connect_router` (feature `axum`) drives it.
#[async_trait]
pub trait ConnectFlow: Send + Sync + fmt::Debug + 'static {
    /// Starts an authorization (for `tenant`, if named) and returns the URL to send the
    /// browser to.
    async fn authorize(&self, tenant: Option<TenantId>) -> Result<Url>;

    /// Completes the authorization from the redirect's raw query string (validating `state`,
    /// exchanging the code, storing the credential) and returns a short, human-readable summary
    /// of what was connected. The summary is shown to the user (escaped); it must hold no
    /// secret.
    async fn complete(&self, query: &str) -> Result<String>;
}

/// A shared, type-erased connect flow.
pub type DynConnectFlow = Arc<dyn ConnectFlow>;

#[cfg(feature = "axum")]
pub(crate) mod router {
    use axum::Router;
    use axum::extract::{RawQuery, State};
    use axum::http::{HeaderName, HeaderValue, StatusCode, header};
    use axum::response::{Html, IntoResponse, Response};
    use axum::routing::get;
    use pleo_auth_core::{TenantId, check_transport_security};

    use super::DynConnectFlow;
    use crate::pages::{self, SECURITY_HEADERS};

    /// An axum router with `GET /connect` and `GET /callback` for `flow`; mount it where your
    /// redirect URI points (`Router::nest("/pleo", connect_router(flow))` serves
    /// `/pleo/callback`).
    ///
    /// - `GET /connect?tenant=<your id>` (tenant optional) answers `303 See Other` to the URL of
    ///   [`ConnectFlow::authorize`](super::ConnectFlow::authorize).
    /// - `GET /callback?...` passes the raw query to
    ///   [`ConnectFlow::complete`](super::ConnectFlow::complete) and shows a small success page
    ///   with its summary, or a failure page that reflects nothing from the request.
    ///
    /// Pages are sent with `no-store`, a strict content security policy, `DENY` framing and
    /// `no-referrer`.
    ///
    /// ```no_run
    /// # async fn run(flow: pleo_auth_http::DynConnectFlow) -> std::io::Result<()> {
    /// let app = axum::Router::new().nest("/pleo", pleo_auth_http::connect_router(flow));
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    /// axum::serve(listener, app).await
    /// # }
    /// ```
    pub fn connect_router(flow: DynConnectFlow) -> Router {
        Router::new()
            .route("/connect", get(connect))
            .route("/callback", get(callback))
            .with_state(flow)
    }

    fn html(status: StatusCode, (title, text): (&str, &str)) -> Response {
        hardened((status, Html(pages::page(title, text))).into_response())
    }

    fn hardened(mut response: Response) -> Response {
        let headers = response.headers_mut();
        for (name, value) in SECURITY_HEADERS {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        response
    }

    /// The `tenant` parameter: absent, or exactly one valid tenant id; nothing else allowed.
    fn tenant_param(query: Option<&str>) -> Result<Option<TenantId>, ()> {
        let mut tenant = None;
        for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if name != "tenant" || tenant.is_some() {
                return Err(());
            }
            tenant = Some(TenantId::new(value.into_owned()).map_err(|_| ())?);
        }
        Ok(tenant)
    }

    async fn connect(State(flow): State<DynConnectFlow>, RawQuery(query): RawQuery) -> Response {
        let Ok(tenant) = tenant_param(query.as_deref()) else {
            return html(StatusCode::BAD_REQUEST, pages::BAD_REQUEST);
        };
        match flow.authorize(tenant).await {
            Ok(url) if check_transport_security(&url).is_ok() => {
                match HeaderValue::from_str(url.as_str()) {
                    Ok(location) => {
                        let mut response = StatusCode::SEE_OTHER.into_response();
                        response.headers_mut().insert(header::LOCATION, location);
                        hardened(response)
                    }
                    Err(_) => html(StatusCode::INTERNAL_SERVER_ERROR, pages::CONNECT_FAILED),
                }
            }
            Ok(_) => {
                tracing::warn!("connect flow returned an authorization URL that is not https");
                html(StatusCode::INTERNAL_SERVER_ERROR, pages::CONNECT_FAILED)
            }
            Err(e) => {
                tracing::warn!(kind = %e.kind(), error = %e, "starting the connect flow failed");
                html(StatusCode::INTERNAL_SERVER_ERROR, pages::CONNECT_FAILED)
            }
        }
    }

    async fn callback(State(flow): State<DynConnectFlow>, RawQuery(query): RawQuery) -> Response {
        match flow.complete(query.as_deref().unwrap_or_default()).await {
            Ok(summary) => html(StatusCode::OK, ("Connected to Pleo", &summary)),
            Err(e) => {
                tracing::warn!(kind = %e.kind(), error = %e, "completing the connect flow failed");
                html(StatusCode::BAD_REQUEST, pages::FAILED)
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn tenant_parameter_rules() {
            assert_eq!(tenant_param(None), Ok(None));
            assert_eq!(tenant_param(Some("")), Ok(None));
            assert_eq!(
                tenant_param(Some("tenant=acme%2Fgmbh"))
                    .unwrap()
                    .unwrap()
                    .as_str(),
                "acme/gmbh"
            );
            assert!(tenant_param(Some("tenant=a&tenant=b")).is_err());
            assert!(tenant_param(Some("tenant=a&x=1")).is_err());
            assert!(tenant_param(Some("tenant=")).is_err());
        }
    }
}
