//! Many replicas of one integration sharing one secret backend: worker **processes** ask for the
//! same grants' tokens and call the API across several expiries, against the sandbox in strict
//! rotation mode, for each shared backend (Redis and PostgreSQL with their leases, OpenBao, moto
//! and the file store with `StoreLease`).
//!
//! Pass: no token is replaced before it is due (each worker checks), the sandbox sees exactly one
//! refresh per expiry and grant (one per stored generation), no refresh token twice, no
//! revocation, every API request succeeds (at most one 401 followed by one retry with the new
//! token), and the stored grant's generation is the initial one plus the expiries. A worker
//! killed with `SIGKILL` while it holds the refresh lease delays the refresh by the lease's TTL
//! and loses nothing.
//!
//! Each test re-executes this test binary (`/proc/self/exe`) with a filter naming only
//! itself (`<name> --exact`) and an environment variable that gives the child its role, as
//! `pleo-auth-stores/tests/file_multiprocess.rs` does, so the same command works under
//! `cargo test` and `cargo nextest`. Processes cannot share a manual clock, so the sandbox issues
//! 3-second access tokens and everything runs on the system clock; the workers stop once the
//! grant reached its target generation.
//!
//! Sizes: CI runs 4 processes x 25 tasks x 3 expiries for one grant, and 20 grants x 5 tasks
//! spread over 2 processes x 2 expiries. `PLEO_AUTH_SCALE_FULL=1` (set by `cargo xtask bench`)
//! runs the full size: 8 processes x 125 tasks x 20 expiries, and 200 grants x 5 tasks spread
//! over 8 processes x 3 expiries (with 60-second tokens on moto, see
//! [`SLOW_STORE_ACCESS_TTL`]). A worker that is slow to notice the last rotation may cause a
//! few more expiries than the target; the checks count every rotation.
#![cfg(all(
    feature = "oauth",
    feature = "file",
    feature = "vault",
    feature = "aws",
    feature = "redis",
    feature = "postgres",
    feature = "sandbox"
))]

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pleo_auth_core::testing::{FaultProxy, ProxyFault, error_chain, service_env};
use pleo_auth_core::{
    ClientSecret, CredentialKey, CredentialProvider, CredentialStatus, DynLease, DynSecretStore,
    Environment, EnvironmentName, OAuthGrant, RecordStoreExt, StoreKey, StoreLease, Subject,
    Version, layout, random_urlsafe,
};
use pleo_auth_http::transport::TransportConfig;
use pleo_auth_oauth::{
    ActiveToken, AuthorizeOptions, OAuthClient, OAuthConfig, RefreshPolicy, TokenManager,
};
use pleo_auth_sandbox::{
    ClientRegistration, Company, Endpoint, Fault, SandboxHandle, Stats, harness, seed,
};
use pleo_auth_stores::aws::AwsStore;
use pleo_auth_stores::file::FileStore;
use pleo_auth_stores::postgres::PostgresStore;
use pleo_auth_stores::redis::RedisStore;
use pleo_auth_stores::vault::VaultStore;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The role of a child process, as JSON ([`Worker`]).
const ROLE_VAR: &str = "PLEO_AUTH_SCALE_ROLE";
/// `1` runs the full size (set by `cargo xtask bench`).
const FULL_VAR: &str = "PLEO_AUTH_SCALE_FULL";

const CLIENT_ID: &str = "scale-tests";
const CLIENT_SECRET: &str = "CANARY-scale-client-secret";
const REDIRECT_URI: &str = "http://127.0.0.1/callback";
const ENVIRONMENT: &str = "sandbox";
/// The sandbox's access-token lifetime (whole seconds: it answers `expires_in` in seconds).
const ACCESS_TTL: Duration = Duration::from_secs(3);
/// The lifetime for 200 grants on moto: with 3-second tokens they would need thousands of
/// Secrets Manager calls per second, beyond what moto serves (a few hundred; each call costs
/// more the more secrets it holds) and beyond AWS's quotas.
const SLOW_STORE_ACCESS_TTL: Duration = Duration::from_secs(60);
/// The refresh margin for 3-second tokens; longer tokens get a fifth of their lifetime.
const REFRESH_MARGIN: Duration = Duration::from_millis(1000);
const REFRESH_JITTER: Duration = Duration::from_millis(500);
/// The lease of the storm tests (`RefreshPolicy`'s default): it must outlast the holder's store
/// reads and writes too, or another replica takes over and presents the superseded refresh token.
const STORM_LEASE_TTL: Duration = Duration::from_secs(60);
/// The lease of the kill test: short, since the test waits for it to expire.
const KILL_LEASE_TTL: Duration = Duration::from_secs(4);
/// How much earlier than due a token may seem to have been replaced (see [`replaced_early`]).
const EARLY_SLACK: Duration = Duration::from_millis(250);
/// Sandbox API requests per second that all workers of a test aim for together.
const API_RATE: u64 = 400;

fn full_size() -> bool {
    std::env::var(FULL_VAR).is_ok_and(|v| v == "1")
}

// ---------------------------------------------------------------------------------------------
// Backends

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Backend {
    /// `RedisStore` with `RedisLease` (SET NX PX + compare-and-delete).
    Redis,
    /// `VaultStore` on OpenBao with `StoreLease` (KV v2 check-and-set).
    OpenBao,
    /// `AwsStore` on moto with `StoreLease` (staging-label compare-and-swap).
    Moto,
    /// `FileStore` with `StoreLease` (file lock).
    File,
    /// `PostgresStore` with `PostgresLease` (a lease row with holder, expiry and fencing).
    Postgres,
}

