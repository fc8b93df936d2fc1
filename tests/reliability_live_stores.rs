//! Store faults against live servers on loopback (OpenBao, moto, Redis from
//! `cargo xtask services up`; a test that needs one fails when it is missing):
//! - a Redis server of the test's own is killed (SIGKILL) and restarted;
//! - the fault proxy stalls OpenBao, moto or Redis: fresh tokens keep working, at expiry callers
//!   fail by their deadline and no refresh is started;
//! - 8 replicas race at every expiry on one grant in each store, with that store's lease.

#![cfg(all(
    feature = "oauth",
    feature = "http",
    feature = "redis",
    feature = "vault",
    feature = "aws"
))]

#[path = "reliability_support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pleo_auth_core::testing::{FaultProxy, ProxyFault, service_env};
use pleo_auth_core::{
    CompanyId, CredentialProvider, DynLease, DynSecretStore, ErrorKind as CoreKind, ManualClock,
    StoreLease, random_urlsafe,
};
use pleo_auth_http::PleoClient;
use pleo_auth_oauth::TokenManager;
use pleo_auth_stores::aws::AwsStore;
use pleo_auth_stores::redis::RedisStore;
use pleo_auth_stores::vault::VaultStore;
use support::*;

/// The socket address of a service URL such as `redis://127.0.0.1:16379`.
fn upstream(url: &str) -> SocketAddr {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    host_port
        .to_socket_addrs()
        .expect("a host and port")
        .next()
        .expect("an address")
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Backend {
    Redis,
    OpenBao,
    Moto,
}

const BACKENDS: [Backend; 3] = [Backend::Redis, Backend::OpenBao, Backend::Moto];

impl Backend {
    fn url(self) -> String {
        service_env(match self {
            Backend::Redis => "PLEO_AUTH_TEST_REDIS_URL",
            Backend::OpenBao => "PLEO_AUTH_TEST_VAULT_ADDR",
            Backend::Moto => "PLEO_AUTH_TEST_AWS_ENDPOINT",
        })
    }

    /// The store (and its lease) at `url` (the service itself or a proxy before it), under a
    /// fresh prefix, with `timeout` per call.
    async fn open(
        self,
        url: &str,
        prefix: &str,
        timeout: Duration,
        clock: &ManualClock,
    ) -> (DynSecretStore, DynLease) {
        match self {
            Backend::Redis => {
                let store = RedisStore::builder(url)
                    .key_prefix(format!("{prefix}:"))
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .connect()
                    .await
                    .expect("redis answers");
                let lease = store.lease();
                (Arc::new(store), Arc::new(lease))
            }
            Backend::OpenBao => {
                let store = Arc::new(
                    VaultStore::builder(url)
                        .token(service_env("PLEO_AUTH_TEST_VAULT_TOKEN"))
                        .path_prefix(prefix)
                        .timeout(timeout)
                        .connect_timeout(timeout)
                        .build()
                        .expect("a vault store"),
                );
                let lease = StoreLease::with_clock(store.clone(), Arc::new(clock.clone()));
                (store, Arc::new(lease))
            }
            Backend::Moto => {
                let store = Arc::new(
                    AwsStore::builder()
                        .endpoint_url(url)
                        .region("eu-west-1")
                        .static_credentials("AKIDRELIABILITY", "CANARY-aws-secret-key")
                        .name_prefix(format!("{prefix}/"))
                        .timeout(timeout)
                        .connect_timeout(timeout)
                        .build()
                        .await
                        .expect("an aws store"),
                );
                let lease = StoreLease::with_clock(store.clone(), Arc::new(clock.clone()));
                (store, Arc::new(lease))
            }
        }
    }
}

fn acme_id() -> CompanyId {
    acme().company().unwrap()
}

async fn api_call(
    api: &PleoClient,
) -> (pleo_auth_http::Result<pleo_auth_http::Response>, Duration) {
    let started = Instant::now();
    let call = api.get("/v1/export-jobs").company(acme_id()).send();
    let result = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the call ended");
    (result, started.elapsed())
}

/// A Redis server of the test's own is killed with SIGKILL and restarted on the same port:
/// calls keep working from the cache while it is gone, fail typed and retryable at expiry
/// without a refresh, and the grant refreshes once it is back (the append-only file kept it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = OwnRedis::start(dir.path());
    let clock = ManualClock::new();
    let (store, lease) = Backend::Redis
        .open(
            &redis.url(),
            "reliability",
            Duration::from_millis(500),
            &clock,
        )
        .await;
    let h = Harness::with_lease(SandboxSpec::default(), store, clock, lease).await;
    let deadline = Duration::from_secs(2);
    let (manager, api) = h.connected_api(deadline).await;
    api_call(&api).await.0.expect("warm");

    let pid = redis.pid();
    redis.kill();
    for _ in 0..50 {
        api_call(&api).await.0.expect("served from the cache");
    }
    h.advance(ACCESS_TTL);
    for _ in 0..10 {
        let (result, took) = api_call(&api).await;
        let err = result.expect_err("the store is gone at expiry");
        assert!(err.is_retryable(), "{err:?}");
        assert_eq!(err.kind(), CoreKind::Unavailable);
        // Bounded by the deadline (with slack for a loaded CI machine), never hanging.
        assert!(took <= deadline + Duration::from_secs(2), "{took:?}");
        let err = manager.access_token(&acme()).await.unwrap_err();
        assert!(err.is_retryable());
    }
    assert_eq!(h.sandbox.stats().token_requests_for("refresh_token"), 0);

    redis.restart();
    assert_ne!(redis.pid(), pid);
    let mut result = api_call(&api).await.0;
    for _ in 0..100 {
        if result.is_ok() {
            break;
        }
        // The refresh is cooling down after the store errors, or the connection is coming back.
        h.advance(Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(50)).await;
        result = api_call(&api).await.0;
    }
    result.expect("works once Redis is back");
    let (stored, _) = h
        .stored(0, &acme())
        .await
        .expect("the grant survived the restart");
    assert_eq!(stored.generation, 2);
    let stats = h.sandbox.stats();
    assert_eq!(stats.refreshes, 1);
    assert_eq!(stats.refresh_token_reuses, 0);
    assert_eq!(stats.total_revocations(), 0);
}

