//! A web integration: "Connect to Pleo" routes (axum) for many customers, their grants kept in
//! Redis behind envelope encryption, and an API route that calls Pleo for one customer.
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
//! # then open http://127.0.0.1:8080/connect?tenant=erp-4711
//! # and GET http://127.0.0.1:8080/employees/erp-4711
//! ```
//!
//! Without `PLEO_SANDBOX_URL` it talks to Pleo's staging environment with `PLEO_CLIENT_ID` and
//! `PLEO_CLIENT_SECRET`; the redirect URI `APP_URL/callback` (default
//! `http://127.0.0.1:8080/callback`) must be registered for the client. To serve the routes
//! under a path, `Router::nest("/pleo", connect_router(..))` serves `/pleo/callback`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use pleo_auth::oauth::OAuthConfig;
use pleo_auth::stores::encrypted::{EncryptedStore, EncryptionKey, EncryptionKeys};
use pleo_auth::stores::redis::RedisStore;
use pleo_auth::{ClientSecret, DynSecretStore, Environment, ErrorKind, PleoAuth};

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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let environment = environment()?;
    let sandbox = environment.name().as_str() == "sandbox";
    let app_url = var("APP_URL").unwrap_or_else(|| "http://127.0.0.1:8080".to_owned());

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
                .redirect_uri(format!("{app_url}/callback"))
                .scopes("users:read")
                .build()?,
        )
        .build()?;

    let app = Router::new()
        .route("/employees/{tenant}", get(employees))
        .with_state(auth.clone())
        // GET /connect?tenant=<your customer id> -> Pleo's consent page -> GET /callback
        .merge(pleo_auth::http::connect_router(auth.connect_flow()?));
    let address = app_url.trim_start_matches("http://");
    let listener = tokio::net::TcpListener::bind(address).await?;
    println!("listening on {app_url}; connect a customer at {app_url}/connect?tenant=erp-4711");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// `GET /employees/{tenant}`: the customer's employees, with that customer's credential.
async fn employees(State(auth): State<PleoAuth>, Path(tenant): Path<String>) -> Response {
    match auth
        .client()
        .get("/v2/employees")
        .tenant(&tenant)
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
