//! `pleo-auth keep-alive`: one sweep for cron (`--once`), or a sweep on a schedule for systemd
//! (`--every 6h`), each printed as a summary table or JSON.
//!
//! A sweep refreshes the OAuth grants that would otherwise go idle, retries pending and
//! dangling revocations, and removes expired pending authorizations; a record that fails is
//! listed and the others are still swept. Only one replica sweeps at a time (a lease in the
//! store): the others print that they skipped.

use std::time::Duration;

use pleo_auth::oauth::{KeepAliveOptions, KeepAliveReport};
use pleo_auth::{KeepAliveConfig, KeepAliveRun, PleoAuth, StoreKey, Subject};
use serde_json::{Value, json};

use super::exit::{CliError, Code};
use super::output::{describe, print_json, print_table};
use super::settings::Settings;
use super::terminal;

/// `keep-alive` options.
#[derive(Debug, clap::Args)]
pub struct KeepAliveArgs {
    /// Sweep once and exit: non-zero when any record failed (for cron)
    #[arg(long, required_unless_present = "every", conflicts_with = "every")]
    once: bool,
    /// Sweep now and then every DURATION (such as 6h or 30m) until SIGTERM or Ctrl-C (for a
    /// systemd service); with --json, one JSON object per line per sweep
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    every: Option<Duration>,
    /// Refresh grants whose refresh token is older than DURATION (default 30d)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    older_than: Option<Duration>,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

fn parse_duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw)
        .map_err(|e| format!("{e} (write a duration such as 90s, 30m, 6h or 1d)"))
}

/// One failed record of a sweep.
struct Failure {
    subject: Option<Subject>,
    record: Option<StoreKey>,
    error: CliError,
}

/// Runs `keep-alive`.
pub async fn run(settings: &Settings, args: KeepAliveArgs) -> Result<(), CliError> {
    settings.require_oauth()?;
    let auth = settings.pleo_auth(None).await?;
    let mut sweep = KeepAliveOptions::default();
    if let Some(age) = args.older_than {
        sweep = sweep.older_than(age);
    }
    let config = KeepAliveConfig::default().sweep(sweep);
    match args.every {
        None => {
            let run = tokio::select! {
                run = auth.keep_alive_once(&config) => run,
                () = terminal::interrupted() => return Err(CliError::interrupted()),
            };
            let run = run.map_err(|e| CliError::facade("the keep-alive sweep failed", e))?;
            print_run(&auth, run, args.json, true)
        }
        Some(every) => schedule(&auth, config.every(every), args.json).await,
    }
}

/// `--every`: sweeps on a schedule until SIGTERM (exit 0) or Ctrl-C (exit 130); a sweep in
/// progress finishes first.
async fn schedule(auth: &PleoAuth, config: KeepAliveConfig, json: bool) -> Result<(), CliError> {
    let mut handle = auth
        .spawn_keep_alive(config)
        .map_err(|e| CliError::facade("starting keep-alive failed", e))?;
    let stopped = async {
        tokio::select! {
            () = terminal::interrupted() => Err(CliError::interrupted()),
            () = terminated() => Ok(()),
        }
    };
    tokio::pin!(stopped);
    let outcome = loop {
        tokio::select! {
            outcome = &mut stopped => break outcome,
            run = handle.next_run() => match run {
                Some(Ok(run)) => {
                    if let Err(failed) = print_run(auth, run, json, false) {
                        failed.print();
                    }
                }
                Some(Err(e)) => CliError::facade("the keep-alive sweep failed; retried at the next interval", e).print(),
                None => break Err(CliError::other("the keep-alive task stopped")),
            },
        }
    };
    handle.shutdown().await;
    outcome
}

/// Resolves on SIGTERM (never, if no handler could be installed).
async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut signal) => {
            signal.recv().await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}

