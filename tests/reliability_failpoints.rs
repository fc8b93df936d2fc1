//! Failpoints on the refresh path (the `fail` crate, facade feature `_failpoints`): after the
//! token response, before and after the store write, inside lease acquire and release; and a
//! replica whose store goes down the moment Pleo answers, for several lease TTLs, while another
//! replica still reads the old record.
//!
//! The main test runs 1,000 randomized refreshes whose store write fails after Pleo answered
//! (failpoint before the write, failpoint after a write that landed, a store that refuses a few
//! writes, or a store that goes down the moment the answer arrives; sometimes the caller is
//! cancelled too, sometimes the next expiry comes while the pair is still pending). Pass: 0
//! lost refresh tokens (after recovery the store holds the newest pair, which Pleo has never
//! seen presented) and 0 reuses seen by the sandbox.
//!
//! Failpoints are process-global, so the tests of this file take turns.

#![cfg(all(feature = "_failpoints", feature = "oauth", feature = "http"))]

#[path = "reliability_support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fail::FailScenario;
use pleo_auth_core::{
    CredentialStatus, DynLease, DynSecretStore, ErrorKind as CoreKind, InProcessLease, ManualClock,
    MemoryStore, RefreshToken, SecretStore, StoreLease, layout,
};
use pleo_auth_http::transport::TransportConfig;
use pleo_auth_oauth::{
    ErrorKind, GrantState, OAuthClient, OAuthEvent, RefreshPolicy, TokenManager,
};
use pleo_auth_sandbox::RevocationCause;
use support::*;

const AFTER_RESPONSE: &str = "pleo_auth_oauth::after_token_response";
const BEFORE_WRITE: &str = "pleo_auth_oauth::persist::before_write";
const AFTER_WRITE: &str = "pleo_auth_oauth::persist::after_write";
const LEASE_ACQUIRE: &str = "pleo_auth_oauth::lease::acquire";
const LEASE_RELEASE: &str = "pleo_auth_oauth::lease::release";
const BEFORE_TOKEN_REQUEST: &str = "pleo_auth_oauth::before_token_request";

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

type Flaky = FaultyStore<MemoryStore>;

