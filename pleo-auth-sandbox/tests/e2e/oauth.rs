//! The authorization server: consent, code exchange, refresh rotation, errors, introspection.

use std::time::Duration;

use pleo_auth_sandbox::{ClientRegistration, RevocationCause, Sandbox, SandboxHandle, seed};
use reqwest::StatusCode;
use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use serde_json::Value;

use pleo_auth_sandbox::harness::*;

async fn sandbox() -> SandboxHandle {
    canary_sandbox().start().await.expect("sandbox starts")
}

#[tokio::test]
async fn consent_form_flow_issues_tokens_for_the_chosen_company() {
    let sb = sandbox().await;
    let http = http();
    let (verifier, challenge) = pkce();
    let auth = authorize_url(&sb, &challenge, "users:read vendors:read", &[]);
    let response = http.get(auth).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = response.text().await.unwrap();
    assert!(html.contains(seed::DEMO_CLIENT_NAME));
    assert!(html.contains("<code>users:read</code>") && html.contains("<code>vendors:read</code>"));
    assert!(html.contains("Acme Sweden AB") && html.contains("Globex Ltd"));
    assert!(html.contains("value=\"allow\"") && html.contains("value=\"deny\""));
    assert!(!html.contains("<script"));
    let consent_id = input_value(&html, "consent_id");
    assert!(consent_id.starts_with(CANARY));

    let back = decide(&http, &sb, &consent_id, seed::ACME_SE, "allow").await;
    assert!(back.as_str().starts_with(REDIRECT));
    assert_eq!(query(&back, "state").as_deref(), Some("state-123"));
    assert_eq!(query(&back, "error"), None);
    let code = query(&back, "code").unwrap();
    assert!(code.starts_with(CANARY));

    let response = token_request(
        &http,
        &sb,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
    let tokens: Value = response.json().await.unwrap();
    assert_eq!(json_str(&tokens, "token_type"), "Bearer");
    assert_eq!(tokens["expires_in"], 900);
    assert_eq!(json_str(&tokens, "scope"), "users:read vendors:read");
    let access = json_str(&tokens, "access_token");
    assert!(access.starts_with(CANARY) && json_str(&tokens, "refresh_token").starts_with(CANARY));
    assert_ne!(access, json_str(&tokens, "refresh_token"));

    let me: Value = api_get(&http, &sb, "v1/introspect", &bearer(access))
        .await
        .json()
        .await
        .unwrap();
    let data = &me["data"];
    assert_eq!(json_str(data, "authMethod"), "OAUTH2");
    assert_eq!(json_str(data, "clientId"), seed::DEMO_CLIENT_ID);
    assert_eq!(json_str(data, "applicationName"), seed::DEMO_CLIENT_NAME);
    assert_eq!(json_str(data, "scope"), "users:read vendors:read");
    assert_eq!(json_str(data, "subjectURN"), company_urn(seed::ACME_SE));

    let stats = sb.stats();
    assert_eq!(stats.codes_issued, 1);
    assert_eq!(stats.token_successes_for("authorization_code"), 1);
    assert_eq!(stats.authorization_requests, 2);
}

#[tokio::test]
async fn deny_redirects_with_access_denied_and_the_consent_cannot_be_reused() {
    let sb = sandbox().await;
    let http = http();
    let (_, challenge) = pkce();
    let (_, consent_id) =
        consent_page(&http, authorize_url(&sb, &challenge, "users:read", &[])).await;
    let back = decide(&http, &sb, &consent_id, seed::ACME_DK, "deny").await;
    assert!(back.as_str().starts_with(REDIRECT));
    assert_eq!(query(&back, "error").as_deref(), Some("access_denied"));
    assert_eq!(query(&back, "state").as_deref(), Some("state-123"));
    assert_eq!(query(&back, "code"), None);

    let again = http
        .post(url(&sb, "oauth/authorize"))
        .form(&[("consent_id", consent_id.as_str()), ("decision", "allow")])
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
    assert!(again.headers().get(LOCATION).is_none());
    assert_eq!(sb.stats().codes_issued, 0);
}

#[tokio::test]
async fn auto_approve_skips_the_page_and_honours_the_subject_parameter() {
    let sb = Sandbox::builder()
        .auto_approve(Some(seed::GLOBEX))
        .start()
        .await
        .unwrap();
    let http = http();
    for (extra, expected) in [
        (None, seed::GLOBEX),
        (Some(company_urn(seed::ACME_DK)), seed::ACME_DK),
    ] {
        let (verifier, challenge) = pkce();
        let params: Vec<(&str, &str)> = extra
            .as_deref()
            .map(|urn| vec![("urn_pleo_params_oauth_subject", urn)])
            .unwrap_or_default();
        let response = http
            .get(authorize_url(&sb, &challenge, "users:read", &params))
            .send()
            .await
            .unwrap();
        let back = location(&response);
        let code = query(&back, "code").unwrap();
        let tokens = exchange(&http, &sb, &code, &verifier).await;
        let me: Value = api_get(
            &http,
            &sb,
            "v1/introspect",
            &bearer(json_str(&tokens, "access_token")),
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(json_str(&me["data"], "subjectURN"), company_urn(expected));
    }
    sb.set_auto_approve(None).unwrap();
    let (_, challenge) = pkce();
    let page = http
        .get(authorize_url(&sb, &challenge, "users:read", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
}

#[tokio::test]
async fn subject_parameter_preselects_the_company_on_the_consent_page() {
    let sb = sandbox().await;
    let http = http();
    let (_, challenge) = pkce();
    let urn = company_urn(seed::ACME_SE);
    let (html, _) = consent_page(
        &http,
        authorize_url(
            &sb,
            &challenge,
            "users:read",
            &[("urn_pleo_params_oauth_subject", &urn)],
        ),
    )
    .await;
    assert!(html.contains(&format!("<option value=\"{urn}\" selected>")));
    assert!(!html.contains(&format!(
        "<option value=\"{}\" selected>",
        company_urn(seed::ACME_DK)
    )));

    let unknown = company_urn(uuid::Uuid::nil());
    let response = http
        .get(authorize_url(
            &sb,
            &challenge,
            "users:read",
            &[("urn_pleo_params_oauth_subject", &unknown)],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        query(&location(&response), "error").as_deref(),
        Some("invalid_request")
    );
}

#[tokio::test]
async fn refresh_rotates_both_tokens_and_invalidates_the_old_ones_at_once() {
    let sb = sandbox().await;
    let http = http();
    let first = tokens_for(&http, &sb, seed::ACME_DK, "users:read").await;
    let (a0, r0) = (
        json_str(&first, "access_token"),
        json_str(&first, "refresh_token"),
    );
    let grant = sb.grant_id(r0).expect("grant of the refresh token");

    let response = refresh(&http, &sb, r0).await;
    assert_eq!(response.status(), StatusCode::OK);
    let second: Value = response.json().await.unwrap();
    let (a1, r1) = (
        json_str(&second, "access_token"),
        json_str(&second, "refresh_token"),
    );
    assert!(a1 != a0 && r1 != r0);
    assert_eq!(json_str(&second, "scope"), "users:read");
    assert_eq!(sb.grant_id(a1).as_deref(), Some(grant.as_str()));

    assert_eq!(
        api_get(&http, &sb, "v1/introspect", &bearer(a0))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api_get(&http, &sb, "v1/introspect", &bearer(a1))
            .await
            .status(),
        StatusCode::OK
    );

    let stats = sb.stats();
    assert_eq!(stats.refreshes, 1);
    assert_eq!(stats.grants[&grant].refreshes, 1);
    assert_eq!(stats.grants[&grant].revoked, None);
    assert_eq!(stats.uses_of_refresh_token(r0), 1);
    assert_eq!(stats.uses_of_refresh_token(r1), 0);
    assert_eq!(stats.total_revocations(), 0);
}

#[tokio::test]
async fn reusing_a_rotated_refresh_token_revokes_the_whole_grant() {
    let sb = sandbox().await;
    let http = http();
    let first = tokens_for(&http, &sb, seed::ACME_DK, "users:read").await;
    let r0 = json_str(&first, "refresh_token").to_owned();
    let second: Value = refresh(&http, &sb, &r0).await.json().await.unwrap();
    let (a1, r1) = (
        json_str(&second, "access_token"),
        json_str(&second, "refresh_token"),
    );

    let (status, error) = oauth_error(refresh(&http, &sb, &r0).await).await;
    assert_eq!(
        (status, error.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_grant")
    );
    // The newest pair died with the grant.
    assert_eq!(
        api_get(&http, &sb, "v1/introspect", &bearer(a1))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let (_, error) = oauth_error(refresh(&http, &sb, r1).await).await;
    assert_eq!(error, "invalid_grant");

    let stats = sb.stats();
    assert_eq!(stats.refresh_token_reuses, 1);
    assert_eq!(stats.revocations(RevocationCause::RefreshTokenReuse), 1);
    assert_eq!(stats.total_revocations(), 1);
    let grant = sb.grant_id(&r0).unwrap();
    assert_eq!(
        stats.grants[&grant].revoked,
        Some(RevocationCause::RefreshTokenReuse)
    );
    assert_eq!(stats.uses_of_refresh_token(&r0), 2);
    let counts = &stats.token_requests["refresh_token"];
    assert_eq!(
        (
            counts.total,
            counts.success,
            counts.errors_with("invalid_grant")
        ),
        (3, 1, 2)
    );
}

#[tokio::test]
async fn replaying_a_code_is_refused_and_revokes_the_tokens_issued_from_it() {
    let sb = sandbox().await;
    let http = http();
    let (code, verifier) = code_for(&http, &sb, seed::ACME_DK, "users:read").await;
    let tokens = exchange(&http, &sb, &code, &verifier).await;
    let replay = token_request(
        &http,
        &sb,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(
        oauth_error(replay).await,
        (StatusCode::BAD_REQUEST, "invalid_grant".to_owned())
    );
    assert_eq!(
        api_get(
            &http,
            &sb,
            "v1/introspect",
            &bearer(json_str(&tokens, "access_token"))
        )
        .await
        .status(),
        StatusCode::UNAUTHORIZED
    );
    let (_, error) =
        oauth_error(refresh(&http, &sb, json_str(&tokens, "refresh_token")).await).await;
    assert_eq!(error, "invalid_grant");
    assert_eq!(sb.stats().revocations(RevocationCause::CodeReplay), 1);
}

#[tokio::test]
async fn expired_code_wrong_redirect_and_wrong_verifier_are_refused() {
    let sb = sandbox().await;
    let http = http();
    let exchange_with = |code: String, redirect: &'static str, verifier: Option<String>| {
        let http = http.clone();
        let sb = &sb;
        async move {
            let mut form = vec![
                ("grant_type", "authorization_code".to_owned()),
                ("code", code),
                ("redirect_uri", redirect.to_owned()),
            ];
            if let Some(v) = verifier {
                form.push(("code_verifier", v));
            }
            let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            oauth_error(token_request(&http, sb, &form).await).await
        }
    };
    let (code, verifier) = code_for(&http, &sb, seed::ACME_DK, "users:read").await;
    let other_port = "http://127.0.0.1:1234/callback";
    assert_eq!(
        exchange_with(code, other_port, Some(verifier)).await.1,
        "invalid_grant"
    );

    let (code, _) = code_for(&http, &sb, seed::ACME_DK, "users:read").await;
    let (wrong, _) = pkce();
    assert_eq!(
        exchange_with(code, REDIRECT, Some(wrong)).await.1,
        "invalid_grant"
    );

    let (code, _) = code_for(&http, &sb, seed::ACME_DK, "users:read").await;
    assert_eq!(
        exchange_with(code, REDIRECT, None).await.1,
        "invalid_request"
    );

    let (code, verifier) = code_for(&http, &sb, seed::ACME_DK, "users:read").await;
    sb.advance_clock(Duration::from_secs(61));
    assert_eq!(
        exchange_with(code, REDIRECT, Some(verifier)).await.1,
        "invalid_grant"
    );

    assert_eq!(
        exchange_with("CANARY-nonsense".to_owned(), REDIRECT, None)
            .await
            .1,
        "invalid_grant"
    );
    assert_eq!(sb.stats().token_successes_for("authorization_code"), 0);
}

#[tokio::test]
async fn authorization_errors_go_back_to_the_redirect_uri_with_state() {
    let sb = sandbox().await;
    let http = http();
    let (_, challenge) = pkce();
    let base = |pairs: &[(&str, &str)], drop: &[&str]| {
        let mut u = url(&sb, "oauth/authorize");
        let standard = [
            ("response_type", "code"),
            ("client_id", seed::DEMO_CLIENT_ID),
            ("redirect_uri", REDIRECT),
            ("scope", "users:read"),
            ("state", "xyz"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ];
        {
            let mut q = u.query_pairs_mut();
            for (k, v) in standard {
                if !drop.contains(&k) && !pairs.iter().any(|(pk, _)| *pk == k) {
                    q.append_pair(k, v);
                }
            }
            q.extend_pairs(pairs);
        }
        u
    };
    let cases: Vec<(reqwest::Url, &str, Option<&str>)> = vec![
        (
            base(&[("code_challenge_method", "plain")], &[]),
            "invalid_request",
            Some("xyz"),
        ),
        (
            base(&[], &["code_challenge", "code_challenge_method"]),
            "invalid_request",
            Some("xyz"),
        ),
        (
            base(&[], &["code_challenge_method"]),
            "invalid_request",
            Some("xyz"),
        ),
        (
            base(&[("scope", "users:read users:write")], &[]),
            "invalid_scope",
            Some("xyz"),
        ),
        (
            base(&[("response_type", "token")], &[]),
            "unsupported_response_type",
            Some("xyz"),
        ),
        (base(&[], &["state"]), "invalid_request", None),
        (base(&[], &["scope"]), "invalid_request", Some("xyz")),
    ];
    for (auth_url, expected, state) in cases {
        let response = http.get(auth_url.clone()).send().await.unwrap();
        let back = location(&response);
        assert!(back.as_str().starts_with(REDIRECT), "{auth_url}");
        assert_eq!(
            query(&back, "error").as_deref(),
            Some(expected),
            "{auth_url}"
        );
        assert!(query(&back, "error_description").is_some());
        assert_eq!(query(&back, "state").as_deref(), state, "{auth_url}");
        assert_eq!(query(&back, "code"), None);
    }
    assert_eq!(sb.stats().codes_issued, 0);
}

#[tokio::test]
async fn unknown_client_or_unregistered_redirect_gets_an_error_page_and_no_redirect() {
    let sb = sandbox().await;
    let http = http();
    let (_, challenge) = pkce();
    let unknown_client = {
        let mut u = authorize_url(&sb, &challenge, "users:read", &[]);
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "client_id" {
                    "nobody".to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
        u
    };
    let mut urls = vec![unknown_client];
    for bad in [
        "https://evil.example/callback",
        "http://127.0.0.1.evil.example/callback",
        "http://127.0.0.1:9999/other",
        "http://user@127.0.0.1:9999/callback",
    ] {
        let mut u = url(&sb, "oauth/authorize");
        u.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", seed::DEMO_CLIENT_ID)
            .append_pair("redirect_uri", bad)
            .append_pair("scope", "users:read")
            .append_pair("state", "s")
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        urls.push(u);
    }
    for u in urls {
        let response = http.get(u.clone()).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{u}");
        assert!(response.headers().get(LOCATION).is_none(), "{u}");
        let html = response.text().await.unwrap();
        assert!(html.contains("<h1>"), "{u}");
        assert!(!html.contains("evil.example"), "{u}");
    }
}

#[tokio::test]
async fn client_secret_post_is_refused_unless_the_client_allows_it() {
    let posting = ClientRegistration {
        accept_client_secret_post: true,
        ..ClientRegistration::new("poster", "poster-secret", REDIRECT, &["users:read"])
    };
    let sb = Sandbox::builder().client(posting).start().await.unwrap();
    let http = http();

    let (code, verifier) = code_for(&http, &sb, seed::ACME_DK, "users:read").await;
    let body_secret = http
        .post(url(&sb, "oauth/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier.as_str()),
            ("client_id", seed::DEMO_CLIENT_ID),
            ("client_secret", seed::DEMO_CLIENT_SECRET),
        ])
        .send()
        .await
        .unwrap();
    assert!(
        body_secret.headers()[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    assert_eq!(
        oauth_error(body_secret).await,
        (StatusCode::UNAUTHORIZED, "invalid_client".to_owned())
    );

    for auth in [
        None,
        Some(basic(seed::DEMO_CLIENT_ID, "wrong")),
        Some(bearer("x")),
    ] {
        let mut request = http
            .post(url(&sb, "oauth/token"))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", "x")]);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let (status, error) = oauth_error(request.send().await.unwrap()).await;
        assert_eq!(
            (status, error.as_str()),
            (StatusCode::UNAUTHORIZED, "invalid_client")
        );
    }

    let (verifier, challenge) = pkce();
    let mut auth = url(&sb, "oauth/authorize");
    auth.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", "poster")
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("scope", "users:read")
        .append_pair("state", "s")
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let (html, consent_id) = consent_page(&http, auth).await;
    assert!(html.contains("poster wants to access"));
    let back = decide(&http, &sb, &consent_id, seed::GLOBEX, "allow").await;
    let code = query(&back, "code").unwrap();
    let ok = http
        .post(url(&sb, "oauth/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier.as_str()),
            ("client_id", "poster"),
            ("client_secret", "poster-secret"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(
        sb.stats().token_requests["authorization_code"].errors_with("invalid_client"),
        1
    );
}

#[tokio::test]
async fn token_introspection_reports_tokens_to_their_own_client_only() {
    let other = ClientRegistration::new("other", "other-secret", REDIRECT, &["users:read"]);
    let sb = canary_sandbox().client(other).start().await.unwrap();
    let http = http();
    let tokens = tokens_for(&http, &sb, seed::ACME_DK, "users:read").await;
    let introspect = |token: String, auth: Option<String>| {
        let http = http.clone();
        let target = url(&sb, "oauth/token/introspect");
        async move {
            let mut request = http.post(target).form(&[("token", token.as_str())]);
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            request.send().await.unwrap()
        }
    };
    let access = json_str(&tokens, "access_token").to_owned();
    let response = introspect(access.clone(), Some(demo_basic())).await;
    assert_eq!(response.status(), StatusCode::OK);
    let info: Value = response.json().await.unwrap();
    assert_eq!(info["active"], true);
    assert_eq!(json_str(&info, "sub"), seed::ACME_DK.to_string());
    assert_eq!(json_str(&info, "client_id"), seed::DEMO_CLIENT_ID);
    assert_eq!(
        json_str(&info, "urn:pleo:params:oauth:subject_urn"),
        company_urn(seed::ACME_DK)
    );
    let issuer = sb.base_url().as_str().trim_end_matches('/').to_owned();
    assert_eq!(json_str(&info, "iss"), issuer);
    assert_eq!(json_str(&info, "aud"), issuer);
    assert_eq!(
        info["exp"].as_u64().unwrap() - info["iat"].as_u64().unwrap(),
        900
    );
    assert!(!json_str(&info, "jti").is_empty() && !json_str(&info, "jti").contains(CANARY));

    let refresh_info: Value = introspect(
        json_str(&tokens, "refresh_token").to_owned(),
        Some(demo_basic()),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(refresh_info["active"], true);

    let foreign: Value = introspect(access.clone(), Some(basic("other", "other-secret")))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(foreign, serde_json::json!({ "active": false }));

    let unauthenticated = introspect(access.clone(), None).await;
    assert_eq!(
        oauth_error(unauthenticated).await,
        (StatusCode::UNAUTHORIZED, "invalid_client".to_owned())
    );

    sb.advance_clock(Duration::from_secs(15 * 60));
    let expired: Value = introspect(access, Some(demo_basic()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(expired["active"], false);
    let counts = sb.stats().introspection_requests;
    assert_eq!(
        (
            counts.total,
            counts.success,
            counts.errors_with("invalid_client")
        ),
        (5, 4, 1)
    );
}

#[tokio::test]
async fn expired_refresh_token_and_unsupported_grant_types_are_refused() {
    let sb = Sandbox::builder()
        .refresh_token_ttl(Duration::from_secs(3600))
        .start()
        .await
        .unwrap();
    let http = http();
    let tokens = tokens_for(&http, &sb, seed::ACME_DK, "users:read").await;
    sb.advance_clock(Duration::from_secs(3601));
    let (_, error) =
        oauth_error(refresh(&http, &sb, json_str(&tokens, "refresh_token")).await).await;
    assert_eq!(error, "invalid_grant");
    assert_eq!(
        sb.stats().revocations(RevocationCause::RefreshTokenExpired),
        1
    );

    let response = token_request(&http, &sb, &[("grant_type", "client_credentials")]).await;
    assert_eq!(oauth_error(response).await.1, "unsupported_grant_type");
    let response = token_request(
        &http,
        &sb,
        &[
            ("grant_type", "refresh_token"),
            ("grant_type", "refresh_token"),
        ],
    )
    .await;
    assert_eq!(oauth_error(response).await.1, "invalid_request");
    let stats = sb.stats();
    assert_eq!(
        stats.token_requests["unsupported"].errors_with("unsupported_grant_type"),
        1
    );
    assert_eq!(stats.token_requests_for("unparsed"), 1);
}

#[tokio::test]
async fn narrowing_scope_on_refresh_is_allowed_and_widening_is_not() {
    let sb = sandbox().await;
    let http = http();
    let tokens = tokens_for(&http, &sb, seed::ACME_DK, "users:read vendors:read").await;
    let wider = token_request(
        &http,
        &sb,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", json_str(&tokens, "refresh_token")),
            ("scope", "users:read export-jobs:write"),
        ],
    )
    .await;
    assert_eq!(oauth_error(wider).await.1, "invalid_scope");
    let narrower: Value = token_request(
        &http,
        &sb,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", json_str(&tokens, "refresh_token")),
            ("scope", "vendors:read"),
        ],
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(json_str(&narrower, "scope"), "vendors:read");
    let vendors = api_get(
        &http,
        &sb,
        "v2/employees",
        &bearer(json_str(&narrower, "access_token")),
    )
    .await;
    assert_eq!(vendors.status(), StatusCode::FORBIDDEN);
}
