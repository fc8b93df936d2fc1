//! The connect routes of a multi-tenant web app, as a new user would try them: only the
//! signed-in user's tenant can be connected, each flow completes only in the browser that
//! started it, the browser comes back to the app, and operators see what is connected.
#![cfg(all(feature = "axum", feature = "sandbox", feature = "apikey"))]

mod web_support;

use pleo_auth::sandbox::seed;
use pleo_auth::{ConnectionState, MemoryStore, TenantId};
use web_support::*;

async fn pending(app: &WebApp) -> usize {
    app.auth.oauth().unwrap().pending().await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_without_a_session_never_reaches_pleo() {
    let (sandbox, environment) = sandbox(Some(seed::ACME_DK)).await;
    let app = WebApp::start(&environment, arc(MemoryStore::new()), false).await;
    for url in [
        format!("{}/connect", app.url),
        format!("{}/connect?tenant=erp-4711", app.url),
    ] {
        let response = client().get(url).send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert!(response.headers().get("location").is_none());
        assert!(set_cookie(&response, FLOW_COOKIE).is_none());
        assert_eq!(response.headers()["cache-control"], "no-store");
        assert!(response.text().await.unwrap().contains("Sign in first"));
    }
    // With a login page configured, anonymous users are sent there, never to Pleo.
    let app = WebApp::start(&environment, arc(MemoryStore::new()), true).await;
    let response = client()
        .get(format!("{}/connect?tenant=erp-4711", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/login");
    assert_eq!(pending(&app).await, 0, "no flow was started");
    assert_eq!(sandbox.stats().authorization_requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_for_one_tenant_cannot_connect_another() {
    let (sandbox, environment) = sandbox(Some(seed::ACME_DK)).await;
    let app = WebApp::start(&environment, arc(MemoryStore::new()), false).await;
    let response = client()
        .get(format!("{}/connect?tenant=victim-tenant", app.url))
        .header("cookie", format!("{SESSION}=attacker-tenant"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(set_cookie(&response, FLOW_COOKIE).is_none());
    let html = response.text().await.unwrap();
    assert!(!html.contains("victim-tenant"), "nothing is reflected");
    assert_eq!(pending(&app).await, 0);
    // Naming its own tenant is fine.
    let response = client()
        .get(format!("{}/connect?tenant=attacker-tenant", app.url))
        .header("cookie", format!("{SESSION}=attacker-tenant"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let pending = app.auth.oauth().unwrap().pending().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        pending[0].tenant.as_ref().map(TenantId::as_str),
        Some("attacker-tenant")
    );
    assert_eq!(sandbox.stats().authorization_requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_carried_to_another_browser_is_refused_and_used_up() {
    let (sandbox, environment) = sandbox(Some(seed::ACME_DK)).await;
    let app = WebApp::start(&environment, arc(MemoryStore::new()), false).await;
    // The attacker starts a flow in their own browser and sends the callback URL to a victim.
    let (consent_url, attacker_cookie) = start(&app, "attacker-tenant").await;
    let callback = consent(&consent_url).await;
    for victim_cookie in [None, Some(format!("{FLOW_COOKIE}={}", "A".repeat(43)))] {
        let mut request = client().get(&callback);
        if let Some(cookie) = &victim_cookie {
            request = request.header("cookie", cookie);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 303);
        let back = response.headers()["location"].to_str().unwrap().to_owned();
        assert!(back.starts_with("/settings?pleo_connect=failed"), "{back}");
        assert!(!back.contains("code") && !back.contains("state"), "{back}");
    }
    assert_eq!(
        sandbox.stats().token_requests_for("authorization_code"),
        0,
        "refused before any token request"
    );
    assert!(
        app.auth.connections().await.unwrap().is_empty(),
        "no grant stored"
    );
    // The state is used up: even the browser that started the flow cannot complete it now.
    let response = client()
        .get(&callback)
        .header("cookie", &attacker_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert!(
        response.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/settings?pleo_connect=failed&pleo_reason=invalid_input")
    );
    assert_eq!(sandbox.stats().token_requests_for("authorization_code"), 0);
    assert!(app.auth.connections().await.unwrap().is_empty());
    assert_eq!(pending(&app).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_happy_path_stores_exactly_one_grant_and_returns_to_the_app() {
    let (sandbox, environment) = sandbox(Some(seed::ACME_DK)).await;
    let app = WebApp::start(&environment, arc(MemoryStore::new()), false).await;
    let (consent_url, flow_cookie) = start(&app, "erp-4711").await;
    assert!(consent_url.starts_with(sandbox.base_url().as_str()));
    let callback = consent(&consent_url).await;
    assert!(callback.starts_with(&format!("{}/callback?", app.url)));
    let response = client()
        .get(&callback)
        .header("cookie", &flow_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(
        response.headers()["location"],
        "/settings?pleo_connect=connected"
    );
    assert_eq!(response.headers()["referrer-policy"], "no-referrer");

    let connections = app.auth.connections().await.unwrap();
    assert_eq!(connections.len(), 1, "{connections:?}");
    assert_eq!(
        connections[0].tenant.as_ref().map(TenantId::as_str),
        Some("erp-4711")
    );
    assert_eq!(connections[0].state, ConnectionState::Active);
    assert_eq!(
        connections[0].subject.company().map(|c| c.to_string()),
        Some(seed::ACME_DK.to_string())
    );
    assert_eq!(sandbox.stats().token_successes_for("authorization_code"), 1);
    assert_eq!(pending(&app).await, 0, "the pending authorization is gone");
    assert!(
        app.auth
            .token_manager()
            .unwrap()
            .dangling()
            .await
            .unwrap()
            .is_empty()
    );
    app.auth
        .client()
        .get("/v2/employees")
        .tenant("erp-4711")
        .send()
        .await
        .unwrap();

    // Replaying the callback, even in the same browser, connects nothing more.
    let replay = client()
        .get(&callback)
        .header("cookie", &flow_cookie)
        .send()
        .await
        .unwrap();
    assert!(
        replay.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/settings?pleo_connect=failed")
    );
    assert_eq!(sandbox.stats().token_requests_for("authorization_code"), 1);
    assert_eq!(app.auth.connections().await.unwrap().len(), 1);
}