async fn harness() -> (Harness, Arc<Flaky>) {
    let flaky = Arc::new(FaultyStore::new(MemoryStore::new()));
    let h = Harness::new(SandboxSpec::default(), flaky.clone()).await;
    (h, flaky)
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    BeforeWrite(u32),
    AfterWrite(u32),
    StoreRefuses(u64),
    DownAtResponse,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_failed_writes_after_refreshes_lose_nothing() {
    let _turn = TURN.lock().await;
    let scenario = FailScenario::setup();
    let runs: usize = std::env::var("PLEO_AUTH_FAILPOINT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut rng = Rng::from_env("failpoint runs");
    let (h, flaky) = harness().await;
    let client = h.replica();
    h.connect(&client, acme()).await;
    let manager = client.token_manager();
    let started = Instant::now();
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    let mut generation = 1u64;
    let mut pending_runs = 0usize;
    let mut cancelled = 0usize;

    for run in 0..runs {
        h.advance(ACCESS_TTL);
        let fault = match rng.below(6) {
            0 => Fault::None,
            1 => Fault::BeforeWrite(1 + rng.below(3) as u32),
            2 => Fault::AfterWrite(1 + rng.below(3) as u32),
            3 => Fault::StoreRefuses(1 + rng.below(4)),
            _ if rng.percent(50) => Fault::DownAtResponse,
            _ => Fault::BeforeWrite(100),
        };
        *counts
            .entry(match fault {
                Fault::None => "none",
                Fault::BeforeWrite(100) => "writes fail until recovery",
                Fault::BeforeWrite(_) => "before write",
                Fault::AfterWrite(_) => "after write (landed, answer lost)",
                Fault::StoreRefuses(_) => "store refuses writes",
                Fault::DownAtResponse => "store down at the answer",
            })
            .or_default() += 1;
        match fault {
            Fault::None => {}
            Fault::BeforeWrite(n) => fail::cfg(BEFORE_WRITE, &format!("{n}*return")).unwrap(),
            Fault::AfterWrite(n) => fail::cfg(AFTER_WRITE, &format!("{n}*return")).unwrap(),
            Fault::StoreRefuses(n) => flaky.fail_next_writes.store(n, Ordering::SeqCst),
            Fault::DownAtResponse => {
                let store = flaky.clone();
                fail::cfg_callback(AFTER_RESPONSE, move || store.set_down(true)).unwrap();
            }
        }

        // The caller: sometimes cancelled a moment after it started.
        let cancel = rng.percent(15);
        let m = manager.clone();
        let call = tokio::spawn(async move { m.access_token(&acme()).await });
        if cancel {
            tokio::time::sleep(Duration::from_micros(rng.below(700))).await;
            call.abort();
        }
        match call.await {
            Ok(result) => {
                let token = result.unwrap_or_else(|e| panic!("run {run} ({fault:?}): {e:?}"));
                assert_eq!(token.generation(), generation + 1, "run {run} ({fault:?})");
            }
            Err(e) if e.is_cancelled() => cancelled += 1,
            Err(e) => panic!("run {run}: {e}"),
        }
        fail::remove(AFTER_RESPONSE);
        // A cancelled caller's refresh completes in its own task (or, if the caller was
        // cancelled before it started one, the next caller starts it).
        let token = loop {
            match manager.access_token(&acme()).await {
                Ok(token) if token.generation() == generation + 1 => break token,
                Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                Err(e) => panic!("run {run} ({fault:?}): {e:?}"),
            }
        };
        generation += 1;
        assert_eq!(token.generation(), generation);
        assert_eq!(h.sandbox.stats().refreshes, (run + 1) as u64, "run {run}");

        // Sometimes the next expiry comes while the pair is still pending (writes keep failing,
        // reads work): the next refresh must present the pending token, never the stored one.
        let keep_pending = matches!(fault, Fault::BeforeWrite(100)) && rng.percent(50);
        if keep_pending {
            pending_runs += 1;
            continue;
        }
        fail::remove(BEFORE_WRITE);
        fail::remove(AFTER_WRITE);
        flaky.fail_next_writes.store(0, Ordering::SeqCst);
        flaky.set_down(false);

        // Recovery: the newest pair reaches the store.
        let mut flushed = false;
        for _ in 0..100 {
            if manager.flush().await.is_ok() {
                flushed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(flushed, "run {run}: the pending pair was written");
        let (stored, _) = h.stored(0, &acme()).await.expect("the grant is stored");
        assert_eq!(stored.status, CredentialStatus::Active, "run {run}");
        assert_eq!(stored.generation, generation, "run {run} ({fault:?})");
        assert_eq!(
            stored.access_token.as_ref().unwrap().expose_secret(),
            token.access_token().expose_secret(),
            "run {run}: the stored pair is the one in use"
        );
        let refresh = stored.refresh_token.expect("a refresh token");
        let stats = h.sandbox.stats();
        assert_eq!(
            stats.uses_of_refresh_token(refresh.expose_secret()),
            0,
            "run {run}: the stored refresh token is the newest (never presented)"
        );
        assert!(h.sandbox.grant_id(refresh.expose_secret()).is_some());
        assert_eq!(stats.refresh_token_reuses, 0, "run {run} ({fault:?})");
        assert_eq!(stats.total_revocations(), 0, "run {run}");
        // The flight that made the pair may still be returning (its caller got the token as
        // soon as it was installed); then the grant settles as active, not pending.
        let mut state = manager.status(&acme()).await.unwrap().state;
        for _ in 0..200 {
            if state != GrantState::Refreshing {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            state = manager.status(&acme()).await.unwrap().state;
        }
        assert_eq!(state, GrantState::Active, "run {run} ({fault:?})");
    }
    fail::remove(BEFORE_WRITE);
    flaky.set_down(false);
    manager.flush().await.expect("flushed at the end");

    // A brand-new replica starts from the store alone and keeps the chain going.
    let fresh = h.replica().token_manager();
    h.advance(ACCESS_TTL);
    let token = fresh.access_token(&acme()).await.unwrap();
    assert_eq!(token.generation(), generation + 1);
    let stats = h.sandbox.stats();
    assert_eq!(stats.refreshes, runs as u64 + 1);
    assert_eq!(stats.refresh_token_reuses, 0);
    assert_eq!(stats.total_revocations(), 0);
    assert!(stats.refresh_token_uses.values().all(|n| *n == 1));
    let pending_events = h
        .events
        .count(|e| matches!(e, OAuthEvent::PersistPending { .. }));
    eprintln!(
        "{runs} runs in {:?}: {counts:?}; {cancelled} callers cancelled; {pending_runs} expiries \
         while pending; {pending_events} PersistPending events; {} refused writes; 0 lost, 0 reused",
        started.elapsed(),
        flaky.refused_writes.load(Ordering::SeqCst),
    );
    scenario.teardown();
}

/// The lease backend fails: a typed, retryable error, and no token request is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_lease_sends_no_token_request() {
    let _turn = TURN.lock().await;
    let scenario = FailScenario::setup();
    let (h, _) = harness().await;
    let client = h.replica();
    h.connect(&client, acme()).await;
    let manager = client.token_manager();
    h.advance(ACCESS_TTL);
    fail::cfg(LEASE_ACQUIRE, "return").unwrap();
    for _ in 0..20 {
        let err = manager.access_token(&acme()).await.unwrap_err();
        assert_eq!(
            err.kind(),
            &ErrorKind::Store(CoreKind::Unavailable),
            "{err:?}"
        );
        assert!(err.is_retryable());
    }
    assert_eq!(h.sandbox.stats().token_requests_for("refresh_token"), 0);
    fail::remove(LEASE_ACQUIRE);
    assert_eq!(manager.access_token(&acme()).await.unwrap().generation(), 2);
    assert_eq!(h.sandbox.stats().refreshes, 1);
    scenario.teardown();
}

/// A release that never reaches the lease backend: the lease expires by its TTL. Meanwhile
/// another replica follows the store instead of refreshing; after the TTL it refreshes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_release_expires_by_ttl() {
    let _turn = TURN.lock().await;
    let scenario = FailScenario::setup();
    let (h, _) = harness().await;
    let policy = RefreshPolicy {
        lease_ttl: Duration::from_secs(60),
        lease_wait: Duration::from_secs(60),
        ..fast_policy()
    };
    let a = h.replica_with(0, policy.clone());
    h.connect(&a, acme()).await;
    let a = a.token_manager();
    let b = h.replica_with(0, policy).token_manager();
    b.access_token(&acme()).await.unwrap();
    h.advance(ACCESS_TTL);
    fail::cfg(LEASE_RELEASE, "1*return").unwrap();
    assert_eq!(a.access_token(&acme()).await.unwrap().generation(), 2);
    // B's token expired too; the lease is still held, so B adopts A's pair from the store.
    assert_eq!(b.access_token(&acme()).await.unwrap().generation(), 2);
    assert_eq!(h.sandbox.stats().refreshes, 1);
    // After the TTL (and the next expiry), B takes the abandoned lease and refreshes.
    h.advance(ACCESS_TTL);
    assert_eq!(b.access_token(&acme()).await.unwrap().generation(), 3);
    let stats = h.sandbox.stats();
    assert_eq!(stats.refreshes, 2);
    assert_eq!(stats.refresh_token_reuses, 0);
    scenario.teardown();
}

/// A refresh answer that arrives while the caller is gone (the caller was cancelled and the
/// processing after the answer is slow) is still installed and persisted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_answer_after_the_caller_left_is_kept() {
    let _turn = TURN.lock().await;
    let scenario = FailScenario::setup();
    let (h, _) = harness().await;
    let client = h.replica();
    h.connect(&client, acme()).await;
    let manager = client.token_manager();
    h.advance(ACCESS_TTL);
    // The processing after the answer waits at the failpoint until the caller is gone (a pause,
    // not a sleep: a busy machine must not let the caller finish first).
    fail::cfg(AFTER_RESPONSE, "pause").unwrap();
    let call = {
        let m = manager.clone();
        tokio::spawn(async move { m.access_token(&acme()).await })
    };
    eventually("Pleo answered", Duration::from_secs(5), || {
        h.sandbox.stats().refreshes == 1
    })
    .await;
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    fail::cfg(AFTER_RESPONSE, "off").unwrap();
    let mut stored = 1;
    for _ in 0..500 {
        stored = h.stored(0, &acme()).await.unwrap().0.generation;
        if stored == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(stored, 2, "the detached flight persisted the pair");
    assert_eq!(manager.access_token(&acme()).await.unwrap().generation(), 2);
    assert_eq!(h.sandbox.stats().refreshes, 1);
    scenario.teardown();
}

/// The documented limit: a process that loses Pleo's answer (it crashed, or the connection
/// died after Pleo rotated) cannot know the new pair. Its next refresh presents the old token,
/// Pleo revokes the grant, and the grant is reported as needing reauthorization, once, without
/// a retry storm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_ends_in_reauthorization_without_a_retry_storm() {
    let _turn = TURN.lock().await;
    let scenario = FailScenario::setup();
    let (h, _) = harness().await;
    let client = h.replica();
    h.connect(&client, acme()).await;
    let manager = client.token_manager();
    h.advance(ACCESS_TTL);
    fail::cfg(AFTER_RESPONSE, "1*return").unwrap();
    let err = manager.access_token(&acme()).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::Unavailable, "{err:?}");
    assert_eq!(h.sandbox.stats().refreshes, 1, "Pleo rotated");
    fail::remove(AFTER_RESPONSE);

    // After the cooldown the next refresh presents the token Pleo already rotated.
    h.advance(RefreshPolicy::default().cooldown + Duration::from_secs(1));
    let err = manager.access_token(&acme()).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::NeedsReauthorization, "{err:?}");
    let stats = h.sandbox.stats();
    assert_eq!(stats.revocations(RevocationCause::RefreshTokenReuse), 1);
    let requests = stats.token_requests_for("refresh_token");
    assert_eq!(requests, 2);
    for _ in 0..100 {
        let err = manager.access_token(&acme()).await.unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::NeedsReauthorization);
    }
    h.advance(Duration::from_secs(3600));
    for _ in 0..100 {
        manager.access_token(&acme()).await.unwrap_err();
    }
    assert_eq!(
        h.sandbox.stats().token_requests_for("refresh_token"),
        requests,
        "no retry storm"
    );
    let (stored, _) = h.stored(0, &acme()).await.unwrap();
    assert_eq!(stored.status, CredentialStatus::NeedsReauthorization);
    assert_eq!(
        h.events
            .count(|e| matches!(e, OAuthEvent::ReauthorizationRequired { .. })),
        1
    );
    scenario.teardown();
}

