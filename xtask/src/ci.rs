//! `cargo xtask ci`: the whole gate, step by step, stopping at the first failure.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::circles;
use crate::services::{self, Service};
use crate::{Cmd, Result, cargo, secs};

/// The facade features that must each build on their own (`--no-default-features --features X`).
const FACADE_FEATURES: [&str; 13] = [
    "oauth",
    "apikey",
    "http",
    "file",
    "vault",
    "aws",
    "redis",
    "postgres",
    "encryption",
    "kms",
    "transit",
    "sandbox",
    "metrics",
];

/// Crates that must never be a normal dependency of `pleo-auth-core`, nor any crate named
/// `<crate>-...` (such as `hyper-util` or `axum-core`).
const HTTP_CRATES: [&str; 3] = ["reqwest", "hyper", "axum"];

/// The cargo-deny release the gate installs when cargo-deny is missing (`deny.toml` is written
/// for it; `cargo install --version` wants a whole version, not a series).
const CARGO_DENY_VERSION: &str = "0.20.2";

/// How many steps run with and without `--quick`: services, fmt, clippy, doc, the core guard, the
/// import-circle guard, cargo-deny, tests and doc tests.
const ALWAYS_STEPS: usize = 9;

/// Runs the gate. Services that the gate starts are stopped when it ends, whatever the outcome;
/// services that already ran are left running.
pub fn run(root: &Path, quick: bool) -> Result<()> {
    let feature_steps = if quick { 0 } else { 1 + FACADE_FEATURES.len() };
    let total = ALWAYS_STEPS + feature_steps;
    let mut gate = Gate {
        total,
        done: Vec::new(),
        start: Instant::now(),
    };
    let mut started = Vec::new();
    let mut result = steps(root, quick, &mut gate, &mut started);
    if !started.is_empty() {
        let names: Vec<&str> = started.iter().map(|service| service.name()).collect();
        println!(
            "\n==> stopping the services this run started: {}",
            names.join(", ")
        );
        if let Err(e) = services::down(root, &started) {
            eprintln!("error: {e}");
            result = result.and(Err(
                "could not stop the services this run started".to_owned()
            ));
        }
    }
    gate.summary(result.is_ok());
    result
}

/// Runs every step of the gate in order.
fn steps(root: &Path, quick: bool, gate: &mut Gate, started: &mut Vec<Service>) -> Result<()> {
    gate.step("start the services", || services::up(root, started))?;
    gate.step("formatting", || {
        cargo(root, ["fmt", "--all", "--", "--check"], &[]).status()
    })?;
    gate.step("clippy", || {
        cargo(
            root,
            [
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--",
                "-D",
                "warnings",
            ],
            &[],
        )
        .status()
    })?;
    gate.step("documentation", || {
        cargo(
            root,
            ["doc", "--workspace", "--all-features", "--no-deps"],
            &[],
        )
        .env("RUSTDOCFLAGS", "-D warnings")
        .status()
    })?;
    gate.step("pleo-auth-core pulls no HTTP crate", || core_guard(root))?;
    gate.step("no import circles between the files of a crate", || {
        circles::check(root)
    })?;
    gate.step("dependency licenses, bans and sources (cargo deny)", || {
        deny_check(root)
    })?;
    if !quick {
        gate.step("facade without features", || {
            cargo(
                root,
                ["check", "-p", "pleo-auth", "--no-default-features"],
                &[],
            )
            .status()
        })?;
        for feature in FACADE_FEATURES {
            gate.step(&format!("facade with only `{feature}`"), || {
                cargo(
                    root,
                    [
                        "check",
                        "-p",
                        "pleo-auth",
                        "--no-default-features",
                        "--features",
                        feature,
                    ],
                    &[],
                )
                .status()
            })?;
        }
    }
    let env = services::read_env(root)?;
    let with_env = |cmd: Cmd| {
        let keys: Vec<&str> = env.iter().map(|(key, _)| key.as_str()).collect();
        println!("(with the variables of .services/env: {})", keys.join(", "));
        cmd.envs(&env)
    };
    gate.step("tests", || {
        let has_nextest = cargo(root, ["nextest", "--version"], &[]).stdout().is_ok();
        let cmd = if has_nextest {
            cargo(
                root,
                [
                    "nextest",
                    "run",
                    "--workspace",
                    "--all-features",
                    "--no-fail-fast",
                ],
                &[],
            )
        } else {
            println!("cargo-nextest is not installed; using cargo test");
            cargo(root, ["test", "--workspace", "--all-features"], &[])
        };
        with_env(cmd).status()
    })?;
    gate.step("doc tests", || {
        with_env(cargo(
            root,
            ["test", "--workspace", "--all-features", "--doc"],
            &[],
        ))
        .status()
    })
}

