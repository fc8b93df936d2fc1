//! Server shapes that are not Pleo's: endpoint paths, RFC 7009 revocation, extra scopes and
//! members, `expires_in` formats, the RFC 9207 issuer, and the token-response rewrite hook.

use std::sync::{Arc, Mutex};

use pleo_auth_sandbox::{
    ClientRegistration, Endpoint, ExpiresInFormat, Fault, IssuedTokenResponse, RevocationCause,
    Sandbox, SandboxError, SandboxHandle, ServerShape, TokenResponseReplacement, seed,
};
use reqwest::StatusCode;
use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE};
use serde_json::{Value, json};
use url::Url;

use pleo_auth_sandbox::harness::*;

async fn sandbox(shape: ServerShape) -> SandboxHandle {
    canary_sandbox()
        .auto_approve(Some(seed::ACME_DK))
        .server_shape(shape)
        .start()
        .await
        .expect("sandbox starts")
}

/// The generic shape with the sandbox's own URL as issuer.
async fn generic_sandbox() -> SandboxHandle {
    let sb = sandbox(ServerShape::generic()).await;
    let shape = ServerShape {
        issuer: Some(sb.issuer()),
        ..ServerShape::generic()
    };
    sb.set_server_shape(shape).unwrap();
    sb
}

/// An authorization request at the shape's authorization endpoint (auto-approve).
async fn authorize(
    http: &reqwest::Client,
    sb: &SandboxHandle,
    challenge: &str,
    scope: &str,
) -> Url {
    let u = authorize_url(sb, challenge, scope, &[]);
    location(&http.get(u).send().await.unwrap())
}

async fn post_form(
    http: &reqwest::Client,
    target: Url,
    auth: Option<String>,
    form: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = http.post(target).form(form);
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    request.send().await.unwrap()
}

/// Authorization and code exchange at the shape's endpoints; returns the raw token answer.
async fn connect_raw(http: &reqwest::Client, sb: &SandboxHandle, scope: &str) -> reqwest::Response {
    let (verifier, challenge) = pkce();
    let back = authorize(http, sb, &challenge, scope).await;
    let code = query(&back, "code").expect("a code");
    token_request(
        http,
        sb,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
        ],
    )
    .await
}

async fn connect(http: &reqwest::Client, sb: &SandboxHandle, scope: &str) -> Value {
    let response = connect_raw(http, sb, scope).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

async fn revoke(
    http: &reqwest::Client,
    sb: &SandboxHandle,
    auth: Option<String>,
    form: &[(&str, &str)],
) -> reqwest::Response {
    let target = sb.revocation_endpoint().expect("a revocation endpoint");
    post_form(http, target, auth, form).await
}

async fn introspect(http: &reqwest::Client, sb: &SandboxHandle, token: &str) -> Value {
    post_form(
        http,
        sb.introspection_endpoint(),
        Some(demo_basic()),
        &[("token", token)],
    )
    .await
    .json()
    .await
    .unwrap()
}

#[tokio::test]
async fn a_generic_shape_serves_every_endpoint_at_its_own_path_and_nothing_at_pleos() {
    let sb = generic_sandbox().await;
    let http = http();
    assert_eq!(sb.authorize_endpoint().path(), "/authorize");
    assert_eq!(sb.token_endpoint().path(), "/token");
    assert_eq!(sb.introspection_endpoint().path(), "/introspect");
    assert_eq!(sb.revocation_endpoint().unwrap().path(), "/revoke");

    let tokens = connect(&http, &sb, "users:read").await;
    let access = json_str(&tokens, "access_token");
    assert_eq!(introspect(&http, &sb, access).await["active"], true);
    let refreshed = refresh(&http, &sb, json_str(&tokens, "refresh_token")).await;
    assert_eq!(refreshed.status(), StatusCode::OK);

    for pleo_path in [
        "oauth/token",
        "oauth/token/introspect",
        "oauth/authorize",
        "oauth/revoke",
    ] {
        let response = post_form(&http, url(&sb, pleo_path), Some(demo_basic()), &[]).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{pleo_path}");
    }
    let wrong_method = http.get(sb.token_endpoint()).send().await.unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.headers()["allow"], "POST");

    // The consent page posts to the shape's authorization endpoint.
    sb.set_auto_approve(None).unwrap();
    let (_, challenge) = pkce();
    let page = authorize_url(&sb, &challenge, "users:read", &[]);
    let (html, _) = consent_page(&http, page).await;
    assert!(html.contains("action=\"/authorize\""), "{html}");

    let stats = sb.stats();
    assert_eq!(stats.token_successes_for("authorization_code"), 1);
    assert_eq!(stats.refreshes, 1);
    assert_eq!(stats.endpoint_hits[&Endpoint::Token], 3);
    assert_eq!(stats.endpoint_hits[&Endpoint::Introspect], 1);
    assert_eq!(stats.endpoint_hits[&Endpoint::Authorize], 2);
    assert_eq!(stats.endpoint_hits[&Endpoint::Any], 4);
}

