//! The one way tests, benchmarks and examples drive a sandbox as the outside world would: start
//! one that marks its secrets, walk the consent page like a person with a browser, and speak the
//! OAuth protocol by hand with the demo client. Enabled by the `harness` feature.
//!
//! ```no_run
//! use pleo_auth_sandbox::{harness, seed};
//!
//! # async fn run() {
//! let sandbox = harness::canary_sandbox().start().await.expect("the sandbox starts");
//! let http = harness::http();
//! let tokens = harness::tokens_for(&http, &sandbox, seed::ACME_DK, "users:read").await;
//! assert!(harness::json_str(&tokens, "access_token").starts_with(harness::CANARY));
//! # }
//! ```
//!
//! Every helper panics with a message naming what the sandbox did not do: they are for tests.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use reqwest::StatusCode;
use reqwest::header::LOCATION;
use serde_json::Value;
use sha2::{Digest, Sha256};
use url::Url;
use uuid::Uuid;

use crate::{Sandbox, SandboxBuilder, SandboxHandle, seed};

/// The canary every test sandbox puts at the start of each secret it mints.
pub const CANARY: &str = "CANARY-";
/// A loopback redirect URI on an arbitrary port (RFC 8252 §7.3: any port matches).
pub const REDIRECT: &str = "http://127.0.0.1:53682/callback";

/// A sandbox builder whose secrets all start with [`CANARY`], so a leak scan can find them.
pub fn canary_sandbox() -> SandboxBuilder {
    Sandbox::builder().secret_prefix(CANARY)
}

/// A reqwest client that never follows redirects: a browser whose every step a test sees.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("reqwest client")
}

/// A fresh PKCE pair (verifier, S256 challenge).
pub fn pkce() -> (String, String) {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).expect("randomness");
    let verifier = URL_SAFE_NO_PAD.encode(bytes);
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// `urn:pleo:company:<id>`.
pub fn company_urn(id: Uuid) -> String {
    format!("urn:pleo:company:{id}")
}

/// `Basic base64(user:password)`.
pub fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

/// The demo client's `client_secret_basic` header.
pub fn demo_basic() -> String {
    basic(seed::DEMO_CLIENT_ID, seed::DEMO_CLIENT_SECRET)
}

/// `Basic base64(key + ":")`, as Pleo documents for API keys.
pub fn key_auth(key: &str) -> String {
    basic(key, "")
}

/// `Bearer <token>`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A full URL under the sandbox.
pub fn url(sandbox: &SandboxHandle, path: &str) -> Url {
    sandbox.base_url().join(path).expect("path joins")
}

/// An authorization URL (at the current server shape's endpoint) for the demo client with the
/// standard parameters (redirect [`REDIRECT`], state `state-123`), plus `extra`.
pub fn authorize_url(
    sandbox: &SandboxHandle,
    challenge: &str,
    scope: &str,
    extra: &[(&str, &str)],
) -> Url {
    let mut u = authorize_url_to(sandbox, REDIRECT, "state-123", challenge, scope);
    u.query_pairs_mut().extend_pairs(extra);
    u
}

/// An authorization URL (at the current server shape's endpoint) for the demo client that comes
/// back to `redirect_uri` with `state`.
pub fn authorize_url_to(
    sandbox: &SandboxHandle,
    redirect_uri: &str,
    state: &str,
    challenge: &str,
    scope: &str,
) -> Url {
    let mut u = sandbox.authorize_endpoint();
    u.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", seed::DEMO_CLIENT_ID)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", scope)
        .append_pair("state", state)
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256");
    u
}

/// The value of the named `<input>` in a page, found by plain string search.
pub fn input_value(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).expect("input present") + marker.len();
    let end = html[start..].find('"').expect("attribute closes") + start;
    html[start..end].to_owned()
}

