//! `pleo-auth login`: the OAuth flow of a command-line tool (RFC 8252, loopback redirect), and
//! the paste flow for SSH sessions and machines without a browser (Pleo has no device flow).

use std::io::IsTerminal;
use std::time::Duration;

use pleo_auth::http::LoopbackCallback;
use pleo_auth::oauth::AuthorizeOptions;
use pleo_auth::{ScopeSet, Subject};
use serde_json::json;

use super::exit::{CliError, Code};
use super::output::{
    Level, Spinner, describe, parse_company, parse_tenant, print_json, print_level,
    stdout_is_terminal,
};
use super::settings::Settings;
use super::terminal;

/// Where OAuth clients come from, for `login --help`.
pub const WHERE_TO_GET_KEYS: &str = "\
Where to get a client: the sandbox needs none (`pleo-auth sandbox`, then PLEO_ENV=sandbox).
For staging, Pleo registers an OAuth client for partners (Developer Partner Registration) and
sends its client id and secret; register this tool's redirect URI with it
(http://127.0.0.1/callback, or the exact one in PLEO_REDIRECT_URI).

Over SSH or without a browser, `login --paste` prints the URL to open anywhere; after consent
the browser is sent to the redirect URI (which may show an error page there): paste that
address back. --paste is chosen by itself when stdin is a terminal and there is no display or
the session runs over SSH.";

/// How long the preflight of the authorization URL may take.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(15);

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
    /// Ask for the URL the browser was redirected to after consent (for SSH and machines
    /// without a browser); the loopback listener keeps waiting too where it can
    #[arg(long)]
    paste: bool,
    /// How long to wait for the callback, in seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    timeout: u64,
    /// Print the outcome as JSON on stdout (the URL and prompts go to stderr)
    #[arg(long)]
    json: bool,
}

/// Runs `login`.
pub async fn run(settings: &Settings, args: LoginArgs) -> Result<(), CliError> {
    settings.require_oauth()?;
    let stdin_is_terminal = std::io::stdin().is_terminal();
    let paste = args.paste || (stdin_is_terminal && no_local_browser());
    let callback = listen(&settings.redirect_uri, paste).await?;
    let redirect_uri = callback.as_ref().map_or_else(
        || settings.redirect_uri.clone(),
        |c| c.redirect_uri().to_string(),
    );
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
    let callback = callback.map(|c| c.expect_state(request.state.expose_secret()));
    preflight(&request.url, &redirect_uri, settings).await?;

    let environment = auth.environment().name();
    let intro = format!("Open this URL in a browser to connect a Pleo company ({environment}):");
    if args.json {
        errln!("{intro}\n\n{}\n", request.url);
    } else {
        outln!("{intro}\n\n{}\n", request.url);
    }
    if !args.no_browser
        && !paste
        && stdout_is_terminal()
        && webbrowser::open(request.url.as_str()).is_err()
    {
        print_level(
            Level::Warning,
            "could not open a browser; open the URL yourself",
        );
    }

    let timeout = Duration::from_secs(args.timeout);
    let received = if paste {
        wait_for_paste(callback, timeout, &redirect_uri).await
    } else {
        let Some(callback) = callback else {
            return Err(
                CliError::config("no loopback listener for the redirect URI")
                    .hint("use --paste, or a loopback PLEO_REDIRECT_URI"),
            );
        };
        let spinner = Spinner::start("Waiting for the consent in the browser (Ctrl-C cancels)");
        let waited = callback.wait(timeout).await;
        spinner.stop().await;
        waited.map_err(|e| timed_out(args.timeout, &redirect_uri).with_source(e))
    }?;
    let connection = oauth
        .complete(&received)
        .await
        .map_err(|e| CliError::oauth("finishing the authorization failed", e))?;

    if args.json {
        return print_json(&json!({
            "subject": connection.subject.to_string(),
            "company": connection.subject.company().map(|c| c.to_string()),
            "organisation": connection.subject.organisation().map(|c| c.to_string()),
            "environment": environment.as_str(),
            "method": "oauth",
            "scopes": connection.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            "tenant": connection.tenant.as_ref().map(|t| t.as_str()),
            "reconnected": connection.reconnected,
            "store": settings.store,
        }));
    }
    outln!(
        "Connected {} in {environment} with OAuth 2.0.",
        describe(&connection.subject)
    );
    outln!("  scopes: {}", connection.scopes);
    if let Some(tenant) = &connection.tenant {
        outln!("  tenant: {}", tenant.as_str());
    }
    if connection.reconnected {
        outln!("  (an earlier grant of this company was replaced)");
    }
    outln!("  store:  {}", settings.store);
    Ok(())
}

/// Whether no browser can be opened here: an SSH session, or Linux without a display (WSL
/// opens the Windows browser).
fn no_local_browser() -> bool {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    if set("SSH_CONNECTION") || set("SSH_CLIENT") || set("SSH_TTY") {
        return true;
    }
    cfg!(target_os = "linux")
        && !set("DISPLAY")
        && !set("WAYLAND_DISPLAY")
        && !set("WSL_DISTRO_NAME")
}

/// The loopback listener for `redirect_uri`. In paste mode a redirect URI that cannot be
/// listened on (not loopback, or its port is taken) is used as it is, without a listener.
async fn listen(redirect_uri: &str, paste: bool) -> Result<Option<LoopbackCallback>, CliError> {
    match LoopbackCallback::bind(redirect_uri).await {
        Ok(callback) => Ok(Some(callback)),
        Err(_) if paste => Ok(None),
        Err(e) if e.kind() == pleo_auth::ErrorKind::InvalidInput => Err(CliError::config(
            "PLEO_REDIRECT_URI cannot be listened on here",
        )
        .with_source(e)
        .hint("use an http redirect URI on 127.0.0.1, [::1] or localhost, or log in with --paste")),
        Err(e) => Err(CliError::config("cannot listen for the OAuth callback")
            .with_source(e)
            .hint("free the redirect URI's port, or log in with --paste")),
    }
}

