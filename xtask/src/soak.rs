//! `cargo xtask soak`: the full-size soak of `tests/reliability_soak.rs`.

use std::path::Path;

use crate::{Result, cargo, usage_error};

/// The settings of one soak run.
#[derive(Debug, PartialEq, Eq)]
struct Soak {
    /// How long the workers run.
    minutes: u64,
    /// How many grants they refresh.
    grants: u64,
    /// The access-token lifetime the sandbox issues, in seconds.
    token_secs: u64,
}

/// Reads `--minutes N`, `--grants N` and `--token-secs N` (defaults 30, 200 and 30).
fn parse(args: &[String]) -> Result<Soak> {
    let mut soak = Soak {
        minutes: 30,
        grants: 200,
        token_secs: 30,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let slot = match flag.as_str() {
            "--minutes" => &mut soak.minutes,
            "--grants" => &mut soak.grants,
            "--token-secs" => &mut soak.token_secs,
            other => return Err(format!("unexpected argument to `soak`: {other}")),
        };
        *slot = it
            .next()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{flag} needs a positive number"))?;
    }
    Ok(soak)
}

/// Runs the soak test with the full-size settings; it reports revocations, mismatches, and the
/// memory and file descriptors of its worker processes.
pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let soak = parse(args).map_err(|e| usage_error(&e))?;
    println!(
        "soak: {} minutes, {} grants, {}-second tokens",
        soak.minutes, soak.grants, soak.token_secs
    );
    cargo(
        root,
        [
            "test",
            "-p",
            "pleo-auth",
            "--features",
            "oauth http file",
            "--test",
            "reliability_soak",
            "--",
            "--nocapture",
        ],
        &[],
    )
    .env("PLEO_AUTH_SOAK_SECS", &(soak.minutes * 60).to_string())
    .env("PLEO_AUTH_SOAK_GRANTS", &soak.grants.to_string())
    .env("PLEO_AUTH_SOAK_TOKEN_SECS", &soak.token_secs.to_string())
    .status()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn parses_settings_with_defaults() {
        assert_eq!(
            parse(&[]).unwrap(),
            Soak {
                minutes: 30,
                grants: 200,
                token_secs: 30
            }
        );
        assert_eq!(parse(&args("--minutes 3 --grants 20")).unwrap().minutes, 3);
        assert_eq!(parse(&args("--minutes 3 --grants 20")).unwrap().grants, 20);
        assert!(parse(&args("--minutes")).is_err());
        assert!(parse(&args("--minutes 0")).is_err());
        assert!(parse(&args("--hours 1")).is_err());
    }
}
