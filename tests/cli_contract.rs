//! The `pleo-auth` command line as a contract: one test per exit code, the `--json` schemas,
//! and the habits a person at a terminal relies on (paste login over SSH, Ctrl-C at a hidden
//! prompt, an 80-column spinner, `| head`, colours, completions, config files), each run as
//! a real process against an in-process sandbox.
#![cfg(feature = "cli")]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{CANARY, Cli, answer_consent as consent, browser, entry, sandbox};
use pleo_auth_sandbox::{Endpoint, Fault, harness, seed};
use serde_json::Value;

const ACME_DK: &str = "0c000000-0000-4000-8000-000000000001";
const ACME_SE: &str = "0c000000-0000-4000-8000-000000000002";
const GLOBEX: &str = "0c000000-0000-4000-8000-000000000003";

fn keys_of(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("an object: {value:#}"))
        .keys()
        .cloned()
        .collect()
}

fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

// ---------------------------------------------------------------------------------------------
// Exit codes
// ---------------------------------------------------------------------------------------------

/// 0, 2, 3, 4, 5 and 6 from ordinary mistakes: a typo in a UUID, a company that is not
/// connected, a revoked grant, another company's key, a mistyped API path (6, not 3), a denied
/// consent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_0_2_3_4_5_6() {
    let sandbox = sandbox(Some(seed::ACME_DK)).await;
    let mut cli = Cli::new(&sandbox);
    cli.login(&["--no-browser"]).await.ok().no_secret();
    cli.run(&["status"]).await.expect_code(0);

    // 2: a usage error names the input, on one line plus a hint.
    let typo = cli.run(&["token", "--company", "not-a-uuid"]).await;
    typo.expect_code(2);
    assert!(
        typo.stderr.starts_with("error: --company"),
        "{}",
        typo.stderr
    );
    cli.run(&["status", "--frobnicate"]).await.expect_code(2);

    // 3: nothing stored for that company.
    let missing = cli.run(&["token", "--company", GLOBEX]).await;
    missing.expect_code(3);
    assert!(
        missing.stderr.contains("pleo-auth login"),
        "{}",
        missing.stderr
    );

    // 6: a mistyped path is Pleo refusing the request, not "not connected".
    let typo_path = cli
        .run(&["api", "GET", "/v2/employes", "--company", ACME_DK])
        .await;
    typo_path.expect_code(6).no_secret();
    assert!(
        typo_path.stderr.contains("HTTP 404"),
        "{}",
        typo_path.stderr
    );
    assert!(typo_path.stderr.contains("typo"), "{}", typo_path.stderr);

    // 5: an Integrated key of another company than expected.
    cli.env("PLEO_KEY_SCOPES", "users:read");
    let key = sandbox.mint_integrated_key(seed::DEMO_CLIENT_ID, seed::GLOBEX);
    cli.run_with_stdin(&["keys", "add", "--company", ACME_SE], Some(&key))
        .await
        .expect_code(5)
        .no_secret();

    // 4: the grant was revoked at Pleo.
    sandbox.revoke_grant(pleo_auth_sandbox::RevokeTarget::Client {
        client_id: seed::DEMO_CLIENT_ID.to_owned(),
        subject: seed::ACME_DK,
    });
    cli.run(&["api", "GET", "/v2/employees", "--company", ACME_DK])
        .await
        .expect_code(4);
    // status says so too (it used to exit 0 with a broken connection).
    let status = cli.run(&["status"]).await;
    status.expect_code(4);
    assert!(
        status.stdout.contains("needs_reauthorization"),
        "{}",
        status.stdout
    );
}