/// The fault proxy stalls each store (every open connection is cut, new ones hang): fresh tokens
/// keep working, at expiry callers fail by their deadline (shorter than the store's timeout)
/// and no refresh reaches Pleo; when the stall ends, one refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_store_fails_callers_by_their_deadline() {
    for backend in BACKENDS {
        let proxy = FaultProxy::start(upstream(&backend.url())).await.unwrap();
        let through = match backend {
            Backend::Redis => format!("redis://{}", proxy.addr()),
            _ => format!("http://{}", proxy.addr()),
        };
        let clock = ManualClock::new();
        let prefix = format!("reliability-{}", random_urlsafe(6));
        // The store's own timeout is far longer than the callers' deadline.
        let (store, lease) = backend
            .open(&through, &prefix, Duration::from_secs(10), &clock)
            .await;
        let h = Harness::with_lease(SandboxSpec::default(), store, clock, lease).await;
        let deadline = Duration::from_secs(1);
        let (manager, api) = h.connected_api(deadline).await;
        api_call(&api).await.0.expect("warm");

        proxy.set_fault(ProxyFault::Stall);
        proxy.close_all();
        for _ in 0..20 {
            api_call(&api).await.0.expect("served from the cache");
        }
        h.advance(ACCESS_TTL);
        for _ in 0..5 {
            let (result, took) = api_call(&api).await;
            let err = result.expect_err("no credential while the store hangs");
            assert!(err.is_retryable(), "{backend:?}: {err:?}");
            assert_eq!(err.kind(), CoreKind::Unavailable, "{backend:?}");
            assert!(
                took <= deadline + Duration::from_millis(300),
                "{backend:?}: failed by the deadline, took {took:?}"
            );
        }
        assert_eq!(
            h.sandbox.stats().token_requests_for("refresh_token"),
            0,
            "{backend:?}: no refresh that could not be persisted"
        );

        proxy.set_fault(ProxyFault::None);
        proxy.close_all();
        let mut result = api_call(&api).await.0;
        for _ in 0..100 {
            if result.is_ok() {
                break;
            }
            h.advance(Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(100)).await;
            result = api_call(&api).await.0;
        }
        result.unwrap_or_else(|e| panic!("{backend:?}: works once the stall ends: {e:?}"));
        // The rotated pair may still be on its way to the store (a slow server under load).
        let mut flushed = manager.flush().await;
        for _ in 0..100 {
            if flushed.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            flushed = manager.flush().await;
        }
        flushed.unwrap_or_else(|e| panic!("{backend:?}: the pair is written: {e:?}"));
        let stats = h.sandbox.stats();
        assert_eq!(stats.refreshes, 1, "{backend:?}");
        assert_eq!(stats.refresh_token_reuses, 0, "{backend:?}");
        // Read back directly from the service, not through the proxy.
        let (direct, _) = backend
            .open(
                &backend.url(),
                &prefix,
                Duration::from_secs(5),
                &ManualClock::new(),
            )
            .await;
        let (stored, _) = stored_grant(&direct, &h.environment, 0, &acme())
            .await
            .expect("stored");
        assert_eq!(stored.generation, 2, "{backend:?}");
        eprintln!("{backend:?}: stalled store survived");
    }
}

