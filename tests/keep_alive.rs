//! Keep-alive without a person: `pleo-auth keep-alive --once` sweeps 1,000 grants with one
//! corrupt record among them (999 refreshed, one failure, exit 7), `health` and
//! `status --check` report the unreadable record, and two OS processes running
//! `PleoAuth::spawn_keep_alive` sweep once per interval between them (the sandbox's counters),
//! with no refresh token presented twice.
//!
//! The replica test re-executes this test binary (`/proc/self/exe`) with a filter naming only
//! itself and an environment variable that gives the child its role (as
//! `replicas_readme_way.rs` does).
#![cfg(feature = "cli")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Cli, answer_consent};
use futures::stream::{self, StreamExt};
use pleo_auth::oauth::{AuthorizeOptions, KeepAliveOptions, OAuthConfig};
use pleo_auth::sandbox::{Company, SandboxHandle, harness, seed};
use pleo_auth::{
    ClientId, ClientSecret, CompanyId, CredentialKey, Environment, KeepAliveConfig, KeepAliveRun,
    PleoAuth, Precondition, SecretBytes, SecretStore, Subject, layout,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const ROLE_VAR: &str = "PLEO_AUTH_KEEP_ALIVE_ROLE";

fn company_uuid(i: usize) -> Uuid {
    Uuid::from_u128(0x0d000000_0000_4000_8000_000000000000 + i as u128)
}

fn subject(i: usize) -> Subject {
    Subject::Company(CompanyId::from_uuid(company_uuid(i)))
}

async fn start_sandbox(companies: usize) -> SandboxHandle {
    let mut builder = harness::canary_sandbox();
    for i in 0..companies {
        builder = builder.company(Company::new(company_uuid(i), format!("Company {i}")));
    }
    builder.start().await.expect("the sandbox starts")
}

fn environment(sandbox_url: &str) -> Environment {
    Environment::custom("sandbox", sandbox_url, sandbox_url).expect("the sandbox environment")
}

/// The README's builder over the file store in `dir`, with the sandbox's demo client (the one
/// the CLI uses with PLEO_ENV=sandbox).
fn auth(sandbox_url: &str, dir: &Path) -> PleoAuth {
    let environment = environment(sandbox_url);
    let config = OAuthConfig::builder()
        .environment(environment.clone())
        .client_id(seed::DEMO_CLIENT_ID)
        .client_secret(ClientSecret::new(seed::DEMO_CLIENT_SECRET))
        .redirect_uri(seed::DEMO_REDIRECT_URIS[0])
        .scopes("users:read")
        .build()
        .expect("the OAuth configuration");
    PleoAuth::builder()
        .environment(environment)
        .file_store(dir)
        .oauth(config)
        .build()
        .expect("PleoAuth builds")
}

/// Connects companies `0..n` through the consent page, eight at a time.
async fn connect_all(auth: &PleoAuth, n: usize) {
    stream::iter(0..n)
        .for_each_concurrent(8, |i| async move {
            let oauth = auth.oauth().unwrap();
            let request = oauth
                .authorize(AuthorizeOptions::new().expect_subject(subject(i)))
                .await
                .expect("authorize");
            let back = answer_consent(&request.url, &subject(i).to_string(), "allow").await;
            oauth.complete(&back).await.expect("complete");
        })
        .await;
}

fn grant_key(auth: &PleoAuth, i: usize) -> pleo_auth::StoreKey {
    layout::oauth_grant(&CredentialKey::new(
        auth.environment().name().clone(),
        ClientId::new(seed::DEMO_CLIENT_ID).unwrap(),
        subject(i),
    ))
}

/// `keep-alive --once` over 1,000 grants, one of them corrupt: the 999 others are refreshed
/// (the sandbox counts 999 rotations), the corrupt one is listed with its record and the exit
/// code is 7; `health` and `status --check` say a record is unreadable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_once_refreshes_999_of_1000_and_reports_the_corrupt_record() {
    const GRANTS: usize = 1000;
    let sandbox = start_sandbox(GRANTS).await;
    let cli = Cli::new(&sandbox);
    let url = sandbox.base_url().to_string();
    let auth = auth(&url, &cli.dir().join("store"));
    connect_all(&auth, GRANTS).await;
    let corrupt = grant_key(&auth, 417);
    auth.store()
        .put(
            &corrupt,
            SecretBytes::new(b"{\"not\": \"a grant\"".to_vec()),
            Precondition::None,
        )
        .await
        .expect("the record is overwritten");
    drop(auth);
    sandbox.reset_stats();

    let started = Instant::now();
    let mut command = cli.command(&["keep-alive", "--once", "--older-than", "0s", "--json"]);
    command.stdin(Stdio::null());
    let output = tokio::time::timeout(Duration::from_secs(300), command.output())
        .await
        .expect("keep-alive finishes")
        .expect("the binary runs");
    let run = common::Run::from(output);
    eprintln!(
        "keep-alive --once over {GRANTS} grants took {:?}",
        started.elapsed()
    );
    run.expect_code(7).no_secret();
    let report = run.json();
    assert_eq!(report["swept"], true);
    assert_eq!(report["checked"], GRANTS);
    assert_eq!(report["refreshed"], GRANTS - 1);
    let failed = report["failed"].as_array().expect("failed is an array");
    assert_eq!(failed.len(), 1, "{report:#}");
    assert_eq!(failed[0]["record"], corrupt.to_string());
    assert_eq!(failed[0]["company"], company_uuid(417).to_string());
    assert_eq!(failed[0]["exit_code"], 7);
    let stats = sandbox.stats();
    assert_eq!(
        stats.refreshes,
        (GRANTS - 1) as u64,
        "one rotation per readable grant"
    );
    assert_eq!(stats.refresh_token_reuses, 0);
    assert!(stats.grant_revocations.is_empty());

    // The table says the same, for a person.
    sandbox.reset_stats();
    let text = cli
        .run(&["keep-alive", "--once", "--older-than", "0s"])
        .await;
    text.expect_code(7).no_secret();
    assert!(text.stdout.contains("CHECKED"), "{}", text.stdout);
    assert!(
        text.stdout.contains(&corrupt.to_string()),
        "{}",
        text.stdout
    );
    assert!(
        text.stderr.contains("1 record(s) failed"),
        "{}",
        text.stderr
    );
    assert_eq!(sandbox.stats().refreshes, (GRANTS - 1) as u64);

    let health = cli.run(&["health", "--json"]).await;
    health.expect_code(7);
    let health = health.json();
    assert_eq!(health["healthy"], false);
    assert_eq!(health["store"]["reachable"], true);
    assert_eq!(health["lease"]["reachable"], true);
    assert!(health["listing_error"].is_string(), "{health:#}");
    let status = cli.run(&["status", "--check", "--json"]).await;
    status.expect_code(7);
    assert!(
        status.stderr.contains("store: reachable"),
        "{}",
        status.stderr
    );
    assert!(
        status.stderr.contains("lease: reachable"),
        "{}",
        status.stderr
    );
    sandbox.shutdown().await;
}