/// Prints one run; with `once`, fails with the most pressing exit code of its failed records.
fn print_run(auth: &PleoAuth, run: KeepAliveRun, json: bool, once: bool) -> Result<(), CliError> {
    let (report, swept) = match run {
        KeepAliveRun::Swept(report) => (report, true),
        _ => (KeepAliveReport::default(), false),
    };
    let counts = Counts::of(&report);
    let failures = failures(report);
    if json {
        let value = summary_json(swept, &counts, &failures);
        if once {
            print_json(&value)?;
        } else {
            outln!("{value}");
        }
    } else {
        print_text(auth, swept, &counts, &failures);
    }
    if !once || failures.is_empty() {
        return Ok(());
    }
    let code = [Code::Store, Code::Reauthorize, Code::Network]
        .into_iter()
        .find(|code| failures.iter().any(|f| f.error.code() == *code))
        .unwrap_or(Code::Other);
    Err(CliError::new(
        code,
        format!("{} record(s) failed in the keep-alive sweep", failures.len()),
    )
    .hint(match code {
        Code::Store => "an unreadable record was left as it is: restore it from a backup, or remove it and connect the company again",
        Code::Reauthorize => "connect those companies again: `pleo-auth login`",
        _ => "the failed records are retried at the next sweep",
    }))
}

/// The numbers of a sweep.
struct Counts {
    checked: usize,
    refreshed: usize,
    revoked: usize,
    dangling_settled: usize,
    dangling: usize,
    pending_removed: usize,
    pages: usize,
}

impl Counts {
    fn of(report: &KeepAliveReport) -> Self {
        Self {
            checked: report.checked,
            refreshed: report.refreshed.len(),
            revoked: report.revoked.len(),
            dangling_settled: report.dangling_settled,
            dangling: report.dangling.len(),
            pending_removed: report.pending_removed,
            pages: report.pages,
        }
    }
}

fn failures(report: KeepAliveReport) -> Vec<Failure> {
    let grants = report.failed.into_iter().map(|(subject, e)| Failure {
        subject: Some(subject),
        record: None,
        error: CliError::oauth(format!("{} failed", describe(&subject)), e),
    });
    let records = report.unreadable.into_iter().map(|(key, e)| Failure {
        subject: key.parts().get(5).and_then(|s| s.parse().ok()),
        error: CliError::oauth(format!("the record {key} is unreadable"), e),
        record: Some(key),
    });
    grants.chain(records).collect()
}

fn summary_json(swept: bool, counts: &Counts, failures: &[Failure]) -> Value {
    json!({
        "swept": swept,
        "checked": counts.checked,
        "refreshed": counts.refreshed,
        "revoked": counts.revoked,
        "failed": failures.iter().map(|f| json!({
            "subject": f.subject.map(|s| s.to_string()),
            "company": f.subject.and_then(|s| s.company()).map(|c| c.to_string()),
            "record": f.record.as_ref().map(StoreKey::to_string),
            "error": f.error.summary(),
            "exit_code": f.error.code() as u8,
        })).collect::<Vec<_>>(),
        "dangling_settled": counts.dangling_settled,
        "dangling": counts.dangling,
        "pending_removed": counts.pending_removed,
        "pages": counts.pages,
    })
}

fn print_text(auth: &PleoAuth, swept: bool, counts: &Counts, failures: &[Failure]) {
    if !swept {
        outln!(
            "Skipped: another replica is sweeping the grants of {}.",
            auth.environment().name()
        );
        return;
    }
    print_table(
        &[
            "CHECKED",
            "REFRESHED",
            "REVOKED",
            "FAILED",
            "DANGLING",
            "PENDING REMOVED",
        ],
        &[vec![
            counts.checked.to_string(),
            counts.refreshed.to_string(),
            (counts.revoked + counts.dangling_settled).to_string(),
            failures.len().to_string(),
            counts.dangling.to_string(),
            counts.pending_removed.to_string(),
        ]],
    );
    for f in failures {
        outln!("  {}", f.error.summary());
    }
}
