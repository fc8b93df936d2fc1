//! Exit codes and the error every command returns.

use std::error::Error as StdError;
use std::fmt;
use std::process::ExitCode;

use pleo_auth::ErrorKind;

/// The documented exit codes of `pleo-auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 1: any other failure.
    Other = 1,
    /// 2: a usage or configuration error.
    Usage = 2,
    /// 3: no credential is stored for the company or tenant.
    NotConnected = 3,
    /// 4: the grant needs reauthorization, or the API key was rejected and needs replacing.
    Reauthorize = 4,
    /// 5: wrong company or environment, or a tenant already linked elsewhere.
    WrongCompany = 5,
    /// 6: a missing scope or permission.
    PermissionDenied = 6,
    /// 7: the secret store is unavailable or unusable.
    StoreUnavailable = 7,
    /// 8: the user denied access on the consent page.
    AccessDenied = 8,
    /// 9: Pleo is rate limiting or unavailable.
    PleoUnavailable = 9,
}

/// The exit code table shown in `--help` and in the README.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  any other failure
  2  usage or configuration error (a bad flag, a missing PLEO_CLIENT_ID, an unknown store URL)
  3  not connected: no OAuth grant or API key is stored for that company or tenant
  4  needs reauthorization: the customer must consent again (`login`), or the API key was
     rejected and must be replaced (`keys replace`)
  5  wrong company or environment, or the tenant / company is already linked elsewhere
  6  missing scope or permission
  7  the secret store is unavailable or unusable
  8  access denied: the user clicked Deny on Pleo's consent page
  9  Pleo is rate limiting or unavailable; retry later";

type Source = Box<dyn StdError + Send + Sync + 'static>;

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

    /// A usage or configuration error.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Code::Usage, message)
    }

    /// Any other failure.
    pub fn other(message: impl Into<String>) -> Self {
        Self::new(Code::Other, message)
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
    #[cfg(test)]
    pub fn code(&self) -> Code {
        self.code
    }

    /// Classifies a library error of `kind` by its kind and by whether a secret store failed
    /// on the way (a core error naming a backend in its source chain).
    pub fn classify(context: impl Into<String>, kind: ErrorKind, err: Source) -> Self {
        let code = code_for(kind, store_failed(err.as_ref()));
        let mut cli = Self::new(code, context).with_source(err);
        cli.hint = default_hint(code).map(str::to_owned);
        cli
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
        match err.kind() {
            OAuthKind::AccessDenied { .. } => Self::new(
                Code::AccessDenied,
                "access denied: the authorization was refused on Pleo's consent page",
            )
            .with_source(err),
            OAuthKind::Store(_) => {
                let mut cli = Self::new(Code::StoreUnavailable, context).with_source(err);
                cli.hint = default_hint(Code::StoreUnavailable).map(str::to_owned);
                cli
            }
            kind => Self::classify(context, kind.core_kind(), Box::new(err)),
        }
    }

    /// From an API key error.
    pub fn apikey(context: impl Into<String>, err: pleo_auth::apikey::Error) -> Self {
        Self::classify(context, err.kind(), Box::new(err))
    }

    /// From an HTTP client error: adds the status, what the server said and the scope the
    /// endpoint needs, when known.
    pub fn http(context: impl Into<String>, err: pleo_auth::http::Error) -> Self {
        let mut context = context.into();
        if let Some(status) = err.status() {
            context.push_str(&format!(" (HTTP {status})"));
        }
        if let Some(message) = err.server_message() {
            context.push_str(&format!(": Pleo says {message:?}"));
        }
        let scopes = err.required_scopes().to_string();
        let kind = err.kind();
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
        ExitCode::from(self.code as u8)
    }

    /// Prints the error, its causes and its hint to stderr.
    pub fn print(&self) {
        eprintln!("error: {}", self.message);
        let mut source = self
            .source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static));
        let mut last = self.message.clone();
        while let Some(cause) = source {
            // Layers that convert an error keep it as the source with the same message.
            let text = cause.to_string();
            if text != last {
                eprintln!("  caused by: {text}");
                last = text;
            }
            source = cause.source();
        }
        if let Some(hint) = &self.hint {
            eprintln!("hint: {hint}");
        }
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
        _ if store_failed => Code::StoreUnavailable,
        ErrorKind::NeedsReauthorization
        | ErrorKind::NeedsReplacement
        | ErrorKind::Revoked
        | ErrorKind::Unauthenticated => Code::Reauthorize,
        ErrorKind::WrongCompany | ErrorKind::WrongEnvironment | ErrorKind::Conflict => {
            Code::WrongCompany
        }
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::Unavailable | ErrorKind::RateLimited | ErrorKind::LeaseUnavailable => {
            Code::PleoUnavailable
        }
        ErrorKind::Corrupt | ErrorKind::UnsupportedSchema => Code::StoreUnavailable,
        ErrorKind::Config | ErrorKind::InvalidInput => Code::Usage,
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
        Code::StoreUnavailable => Some(
            "check the store (PLEO_STORE or --store), that it is reachable and its credentials",
        ),
        Code::PleoUnavailable => {
            Some("Pleo did not answer in time or asked to slow down; retry later")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_failures_win_over_the_kind() {
        let store = pleo_auth::CoreError::unavailable("connection refused").with_backend("redis");
        assert_eq!(CliError::core("x", store).code(), Code::StoreUnavailable);
        let pleo = pleo_auth::CoreError::unavailable("token endpoint timed out");
        assert_eq!(CliError::core("x", pleo).code(), Code::PleoUnavailable);
        let missing =
            pleo_auth::CoreError::new(ErrorKind::NotFound, "nothing").with_backend("file");
        assert_eq!(CliError::core("x", missing).code(), Code::NotConnected);
    }

    #[test]
    fn kinds_map_to_documented_codes() {
        assert_eq!(
            code_for(ErrorKind::NeedsReauthorization, false),
            Code::Reauthorize
        );
        assert_eq!(
            code_for(ErrorKind::NeedsReplacement, false),
            Code::Reauthorize
        );
        assert_eq!(code_for(ErrorKind::WrongCompany, false), Code::WrongCompany);
        assert_eq!(
            code_for(ErrorKind::PermissionDenied, false),
            Code::PermissionDenied
        );
        assert_eq!(
            code_for(ErrorKind::RateLimited, false),
            Code::PleoUnavailable
        );
        assert_eq!(code_for(ErrorKind::Config, false), Code::Usage);
        assert_eq!(code_for(ErrorKind::Unexpected, false), Code::Other);
    }
}
