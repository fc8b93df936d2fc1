//! A multi-tenant web integration: "Connect to Pleo" routes (axum) behind the app's own
//! sign-in, grants kept in Redis behind envelope encryption, an API route that calls Pleo for
//! the signed-in customer, and the operator view under `/admin`.
//!
//! Replicas share Redis: the pending authorization lives there (the callback may land on any
//! replica) and the Redis lease makes exactly one replica refresh each grant.
//!
//! ```text
//! # a local Pleo: `cargo run --features cli -- sandbox` prints its URL
//! PLEO_SANDBOX_URL=http://127.0.0.1:PORT/ \
//! REDIS_URL=redis://127.0.0.1:6379 \
//! PLEO_ENCRYPTION_KEY=$(head -c32 /dev/urandom | base64) \
//! cargo run --example web_axum_redis --features axum,redis,encryption
//! # then, in a browser:
//! #   http://127.0.0.1:8080/login?as=erp-4711   sign in (a stand-in for your app's login)
//! #   http://127.0.0.1:8080/connect             connect erp-4711 to Pleo
//! #   http://127.0.0.1:8080/employees           erp-4711's employees, with its credential
//! #   http://127.0.0.1:8080/login?as=ops&admin=1, then http://127.0.0.1:8080/admin
//! ```
//!
//! Without `PLEO_SANDBOX_URL` it talks to Pleo's staging environment with `PLEO_CLIENT_ID` and
//! `PLEO_CLIENT_SECRET`; the redirect URI `APP_URL/callback` (default
//! `http://127.0.0.1:8080/callback`) must be registered for the client. The app listens on
//! `APP_URL`'s host and port.

use std::sync::Arc;

use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use pleo_auth::http::{ConnectAuthorization, ConnectRoutes, Rejection, SameOriginPath};
use pleo_auth::oauth::OAuthConfig;
use pleo_auth::stores::encrypted::{EncryptedStore, EncryptionKey, EncryptionKeys};
use pleo_auth::stores::redis::RedisStore;
use pleo_auth::{ClientSecret, DynSecretStore, Environment, ErrorKind, PleoAuth, TenantId};

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The sandbox when `PLEO_SANDBOX_URL` is set, else Pleo's staging environment.
fn environment() -> Result<Environment, pleo_auth::CoreError> {
    match var("PLEO_SANDBOX_URL") {
        Some(url) => Environment::custom("sandbox", &url, &url),
        None => Ok(Environment::staging()),
    }
}

// ---------------------------------------------------------------------------------------------
// STAND-IN LOGIN. Replace this section with your app's real sign-in and session store. Here a
// cookie names the signed-in tenant, unsigned, so anyone can claim any tenant: it exists only to
// show where your session plugs into `ConnectAuthorization`.
// ---------------------------------------------------------------------------------------------

/// The stand-in session cookie: `<tenant>` or `<tenant>|admin`.
const SESSION_COOKIE: &str = "demo_session";

/// Who is signed in, from the stand-in cookie.
fn stand_in_session(request: &Parts) -> Option<(TenantId, bool)> {
    let cookies = request.headers.get(header::COOKIE)?.to_str().ok()?;
    let session = cookie::Cookie::split_parse(cookies)
        .filter_map(Result::ok)
        .find(|c| c.name() == SESSION_COOKIE)?;
    let (tenant, admin) = match session.value().strip_suffix("|admin") {
        Some(tenant) => (tenant, true),
        None => (session.value(), false),
    };
    Some((TenantId::new(tenant).ok()?, admin))
}

