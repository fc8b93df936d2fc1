//! Secret hygiene: with a TRACE subscriber for every target (reqwest, hyper, rustls included,
//! `log` records too), the client's flows never print a secret.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use pleo_auth_core::ErrorKind;
use pleo_auth_core::testing::assert_no_leak;
use pleo_auth_http::{LoopbackCallback, Target};
use pleo_auth_sandbox::{Endpoint, Fault, harness, seed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_any_log_at_trace() {
    let captured = pleo_auth_core::testing::TraceCapture::install();

    let sandbox = sandbox().await;

    // 401 -> refresh -> success with a Bearer token.
    let provider = Arc::new(OAuthProvider::connect(&sandbox, dk().into()).await);
    let client = build(&sandbox, provider.clone());
    sandbox.revoke_access_tokens(provider.access_token().await);
    client
        .get("/v1/export-jobs")
        .company(dk())
        .send()
        .await
        .unwrap();
    assert_eq!(provider.refreshes.load(Ordering::SeqCst), 1);

    // An API key: 429 retried, 403, then revoked (401).
    let key = sandbox.mint_standalone_key(seed::ACME_DK, &["users:read"], None);
    let keys = Arc::new(KeyProvider::new(env_name(&sandbox)).with_key(dk(), key.clone()));
    let api = api(Variant::Middleware, build(&sandbox, keys));
    sandbox.inject_fault(
        Endpoint::Api,
        Fault::TooManyRequests {
            retry_after_secs: 1,
        },
        1,
    );
    api.get("/v2/employees", Target::company(dk()))
        .await
        .unwrap();
    let err = api
        .get("/v1/export-jobs", Target::company(dk()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert_clean(&err);
    sandbox.revoke_api_key(&key);
    let err = api
        .get("/v2/employees", Target::company(dk()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NeedsReplacement);
    assert_clean(&err);

    // A guard refusal.
    let fixed = Arc::new(FixedProvider::new(
        env_name(&sandbox),
        key_credential("CANARY-foreign-key", dk(), env_name(&sandbox)),
    ));
    let err = build(&sandbox, fixed)
        .get("/v1/export-jobs")
        .company(se())
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongCompany);
    assert_clean(&err);

    // A loopback callback carrying a code.
    let callback = LoopbackCallback::bind("http://127.0.0.1/callback")
        .await
        .unwrap();
    let mut uri = callback.redirect_uri().clone();
    let waiting = tokio::spawn(callback.wait(Duration::from_secs(10)));
    uri.query_pairs_mut()
        .append_pair("code", "CANARY-code")
        .append_pair("state", "s");
    harness::http().get(uri).send().await.unwrap();
    waiting.await.unwrap().unwrap();

    let logs = captured.contents();
    assert!(
        logs.contains("pleo_request"),
        "the client's spans were captured"
    );
    assert!(logs.contains("the API rejected the credential"));
    assert!(
        logs.contains("hyper") || logs.contains("reqwest"),
        "HTTP internals were captured"
    );
    assert_no_leak("the TRACE logs", &logs, &[CANARY]);
    assert!(
        !logs.contains("company_id="),
        "a query string reached the logs"
    );
}
