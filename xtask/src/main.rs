//! Developer tasks for the `pleo-auth` workspace, run as `cargo xtask <command>`.
//!
//! The crate uses the standard library, `rustix` for signals, and `syn` and `serde_json` for the
//! import-circle guard; it has no `unsafe` code.
//! Every command runs from the workspace root, prints what it runs, and exits with code 1 and a
//! one-line `error:` message when something fails.
//!
//! See [`USAGE`] for the commands and the environment variables they read.

#![forbid(unsafe_code)]

mod bench;
mod ci;
mod circles;
mod process;
mod services;
mod soak;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

/// The error type of every task: a message for a person, printed as `error: <message>`.
type Result<T, E = String> = std::result::Result<T, E>;

/// The help text printed by `cargo xtask help` and after a usage error.
const USAGE: &str = "\
Usage: cargo xtask <command> [args]

Commands:
  services up       install what is missing (apt-get, pip), start OpenBao (with Transit), moto,
                    Redis and PostgreSQL on 127.0.0.1 (reusing running ones), wait until each
                    answers, write .services/env; logs and pid files are in .services/
  services down     stop the services that `services up` of this checkout started
  services status   print each service and whether it answers (exit 1 if one does not)
  services env      print .services/env (KEY=VALUE lines for the tests)
  ci [--quick]      the whole gate: services, fmt, clippy, doc, dependency guard, import-circle
                    guard, cargo deny (licenses, bans, sources; installs cargo-deny if missing),
                    facade feature checks (skipped by --quick), tests, doc tests; stops the
                    services it started itself when it ends
  circles           the import-circle guard of `ci`: fail if the files of a library crate import
                    each other in a circle
  tidy              cargo fmt --all (leftover todo!/unimplemented!/dbg! are clippy lints of the
                    workspace, [workspace.lints] in Cargo.toml, failed by the clippy step of ci)
  bench [args]      cargo bench --workspace --all-features [args], then the full-size replica
                    proof (PLEO_AUTH_SCALE_FULL=1, tests/scale_replicas.rs); starts the
                    services if needed and stops those it started
  demo [args]       cargo run -p pleo-auth --features cli -- demo [args]
  soak [--minutes N] [--grants N] [--token-secs N]
                    the full-size soak (default 30 minutes, 200 grants, 30-second tokens):
                    two worker processes refresh through fault proxies; reports revocations,
                    mismatches, and the workers' memory and file descriptors
  help              print this text

Environment:
  XTASK_OPENBAO_PORT   OpenBao dev server port (default 18200; it also binds the port + 1)
  XTASK_MOTO_PORT      moto server port (default 15000)
  XTASK_REDIS_PORT     Redis port (default 16379)
  XTASK_POSTGRES_PORT  PostgreSQL port (default 15432; data in target/pleo-auth-services/)

The tests read PLEO_AUTH_TEST_VAULT_ADDR, PLEO_AUTH_TEST_VAULT_TOKEN, PLEO_AUTH_TEST_AWS_ENDPOINT,
PLEO_AUTH_TEST_REDIS_URL and PLEO_AUTH_TEST_POSTGRES_URL from the environment, or else from
<workspace>/.services/env.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Dispatches the command line (without the program name) to a task.
fn run(args: &[String]) -> Result<()> {
    let root = workspace_root();
    let (command, rest) = match args.split_first() {
        Some((command, rest)) => (command.as_str(), rest),
        None => ("help", &[][..]),
    };
    match command {
        "services" => services::command(&root, rest),
        "ci" => ci::run(&root, optional_flag(command, rest, "--quick")?),
        "circles" if rest.is_empty() => circles::check(&root),
        "circles" => Err(usage_error("`circles` takes no arguments")),
        "tidy" if rest.is_empty() => cargo(&root, ["fmt", "--all"], &[]).status(),
        "tidy" => Err(usage_error("`tidy` takes no arguments")),
        "bench" => bench::run(&root, rest),
        "demo" => cargo(
            &root,
            ["run", "-p", "pleo-auth", "--features", "cli", "--", "demo"],
            rest,
        )
        .status(),
        "soak" => soak::run(&root, rest),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => Err(usage_error(&format!("unknown command `{other}`"))),
    }
}