/// `GET /login?as=TENANT[&admin=1]`: the stand-in sign-in sets the session cookie.
async fn stand_in_login(axum::extract::RawQuery(query): axum::extract::RawQuery) -> Response {
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let Some(tenant) = pairs
        .iter()
        .find(|(k, _)| k == "as")
        .and_then(|(_, v)| TenantId::new(v.clone()).ok())
    else {
        return (StatusCode::BAD_REQUEST, "GET /login?as=TENANT[&admin=1]\n").into_response();
    };
    let admin = pairs.iter().any(|(k, v)| k == "admin" && v == "1");
    let value = if admin {
        format!("{}|admin", tenant.as_str())
    } else {
        tenant.as_str().to_owned()
    };
    let cookie = cookie::Cookie::build((SESSION_COOKIE, value))
        .path("/")
        .http_only(true)
        .same_site(cookie::SameSite::Lax)
        .build();
    let mut response = Html(if admin {
        "<p>Signed in (stand-in) as an admin: <a href=\"/admin\">operator view</a></p>"
    } else {
        "<p>Signed in (stand-in). <a href=\"/connect\">Connect to Pleo</a></p>"
    })
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

// ---------------------------------------------------------------------------------------------
// END OF THE STAND-IN LOGIN.
// ---------------------------------------------------------------------------------------------

/// The app's authorization: the signed-in tenant may connect itself; admins see `/admin`.
#[derive(Clone)]
struct AppSessions;

#[async_trait::async_trait]
impl ConnectAuthorization for AppSessions {
    async fn tenant(&self, request: &Parts) -> Result<TenantId, Rejection> {
        match stand_in_session(request) {
            Some((tenant, _)) => Ok(tenant),
            None => Err(Rejection::Login(
                SameOriginPath::new("/login").expect("a path"),
            )),
        }
    }

    async fn admin(&self, request: &Parts) -> Result<(), Rejection> {
        match stand_in_session(request) {
            Some((_, true)) => Ok(()),
            Some(_) => Err(Rejection::Forbidden),
            None => Err(Rejection::Unauthenticated),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let environment = environment()?;
    let sandbox = environment.name().as_str() == "sandbox";
    let app_url = var("APP_URL").unwrap_or_else(|| "http://127.0.0.1:8080".to_owned());
    let listen = url::Url::parse(&app_url)?;
    let address = format!(
        "{}:{}",
        listen.host_str().ok_or("APP_URL needs a host")?,
        listen
            .port_or_known_default()
            .ok_or("APP_URL needs a port")?
    );

    // Redis holds the records; every value is encrypted before it leaves the process.
    let redis =
        RedisStore::builder(var("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".into()))
            .key_prefix("web-example:")
            .connect()
            .await?;
    let key = EncryptionKey::from_base64(
        "2026-01",
        &var("PLEO_ENCRYPTION_KEY")
            .ok_or("set PLEO_ENCRYPTION_KEY to base64 of 32 random bytes")?,
    )?;
    let store: DynSecretStore = Arc::new(EncryptedStore::new(redis, EncryptionKeys::new(key)));

    let (client_id, secret) = if sandbox {
        (
            "pleo-auth-demo".to_owned(),
            "pleo-auth-demo-secret".to_owned(),
        )
    } else {
        (
            var("PLEO_CLIENT_ID").ok_or("set PLEO_CLIENT_ID")?,
            var("PLEO_CLIENT_SECRET").ok_or("set PLEO_CLIENT_SECRET")?,
        )
    };
    let auth = PleoAuth::builder()
        .environment(environment.clone())
        // The default lease is the Redis store's own (SET NX PX), shared by every replica.
        .store(store)
        .oauth(
            OAuthConfig::builder()
                .environment(environment)
                .client_id(client_id)
                .client_secret(ClientSecret::new(secret))
                .redirect_uri(format!("{}/callback", app_url.trim_end_matches('/')))
                .scopes("users:read")
                .build()?,
        )
        .build()?;

    // GET /connect -> Pleo's consent page -> GET /callback -> /?pleo_connect=connected|failed
    let connect = ConnectRoutes::new(auth.connect_flow()?, AppSessions)
        .on_success(SameOriginPath::new("/")?)
        .on_failure(SameOriginPath::new("/")?)
        .into_router();
    let app = Router::new()
        .route("/", get(home))
        .route("/login", get(stand_in_login))
        .route("/employees", get(employees))
        .with_state(auth.clone())
        .merge(connect)
        .nest(
            "/admin",
            pleo_auth::http::admin_router(auth.admin_view(), AppSessions),
        );
    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!(
        "listening on {app_url}; sign in at {app_url}/login?as=erp-4711, then open {app_url}/connect"
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// `GET /`: where the connect routes send the browser back, with `pleo_connect` in the query.
async fn home(axum::extract::RawQuery(query): axum::extract::RawQuery) -> Html<&'static str> {
    let outcome = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "pleo_connect")
        .map(|(_, v)| v.into_owned());
    Html(match outcome.as_deref() {
        Some("connected") => "<p>Connected to Pleo. <a href=\"/employees\">Employees</a></p>",
        Some(_) => {
            "<p>The connection to Pleo was not completed. <a href=\"/connect\">Try again</a></p>"
        }
        None => {
            "<p><a href=\"/login?as=erp-4711\">Sign in</a>, then <a href=\"/connect\">connect to Pleo</a>.</p>"
        }
    })
}

/// `GET /employees`: the signed-in customer's employees, with that customer's credential.
async fn employees(State(auth): State<PleoAuth>, request: axum::extract::Request) -> Response {
    let (parts, _) = request.into_parts();
    let Some((tenant, _)) = stand_in_session(&parts) else {
        return (StatusCode::UNAUTHORIZED, "sign in first\n").into_response();
    };
    match auth
        .client()
        .get("/v2/employees")
        .tenant(tenant.as_str())
        .json::<serde_json::Value>()
        .await
    {
        Ok(body) => Json(body).into_response(),
        Err(e) => {
            let status = match e.kind() {
                ErrorKind::NotFound => StatusCode::NOT_FOUND,
                // The customer must connect again: show them the "Connect to Pleo" button.
                ErrorKind::NeedsReauthorization | ErrorKind::Revoked => StatusCode::CONFLICT,
                ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
                _ if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_GATEWAY,
            };
            (status, format!("{e}\n")).into_response()
        }
    }
}