/// 6: the user denies consent; an unknown scope is refused before anyone waits (preflight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_6_for_a_denied_consent_and_an_invalid_scope() {
    let sandbox = sandbox(None).await;
    let cli = Cli::new(&sandbox);
    let login = cli.start_login(&["--no-browser"]).await;
    let back = consent(&login.url, &format!("urn:pleo:company:{ACME_DK}"), "deny").await;
    browser().get(&back).send().await.unwrap();
    login.finish().await.expect_code(6);

    let started = std::time::Instant::now();
    let scope = cli
        .run(&[
            "login",
            "--no-browser",
            "--scopes",
            "users:read nonsense:scope",
        ])
        .await;
    scope.expect_code(6).no_secret();
    assert!(scope.stderr.contains("invalid_scope"), "{}", scope.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "no wait for a consent"
    );
}

/// 7: a corrupt record fails the command that needs it with 7 (not 2); `status` lists it as
/// corrupt, still shows every other connection, and exits 7.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_7_for_a_corrupt_record_and_status_still_shows_the_rest() {
    use pleo_auth::{ClientId, CredentialKey, EnvironmentName, Precondition, SecretStore, layout};
    let sandbox = sandbox(None).await;
    let mut cli = Cli::new(&sandbox);
    cli.env("PLEO_KEY_SCOPES", "users:read");
    let key = sandbox.mint_integrated_key(seed::DEMO_CLIENT_ID, seed::GLOBEX);
    cli.run_with_stdin(&["keys", "add", "--tenant", "globex"], Some(&key))
        .await
        .ok();
    let other = sandbox.mint_integrated_key(seed::DEMO_CLIENT_ID, seed::ACME_SE);
    cli.run_with_stdin(&["keys", "add"], Some(&other))
        .await
        .ok();

    let store = pleo_auth::stores::file::FileStore::open(cli.dir().join("store")).unwrap();
    let record = layout::api_key(&CredentialKey::new(
        EnvironmentName::new("sandbox").unwrap(),
        ClientId::new(seed::DEMO_CLIENT_ID).unwrap(),
        GLOBEX.parse::<pleo_auth::CompanyId>().unwrap().into(),
    ));
    store
        .put(
            &record,
            b"{not a record".to_vec().into(),
            Precondition::None,
        )
        .await
        .unwrap();

    let call = cli
        .run(&["api", "GET", "/v2/employees", "--company", GLOBEX])
        .await;
    call.expect_code(7).no_secret();

    let status = cli.run(&["status", "--json"]).await;
    status.expect_code(7).no_secret();
    let json = status.json();
    let broken = entry(&json, GLOBEX);
    assert_eq!(broken["state"], "corrupt");
    assert!(broken["error"].is_string(), "{broken:#}");
    assert_eq!(
        entry(&json, ACME_SE)["state"],
        "active",
        "the others are still shown"
    );
    let table = cli.run(&["status"]).await;
    table.expect_code(7);
    assert!(table.stdout.contains("unreadable"), "{}", table.stdout);
    assert!(table.stdout.contains(ACME_SE), "{}", table.stdout);
}

