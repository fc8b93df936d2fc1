//! Reliability of the refresh path against the sandbox in strict-rotation mode (reusing a
//! rotated refresh token revokes the whole grant), over real loopback HTTP:
//! many grants, cancellation, the 401 storm, a paused lease holder in
//! another process, clock skew, and a token endpoint that rate-limits for a minute. (The storm at
//! expiry runs as real processes: `tests/replicas_readme_way.rs`.)
//! See `shared/docs/reliability.md` and `SECURITY.md`.

#![cfg(all(feature = "oauth", feature = "http", feature = "file"))]

#[path = "reliability_support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pleo_auth_core::testing::{FaultProxy, ProxyFault};
use pleo_auth_core::{
    Clock, CompanyId, CredentialProvider, CredentialStatus, DynLease, DynSecretStore, ErrorKind,
    InProcessLease, Lease, ManualClock, MemoryStore, OAuthGrant, Precondition, RecordStoreExt,
    StoreLease, Subject, SystemClock, Timestamp, layout,
};
use pleo_auth_http::PleoClient;
use pleo_auth_http::transport::TransportConfig;
use pleo_auth_oauth::{ErrorKind as OAuthKind, OAuthClient, RefreshPolicy};
use pleo_auth_sandbox::{Endpoint, Fault, RevocationCause};
use pleo_auth_stores::file::FileStore;
use support::*;

/// A file store in `dir/store` (created private, as the store requires).
fn file_store(dir: &std::path::Path) -> Arc<FileStore> {
    Arc::new(FileStore::open(dir.join("store")).expect("the file store opens"))
}

/// 200 grants x 5 tasks with staggered expiries: every grant refreshes once per expiry, and a
/// grant whose refresh cannot proceed (its lease is held elsewhere) delays no other grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_grants_refresh_independently() {
    const GRANTS: usize = 200;
    const TASKS: usize = 5;
    let spec = SandboxSpec {
        companies: GRANTS,
        ..SandboxSpec::default()
    };
    let h = Harness::new(spec, Arc::new(MemoryStore::new())).await;
    let client = h.replica();
    let manager = client.token_manager();
    for i in 0..GRANTS {
        h.connect(&client, company(company_uuid(i))).await;
        // Stagger: grant i expires i seconds after grant 0.
        h.advance(Duration::from_secs(1));
    }
    let subjects: Vec<Subject> = (0..GRANTS).map(|i| company(company_uuid(i))).collect();

    // Grant 0's refresh lease is held by "another replica" for the whole round.
    let blocked = subjects[0];
    let held = h
        .lease
        .acquire(
            &layout::lease(&grant_key(&h.environment, 0, &blocked)),
            Duration::from_secs(3600),
        )
        .await
        .unwrap()
        .expect("the lease is free");

    // Past every grant's expiry.
    h.advance(ACCESS_TTL);
    let started = Instant::now();
    let blocked_task = {
        let m = manager.clone();
        tokio::spawn(async move { m.access_token(&blocked).await })
    };
    let mut tasks = Vec::new();
    for subject in &subjects[1..] {
        for _ in 0..TASKS {
            let m = manager.clone();
            let subject = *subject;
            tasks.push(tokio::spawn(async move {
                (subject, m.access_token(&subject).await)
            }));
        }
    }
    for task in tasks {
        let (subject, token) = task.await.unwrap();
        let token = token.expect("a token");
        assert_eq!(token.subject(), &subject, "each caller got its own grant");
        assert_eq!(token.generation(), 2);
    }
    let others_took = started.elapsed();
    assert!(
        !blocked_task.is_finished(),
        "the blocked grant is still waiting for its lease"
    );
    assert!(
        others_took < Duration::from_secs(10),
        "199 grants refreshed in {others_took:?}"
    );
    let stats = h.sandbox.stats();
    assert_eq!(
        stats.refreshes,
        (GRANTS - 1) as u64,
        "one refresh per grant"
    );
    assert!(stats.grants.values().all(|g| g.refreshes <= 1));

    held.release().await.unwrap();
    let token = blocked_task
        .await
        .unwrap()
        .expect("refreshed after the lease");
    assert_eq!(token.generation(), 2);
    let stats = h.sandbox.stats();
    assert_eq!(stats.refreshes, GRANTS as u64);
    assert_eq!(stats.refresh_token_reuses, 0);
    assert_eq!(stats.total_revocations(), 0);

    // Staggered: after another lifetime, every grant refreshes once more, in any order.
    h.advance(ACCESS_TTL);
    let mut tasks = Vec::new();
    for subject in &subjects {
        let m = manager.clone();
        let subject = *subject;
        tasks.push(tokio::spawn(async move { m.access_token(&subject).await }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().generation(), 3);
    }
    assert_eq!(h.sandbox.stats().refreshes, 2 * GRANTS as u64);
    eprintln!("many grants: 199 grants x {TASKS} tasks took {others_took:?} with one lease held");
}

