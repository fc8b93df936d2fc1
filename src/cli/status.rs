//! `pleo-auth status`: every stored connection, read record by record, optionally checked at
//! Pleo.
//!
//! The store is read one record at a time, so one unreadable record is listed as `corrupt`
//! and the others are still shown; records stored under another client id than the
//! configured one are listed with a note. `--check` asks Pleo about each usable connection
//! (`GET /v1/introspect` with its credential), a few at a time. The exit code is that of the
//! most pressing problem listed (see `EXIT_CODES`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pleo_auth::http::api::introspect;
use pleo_auth::oauth::{DanglingStatus, TokenManager};
use pleo_auth::{
    ApiKeyCredential, AuthorizationHeader, CredentialKind, CredentialStatus, Environment,
    ErrorKind, OAuthGrant, PleoAuth, RecordStoreExt, RevocationState, ScopeSet, StoreKey, Subject,
};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::exit::{CliError, Code};
use super::output::{describe, method_name, print_table};
use super::settings::Settings;

/// Connections `--check` asks Pleo about at once.
pub const CHECK_PARALLELISM: usize = 8;
/// How long one check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

/// `status` options.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
    /// Ask Pleo whether it still accepts each usable connection (GET /v1/introspect), up to 8
    /// at a time, and check that the store and the lease backend answer (on stderr)
    #[arg(long)]
    check: bool,
}

/// What Pleo said about one connection (`--check`).
#[derive(Debug, Clone)]
enum Check {
    /// Pleo accepts the credential for this subject, with these scopes.
    Ok(ScopeSet),
    /// Pleo refused the credential: the customer must connect again.
    Refused(String),
    /// Pleo says the credential acts for another subject.
    WrongSubject(Subject),
    /// Pleo could not be asked.
    Unreachable(String),
    /// Not asked: the connection is not usable, or belongs to another client id.
    Skipped(&'static str),
}

impl Check {
    fn name(&self) -> &'static str {
        match self {
            Check::Ok(_) => "ok",
            Check::Refused(_) => "refused",
            Check::WrongSubject(_) => "wrong_subject",
            Check::Unreachable(_) => "unreachable",
            Check::Skipped(_) => "skipped",
        }
    }

    fn detail(&self) -> Option<String> {
        match self {
            Check::Ok(_) => None,
            Check::Refused(why) | Check::Unreachable(why) => Some(why.clone()),
            Check::WrongSubject(subject) => Some(format!("Pleo says it acts for {subject}")),
            Check::Skipped(why) => Some((*why).to_owned()),
        }
    }
}

/// One line of the listing.
#[derive(Debug)]
struct Entry {
    key: StoreKey,
    tenant: Option<String>,
    subject: Option<Subject>,
    method: CredentialKind,
    environment: String,
    client_id: String,
    other_client: bool,
    state: &'static str,
    scopes: Vec<String>,
    generation: Option<u64>,
    access_token_expires_at_ms: Option<u64>,
    masked_key: Option<String>,
    error: Option<String>,
    /// The API key's `Authorization` header, for `--check`.
    key_header: Option<AuthorizationHeader>,
    check: Option<Check>,
}

impl Entry {
    /// The exit code this entry calls for, if it needs attention.
    fn attention(&self) -> Option<Code> {
        match (self.state, &self.check) {
            ("corrupt", _) => Some(Code::Store),
            ("needs_reauthorization" | "needs_replacement", _) | (_, Some(Check::Refused(_))) => {
                Some(Code::Reauthorize)
            }
            (_, Some(Check::WrongSubject(_))) => Some(Code::WrongCompany),
            (_, Some(Check::Unreachable(_))) => Some(Code::Network),
            _ => None,
        }
    }
}

/// The order in which problems decide the exit code.
const PRIORITY: [Code; 4] = [
    Code::Store,
    Code::Reauthorize,
    Code::WrongCompany,
    Code::Network,
];

