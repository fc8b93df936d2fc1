//! A background worker: grants kept in HashiCorp Vault / OpenBao, a sync pass over every
//! connected company, and a daily keep-alive so idle companies' refresh tokens never expire.
//!
//! Several workers may run at once: the lease in Vault (compare-and-swap on KV v2) lets exactly
//! one of them refresh a grant, and the others adopt its tokens.
//!
//! ```text
//! # a local Pleo (`cargo run --features cli -- sandbox`) and OpenBao (`cargo xtask services up`)
//! PLEO_SANDBOX_URL=http://127.0.0.1:PORT/ VAULT_ADDR=http://127.0.0.1:18200 \
//! VAULT_TOKEN=pleo-auth-dev-root WORKER_ONCE=1 \
//! cargo run --example worker_vault --features vault
//! ```
//!
//! Connect companies into the same Vault path first, for example with
//! `PLEO_STORE=vault+http://127.0.0.1:18200/secret/pleo-auth-worker pleo-auth login`.

use std::sync::Arc;
use std::time::Duration;

use pleo_auth::oauth::OAuthConfig;
use pleo_auth::stores::vault::VaultStore;
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
    let vault = VaultStore::builder(var("VAULT_ADDR").ok_or("set VAULT_ADDR")?)
        .token(var("VAULT_TOKEN").ok_or("set VAULT_TOKEN")?)
        .mount("secret")
        .path_prefix("pleo-auth-worker")
        .build()?;
    let store: DynSecretStore = Arc::new(vault);
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
        // The default lease spans every replica that shares the store (a lease record written
        // with compare-and-swap in Vault), so one replica refreshes each grant.
        .store(store)
        .oauth(
            OAuthConfig::builder()
                .environment(environment)
                .client_id(client_id)
                .client_secret(ClientSecret::new(secret))
                // Not used by a worker, which never starts a flow; required by the config.
                .redirect_uri("http://127.0.0.1/callback")
                .scopes("users:read")
                .build()?,
        )
        .build()?;

    let once = var("WORKER_ONCE").is_some();
    let mut ticks = tokio::time::interval(Duration::from_secs(60 * 60));
    loop {
        tokio::select! {
            _ = ticks.tick() => pass(&auth).await?,
            _ = tokio::signal::ctrl_c() => break,
        }
        if once {
            break;
        }
    }
    // Rotated tokens that could not be written yet are written before the worker exits.
    auth.token_manager()?.flush().await?;
    Ok(())
}

/// One pass: keep idle grants alive, then sync every usable connection.
async fn pass(auth: &PleoAuth) -> Result<(), Box<dyn std::error::Error>> {
    let report = auth.token_manager()?.keep_alive().await?;
    println!(
        "keep-alive: {} grants checked, {} refreshed, {} failed",
        report.checked,
        report.refreshed.len(),
        report.failed.len()
    );
    for connection in auth.connections().await? {
        let Some(company) = connection.subject.company() else {
            continue;
        };
        if !connection.state.is_usable() {
            println!("{company}: {} (skipped)", connection.state);
            continue;
        }
        let result = auth
            .client()
            .get("/v2/employees")
            .company(company)
            .json::<serde_json::Value>()
            .await;
        match result {
            Ok(body) => println!(
                "{company}: {} employees",
                body["data"].as_array().map_or(0, Vec::len)
            ),
            // Reported once, never retried in a loop: the customer must consent again.
            Err(e) if e.kind() == ErrorKind::NeedsReauthorization => {
                println!("{company}: needs reauthorization; ask the customer to reconnect")
            }
            Err(e) if e.is_retryable() => println!("{company}: {e}; next pass retries"),
            Err(e) => println!("{company}: {e}"),
        }
    }
    Ok(())
}
