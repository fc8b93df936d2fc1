//! Unit tests of the async shell at the store boundary (a mock store): pending writes, their
//! retries and conflicts, and the refresh lease a pending pair keeps.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use pleo_auth_core::{
    AccessToken, ClientSecret, CredentialKey, CredentialStatus, Environment, EnvironmentName,
    LeaseGuard, LeaseRelease, ManualClock, OAuthGrant, Precondition, Record, RefreshToken,
    SecretBytes, SecretStore, StoreKey, Subject, Timestamp, Version, Versioned,
};
use pleo_auth_http::transport::TransportConfig;

use crate::error::ErrorKind;
use crate::grant::cell::GrantCell;
use crate::grant::lease::{keep_or_release, take_kept_lease};
use crate::grant::persist::persist;
use crate::grant::phase::{Phase, REVOCATION_PENDING, Trigger, digest};
use crate::inner::{Inner, jitter_share};
use crate::{EventSink, OAuthClient, OAuthConfig, OAuthEvent, RefreshPolicy};
use pleo_auth_core::ErrorKind as CoreKind;

mockall::mock! {
    Store {}
    #[async_trait]
    impl SecretStore for Store {
        async fn get(&self, key: &StoreKey) -> pleo_auth_core::Result<Option<Versioned>>;
        async fn put(
            &self,
            key: &StoreKey,
            value: SecretBytes,
            precondition: Precondition,
        ) -> pleo_auth_core::Result<Version>;
        async fn delete(&self, key: &StoreKey, precondition: Precondition) -> pleo_auth_core::Result<()>;
        async fn list(&self, prefix: &StoreKey) -> pleo_auth_core::Result<Vec<StoreKey>>;
    }
}

impl fmt::Debug for MockStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MockStore")
    }
}

#[derive(Debug, Default)]
struct Events(StdMutex<Vec<OAuthEvent>>);

impl EventSink for Events {
    fn emit(&self, event: &OAuthEvent) {
        self.0.lock().unwrap().push(event.clone());
    }
}

fn subject() -> Subject {
    "urn:pleo:company:0c000000-0000-4000-8000-000000000001"
        .parse()
        .unwrap()
}

fn grant(refresh: &str, generation: u64) -> OAuthGrant {
    OAuthGrant {
        generation,
        ..OAuthGrant::connected(
            CredentialKey::new(
                EnvironmentName::new("staging").unwrap(),
                "client".parse().unwrap(),
                subject(),
            ),
            AccessToken::new(format!("CANARY-at-{generation}")),
            RefreshToken::new(refresh),
            "users:read".parse().unwrap(),
            Timestamp::from_millis(0),
            Duration::from_millis(u64::MAX / 2),
        )
    }
}

fn stored(record: &OAuthGrant, version: u64) -> pleo_auth_core::Result<Option<Versioned>> {
    Ok(Some(Versioned {
        value: record.encode().unwrap(),
        version: Version::from_u64(version),
    }))
}

fn written(value: &SecretBytes) -> OAuthGrant {
    OAuthGrant::decode(value.expose_secret()).unwrap()
}

/// A manager over `store` with a cell holding a rotated pair (generation 2, `CANARY-rt-2`)
/// that is not yet written and supersedes `CANARY-rt-1`.
fn pending(store: MockStore) -> (Arc<Inner>, Arc<GrantCell>, Arc<Events>) {
    pending_with(store, RefreshPolicy::default(), TransportConfig::default())
}

/// [`pending`] with `policy` (its persist backoffs shortened) and `transport`.
fn pending_with(
    store: MockStore,
    policy: RefreshPolicy,
    transport: TransportConfig,
) -> (Arc<Inner>, Arc<GrantCell>, Arc<Events>) {
    let config = OAuthConfig::builder()
        .environment(Environment::staging())
        .client_id("client")
        .client_secret(ClientSecret::new("CANARY-secret"))
        .redirect_uri("https://app.example/cb")
        .scopes("users:read")
        .build()
        .unwrap();
    let events = Arc::new(Events::default());
    let client = OAuthClient::builder(config, Arc::new(store))
        .clock(Arc::new(ManualClock::new()))
        .events(events.clone())
        .policy(RefreshPolicy {
            persist_initial_backoff: Duration::from_millis(5),
            persist_max_backoff: Duration::from_millis(5),
            ..policy
        })
        .transport(transport)
        .build()
        .unwrap();
    let inner = client.inner.clone();
    let cell = inner.cell_or_insert(subject());
    cell.lock().set_phase(Phase::Pending {
        record: grant("CANARY-rt-2", 2),
        superseded: vec![digest(&RefreshToken::new("CANARY-rt-1"))],
        announced: false,
    });
    (inner, cell, events)
}