/// Without a record that fails, `keep-alive --once` exits 0; grants younger than
/// `--older-than` are left alone; `health` is green.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_once_exits_0_and_leaves_young_grants_alone() {
    let sandbox = start_sandbox(3).await;
    let cli = Cli::new(&sandbox);
    let auth = auth(sandbox.base_url().as_str(), &cli.dir().join("store"));
    connect_all(&auth, 3).await;
    drop(auth);
    sandbox.reset_stats();
    let young = cli.run(&["keep-alive", "--once", "--json"]).await;
    young.ok();
    assert_eq!(young.json()["refreshed"], 0);
    assert_eq!(young.json()["checked"], 3);
    assert_eq!(sandbox.stats().refreshes, 0);
    let all = cli
        .run(&["keep-alive", "--once", "--older-than", "0s", "--json"])
        .await;
    all.ok();
    assert_eq!(all.json()["refreshed"], 3);
    assert_eq!(sandbox.stats().refreshes, 3);
    let health = cli.run(&["health", "--json"]).await;
    health.ok();
    assert_eq!(health.json()["healthy"], true);
    assert_eq!(health.json()["connections"], 3);
    cli.run(&["keep-alive", "--every", "soon"])
        .await
        .expect_code(2);
    sandbox.shutdown().await;
}

/// A replica's instructions.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Role {
    sandbox_url: String,
    dir: PathBuf,
    every_ms: u64,
    run_for_ms: u64,
}

/// What a replica did.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Runs {
    swept: Vec<u64>,
    skipped: usize,
    refreshed: usize,
}

