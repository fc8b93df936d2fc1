//! Secret hygiene: with a TRACE subscriber for every target (reqwest, hyper, the sandbox and
//! us), run every flow, format every error and public value, and look for the canary that every
//! token, code and client secret in the test contains.

mod common;

use std::time::Duration;

use common::*;
use pleo_auth_core::{CredentialProvider, TenantId};
use pleo_auth_oauth::{AuthorizeOptions, Error, OAuthConfig};
use pleo_auth_sandbox::{Endpoint, Fault};

fn chain(err: &Error) -> String {
    pleo_auth_core::testing::error_chain(err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_errors_or_debug_output() {
    let captured = pleo_auth_core::testing::TraceCapture::install();

    let h = Harness::start().await;
    let mut shown: Vec<String> = Vec::new();
    let mut errors: Vec<Error> = Vec::new();

    // Connect, with a tenant; the canary is live in every token.
    let request = h
        .client
        .authorize(AuthorizeOptions::new().tenant(TenantId::new("tenant-1").unwrap()))
        .await
        .unwrap();
    shown.push(format!("{request:?}"));
    let callback = h.consent(&request.url).await;
    assert!(callback.contains(CANARY), "the code carries the canary");
    let connection = h.client.complete(&callback).await.unwrap();
    shown.push(format!("{connection:?}"));
    errors.push(h.client.complete(&callback).await.unwrap_err());
    let token = h.manager.access_token(&dk()).await.unwrap();
    assert!(token.access_token().expose_secret().contains(CANARY));
    shown.push(format!("{token:?} {:?}", token.credential()));
    shown.push(format!("{:?} {:?}", h.client, h.manager));
    shown.push(format!("{:?}", h.client.config()));
    shown.push(format!(
        "{:?}",
        OAuthConfig::builder().client_secret(pleo_auth_core::ClientSecret::new(CLIENT_SECRET))
    ));

    // Callback rejections that echo a code.
    for bad in [
        format!("code={CANARY}-x&code={CANARY}-y&state=s"),
        format!("code={CANARY}-x&error=access_denied&state=s"),
        format!("code={CANARY}-x&state={CANARY}-state"),
    ] {
        errors.push(h.client.complete(&bad).await.unwrap_err());
    }

    // Refresh, 401 rejection, transient failures, rate limit, invalid client.
    h.advance(ACCESS_TTL);
    let refreshed = h.manager.credential_for(&dk()).await.unwrap();
    shown.push(format!("{refreshed:?}"));
    h.sandbox.revoke_access_tokens(
        h.manager
            .access_token(&dk())
            .await
            .unwrap()
            .access_token()
            .expose_secret(),
    );
    h.manager.rejected(&dk(), &refreshed.id).await.unwrap();
    h.sandbox
        .inject_fault(Endpoint::Token, Fault::ServerError(503), 3);
    h.advance(ACCESS_TTL);
    errors.push(h.manager.access_token(&dk()).await.unwrap_err());
    h.advance(Duration::from_secs(60));
    h.sandbox.inject_fault(
        Endpoint::Token,
        Fault::TooManyRequests {
            retry_after_secs: 60,
        },
        1,
    );
    errors.push(h.manager.access_token(&dk()).await.unwrap_err());
    h.advance(Duration::from_secs(61));
    let (_, wrong) = h.replica_with("CANARY-wrong-secret", test_policy());
    h.advance(ACCESS_TTL);
    errors.push(wrong.access_token(&dk()).await.unwrap_err());
    h.manager.access_token(&dk()).await.unwrap();

    // Store failure while persisting, then recovery.
    h.flaky
        .fail_writes
        .store(true, std::sync::atomic::Ordering::SeqCst);
    h.advance(ACCESS_TTL);
    h.manager.access_token(&dk()).await.unwrap();
    errors.push(h.manager.flush().await.unwrap_err());
    h.flaky
        .fail_writes
        .store(false, std::sync::atomic::Ordering::SeqCst);
    h.manager.flush().await.unwrap();
    shown.push(format!("{:?}", h.manager.status(&dk()).await.unwrap()));
    shown.push(format!("{:?}", h.manager.list().await.unwrap()));
    shown.push(format!("{:?}", h.manager.keep_alive().await.unwrap()));

    // invalid_grant, then disconnect.
    let current = h.manager.access_token(&dk()).await.unwrap();
    h.sandbox
        .revoke_grant(current.access_token().expose_secret());
    h.advance(ACCESS_TTL);
    errors.push(h.manager.access_token(&dk()).await.unwrap_err());
    let core: pleo_auth_core::Error = h.manager.credential_for(&dk()).await.unwrap_err();
    shown.push(format!("{core} {core:?}"));
    shown.push(format!("{:?}", h.manager.disconnect(&dk()).await.unwrap()));
    shown.push(format!("{:?}", h.events.events()));

    for err in &errors {
        shown.push(chain(err));
    }
    assert!(errors.len() >= 8);
    for text in &shown {
        pleo_auth_core::testing::assert_no_leak("errors, events and Debug output", text, &[CANARY]);
    }
    let logs = captured.contents();
    assert!(
        logs.contains("pleo_auth_refresh"),
        "the subscriber saw our spans"
    );
    assert!(logs.len() > 10_000, "TRACE output was captured");
    pleo_auth_core::testing::assert_no_leak("the TRACE logs", &logs, &[CANARY]);
}