/// Where the shared records live: a fresh prefix (or directory) per test run.
fn new_location(backend: Backend, dir: &Path) -> String {
    let run = random_urlsafe(6).replace(['-', '_'], "x");
    match backend {
        Backend::Redis => format!("pleo-scale:{run}:"),
        Backend::OpenBao => format!("pleo-scale/{run}"),
        Backend::Moto => format!("pleo-scale/{run}/"),
        Backend::File => dir.join("store").display().to_string(),
        Backend::Postgres => format!("scale_{}", run.to_lowercase()),
    }
}

/// The shared store and the lease that spans processes, as every replica opens them.
async fn open_backend(backend: Backend, location: &str) -> (DynSecretStore, DynLease) {
    match backend {
        Backend::Redis => {
            let store = RedisStore::builder(service_env("PLEO_AUTH_TEST_REDIS_URL"))
                .key_prefix(location)
                .connect()
                .await
                .expect("redis store");
            let lease: DynLease = Arc::new(store.lease());
            (Arc::new(store), lease)
        }
        Backend::OpenBao => {
            let store = Arc::new(
                VaultStore::builder(service_env("PLEO_AUTH_TEST_VAULT_ADDR"))
                    .token(service_env("PLEO_AUTH_TEST_VAULT_TOKEN"))
                    .path_prefix(location)
                    .build()
                    .expect("vault store"),
            );
            (store.clone(), Arc::new(StoreLease::new(store)))
        }
        Backend::Moto => {
            let store = Arc::new(
                AwsStore::builder()
                    .endpoint_url(service_env("PLEO_AUTH_TEST_AWS_ENDPOINT"))
                    .region("eu-west-1")
                    .static_credentials("AKIDSCALETESTS", "CANARY-aws-secret-access-key")
                    .name_prefix(location)
                    .build()
                    .await
                    .expect("aws store"),
            );
            (store.clone(), Arc::new(StoreLease::new(store)))
        }
        Backend::File => {
            let store = Arc::new(FileStore::open(location).expect("file store"));
            (store.clone(), Arc::new(StoreLease::new(store)))
        }
        Backend::Postgres => {
            let store = PostgresStore::builder(service_env("PLEO_AUTH_TEST_POSTGRES_URL"))
                .schema(location)
                .max_connections(4)
                .connect()
                .await
                .expect("postgres store");
            store.migrate().await.expect("postgres migrations");
            let lease: DynLease = Arc::new(store.lease());
            (Arc::new(store), lease)
        }
    }
}

