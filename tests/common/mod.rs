//! Helpers for the tests that run the `pleo-auth` binary against an in-process sandbox.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use pleo_auth_core::testing::assert_no_leak;
use pleo_auth_sandbox::{SandboxHandle, harness};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_pleo-auth");

/// Every secret the sandbox issues starts with `CANARY`; it must never show up where it should
/// not. `browser` is an HTTP client that shows redirects instead of following them.
pub use pleo_auth_sandbox::harness::{CANARY, http as browser};

/// How long any one CLI run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// A sandbox that approves consent for `company` at once (or shows the consent page with
/// `None`), issuing canary-marked secrets.
pub async fn sandbox(auto_approve: Option<uuid::Uuid>) -> SandboxHandle {
    harness::canary_sandbox()
        .auto_approve(auto_approve)
        .start()
        .await
        .expect("the sandbox starts")
}

/// A private home for one CLI setup: its store, config dir and data dir.
pub struct Cli {
    dir: tempfile::TempDir,
    envs: Vec<(String, String)>,
}

impl Cli {
    /// A CLI pointed at `sandbox` with a file store in a temporary directory.
    pub fn new(sandbox: &SandboxHandle) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = dir.path().join("store");
        let envs = vec![
            ("PLEO_ENV".to_owned(), "sandbox".to_owned()),
            (
                "PLEO_SANDBOX_URL".to_owned(),
                sandbox.base_url().to_string(),
            ),
            ("PLEO_STORE".to_owned(), format!("file:{}", store.display())),
        ];
        Self { dir, envs }
    }

    /// The temporary directory of this setup.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Sets (or replaces) an environment variable of every later run.
    pub fn env(&mut self, key: &str, value: &str) {
        self.envs.retain(|(k, _)| k != key);
        self.envs.push((key.to_owned(), value.to_owned()));
    }

    /// Removes an environment variable from every later run.
    pub fn unset(&mut self, key: &str) {
        self.envs.retain(|(k, _)| k != key);
    }

    /// The command, with a clean environment: only `PATH` and this setup's variables; the
    /// user's config and data directories point into the temporary directory.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            .env("XDG_DATA_HOME", self.dir.path().join("data"))
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// `script` (util-linux) running `command_line` on a pseudo-terminal, with this setup's
    /// clean environment.
    fn script(&self, flags: &str, command_line: &str, stdin: Stdio) -> Command {
        let mut command = Command::new("script");
        command
            .args([flags, command_line, "/dev/null"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            .env("XDG_DATA_HOME", self.dir.path().join("data"))
            .env("SHELL", "/bin/bash")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Runs a shell command line under `script` (util-linux), which gives it a pseudo-terminal
    /// as stdin, stdout and stderr; everything it printed comes back as stdout.
    pub async fn run_in_terminal(&self, command_line: &str) -> Run {
        let mut command = self.script("-qec", command_line, Stdio::null());
        let output = tokio::time::timeout(RUN_TIMEOUT, command.output())
            .await
            .unwrap_or_else(|_| panic!("{command_line:?} did not finish in time"))
            .expect("script (util-linux) runs");
        Run::from(output)
    }

    /// Starts a shell command line under `script` (util-linux) on a pseudo-terminal whose input
    /// the test types (`Terminal::send`), as a person at a terminal would.
    pub fn start_in_terminal(&self, command_line: &str) -> Terminal {
        let mut command = self.script("-qfec", command_line, Stdio::piped());
        command.env("TERM", "xterm");
        let mut child = command.spawn().expect("script (util-linux) runs");
        let stdin = child.stdin.take().expect("stdin is piped");
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt as _;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf).await {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Terminal {
            child,
            stdin,
            output: rx,
            screen: Vec::new(),
        }
    }

    /// Runs `pleo-auth args...` to the end.
    pub async fn run(&self, args: &[&str]) -> Run {
        self.run_with_stdin(args, None).await
    }

    /// Runs `pleo-auth args...` with `input` on stdin.
    pub async fn run_with_stdin(&self, args: &[&str], input: Option<&str>) -> Run {
        let mut command = self.command(args);
        if input.is_some() {
            command.stdin(Stdio::piped());
        }
        let mut child = command.spawn().expect("the binary starts");
        if let Some(input) = input {
            let mut stdin = child.stdin.take().expect("stdin is piped");
            stdin
                .write_all(input.as_bytes())
                .await
                .expect("write stdin");
            drop(stdin);
        }
        let output = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("pleo-auth {args:?} did not finish in time"))
            .expect("the binary runs");
        Run::from(output)
    }

    /// Starts `pleo-auth login args...` and reads its stdout up to the authorization URL.
    pub async fn start_login(&self, args: &[&str]) -> Login {
        let mut full = vec!["login"];
        full.extend_from_slice(args);
        let mut child = self.command(&full).spawn().expect("login starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let mut printed = String::new();
        let url = tokio::time::timeout(RUN_TIMEOUT, async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                printed.push_str(&line);
                printed.push('\n');
                if line.starts_with("http://") || line.starts_with("https://") {
                    return url::Url::parse(&line).expect("the printed URL parses");
                }
            }
            panic!("login printed no URL:\n{printed}");
        })
        .await
        .expect("login prints the URL in time");
        Login {
            child,
            lines,
            printed,
            url,
        }
    }

    /// Runs a whole `login` whose consent the sandbox approves by itself, following the
    /// redirects as a browser would.
    pub async fn login(&self, args: &[&str]) -> Run {
        let login = self.start_login(args).await;
        let browser = browser();
        let redirect = browser
            .get(login.url.clone())
            .send()
            .await
            .expect("the authorization URL answers");
        assert!(
            redirect.status().is_redirection(),
            "auto-approve redirects, got {}",
            redirect.status()
        );
        let location = redirect.headers()["location"]
            .to_str()
            .expect("ascii location")
            .to_owned();
        let page = browser
            .get(&location)
            .send()
            .await
            .expect("the loopback listener answers");
        assert_eq!(page.status(), 200);
        login.finish().await
    }
}