/// Asks the authorization endpoint about the request before anyone waits for a consent that
/// cannot come: an unknown client id or redirect URI gets an error page instead of a consent
/// (or login) page or a redirect, and a refused scope comes back as an error redirect.
async fn preflight(
    url: &url::Url,
    redirect_uri: &str,
    settings: &Settings,
) -> Result<(), CliError> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(PREFLIGHT_TIMEOUT)
        .build()
        .map_err(|e| CliError::other("building an HTTP client failed").with_source(e))?;
    let answer = http.get(url.clone()).send().await.map_err(|e| {
        CliError::new(Code::Network, "cannot reach Pleo's authorization endpoint")
            .with_source(e.without_url())
            .hint("check the network (and PLEO_ENV / PLEO_SANDBOX_URL)")
    })?;
    let status = answer.status();
    let client_id = settings.client.as_ref().map_or("", |(id, _)| id.as_str());
    if status.is_redirection() {
        let location = answer
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| url.join(l).ok());
        let Some(location) = location.filter(|l| l.as_str().starts_with(redirect_uri)) else {
            // A login page, or a redirect elsewhere: the request was accepted.
            return Ok(());
        };
        let param = |name: &str| {
            location
                .query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| sanitize(&v))
        };
        let Some(error) = param("error") else {
            return Ok(());
        };
        let said = param("error_description").unwrap_or_default();
        let message = format!("Pleo refused the authorization request: {error} {said}");
        return Err(match error.as_str() {
            "invalid_scope" => CliError::new(Code::Refused, message.trim_end())
                .hint("request only scopes the client is registered for (--scopes or PLEO_SCOPES)"),
            "invalid_request" | "unauthorized_client" | "unsupported_response_type" => {
                CliError::config(message.trim_end()).hint(format!(
                    "check the client id {client_id:?} and its registration"
                ))
            }
            _ => CliError::new(Code::Refused, message.trim_end()),
        });
    }
    if status.is_success() {
        return Ok(());
    }
    let title = answer.text().await.ok().and_then(|page| page_title(&page));
    let said = title
        .map(|t| format!(": Pleo says {t:?}"))
        .unwrap_or_default();
    if status.is_server_error() {
        return Err(CliError::new(
            Code::Network,
            format!(
                "Pleo's authorization endpoint failed (HTTP {}){said}",
                status.as_u16()
            ),
        )
        .hint("retry later"));
    }
    Err(CliError::config(format!(
        "Pleo refused the authorization request (HTTP {}){said}",
        status.as_u16()
    ))
    .hint(format!(
        "check the client id {client_id:?} (PLEO_CLIENT_ID) and that the redirect URI {redirect_uri} is registered for it (PLEO_REDIRECT_URI)"
    )))
}

/// The `<title>` of an HTML page, cleaned and capped, if it has one.
fn page_title(page: &str) -> Option<String> {
    let start = page.find("<title>")? + "<title>".len();
    let end = start + page[start..].find("</title>")?;
    let title = sanitize(&page[start..end]);
    (!title.is_empty()).then_some(title)
}

/// Text from a server, made safe to print: no control characters, at most 120 characters.
fn sanitize(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    super::output::fit(clean.trim(), 120)
}

fn timed_out(seconds: u64, redirect_uri: &str) -> CliError {
    CliError::new(
        Code::Network,
        format!("no authorization arrived within {seconds} s"),
    )
    .hint(format!(
        "finish the consent in the browser; the browser must run on this machine to reach {redirect_uri} (over SSH use --paste); a longer wait: --timeout"
    ))
}

/// Waits for whichever comes first: the loopback callback (where there is a listener) or the
/// redirected URL pasted on stdin. Returns the callback query or URL.
async fn wait_for_paste(
    callback: Option<LoopbackCallback>,
    timeout: Duration,
    redirect_uri: &str,
) -> Result<String, CliError> {
    let seconds = timeout.as_secs();
    let pasted = read_pasted(redirect_uri);
    let waiting = async {
        match callback {
            Some(callback) => callback
                .wait(timeout)
                .await
                .map_err(|e| timed_out(seconds, redirect_uri).with_source(e)),
            None => {
                tokio::time::sleep(timeout).await;
                Err(timed_out(seconds, redirect_uri))
            }
        }
    };
    tokio::pin!(pasted);
    tokio::pin!(waiting);
    tokio::select! {
        received = &mut waiting => received,
        pasted = &mut pasted => match pasted? {
            Some(url) => Ok(url),
            // stdin ended: only the listener is left.
            None => waiting.await,
        },
    }
}

/// Reads pasted lines until one is an authorization response; `None` at the end of input.
async fn read_pasted(redirect_uri: &str) -> Result<Option<String>, CliError> {
    let mut prompt = format!(
        "After consent, the browser is sent to {redirect_uri}?code=... (it may show an error page).\nPaste that whole address here and press Enter:"
    );
    loop {
        let Some(line) = terminal::read_line(&prompt).await? else {
            return Ok(None);
        };
        let line = line.trim();
        if line.contains("code=") || line.contains("error=") {
            return Ok(Some(line.to_owned()));
        }
        if !line.is_empty() {
            prompt = "That is not the redirected address (it has no code= or error=); paste the whole address from the browser's address bar:".to_owned();
        }
    }
}
