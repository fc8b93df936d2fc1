//! Shared helpers: sandboxes, stores, event capture and the canary checks.

use std::sync::{Arc, Mutex, PoisonError};

use pleo_auth_apikey::{ApiKeyEvent, ApiKeyEventSink, Error};
use pleo_auth_core::testing::{TraceCapture, assert_no_leak, environment_at, error_chain};
use pleo_auth_core::{
    CompanyId, Credential, DynSecretStore, Environment, MemoryStore, SecretStore, StoreKey,
};
use pleo_auth_sandbox::{Sandbox, SandboxHandle, seed};
use reqwest::header::{AUTHORIZATION, LOCATION};
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
    let sandbox = Sandbox::builder()
        .environment_name(name)
        .secret_prefix("CANARY-")
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

// A fixed PKCE pair: CHALLENGE is base64url(SHA-256(VERIFIER)).
const VERIFIER: &str = "dBjftJeZ4CVP-mJ0S5ZR-OHR-MzCbr9BklVe6rWYW2k";
const CHALLENGE: &str = "psstOhJLPFWMSqANqB3LqGcYpYjM1X1ZgXqOiWAyGt0";
const REDIRECT: &str = "http://127.0.0.1/callback";

/// A real OAuth access token for `company`, through the authorization code flow with
/// auto-approve.
pub async fn oauth_access_token(pleo: &Pleo, company: Uuid) -> String {
    pleo.sandbox
        .set_auto_approve(Some(company))
        .expect("seeded company");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut url = pleo.sandbox.auth_url().join("oauth/authorize").unwrap();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", seed::DEMO_CLIENT_ID)
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("scope", "users:read")
        .append_pair("state", "state-1")
        .append_pair("code_challenge", CHALLENGE)
        .append_pair("code_challenge_method", "S256");
    let response = http.get(url).send().await.expect("authorize answers");
    assert!(response.status().is_redirection(), "{}", response.status());
    let location = reqwest::Url::parse(response.headers()[LOCATION].to_str().unwrap()).unwrap();
    let code = location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .expect("a code")
        .1
        .into_owned();
    let token: serde_json::Value = http
        .post(pleo.sandbox.auth_url().join("oauth/token").unwrap())
        .basic_auth(seed::DEMO_CLIENT_ID, Some(seed::DEMO_CLIENT_SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .expect("token endpoint answers")
        .json()
        .await
        .expect("token JSON");
    match token["access_token"].as_str() {
        Some(access_token) => access_token.to_owned(),
        None => panic!(
            "no access token: {} {}",
            token["error"], token["error_description"]
        ),
    }
}
