//! Abandoned consents leave nothing behind: after N flows whose customer never came back and a
//! sweep past their lifetime, no pending authorization remains, in every store backend (memory,
//! file, OpenBao, moto's AWS Secrets Manager, Redis, PostgreSQL; the live ones from
//! `cargo xtask services up`, failing when a server is missing).
#![cfg(all(
    feature = "oauth",
    feature = "file",
    feature = "vault",
    feature = "aws",
    feature = "redis",
    feature = "postgres",
    feature = "sandbox",
    feature = "testing"
))]

use std::sync::Arc;
use std::time::Duration;

use pleo_auth::oauth::{AuthorizeOptions, DEFAULT_PENDING_TTL, OAuthClient, OAuthConfig};
use pleo_auth::sandbox::{harness, seed};
use pleo_auth::stores::aws::AwsStore;
use pleo_auth::stores::file::FileStore;
use pleo_auth::stores::postgres::PostgresStore;
use pleo_auth::stores::redis::RedisStore;
use pleo_auth::stores::vault::VaultStore;
use pleo_auth::testing::{environment_at, service_env};
use pleo_auth::{
    BrowserBinding, ClientSecret, DynSecretStore, ManualClock, MemoryStore, SecretStore, TenantId,
    layout, random_urlsafe,
};

/// Abandoned flows per backend.
const ABANDONED: usize = 12;

async fn backends(dir: &std::path::Path) -> Vec<(&'static str, DynSecretStore)> {
    let prefix = format!(
        "pending-{}",
        random_urlsafe(6).to_lowercase().replace(['-', '_'], "x")
    );
    let postgres = PostgresStore::builder(service_env("PLEO_AUTH_TEST_POSTGRES_URL"))
        .schema(format!("t_{prefix}").replace('-', "_"))
        .connect()
        .await
        .expect("postgres answers");
    postgres.migrate().await.expect("migrate");
    vec![
        ("memory", Arc::new(MemoryStore::new()) as DynSecretStore),
        (
            "file",
            Arc::new(FileStore::open(dir.join("store")).unwrap()),
        ),
        (
            "openbao",
            Arc::new(
                VaultStore::builder(service_env("PLEO_AUTH_TEST_VAULT_ADDR"))
                    .token(service_env("PLEO_AUTH_TEST_VAULT_TOKEN"))
                    .path_prefix(&prefix)
                    .build()
                    .expect("a vault store"),
            ),
        ),
        (
            "aws",
            Arc::new(
                AwsStore::builder()
                    .endpoint_url(service_env("PLEO_AUTH_TEST_AWS_ENDPOINT"))
                    .region("eu-west-1")
                    .static_credentials("AKIDPENDING", "CANARY-aws-secret-key")
                    .name_prefix(format!("{prefix}/"))
                    .build()
                    .await
                    .expect("an aws store"),
            ),
        ),
        (
            "redis",
            Arc::new(
                RedisStore::builder(service_env("PLEO_AUTH_TEST_REDIS_URL"))
                    .key_prefix(format!("{prefix}:"))
                    .connect()
                    .await
                    .expect("redis answers"),
            ),
        ),
        ("postgres", Arc::new(postgres)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_flows_are_swept_from_every_backend() {
    let sandbox = harness::canary_sandbox().start().await.unwrap();
    let base = sandbox.base_url();
    let environment = environment_at("sandbox", &base);
    let config = OAuthConfig::builder()
        .environment(environment.clone())
        .client_id(seed::DEMO_CLIENT_ID)
        .client_secret(ClientSecret::new(seed::DEMO_CLIENT_SECRET))
        .redirect_uri("http://127.0.0.1/callback")
        .scopes("users:read")
        .build()
        .unwrap();
    let prefix =
        layout::pending_authorizations(environment.name(), &seed::DEMO_CLIENT_ID.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    for (name, store) in backends(dir.path()).await {
        let clock = ManualClock::new();
        let oauth = OAuthClient::builder(config.clone(), store.clone())
            .clock(Arc::new(clock.clone()))
            .build()
            .unwrap();
        for n in 0..ABANDONED {
            let options = AuthorizeOptions::new()
                .tenant(TenantId::new(format!("Tenant-{n}")).unwrap())
                .bind_to_browser(&BrowserBinding::generate());
            oauth.authorize(options).await.unwrap();
        }
        assert_eq!(
            store.list(&prefix).await.unwrap().len(),
            ABANDONED,
            "{name}"
        );
        assert_eq!(oauth.pending().await.unwrap().len(), ABANDONED, "{name}");

        // Still valid: nothing is swept.
        clock.advance(DEFAULT_PENDING_TTL - Duration::from_secs(1));
        let swept = oauth.sweep_pending().await.unwrap();
        assert_eq!((swept.removed, swept.remaining), (0, ABANDONED), "{name}");

        // Past the lifetime, keep-alive sweeps them all.
        clock.advance(Duration::from_secs(2));
        let report = oauth.token_manager().keep_alive().await.unwrap();
        assert_eq!(report.pending_removed, ABANDONED, "{name}");
        assert!(
            store.list(&prefix).await.unwrap().is_empty(),
            "{name}: 0 remain"
        );
        assert!(oauth.pending().await.unwrap().is_empty(), "{name}");
    }
}
