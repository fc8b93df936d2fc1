//! Serving the OAuth connect flow of web integrations: the [`ConnectFlow`] trait and (feature
//! `axum`) a router with `/connect` and `/callback`.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use pleo_auth_core::{BrowserBinding, TenantId};
use url::Url;

use crate::error::Result;

/// The two steps of connecting a customer, as a web integration's routes need them.
///
/// The OAuth client implements it (at the facade level); the router of
/// `connect_router` (feature `axum`) drives it.
#[async_trait]
pub trait ConnectFlow: Send + Sync + fmt::Debug + 'static {
    /// The redirect URI the authorization server sends the browser back to. The router sets
    /// its browser cookie for this URI's scheme: `__Host-` and `Secure` for https, without them
    /// only for http on loopback.
    fn redirect_uri(&self) -> &Url;

    /// Starts an authorization for `tenant`, bound to the browser that holds `browser`, and
    /// returns the URL to send the browser to.
    async fn authorize(&self, tenant: TenantId, browser: &BrowserBinding) -> Result<Url>;

    /// Completes the authorization from the redirect's raw query string in the browser that
    /// holds `browser` (validating `state` and the binding, exchanging the code, storing the
    /// credential) and returns a short, human-readable summary of what was connected. The
    /// summary is shown to the user (escaped); it must hold no secret. A flow started in
    /// another browser must be refused before any token request, and its state used up.
    async fn complete(&self, query: &str, browser: &BrowserBinding) -> Result<String>;
}

/// A shared, type-erased connect flow.
pub type DynConnectFlow = Arc<dyn ConnectFlow>;

#[cfg(feature = "axum")]
pub(crate) mod router {
    use std::sync::Arc;
    use std::time::Duration;

    use axum::Router;
    use axum::extract::{Request, State};
    use axum::http::request::Parts;
    use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
    use axum::response::{Html, IntoResponse, Response};
    use axum::routing::get;
    use cookie::{Cookie, SameSite};
    use pleo_auth_core::{BrowserBinding, TenantId, check_transport_security, is_loopback};

    use super::DynConnectFlow;
    use crate::authorization::{
        ConnectAuthorization, DynConnectAuthorization, Rejection, SameOriginPath, tenant_param,
    };
    use crate::pages::{self, SECURITY_HEADERS};

    /// The browser cookie on https: `__Host-` keeps it to this exact origin, path `/`, Secure.
    const HOST_COOKIE: &str = "__Host-pleo-auth-flow";
    /// The browser cookie on http loopback (development), where browsers refuse `__Host-`.
    const LOOPBACK_COOKIE: &str = "pleo-auth-flow";
    /// How long the browser keeps the cookie; longer than any pending authorization.
    const COOKIE_MAX_AGE: Duration = Duration::from_secs(60 * 60);
    /// The query parameter with the outcome, on the return-to paths.
    pub(crate) const OUTCOME_PARAM: &str = "pleo_connect";
    /// The query parameter with the failure's kind, on the failure return-to path.
    pub(crate) const REASON_PARAM: &str = "pleo_reason";

    /// The connect routes: `/connect` and `/callback`, with the app's authorization and,
    /// optionally, where to send the browser back to. See [`connect_router`] for the routes.
    ///
    /// ```no_run
    /// # fn run(
    /// #     flow: pleo_auth_http::DynConnectFlow,
    /// #     sessions: impl pleo_auth_http::ConnectAuthorization,
    /// # ) -> Result<(), pleo_auth_http::Error> {
    /// use pleo_auth_http::{ConnectRoutes, SameOriginPath};
    ///
    /// let routes = ConnectRoutes::new(flow, sessions)
    ///     .on_success(SameOriginPath::new("/settings/pleo")?)
    ///     .on_failure(SameOriginPath::new("/settings/pleo")?)
    ///     .into_router();
    /// let app = axum::Router::<()>::new().nest("/pleo", routes);
    /// # Ok(())
    /// # }
    /// ```
    #[derive(Clone)]
    pub struct ConnectRoutes {
        flow: DynConnectFlow,
        authorization: DynConnectAuthorization,
        on_success: Option<SameOriginPath>,
        on_failure: Option<SameOriginPath>,
    }