/// The sandbox saw one refresh, which presented `old` once: no refresh token was reused and no
/// grant revoked.
fn one_refresh_without_reuse(h: &Harness, old: &RefreshToken, name: &str) {
    let stats = h.sandbox.stats();
    assert_eq!(stats.refreshes, 1, "{name}");
    assert_eq!(
        stats.uses_of_refresh_token(old.expose_secret()),
        1,
        "{name}"
    );
    assert_eq!(stats.refresh_token_reuses, 0, "{name}");
    assert_eq!(stats.total_revocations(), 0, "{name}");
}

/// Fencing: a holder that lost its lease while it was held up between reading the store and
/// presenting the refresh token never presents it. Replica A takes the refresh lease (a store
/// lease whose store A reaches through a [`FaultyStore`]), reads the grant, and is held up for
/// 1.5 lease TTLs before the token request while its lease store hangs, so it cannot renew.
/// Replica B takes the lease over after the TTL and refreshes. When A goes on, confirming its
/// lease fails and A presents nothing: the old refresh token reached Pleo once, no reuse, no
/// revocation; A then adopts B's generation instead of writing over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_that_lost_its_lease_never_presents_the_refresh_token() {
    let _turn = TURN.lock().await;
    let scenario = FailScenario::setup();
    let shared = Arc::new(MemoryStore::new());
    let clock = ManualClock::new();
    let leases = Arc::new(MemoryStore::new());
    let a_leases = Arc::new(FaultyStore::new(leases.clone()));
    let b_lease: DynLease = Arc::new(StoreLease::new(leases.clone()));
    let h = Harness::with_lease(
        SandboxSpec::default(),
        shared.clone(),
        clock.clone(),
        b_lease.clone(),
    )
    .await;
    let policy = RefreshPolicy {
        lease_ttl: Duration::from_secs(1),
        lease_wait: Duration::from_secs(4),
        store_timeout: Duration::from_millis(200),
        ..fast_policy()
    };
    let replica = |lease: DynLease| {
        OAuthClient::builder(config(&h.environment, 0), shared.clone())
            .lease(lease)
            .clock(Arc::new(clock.clone()))
            .policy(policy.clone())
            .transport(TransportConfig {
                timeout: Duration::from_millis(500),
                ..TransportConfig::default()
            })
            .build()
            .expect("the client builds")
    };
    let a = replica(Arc::new(StoreLease::new(a_leases.clone())));
    h.connect(&a, acme()).await;
    let a = a.token_manager();
    let b = replica(b_lease).token_manager();
    assert_eq!(b.access_token(&acme()).await.unwrap().generation(), 1);
    let old = h.stored(0, &acme()).await.unwrap().0.refresh_token.unwrap();

    // Both tokens are due. A takes the lease and is held up before its token request.
    h.advance(ACCESS_TTL);
    fail::cfg(BEFORE_TOKEN_REQUEST, "1*return(1500)").unwrap();
    let lease_key = layout::lease(&grant_key(&h.environment, 0, &acme()));
    let a_call = tokio::spawn({
        let a = a.clone();
        async move { a.access_token(&acme()).await }
    });
    let started = Instant::now();
    while leases.get(&lease_key).await.unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "A took the lease"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A's lease store hangs: A cannot renew, and its lease runs out.
    a_leases.stall.store(true, Ordering::SeqCst);

    // B waits at the lease until it expires, then refreshes.
    let rotated = b.access_token(&acme()).await.expect("B refreshes");
    assert_eq!(rotated.generation(), 2);
    a_leases.stall.store(false, Ordering::SeqCst);

    // A goes on: its lease is gone, so it does not present the superseded refresh token.
    let err = a_call
        .await
        .unwrap()
        .expect_err("A has no lease to present under");
    assert_eq!(err.kind(), &ErrorKind::LeaseUnavailable, "{err:?}");
    fail::remove(BEFORE_TOKEN_REQUEST);
    let stats = h.sandbox.stats();
    assert_eq!(stats.uses_of_refresh_token(old.expose_secret()), 1);
    assert_eq!(stats.refresh_token_reuses, 0);
    assert_eq!(stats.total_revocations(), 0);

    // A adopts B's pair instead of writing over it.
    let adopted = a.access_token(&acme()).await.expect("A adopts");
    assert_eq!(adopted.generation(), 2);
    assert_eq!(
        adopted.access_token().expose_secret(),
        rotated.access_token().expose_secret()
    );
    assert_eq!(h.stored(0, &acme()).await.unwrap().0.generation, 2);
    scenario.teardown();
}