/// A command running on a pseudo-terminal (see [`Cli::start_in_terminal`]).
pub struct Terminal {
    child: Child,
    stdin: tokio::process::ChildStdin,
    output: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    /// Every byte the terminal showed so far.
    pub screen: Vec<u8>,
}

impl Terminal {
    /// Everything shown so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.screen).into_owned()
    }

    /// Waits until the terminal shows `needle`.
    pub async fn wait_for(&mut self, needle: &str) {
        let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
        while !self.text().contains(needle) {
            match tokio::time::timeout_at(deadline, self.output.recv()).await {
                Ok(Some(bytes)) => self.screen.extend_from_slice(&bytes),
                Ok(None) => panic!(
                    "the terminal closed before showing {needle:?}:\n{}",
                    self.text()
                ),
                Err(_) => panic!("the terminal did not show {needle:?}:\n{}", self.text()),
            }
        }
    }

    /// Types `bytes` (such as `b"\x03"` for Ctrl-C).
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stdin
            .write_all(bytes)
            .await
            .expect("type into the terminal");
        self.stdin.flush().await.expect("flush the terminal input");
    }

    /// Waits for the command to end; returns its exit code and everything it showed.
    pub async fn finish(mut self) -> (Option<i32>, String) {
        let status = tokio::time::timeout(RUN_TIMEOUT, self.child.wait())
            .await
            .expect("the terminal command ends in time")
            .expect("script runs");
        while let Ok(Some(bytes)) =
            tokio::time::timeout(Duration::from_millis(500), self.output.recv()).await
        {
            self.screen.extend_from_slice(&bytes);
        }
        (status.code(), self.text())
    }
}

/// The entry of `company` in the output of `status --json`.
#[track_caller]
pub fn entry<'a>(status: &'a serde_json::Value, company: &str) -> &'a serde_json::Value {
    status
        .as_array()
        .expect("status --json is an array")
        .iter()
        .find(|c| c["company"] == company)
        .unwrap_or_else(|| panic!("{company} is listed in {status:#}"))
}

/// Answers the sandbox's consent page as a person would: picks `subject`, clicks `decision`.
/// Returns the redirect back to the CLI's loopback listener.
pub async fn answer_consent(url: &url::Url, subject: &str, decision: &str) -> String {
    harness::answer_consent(&browser(), url, subject, decision)
        .await
        .into()
}

/// A running `login`.
pub struct Login {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    printed: String,
    /// The authorization URL it printed.
    pub url: url::Url,
}

impl Login {
    /// Waits for the command to end.
    pub async fn finish(mut self) -> Run {
        let mut stdout = self.printed;
        let rest = tokio::time::timeout(RUN_TIMEOUT, async {
            let mut rest = String::new();
            while let Some(line) = self.lines.next_line().await.expect("read stdout") {
                rest.push_str(&line);
                rest.push('\n');
            }
            rest
        })
        .await
        .expect("login ends in time");
        stdout.push_str(&rest);
        let output = tokio::time::timeout(RUN_TIMEOUT, self.child.wait_with_output())
            .await
            .expect("login exits in time")
            .expect("login runs");
        Run {
            code: output.status.code(),
            stdout,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// The outcome of one run.
#[derive(Debug)]
pub struct Run {
    /// The exit code.
    pub code: Option<i32>,
    /// Everything printed on stdout.
    pub stdout: String,
    /// Everything printed on stderr.
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Self {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Asserts the exit code, showing the output when it differs.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "unexpected exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts success.
    #[track_caller]
    pub fn ok(&self) -> &Self {
        self.expect_code(0)
    }

    /// Asserts that no canary-marked secret was printed, raw or encoded.
    #[track_caller]
    pub fn no_secret(&self) -> &Self {
        assert_no_leak("stdout", &self.stdout, &[CANARY]);
        assert_no_leak("stderr", &self.stderr, &[CANARY]);
        self
    }

    /// The stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}
