//! Shared harness of the reliability tests (`tests/reliability_*.rs`): an in-process sandbox
//! over real loopback HTTP, OAuth clients ("replicas") that share a store and a lease, a store
//! wrapper that fails on command, a Redis server of the test's own, and process metrics.
//!
//! Every secret the harness makes carries [`CANARY`]: the sandbox prefixes its tokens, codes and
//! keys with it, and the client secrets contain it.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pleo_auth_core::{
    ClientSecret, CompanyId, CredentialKey, DynClock, DynLease, DynSecretStore, Environment,
    InProcessLease, ManualClock, OAuthGrant, RecordStoreExt, Sharing, StoreKey, Subject, Version,
    layout,
};
use pleo_auth_http::{PleoClient, RetryPolicy};
use pleo_auth_oauth::{
    AuthorizeOptions, Connection, EventSink, OAuthClient, OAuthConfig, OAuthEvent, RefreshPolicy,
    TokenManager,
};
use pleo_auth_sandbox::{ClientRegistration, Company, SandboxHandle, harness};
use uuid::Uuid;

/// The one fault-injecting store of the tests (not every test binary uses it).
#[allow(unused_imports)]
pub use pleo_auth_core::testing::FaultyStore;

/// Every secret in the reliability tests contains this marker.
pub const CANARY: &str = "CANARY";
/// The redirect URI every test client registers.
pub const REDIRECT_URI: &str = "http://127.0.0.1/callback";
/// The scopes every test client asks for.
pub const SCOPES: &str = "users:read export-jobs:read";
/// The sandbox's default access-token lifetime.
pub const ACCESS_TTL: Duration = Duration::from_secs(15 * 60);

/// The id of test client number `i`.
pub fn client_id(i: usize) -> String {
    format!("reliability-{i}")
}

/// The secret of test client number `i` (carries the canary).
pub fn client_secret(i: usize) -> String {
    format!("{CANARY}-client-secret-{i}")
}

/// A deterministic company id for company number `i` of the test population.
pub fn company_uuid(i: usize) -> Uuid {
    Uuid::from_u128(0x0e000000_0000_4000_8000_000000000000 + i as u128)
}

/// The subject of a company.
pub fn company(uuid: Uuid) -> Subject {
    Subject::Company(CompanyId::from_uuid(uuid))
}

/// The seed company most tests connect.
pub fn acme() -> Subject {
    company(pleo_auth_sandbox::seed::ACME_DK)
}

/// How to start the sandbox.
pub struct SandboxSpec {
    /// OAuth clients to register (`reliability-0` ...).
    pub clients: usize,
    /// Extra companies ([`company_uuid`] 0 ...).
    pub companies: usize,
    /// The access-token lifetime.
    pub access_ttl: Duration,
}

impl Default for SandboxSpec {
    fn default() -> Self {
        Self {
            clients: 1,
            companies: 0,
            access_ttl: ACCESS_TTL,
        }
    }
}

/// Starts the sandbox (strict rotation, reuse revokes the family) on a loopback port.
pub async fn start_sandbox(spec: &SandboxSpec) -> SandboxHandle {
    let mut builder = harness::canary_sandbox().access_token_ttl(spec.access_ttl);
    for i in 0..spec.clients {
        builder = builder.client(ClientRegistration::new(
            &client_id(i),
            &client_secret(i),
            REDIRECT_URI,
            &["users:read", "export-jobs:read"],
        ));
    }
    for i in 0..spec.companies {
        builder = builder.company(Company::new(company_uuid(i), format!("Company {i}")));
    }
    builder.start().await.expect("the sandbox starts")
}

/// The environment of a sandbox reached at `base` (the sandbox itself or a proxy before it).
pub fn environment_at(base: &str) -> Environment {
    pleo_auth_core::testing::environment_at("sandbox", base)
}

/// The base URL of a listener address.
pub fn base_url(addr: SocketAddr) -> String {
    format!("http://{addr}/")
}

/// The configuration of test client number `i`.
pub fn config(environment: &Environment, i: usize) -> OAuthConfig {
    OAuthConfig::builder()
        .environment(environment.clone())
        .client_id(client_id(i))
        .client_secret(ClientSecret::new(client_secret(i)))
        .redirect_uri(REDIRECT_URI)
        .scopes(SCOPES)
        .build()
        .expect("a valid configuration")
}

