//! `status`, `refresh`, `disconnect`, `token`, `api`, `sandbox` and `rewrap`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use pleo_auth::http::{Response, Target as RequestTarget};
use pleo_auth::oauth::TokenManager;
use pleo_auth::oauth::{DanglingStatus, DisconnectOutcome, ErrorKind as OAuthKind, GrantState};
use pleo_auth::sandbox::Sandbox;
use pleo_auth::{CredentialKind, CredentialProvider, OrganisationId, RevocationState, Subject};
use serde_json::json;

use super::exit::{CliError, Code};
use super::output::{
    describe, method_name, parse_company, print_table, resolve_subject, stdout_is_terminal,
};
use super::settings::Settings;
use super::{OptionalTarget, Target};

/// Runs `status`.
pub async fn status(settings: &Settings, as_json: bool) -> Result<(), CliError> {
    let auth = settings.pleo_auth(None).await?;
    let connections = auth
        .connections()
        .await
        .map_err(|e| CliError::facade("listing the connections failed", e))?;
    let dangling = match auth.token_manager() {
        Ok(manager) => manager
            .dangling()
            .await
            .map_err(|e| CliError::oauth("listing the grants not kept failed", e))?,
        Err(_) => Vec::new(),
    };
    if as_json {
        let dangling_items = dangling.iter().map(|d| {
            json!({
                "tenant": null,
                "subject": d.subject.map(|s| s.to_string()),
                "company": d.subject.and_then(|s| s.company()).map(|id| id.to_string()),
                "organisation": d.subject.and_then(|s| s.organisation()).map(|id| id.to_string()),
                "method": "oauth",
                "environment": auth.environment().name().as_str(),
                "state": "dangling",
                "dangling_reason": d.reason.as_str(),
                "revocation": revocation_name(d.revocation),
                "revocation_attempts": d.attempts,
            })
        });
        let items: Vec<_> = connections
            .iter()
            .map(|c| {
                json!({
                    "tenant": c.tenant.as_ref().map(|t| t.as_str()),
                    "subject": c.subject.to_string(),
                    "company": c.subject.company().map(|id| id.to_string()),
                    "organisation": c.subject.organisation().map(|id| id.to_string()),
                    "method": c.method.as_str(),
                    "environment": c.environment.as_str(),
                    "state": c.state.as_str(),
                    "scopes": c.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                    "generation": c.generation,
                    "access_token_expires_at_ms": c.access_token_expires_at.map(|t| t.as_millis()),
                    "masked_key": c.masked_key,
                })
            })
            .chain(dangling_items)
            .collect();
        let text = serde_json::to_string_pretty(&items)
            .map_err(|e| CliError::other("writing JSON failed").with_source(e))?;
        println!("{text}");
        return Ok(());
    }
    print_dangling(&dangling);
    if let Ok(oauth) = auth.oauth() {
        let pending = oauth
            .pending()
            .await
            .map_err(|e| CliError::oauth("listing the pending authorizations failed", e))?;
        let expired = pending.iter().filter(|p| p.expired).count();
        if !pending.is_empty() {
            eprintln!(
                "{} authorization(s) waiting for consent ({expired} expired; keep-alive removes those).",
                pending.len()
            );
        }
    }
    if connections.is_empty() {
        println!(
            "No connections in {} (store {}).",
            auth.environment().name(),
            settings.store
        );
        println!("Connect one with `pleo-auth login` or `pleo-auth keys add`.");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = connections
        .iter()
        .map(|c| {
            vec![
                c.tenant
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |t| t.as_str().to_owned()),
                match c.subject {
                    Subject::Company(id) => id.to_string(),
                    Subject::Organisation(id) => format!("organisation {id}"),
                },
                method_name(c.method).to_owned(),
                c.environment.to_string(),
                c.state.to_string(),
                c.scopes.to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "TENANT",
            "PLEO COMPANY",
            "METHOD",
            "ENVIRONMENT",
            "STATE",
            "SCOPES",
        ],
        &rows,
    );
    Ok(())
}

/// Lists grants Pleo issued that are not kept and not yet revoked (on stderr, before the table).
fn print_dangling(dangling: &[DanglingStatus]) {
    if dangling.is_empty() {
        return;
    }
    eprintln!(
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
        eprintln!("  {who}: {} ({what})", d.reason.as_str());
    }
}

fn revocation_name(state: RevocationState) -> &'static str {
    match state {
        RevocationState::Unsafe => "unsafe",
        _ => "pending",
    }
}