/// 8: a client id Pleo does not know, or a redirect URI not registered for it, is found by the
/// preflight at once instead of after a 300 s wait; a config file that leaks its secret to
/// other users is refused like ssh refuses a private key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_8_for_configuration_found_before_waiting() {
    let sandbox = sandbox(None).await;
    let mut cli = Cli::new(&sandbox);
    cli.env("PLEO_CLIENT_ID", "no-such-client");
    cli.env("PLEO_CLIENT_SECRET", &format!("{CANARY}secret"));
    let started = std::time::Instant::now();
    let unknown = cli.run(&["login", "--no-browser"]).await;
    unknown.expect_code(8).no_secret();
    assert!(
        unknown.stderr.contains("Unknown client"),
        "{}",
        unknown.stderr
    );
    assert!(
        unknown.stderr.contains("PLEO_CLIENT_ID"),
        "{}",
        unknown.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(30));

    cli.unset("PLEO_CLIENT_ID");
    cli.unset("PLEO_CLIENT_SECRET");
    cli.env("PLEO_REDIRECT_URI", "http://127.0.0.1/not-registered");
    let redirect = cli.run(&["login", "--no-browser"]).await;
    redirect.expect_code(8);
    assert!(
        redirect.stderr.contains("redirect URI"),
        "{}",
        redirect.stderr
    );
    cli.unset("PLEO_REDIRECT_URI");

    // A config file with the client secret that others can read: refused, mode named.
    let config = cli.dir().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "client_id = \"{}\"\nclient_secret = \"{CANARY}secret\"\n",
            seed::DEMO_CLIENT_ID
        ),
    )
    .unwrap();
    set_mode(&config, 0o644);
    cli.env("PLEO_CONFIG", config.to_str().unwrap());
    let open = cli.run(&["status"]).await;
    open.expect_code(8).no_secret();
    assert!(open.stderr.contains("chmod 600"), "{}", open.stderr);
    set_mode(&config, 0o600);
    cli.run(&["status"]).await.ok();
    // Without a secret in it, a file others can change only gets a warning.
    std::fs::write(&config, "scopes = \"users:read\"\n").unwrap();
    set_mode(&config, 0o666);
    let warned = cli.run(&["status"]).await;
    warned.ok();
    assert!(warned.stderr.contains("warning:"), "{}", warned.stderr);
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A syntax error in the config file points at line and column and never prints the line
/// (which may hold the client secret).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_syntax_error_points_at_the_place_without_the_secret() {
    let sandbox = sandbox(None).await;
    let mut cli = Cli::new(&sandbox);
    let config = cli.dir().join("config.toml");
    for text in [
        // An unterminated string: the parser would echo the line.
        format!("scopes = \"users:read\"\nclient_secret = \"{CANARY}secret\n"),
        // A value of the wrong type, quoted by the parser's message.
        format!("scopes = \"users:read\"\nclient_secret = {CANARY}x\n"),
        "scopes = \"users:read\"\nclient_secret = 12345\n".to_owned(),
    ] {
        std::fs::write(&config, &text).unwrap();
        set_mode(&config, 0o600);
        cli.env("PLEO_CONFIG", config.to_str().unwrap());
        let run = cli.run(&["status"]).await;
        run.expect_code(8).no_secret();
        assert!(run.stderr.contains("line 2, column"), "{}", run.stderr);
        assert!(!run.stderr.contains("12345"), "{}", run.stderr);
    }
    std::fs::write(&config, "colour = \"blue\"\n").unwrap();
    let unknown = cli.run(&["status"]).await;
    unknown.expect_code(8);
    assert!(
        unknown.stderr.contains("unknown key \"colour\""),
        "{}",
        unknown.stderr
    );
}

/// 9: a login nobody finishes times out with what to check; Pleo answering 503 is 9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_9_for_a_login_timeout_and_an_unavailable_pleo() {
    let sandbox = sandbox(None).await;
    let cli = Cli::new(&sandbox);
    let waited = cli.run(&["login", "--no-browser", "--timeout", "1"]).await;
    waited.expect_code(9);
    assert!(
        waited
            .stderr
            .contains("no authorization arrived within 1 s"),
        "{}",
        waited.stderr
    );
    assert!(waited.stderr.contains("--paste"), "{}", waited.stderr);

    sandbox.inject_fault(Endpoint::Authorize, Fault::ServerError(503), 1);
    cli.run(&["login", "--no-browser"]).await.expect_code(9);
}

