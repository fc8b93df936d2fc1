//! Revoke what we don't keep, never what we keep: grants the sandbox issued that a connection
//! refused, replaced or never finished, against Pleo's rules (no revocation endpoint; deleting
//! the installation ends every token of the company).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use pleo_auth_core::{DanglingReason, RevocationState, Subject};
use pleo_auth_oauth::{
    AuthorizationServer, AuthorizeOptions, ErrorKind, OAuthConfig, OAuthEvent, SubjectLookup,
};
use pleo_auth_sandbox::{Endpoint, Fault, RevocationCause, seed};

/// The test client's configuration with another subject lookup.
fn config_with_lookup(h: &Harness, lookup: SubjectLookup) -> OAuthConfig {
    OAuthConfig::builder()
        .environment(h.environment.clone())
        .client_id(CLIENT_ID)
        .client_secret(pleo_auth_core::ClientSecret::new(CLIENT_SECRET))
        .redirect_uri(REDIRECT_URI)
        .scopes("users:read export-jobs:read")
        .authorization_server(AuthorizationServer::pleo(&h.environment).with_subject_lookup(lookup))
        .build()
        .unwrap()
}

/// Expects Acme Denmark, but the sandbox connects Globex.
async fn refused_connection(h: &Harness, client: &pleo_auth_oauth::OAuthClient) {
    let err = h.connect_expecting_dk(client).await;
    assert!(
        matches!(err.kind(), ErrorKind::WrongCompany { .. }),
        "{err:?}"
    );
}

/// A refused grant of a company we keep no grant of is revoked at once (its installation is
/// deleted), so nothing stays live and nothing dangles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_grant_of_a_company_we_do_not_keep_is_revoked() {
    let h = Harness::approving(globex()).await;
    refused_connection(&h, &h.client).await;
    let stats = h.sandbox.stats();
    assert_eq!(stats.revocations(RevocationCause::InstallationDeleted), 1);
    assert!(
        stats.grants.values().all(|g| g.revoked.is_some()),
        "the refused grant is revoked: {:?}",
        stats.grants
    );
    assert!(h.manager.dangling().await.unwrap().is_empty());
    assert!(h.stored_grant(&globex()).await.is_none());
}

/// A refused grant of a company we keep is never revoked (deleting the installation would end
/// the kept grant too): it is recorded as dangling and unsafe to revoke, the kept grant works,
/// and once the kept grant is disconnected keep-alive finds nothing live left and clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_grant_of_a_company_we_keep_is_recorded_and_never_revoked() {
    let h = Harness::approving(globex()).await;
    h.connect(AuthorizeOptions::new()).await;
    refused_connection(&h, &h.client).await;

    assert_eq!(h.sandbox.stats().total_revocations(), 0, "nothing revoked");
    let dangling = h.manager.dangling().await.unwrap();
    assert_eq!(dangling.len(), 1, "{dangling:?}");
    assert_eq!(dangling[0].subject, Some(globex()));
    assert_eq!(dangling[0].reason, DanglingReason::Refused);
    assert_eq!(dangling[0].revocation, RevocationState::Unsafe);
    assert!(
        h.events.count(|e| matches!(
            e,
            OAuthEvent::GrantDangling {
                unsafe_to_revoke: true,
                ..
            }
        )) == 1
    );
    let kept = h.manager.access_token(&globex()).await.unwrap();
    assert_eq!(h.api_status(&kept.credential().header).await, 200);

    let report = h.manager.keep_alive().await.unwrap();
    assert_eq!(
        report.dangling.len(),
        1,
        "still unsafe while Globex is kept"
    );
    assert_eq!(h.sandbox.stats().total_revocations(), 0);

    h.manager.disconnect(&globex()).await.unwrap();
    let report = h.manager.keep_alive().await.unwrap();
    assert_eq!(report.dangling_settled, 1, "{report:?}");
    assert!(h.manager.dangling().await.unwrap().is_empty());
}