/// Every caller is cancelled after the refresh request reached Pleo (the network between us and
/// the sandbox is slowed by the fault proxy): the refresh completes in its own task, the pair
/// is persisted, later callers get it, and the old refresh token is never sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_callers_do_not_lose_the_refresh() {
    let sandbox = start_sandbox(&SandboxSpec::default()).await;
    let proxy = FaultProxy::start(sandbox.local_addr()).await.unwrap();
    let environment = environment_at(&base_url(proxy.addr()));
    let clock = ManualClock::new();
    let store: DynSecretStore = Arc::new(MemoryStore::new());
    let lease: DynLease = Arc::new(InProcessLease::with_clock(Arc::new(clock.clone())));
    let replica = || {
        ReplicaSpec {
            environment: &environment,
            client: 0,
            store: store.clone(),
            lease: lease.clone(),
            clock: Arc::new(clock.clone()),
            policy: fast_policy(),
            events: None,
        }
        .build()
    };
    connect(&sandbox, &plain_http(), &replica(), acme()).await;
    // A replica with an empty connection pool: its refresh opens a new, slowed connection.
    let manager = replica().token_manager();
    let (old, _) = stored_grant(&store, &environment, 0, &acme())
        .await
        .unwrap();
    let old_refresh = old.refresh_token.unwrap();

    clock.advance(ACCESS_TTL);
    sandbox.advance_clock(ACCESS_TTL);
    // New connections through the proxy are slow: 300 ms per chunk each way.
    proxy.set_fault(ProxyFault::Delay(Duration::from_millis(300)));
    let token_hits = || sandbox.stats().hits(Endpoint::Token);
    let before = token_hits();
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let m = manager.clone();
            tokio::spawn(async move { m.access_token(&acme()).await })
        })
        .collect();
    eventually(
        "the refresh request reached the sandbox",
        Duration::from_secs(10),
        || token_hits() > before,
    )
    .await;
    for caller in &callers {
        caller.abort();
    }
    for caller in callers {
        assert!(caller.await.unwrap_err().is_cancelled());
    }
    proxy.set_fault(ProxyFault::None);

    let mut persisted = None;
    for _ in 0..1000 {
        let (grant, _) = stored_grant(&store, &environment, 0, &acme())
            .await
            .unwrap();
        if grant.generation == 2 {
            persisted = Some(grant);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let persisted = persisted.expect("the detached refresh persisted the new pair");
    assert_ne!(
        persisted.refresh_token.as_ref().unwrap().expose_secret(),
        old_refresh.expose_secret()
    );
    let token = manager.access_token(&acme()).await.unwrap();
    assert_eq!(token.generation(), 2, "waiters get the new pair");
    let stats = sandbox.stats();
    assert_eq!(stats.refreshes, 1);
    assert_eq!(stats.uses_of_refresh_token(old_refresh.expose_secret()), 1);
    assert_eq!(stats.total_revocations(), 0);
}

/// The API answers 401 to 300 requests in flight (the access token was revoked early): one
/// refresh, each request retried at most once. A 401 that persists after the refresh surfaces
/// as an error for every caller instead of looping.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_401_storm_causes_one_refresh_and_at_most_one_retry_each() {
    const REQUESTS: usize = 300;
    let h = Harness::new(SandboxSpec::default(), Arc::new(MemoryStore::new())).await;
    let client = h.replica();
    h.connect(&client, acme()).await;
    let manager = client.token_manager();
    let api = PleoClient::builder(h.environment.clone(), Arc::new(manager.clone()))
        .build()
        .unwrap();
    let acme_id = acme().company().unwrap();
    api.get("/v1/export-jobs")
        .company(acme_id)
        .send()
        .await
        .expect("warm");
    let token = manager.access_token(&acme()).await.unwrap();
    assert_eq!(
        h.sandbox
            .revoke_access_tokens(token.access_token().expose_secret()),
        1
    );
    h.sandbox.clear_request_log();

    let mut tasks = Vec::new();
    for _ in 0..REQUESTS {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            api.get("/v1/export-jobs").company(acme_id).send().await
        }));
    }
    for task in tasks {
        task.await.unwrap().expect("the retried request succeeds");
    }
    let log = h.sandbox.request_log();
    let unauthorized = log.iter().filter(|r| r.status == 401).count();
    let ok = log.iter().filter(|r| r.status == 200).count();
    assert_eq!(ok, REQUESTS);
    assert!(unauthorized <= REQUESTS, "at most one 401 per request");
    assert_eq!(log.len(), ok + unauthorized, "nothing but 200 and 401");
    let stats = h.sandbox.stats();
    assert_eq!(stats.refreshes, 1, "one refresh for the whole storm");
    assert_eq!(stats.total_revocations(), 0);

    // A persistent 401: the API is a listener that refuses every credential. It holds the first
    // 300 answers until all 300 requests arrived, so they all carry the same token.
    let refuser = always_401(REQUESTS as u64).await;
    let environment = pleo_auth_core::Environment::custom(
        "sandbox",
        h.environment.authorization_server().as_str(),
        &base_url(refuser.0),
    )
    .unwrap();
    let api = PleoClient::builder(environment, Arc::new(manager.clone()))
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..REQUESTS {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            api.get("/v1/export-jobs").company(acme_id).send().await
        }));
    }
    for task in tasks {
        let err = task
            .await
            .unwrap()
            .expect_err("a persistent 401 is an error");
        assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err:?}");
    }
    let seen = refuser.1.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(seen, 2 * REQUESTS as u64, "each request was retried once");
    // The 300 first attempts carried one token and caused one refresh. Every further refresh
    // was caused by a rejected retry carrying a token value not rejected before (the provider
    // refreshes once per rejected value), never by a loop.
    let rejected_values = refuser.2.lock().unwrap().len() as u64;
    let added = h.sandbox.stats().refreshes - 1;
    assert!(added >= 1, "the first rejection refreshed");
    assert!(
        added <= rejected_values,
        "{added} refreshes for {rejected_values} rejected token values"
    );
    eprintln!("persistent 401: {seen} sends, {rejected_values} token values, {added} refreshes");
}