/// 1: an answer pleo-auth does not understand (a "Pleo" that answers introspection with
/// something that is not JSON).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_1_for_an_answer_that_makes_no_sense() {
    use axum::routing::get;
    let app = axum::Router::new().route("/v1/introspect", get(|| async { "surprise" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let sandbox = sandbox(None).await;
    let mut cli = Cli::new(&sandbox);
    cli.env("PLEO_SANDBOX_URL", &url);
    cli.run_with_stdin(&["keys", "add"], Some("abcdefgh-0123456789-key"))
        .await
        .expect_code(1)
        .no_secret();
}

/// `disconnect` says truthfully whether Pleo revoked the grant now (0) or the revocation is
/// only recorded for keep-alive because Pleo could not be reached (9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_says_whether_the_revocation_happened() {
    let sandbox = sandbox(Some(seed::ACME_DK)).await;
    let cli = Cli::new(&sandbox);
    cli.login(&["--no-browser"]).await.ok();
    sandbox.inject_fault(Endpoint::Api, Fault::ServerError(503), 50);
    let pending = cli.run(&["disconnect", "--company", ACME_DK]).await;
    pending.expect_code(9).no_secret();
    assert!(
        pending.stdout.contains("stays valid at Pleo"),
        "{}",
        pending.stdout
    );
    assert!(pending.stdout.contains("keep-alive"), "{}", pending.stdout);
    assert_eq!(sandbox.stats().total_revocations(), 0);
    let status = cli.run(&["status", "--json"]).await.json();
    assert_eq!(entry(&status, ACME_DK)["state"], "revocation_pending");
}

/// A login that fails after consent leaves nothing live at Pleo: the tenant is linked to
/// another company already (exit 5), and the grant it got is revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_that_fails_after_consent_revokes_what_it_got() {
    let sandbox = sandbox(None).await;
    let cli = Cli::new(&sandbox);
    let first = cli
        .start_login(&["--tenant", "erp-1", "--no-browser"])
        .await;
    let back = consent(&first.url, &format!("urn:pleo:company:{ACME_DK}"), "allow").await;
    browser().get(&back).send().await.unwrap();
    first.finish().await.ok();

    let second = cli
        .start_login(&["--tenant", "erp-1", "--no-browser"])
        .await;
    let back = consent(&second.url, &format!("urn:pleo:company:{ACME_SE}"), "allow").await;
    browser().get(&back).send().await.unwrap();
    second.finish().await.expect_code(5).no_secret();
    assert_eq!(
        sandbox.stats().total_revocations(),
        1,
        "the grant of Acme Sweden was revoked"
    );
    let status = cli.run(&["status", "--json"]).await.ok().json();
    assert_eq!(status.as_array().unwrap().len(), 1, "{status:#}");
    assert_eq!(entry(&status, ACME_DK)["tenant"], "erp-1");
}

// ---------------------------------------------------------------------------------------------
// Login anywhere
// ---------------------------------------------------------------------------------------------

/// Over SSH: the URL is printed, the person opens it elsewhere and pastes the address the
/// browser was sent to; a favicon request to the loopback listener meanwhile changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paste_login_completes_with_the_redirected_url() {
    use tokio::io::AsyncWriteExt as _;
    let sandbox = sandbox(Some(seed::ACME_SE)).await;
    let cli = Cli::new(&sandbox);
    let mut command = cli.command(&["login", "--paste", "--tenant", "se", "--json"]);
    command.stdin(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stderr);
    let mut shown = String::new();
    let url = loop {
        use tokio::io::AsyncBufReadExt as _;
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(30), lines.read_line(&mut line))
            .await
            .expect("the URL is shown in time")
            .unwrap();
        assert!(n > 0, "login ended early: {shown}");
        shown.push_str(&line);
        if line.starts_with("http") {
            break url::Url::parse(line.trim()).unwrap();
        }
    };
    let redirect_uri = url
        .query_pairs()
        .find(|(k, _)| k == "redirect_uri")
        .unwrap()
        .1
        .into_owned();
    let favicon = browser()
        .get(
            url::Url::parse(&redirect_uri)
                .unwrap()
                .join("/favicon.ico")
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(favicon.status(), 404);
    // The browser (elsewhere) is redirected; the person copies the address.
    let redirected = browser().get(url).send().await.unwrap();
    let location = redirected.headers()["location"]
        .to_str()
        .unwrap()
        .to_owned();
    stdin
        .write_all(format!("not it\n{location}\n").as_bytes())
        .await
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let mut rest = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut lines, &mut rest)
        .await
        .unwrap();
    shown.push_str(&rest);
    let run = common::Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: shown,
    };
    run.ok().no_secret();
    assert!(
        run.stderr.contains("Paste that whole address"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("not the redirected address"),
        "{}",
        run.stderr
    );
    let json = run.json();
    assert_eq!(
        keys_of(&json),
        set(&[
            "subject",
            "company",
            "organisation",
            "environment",
            "method",
            "scopes",
            "tenant",
            "reconnected",
            "store"
        ])
    );
    assert_eq!(json["company"], ACME_SE);
    assert_eq!(json["tenant"], "se");
}

