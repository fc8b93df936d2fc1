//! Test helpers: a sandbox, small credential providers, and the two client variants.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use pleo_auth_core::testing::{assert_no_leak, environment_at};
use pleo_auth_core::{
    AccessToken, ApiKey, AuthorizationHeader, CompanyId, Credential, CredentialId, CredentialKind,
    CredentialProvider, DynCredentialProvider, Environment, EnvironmentName, ErrorKind,
    OrganisationId, ScopeSet, Subject,
};
use pleo_auth_http::{
    Error, PleoClient, RequestOptions, RetryPolicy, Target, error_for_status, transport,
};
use pleo_auth_sandbox::{SandboxHandle, harness, seed};
use reqwest::Method;
use serde_json::Value;

/// The marker every sandbox secret starts with; it must never appear in errors or logs.
pub const CANARY: &str = "CANARY";

pub const SCOPES: &str = "users:read export-jobs:read export-jobs:write vendors:read";

pub fn dk() -> CompanyId {
    CompanyId::from_uuid(seed::ACME_DK)
}
pub fn se() -> CompanyId {
    CompanyId::from_uuid(seed::ACME_SE)
}
pub fn globex() -> CompanyId {
    CompanyId::from_uuid(seed::GLOBEX)
}
pub fn org() -> OrganisationId {
    OrganisationId::from_uuid(seed::ACME_ORG)
}

pub async fn sandbox() -> SandboxHandle {
    harness::canary_sandbox()
        .start()
        .await
        .expect("sandbox starts")
}

pub fn environment(sandbox: &SandboxHandle) -> Environment {
    environment_at(sandbox.environment_name(), sandbox.base_url())
}

pub fn env_name(sandbox: &SandboxHandle) -> EnvironmentName {
    EnvironmentName::new(sandbox.environment_name()).unwrap()
}

/// Asserts that no formatting of the error shows a secret.
pub fn assert_clean(err: &Error) {
    let mut shown = format!("{err} {err:?}");
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        shown.push_str(&format!(" {s} {s:?}"));
        source = s.source();
    }
    assert_no_leak("an error", &shown, &[CANARY]);
    assert!(
        !shown.contains("company_id="),
        "query string in error: {shown}"
    );
}

// ---------------------------------------------------------------------------------------------
// Providers

/// Serves API keys by subject; a rejected key needs replacement.
#[derive(Debug)]
pub struct KeyProvider {
    environment: EnvironmentName,
    keys: Mutex<HashMap<Subject, (CredentialId, ApiKey, bool)>>,
    pub rejections: AtomicU64,
}

impl KeyProvider {
    pub fn new(environment: EnvironmentName) -> Self {
        Self {
            environment,
            keys: Mutex::new(HashMap::new()),
            rejections: AtomicU64::new(0),
        }
    }

    pub fn with_key(self, subject: impl Into<Subject>, key: String) -> Self {
        self.keys.lock().unwrap().insert(
            subject.into(),
            (CredentialId::next(), ApiKey::new(key), false),
        );
        self
    }
}

#[async_trait]
impl CredentialProvider for KeyProvider {
    fn environment(&self) -> &EnvironmentName {
        &self.environment
    }

    async fn credential_for(&self, subject: &Subject) -> pleo_auth_core::Result<Arc<Credential>> {
        let keys = self.keys.lock().unwrap();
        let Some((id, key, rejected)) = keys.get(subject) else {
            return Err(pleo_auth_core::Error::new(
                ErrorKind::NotFound,
                "no API key for this subject",
            ));
        };
        if *rejected {
            return Err(pleo_auth_core::Error::new(
                ErrorKind::NeedsReplacement,
                "the API key was rejected",
            ));
        }
        Ok(Arc::new(Credential {
            id: id.clone(),
            header: AuthorizationHeader::basic_api_key(key),
            subject: *subject,
            environment: self.environment.clone(),
            scopes: ScopeSet::new(),
            kind: CredentialKind::StandaloneApiKey,
        }))
    }

    async fn rejected(&self, subject: &Subject, id: &CredentialId) -> pleo_auth_core::Result<bool> {
        self.rejections.fetch_add(1, Ordering::SeqCst);
        let mut keys = self.keys.lock().unwrap();
        if let Some((current, _, rejected)) = keys.get_mut(subject)
            && current == id
        {
            *rejected = true;
        }
        Err(pleo_auth_core::Error::new(
            ErrorKind::NeedsReplacement,
            "the API key was rejected; a new one is needed",
        ))
    }
}