#[tokio::test]
async fn pleo_shape_is_the_default_and_has_no_revocation_endpoint() {
    let sb = sandbox(ServerShape::default()).await;
    assert_eq!(sb.server_shape(), ServerShape::pleo());
    assert_eq!(sb.token_endpoint(), url(&sb, "oauth/token"));
    assert_eq!(sb.revocation_endpoint(), None);
    assert_eq!(sb.issuer(), sb.base_url().as_str().trim_end_matches('/'));
    let http = http();
    let tokens = connect(&http, &sb, "users:read").await;
    assert_eq!(tokens["expires_in"], 900);
    assert_eq!(json_str(&tokens, "scope"), "users:read");
    let members: Vec<&String> = tokens.as_object().unwrap().keys().collect();
    assert_eq!(
        members,
        [
            "access_token",
            "expires_in",
            "refresh_token",
            "scope",
            "token_type"
        ]
    );
    for path in ["revoke", "oauth/revoke", "oauth/token/revoke"] {
        let response = post_form(
            &http,
            url(&sb, path),
            Some(demo_basic()),
            &[("token", json_str(&tokens, "refresh_token"))],
        )
        .await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    assert_eq!(sb.stats().revocation_requests.total, 0);
    assert_eq!(sb.stats().total_revocations(), 0);
}

#[tokio::test]
async fn extra_scopes_are_accepted_echoed_and_joined_by_added_scopes() {
    let sb = sandbox(ServerShape::default()).await;
    let http = http();
    let (_, challenge) = pkce();
    // Pleo's shape refuses names outside the client's scopes.
    let refused = authorize(&http, &sb, &challenge, "openid users:read").await;
    assert_eq!(query(&refused, "error").as_deref(), Some("invalid_scope"));

    sb.set_server_shape(ServerShape {
        extra_scopes: vec!["openid".to_owned(), "profile".to_owned()],
        added_scopes: vec!["offline_access".to_owned()],
        ..ServerShape::default()
    })
    .unwrap();
    let tokens = connect(&http, &sb, "openid users:read profile").await;
    assert_eq!(
        json_str(&tokens, "scope"),
        "openid users:read profile offline_access"
    );
    // Names that are neither registered nor extra are still refused.
    let still_refused = authorize(&http, &sb, &challenge, "openid email").await;
    assert_eq!(
        query(&still_refused, "error").as_deref(),
        Some("invalid_scope")
    );
    // The grant keeps the extra names: a refresh may narrow to them.
    let narrowed = post_form(
        &http,
        sb.token_endpoint(),
        Some(demo_basic()),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", json_str(&tokens, "refresh_token")),
            ("scope", "openid"),
        ],
    )
    .await
    .json::<Value>()
    .await
    .unwrap();
    assert_eq!(json_str(&narrowed, "scope"), "openid offline_access");
    // The API still authorises by the Pleo scope.
    let me = api_get(
        &http,
        &sb,
        "v2/employees",
        &bearer(json_str(&tokens, "access_token")),
    )
    .await;
    assert_eq!(
        me.status(),
        StatusCode::UNAUTHORIZED,
        "superseded by the refresh"
    );
    let api = api_get(
        &http,
        &sb,
        "v2/employees",
        &bearer(json_str(&narrowed, "access_token")),
    )
    .await;
    assert_eq!(
        api.status(),
        StatusCode::FORBIDDEN,
        "narrowed to openid only"
    );
}

