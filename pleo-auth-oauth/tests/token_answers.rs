//! Property test: whatever shape a token answer takes, a refresh token the server sent is never
//! lost. The sandbox (strict rotation: presenting a rotated refresh token revokes the grant)
//! rotates the grant and then answers with a randomly mangled body: foreign scope names, extra
//! members, `expires_in` as a string, huge, negative, fractional or absent, no access token, a
//! token type that is not bearer, another content type or 2xx status. Over a connect and a run
//! of refreshes, no rotated refresh token is ever presented again: 0 reuses, 0 revoked grants,
//! and at the end the grant refreshes normally.
//!
//! Answers the client cannot read at all (not JSON) cannot carry a refresh token to keep; they
//! are a separate case: a typed error, reported once, no panic, no loop.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use pleo_auth_oauth::{AuthorizeOptions, ErrorKind};
use pleo_auth_sandbox::{IssuedTokenResponse, RevocationCause, TokenResponseReplacement};
use proptest::prelude::*;
use serde_json::json;

/// One way to mangle a token answer that still carries the refresh token.
#[derive(Debug, Clone)]
enum Mangle {
    Keep,
    ForeignScopes(Vec<String>),
    ScopeArray,
    ExtraMembers,
    ExpiresString,
    ExpiresOmitted,
    ExpiresHuge,
    ExpiresNegative,
    ExpiresFraction,
    ExpiresGarbage,
    NoAccessToken,
    EmptyAccessToken,
    TokenTypeMac,
    TokenTypeUpper,
    TextPlain,
    Status201,
}

fn mangle() -> impl Strategy<Value = Mangle> {
    prop_oneof![
        Just(Mangle::Keep),
        prop::collection::vec(
            "[a-z_]{1,12}|https://[a-z]{1,8}\\.example/[a-z.]{1,8}",
            1..4
        )
        .prop_map(Mangle::ForeignScopes),
        Just(Mangle::ScopeArray),
        Just(Mangle::ExtraMembers),
        Just(Mangle::ExpiresString),
        Just(Mangle::ExpiresOmitted),
        Just(Mangle::ExpiresHuge),
        Just(Mangle::ExpiresNegative),
        Just(Mangle::ExpiresFraction),
        Just(Mangle::ExpiresGarbage),
        Just(Mangle::NoAccessToken),
        Just(Mangle::EmptyAccessToken),
        Just(Mangle::TokenTypeMac),
        Just(Mangle::TokenTypeUpper),
        Just(Mangle::TextPlain),
        Just(Mangle::Status201),
    ]
}

fn apply(mangle: &Mangle, issued: IssuedTokenResponse) -> TokenResponseReplacement {
    let mut body = issued.body;
    let fields = body.as_object_mut().expect("the sandbox answers an object");
    let mut status = 200;
    let mut content_type = "application/json";
    match mangle {
        Mangle::Keep => {}
        Mangle::ForeignScopes(names) => {
            let scope = fields["scope"].as_str().unwrap_or_default().to_owned();
            fields.insert(
                "scope".into(),
                json!(format!("{scope} {}", names.join(" "))),
            );
        }
        Mangle::ScopeArray => {
            let scope = fields["scope"].as_str().unwrap_or_default().to_owned();
            let list: Vec<&str> = scope.split(' ').collect();
            fields.insert("scope".into(), json!(list));
        }
        Mangle::ExtraMembers => {
            fields.insert("id_token".into(), json!("a.b.c"));
            fields.insert("x-nested".into(), json!({"a": [1, {"b": null}]}));
        }
        Mangle::ExpiresString => {
            let n = fields["expires_in"].as_u64().unwrap_or(900);
            fields.insert("expires_in".into(), json!(n.to_string()));
        }
        Mangle::ExpiresOmitted => {
            fields.remove("expires_in");
        }
        Mangle::ExpiresHuge => {
            fields.insert("expires_in".into(), json!(u64::MAX));
        }
        Mangle::ExpiresNegative => {
            fields.insert("expires_in".into(), json!(-30));
        }
        Mangle::ExpiresFraction => {
            fields.insert("expires_in".into(), json!(899.75));
        }
        Mangle::ExpiresGarbage => {
            fields.insert("expires_in".into(), json!({"seconds": 900}));
        }
        Mangle::NoAccessToken => {
            fields.remove("access_token");
        }
        Mangle::EmptyAccessToken => {
            fields.insert("access_token".into(), json!(""));
        }
        Mangle::TokenTypeMac => {
            fields.insert("token_type".into(), json!("mac"));
        }
        Mangle::TokenTypeUpper => {
            fields.insert("token_type".into(), json!("BEARER"));
        }
        Mangle::TextPlain => content_type = "text/plain",
        Mangle::Status201 => status = 201,
    }
    TokenResponseReplacement::new(status, Some(content_type), body.to_string())
}

