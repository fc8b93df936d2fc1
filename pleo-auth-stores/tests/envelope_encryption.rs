//! Envelope encryption with data keys from AWS KMS (moto) and Vault/OpenBao Transit (OpenBao),
//! `cargo xtask services up`: conformance, binding to the record, bad keys, rotation and rewrap.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_kms::config::{Credentials, Region, SharedCredentialsProvider};
use aws_sdk_kms::types::{KeySpec, KeyUsageType};
use pleo_auth_core::testing::{
    self, FaultProxy, FaultyStore, ProxyFault, bytes as secret, key as sk, service_env,
};
use pleo_auth_core::{ErrorKind, MemoryStore, Precondition, SecretStore, StoreKey, random_urlsafe};
use pleo_auth_stores::encrypted::{EncryptedStore, KeyProvider};
use pleo_auth_stores::kms::AwsKmsKeyProvider;
use pleo_auth_stores::transit::TransitKeyProvider;
use pleo_auth_stores::vault::VaultStore;

const CANARY: &str = "CANARY-envelope-plaintext";

fn moto() -> String {
    service_env("PLEO_AUTH_TEST_AWS_ENDPOINT")
}

fn sdk_config() -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "AKIDTESTING",
            "CANARY-secret-access-key",
            None,
            None,
            "tests",
        )))
        .build()
}

fn kms_client() -> aws_sdk_kms::Client {
    let config = aws_sdk_kms::config::Builder::from(&sdk_config())
        .endpoint_url(moto())
        .build();
    aws_sdk_kms::Client::from_conf(config)
}

/// A new KMS key on moto of `spec` and `usage`; returns its id.
async fn kms_key(spec: KeySpec, usage: KeyUsageType) -> String {
    kms_client()
        .create_key()
        .key_spec(spec)
        .key_usage(usage)
        .send()
        .await
        .unwrap()
        .key_metadata()
        .unwrap()
        .key_id()
        .to_owned()
}

async fn symmetric_key() -> String {
    kms_key(KeySpec::SymmetricDefault, KeyUsageType::EncryptDecrypt).await
}

