//! Fault injection, the administration endpoints, load, the binary and request limits.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pleo_auth_sandbox::admin::{
    FaultRequest, FaultSpec, GrantIdResponse, MintApiKeyRequest, MintApiKeyResponse, RevokeRequest,
    RevokeResponse, RevokeTarget, RevokeWhat, SeedResponse,
};
use pleo_auth_sandbox::{
    ApiRequestRecord, Endpoint, Fault, RevocationCause, Sandbox, SandboxHandle, Stats, seed,
};
use reqwest::StatusCode;
use reqwest::header::RETRY_AFTER;
use serde_json::{Value, json};

use pleo_auth_sandbox::harness::*;

async fn sandbox() -> SandboxHandle {
    canary_sandbox().start().await.expect("sandbox starts")
}

#[tokio::test]
async fn too_many_requests_carries_retry_after_and_then_the_endpoint_recovers() {
    let sb = sandbox().await;
    let http = http();
    let tokens = tokens_for(&http, &sb, seed::ACME_DK, "users:read").await;
    sb.inject_fault(
        Endpoint::Token,
        Fault::TooManyRequests {
            retry_after_secs: 7,
        },
        2,
    );
    for _ in 0..2 {
        let response = refresh(&http, &sb, json_str(&tokens, "refresh_token")).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[RETRY_AFTER], "7");
    }
    // The faulted requests never reached the token endpoint, so the refresh token is still good.
    assert_eq!(
        refresh(&http, &sb, json_str(&tokens, "refresh_token"))
            .await
            .status(),
        StatusCode::OK
    );
    let stats = sb.stats();
    assert_eq!(stats.faults_injected[&Endpoint::Token], 2);
    assert_eq!(stats.endpoint_hits[&Endpoint::Token], 4);
    assert_eq!(stats.token_requests_for("refresh_token"), 1);
    assert_eq!(stats.total_revocations(), 0);
}