/// Runs `refresh`: rotates the tokens of one grant, or of every active grant.
pub async fn refresh(settings: &Settings, target: OptionalTarget) -> Result<(), CliError> {
    settings.require_oauth()?;
    let auth = settings.pleo_auth(None).await?;
    let manager = auth
        .token_manager()
        .map_err(|e| CliError::facade("OAuth is not configured", e))?;
    let subjects = if target.company.is_some() || target.tenant.is_some() {
        vec![resolve_subject(&auth, target.company.as_deref(), target.tenant.as_deref()).await?]
    } else {
        let grants = manager
            .list()
            .await
            .map_err(|e| CliError::oauth("listing the grants failed", e))?;
        let active: Vec<Subject> = grants
            .into_iter()
            .filter(|g| g.state == GrantState::Active)
            .map(|g| g.subject)
            .collect();
        if active.is_empty() {
            println!("No active OAuth grant in {}.", auth.environment().name());
            return Ok(());
        }
        active
    };
    let mut first_failure: Option<CliError> = None;
    for subject in subjects {
        match rotate(&manager, &subject).await {
            Ok((before, after)) => println!(
                "Refreshed {}: generation {before} -> {after}",
                describe(&subject)
            ),
            Err(err) => match &first_failure {
                Some(_) => eprintln!("error: {err}"),
                None => first_failure = Some(err),
            },
        }
    }
    first_failure.map_or(Ok(()), Err)
}

/// Rotates the grant of `subject` now; returns its generation before and after.
async fn rotate(manager: &TokenManager, subject: &Subject) -> Result<(u64, u64), CliError> {
    let failed = |e: pleo_auth::oauth::Error| match e.kind() {
        OAuthKind::NotConnected => CliError::new(
            Code::NotConnected,
            format!("{} has no OAuth grant", describe(subject)),
        )
        .hint("connect it with `pleo-auth login`"),
        _ => CliError::oauth(format!("refreshing {} failed", describe(subject)), e),
    };
    let before = manager.access_token(subject).await.map_err(failed)?;
    manager
        .rejected(subject, &before.credential().id)
        .await
        .map_err(|e| CliError::core(format!("refreshing {} failed", describe(subject)), e))?;
    let after = manager.access_token(subject).await.map_err(failed)?;
    if after.generation() <= before.generation() {
        return Err(CliError::other(format!(
            "{} was not refreshed (still generation {})",
            describe(subject),
            before.generation()
        )));
    }
    Ok((before.generation(), after.generation()))
}

/// Runs `disconnect`.
pub async fn disconnect(settings: &Settings, target: Target) -> Result<(), CliError> {
    settings.require_oauth()?;
    let auth = settings.pleo_auth(None).await?;
    let subject =
        resolve_subject(&auth, target.company.as_deref(), target.tenant.as_deref()).await?;
    let manager = auth
        .token_manager()
        .map_err(|e| CliError::facade("OAuth is not configured", e))?;
    match manager.disconnect(&subject).await {
        Ok(outcome) => {
            let how = match outcome {
                DisconnectOutcome::Revoked => "revoked at Pleo and marked revoked",
                DisconnectOutcome::RevocationPending => {
                    "marked revoked; Pleo could not be reached, the revocation is retried"
                }
                DisconnectOutcome::LocalOnly => {
                    "marked revoked (Pleo had refused the grant already)"
                }
                _ => "disconnected",
            };
            println!("Disconnected {}: {how}.", describe(&subject));
            Ok(())
        }
        Err(e) if e.kind() == &OAuthKind::NotConnected => {
            let has_key = match (subject.company(), auth.api_keys()) {
                (Some(company), Ok(keys)) => keys.get(company).await.ok().flatten().is_some(),
                _ => false,
            };
            let err = CliError::new(
                Code::NotConnected,
                format!("{} has no OAuth grant", describe(&subject)),
            );
            Err(if has_key {
                err.hint("it is connected with an Integrated API key: `pleo-auth keys remove`")
            } else {
                err
            })
        }
        Err(e) => Err(CliError::oauth(
            format!("disconnecting {} failed", describe(&subject)),
            e,
        )),
    }
}