async fn kms_provider(key_id: &str, endpoint: &str) -> AwsKmsKeyProvider {
    AwsKmsKeyProvider::builder(key_id)
        .sdk_config(sdk_config())
        .endpoint_url(endpoint)
        .connect()
        .await
        .expect("connect to KMS")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Copies the sealed bytes of `from` to `to` in the inner store.
async fn move_sealed(inner: &MemoryStore, from: &StoreKey, to: &StoreKey) {
    let sealed = inner.get(from).await.unwrap().unwrap();
    inner
        .put(to, sealed.value, Precondition::None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kms_envelope_passes_the_store_suite_with_and_without_the_cache() {
    let key = symmetric_key().await;
    let cached = kms_provider(&key, &moto()).await;
    testing::conformance(Arc::new(EncryptedStore::new(MemoryStore::new(), cached))).await;
    let uncached = AwsKmsKeyProvider::builder(&key)
        .sdk_config(sdk_config())
        .endpoint_url(moto())
        .cache_ttl(Duration::ZERO)
        .connect()
        .await
        .unwrap();
    testing::conformance(Arc::new(EncryptedStore::new(MemoryStore::new(), uncached))).await;
}

#[tokio::test]
async fn kms_values_hold_a_wrapped_data_key_bound_to_their_record() {
    let key = symmetric_key().await;
    let inner = Arc::new(MemoryStore::new());
    let provider = kms_provider(&key, &moto()).await;
    let arn = provider.key_arn().to_owned();
    let store = EncryptedStore::new(inner.clone(), provider);
    let a = sk(&["grants", "a"]);
    let b = sk(&["grants", "b"]);
    store
        .put(&a, secret(CANARY), Precondition::Absent)
        .await
        .unwrap();
    let sealed = inner.get(&a).await.unwrap().unwrap();
    let bytes = sealed.value.expose_secret();
    assert_eq!(&bytes[..4], b"PAE\x02", "format 2: a wrapped data key");
    assert!(
        contains(bytes, arn.as_bytes()),
        "the key's ARN names the master key"
    );
    assert!(!contains(bytes, CANARY.as_bytes()));
    assert_eq!(
        store.key_id(&a).await.unwrap().as_deref(),
        Some(arn.as_str())
    );
    assert_eq!(
        store.get(&a).await.unwrap().unwrap().value.expose_secret(),
        CANARY.as_bytes()
    );

    // Moved to another record: KMS refuses the data key under that record's context.
    move_sealed(&inner, &a, &b).await;
    let fresh = EncryptedStore::new(inner.clone(), kms_provider(&key, &moto()).await);
    let err = fresh
        .get(&b)
        .await
        .expect_err("a moved value does not open");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err:?}");
    assert!(
        err.to_string().contains("grants/b") && err.to_string().contains("context"),
        "{err}"
    );
    let shown = format!("{err} {err:?} {}", testing::error_chain(&err));
    assert!(!shown.contains("CANARY"), "{shown}");
    // The same value under its own record still opens with a cold cache.
    assert!(fresh.get(&a).await.unwrap().is_some());
}

#[tokio::test]
async fn a_cached_data_key_reads_without_kms_and_a_cold_one_needs_it() {
    let key = symmetric_key().await;
    let upstream: SocketAddr = moto()
        .trim_start_matches("http://")
        .parse()
        .expect("moto's address");
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let endpoint = format!("http://{}", proxy.addr());
    let inner = Arc::new(MemoryStore::new());
    let store = EncryptedStore::new(
        inner.clone(),
        AwsKmsKeyProvider::builder(&key)
            .sdk_config(sdk_config())
            .endpoint_url(&endpoint)
            .timeout(Duration::from_secs(2))
            .connect()
            .await
            .unwrap(),
    );
    let k = sk(&["cached"]);
    store
        .put(&k, secret("value"), Precondition::Absent)
        .await
        .unwrap();
    proxy.set_fault(ProxyFault::Reset);
    proxy.close_all();
    let read = store
        .get(&k)
        .await
        .expect("a cached data key needs no KMS call");
    assert_eq!(read.unwrap().value.expose_secret(), b"value");

    let cold = EncryptedStore::new(
        inner,
        AwsKmsKeyProvider::builder(&key)
            .sdk_config(sdk_config())
            .endpoint_url(moto())
            .cache_ttl(Duration::ZERO)
            .connect()
            .await
            .unwrap(),
    );
    assert!(cold.get(&k).await.unwrap().is_some());
    let through_proxy = AwsKmsKeyProvider::builder(&key)
        .sdk_config(sdk_config())
        .endpoint_url(&endpoint)
        .timeout(Duration::from_secs(1))
        .connect()
        .await;
    assert!(
        through_proxy.is_err_and(|e| e.kind() == ErrorKind::Unavailable),
        "KMS out of reach is Unavailable"
    );
}

#[tokio::test]
async fn kms_keys_that_cannot_seal_are_refused_with_what_to_fix() {
    let rsa = kms_key(KeySpec::Rsa2048, KeyUsageType::EncryptDecrypt).await;
    let err = AwsKmsKeyProvider::builder(&rsa)
        .sdk_config(sdk_config())
        .endpoint_url(moto())
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(
        err.to_string().contains(&rsa)
            && err.to_string().contains("RSA_2048")
            && err.to_string().contains("SYMMETRIC_DEFAULT"),
        "{err}"
    );
    let hmac = kms_key(KeySpec::Hmac256, KeyUsageType::GenerateVerifyMac).await;
    let err = kms_provider_err(&hmac).await;
    assert!(err.to_string().contains("GENERATE_VERIFY_MAC"), "{err}");

    let disabled = symmetric_key().await;
    kms_client()
        .disable_key()
        .key_id(&disabled)
        .send()
        .await
        .unwrap();
    let err = kms_provider_err(&disabled).await;
    assert!(
        err.to_string().contains("disabled") && err.to_string().contains(&disabled),
        "{err}"
    );
    let missing = "11111111-2222-3333-4444-555555555555";
    let err = kms_provider_err(missing).await;
    assert!(err.to_string().contains("does not exist"), "{err}");
}

async fn kms_provider_err(key_id: &str) -> pleo_auth_core::Error {
    let err = AwsKmsKeyProvider::builder(key_id)
        .sdk_config(sdk_config())
        .endpoint_url(moto())
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err:?}");
    err
}

#[tokio::test]
async fn kms_rotation_new_writes_use_the_new_key_and_rewrap_moves_the_rest() {
    let old_key = symmetric_key().await;
    let new_key = symmetric_key().await;
    let inner = Arc::new(MemoryStore::new());
    let before = EncryptedStore::new(inner.clone(), kms_provider(&old_key, &moto()).await);
    let prefix = sk(&["tenants"]);
    let mut keys = Vec::new();
    for i in 0..5 {
        let k = prefix.child(&format!("t{i}")).unwrap();
        before
            .put(&k, secret(&format!("value-{i}")), Precondition::Absent)
            .await
            .unwrap();
        keys.push(k);
    }
    let old_arn = before.keys().key_arn().to_owned();

    let rotated_provider = AwsKmsKeyProvider::builder(&new_key)
        .older_key_id(&old_key)
        .sdk_config(sdk_config())
        .endpoint_url(moto())
        .connect()
        .await
        .unwrap();
    let new_arn = rotated_provider.key_arn().to_owned();
    let rotated = EncryptedStore::new(inner.clone(), rotated_provider);
    assert_eq!(
        rotated
            .get(&keys[0])
            .await
            .unwrap()
            .unwrap()
            .value
            .expose_secret(),
        b"value-0",
        "old values still read"
    );
    let fresh = prefix.child("new").unwrap();
    rotated
        .put(&fresh, secret("new"), Precondition::Absent)
        .await
        .unwrap();
    assert_eq!(rotated.key_id(&fresh).await.unwrap(), Some(new_arn.clone()));
    assert_eq!(
        rotated.key_id(&keys[1]).await.unwrap(),
        Some(old_arn.clone())
    );

    // A value of another key that this provider does not list: Config, naming it.
    let only_new = EncryptedStore::new(inner.clone(), kms_provider(&new_key, &moto()).await);
    let err = only_new.get(&keys[1]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains(&old_arn), "{err}");

    let report = rotated.rewrap_below(&prefix, 2).await.unwrap();
    assert_eq!(report.checked, 6);
    assert_eq!(report.rewrapped.len(), 5);
    assert!(report.failed.is_empty() && report.raced.is_empty());
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(rotated.key_id(k).await.unwrap(), Some(new_arn.clone()));
        assert_eq!(
            only_new
                .get(k)
                .await
                .unwrap()
                .unwrap()
                .value
                .expose_secret(),
            format!("value-{i}").as_bytes(),
            "readable without the old key after rewrap"
        );
    }
    let again = rotated.rewrap_below(&prefix, 100).await.unwrap();
    assert!(again.rewrapped.is_empty(), "nothing left to move");
}