/// A Bearer token from the sandbox's token endpoint, refreshed (once per rejected value) on
/// `rejected`.
#[derive(Debug)]
pub struct OAuthProvider {
    environment: EnvironmentName,
    subject: Subject,
    token_endpoint: url::Url,
    http: reqwest::Client,
    state: tokio::sync::Mutex<TokenState>,
    pub refreshes: AtomicU64,
    pub rejections: AtomicU64,
}

#[derive(Debug)]
struct TokenState {
    id: CredentialId,
    access: AccessToken,
    refresh: pleo_auth_core::RefreshToken,
}

impl OAuthProvider {
    /// Runs an authorization-code flow (auto-approved) for `subject` and keeps the tokens.
    pub async fn connect(sandbox: &SandboxHandle, subject: Subject) -> Self {
        let (access, refresh) = oauth_tokens(sandbox, subject).await;
        Self {
            environment: env_name(sandbox),
            subject,
            token_endpoint: sandbox.auth_url().join("oauth/token").unwrap(),
            http: harness::http(),
            state: tokio::sync::Mutex::new(TokenState {
                id: CredentialId::next(),
                access: AccessToken::new(access),
                refresh: pleo_auth_core::RefreshToken::new(refresh),
            }),
            refreshes: AtomicU64::new(0),
            rejections: AtomicU64::new(0),
        }
    }

    /// The current access token (for revoking it in the sandbox).
    pub async fn access_token(&self) -> String {
        self.state.lock().await.access.expose_secret().to_owned()
    }
}

#[async_trait]
impl CredentialProvider for OAuthProvider {
    fn environment(&self) -> &EnvironmentName {
        &self.environment
    }

    async fn credential_for(&self, subject: &Subject) -> pleo_auth_core::Result<Arc<Credential>> {
        if *subject != self.subject {
            return Err(pleo_auth_core::Error::new(
                ErrorKind::NotFound,
                "no grant for this subject",
            ));
        }
        let state = self.state.lock().await;
        Ok(Arc::new(Credential {
            id: state.id.clone(),
            header: AuthorizationHeader::bearer(&state.access),
            subject: self.subject,
            environment: self.environment.clone(),
            scopes: SCOPES.parse().unwrap(),
            kind: CredentialKind::OAuth,
        }))
    }

    async fn rejected(
        &self,
        _subject: &Subject,
        id: &CredentialId,
    ) -> pleo_auth_core::Result<bool> {
        self.rejections.fetch_add(1, Ordering::SeqCst);
        let mut state = self.state.lock().await;
        if state.id != *id {
            return Ok(true);
        }
        let response = self
            .http
            .post(self.token_endpoint.clone())
            .basic_auth(seed::DEMO_CLIENT_ID, Some(seed::DEMO_CLIENT_SECRET))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", state.refresh.expose_secret()),
            ])
            .send()
            .await
            .map_err(|_| pleo_auth_core::Error::unavailable("token endpoint unreachable"))?;
        if !response.status().is_success() {
            return Err(pleo_auth_core::Error::new(
                ErrorKind::NeedsReauthorization,
                "the refresh was refused",
            ));
        }
        let body: Value = response
            .json()
            .await
            .map_err(|_| pleo_auth_core::Error::corrupt("token response"))?;
        state.access = AccessToken::new(body["access_token"].as_str().unwrap().to_owned());
        state.refresh =
            pleo_auth_core::RefreshToken::new(body["refresh_token"].as_str().unwrap().to_owned());
        state.id = CredentialId::next();
        self.refreshes.fetch_add(1, Ordering::SeqCst);
        Ok(true)
    }
}

/// Returns one fixed credential for every subject, whatever is asked: a provider that must not
/// be trusted blindly.
#[derive(Debug)]
pub struct FixedProvider {
    pub environment: EnvironmentName,
    pub credential: Credential,
    pub rejections: AtomicU64,
}

impl FixedProvider {
    pub fn new(environment: EnvironmentName, credential: Credential) -> Self {
        Self {
            environment,
            credential,
            rejections: AtomicU64::new(0),
        }
    }
}

#[async_trait]
impl CredentialProvider for FixedProvider {
    fn environment(&self) -> &EnvironmentName {
        &self.environment
    }

    async fn credential_for(&self, _subject: &Subject) -> pleo_auth_core::Result<Arc<Credential>> {
        Ok(Arc::new(self.credential.clone()))
    }

    async fn rejected(
        &self,
        _subject: &Subject,
        _id: &CredentialId,
    ) -> pleo_auth_core::Result<bool> {
        self.rejections.fetch_add(1, Ordering::SeqCst);
        Ok(true)
    }
}