/// A query parameter of a URL.
pub fn query(url: &Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The `Location` of a 302 answer, parsed.
pub fn location(response: &reqwest::Response) -> Url {
    assert_eq!(response.status(), StatusCode::FOUND, "expected a redirect");
    let loc = response.headers()[LOCATION]
        .to_str()
        .expect("ASCII location");
    Url::parse(loc).expect("absolute location")
}

/// The redirect a sandbox that approves at once ([`SandboxBuilder::auto_approve`]) answers
/// `authorize_url` with: the way back to the client, with its code.
pub async fn follow_auto_approve(http: &reqwest::Client, authorize_url: &Url) -> Url {
    let response = http
        .get(authorize_url.clone())
        .send()
        .await
        .expect("the authorization endpoint answers");
    location(&response)
}

/// Shows the consent page of `authorize_url` and answers it as a person would: picks `subject`
/// (a company or organisation URN), clicks `decision` (`"allow"` or `"deny"`). The redirect back
/// to the client. Works for any client's authorization URL, at any endpoint path.
pub async fn answer_consent(
    http: &reqwest::Client,
    authorize_url: &Url,
    subject: &str,
    decision: &str,
) -> Url {
    let (_, consent_id) = consent_page(http, authorize_url.clone()).await;
    submit_consent(http, authorize_url, &consent_id, subject, decision).await
}

/// Submits the consent form of the page shown for `authorize_url` (it posts to the same
/// endpoint) and returns the redirect location.
async fn submit_consent(
    http: &reqwest::Client,
    authorize_url: &Url,
    consent_id: &str,
    subject: &str,
    decision: &str,
) -> Url {
    let mut form_action = authorize_url.clone();
    form_action.set_query(None);
    let response = http
        .post(form_action)
        .form(&[
            ("consent_id", consent_id),
            ("subject", subject),
            ("decision", decision),
        ])
        .send()
        .await
        .expect("the consent form is accepted");
    location(&response)
}

/// Loads the consent page of `auth_url` and returns (page HTML, consent ID).
pub async fn consent_page(http: &reqwest::Client, auth_url: Url) -> (String, String) {
    let response = http.get(auth_url).send().await.expect("consent page");
    assert_eq!(response.status(), StatusCode::OK);
    let html = response.text().await.expect("page body");
    let consent_id = input_value(&html, "consent_id");
    (html, consent_id)
}

/// Submits the consent form of `sandbox` for `subject` (a company) and returns the redirect
/// location.
pub async fn decide(
    http: &reqwest::Client,
    sandbox: &SandboxHandle,
    consent_id: &str,
    subject: Uuid,
    decision: &str,
) -> Url {
    let endpoint = sandbox.authorize_endpoint();
    submit_consent(http, &endpoint, consent_id, &company_urn(subject), decision).await
}

/// Runs the consent flow of the demo client for `company` and returns (code, verifier). A
/// sandbox that approves at once skips the page (and picks its own company).
pub async fn code_for(
    http: &reqwest::Client,
    sandbox: &SandboxHandle,
    company: Uuid,
    scope: &str,
) -> (String, String) {
    let (verifier, challenge) = pkce();
    let url = authorize_url(sandbox, &challenge, scope, &[]);
    let response = http
        .get(url.clone())
        .send()
        .await
        .expect("authorize answers");
    let back = if response.status() == StatusCode::FOUND {
        location(&response)
    } else {
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "the consent page is shown"
        );
        let html = response.text().await.expect("page body");
        let consent_id = input_value(&html, "consent_id");
        submit_consent(http, &url, &consent_id, &company_urn(company), "allow").await
    };
    (query(&back, "code").expect("code in redirect"), verifier)
}

/// Posts a token request (to the current server shape's endpoint) with the demo client's Basic
/// credentials.
pub async fn token_request(
    http: &reqwest::Client,
    sandbox: &SandboxHandle,
    form: &[(&str, &str)],
) -> reqwest::Response {
    http.post(sandbox.token_endpoint())
        .header("authorization", demo_basic())
        .form(form)
        .send()
        .await
        .expect("token request")
}

/// Exchanges a code issued for [`REDIRECT`] (expects success) and returns the token response.
pub async fn exchange(
    http: &reqwest::Client,
    sandbox: &SandboxHandle,
    code: &str,
    verifier: &str,
) -> Value {
    exchange_to(http, sandbox, code, REDIRECT, verifier).await
}

/// Exchanges a code issued for `redirect_uri` (expects success) and returns the token response.
pub async fn exchange_to(
    http: &reqwest::Client,
    sandbox: &SandboxHandle,
    code: &str,
    redirect_uri: &str,
    verifier: &str,
) -> Value {
    let response = token_request(
        http,
        sandbox,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("token JSON")
}

/// Runs the whole flow for `company` and returns the token response.
pub async fn tokens_for(
    http: &reqwest::Client,
    sandbox: &SandboxHandle,
    company: Uuid,
    scope: &str,
) -> Value {
    let (code, verifier) = code_for(http, sandbox, company, scope).await;
    exchange(http, sandbox, &code, &verifier).await
}

/// A string member of a JSON value.
pub fn json_str<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is a string in {value}"))
}

/// Refreshes with the demo client.
pub async fn refresh(
    http: &reqwest::Client,
    sandbox: &SandboxHandle,
    refresh_token: &str,
) -> reqwest::Response {
    token_request(
        http,
        sandbox,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ],
    )
    .await
}

/// Reads an OAuth error answer: (status, error code).
pub async fn oauth_error(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.expect("error JSON");
    assert!(
        body["error_description"].is_string(),
        "description in {body}"
    );
    (status, json_str(&body, "error").to_owned())
}

/// `GET` an API path with an `Authorization` header.
pub async fn api_get(
    http: &reqwest::Client,
    sandbox: &SandboxHandle,
    path: &str,
    auth: &str,
) -> reqwest::Response {
    http.get(url(sandbox, path))
        .header("authorization", auth)
        .send()
        .await
        .expect("API request")
}