#[tokio::test]
async fn rewrap_never_overwrites_a_concurrent_write() {
    let old_key = symmetric_key().await;
    let new_key = symmetric_key().await;
    let memory = Arc::new(MemoryStore::new());
    let before = EncryptedStore::new(memory.clone(), kms_provider(&old_key, &moto()).await);
    let k = sk(&["raced", "grant"]);
    // What a refresh by another replica will write (sealed for `k` under the old key, which
    // that replica still runs), then the value the rewrap finds.
    let v1 = before
        .put(&k, secret("refreshed"), Precondition::Absent)
        .await
        .unwrap();
    let refreshed = memory.get(&k).await.unwrap().unwrap().value;
    let v2 = before
        .put(&k, secret("old"), Precondition::Version(v1))
        .await
        .unwrap();
    // Another writer lands just before the rewrap's write.
    let intruder = FaultyStore::new(memory.clone());
    intruder.rival_write_before_next_put(k.clone(), refreshed);
    let rotated = EncryptedStore::new(
        intruder,
        AwsKmsKeyProvider::builder(&new_key)
            .older_key_id(&old_key)
            .sdk_config(sdk_config())
            .endpoint_url(moto())
            .connect()
            .await
            .unwrap(),
    );
    let report = rotated.rewrap_below(&sk(&["raced"]), 10).await.unwrap();
    assert_eq!(report.raced, vec![k.clone()], "{report:?}");
    assert_ne!(memory.get(&k).await.unwrap().unwrap().version, v2);
    assert_eq!(
        rotated
            .get(&k)
            .await
            .unwrap()
            .unwrap()
            .value
            .expose_secret(),
        b"refreshed",
        "the concurrent write survived; the rewrap wrote nothing over it"
    );
    let again = rotated.rewrap(&k).await.unwrap();
    assert!(again.is_some(), "a later rewrap moves it");
}

// ----- Transit -----

fn vault() -> VaultStore {
    VaultStore::builder(service_env("PLEO_AUTH_TEST_VAULT_ADDR"))
        .token(service_env("PLEO_AUTH_TEST_VAULT_TOKEN"))
        .build()
        .unwrap()
}

fn root_client() -> vaultrs::client::VaultClient {
    vaultrs::client::VaultClient::new(
        vaultrs::client::VaultClientSettingsBuilder::default()
            .address(service_env("PLEO_AUTH_TEST_VAULT_ADDR"))
            .token(service_env("PLEO_AUTH_TEST_VAULT_TOKEN"))
            .build()
            .unwrap(),
    )
    .unwrap()
}

/// A new Transit key at `transit/`, derived or not; returns its name.
async fn transit_key(derived: bool) -> String {
    let name = format!(
        "pleo-{}",
        random_urlsafe(8).to_lowercase().replace('_', "x")
    );
    let mut options = vaultrs::api::transit::requests::CreateKeyRequest::builder();
    options.derived(derived);
    vaultrs::transit::key::create(&root_client(), "transit", &name, Some(&mut options))
        .await
        .unwrap();
    name
}