/// A reconnect of a company we keep replaces its grant. With Pleo the replaced grant cannot be
/// revoked without ending the new one, so it is recorded (unsafe) and the new grant works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_never_revokes_the_grant_it_keeps() {
    let h = Harness::start().await;
    h.connect(AuthorizeOptions::new()).await;
    let again = h.connect(AuthorizeOptions::new()).await;
    assert!(again.reconnected);
    assert_eq!(h.sandbox.stats().total_revocations(), 0);
    let dangling = h.manager.dangling().await.unwrap();
    assert_eq!(dangling.len(), 1, "{dangling:?}");
    assert_eq!(dangling[0].reason, DanglingReason::Replaced);
    assert_eq!(dangling[0].revocation, RevocationState::Unsafe);
    let token = h.manager.access_token(&dk()).await.unwrap();
    assert_eq!(h.api_status(&token.credential().header).await, 200);
}

/// A revocation that fails (Pleo answers 503) is recorded as pending and retried by keep-alive.
/// The subject is learned with RFC 7662 introspection here, so the only External API call is
/// the installation delete that the fault hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_revocation_is_retried_by_keep_alive() {
    let h = Harness::approving(globex()).await;
    let introspection = h.sandbox.auth_url().join("oauth/token/introspect").unwrap();
    let lookup = SubjectLookup::token_introspection(introspection.as_str()).unwrap();
    let (client, manager) = h.client_with(config_with_lookup(&h, lookup));
    h.sandbox
        .inject_fault(Endpoint::Api, Fault::ServerError(503), 1);
    refused_connection(&h, &client).await;
    assert_eq!(h.sandbox.stats().total_revocations(), 0);
    let dangling = manager.dangling().await.unwrap();
    assert_eq!(dangling.len(), 1);
    assert_eq!(dangling[0].revocation, RevocationState::Pending);
    assert_eq!(dangling[0].attempts, 1);

    let report = manager.keep_alive().await.unwrap();
    assert_eq!(report.dangling_settled, 1, "{report:?}");
    assert_eq!(
        h.sandbox
            .stats()
            .revocations(RevocationCause::InstallationDeleted),
        1
    );
    assert!(manager.dangling().await.unwrap().is_empty());
}

/// A connection that stopped after the code exchange (its process died, or its future was
/// dropped) left its tokens in a dangling record; keep-alive revokes them once the connection
/// can no longer complete, refreshing first (and storing the rotated pair) because the access
/// token expired meanwhile. No refresh token is presented twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_completed_is_revoked_by_keep_alive() {
    let h = Harness::start().await;
    let hang = Arc::new(AtomicBool::new(true));
    let lookup = {
        let hang = hang.clone();
        SubjectLookup::from_fn(move |_token| {
            let hang = hang.clone();
            async move {
                if hang.load(Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                Ok::<Subject, pleo_auth_core::Error>(dk())
            }
        })
    };
    let (client, manager) = h.client_with(config_with_lookup(&h, lookup));
    let request = client.authorize(AuthorizeOptions::new()).await.unwrap();
    let callback = h.consent(&request.url).await;
    let stopped =
        tokio::time::timeout(Duration::from_millis(500), client.complete(&callback)).await;
    assert!(
        stopped.is_err(),
        "the connection stops while learning the subject"
    );
    let dangling = manager.dangling().await.unwrap();
    assert_eq!(
        dangling.len(),
        1,
        "the tokens were stored before anything was judged"
    );
    assert_eq!(dangling[0].reason, DanglingReason::Connecting);
    assert_eq!(dangling[0].subject, None);

    // While the connection could still complete, keep-alive leaves it alone.
    let report = manager.keep_alive().await.unwrap();
    assert_eq!(report.dangling_settled, 0);
    assert_eq!(h.sandbox.stats().total_revocations(), 0);

    // Later (the access token has expired too), it is refused and revoked.
    hang.store(false, Ordering::SeqCst);
    h.advance(Duration::from_secs(60 * 60));
    let report = manager.keep_alive().await.unwrap();
    assert_eq!(report.dangling_settled, 1, "{report:?}");
    let stats = h.sandbox.stats();
    assert_eq!(stats.revocations(RevocationCause::InstallationDeleted), 1);
    assert_eq!(
        stats.refreshes, 1,
        "refreshed once to get a usable access token"
    );
    assert_eq!(stats.refresh_token_reuses, 0);
    assert!(manager.dangling().await.unwrap().is_empty());
    assert!(h.stored_grant(&dk()).await.is_none());
    let _ = seed::ACME_DK;
}
