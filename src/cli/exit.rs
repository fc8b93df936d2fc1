//! Exit codes and the error every command returns.

use std::error::Error as StdError;
use std::fmt;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use pleo_auth::ErrorKind;

use super::output::{Level, print_level};

/// The documented exit codes of `pleo-auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 1: any other failure (a bug, an answer pleo-auth does not understand).
    Other = 1,
    /// 2: a usage error: a bad flag, argument or input.
    Usage = 2,
    /// 3: no credential is stored for the company or tenant.
    NotConnected = 3,
    /// 4: the grant needs reauthorization, or the API key was rejected and needs replacing.
    Reauthorize = 4,
    /// 5: wrong company or environment, or a tenant already linked elsewhere.
    WrongCompany = 5,
    /// 6: Pleo refused: a missing scope or permission, a denied consent, an unknown path.
    Refused = 6,
    /// 7: the secret store is unavailable, or a record in it is unreadable.
    Store = 7,
    /// 8: the configuration cannot work (client id, secret, redirect URI, config file).
    Config = 8,
    /// 9: Pleo could not be reached, is unavailable or rate limiting, or a wait timed out.
    Network = 9,
    /// 130: interrupted by Ctrl-C (128 + SIGINT).
    Interrupted = 130,
}

impl Code {
    /// The exit code as a process exit code.
    pub fn exit_code(self) -> ExitCode {
        ExitCode::from(self as u8)
    }
}

/// The exit code table shown in `--help` and in the README.
pub const EXIT_CODES: &str = "\
Exit codes:
  0    success
  1    any other failure (a bug, or an answer pleo-auth does not understand)
  2    usage: a bad flag, argument or input (a mistyped UUID, text that is not an API key)
  3    not connected: nothing is stored for that company or tenant
  4    needs reauthorization: the customer must consent again (`login`), or the API key was
       rejected and must be replaced (`keys replace`)
  5    wrong company or environment, or the tenant / company is already linked elsewhere
  6    Pleo refused: a missing scope or permission, consent denied, an unknown API path
       (404) or another refused request, an API key Pleo does not accept
  7    store error: the secret store is unavailable, or a record in it is unreadable
  8    configuration error: a missing or wrong client id, secret or redirect URI, a bad or
       unprotected config file, an unknown store URL
  9    network or timeout: Pleo could not be reached, answered 5xx or 429, a revocation is
       only recorded (`disconnect`), or `login` waited in vain for the browser
  130  interrupted (Ctrl-C); the terminal is restored
`status` exits with the code of the most pressing problem it lists: 7 (unreadable record, or
with --check a store or lease backend that does not answer), 4 (needs reauthorization), 5
(wrong company), then 9 (Pleo unreachable, with --check). `health` exits 7, then 4, likewise.
`keep-alive --once` sweeps every record and then exits with the first of 7 (an unreadable
record), 4 (a grant Pleo refused), 9 (Pleo unreachable) or 1 when any record failed; it exits 0
when another replica holds the sweep lease (it skips). `keep-alive --every` exits 0 on SIGTERM.
A closed output pipe (`pleo-auth status | head -1`) ends the output quietly; the exit code is
the command's own.";

type Source = Box<dyn StdError + Send + Sync + 'static>;

/// Whether errors print their whole cause chain (`--verbose`).
static VERBOSE: AtomicBool = AtomicBool::new(false);

/// Makes errors print their whole cause chain.
pub fn set_verbose(verbose: bool) {
    VERBOSE.store(verbose, Ordering::Relaxed);
}

/// A failed command: what to tell the user and which exit code to use.
pub struct CliError {
    code: Code,
    message: String,
    hint: Option<String>,
    source: Option<Source>,
}

