//! `cargo xtask bench`: the criterion benchmarks, then the full-size replica proof of
//! `tests/scale_replicas.rs` (8 processes x 125 tasks x 20 expiries per shared backend, 200
//! grants x 5 tasks, a lease holder killed with SIGKILL).

use std::path::Path;

use crate::services::{self, Service};
use crate::{Result, cargo, timed};

/// Runs both against the services (started if needed; those started here are stopped again).
pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let mut started = Vec::new();
    let mut result = steps(root, args, &mut started);
    if !started.is_empty()
        && let Err(e) = services::down(root, &started)
    {
        eprintln!("error: {e}");
        result = result.and(Err(
            "could not stop the services this run started".to_owned()
        ));
    }
    result
}

fn steps(root: &Path, args: &[String], started: &mut Vec<Service>) -> Result<()> {
    services::up(root, started)?;
    let env = services::read_env(root)?;
    timed("benchmarks", || {
        cargo(root, ["bench", "--workspace", "--all-features"], args)
            .envs(&env)
            .status()
    })?;
    timed("full-size replica proof", || {
        cargo(
            root,
            [
                "test",
                "--release",
                "-p",
                "pleo-auth",
                "--all-features",
                "--test",
                "scale_replicas",
                "--",
                "--nocapture",
                "--test-threads=1",
            ],
            &[],
        )
        .env("PLEO_AUTH_SCALE_FULL", "1")
        .envs(&env)
        .status()
    })
}