// ---------------------------------------------------------------------------------------------
// Terminals and pipes
// ---------------------------------------------------------------------------------------------

/// Ctrl-C at the hidden key prompt ends the command with 130 and leaves the terminal with
/// echo on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_at_the_hidden_key_prompt_restores_the_terminal() {
    let sandbox = sandbox(None).await;
    let cli = Cli::new(&sandbox);
    let mut terminal = cli.start_in_terminal(&format!(
        "bash -c '{} keys add; echo \"rc=$?\"; stty -a'",
        common::BIN
    ));
    terminal.wait_for("input hidden").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    terminal.send(b"\x03").await;
    terminal.wait_for("rc=").await;
    let (_, screen) = terminal.finish().await;
    assert!(screen.contains("rc=130"), "{screen}");
    let modes = screen.split("rc=130").nth(1).unwrap_or_default();
    assert!(
        modes.split_whitespace().any(|w| w == "echo"),
        "echo is on again: {modes}"
    );
    assert!(!modes.split_whitespace().any(|w| w == "-echo"), "{modes}");
}

/// On an 80-column terminal every spinner frame fits in 79 columns, so redrawing it never
/// wraps and scrolls the URL away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spinner_fits_80_columns() {
    let sandbox = sandbox(None).await;
    let mut cli = Cli::new(&sandbox);
    // A display and a browser that does nothing: the loopback flow with its spinner.
    cli.env("DISPLAY", ":99");
    cli.env("BROWSER", "true");
    let mut terminal = cli.start_in_terminal(&format!(
        "stty cols 80 rows 24; {} login --timeout 2",
        common::BIN
    ));
    terminal.wait_for("Waiting").await;
    let (code, screen) = terminal.finish().await;
    assert_eq!(code, Some(9), "{screen}");
    let frames: Vec<&str> = screen
        .split(['\r', '\n'])
        .filter(|s| s.contains("Waiting"))
        .collect();
    assert!(frames.len() > 3, "the spinner turned: {screen}");
    for frame in frames {
        let visible = frame.trim_start_matches("\x1b[2K").chars().count();
        assert!(visible <= 79, "{visible} columns: {frame:?}");
    }
    assert!(
        screen.contains("http://127.0.0.1:"),
        "the URL was shown: {screen}"
    );
}

