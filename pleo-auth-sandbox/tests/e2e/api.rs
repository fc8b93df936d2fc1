//! The External API: credentials, scopes, companies, API keys, installations, the request log.

use std::time::Duration;

use pleo_auth_sandbox::{AuthMethod, RevocationCause, SandboxHandle, seed, token_fingerprint};
use reqwest::StatusCode;
use reqwest::header::WWW_AUTHENTICATE;
use serde_json::{Value, json};

use pleo_auth_sandbox::harness::*;

async fn sandbox() -> SandboxHandle {
    canary_sandbox().start().await.expect("sandbox starts")
}

fn challenge(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(WWW_AUTHENTICATE)
        .expect("WWW-Authenticate on 401")
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn missing_malformed_expired_and_revoked_credentials_get_401_with_a_challenge() {
    let sb = sandbox().await;
    let http = http();

    let missing = http.get(url(&sb, "v2/employees")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert!(challenge(&missing).starts_with("Bearer"));

    for malformed in [
        "Bearer",
        "Bearer a b",
        "Token abc",
        "Basic !!!",
        "Bearer CANARY-unknown",
    ] {
        let response = api_get(&http, &sb, "v2/employees", malformed).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{malformed}");
        assert!(
            challenge(&response).contains("error=\"invalid_token\"")
                || malformed.starts_with("Basic"),
            "{malformed}"
        );
    }

    let tokens = tokens_for(&http, &sb, seed::ACME_DK, "users:read").await;
    let access = bearer(json_str(&tokens, "access_token"));
    assert_eq!(
        api_get(&http, &sb, "v2/employees", &access).await.status(),
        StatusCode::OK
    );

    sb.advance_clock(Duration::from_secs(15 * 60 + 1));
    let expired = api_get(&http, &sb, "v2/employees", &access).await;
    assert_eq!(expired.status(), StatusCode::UNAUTHORIZED);
    let header = challenge(&expired);
    assert!(
        header.contains("error=\"invalid_token\"") && header.contains("expired"),
        "{header}"
    );
    let body: Value = expired.json().await.unwrap();
    assert_eq!(body["status"], 401);

    let fresh: Value = refresh(&http, &sb, json_str(&tokens, "refresh_token"))
        .await
        .json()
        .await
        .unwrap();
    let fresh_access = json_str(&fresh, "access_token").to_owned();
    assert_eq!(
        api_get(&http, &sb, "v2/employees", &bearer(&fresh_access))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(sb.revoke_access_tokens(&fresh_access), 1);
    let revoked = api_get(&http, &sb, "v2/employees", &bearer(&fresh_access)).await;
    assert_eq!(revoked.status(), StatusCode::UNAUTHORIZED);
    assert!(challenge(&revoked).contains("revoked"));
    // The refresh token survives an access-token revocation.
    assert_eq!(
        refresh(&http, &sb, json_str(&fresh, "refresh_token"))
            .await
            .status(),
        StatusCode::OK
    );

    // An OAuth client secret is never an API credential.
    let secret_as_key = api_get(&http, &sb, "v2/employees", &demo_basic()).await;
    assert_eq!(secret_as_key.status(), StatusCode::UNAUTHORIZED);
    assert!(challenge(&secret_as_key).starts_with("Basic"));
}

#[tokio::test]
async fn missing_scope_and_uncovered_company_get_403() {
    let sb = sandbox().await;
    let http = http();
    let tokens = tokens_for(&http, &sb, seed::ACME_DK, "users:read").await;
    let auth = bearer(json_str(&tokens, "access_token"));

    let no_scope = api_get(&http, &sb, "v1/vendors", &auth).await;
    assert_eq!(no_scope.status(), StatusCode::FORBIDDEN);
    assert!(challenge(&no_scope).contains("insufficient_scope"));
    let body: Value = no_scope.json().await.unwrap();
    assert_eq!(json_str(&body, "error"), "insufficient_scope");

    let other = api_get(
        &http,
        &sb,
        &format!("v2/employees?company_id={}", seed::GLOBEX),
        &auth,
    )
    .await;
    assert_eq!(other.status(), StatusCode::FORBIDDEN);
    let sibling = api_get(
        &http,
        &sb,
        &format!("v2/employees?company_id={}", seed::ACME_SE),
        &auth,
    )
    .await;
    assert_eq!(sibling.status(), StatusCode::FORBIDDEN);

    let own = api_get(
        &http,
        &sb,
        &format!("v2/employees?company_id={}", seed::ACME_DK),
        &auth,
    )
    .await;
    assert_eq!(own.status(), StatusCode::OK);
    let employees: Value = own.json().await.unwrap();
    let list = employees["data"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert!(list.iter().all(|e| e["companyId"] == json!(seed::ACME_DK)));

    let bad = api_get(&http, &sb, "v2/employees?company_id=not-a-uuid", &auth).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn organisation_standalone_key_covers_the_companies_of_its_organisation_only() {
    let sb = sandbox().await;
    let http = http();
    let key = sb.mint_standalone_key(seed::ACME_ORG, &["users:read", "vendors:read"], None);
    assert!(key.starts_with(CANARY));
    let auth = key_auth(&key);

    let me: Value = api_get(&http, &sb, "v1/introspect", &auth)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(json_str(&me["data"], "authMethod"), "API_KEY");
    assert_eq!(
        json_str(&me["data"], "subjectURN"),
        format!("urn:pleo:organisation:{}", seed::ACME_ORG)
    );
    assert_eq!(json_str(&me["data"], "scope"), "users:read vendors:read");
    assert!(me["data"]["clientId"].is_null());

    for company in [seed::ACME_DK, seed::ACME_SE] {
        let response = api_get(
            &http,
            &sb,
            &format!("v1/vendors?company_id={company}"),
            &auth,
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        let vendors: Value = response.json().await.unwrap();
        let list = vendors["data"].as_array().unwrap();
        assert!(!list.is_empty() && list.iter().all(|v| v["companyId"] == json!(company)));
    }
    let globex = api_get(
        &http,
        &sb,
        &format!("v1/vendors?company_id={}", seed::GLOBEX),
        &auth,
    )
    .await;
    assert_eq!(globex.status(), StatusCode::FORBIDDEN);
    let ambiguous = api_get(&http, &sb, "v1/vendors", &auth).await;
    assert_eq!(ambiguous.status(), StatusCode::BAD_REQUEST);
    let all: Value = api_get(&http, &sb, "v2/employees", &auth)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all["data"].as_array().unwrap().len(), 6);
    let no_scope = api_get(
        &http,
        &sb,
        &format!("v1/export-jobs?company_id={}", seed::ACME_DK),
        &auth,
    )
    .await;
    assert_eq!(no_scope.status(), StatusCode::FORBIDDEN);
    assert!(no_scope.headers().get(WWW_AUTHENTICATE).is_none());
}

#[tokio::test]
async fn integrated_key_carries_the_client_scopes_for_one_company() {
    let sb = sandbox().await;
    let http = http();
    let key = sb.mint_integrated_key(seed::DEMO_CLIENT_ID, seed::ACME_DK);
    let auth = key_auth(&key);

    let me: Value = api_get(&http, &sb, "v1/introspect", &auth)
        .await
        .json()
        .await
        .unwrap();
    let data = &me["data"];
    assert_eq!(json_str(data, "authMethod"), "API_KEY");
    assert_eq!(json_str(data, "clientId"), seed::DEMO_CLIENT_ID);
    assert_eq!(json_str(data, "applicationName"), seed::DEMO_CLIENT_NAME);
    assert_eq!(json_str(data, "scope"), seed::DEMO_CLIENT_SCOPES.join(" "));
    assert_eq!(json_str(data, "subjectURN"), company_urn(seed::ACME_DK));

    let created = http
        .post(url(&sb, "v1/export-jobs"))
        .header("authorization", &auth)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let job: Value = created.json().await.unwrap();
    assert_eq!(job["data"]["companyId"], json!(seed::ACME_DK));
    let jobs: Value = api_get(&http, &sb, "v1/export-jobs", &auth)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(jobs["data"].as_array().unwrap().len(), 1);

    let installation: Value = api_get(&http, &sb, "v1/installations/me", &auth)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(json_str(&installation["data"], "status"), "AUTHORIZED");
    assert_eq!(
        json_str(&installation["data"], "resource"),
        company_urn(seed::ACME_DK)
    );

    let replacement = sb.mint_integrated_key(seed::DEMO_CLIENT_ID, seed::ACME_DK);
    assert_eq!(
        api_get(&http, &sb, "v1/introspect", &auth).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api_get(&http, &sb, "v1/introspect", &key_auth(&replacement))
            .await
            .status(),
        StatusCode::OK
    );
    assert!(sb.try_mint_integrated_key("nobody", seed::ACME_DK).is_err());
    assert!(
        sb.try_mint_integrated_key(seed::DEMO_CLIENT_ID, seed::ACME_ORG)
            .is_err()
    );
}

#[tokio::test]
async fn keys_from_another_environment_are_refused() {
    let staging = canary_sandbox()
        .environment_name("staging")
        .start()
        .await
        .unwrap();
    let production = canary_sandbox()
        .environment_name("production")
        .start()
        .await
        .unwrap();
    let http = http();
    let key = staging.mint_standalone_key(seed::GLOBEX, &["users:read"], None);
    assert_eq!(
        api_get(&http, &staging, "v2/employees", &key_auth(&key))
            .await
            .status(),
        StatusCode::OK
    );
    let refused = api_get(&http, &production, "v2/employees", &key_auth(&key)).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let body: Value = refused.json().await.unwrap();
    assert!(json_str(&body, "message").contains("staging"), "{body}");
    let integrated = production.mint_integrated_key(seed::DEMO_CLIENT_ID, seed::GLOBEX);
    assert_eq!(
        api_get(&http, &staging, "v1/introspect", &key_auth(&integrated))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn expired_revoked_and_password_carrying_keys_are_refused() {
    let sb = sandbox().await;
    let http = http();
    let short =
        sb.mint_standalone_key(seed::GLOBEX, &["users:read"], Some(Duration::from_secs(60)));
    assert_eq!(
        api_get(&http, &sb, "v2/employees", &key_auth(&short))
            .await
            .status(),
        StatusCode::OK
    );
    sb.advance_clock(Duration::from_secs(61));
    let expired = api_get(&http, &sb, "v2/employees", &key_auth(&short)).await;
    assert_eq!(expired.status(), StatusCode::UNAUTHORIZED);
    assert!(challenge(&expired).starts_with("Basic"));

    let key = sb.mint_standalone_key(seed::GLOBEX, &["users:read"], None);
    let with_password = api_get(&http, &sb, "v2/employees", &basic(&key, "x")).await;
    assert_eq!(with_password.status(), StatusCode::UNAUTHORIZED);
    let raw = api_get(&http, &sb, "v2/employees", &format!("Basic {key}")).await;
    assert_eq!(raw.status(), StatusCode::UNAUTHORIZED);
    assert!(sb.revoke_api_key(&key));
    assert_eq!(
        api_get(&http, &sb, "v2/employees", &key_auth(&key))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn installation_lifecycle_and_delete_revoking_the_clients_tokens_for_that_company() {
    let sb = sandbox().await;
    let http = http();
    let dk = tokens_for(&http, &sb, seed::ACME_DK, "users:read").await;
    let globex = tokens_for(&http, &sb, seed::GLOBEX, "users:read").await;
    let dk_second = tokens_for(&http, &sb, seed::ACME_DK, "users:read").await;
    let auth = bearer(json_str(&dk, "access_token"));
    let me = url(&sb, "v1/installations/me");

    let current: Value = api_get(&http, &sb, "v1/installations/me", &auth)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(json_str(&current["data"], "status"), "AUTHORIZED");
    assert_eq!(json_str(&current["data"], "clientId"), seed::DEMO_CLIENT_ID);
    assert_eq!(
        json_str(&current["data"], "resource"),
        company_urn(seed::ACME_DK)
    );

    let duplicate = http
        .post(me.clone())
        .header("authorization", &auth)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(duplicate.status(), StatusCode::CONFLICT);

    let errored = http
        .put(me.clone())
        .header("authorization", &auth)
        .json(&json!({ "status": "ERROR", "errorCode": "AUTH_ERROR", "metadata": { "erp": "x" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(errored.status(), StatusCode::OK);
    let errored: Value = errored.json().await.unwrap();
    assert_eq!(json_str(&errored["data"], "errorCode"), "AUTH_ERROR");
    assert_eq!(errored["data"]["metadata"], json!({ "erp": "x" }));

    let inconsistent = http
        .put(me.clone())
        .header("authorization", &auth)
        .json(&json!({ "status": "ACTIVATED", "errorCode": "NOT_ENTITLED" }))
        .send()
        .await
        .unwrap();
    assert_eq!(inconsistent.status(), StatusCode::BAD_REQUEST);

    let activated = http
        .post(url(&sb, "v1/installations/me:activate"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    let activated: Value = activated.json().await.unwrap();
    assert_eq!(json_str(&activated["data"], "status"), "ACTIVATED");
    assert!(activated["data"]["errorCode"].is_null());

    let deleted = http
        .delete(me.clone())
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);

    // Every token of the client for that company is dead, the other company's are not.
    assert_eq!(
        api_get(&http, &sb, "v1/introspect", &auth).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api_get(
            &http,
            &sb,
            "v1/introspect",
            &bearer(json_str(&dk_second, "access_token"))
        )
        .await
        .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        oauth_error(refresh(&http, &sb, json_str(&dk, "refresh_token")).await)
            .await
            .1,
        "invalid_grant"
    );
    assert_eq!(
        api_get(
            &http,
            &sb,
            "v1/introspect",
            &bearer(json_str(&globex, "access_token"))
        )
        .await
        .status(),
        StatusCode::OK
    );
    assert_eq!(
        sb.stats().revocations(RevocationCause::InstallationDeleted),
        2
    );

    let key = sb.mint_standalone_key(seed::ACME_DK, &["users:read"], None);
    let key_auth = key_auth(&key);
    assert_eq!(
        api_get(&http, &sb, "v1/installations/me", &key_auth)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    let created = http
        .post(me.clone())
        .header("authorization", &key_auth)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.unwrap();
    assert_eq!(json_str(&created["data"], "status"), "ACTIVATED");
    assert!(created["data"]["clientId"].is_null());
    let gone = http
        .delete(me.clone())
        .header("authorization", &key_auth)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NO_CONTENT);
    let again = http
        .delete(me)
        .header("authorization", &key_auth)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn request_log_records_company_and_credential_of_every_call_without_secrets() {
    let sb = sandbox().await;
    let http = http();
    let tokens = tokens_for(&http, &sb, seed::ACME_DK, "users:read").await;
    let access = json_str(&tokens, "access_token");
    let key = sb.mint_standalone_key(seed::ACME_ORG, &["vendors:read"], None);
    let grant = sb.grant_id(access).unwrap();

    api_get(
        &http,
        &sb,
        &format!("v2/employees?company_id={}", seed::ACME_DK),
        &bearer(access),
    )
    .await;
    api_get(
        &http,
        &sb,
        &format!("v2/employees?company_id={}", seed::GLOBEX),
        &bearer(access),
    )
    .await;
    api_get(
        &http,
        &sb,
        &format!("v1/vendors?company_id={}", seed::ACME_SE),
        &key_auth(&key),
    )
    .await;
    http.get(url(&sb, "v1/vendors")).send().await.unwrap();

    let log = sb.request_log();
    assert_eq!(log.len(), 4);
    assert_eq!(log[0].method, "GET");
    assert_eq!(log[0].path, "/v2/employees");
    assert_eq!(log[0].company_id, Some(seed::ACME_DK.to_string()));
    assert_eq!(log[0].auth_method, Some(AuthMethod::OAuth2));
    assert_eq!(
        log[0].credential_fingerprint.as_deref(),
        Some(token_fingerprint(access).as_str())
    );
    assert_eq!(log[0].credential_id.as_deref(), Some(grant.as_str()));
    assert_eq!(log[0].client_id.as_deref(), Some(seed::DEMO_CLIENT_ID));
    assert_eq!(log[0].covered_companies, vec![seed::ACME_DK]);
    assert_eq!(log[0].status, 200);
    assert_eq!(log[1].company_id, Some(seed::GLOBEX.to_string()));
    assert_eq!(log[1].status, 403);
    assert_eq!(log[2].auth_method, Some(AuthMethod::ApiKey));
    assert_eq!(log[2].covered_companies, vec![seed::ACME_DK, seed::ACME_SE]);
    assert_eq!(
        log[2].subject_urn,
        Some(format!("urn:pleo:organisation:{}", seed::ACME_ORG))
    );
    assert_eq!(log[2].status, 200);
    assert_eq!(
        (
            log[3].auth_method,
            log[3].credential_fingerprint.as_ref(),
            log[3].status
        ),
        (None, None, 401)
    );
    assert_eq!(sb.stats().api_requests, 4);

    let dump = format!(
        "{} {} {:?} {:?}",
        serde_json::to_string(&log).unwrap(),
        serde_json::to_string(&sb.stats()).unwrap(),
        log,
        sb
    );
    assert!(
        !dump.contains(CANARY),
        "a secret leaked into inspection data"
    );
    sb.clear_request_log();
    assert!(sb.request_log().is_empty());
}

#[tokio::test]
async fn take_request_log_hands_over_each_record_once() {
    let sb = sandbox().await;
    let key = sb.mint_standalone_key(seed::ACME_DK, &["users:read"], None);
    let client = http();
    let get = || {
        client
            .get(format!("{}v1/introspect", sb.base_url()))
            .header("authorization", key_auth(&key))
            .send()
    };
    get().await.unwrap();
    get().await.unwrap();
    let first = sb.take_request_log();
    assert_eq!(first.len(), 2);
    assert!(sb.request_log().is_empty(), "taking empties the log");
    get().await.unwrap();
    let second = sb.take_request_log();
    assert_eq!(second.len(), 1, "only the records since the last take");
    assert!(sb.take_request_log().is_empty());
}
