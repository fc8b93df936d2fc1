//! Helpers of the event tests: a sandbox with canary secrets, the demo client, the consent page.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use pleo_auth::oauth::{AuthorizeOptions, OAuthConfig, RefreshPolicy};
use pleo_auth::sandbox::{SandboxHandle, harness, seed};
use pleo_auth::{
    ClientSecret, CompanyId, DynSecretStore, Environment, ManualClock, PleoAuth, PleoAuthBuilder,
    Subject,
};

/// Every secret the sandbox issues starts with `CANARY`; `browser` follows no redirects.
#[allow(unused_imports)] // not every test that includes this module checks for the canary
pub use pleo_auth::sandbox::harness::{CANARY, http as browser};
/// The access-token lifetime of the sandbox.
pub const ACCESS_TTL: Duration = Duration::from_secs(15 * 60);

pub fn company(id: uuid::Uuid) -> Subject {
    Subject::Company(CompanyId::from_uuid(id))
}

/// Runs the consent page for `options`, choosing `chosen`; the callback URL.
pub async fn consent(auth: &PleoAuth, options: AuthorizeOptions, chosen: Subject) -> String {
    let request = auth.oauth().unwrap().authorize(options).await.unwrap();
    harness::answer_consent(&browser(), &request.url, &chosen.to_string(), "allow")
        .await
        .into()
}

pub async fn start_sandbox() -> (SandboxHandle, Environment) {
    let sandbox = harness::canary_sandbox()
        .access_token_ttl(ACCESS_TTL)
        .start()
        .await
        .unwrap();
    let base = sandbox.base_url();
    let environment = Environment::custom("sandbox", base.as_str(), base.as_str()).unwrap();
    (sandbox, environment)
}

pub fn oauth_config(environment: &Environment) -> OAuthConfig {
    OAuthConfig::builder()
        .environment(environment.clone())
        .client_id(seed::DEMO_CLIENT_ID)
        .client_secret(ClientSecret::new(seed::DEMO_CLIENT_SECRET))
        .redirect_uri("http://127.0.0.1:1/callback")
        .scopes("users:read")
        .build()
        .unwrap()
}

/// A `PleoAuth` builder on `environment` and `clock` with the demo client and
/// [`fast_policy`], over `store`.
pub fn auth_builder(
    environment: &Environment,
    clock: &ManualClock,
    store: DynSecretStore,
) -> PleoAuthBuilder {
    PleoAuth::builder()
        .environment(environment.clone())
        .store(store)
        .clock(Arc::new(clock.clone()))
        .oauth(oauth_config(environment))
        .refresh_policy(fast_policy())
}

pub fn fast_policy() -> RefreshPolicy {
    RefreshPolicy {
        refresh_jitter: Duration::ZERO,
        max_attempts: 1,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        persist_initial_backoff: Duration::from_millis(10),
        persist_max_backoff: Duration::from_millis(50),
        ..RefreshPolicy::default()
    }
}

pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
