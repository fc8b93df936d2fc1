//! Shared test harness: an in-process sandbox, a manual clock advanced together with the
//! sandbox's, and OAuth clients ("replicas") sharing one store and one lease.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pleo_auth_core::testing::{FaultyStore, environment_at};
use pleo_auth_core::{
    AuthorizationHeader, ClientSecret, DynLease, DynSecretStore, Environment, InProcessLease,
    ManualClock, OAuthGrant, RecordStoreExt, Subject, layout,
};
use pleo_auth_oauth::{
    AuthorizeOptions, Connection, EventSink, OAuthClient, OAuthConfig, OAuthEvent, RefreshPolicy,
    TokenManager, TracingEvents,
};
use pleo_auth_sandbox::{ClientRegistration, SandboxHandle, harness, seed};
use url::Url;

/// Every secret in these tests contains this marker.
pub const CANARY: &str = "CANARY";
pub const CLIENT_ID: &str = "oauth-tests";
pub const CLIENT_SECRET: &str = "CANARY-client-secret";
pub const REDIRECT_URI: &str = "http://127.0.0.1/callback";
/// The sandbox's access-token lifetime.
pub const ACCESS_TTL: Duration = Duration::from_secs(15 * 60);

pub fn dk() -> Subject {
    format!("urn:pleo:company:{}", seed::ACME_DK)
        .parse()
        .unwrap()
}

pub fn se() -> Subject {
    format!("urn:pleo:company:{}", seed::ACME_SE)
        .parse()
        .unwrap()
}

pub fn globex() -> Subject {
    format!("urn:pleo:company:{}", seed::GLOBEX)
        .parse()
        .unwrap()
}

/// Records every event (and logs it like the default sink).
#[derive(Debug, Default)]
pub struct Recorder(Mutex<Vec<OAuthEvent>>);

impl EventSink for Recorder {
    fn emit(&self, event: &OAuthEvent) {
        TracingEvents.emit(event);
        self.0.lock().unwrap().push(event.clone());
    }
}

impl Recorder {
    pub fn events(&self) -> Vec<OAuthEvent> {
        self.0.lock().unwrap().clone()
    }

    pub fn count(&self, f: impl Fn(&OAuthEvent) -> bool) -> usize {
        self.events().iter().filter(|e| f(e)).count()
    }
}

/// Short backoffs so tests do not wait; no jitter so refresh times are predictable.
pub fn test_policy() -> RefreshPolicy {
    RefreshPolicy {
        refresh_jitter: Duration::ZERO,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        persist_initial_backoff: Duration::from_millis(20),
        persist_max_backoff: Duration::from_millis(100),
        ..RefreshPolicy::default()
    }
}

pub struct Harness {
    pub sandbox: SandboxHandle,
    pub clock: ManualClock,
    /// The store of every replica; its OAuth grant writes fail on command.
    pub flaky: Arc<FaultyStore>,
    pub store: DynSecretStore,
    pub lease: DynLease,
    pub environment: Environment,
    pub events: Arc<Recorder>,
    pub client: OAuthClient,
    pub manager: TokenManager,
    pub http: reqwest::Client,
}

pub struct Options {
    pub auto_approve: Option<Subject>,
    pub policy: RefreshPolicy,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            auto_approve: Some(dk()),
            policy: test_policy(),
        }
    }
}

fn subject_uuid(subject: &Subject) -> uuid::Uuid {
    match subject {
        Subject::Company(c) => *c.as_uuid(),
        Subject::Organisation(o) => *o.as_uuid(),
    }
}

pub fn config(environment: &Environment, secret: &str) -> OAuthConfig {
    OAuthConfig::builder()
        .environment(environment.clone())
        .client_id(CLIENT_ID)
        .client_secret(ClientSecret::new(secret))
        .redirect_uri(REDIRECT_URI)
        .scopes("users:read export-jobs:read")
        .build()
        .expect("valid config")
}

impl Harness {
    pub async fn start() -> Self {
        Self::with(Options::default()).await
    }

    /// A harness whose sandbox approves `subject` at once, whatever the flow expects.
    pub async fn approving(subject: Subject) -> Self {
        Self::with(Options {
            auto_approve: Some(subject),
            ..Options::default()
        })
        .await
    }

