//! The keep-alive sweep and `TokenManager::list` read grants with batch reads (`get_many`), not
//! one `get` per grant.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pleo_auth_core::{
    AccessToken, ClientSecret, CredentialKey, CredentialStatus, Environment, EnvironmentName,
    MemoryStore, OAuthGrant, Precondition, RecordStoreExt, RefreshToken, Result, SecretBytes,
    SecretStore, StoreKey, Subject, Timestamp, Version, Versioned, layout,
};
use pleo_auth_oauth::{OAuthClient, OAuthConfig};

const GRANTS: usize = 2_500;

/// Counts the reads that reach the inner store.
#[derive(Debug, Default)]
struct Counting {
    inner: MemoryStore,
    gets: AtomicU64,
    batches: AtomicU64,
    batched_keys: AtomicU64,
}

#[async_trait]
impl SecretStore for Counting {
    async fn get(&self, key: &StoreKey) -> Result<Option<Versioned>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(key).await
    }

    async fn put(
        &self,
        key: &StoreKey,
        value: SecretBytes,
        precondition: Precondition,
    ) -> Result<Version> {
        self.inner.put(key, value, precondition).await
    }

    async fn delete(&self, key: &StoreKey, precondition: Precondition) -> Result<()> {
        self.inner.delete(key, precondition).await
    }

    async fn list(&self, prefix: &StoreKey) -> Result<Vec<StoreKey>> {
        self.inner.list(prefix).await
    }

    async fn get_many(&self, keys: &[StoreKey]) -> Result<Vec<Option<Versioned>>> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.batched_keys
            .fetch_add(keys.len() as u64, Ordering::SeqCst);
        self.inner.get_many(keys).await
    }
}

fn grant(i: usize, now: Timestamp) -> OAuthGrant {
    OAuthGrant {
        environment: EnvironmentName::new("sandbox").unwrap(),
        client_id: "batch".parse().unwrap(),
        subject: format!("urn:pleo:company:0b000000-0000-4000-8000-{i:012}")
            .parse::<Subject>()
            .unwrap(),
        tenant: None,
        status: CredentialStatus::Active,
        status_reason: None,
        access_token: Some(AccessToken::new(format!("CANARY-at-{i}"))),
        access_token_expires_at: Some(now.saturating_add(Duration::from_secs(3600))),
        refresh_token: Some(RefreshToken::new(format!("CANARY-rt-{i}"))),
        refresh_token_issued_at: Some(now),
        scopes: "users:read".parse().unwrap(),
        generation: 1,
        created_at: now,
        updated_at: now,
        settings: BTreeMap::new(),
    }
}

#[tokio::test]
async fn keep_alive_and_list_read_grants_in_batches() {
    let store = Arc::new(Counting::default());
    let now = Timestamp::from_system_time(SystemTime::now());
    for i in 0..GRANTS {
        let record = grant(i, now);
        let key = layout::oauth_grant(&CredentialKey::new(
            record.environment.clone(),
            record.client_id.clone(),
            record.subject,
        ));
        store
            .put_record(&key, &record, Precondition::Absent)
            .await
            .unwrap();
    }
    let environment =
        Environment::custom("sandbox", "http://127.0.0.1:9/", "http://127.0.0.1:9/").unwrap();
    let config = OAuthConfig::builder()
        .environment(environment)
        .client_id("batch")
        .client_secret(ClientSecret::new("CANARY-client-secret"))
        .redirect_uri("http://127.0.0.1/callback")
        .scopes("users:read")
        .build()
        .unwrap();
    let manager = OAuthClient::builder(config, store.clone())
        .build()
        .unwrap()
        .token_manager();

    let report = manager.keep_alive().await.unwrap();
    assert_eq!(report.checked, GRANTS, "every grant was checked");
    assert!(report.refreshed.is_empty(), "fresh grants are left alone");
    assert_eq!(
        store.gets.load(Ordering::SeqCst),
        0,
        "no grant was read on its own"
    );
    assert_eq!(
        store.batches.load(Ordering::SeqCst),
        3,
        "2,500 grants in batches of at most 1,000"
    );
    assert_eq!(store.batched_keys.load(Ordering::SeqCst), GRANTS as u64);

    let listed = manager.list().await.unwrap();
    assert_eq!(listed.len(), GRANTS);
    assert_eq!(store.gets.load(Ordering::SeqCst), 0);
    assert_eq!(store.batches.load(Ordering::SeqCst), 6);
}