/// `pleo-auth status | head -1`: a closed pipe ends the output quietly (no panic, no 101).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_ends_the_output_quietly() {
    let sandbox = sandbox(Some(seed::ACME_DK)).await;
    let cli = Cli::new(&sandbox);
    cli.login(&["--no-browser", "--tenant", "dk"]).await.ok();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["api", "GET", "/v2/employees", "--company", ACME_DK],
        &["--help"],
    ] {
        let mut child = cli.command(args).spawn().unwrap();
        drop(child.stdout.take());
        let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// Colours only on a terminal and never with `NO_COLOR`; logs honour `RUST_LOG`, with
/// `PLEO_LOG` winning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colours_and_log_filters_follow_the_habits() {
    let sandbox = sandbox(None).await;
    let mut cli = Cli::new(&sandbox);
    let piped = cli.run(&["token", "--company", ACME_DK]).await;
    piped.expect_code(3);
    assert!(
        !piped.stderr.contains('\x1b'),
        "no colours into a pipe: {:?}",
        piped.stderr
    );
    let shell = format!("{} token --company {ACME_DK}", common::BIN);
    cli.env("TERM", "xterm");
    let coloured = cli.run_in_terminal(&shell).await;
    assert!(
        coloured.stdout.contains("\x1b["),
        "colours on a terminal: {:?}",
        coloured.stdout
    );
    cli.env("NO_COLOR", "1");
    let plain = cli.run_in_terminal(&shell).await;
    assert!(
        !plain.stdout.contains("\x1b["),
        "NO_COLOR: {:?}",
        plain.stdout
    );
    cli.unset("NO_COLOR");

    cli.env("RUST_LOG", "trace");
    let login = ["login", "--no-browser", "--timeout", "1"];
    let logged = cli.run(&login).await;
    assert!(
        logged.stderr.contains("TRACE"),
        "RUST_LOG is honoured: {}",
        logged.stderr
    );
    assert!(!logged.stderr.contains('\x1b'), "no colours in piped logs");
    cli.env("PLEO_LOG", "off");
    let quiet = cli.run(&login).await;
    assert!(
        !quiet.stderr.contains("TRACE"),
        "PLEO_LOG wins: {}",
        quiet.stderr
    );
}

/// Errors are one line plus a hint; `--verbose` adds every cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_one_line_and_verbose_shows_the_causes() {
    let sandbox = sandbox(None).await;
    let mut cli = Cli::new(&sandbox);
    cli.env("PLEO_STORE", "file:/proc/pleo-auth-test/store");
    let short = cli.run(&["status"]).await;
    short.expect_code(7);
    let lines: Vec<&str> = short.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", short.stderr);
    assert!(lines[0].starts_with("error: "), "{}", short.stderr);
    assert!(lines[1].starts_with("hint: "), "{}", short.stderr);
    let verbose = cli.run(&["status", "--verbose"]).await;
    verbose.expect_code(7);
    assert!(verbose.stderr.contains("caused by:"), "{}", verbose.stderr);
}

// ---------------------------------------------------------------------------------------------
// Habits: JSON, completions, logout, keys, status --check, file URLs, secrets not in argv
// ---------------------------------------------------------------------------------------------

/// The `--json` of every command that prints data has a stable set of fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_schemas_are_stable() {
    let sandbox = sandbox(Some(seed::ACME_DK)).await;
    let mut cli = Cli::new(&sandbox);
    cli.env("PLEO_KEY_SCOPES", "users:read");
    cli.login(&["--no-browser", "--tenant", "dk"]).await.ok();
    let key = sandbox.mint_integrated_key(seed::DEMO_CLIENT_ID, seed::GLOBEX);
    let added = cli
        .run_with_stdin(&["keys", "add", "--json"], Some(&key))
        .await;
    added.ok().no_secret();
    let key_fields = set(&[
        "subject",
        "company",
        "tenant",
        "environment",
        "method",
        "masked_key",
        "scopes",
    ]);
    assert_eq!(keys_of(&added.json()), key_fields);

    let status = cli.run(&["status", "--json", "--check"]).await;
    status.ok().no_secret();
    let json = status.json();
    let entry_fields = set(&[
        "tenant",
        "subject",
        "company",
        "organisation",
        "method",
        "environment",
        "client_id",
        "other_client",
        "state",
        "scopes",
        "generation",
        "access_token_expires_at_ms",
        "masked_key",
        "record",
        "error",
        "check",
    ]);
    for item in json.as_array().unwrap() {
        assert_eq!(keys_of(item), entry_fields, "{item:#}");
        assert_eq!(
            keys_of(&item["check"]),
            set(&["result", "detail", "scopes"])
        );
        assert_eq!(item["check"]["result"], "ok", "{item:#}");
    }
    assert_eq!(entry(&json, GLOBEX)["method"], "integrated_api_key");

    let refreshed = cli.run(&["refresh", "--json"]).await;
    refreshed.ok();
    let results = refreshed.json();
    assert_eq!(
        keys_of(&results[0]),
        set(&[
            "subject",
            "company",
            "refreshed",
            "generation_before",
            "generation",
            "error",
            "exit_code"
        ])
    );
    assert_eq!(results[0]["refreshed"], true);

    let token = cli.run(&["token", "--company", ACME_DK, "--json"]).await;
    assert_eq!(
        keys_of(&token.ok().json()),
        set(&[
            "subject",
            "company",
            "method",
            "authorization",
            "access_token"
        ])
    );

    let disconnected = cli
        .run(&["disconnect", "--company", ACME_DK, "--json"])
        .await;
    assert_eq!(
        keys_of(&disconnected.ok().json()),
        set(&["subject", "company", "outcome", "revoked_at_pleo"])
    );
    assert_eq!(disconnected.json()["outcome"], "revoked");

    let removed = cli
        .run(&["keys", "remove", "--company", GLOBEX, "--json"])
        .await;
    assert_eq!(keys_of(&removed.ok().json()), key_fields);

    let logged_out = cli.run(&["logout", "--company", ACME_DK, "--json"]).await;
    assert_eq!(
        keys_of(&logged_out.ok().json()),
        set(&["subject", "company", "forgotten", "revoked_at_pleo"])
    );
}

