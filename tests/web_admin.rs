//! The operator view (`admin_router`): its JSON has the documented shape, only admins get in,
//! and a disconnect is refused from another site.
#![cfg(all(feature = "axum", feature = "sandbox", feature = "apikey"))]

mod web_support;

use pleo_auth::sandbox::{RevokeTarget, seed};
use pleo_auth::{ErrorKind, MemoryStore, Subject};
use serde::Deserialize;
use web_support::*;

/// One row of `GET /connections`, exactly as documented: every field present, no other.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Row {
    tenant: Option<String>,
    subject: Option<String>,
    company: Option<uuid::Uuid>,
    organisation: Option<uuid::Uuid>,
    environment: String,
    method: String,
    status: String,
    last_refresh: Option<String>,
    next_expiry: Option<String>,
    reauthorization_needed: bool,
    dangling_grants: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rows {
    connections: Vec<Row>,
}

/// A whole connect flow for `tenant` through the app's routes.
async fn connect(app: &WebApp, tenant: &str) {
    let (consent_url, flow) = start(app, tenant).await;
    let callback = consent(&consent_url).await;
    let done = client()
        .get(callback)
        .header("cookie", flow)
        .send()
        .await
        .unwrap();
    assert_eq!(
        done.headers()["location"],
        "/settings?pleo_connect=connected"
    );
}

fn is_rfc3339(value: &str) -> bool {
    time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339).is_ok()
}

/// Three tenants: one active, one whose grant Pleo revoked, one waiting for consent.
async fn populated() -> (pleo_auth::sandbox::SandboxHandle, WebApp) {
    let (sandbox, environment) = sandbox(Some(seed::ACME_DK)).await;
    let app = WebApp::start(&environment, arc(MemoryStore::new()), false).await;
    connect(&app, "erp-1").await;
    sandbox.set_auto_approve(Some(seed::ACME_SE)).unwrap();
    connect(&app, "erp-2").await;
    sandbox.revoke_grant(RevokeTarget::Client {
        client_id: seed::DEMO_CLIENT_ID.to_owned(),
        subject: seed::ACME_SE,
    });
    let err = app
        .auth
        .client()
        .get("/v2/employees")
        .tenant("erp-2")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NeedsReauthorization, "{err:?}");
    start(&app, "erp-3").await;
    (sandbox, app)
}