#[tokio::test]
async fn server_errors_hit_only_the_chosen_endpoint() {
    let sb = sandbox().await;
    let http = http();
    let key = sb.mint_standalone_key(seed::GLOBEX, &["users:read"], None);
    sb.inject_fault(Endpoint::Api, Fault::ServerError(503), 1);
    let (_, challenge) = pkce();
    let page = http
        .get(authorize_url(&sb, &challenge, "users:read", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(
        api_get(&http, &sb, "v1/introspect", &key_auth(&key))
            .await
            .status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        api_get(&http, &sb, "v1/introspect", &key_auth(&key))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(sb.request_log().len(), 1);
}

#[tokio::test]
async fn delay_postpones_the_answer() {
    let sb = sandbox().await;
    let http = http();
    let tokens = tokens_for(&http, &sb, seed::ACME_DK, "users:read").await;
    sb.inject_fault(
        Endpoint::Introspect,
        Fault::Delay(Duration::from_secs(3)),
        1,
    );
    let started = Instant::now();
    let response = http
        .post(url(&sb, "oauth/token/introspect"))
        .header("authorization", demo_basic())
        .form(&[("token", json_str(&tokens, "access_token"))])
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_secs(3));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["active"], true);
    let started = Instant::now();
    http.post(url(&sb, "oauth/token/introspect"))
        .header("authorization", demo_basic())
        .form(&[("token", "x")])
        .send()
        .await
        .unwrap();
    // The one injected delay is spent: the next answer does not wait the 3 s again.
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn dropped_connection_yields_no_response_at_all() {
    let sb = sandbox().await;
    let http = http();
    let key = sb.mint_standalone_key(seed::GLOBEX, &["users:read"], None);
    sb.inject_fault(Endpoint::Api, Fault::DropConnection, 1);
    let error = api_get_result(&http, &sb, &key_auth(&key))
        .await
        .expect_err("no response");
    assert!(!error.is_status() && !error.is_timeout(), "{error:?}");
    assert_eq!(
        api_get(&http, &sb, "v1/introspect", &key_auth(&key))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(sb.stats().faults_injected[&Endpoint::Api], 1);
}

async fn api_get_result(
    http: &reqwest::Client,
    sb: &SandboxHandle,
    auth: &str,
) -> reqwest::Result<reqwest::Response> {
    http.get(url(sb, "v1/introspect"))
        .header("authorization", auth)
        .send()
        .await
}

#[tokio::test]
async fn any_faults_apply_everywhere_except_the_admin_paths() {
    let sb = sandbox().await;
    let http = http();
    sb.inject_fault(Endpoint::Any, Fault::ServerError(500), 2);
    let stats = http.get(url(&sb, "_sandbox/stats")).send().await.unwrap();
    assert_eq!(stats.status(), StatusCode::OK);
    let (_, challenge) = pkce();
    let page = http
        .get(authorize_url(&sb, &challenge, "users:read", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let token = token_request(&http, &sb, &[("grant_type", "refresh_token")]).await;
    assert_eq!(token.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let after = token_request(&http, &sb, &[("grant_type", "refresh_token")]).await;
    assert_eq!(after.status(), StatusCode::BAD_REQUEST);

    sb.inject_fault(Endpoint::Token, Fault::ServerError(502), 5);
    sb.clear_faults();
    let cleared = token_request(&http, &sb, &[("grant_type", "refresh_token")]).await;
    assert_eq!(cleared.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn admin_http_endpoints_drive_a_sandbox_from_outside() {
    let sb = sandbox().await;
    let http = http();
    let admin = |path: &str| url(&sb, &format!("_sandbox/{path}"));

    let seed_info: SeedResponse = http
        .get(admin("seed"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seed_info.environment_name, "sandbox");
    assert_eq!(seed_info.companies.len(), 3);
    assert_eq!(seed_info.clients[0].id, seed::DEMO_CLIENT_ID);
    assert!(
        !serde_json::to_string(&seed_info)
            .unwrap()
            .contains(seed::DEMO_CLIENT_SECRET)
    );

    let minted: MintApiKeyResponse = http
        .post(admin("api-keys"))
        .json(&MintApiKeyRequest::Standalone {
            subject: seed::ACME_ORG,
            scopes: vec!["users:read".to_owned()],
            expires_in_secs: Some(120),
            name: Some("Exporter".to_owned()),
        })
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let me: Value = api_get(&http, &sb, "v1/introspect", &key_auth(&minted.api_key))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(json_str(&me["data"], "applicationName"), "Exporter");
    let integrated = http
        .post(admin("api-keys"))
        .json(&json!({ "kind": "integrated", "client_id": "nobody", "company": seed::GLOBEX }))
        .send()
        .await
        .unwrap();
    assert_eq!(integrated.status(), StatusCode::BAD_REQUEST);
    let refused: Value = integrated.json().await.unwrap();
    assert_eq!(json_str(&refused, "error"), "unknown_client");

    let advanced: Value = http
        .post(admin("clock/advance"))
        .json(&json!({ "secs": 121 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(advanced["offset_millis"], 121_000);
    assert_eq!(
        api_get(&http, &sb, "v1/introspect", &key_auth(&minted.api_key))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );

    let fault = http
        .post(admin("faults"))
        .json(&FaultRequest {
            endpoint: Endpoint::Api,
            fault: FaultSpec::TooManyRequests {
                retry_after_secs: 3,
            },
            count: 1,
        })
        .send()
        .await
        .unwrap();
    assert_eq!(fault.status(), StatusCode::NO_CONTENT);
    let limited = api_get(&http, &sb, "v1/introspect", "Bearer x").await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let bad_fault = http
        .post(admin("faults"))
        .json(&json!({ "endpoint": "api", "fault": { "kind": "server_error", "status": 404 }, "count": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_fault.status(), StatusCode::BAD_REQUEST);

    let tokens = tokens_for(&http, &sb, seed::GLOBEX, "users:read").await;
    let grant: GrantIdResponse = http
        .post(admin("grant-id"))
        .json(&json!({ "token": json_str(&tokens, "refresh_token") }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        grant.grant_id,
        sb.grant_id(json_str(&tokens, "access_token"))
    );
    let revoked: RevokeResponse = http
        .post(admin("revoke"))
        .json(&RevokeRequest {
            what: RevokeWhat::Grant,
            target: RevokeTarget::Token(json_str(&tokens, "access_token").to_owned()),
        })
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(revoked.revoked, 1);
    assert_eq!(
        oauth_error(refresh(&http, &sb, json_str(&tokens, "refresh_token")).await)
            .await
            .1,
        "invalid_grant"
    );

    let auto = http
        .put(admin("auto-approve"))
        .json(&json!({ "subject": seed::ACME_SE }))
        .send()
        .await
        .unwrap();
    assert_eq!(auto.status(), StatusCode::NO_CONTENT);
    let (_, challenge) = pkce();
    let redirect = http
        .get(authorize_url(&sb, &challenge, "users:read", &[]))
        .send()
        .await
        .unwrap();
    assert!(query(&location(&redirect), "code").is_some());

    let registered = http
        .post(admin("clients"))
        .json(&json!({
            "id": "cli", "secret": "cli-secret", "name": "CLI",
            "redirect_uris": ["http://localhost/cb"], "scopes": ["users:read"]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), StatusCode::CREATED);

    let stats: Stats = http
        .get(admin("stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats, sb.stats());
    assert_eq!(stats.revocations(RevocationCause::Admin), 1);
    assert_eq!(stats.faults_injected[&Endpoint::Api], 1);
    let log: Vec<ApiRequestRecord> = http
        .get(admin("requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(log, sb.request_log());
    assert_eq!(log.len(), 2);

    let reset = http.post(admin("stats/reset")).send().await.unwrap();
    assert_eq!(reset.status(), StatusCode::NO_CONTENT);
    assert_eq!(sb.stats().token_requests_for("authorization_code"), 0);
    let cleared = http.delete(admin("requests")).send().await.unwrap();
    assert_eq!(cleared.status(), StatusCode::NO_CONTENT);
    assert!(sb.request_log().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_a_thousand_concurrent_api_calls() {
    let sb = sandbox().await;
    let http = http();
    let tokens = tokens_for(&http, &sb, seed::ACME_DK, "users:read").await;
    let auth = bearer(json_str(&tokens, "access_token"));
    let target = url(&sb, &format!("v2/employees?company_id={}", seed::ACME_DK));
    let started = Instant::now();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (http, auth, target) = (http.clone(), auth.clone(), target.clone());
            tokio::spawn(async move {
                http.get(target)
                    .header("authorization", auth)
                    .send()
                    .await
                    .map(|r| r.status())
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), StatusCode::OK);
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    let log = sb.request_log();
    assert_eq!(log.len(), 1000);
    assert!(
        log.iter()
            .all(|r| r.covered_companies == vec![seed::ACME_DK] && r.status == 200)
    );
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let sb = sandbox().await;
    let http = http();
    let big = "x".repeat(100 * 1024);
    let response = token_request(
        &http,
        &sb,
        &[("grant_type", "refresh_token"), ("refresh_token", &big)],
    )
    .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(sb.stats().token_requests_for("unparsed"), 1);
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let sb = sandbox().await;
    let target = url(&sb, "_sandbox/stats");
    let http = http();
    assert!(http.get(target.clone()).send().await.is_ok());
    sb.shutdown().await;
    assert!(http.get(target).send().await.is_err());
}

#[tokio::test]
async fn non_loopback_addresses_are_refused() {
    let result = Sandbox::builder()
        .bind("0.0.0.0:0".parse().unwrap())
        .start()
        .await;
    assert!(matches!(
        result,
        Err(pleo_auth_sandbox::SandboxError::NotLoopback(_))
    ));
}

/// Kills the child process on drop, so a failing assertion leaves nothing running.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

#[tokio::test]
async fn binary_prints_its_base_url_first_and_serves_the_admin_api() {
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_pleo-auth-sandbox"))
            .args([
                "--port",
                "0",
                "--environment-name",
                "staging",
                "--secret-prefix",
                CANARY,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("binary starts"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let first_line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .unwrap()
    .unwrap();
    let base = reqwest::Url::parse(first_line.trim()).expect("first line is the base URL");
    assert_eq!(base.host_str(), Some("127.0.0.1"));
    let http = http();
    let seed_info: SeedResponse = http
        .get(base.join("_sandbox/seed").unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seed_info.environment_name, "staging");
    let minted: MintApiKeyResponse = http
        .post(base.join("_sandbox/api-keys").unwrap())
        .json(&json!({ "kind": "integrated", "client_id": seed::DEMO_CLIENT_ID, "company": seed::GLOBEX }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(minted.api_key.starts_with(CANARY));
    let me = http
        .get(base.join("v1/introspect").unwrap())
        .header("authorization", key_auth(&minted.api_key))
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::OK);
    let bad = Command::new(env!("CARGO_BIN_EXE_pleo-auth-sandbox"))
        .args(["--port", "not-a-port"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    drop(child);
}