/// `status --check` asks Pleo: a grant revoked at Pleo but active in the store is found
/// (exit 4); connections of another client id are shown with a note, not hidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_check_asks_pleo_and_other_clients_are_shown() {
    let sandbox = sandbox(Some(seed::ACME_DK)).await;
    let mut cli = Cli::new(&sandbox);
    cli.login(&["--no-browser"]).await.ok();
    let unchecked = cli.run(&["status"]).await;
    unchecked.ok();
    sandbox.revoke_grant(pleo_auth_sandbox::RevokeTarget::Client {
        client_id: seed::DEMO_CLIENT_ID.to_owned(),
        subject: seed::ACME_DK,
    });
    // The store alone still says active...
    cli.run(&["status"]).await.ok();
    // ... Pleo does not.
    let checked = cli.run(&["status", "--check"]).await;
    checked.expect_code(4).no_secret();
    assert!(checked.stdout.contains("AT PLEO"), "{}", checked.stdout);

    // Another client id configured: the stored grant is still listed, marked.
    cli.env("PLEO_CLIENT_ID", "another-client");
    cli.env("PLEO_CLIENT_SECRET", "another-secret");
    let other = cli.run(&["status", "--json"]).await;
    let json = other.json();
    let grant = entry(&json, ACME_DK);
    assert_eq!(grant["other_client"], true, "{json:#}");
    assert_eq!(grant["client_id"], seed::DEMO_CLIENT_ID);
    let table = cli.run(&["status"]).await;
    assert!(
        table.stdout.contains("not the configured one"),
        "{}",
        table.stdout
    );
}

/// `logout` forgets the local credentials and says the grant stays valid at Pleo;
/// `disconnect` is what revokes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_forgets_locally_without_revoking() {
    let sandbox = sandbox(Some(seed::ACME_DK)).await;
    let cli = Cli::new(&sandbox);
    cli.login(&["--no-browser", "--tenant", "dk"]).await.ok();
    let logout = cli.run(&["logout", "--tenant", "dk"]).await;
    logout.ok().no_secret();
    assert!(
        logout.stdout.contains("stays valid at Pleo"),
        "{}",
        logout.stdout
    );
    assert_eq!(sandbox.stats().total_revocations(), 0);
    assert_eq!(
        cli.run(&["status", "--json"]).await.ok().json(),
        serde_json::json!([])
    );
    cli.run(&["logout", "--company", ACME_DK])
        .await
        .expect_code(3);
}

