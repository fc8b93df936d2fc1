//! Every `pleo-auth` subcommand, run as a real process against an in-process sandbox and a file
//! store in a temporary directory.
#![cfg(feature = "cli")]

mod common;

use std::time::Duration;

use common::{Cli, answer_consent, browser, entry, sandbox};
use pleo_auth_sandbox::seed;
use tokio::io::{AsyncBufReadExt, BufReader};

const ACME_DK: &str = "0c000000-0000-4000-8000-000000000001";
const ACME_SE: &str = "0c000000-0000-4000-8000-000000000002";
const GLOBEX: &str = "0c000000-0000-4000-8000-000000000003";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_stores_the_grant_and_status_shows_it() {
    let sandbox = sandbox(Some(seed::ACME_DK)).await;
    let cli = Cli::new(&sandbox);

    let login = cli.login(&["--tenant", "acme-dk", "--no-browser"]).await;
    login.ok().no_secret();
    assert!(
        login
            .stdout
            .contains(&format!("Connected company {ACME_DK} in sandbox")),
        "{}",
        login.stdout
    );
    assert!(login.stdout.contains("scopes: users:read"));
    assert!(login.stdout.contains("tenant: acme-dk"));
    // PKCE S256 and the loopback redirect URI are in the printed URL.
    let query = login_url_params(&login.stdout);
    assert_eq!(query("code_challenge_method").as_deref(), Some("S256"));
    assert!(
        query("redirect_uri")
            .unwrap()
            .starts_with("http://127.0.0.1:")
    );

    let status = cli.run(&["status", "--json"]).await;
    status.ok().no_secret();
    let json = status.json();
    let grant = entry(&json, ACME_DK);
    assert_eq!(grant["tenant"], "acme-dk");
    assert_eq!(grant["method"], "oauth");
    assert_eq!(grant["environment"], "sandbox");
    assert_eq!(grant["state"], "active");
    assert_eq!(grant["scopes"], serde_json::json!(["users:read"]));
    assert_eq!(grant["generation"], 1);

    let table = cli.run(&["status"]).await;
    table.ok().no_secret();
    let header = table.stdout.lines().next().unwrap();
    for column in ["TENANT", "PLEO COMPANY", "METHOD", "ENVIRONMENT", "STATE"] {
        assert!(header.contains(column), "{header}");
    }
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.contains("acme-dk") && l.contains(ACME_DK) && l.contains("active")),
        "{}",
        table.stdout
    );
}