/// Runs `status`.
pub async fn run(settings: &Settings, args: StatusArgs) -> Result<(), CliError> {
    let auth = settings.pleo_auth(None).await?;
    let mut entries = inventory(settings, &auth).await?;
    let dangling = match auth.token_manager() {
        Ok(manager) => manager.dangling().await.unwrap_or_else(|e| {
            errln!("warning: listing the grants not kept failed: {e}");
            Vec::new()
        }),
        Err(_) => Vec::new(),
    };
    let mut health = None;
    if args.check {
        health = super::health::status_lines(&auth).await;
        check_all(&auth, &mut entries).await;
    }
    if args.json {
        print_json(&auth, &entries, &dangling)?;
    } else {
        print_waiting(&auth).await;
        print_text(settings, &auth, &entries, &dangling);
    }
    let codes: Vec<Code> = entries
        .iter()
        .filter_map(Entry::attention)
        .chain(health)
        .collect();
    match PRIORITY.iter().find(|code| codes.contains(code)) {
        None => Ok(()),
        Some(code) => Err(CliError::new(
            *code,
            format!("{} connection(s) need attention", codes.len()),
        )
        .hint(match code {
            Code::Store => "an unreadable record is listed as corrupt: restore it from a backup, or remove it and connect the company again",
            Code::Reauthorize => "connect those companies again: `pleo-auth login` (OAuth) or `pleo-auth keys replace` (API key)",
            Code::WrongCompany => "Pleo says a credential acts for another company than it is stored for: remove it (`pleo-auth logout`) and connect again",
            _ => "Pleo could not be asked; retry `pleo-auth status --check` later",
        })),
    }
}

/// Reads every OAuth grant and API key record of the environment, one by one.
async fn inventory(settings: &Settings, auth: &PleoAuth) -> Result<Vec<Entry>, CliError> {
    let store = auth.store();
    let environment = auth.environment().name().as_str().to_owned();
    let tenants: HashMap<Subject, String> =
        match auth.tenant_links().list(auth.environment().name()).await {
            Ok(links) => links
                .into_iter()
                .map(|l| (l.subject, l.tenant.as_str().to_owned()))
                .collect(),
            Err(e) if is_unreadable(&e) => {
                errln!("warning: a tenant link is unreadable, so tenants are not shown: {e}");
                HashMap::new()
            }
            Err(e) => return Err(CliError::core("reading the tenant links failed", e)),
        };
    let client = settings.client.as_ref().map(|(id, _)| id.as_str());
    let mut entries = Vec::new();
    for kind in ["oauth", "apikey"] {
        let prefix =
            StoreKey::from_parts(["pleo-auth", "v1", kind, &environment]).map_err(|e| {
                CliError::config("the environment name makes no store key").with_source(e)
            })?;
        let keys = store
            .list(&prefix)
            .await
            .map_err(|e| CliError::core("listing the stored connections failed", e))?;
        for key in keys {
            let parts = key.parts();
            let client_id = parts.get(4).cloned().unwrap_or_default();
            let subject = parts.get(5).and_then(|s| s.parse::<Subject>().ok());
            let ours = if kind == "oauth" {
                client == Some(client_id.as_str())
            } else {
                settings.integration_id == client_id
            };
            let mut entry = Entry {
                key: key.clone(),
                tenant: subject.and_then(|s| tenants.get(&s).cloned()),
                subject,
                method: if kind == "oauth" {
                    CredentialKind::OAuth
                } else {
                    CredentialKind::IntegratedApiKey
                },
                environment: environment.clone(),
                client_id,
                other_client: !ours,
                state: "corrupt",
                scopes: Vec::new(),
                generation: None,
                access_token_expires_at_ms: None,
                masked_key: None,
                error: None,
                key_header: None,
                check: None,
            };
            let read = if kind == "oauth" {
                read_grant(store, &key, &mut entry).await
            } else {
                read_key(store, &key, &mut entry).await
            };
            match read {
                Ok(true) => entries.push(entry),
                Ok(false) => {}
                Err(e) if is_unreadable(&e) => {
                    entry.error = Some(e.to_string());
                    entries.push(entry);
                }
                Err(e) => {
                    return Err(CliError::core(format!("reading {key} failed"), e));
                }
            }
        }
    }
    entries.sort_by(|a, b| {
        (a.tenant.is_none(), &a.tenant, a.subject, a.method.as_str()).cmp(&(
            b.tenant.is_none(),
            &b.tenant,
            b.subject,
            b.method.as_str(),
        ))
    });
    Ok(entries)
}

