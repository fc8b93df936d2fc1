//! The connect flow against the sandbox: authorize, callback, code exchange, binding to the
//! company, tenant links, and every way a callback is refused.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pleo_auth_core::{
    CredentialProvider, CredentialStatus, ErrorKind as CoreKind, RecordStoreExt, SecretStore,
    TenantId, TenantLinks, layout,
};
use pleo_auth_oauth::{AuthorizeOptions, ErrorKind, GrantState, OAuthEvent};
use pleo_auth_sandbox::seed;

fn param(url: &url::Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_connect_flow_stores_the_grant_and_serves_a_working_token() {
    let h = Harness::start().await;
    let request = h.client.authorize(AuthorizeOptions::new()).await.unwrap();

    // The URL carries what Pleo asks for, and never the verifier.
    let url = &request.url;
    assert_eq!(url.path(), "/oauth/authorize");
    assert_eq!(param(url, "response_type").as_deref(), Some("code"));
    assert_eq!(param(url, "client_id").as_deref(), Some(CLIENT_ID));
    assert_eq!(param(url, "redirect_uri").as_deref(), Some(REDIRECT_URI));
    assert_eq!(
        param(url, "scope").as_deref(),
        Some("export-jobs:read users:read")
    );
    assert_eq!(param(url, "code_challenge_method").as_deref(), Some("S256"));
    assert_eq!(param(url, "code_challenge").unwrap().len(), 43);
    assert_eq!(
        param(url, "state").as_deref(),
        Some(request.state.expose_secret())
    );
    assert_eq!(
        request.state.expose_secret().len(),
        43,
        "256 bits, base64url"
    );
    assert!(param(url, "code_verifier").is_none());
    assert!(param(url, "urn_pleo_params_oauth_subject").is_none());

    // One pending authorization is stored, under a digest of the state.
    let pending_prefix =
        layout::pending_authorization(h.environment.name(), &CLIENT_ID.parse().unwrap(), "x");
    let pending_root = pending_prefix.as_str().trim_end_matches("/x");
    let all = h.store.list(&pending_root.parse().unwrap()).await.unwrap();
    assert_eq!(all.len(), 1);
    assert!(!all[0].as_str().contains(request.state.expose_secret()));

    let callback = h.consent(&request.url).await;
    let connection = h.client.complete(&callback).await.unwrap();
    assert_eq!(connection.subject, dk());
    assert_eq!(connection.scopes.to_string(), "export-jobs:read users:read");
    assert!(!connection.reconnected);
    assert!(connection.tenant.is_none());

    // The pending authorization is gone; the grant is stored under (environment, client, subject).
    assert!(
        h.store
            .list(&pending_root.parse().unwrap())
            .await
            .unwrap()
            .is_empty()
    );
    let grant = h.stored_grant(&dk()).await.expect("grant stored");
    assert_eq!(grant.status, CredentialStatus::Active);
    assert_eq!(grant.generation, 1);
    assert!(
        grant
            .refresh_token
            .as_ref()
            .unwrap()
            .expose_secret()
            .contains(CANARY)
    );

    // The manager was seeded by complete(): the token works at the API, no refresh happened.
    let credential = h.manager.credential_for(&dk()).await.unwrap();
    assert_eq!(credential.subject, dk());
    assert_eq!(h.api_status(&credential.header).await, 200);
    let stats = h.sandbox.stats();
    assert_eq!(stats.token_successes_for("authorization_code"), 1);
    assert_eq!(stats.token_requests_for("refresh_token"), 0);
    let status = h.manager.status(&dk()).await.unwrap();
    assert_eq!(status.state, GrantState::Active);
    assert_eq!(
        h.events
            .count(|e| matches!(e, OAuthEvent::Connected { subject, .. } if *subject == dk())),
        1
    );

    // A second replica (empty cache) loads the grant from the store.
    let (_, other) = h.replica();
    let again = other.credential_for(&dk()).await.unwrap();
    assert_eq!(
        again.header.expose_secret(),
        credential.header.expose_secret()
    );
    assert_eq!(h.manager.list().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unknown_callbacks_are_refused_before_any_token_request() {
    let h = Harness::start().await;
    let request = h.client.authorize(AuthorizeOptions::new()).await.unwrap();
    let callback = h.consent(&request.url).await;
    let query = url::Url::parse(&callback)
        .unwrap()
        .query()
        .unwrap()
        .to_owned();
    let state = request.state.expose_secret().to_owned();

    let malformed = [
        format!("{query}&state={state}"),
        format!("{query}&code=again"),
        format!("{query}&error=access_denied"),
        query
            .split('&')
            .filter(|p| !p.starts_with("state="))
            .collect::<Vec<_>>()
            .join("&"),
        format!("state={state}"),
        format!("code=&state={state}"),
        String::new(),
        format!("{query}&x={}", "y".repeat(9000)),
    ];
    for bad in &malformed {
        let err = h.client.complete(bad).await.unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::InvalidCallback, "{bad:.80}");
    }
    let unknown = h
        .client
        .complete(&query.replace(&state, "not-a-state-we-issued"))
        .await
        .unwrap_err();
    assert_eq!(unknown.kind(), &ErrorKind::UnknownState);

    // Nothing reached the token endpoint, and the real callback still works once.
    assert_eq!(
        h.sandbox.stats().token_requests_for("authorization_code"),
        0
    );
    h.client.complete(&query).await.unwrap();
    let reused = h.client.complete(&query).await.unwrap_err();
    assert_eq!(reused.kind(), &ErrorKind::UnknownState);
    assert_eq!(
        h.sandbox.stats().token_requests_for("authorization_code"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_state_is_refused_before_any_token_request() {
    let h = Harness::start().await;
    let request = h.client.authorize(AuthorizeOptions::new()).await.unwrap();
    let callback = h.consent(&request.url).await;
    h.clock.advance(Duration::from_secs(10 * 60));
    let err = h.client.complete(&callback).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::StateExpired);
    assert!(!err.is_retryable());
    assert_eq!(
        h.sandbox.stats().token_requests_for("authorization_code"),
        0
    );
    // Single use even when expired.
    let again = h.client.complete(&callback).await.unwrap_err();
    assert_eq!(again.kind(), &ErrorKind::UnknownState);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_callbacks_become_typed_errors_and_consume_the_state() {
    let h = Harness::start().await;
    let request = h.client.authorize(AuthorizeOptions::new()).await.unwrap();
    let state = request.state.expose_secret();
    let denied =
        format!("?error=access_denied&error_description=The%20user%20said%20no&state={state}");
    let err = h.client.complete(&denied).await.unwrap_err();
    assert_eq!(
        err.kind(),
        &ErrorKind::AccessDenied {
            description: Some("The user said no".to_owned())
        }
    );
    let core: pleo_auth_core::Error = err.into();
    assert_eq!(core.kind(), CoreKind::PermissionDenied);
    let again = h.client.complete(&denied).await.unwrap_err();
    assert_eq!(again.kind(), &ErrorKind::UnknownState);

    let request = h.client.authorize(AuthorizeOptions::new()).await.unwrap();
    let other = format!(
        "error=temporarily_unavailable&state={}",
        request.state.expose_secret()
    );
    let err = h.client.complete(&other).await.unwrap_err();
    assert!(matches!(
        err.kind(),
        ErrorKind::AuthorizationError { code, description: None } if code == "temporarily_unavailable"
    ));

    // The sandbox's own error redirect (an unknown scope) is handled the same way.
    let request = h
        .client
        .authorize(AuthorizeOptions::new().scopes("accounts:write".parse().unwrap()))
        .await
        .unwrap();
    let callback = h.consent(&request.url).await;
    let err = h.client.complete(&callback).await.unwrap_err();
    assert!(matches!(
        err.kind(),
        ErrorKind::AuthorizationError { code, .. } if code == "invalid_scope"
    ));
    assert_eq!(
        h.sandbox.stats().token_requests_for("authorization_code"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_callbacks_with_one_state_cannot_both_succeed() {
    let h = Arc::new(Harness::start().await);
    for _ in 0..10 {
        let request = h.client.authorize(AuthorizeOptions::new()).await.unwrap();
        let callback = h.consent(&request.url).await;
        let (a, b) = tokio::join!(h.client.complete(&callback), h.client.complete(&callback));
        let oks = [a.is_ok(), b.is_ok()].iter().filter(|ok| **ok).count();
        assert_eq!(oks, 1);
        let err = a.err().or(b.err()).unwrap();
        assert_eq!(err.kind(), &ErrorKind::UnknownState);
    }
    assert_eq!(
        h.sandbox.stats().token_requests_for("authorization_code"),
        10
    );
    assert_eq!(h.sandbox.stats().total_revocations(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_company_stores_nothing() {
    // Pleo connects Globex although the flow expected Acme Denmark.
    let h = Harness::approving(globex()).await;
    let err = h.connect_expecting_dk(&h.client).await;
    assert_eq!(
        err.kind(),
        &ErrorKind::WrongCompany {
            expected: dk(),
            actual: globex()
        }
    );
    let core: pleo_auth_core::Error = err.into();
    assert_eq!(core.kind(), CoreKind::WrongCompany);
    assert!(h.stored_grant(&globex()).await.is_none());
    assert!(h.stored_grant(&dk()).await.is_none());
    assert!(h.manager.list().await.unwrap().is_empty());
    let not_connected = h.manager.access_token(&globex()).await.unwrap_err();
    assert_eq!(not_connected.kind(), &ErrorKind::NotConnected);

    // With the hint, Pleo connects the expected company.
    let request = h
        .client
        .authorize(AuthorizeOptions::new().expect_subject(dk()))
        .await
        .unwrap();
    assert_eq!(
        param(&request.url, "urn_pleo_params_oauth_subject"),
        Some(dk().to_string())
    );
    let callback = h.consent(&request.url).await;
    assert_eq!(h.client.complete(&callback).await.unwrap().subject, dk());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_the_token_endpoint_refuses_is_a_typed_error() {
    let h = Harness::start().await;
    let request = h.client.authorize(AuthorizeOptions::new()).await.unwrap();
    let callback = h.consent(&request.url).await;
    // The sandbox's codes live 60 seconds; our pending authorization lives 10 minutes.
    h.advance(Duration::from_secs(120));
    let err = h.client.complete(&callback).await.unwrap_err();
    assert_eq!(
        err.kind(),
        &ErrorKind::CodeRejected {
            code: "invalid_grant".to_owned()
        }
    );
    assert!(h.stored_grant(&dk()).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_links_are_written_with_the_grant_or_not_at_all() {
    let h = Harness::start().await;
    let links = TenantLinks::new(h.store.clone(), Arc::new(h.clock.clone()));
    let erp = TenantId::new("erp/4711").unwrap();
    let connection = h.connect(AuthorizeOptions::new().tenant(erp.clone())).await;
    assert_eq!(connection.tenant, Some(erp.clone()));
    assert_eq!(connection.link.unwrap().replaced.len(), 0);
    let link = links
        .subject_for(h.environment.name(), &erp)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(link.subject, dk());
    assert_eq!(
        h.stored_grant(&dk()).await.unwrap().tenant,
        Some(erp.clone())
    );

    // Globex cannot take the tenant without relink: neither the grant nor a link is written.
    h.sandbox.set_auto_approve(Some(seed::GLOBEX)).unwrap();
    let request = h
        .client
        .authorize(AuthorizeOptions::new().tenant(erp.clone()))
        .await
        .unwrap();
    let callback = h.consent(&request.url).await;
    let err = h.client.complete(&callback).await.unwrap_err();
    assert_eq!(
        err.kind(),
        &ErrorKind::TenantConflict {
            tenant: erp.clone(),
            subject: globex()
        }
    );
    assert!(h.stored_grant(&globex()).await.is_none());
    assert!(
        links
            .tenant_for(h.environment.name(), &globex())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        links
            .subject_for(h.environment.name(), &erp)
            .await
            .unwrap()
            .unwrap()
            .subject,
        dk()
    );

    // With relink, the tenant moves to Globex.
    let request = h
        .client
        .authorize(AuthorizeOptions::new().tenant(erp.clone()).relink(true))
        .await
        .unwrap();
    let callback = h.consent(&request.url).await;
    let connection = h.client.complete(&callback).await.unwrap();
    assert_eq!(connection.subject, globex());
    assert_eq!(connection.link.unwrap().replaced.len(), 1);
    assert_eq!(
        links
            .subject_for(h.environment.name(), &erp)
            .await
            .unwrap()
            .unwrap()
            .subject,
        globex()
    );
    assert!(
        links
            .tenant_for(h.environment.name(), &dk())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_a_grant_that_needs_reauthorization_keeps_its_settings() {
    let h = Harness::start().await;
    h.connect(AuthorizeOptions::new()).await;
    // The integrator keeps settings on the record.
    let key = layout::oauth_grant(&pleo_auth_core::CredentialKey::new(
        h.environment.name().clone(),
        CLIENT_ID.parse().unwrap(),
        dk(),
    ));
    let (mut grant, version) = h
        .store
        .get_record::<pleo_auth_core::OAuthGrant>(&key)
        .await
        .unwrap()
        .unwrap();
    grant.settings = BTreeMap::from([("ledger".to_owned(), "4000".to_owned())]);
    h.store
        .put_record(&key, &grant, pleo_auth_core::Precondition::Version(version))
        .await
        .unwrap();

    // Pleo revokes the grant; the next refresh learns it.
    let token = h.manager.access_token(&dk()).await.unwrap();
    h.sandbox.revoke_grant(token.access_token().expose_secret());
    h.advance(ACCESS_TTL);
    let err = h.manager.access_token(&dk()).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::NeedsReauthorization);
    assert_eq!(
        h.manager.status(&dk()).await.unwrap().state,
        GrantState::NeedsReauthorization
    );

    // Another replica has learned it too.
    let (_, other) = h.replica();
    assert_eq!(
        other.access_token(&dk()).await.unwrap_err().kind(),
        &ErrorKind::NeedsReauthorization
    );

    let connection = h.connect(AuthorizeOptions::new()).await;
    assert!(connection.reconnected);
    // The other replica notices the reconnect at its next store read (recheck interval 30 s).
    assert_eq!(
        other.access_token(&dk()).await.unwrap_err().kind(),
        &ErrorKind::NeedsReauthorization
    );
    h.clock.advance(Duration::from_secs(31));
    let picked_up = other.access_token(&dk()).await.unwrap();
    assert_eq!(h.api_status(&picked_up.credential().header).await, 200);
    let stored = h.stored_grant(&dk()).await.unwrap();
    assert_eq!(stored.status, CredentialStatus::Active);
    assert_eq!(
        stored.settings.get("ledger").map(String::as_str),
        Some("4000")
    );
    assert!(stored.generation > grant.generation);
    let status = h.manager.status(&dk()).await.unwrap();
    assert_eq!(status.state, GrantState::Active);
    assert_eq!(status.settings, stored.settings);
    let credential = h.manager.credential_for(&dk()).await.unwrap();
    assert_eq!(h.api_status(&credential.header).await, 200);
}
