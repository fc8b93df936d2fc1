//! `refresh`, `disconnect`, `logout`, `token`, `api`, `sandbox` and `rewrap`.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use pleo_auth::http::{Response, Target as RequestTarget};
use pleo_auth::oauth::TokenManager;
use pleo_auth::oauth::{DisconnectOutcome, ErrorKind as OAuthKind, GrantState};
use pleo_auth::sandbox::Sandbox;
use pleo_auth::{
    ClientId, CredentialKey, CredentialKind, CredentialProvider, OrganisationId, Precondition,
    Subject, layout,
};
use serde_json::json;

use super::exit::{CliError, Code};
use super::output::{describe, parse_company, print_json, resolve_subject, stdout_is_terminal};
use super::settings::Settings;
use super::{OptionalTarget, Target};

/// Runs `refresh`: rotates the tokens of one grant, or of every active grant.
pub async fn refresh(
    settings: &Settings,
    target: OptionalTarget,
    as_json: bool,
) -> Result<(), CliError> {
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
        if active.is_empty() && !as_json {
            outln!("No active OAuth grant in {}.", auth.environment().name());
        }
        active
    };
    let mut first_failure: Option<CliError> = None;
    let mut results = Vec::new();
    for subject in subjects {
        let outcome = rotate(&manager, &subject).await;
        let generations = outcome.as_ref().ok();
        results.push(json!({
            "subject": subject.to_string(),
            "company": subject.company().map(|c| c.to_string()),
            "refreshed": outcome.is_ok(),
            "generation_before": generations.map(|(before, _)| before),
            "generation": generations.map(|(_, after)| after),
            "error": outcome.as_ref().err().map(CliError::message),
            "exit_code": outcome.as_ref().err().map_or(0, |e| e.code() as u8),
        }));
        match outcome {
            Ok((before, after)) => {
                if !as_json {
                    outln!(
                        "Refreshed {}: generation {before} -> {after}",
                        describe(&subject)
                    );
                }
            }
            Err(err) => match &first_failure {
                Some(_) => err.print(),
                None => first_failure = Some(err),
            },
        }
    }
    if as_json {
        print_json(&json!(results))?;
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

/// Runs `disconnect`: revokes the grant at Pleo now, or records the revocation for keep-alive
/// to retry (exit 9), and says which.
pub async fn disconnect(
    settings: &Settings,
    target: Target,
    as_json: bool,
) -> Result<(), CliError> {
    settings.require_oauth()?;
    let auth = settings.pleo_auth(None).await?;
    let subject =
        resolve_subject(&auth, target.company.as_deref(), target.tenant.as_deref()).await?;
    let manager = auth
        .token_manager()
        .map_err(|e| CliError::facade("OAuth is not configured", e))?;
    match manager.disconnect(&subject).await {
        Ok(outcome) => {
            let (name, how, pending) = match outcome {
                DisconnectOutcome::Revoked => (
                    "revoked",
                    "revoked at Pleo now (its installation is deleted) and marked revoked here",
                    false,
                ),
                DisconnectOutcome::RevocationPending => (
                    "revocation_recorded",
                    "marked revoked here, but Pleo could not be reached: the grant stays valid at Pleo until the recorded revocation goes through; keep-alive retries it (`pleo-auth keep-alive`, or TokenManager::keep_alive)",
                    true,
                ),
                DisconnectOutcome::LocalOnly => (
                    "revoked_before",
                    "marked revoked here; Pleo had refused the grant already, so there was nothing to revoke",
                    false,
                ),
                _ => ("disconnected", "disconnected", false),
            };
            if as_json {
                print_json(&json!({
                    "subject": subject.to_string(),
                    "company": subject.company().map(|c| c.to_string()),
                    "outcome": name,
                    "revoked_at_pleo": !pending,
                }))?;
            } else {
                outln!("Disconnected {}: {how}.", describe(&subject));
            }
            if pending {
                return Err(CliError::new(
                    Code::Network,
                    format!("the revocation of {} is only recorded", describe(&subject)),
                )
                .hint("run keep-alive once Pleo answers again; until then Pleo still accepts the grant"));
            }
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

/// Runs `logout`: deletes the company's stored OAuth grant and Integrated API key here, and
/// its tenant link, without asking Pleo; what Pleo issued stays valid there.
pub async fn logout(settings: &Settings, target: Target, as_json: bool) -> Result<(), CliError> {
    let auth = settings.pleo_auth(None).await?;
    let subject =
        resolve_subject(&auth, target.company.as_deref(), target.tenant.as_deref()).await?;
    let store = auth.store();
    let environment = auth.environment().name().clone();
    let mut forgotten = Vec::new();
    if let Some((client_id, _)) = &settings.client {
        let client = ClientId::new(client_id.clone())
            .map_err(|e| CliError::config("the client id is refused").with_source(e))?;
        let key = layout::oauth_grant(&CredentialKey::new(environment.clone(), client, subject));
        if forget(store, &key).await? {
            forgotten.push("oauth");
        }
    }
    if let (Some(company), Ok(keys)) = (subject.company(), auth.api_keys())
        && keys
            .remove(company)
            .await
            .map_err(|e| CliError::apikey("removing the Integrated API key failed", e))?
            .is_some()
    {
        forgotten.push("integrated_api_key");
    }
    let links = auth.tenant_links();
    if let Some(tenant) = links
        .tenant_for(&environment, &subject)
        .await
        .map_err(|e| CliError::core("reading the tenant link failed", e))?
    {
        links
            .unlink(&environment, &tenant.tenant)
            .await
            .map_err(|e| CliError::core("removing the tenant link failed", e))?;
    }
    if forgotten.is_empty() {
        return Err(CliError::new(
            Code::NotConnected,
            format!("nothing is stored for {}", describe(&subject)),
        ));
    }
    if as_json {
        print_json(&json!({
            "subject": subject.to_string(),
            "company": subject.company().map(|c| c.to_string()),
            "forgotten": forgotten,
            "revoked_at_pleo": false,
        }))?;
    } else {
        outln!(
            "Forgot the stored credentials of {} ({}).",
            describe(&subject),
            forgotten.join(", ")
        );
        if forgotten.contains(&"oauth") {
            outln!(
                "  The OAuth grant stays valid at Pleo; `pleo-auth disconnect` revokes it instead."
            );
        }
    }
    Ok(())
}

/// Deletes the record at `key`; whether there was one.
async fn forget(
    store: &pleo_auth::DynSecretStore,
    key: &pleo_auth::StoreKey,
) -> Result<bool, CliError> {
    let failed = |e| CliError::core("deleting the stored grant failed", e);
    let Some(found) = store.get(key).await.map_err(failed)? else {
        return Ok(false);
    };
    match store
        .delete(key, Precondition::Version(found.version))
        .await
    {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == pleo_auth::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(failed(e)),
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
    /// Print JSON: subject, method, the Authorization header value and, for OAuth, the access
    /// token
    #[arg(long)]
    json: bool,
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
    if args.json {
        return print_json(&json!({
            "subject": subject.to_string(),
            "company": subject.company().map(|c| c.to_string()),
            "method": credential.kind.as_str(),
            "authorization": header,
            "access_token": header
                .strip_prefix("Bearer ")
                .filter(|_| credential.kind == CredentialKind::OAuth),
        }));
    }
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
    outln!("{value}");
    Ok(())
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
    outln!("{shown}");
    Ok(())
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
    outln!("{url}");
    errln!(
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
pub async fn rewrap(settings: &Settings, as_json: bool) -> Result<(), CliError> {
    let store = settings.encrypted_store().await?;
    let root = pleo_auth::StoreKey::from_parts(["pleo-auth"])
        .map_err(|e| CliError::core("the store's root is not a key", e))?;
    let report = store
        .rewrap_below(&root, 500)
        .await
        .map_err(|e| CliError::core("listing the records failed", e))?;
    if as_json {
        print_json(&json!({
            "checked": report.checked,
            "rewrapped": report.rewrapped.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "raced": report.raced.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "failed": report.failed.iter().map(|(key, error)| json!({"record": key.to_string(), "error": error.to_string()})).collect::<Vec<_>>(),
        }))?;
    } else {
        outln!(
            "checked {}, rewrapped {}, changed meanwhile {}, failed {}",
            report.checked,
            report.rewrapped.len(),
            report.raced.len(),
            report.failed.len()
        );
        for key in &report.raced {
            outln!("  {key}: written meanwhile (already under the current key)");
        }
        for (key, error) in &report.failed {
            outln!("  {key}: {error}");
        }
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
pub async fn rewrap(_settings: &Settings, _as_json: bool) -> Result<(), CliError> {
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