async fn transit_provider(name: &str, cache: Duration) -> TransitKeyProvider {
    TransitKeyProvider::builder(&vault(), name)
        .cache_ttl(cache)
        .connect()
        .await
        .expect("connect to Transit")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transit_envelope_passes_the_store_suite() {
    let name = transit_key(true).await;
    let provider = transit_provider(&name, Duration::from_secs(300)).await;
    testing::conformance(Arc::new(EncryptedStore::new(MemoryStore::new(), provider))).await;
}

#[tokio::test]
async fn transit_values_are_bound_to_their_record() {
    let name = transit_key(true).await;
    let inner = Arc::new(MemoryStore::new());
    let store = EncryptedStore::new(inner.clone(), transit_provider(&name, Duration::ZERO).await);
    let a = sk(&["grants", "a"]);
    let b = sk(&["grants", "b"]);
    store
        .put(&a, secret(CANARY), Precondition::Absent)
        .await
        .unwrap();
    let sealed = inner.get(&a).await.unwrap().unwrap();
    assert_eq!(&sealed.value.expose_secret()[..4], b"PAE\x02");
    assert!(contains(sealed.value.expose_secret(), b"vault:v1:"));
    move_sealed(&inner, &a, &b).await;
    let err = store
        .get(&b)
        .await
        .expect_err("a moved value does not open");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err:?}");
    assert!(err.to_string().contains("grants/b"), "{err}");
    assert!(!format!("{err:?} {}", testing::error_chain(&err)).contains("CANARY"));
}

#[tokio::test]
async fn transit_keys_that_cannot_bind_or_are_gone_are_config_errors() {
    let plain = transit_key(false).await;
    let err = TransitKeyProvider::builder(&vault(), &plain)
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("derived=true"), "{err}");
    let err = TransitKeyProvider::builder(&vault(), "never-created")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err:?}");
    assert!(err.to_string().contains("never-created"), "{err}");

    // A key deleted after start: writes fail before touching the store, cold reads fail.
    let name = transit_key(true).await;
    let inner = Arc::new(MemoryStore::new());
    let store = EncryptedStore::new(inner.clone(), transit_provider(&name, Duration::ZERO).await);
    let k = sk(&["doomed"]);
    let v = store
        .put(&k, secret("kept"), Precondition::Absent)
        .await
        .unwrap();
    let root = root_client();
    let mut update = vaultrs::api::transit::requests::UpdateKeyConfigurationRequest::builder();
    update.deletion_allowed(true);
    vaultrs::transit::key::update(&root, "transit", &name, Some(&mut update))
        .await
        .unwrap();
    vaultrs::transit::key::delete(&root, "transit", &name)
        .await
        .unwrap();
    let err = store
        .put(&k, secret("new"), Precondition::Version(v.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err:?}");
    assert!(
        err.to_string().contains(&name) && err.to_string().contains("does not exist"),
        "{err}"
    );
    assert_eq!(
        inner.get(&k).await.unwrap().unwrap().version,
        v,
        "nothing was overwritten"
    );
    let err = store.get(&k).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err:?}");
}

#[tokio::test]
async fn transit_rotation_and_rewrap() {
    let name = transit_key(true).await;
    let inner = Arc::new(MemoryStore::new());
    let provider = transit_provider(&name, Duration::from_secs(300)).await;
    let store = EncryptedStore::new(inner.clone(), provider);
    let prefix = sk(&["t"]);
    let old = prefix.child("old").unwrap();
    store
        .put(&old, secret("v1-sealed"), Precondition::Absent)
        .await
        .unwrap();
    vaultrs::transit::key::rotate(&root_client(), "transit", &name)
        .await
        .unwrap();
    // A new provider sees the new version at once (the first one re-reads it within 30 s).
    let store = EncryptedStore::new(inner.clone(), transit_provider(&name, Duration::ZERO).await);
    let fresh = prefix.child("fresh").unwrap();
    store
        .put(&fresh, secret("v2-sealed"), Precondition::Absent)
        .await
        .unwrap();
    let wrapped_of = |k: &StoreKey| {
        let inner = inner.clone();
        let k = k.clone();
        async move {
            inner
                .get(&k)
                .await
                .unwrap()
                .unwrap()
                .value
                .expose_secret()
                .to_vec()
        }
    };
    assert!(
        contains(&wrapped_of(&fresh).await, b"vault:v2:"),
        "new writes use v2"
    );
    assert!(contains(&wrapped_of(&old).await, b"vault:v1:"));
    assert_eq!(
        store
            .get(&old)
            .await
            .unwrap()
            .unwrap()
            .value
            .expose_secret(),
        b"v1-sealed",
        "old versions still read"
    );
    let report = store.rewrap_below(&prefix, 10).await.unwrap();
    assert_eq!(report.rewrapped, vec![old.clone()]);
    assert!(contains(&wrapped_of(&old).await, b"vault:v2:"));
    assert!(store.keys().is_current(&name, b"vault:v2:x").await.unwrap());
    assert!(!store.keys().is_current(&name, b"vault:v1:x").await.unwrap());
}