fn is_unreadable(e: &pleo_auth::CoreError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Corrupt
            | ErrorKind::UnsupportedSchema
            | ErrorKind::KeyMismatch
            | ErrorKind::InvalidInput
    )
}

fn key_state_name(status: CredentialStatus) -> &'static str {
    match status {
        CredentialStatus::Active => "active",
        CredentialStatus::NeedsReauthorization => "needs_reauthorization",
        CredentialStatus::NeedsReplacement => "needs_replacement",
        CredentialStatus::Revoked => "revoked",
    }
}

async fn read_grant(
    store: &pleo_auth::DynSecretStore,
    key: &StoreKey,
    entry: &mut Entry,
) -> Result<bool, pleo_auth::CoreError> {
    let Some((grant, _)) = store.get_record::<OAuthGrant>(key).await? else {
        return Ok(false);
    };
    entry.subject = Some(grant.subject);
    entry.state = pleo_auth::oauth::GrantState::of_record(&grant).as_str();
    entry.tenant = entry
        .tenant
        .take()
        .or(grant.tenant.map(|t| t.as_str().to_owned()));
    entry.scopes = grant.scopes.iter().map(|s| s.as_str().to_owned()).collect();
    entry.generation = Some(grant.generation);
    entry.access_token_expires_at_ms = grant.access_token_expires_at.map(|t| t.as_millis());
    Ok(true)
}

async fn read_key(
    store: &pleo_auth::DynSecretStore,
    key: &StoreKey,
    entry: &mut Entry,
) -> Result<bool, pleo_auth::CoreError> {
    let Some((record, _)) = store.get_record::<ApiKeyCredential>(key).await? else {
        return Ok(false);
    };
    entry.subject = Some(record.subject);
    entry.tenant = entry
        .tenant
        .take()
        .or(record.tenant.map(|t| t.as_str().to_owned()));
    entry.method = record.kind.credential_kind();
    entry.state = key_state_name(record.status);
    entry.scopes = record
        .scopes
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect();
    entry.generation = Some(record.generation);
    entry.masked_key = record.key.as_ref().map(pleo_auth::apikey::masked);
    entry.key_header = record.key.as_ref().map(AuthorizationHeader::basic_api_key);
    Ok(true)
}

/// Asks Pleo about every usable connection of the configured client, [`CHECK_PARALLELISM`] at
/// a time.
async fn check_all(auth: &PleoAuth, entries: &mut [Entry]) {
    let http = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(CHECK_TIMEOUT)
        .build()
    {
        Ok(http) => http,
        Err(e) => {
            for entry in entries.iter_mut() {
                entry.check = Some(Check::Unreachable(format!("no HTTP client: {e}")));
            }
            return;
        }
    };
    let manager = auth.token_manager().ok();
    let environment = auth.environment().clone();
    let permits = Arc::new(Semaphore::new(CHECK_PARALLELISM));
    let mut tasks = JoinSet::new();
    for (index, entry) in entries.iter_mut().enumerate() {
        let skip = if entry.other_client {
            Some("stored under another client id")
        } else if entry.state != "active" {
            Some("not usable")
        } else {
            None
        };
        if let Some(why) = skip {
            entry.check = Some(Check::Skipped(why));
            continue;
        }
        let Some(subject) = entry.subject else {
            entry.check = Some(Check::Skipped("no subject"));
            continue;
        };
        let job = CheckJob {
            http: http.clone(),
            environment: environment.clone(),
            manager: manager.clone(),
            subject,
            key_header: entry.key_header.take(),
        };
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            (index, job.run().await)
        });
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok((index, check)) = done {
            entries[index].check = Some(check);
        }
    }
}