/// An in-process lease and a store lease, each shared by the replicas of a test.
fn shared_leases() -> [(&'static str, DynLease); 2] {
    [
        ("in-process lease", Arc::new(InProcessLease::new())),
        (
            "store lease",
            Arc::new(StoreLease::new(Arc::new(MemoryStore::new()))),
        ),
    ]
}

/// Two replicas of one connected grant on a shared store and `lease` (1 s TTL, 1 s wait):
/// A reaches the store through a [`FaultyStore`], B directly; B has read generation 1.
struct TwoReplicas {
    h: Harness,
    policy: RefreshPolicy,
    a_store: Arc<FaultyStore<Arc<MemoryStore>>>,
    a: TokenManager,
    b: TokenManager,
    /// The refresh token of generation 1, which A's refresh will supersede.
    old: RefreshToken,
}

impl TwoReplicas {
    async fn start(lease: DynLease) -> Self {
        let shared = Arc::new(MemoryStore::new());
        let clock = ManualClock::new();
        let h = Harness::with_lease(
            SandboxSpec::default(),
            shared.clone(),
            clock.clone(),
            lease.clone(),
        )
        .await;
        let policy = RefreshPolicy {
            lease_ttl: Duration::from_secs(1),
            lease_wait: Duration::from_secs(1),
            store_timeout: Duration::from_millis(250),
            ..fast_policy()
        };
        let replica = |store: DynSecretStore| {
            OAuthClient::builder(config(&h.environment, 0), store)
                .lease(lease.clone())
                .clock(Arc::new(clock.clone()))
                .policy(policy.clone())
                .transport(TransportConfig {
                    timeout: Duration::from_millis(500),
                    ..TransportConfig::default()
                })
                .events(h.events.clone())
                .build()
                .expect("the client builds")
        };
        let a_store = Arc::new(FaultyStore::new(shared.clone()));
        let a = replica(a_store.clone());
        h.connect(&a, acme()).await;
        let a = a.token_manager();
        let b = replica(shared.clone()).token_manager();
        assert_eq!(b.access_token(&acme()).await.unwrap().generation(), 1);
        let old = h.stored(0, &acme()).await.unwrap().0.refresh_token.unwrap();
        Self {
            h,
            policy,
            a_store,
            a,
            b,
            old,
        }
    }
}

/// A holder that is alive keeps the refresh lease however slow its store is. Replica A refreshes
/// and its store hangs the moment Pleo answers, for three lease TTLs, with A's write in flight.
/// Past the store timeout A serves the rotated pair from memory (pending) and keeps writing it
/// in the background. Replica B, whose access token has expired, can still read the store, which
/// holds the superseded refresh token. B waits at the lease A renews and gives up with
/// `LeaseUnavailable` instead of presenting that token. When A's store answers again, A's write
/// lands and B adopts the pair: one refresh, no reuse, no revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_with_a_slow_store_keeps_the_lease_so_no_replica_presents_the_old_token() {
    let _turn = TURN.lock().await;
    let scenario = FailScenario::setup();
    for (name, lease) in shared_leases() {
        slow_store_keeps_the_lease(name, lease).await;
    }
    scenario.teardown();
}