/// A replica: `spawn_keep_alive` for a while, then a graceful shutdown. Prints its runs as
/// JSON on a line starting with `runs=`.
async fn replica(role: Role) {
    let auth = auth(&role.sandbox_url, &role.dir);
    let config = KeepAliveConfig::default()
        .every(Duration::from_millis(role.every_ms))
        .sweep(KeepAliveOptions::default().older_than(Duration::ZERO));
    let mut handle = auth.spawn_keep_alive(config).expect("keep-alive starts");
    let deadline = tokio::time::Instant::now() + Duration::from_millis(role.run_for_ms);
    let mut runs = Runs {
        swept: Vec::new(),
        skipped: 0,
        refreshed: 0,
    };
    let epoch = std::time::SystemTime::UNIX_EPOCH;
    while let Ok(Some(run)) = tokio::time::timeout_at(deadline, handle.next_run()).await {
        match run.expect("a sweep does not fail") {
            KeepAliveRun::Swept(report) => {
                assert_eq!(report.failures(), 0, "{report:?}");
                runs.refreshed += report.refreshed.len();
                runs.swept.push(
                    std::time::SystemTime::now()
                        .duration_since(epoch)
                        .unwrap()
                        .as_millis() as u64,
                );
            }
            _ => runs.skipped += 1,
        }
    }
    handle.shutdown().await;
    auth.token_manager()
        .unwrap()
        .flush()
        .await
        .expect("nothing pending");
    println!("runs={}", serde_json::to_string(&runs).unwrap());
}

/// Two OS processes run `spawn_keep_alive` every 2 s over one file store for 9 s: between them
/// one sweep per interval (the other skips), each sweep refreshes every grant once (the
/// sandbox counts sweeps x grants rotations), and no refresh token is presented twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sweep_once_per_interval() {
    const TEST: &str = "two_replicas_sweep_once_per_interval";
    const GRANTS: usize = 20;
    const EVERY_MS: u64 = 2000;
    const RUN_FOR_MS: u64 = 9000;
    if let Ok(role) = std::env::var(ROLE_VAR) {
        replica(serde_json::from_str(&role).expect("a role")).await;
        return;
    }
    let sandbox = start_sandbox(GRANTS).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let url = sandbox.base_url().to_string();
    let setup = auth(&url, &store);
    connect_all(&setup, GRANTS).await;
    drop(setup);
    sandbox.reset_stats();
    let role = Role {
        sandbox_url: url,
        dir: store,
        every_ms: EVERY_MS,
        run_for_ms: RUN_FOR_MS,
    };
    let exe = Path::new("/proc/self/exe");
    let children: Vec<_> = (0..2)
        .map(|_| {
            tokio::process::Command::new(exe)
                .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
                .env(ROLE_VAR, serde_json::to_string(&role).unwrap())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn a replica process")
        })
        .collect();
    let mut all = Vec::new();
    for child in children {
        let output = child.wait_with_output().await.expect("the replica ends");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "replica failed:\n{stdout}\n{stderr}"
        );
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("runs=").map(|(_, runs)| runs))
            .unwrap_or_else(|| panic!("no runs from a replica:\n{stdout}\n{stderr}"));
        all.push(serde_json::from_str::<Runs>(line).unwrap());
    }
    let swept: usize = all.iter().map(|r| r.swept.len()).sum();
    let skipped: usize = all.iter().map(|r| r.skipped).sum();
    let refreshed: usize = all.iter().map(|r| r.refreshed).sum();
    let intervals = RUN_FOR_MS.div_ceil(EVERY_MS) as usize;
    eprintln!("{TEST}: {all:?}; {intervals} intervals");
    assert!(
        (intervals - 1..=intervals).contains(&swept),
        "one sweep per interval between the replicas: {swept} sweeps in {intervals} intervals"
    );
    assert!(
        skipped >= intervals - 1,
        "the other replica skipped: {skipped}"
    );
    let mut times: Vec<u64> = all.iter().flat_map(|r| r.swept.clone()).collect();
    times.sort_unstable();
    assert!(
        times.windows(2).all(|w| w[1] - w[0] >= EVERY_MS / 2),
        "no two sweeps in one interval: {times:?}"
    );
    let stats = sandbox.stats();
    assert_eq!(
        refreshed,
        swept * GRANTS,
        "every sweep refreshed every grant"
    );
    assert_eq!(
        stats.refreshes, refreshed as u64,
        "the sandbox counted the same rotations"
    );
    assert_eq!(stats.refresh_token_reuses, 0, "no refresh token twice");
    assert!(stats.grant_revocations.is_empty());
    sandbox.shutdown().await;
}