/// Fails if `cargo tree` shows an HTTP crate among the normal dependencies of `pleo-auth-core`.
fn core_guard(root: &Path) -> Result<()> {
    let tree = cargo(
        root,
        [
            "tree",
            "-p",
            "pleo-auth-core",
            "-e",
            "normal",
            "--prefix",
            "none",
        ],
        &[],
    );
    println!("$ {}", tree.display());
    let text = tree.stdout()?;
    let mut offending: Vec<&str> = text
        .lines()
        .filter(|line| is_http_crate(line))
        .map(str::trim)
        .collect();
    offending.sort_unstable();
    offending.dedup();
    if offending.is_empty() {
        println!("no {} in the tree", HTTP_CRATES.join("/"));
        Ok(())
    } else {
        Err(format!(
            "pleo-auth-core depends on HTTP crates:\n  {}",
            offending.join("\n  ")
        ))
    }
}

/// Runs `cargo deny` on licenses, duplicate and banned crates, and sources, after installing
/// cargo-deny from crates.io if it is missing. Advisories are not checked: their database is on
/// GitHub, which this project's machines cannot reach (see `deny.toml`).
fn deny_check(root: &Path) -> Result<()> {
    if cargo(root, ["deny", "--version"], &[]).stdout().is_err() {
        println!("cargo-deny is not installed; installing it from crates.io (a release build)");
        cargo(
            root,
            [
                "install",
                "cargo-deny",
                "--locked",
                "--version",
                CARGO_DENY_VERSION,
            ],
            &[],
        )
        .status()?;
    }
    cargo(root, ["deny", "check", "licenses", "bans", "sources"], &[]).status()?;
    println!(
        "advisories not checked: the RustSec database is fetched from GitHub, which this machine \
         cannot reach (run `cargo deny check advisories` where it can)"
    );
    Ok(())
}

/// Whether a `cargo tree --prefix none` line (`name vX.Y.Z ...`) names an HTTP crate.
fn is_http_crate(line: &str) -> bool {
    let name = line.split_whitespace().next().unwrap_or_default();
    HTTP_CRATES.iter().any(|http| {
        name.strip_prefix(http)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
    })
}

/// The steps run so far, with their timings.
struct Gate {
    /// How many steps the gate has.
    total: usize,
    /// Each finished step: its title, how long it took and whether it passed.
    done: Vec<(String, Duration, bool)>,
    /// When the gate began.
    start: Instant,
}

impl Gate {
    /// Runs one step under a numbered header and records its outcome.
    fn step(&mut self, title: &str, action: impl FnOnce() -> Result<()>) -> Result<()> {
        println!("\n==> [{}/{}] {title}", self.done.len() + 1, self.total);
        let start = Instant::now();
        let result = action();
        let took = start.elapsed();
        let outcome = if result.is_ok() { "ok" } else { "FAILED" };
        println!("<== {title}: {outcome} in {}", secs(took));
        self.done.push((title.to_owned(), took, result.is_ok()));
        result.map_err(|e| format!("step `{title}` failed: {e}"))
    }

    /// Prints every finished step with its timing, and the total.
    fn summary(&self, passed: bool) {
        println!("\n==> summary");
        for (title, took, ok) in &self.done {
            println!(
                "  {:<6} {:>8}  {title}",
                if *ok { "ok" } else { "FAILED" },
                secs(*took)
            );
        }
        let skipped = self.total.saturating_sub(self.done.len());
        if skipped > 0 {
            println!("  ({skipped} steps not run)");
        }
        let verdict = if passed { "passed" } else { "failed" };
        println!("ci {verdict} in {}", secs(self.start.elapsed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spots_http_crates_in_tree_lines() {
        assert!(is_http_crate("reqwest v0.13.1"));
        assert!(is_http_crate("hyper-util v0.1.10"));
        assert!(is_http_crate("axum v0.8.1 (*)"));
        assert!(!is_http_crate("hyperloglog v1.0.0"));
        assert!(!is_http_crate(
            "pleo-auth-core v0.1.0 (/work/main/pleo-auth-core)"
        ));
        assert!(!is_http_crate(""));
    }
}
