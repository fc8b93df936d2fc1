//! Canary leak scan over the `pleo-auth` CLI: every command of a whole session (login, status,
//! refresh, API calls and their refusals, Integrated API keys, a wrong client secret, a store
//! that cannot be read, disconnect, the demo) runs with `RUST_LOG=trace` and `PLEO_LOG=trace`
//! (every target). The sandbox prefixes every token, code and key with the canary, and the
//! wrong client secret carries it. Pass: the canary appears 0 times in stdout or stderr, raw or
//! encoded (base64 at every alignment, percent, JSON-escaped, hex).
//! (`pleo-auth token`, whose job is to print a token, is not part of the scan.)

#![cfg(feature = "cli")]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use pleo_auth_core::testing::assert_no_leak;
use pleo_auth_sandbox::{harness, seed};

const BIN: &str = env!("CARGO_BIN_EXE_pleo-auth");
const CANARY: &str = "CANARY";

struct Session {
    dir: tempfile::TempDir,
    sandbox_url: String,
    transcript: Vec<(String, String)>,
}

impl Session {
    fn command(&self, args: &[&str], extra: &[(&str, &str)]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            .env("XDG_DATA_HOME", self.dir.path().join("data"))
            .env("PLEO_ENV", "sandbox")
            .env("PLEO_SANDBOX_URL", &self.sandbox_url)
            .env(
                "PLEO_STORE",
                format!("file:{}", self.dir.path().join("store").display()),
            )
            .env("RUST_LOG", "trace")
            .env("PLEO_LOG", "trace")
            .envs(extra.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Runs a command to the end (with `input` on stdin) and keeps what it printed.
    fn run(&mut self, args: &[&str], extra: &[(&str, &str)], input: Option<&str>) -> bool {
        let mut command = self.command(args, extra);
        command.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = command.spawn().expect("the binary starts");
        if let Some(input) = input {
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(input.as_bytes()).unwrap();
        }
        let output = child.wait_with_output().expect("the binary runs");
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        self.transcript.push((args.join(" "), text));
        output.status.success()
    }

    /// `login` with consent given by the sandbox, following the redirect as a browser would.
    async fn login(&mut self) {
        let mut command = self.command(
            &[
                "login",
                "--no-browser",
                "--scopes",
                "users:read export-jobs:read",
            ],
            &[],
        );
        command.stdin(Stdio::null());
        let mut child = command.spawn().expect("login starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut printed = String::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("http://") {
                    tx.send(line.clone()).ok();
                }
                printed.push_str(&line);
                printed.push('\n');
            }
            printed
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("login printed the authorization URL");
        let browser = harness::http();
        let url = url.parse().expect("an authorization URL");
        let location = harness::follow_auto_approve(&browser, &url).await;
        browser.get(location).send().await.unwrap();
        let output = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let printed = reader.join().unwrap();
        assert!(output.status.success(), "login: {printed}");
        self.transcript.push((
            "login".to_owned(),
            format!("{printed}\n{}", String::from_utf8_lossy(&output.stderr)),
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_no_secret_at_trace() {
    let sandbox = harness::canary_sandbox()
        .auto_approve(Some(seed::ACME_DK))
        .start()
        .await
        .unwrap();
    let mut s = Session {
        dir: tempfile::tempdir().unwrap(),
        sandbox_url: sandbox.base_url().to_string(),
        transcript: Vec::new(),
    };
    let acme = seed::ACME_DK.to_string();
    let globex = seed::GLOBEX.to_string();

    s.login().await;
    assert!(s.run(&["status"], &[], None));
    assert!(s.run(&["status", "--json"], &[], None));
    assert!(s.run(&["status", "--check", "--json"], &[], None));
    assert!(s.run(&["refresh", "--company", &acme, "--json"], &[], None));
    assert!(s.run(&["refresh", "--company", &acme], &[], None));
    assert!(s.run(
        &["api", "GET", "/v2/employees", "--company", &acme],
        &[],
        None
    ));
    // Refusals: a company that is not connected, a wrong client secret.
    assert!(!s.run(
        &["api", "GET", "/v2/employees", "--company", &globex],
        &[],
        None
    ));
    assert!(!s.run(
        &["refresh", "--company", &acme],
        &[("PLEO_CLIENT_SECRET", "CANARY-wrong-client-secret")],
        None
    ));
    // Integrated API keys from stdin: added, replaced, used, removed; a key of another company.
    let key = sandbox.mint_integrated_key(seed::DEMO_CLIENT_ID, seed::GLOBEX);
    assert!(s.run(&["keys", "add"], &[], Some(&key)));
    assert!(s.run(
        &["api", "GET", "/v2/employees", "--company", &globex],
        &[],
        None
    ));
    let other = sandbox.mint_integrated_key(seed::DEMO_CLIENT_ID, seed::ACME_SE);
    assert!(!s.run(&["keys", "add", "--company", &globex], &[], Some(&other)));
    let replacement = sandbox.mint_integrated_key(seed::DEMO_CLIENT_ID, seed::GLOBEX);
    assert!(s.run(
        &["keys", "replace", "--company", &globex],
        &[],
        Some(&replacement)
    ));
    assert!(sandbox.revoke_api_key(&replacement));
    assert!(!s.run(
        &["api", "GET", "/v2/employees", "--company", &globex],
        &[],
        None
    ));
    assert!(s.run(&["keys", "remove", "--company", &globex], &[], None));
    // A Standalone key where an Integrated one belongs, a key flag, a secret flag, a config
    // file with a syntax error in the secret's line.
    let standalone = sandbox.mint_standalone_key(seed::GLOBEX, &["users:read"], None);
    assert!(!s.run(&["keys", "add"], &[], Some(&standalone)));
    assert!(!s.run(&["keys", "add", "--key", &standalone], &[], None));
    assert!(!s.run(
        &["status", "--client-secret", "CANARY-flag-secret"],
        &[],
        None
    ));
    let config = s.dir.path().join("broken.toml");
    std::fs::write(&config, "client_secret = \"CANARY-config-secret\n").unwrap();
    assert!(!s.run(
        &["status", "--verbose"],
        &[("PLEO_CONFIG", config.to_str().unwrap())],
        None
    ));
    // A store that cannot be read.
    assert!(!s.run(
        &["status"],
        &[("PLEO_STORE", "file:/proc/pleo-auth-nowhere")],
        None
    ));
    // Disconnect, then use; logout forgets.
    assert!(s.run(&["disconnect", "--company", &acme, "--json"], &[], None));
    assert!(!s.run(
        &["api", "GET", "/v2/employees", "--company", &acme],
        &[],
        None
    ));
    assert!(s.run(&["logout", "--company", &acme], &[], None));
    assert!(s.run(&["demo"], &[], None));

    let mut traced = 0;
    for (command, text) in &s.transcript {
        if text.contains("TRACE") {
            traced += 1;
        }
        assert_no_leak(
            &format!("the output of `pleo-auth {command}`"),
            text,
            &[CANARY],
        );
    }
    assert!(traced >= s.transcript.len() / 2, "TRACE logging was on");
    eprintln!(
        "cli canary scan: {} commands, {} bytes of output at TRACE: 0 leaks",
        s.transcript.len(),
        s.transcript.iter().map(|(_, t)| t.len()).sum::<usize>()
    );
}
