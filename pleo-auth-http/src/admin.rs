//! The operator view: which Pleo companies are connected, whether they are healthy, which
//! flows wait for consent; as JSON and as one small HTML page, behind the app's authorization.

use std::fmt;
use std::sync::Arc;

use askama::Template;
use async_trait::async_trait;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use pleo_auth_core::{CredentialKind, EnvironmentName, Subject, TenantId, Timestamp};
use serde::Serialize;

use crate::authorization::{ConnectAuthorization, DynConnectAuthorization};
use crate::connect::router::{hardened, html, rejected};
use crate::error::Result;
use crate::pages;

/// The status of a flow that waits for the customer's consent (a pending authorization).
pub const WAITING_FOR_CONSENT: &str = "waiting_for_consent";

/// One row of the operator view: a connection of a Pleo company (or organisation), or a flow
/// waiting for consent. Holds no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdminConnection {
    /// Your tenant, if linked (or named by the waiting flow).
    pub tenant: Option<TenantId>,
    /// The Pleo company or organisation; `None` while waiting for consent.
    pub subject: Option<Subject>,
    /// The environment.
    pub environment: EnvironmentName,
    /// How it is connected.
    pub method: CredentialKind,
    /// A short lowercase state: `active`, `needs_reauthorization`, `needs_replacement`,
    /// `revoked`, [`WAITING_FOR_CONSENT`], ...
    pub status: String,
    /// When the credential was last refreshed (OAuth: the current refresh token's issue time)
    /// or replaced (API keys).
    pub last_refresh: Option<Timestamp>,
    /// When the current access token expires (OAuth), or the waiting flow expires.
    pub next_expiry: Option<Timestamp>,
    /// Whether the customer must connect again (or paste a new key).
    pub reauthorization_needed: bool,
    /// Grants of this subject that Pleo issued and are not kept, not yet revoked.
    pub dangling_grants: usize,
}

impl AdminConnection {
    /// A row with the given environment, method and status; the rest empty.
    pub fn new(
        environment: EnvironmentName,
        method: CredentialKind,
        status: impl Into<String>,
    ) -> Self {
        Self {
            tenant: None,
            subject: None,
            environment,
            method,
            status: status.into(),
            last_refresh: None,
            next_expiry: None,
            reauthorization_needed: false,
            dangling_grants: 0,
        }
    }
}

/// What disconnecting a tenant did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdminDisconnect {
    /// The company or organisation that was disconnected.
    pub subject: Subject,
    /// How it was connected.
    pub method: CredentialKind,
    /// A short lowercase outcome: `revoked`, `revocation_pending`, `local_only`, `removed`.
    pub outcome: String,
}

impl AdminDisconnect {
    /// What disconnecting `subject` (connected by `method`) did.
    pub fn new(subject: Subject, method: CredentialKind, outcome: impl Into<String>) -> Self {
        Self {
            subject,
            method,
            outcome: outcome.into(),
        }
    }
}

/// Whether the backends answer and how many connections need a person, for the operator
/// view's `GET /health` and its page. Holds no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AdminHealth {
    /// Everything is in order.
    pub healthy: bool,
    /// The secret store answered.
    pub store_reachable: bool,
    /// The lease backend answered.
    pub lease_reachable: bool,
    /// Connections that need reauthorization, a new key, or a pending revocation.
    pub needing_attention: usize,
    /// Why the connections could not be read, if they could not.
    pub problem: Option<String>,
}

impl AdminHealth {
    /// A health report.
    pub fn new(
        store_reachable: bool,
        lease_reachable: bool,
        needing_attention: usize,
        problem: Option<String>,
    ) -> Self {
        Self {
            healthy: store_reachable
                && lease_reachable
                && needing_attention == 0
                && problem.is_none(),
            store_reachable,
            lease_reachable,
            needing_attention,
            problem,
        }
    }
}

/// The data behind the operator view. The facade implements it over `PleoAuth`.
#[async_trait]
pub trait AdminView: Send + Sync + fmt::Debug + 'static {
    /// Every connection, and every flow waiting for consent.
    async fn connections(&self) -> Result<Vec<AdminConnection>>;

    /// Disconnects the connection of `tenant`; `None` if it has none.
    async fn disconnect(&self, tenant: &TenantId) -> Result<Option<AdminDisconnect>>;

    /// Whether the store and the lease backend answer (the facade asks `PleoAuth::health`);
    /// `None` (the default) leaves `GET /health` answering 404 and the page without it.
    async fn health(&self) -> Option<AdminHealth> {
        None
    }
}

/// A shared, type-erased operator view.
pub type DynAdminView = Arc<dyn AdminView>;

struct Admin {
    view: DynAdminView,
    authorization: DynConnectAuthorization,
}

