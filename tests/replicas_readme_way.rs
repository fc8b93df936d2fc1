//! Replicas built exactly the way the README shows, as separate **OS processes**, against the
//! sandbox in strict rotation mode (presenting a rotated refresh token again revokes the grant).
//!
//! Every worker process builds its `PleoAuth` with `.environment(..)`, `.file_store(dir)` (or
//! `.store(redis)`) and `.oauth(config)`, and nothing else: no lease, no refresh policy, no
//! clock. Its tasks ask for the one grant's token in a loop and call the API with it, across
//! 20 expiries of 5-second access tokens (a rotation every 2.5 s; with shorter ones, on two
//! loaded cores, a token can be superseded twice while one request is retried). Pass: the
//! sandbox counts exactly one refresh per
//! rotation the store recorded (refreshes == final generation - initial generation >= 20), no
//! refresh token presented twice, no revoked grant, and every API call answered 200 (a call made
//! with a token another replica just rotated away is retried once with the new one).
//!
//! The storm of the reliability suite (8 replicas x 125 tasks x 20 expiries) runs here as 8
//! processes on the file store; two processes run on the file store and on Redis.
//!
//! Each test re-executes this test binary (`/proc/self/exe`) with a filter naming only itself
//! and an environment variable that gives the child its role, so it works under `cargo test`
//! and `cargo nextest`.
#![cfg(all(
    feature = "oauth",
    feature = "http",
    feature = "file",
    feature = "redis",
    feature = "sandbox"
))]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pleo_auth::oauth::{AuthorizeOptions, OAuthConfig};
use pleo_auth::sandbox::{ClientRegistration, SandboxHandle, harness, seed};
use pleo_auth::stores::redis::RedisStore;
use pleo_auth::{ClientSecret, Environment, PleoAuth, Subject};
use pleo_auth_core::random_urlsafe;
use pleo_auth_core::testing::service_env;
use serde::{Deserialize, Serialize};

const ROLE_VAR: &str = "PLEO_AUTH_README_WAY_ROLE";
const CLIENT_ID: &str = "readme-way";
const CLIENT_SECRET: &str = "CANARY-readme-way-secret";
const REDIRECT_URI: &str = "http://127.0.0.1/callback";
const ACCESS_TTL: Duration = Duration::from_secs(5);
const EXPIRIES: u64 = 20;

/// Where the replicas keep their records.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Store {
    /// `.file_store(dir)`.
    File(PathBuf),
    /// `.store(RedisStore)` at a URL with a key prefix of its own.
    Redis { url: String, prefix: String },
}

/// A worker's instructions.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Role {
    sandbox_url: String,
    store: Store,
    subject: Subject,
    target_generation: u64,
    tasks: usize,
    deadline_secs: u64,
}

fn environment(sandbox_url: &str) -> Environment {
    Environment::custom("sandbox", sandbox_url, sandbox_url).expect("the sandbox environment")
}

/// The README's builder: environment, store, OAuth, nothing else.
async fn readme_auth(sandbox_url: &str, store: &Store) -> PleoAuth {
    let environment = environment(sandbox_url);
    let config = OAuthConfig::builder()
        .environment(environment.clone())
        .client_id(CLIENT_ID)
        .client_secret(ClientSecret::new(CLIENT_SECRET))
        .redirect_uri(REDIRECT_URI)
        .scopes("users:read")
        .build()
        .expect("the OAuth configuration");
    let builder = PleoAuth::builder().environment(environment);
    let builder = match store {
        Store::File(dir) => builder.file_store(dir),
        Store::Redis { url, prefix } => builder.store(Arc::new(
            RedisStore::builder(url.clone())
                .key_prefix(prefix.clone())
                .connect()
                .await
                .expect("redis answers"),
        )),
    };
    builder.oauth(config).build().expect("PleoAuth builds")
}

