//! The refresh manager against the sandbox in strict-rotation mode: one refresh per expiry
//! across tasks and replicas, cancellation, store failures, refusals, rate limits, 401 storms.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use pleo_auth_core::{CredentialProvider, CredentialStatus, ErrorKind as CoreKind, RefreshToken};
use pleo_auth_oauth::{AuthorizeOptions, ErrorKind, GrantState, OAuthEvent, TokenManager};
use pleo_auth_sandbox::{Endpoint, Fault, token_fingerprint};

async fn refresh_token_of(h: &Harness) -> RefreshToken {
    h.stored_grant(&dk()).await.unwrap().refresh_token.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_callers_on_four_replicas_cause_one_refresh_per_expiry() {
    let h = Harness::start().await;
    h.connect(AuthorizeOptions::new()).await;
    let managers: Vec<TokenManager> = std::iter::once(h.manager.clone())
        .chain((0..3).map(|_| h.replica().1))
        .collect();
    const ROUNDS: u64 = 5;
    let mut timings = Vec::new();
    for round in 1..=ROUNDS {
        h.advance(ACCESS_TTL);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..1000 {
            let manager = managers[i % managers.len()].clone();
            tasks.push(tokio::spawn(
                async move { manager.credential_for(&dk()).await },
            ));
        }
        let mut headers = std::collections::HashSet::new();
        for task in tasks {
            let credential = task.await.unwrap().expect("every caller gets a token");
            headers.insert(credential.header.expose_secret().to_owned());
        }
        timings.push(started.elapsed());
        assert_eq!(headers.len(), 1, "every caller got the same new token");
        let stats = h.sandbox.stats();
        assert_eq!(stats.refreshes, round, "one refresh per expiry");
        assert_eq!(stats.token_requests_for("refresh_token"), round);
        assert_eq!(stats.refresh_token_reuses, 0);
        assert_eq!(stats.total_revocations(), 0);
        assert_eq!(h.stored_grant(&dk()).await.unwrap().generation, 1 + round);
        let header = headers.into_iter().next().unwrap();
        assert_eq!(
            h.api_status(&pleo_auth_core::AuthorizationHeader::new(header))
                .await,
            200
        );
    }
    assert!(
        h.sandbox
            .stats()
            .refresh_token_uses
            .values()
            .all(|n| *n == 1)
    );
    eprintln!("1,000 callers at expiry, 4 replicas, per round: {timings:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_grants_refresh_independently() {
    let h = Harness::start().await;
    h.connect(AuthorizeOptions::new()).await;
    h.sandbox
        .set_auto_approve(Some(pleo_auth_sandbox::seed::GLOBEX))
        .unwrap();
    h.connect(AuthorizeOptions::new()).await;
    h.advance(ACCESS_TTL);
    // Globex's refresh is slow; Acme Denmark's callers must not wait for it.
    h.sandbox
        .inject_fault(Endpoint::Token, Fault::Delay(Duration::from_millis(600)), 1);
    let slow = {
        let m = h.manager.clone();
        tokio::spawn(async move { m.access_token(&globex()).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let fast = h.manager.access_token(&dk()).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fast.subject(), &dk());
    assert_eq!(slow.await.unwrap().unwrap().subject(), &globex());
    assert_eq!(h.sandbox.stats().refreshes, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_caller_does_not_lose_the_refresh() {
    let h = Harness::start().await;
    h.connect(AuthorizeOptions::new()).await;
    let old = refresh_token_of(&h).await;
    h.advance(ACCESS_TTL);
    h.sandbox
        .inject_fault(Endpoint::Token, Fault::Delay(Duration::from_millis(400)), 1);
    let caller = {
        let m = h.manager.clone();
        tokio::spawn(async move { m.access_token(&dk()).await })
    };
    // The request is at the sandbox now; drop the caller.
    eventually("the refresh request reached the sandbox", || {
        h.sandbox.stats().hits(Endpoint::Token) >= 2
    })
    .await;
    caller.abort();
    assert!(caller.await.unwrap_err().is_cancelled());

    // The detached refresh completes and persists the new pair.
    for _ in 0..500 {
        if h.stored_grant(&dk()).await.unwrap().generation == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stored = h.stored_grant(&dk()).await.unwrap();
    assert_eq!(stored.generation, 2, "the new pair was persisted");
    assert_ne!(
        stored.refresh_token.as_ref().unwrap().expose_secret(),
        old.expose_secret()
    );

    // The next caller gets the new token without another refresh; the old one was used once.
    let token = h.manager.access_token(&dk()).await.unwrap();
    assert_eq!(token.generation(), 2);
    assert_eq!(h.api_status(&token.credential().header).await, 200);
    let stats = h.sandbox.stats();
    assert_eq!(stats.refreshes, 1);
    assert_eq!(stats.uses_of_refresh_token(old.expose_secret()), 1);
    assert_eq!(stats.total_revocations(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_store_write_loses_nothing_and_never_reuses_a_token() {
    let h = Harness::start().await;
    h.connect(AuthorizeOptions::new()).await;
    let first = refresh_token_of(&h).await;

    // The store refuses every grant write from now on.
    h.flaky.fail_writes.store(true, Ordering::SeqCst);
    h.advance(ACCESS_TTL);
    let token = h.manager.access_token(&dk()).await.unwrap();
    assert_eq!(token.generation(), 2);
    assert_eq!(h.api_status(&token.credential().header).await, 200);
    assert_eq!(
        h.manager.status(&dk()).await.unwrap().state,
        GrantState::PersistPending
    );
    assert_eq!(
        h.events
            .count(|e| matches!(e, OAuthEvent::PersistPending { generation: 2, .. })),
        1
    );
    assert_eq!(
        h.stored_grant(&dk()).await.unwrap().generation,
        1,
        "store still old"
    );
    assert!(h.flaky.refused_writes.load(Ordering::SeqCst) >= 1);

    // Next expiry while still pending: the in-memory refresh token is used, never the stored one.
    h.advance(ACCESS_TTL);
    let token = h.manager.access_token(&dk()).await.unwrap();
    assert_eq!(token.generation(), 3);
    assert_eq!(h.api_status(&token.credential().header).await, 200);
    let stats = h.sandbox.stats();
    assert_eq!(stats.refreshes, 2);
    assert_eq!(stats.refresh_token_reuses, 0);
    assert_eq!(stats.uses_of_refresh_token(first.expose_secret()), 1);
    assert_eq!(stats.total_revocations(), 0);

    // The store recovers; the background retry writes the newest pair.
    h.flaky.fail_writes.store(false, Ordering::SeqCst);
    eventually("the pending pair is written", || {
        h.events
            .count(|e| matches!(e, OAuthEvent::PersistRecovered { generation: 3, .. }))
            == 1
    })
    .await;
    let stored = h.stored_grant(&dk()).await.unwrap();
    assert_eq!(stored.generation, 3);
    assert_eq!(
        h.manager.status(&dk()).await.unwrap().state,
        GrantState::Active
    );

    // Another replica starts from the store and continues the chain without reuse.
    let (_, other) = h.replica();
    h.advance(ACCESS_TTL);
    let token = other.access_token(&dk()).await.unwrap();
    assert_eq!(token.generation(), 4);
    assert_eq!(h.api_status(&token.credential().header).await, 200);
    let stats = h.sandbox.stats();
    assert_eq!(stats.refreshes, 3);
    assert_eq!(stats.refresh_token_reuses, 0);
    assert!(stats.refresh_token_uses.values().all(|n| *n == 1));
    assert_eq!(stats.total_revocations(), 0);
    // The first replica adopts the rotation instead of refreshing again.
    let adopted = h.manager.access_token(&dk()).await.unwrap();
    assert_eq!(adopted.generation(), 4);
    assert_eq!(h.sandbox.stats().refreshes, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_writes_pending_pairs_now() {
    let h = Harness::with(Options {
        policy: pleo_auth_oauth::RefreshPolicy {
            persist_initial_backoff: Duration::from_secs(3600),
            persist_max_backoff: Duration::from_secs(3600),
            ..test_policy()
        },
        ..Options::default()
    })
    .await;
    h.connect(AuthorizeOptions::new()).await;
    h.flaky.fail_writes.store(true, Ordering::SeqCst);
    h.advance(ACCESS_TTL);
    h.manager.access_token(&dk()).await.unwrap();
    let err = h.manager.flush().await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::Store(CoreKind::Unavailable));
    h.flaky.fail_writes.store(false, Ordering::SeqCst);
    h.manager.flush().await.unwrap();
    assert_eq!(h.stored_grant(&dk()).await.unwrap().generation, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_marks_the_grant_and_stops_calling_pleo() {
    let h = Harness::start().await;
    h.connect(AuthorizeOptions::new()).await;
    let token = h.manager.access_token(&dk()).await.unwrap();
    h.sandbox.revoke_grant(token.access_token().expose_secret());
    h.advance(ACCESS_TTL);

    let err = h.manager.access_token(&dk()).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::NeedsReauthorization);
    assert!(!err.is_retryable());
    let stored = h.stored_grant(&dk()).await.unwrap();
    assert_eq!(stored.status, CredentialStatus::NeedsReauthorization);
    assert_eq!(stored.status_reason.as_deref(), Some("invalid_grant"));
    assert!(stored.access_token.is_none() && stored.refresh_token.is_none());
    assert_eq!(
        h.events
            .count(|e| matches!(e, OAuthEvent::ReauthorizationRequired { .. })),
        1
    );

    // Later calls fail fast, on this replica and on a fresh one, without a token request.
    let (_, other) = h.replica();
    for _ in 0..10 {
        h.advance(ACCESS_TTL);
        let core = h.manager.credential_for(&dk()).await.unwrap_err();
        assert_eq!(core.kind(), CoreKind::NeedsReauthorization);
        let core = other.credential_for(&dk()).await.unwrap_err();
        assert_eq!(core.kind(), CoreKind::NeedsReauthorization);
    }
    assert_eq!(h.sandbox.stats().token_requests_for("refresh_token"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_client_is_a_configuration_error_and_leaves_the_grant_alone() {
    let h = Harness::start().await;
    h.connect(AuthorizeOptions::new()).await;
    let (_, wrong) = h.replica_with("CANARY-wrong-secret", test_policy());
    h.advance(ACCESS_TTL);
    let err = wrong.access_token(&dk()).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::InvalidClient);
    let core: pleo_auth_core::Error = err.into();
    assert_eq!(core.kind(), CoreKind::Config);
    let stored = h.stored_grant(&dk()).await.unwrap();
    assert_eq!(stored.status, CredentialStatus::Active);
    assert_eq!(stored.generation, 1);
    // The correctly configured replica still refreshes the untouched grant.
    let token = h.manager.access_token(&dk()).await.unwrap();
    assert_eq!(token.generation(), 2);
    assert_eq!(h.sandbox.stats().total_revocations(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_honoured_with_a_cooldown() {
    let h = Harness::start().await;
    h.connect(AuthorizeOptions::new()).await;
    h.sandbox.inject_fault(
        Endpoint::Token,
        Fault::TooManyRequests {
            retry_after_secs: 30,
        },
        1,
    );
    let hits = || h.sandbox.stats().hits(Endpoint::Token);
    let before = hits();
    h.advance(ACCESS_TTL);
    let err = h.manager.access_token(&dk()).await.unwrap_err();
    assert_eq!(
        err.kind(),
        &ErrorKind::RateLimited {
            retry_after: Some(Duration::from_secs(30))
        }
    );
    assert!(err.is_retryable());
    assert_eq!(hits(), before + 1);
    assert_eq!(
        h.manager.status(&dk()).await.unwrap().state,
        GrantState::CoolingDown
    );

    // Inside the Retry-After window nobody calls the token endpoint.
    for _ in 0..5 {
        h.advance(Duration::from_secs(5));
        let err = h.manager.access_token(&dk()).await.unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::RateLimited { .. }));
    }
    assert_eq!(hits(), before + 1);
    assert!(
        h.events.count(|e| matches!(
            e,
            OAuthEvent::RefreshFailed {
                retryable: true,
                ..
            }
        )) >= 1
    );

    // After it, the refresh goes through.
    h.advance(Duration::from_secs(6));
    let token = h.manager.access_token(&dk()).await.unwrap();
    assert_eq!(token.generation(), 2);
    assert_eq!(hits(), before + 2);
    assert_eq!(h.sandbox.stats().refreshes, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_and_a_valid_token_is_served_meanwhile() {
    let h = Harness::start().await;
    h.connect(AuthorizeOptions::new()).await;
    let first = h.manager.access_token(&dk()).await.unwrap();

    // Two 503s then success: one refresh after three attempts.
    h.sandbox
        .inject_fault(Endpoint::Token, Fault::ServerError(503), 2);
    h.advance(ACCESS_TTL);
    let token = h.manager.access_token(&dk()).await.unwrap();
    assert_eq!(token.generation(), 2);
    let stats = h.sandbox.stats();
    assert_eq!(stats.faults_injected.get(&Endpoint::Token), Some(&2));
    assert_eq!(stats.refreshes, 1);

    // In the refresh window (before expiry), a failing refresh serves the still-valid token.
    h.sandbox
        .inject_fault(Endpoint::Token, Fault::ServerError(502), 3);
    h.advance(ACCESS_TTL - Duration::from_secs(20));
    let served = h.manager.access_token(&dk()).await.unwrap();
    assert_eq!(served.generation(), 2);
    assert_eq!(h.api_status(&served.credential().header).await, 200);
    assert_ne!(
        served.access_token().expose_secret(),
        first.access_token().expose_secret()
    );
    // Once it has expired, the caller gets a retryable error until the cooldown (30 s) ends,
    // without calling Pleo.
    let hits = h.sandbox.stats().endpoint_hits[&Endpoint::Token];
    h.advance(Duration::from_secs(21));
    let err = h.manager.access_token(&dk()).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::Unavailable);
    assert!(err.is_retryable());
    assert_eq!(h.sandbox.stats().endpoint_hits[&Endpoint::Token], hits);
    h.advance(Duration::from_secs(10));
    assert_eq!(h.manager.access_token(&dk()).await.unwrap().generation(), 3);
    assert_eq!(h.sandbox.stats().total_revocations(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_concurrent_rejections_cause_one_refresh() {
    let h = Harness::start().await;
    h.connect(AuthorizeOptions::new()).await;
    let old = h.manager.access_token(&dk()).await.unwrap();
    let old_id = old.credential().id.clone();
    // A second replica has the same token cached.
    let (_, other) = h.replica();
    let other_old = other.credential_for(&dk()).await.unwrap();
    assert_eq!(
        other_old.header.expose_secret(),
        old.credential().header.expose_secret()
    );

    // Pleo revokes the access token early; the refresh token stays valid.
    assert_eq!(
        h.sandbox
            .revoke_access_tokens(old.access_token().expose_secret()),
        1
    );
    assert_eq!(h.api_status(&old.credential().header).await, 401);

    let mut tasks = Vec::new();
    for _ in 0..300 {
        let m = h.manager.clone();
        let id = old_id.clone();
        tasks.push(tokio::spawn(async move { m.rejected(&dk(), &id).await }));
    }
    for task in tasks {
        assert!(task.await.unwrap().unwrap(), "a retry can help");
    }
    let fresh = h.manager.credential_for(&dk()).await.unwrap();
    assert_ne!(fresh.id, old_id);
    assert_eq!(h.api_status(&fresh.header).await, 200);
    let stats = h.sandbox.stats();
    assert_eq!(stats.refreshes, 1);
    assert_eq!(stats.token_requests_for("refresh_token"), 1);

    // A late rejection of the old id changes nothing.
    assert!(h.manager.rejected(&dk(), &old_id).await.unwrap());
    // The other replica's 401 makes it adopt the rotation from the store, not refresh again.
    assert!(other.rejected(&dk(), &other_old.id).await.unwrap());
    let adopted = other.credential_for(&dk()).await.unwrap();
    assert_eq!(adopted.header.expose_secret(), fresh.header.expose_secret());
    let stats = h.sandbox.stats();
    assert_eq!(stats.refreshes, 1);
    assert_eq!(stats.total_revocations(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_refreshes_only_old_refresh_tokens() {
    let h = Harness::start().await;
    h.connect(AuthorizeOptions::new()).await;
    h.advance(Duration::from_secs(20 * 24 * 3600));
    h.sandbox
        .set_auto_approve(Some(pleo_auth_sandbox::seed::GLOBEX))
        .unwrap();
    h.connect(AuthorizeOptions::new()).await;
    h.advance(Duration::from_secs(15 * 24 * 3600));

    // Acme Denmark's refresh token is 35 days old, Globex's 15 days.
    let report = h.manager.keep_alive().await.unwrap();
    assert_eq!(report.checked, 2);
    assert_eq!(report.refreshed, vec![dk()]);
    assert!(report.failed.is_empty());
    let dk_token = refresh_token_of(&h).await;
    let stats = h.sandbox.stats();
    assert_eq!(stats.refreshes, 1);
    let dk_grant = h.sandbox.grant_id(dk_token.expose_secret()).unwrap();
    assert_eq!(stats.grants[&dk_grant].refreshes, 1);

    // Nothing is due right after.
    assert!(h.manager.keep_alive().await.unwrap().refreshed.is_empty());

    // 31 days later both are due; an idle Globex (46 days) survives past Pleo's 60 days.
    h.advance(Duration::from_secs(31 * 24 * 3600));
    let mut refreshed = h.manager.keep_alive().await.unwrap().refreshed;
    refreshed.sort();
    let mut expected = vec![dk(), globex()];
    expected.sort();
    assert_eq!(refreshed, expected);
    h.advance(Duration::from_secs(20 * 24 * 3600));
    for subject in [dk(), globex()] {
        let token = h.manager.access_token(&subject).await.unwrap();
        assert_eq!(h.api_status(&token.credential().header).await, 200);
    }
    assert_eq!(h.sandbox.stats().total_revocations(), 0);
    assert!(
        h.sandbox
            .stats()
            .refresh_token_uses
            .values()
            .all(|n| *n == 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_revokes_at_pleo_and_marks_the_record() {
    let h = Harness::start().await;
    h.connect(AuthorizeOptions::new()).await;
    let credential = h.manager.credential_for(&dk()).await.unwrap();
    let outcome = h.manager.disconnect(&dk()).await.unwrap();
    assert_eq!(outcome, pleo_auth_oauth::DisconnectOutcome::Revoked);
    assert_eq!(
        h.sandbox
            .stats()
            .revocations(pleo_auth_sandbox::RevocationCause::InstallationDeleted),
        1
    );
    assert_eq!(h.api_status(&credential.header).await, 401);
    let stored = h.stored_grant(&dk()).await.unwrap();
    assert_eq!(stored.status, CredentialStatus::Revoked);
    assert!(stored.access_token.is_none() && stored.refresh_token.is_none());
    let err = h.manager.access_token(&dk()).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::Revoked);
    assert_eq!(
        h.manager.status(&dk()).await.unwrap().state,
        GrantState::Revoked
    );
    assert_eq!(
        h.events.count(|e| matches!(
            e,
            OAuthEvent::Disconnected {
                revoked_at_pleo: true,
                ..
            }
        )),
        1
    );
    // Disconnecting again is a no-op; a reconnect makes it active again.
    assert_eq!(
        h.manager.disconnect(&dk()).await.unwrap(),
        pleo_auth_oauth::DisconnectOutcome::Revoked
    );
    // Connect's introspection, the DELETE and our own check: the second disconnect sent nothing.
    assert_eq!(h.sandbox.stats().api_requests, 3);
    h.connect(AuthorizeOptions::new()).await;
    assert_eq!(
        h.manager.status(&dk()).await.unwrap().state,
        GrantState::Active
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_disconnect_failure_leaves_a_tombstone_that_is_retried() {
    let h = Harness::start().await;
    h.connect(AuthorizeOptions::new()).await;
    h.sandbox
        .inject_fault(Endpoint::Api, Fault::ServerError(502), 3);
    let outcome = h.manager.disconnect(&dk()).await.unwrap();
    assert_eq!(
        outcome,
        pleo_auth_oauth::DisconnectOutcome::RevocationPending
    );
    // Unusable locally at once.
    let err = h.manager.access_token(&dk()).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::Revoked);
    let (_, other) = h.replica();
    assert_eq!(
        other.access_token(&dk()).await.unwrap_err().kind(),
        &ErrorKind::Revoked
    );
    // The background retry gets through once the faults are used up.
    eventually("the installation is deleted", || {
        h.sandbox
            .stats()
            .revocations(pleo_auth_sandbox::RevocationCause::InstallationDeleted)
            == 1
    })
    .await;
    eventually("the tombstone is finalised", || {
        h.events.count(|e| {
            matches!(
                e,
                OAuthEvent::Disconnected {
                    revoked_at_pleo: true,
                    ..
                }
            )
        }) == 1
    })
    .await;
    let stored = h.stored_grant(&dk()).await.unwrap();
    assert_eq!(stored.status_reason.as_deref(), Some("disconnected"));
    assert!(stored.refresh_token.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_retries_pending_revocations_after_a_restart() {
    // No background retries (the backoff is an hour): only keep_alive() can finish the job.
    let policy = pleo_auth_oauth::RefreshPolicy {
        persist_initial_backoff: Duration::from_secs(3600),
        persist_max_backoff: Duration::from_secs(3600),
        ..test_policy()
    };
    let h = Harness::with(Options {
        policy: policy.clone(),
        ..Options::default()
    })
    .await;
    h.connect(AuthorizeOptions::new()).await;
    h.sandbox
        .inject_fault(Endpoint::Api, Fault::ServerError(503), 1);
    assert_eq!(
        h.manager.disconnect(&dk()).await.unwrap(),
        pleo_auth_oauth::DisconnectOutcome::RevocationPending
    );
    assert_eq!(
        h.manager.status(&dk()).await.unwrap().state,
        GrantState::RevocationPending
    );
    // A restarted replica, after the access token expired: it refreshes the tombstone's tokens
    // and revokes.
    h.advance(ACCESS_TTL);
    let (_, restarted) = h.replica_with(CLIENT_SECRET, policy);
    let report = restarted.keep_alive().await.unwrap();
    assert_eq!(report.revoked, vec![dk()]);
    assert!(report.failed.is_empty());
    let stats = h.sandbox.stats();
    assert_eq!(
        stats.revocations(pleo_auth_sandbox::RevocationCause::InstallationDeleted),
        1
    );
    assert_eq!(stats.refresh_token_reuses, 0);
    assert_eq!(
        h.stored_grant(&dk())
            .await
            .unwrap()
            .status_reason
            .as_deref(),
        Some("disconnected")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_that_needs_reauthorization_is_disconnected_locally() {
    let h = Harness::start().await;
    h.connect(AuthorizeOptions::new()).await;
    let token = h.manager.access_token(&dk()).await.unwrap();
    h.sandbox.revoke_grant(token.access_token().expose_secret());
    h.advance(ACCESS_TTL);
    assert!(h.manager.access_token(&dk()).await.is_err());
    assert_eq!(
        h.manager.disconnect(&dk()).await.unwrap(),
        pleo_auth_oauth::DisconnectOutcome::LocalOnly
    );
    assert_eq!(
        h.stored_grant(&dk()).await.unwrap().status,
        CredentialStatus::Revoked
    );
    let err = h.manager.disconnect(&globex()).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::NotConnected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fingerprints_of_our_tokens_are_known_to_the_sandbox() {
    // Guards the test harness itself: the sandbox names tokens by the fingerprint we compute.
    let h = Harness::start().await;
    h.connect(AuthorizeOptions::new()).await;
    let old = refresh_token_of(&h).await;
    h.advance(ACCESS_TTL);
    h.manager.access_token(&dk()).await.unwrap();
    assert!(
        h.sandbox
            .stats()
            .refresh_token_uses
            .contains_key(&token_fingerprint(old.expose_secret()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_is_survived_from_cache_and_fails_typed_at_expiry() {
    let h = Harness::start().await;
    h.connect(AuthorizeOptions::new()).await;
    let cached = h.manager.access_token(&dk()).await.unwrap();
    h.flaky.fail_reads.store(true, Ordering::SeqCst);
    h.flaky.fail_writes.store(true, Ordering::SeqCst);

    // While the token is fresh, calls are served from the cache.
    h.advance(Duration::from_secs(5 * 60));
    let served = h.manager.access_token(&dk()).await.unwrap();
    assert_eq!(served.credential().id, cached.credential().id);

    // At expiry no refresh is started that could not be persisted: a typed, retryable error.
    h.advance(ACCESS_TTL);
    let err = h.manager.access_token(&dk()).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::Store(CoreKind::Unavailable));
    assert!(err.is_retryable());
    let core = h.manager.credential_for(&dk()).await.unwrap_err();
    assert_eq!(core.kind(), CoreKind::Unavailable);
    assert!(core.is_retryable());
    assert_eq!(h.sandbox.stats().token_requests_for("refresh_token"), 0);

    // Once the store is back, the refresh happens.
    h.flaky.fail_reads.store(false, Ordering::SeqCst);
    h.flaky.fail_writes.store(false, Ordering::SeqCst);
    assert_eq!(h.manager.access_token(&dk()).await.unwrap().generation(), 2);
    assert_eq!(h.stored_grant(&dk()).await.unwrap().generation, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_record_fails_closed() {
    let h = Harness::start().await;
    h.connect(AuthorizeOptions::new()).await;
    let key = pleo_auth_core::layout::oauth_grant(&pleo_auth_core::CredentialKey::new(
        h.environment.name().clone(),
        CLIENT_ID.parse().unwrap(),
        dk(),
    ));
    for (bytes, kind) in [
        (&b"not json"[..], CoreKind::Corrupt),
        (
            &br#"{"schema":99,"kind":"oauth_grant"}"#[..],
            CoreKind::UnsupportedSchema,
        ),
    ] {
        h.store
            .put(
                &key,
                bytes.to_vec().into(),
                pleo_auth_core::Precondition::None,
            )
            .await
            .unwrap();
        let (_, fresh) = h.replica();
        let err = fresh.access_token(&dk()).await.unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::Store(kind));
        assert!(!err.is_retryable());
        assert_eq!(
            fresh.status(&dk()).await.unwrap_err().kind(),
            &ErrorKind::Store(kind)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lease_holder_is_taken_over_after_its_ttl() {
    let h = Harness::start().await;
    h.connect(AuthorizeOptions::new()).await;
    let grant_key = pleo_auth_core::layout::oauth_grant(&pleo_auth_core::CredentialKey::new(
        h.environment.name().clone(),
        CLIENT_ID.parse().unwrap(),
        dk(),
    ));
    h.advance(ACCESS_TTL);
    // Another replica took the lease at expiry and died without releasing it.
    let guard = h
        .lease
        .acquire(
            &pleo_auth_core::layout::lease(&grant_key),
            Duration::from_secs(60),
        )
        .await
        .unwrap()
        .expect("lease free");
    std::mem::forget(guard);

    let caller = {
        let m = h.manager.clone();
        tokio::spawn(async move { m.access_token(&dk()).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!caller.is_finished(), "waits for the holder");
    assert_eq!(h.sandbox.stats().token_requests_for("refresh_token"), 0);

    // The holder's lease expires; the waiting caller takes over and refreshes once.
    h.advance(Duration::from_secs(61));
    let token = caller.await.unwrap().unwrap();
    assert_eq!(token.generation(), 2);
    let stats = h.sandbox.stats();
    assert_eq!(stats.refreshes, 1);
    assert_eq!(stats.total_revocations(), 0);
}
