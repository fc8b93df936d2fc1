//! The `pleo-auth` command line: argument parsing and dispatch.

/// Prints a line to stdout; a closed pipe ends the output quietly (see `output::write_out`).
macro_rules! outln {
    () => {
        $crate::cli::output::write_out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Prints a line to stderr; write errors are ignored (see `output::write_err`).
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::output::write_err(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod commands;
mod demo;
mod exit;
mod health;
mod keep_alive;
mod keys;
mod login;
mod output;
mod recovery;
mod settings;
mod status;
mod terminal;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};

pub use exit::CliError;
use settings::{ConfigArgs, Settings};

const ABOUT: &str = "Connect Pleo companies and call the Pleo External API with their credentials";

const LONG_ABOUT: &str = "\
Connect Pleo companies (OAuth 2.0 with PKCE, Integrated API keys), keep their credentials in your
secret store, and call the Pleo External API with the right company's credential.

Start with `pleo-auth demo`: it runs the whole story against an in-process Pleo sandbox.";

const AFTER_LONG_HELP: &str = "\
Configuration (flags win over environment variables, which win over the config file):
  PLEO_ENV             staging | production | sandbox (default staging)
  PLEO_SANDBOX_URL     the sandbox's base URL, for PLEO_ENV=sandbox
  PLEO_CLIENT_ID       the OAuth client id (default with PLEO_ENV=sandbox: the sandbox's demo client)
  PLEO_CLIENT_SECRET   the OAuth client secret (environment or config file only: a secret given
                       as a flag is visible to every user in `ps`, so --client-secret is refused)
  PLEO_SCOPES          scopes requested by `login` (default users:read)
  PLEO_REDIRECT_URI    loopback redirect URI (default http://127.0.0.1/callback, any free port)
  PLEO_INTEGRATION_ID  id Integrated API keys are stored under (default: the client id)
  PLEO_KEY_SCOPES      scopes every Integrated API key must carry
  PLEO_API_KEY         a Standalone API key, used for its company when nothing else is stored
  PLEO_STORE           file:PATH | vault://HOST:PORT/MOUNT/PREFIX (vault+http:// for plain http)
                       | aws://REGION/PREFIX?endpoint=URL | redis://HOST:PORT?prefix=P
                       (default file: under the user's data directory, e.g.
                       ~/.local/share/pleo-auth); vault:// reads VAULT_TOKEN or VAULT_ROLE_ID and
                       VAULT_SECRET_ID, aws:// the standard AWS credential chain
                       file: rule: file:/abs, file:~/in/home, file:relative (to the current
                       directory), or a file URL file:///abs, file://localhost/abs
                       (percent-decoded); other hosts are refused
  PLEO_ENCRYPTION_KEY  base64 of 32 bytes, or ID:BASE64: encrypt every record (feature
                       `encryption`); after a rotation PLEO_ENCRYPTION_OLD_KEYS lists the old
                       keys (ID:BASE64, comma-separated) until `rewrap` has moved every record
  PLEO_CONFIG          config file (default $XDG_CONFIG_HOME/pleo-auth/config.toml), TOML with
                       the keys env, sandbox_url, store, client_id, client_secret, scopes,
                       redirect_uri, integration_id, key_scopes, encryption_key,
                       encryption_old_keys; like ssh, a file that holds a secret and that other
                       users can read is refused (chmod 600), others get a warning
  RUST_LOG, PLEO_LOG   log filter for stderr, such as info or pleo_auth_oauth=debug (default
                       off); PLEO_LOG wins when both are set
  NO_COLOR             no colours (they are only used on a terminal anyway)
  PLEO_STATE_DIR       where rotated tokens the store refused are saved until the next run
                       writes them (default $XDG_STATE_HOME/pleo-auth, ~/.local/state/pleo-auth)

Secrets (client secret, API keys, tokens) are never read from the command line, never printed
to a terminal unless asked (`token --reveal`), and never logged.

Where to get credentials: the sandbox needs none (`pleo-auth sandbox`, then PLEO_ENV=sandbox).
Staging OAuth clients come from Pleo's partner programme (Developer Partner Registration);
Integrated API keys are shown to the customer when they install your integration in Pleo.

";

/// The `pleo-auth` command line.
#[derive(Debug, Parser)]
#[command(
    name = "pleo-auth",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = after_long_help(),
    propagate_version = true
)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    /// Print every cause of an error, not only the last one
    #[arg(long, short = 'v', global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

/// The help text after the options: configuration, then the exit codes.
fn after_long_help() -> String {
    format!("{AFTER_LONG_HELP}{}", exit::EXIT_CODES)
}

/// Who a command is about: a Pleo company, or your tenant linked to one.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// The Pleo company id (a UUID)
    #[arg(long, value_name = "UUID")]
    pub company: Option<String>,
    /// Your tenant id linked to a Pleo company (`login --tenant`, `keys add --tenant`)
    #[arg(long, value_name = "TENANT", conflicts_with = "company")]
    pub tenant: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Connect a Pleo company with OAuth: opens the authorization URL in a browser (or prints
    /// it), then takes the loopback callback or the pasted redirected URL, and stores the grant
    #[command(after_long_help = login::WHERE_TO_GET_KEYS)]
    Login(login::LoginArgs),
    /// Forget a company's stored credentials here, without revoking them at Pleo (the OAuth
    /// grant stays valid at Pleo; `disconnect` revokes it)
    Logout {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Show every stored connection: tenant, company, method, environment and state; exits
    /// non-zero when one needs attention
    Status(status::StatusArgs),
    /// Check that the store and the lease backend answer and list the connections that need a
    /// person; exits 7 (a backend down, a record unreadable) or 4 (needs reauthorization)
    Health {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Rotate OAuth tokens now (one company, or every active grant)
    Refresh {
        #[command(flatten)]
        target: OptionalTarget,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Disconnect a company's OAuth grant: revoke it at Pleo and mark it revoked (if Pleo cannot
    /// be reached, the revocation is recorded for keep-alive to retry, and the exit code is 9)
    Disconnect {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Keep OAuth grants alive without a person: refresh those that would go idle, retry
    /// pending revocations, remove expired consents; `--once` for cron, `--every 6h` for
    /// systemd. Exits non-zero when any record failed (the others are still swept)
    KeepAlive(keep_alive::KeepAliveArgs),
    /// Print a company's current access token, for scripts (refuses a terminal without --reveal)
    Token(commands::TokenArgs),
    /// Manage Integrated API keys (keys are read from stdin or a hidden prompt, never argv)
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Make an authenticated call to the Pleo External API, like `gh api`
    Api(commands::ApiArgs),
    /// Run the Pleo sandbox (a local emulator) on a port; prints its URL on the first line
    Sandbox(commands::SandboxArgs),
    /// Run the whole story against an in-process sandbox and narrate it
    Demo,
    /// Seal every stored record again with the current encryption key (after a rotation), each
    /// with compare-and-swap; then the keys of PLEO_ENCRYPTION_OLD_KEYS can go
    Rewrap {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script: `pleo-auth completions bash > ~/.local/share/bash-completion/completions/pleo-auth`
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
}

/// An optional target: without one, the command applies to every connection.
#[derive(Debug, Clone, Args)]
pub struct OptionalTarget {
    /// The Pleo company id (a UUID)
    #[arg(long, value_name = "UUID")]
    pub company: Option<String>,
    /// Your tenant id linked to a Pleo company
    #[arg(long, value_name = "TENANT", conflicts_with = "company")]
    pub tenant: Option<String>,
}

/// Parses the command line, runs the command, and returns the documented exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    exit::set_verbose(cli.verbose);
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            return CliError::other("cannot start the async runtime")
                .with_source(e)
                .report();
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => err.report(),
    };
    // A prompt interrupted by Ctrl-C may still block a thread on the terminal: do not wait.
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}

/// Logs to stderr, filtered by `PLEO_LOG`, else `RUST_LOG` (default off); colours only where
/// stderr shows them.
fn init_logging() {
    let (variable, filter) = match (std::env::var("PLEO_LOG"), std::env::var("RUST_LOG")) {
        (Ok(filter), _) if !filter.is_empty() => ("PLEO_LOG", filter),
        (_, Ok(filter)) if !filter.is_empty() => ("RUST_LOG", filter),
        _ => ("", "off".to_owned()),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| {
        output::print_level(
            output::Level::Warning,
            &format!("{variable} is not a log filter (such as info or pleo_auth_oauth=debug); logging stays off"),
        );
        tracing_subscriber::EnvFilter::new("off")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(output::stderr_has_colour())
        .with_writer(std::io::stderr)
        .init();
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let command = match cli.command {
        Command::Demo => return demo::run().await,
        Command::Sandbox(args) => return commands::sandbox(args).await,
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "pleo-auth", &mut out);
            outln!("{}", String::from_utf8_lossy(&out).trim_end());
            return Ok(());
        }
        command => command,
    };
    let settings = Settings::resolve(&cli.config)?;
    // Ctrl-C cancels the command; prompts restore the terminal as they are dropped, and the
    // rotated pairs are still flushed below.
    let result = match command {
        // Stops gracefully on SIGTERM and Ctrl-C by itself: a sweep in progress finishes.
        Command::KeepAlive(args) => keep_alive::run(&settings, args).await,
        command => tokio::select! {
            result = dispatch(&settings, command) => result,
            () = terminal::interrupted() => Err(CliError::interrupted()),
        },
    };
    // No rotated pair may die with the process: flush before exiting, whatever happened.
    match (result, settings.finish().await) {
        (result, Ok(())) => result,
        (Ok(()), Err(lost)) => Err(lost),
        (Err(err), Err(lost)) => {
            err.print();
            Err(lost)
        }
    }
}

async fn dispatch(settings: &Settings, command: Command) -> Result<(), CliError> {
    match command {
        Command::Login(args) => login::run(settings, args).await,
        Command::Logout { target, json } => commands::logout(settings, target, json).await,
        Command::Status(args) => status::run(settings, args).await,
        Command::Health { json } => health::run(settings, json).await,
        Command::Refresh { target, json } => commands::refresh(settings, target, json).await,
        Command::Disconnect { target, json } => commands::disconnect(settings, target, json).await,
        Command::Token(args) => commands::token(settings, args).await,
        Command::Keys(command) => keys::run(settings, command).await,
        Command::Api(args) => commands::api(settings, args).await,
        Command::Rewrap { json } => commands::rewrap(settings, json).await,
        Command::Demo
        | Command::Sandbox(_)
        | Command::Completions { .. }
        | Command::KeepAlive(_) => Ok(()),
    }
}