/// A worker: `tasks` tasks ask for the grant's token and call the API until the grant reached
/// the target generation. Prints `calls=N failures=M` for the parent.
async fn work(role: Role) {
    let auth = readme_auth(&role.sandbox_url, &role.store).await;
    let manager = auth.token_manager().expect("OAuth is configured");
    let deadline = Instant::now() + Duration::from_secs(role.deadline_secs);
    let calls = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for task in 0..role.tasks {
        let (auth, manager) = (auth.clone(), manager.clone());
        let (calls, failures) = (calls.clone(), failures.clone());
        let subject = role.subject;
        let target = role.target_generation;
        tasks.push(tokio::spawn(async move {
            let company = subject.company().expect("a company");
            // Every fourth task calls the API once with each generation it sees, so every token
            // is used without turning the test into a load test of the sandbox.
            let caller = task % 4 == 0;
            let mut used = 0;
            while Instant::now() < deadline {
                let token = match manager.access_token(&subject).await {
                    Ok(token) => token,
                    Err(err) => {
                        eprintln!("task {task}: access_token failed: {err:?}");
                        failures.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if token.generation() >= target {
                    return;
                }
                if caller && token.generation() != used {
                    used = token.generation();
                    calls.fetch_add(1, Ordering::Relaxed);
                    let answer = auth
                        .client()
                        .get("/v2/employees")
                        .company(company)
                        .send()
                        .await;
                    match answer {
                        Ok(response) if response.status() == 200 => {}
                        other => {
                            eprintln!("task {task}: api call failed: {other:?}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            eprintln!("task {task}: deadline reached before the target generation");
            failures.fetch_add(1, Ordering::Relaxed);
        }));
    }
    for task in tasks {
        task.await.expect("a task panicked");
    }
    manager.flush().await.expect("nothing is left pending");
    println!(
        "calls={} failures={}",
        calls.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed)
    );
}

async fn start_sandbox() -> SandboxHandle {
    harness::canary_sandbox()
        .access_token_ttl(ACCESS_TTL)
        .client(ClientRegistration::new(
            CLIENT_ID,
            CLIENT_SECRET,
            REDIRECT_URI,
            &["users:read"],
        ))
        .auto_approve(Some(seed::ACME_DK))
        .start()
        .await
        .expect("the sandbox starts")
}

/// Connects Acme Denmark through the README-built facade; returns its generation.
async fn connect(auth: &PleoAuth) -> (Subject, u64) {
    let oauth = auth.oauth().expect("OAuth is configured");
    let request = oauth
        .authorize(AuthorizeOptions::new())
        .await
        .expect("authorize");
    let callback = harness::follow_auto_approve(&harness::http(), &request.url).await;
    let connection = oauth.complete(callback.as_str()).await.expect("complete");
    let token = auth
        .token_manager()
        .unwrap()
        .access_token(&connection.subject)
        .await
        .expect("a token");
    (connection.subject, token.generation())
}

/// The parent: a sandbox, one grant, `processes` workers of `tasks` tasks until 20 expiries
/// passed; then the sandbox's counters.
async fn run(test: &str, store: Store, processes: usize, tasks: usize) {
    if let Ok(role) = std::env::var(ROLE_VAR) {
        work(serde_json::from_str(&role).expect("a role")).await;
        return;
    }
    let sandbox = start_sandbox().await;
    let url = sandbox.base_url().to_string();
    let auth = readme_auth(&url, &store).await;
    let (subject, initial) = connect(&auth).await;
    drop(auth);
    let role = Role {
        sandbox_url: url.clone(),
        store: store.clone(),
        subject,
        target_generation: initial + EXPIRIES,
        tasks,
        deadline_secs: ACCESS_TTL.as_secs() * EXPIRIES * 4 + 30,
    };
    let exe = Path::new("/proc/self/exe");
    let mut children = Vec::new();
    for _ in 0..processes {
        children.push(
            tokio::process::Command::new(exe)
                .args([test, "--exact", "--nocapture", "--test-threads=1"])
                .env(ROLE_VAR, serde_json::to_string(&role).unwrap())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn a worker process"),
        );
    }
    let mut calls = 0;
    for child in children {
        let output = child.wait_with_output().await.expect("the worker ends");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "worker failed:\n{stdout}\n{stderr}"
        );
        let summary = stdout
            .find("calls=")
            .map(|at| {
                stdout[at + "calls=".len()..]
                    .lines()
                    .next()
                    .unwrap_or_default()
            })
            .unwrap_or_else(|| panic!("no summary from a worker:\n{stdout}\n{stderr}"));
        let (c, f) = summary.split_once(" failures=").expect("a summary line");
        assert_eq!(f, "0", "a worker saw failures:\n{stderr}");
        calls += c.parse::<u64>().unwrap();
    }

    let after = readme_auth(&url, &store).await;
    let final_generation = after
        .token_manager()
        .unwrap()
        .status(&subject)
        .await
        .expect("the grant is stored")
        .generation;
    let stats = sandbox.stats();
    let rotations = final_generation - initial;
    eprintln!(
        "{test}: {processes} processes x {tasks} tasks, {rotations} rotations, {} refreshes, {calls} API calls",
        stats.refreshes
    );
    assert!(rotations >= EXPIRIES, "only {rotations} rotations");
    assert_eq!(stats.refreshes, rotations, "one refresh per rotation");
    assert_eq!(stats.refresh_token_reuses, 0, "no refresh token twice");
    assert!(
        stats.refresh_token_uses.values().all(|uses| *uses == 1),
        "every refresh token presented once: {:?}",
        stats
            .refresh_token_uses
            .values()
            .filter(|u| **u > 1)
            .count()
    );
    assert!(
        stats.grant_revocations.is_empty(),
        "no grant revoked: {:?}",
        stats.grant_revocations
    );
    assert!(calls > 0, "the tokens were used");
    sandbox.shutdown().await;
}

fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::File(dir.path().join("store"));
    (dir, store)
}

fn redis_store() -> Store {
    let url = service_env("PLEO_AUTH_TEST_REDIS_URL");
    Store::Redis {
        url,
        prefix: format!("readme-way:{}:", random_urlsafe(6)),
    }
}

/// Two processes on the file store, the README's default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_the_file_store_refresh_once_per_expiry() {
    let (_dir, store) = temp_store();
    run(
        "two_processes_on_the_file_store_refresh_once_per_expiry",
        store,
        2,
        50,
    )
    .await;
}

/// Two processes on Redis, with nothing but `.store(redis)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_redis_refresh_once_per_expiry() {
    run(
        "two_processes_on_redis_refresh_once_per_expiry",
        redis_store(),
        2,
        50,
    )
    .await;
}

/// The storm: 8 processes x 125 tasks x 20 expiries on the file store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_of_eight_processes_refreshes_once_per_expiry() {
    let (_dir, store) = temp_store();
    run(
        "storm_of_eight_processes_refreshes_once_per_expiry",
        store,
        8,
        125,
    )
    .await;
}