/// A loopback listener that answers 401 to everything and counts requests; the first
/// `gather` requests are answered together, once all of them arrived.
async fn always_401(
    gather: u64,
) -> (
    std::net::SocketAddr,
    Arc<std::sync::atomic::AtomicU64>,
    Arc<std::sync::Mutex<HashSet<String>>>,
    tokio::task::JoinHandle<()>,
) {
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let values = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let seen = count.clone();
    let tokens = values.clone();
    let barrier = Arc::new(tokio::sync::Barrier::new(gather as usize));
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let seen = seen.clone();
        let barrier = barrier.clone();
        let tokens = tokens.clone();
        async move {
            if let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
                tokens
                    .lock()
                    .unwrap()
                    .insert(pleo_auth_sandbox::token_fingerprint(value));
            }
            if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < gather {
                barrier.wait().await;
            }
            (
                axum::http::StatusCode::UNAUTHORIZED,
                [("www-authenticate", "Bearer realm=\"pleo\"")],
                "{\"error\":\"unauthorized\"}",
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.ok();
    });
    (addr, count, values, task)
}

const CHILD_ENV: &str = "PLEO_AUTH_RELIABILITY_CHILD";

/// The lease policy of both sides of the paused-holder test.
fn paused_policy() -> RefreshPolicy {
    RefreshPolicy {
        lease_ttl: Duration::from_secs(3),
        lease_wait: Duration::from_secs(3),
        store_timeout: Duration::from_millis(500),
        ..fast_policy()
    }
}

