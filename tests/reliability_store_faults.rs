//! Store faults, in process: the store goes down (or hangs) while tokens are fresh and at
//! expiry, and a record that cannot be read fails closed. The same against live OpenBao, moto
//! and a Redis that is killed and restarted is in `reliability_live_stores.rs`.

#![cfg(all(feature = "oauth", feature = "http"))]

#[path = "reliability_support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pleo_auth_core::testing::assert_no_leak;
use pleo_auth_core::{
    CompanyId, CredentialProvider, ErrorKind as CoreKind, MemoryStore, Precondition, SecretBytes,
    SecretStore,
};
use pleo_auth_http::PleoClient;
use pleo_auth_oauth::{ErrorKind, TokenManager};
use support::*;

type Flaky = FaultyStore<MemoryStore>;

struct Setup {
    h: Harness,
    flaky: Arc<Flaky>,
    manager: TokenManager,
    api: PleoClient,
    deadline: Duration,
}

async fn setup() -> Setup {
    let flaky = Arc::new(FaultyStore::new(MemoryStore::new()));
    let h = Harness::new(SandboxSpec::default(), flaky.clone()).await;
    let deadline = Duration::from_secs(1);
    let (manager, api) = h.connected_api(deadline).await;
    Setup {
        h,
        flaky,
        manager,
        api,
        deadline,
    }
}

fn acme_id() -> CompanyId {
    acme().company().unwrap()
}

/// Sends `n` concurrent API requests; each result with how long it took.
async fn burst(
    api: &PleoClient,
    n: usize,
) -> Vec<(pleo_auth_http::Result<pleo_auth_http::Response>, Duration)> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let call = api.get("/v1/export-jobs").company(acme_id()).send();
            let result = tokio::time::timeout(Duration::from_secs(10), call)
                .await
                .expect("the call ended (its deadline is far shorter)");
            (result, started.elapsed())
        }));
    }
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

/// The store is down (every call fails, or every call hangs) while the access token is fresh:
/// requests keep working from the cache, without touching the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_down_while_tokens_are_fresh_calls_keep_working() {
    for hang in [false, true] {
        let s = setup().await;
        burst(&s.api, 1).await[0].0.as_ref().expect("warm");
        if hang {
            s.flaky.stall.store(true, Ordering::SeqCst);
        } else {
            s.flaky.set_down(true);
        }
        // Most of the lifetime passes, still before the refresh window.
        s.h.advance(ACCESS_TTL / 2);
        for (result, _) in burst(&s.api, 200).await {
            result.expect("served from the cache");
        }
        assert_eq!(s.h.sandbox.stats().token_requests_for("refresh_token"), 0);
        assert_eq!(s.flaky.refused_reads.load(Ordering::SeqCst), 0);
    }
}

/// The store is down at expiry: callers get a typed, retryable error by their deadline, and no
/// refresh is started (its result could not be persisted). When the store is back, one refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_down_at_expiry_fails_typed_by_the_deadline_without_refreshing() {
    for hang in [false, true] {
        let s = setup().await;
        burst(&s.api, 1).await[0].0.as_ref().expect("warm");
        if hang {
            s.flaky.stall.store(true, Ordering::SeqCst);
        } else {
            s.flaky.set_down(true);
        }
        s.h.advance(ACCESS_TTL);
        for (result, took) in burst(&s.api, 100).await {
            let err = result.expect_err("no usable credential while the store is down");
            assert!(err.is_retryable(), "{err:?}");
            assert_eq!(err.kind(), CoreKind::Unavailable, "{err:?}");
            assert!(
                took <= s.deadline + Duration::from_millis(250),
                "failed by the deadline (hang: {hang}): {took:?}"
            );
        }
        if !hang {
            let err = s.manager.access_token(&acme()).await.unwrap_err();
            assert_eq!(err.kind(), &ErrorKind::Store(CoreKind::Unavailable));
        }
        assert_eq!(
            s.h.sandbox.stats().token_requests_for("refresh_token"),
            0,
            "no refresh that could not be persisted"
        );
        s.flaky.stall.store(false, Ordering::SeqCst);
        s.flaky.set_down(false);
        // Callers that gave up left nothing behind that blocks the next one.
        let mut result = burst(&s.api, 1).await.remove(0).0;
        for _ in 0..50 {
            if result.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            result = burst(&s.api, 1).await.remove(0).0;
        }
        result.expect("works again once the store is back");
        let stats = s.h.sandbox.stats();
        assert_eq!(stats.refreshes, 1);
        assert_eq!(stats.refresh_token_reuses, 0);
        assert_eq!(s.h.stored(0, &acme()).await.unwrap().0.generation, 2);
    }
}

/// A record that cannot be read (garbage, another kind, a newer schema) is a typed error for
/// every reader, never "not connected"; nothing is sent to Pleo and nothing is overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_and_newer_schema_records_fail_closed() {
    let cases: [(&[u8], CoreKind); 4] = [
        (b"\x00\x01 not json", CoreKind::Corrupt),
        (br#"{"schema":1,"kind":"api_key"}"#, CoreKind::Corrupt),
        (
            br#"{"schema":1,"kind":"oauth_grant","generation":"CANARY"}"#,
            CoreKind::Corrupt,
        ),
        (
            br#"{"schema":99,"kind":"oauth_grant","future":"CANARY-field"}"#,
            CoreKind::UnsupportedSchema,
        ),
    ];
    for (bytes, kind) in cases {
        let s = setup().await;
        let key = grant_key(&s.h.environment, 0, &acme());
        s.h.store
            .put(&key, SecretBytes::new(bytes.to_vec()), Precondition::None)
            .await
            .unwrap();
        // A replica that has not cached the grant yet, and one that has (after expiry).
        let fresh = s.h.replica().token_manager();
        let err = fresh.access_token(&acme()).await.unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::Store(kind), "{err:?}");
        assert!(!err.is_retryable());
        let err = fresh.status(&acme()).await.unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::Store(kind));
        assert!(fresh.list().await.is_err(), "list fails too");
        s.h.advance(ACCESS_TTL);
        let err = s.manager.access_token(&acme()).await.unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::Store(kind), "{err:?}");
        let core: pleo_auth_core::Error = s.manager.credential_for(&acme()).await.unwrap_err();
        assert_eq!(core.kind(), kind);
        for (result, _) in burst(&s.api, 10).await {
            let err = result.unwrap_err();
            assert_eq!(err.kind(), kind, "{err:?}");
            assert_no_leak("an error", &format!("{err} {err:?}"), &[CANARY]);
        }
        assert_eq!(s.h.sandbox.stats().token_requests_for("refresh_token"), 0);
        let still = s.h.store.get(&key).await.unwrap().unwrap();
        assert_eq!(still.value.expose_secret(), bytes, "left as it was");
    }
}