/// Whether the arguments of `command` are exactly `flag` (`true`) or nothing (`false`); anything
/// else is a usage error.
fn optional_flag(command: &str, rest: &[String], flag: &str) -> Result<bool> {
    match rest {
        [] => Ok(false),
        [given] if given == flag => Ok(true),
        _ => Err(usage_error(&format!(
            "unexpected arguments to `{command}`: {}",
            rest.join(" ")
        ))),
    }
}

/// Prints the usage text to stderr and returns `message` as the error.
fn usage_error(message: &str) -> String {
    eprintln!("{USAGE}");
    message.to_owned()
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// The cargo that runs this task (`$CARGO`, set by `cargo run`), or `cargo` from `PATH`.
fn cargo_program() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// A `cargo` invocation in the workspace root with `args` followed by `extra`.
fn cargo<'a>(root: &Path, args: impl IntoIterator<Item = &'a str>, extra: &[String]) -> Cmd {
    Cmd::new(cargo_program(), root).args(args).args(extra)
}

/// A command to run, shown as a person would type it.
struct Cmd {
    /// The command itself.
    command: Command,
    /// `KEY=VALUE ` assignments shown before the program name.
    shown_env: String,
}

impl Cmd {
    /// A command running `program` in `dir`.
    fn new(program: impl AsRef<OsStr>, dir: &Path) -> Self {
        let mut command = Command::new(program);
        command.current_dir(dir);
        Self {
            command,
            shown_env: String::new(),
        }
    }

    /// Adds one argument.
    fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.command.arg(arg);
        self
    }

    /// Adds arguments.
    fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.command.args(args);
        self
    }

    /// Sets environment variables without showing them in the command line.
    fn envs(mut self, vars: &[(String, String)]) -> Self {
        self.command
            .envs(vars.iter().map(|(key, value)| (key, value)));
        self
    }

    /// Sets an environment variable and shows it in front of the command line.
    fn env(mut self, key: &str, value: &str) -> Self {
        self.command.env(key, value);
        self.shown_env.push_str(&format!("{key}=\"{value}\" "));
        self
    }

    /// The command line as a person would type it (program name without its directory).
    fn display(&self) -> String {
        let program = self.command.get_program();
        let mut line = self.shown_env.clone();
        line.push_str(
            &Path::new(program)
                .file_name()
                .unwrap_or(program)
                .to_string_lossy(),
        );
        for arg in self.command.get_args() {
            line.push(' ');
            line.push_str(&arg.to_string_lossy());
        }
        line
    }

    /// Runs the command with inherited stdio; fails if it cannot start or exits unsuccessfully.
    fn status(mut self) -> Result<()> {
        let line = self.display();
        println!("$ {line}");
        let status = self
            .command
            .status()
            .map_err(|e| format!("cannot run `{line}`: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("`{line}` failed ({status})"))
        }
    }

    /// Runs the command, capturing stdout; fails with its stderr if it exits unsuccessfully.
    fn stdout(mut self) -> Result<String> {
        let line = self.display();
        let output = self
            .command
            .output()
            .map_err(|e| format!("cannot run `{line}`: {e}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!(
                "`{line}` failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim_end()
            ))
        }
    }
}

/// Formats a duration as seconds with one decimal, e.g. `12.3s`.
fn secs(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

/// Runs `f`, then prints how long it took under `label`.
fn timed<T>(label: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    let result = f();
    let outcome = if result.is_ok() { "done" } else { "failed" };
    println!("{label}: {outcome} in {}", secs(start.elapsed()));
    result
}