async fn slow_store_keeps_the_lease(name: &str, lease: DynLease) {
    let TwoReplicas {
        h,
        policy,
        a_store,
        a,
        b,
        old,
    } = TwoReplicas::start(lease).await;

    // A refreshes in its refresh window; its store hangs the moment Pleo answers.
    h.advance(ACCESS_TTL - Duration::from_secs(30));
    let hang = a_store.clone();
    fail::cfg_callback(AFTER_RESPONSE, move || {
        hang.stall.store(true, Ordering::SeqCst)
    })
    .unwrap();
    let refreshing = tokio::spawn({
        let a = a.clone();
        async move { a.access_token(&acme()).await }
    });
    while !a_store.stall.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    fail::remove(AFTER_RESPONSE);
    // Past the store timeout, A's caller gets the rotated pair from memory.
    let rotated = refreshing.await.unwrap().unwrap();
    assert_eq!(rotated.generation(), 2, "{name}");

    // B's token expires. For three lease TTLs B waits at the lease, which A renews.
    h.advance(Duration::from_secs(60));
    let hung = Instant::now();
    let mut waits = 0;
    while hung.elapsed() < policy.lease_ttl * 3 {
        let err = b
            .access_token(&acme())
            .await
            .expect_err("no token for B while A's write hangs");
        assert_eq!(err.kind(), &ErrorKind::LeaseUnavailable, "{name}: {err:?}");
        waits += 1;
    }
    assert!(waits >= 2, "{name}: B waited {waits} times");
    one_refresh_without_reuse(&h, &old, name);

    // A's store answers again: the write lands, B adopts the pair.
    a_store.stall.store(false, Ordering::SeqCst);
    let landing = Instant::now();
    while h.stored(0, &acme()).await.unwrap().0.generation != 2 {
        assert!(
            landing.elapsed() < Duration::from_secs(10),
            "{name}: A's write landed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let adopted = b.access_token(&acme()).await.unwrap();
    assert_eq!(
        adopted.access_token().expose_secret(),
        rotated.access_token().expose_secret(),
        "{name}"
    );
    one_refresh_without_reuse(&h, &old, name);
}

/// A pair stuck in `PersistPending` keeps the refresh lease. Replica A refreshes and its store
/// goes down the moment Pleo answers, for three lease TTLs; replica B can still read the store,
/// which holds the superseded refresh token. B's access token expires: B waits at the lease
/// (renewed by A) and gives up with `LeaseUnavailable` instead of presenting the old token, which
/// would make Pleo revoke the grant. Once A's store is back, A stores the pair and releases the
/// lease, and B adopts the new token. With an in-process lease and a store lease (each on real
/// time, reached by both replicas).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pending_pair_keeps_the_lease_so_no_replica_presents_the_old_token() {
    let _turn = TURN.lock().await;
    let scenario = FailScenario::setup();
    for (name, lease) in shared_leases() {
        pending_pair_keeps_the_lease(name, lease).await;
    }
    scenario.teardown();
}

async fn pending_pair_keeps_the_lease(name: &str, lease: DynLease) {
    let TwoReplicas {
        h,
        policy,
        a_store,
        a,
        b,
        old,
    } = TwoReplicas::start(lease.clone()).await;

    // A refreshes in its refresh window; its store goes down the moment Pleo answers.
    h.advance(ACCESS_TTL - Duration::from_secs(30));
    let down = a_store.clone();
    fail::cfg_callback(AFTER_RESPONSE, move || down.set_down(true)).unwrap();
    let rotated = a.access_token(&acme()).await.unwrap();
    fail::remove(AFTER_RESPONSE);
    assert_eq!(rotated.generation(), 2, "{name}");
    assert_eq!(
        h.stored(0, &acme()).await.unwrap().0.generation,
        1,
        "{name}: B still reads the superseded pair"
    );

    // The old access token expires (the new one is fresh). For three lease TTLs, B waits at
    // the lease A keeps renewing, and never presents the refresh token A's pair superseded.
    h.advance(Duration::from_secs(60));
    let outage = Instant::now();
    let mut waits = 0;
    while outage.elapsed() < policy.lease_ttl * 3 {
        let err = b
            .access_token(&acme())
            .await
            .expect_err("no token for B while A's pair is not stored");
        assert_eq!(err.kind(), &ErrorKind::LeaseUnavailable, "{name}: {err:?}");
        assert!(err.is_retryable());
        waits += 1;
        let served = a.access_token(&acme()).await.unwrap();
        assert_eq!(served.generation(), 2, "{name}: A serves its pending pair");
    }
    assert!(waits >= 2, "{name}: B waited {waits} times");
    one_refresh_without_reuse(&h, &old, name);
    assert!(
        a_store.refused_reads.load(Ordering::SeqCst) >= 3,
        "{name}: A kept retrying the write"
    );

    // A's store comes back: the pair is stored, the lease released, and B adopts the pair.
    a_store.set_down(false);
    let lease_key = layout::lease(&grant_key(&h.environment, 0, &acme()));
    let started = Instant::now();
    loop {
        let stored = h.stored(0, &acme()).await.unwrap().0.generation;
        if stored == 2
            && let Some(guard) = lease.acquire(&lease_key, policy.lease_ttl).await.unwrap()
        {
            guard.release().await.unwrap();
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name}: stored generation {stored}, the lease still held"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (stored, _) = h.stored(0, &acme()).await.unwrap();
    assert_eq!(
        stored.access_token.unwrap().expose_secret(),
        rotated.access_token().expose_secret(),
        "{name}: A's pair is the stored one"
    );
    let adopted = b.access_token(&acme()).await.unwrap();
    assert_eq!(adopted.generation(), 2, "{name}");
    assert_eq!(
        adopted.access_token().expose_secret(),
        rotated.access_token().expose_secret(),
        "{name}"
    );
    one_refresh_without_reuse(&h, &old, name);
    assert_eq!(
        h.events
            .count(|e| matches!(e, OAuthEvent::ReauthorizationRequired { .. })),
        0,
        "{name}"
    );
}