#[tokio::test]
async fn token_responses_carry_extra_members_and_every_expires_in_format() {
    let sb = sandbox(ServerShape::default()).await;
    let http = http();
    let mut extra = serde_json::Map::new();
    extra.insert("id_token".to_owned(), json!("header.payload.signature"));
    extra.insert("nested".to_owned(), json!({ "a": [1, { "b": null }] }));
    let mut tokens = connect(&http, &sb, "users:read").await;
    for (format, expected) in [
        (ExpiresInFormat::String, Some(json!("900"))),
        (ExpiresInFormat::Omitted, None),
        (ExpiresInFormat::Number, Some(json!(900))),
    ] {
        sb.set_server_shape(ServerShape {
            extra_token_fields: extra.clone(),
            expires_in: format,
            ..ServerShape::default()
        })
        .unwrap();
        let response = refresh(&http, &sb, json_str(&tokens, "refresh_token")).await;
        assert_eq!(response.status(), StatusCode::OK);
        tokens = response.json().await.unwrap();
        assert_eq!(tokens.get("expires_in").cloned(), expected, "{format:?}");
        assert_eq!(tokens["id_token"], "header.payload.signature");
        assert_eq!(tokens["nested"]["a"][1], json!({ "b": null }));
        assert_eq!(json_str(&tokens, "token_type"), "Bearer");
    }
    assert_eq!(sb.stats().refreshes, 3);
    assert_eq!(sb.stats().refresh_token_reuses, 0);
}

#[tokio::test]
async fn the_issuer_is_in_every_authorization_redirect_and_in_introspection() {
    let sb = sandbox(ServerShape::default()).await;
    let http = http();
    let (_, challenge) = pkce();
    // No issuer configured: no `iss` in redirects, introspection names the base URL.
    let plain = authorize(&http, &sb, &challenge, "users:read").await;
    assert_eq!(query(&plain, "iss"), None);
    let tokens = connect(&http, &sb, "users:read").await;
    let described = introspect(&http, &sb, json_str(&tokens, "access_token")).await;
    assert_eq!(json_str(&described, "iss"), sb.issuer());

    let issuer = "https://issuer.example/tenant-1";
    sb.set_server_shape(ServerShape {
        issuer: Some(issuer.to_owned()),
        ..ServerShape::default()
    })
    .unwrap();
    assert_eq!(sb.issuer(), issuer);
    let success = authorize(&http, &sb, &challenge, "users:read").await;
    assert!(query(&success, "code").is_some());
    assert_eq!(query(&success, "iss").as_deref(), Some(issuer));
    let error = authorize(&http, &sb, &challenge, "nope:nope").await;
    assert_eq!(query(&error, "error").as_deref(), Some("invalid_scope"));
    assert_eq!(query(&error, "iss").as_deref(), Some(issuer));

    // The consent form's answers carry it too.
    sb.set_auto_approve(None).unwrap();
    let (_, consent_id) =
        consent_page(&http, authorize_url(&sb, &challenge, "users:read", &[])).await;
    let denied = decide(&http, &sb, &consent_id, seed::ACME_DK, "deny").await;
    assert_eq!(query(&denied, "error").as_deref(), Some("access_denied"));
    assert_eq!(query(&denied, "iss").as_deref(), Some(issuer));
    let (_, consent_id) =
        consent_page(&http, authorize_url(&sb, &challenge, "users:read", &[])).await;
    let allowed = decide(&http, &sb, &consent_id, seed::ACME_DK, "allow").await;
    assert!(query(&allowed, "code").is_some());
    assert_eq!(query(&allowed, "iss").as_deref(), Some(issuer));

    let described = introspect(&http, &sb, json_str(&tokens, "access_token")).await;
    assert_eq!(json_str(&described, "iss"), issuer);
    assert_eq!(
        json_str(&described, "aud"),
        sb.base_url().as_str().trim_end_matches('/')
    );
}