impl CliError {
    /// A failure with `code` and a message for the user (no secrets).
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            hint: None,
            source: None,
        }
    }

    /// A usage error.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Code::Usage, message)
    }

    /// A configuration error.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(Code::Config, message)
    }

    /// Any other failure.
    pub fn other(message: impl Into<String>) -> Self {
        Self::new(Code::Other, message)
    }

    /// Interrupted by Ctrl-C.
    pub fn interrupted() -> Self {
        Self::new(Code::Interrupted, "interrupted")
    }

    /// Adds what the user can do about it.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Attaches the cause.
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The exit code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The message, without cause or hint.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Classifies a library error of `kind` by its kind and by whether a secret store failed
    /// on the way (a core error naming a backend in its source chain).
    pub fn classify(context: impl Into<String>, kind: ErrorKind, err: Source) -> Self {
        let code = code_for(kind, store_failed(err.as_ref()));
        Self::new(code, context).with_source(err).default_hint()
    }

    fn default_hint(mut self) -> Self {
        self.hint = default_hint(self.code).map(str::to_owned);
        self
    }

    /// From a core (or store) error.
    pub fn core(context: impl Into<String>, err: pleo_auth::CoreError) -> Self {
        Self::classify(context, err.kind(), Box::new(err))
    }

    /// From the facade's error.
    pub fn facade(context: impl Into<String>, err: pleo_auth::Error) -> Self {
        Self::classify(context, err.kind(), Box::new(err))
    }

    /// From an OAuth error.
    pub fn oauth(context: impl Into<String>, err: pleo_auth::oauth::Error) -> Self {
        use pleo_auth::oauth::ErrorKind as OAuthKind;
        let (code, hint): (Code, Option<String>) = match err.kind() {
            OAuthKind::AccessDenied { .. } => {
                return Self::new(
                    Code::Refused,
                    "access denied: the authorization was refused on Pleo's consent page",
                )
                .with_source(err);
            }
            OAuthKind::AuthorizationError { code, .. } => match code.as_str() {
                "invalid_scope" => (
                    Code::Refused,
                    Some("request only scopes the client is registered for (--scopes or PLEO_SCOPES)".to_owned()),
                ),
                "unauthorized_client" | "invalid_client" | "invalid_request"
                | "unsupported_response_type" => (
                    Code::Config,
                    Some("check PLEO_CLIENT_ID and that the redirect URI is registered for it".to_owned()),
                ),
                "server_error" | "temporarily_unavailable" => (Code::Network, None),
                _ => (Code::Refused, None),
            },
            OAuthKind::CodeRejected { .. } => (
                Code::Refused,
                Some("run `pleo-auth login` again; an authorization code works once, briefly".to_owned()),
            ),
            OAuthKind::InvalidClient | OAuthKind::InvalidConfig => (
                Code::Config,
                Some("check PLEO_CLIENT_ID and PLEO_CLIENT_SECRET".to_owned()),
            ),
            OAuthKind::InvalidCallback
            | OAuthKind::UnknownState
            | OAuthKind::StateExpired
            | OAuthKind::IssuerMismatch => (
                Code::Usage,
                Some("run `pleo-auth login` again and use the URL of that run".to_owned()),
            ),
            OAuthKind::Store(kind) if *kind != ErrorKind::NotFound => (Code::Store, None),
            OAuthKind::UnexpectedResponse => (Code::Other, None),
            kind => {
                return Self::classify(context, kind.core_kind(), Box::new(err));
            }
        };
        let cli = Self::new(code, context).with_source(err);
        match hint {
            Some(hint) => cli.hint(hint),
            None => cli.default_hint(),
        }
    }

    /// From an API key error while a new key is given (`keys add`, `keys replace`): a key Pleo
    /// does not accept is refused (6), not a stored key needing replacement.
    pub fn new_key(context: impl Into<String>, err: pleo_auth::apikey::Error) -> Self {
        use pleo_auth::apikey::ErrorKind as KeyKind;
        match err.kind() {
            KeyKind::KeyRejected => Self::new(Code::Refused, context)
                .with_source(err)
                .hint("Pleo does not accept this key here: check that it is complete, not revoked or expired, and from this environment (--env)"),
            KeyKind::InvalidKeyFormat { .. } | KeyKind::NotAnApiKey | KeyKind::NotAnIntegratedKey => {
                Self::new(Code::Usage, context)
                    .with_source(err)
                    .hint("paste the Integrated API key Pleo showed when the integration was installed")
            }
            KeyKind::NotACompanyKey { .. } | KeyKind::WrongIntegration { .. } => {
                Self::new(Code::WrongCompany, context).with_source(err)
            }
            _ => Self::apikey(context, err),
        }
    }

    /// From an API key error.
    pub fn apikey(context: impl Into<String>, err: pleo_auth::apikey::Error) -> Self {
        Self::classify(context, err.kind().core_kind(), Box::new(err))
    }

    /// From an HTTP client error: adds the status, what the server said and the scope the
    /// endpoint needs, when known.
    pub fn http(context: impl Into<String>, err: pleo_auth::http::Error) -> Self {
        let mut context = context.into();
        let status = err.status();
        if let Some(status) = status {
            context.push_str(&format!(" (HTTP {status})"));
        }
        if let Some(message) = err.server_message() {
            context.push_str(&format!(": Pleo says {message:?}"));
        }
        let scopes = err.required_scopes().to_string();
        let kind = err.kind();
        if status == Some(404) {
            return Self::new(Code::Refused, context)
                .with_source(err)
                .hint("Pleo knows no such path: check it against the API reference (a typo?)");
        }
        if matches!(status, Some(400..=499))
            && matches!(
                kind,
                ErrorKind::InvalidInput | ErrorKind::Conflict | ErrorKind::Unexpected
            )
        {
            return Self::new(Code::Refused, context).with_source(err);
        }
        let mut cli = Self::classify(context, kind, Box::new(err));
        if kind == ErrorKind::PermissionDenied && !scopes.is_empty() {
            cli.hint = Some(format!(
                "the endpoint needs the scope {scopes}; connect again with it (`pleo-auth login --scopes ...`)"
            ));
        }
        cli
    }

    /// Prints the error to stderr and returns the exit code.
    pub fn report(&self) -> ExitCode {
        self.print();
        self.code.exit_code()
    }

    /// Prints the error to stderr: one line saying what happened (with its deepest cause),
    /// one line saying what to do; `--verbose` lists every cause.
    pub fn print(&self) {
        let causes = self.causes();
        if VERBOSE.load(Ordering::Relaxed) {
            print_level(Level::Error, &self.message);
            for cause in &causes {
                print_level(Level::Cause, cause);
            }
        } else {
            print_level(Level::Error, &self.summary());
        }
        if let Some(hint) = &self.hint {
            print_level(Level::Hint, hint);
        }
    }

    /// One line: the message and its deepest cause, as [`print`](Self::print) shows it
    /// without `--verbose`.
    pub fn summary(&self) -> String {
        match self.causes().last() {
            Some(last) => format!("{}: {last}", self.message),
            None => self.message.clone(),
        }
    }

    /// The distinct messages of the cause chain.
    fn causes(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut source = self
            .source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static));
        let mut last = self.message.clone();
        while let Some(cause) = source {
            // Layers that convert an error keep it as the source with the same message.
            let text = cause.to_string();
            if text != last && !self.message.ends_with(&text) {
                out.push(text.clone());
                last = text;
            }
            source = cause.source();
        }
        out
    }
}

