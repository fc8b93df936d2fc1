//! `pleo-auth health` and the health lines of `status --check`: whether the store and the lease
//! backend answer, and how many connections need a person ([`PleoAuth::health`]).

use pleo_auth::{Health, PleoAuth, Probe};
use serde_json::{Value, json};

use super::exit::{CliError, Code};
use super::output::{describe, print_json, print_table};
use super::settings::Settings;

/// Runs `health`: exits 0 when healthy, 7 when the store or the lease backend does not answer
/// or a record is unreadable, 4 when a connection needs reauthorization or a new key.
pub async fn run(settings: &Settings, as_json: bool) -> Result<(), CliError> {
    let auth = settings.pleo_auth(None).await?;
    let health = auth.health().await;
    if as_json {
        print_json(&to_json(&health))?;
    } else {
        print_table(
            &["CHECK", "RESULT", "DETAIL"],
            &[
                probe_row("store", &health.store),
                probe_row("lease", &health.lease),
                vec![
                    "connections".to_owned(),
                    match (&health.listing_error, health.needing_attention.len()) {
                        (Some(_), _) => "unreadable".to_owned(),
                        (None, 0) => "ok".to_owned(),
                        (None, n) => format!("{n} need attention"),
                    },
                    health.listing_error.clone().unwrap_or_else(|| {
                        format!(
                            "{} stored, {} dangling grant(s)",
                            health.connections.unwrap_or(0),
                            health.dangling_grants
                        )
                    }),
                ],
            ],
        );
        for c in &health.needing_attention {
            outln!("  {}: {}", describe(&c.subject), c.state);
        }
    }
    check(&health)
}

/// Prints the health lines of `status --check` on stderr; the exit code they call for.
pub async fn status_lines(auth: &PleoAuth) -> Option<Code> {
    let health = auth.health().await;
    for (name, probe) in [("store", &health.store), ("lease", &health.lease)] {
        match &probe.error {
            None => errln!("{name}: reachable ({} ms)", probe.latency.as_millis()),
            Some(e) => errln!("{name}: unreachable: {e}"),
        }
    }
    check(&health).err().map(|e| e.code())
}

/// The exit code health calls for: 7 before 4.
fn check(health: &Health) -> Result<(), CliError> {
    if !health.store.reachable || !health.lease.reachable || health.listing_error.is_some() {
        return Err(CliError::new(
            Code::Store,
            "the store or the lease backend does not answer, or a record is unreadable",
        )
        .hint("see `pleo-auth status` for unreadable records; check the store URL (PLEO_STORE) and that its server runs"));
    }
    if !health.needing_attention.is_empty() {
        return Err(CliError::new(
            Code::Reauthorize,
            format!(
                "{} connection(s) need attention",
                health.needing_attention.len()
            ),
        )
        .hint("connect those companies again: `pleo-auth login` (OAuth) or `pleo-auth keys replace` (API key)"));
    }
    Ok(())
}

fn probe_row(name: &str, probe: &Probe) -> Vec<String> {
    vec![
        name.to_owned(),
        if probe.reachable { "ok" } else { "unreachable" }.to_owned(),
        probe
            .error
            .clone()
            .unwrap_or_else(|| format!("{} ms", probe.latency.as_millis())),
    ]
}

fn probe_json(probe: &Probe) -> Value {
    json!({
        "reachable": probe.reachable,
        "latency_ms": u64::try_from(probe.latency.as_millis()).unwrap_or(u64::MAX),
        "error": probe.error,
    })
}

fn to_json(health: &Health) -> Value {
    json!({
        "healthy": health.is_healthy(),
        "store": probe_json(&health.store),
        "lease": probe_json(&health.lease),
        "connections": health.connections,
        "needing_attention": health.needing_attention.iter().map(|c| json!({
            "tenant": c.tenant.as_ref().map(|t| t.as_str().to_owned()),
            "subject": c.subject.to_string(),
            "company": c.subject.company().map(|id| id.to_string()),
            "method": c.method.as_str(),
            "state": c.state.as_str(),
        })).collect::<Vec<_>>(),
        "dangling_grants": health.dangling_grants,
        "listing_error": health.listing_error,
    })
}