    impl std::fmt::Debug for ConnectRoutes {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ConnectRoutes")
                .field("flow", &self.flow)
                .field("on_success", &self.on_success)
                .field("on_failure", &self.on_failure)
                .finish_non_exhaustive()
        }
    }

    impl ConnectRoutes {
        /// The routes over `flow`, authorized by the app's `authorization`.
        pub fn new(flow: DynConnectFlow, authorization: impl ConnectAuthorization) -> Self {
            Self {
                flow,
                authorization: Arc::new(authorization),
                on_success: None,
                on_failure: None,
            }
        }

        /// After a connection succeeded, sends the browser to `path` with
        /// `pleo_connect=connected` added to its query, instead of showing the success page.
        pub fn on_success(mut self, path: SameOriginPath) -> Self {
            self.on_success = Some(path);
            self
        }

        /// After a connection failed, sends the browser to `path` with `pleo_connect=failed`
        /// and `pleo_reason=<kind>` (a [`pleo_auth_core::ErrorKind`] name such as
        /// `permission_denied`, `conflict` or `invalid_input`) added to its query, instead of
        /// showing the failure page.
        pub fn on_failure(mut self, path: SameOriginPath) -> Self {
            self.on_failure = Some(path);
            self
        }

        /// The axum router.
        pub fn into_router(self) -> Router {
            let cookie = CookieRule::for_redirect(self.flow.redirect_uri());
            let state = Arc::new(Routes {
                config: self,
                cookie,
            });
            Router::new()
                .route("/connect", get(connect))
                .route("/callback", get(callback))
                .with_state(state)
        }
    }

    /// An axum router with `GET /connect` and `GET /callback` for `flow`, authorized by the
    /// app's `authorization`; mount it where your redirect URI points
    /// (`Router::nest("/pleo", connect_router(flow, sessions))` serves `/pleo/callback`).
    ///
    /// - `GET /connect` asks `authorization` which tenant the signed-in user may connect. A
    ///   rejection answers `401`, `403` or a redirect to the app's sign-in page, and never
    ///   reaches Pleo. An optional `tenant` query parameter must name that same tenant (`403`
    ///   otherwise). The browser gets an `HttpOnly`, `SameSite=Lax` cookie holding a random
    ///   [`BrowserBinding`] (`__Host-` and `Secure` unless the redirect URI is http on
    ///   loopback), the flow is started bound to it, and the answer is `303 See Other` to
    ///   Pleo's consent page.
    /// - `GET /callback` completes the flow only in the browser holding that cookie: a
    ///   callback carried to another browser is refused before any token request and its state
    ///   is used up. It shows a small success page with the flow's summary, or a failure page
    ///   that reflects nothing from the request; or, with
    ///   [`ConnectRoutes::on_success`]/[`on_failure`](ConnectRoutes::on_failure), sends the
    ///   browser back to the app with the outcome in the query.
    ///
    /// Pages are sent with `no-store`, a strict content security policy, `DENY` framing and
    /// `no-referrer`. To authorize in a layer in front of these routes instead, pass
    /// [`DangerAuthorizedElsewhere`](crate::DangerAuthorizedElsewhere), explicitly.
    ///
    /// ```no_run
    /// # async fn run(flow: pleo_auth_http::DynConnectFlow) -> std::io::Result<()> {
    /// use axum::http::request::Parts;
    /// use pleo_auth_core::TenantId;
    /// use pleo_auth_http::{Rejection, connect_router};
    ///
    /// // Your app's session says which tenant the signed-in user belongs to (a stand-in).
    /// fn session_tenant(request: &Parts) -> Result<TenantId, Rejection> {
    ///     request
    ///         .extensions
    ///         .get::<TenantId>()
    ///         .cloned()
    ///         .ok_or(Rejection::Unauthenticated)
    /// }
    ///
    /// let app = axum::Router::new().nest("/pleo", connect_router(flow, session_tenant));
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    /// axum::serve(listener, app).await
    /// # }
    /// ```
    pub fn connect_router(
        flow: DynConnectFlow,
        authorization: impl ConnectAuthorization,
    ) -> Router {
        ConnectRoutes::new(flow, authorization).into_router()
    }

    struct Routes {
        config: ConnectRoutes,
        cookie: CookieRule,
    }

    /// Which cookie carries the browser binding.
    #[derive(Debug, Clone, Copy)]
    struct CookieRule {
        name: &'static str,
        secure: bool,
    }

    impl CookieRule {
        /// `__Host-` and `Secure`, except for an http redirect URI on loopback (development),
        /// where browsers would drop such a cookie.
        fn for_redirect(redirect_uri: &url::Url) -> Self {
            if redirect_uri.scheme() == "http" && is_loopback(redirect_uri) {
                Self {
                    name: LOOPBACK_COOKIE,
                    secure: false,
                }
            } else {
                Self {
                    name: HOST_COOKIE,
                    secure: true,
                }
            }
        }

        /// The browser's binding, if it presents a well-formed one.
        fn read(&self, headers: &HeaderMap) -> Option<BrowserBinding> {
            headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(Cookie::split_parse)
                .filter_map(std::result::Result::ok)
                .find(|c| c.name() == self.name && BrowserBinding::is_well_formed(c.value()))
                .map(|c| BrowserBinding::new(c.value().to_owned()))
        }

        fn set_cookie(&self, binding: &BrowserBinding) -> Option<HeaderValue> {
            let cookie = Cookie::build((self.name, binding.expose_secret().to_owned()))
                .path("/")
                .http_only(true)
                .secure(self.secure)
                .same_site(SameSite::Lax)
                .max_age(
                    cookie::time::Duration::try_from(COOKIE_MAX_AGE)
                        .unwrap_or(cookie::time::Duration::HOUR),
                )
                .build();
            let mut value = HeaderValue::from_str(&cookie.to_string()).ok()?;
            value.set_sensitive(true);
            Some(value)
        }
    }

    pub(crate) fn html(status: StatusCode, (title, text): (&str, &str)) -> Response {
        hardened((status, Html(pages::page(title, text))).into_response())
    }

    pub(crate) fn hardened(mut response: Response) -> Response {
        let headers = response.headers_mut();
        for (name, value) in SECURITY_HEADERS {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        response
    }

    pub(crate) fn see_other(location: &str) -> Response {
        match HeaderValue::from_str(location) {
            Ok(location) => {
                let mut response = StatusCode::SEE_OTHER.into_response();
                response.headers_mut().insert(header::LOCATION, location);
                hardened(response)
            }
            Err(_) => html(StatusCode::INTERNAL_SERVER_ERROR, pages::CONNECT_FAILED),
        }
    }

    /// The answer to a request the app's authorization refused.
    pub(crate) fn rejected(rejection: &Rejection) -> Response {
        match rejection {
            Rejection::Unauthenticated => html(StatusCode::UNAUTHORIZED, pages::UNAUTHENTICATED),
            Rejection::Forbidden => html(StatusCode::FORBIDDEN, pages::FORBIDDEN),
            Rejection::Login(path) => see_other(path.as_str()),
        }
    }

    async fn connect(State(routes): State<Arc<Routes>>, request: Request) -> Response {
        let (parts, _) = request.into_parts();
        let Ok(asked) = tenant_param(parts.uri.query()) else {
            return html(StatusCode::BAD_REQUEST, pages::BAD_REQUEST);
        };
        let tenant = match routes.config.authorization.tenant(&parts).await {
            Ok(tenant) => tenant,
            Err(rejection) => return rejected(&rejection),
        };
        if asked.as_ref().is_some_and(|asked| *asked != tenant) {
            tracing::warn!(
                "a connect request named another tenant than the signed-in user may connect; refused"
            );
            return html(StatusCode::FORBIDDEN, pages::FORBIDDEN);
        }
        start(&routes, &parts, tenant).await
    }

    async fn start(routes: &Routes, parts: &Parts, tenant: TenantId) -> Response {
        let browser = routes
            .cookie
            .read(&parts.headers)
            .unwrap_or_else(BrowserBinding::generate);
        let Some(set_cookie) = routes.cookie.set_cookie(&browser) else {
            return html(StatusCode::INTERNAL_SERVER_ERROR, pages::CONNECT_FAILED);
        };
        match routes.config.flow.authorize(tenant, &browser).await {
            Ok(url) if check_transport_security(&url).is_ok() => {
                let mut response = see_other(url.as_str());
                response
                    .headers_mut()
                    .append(header::SET_COOKIE, set_cookie);
                response
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

    async fn callback(State(routes): State<Arc<Routes>>, request: Request) -> Response {
        let (parts, _) = request.into_parts();
        // Without the cookie, a binding nobody holds: the flow is refused (and used up) by the
        // same check as a wrong cookie, before any token request.
        let browser = routes
            .cookie
            .read(&parts.headers)
            .unwrap_or_else(BrowserBinding::generate);
        let query = parts.uri.query().unwrap_or_default();
        let config = &routes.config;
        match config.flow.complete(query, &browser).await {
            Ok(summary) => match &config.on_success {
                Some(path) => see_other(&path.with_query(&[(OUTCOME_PARAM, "connected")])),
                None => html(StatusCode::OK, ("Connected to Pleo", &summary)),
            },
            Err(e) => {
                tracing::warn!(kind = %e.kind(), error = %e, "completing the connect flow failed");
                match &config.on_failure {
                    Some(path) => see_other(&path.with_query(&[
                        (OUTCOME_PARAM, "failed"),
                        (REASON_PARAM, e.kind().as_str()),
                    ])),
                    None => html(StatusCode::BAD_REQUEST, pages::FAILED),
                }
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

        #[test]
        fn the_cookie_is_host_only_and_secure_except_on_http_loopback() {
            let binding = BrowserBinding::generate();
            let https = CookieRule::for_redirect(&"https://app.example/cb".parse().unwrap());
            let set = https.set_cookie(&binding).unwrap();
            let set = set.to_str().unwrap();
            assert!(set.starts_with("__Host-pleo-auth-flow="), "{set}");
            for attribute in [
                "HttpOnly",
                "Secure",
                "SameSite=Lax",
                "Path=/",
                "Max-Age=3600",
            ] {
                assert!(set.contains(attribute), "{set}");
            }
            assert!(!set.contains("Domain"), "{set}");
            let loopback = CookieRule::for_redirect(&"http://127.0.0.1:8080/cb".parse().unwrap());
            let set = loopback.set_cookie(&binding).unwrap();
            let set = set.to_str().unwrap();
            assert!(set.starts_with("pleo-auth-flow="), "{set}");
            assert!(!set.contains("Secure"), "{set}");
            assert!(set.contains("HttpOnly") && set.contains("SameSite=Lax"));
            // http elsewhere gets the strict cookie (which the browser then refuses: fail closed).
            let http = CookieRule::for_redirect(&"http://app.example/cb".parse().unwrap());
            assert!(http.secure);

            let mut headers = HeaderMap::new();
            headers.insert(
                header::COOKIE,
                HeaderValue::from_str(&format!(
                    "other=1; __Host-pleo-auth-flow={}",
                    binding.expose_secret()
                ))
                .unwrap(),
            );
            let read = https.read(&headers).unwrap();
            assert_eq!(read.expose_secret(), binding.expose_secret());
            assert!(loopback.read(&headers).is_none());
            headers.insert(
                header::COOKIE,
                HeaderValue::from_static("__Host-pleo-auth-flow=short"),
            );
            assert!(
                https.read(&headers).is_none(),
                "ill-formed values are ignored"
            );
        }
    }
}
