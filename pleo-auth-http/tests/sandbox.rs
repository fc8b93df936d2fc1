//! `PleoClient` and `PleoAuthMiddleware` against the in-process sandbox: guards, 401, 403,
//! retries and redirects, each for both variants.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use pleo_auth_core::testing::environment_at;
use pleo_auth_core::{
    ClientId, CredentialKind, EnvironmentName, ErrorKind, LinkRequest, MemoryStore, Scope, Subject,
    SystemClock, TenantId, TenantLinks,
};
use pleo_auth_http::{PleoClient, RequestOptions, RetryPolicy, Target};
use pleo_auth_sandbox::{AuthMethod, Endpoint, Fault, harness, seed};
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn company_guard_with_api_keys() {
    for variant in VARIANTS {
        let sandbox = sandbox().await;
        let key = sandbox.mint_integrated_key(seed::DEMO_CLIENT_ID, seed::ACME_DK);
        let provider = Arc::new(KeyProvider::new(env_name(&sandbox)).with_key(dk(), key.clone()));
        let api = api(variant, build(&sandbox, provider));

        // The company's own credential, and company_id added.
        let jobs = api
            .get("/v1/export-jobs", Target::company(dk()))
            .await
            .unwrap();
        assert!(jobs["data"].is_array(), "{variant:?}");
        let log = sandbox.request_log();
        assert_eq!(log.len(), 1);
        assert_eq!(
            log[0].company_id.as_deref(),
            Some(seed::ACME_DK.to_string().as_str())
        );
        assert_eq!(log[0].auth_method, Some(AuthMethod::ApiKey));

        // No credential for another company: nothing is sent.
        let err = api
            .get("/v1/export-jobs", Target::company(se()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{variant:?}");
        assert_clean(&err);
        assert_eq!(api_requests(&sandbox), 1);

        // A provider that hands out company A's key for company B is refused before sending.
        let fixed = Arc::new(FixedProvider::new(
            env_name(&sandbox),
            key_credential(&key, dk(), env_name(&sandbox)),
        ));
        let api_b = common::api(variant, build(&sandbox, fixed.clone()));
        let err = api_b
            .get("/v1/export-jobs", Target::company(se()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WrongCompany, "{variant:?}");
        assert_clean(&err);
        assert_eq!(
            api_requests(&sandbox),
            1,
            "{variant:?}: nothing may be sent"
        );

        // A company_id in the query that names another company is refused.
        let err = match &api {
            Api::Client(client) => client
                .get("/v1/export-jobs")
                .company(dk())
                .query(&[("company_id", se().to_string())])
                .send()
                .await
                .unwrap_err(),
            Api::Middleware(boxed) => {
                let (stack, env) = &**boxed;
                let mut url = env.api_url("/v1/export-jobs").unwrap();
                url.query_pairs_mut()
                    .append_pair("company_id", &se().to_string());
                pleo_auth_http::Error::from(
                    stack
                        .get(url)
                        .with_extension(Target::company(dk()))
                        .send()
                        .await
                        .unwrap_err(),
                )
            }
        };
        assert_eq!(err.kind(), ErrorKind::WrongCompany, "{variant:?}");
        assert_clean(&err);

        // A request that names nobody is refused.
        let err = api
            .get("/v1/export-jobs", Target::default())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{variant:?}");
        assert_eq!(api_requests(&sandbox), 1);
        assert_eq!(fixed.rejections.load(Ordering::SeqCst), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn company_guard_with_oauth_tokens() {
    for variant in VARIANTS {
        let sandbox = sandbox().await;
        let provider = Arc::new(OAuthProvider::connect(&sandbox, dk().into()).await);
        let api = api(variant, build(&sandbox, provider.clone()));
        api.get("/v1/vendors", Target::company(dk())).await.unwrap();
        let log = sandbox.request_log();
        assert_eq!(log[0].auth_method, Some(AuthMethod::OAuth2));
        assert_eq!(
            log[0].subject_urn.as_deref(),
            Some(Subject::from(dk()).to_string().as_str())
        );

        let err = api
            .get("/v1/vendors", Target::company(globex()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{variant:?}");

        // A Bearer token of company A offered for company B.
        let token = provider.access_token().await;
        let mut credential = key_credential("unused", dk(), env_name(&sandbox));
        credential.header =
            pleo_auth_core::AuthorizationHeader::bearer(&pleo_auth_core::AccessToken::new(token));
        credential.kind = CredentialKind::OAuth;
        let fixed = Arc::new(FixedProvider::new(env_name(&sandbox), credential));
        let api_b = common::api(variant, build(&sandbox, fixed));
        let err = api_b
            .get("/v1/vendors", Target::company(globex()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WrongCompany, "{variant:?}");
        assert_clean(&err);
        assert_eq!(api_requests(&sandbox), 1, "{variant:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn organisation_key_across_two_companies() {
    for variant in VARIANTS {
        let sandbox = sandbox().await;
        let key = sandbox.mint_standalone_key(seed::ACME_ORG, &["export-jobs:read"], None);
        let provider = Arc::new(KeyProvider::new(env_name(&sandbox)).with_key(org(), key.clone()));
        let api = api(variant, build(&sandbox, provider.clone()));

        for company in [dk(), se()] {
            api.get(
                "/v1/export-jobs",
                Target::organisation(org()).with_company(company),
            )
            .await
            .unwrap();
        }
        let log = sandbox.request_log();
        let org_urn = Subject::from(org()).to_string();
        assert_eq!(log.len(), 2);
        assert_eq!(
            log[0].company_id.as_deref(),
            Some(seed::ACME_DK.to_string().as_str())
        );
        assert_eq!(
            log[1].company_id.as_deref(),
            Some(seed::ACME_SE.to_string().as_str())
        );
        assert!(
            log.iter()
                .all(|r| r.subject_urn.as_deref() == Some(org_urn.as_str()) && r.status == 200)
        );

        // Without an explicit company, an organisation credential is not used.
        let err = api
            .get("/v1/export-jobs", Target::organisation(org()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{variant:?}");
        // A company request does not borrow the organisation's credential.
        let err = api
            .get("/v1/export-jobs", Target::company(dk()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{variant:?}");
        assert_eq!(api_requests(&sandbox), 2, "{variant:?}: nothing sent");

        // A company outside the organisation: Pleo says 403, which is not a refresh.
        let err = api
            .get(
                "/v1/export-jobs",
                Target::organisation(org()).with_company(globex()),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{variant:?}");
        assert_eq!(err.status(), Some(403));
        assert!(
            err.server_message().unwrap().contains("does not cover"),
            "{err:?}"
        );
        assert_eq!(provider.rejections.load(Ordering::SeqCst), 0);
        assert_clean(&err);

        // An organisation credential offered for a company request is refused.
        let fixed = Arc::new(FixedProvider::new(
            env_name(&sandbox),
            key_credential(&key, org(), env_name(&sandbox)),
        ));
        let api_b = common::api(variant, build(&sandbox, fixed));
        let err = api_b
            .get("/v1/export-jobs", Target::company(dk()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WrongCompany, "{variant:?}");
        assert_eq!(api_requests(&sandbox), 3, "{variant:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_guard() {
    let sandbox = sandbox().await;
    let key = sandbox.mint_integrated_key(seed::DEMO_CLIENT_ID, seed::ACME_DK);
    let staging = EnvironmentName::new("staging").unwrap();

    // A provider of another environment cannot be attached at all.
    let foreign = Arc::new(KeyProvider::new(staging.clone()).with_key(dk(), key.clone()));
    let err = PleoClient::builder(environment(&sandbox), foreign.clone())
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongEnvironment);
    let err = pleo_auth_http::PleoAuthMiddleware::new(environment(&sandbox), foreign).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongEnvironment);

    let trap = Trap::start().await;
    for variant in VARIANTS {
        // A provider that claims this environment but hands out a staging credential.
        let fixed = Arc::new(FixedProvider::new(
            env_name(&sandbox),
            key_credential(&key, dk(), staging.clone()),
        ));
        let api = api(variant, build(&sandbox, fixed));
        let err = api
            .get("/v1/export-jobs", Target::company(dk()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WrongEnvironment, "{variant:?}");
        assert_clean(&err);

        // A URL on another host never gets the credential.
        let good = Arc::new(KeyProvider::new(env_name(&sandbox)).with_key(dk(), key.clone()));
        let client = build(&sandbox, good);
        let err = match common::api(variant, client.clone()) {
            Api::Client(client) => client
                .get("//127.0.0.1/v1/export-jobs")
                .company(dk())
                .send()
                .await
                .unwrap_err(),
            Api::Middleware(boxed) => pleo_auth_http::Error::from(
                boxed
                    .0
                    .get(format!("http://{}/v1/export-jobs", trap.addr))
                    .with_extension(Target::company(dk()))
                    .send()
                    .await
                    .unwrap_err(),
            ),
        };
        let expected = match variant {
            Variant::Client => ErrorKind::InvalidInput,
            Variant::Middleware => ErrorKind::WrongEnvironment,
        };
        assert_eq!(err.kind(), expected, "{variant:?}");
        assert_clean(&err);
    }
    assert_eq!(api_requests(&sandbox), 0);
    assert!(trap.received_nothing());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_refreshes_once_then_succeeds() {
    for variant in VARIANTS {
        let sandbox = sandbox().await;
        let provider = Arc::new(OAuthProvider::connect(&sandbox, dk().into()).await);
        let api = api(variant, build(&sandbox, provider.clone()));
        api.get("/v1/export-jobs", Target::company(dk()))
            .await
            .unwrap();

        assert_eq!(
            sandbox.revoke_access_tokens(provider.access_token().await),
            1
        );
        let jobs = api
            .get("/v1/export-jobs", Target::company(dk()))
            .await
            .unwrap();
        assert!(jobs["data"].is_array());
        assert_eq!(provider.refreshes.load(Ordering::SeqCst), 1, "{variant:?}");
        assert_eq!(sandbox.stats().refreshes, 1);
        let statuses: Vec<u16> = sandbox.request_log().iter().map(|r| r.status).collect();
        assert_eq!(statuses, vec![200, 401, 200], "{variant:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_twice_is_an_error_not_a_loop() {
    for variant in VARIANTS {
        let sandbox = sandbox().await;
        // A provider that always says "retry" but never has a valid credential.
        let mut credential = key_credential("unused", dk(), env_name(&sandbox));
        credential.header = pleo_auth_core::AuthorizationHeader::bearer(
            &pleo_auth_core::AccessToken::new("CANARY-never-valid"),
        );
        let stubborn = Arc::new(FixedProvider::new(env_name(&sandbox), credential));
        let api = api(variant, build(&sandbox, stubborn.clone()));
        let err = api
            .get("/v1/export-jobs", Target::company(dk()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{variant:?}");
        assert_eq!(err.status(), Some(401));
        assert!(!err.is_retryable());
        assert_clean(&err);
        let statuses: Vec<u16> = sandbox.request_log().iter().map(|r| r.status).collect();
        assert_eq!(statuses, vec![401, 401], "{variant:?}: exactly one retry");
        assert_eq!(
            stubborn.rejections.load(Ordering::SeqCst),
            2,
            "both rejections reported"
        );

        // A revoked API key: the provider marks it NeedsReplacement; no retry.
        let key = sandbox.mint_standalone_key(seed::ACME_DK, &["export-jobs:read"], None);
        assert!(sandbox.revoke_api_key(&key));
        let keys = Arc::new(KeyProvider::new(env_name(&sandbox)).with_key(dk(), key));
        let api = common::api(variant, build(&sandbox, keys.clone()));
        let err = api
            .get("/v1/export-jobs", Target::company(dk()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NeedsReplacement, "{variant:?}");
        assert_eq!(err.status(), Some(401));
        assert!(err.server_message().unwrap().contains("revoked"), "{err:?}");
        assert_clean(&err);
        assert_eq!(api_requests(&sandbox), 3);
        // The next request fails at the provider, before sending.
        let err = api
            .get("/v1/export-jobs", Target::company(dk()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NeedsReplacement);
        assert_eq!(api_requests(&sandbox), 3);
        assert_eq!(keys.rejections.load(Ordering::SeqCst), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_concurrent_unauthorized_requests_cause_one_refresh() {
    for variant in VARIANTS {
        let sandbox = sandbox().await;
        let provider = Arc::new(OAuthProvider::connect(&sandbox, dk().into()).await);
        let api = api(variant, build(&sandbox, provider.clone()));
        api.get("/v1/export-jobs", Target::company(dk()))
            .await
            .unwrap();
        sandbox.clear_request_log();
        sandbox.revoke_access_tokens(provider.access_token().await);

        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..300 {
            let api = api.clone();
            tasks.spawn(async move { api.get("/v1/export-jobs", Target::company(dk())).await });
        }
        let mut ok = 0;
        while let Some(result) = tasks.join_next().await {
            result.unwrap().unwrap();
            ok += 1;
        }
        assert_eq!(ok, 300);
        assert_eq!(provider.refreshes.load(Ordering::SeqCst), 1, "{variant:?}");
        assert_eq!(sandbox.stats().refreshes, 1, "{variant:?}");
        assert_eq!(sandbox.stats().total_revocations(), 0);
        let log = sandbox.request_log();
        let unauthorized = log.iter().filter(|r| r.status == 401).count();
        let succeeded = log.iter().filter(|r| r.status == 200).count();
        assert_eq!(succeeded, 300, "{variant:?}");
        assert!(unauthorized <= 300, "each request retried at most once");
        assert_eq!(log.len(), succeeded + unauthorized);
        assert!(unauthorized >= 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_is_permission_denied_without_refresh() {
    for variant in VARIANTS {
        let sandbox = sandbox().await;
        // An API key without export-jobs:read; the caller names the scope the endpoint needs.
        let granted = sandbox.mint_standalone_key(seed::ACME_DK, &["users:read"], None);
        let keys = Arc::new(KeyProvider::new(env_name(&sandbox)).with_key(dk(), granted));
        let api = api(variant, build(&sandbox, keys.clone()));
        let options = RequestOptions::new().required_scope(Scope::new("export-jobs:read").unwrap());
        let err = api
            .send(
                Method::GET,
                "/v1/export-jobs",
                Target::company(dk()),
                options,
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{variant:?}");
        assert_eq!(err.status(), Some(403));
        assert!(!err.is_retryable());
        assert_eq!(err.required_scopes().to_string(), "export-jobs:read");
        assert!(
            err.server_message().unwrap().contains("export-jobs:read"),
            "{err:?}"
        );
        assert_clean(&err);
        assert_eq!(
            keys.rejections.load(Ordering::SeqCst),
            0,
            "403 is never a refresh"
        );
        assert_eq!(api_requests(&sandbox), 1, "403 is not retried");
        // The key still works where it has the scope.
        api.get("/v2/employees", Target::company(dk()))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_bearer_reports_the_challenged_scope() {
    for variant in VARIANTS {
        let sandbox = sandbox().await;
        // A grant without users:read (auto-approved with a narrower scope).
        sandbox.set_auto_approve(Some(seed::ACME_DK)).unwrap();
        let tokens =
            harness::tokens_for(&harness::http(), &sandbox, seed::ACME_DK, "vendors:read").await;
        let access = harness::json_str(&tokens, "access_token").to_owned();
        let mut credential = key_credential("unused", dk(), env_name(&sandbox));
        credential.header =
            pleo_auth_core::AuthorizationHeader::bearer(&pleo_auth_core::AccessToken::new(access));
        let fixed = Arc::new(FixedProvider::new(env_name(&sandbox), credential));
        let api = api(variant, build(&sandbox, fixed.clone()));

        let err = api
            .get("/v2/employees", Target::company(dk()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{variant:?}");
        assert_eq!(err.required_scopes().to_string(), "users:read");
        assert_eq!(
            fixed.rejections.load(Ordering::SeqCst),
            0,
            "403 is never a refresh"
        );
        assert_eq!(api_requests(&sandbox), 1, "403 is not retried");
        assert_clean(&err);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_honours_retry_after() {
    for variant in VARIANTS {
        let sandbox = sandbox().await;
        let key = sandbox.mint_integrated_key(seed::DEMO_CLIENT_ID, seed::ACME_DK);
        let provider = Arc::new(KeyProvider::new(env_name(&sandbox)).with_key(dk(), key));
        let api = api(variant, build(&sandbox, provider));
        let hits = |s: &pleo_auth_sandbox::SandboxHandle| s.stats().hits(Endpoint::Api);

        sandbox.inject_fault(
            Endpoint::Api,
            Fault::TooManyRequests {
                retry_after_secs: 2,
            },
            1,
        );
        let started = Instant::now();
        let task = {
            let api = api.clone();
            tokio::spawn(async move { api.get("/v1/export-jobs", Target::company(dk())).await })
        };
        // Once the first attempt is counted, its 429 follows, and no retry may come for 2 s.
        while hits(&sandbox) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(
            hits(&sandbox),
            1,
            "{variant:?}: no retry before Retry-After"
        );
        task.await.unwrap().unwrap();
        assert!(started.elapsed() >= Duration::from_secs(2), "{variant:?}");
        assert_eq!(hits(&sandbox), 2);

        // A Retry-After beyond the policy's cap ends the call at once with the server's answer.
        sandbox.inject_fault(
            Endpoint::Api,
            Fault::TooManyRequests {
                retry_after_secs: 120,
            },
            1,
        );
        let started = Instant::now();
        let err = api
            .get("/v1/export-jobs", Target::company(dk()))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(err.kind(), ErrorKind::RateLimited, "{variant:?}");
        assert!(err.is_retryable());
        assert_eq!(err.status(), Some(429));
        assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
        assert_eq!(hits(&sandbox), 3);
        assert_clean(&err);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_bounded_and_post_retries_only_on_opt_in() {
    for variant in VARIANTS {
        let sandbox = sandbox().await;
        let key = sandbox.mint_integrated_key(seed::DEMO_CLIENT_ID, seed::ACME_DK);
        let provider = Arc::new(KeyProvider::new(env_name(&sandbox)).with_key(dk(), key));
        let api = api(variant, build(&sandbox, provider));
        let faults = |s: &pleo_auth_sandbox::SandboxHandle| {
            s.stats()
                .faults_injected
                .get(&Endpoint::Api)
                .copied()
                .unwrap_or(0)
        };

        // GET: 503 then a dropped connection, then success.
        sandbox.inject_fault(Endpoint::Api, Fault::ServerError(503), 1);
        sandbox.inject_fault(Endpoint::Api, Fault::DropConnection, 1);
        api.get("/v1/export-jobs", Target::company(dk()))
            .await
            .unwrap();
        assert_eq!(faults(&sandbox), 2, "{variant:?}");

        // More failures than attempts: the last answer is the error.
        sandbox.inject_fault(Endpoint::Api, Fault::ServerError(502), 5);
        let err = api
            .get("/v1/export-jobs", Target::company(dk()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{variant:?}");
        assert_eq!(err.status(), Some(502));
        assert_eq!(faults(&sandbox), 5, "three attempts");
        sandbox.clear_faults();

        // POST is not retried unless the caller opts in.
        let body = json!({});
        sandbox.inject_fault(Endpoint::Api, Fault::ServerError(503), 1);
        let err = api
            .send(
                Method::POST,
                "/v1/export-jobs",
                Target::company(dk()),
                RequestOptions::new(),
                Some(body.clone()),
            )
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(503), "{variant:?}");
        assert_eq!(faults(&sandbox), 6);
        sandbox.inject_fault(Endpoint::Api, Fault::ServerError(503), 1);
        let created = api
            .send(
                Method::POST,
                "/v1/export-jobs",
                Target::company(dk()),
                RequestOptions::new().retry_non_idempotent(),
                Some(body),
            )
            .await
            .unwrap();
        assert!(created["data"]["id"].is_string());
        assert_eq!(faults(&sandbox), 7);
        let posts = sandbox
            .request_log()
            .iter()
            .filter(|r| r.method == "POST")
            .count();
        assert_eq!(posts, 1, "{variant:?}: one POST reached the handler");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_retries_with_the_none_policy() {
    let sandbox = sandbox().await;
    let key = sandbox.mint_integrated_key(seed::DEMO_CLIENT_ID, seed::ACME_DK);
    let provider = Arc::new(KeyProvider::new(env_name(&sandbox)).with_key(dk(), key));
    let middleware = PleoClient::builder(environment(&sandbox), provider)
        .retry_policy(RetryPolicy::none())
        .build_middleware()
        .unwrap();
    let stack = reqwest_middleware::ClientBuilder::new(
        pleo_auth_http::transport::http_client(&Default::default()).unwrap(),
    )
    .with(middleware)
    .build();
    sandbox.inject_fault(Endpoint::Api, Fault::ServerError(503), 1);
    let response = stack
        .get(environment(&sandbox).api_url("/v1/export-jobs").unwrap())
        .with_extension(Target::company(dk()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        503,
        "the answer is passed to outer layers"
    );
    let err = pleo_auth_http::error_for_status(response)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(
        sandbox.stats().faults_injected.get(&Endpoint::Api),
        Some(&1)
    );

    // A connection failure reaches outer layers as the transport error it is, without its URL.
    let (addr, connections) = slammer().await;
    let base = format!("http://{addr}/");
    let env = environment_at(sandbox.environment_name(), &base);
    let key = sandbox.mint_integrated_key(seed::DEMO_CLIENT_ID, seed::ACME_DK);
    let provider = Arc::new(KeyProvider::new(env_name(&sandbox)).with_key(dk(), key));
    let middleware = PleoClient::builder(env.clone(), provider)
        .retry_policy(RetryPolicy::none())
        .build_middleware()
        .unwrap();
    let stack = reqwest_middleware::ClientBuilder::new(
        pleo_auth_http::transport::http_client(&Default::default()).unwrap(),
    )
    .with(middleware)
    .build();
    let err = stack
        .get(env.api_url("/v1/export-jobs").unwrap())
        .with_extension(Target::company(dk()))
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(err, reqwest_middleware::Error::Reqwest(_)),
        "{err:?}"
    );
    assert!(err.url().is_none());
    assert!(!format!("{err} {err:?}").contains("company_id"));
    assert!(!format!("{err:?}").contains(CANARY));
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    assert_eq!(
        pleo_auth_http::Error::from(err).kind(),
        ErrorKind::Unavailable
    );
}

/// An API host that answers every request with a redirect to `to`.
async fn redirector(to: std::net::SocketAddr, status: u16) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let _ = stream.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 {status} Moved\r\nlocation: http://{to}/steal\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_never_followed() {
    let sandbox = sandbox().await;
    let key = sandbox.mint_integrated_key(seed::DEMO_CLIENT_ID, seed::ACME_DK);
    let trap = Trap::start().await;
    for (status, method) in [(302, Method::GET), (307, Method::POST), (308, Method::PUT)] {
        let host = redirector(trap.addr, status).await;
        let base = format!("http://{host}/");
        let env = environment_at(sandbox.environment_name(), &base);
        for variant in VARIANTS {
            let provider =
                Arc::new(KeyProvider::new(env_name(&sandbox)).with_key(dk(), key.clone()));
            let client = PleoClient::builder(env.clone(), provider).build().unwrap();
            let api = api(variant, client);
            let err = api
                .send(
                    method.clone(),
                    "/v1/export-jobs",
                    Target::company(dk()),
                    RequestOptions::new(),
                    Some(json!({"secret": "CANARY-body"})),
                )
                .await
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unexpected, "{variant:?} {status}");
            assert_eq!(err.status(), Some(status));
            assert_clean(&err);
        }
    }
    assert!(
        trap.received_nothing(),
        "the second listener received nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middleware_refuses_a_client_that_follows_redirects() {
    let sandbox = sandbox().await;
    let key = sandbox.mint_integrated_key(seed::DEMO_CLIENT_ID, seed::ACME_DK);
    let trap_target = redirector_target().await;
    let host = redirector(trap_target, 302).await;
    let base = format!("http://{host}/");
    let env = environment_at(sandbox.environment_name(), &base);
    let provider = Arc::new(KeyProvider::new(env_name(&sandbox)).with_key(dk(), key));
    let middleware = pleo_auth_http::PleoAuthMiddleware::new(env.clone(), provider).unwrap();
    // A client with reqwest's default policy (it follows redirects): the response is refused.
    let stack = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(middleware)
        .build();
    let err = stack
        .get(env.api_url("/v1/export-jobs").unwrap())
        .with_extension(Target::company(dk()))
        .send()
        .await
        .unwrap_err();
    let err = pleo_auth_http::Error::from(err);
    assert_eq!(err.kind(), ErrorKind::Config);
    assert_clean(&err);
}

/// A plain HTTP server that records each request head and answers 200 `{}`.
async fn capture_server() -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = vec![0u8; 16 * 1024];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                .await;
        }
    });
    (addr, heads)
}

/// A plain HTTP server that answers 200 to anything (the far end of a followed redirect).
async fn redirector_target() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = vec![0u8; 16 * 1024];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                .await;
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_resolve_through_links() {
    for variant in VARIANTS {
        let sandbox = sandbox().await;
        let links = TenantLinks::new(Arc::new(MemoryStore::new()), Arc::new(SystemClock));
        let link = |tenant: &str, subject: Subject| LinkRequest {
            environment: env_name(&sandbox),
            tenant: TenantId::new(tenant).unwrap(),
            subject,
            credential_kind: CredentialKind::StandaloneApiKey,
            client_id: ClientId::new("integration").unwrap(),
            relink: false,
        };
        links.link(&link("acme-gmbh", dk().into())).await.unwrap();
        links.link(&link("acme-group", org().into())).await.unwrap();

        let dk_key = sandbox.mint_standalone_key(seed::ACME_DK, &["export-jobs:read"], None);
        let org_key = sandbox.mint_standalone_key(seed::ACME_ORG, &["export-jobs:read"], None);
        let provider = Arc::new(
            KeyProvider::new(env_name(&sandbox))
                .with_key(dk(), dk_key)
                .with_key(org(), org_key),
        );
        let client = PleoClient::builder(environment(&sandbox), provider.clone())
            .tenant_links(links)
            .build()
            .unwrap();
        let api = api(variant, client);
        let tenant = |t: &str| Target::tenant(TenantId::new(t).unwrap());

        api.get("/v1/export-jobs", tenant("acme-gmbh"))
            .await
            .unwrap();
        api.get("/v1/export-jobs", tenant("acme-group").with_company(se()))
            .await
            .unwrap();
        let log = sandbox.request_log();
        assert_eq!(
            log[0].company_id.as_deref(),
            Some(seed::ACME_DK.to_string().as_str())
        );
        assert_eq!(
            log[0].subject_urn.as_deref(),
            Some(Subject::from(dk()).to_string().as_str())
        );
        assert_eq!(
            log[1].company_id.as_deref(),
            Some(seed::ACME_SE.to_string().as_str())
        );
        assert_eq!(
            log[1].subject_urn.as_deref(),
            Some(Subject::from(org()).to_string().as_str())
        );

        for (target, kind) in [
            (tenant("unknown"), ErrorKind::NotFound),
            (
                tenant("acme-gmbh").with_company(se()),
                ErrorKind::WrongCompany,
            ),
            (tenant("acme-group"), ErrorKind::InvalidInput),
            (
                tenant("acme-gmbh").with_organisation(org()),
                ErrorKind::InvalidInput,
            ),
        ] {
            let err = api.get("/v1/export-jobs", target).await.unwrap_err();
            assert_eq!(err.kind(), kind, "{variant:?}");
            assert_clean(&err);
        }
        assert_eq!(
            api_requests(&sandbox),
            2,
            "{variant:?}: nothing else was sent"
        );
    }

    // The plain client's `.tenant(..)`, and a client without tenant links.
    let sandbox = sandbox().await;
    let provider = Arc::new(KeyProvider::new(env_name(&sandbox)));
    let client = build(&sandbox, provider);
    let err = client
        .get("/v1/export-jobs")
        .tenant("acme-gmbh")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    let err = client
        .get("/v1/export-jobs")
        .tenant("bad\ntenant")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(api_requests(&sandbox), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_request_builder_details() {
    let sandbox = sandbox().await;
    let key = sandbox.mint_integrated_key(seed::DEMO_CLIENT_ID, seed::ACME_DK);
    let provider = Arc::new(KeyProvider::new(env_name(&sandbox)).with_key(dk(), key));
    let client = build(&sandbox, provider);

    // A caller-set Authorization header is refused.
    let err = client
        .get("/v1/export-jobs")
        .company(dk())
        .header(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_static("Bearer CANARY-mine"),
        )
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_clean(&err);

    // A 404 carries the status and the server's message.
    let err = client
        .get("/v1/nothing-here")
        .company(dk())
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert_eq!(err.kind(), ErrorKind::NotFound);

    // `.json_body(..)`, `.json::<T>()` and the response accessors.
    let created: serde_json::Value = client
        .post("/v1/export-jobs")
        .company(dk())
        .json_body(&json!({}))
        .json()
        .await
        .unwrap();
    assert!(created["data"]["id"].is_string());
    let response = client
        .get("/v1/vendors")
        .company(dk())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(format!("{response:?}").contains("/v1/vendors"));
    assert!(!format!("{response:?}").contains("company_id"));
    let vendors: serde_json::Value = response.json().await.unwrap();
    assert_eq!(vendors["data"].as_array().unwrap().len(), 2);

    // What goes on the wire: the user agent names the application, the library and its
    // version; company_id is added; the credential is in the Authorization header.
    let (addr, heads) = capture_server().await;
    let base = format!("http://{addr}/");
    let env = environment_at(sandbox.environment_name(), &base);
    let provider = Arc::new(KeyProvider::new(env_name(&sandbox)).with_key(dk(), "CANARY-k".into()));
    let client = PleoClient::builder(env, provider)
        .user_agent_prefix("my-app/1.0")
        .build()
        .unwrap();
    client
        .get("/v1/vendors")
        .company(dk())
        .send()
        .await
        .unwrap();
    let head = heads.lock().unwrap()[0].to_ascii_lowercase();
    assert!(
        head.starts_with(&format!("get /v1/vendors?company_id={} http/1.1", dk())),
        "{head}"
    );
    let user_agent = format!(
        "user-agent: my-app/1.0 pleo-auth/{}",
        env!("CARGO_PKG_VERSION")
    );
    assert!(head.contains(&user_agent), "{head}");
    assert!(head.contains("authorization: basic "), "{head}");
}

/// An API host that reads each request and closes the connection without answering.
async fn slammer() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicU64>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = vec![0u8; 16 * 1024];
            let _ = stream.read(&mut buf).await;
        }
    });
    (addr, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_failures_are_retried_for_idempotent_methods_only() {
    let sandbox = sandbox().await;
    let key = sandbox.mint_integrated_key(seed::DEMO_CLIENT_ID, seed::ACME_DK);
    for variant in VARIANTS {
        let (addr, connections) = slammer().await;
        let base = format!("http://{addr}/");
        let env = environment_at(sandbox.environment_name(), &base);
        let provider = Arc::new(KeyProvider::new(env_name(&sandbox)).with_key(dk(), key.clone()));
        let client = PleoClient::builder(env, provider)
            .retry_policy(RetryPolicy::default().with_base_backoff(Duration::from_millis(10)))
            .build()
            .unwrap();
        let api = api(variant, client);

        let err = api
            .get("/v1/export-jobs", Target::company(dk()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{variant:?}");
        assert!(err.is_retryable());
        assert_clean(&err);
        assert!(
            !format!("{err:?}").contains(&addr.to_string()),
            "no URL in {err:?}"
        );
        assert_eq!(
            connections.load(Ordering::SeqCst),
            3,
            "{variant:?}: three attempts"
        );

        let err = api
            .send(
                Method::POST,
                "/v1/export-jobs",
                Target::company(dk()),
                RequestOptions::new(),
                Some(json!({})),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert_eq!(
            connections.load(Ordering::SeqCst),
            4,
            "{variant:?}: a POST is sent once"
        );
    }
}
