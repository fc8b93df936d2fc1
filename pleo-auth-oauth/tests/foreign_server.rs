//! The OAuth client against an authorization server that is not shaped like Pleo: the sandbox in
//! its generic shape (endpoints at other paths, an RFC 7009 revocation endpoint, scope names
//! outside `resource:permission`, extra token-response members, `expires_in` as a string, and
//! an RFC 9207 issuer), with strict rotation on.

mod common;

use std::time::Duration;

use common::*;
use pleo_auth_core::{ClientSecret, Clock as _};
use pleo_auth_oauth::{
    AuthorizationServer, AuthorizeOptions, DisconnectOutcome, ErrorKind, OAuthConfig, SubjectLookup,
};
use pleo_auth_sandbox::{RevocationCause, ServerShape};

/// The client's view of the sandbox in its generic shape, issuer included.
fn generic_server(h: &Harness, issuer: Option<&str>) -> AuthorizationServer {
    let base = h.sandbox.base_url();
    let at = |path: &str| base.join(path).unwrap().to_string();
    let server = AuthorizationServer::custom(&at("authorize"), &at("token"))
        .unwrap()
        .with_revocation_endpoint(&at("revoke"))
        .unwrap()
        .with_subject_lookup(SubjectLookup::token_introspection(&at("introspect")).unwrap());
    match issuer {
        Some(issuer) => server.with_issuer(issuer),
        None => server,
    }
}

fn generic_config(h: &Harness, server: AuthorizationServer) -> OAuthConfig {
    OAuthConfig::builder()
        .environment(h.environment.clone())
        .client_id(CLIENT_ID)
        .client_secret(ClientSecret::new(CLIENT_SECRET))
        .redirect_uri(REDIRECT_URI)
        .scopes("openid users:read offline_access")
        .authorization_server(server)
        .build()
        .unwrap()
}

/// Starts the generic shape with the sandbox's own issuer; returns the issuer.
fn go_generic(h: &Harness) -> String {
    let mut shape = ServerShape::generic();
    shape.issuer = Some(
        h.sandbox
            .base_url()
            .as_str()
            .trim_end_matches('/')
            .to_owned(),
    );
    let issuer = shape.issuer.clone().unwrap();
    h.sandbox.set_server_shape(shape).unwrap();
    issuer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_shaped_unlike_pleo_connects_and_refreshes() {
    let h = Harness::start().await;
    let issuer = go_generic(&h);
    let (client, manager) = h.client_with(generic_config(&h, generic_server(&h, Some(&issuer))));
    let request = client.authorize(AuthorizeOptions::new()).await.unwrap();
    assert!(
        request.url.path().ends_with("/authorize"),
        "{}",
        request.url
    );
    let callback = h.consent(&request.url).await;
    assert!(
        callback.contains("iss="),
        "the server sends iss: {callback}"
    );
    let connection = client.complete(&callback).await.expect("connects");
    assert_eq!(connection.subject, dk());
    let granted = connection.scopes.to_string();
    for name in ["openid", "offline_access", "users:read"] {
        assert!(granted.split(' ').any(|s| s == name), "{name} in {granted}");
    }

    // expires_in came as a string; it still sets the expiry.
    let token = manager.access_token(&dk()).await.unwrap();
    assert_eq!(
        token.expires_at() - h.clock.instant(),
        Duration::from_secs(15 * 60)
    );
    assert_eq!(h.api_status(&token.credential().header).await, 200);
    for expected in 2..=4 {
        h.advance(Duration::from_secs(15 * 60));
        let token = manager.access_token(&dk()).await.expect("refreshes");
        assert_eq!(token.generation(), expected);
        assert_eq!(h.api_status(&token.credential().header).await, 200);
    }
    let stats = h.sandbox.stats();
    assert_eq!(stats.refreshes, 3);
    assert_eq!(stats.refresh_token_reuses, 0);
    assert_eq!(stats.total_revocations(), 0);

    // Disconnecting revokes the refresh token at the RFC 7009 endpoint.
    assert_eq!(
        manager.disconnect(&dk()).await.unwrap(),
        DisconnectOutcome::Revoked
    );
    assert_eq!(
        h.sandbox
            .stats()
            .revocations(RevocationCause::RevocationEndpoint),
        1
    );
}

/// RFC 9207: an `iss` that names another issuer, or none where one is configured, is refused
/// before any token request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_response_from_another_issuer_is_refused_before_any_token_request() {
    let h = Harness::start().await;
    let issuer = go_generic(&h);
    for configured in [Some("https://issuer.example"), None] {
        let mut shape = ServerShape::generic();
        shape.issuer = Some("https://mix-up.example".to_owned());
        h.sandbox.set_server_shape(shape).unwrap();
        let (client, _) = h.client_with(generic_config(&h, generic_server(&h, configured)));
        let request = client.authorize(AuthorizeOptions::new()).await.unwrap();
        let callback = h.consent(&request.url).await;
        let err = client.complete(&callback).await.unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::IssuerMismatch, "{configured:?}");
    }
    // A configured issuer, and a server that sends no iss at all.
    let mut silent = ServerShape::generic();
    silent.issuer = None;
    h.sandbox.set_server_shape(silent).unwrap();
    let (client, _) = h.client_with(generic_config(&h, generic_server(&h, Some(&issuer))));
    let request = client.authorize(AuthorizeOptions::new()).await.unwrap();
    let callback = h.consent(&request.url).await;
    let err = client.complete(&callback).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::IssuerMismatch);
    assert_eq!(
        h.sandbox.stats().token_requests_for("authorization_code"),
        0,
        "no code was exchanged"
    );
}

/// With an RFC 7009 endpoint, a refused grant and the grant a reconnect replaced have exactly
/// their refresh tokens revoked; the kept grant keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_replaced_grants_are_revoked_at_the_revocation_endpoint() {
    let h = Harness::approving(globex()).await;
    let issuer = go_generic(&h);
    let (client, manager) = h.client_with(generic_config(&h, generic_server(&h, Some(&issuer))));

    let err = h.connect_expecting_dk(&client).await;
    assert!(
        matches!(err.kind(), ErrorKind::WrongCompany { .. }),
        "{err:?}"
    );
    let stats = h.sandbox.stats();
    assert_eq!(stats.revocations(RevocationCause::RevocationEndpoint), 1);
    assert!(manager.dangling().await.unwrap().is_empty());

    // Connect Globex twice: the first grant is replaced and revoked; the second works.
    for _ in 0..2 {
        let request = client.authorize(AuthorizeOptions::new()).await.unwrap();
        let callback = h.consent(&request.url).await;
        client.complete(&callback).await.expect("connects");
    }
    let stats = h.sandbox.stats();
    assert_eq!(stats.revocations(RevocationCause::RevocationEndpoint), 2);
    assert!(manager.dangling().await.unwrap().is_empty());
    let token = manager.access_token(&globex()).await.unwrap();
    assert_eq!(h.api_status(&token.credential().header).await, 200);
    assert_eq!(stats.refresh_token_reuses, 0);
}
