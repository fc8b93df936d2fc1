//! Shared helpers: sandboxes, stores, event capture and the canary checks.

use std::sync::{Arc, Mutex, PoisonError};

use pleo_auth_apikey::{ApiKeyEvent, ApiKeyEventSink, Error};
use pleo_auth_core::testing::{TraceCapture, assert_no_leak, environment_at, error_chain};
use pleo_auth_core::{
    CompanyId, Credential, DynSecretStore, Environment, MemoryStore, SecretStore, StoreKey,
};
use pleo_auth_sandbox::{SandboxHandle, harness, seed};
use reqwest::header::AUTHORIZATION;
use uuid::Uuid;

/// The marker in every secret the sandboxes mint.
pub const CANARY: &str = "CANARY";

/// Captures every log line of every target at TRACE, for the whole test binary.
fn init_logs() {
    TraceCapture::install();
}

/// Fails if any captured log line so far contains the canary; returns how much was captured.
pub fn assert_logs_clean() -> usize {
    TraceCapture::install().assert_absent(CANARY)
}

/// Fails if the error, its core conversion or any cause shows the canary; returns the
/// error for further checks.
pub fn assert_clean(err: Error) -> Error {
    assert_no_leak("an error", &error_chain(&err), &[CANARY]);
    err
}

/// A running sandbox and the environment that points at it.
pub struct Pleo {
    pub sandbox: SandboxHandle,
    pub env: Environment,
}

/// A sandbox named `name` (also the environment name) whose secrets start with `CANARY-`.
pub async fn sandbox_named(name: &str) -> Pleo {
    init_logs();
    let sandbox = harness::canary_sandbox()
        .environment_name(name)
        .start()
        .await
        .expect("sandbox starts");
    let env = environment_at(name, sandbox.base_url());
    Pleo { sandbox, env }
}

/// The default sandbox, environment `sandbox`.
pub async fn sandbox() -> Pleo {
    sandbox_named("sandbox").await
}

pub fn company(id: Uuid) -> CompanyId {
    CompanyId::from_uuid(id)
}

pub fn dk() -> CompanyId {
    company(seed::ACME_DK)
}

pub fn se() -> CompanyId {
    company(seed::ACME_SE)
}

pub fn memory_store() -> DynSecretStore {
    Arc::new(MemoryStore::new())
}

/// Every key in the store.
pub async fn stored_keys(store: &DynSecretStore) -> Vec<StoreKey> {
    store
        .list(&StoreKey::parse("pleo-auth").unwrap())
        .await
        .expect("list")
}

/// Collects emitted events.
#[derive(Clone, Default)]
pub struct Events(Arc<Mutex<Vec<ApiKeyEvent>>>);

impl Events {
    pub fn sink(&self) -> impl ApiKeyEventSink {
        let events = Arc::clone(&self.0);
        move |event: &ApiKeyEvent| {
            events
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(event.clone());
        }
    }

    pub fn all(&self) -> Vec<ApiKeyEvent> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// `GET {api}{path}[?company_id=]` with the credential's header; returns the status and body.
pub async fn api_get(
    pleo: &Pleo,
    credential: &Credential,
    path: &str,
    company: Option<CompanyId>,
) -> (u16, serde_json::Value) {
    let mut url = pleo.env.api_url(path).expect("api path");
    if let Some(company) = company {
        url.query_pairs_mut()
            .append_pair("company_id", &company.to_string());
    }
    let response = reqwest::Client::new()
        .get(url)
        .header(
            AUTHORIZATION,
            pleo_auth_http::api::sensitive_header(&credential.header).expect("header"),
        )
        .send()
        .await
        .expect("sandbox answers");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// The External API requests the sandbox saw for `path`.
pub fn requests_to(pleo: &Pleo, method: &str, path: &str) -> usize {
    pleo.sandbox
        .request_log()
        .iter()
        .filter(|r| r.method == method && r.path == path)
        .count()
}

/// A real OAuth access token of the demo client for `company`, through the authorization code
/// flow with auto-approve.
pub async fn oauth_access_token(pleo: &Pleo, company: Uuid) -> String {
    pleo.sandbox
        .set_auto_approve(Some(company))
        .expect("seeded company");
    let tokens = harness::tokens_for(&harness::http(), &pleo.sandbox, company, "users:read").await;
    harness::json_str(&tokens, "access_token").to_owned()
}