async fn get(app: &WebApp, path: &str, session: Option<&str>) -> reqwest::Response {
    let mut request = client().get(format!("{}{path}", app.url));
    if let Some(session) = session {
        request = request.header("cookie", format!("{SESSION}={session}"));
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_json_has_the_documented_shape() {
    let (_sandbox, app) = populated().await;
    let response = get(&app, "/admin/connections", Some("ops|admin")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(response.headers()["x-frame-options"], "DENY");
    let body = response.text().await.unwrap();
    assert!(!body.contains(CANARY), "no secret in the view");
    let rows: Rows = serde_json::from_str(&body).expect("the documented schema");
    let rows = rows.connections;
    assert_eq!(rows.len(), 3, "{rows:#?}");
    let by = |tenant: &str| {
        rows.iter()
            .find(|r| r.tenant.as_deref() == Some(tenant))
            .unwrap_or_else(|| panic!("a row for {tenant}: {rows:#?}"))
    };

    let active = by("erp-1");
    assert_eq!(active.company, Some(seed::ACME_DK));
    assert_eq!(
        active.subject.as_deref(),
        Some(format!("urn:pleo:company:{}", seed::ACME_DK).as_str())
    );
    assert_eq!(active.organisation, None);
    assert_eq!(active.environment, "sandbox");
    assert_eq!(active.method, "oauth");
    assert_eq!(active.status, "active");
    assert!(!active.reauthorization_needed);
    assert_eq!(active.dangling_grants, 0);
    assert!(active.last_refresh.as_deref().is_some_and(is_rfc3339));
    assert!(active.next_expiry.as_deref().is_some_and(is_rfc3339));

    let revoked = by("erp-2");
    assert_eq!(revoked.company, Some(seed::ACME_SE));
    assert_eq!(revoked.status, "needs_reauthorization");
    assert!(revoked.reauthorization_needed);

    let waiting = by("erp-3");
    assert_eq!(waiting.status, "waiting_for_consent");
    assert_eq!(waiting.subject, None);
    assert_eq!(waiting.company, None);
    assert!(waiting.next_expiry.as_deref().is_some_and(is_rfc3339));
    assert!(!waiting.reauthorization_needed);

    // One tenant, and a tenant with nothing.
    let one: Rows = get(&app, "/admin/connections/erp-1", Some("ops|admin"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one.connections.len(), 1);
    assert_eq!(one.connections[0].company, Some(seed::ACME_DK));
    let none = get(&app, "/admin/connections/nobody", Some("ops|admin")).await;
    assert_eq!(none.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_get_in() {
    let (_sandbox, app) = populated().await;
    for path in ["/admin", "/admin/connections", "/admin/connections/erp-1"] {
        let anonymous = get(&app, path, None).await;
        assert_eq!(anonymous.status(), 401, "{path}");
        let tenant_user = get(&app, path, Some("erp-1")).await;
        assert_eq!(tenant_user.status(), 403, "{path}");
        let body = tenant_user.text().await.unwrap();
        assert!(!body.contains("erp-2") && !body.contains(&seed::ACME_DK.to_string()));
        assert_eq!(
            get(&app, path, Some("ops|admin")).await.status(),
            200,
            "{path}"
        );
    }
    let refused = client()
        .post(format!("{}/admin/connections/erp-1/disconnect", app.url))
        .header("cookie", format!("{SESSION}=erp-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(
        app.auth.connections().await.unwrap()[0].state.as_str(),
        "active"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_revokes_and_is_refused_from_another_site() {
    let (sandbox, app) = populated().await;
    let url = format!("{}/admin/connections/erp-1/disconnect", app.url);
    let admin = format!("{SESSION}=ops|admin");
    for (name, value) in [
        ("origin", "https://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let forged = client()
            .post(&url)
            .header("cookie", &admin)
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), 403, "{name}");
    }
    let dk: Subject = format!("urn:pleo:company:{}", seed::ACME_DK)
        .parse()
        .unwrap();
    let grants_before = sandbox.stats().grant_revocations.values().sum::<u64>();
    let done = client()
        .post(&url)
        .header("cookie", &admin)
        .header("origin", &app.url)
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    let body: serde_json::Value = done.json().await.unwrap();
    assert_eq!(body["tenant"], "erp-1");
    assert_eq!(body["subject"], dk.to_string());
    assert_eq!(body["method"], "oauth");
    assert_eq!(body["outcome"], "revoked");
    assert!(sandbox.stats().grant_revocations.values().sum::<u64>() > grants_before);
    let rows: Rows = get(&app, "/admin/connections/erp-1", Some("ops|admin"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rows.connections[0].status, "revoked");
    let missing = client()
        .post(format!("{}/admin/connections/nobody/disconnect", app.url))
        .header("cookie", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

/// `GET /health` is `PleoAuth::health`: both backends answer, one connection needs
/// reauthorization, so 503 (for an uptime check); admins only; the page shows the same line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_what_needs_attention() {
    let (_sandbox, app) = populated().await;
    assert_eq!(get(&app, "/admin/health", None).await.status(), 401);
    assert_eq!(
        get(&app, "/admin/health", Some("erp-1")).await.status(),
        403
    );
    let response = get(&app, "/admin/health", Some("ops|admin")).await;
    assert_eq!(response.status(), 503);
    let health: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        health,
        serde_json::json!({
            "healthy": false,
            "store_reachable": true,
            "lease_reachable": true,
            "needing_attention": 1,
            "problem": null,
        })
    );
    let direct = app.auth.health().await;
    assert_eq!(direct.needing_attention.len(), 1);
    assert_eq!(
        direct.needing_attention[0]
            .subject
            .company()
            .map(|c| *c.as_uuid()),
        Some(seed::ACME_SE)
    );
    let page = get(&app, "/admin", Some("ops|admin"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("id=\"health\"") && page.contains("store reachable, lease backend reachable"),
        "{page}"
    );
}
