//! An ERP connector with Integrated API keys, kept in AWS Secrets Manager.
//!
//! The customer installs the integration in Pleo, gets a key, and pastes it into the ERP's
//! settings for their ERP company (the tenant). The connector validates the key with Pleo
//! (company, scopes), creates the installation, stores the key under (environment, integration,
//! company) and links the tenant, all or nothing. Syncs then name the tenant; the key of that
//! tenant's company is used, and a key Pleo rejects is marked for replacement, never retried.
//!
//! ```text
//! # a local Pleo (`cargo run --features cli -- sandbox`) and moto (`cargo xtask services up`)
//! PLEO_SANDBOX_URL=http://127.0.0.1:PORT/ AWS_ENDPOINT=http://127.0.0.1:15000 \
//! AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=eu-west-1 \
//! cargo run --example erp_aws_integrated_keys --features aws -- erp-42 < key.txt
//! ```
//!
//! The key is read from stdin, never from the command line. Without stdin input, the example
//! syncs the tenant with the key stored earlier.

use std::io::{IsTerminal, Read};
use std::sync::Arc;

use pleo_auth::apikey::{ApiKeyConfig, ConnectOptions};
use pleo_auth::stores::aws::AwsStore;
use pleo_auth::{ApiKey, ClientId, DynSecretStore, Environment, ErrorKind, PleoAuth, TenantId};

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
    let tenant = TenantId::new(
        std::env::args()
            .nth(1)
            .ok_or("usage: erp_aws_integrated_keys <ERP tenant id> [< key]")?,
    )?;
    let environment = environment()?;

    // Credentials and region come from the standard AWS chain; AWS_ENDPOINT points at a VPC
    // endpoint or a local emulator.
    let mut aws = AwsStore::builder().name_prefix("pleo-auth-erp/");
    if let Some(endpoint) = var("AWS_ENDPOINT") {
        aws = aws.endpoint_url(endpoint);
    }
    let store: DynSecretStore = Arc::new(aws.build().await?);

    // The integration's id, and the scopes a key must carry to be accepted.
    let integration =
        ClientId::new(var("PLEO_INTEGRATION_ID").unwrap_or_else(|| "pleo-auth-demo".into()))?;
    let keys = ApiKeyConfig::new(environment.clone(), integration)
        .with_required_scopes("users:read".parse()?);
    let auth = PleoAuth::builder()
        .environment(environment)
        .store(store)
        .api_keys(keys)
        .build()?;

    if !std::io::stdin().is_terminal() {
        let mut pasted = String::new();
        std::io::stdin()
            .take(64 * 1024)
            .read_to_string(&mut pasted)?;
        if !pasted.trim().is_empty() {
            let connected = auth
                .api_keys()?
                .connect_with(
                    ApiKey::new(pasted.trim()),
                    ConnectOptions::new().tenant(tenant.clone()).relink(true),
                )
                .await?;
            println!(
                "tenant {} -> {} with key {} (scopes {})",
                tenant.as_str(),
                connected.key.subject,
                connected.key.masked_key,
                connected.key.scopes
            );
        }
    }

    // A sync run for the tenant.
    match auth
        .client()
        .get("/v2/employees")
        .tenant(tenant.as_str())
        .json::<serde_json::Value>()
        .await
    {
        Ok(body) => println!(
            "synced {} employees for tenant {}",
            body["data"].as_array().map_or(0, Vec::len),
            tenant.as_str()
        ),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::NeedsReplacement | ErrorKind::Unauthenticated
            ) =>
        {
            println!(
                "Pleo rejected the key of tenant {}: ask the customer for a new one",
                tenant.as_str()
            )
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            println!(
                "tenant {} has no key yet: pipe one on stdin",
                tenant.as_str()
            )
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