/// `token` options.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The Pleo company id (a UUID)
    #[arg(long, value_name = "UUID")]
    company: Option<String>,
    /// Your tenant id linked to a Pleo company
    #[arg(long, value_name = "TENANT", conflicts_with = "company")]
    tenant: Option<String>,
    /// Print the whole Authorization header value (`Bearer ...` or `Basic ...`), which also
    /// works for API keys
    #[arg(long)]
    header: bool,
    /// Print to a terminal too (the secret stays on screen and in its scrollback)
    #[arg(long)]
    reveal: bool,
}

/// Runs `token`.
pub async fn token(settings: &Settings, args: TokenArgs) -> Result<(), CliError> {
    if stdout_is_terminal() && !args.reveal {
        return Err(CliError::usage("refusing to print a secret to a terminal")
            .hint("pipe it (`pleo-auth token --company ... | ...`) or pass --reveal"));
    }
    let auth = settings.pleo_auth(None).await?;
    let subject = resolve_subject(&auth, args.company.as_deref(), args.tenant.as_deref()).await?;
    let credential = auth
        .credentials()
        .credential_for(&subject)
        .await
        .map_err(|e| {
            CliError::core(
                format!("no usable credential for {}", describe(&subject)),
                e,
            )
        })?;
    let header = credential.header.expose_secret();
    let value = if args.header {
        header
    } else {
        match header.strip_prefix("Bearer ") {
            Some(token) if credential.kind == CredentialKind::OAuth => token,
            _ => {
                return Err(CliError::usage(format!(
                    "{} uses an API key, not an OAuth access token",
                    describe(&subject)
                ))
                .hint("pass --header to print the Authorization header value"));
            }
        }
    };
    let mut out = std::io::stdout();
    writeln!(out, "{value}")
        .and_then(|()| out.flush())
        .map_err(|e| CliError::other("writing to stdout failed").with_source(e))
}

/// `api` options.
#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// The HTTP method: GET, POST, PUT, PATCH or DELETE
    method: String,
    /// The API path, such as /v2/employees (a query string may follow)
    path: String,
    /// The Pleo company the request is for (sent as company_id)
    #[arg(long, value_name = "UUID")]
    company: Option<String>,
    /// Your tenant id linked to a Pleo company
    #[arg(long, value_name = "TENANT")]
    tenant: Option<String>,
    /// Use the credential of this organisation (with --company)
    #[arg(
        long,
        value_name = "UUID",
        requires = "company",
        conflicts_with = "tenant"
    )]
    organisation: Option<String>,
    /// A JSON body: the JSON itself, @FILE, or - for stdin
    #[arg(long, short = 'd', value_name = "JSON")]
    data: Option<String>,
}

/// Runs `api`.
pub async fn api(settings: &Settings, args: ApiArgs) -> Result<(), CliError> {
    let method = reqwest::Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| CliError::usage(format!("{:?} is not an HTTP method", args.method)))?;
    let body = match &args.data {
        None => None,
        Some(data) => Some(read_json_body(data)?),
    };
    let auth = settings.pleo_auth(None).await?;
    let target = request_target(&args)?;
    let mut request = auth.client().request(method, &args.path).target(target);
    if let Some(body) = &body {
        request = request.json_body(body);
    }
    let response = request
        .send()
        .await
        .map_err(|e| CliError::http(format!("{} {} failed", args.method, args.path), e))?;
    print_response(response).await
}

fn request_target(args: &ApiArgs) -> Result<RequestTarget, CliError> {
    let mut target = RequestTarget::default();
    if let Some(company) = &args.company {
        target = target.with_company(parse_company(company)?);
    }
    if let Some(tenant) = &args.tenant {
        target = target.with_tenant(super::output::parse_tenant(tenant)?);
    }
    if let Some(organisation) = &args.organisation {
        let organisation: OrganisationId = organisation
            .parse()
            .map_err(|e| CliError::core("--organisation is not an organisation id", e))?;
        target = target.with_organisation(organisation);
    }
    if args.company.is_none() && args.tenant.is_none() {
        return Err(CliError::usage(
            "name the company (--company UUID) or your tenant (--tenant ID) the request is for",
        ));
    }
    Ok(target)
}