#[tokio::test]
async fn revoking_a_refresh_token_revokes_its_whole_grant() {
    let sb = generic_sandbox().await;
    let http = http();
    let tokens = connect(&http, &sb, "users:read").await;
    let other = connect(&http, &sb, "users:read").await;
    let (access, refresh_token) = (
        json_str(&tokens, "access_token"),
        json_str(&tokens, "refresh_token"),
    );
    let response = revoke(
        &http,
        &sb,
        Some(demo_basic()),
        &[
            ("token", refresh_token),
            ("token_type_hint", "refresh_token"),
        ],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[CACHE_CONTROL], "no-store");

    let reused = refresh(&http, &sb, refresh_token).await;
    assert_eq!(oauth_error(reused).await.1, "invalid_grant");
    assert_eq!(
        api_get(&http, &sb, "v2/employees", &bearer(access))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        introspect(&http, &sb, access).await,
        json!({"active": false})
    );
    // The other grant is untouched.
    assert_eq!(
        refresh(&http, &sb, json_str(&other, "refresh_token"))
            .await
            .status(),
        StatusCode::OK
    );

    let stats = sb.stats();
    let grant = sb.grant_id(refresh_token).unwrap();
    assert_eq!(
        stats.grants[&grant].revoked,
        Some(RevocationCause::RevocationEndpoint)
    );
    assert_eq!(stats.revocations(RevocationCause::RevocationEndpoint), 1);
    assert_eq!(stats.total_revocations(), 1);
    assert_eq!(stats.revocation_requests.total, 1);
    assert_eq!(stats.revocation_requests.success, 1);
    assert_eq!(stats.endpoint_hits[&Endpoint::Revocation], 1);
    assert_eq!(
        stats.refresh_token_reuses, 0,
        "a revoked token is not a reuse"
    );
}