/// Short backoffs and no jitter, so tests run fast and refresh times are predictable.
pub fn fast_policy() -> RefreshPolicy {
    RefreshPolicy {
        refresh_jitter: Duration::ZERO,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        persist_initial_backoff: Duration::from_millis(10),
        persist_max_backoff: Duration::from_millis(50),
        ..RefreshPolicy::default()
    }
}

/// One replica: its own cache and HTTP pool over a shared store, lease and clock.
pub struct ReplicaSpec<'a> {
    pub environment: &'a Environment,
    pub client: usize,
    pub store: DynSecretStore,
    pub lease: DynLease,
    pub clock: DynClock,
    pub policy: RefreshPolicy,
    pub events: Option<Arc<Recorder>>,
}

impl ReplicaSpec<'_> {
    /// Builds the client.
    pub fn build(self) -> OAuthClient {
        let mut builder = OAuthClient::builder(config(self.environment, self.client), self.store);
        if self.lease.sharing() == Sharing::ProcessLocal {
            // Every replica of the harness lives in this process and shares this one lease.
            builder = builder.danger_process_local_lease();
        }
        let mut builder = builder
            .lease(self.lease)
            .clock(self.clock)
            .policy(self.policy);
        if let Some(events) = self.events {
            builder = builder.events(events);
        }
        builder.build().expect("the client builds")
    }
}

/// A sandbox, a manual clock moved together with the sandbox's, and a shared store and lease.
pub struct Harness {
    pub sandbox: SandboxHandle,
    pub clock: ManualClock,
    pub environment: Environment,
    pub store: DynSecretStore,
    pub lease: DynLease,
    pub events: Arc<Recorder>,
    pub http: reqwest::Client,
}

impl Harness {
    /// A harness over `store`, with an in-process lease on the manual clock.
    pub async fn new(spec: SandboxSpec, store: DynSecretStore) -> Self {
        let clock = ManualClock::new();
        let lease: DynLease = Arc::new(InProcessLease::with_clock(Arc::new(clock.clone())));
        Self::with_lease(spec, store, clock, lease).await
    }

    /// A harness over `store` and `lease`.
    pub async fn with_lease(
        spec: SandboxSpec,
        store: DynSecretStore,
        clock: ManualClock,
        lease: DynLease,
    ) -> Self {
        let sandbox = start_sandbox(&spec).await;
        let environment = environment_at(sandbox.base_url().as_str());
        Self {
            sandbox,
            clock,
            environment,
            store,
            lease,
            events: Arc::new(Recorder::default()),
            http: plain_http(),
        }
    }

    /// A replica of client `i` with `policy`.
    pub fn replica_with(&self, client: usize, policy: RefreshPolicy) -> OAuthClient {
        ReplicaSpec {
            environment: &self.environment,
            client,
            store: self.store.clone(),
            lease: self.lease.clone(),
            clock: Arc::new(self.clock.clone()),
            policy,
            events: Some(self.events.clone()),
        }
        .build()
    }

    /// A replica of client 0 with [`fast_policy`].
    pub fn replica(&self) -> OAuthClient {
        self.replica_with(0, fast_policy())
    }

    /// Moves our clock and the sandbox's together.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
        self.sandbox.advance_clock(by);
    }

    /// Connects `subject` to `client` through the consent page (auto-approve).
    pub async fn connect(&self, client: &OAuthClient, subject: Subject) -> Connection {
        connect(&self.sandbox, &self.http, client, subject).await
    }

    /// A replica with Acme connected, its token manager, and an API client over that manager
    /// whose calls give up after `deadline`.
    pub async fn connected_api(&self, deadline: Duration) -> (TokenManager, PleoClient) {
        let client = self.replica();
        self.connect(&client, acme()).await;
        let manager = client.token_manager();
        let api = PleoClient::builder(self.environment.clone(), Arc::new(manager.clone()))
            .retry_policy(RetryPolicy::default().with_deadline(Some(deadline)))
            .build()
            .expect("the API client builds");
        (manager, api)
    }

    /// The stored grant of `subject` for client `i`.
    pub async fn stored(&self, client: usize, subject: &Subject) -> Option<(OAuthGrant, Version)> {
        stored_grant(&self.store, &self.environment, client, subject).await
    }
}

/// A reqwest client that never follows redirects, for driving the consent page.
pub use pleo_auth_sandbox::harness::http as plain_http;