/// The operator view as an axum router, for the users that `authorization`'s
/// [`admin`](ConnectAuthorization::admin) decision lets in (everyone else gets its `401`, `403`
/// or sign-in redirect):
///
/// - `GET /`: one HTML page with every connection (escaped; the connect pages' security
///   headers).
/// - `GET /connections`: `{"connections": [...]}`, each with `tenant`, `subject`, `company`,
///   `organisation`, `environment`, `method`, `status`, `last_refresh`, `next_expiry` (RFC
///   3339 or `null`), `reauthorization_needed` and `dangling_grants`.
/// - `GET /connections/{tenant}`: the same for one tenant; `404` if it has none.
/// - `GET /health`: `{"healthy", "store_reachable", "lease_reachable", "needing_attention",
///   "problem"}`, `200` when healthy and `503` when not (for a load balancer or an uptime
///   check), `404` when the view has no health.
/// - `POST /connections/{tenant}/disconnect`: disconnects the tenant; `{"tenant", "subject",
///   "method", "outcome"}`, or `404`. Refused (`403`) when a browser says the request comes
///   from another site (`Origin`, `Sec-Fetch-Site`).
///
/// ```no_run
/// # fn run(view: pleo_auth_http::DynAdminView, sessions: impl pleo_auth_http::ConnectAuthorization) {
/// let app: axum::Router = axum::Router::new().nest("/admin", pleo_auth_http::admin_router(view, sessions));
/// # }
/// ```
pub fn admin_router(view: DynAdminView, authorization: impl ConnectAuthorization) -> Router {
    let state = Arc::new(Admin {
        view,
        authorization: Arc::new(authorization),
    });
    Router::new()
        .route("/", get(page))
        .route("/connections", get(list))
        .route("/connections/{tenant}", get(one))
        .route("/connections/{tenant}/disconnect", post(disconnect))
        .route("/health", get(health))
        .with_state(state)
}

impl Admin {
    /// The admin decision on `request`: its parts when allowed, else the answer to send.
    async fn admit(&self, request: Request) -> std::result::Result<Parts, Response> {
        let (parts, _) = request.into_parts();
        match self.authorization.admin(&parts).await {
            Ok(()) => Ok(parts),
            Err(rejection) => Err(rejected(&rejection)),
        }
    }
}

#[derive(Serialize)]
struct Row<'a> {
    tenant: Option<&'a str>,
    subject: Option<String>,
    company: Option<String>,
    organisation: Option<String>,
    environment: &'a str,
    method: &'static str,
    status: &'a str,
    last_refresh: Option<String>,
    next_expiry: Option<String>,
    reauthorization_needed: bool,
    dangling_grants: usize,
}

impl<'a> Row<'a> {
    fn of(c: &'a AdminConnection) -> Self {
        Self {
            tenant: c.tenant.as_ref().map(TenantId::as_str),
            subject: c.subject.map(|s| s.to_string()),
            company: c.subject.and_then(|s| s.company()).map(|id| id.to_string()),
            organisation: c
                .subject
                .and_then(|s| s.organisation())
                .map(|id| id.to_string()),
            environment: c.environment.as_str(),
            method: c.method.as_str(),
            status: &c.status,
            last_refresh: c.last_refresh.map(rfc3339),
            next_expiry: c.next_expiry.map(rfc3339),
            reauthorization_needed: c.reauthorization_needed,
            dangling_grants: c.dangling_grants,
        }
    }
}

/// A timestamp as RFC 3339 in UTC, with milliseconds.
fn rfc3339(t: Timestamp) -> String {
    let nanos = i128::from(t.as_millis()) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn json(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut response = (status, bytes).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            hardened(response)
        }
        Err(_) => html(StatusCode::INTERNAL_SERVER_ERROR, pages::ADMIN_FAILED),
    }
}

fn not_found() -> Response {
    json(
        StatusCode::NOT_FOUND,
        &serde_json::json!({"error": "this tenant has no connection"}),
    )
}

fn failed(e: &crate::Error) -> Response {
    tracing::warn!(kind = %e.kind(), error = %e, "the operator view could not read the connections");
    json(
        StatusCode::INTERNAL_SERVER_ERROR,
        &serde_json::json!({"error": "the connections could not be read", "kind": e.kind().as_str()}),
    )
}

fn parse_tenant(raw: String) -> Option<TenantId> {
    TenantId::new(raw).ok()
}

async fn list(State(admin): State<Arc<Admin>>, request: Request) -> Response {
    if let Err(refused) = admin.admit(request).await {
        return refused;
    }
    match admin.view.connections().await {
        Ok(all) => json(
            StatusCode::OK,
            &serde_json::json!({"connections": all.iter().map(Row::of).collect::<Vec<_>>()}),
        ),
        Err(e) => failed(&e),
    }
}

async fn one(
    State(admin): State<Arc<Admin>>,
    Path(tenant): Path<String>,
    request: Request,
) -> Response {
    if let Err(refused) = admin.admit(request).await {
        return refused;
    }
    let Some(tenant) = parse_tenant(tenant) else {
        return not_found();
    };
    match admin.view.connections().await {
        Ok(all) => {
            let rows: Vec<Row<'_>> = all
                .iter()
                .filter(|c| c.tenant.as_ref() == Some(&tenant))
                .map(Row::of)
                .collect();
            if rows.is_empty() {
                not_found()
            } else {
                json(StatusCode::OK, &serde_json::json!({"connections": rows}))
            }
        }
        Err(e) => failed(&e),
    }
}