/// 8 replicas x 125 tasks at each of 5 expiries on one grant, in each live store with its lease
/// (Redis: `SET NX PX`; OpenBao and moto: the store lease over compare-and-swap): one refresh
/// per expiry, the others adopt the winner's pair, no reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_replicas_race_on_one_grant_in_each_store() {
    const REPLICAS: usize = 8;
    const TASKS: usize = 125;
    const EXPIRIES: u64 = 5;
    for backend in BACKENDS {
        let clock = ManualClock::new();
        let prefix = format!("reliability-{}", random_urlsafe(6));
        let (store, lease) = backend
            .open(&backend.url(), &prefix, Duration::from_secs(10), &clock)
            .await;
        let h = Harness::with_lease(SandboxSpec::default(), store, clock, lease).await;
        h.connect(&h.replica(), acme()).await;
        let replicas: Vec<TokenManager> =
            (0..REPLICAS).map(|_| h.replica().token_manager()).collect();
        let started = Instant::now();
        for expiry in 1..=EXPIRIES {
            h.advance(ACCESS_TTL);
            let mut tasks = Vec::new();
            for replica in &replicas {
                for _ in 0..TASKS {
                    let m = replica.clone();
                    tasks.push(tokio::spawn(async move { m.credential_for(&acme()).await }));
                }
            }
            let mut headers = HashSet::new();
            for task in tasks {
                let credential = task
                    .await
                    .unwrap()
                    .unwrap_or_else(|e| panic!("{backend:?}: {e:?}"));
                headers.insert(credential.header.expose_secret().to_owned());
            }
            assert_eq!(headers.len(), 1, "{backend:?}: one token for everyone");
            let stats = h.sandbox.stats();
            assert_eq!(
                stats.refreshes, expiry,
                "{backend:?}: one refresh per expiry"
            );
            assert_eq!(stats.refresh_token_reuses, 0, "{backend:?}");
            assert_eq!(stats.total_revocations(), 0, "{backend:?}");
        }
        let (stored, _) = h.stored(0, &acme()).await.unwrap();
        assert_eq!(stored.generation, 1 + EXPIRIES, "{backend:?}");
        eprintln!(
            "{backend:?}: {REPLICAS} replicas x {TASKS} tasks x {EXPIRIES} expiries in {:?}",
            started.elapsed()
        );
    }
}