pub fn key_credential(
    key: &str,
    subject: impl Into<Subject>,
    environment: EnvironmentName,
) -> Credential {
    Credential {
        id: CredentialId::next(),
        header: AuthorizationHeader::basic_api_key(&ApiKey::new(key)),
        subject: subject.into(),
        environment,
        scopes: ScopeSet::new(),
        kind: CredentialKind::StandaloneApiKey,
    }
}

// ---------------------------------------------------------------------------------------------
// OAuth by hand against the sandbox (the sandbox's harness)

/// A full auto-approved authorization-code flow of the demo client for `subject`: (access
/// token, refresh token).
pub async fn oauth_tokens(sandbox: &SandboxHandle, subject: Subject) -> (String, String) {
    let uuid = match subject {
        Subject::Company(c) => *c.as_uuid(),
        Subject::Organisation(o) => *o.as_uuid(),
    };
    sandbox.set_auto_approve(Some(uuid)).unwrap();
    let tokens = harness::tokens_for(&harness::http(), sandbox, uuid, SCOPES).await;
    (
        harness::json_str(&tokens, "access_token").to_owned(),
        harness::json_str(&tokens, "refresh_token").to_owned(),
    )
}

// ---------------------------------------------------------------------------------------------
// The two variants of the same logic

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Client,
    Middleware,
}

pub const VARIANTS: [Variant; 2] = [Variant::Client, Variant::Middleware];

/// A plain client or a middleware stack over the same provider, used the same way.
#[derive(Clone)]
pub enum Api {
    Client(PleoClient),
    Middleware(Box<(reqwest_middleware::ClientWithMiddleware, Environment)>),
}

pub fn api(variant: Variant, client: PleoClient) -> Api {
    match variant {
        Variant::Client => Api::Client(client),
        Variant::Middleware => {
            let http = transport::http_client(&transport::TransportConfig::default()).unwrap();
            let stack = reqwest_middleware::ClientBuilder::new(http)
                .with(client.middleware())
                .build();
            Api::Middleware(Box::new((stack, client.environment().clone())))
        }
    }
}

pub fn build(sandbox: &SandboxHandle, provider: DynCredentialProvider) -> PleoClient {
    PleoClient::builder(environment(sandbox), provider)
        .retry_policy(
            RetryPolicy::default().with_base_backoff(std::time::Duration::from_millis(20)),
        )
        .build()
        .unwrap()
}

impl Api {
    pub async fn get(&self, path: &str, target: Target) -> Result<Value, Error> {
        self.send(Method::GET, path, target, RequestOptions::new(), None)
            .await
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        target: Target,
        options: RequestOptions,
        body: Option<Value>,
    ) -> Result<Value, Error> {
        match self {
            Api::Client(client) => {
                let mut request = client.request(method, path).target(target).options(options);
                if let Some(body) = body {
                    request = request.json_body(&body);
                }
                request.json().await
            }
            Api::Middleware(boxed) => {
                let (stack, environment) = &**boxed;
                let mut request = stack
                    .request(method, environment.api_url(path)?)
                    .with_extension(target)
                    .with_extension(options);
                if let Some(body) = body {
                    request = request
                        .header("content-type", "application/json")
                        .body(serde_json::to_vec(&body).unwrap());
                }
                let response = error_for_status(request.send().await?).await?;
                let bytes = response.bytes().await.map_err(|e| {
                    Error::new(ErrorKind::Unexpected, "reading the body failed")
                        .with_source(e.without_url())
                })?;
                serde_json::from_slice(&bytes)
                    .map_err(|_| Error::new(ErrorKind::Unexpected, "the body is not JSON"))
            }
        }
    }
}

/// The number of API requests the sandbox has seen.
pub fn api_requests(sandbox: &SandboxHandle) -> usize {
    sandbox.request_log().len()
}

/// A loopback listener that counts connections and bytes it receives (and answers nothing).
pub struct Trap {
    pub addr: std::net::SocketAddr,
    pub connections: Arc<AtomicU64>,
    pub bytes: Arc<AtomicU64>,
}

impl Trap {
    pub async fn start() -> Self {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let (c, b) = (connections.clone(), bytes.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let b = b.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        b.fetch_add(n as u64, Ordering::SeqCst);
                    }
                });
            }
        });
        Self {
            addr,
            connections,
            bytes,
        }
    }

    pub fn received_nothing(&self) -> bool {
        self.connections.load(Ordering::SeqCst) == 0 && self.bytes.load(Ordering::SeqCst) == 0
    }
}