fn read_json_body(data: &str) -> Result<serde_json::Value, CliError> {
    let text = if data == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::usage("reading the body from stdin failed").with_source(e))?;
        text
    } else if let Some(path) = data.strip_prefix('@') {
        std::fs::read_to_string(path).map_err(|e| {
            CliError::usage(format!("reading the body from {path} failed")).with_source(e)
        })?
    } else {
        data.to_owned()
    };
    serde_json::from_str(&text)
        .map_err(|e| CliError::usage("--data is not valid JSON").with_source(e))
}

async fn print_response(response: Response) -> Result<(), CliError> {
    let text = response
        .text()
        .await
        .map_err(|e| CliError::http("reading the response failed", e))?;
    let shown = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(value) => serde_json::to_string_pretty(&value).unwrap_or(text),
        Err(_) => text,
    };
    let mut out = std::io::stdout();
    writeln!(out, "{shown}")
        .and_then(|()| out.flush())
        .map_err(|e| CliError::other("writing to stdout failed").with_source(e))
}

/// `sandbox` options.
#[derive(Debug, clap::Args)]
pub struct SandboxArgs {
    /// The port (0: any free port)
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// The loopback address to bind
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    host: IpAddr,
    /// Approve every consent at once for this company or organisation (no consent page)
    #[arg(long, value_name = "UUID")]
    auto_approve: Option<uuid::Uuid>,
    /// The environment name credentials of this sandbox carry
    #[arg(long, default_value = "sandbox")]
    environment_name: String,
}

/// Runs `sandbox` until SIGINT or SIGTERM.
pub async fn sandbox(args: SandboxArgs) -> Result<(), CliError> {
    let sandbox = Sandbox::builder()
        .bind(SocketAddr::new(args.host, args.port))
        .environment_name(&args.environment_name)
        .auto_approve(args.auto_approve)
        .start()
        .await
        .map_err(|e| CliError::other("starting the sandbox failed").with_source(e))?;
    let url = sandbox.base_url();
    let mut out = std::io::stdout();
    writeln!(out, "{url}")
        .and_then(|()| out.flush())
        .map_err(|e| CliError::other("writing to stdout failed").with_source(e))?;
    eprintln!(
        "Pleo sandbox {:?} listening on {url}; stop it with Ctrl-C. Use it with:\n  export PLEO_ENV=sandbox PLEO_SANDBOX_URL={url}",
        sandbox.environment_name()
    );
    terminated().await;
    sandbox.shutdown().await;
    Ok(())
}

async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut sigterm) => {
            tokio::select! {
                _ = sigterm.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Runs `rewrap`: every record below `pleo-auth/` sealed again under the current key.
#[cfg(feature = "encryption")]
pub async fn rewrap(settings: &Settings) -> Result<(), CliError> {
    let store = settings.encrypted_store().await?;
    let root = pleo_auth::StoreKey::from_parts(["pleo-auth"])
        .map_err(|e| CliError::core("the store's root is not a key", e))?;
    let report = store
        .rewrap_below(&root, 500)
        .await
        .map_err(|e| CliError::core("listing the records failed", e))?;
    println!(
        "checked {}, rewrapped {}, changed meanwhile {}, failed {}",
        report.checked,
        report.rewrapped.len(),
        report.raced.len(),
        report.failed.len()
    );
    for key in &report.raced {
        println!("  {key}: written meanwhile (already under the current key)");
    }
    for (key, error) in &report.failed {
        println!("  {key}: {error}");
    }
    match report.failed.into_iter().next() {
        None => Ok(()),
        Some((key, error)) => Err(CliError::core(
            format!("{key} and possibly other records could not be rewrapped"),
            error,
        )
        .hint("fix the cause and run `pleo-auth rewrap` again")),
    }
}

/// Runs `rewrap` in a build without the encryption wrapper.
#[cfg(not(feature = "encryption"))]
pub async fn rewrap(_settings: &Settings) -> Result<(), CliError> {
    Err(super::settings::not_built("rewrap", "encryption"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_bodies_are_checked() {
        assert_eq!(read_json_body(r#"{"a":1}"#).unwrap()["a"], 1);
        assert_eq!(read_json_body("not json").unwrap_err().code(), Code::Usage);
    }

    #[test]
    fn a_request_must_name_who_it_is_for() {
        let args = ApiArgs {
            method: "GET".into(),
            path: "/v2/employees".into(),
            company: None,
            tenant: None,
            organisation: None,
            data: None,
        };
        assert_eq!(request_target(&args).unwrap_err().code(), Code::Usage);
    }
}