    pub async fn with(options: Options) -> Self {
        let sandbox = harness::canary_sandbox()
            .client(ClientRegistration::new(
                CLIENT_ID,
                CLIENT_SECRET,
                REDIRECT_URI,
                &["users:read", "export-jobs:read", "vendors:read"],
            ))
            .auto_approve(options.auto_approve.as_ref().map(subject_uuid))
            .start()
            .await
            .expect("sandbox starts");
        let base = sandbox.base_url();
        let environment = environment_at("sandbox", &base);
        let clock = ManualClock::new();
        let flaky =
            Arc::new(FaultyStore::default().writes_failing_only_under("pleo-auth/v1/oauth/"));
        let store: DynSecretStore = flaky.clone();
        let lease: DynLease = Arc::new(InProcessLease::with_clock(Arc::new(clock.clone())));
        let events = Arc::new(Recorder::default());
        let client = OAuthClient::builder(config(&environment, CLIENT_SECRET), store.clone())
            .clock(Arc::new(clock.clone()))
            .lease(lease.clone())
            .policy(options.policy)
            .events(events.clone())
            .build()
            .expect("client builds");
        let manager = client.token_manager();
        let http = harness::http();
        Self {
            sandbox,
            clock,
            flaky,
            store,
            lease,
            environment,
            events,
            client,
            manager,
            http,
        }
    }

    /// Another replica: its own cache, the same store, lease and clock.
    pub fn replica(&self) -> (OAuthClient, TokenManager) {
        self.replica_with(CLIENT_SECRET, test_policy())
    }

    pub fn replica_with(&self, secret: &str, policy: RefreshPolicy) -> (OAuthClient, TokenManager) {
        let client = OAuthClient::builder(config(&self.environment, secret), self.store.clone())
            .clock(Arc::new(self.clock.clone()))
            .lease(self.lease.clone())
            .policy(policy)
            .events(self.events.clone())
            .build()
            .expect("client builds");
        let manager = client.token_manager();
        (client, manager)
    }

    /// A client with `config` (another authorization server shape, say) on this harness's
    /// store, lease, clock and event recorder.
    pub fn client_with(&self, config: OAuthConfig) -> (OAuthClient, TokenManager) {
        let client = OAuthClient::builder(config, self.store.clone())
            .clock(Arc::new(self.clock.clone()))
            .lease(self.lease.clone())
            .policy(test_policy())
            .events(self.events.clone())
            .build()
            .expect("client builds");
        let manager = client.token_manager();
        (client, manager)
    }

    /// Moves our clock and the sandbox's together.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
        self.sandbox.advance_clock(by);
    }

    /// Follows the authorization URL (auto-approve) and returns the callback URL.
    pub async fn consent(&self, url: &Url) -> String {
        let location = harness::follow_auto_approve(&self.http, url).await;
        assert!(location.as_str().starts_with(REDIRECT_URI), "{location}");
        location.into()
    }

    /// A connect flow of `client` that expects Acme Denmark without telling Pleo (no subject
    /// hint), so the sandbox connects whatever it approves; the error `complete` answers.
    pub async fn connect_expecting_dk(&self, client: &OAuthClient) -> pleo_auth_oauth::Error {
        let request = client
            .authorize(
                AuthorizeOptions::new()
                    .expect_subject(dk())
                    .subject_hint(None),
            )
            .await
            .expect("authorize");
        let callback = self.consent(&request.url).await;
        client
            .complete(&callback)
            .await
            .expect_err("another company was connected")
    }

    /// The whole connect flow.
    pub async fn connect(&self, options: AuthorizeOptions) -> Connection {
        let request = self.client.authorize(options).await.expect("authorize");
        let callback = self.consent(&request.url).await;
        self.client.complete(&callback).await.expect("complete")
    }

    pub async fn stored_grant(&self, subject: &Subject) -> Option<OAuthGrant> {
        let key = layout::oauth_grant(&pleo_auth_core::CredentialKey::new(
            self.environment.name().clone(),
            CLIENT_ID.parse().unwrap(),
            *subject,
        ));
        self.store
            .get_record::<OAuthGrant>(&key)
            .await
            .unwrap()
            .map(|(g, _)| g)
    }

    /// Calls `GET /v1/introspect` with a bearer header; the HTTP status.
    pub async fn api_status(&self, header: &AuthorizationHeader) -> u16 {
        let url = self.environment.api_url("/v1/introspect").unwrap();
        self.http
            .get(url)
            .header("authorization", header.expose_secret())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

/// Polls `f` every 10 ms for up to 5 s.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}