fn login_url_params(stdout: &str) -> impl Fn(&str) -> Option<String> {
    let url = stdout
        .lines()
        .find(|l| l.starts_with("http"))
        .map(|l| url::Url::parse(l).unwrap())
        .expect("a URL was printed");
    move |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_refuses_another_company_than_expected() {
    let sandbox = sandbox(None).await;
    let cli = Cli::new(&sandbox);
    // Globex is expected (and preselected), but the user picks Acme Denmark: exit 5, nothing
    // stored.
    let login = cli
        .start_login(&["--company", GLOBEX, "--no-browser"])
        .await;
    let back = answer_consent(&login.url, &format!("urn:pleo:company:{ACME_DK}"), "allow").await;
    browser().get(&back).send().await.unwrap();
    let login = login.finish().await;
    login.expect_code(5).no_secret();
    assert!(login.stderr.contains("another company"), "{}", login.stderr);
    let status = cli.run(&["status", "--json"]).await;
    assert_eq!(status.ok().json(), serde_json::json!([]));
    // Acme Denmark was not kept, so its unwanted grant was revoked (its installation deleted).
    assert_eq!(sandbox.stats().total_revocations(), 1);

    // Once Acme Denmark is kept, a refused grant of it cannot be revoked without ending the kept
    // one: status shows it as dangling.
    let login = cli
        .start_login(&["--company", ACME_DK, "--no-browser"])
        .await;
    let back = answer_consent(&login.url, &format!("urn:pleo:company:{ACME_DK}"), "allow").await;
    browser().get(&back).send().await.unwrap();
    login.finish().await.ok();
    let login = cli
        .start_login(&["--company", GLOBEX, "--no-browser"])
        .await;
    let back = answer_consent(&login.url, &format!("urn:pleo:company:{ACME_DK}"), "allow").await;
    browser().get(&back).send().await.unwrap();
    login.finish().await.expect_code(5);
    assert_eq!(
        sandbox.stats().total_revocations(),
        1,
        "the kept grant is not ended"
    );
    let status = cli.run(&["status", "--json"]).await;
    let json = status.ok().no_secret().json();
    let items = json.as_array().unwrap();
    let dangling = items
        .iter()
        .find(|i| i["state"] == "dangling")
        .unwrap_or_else(|| panic!("a dangling grant is listed: {json:#}"));
    assert_eq!(dangling["company"], ACME_DK);
    assert_eq!(dangling["dangling_reason"], "refused");
    assert_eq!(dangling["revocation"], "unsafe");
    let table = cli.run(&["status"]).await;
    assert!(
        table
            .ok()
            .stderr
            .contains("not kept, and are not revoked yet"),
        "{}",
        table.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_reports_a_denied_consent() {
    let sandbox = sandbox(None).await;
    let cli = Cli::new(&sandbox);
    let login = cli.start_login(&["--no-browser"]).await;
    let back = answer_consent(&login.url, &format!("urn:pleo:company:{ACME_DK}"), "deny").await;
    assert!(back.contains("error=access_denied"), "{back}");
    browser().get(&back).send().await.unwrap();
    let login = login.finish().await;
    login.expect_code(6).no_secret();
    assert!(login.stderr.contains("access denied"), "{}", login.stderr);
    assert_eq!(
        cli.run(&["status", "--json"]).await.ok().json(),
        serde_json::json!([])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_the_tokens_once() {
    let sandbox = sandbox(Some(seed::ACME_DK)).await;
    let cli = Cli::new(&sandbox);
    cli.login(&["--no-browser"]).await.ok();
    let before = sandbox.stats().refreshes;

    let refresh = cli.run(&["refresh", "--company", ACME_DK]).await;
    refresh.ok().no_secret();
    assert!(
        refresh.stdout.contains("generation 1 -> 2"),
        "{}",
        refresh.stdout
    );
    assert_eq!(sandbox.stats().refreshes, before + 1);
    assert_eq!(sandbox.stats().refresh_token_reuses, 0);

    // Without a target, every active grant is refreshed.
    cli.run(&["refresh"]).await.ok();
    assert_eq!(
        entry(&cli.run(&["status", "--json"]).await.json(), ACME_DK)["generation"],
        3
    );

    // A company that is not connected: exit 3.
    cli.run(&["refresh", "--company", ACME_SE])
        .await
        .expect_code(3);
}

/// A refresh whose store write fails after Pleo rotated: the command exits 7 naming the store
/// and the recovery file (0600), which holds the rotated pair; the next command writes it to the
/// store first, and the grant goes on without any refresh token presented twice.
///
/// The sandbox answers the token request after a delay; meanwhile the store's directory is
/// moved away and a plain file put in its place, so every store call of the running command
/// fails (also for root, unlike permissions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_whose_store_write_fails_is_saved_and_applied_by_the_next_run() {
    use pleo_auth_sandbox::{Endpoint, Fault};

    let sandbox = sandbox(Some(seed::ACME_DK)).await;
    let cli = Cli::new(&sandbox);
    cli.login(&["--no-browser"]).await.ok();
    let store = cli.dir().join("store");
    let away = cli.dir().join("store.away");
    let before = sandbox.stats().hits(Endpoint::Token);

    sandbox.inject_fault(
        Endpoint::Token,
        Fault::Delay(Duration::from_millis(1500)),
        1,
    );
    let refreshing = cli
        .command(&["refresh", "--company", ACME_DK])
        .spawn()
        .expect("the binary starts");
    let started = std::time::Instant::now();
    while sandbox.stats().hits(Endpoint::Token) == before {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the refresh was sent"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    std::fs::rename(&store, &away).unwrap();
    std::fs::write(&store, b"not a directory").unwrap();
    let output = tokio::time::timeout(Duration::from_secs(60), refreshing.wait_with_output())
        .await
        .expect("the refresh ends")
        .unwrap();
    let failed = common::Run::from(output);
    eprintln!("TIMING refresh ended after {:?}", started.elapsed());
    failed.expect_code(7).no_secret();
    assert!(
        failed
            .stderr
            .contains("did not take the rotated tokens of 1 grant"),
        "{}",
        failed.stderr
    );
    assert!(
        failed.stderr.contains(&store.display().to_string()),
        "names the store: {}",
        failed.stderr
    );
    let recovery_dir = cli.dir().join(".local/state/pleo-auth");
    let files: Vec<_> = std::fs::read_dir(&recovery_dir)
        .expect("the recovery folder exists")
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        failed.stderr.contains(&files[0].display().to_string()),
        "names the file: {}",
        failed.stderr
    );
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "only the user reads the recovery file");
    }
    let stats = sandbox.stats();
    assert_eq!(stats.refreshes, 1, "Pleo rotated");

    // The store is back: the next command applies the file before anything else.
    std::fs::remove_file(&store).unwrap();
    std::fs::rename(&away, &store).unwrap();
    let status = cli.run(&["status", "--json"]).await;
    status.ok().no_secret();
    assert!(
        status.stderr.contains("Applied 1 rotated token pair"),
        "{}",
        status.stderr
    );
    assert_eq!(entry(&status.json(), ACME_DK)["generation"], 2);
    assert!(!files[0].exists(), "the applied file is removed");

    // The stored refresh token is the live one: Pleo accepts it, and no refresh token was ever
    // presented twice. (The failed run's refresh lease is still recorded in the store and runs
    // out after its TTL, so the next refresh through the CLI would first wait for it.)
    let stored = pleo_auth::stores::file::FileStore::open(&store).unwrap();
    let key = pleo_auth::layout::oauth_grant(&pleo_auth::CredentialKey::new(
        pleo_auth::EnvironmentName::new("sandbox").unwrap(),
        pleo_auth::ClientId::new(seed::DEMO_CLIENT_ID).unwrap(),
        ACME_DK.parse::<pleo_auth::CompanyId>().unwrap().into(),
    ));
    let (grant, _) = pleo_auth::RecordStoreExt::get_record::<pleo_auth::OAuthGrant>(&stored, &key)
        .await
        .unwrap()
        .expect("the grant is stored");
    assert_eq!(grant.generation, 2);
    let answer = browser()
        .post(sandbox.auth_url().join("oauth/token").unwrap())
        .basic_auth(seed::DEMO_CLIENT_ID, Some(seed::DEMO_CLIENT_SECRET))
        .form(&[
            ("grant_type", "refresh_token"),
            (
                "refresh_token",
                grant.refresh_token.unwrap().expose_secret(),
            ),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "the recovered refresh token is live");
    let stats = sandbox.stats();
    assert_eq!(stats.refreshes, 2);
    assert_eq!(stats.refresh_token_reuses, 0);
    assert_eq!(stats.total_revocations(), 0);
    assert!(stats.refresh_token_uses.values().all(|uses| *uses == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_revokes_and_later_use_needs_reauthorization() {
    let sandbox = sandbox(Some(seed::ACME_DK)).await;
    let cli = Cli::new(&sandbox);
    cli.login(&["--tenant", "acme-dk", "--no-browser"])
        .await
        .ok();

    let disconnect = cli.run(&["disconnect", "--tenant", "acme-dk"]).await;
    disconnect.ok().no_secret();
    assert!(
        disconnect.stdout.contains("revoked at Pleo"),
        "{}",
        disconnect.stdout
    );
    assert_eq!(
        sandbox
            .stats()
            .revocations(pleo_auth_sandbox::RevocationCause::InstallationDeleted),
        1
    );
    let status = cli.run(&["status", "--json"]).await.json();
    assert_eq!(entry(&status, ACME_DK)["state"], "revoked");

    // The revoked grant is reported as needing a new consent (exit 4), not retried.
    cli.run(&["api", "GET", "/v2/employees", "--company", ACME_DK])
        .await
        .expect_code(4)
        .no_secret();
    // Nothing to disconnect for an unknown company: exit 3.
    cli.run(&["disconnect", "--company", ACME_SE])
        .await
        .expect_code(3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_revoked_at_pleo_is_reported_as_needing_reauthorization() {
    let sandbox = sandbox(Some(seed::ACME_DK)).await;
    let cli = Cli::new(&sandbox);
    cli.login(&["--no-browser"]).await.ok();
    sandbox.revoke_grant(pleo_auth_sandbox::RevokeTarget::Client {
        client_id: seed::DEMO_CLIENT_ID.to_owned(),
        subject: seed::ACME_DK,
    });
    let call = cli
        .run(&["api", "GET", "/v2/employees", "--company", ACME_DK])
        .await;
    call.expect_code(4).no_secret();
    assert!(call.stderr.contains("pleo-auth login"), "{}", call.stderr);
    let status = cli.run(&["status", "--json"]).await.json();
    assert_eq!(entry(&status, ACME_DK)["state"], "needs_reauthorization");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_prints_to_pipes_only_unless_revealed() {
    let sandbox = sandbox(Some(seed::ACME_DK)).await;
    let cli = Cli::new(&sandbox);
    cli.login(&["--tenant", "acme-dk", "--no-browser"])
        .await
        .ok();

    // Piped: the bare access token, which the sandbox accepts.
    let piped = cli.run(&["token", "--tenant", "acme-dk"]).await;
    piped.ok();
    let token = piped.stdout.trim().to_owned();
    assert!(
        token.starts_with(common::CANARY),
        "an access token: {token:.12}"
    );
    assert!(!piped.stderr.contains(common::CANARY));
    let employees = reqwest::Client::new()
        .get(sandbox.api_url().join("v2/employees").unwrap())
        .query(&[("company_id", ACME_DK)])
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(employees.status(), 200);

    let header = cli.run(&["token", "--company", ACME_DK, "--header"]).await;
    assert_eq!(header.ok().stdout.trim(), format!("Bearer {token}"));

    // On a terminal (a pseudo-terminal from `script`), it refuses without --reveal.
    let shell = |extra: &str| format!("{} token --company {ACME_DK}{extra}", common::BIN);
    let refused = cli.run_in_terminal(&shell("")).await;
    refused.expect_code(2);
    assert!(
        refused
            .stdout
            .contains("refusing to print a secret to a terminal")
    );
    assert!(!refused.stdout.contains(common::CANARY));
    let revealed = cli.run_in_terminal(&shell(" --reveal")).await;
    revealed.ok();
    assert!(revealed.stdout.contains(&token));

    // A company without a credential: exit 3.
    cli.run(&["token", "--company", GLOBEX])
        .await
        .expect_code(3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_added_replaced_and_removed_from_stdin() {
    let sandbox = sandbox(None).await;
    let mut cli = Cli::new(&sandbox);
    cli.env("PLEO_KEY_SCOPES", "users:read");
    let key = sandbox.mint_integrated_key(seed::DEMO_CLIENT_ID, seed::GLOBEX);

    // No key on stdin: a usage error; a key flag does not exist.
    cli.run_with_stdin(&["keys", "add"], Some("  \n"))
        .await
        .expect_code(2);
    cli.run(&["keys", "add", "--key", "x"]).await.expect_code(2);
    // A key of another company than expected: exit 5, nothing stored.
    cli.run_with_stdin(&["keys", "add", "--company", ACME_DK], Some(&key))
        .await
        .expect_code(5)
        .no_secret();

    let added = cli
        .run_with_stdin(
            &["keys", "add", "--tenant", "globex"],
            Some(&format!("{key}\n")),
        )
        .await;
    added.ok().no_secret();
    assert!(
        added.stdout.contains(&format!("company {GLOBEX}")),
        "{}",
        added.stdout
    );
    assert!(added.stdout.contains("****"), "masked: {}", added.stdout);

    let status = cli.run(&["status", "--json"]).await.json();
    let stored = entry(&status, GLOBEX);
    assert_eq!(stored["method"], "integrated_api_key");
    assert_eq!(stored["tenant"], "globex");
    assert_eq!(stored["state"], "active");
    assert!(stored["masked_key"].as_str().unwrap().starts_with("****"));

    // The key works through `api`.
    let call = cli
        .run(&["api", "GET", "/v2/employees", "--tenant", "globex"])
        .await;
    call.ok().no_secret();
    assert!(
        call.json()["data"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    );

    // Replace with a new key of the same company; a key of another company is refused.
    let other = sandbox.mint_integrated_key(seed::DEMO_CLIENT_ID, seed::ACME_SE);
    cli.run_with_stdin(&["keys", "replace", "--tenant", "globex"], Some(&other))
        .await
        .expect_code(5);
    let new_key = sandbox.mint_integrated_key(seed::DEMO_CLIENT_ID, seed::GLOBEX);
    cli.run_with_stdin(&["keys", "replace", "--company", GLOBEX], Some(&new_key))
        .await
        .ok()
        .no_secret();
    assert_eq!(
        entry(&cli.run(&["status", "--json"]).await.json(), GLOBEX)["generation"],
        2
    );

    // The old key is revoked at Pleo; the stored (new) one keeps working.
    sandbox.revoke_api_key(&key);
    cli.run(&["api", "GET", "/v2/employees", "--company", GLOBEX])
        .await
        .ok();

    // Revoking the stored key: the API's 401 marks it, exit 4, and status shows it.
    sandbox.revoke_api_key(&new_key);
    cli.run(&["api", "GET", "/v2/employees", "--company", GLOBEX])
        .await
        .expect_code(4);
    assert_eq!(
        entry(&cli.run(&["status", "--json"]).await.json(), GLOBEX)["state"],
        "needs_replacement"
    );

    let removed = cli.run(&["keys", "remove", "--tenant", "globex"]).await;
    removed.ok().no_secret();
    assert_eq!(
        cli.run(&["status", "--json"]).await.json(),
        serde_json::json!([])
    );
    cli.run(&["keys", "remove", "--company", GLOBEX])
        .await
        .expect_code(3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_calls_and_their_refusals() {
    let sandbox = sandbox(Some(seed::ACME_DK)).await;
    let cli = Cli::new(&sandbox);
    cli.login(&[
        "--tenant",
        "acme-dk",
        "--scopes",
        "users:read export-jobs:write",
        "--no-browser",
    ])
    .await
    .ok();

    // With every log target at TRACE, no secret shows up in the output either.
    let mut traced = Cli::new(&sandbox);
    traced.env(
        "PLEO_STORE",
        &format!("file:{}", cli.dir().join("store").display()),
    );
    traced.env("PLEO_LOG", "trace");
    let logged = traced
        .run(&["api", "GET", "/v2/employees", "--company", ACME_DK])
        .await;
    logged.ok().no_secret();
    assert!(logged.stderr.contains("TRACE"), "tracing was on");

    let get = cli
        .run(&["api", "GET", "/v2/employees", "--company", ACME_DK])
        .await;
    get.ok().no_secret();
    let employees = get.json();
    assert!(
        employees["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["companyId"] == ACME_DK)
    );
    let log = sandbox.request_log();
    assert_eq!(log.last().unwrap().company_id.as_deref(), Some(ACME_DK));

    let before = sandbox.request_log().len();
    // The tenant is linked to Acme Denmark; naming Globex is refused before sending: exit 5.
    cli.run(&[
        "api",
        "GET",
        "/v2/employees",
        "--tenant",
        "acme-dk",
        "--company",
        GLOBEX,
    ])
    .await
    .expect_code(5);
    // A company_id in the path that is not the request's company: exit 5.
    cli.run(&[
        "api",
        "GET",
        &format!("/v2/employees?company_id={GLOBEX}"),
        "--company",
        ACME_DK,
    ])
    .await
    .expect_code(5);
    assert_eq!(sandbox.request_log().len(), before, "nothing was sent");

    // Not connected: exit 3. A scope the grant lacks: exit 6, naming the scope.
    cli.run(&["api", "GET", "/v2/employees", "--company", ACME_SE])
        .await
        .expect_code(3);
    let forbidden = cli
        .run(&["api", "GET", "/v1/vendors", "--company", ACME_DK])
        .await;
    forbidden.expect_code(6).no_secret();
    assert!(
        forbidden.stderr.contains("vendors:read"),
        "{}",
        forbidden.stderr
    );

    // A POST with a JSON body (from stdin, or inline) reaches the API.
    let post = cli
        .run_with_stdin(
            &[
                "api",
                "POST",
                "/v1/export-jobs",
                "--company",
                ACME_DK,
                "--data",
                "-",
            ],
            Some(r#"{"from": "2026-01-01"}"#),
        )
        .await;
    post.ok().no_secret();
    assert_eq!(post.json()["data"]["companyId"], ACME_DK, "{}", post.stdout);
    let last = sandbox.request_log().pop().unwrap();
    assert_eq!((last.method.as_str(), last.status), ("POST", 201));
    cli.run(&[
        "api",
        "POST",
        "/v1/export-jobs",
        "--company",
        ACME_DK,
        "--data",
        "{not json",
    ])
    .await
    .expect_code(2);
    // Usage errors: no target, a bad method.
    cli.run(&["api", "GET", "/v2/employees"])
        .await
        .expect_code(2);
    cli.run(&["api", "G E T", "/v2/employees", "--company", ACME_DK])
        .await
        .expect_code(2);
    // Pleo unavailable: exit 9.
    sandbox.inject_fault(
        pleo_auth_sandbox::Endpoint::Api,
        pleo_auth_sandbox::Fault::ServerError(503),
        10,
    );
    cli.run(&["api", "GET", "/v2/employees", "--company", ACME_DK])
        .await
        .expect_code(9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_failures_and_configuration_have_their_exit_codes() {
    let sandbox = sandbox(Some(seed::ACME_DK)).await;
    let mut cli = Cli::new(&sandbox);

    // A store that cannot be opened: exit 7.
    cli.env("PLEO_STORE", "file:/proc/pleo-auth-test/store");
    let status = cli.run(&["status"]).await;
    status.expect_code(7);
    assert!(status.stderr.contains("file store"), "{}", status.stderr);
    // An unknown scheme is a configuration error (8); a password on the command line and an
    // unknown environment are usage errors (2); a sandbox without its URL is configuration.
    cli.run(&["status", "--store", "ftp://x"])
        .await
        .expect_code(8);
    cli.run(&["status", "--store", "redis://user:secret@127.0.0.1:6379"])
        .await
        .expect_code(2);
    cli.run(&["status", "--env", "moon"]).await.expect_code(2);
    cli.unset("PLEO_SANDBOX_URL");
    cli.run(&["status"]).await.expect_code(8);

    // The config file supplies what the environment does not; flags win over both.
    let dir = cli.dir();
    let store = dir.join("from-config");
    let config = dir.join("pleo.toml");
    std::fs::write(
        &config,
        format!(
            "env = \"sandbox\"\nsandbox_url = \"{}\"\nstore = \"file:{}\"\n",
            sandbox.base_url(),
            store.display()
        ),
    )
    .unwrap();
    cli.unset("PLEO_STORE");
    cli.unset("PLEO_ENV");
    cli.env("PLEO_CONFIG", config.to_str().unwrap());
    cli.login(&["--no-browser"]).await.ok();
    assert!(store.is_dir(), "the config file's store was used");
    let listed = cli.run(&["status", "--json"]).await.json();
    assert_eq!(entry(&listed, ACME_DK)["environment"], "sandbox");
    // The environment variable wins over the file; the flag wins over the variable.
    cli.env(
        "PLEO_STORE",
        &format!("file:{}", dir.join("from-env").display()),
    );
    assert_eq!(
        cli.run(&["status", "--json"]).await.json(),
        serde_json::json!([])
    );
    let flagged = cli
        .run(&[
            "status",
            "--json",
            "--store",
            &format!("file:{}", store.display()),
        ])
        .await;
    assert_eq!(flagged.json().as_array().unwrap().len(), 1);
    // An invalid config file: exit 8.
    std::fs::write(&config, "colour = \"blue\"\n").unwrap();
    cli.run(&["status"]).await.expect_code(8);

    // Without a client id outside the sandbox, login is a configuration error.
    cli.unset("PLEO_CONFIG");
    cli.env("PLEO_ENV", "staging");
    let login = cli.run(&["login", "--no-browser"]).await;
    login.expect_code(8);
    assert!(login.stderr.contains("PLEO_CLIENT_ID"), "{}", login.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_documents_the_exit_codes_and_configuration() {
    let sandbox = sandbox(None).await;
    let cli = Cli::new(&sandbox);
    let help = cli.run(&["--help"]).await;
    help.ok();
    for needle in [
        "Exit codes:",
        "3    not connected",
        "4    needs reauthorization",
        "7    store error",
        "8    configuration error",
        "9    network or timeout",
        "PLEO_CLIENT_SECRET",
        "PLEO_STORE",
        "login",
        "status",
        "refresh",
        "disconnect",
        "token",
        "keys",
        "api",
        "sandbox",
        "demo",
    ] {
        assert!(help.stdout.contains(needle), "--help lacks {needle:?}");
    }
    cli.run(&["frobnicate"]).await.expect_code(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_runs_on_a_port_until_terminated() {
    let sandbox = sandbox(None).await;
    let cli = Cli::new(&sandbox);
    let mut child = cli
        .command(&["sandbox", "--auto-approve", ACME_DK])
        .spawn()
        .expect("sandbox starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the URL is printed in time")
        .unwrap()
        .expect("a first line");
    let base = url::Url::parse(&first).expect("the first line is the base URL");
    assert_eq!(base.host_str(), Some("127.0.0.1"));

    let seed_data: serde_json::Value = reqwest::get(base.join("_sandbox/seed").unwrap())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(seed_data.to_string().contains(ACME_DK));
    // It auto-approves: the authorize endpoint redirects with a code.
    let authorize = browser()
        .get(base.join("oauth/authorize").unwrap())
        .query(&[
            ("response_type", "code"),
            ("client_id", seed::DEMO_CLIENT_ID),
            ("redirect_uri", "http://127.0.0.1:9/callback"),
            ("scope", "users:read"),
            ("state", "s"),
            (
                "code_challenge",
                "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            ),
            ("code_challenge_method", "S256"),
        ])
        .send()
        .await
        .unwrap();
    assert!(authorize.status().is_redirection());
    assert!(
        authorize.headers()["location"]
            .to_str()
            .unwrap()
            .contains("code=")
    );

    let pid = child.id().expect("running") as i32;
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the sandbox stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        reqwest::get(base.join("_sandbox/seed").unwrap())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_the_whole_story() {
    let sandbox = sandbox(None).await;
    let cli = Cli::new(&sandbox);
    let started = std::time::Instant::now();
    let demo = cli.run(&["demo"]).await;
    let took = started.elapsed();
    demo.ok();
    for fact in [
        "Connect Acme Denmark ApS with OAuth 2.0",
        "connected company 0c000000-0000-4000-8000-000000000001",
        "refused before sending: wrong_company",
        "requests that reached Pleo: 0",
        "100 x HTTP 200; refreshes at the token endpoint: 1; refresh tokens reused: 0",
        "generation 1 -> 2",
        "Integrated API key",
        "key ****",
        "needs_reauthorization",
        "All checks passed",
    ] {
        assert!(
            demo.stdout.contains(fact),
            "the demo lacks {fact:?}:\n{}",
            demo.stdout
        );
    }
    assert!(took < Duration::from_secs(15), "the demo took {took:?}");
}

#[cfg(feature = "encryption")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_moves_every_record_to_the_new_key() {
    const KEY_A: &str = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=";
    const KEY_B: &str = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=";
    let sandbox = sandbox(Some(seed::ACME_DK)).await;
    let mut cli = Cli::new(&sandbox);
    cli.env("PLEO_ENCRYPTION_KEY", KEY_A);
    cli.login(&["--tenant", "acme-dk", "--no-browser"])
        .await
        .ok();

    // Rotate: B is the key, A (id `cli`, as a plain key is named) only opens old records.
    cli.env("PLEO_ENCRYPTION_KEY", &format!("b:{KEY_B}"));
    let without_a = cli.run(&["status", "--json"]).await;
    assert_ne!(
        without_a.code,
        Some(0),
        "records under A do not open with B alone"
    );
    cli.env("PLEO_ENCRYPTION_OLD_KEYS", KEY_A);
    let before = cli.run(&["status", "--json"]).await;
    before.ok();
    assert_eq!(entry(&before.json(), ACME_DK)["state"], "active");

    let rewrap = cli.run(&["rewrap"]).await;
    rewrap.ok().no_secret();
    let counts = rewrap.stdout.lines().next().unwrap_or_default().to_owned();
    assert!(counts.starts_with("checked "), "{}", rewrap.stdout);
    assert!(!counts.contains("rewrapped 0"), "{counts}");
    assert!(counts.ends_with("failed 0"), "{counts}");
    let again = cli.run(&["rewrap"]).await;
    again.ok();
    assert!(again.stdout.contains("rewrapped 0,"), "{}", again.stdout);

    cli.unset("PLEO_ENCRYPTION_OLD_KEYS");
    let after = cli.run(&["status", "--json"]).await;
    after.ok();
    assert_eq!(
        entry(&after.json(), ACME_DK)["state"],
        "active",
        "B alone opens every record"
    );

    cli.unset("PLEO_ENCRYPTION_KEY");
    cli.run(&["rewrap"]).await.expect_code(8);
}