fn paused_transport() -> TransportConfig {
    TransportConfig {
        timeout: Duration::from_secs(2),
        ..TransportConfig::default()
    }
}

/// Process A takes the lease, gets the rotated pair from Pleo and is stopped (SIGSTOP) before
/// its store write, past its lease. B takes over and presents the same refresh token: Pleo
/// detects the reuse and revokes the grant; B marks it as needing reauthorization. A resumes:
/// its late write is rejected by the store's version check, it adopts B's verdict, and nobody
/// retries in a loop. This is the documented limit of `SECURITY.md`.
///
/// The test binary runs itself as process A (environment variable [`CHILD_ENV`]); both share a
/// file store (grants) and a store lease in a second file store, over the system clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_lease_holder_cannot_overwrite_a_newer_record() {
    if let Ok(role) = std::env::var(CHILD_ENV) {
        return paused_holder_child(&role).await;
    }
    let grants_dir = tempfile::tempdir().unwrap();
    let lease_dir = tempfile::tempdir().unwrap();
    let sandbox = start_sandbox(&SandboxSpec::default()).await;
    let environment = environment_at(sandbox.base_url().as_str());
    let files = file_store(grants_dir.path());
    let store: DynSecretStore = files.clone();
    let lease: DynLease = Arc::new(StoreLease::new(file_store(lease_dir.path())));
    let b = OAuthClient::builder(config(&environment, 0), store.clone())
        .lease(lease.clone())
        .policy(paused_policy())
        .transport(paused_transport())
        .build()
        .unwrap();
    connect(&sandbox, &plain_http(), &b, acme()).await;

    // Make the stored access token expired, so that A refreshes as soon as it starts.
    let key = grant_key(&environment, 0, &acme());
    let (mut grant, version) = store.get_record::<OAuthGrant>(&key).await.unwrap().unwrap();
    let rt1 = grant.refresh_token.clone().unwrap();
    grant.access_token_expires_at = Some(Timestamp::from_millis(
        SystemClock.timestamp().as_millis() - 1000,
    ));
    store
        .put_record(&key, &grant, Precondition::Version(version))
        .await
        .unwrap();

    // Hold the file store's lock, so that A blocks in its store write after Pleo answered.
    let lock = std::fs::File::options()
        .read(true)
        .write(true)
        .open(grants_dir.path().join("store").join(".lock"))
        .unwrap();
    lock.lock().unwrap();

    let exe = std::env::current_exe().unwrap();
    let child = std::process::Command::new(exe)
        .args([
            "--exact",
            "a_paused_lease_holder_cannot_overwrite_a_newer_record",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "a")
        .env("PLEO_AUTH_CHILD_BASE", sandbox.base_url().as_str())
        .env("PLEO_AUTH_CHILD_GRANTS", grants_dir.path())
        .env("PLEO_AUTH_CHILD_LEASES", lease_dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();

    eventually(
        "A's refresh was answered by Pleo",
        Duration::from_secs(20),
        || sandbox.stats().refreshes == 1,
    )
    .await;
    // A now waits for the store lock to write the rotated pair; stop it there.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap();
    assert!(stopped.success());
    drop(lock);

    // Past A's lease: B refreshes with the token A already rotated.
    tokio::time::sleep(paused_policy().lease_ttl + Duration::from_millis(500)).await;
    let b_manager = OAuthClient::builder(config(&environment, 0), store.clone())
        .lease(lease.clone())
        .policy(paused_policy())
        .transport(paused_transport())
        .build()
        .unwrap()
        .token_manager();
    let err = b_manager.access_token(&acme()).await.unwrap_err();
    assert_eq!(err.kind(), &OAuthKind::NeedsReauthorization, "{err:?}");
    let stats = sandbox.stats();
    assert_eq!(stats.uses_of_refresh_token(rt1.expose_secret()), 2);
    assert_eq!(stats.revocations(RevocationCause::RefreshTokenReuse), 1);
    let (marked, marked_version) = store.get_record::<OAuthGrant>(&key).await.unwrap().unwrap();
    assert_eq!(marked.status, CredentialStatus::NeedsReauthorization);

    // A resumes: its write names the version it read, which B's write replaced.
    let resumed = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap();
    assert!(resumed.success());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "process A failed: {said}");
    eprintln!(
        "paused holder: process A said {:?}",
        said.lines().find(|l| l.starts_with("outcome="))
    );
    assert!(
        said.contains("outcome=needs_reauthorization"),
        "A adopted B's verdict: {said}"
    );
    let (after, after_version) = store.get_record::<OAuthGrant>(&key).await.unwrap().unwrap();
    assert_eq!(after.status, CredentialStatus::NeedsReauthorization);
    assert!(after.refresh_token.is_none(), "A's pair was never written");
    assert_eq!(after_version, marked_version, "A wrote nothing");

    // No retry storm: callers fail fast, Pleo hears nothing more.
    let requests = sandbox.stats().token_requests_for("refresh_token");
    assert_eq!(requests, 2);
    for _ in 0..50 {
        let err = b_manager.access_token(&acme()).await.unwrap_err();
        assert_eq!(err.kind(), &OAuthKind::NeedsReauthorization);
    }
    assert_eq!(
        sandbox.stats().token_requests_for("refresh_token"),
        requests
    );
}

