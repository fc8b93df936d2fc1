//! `AwsStore` against a real moto server (`cargo xtask services up`). moto accepts any
//! credentials; each test uses its own name prefix, so no state needs resetting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::primitives::Blob;
use pleo_auth_core::testing::{self, bytes, key, service_env};
use pleo_auth_core::{
    ErrorKind, Precondition, SecretBytes, SecretStore, StoreKey, StoreLease, random_urlsafe,
};
use pleo_auth_stores::aws::{AwsStore, Deletion};

fn endpoint() -> String {
    service_env("PLEO_AUTH_TEST_AWS_ENDPOINT")
}

async fn store_with(deletion: Deletion) -> AwsStore {
    AwsStore::builder()
        .endpoint_url(endpoint())
        .region("eu-west-1")
        .static_credentials("AKIDTESTING", "CANARY-secret-access-key")
        .name_prefix(format!("pleo-tests-{}/", random_urlsafe(6)))
        .deletion(deletion)
        .build()
        .await
        .unwrap()
}

async fn store() -> AwsStore {
    store_with(Deletion::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn passes_the_store_conformance_suite() {
    let store = store().await;
    let started = Instant::now();
    testing::conformance(testing::dyn_store(store)).await;
    println!("aws conformance suite: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn passes_the_store_conformance_suite_with_force_deletion() {
    testing::conformance(testing::dyn_store(store_with(Deletion::Force).await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_lease_passes_the_lease_conformance_suite() {
    let store = store().await;
    let started = Instant::now();
    testing::lease_conformance(Arc::new(StoreLease::new(Arc::new(store)))).await;
    println!("aws StoreLease conformance suite: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_writers_one_winner_per_version() {
    let store: pleo_auth_core::DynSecretStore = Arc::new(store().await);
    testing::race_compare_and_swap(&store, &key(&["race", "grant"]), 8, 5).await;
}

#[tokio::test]
async fn a_stale_writers_promote_is_rejected() {
    let store = store().await;
    let k = key(&["stale"]);
    let v1 = store
        .put(&k, bytes("v1"), Precondition::Absent)
        .await
        .unwrap();
    let v2 = store
        .put(&k, bytes("v2"), Precondition::Version(v1.clone()))
        .await
        .unwrap();
    let err = store
        .put(&k, bytes("late"), Precondition::Version(v1.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err:?}");
    assert!(!err.is_retryable());

    let read = store.get(&k).await.unwrap().unwrap();
    assert_eq!(
        (read.value.expose_secret(), &read.version),
        (&b"v2"[..], &v2)
    );
    // The stale writer's version exists but never became current; it took the one pending label
    // from v2, so no version carries more than before.
    let described = store
        .client()
        .describe_secret()
        .secret_id(store.secret_name(&k))
        .send()
        .await
        .unwrap();
    let stages = described.version_ids_to_stages().unwrap();
    assert_eq!(stages.len(), 3, "{stages:?}");
    assert_eq!(stages[v2.as_str()], vec!["AWSCURRENT".to_owned()]);
    assert_eq!(stages[v1.as_str()], vec!["AWSPREVIOUS".to_owned()]);
    let (_, stale) = stages
        .iter()
        .find(|(v, _)| *v != v1.as_str() && *v != v2.as_str())
        .unwrap();
    assert_eq!(stale, &vec!["pleo-auth-pending".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_racing_writers_from_one_version_have_one_winner() {
    let store = Arc::new(store().await);
    for round in 0..10 {
        let k = key(&["pair", &round.to_string()]);
        let from = store
            .put(&k, bytes("v0"), Precondition::Absent)
            .await
            .unwrap();
        let write = |value: &'static str| {
            let (store, k, from) = (store.clone(), k.clone(), from.clone());
            tokio::spawn(async move {
                (
                    value,
                    store
                        .put(&k, bytes(value), Precondition::Version(from))
                        .await,
                )
            })
        };
        let (a, b) = tokio::join!(write("a"), write("b"));
        let (mut winners, mut losers) = (Vec::new(), Vec::new());
        for (value, result) in [a.unwrap(), b.unwrap()] {
            match result {
                Ok(version) => winners.push((value, version)),
                Err(e) => losers.push(e),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {losers:?}");
        assert_eq!(losers[0].kind(), ErrorKind::Conflict, "{:?}", losers[0]);
        assert!(!losers[0].is_retryable());
        let read = store.get(&k).await.unwrap().unwrap();
        assert_eq!(
            (read.value.expose_secret(), &read.version),
            (winners[0].0.as_bytes(), &winners[0].1)
        );
    }
}

#[tokio::test]
async fn a_secret_scheduled_for_deletion_reads_as_absent_and_can_be_created_again() {
    let store = store().await;
    let parent = key(&["deleted"]);
    let k = parent.child("grant").unwrap();
    let v1 = store
        .put(&k, bytes("v1"), Precondition::Absent)
        .await
        .unwrap();
    store
        .delete(&k, Precondition::Version(v1.clone()))
        .await
        .unwrap();
    let name = store.secret_name(&k);
    let described = store
        .client()
        .describe_secret()
        .secret_id(&name)
        .send()
        .await
        .unwrap();
    assert!(described.deleted_date().is_some(), "scheduled for deletion");

    assert!(store.get(&k).await.unwrap().is_none());
    assert!(store.list(&parent).await.unwrap().is_empty());
    store.delete(&k, Precondition::None).await.unwrap();
    let err = store
        .put(&k, bytes("late"), Precondition::Version(v1.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(store.get(&k).await.unwrap().is_none(), "still absent");

    let v2 = store
        .put(&k, bytes("v2"), Precondition::Absent)
        .await
        .expect("created again");
    let read = store.get(&k).await.unwrap().unwrap();
    assert_eq!(
        (read.value.expose_secret(), &read.version),
        (&b"v2"[..], &v2)
    );
    assert_eq!(store.list(&parent).await.unwrap(), vec![k.clone()]);

    // And once more with an unconditional put.
    store.delete(&k, Precondition::None).await.unwrap();
    assert!(store.get(&k).await.unwrap().is_none());
    let v3 = store
        .put(&k, bytes("v3"), Precondition::None)
        .await
        .unwrap();
    let read = store.get(&k).await.unwrap().unwrap();
    assert_eq!(
        (read.value.expose_secret(), &read.version),
        (&b"v3"[..], &v3)
    );
    let err = store
        .put(&k, bytes("x"), Precondition::Absent)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
}

/// `writers` tasks create `k` at once: exactly one wins, the others see `Conflict`, and the
/// winner's value and version are what `get` returns.
async fn creators_race(store: &Arc<AwsStore>, k: &StoreKey, writers: usize) {
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let (store, k) = (store.clone(), k.clone());
        tasks.push(tokio::spawn(async move {
            let value = format!("writer{writer}");
            (
                value.clone(),
                store.put(&k, bytes(&value), Precondition::Absent).await,
            )
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        let (value, result) = task.await.unwrap();
        match result {
            Ok(v) => winners.push((value, v)),
            Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "{e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one creator of {k} wins");
    let read = store.get(k).await.unwrap().unwrap();
    assert_eq!(read.value.expose_secret(), winners[0].0.as_bytes());
    assert_eq!(read.version, winners[0].1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn creators_racing_on_a_deleted_secret_have_one_winner() {
    let store = Arc::new(store().await);
    let k = key(&["recreate-race"]);
    let v = store
        .put(&k, bytes("old"), Precondition::Absent)
        .await
        .unwrap();
    store.delete(&k, Precondition::Version(v)).await.unwrap();
    creators_race(&store, &k, 8).await;
}

/// The first take of a lease creates its record, and replicas take a new grant's lease at the
/// same moment: `CreateSecret` must let exactly one of them win, every time. (Secrets Manager
/// does; moto does only when its requests are serialised, which `cargo xtask services` does.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn creators_racing_on_a_new_secret_have_one_winner() {
    let store = Arc::new(store().await);
    for round in 0..40 {
        creators_race(&store, &key(&["create-race", &round.to_string()]), 8).await;
    }
}

#[tokio::test]
async fn long_keys_use_hashed_names_that_carry_the_key() {
    let store = store().await;
    let parent = key(&["long"]);
    let long = parent.child(&"k".repeat(700)).unwrap();
    let name = store.secret_name(&long);
    assert_eq!(name.len(), 512);
    let v1 = store
        .put(&long, bytes("a"), Precondition::Absent)
        .await
        .unwrap();
    let v2 = store
        .put(&long, bytes("b"), Precondition::Version(v1))
        .await
        .unwrap();
    assert_eq!(store.get(&long).await.unwrap().unwrap().version, v2);
    assert_eq!(store.list(&parent).await.unwrap(), vec![long.clone()]);
    // A list prefix longer than a hashed name's readable head still finds the key.
    let deep = long.child("child").unwrap();
    store
        .put(&deep, bytes("c"), Precondition::None)
        .await
        .unwrap();
    assert_eq!(store.list(&long).await.unwrap(), vec![deep.clone()]);

    // A secret under the same name that holds another key is a collision, never a value.
    let imposter = parent.child(&"z".repeat(700)).unwrap();
    let mut framed = b"PAK\x01".to_vec();
    framed.extend_from_slice(&(imposter.as_str().len() as u32).to_be_bytes());
    framed.extend_from_slice(imposter.as_str().as_bytes());
    framed.extend_from_slice(b"CANARY-other-value");
    let client = store.client();
    let imposter_version = "00000000-0000-4000-8000-000000000001";
    client
        .put_secret_value()
        .secret_id(&name)
        .client_request_token(imposter_version)
        .version_stages("imposter")
        .secret_binary(Blob::new(framed))
        .send()
        .await
        .unwrap();
    client
        .update_secret_version_stage()
        .secret_id(&name)
        .version_stage("AWSCURRENT")
        .move_to_version_id(imposter_version)
        .remove_from_version_id(v2.as_str())
        .send()
        .await
        .unwrap();
    let err = store.get(&long).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(!format!("{err} {err:?}").contains("CANARY"));
}

#[tokio::test]
async fn foreign_secrets_are_corrupt_not_absent() {
    let store = store().await;
    let k = key(&["foreign"]);
    store
        .client()
        .create_secret()
        .name(store.secret_name(&k))
        .secret_string("CANARY-foreign-json")
        .send()
        .await
        .unwrap();
    let err = store.get(&k).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert_eq!(err.backend(), Some("aws"));
    assert!(!format!("{err} {err:?}").contains("CANARY"));
}

#[tokio::test]
async fn oversized_values_are_refused_without_showing_them() {
    let store = store().await;
    let mut value = b"CANARY".repeat(11_000);
    value.truncate(65_537);
    let err = store
        .put(&key(&["big"]), SecretBytes::new(value), Precondition::None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(!format!("{err} {err:?}").contains("CANARY"));
}

#[tokio::test]
async fn an_unreachable_endpoint_is_unavailable_and_retryable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = AwsStore::builder()
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .region("eu-west-1")
        .static_credentials("AKIDCANARY", "CANARY-secret-access-key")
        .timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let err = store
        .put(&key(&["x"]), bytes("CANARY-value"), Precondition::Absent)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");
    assert!(err.is_retryable());
    let text = format!("{err} {err:?} {store:?}");
    assert!(!text.contains("CANARY"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_output_never_contains_a_secret() {
    let captured = testing::TraceCapture::install();
    let store = store().await;
    let k = key(&["traced"]);
    testing::canary_operations(&store, &k).await;
    store
        .put(&k, bytes("CANARY-value-4"), Precondition::Absent)
        .await
        .unwrap();
    store.delete(&k, Precondition::None).await.unwrap();
    store
        .put(&k, bytes("CANARY-value-5"), Precondition::None)
        .await
        .unwrap();

    let text = captured.contents();
    assert!(
        text.contains("TRACE"),
        "the subscriber captured TRACE output"
    );
    assert!(text.contains("aws"), "the store's spans were captured");
    // The values travel base64-encoded in SecretBinary: the scan covers every encoding.
    testing::assert_no_leak("the TRACE logs", &text, &["CANARY"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_links_stay_one_to_one_under_racing_linkers() {
    testing::tenant_links_conformance(Arc::new(store().await), 8, 3).await;
}

#[tokio::test]
async fn pending_authorizations_are_deleted_without_a_recovery_window() {
    use pleo_auth_core::{ClientId, EnvironmentName, layout};
    // The store keeps a recovery window for everything else.
    let store = store().await;
    let pending = layout::pending_authorization(
        &EnvironmentName::new("staging").unwrap(),
        &ClientId::new("client").unwrap(),
        &random_urlsafe(8),
    );
    let other = key(&["grant", &random_urlsafe(8)]);
    for k in [&pending, &other] {
        let version = store
            .put(k, bytes("CANARY-v"), Precondition::Absent)
            .await
            .unwrap();
        store
            .delete(k, Precondition::Version(version))
            .await
            .unwrap();
        assert!(store.get(k).await.unwrap().is_none());
    }
    let gone = store
        .client()
        .describe_secret()
        .secret_id(store.secret_name(&pending))
        .send()
        .await;
    assert!(gone.is_err(), "deleted at once, nothing left to recover");
    let scheduled = store
        .client()
        .describe_secret()
        .secret_id(store.secret_name(&other))
        .send()
        .await
        .unwrap();
    assert!(
        scheduled.deleted_date().is_some(),
        "other keys keep the recovery window"
    );
}
