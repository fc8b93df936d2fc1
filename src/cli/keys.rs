//! `pleo-auth keys add|replace|remove`: Integrated API keys, read from stdin or a hidden prompt.

use std::io::{IsTerminal, Read};

use pleo_auth::apikey::{ConnectOptions, IntegratedKeys, KeyInfo};
use pleo_auth::{ApiKey, CompanyId, Subject};

use super::Target;
use super::exit::{CliError, Code};
use super::output::{describe, parse_company, parse_tenant, resolve_subject};
use super::settings::Settings;

/// `keys` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Validate an Integrated API key with Pleo and store it for its company
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
    },
    /// Replace the stored key of a company with a new key of the same company
    Replace {
        #[command(flatten)]
        target: Target,
    },
    /// Delete the stored key of a company (and its tenant link)
    Remove {
        #[command(flatten)]
        target: Target,
    },
}

/// Runs a `keys` subcommand.
pub async fn run(settings: &Settings, command: KeysCommand) -> Result<(), CliError> {
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
        } => {
            let mut options = ConnectOptions::new().relink(relink);
            if let Some(tenant) = &tenant {
                options = options.tenant(parse_tenant(tenant)?);
            }
            if let Some(company) = &company {
                options = options.expect_company(parse_company(company)?);
            }
            let key = read_key()?;
            let connected = keys
                .connect_with(key, options)
                .await
                .map_err(|e| CliError::apikey("connecting the Integrated API key failed", e))?;
            print_key("Connected", &connected.key, &environment);
            for link in &connected.replaced_links {
                println!(
                    "  moved link: tenant {} was linked to {}",
                    link.tenant.as_str(),
                    describe(&link.subject)
                );
            }
        }
        KeysCommand::Replace { target } => {
            let company = company_of(&auth, &target).await?;
            let key = read_key()?;
            let info = keys
                .replace(company, key)
                .await
                .map_err(|e| CliError::apikey("replacing the Integrated API key failed", e))?;
            print_key("Replaced the key of", &info, &environment);
        }
        KeysCommand::Remove { target } => {
            let company = company_of(&auth, &target).await?;
            match remove(keys, company).await? {
                Some(info) => print_key("Removed the key of", &info, &environment),
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

fn print_key(what: &str, info: &KeyInfo, environment: &pleo_auth::EnvironmentName) {
    println!(
        "{what} {} in {environment} with Integrated API key {}.",
        describe(&info.subject),
        info.masked_key
    );
    println!("  scopes: {}", info.scopes);
    if let Some(tenant) = &info.tenant {
        println!("  tenant: {}", tenant.as_str());
    }
}

/// The key, from stdin when it is not a terminal, else from a prompt that does not echo.
fn read_key() -> Result<ApiKey, CliError> {
    let raw = if std::io::stdin().is_terminal() {
        rpassword::prompt_password("Integrated API key (input hidden): ").map_err(|e| {
            CliError::usage("reading the key from the terminal failed").with_source(e)
        })?
    } else {
        let mut text = String::new();
        std::io::stdin()
            .take(64 * 1024)
            .read_to_string(&mut text)
            .map_err(|e| CliError::usage("reading the key from stdin failed").with_source(e))?;
        text
    };
    let key = raw.trim();
    if key.is_empty() {
        return Err(CliError::usage("no API key was given")
            .hint("pipe it on stdin (`pleo-auth keys add < key.txt`) or paste it at the prompt"));
    }
    Ok(ApiKey::new(key))
}
