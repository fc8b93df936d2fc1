//! A small web app around `PleoAuth` for the connect and admin tests: a stand-in login that
//! sets the app's session cookie, the connect routes behind the app's authorization, a settings
//! page to come back to, and the operator view under `/admin`.

#![allow(dead_code)]

use std::sync::Arc;

use axum::Router;
use axum::extract::RawQuery;
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use pleo_auth::http::{ConnectAuthorization, ConnectRoutes, Rejection, SameOriginPath};
use pleo_auth::oauth::OAuthConfig;
use pleo_auth::sandbox::{SandboxHandle, harness, seed};
use pleo_auth::{ClientSecret, DynSecretStore, Environment, PleoAuth, TenantId};

/// Every secret the sandbox issues starts with `CANARY`. `client` is a browser stand-in that
/// keeps no cookies and follows no redirects: each test passes the cookies it means to send.
#[allow(unused_imports)] // not every test that includes this module checks for the canary
pub use pleo_auth::sandbox::harness::{CANARY, http as client};
/// The app's session cookie (a stand-in for a real login).
pub const SESSION: &str = "app_session";

/// A sandbox that approves consent for Acme Denmark at once (or shows the page with `None`).
pub async fn sandbox(auto_approve: Option<uuid::Uuid>) -> (SandboxHandle, Environment) {
    let sandbox = harness::canary_sandbox()
        .auto_approve(auto_approve)
        .start()
        .await
        .expect("the sandbox starts");
    let base = sandbox.base_url();
    let environment = pleo_auth_core::testing::environment_at("sandbox", &base);
    (sandbox, environment)
}

/// The stand-in session: `app_session=<tenant>` or `app_session=<tenant>|admin`.
#[derive(Debug, Clone)]
struct Session {
    tenant: TenantId,
    admin: bool,
}

fn session(request: &Parts) -> Option<Session> {
    let header = request.headers.get(header::COOKIE)?.to_str().ok()?;
    let value = cookie::Cookie::split_parse(header)
        .filter_map(Result::ok)
        .find(|c| c.name() == SESSION)?
        .value()
        .to_owned();
    let (tenant, admin) = match value.strip_suffix("|admin") {
        Some(tenant) => (tenant.to_owned(), true),
        None => (value, false),
    };
    Some(Session {
        tenant: TenantId::new(tenant).ok()?,
        admin,
    })
}

/// The app's authorization: the session's tenant may be connected; admins see the admin view.
#[derive(Debug, Clone)]
pub struct StandInSessions {
    /// Where an anonymous `/connect` is sent (`None`: a 401 page).
    pub login: Option<SameOriginPath>,
}

#[async_trait::async_trait]
impl ConnectAuthorization for StandInSessions {
    async fn tenant(&self, request: &Parts) -> Result<TenantId, Rejection> {
        match (session(request), &self.login) {
            (Some(session), _) => Ok(session.tenant),
            (None, Some(login)) => Err(Rejection::Login(login.clone())),
            (None, None) => Err(Rejection::Unauthenticated),
        }
    }

    async fn admin(&self, request: &Parts) -> Result<(), Rejection> {
        match session(request) {
            Some(s) if s.admin => Ok(()),
            Some(_) => Err(Rejection::Forbidden),
            None => Err(Rejection::Unauthenticated),
        }
    }
}

/// `GET /login?as=<tenant>[&admin=1]`: sets the session cookie (test stand-in for a login).
async fn login(RawQuery(query): RawQuery) -> Response {
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let tenant = pairs
        .iter()
        .find(|(k, _)| k == "as")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let admin = pairs.iter().any(|(k, v)| k == "admin" && v == "1");
    let value = if admin {
        format!("{tenant}|admin")
    } else {
        tenant
    };
    let cookie = cookie::Cookie::build((SESSION, value))
        .path("/")
        .http_only(true)
        .build();
    let mut response = "signed in".into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie.to_string()).unwrap(),
    );
    response
}

/// `GET /settings`: where the connect routes send the browser back to.
async fn settings(RawQuery(query): RawQuery) -> String {
    format!("settings {}", query.unwrap_or_default())
}

/// The app, serving on a loopback port.
pub struct WebApp {
    pub url: String,
    pub auth: PleoAuth,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for WebApp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl WebApp {
    /// The app with `store`, return-to paths `/settings`, and anonymous users sent to `/login`
    /// when `login_redirect` is set.
    pub async fn start(
        environment: &Environment,
        store: DynSecretStore,
        login_redirect: bool,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let auth = PleoAuth::builder()
            .environment(environment.clone())
            .store(store)
            .oauth(
                OAuthConfig::builder()
                    .environment(environment.clone())
                    .client_id(seed::DEMO_CLIENT_ID)
                    .client_secret(ClientSecret::new(seed::DEMO_CLIENT_SECRET))
                    .redirect_uri(format!("{url}/callback"))
                    .scopes("users:read")
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let sessions = StandInSessions {
            login: login_redirect.then(|| SameOriginPath::new("/login").unwrap()),
        };
        let back = SameOriginPath::new("/settings").unwrap();
        let connect = ConnectRoutes::new(auth.connect_flow().unwrap(), sessions.clone())
            .on_success(back.clone())
            .on_failure(back)
            .into_router();
        let app = Router::new()
            .route("/login", get(login))
            .route("/settings", get(settings))
            .merge(connect)
            .nest(
                "/admin",
                pleo_auth::http::admin_router(auth.admin_view(), sessions),
            );
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, auth, server }
    }
}

/// The cookie the connect routes use on http loopback.
pub const FLOW_COOKIE: &str = "pleo-auth-flow";

/// `/connect` as the signed-in `tenant`: the consent URL and the flow cookie.
pub async fn start(app: &WebApp, tenant: &str) -> (String, String) {
    let response = client()
        .get(format!("{}/connect", app.url))
        .header("cookie", format!("{SESSION}={tenant}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let flow = set_cookie(&response, FLOW_COOKIE).expect("the flow cookie is set");
    let consent = response.headers()["location"].to_str().unwrap().to_owned();
    (consent, flow)
}

/// Follows the consent URL (the sandbox approves at once) to the callback URL.
pub async fn consent(url: &str) -> String {
    let url = url.parse().expect("an absolute consent URL");
    harness::follow_auto_approve(&client(), &url).await.into()
}

/// The `name=value` part of the first `Set-Cookie` of `response` named `name`.
pub fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap().to_owned())
}

pub fn arc<S: pleo_auth::SecretStore>(store: S) -> DynSecretStore {
    Arc::new(store)
}
