//! `pleo-auth keys add|replace|remove`: Integrated API keys, read from stdin or a hidden prompt.

use std::io::{IsTerminal, Read};

use pleo_auth::apikey::{ConnectOptions, IntegratedKeys, KeyInfo};
use pleo_auth::{ApiKey, CompanyId, Subject};
use serde_json::json;

use super::Target;
use super::exit::{CliError, Code};
use super::output::{describe, parse_company, parse_tenant, print_json, resolve_subject};
use super::settings::Settings;
use super::terminal;

/// Where keys come from, for `keys add --help`.
const WHERE_TO_GET_KEYS: &str = "\
Where to get a key: Pleo shows an Integrated API key to the customer when they install your
integration in Pleo (Settings -> Accounting); they paste it here. In the sandbox, any company's
key is minted by the sandbox itself (see `pleo-auth demo`). Standalone API keys (Settings -> API
Keys) are not Integrated keys: give one to PLEO_API_KEY instead.";

/// Options every `keys` subcommand takes.
#[derive(Debug, Clone, clap::Args)]
pub struct KeyOutput {
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
    /// Refused: keys are read from stdin or a hidden prompt, never from the command line
    #[arg(long, value_name = "KEY", hide = true)]
    key: Option<String>,
}

/// `keys` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Validate an Integrated API key with Pleo and store it for its company
    #[command(after_long_help = WHERE_TO_GET_KEYS)]
    Add {
        /// Link the key's company to your tenant id
        #[arg(long, value_name = "TENANT")]
        tenant: Option<String>,
        /// Move an existing link of the tenant or of the company
        #[arg(long, requires = "tenant")]
        relink: bool,
        /// Refuse the key unless it belongs to this company
        #[arg(long, value_name = "UUID")]
        company: Option<String>,
        #[command(flatten)]
        output: KeyOutput,
    },
    /// Replace the stored key of a company with a new key of the same company
    #[command(after_long_help = WHERE_TO_GET_KEYS)]
    Replace {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        output: KeyOutput,
    },
    /// Delete the stored key of a company (and its tenant link); the key stays valid at Pleo
    Remove {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        output: KeyOutput,
    },
}

impl KeysCommand {
    fn output(&self) -> &KeyOutput {
        match self {
            KeysCommand::Add { output, .. }
            | KeysCommand::Replace { output, .. }
            | KeysCommand::Remove { output, .. } => output,
        }
    }
}

/// Runs a `keys` subcommand.
pub async fn run(settings: &Settings, command: KeysCommand) -> Result<(), CliError> {
    let output = command.output().clone();
    if output.key.is_some() {
        return Err(CliError::usage(
            "refusing --key: a key on the command line is visible to every user in `ps` and stays in the shell history",
        )
        .hint("pipe it on stdin (`pleo-auth keys add < key.txt`) or paste it at the hidden prompt"));
    }
    let as_json = output.json;
    let auth = settings.pleo_auth(None).await?;
    let keys = auth
        .api_keys()
        .map_err(|e| CliError::facade("Integrated API keys are not configured", e))?;
    let environment = auth.environment().name().clone();
    match command {
        KeysCommand::Add {
            tenant,
            relink,
            company,
            ..
        } => {
            let mut options = ConnectOptions::new().relink(relink);
            if let Some(tenant) = &tenant {
                options = options.tenant(parse_tenant(tenant)?);
            }
            if let Some(company) = &company {
                options = options.expect_company(parse_company(company)?);
            }
            let key = read_key().await?;
            let connected = keys
                .connect_with(key, options)
                .await
                .map_err(|e| CliError::new_key("connecting the Integrated API key failed", e))?;
            print_key("Connected", &connected.key, &environment, as_json)?;
            if !as_json {
                for link in &connected.replaced_links {
                    outln!(
                        "  moved link: tenant {} was linked to {}",
                        link.tenant.as_str(),
                        describe(&link.subject)
                    );
                }
            }
        }
        KeysCommand::Replace { target, .. } => {
            let company = company_of(&auth, &target).await?;
            let key = read_key().await?;
            let info = keys
                .replace(company, key)
                .await
                .map_err(|e| CliError::new_key("replacing the Integrated API key failed", e))?;
            print_key("Replaced the key of", &info, &environment, as_json)?;
        }
        KeysCommand::Remove { target, .. } => {
            let company = company_of(&auth, &target).await?;
            match remove(keys, company).await? {
                Some(info) => print_key("Removed the key of", &info, &environment, as_json)?,
                None => {
                    return Err(CliError::new(
                        Code::NotConnected,
                        format!("no Integrated API key is stored for company {company}"),
                    ));
                }
            }
        }
    }
    Ok(())
}

async fn remove(keys: &IntegratedKeys, company: CompanyId) -> Result<Option<KeyInfo>, CliError> {
    keys.remove(company)
        .await
        .map_err(|e| CliError::apikey("removing the Integrated API key failed", e))
}

async fn company_of(auth: &pleo_auth::PleoAuth, target: &Target) -> Result<CompanyId, CliError> {
    match resolve_subject(auth, target.company.as_deref(), target.tenant.as_deref()).await? {
        Subject::Company(company) => Ok(company),
        other => Err(CliError::usage(format!(
            "{} is not a company; Integrated API keys belong to one company",
            describe(&other)
        ))),
    }
}

fn print_key(
    what: &str,
    info: &KeyInfo,
    environment: &pleo_auth::EnvironmentName,
    as_json: bool,
) -> Result<(), CliError> {
    if as_json {
        return print_json(&json!({
            "subject": info.subject.to_string(),
            "company": info.subject.company().map(|c| c.to_string()),
            "tenant": info.tenant.as_ref().map(|t| t.as_str()),
            "environment": environment.as_str(),
            "method": "integrated_api_key",
            "masked_key": info.masked_key,
            "scopes": info.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        }));
    }
    outln!(
        "{what} {} in {environment} with Integrated API key {}.",
        describe(&info.subject),
        info.masked_key
    );
    outln!("  scopes: {}", info.scopes);
    if let Some(tenant) = &info.tenant {
        outln!("  tenant: {}", tenant.as_str());
    }
    Ok(())
}

/// The key, from stdin when it is not a terminal, else from a prompt that does not echo
/// (Ctrl-C there restores the terminal and exits 130).
async fn read_key() -> Result<ApiKey, CliError> {
    let raw = if std::io::stdin().is_terminal() {
        zeroize::Zeroizing::new(terminal::read_hidden("Integrated API key (input hidden): ").await?)
    } else {
        let mut text = String::new();
        std::io::stdin()
            .take(64 * 1024)
            .read_to_string(&mut text)
            .map_err(|e| CliError::usage("reading the key from stdin failed").with_source(e))?;
        zeroize::Zeroizing::new(text)
    };
    let key = raw.trim();
    if key.is_empty() {
        return Err(CliError::usage("no API key was given")
            .hint("pipe it on stdin (`pleo-auth keys add < key.txt`) or paste it at the prompt"));
    }
    Ok(ApiKey::new(key))
}