/// Process A of [`a_paused_lease_holder_cannot_overwrite_a_newer_record`].
async fn paused_holder_child(role: &str) {
    assert_eq!(role, "a");
    let var = |name: &str| std::env::var(name).unwrap();
    let environment = environment_at(&var("PLEO_AUTH_CHILD_BASE"));
    let store: DynSecretStore = file_store(std::path::Path::new(&var("PLEO_AUTH_CHILD_GRANTS")));
    let lease: DynLease = Arc::new(StoreLease::new(file_store(std::path::Path::new(&var(
        "PLEO_AUTH_CHILD_LEASES",
    )))));
    let manager = OAuthClient::builder(config(&environment, 0), store)
        .lease(lease)
        .policy(paused_policy())
        .transport(paused_transport())
        .build()
        .unwrap()
        .token_manager();
    // The first answer may be the rotated pair, served from memory while its write waits
    // (past the store timeout it is pending). Like any well-behaved process, A flushes before
    // it ends, and then reports what it believes.
    let first = manager.access_token(&acme()).await.map(|t| t.generation());
    println!("first={first:?}");
    let flushed = manager.flush().await;
    println!("flushed={:?}", flushed.map_err(|e| e.kind().clone()));
    let outcome = match manager.access_token(&acme()).await {
        Ok(token) => format!("token generation {}", token.generation()),
        Err(err) if err.kind() == &OAuthKind::NeedsReauthorization => {
            "needs_reauthorization".to_owned()
        }
        Err(err) => format!("{:?}", err.kind()),
    };
    println!("outcome={outcome}");
}

