//! `pleo-auth login`: the OAuth flow of a command-line tool (RFC 8252, loopback redirect).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use pleo_auth::http::LoopbackCallback;
use pleo_auth::oauth::AuthorizeOptions;
use pleo_auth::{ScopeSet, Subject};

use super::exit::CliError;
use super::output::{Spinner, describe, parse_company, parse_tenant, stdout_is_terminal};
use super::settings::Settings;

/// `login` options.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// Link the connected company to your tenant id (an ERP company, an account number)
    #[arg(long, value_name = "TENANT")]
    tenant: Option<String>,
    /// Move an existing link of the tenant or of the company
    #[arg(long, requires = "tenant")]
    relink: bool,
    /// Expect this company: preselected on the consent page; any other is refused (exit 5)
    #[arg(long, value_name = "UUID")]
    company: Option<String>,
    /// Scopes to request instead of PLEO_SCOPES, space-separated
    #[arg(long, value_name = "SCOPES")]
    scopes: Option<String>,
    /// Never open a browser; only print the URL
    #[arg(long)]
    no_browser: bool,
    /// How long to wait for the callback, in seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    timeout: u64,
}

/// Runs `login`.
pub async fn run(settings: &Settings, args: LoginArgs) -> Result<(), CliError> {
    settings.require_oauth()?;
    let callback = LoopbackCallback::bind(&settings.redirect_uri)
        .await
        .map_err(|e| {
            CliError::http("cannot listen for the OAuth callback", e)
                .hint("PLEO_REDIRECT_URI must be http on 127.0.0.1, [::1] or localhost")
        })?;
    let redirect_uri = callback.redirect_uri().to_string();
    let auth = settings.pleo_auth(Some(&redirect_uri)).await?;
    let oauth = auth
        .oauth()
        .map_err(|e| CliError::facade("OAuth is not configured", e))?;

    let mut options = AuthorizeOptions::new().relink(args.relink);
    if let Some(tenant) = &args.tenant {
        options = options.tenant(parse_tenant(tenant)?);
    }
    if let Some(company) = &args.company {
        options = options.expect_subject(Subject::Company(parse_company(company)?));
    }
    if let Some(scopes) = &args.scopes {
        let scopes: ScopeSet = scopes
            .parse()
            .map_err(|e| CliError::core("--scopes is not a list of scopes", e))?;
        options = options.scopes(scopes);
    }
    let request = oauth
        .authorize(options)
        .await
        .map_err(|e| CliError::oauth("starting the authorization failed", e))?;

    let environment = auth.environment().name();
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "Open this URL in a browser to connect a Pleo company ({environment}):\n\n{}\n",
        request.url
    );
    let _ = out.flush();
    if !args.no_browser && stdout_is_terminal() {
        open_browser(request.url.as_str());
    }

    let spinner = Spinner::start(format!(
        "Waiting for Pleo to redirect the browser to {redirect_uri} ..."
    ));
    let waited = callback.wait(Duration::from_secs(args.timeout)).await;
    spinner.stop().await;
    let query = waited.map_err(|e| {
        CliError::http("no authorization arrived", e)
            .hint("run `pleo-auth login` again and finish the consent in the browser")
    })?;
    let connection = oauth
        .complete(&query)
        .await
        .map_err(|e| CliError::oauth("finishing the authorization failed", e))?;

    println!(
        "Connected {} in {environment} with OAuth 2.0.",
        describe(&connection.subject)
    );
    println!("  scopes: {}", connection.scopes);
    if let Some(tenant) = &connection.tenant {
        println!("  tenant: {}", tenant.as_str());
    }
    if connection.reconnected {
        println!("  (an earlier grant of this company was replaced)");
    }
    println!("  store:  {}", settings.store);
    Ok(())
}

/// Opens `url` with `$BROWSER` or `xdg-open`, where one exists; a failure is only mentioned.
fn open_browser(url: &str) {
    let program = std::env::var("BROWSER")
        .ok()
        .filter(|b| !b.is_empty())
        .or_else(|| find_in_path("xdg-open").then(|| "xdg-open".to_owned()));
    let Some(program) = program else {
        return;
    };
    let spawned = Command::new(&program)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if spawned.is_err() {
        eprintln!("(could not start {program}; open the URL yourself)");
    }
}

fn find_in_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}