/// Keys: a Standalone key is not taken as an Integrated key, garbage is a usage error (2), and
/// a key of another environment is refused by Pleo (6) with a hint about the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_are_not_integrated_keys_of_this_environment_are_refused() {
    let sandbox = sandbox(None).await;
    let cli = Cli::new(&sandbox);
    let standalone = sandbox.mint_standalone_key(seed::GLOBEX, &["users:read"], None);
    let refused = cli
        .run_with_stdin(&["keys", "add"], Some(&standalone))
        .await;
    refused.expect_code(2).no_secret();
    assert!(refused.stderr.contains("standalone"), "{}", refused.stderr);

    let garbage = cli
        .run_with_stdin(&["keys", "add"], Some("not a key at all"))
        .await;
    garbage.expect_code(2);

    let elsewhere = harness::canary_sandbox()
        .environment_name("staging-elsewhere")
        .start()
        .await
        .unwrap();
    let foreign = elsewhere.mint_integrated_key(seed::DEMO_CLIENT_ID, seed::GLOBEX);
    let other_env = cli.run_with_stdin(&["keys", "add"], Some(&foreign)).await;
    other_env.expect_code(6).no_secret();
    assert!(
        other_env.stderr.contains("environment"),
        "{}",
        other_env.stderr
    );
    assert_eq!(
        cli.run(&["status", "--json"]).await.ok().json(),
        serde_json::json!([])
    );
}

/// Completions for the shells people use, and better suggestions: a secret flag is refused
/// with where to put the secret instead of a suggestion of another flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_secret_flags() {
    let sandbox = sandbox(None).await;
    let cli = Cli::new(&sandbox);
    for shell in ["bash", "zsh", "fish"] {
        let script = cli.run(&["completions", shell]).await;
        script.ok();
        assert!(script.stdout.contains("pleo-auth"), "{shell}");
        assert!(script.stdout.contains("logout"), "{shell}");
    }
    let secret = cli.run(&["status", "--client-secret", "s3cret"]).await;
    secret.expect_code(2);
    assert!(
        secret.stderr.contains("PLEO_CLIENT_SECRET"),
        "{}",
        secret.stderr
    );
    assert!(!secret.stderr.contains("s3cret"), "{}", secret.stderr);
    let help = cli.run(&["login", "--help"]).await;
    assert!(
        help.ok().stdout.contains("Where to get a client"),
        "{}",
        help.stdout
    );
    let help = cli.run(&["keys", "add", "--help"]).await;
    assert!(
        help.ok().stdout.contains("Where to get a key"),
        "{}",
        help.stdout
    );
}

/// `file:` store URLs follow one rule: `~` is the home directory, a relative path is relative
/// to the current directory, `file://localhost/` is a local path, other hosts are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_urls_follow_one_rule() {
    let sandbox = sandbox(None).await;
    let mut cli = Cli::new(&sandbox);
    let home = cli.dir();
    cli.env("PLEO_STORE", "file:~/tilde-store");
    let tilde = cli.run(&["status"]).await;
    tilde.ok();
    assert!(home.join("tilde-store").is_dir(), "{}", tilde.stdout);
    assert!(
        tilde
            .stdout
            .contains(&home.join("tilde-store").display().to_string()),
        "the absolute path is shown: {}",
        tilde.stdout
    );
    cli.env(
        "PLEO_STORE",
        &format!("file://localhost{}", home.join("with%20space").display()),
    );
    cli.run(&["status"]).await.ok();
    assert!(home.join("with space").is_dir());
    cli.env("PLEO_STORE", "file://elsewhere/tmp/x");
    cli.run(&["status"]).await.expect_code(8);
    let mut relative = cli.command(&["status"]);
    relative
        .env("PLEO_STORE", "file:relative-store")
        .current_dir(&home);
    let output = relative.output().await.unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert!(home.join("relative-store").is_dir());
}