/// Removes the secrets a moto run created: moto looks secrets up by scanning them all, so every
/// secret left behind makes later calls slower. Other backends keep their records (a fresh
/// prefix per run) and the file store's directory is removed with its temporary directory.
async fn cleanup(backend: Backend, location: &str) {
    if backend != Backend::Moto {
        return;
    }
    let store = AwsStore::builder()
        .endpoint_url(service_env("PLEO_AUTH_TEST_AWS_ENDPOINT"))
        .region("eu-west-1")
        .static_credentials("AKIDSCALETESTS", "CANARY-aws-secret-access-key")
        .build()
        .await
        .expect("aws store");
    let sdk = store.client();
    let mut names = Vec::new();
    let mut pages = sdk
        .list_secrets()
        .filters(
            aws_sdk_secretsmanager::types::Filter::builder()
                .key(aws_sdk_secretsmanager::types::FilterNameStringType::Name)
                .values(location)
                .build(),
        )
        .include_planned_deletion(true)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.expect("list the run's secrets");
        names.extend(
            page.secret_list()
                .iter()
                .filter_map(|s| s.name().map(str::to_owned))
                .filter(|name| name.starts_with(location)),
        );
    }
    for name in names {
        sdk.delete_secret()
            .secret_id(&name)
            .force_delete_without_recovery(true)
            .send()
            .await
            .expect("delete a secret of this run");
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

fn environment(auth: &str, api: &str) -> Environment {
    Environment::custom(ENVIRONMENT, auth, api).expect("sandbox environment")
}

fn config(environment: &Environment) -> OAuthConfig {
    OAuthConfig::builder()
        .environment(environment.clone())
        .client_id(CLIENT_ID)
        .client_secret(ClientSecret::new(CLIENT_SECRET))
        .redirect_uri(REDIRECT_URI)
        .scopes("users:read")
        .build()
        .expect("valid config")
}

/// The refresh policy of a replica whose lease lasts `lease_ttl`, for tokens of `access_ttl`.
fn policy(lease_ttl: Duration, access_ttl: Duration) -> RefreshPolicy {
    RefreshPolicy {
        refresh_margin: REFRESH_MARGIN.max(access_ttl / 5),
        refresh_jitter: REFRESH_JITTER,
        lease_ttl,
        lease_wait: lease_ttl * 3,
        store_timeout: lease_ttl / 5,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        cooldown: Duration::from_secs(1),
        ..RefreshPolicy::default()
    }
}

/// The HTTP timeout of a replica whose lease lasts `lease_ttl` (it must be shorter).
fn transport(lease_ttl: Duration) -> TransportConfig {
    TransportConfig {
        timeout: lease_ttl.mul_f64(0.75),
        connect_timeout: Duration::from_secs(2),
        ..TransportConfig::default()
    }
}

fn client(
    environment: &Environment,
    store: DynSecretStore,
    lease: DynLease,
    lease_ttl: Duration,
    access_ttl: Duration,
) -> OAuthClient {
    OAuthClient::builder(config(environment), store)
        .lease(lease)
        .policy(policy(lease_ttl, access_ttl))
        .transport(transport(lease_ttl))
        .build()
        .expect("client builds")
}

fn company(subject: &Subject) -> Uuid {
    *subject.company().expect("a company").as_uuid()
}

fn subject_of(company: Uuid) -> Subject {
    format!("urn:pleo:company:{company}").parse().unwrap()
}

fn grant_key(subject: Subject) -> StoreKey {
    layout::oauth_grant(&CredentialKey::new(
        EnvironmentName::new(ENVIRONMENT).unwrap(),
        CLIENT_ID.parse().unwrap(),
        subject,
    ))
}

/// `n` companies of their own (the seed has three).
fn companies(n: usize) -> Vec<Uuid> {
    (0..n)
        .map(|i| Uuid::parse_str(&format!("0d000000-0000-4000-8000-{:012}", i + 1)).unwrap())
        .collect()
}

async fn start_sandbox(extra_companies: &[Uuid], access_ttl: Duration) -> SandboxHandle {
    let mut builder = harness::canary_sandbox()
        .environment_name(ENVIRONMENT)
        .access_token_ttl(access_ttl)
        .auto_approve(Some(seed::ACME_DK))
        .client(ClientRegistration::new(
            CLIENT_ID,
            CLIENT_SECRET,
            REDIRECT_URI,
            &["users:read"],
        ));
    for (i, id) in extra_companies.iter().enumerate() {
        builder = builder.company(Company::new(*id, format!("Scale company {i}")));
    }
    builder.start().await.expect("sandbox starts")
}

/// Connects `subject` through the real flow (authorize, auto-approved consent, callback); the
/// generation of the stored grant.
async fn connect(oauth: &OAuthClient, store: &DynSecretStore, subject: Subject) -> u64 {
    let request = oauth
        .authorize(AuthorizeOptions::new().expect_subject(subject))
        .await
        .expect("authorize");
    let callback = harness::follow_auto_approve(&harness::http(), &request.url).await;
    let connection = oauth.complete(callback.as_str()).await.expect("complete");
    assert_eq!(connection.subject, subject);
    stored_grant(store, subject).await.0.generation
}

async fn stored_grant(store: &DynSecretStore, subject: Subject) -> (OAuthGrant, Version) {
    store
        .get_record::<OAuthGrant>(&grant_key(subject))
        .await
        .expect("the grant reads")
        .expect("the grant is stored")
}

/// The KV v2 version number of an OpenBao store version (the number itself).
fn kv_version(version: &Version) -> u64 {
    version.as_str().parse().expect("a vault version")
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// Everything a child process needs, passed as JSON in [`ROLE_VAR`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Worker {
    test: String,
    index: usize,
    backend: Backend,
    location: String,
    sandbox: String,
    dir: PathBuf,
    mode: Mode,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Mode {
    /// For each (grant, target generation, tasks), that many tasks ask for the grant's token
    /// every `tick_ms` and call the API every `api_every`-th time, until the grant reached its
    /// target generation. Tokens live `access_ttl_secs`.
    Storm {
        grants: Vec<(Uuid, u64, usize)>,
        access_ttl_secs: u64,
        tick_ms: u64,
        api_every: u64,
        lease_ttl_ms: u64,
        deadline_secs: u64,
    },
    /// Starts a refresh of `grant` whose token request stalls (a proxy that never answers),
    /// announces that it holds the lease, and waits to be killed.
    HoldLease { grant: Uuid, lease_ttl_ms: u64 },
}

/// What one storm worker saw.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Report {
    /// API requests sent, retries included.
    api_requests: u64,
    /// Of those, answered 401.
    unauthorized: u64,
    /// 401s followed by a successful retry with the new token.
    retried: u64,
    /// Anything that went wrong (an error, a second 401, another status).
    failures: Vec<String>,
    /// `access_token()` calls.
    calls: u64,
    /// Wait of those calls, microseconds: median, 99th percentile, maximum.
    wait_p50_us: u64,
    wait_p99_us: u64,
    wait_max_us: u64,
    /// Calls that waited for a refresh (longer than 1 ms), and their median wait.
    blocked: u64,
    blocked_p50_us: u64,
}

/// This process's role, if it is a child spawned for `test`.
fn child_role(test: &str) -> Option<Worker> {
    let raw = std::env::var(ROLE_VAR).ok()?;
    let worker: Worker = serde_json::from_str(&raw).expect("a valid role");
    (worker.test == test).then_some(worker)
}

/// A running child process and where its output goes.
struct Child {
    index: usize,
    process: tokio::process::Child,
    log: PathBuf,
}

fn spawn(worker: &Worker) -> Child {
    // The running image itself, even if a concurrent build replaced the file meanwhile.
    let exe = Path::new("/proc/self/exe");
    let exe = if exe.exists() {
        exe.to_owned()
    } else {
        std::env::current_exe().expect("path of the test binary")
    };
    let log = worker.dir.join(format!("log-{}.txt", worker.index));
    let out = std::fs::File::create(&log).unwrap();
    let process = tokio::process::Command::new(exe)
        .args([&worker.test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE_VAR, serde_json::to_string(worker).unwrap())
        .env_remove(FULL_VAR)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn a child process");
    Child {
        index: worker.index,
        process,
        log,
    }
}

fn log_of(child: &Child) -> String {
    std::fs::read_to_string(&child.log).unwrap_or_default()
}

/// Waits until every child announced itself ready, then lets them all start at once.
async fn start_together(dir: &Path, children: &mut [Child]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if children
            .iter()
            .all(|c| dir.join(format!("ready-{}", c.index)).exists())
        {
            break;
        }
        for child in children.iter_mut() {
            if let Some(status) = child.process.try_wait().unwrap() {
                panic!(
                    "child {} exited before the start: {status}\n{}",
                    child.index,
                    log_of(child)
                );
            }
        }
        assert!(Instant::now() < deadline, "children did not get ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    std::fs::write(dir.join("go"), b"").unwrap();
}

/// Waits for every child to pass its test; their reports.
async fn finish(dir: &Path, children: Vec<Child>, deadline: Duration) -> Vec<Report> {
    let mut reports = Vec::new();
    for mut child in children {
        let status = match tokio::time::timeout(deadline, child.process.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => {
                child.process.start_kill().unwrap();
                panic!("child {} did not finish:\n{}", child.index, log_of(&child));
            }
        };
        let log = log_of(&child);
        assert!(
            status.success(),
            "child {} failed: {status}\n{log}",
            child.index
        );
        assert!(
            log.contains("1 passed"),
            "child {} ran exactly its test:\n{log}",
            child.index
        );
        let raw = std::fs::read_to_string(dir.join(format!("result-{}.json", child.index)))
            .expect("child result");
        reports.push(serde_json::from_str(&raw).unwrap());
    }
    reports
}

/// In a child: announce readiness and wait for the start signal.
async fn await_start(worker: &Worker) {
    std::fs::write(worker.dir.join(format!("ready-{}", worker.index)), b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !worker.dir.join("go").exists() {
        assert!(Instant::now() < deadline, "no start signal");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn write_result(worker: &Worker, report: &Report) {
    let path = worker.dir.join(format!("result-{}.json", worker.index));
    std::fs::write(path, serde_json::to_vec(report).unwrap()).unwrap();
}

/// Ends this child process if its parent test process is gone (killed without unwinding, so it
/// could not kill its children), so that no orphan keeps loading the services.
fn exit_with_parent() {
    let parent = std::os::unix::process::parent_id();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(250));
            if std::os::unix::process::parent_id() != parent {
                eprintln!("the parent test process is gone; exiting");
                std::process::exit(2);
            }
        }
    });
}

async fn run_child(worker: Worker) {
    exit_with_parent();
    match worker.mode.clone() {
        Mode::Storm {
            grants,
            access_ttl_secs,
            tick_ms,
            api_every,
            lease_ttl_ms,
            deadline_secs,
        } => {
            let report = storm(
                &worker,
                &grants,
                Duration::from_secs(access_ttl_secs),
                Duration::from_millis(tick_ms),
                api_every,
                Duration::from_millis(lease_ttl_ms),
                Duration::from_secs(deadline_secs),
            )
            .await;
            write_result(&worker, &report);
        }
        Mode::HoldLease {
            grant,
            lease_ttl_ms,
        } => hold_lease(&worker, grant, Duration::from_millis(lease_ttl_ms)).await,
    }
}

/// Counters shared by the tasks of one storm worker.
#[derive(Default)]
struct Counters {
    api_requests: AtomicU64,
    unauthorized: AtomicU64,
    retried: AtomicU64,
    calls: AtomicU64,
}

async fn storm(
    worker: &Worker,
    grants: &[(Uuid, u64, usize)],
    access_ttl: Duration,
    tick: Duration,
    api_every: u64,
    lease_ttl: Duration,
    deadline: Duration,
) -> Report {
    let (store, lease) = open_backend(worker.backend, &worker.location).await;
    let env = environment(&worker.sandbox, &worker.sandbox);
    let manager = client(&env, store, lease, lease_ttl, access_ttl).token_manager();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let counters = Arc::new(Counters::default());
    await_start(worker).await;
    let stop_at = tokio::time::Instant::now() + deadline;

    let mut handles = Vec::new();
    for (g, (company, target, tasks)) in grants.iter().enumerate() {
        for t in 0..*tasks {
            let offset = (g * tasks + t) as u64 + worker.index as u64;
            handles.push(tokio::spawn(storm_task(
                manager.clone(),
                http.clone(),
                env.clone(),
                subject_of(*company),
                *target,
                access_ttl,
                tick,
                api_every,
                offset,
                stop_at,
                counters.clone(),
            )));
        }
    }
    let mut waits = Vec::new();
    let mut failures = Vec::new();
    for handle in handles {
        let (task_waits, task_failures) = handle.await.expect("a storm task");
        waits.extend(task_waits);
        failures.extend(task_failures);
    }
    waits.sort_unstable();
    let pick = |waits: &[u32], q: f64| -> u64 {
        waits
            .get(((waits.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0)
            .into()
    };
    let blocked = &waits[waits.partition_point(|w| *w <= 1000)..];
    failures.truncate(20);
    Report {
        api_requests: counters.api_requests.load(Ordering::Relaxed),
        unauthorized: counters.unauthorized.load(Ordering::Relaxed),
        retried: counters.retried.load(Ordering::Relaxed),
        failures,
        calls: counters.calls.load(Ordering::Relaxed),
        wait_p50_us: pick(&waits, 0.5),
        wait_p99_us: pick(&waits, 0.99),
        wait_max_us: pick(&waits, 1.0),
        blocked: blocked.len() as u64,
        blocked_p50_us: pick(blocked, 0.5),
    }
}

/// `GET /v2/employees` for `company` with `header`; the status.
async fn call_api(
    http: &reqwest::Client,
    env: &Environment,
    company: Uuid,
    header: &str,
) -> Result<u16, String> {
    let url = env.api_url("/v2/employees").unwrap();
    let response = http
        .get(url)
        .query(&[("company_id", company.to_string())])
        .header("authorization", header)
        .send()
        .await
        .map_err(|e| format!("api request failed: {e}"))?;
    Ok(response.status().as_u16())
}

#[allow(clippy::too_many_arguments)]
async fn storm_task(
    manager: TokenManager,
    http: reqwest::Client,
    env: Environment,
    subject: Subject,
    target: u64,
    access_ttl: Duration,
    tick: Duration,
    api_every: u64,
    offset: u64,
    stop_at: tokio::time::Instant,
    counters: Arc<Counters>,
) -> (Vec<u32>, Vec<String>) {
    let mut waits = Vec::new();
    let mut failures = Vec::new();
    // Spread the tasks over one tick.
    tokio::time::sleep(tick.mul_f64((offset % 97) as f64 / 97.0)).await;
    let mut n = offset;
    // The generation this task saw last, and the earliest time any replica may refresh it.
    let mut last: Option<(u64, Instant)> = None;
    loop {
        if tokio::time::Instant::now() >= stop_at {
            failures.push(format!(
                "{subject}: the target generation {target} was not reached"
            ));
            break;
        }
        let asked = Instant::now();
        let token = manager.access_token(&subject).await;
        waits.push(asked.elapsed().as_micros().min(u32::MAX as u128) as u32);
        counters.calls.fetch_add(1, Ordering::Relaxed);
        let token = match token {
            Ok(token) => token,
            Err(e) => {
                failures.push(format!(
                    "access_token: {} ({:?})",
                    error_chain(&e),
                    e.kind()
                ));
                tokio::time::sleep(tick).await;
                continue;
            }
        };
        if let Some(early) = replaced_early(last, &token, access_ttl) {
            failures.push(format!(
                "{subject}: generation {} was issued {early:?} before its predecessor was due",
                token.generation()
            ));
        }
        if last.is_none_or(|(generation, _)| generation != token.generation()) {
            last = Some((token.generation(), earliest_refresh(&token, access_ttl)));
        }
        let done = token.generation() >= target;
        n += 1;
        // Every task also calls the API with the token it ends on.
        if (done || n.is_multiple_of(api_every))
            && let Err(failure) =
                use_token(&manager, &http, &env, &subject, &token, &counters).await
        {
            failures.push(failure);
        }
        if done {
            break;
        }
        tokio::time::sleep(tick).await;
    }
    (waits, failures)
}

/// The earliest moment any replica may refresh `token`: its expiry less the largest margin the
/// policy allows (margin plus all of the jitter, at most half the lifetime). Each replica draws
/// its own jitter, so the first replica to reach its window may rotate the token before this
/// one would have.
fn earliest_refresh(token: &ActiveToken, access_ttl: Duration) -> Instant {
    let policy = policy(STORM_LEASE_TTL, access_ttl);
    let widest = (policy.refresh_margin + policy.refresh_jitter).min(access_ttl / 2);
    token.expires_at() - widest
}

/// How much earlier than its predecessor was due `token` was issued, if it replaced the
/// generation seen `last` (on this process's clock) before any replica could refresh it.
///
/// A token adopted from the store expires `access_ttl` after the replica that refreshed it
/// received it, so `expires_at - access_ttl` is when the refresh happened. Only direct successors
/// are checked; the slack covers the millisecond timestamps in the store and a thread preempted
/// between the wall-clock and monotonic reads of a token's expiry.
fn replaced_early(
    last: Option<(u64, Instant)>,
    token: &ActiveToken,
    access_ttl: Duration,
) -> Option<Duration> {
    let (generation, due) = last?;
    if token.generation() != generation + 1 {
        return None;
    }
    let issued = token.expires_at().checked_sub(access_ttl)?;
    let early = due.checked_duration_since(issued)?;
    (early > EARLY_SLACK).then_some(early)
}

/// Calls the API with `token`; on a 401 does what `PleoClient` does: reports the credential to
/// the provider and retries once with the token it then hands out.
async fn use_token(
    manager: &TokenManager,
    http: &reqwest::Client,
    env: &Environment,
    subject: &Subject,
    token: &ActiveToken,
    counters: &Counters,
) -> Result<(), String> {
    let company = company(subject);
    counters.api_requests.fetch_add(1, Ordering::Relaxed);
    let header = token.credential().header.expose_secret();
    match call_api(http, env, company, header).await? {
        200 => return Ok(()),
        401 => {}
        other => return Err(format!("the api answered {other}")),
    }
    counters.unauthorized.fetch_add(1, Ordering::Relaxed);
    manager
        .rejected(subject, &token.credential().id)
        .await
        .map_err(|e| format!("rejected: {e}"))?;
    let retry = manager
        .access_token(subject)
        .await
        .map_err(|e| format!("access_token after a 401: {e}"))?;
    counters.api_requests.fetch_add(1, Ordering::Relaxed);
    let header = retry.credential().header.expose_secret();
    match call_api(http, env, company, header).await? {
        200 => {
            counters.retried.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        other => Err(format!(
            "the retry after a 401 got {other} (generation {} -> {})",
            token.generation(),
            retry.generation()
        )),
    }
}

/// The victim of the kill test: its token requests go to a proxy that never answers, so the
/// refresh it starts holds the lease without reaching Pleo.
async fn hold_lease(worker: &Worker, grant: Uuid, lease_ttl: Duration) {
    let sandbox: reqwest::Url = worker.sandbox.parse().unwrap();
    let upstream = sandbox
        .socket_addrs(|| None)
        .unwrap()
        .into_iter()
        .next()
        .unwrap();
    let proxy = FaultProxy::start(upstream).await.unwrap();
    proxy.set_fault(ProxyFault::Stall);
    let (store, lease) = open_backend(worker.backend, &worker.location).await;
    let env = environment(&format!("http://{}/", proxy.addr()), &worker.sandbox);
    let manager = client(&env, store, lease, lease_ttl, ACCESS_TTL).token_manager();
    let subject = subject_of(grant);
    await_start(worker).await;
    loop {
        let asking = {
            let manager = manager.clone();
            tokio::spawn(async move { manager.access_token(&subject).await })
        };
        while !asking.is_finished() {
            if proxy.connections() > 0 {
                // The flight took the lease before it connected to the token endpoint.
                std::fs::write(
                    worker.dir.join("holding"),
                    now_millis().to_string().as_bytes(),
                )
                .unwrap();
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let token = asking.await.unwrap().expect("the seeded token");
        tokio::time::sleep_until(tokio::time::Instant::from_std(token.refresh_at())).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The parent side

/// One run of storm workers against one backend.
struct Run {
    backend: Backend,
    dir: tempfile::TempDir,
    location: String,
    sandbox: Arc<SandboxHandle>,
    access_ttl: Duration,
    store: DynSecretStore,
    oauth: OAuthClient,
}

impl Run {
    async fn start(backend: Backend, extra_companies: &[Uuid], access_ttl: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let location = new_location(backend, dir.path());
        let sandbox = Arc::new(start_sandbox(extra_companies, access_ttl).await);
        let (store, lease) = open_backend(backend, &location).await;
        let base = sandbox.base_url().to_string();
        let oauth = client(
            &environment(&base, &base),
            store.clone(),
            lease,
            STORM_LEASE_TTL,
            access_ttl,
        );
        Self {
            backend,
            dir,
            location,
            sandbox,
            access_ttl,
            store,
            oauth,
        }
    }

    fn worker(&self, test: &str, index: usize, mode: Mode) -> Worker {
        Worker {
            test: test.to_owned(),
            index,
            backend: self.backend,
            location: self.location.clone(),
            sandbox: self.sandbox.base_url().to_string(),
            dir: self.dir.path().to_owned(),
            mode,
        }
    }

    /// Runs one storm worker per entry of `assignments` (company, target generation, tasks)
    /// until each grant reached its target.
    async fn storm(
        &self,
        test: &str,
        first_index: usize,
        assignments: Vec<Vec<(Uuid, u64, usize)>>,
        lease_ttl: Duration,
    ) -> (Vec<Report>, Duration) {
        let total_tasks: u64 = assignments
            .iter()
            .flatten()
            .map(|(_, _, tasks)| *tasks as u64)
            .sum();
        // Every task asks at least a few times per refresh window; the API sees about API_RATE.
        let tick_ms = (total_tasks * 1000 / 20_000).clamp(20, 400);
        let api_every = (total_tasks * 1000 / (API_RATE * tick_ms)).max(1);
        let deadline = if full_size() { 900 } else { 120 };
        let mut children: Vec<Child> = assignments
            .into_iter()
            .enumerate()
            .map(|(i, grants)| {
                let mode = Mode::Storm {
                    grants,
                    access_ttl_secs: self.access_ttl.as_secs(),
                    tick_ms,
                    api_every,
                    lease_ttl_ms: lease_ttl.as_millis() as u64,
                    deadline_secs: deadline,
                };
                spawn(&self.worker(test, first_index + i, mode))
            })
            .collect();
        start_together(self.dir.path(), &mut children).await;
        let started = Instant::now();
        let reports = finish(
            self.dir.path(),
            children,
            Duration::from_secs(deadline + 60),
        )
        .await;
        (reports, started.elapsed())
    }
}

/// Spreads `tasks` tasks per grant over `processes` processes, one after another, so each grant
/// is asked for by `min(tasks, processes)` processes.
fn spread(grants: &[(Uuid, u64)], tasks: usize, processes: usize) -> Vec<Vec<(Uuid, u64, usize)>> {
    let mut counts = vec![vec![0usize; grants.len()]; processes];
    for g in 0..grants.len() {
        for t in 0..tasks {
            counts[(g * tasks + t) % processes][g] += 1;
        }
    }
    counts
        .into_iter()
        .map(|per_grant| {
            grants
                .iter()
                .zip(per_grant)
                .filter(|(_, n)| *n > 0)
                .map(|((company, target), n)| (*company, *target, n))
                .collect()
        })
        .collect()
}

/// Clears the sandbox's request log now and then, so a long run does not grow it without bound.
fn trim_request_log(sandbox: &Arc<SandboxHandle>) -> tokio::task::JoinHandle<()> {
    let sandbox = sandbox.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            sandbox.clear_request_log();
        }
    })
}

/// One grant's stored generation before and after a run, and its status after.
struct Rotation {
    company: Uuid,
    initial: u64,
    last: u64,
    status: CredentialStatus,
}

/// Reads the stored generation and status of each grant after a run.
async fn rotations(store: &DynSecretStore, grants: &[(Uuid, u64)]) -> Vec<Rotation> {
    let mut out = Vec::new();
    for (company, initial) in grants {
        let (record, _) = stored_grant(store, subject_of(*company)).await;
        out.push(Rotation {
            company: *company,
            initial: *initial,
            last: record.generation,
            status: record.status,
        });
    }
    out
}

/// The checks every storm run must pass: no failed request, no token replaced before it was
/// due (checked by the workers), every expiry of every grant refreshed exactly once at the
/// sandbox (one rotation per stored generation, no refresh token presented twice), no
/// revocation, and at least `expiries` expiries per grant.
fn assert_clean(stats: &Stats, reports: &[Report], rotations: &[Rotation], expiries: u64) {
    for (i, report) in reports.iter().enumerate() {
        assert!(
            report.failures.is_empty(),
            "worker {i} saw failures: {:#?}",
            report.failures
        );
        assert_eq!(
            report.unauthorized, report.retried,
            "worker {i}: every 401 was followed by one successful retry"
        );
    }
    let requests = stats.token_requests.get("refresh_token");
    assert_eq!(
        stats.refresh_token_reuses, 0,
        "no refresh token was reused: {requests:?}"
    );
    assert_eq!(stats.total_revocations(), 0, "no grant was revoked");
    assert!(
        stats.refresh_token_uses.values().all(|n| *n == 1),
        "every refresh token was presented once: {} were not",
        stats
            .refresh_token_uses
            .values()
            .filter(|n| **n > 1)
            .count()
    );
    let grants: std::collections::HashMap<&str, &pleo_auth_sandbox::GrantStats> = stats
        .grants
        .values()
        .filter(|g| g.client_id == CLIENT_ID)
        .map(|g| (g.subject_urn.as_str(), g))
        .collect();
    assert_eq!(
        grants.len(),
        rotations.len(),
        "one sandbox grant per company"
    );
    let mut total = 0;
    for rotation in rotations {
        let subject = subject_of(rotation.company).to_string();
        let grant = grants[subject.as_str()];
        assert_eq!(rotation.status, CredentialStatus::Active, "{subject}");
        assert!(
            rotation.last >= rotation.initial + expiries,
            "{subject}: generation {} reached {} expiries",
            rotation.last,
            expiries
        );
        assert_eq!(
            grant.refreshes,
            rotation.last - rotation.initial,
            "{subject}: one refresh at the sandbox per stored generation"
        );
        assert_eq!(grant.revoked, None);
        total += rotation.last - rotation.initial;
    }
    assert_eq!(
        stats.token_requests_for("refresh_token"),
        total,
        "refresh requests == expiries (none failed, none repeated): {requests:?}"
    );
    assert_eq!(stats.refreshes, total);
}

fn summary(reports: &[Report]) -> String {
    let sum = |f: fn(&Report) -> u64| reports.iter().map(f).sum::<u64>();
    let max = |f: fn(&Report) -> u64| reports.iter().map(f).max().unwrap_or(0);
    format!(
        "token calls {}, api requests {}, 401 then retried {}, wait p50 {} us / p99 {} us / max {} ms; \
         {} calls waited for a refresh, median {} ms (worst worker)",
        sum(|r| r.calls),
        sum(|r| r.api_requests),
        sum(|r| r.retried),
        max(|r| r.wait_p50_us),
        max(|r| r.wait_p99_us),
        max(|r| r.wait_max_us) / 1000,
        sum(|r| r.blocked),
        max(|r| r.blocked_p50_us) / 1000,
    )
}

/// One grant, many processes, many expiries.
async fn one_grant(test: &str, backend: Backend) {
    if let Some(worker) = child_role(test) {
        return run_child(worker).await;
    }
    let (processes, tasks, expiries) = if full_size() {
        (8, 125, 20)
    } else {
        (4, 25, 3)
    };
    let run = Run::start(backend, &[], ACCESS_TTL).await;
    let subject = subject_of(seed::ACME_DK);
    let initial = connect(&run.oauth, &run.store, subject).await;
    let (_, initial_version) = stored_grant(&run.store, subject).await;
    let api_before = run.sandbox.stats().api_requests;
    let trimmer = trim_request_log(&run.sandbox);

    let target = initial + expiries;
    let (reports, elapsed) = run
        .storm(
            test,
            0,
            vec![vec![(seed::ACME_DK, target, tasks)]; processes],
            STORM_LEASE_TTL,
        )
        .await;
    trimmer.abort();

    let stats = run.sandbox.stats();
    let rotations = rotations(&run.store, &[(seed::ACME_DK, initial)]).await;
    let (_, version) = stored_grant(&run.store, subject).await;
    cleanup(backend, &run.location).await;
    assert_clean(&stats, &reports, &rotations, expiries);
    let rotated = rotations[0].last - initial;
    if backend == Backend::OpenBao {
        assert_eq!(
            kv_version(&version),
            kv_version(&initial_version) + rotated,
            "one KV write per expiry"
        );
    }
    assert_eq!(
        stats.api_requests - api_before,
        reports.iter().map(|r| r.api_requests).sum::<u64>(),
        "the sandbox saw every request the workers counted"
    );
    println!(
        "{backend:?}: {processes} processes x {tasks} tasks, {rotated} expiries (at least \
         {expiries}) in {elapsed:.1?}: {} refreshes, 0 reuses, 0 revocations, final generation \
         = initial + {rotated}; {}",
        stats.refreshes,
        summary(&reports)
    );
}

/// Many grants, each refreshed by its own flight: every refresh is held at the token endpoint,
/// and all of them finish far sooner than they could one after another.
async fn many_grants(test: &str, backend: Backend) {
    if let Some(worker) = child_role(test) {
        return run_child(worker).await;
    }
    let (processes, grants, tasks, expiries) = if full_size() {
        (8, 200, 5, 3)
    } else {
        (2, 20, 5, 2)
    };
    let access_ttl = if full_size() && backend == Backend::Moto {
        SLOW_STORE_ACCESS_TTL
    } else {
        ACCESS_TTL
    };
    let ids = companies(grants);
    let run = Run::start(backend, &ids, access_ttl).await;
    let mut initials = Vec::new();
    for id in &ids {
        initials.push((*id, connect(&run.oauth, &run.store, subject_of(*id)).await));
    }
    let targets: Vec<(Uuid, u64)> = initials
        .iter()
        .map(|(id, initial)| (*id, initial + expiries))
        .collect();
    // Every refresh takes this long at the token endpoint: half the refresh margin of 3-second
    // tokens, a tenth of longer ones.
    let slow = (access_ttl / 10).max(REFRESH_MARGIN / 2);
    run.sandbox.inject_fault(
        Endpoint::Token,
        Fault::Delay(slow),
        (grants as u64 * expiries) as u32,
    );
    let trimmer = trim_request_log(&run.sandbox);
    let (reports, elapsed) = run
        .storm(test, 0, spread(&targets, tasks, processes), STORM_LEASE_TTL)
        .await;
    trimmer.abort();

    let stats = run.sandbox.stats();
    let rotations = rotations(&run.store, &initials).await;
    cleanup(backend, &run.location).await;
    assert_clean(&stats, &reports, &rotations, expiries);
    let rotated: u64 = rotations.iter().map(|r| r.last - r.initial).sum();
    // Every refresh takes at least `slow` at the token endpoint, so refreshes done one after
    // another would need at least `rotated x slow` in all: finishing sooner proves they overlapped.
    assert!(
        elapsed < slow * rotated as u32,
        "{rotated} refreshes of {slow:?} each took {elapsed:?}: they did not overlap"
    );
    println!(
        "{backend:?}: {grants} grants x {tasks} tasks over {processes} processes, {rotated} \
         expiries (at least {expiries} per grant) of {access_ttl:?} tokens in {elapsed:.1?} with \
         a {slow:?} token endpoint: {} refreshes, 0 reuses, 0 revocations; {}",
        stats.refreshes,
        summary(&reports)
    );
}

/// A replica killed while it holds the refresh lease: the others wait for the lease to expire,
/// then one refreshes with the (unused) refresh token; nothing is lost.
async fn killed_lease_holder(test: &str, backend: Backend) {
    if let Some(worker) = child_role(test) {
        return run_child(worker).await;
    }
    let run = Run::start(backend, &[], ACCESS_TTL).await;
    let subject = subject_of(seed::ACME_DK);
    let initial = connect(&run.oauth, &run.store, subject).await;

    let victim = run.worker(
        test,
        0,
        Mode::HoldLease {
            grant: seed::ACME_DK,
            lease_ttl_ms: KILL_LEASE_TTL.as_millis() as u64,
        },
    );
    let mut victim = vec![spawn(&victim)];
    start_together(run.dir.path(), &mut victim).await;
    let holding = run.dir.path().join("holding");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !holding.exists() {
        if let Some(status) = victim[0].process.try_wait().unwrap() {
            panic!("the victim exited: {status}\n{}", log_of(&victim[0]));
        }
        assert!(Instant::now() < deadline, "the victim never took the lease");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut victim = victim.pop().unwrap();
    victim.process.start_kill().unwrap();
    let status = victim.process.wait().await.unwrap();
    assert_eq!(status.signal(), Some(9), "the victim died by SIGKILL");
    let held_at: u64 = std::fs::read_to_string(&holding)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        run.sandbox.stats().refreshes,
        0,
        "the victim's refresh never reached Pleo"
    );

    // Two replicas that need the token now: they wait out the lease, then one refreshes.
    std::fs::remove_file(run.dir.path().join("go")).unwrap();
    let (reports, _) = run
        .storm(
            test,
            1,
            vec![vec![(seed::ACME_DK, initial + 1, 10)]; 2],
            KILL_LEASE_TTL,
        )
        .await;
    let stats = run.sandbox.stats();
    let rotations = rotations(&run.store, &[(seed::ACME_DK, initial)]).await;
    let (record, _) = stored_grant(&run.store, subject).await;
    cleanup(backend, &run.location).await;
    assert_clean(&stats, &reports, &rotations, 1);
    assert_eq!(
        record.generation,
        initial + 1,
        "the generation advanced once"
    );
    let issued = record
        .refresh_token_issued_at
        .expect("issued at")
        .as_millis();
    // The victim took the lease just before it connected; allow for that and for clock reads.
    let lease_end = held_at + KILL_LEASE_TTL.as_millis() as u64;
    assert!(
        issued + 250 >= lease_end,
        "the refresh ran {} ms before the dead holder's lease expired",
        lease_end - issued
    );
    let status = reqwest::Client::new()
        .get(
            environment(
                run.sandbox.base_url().as_ref(),
                run.sandbox.base_url().as_ref(),
            )
            .api_url("/v2/employees")
            .unwrap(),
        )
        .header(
            "authorization",
            format!(
                "Bearer {}",
                record.access_token.as_ref().unwrap().expose_secret()
            ),
        )
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200, "the stored token works");
    println!(
        "{backend:?}: holder killed at +0 ms, refresh at +{} ms (lease ttl {} ms), 1 refresh, 0 revocations; {}",
        issued.saturating_sub(held_at),
        KILL_LEASE_TTL.as_millis(),
        summary(&reports)
    );
}

macro_rules! scale_tests {
    ($($name:ident => $scenario:ident($backend:expr);)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            $scenario(stringify!($name), $backend).await;
        }
    )*};
}

scale_tests! {
    one_grant_redis => one_grant(Backend::Redis);
    one_grant_openbao => one_grant(Backend::OpenBao);
    one_grant_moto => one_grant(Backend::Moto);
    one_grant_file => one_grant(Backend::File);
    many_grants_redis => many_grants(Backend::Redis);
    many_grants_openbao => many_grants(Backend::OpenBao);
    many_grants_moto => many_grants(Backend::Moto);
    many_grants_file => many_grants(Backend::File);
    killed_lease_holder_redis => killed_lease_holder(Backend::Redis);
    killed_lease_holder_openbao => killed_lease_holder(Backend::OpenBao);
    killed_lease_holder_moto => killed_lease_holder(Backend::Moto);
    killed_lease_holder_file => killed_lease_holder(Backend::File);
    one_grant_postgres => one_grant(Backend::Postgres);
    many_grants_postgres => many_grants(Backend::Postgres);
    killed_lease_holder_postgres => killed_lease_holder(Backend::Postgres);
}
