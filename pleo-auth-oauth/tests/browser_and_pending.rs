//! A flow bound to the browser that started it, and pending authorizations that go away: on
//! completion, on failure, and once expired (the sweep, also run by keep-alive).

mod common;

use std::time::Duration;

use common::*;
use pleo_auth_core::{BrowserBinding, ErrorKind as CoreKind, SecretStore, layout};
use pleo_auth_oauth::{AuthorizeOptions, DEFAULT_PENDING_TTL, ErrorKind};

async fn pending_count(h: &Harness) -> usize {
    let prefix = layout::pending_authorizations(h.environment.name(), &CLIENT_ID.parse().unwrap());
    h.store.list(&prefix).await.unwrap().len()
}

fn assert_no_code_exchange(h: &Harness) {
    assert_eq!(
        h.sandbox.stats().token_requests_for("authorization_code"),
        0,
        "refused before any token request"
    );
}

/// Starts a flow with `options` and follows the consent: the callback URL.
async fn callback_of(h: &Harness, options: AuthorizeOptions) -> String {
    let request = h.client.authorize(options).await.unwrap();
    h.consent(&request.url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_flow_completes_only_in_its_own_browser() {
    let h = Harness::start().await;
    let browser = BrowserBinding::generate();
    let callback = callback_of(&h, AuthorizeOptions::new().bind_to_browser(&browser)).await;

    // Another browser (another binding) is refused before any token request, and the state is
    // used up: the right browser cannot complete it afterwards either.
    let other = BrowserBinding::generate();
    let err = h
        .client
        .complete_in_browser(&callback, &other)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::BrowserMismatch);
    assert_eq!(err.kind().core_kind(), CoreKind::InvalidInput);
    assert_no_code_exchange(&h);
    assert_eq!(pending_count(&h).await, 0, "the refused state is gone");
    let err = h
        .client
        .complete_in_browser(&callback, &browser)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::UnknownState);
    assert!(h.stored_grant(&dk()).await.is_none());
    assert_no_code_exchange(&h);

    // A bound flow is refused without a binding too, and its own browser completes a new one.
    let callback = callback_of(&h, AuthorizeOptions::new().bind_to_browser(&browser)).await;
    let err = h.client.complete(&callback).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::BrowserMismatch);
    let callback = callback_of(&h, AuthorizeOptions::new().bind_to_browser(&browser)).await;
    let connection = h
        .client
        .complete_in_browser(&callback, &browser)
        .await
        .unwrap();
    assert_eq!(connection.subject, dk());
    assert!(h.stored_grant(&dk()).await.is_some());
    assert_eq!(
        h.sandbox.stats().token_successes_for("authorization_code"),
        1
    );

    // An unbound flow is not completed with a browser binding (it was not started there).
    let callback = callback_of(&h, AuthorizeOptions::new()).await;
    let err = h
        .client
        .complete_in_browser(&callback, &browser)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::BrowserMismatch);
    assert_eq!(pending_count(&h).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_callback_deletes_its_pending_authorization() {
    let h = Harness::start().await;
    // The consent was refused.
    let request = h.client.authorize(AuthorizeOptions::new()).await.unwrap();
    let state = request.state.expose_secret().to_owned();
    let err = h
        .client
        .complete(&format!("error=access_denied&state={state}"))
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::AccessDenied { .. }));
    assert_eq!(pending_count(&h).await, 0);
    // An `iss` naming another authorization server (mix-up): refused, and the state is gone.
    let callback = url::Url::parse(&callback_of(&h, AuthorizeOptions::new()).await).unwrap();
    let mut forged = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in callback.query_pairs().filter(|(name, _)| name != "iss") {
        forged.append_pair(&name, &value);
    }
    forged.append_pair("iss", "https://evil.example");
    let err = h.client.complete(&forged.finish()).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::IssuerMismatch);
    assert_eq!(pending_count(&h).await, 0);
    assert_no_code_exchange(&h);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_flows_are_swept_once_expired_and_keep_alive_sweeps_too() {
    let h = Harness::start().await;
    for _ in 0..5 {
        h.client.authorize(AuthorizeOptions::new()).await.unwrap();
    }
    let pending = h.client.pending().await.unwrap();
    assert_eq!(pending.len(), 5);
    assert!(pending.iter().all(|p| !p.expired));

    // Nothing is swept before the TTL.
    let swept = h.client.sweep_pending().await.unwrap();
    assert_eq!((swept.removed, swept.remaining), (0, 5));
    h.advance(DEFAULT_PENDING_TTL - Duration::from_secs(1));
    assert_eq!(h.client.sweep_pending().await.unwrap().removed, 0);

    // Past the TTL: all of them go; a flow started now stays.
    h.advance(Duration::from_secs(2));
    assert!(h.client.pending().await.unwrap().iter().all(|p| p.expired));
    h.client.authorize(AuthorizeOptions::new()).await.unwrap();
    let swept = h.client.sweep_pending().await.unwrap();
    assert_eq!((swept.removed, swept.remaining), (5, 1));
    assert_eq!(pending_count(&h).await, 1);

    // Keep-alive sweeps the rest once it expires.
    h.advance(DEFAULT_PENDING_TTL + Duration::from_secs(1));
    let report = h.manager.keep_alive().await.unwrap();
    assert_eq!(report.pending_removed, 1);
    assert_eq!(pending_count(&h).await, 0);
}