fn stored_version(cell: &GrantCell) -> Option<Version> {
    match &cell.lock().phase {
        Phase::Stored { version, .. } => Some(version.clone()),
        _ => None,
    }
}

#[tokio::test]
async fn a_refused_write_stays_pending_and_is_retried_with_compare_and_swap() {
    let mut store = MockStore::new();
    store
        .expect_get()
        .returning(|_| stored(&grant("CANARY-rt-1", 1), 7));
    let mut calls = 0;
    store
        .expect_put()
        .times(2)
        .returning(move |_, value, precondition| {
            calls += 1;
            assert_eq!(precondition, Precondition::Version(Version::from_u64(7)));
            let record = written(&value);
            assert_eq!(record.generation, 2);
            assert_eq!(record.refresh_token.unwrap().expose_secret(), "CANARY-rt-2");
            if calls == 1 {
                Err(pleo_auth_core::Error::unavailable("disk full").with_backend("mock"))
            } else {
                Ok(Version::from_u64(8))
            }
        });
    let (inner, cell, events) = pending(store);

    let err = persist(&inner, &cell).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::Store(CoreKind::Unavailable));
    assert!(err.is_retryable());
    assert!(!format!("{err} {err:?}").contains("CANARY"));
    assert_eq!(stored_version(&cell), None, "still pending in memory");

    // The background retry lands it.
    for _ in 0..200 {
        if stored_version(&cell).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(stored_version(&cell), Some(Version::from_u64(8)));
    let seen = events.0.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            OAuthEvent::PersistPending {
                subject: subject(),
                generation: 2
            },
            OAuthEvent::PersistRecovered {
                subject: subject(),
                generation: 2
            },
        ]
    );
}

#[tokio::test]
async fn a_conflict_rereads_and_rebases_onto_the_newer_settings() {
    let mut store = MockStore::new();
    let mut reads = 0;
    store.expect_get().times(2).returning(move |_| {
        reads += 1;
        let mut record = grant("CANARY-rt-1", 1);
        if reads == 2 {
            record.settings.insert("ledger".into(), "4000".into());
            return stored(&record, 9);
        }
        stored(&record, 7)
    });
    let mut writes = 0;
    store
        .expect_put()
        .times(2)
        .returning(move |_, value, precondition| {
            writes += 1;
            if writes == 1 {
                return Err(pleo_auth_core::Error::conflict("version moved"));
            }
            assert_eq!(precondition, Precondition::Version(Version::from_u64(9)));
            let record = written(&value);
            assert_eq!(
                record.settings.get("ledger").map(String::as_str),
                Some("4000")
            );
            assert_eq!(record.refresh_token.unwrap().expose_secret(), "CANARY-rt-2");
            Ok(Version::from_u64(10))
        });
    let (inner, cell, events) = pending(store);
    persist(&inner, &cell).await.unwrap();
    assert_eq!(stored_version(&cell), Some(Version::from_u64(10)));
    assert!(events.0.lock().unwrap().is_empty());
}

#[tokio::test]
async fn another_writers_newer_pair_is_adopted_without_writing() {
    let mut store = MockStore::new();
    store
        .expect_get()
        .returning(|_| stored(&grant("CANARY-rt-elsewhere", 5), 11));
    store.expect_put().never();
    let (inner, cell, events) = pending(store);
    persist(&inner, &cell).await.unwrap();
    assert_eq!(stored_version(&cell), Some(Version::from_u64(11)));
    let token = cell.token.load_full().unwrap();
    assert_eq!(token.generation(), 5);
    assert_eq!(token.access_token().expose_secret(), "CANARY-at-5");
    assert_eq!(
        events.0.lock().unwrap().clone(),
        vec![OAuthEvent::Adopted {
            subject: subject(),
            generation: 5
        }]
    );
}

#[tokio::test]
async fn a_tombstone_written_meanwhile_is_never_overwritten() {
    let mut store = MockStore::new();
    store.expect_get().returning(|_| {
        let mut record = grant("CANARY-rt-1", 1);
        record.status = CredentialStatus::Revoked;
        record.status_reason = Some(REVOCATION_PENDING.to_owned());
        stored(&record, 12)
    });
    store.expect_put().never();
    let (inner, cell, _) = pending(store);
    persist(&inner, &cell).await.unwrap();
    let err = inner.check(&cell, &Trigger::Fresh).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::Revoked);
    assert!(cell.token.load_full().is_none());
}

/// A lease handle that logs its renewals and release.
struct LoggedLease {
    log: Arc<StdMutex<Vec<&'static str>>>,
    held: Arc<AtomicBool>,
}

#[async_trait]
impl LeaseRelease for LoggedLease {
    async fn release(&self) -> pleo_auth_core::Result<()> {
        self.held.store(false, Ordering::SeqCst);
        self.log.lock().unwrap().push("release");
        Ok(())
    }

