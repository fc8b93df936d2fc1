//! The keep-alive sweep and `TokenManager::list` read grants with batch reads (`get_many`), not
//! one `get` per grant.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pleo_auth_core::testing::FaultyStore;
use pleo_auth_core::{
    AccessToken, ClientSecret, CredentialKey, Environment, EnvironmentName, OAuthGrant,
    Precondition, RecordStoreExt, RefreshToken, Subject, Timestamp, layout,
};
use pleo_auth_oauth::{OAuthClient, OAuthConfig};

const GRANTS: usize = 2_500;

fn grant(i: usize, now: Timestamp) -> OAuthGrant {
    let subject = format!("urn:pleo:company:0b000000-0000-4000-8000-{i:012}")
        .parse::<Subject>()
        .unwrap();
    OAuthGrant::connected(
        CredentialKey::new(
            EnvironmentName::new("sandbox").unwrap(),
            "batch".parse().unwrap(),
            subject,
        ),
        AccessToken::new(format!("CANARY-at-{i}")),
        RefreshToken::new(format!("CANARY-rt-{i}")),
        "users:read".parse().unwrap(),
        now,
        Duration::from_secs(3600),
    )
}

#[tokio::test]
async fn keep_alive_and_list_read_grants_in_batches() {
    let store = Arc::new(FaultyStore::default());
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
    assert_eq!(store.calls().get, 0, "no grant was read on its own");
    assert_eq!(
        store.calls().get_many,
        3,
        "2,500 grants in batches of at most 1,000"
    );
    assert_eq!(store.calls().batched_keys, GRANTS as u64);

    let listed = manager.list().await.unwrap();
    assert_eq!(listed.len(), GRANTS);
    assert_eq!(store.calls().get, 0);
    assert_eq!(store.calls().get_many, 6);
}