/// One `--check`: the connection's credential, then `GET /v1/introspect` with it.
struct CheckJob {
    http: reqwest::Client,
    environment: Environment,
    manager: Option<TokenManager>,
    subject: Subject,
    key_header: Option<AuthorizationHeader>,
}

impl CheckJob {
    async fn run(self) -> Check {
        let header = match (self.key_header, &self.manager) {
            (Some(header), _) => header,
            (None, Some(manager)) => match manager.access_token(&self.subject).await {
                Ok(token) => token.credential().header.clone(),
                Err(e) => {
                    let cli = CliError::oauth("refreshing the grant failed", e);
                    return match cli.code() {
                        Code::Reauthorize | Code::Refused => {
                            Check::Refused(cli.message().to_owned())
                        }
                        _ => Check::Unreachable(cli.message().to_owned()),
                    };
                }
            },
            (None, None) => return Check::Skipped("OAuth is not configured"),
        };
        match introspect(&self.http, &self.environment, &header).await {
            Ok(found) if found.subject == self.subject => Check::Ok(found.scopes),
            Ok(found) => Check::WrongSubject(found.subject),
            Err(e) => match e.kind() {
                ErrorKind::Unauthenticated
                | ErrorKind::PermissionDenied
                | ErrorKind::NeedsReauthorization
                | ErrorKind::NeedsReplacement
                | ErrorKind::Revoked => Check::Refused("Pleo refused the credential".to_owned()),
                _ => Check::Unreachable(e.to_string()),
            },
        }
    }
}

fn print_json(
    auth: &PleoAuth,
    entries: &[Entry],
    dangling: &[DanglingStatus],
) -> Result<(), CliError> {
    let client = auth
        .oauth()
        .ok()
        .map(|o| o.config().client_id().as_str().to_owned());
    let items = entries
        .iter()
        .map(|e| {
            let mut item = json!({
                "tenant": e.tenant,
                "subject": e.subject.map(|s| s.to_string()),
                "company": e.subject.and_then(|s| s.company()).map(|id| id.to_string()),
                "organisation": e.subject.and_then(|s| s.organisation()).map(|id| id.to_string()),
                "method": e.method.as_str(),
                "environment": e.environment,
                "client_id": e.client_id,
                "other_client": e.other_client,
                "state": e.state,
                "scopes": e.scopes,
                "generation": e.generation,
                "access_token_expires_at_ms": e.access_token_expires_at_ms,
                "masked_key": e.masked_key,
                "record": e.key.to_string(),
                "error": e.error,
            });
            if let Some(check) = &e.check {
                item["check"] = json!({
                    "result": check.name(),
                    "detail": check.detail(),
                    "scopes": match check {
                        Check::Ok(scopes) => Some(scopes.iter().map(|s| s.as_str().to_owned()).collect::<Vec<_>>()),
                        _ => None,
                    },
                });
            }
            item
        })
        .chain(dangling.iter().map(|d| {
            json!({
                "tenant": null,
                "subject": d.subject.map(|s| s.to_string()),
                "company": d.subject.and_then(|s| s.company()).map(|id| id.to_string()),
                "organisation": d.subject.and_then(|s| s.organisation()).map(|id| id.to_string()),
                "method": "oauth",
                "environment": auth.environment().name().as_str(),
                "client_id": client,
                "other_client": false,
                "state": "dangling",
                "dangling_reason": d.reason.as_str(),
                "revocation": revocation_name(d.revocation),
                "revocation_attempts": d.attempts,
            })
        }))
        .collect::<Vec<_>>();
    let text = serde_json::to_string_pretty(&items)
        .map_err(|e| CliError::other("writing JSON failed").with_source(e))?;
    outln!("{text}");
    Ok(())
}