    async fn renew(&self, _ttl: Duration) -> pleo_auth_core::Result<()> {
        if !self.held.load(Ordering::SeqCst) {
            return Err(pleo_auth_core::Error::conflict("not held"));
        }
        self.log.lock().unwrap().push("renew");
        Ok(())
    }
}

/// A pending cell whose store write fails until `healed` is set, with a 300 ms lease, and
/// the log of a lease guard handed to it as a flight would.
async fn pending_with_kept_lease(
    healed: Arc<AtomicBool>,
) -> (Arc<Inner>, Arc<GrantCell>, Arc<StdMutex<Vec<&'static str>>>) {
    let mut store = MockStore::new();
    store
        .expect_get()
        .returning(|_| stored(&grant("CANARY-rt-1", 1), 7));
    store.expect_put().returning(move |_, _, _| {
        if healed.load(Ordering::SeqCst) {
            Ok(Version::from_u64(8))
        } else {
            Err(pleo_auth_core::Error::unavailable("partitioned").with_backend("mock"))
        }
    });
    let policy = RefreshPolicy {
        lease_ttl: Duration::from_millis(300),
        lease_wait: Duration::from_millis(300),
        store_timeout: Duration::from_millis(50),
        ..RefreshPolicy::default()
    };
    let transport = TransportConfig {
        timeout: Duration::from_millis(200),
        ..TransportConfig::default()
    };
    let (inner, cell, _) = pending_with(store, policy, transport);
    persist(&inner, &cell).await.unwrap_err();
    let log = Arc::new(StdMutex::new(Vec::new()));
    let guard = LeaseGuard::new(
        inner.lease_key(cell.subject),
        1,
        LoggedLease {
            log: log.clone(),
            held: Arc::new(AtomicBool::new(true)),
        },
    );
    keep_or_release(&inner, &cell, guard).await;
    (inner, cell, log)
}

fn count(log: &StdMutex<Vec<&'static str>>, what: &str) -> usize {
    log.lock().unwrap().iter().filter(|e| **e == what).count()
}

#[tokio::test]
async fn a_pending_pair_keeps_the_lease_renewed_until_it_is_stored() {
    let healed = Arc::new(AtomicBool::new(false));
    let (_inner, cell, log) = pending_with_kept_lease(healed.clone()).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(count(&log, "renew") >= 4, "renewed every ttl/3: {log:?}");
    assert_eq!(count(&log, "release"), 0, "kept while pending");
    assert_eq!(stored_version(&cell), None);

    healed.store(true, Ordering::SeqCst);
    for _ in 0..200 {
        if count(&log, "release") > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(stored_version(&cell), Some(Version::from_u64(8)));
    assert_eq!(count(&log, "release"), 1, "released once stored: {log:?}");
    let renewals = count(&log, "renew");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        count(&log, "renew"),
        renewals,
        "no renewal after the release"
    );
    assert!(cell.kept_lease.lock().await.is_none());
}

#[tokio::test]
async fn a_kept_lease_is_released_when_the_manager_is_dropped() {
    let (inner, cell, log) = pending_with_kept_lease(Arc::new(AtomicBool::new(false))).await;
    drop(inner);
    for _ in 0..100 {
        if count(&log, "release") > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(count(&log, "release"), 1, "{log:?}");
    assert_eq!(stored_version(&cell), None, "the pair was never stored");
}

#[tokio::test]
async fn the_next_flight_takes_the_kept_lease_over() {
    let (inner, cell, log) = pending_with_kept_lease(Arc::new(AtomicBool::new(false))).await;
    let guard = take_kept_lease(&inner, &cell)
        .await
        .expect("the kept lease, renewed");
    assert_eq!(count(&log, "renew"), 1, "{log:?}");
    assert!(cell.kept_lease.lock().await.is_none());
    // Handed back while still pending: kept again, renewed by a new task.
    keep_or_release(&inner, &cell, guard).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(count(&log, "renew") >= 2, "{log:?}");
    assert_eq!(count(&log, "release"), 0, "{log:?}");
}

#[test]
fn jitter_is_stable_per_instance_and_spread_across_instances_and_grants() {
    let a = jitter_share(1, &grant("CANARY-rt-a", 1));
    assert_eq!(
        a,
        jitter_share(1, &grant("CANARY-rt-b", 1)),
        "tokens do not matter"
    );
    assert_ne!(
        a,
        jitter_share(1, &grant("CANARY-rt-a", 2)),
        "generations spread"
    );
    assert_ne!(
        a,
        jitter_share(2, &grant("CANARY-rt-a", 1)),
        "instances spread"
    );
    assert!((0.0..1.0).contains(&a));
}