impl fmt::Debug for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CliError")
            .field("code", &self.code)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Whether a secret store failed somewhere in `err`'s chain.
fn store_failed(err: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.downcast_ref::<pleo_auth::CoreError>()
            .is_some_and(|core| core.backend().is_some() && core.kind() != ErrorKind::NotFound)
        {
            return true;
        }
        current = e.source();
    }
    false
}

fn code_for(kind: ErrorKind, store_failed: bool) -> Code {
    match kind {
        ErrorKind::NotFound => Code::NotConnected,
        _ if store_failed => Code::Store,
        ErrorKind::NeedsReauthorization
        | ErrorKind::NeedsReplacement
        | ErrorKind::Revoked
        | ErrorKind::Unauthenticated => Code::Reauthorize,
        ErrorKind::WrongCompany | ErrorKind::WrongEnvironment | ErrorKind::Conflict => {
            Code::WrongCompany
        }
        ErrorKind::PermissionDenied => Code::Refused,
        ErrorKind::Unavailable | ErrorKind::RateLimited | ErrorKind::LeaseUnavailable => {
            Code::Network
        }
        ErrorKind::Corrupt | ErrorKind::UnsupportedSchema => Code::Store,
        ErrorKind::Config => Code::Config,
        ErrorKind::InvalidInput => Code::Usage,
        _ => Code::Other,
    }
}

fn default_hint(code: Code) -> Option<&'static str> {
    match code {
        Code::NotConnected => Some(
            "connect it with `pleo-auth login` (OAuth) or `pleo-auth keys add` (Integrated API key)",
        ),
        Code::Reauthorize => Some(
            "the customer must connect again: `pleo-auth login` for OAuth, `pleo-auth keys replace` for an API key",
        ),
        Code::Store => Some(
            "check the store (PLEO_STORE or --store): that it is reachable, its credentials, and `pleo-auth status` for unreadable records",
        ),
        Code::Network => Some(
            "Pleo did not answer in time, failed or asked to slow down; check the network and retry later",
        ),
        Code::Config => Some("check the configuration: `pleo-auth --help` lists every setting"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_failures_win_over_the_kind() {
        let store = pleo_auth::CoreError::unavailable("connection refused").with_backend("redis");
        assert_eq!(CliError::core("x", store).code(), Code::Store);
        let pleo = pleo_auth::CoreError::unavailable("token endpoint timed out");
        assert_eq!(CliError::core("x", pleo).code(), Code::Network);
        let missing =
            pleo_auth::CoreError::new(ErrorKind::NotFound, "nothing").with_backend("file");
        assert_eq!(CliError::core("x", missing).code(), Code::NotConnected);
    }

    #[test]
    fn kinds_map_to_documented_codes() {
        for (kind, code) in [
            (ErrorKind::NeedsReauthorization, Code::Reauthorize),
            (ErrorKind::NeedsReplacement, Code::Reauthorize),
            (ErrorKind::WrongCompany, Code::WrongCompany),
            (ErrorKind::WrongEnvironment, Code::WrongCompany),
            (ErrorKind::PermissionDenied, Code::Refused),
            (ErrorKind::RateLimited, Code::Network),
            (ErrorKind::Unavailable, Code::Network),
            (ErrorKind::Corrupt, Code::Store),
            (ErrorKind::UnsupportedSchema, Code::Store),
            (ErrorKind::Config, Code::Config),
            (ErrorKind::InvalidInput, Code::Usage),
            (ErrorKind::Unexpected, Code::Other),
        ] {
            assert_eq!(code_for(kind, false), code, "{kind:?}");
        }
    }

    #[test]
    fn every_code_is_in_the_table() {
        for code in [
            Code::Other,
            Code::Usage,
            Code::NotConnected,
            Code::Reauthorize,
            Code::WrongCompany,
            Code::Refused,
            Code::Store,
            Code::Config,
            Code::Network,
            Code::Interrupted,
        ] {
            let n = code as u8;
            assert!(
                EXIT_CODES
                    .lines()
                    .any(|l| l.trim_start().starts_with(&format!("{n} "))),
                "{n} is documented"
            );
        }
    }
}