#[tokio::test]
async fn revoking_an_access_token_revokes_that_token_only() {
    let sb = generic_sandbox().await;
    let http = http();
    let tokens = connect(&http, &sb, "users:read").await;
    let access = json_str(&tokens, "access_token");
    // A wrong hint does not stop the search (RFC 7009 §2.1).
    let response = revoke(
        &http,
        &sb,
        Some(demo_basic()),
        &[("token", access), ("token_type_hint", "refresh_token")],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        api_get(&http, &sb, "v2/employees", &bearer(access))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let refreshed = refresh(&http, &sb, json_str(&tokens, "refresh_token")).await;
    assert_eq!(refreshed.status(), StatusCode::OK);
    let refreshed: Value = refreshed.json().await.unwrap();
    assert_eq!(
        api_get(
            &http,
            &sb,
            "v2/employees",
            &bearer(json_str(&refreshed, "access_token"))
        )
        .await
        .status(),
        StatusCode::OK
    );
    let stats = sb.stats();
    assert_eq!(stats.access_tokens_revoked, 1);
    assert_eq!(stats.total_revocations(), 0);
}

#[tokio::test]
async fn unknown_and_spent_tokens_get_200_and_change_nothing() {
    let sb = generic_sandbox().await;
    let http = http();
    let tokens = connect(&http, &sb, "users:read").await;
    let old = json_str(&tokens, "refresh_token");
    let rotated: Value = refresh(&http, &sb, old).await.json().await.unwrap();
    for token in [
        "CANARY-never-issued",
        old,
        json_str(&tokens, "access_token"),
    ] {
        let response = revoke(&http, &sb, Some(demo_basic()), &[("token", token)]).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let stats = sb.stats();
    assert_eq!(stats.total_revocations(), 0);
    assert_eq!(stats.access_tokens_revoked, 0);
    assert_eq!(stats.revocation_requests.success, 3);
    assert_eq!(
        refresh(&http, &sb, json_str(&rotated, "refresh_token"))
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn revocation_needs_client_authentication_and_the_tokens_own_client() {
    let sb = generic_sandbox().await;
    sb.register_client(ClientRegistration::new(
        "other-client",
        "other-secret",
        "http://127.0.0.1/callback",
        &["users:read"],
    ))
    .unwrap();
    let http = http();
    let tokens = connect(&http, &sb, "users:read").await;
    let refresh_token = json_str(&tokens, "refresh_token");

    let anonymous = revoke(&http, &sb, None, &[("token", refresh_token)]).await;
    assert_eq!(
        oauth_error(anonymous).await,
        (StatusCode::UNAUTHORIZED, "invalid_client".to_owned())
    );
    let wrong_secret = revoke(
        &http,
        &sb,
        Some(basic(seed::DEMO_CLIENT_ID, "wrong")),
        &[("token", refresh_token)],
    )
    .await;
    assert_eq!(wrong_secret.status(), StatusCode::UNAUTHORIZED);
    let foreign = revoke(
        &http,
        &sb,
        Some(basic("other-client", "other-secret")),
        &[("token", refresh_token)],
    )
    .await;
    assert_eq!(
        oauth_error(foreign).await,
        (StatusCode::BAD_REQUEST, "unauthorized_client".to_owned())
    );
    let missing = revoke(&http, &sb, Some(demo_basic()), &[]).await;
    assert_eq!(oauth_error(missing).await.1, "invalid_request");
    let repeated = revoke(
        &http,
        &sb,
        Some(demo_basic()),
        &[("token", refresh_token), ("token", refresh_token)],
    )
    .await;
    assert_eq!(oauth_error(repeated).await.1, "invalid_request");

    let stats = sb.stats();
    assert_eq!(stats.total_revocations(), 0);
    assert_eq!(stats.revocation_requests.total, 5);
    assert_eq!(stats.revocation_requests.errors_with("invalid_client"), 2);
    assert_eq!(
        stats.revocation_requests.errors_with("unauthorized_client"),
        1
    );
    assert_eq!(
        refresh(&http, &sb, refresh_token).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn faults_target_the_revocation_endpoint() {
    let sb = generic_sandbox().await;
    let http = http();
    let tokens = connect(&http, &sb, "users:read").await;
    sb.inject_fault(Endpoint::Revocation, Fault::ServerError(503), 1);
    let form = [("token", json_str(&tokens, "refresh_token"))];
    let faulted = revoke(&http, &sb, Some(demo_basic()), &form).await;
    assert_eq!(faulted.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        sb.stats().total_revocations(),
        0,
        "a faulted request changes nothing"
    );
    let served = revoke(&http, &sb, Some(demo_basic()), &form).await;
    assert_eq!(served.status(), StatusCode::OK);
    let stats = sb.stats();
    assert_eq!(stats.faults_injected[&Endpoint::Revocation], 1);
    assert_eq!(stats.revocations(RevocationCause::RevocationEndpoint), 1);
}

#[tokio::test]
async fn unusable_shapes_are_refused_by_the_builder_the_handle_and_the_admin_api() {
    let bad = ServerShape {
        revocation_path: Some("/oauth/token".to_owned()),
        ..ServerShape::default()
    };
    let started = Sandbox::builder().server_shape(bad.clone()).start().await;
    assert!(matches!(started, Err(SandboxError::InvalidConfig(_))));
    let sb = sandbox(ServerShape::default()).await;
    assert!(matches!(
        sb.set_server_shape(bad),
        Err(SandboxError::InvalidConfig(_))
    ));
    assert_eq!(
        sb.server_shape(),
        ServerShape::pleo(),
        "the old shape stays"
    );

    let http = http();
    let target = url(&sb, "_sandbox/server-shape");
    let refused = http
        .put(target.clone())
        .json(&json!({ "token_path": "/_sandbox/token" }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let unknown_field = http
        .put(target)
        .json(&json!({ "tokenpath": "/t" }))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_field.status(), StatusCode::BAD_REQUEST);
    assert_eq!(sb.server_shape(), ServerShape::pleo());
}

#[tokio::test]
async fn another_process_sets_the_shape_over_the_admin_api() {
    let sb = sandbox(ServerShape::default()).await;
    let http = http();
    let target = url(&sb, "_sandbox/server-shape");
    let current: ServerShape = http
        .get(target.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(current, ServerShape::pleo());
    let set = http
        .put(target.clone())
        .json(&json!({
            "token_path": "/as/token",
            "revocation_path": "/as/revoke",
            "extra_scopes": ["openid"],
            "extra_token_fields": { "id_token": "x.y.z" },
            "expires_in": "omitted",
            "issuer": "https://as.example"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), StatusCode::NO_CONTENT);
    let now: ServerShape = http.get(target).send().await.unwrap().json().await.unwrap();
    assert_eq!(now, sb.server_shape());
    assert_eq!(
        now.authorize_path, "/oauth/authorize",
        "missing fields take defaults"
    );
    assert_eq!(sb.token_endpoint().path(), "/as/token");

    let tokens = connect(&http, &sb, "openid users:read").await;
    assert_eq!(json_str(&tokens, "scope"), "openid users:read");
    assert_eq!(json_str(&tokens, "id_token"), "x.y.z");
    assert!(tokens.get("expires_in").is_none());
    let revoked = revoke(
        &http,
        &sb,
        Some(demo_basic()),
        &[("token", json_str(&tokens, "refresh_token"))],
    )
    .await;
    assert_eq!(revoked.status(), StatusCode::OK);
    assert_eq!(
        sb.stats().revocations(RevocationCause::RevocationEndpoint),
        1
    );
}

#[tokio::test]
async fn the_rewrite_hook_replaces_answers_after_the_grant_rotated() {
    let sb = sandbox(ServerShape::generic()).await;
    let http = http();
    let seen: Arc<Mutex<Vec<IssuedTokenResponse>>> = Arc::default();
    let record = Arc::clone(&seen);
    sb.set_token_response_rewrite(Some(Arc::new(move |issued: IssuedTokenResponse| {
        record.lock().unwrap().push(issued);
        TokenResponseReplacement::new(502, Some("text/html"), "<html>bad gateway</html>")
    })));

    // Connect: the code is redeemed and a grant issued, but the client sees a 502.
    let answer = connect_raw(&http, &sb, "openid users:read").await;
    assert_eq!(answer.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(answer.headers()[CONTENT_TYPE], "text/html");
    assert_eq!(answer.headers()[CACHE_CONTROL], "no-store");
    assert_eq!(answer.text().await.unwrap(), "<html>bad gateway</html>");
    let issued = seen.lock().unwrap()[0].clone();
    assert_eq!(issued.grant_type, "authorization_code");
    // The hook saw the body the shape would have sent.
    assert_eq!(json_str(&issued.body, "expires_in"), "900");
    assert_eq!(
        json_str(&issued.body, "scope"),
        "openid users:read offline_access"
    );
    let first_refresh = json_str(&issued.body, "refresh_token").to_owned();
    assert_eq!(sb.grant_id(&first_refresh), Some(issued.grant_id.clone()));

    // Refresh: broken JSON goes out, and the rotation stands.
    sb.set_token_response_rewrite(Some(Arc::new(|_| {
        TokenResponseReplacement::new(200, Some("application/json"), "{\"access_token\":")
    })));
    let broken = refresh(&http, &sb, &first_refresh).await;
    assert_eq!(broken.status(), StatusCode::OK);
    assert_eq!(broken.text().await.unwrap(), "{\"access_token\":");
    let stats = sb.stats();
    assert_eq!(stats.refreshes, 1);
    assert_eq!(stats.token_responses_rewritten, 2);
    assert_eq!(stats.grants[&issued.grant_id].refreshes, 1);

    // Normal answers again; the spent refresh token is now a reuse, and the grant dies.
    sb.set_token_response_rewrite(None);
    let reused = refresh(&http, &sb, &first_refresh).await;
    assert_eq!(oauth_error(reused).await.1, "invalid_grant");
    let stats = sb.stats();
    assert_eq!(stats.refresh_token_reuses, 1);
    assert_eq!(
        stats.grants[&issued.grant_id].revoked,
        Some(RevocationCause::RefreshTokenReuse)
    );
    assert_eq!(
        stats.token_responses_rewritten, 2,
        "error answers are not passed to the hook"
    );
    let fresh = connect(&http, &sb, "users:read").await;
    assert_eq!(json_str(&fresh, "scope"), "users:read offline_access");
}

#[tokio::test]
async fn the_rewrite_hook_can_send_a_valid_but_strange_answer() {
    let sb = sandbox(ServerShape::default()).await;
    let http = http();
    let tokens = connect(&http, &sb, "users:read").await;
    sb.set_token_response_rewrite(Some(Arc::new(|issued: IssuedTokenResponse| {
        let mut body = issued.body;
        body["scope"] = json!("openid profile users:read");
        body["expires_in"] = json!("99999999999999999999");
        body["token_type"] = json!("bearer");
        TokenResponseReplacement::json(&body)
    })));
    let response = refresh(&http, &sb, json_str(&tokens, "refresh_token")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(json_str(&body, "scope"), "openid profile users:read");
    assert_eq!(json_str(&body, "token_type"), "bearer");
    // The tokens in the rewritten body are the live ones.
    assert_eq!(
        api_get(
            &http,
            &sb,
            "v2/employees",
            &bearer(json_str(&body, "access_token"))
        )
        .await
        .status(),
        StatusCode::OK
    );
    let stats = sb.stats();
    assert_eq!(stats.refreshes, 1);
    assert_eq!(stats.token_responses_rewritten, 1);
}