/// Whether a browser says the request comes from another site (a forged form post).
fn cross_site(parts: &Parts) -> bool {
    let fetch_site = parts
        .headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok());
    if matches!(fetch_site, Some("cross-site" | "same-site")) {
        return true;
    }
    let Some(origin) = parts.headers.get(header::ORIGIN) else {
        return false;
    };
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| url::Url::parse(o).ok())
        .and_then(|u| {
            u.host_str().map(|h| match u.port() {
                Some(port) => format!("{h}:{port}"),
                None => h.to_owned(),
            })
        });
    origin_host.as_deref() != host
}

async fn disconnect(
    State(admin): State<Arc<Admin>>,
    Path(tenant): Path<String>,
    request: Request,
) -> Response {
    let parts = match admin.admit(request).await {
        Ok(parts) => parts,
        Err(refused) => return refused,
    };
    if cross_site(&parts) {
        tracing::warn!("a disconnect request came from another site; refused");
        return html(StatusCode::FORBIDDEN, pages::FORBIDDEN);
    }
    let Some(tenant) = parse_tenant(tenant) else {
        return not_found();
    };
    match admin.view.disconnect(&tenant).await {
        Ok(Some(done)) => {
            tracing::info!(tenant = tenant.as_str(), subject = %done.subject, outcome = %done.outcome, "disconnected from the operator view");
            json(
                StatusCode::OK,
                &serde_json::json!({
                    "tenant": tenant.as_str(),
                    "subject": done.subject.to_string(),
                    "method": done.method.as_str(),
                    "outcome": done.outcome,
                }),
            )
        }
        Ok(None) => not_found(),
        Err(e) => {
            tracing::warn!(kind = %e.kind(), error = %e, "disconnecting from the operator view failed");
            json(
                StatusCode::BAD_GATEWAY,
                &serde_json::json!({"error": "the disconnect failed", "kind": e.kind().as_str()}),
            )
        }
    }
}

/// The HTML page (askama escapes every value).
#[derive(Template)]
#[template(path = "admin.html")]
struct Page<'a> {
    rows: Vec<Row<'a>>,
    connected: usize,
    reauthorization: usize,
    waiting: usize,
    dangling: usize,
    health: Option<AdminHealth>,
}

async fn health(State(admin): State<Arc<Admin>>, request: Request) -> Response {
    if let Err(refused) = admin.admit(request).await {
        return refused;
    }
    match admin.view.health().await {
        Some(health) if health.healthy => json(StatusCode::OK, &health),
        Some(health) => json(StatusCode::SERVICE_UNAVAILABLE, &health),
        None => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "this view has no health check"}),
        ),
    }
}

async fn page(State(admin): State<Arc<Admin>>, request: Request) -> Response {
    if let Err(refused) = admin.admit(request).await {
        return refused;
    }
    let all = match admin.view.connections().await {
        Ok(all) => all,
        Err(e) => {
            tracing::warn!(kind = %e.kind(), error = %e, "the operator view could not read the connections");
            return html(StatusCode::INTERNAL_SERVER_ERROR, pages::ADMIN_FAILED);
        }
    };
    let waiting = all
        .iter()
        .filter(|c| c.status == WAITING_FOR_CONSENT)
        .count();
    let page = Page {
        connected: all.len() - waiting,
        reauthorization: all.iter().filter(|c| c.reauthorization_needed).count(),
        waiting,
        dangling: all.iter().map(|c| c.dangling_grants).sum(),
        rows: all.iter().map(Row::of).collect(),
        health: admin.view.health().await,
    };
    match page.render() {
        Ok(body) => hardened((StatusCode::OK, Html(body)).into_response()),
        Err(_) => html(StatusCode::INTERNAL_SERVER_ERROR, pages::ADMIN_FAILED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_in_utc() {
        assert_eq!(
            rfc3339(Timestamp::from_millis(1_767_225_600_123)),
            "2026-01-01T00:00:00.123Z"
        );
        assert_eq!(rfc3339(Timestamp::from_millis(0)), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn the_page_escapes_what_it_shows() {
        let mut row = AdminConnection::new(
            EnvironmentName::new("sandbox").unwrap(),
            CredentialKind::OAuth,
            "active",
        );
        row.tenant = Some(TenantId::new("<script>alert(1)</script>").unwrap());
        let page = Page {
            rows: vec![Row::of(&row)],
            connected: 1,
            reauthorization: 0,
            waiting: 0,
            dangling: 0,
            health: Some(AdminHealth::new(
                true,
                false,
                0,
                Some("<b>lease down</b>".to_owned()),
            )),
        };
        let body = page.render().unwrap();
        assert!(!body.contains("<script>"), "{body}");
        assert!(!body.contains("<b>lease"), "{body}");
        assert!(body.contains("lease backend unreachable"), "{body}");
        assert!(
            body.contains("&#60;script&#62;") || body.contains("&lt;script&gt;"),
            "{body}"
        );
    }
}