/// Expiry comes from `expires_in` on our monotonic clock at receipt, whatever Pleo's clock says;
/// the refresh starts a margin (with jitter, at most half the lifetime) before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_follows_expires_in_on_our_clock_despite_skew() {
    for (ours_ahead, access_ttl) in [
        (true, Duration::from_secs(900)),
        (false, Duration::from_secs(900)),
        (true, Duration::from_secs(30)),
    ] {
        let spec = SandboxSpec {
            access_ttl,
            ..SandboxSpec::default()
        };
        let h = Harness::new(spec, Arc::new(MemoryStore::new())).await;
        // Two hours of skew, one way or the other.
        let skew = Duration::from_secs(2 * 3600);
        if ours_ahead {
            h.clock.advance(skew);
        } else {
            h.sandbox.advance_clock(skew);
        }
        let policy = RefreshPolicy::default();
        let client = h.replica_with(0, policy.clone());
        h.connect(&client, acme()).await;
        let manager = client.token_manager();
        let received = h.clock.instant();
        let token = manager.access_token(&acme()).await.unwrap();
        assert_eq!(token.expires_at() - received, access_ttl, "from expires_in");
        let margin = token.expires_at() - token.refresh_at();
        let cap = access_ttl / 2;
        let low = policy.refresh_margin.min(cap);
        let high = (policy.refresh_margin + policy.refresh_jitter).min(cap);
        assert!(
            (low..=high).contains(&margin),
            "margin {margin:?} within {low:?}..={high:?}"
        );
        // Another replica picks its own margin (jitter is random per instance), within the
        // same bounds, so replicas reach the refresh window one after another.
        let other = h.replica_with(0, policy.clone()).token_manager();
        let other_token = other.access_token(&acme()).await.unwrap();
        let other_margin = other_token.expires_at() - other_token.refresh_at();
        assert!(
            (low..=high).contains(&other_margin),
            "margin {other_margin:?} within {low:?}..={high:?}"
        );

        // Just before the refresh point: no refresh. Just after: exactly one.
        let until = token.refresh_at() - h.clock.instant();
        h.advance(until - Duration::from_millis(10));
        manager.access_token(&acme()).await.unwrap();
        assert_eq!(h.sandbox.stats().refreshes, 0);
        h.advance(Duration::from_millis(20));
        let refreshed = manager.access_token(&acme()).await.unwrap();
        assert_eq!(refreshed.generation(), 2);
        assert_eq!(h.sandbox.stats().refreshes, 1);
        assert!(refreshed.expires_at() > token.expires_at());
    }
}

/// The token endpoint answers 429 with `Retry-After: 60` for a minute: after the first 429, no
/// token request is sent inside the window; callers get a typed, retryable error well within
/// their deadline instead of piling up; after the window the grant refreshes normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limited_token_endpoint_is_left_alone_for_the_window() {
    let h = Harness::new(SandboxSpec::default(), Arc::new(MemoryStore::new())).await;
    let deadline = Duration::from_secs(2);
    let (manager, api) = h.connected_api(deadline).await;
    let acme_id: CompanyId = acme().company().unwrap();

    // For a minute, every token request would be answered 429 with Retry-After: 60.
    h.sandbox.inject_fault(
        Endpoint::Token,
        Fault::TooManyRequests {
            retry_after_secs: 60,
        },
        u32::MAX,
    );
    h.advance(ACCESS_TTL);
    let token_hits = || h.sandbox.stats().hits(Endpoint::Token);
    let before = token_hits();
    for second in [0u64, 10, 20, 30, 40, 50, 58] {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let api = api.clone();
            tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                let result = api.get("/v1/export-jobs").company(acme_id).send().await;
                (result, started.elapsed())
            }));
        }
        for task in tasks {
            let (result, took) = task.await.unwrap();
            let err = result.expect_err("no token while rate limited");
            assert_eq!(err.kind(), ErrorKind::RateLimited, "{err:?}");
            assert!(err.is_retryable());
            assert!(took < deadline, "failed by the deadline: {took:?}");
        }
        assert_eq!(
            token_hits() - before,
            1,
            "one token request in the window (t = {second}s, round took {:?})",
            started.elapsed()
        );
        let core: pleo_auth_core::Error = manager.credential_for(&acme()).await.unwrap_err();
        assert_eq!(core.kind(), ErrorKind::RateLimited);
        h.advance(Duration::from_secs(if second == 50 { 8 } else { 10 }));
    }
    // The minute is over.
    h.sandbox.clear_faults();
    h.advance(Duration::from_secs(3));
    api.get("/v1/export-jobs")
        .company(acme_id)
        .send()
        .await
        .expect("refreshed after the window");
    assert_eq!(token_hits() - before, 2);
    let stats = h.sandbox.stats();
    assert_eq!(stats.refreshes, 1);
    assert_eq!(stats.total_revocations(), 0);
}