fn revocation_name(state: RevocationState) -> &'static str {
    match state {
        RevocationState::Unsafe => "unsafe",
        _ => "pending",
    }
}

/// How many authorizations wait for consent, and how many of those expired (on stderr).
async fn print_waiting(auth: &PleoAuth) {
    let Ok(oauth) = auth.oauth() else { return };
    match oauth.pending().await {
        Ok(pending) if !pending.is_empty() => errln!(
            "{} authorization(s) waiting for consent ({} expired; keep-alive removes those).",
            pending.len(),
            pending.iter().filter(|p| p.expired).count()
        ),
        Ok(_) => {}
        Err(e) => errln!("warning: listing the pending authorizations failed: {e}"),
    }
}

fn print_text(
    settings: &Settings,
    auth: &PleoAuth,
    entries: &[Entry],
    dangling: &[DanglingStatus],
) {
    print_dangling(dangling);
    if entries.is_empty() {
        outln!(
            "No connections in {} (store {}).",
            auth.environment().name(),
            settings.store
        );
        outln!("Connect one with `pleo-auth login` or `pleo-auth keys add`.");
        return;
    }
    let checked = entries.iter().any(|e| e.check.is_some());
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let mut row = vec![
                e.tenant.clone().unwrap_or_else(|| "-".to_owned()),
                match e.subject {
                    Some(Subject::Company(id)) => id.to_string(),
                    Some(Subject::Organisation(id)) => format!("organisation {id}"),
                    None => "?".to_owned(),
                },
                method_name(e.method).to_owned(),
                e.environment.clone(),
                if e.other_client {
                    format!("{}*", e.state)
                } else {
                    e.state.to_owned()
                },
            ];
            if checked {
                row.push(e.check.as_ref().map_or("-", Check::name).to_owned());
            }
            row.push(e.scopes.join(" "));
            row
        })
        .collect();
    let mut header = vec!["TENANT", "PLEO COMPANY", "METHOD", "ENVIRONMENT", "STATE"];
    if checked {
        header.push("AT PLEO");
    }
    header.push("SCOPES");
    print_table(&header, &rows);
    for e in entries {
        let who = e
            .subject
            .map_or_else(|| e.key.to_string(), |s| describe(&s));
        if let Some(error) = &e.error {
            outln!("  {who}: the record {} is unreadable: {error}", e.key);
        }
        if e.other_client {
            outln!(
                "  * {who}: stored under client id {:?}, not the configured one; set PLEO_CLIENT_ID (or PLEO_INTEGRATION_ID for keys) to use it",
                e.client_id
            );
        }
        if let Some(detail) = e
            .check
            .as_ref()
            .filter(|c| !matches!(c, Check::Ok(_) | Check::Skipped(_)))
            .and_then(Check::detail)
        {
            outln!("  {who}: {detail}");
        }
    }
}

/// Lists grants Pleo issued that are not kept and not yet revoked (on stderr, before the table).
fn print_dangling(dangling: &[DanglingStatus]) {
    if dangling.is_empty() {
        return;
    }
    errln!(
        "{} OAuth grant(s) were issued but are not kept, and are not revoked yet:",
        dangling.len()
    );
    for d in dangling {
        let who = d
            .subject
            .map_or_else(|| "an unknown company".to_owned(), |s| describe(&s));
        let what = match d.revocation {
            RevocationState::Unsafe => {
                "revoking it would end the grant that is kept for this company; left alone"
            }
            _ => "the revocation is retried by keep-alive",
        };
        errln!("  {who}: {} ({what})", d.reason.as_str());
    }
}