/// Mangles answers in order; answers beyond the plan are left as they are.
fn install_plan(h: &Harness, plan: Vec<Mangle>) {
    let queue = Arc::new(Mutex::new(VecDeque::from(plan)));
    h.sandbox
        .set_token_response_rewrite(Some(Arc::new(move |issued: IssuedTokenResponse| {
            let next = queue.lock().unwrap().pop_front().unwrap_or(Mangle::Keep);
            apply(&next, issued)
        })));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn check(plan: Vec<Mangle>) -> Result<(), TestCaseError> {
    let h = Harness::start().await;
    let steps = plan.len();
    install_plan(&h, plan);
    let connected = match h.client.authorize(AuthorizeOptions::new()).await {
        Ok(request) => {
            let callback = h.consent(&request.url).await;
            h.client.complete(&callback).await
        }
        Err(e) => return Err(TestCaseError::fail(format!("authorize: {e:?}"))),
    };
    if let Err(err) = connected {
        // Only answers without a usable access token, one after another, keep a connection
        // from learning its company: it fails typed, and what it got is revoked on purpose
        // (its installation deleted), never by a reused refresh token.
        prop_assert_eq!(err.kind(), &ErrorKind::UnexpectedResponse, "{:?}", err);
        let stats = h.sandbox.stats();
        prop_assert_eq!(
            stats.refresh_token_reuses,
            0,
            "no refresh token presented twice"
        );
        prop_assert_eq!(stats.revocations(RevocationCause::RefreshTokenReuse), 0);
        return Ok(());
    }
    // Each later step: the token expires (and any cooldown passes), the next call refreshes.
    for _ in 0..steps {
        h.advance(Duration::from_secs(25 * 60 * 60));
        let _ = h.manager.access_token(&dk()).await;
    }
    h.sandbox.set_token_response_rewrite(None);
    h.advance(Duration::from_secs(25 * 60 * 60));
    let last = h.manager.access_token(&dk()).await;
    prop_assert!(last.is_ok(), "the grant still refreshes: {last:?}");
    let token = last.unwrap();
    prop_assert_eq!(h.api_status(&token.credential().header).await, 200);
    let stats = h.sandbox.stats();
    prop_assert_eq!(
        stats.refresh_token_reuses,
        0,
        "no refresh token presented twice"
    );
    prop_assert_eq!(stats.total_revocations(), 0, "no grant revoked");
    prop_assert!(stats.refresh_token_uses.values().all(|uses| *uses == 1));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn token_answers_never_lose_a_rotated_refresh_token(
        plan in prop::collection::vec(mangle(), 1..8)
    ) {
        runtime().block_on(check(plan))?;
    }
}

/// An answer that is not JSON cannot give up a refresh token: the refresh fails with a typed
/// error, nothing panics, and the failure is not retried in a loop (the cooldown holds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_answer_is_a_typed_error_without_a_retry_loop() {
    let h = Harness::start().await;
    h.connect(AuthorizeOptions::new()).await;
    h.sandbox
        .set_token_response_rewrite(Some(Arc::new(|_issued: IssuedTokenResponse| {
            TokenResponseReplacement::new(200, Some("application/json"), "<html>oops</html>")
        })));
    h.advance(Duration::from_secs(15 * 60));
    let err = h.manager.access_token(&dk()).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::UnexpectedResponse, "{err:?}");
    let requests = h.sandbox.stats().token_requests_for("refresh_token");
    for _ in 0..20 {
        assert!(h.manager.access_token(&dk()).await.is_err());
    }
    assert_eq!(
        h.sandbox.stats().token_requests_for("refresh_token"),
        requests,
        "cooling down, not retrying"
    );
}