/// Runs the whole connect flow of `subject` for `client` against `sandbox`.
pub async fn connect(
    sandbox: &SandboxHandle,
    http: &reqwest::Client,
    client: &OAuthClient,
    subject: Subject,
) -> Connection {
    let uuid = match subject {
        Subject::Company(c) => *c.as_uuid(),
        Subject::Organisation(o) => *o.as_uuid(),
    };
    sandbox
        .set_auto_approve(Some(uuid))
        .expect("a known subject");
    let request = client
        .authorize(AuthorizeOptions::new().expect_subject(subject))
        .await
        .expect("authorize");
    let location = harness::follow_auto_approve(http, &request.url).await;
    client.complete(location.as_str()).await.expect("complete")
}

/// The stored grant of `subject` for client `i`.
pub async fn stored_grant(
    store: &DynSecretStore,
    environment: &Environment,
    client: usize,
    subject: &Subject,
) -> Option<(OAuthGrant, Version)> {
    store
        .get_record::<OAuthGrant>(&grant_key(environment, client, subject))
        .await
        .expect("the grant is readable")
}

/// Where the grant of `subject` for client `i` is stored.
pub fn grant_key(environment: &Environment, client: usize, subject: &Subject) -> StoreKey {
    layout::oauth_grant(&CredentialKey::new(
        environment.name().clone(),
        client_id(client).parse().expect("a valid client id"),
        *subject,
    ))
}

/// Records every event.
#[derive(Debug, Default)]
pub struct Recorder(Mutex<Vec<OAuthEvent>>);

impl EventSink for Recorder {
    fn emit(&self, event: &OAuthEvent) {
        self.0.lock().expect("recorder lock").push(event.clone());
    }
}

impl Recorder {
    /// Every event so far.
    pub fn events(&self) -> Vec<OAuthEvent> {
        self.0.lock().expect("recorder lock").clone()
    }

    /// How many events match.
    pub fn count(&self, f: impl Fn(&OAuthEvent) -> bool) -> usize {
        self.events().iter().filter(|e| f(e)).count()
    }
}

/// A small deterministic random source (SplitMix64), seeded per test and printed on failure.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator from `PLEO_AUTH_TEST_SEED`, or from the clock.
    pub fn from_env(test: &str) -> Self {
        let seed = std::env::var("PLEO_AUTH_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(7)
            });
        eprintln!("{test}: PLEO_AUTH_TEST_SEED={seed}");
        Self(seed)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `p` percent.
    pub fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// Polls `f` every 5 ms until it holds, for at most `limit`.
pub async fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A `redis-server` of the test's own, on a free loopback port, with an append-only file that
/// is synced on every write, so a restart after `kill -9` keeps every acknowledged write.
pub struct OwnRedis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl OwnRedis {
    /// Starts the server in `dir` and waits until it answers.
    pub fn start(dir: &Path) -> Self {
        let mut redis = Self {
            port: free_port(),
            dir: dir.to_path_buf(),
            child: None,
        };
        redis.spawn();
        redis
    }

    /// The `redis://` URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn spawn(&mut self) {
        let program =
            std::env::var("PLEO_AUTH_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&program)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {program} (run `cargo xtask services up` to install it): {e}")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                s.set_read_timeout(Some(Duration::from_millis(500))).ok();
                let mut buf = [0u8; 64];
                if s.write_all(b"PING\r\n").is_ok()
                    && matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server with SIGKILL, by its process id, and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = Command::new("kill")
                .args(["-KILL", &child.id().to_string()])
                .status()
                .expect("kill runs");
            assert!(status.success(), "kill -KILL failed");
            child.wait().expect("redis-server exits");
        }
    }

    /// Starts the server again on the same port and directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        self.spawn();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

/// Resident memory of this process, in KiB (from `/proc/self/status`).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Open file descriptors of this process (entries of `/proc/self/fd`).
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Counts per key, for summaries.
pub fn tally<K: std::hash::Hash + Eq>(items: impl IntoIterator<Item = K>) -> HashMap<K, usize> {
    let mut out = HashMap::new();
    for item in items {
        *out.entry(item).or_default() += 1;
    }
    out
}

/// A token manager of client `i` on `harness` with the fast policy.
pub fn manager(harness: &Harness) -> TokenManager {
    harness.replica().token_manager()
}
