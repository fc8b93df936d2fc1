//! Configuration: flags, then environment variables, then the config file, then defaults.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pleo_auth::apikey::{ApiKeyConfig, StandaloneKey};
use pleo_auth::oauth::OAuthConfig;
use pleo_auth::sandbox::seed;
use pleo_auth::{
    ClientId, ClientSecret, DynLease, DynSecretStore, Environment, PleoAuth, StoreLease,
};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::exit::{CliError, Code};
use super::recovery;

/// The configuration flags shared by every command. Each has an environment variable (read by
/// clap, whose help never shows the variables' values) and a key in the config file.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ConfigArgs {
    /// The config file [default: $XDG_CONFIG_HOME/pleo-auth/config.toml]
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "PLEO_CONFIG",
        hide_env_values = true
    )]
    pub config: Option<PathBuf>,
    /// The Pleo environment: staging, production or sandbox [default: staging]
    #[arg(
        long = "env",
        global = true,
        value_name = "ENV",
        env = "PLEO_ENV",
        hide_env_values = true
    )]
    pub environment: Option<String>,
    /// The sandbox's base URL, for --env sandbox
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "PLEO_SANDBOX_URL",
        hide_env_values = true
    )]
    pub sandbox_url: Option<String>,
    /// Where credentials are kept: file:PATH, vault://, aws://, redis:// (a URL with a password
    /// only from the environment or the config file) [default: file: under the user's data
    /// directory]
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "PLEO_STORE",
        hide_env_values = true
    )]
    pub store: Option<String>,
    /// The OAuth client id
    #[arg(
        long,
        global = true,
        value_name = "ID",
        env = "PLEO_CLIENT_ID",
        hide_env_values = true
    )]
    pub client_id: Option<String>,
    /// The OAuth client secret: from PLEO_CLIENT_SECRET or the config file only; on the command
    /// line it would be visible to every user in `ps`, so the flag is refused
    #[arg(
        long,
        global = true,
        value_name = "SECRET",
        env = "PLEO_CLIENT_SECRET",
        hide_env_values = true,
        hide = true
    )]
    pub client_secret: Option<String>,
    /// The scopes `login` requests, space-separated [default: users:read]
    #[arg(
        long,
        global = true,
        value_name = "SCOPES",
        env = "PLEO_SCOPES",
        hide_env_values = true
    )]
    pub scopes: Option<String>,
    /// The loopback redirect URI registered with Pleo [default: http://127.0.0.1/callback, any
    /// free port]
    #[arg(
        long,
        global = true,
        value_name = "URI",
        env = "PLEO_REDIRECT_URI",
        hide_env_values = true
    )]
    pub redirect_uri: Option<String>,
    /// The integration id Integrated API keys are stored under [default: the client id, else
    /// pleo-auth-cli]
    #[arg(
        long,
        global = true,
        value_name = "ID",
        env = "PLEO_INTEGRATION_ID",
        hide_env_values = true
    )]
    pub integration_id: Option<String>,
    /// Scopes every Integrated API key must carry
    #[arg(
        long,
        global = true,
        value_name = "SCOPES",
        env = "PLEO_KEY_SCOPES",
        hide_env_values = true
    )]
    pub key_scopes: Option<String>,
}

/// The config file: keys mirror the environment variables without `PLEO_`, in lowercase.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    env: Option<String>,
    sandbox_url: Option<String>,
    store: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    scopes: Option<String>,
    redirect_uri: Option<String>,
    integration_id: Option<String>,
    key_scopes: Option<String>,
    encryption_key: Option<String>,
    encryption_old_keys: Option<String>,
}

impl FileConfig {
    /// Every key the file may hold.
    const KEYS: [&'static str; 11] = [
        "env",
        "sandbox_url",
        "store",
        "client_id",
        "client_secret",
        "scopes",
        "redirect_uri",
        "integration_id",
        "key_scopes",
        "encryption_key",
        "encryption_old_keys",
    ];

    /// Whether the file holds a secret: the client secret, an encryption key, or a store URL
    /// with a password.
    fn has_secret(&self) -> bool {
        self.client_secret.is_some()
            || self.encryption_key.is_some()
            || self.encryption_old_keys.is_some()
            || self
                .store
                .as_deref()
                .and_then(|s| url::Url::parse(s).ok())
                .is_some_and(|u| u.password().is_some())
    }
}

/// A secret setting: never printed.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// The resolved configuration of one run.
#[derive(Debug)]
pub struct Settings {
    /// The Pleo environment.
    pub environment: Environment,
    /// The store URL, as configured (`file:` with the default path filled in).
    pub store: String,
    /// The OAuth client id and secret, when both are known.
    pub client: Option<(String, Secret)>,
    /// Why OAuth is not configured, when it is not.
    client_missing: Option<&'static str>,
    /// The scopes `login` requests.
    pub scopes: String,
    /// The redirect URI of `login`.
    pub redirect_uri: String,
    /// The integration id of Integrated API keys.
    pub integration_id: String,
    /// Scopes every Integrated API key must carry.
    pub key_scopes: Option<String>,
    /// The key of the encryption wrapper, when configured.
    encryption_key: Option<Secret>,
    /// Older keys of the encryption wrapper, which only open values sealed before a rotation.
    encryption_old_keys: Option<Secret>,
    /// Every facade this run opened, flushed by [`finish`](Self::finish) before it exits.
    opened: std::sync::Mutex<Vec<PleoAuth>>,
}

/// The default redirect URI: loopback, any free port.
const DEFAULT_REDIRECT_URI: &str = "http://127.0.0.1/callback";
/// The default scopes `login` requests.
const DEFAULT_SCOPES: &str = "users:read";
/// The integration id when neither it nor a client id is configured.
const DEFAULT_INTEGRATION_ID: &str = "pleo-auth-cli";

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Settings {
    /// Resolves the configuration: flags, then `PLEO_*` variables, then the config file, then
    /// defaults.
    pub fn resolve(args: &ConfigArgs) -> Result<Self, CliError> {
        // clap reads the environment variables into `args`; a value that differs from the
        // variable came from the command line.
        let from_argv = |value: &Option<String>, var: &str| {
            value.is_some() && value.as_deref() != env_var(var).as_deref()
        };
        if from_argv(&args.client_secret, "PLEO_CLIENT_SECRET") {
            return Err(CliError::usage(
                "refusing --client-secret: a secret on the command line is visible to every user in `ps`",
            )
            .hint("set PLEO_CLIENT_SECRET, or client_secret in the config file (chmod 600)"));
        }
        if from_argv(&args.store, "PLEO_STORE")
            && args
                .store
                .as_deref()
                .and_then(|s| url::Url::parse(s).ok())
                .is_some_and(|u| u.password().is_some())
        {
            return Err(CliError::usage(
                "refusing a store URL with a password on the command line",
            )
            .hint("put it in PLEO_STORE or in the config file, where other users cannot see it"));
        }
        let file = load_file(args.config.clone().filter(|p| !p.as_os_str().is_empty()))?;
        let pick = |flag: &Option<String>, from_file: &Option<String>| {
            flag.clone()
                .filter(|v| !v.is_empty())
                .or_else(|| from_file.clone())
        };
        let env_name = pick(&args.environment, &file.env).unwrap_or_else(|| "staging".to_owned());
        let sandbox_url = pick(&args.sandbox_url, &file.sandbox_url);
        let environment = match env_name.as_str() {
            "staging" => Environment::staging(),
            "production" => Environment::production(),
            "sandbox" => {
                let url = sandbox_url.ok_or_else(|| {
                    CliError::config("PLEO_ENV=sandbox needs the sandbox's URL").hint(
                        "set PLEO_SANDBOX_URL or --sandbox-url (`pleo-auth sandbox` prints it)",
                    )
                })?;
                Environment::custom("sandbox", &url, &url)
                    .map_err(|e| CliError::config("the sandbox URL is refused").with_source(e))?
            }
            other => {
                return Err(CliError::usage(format!(
                    "unknown environment {other:?}: use staging, production or sandbox"
                )));
            }
        };

        let store = match pick(&args.store, &file.store) {
            Some(store) if store != "file:" => store,
            _ => format!("file:{}", default_store_dir()?.display()),
        };
        // One rule for file: URLs, resolved now so every message shows the absolute path.
        let store = match file_store_path(&store) {
            Some(path) => format!("file:{}", path?.display()),
            None => store,
        };

        let client_id = pick(&args.client_id, &file.client_id);
        let client_secret = pick(&args.client_secret, &file.client_secret);
        let is_sandbox = environment.name().as_str() == "sandbox";
        let (client, client_missing) = match (client_id, client_secret) {
            (Some(id), Some(secret)) => (Some((id, Secret(secret))), None),
            (None, None) if is_sandbox => (
                Some((
                    seed::DEMO_CLIENT_ID.to_owned(),
                    Secret(seed::DEMO_CLIENT_SECRET.to_owned()),
                )),
                None,
            ),
            (Some(_), None) => (
                None,
                Some(
                    "PLEO_CLIENT_SECRET is not set (environment variable or client_secret in the config file)",
                ),
            ),
            (None, _) => (
                None,
                Some(
                    "PLEO_CLIENT_ID is not set (--client-id, environment variable or client_id in the config file)",
                ),
            ),
        };
        let integration_id = pick(&args.integration_id, &file.integration_id)
            .or_else(|| client.as_ref().map(|(id, _)| id.clone()))
            .unwrap_or_else(|| DEFAULT_INTEGRATION_ID.to_owned());
        Ok(Self {
            environment,
            store,
            client,
            client_missing,
            scopes: pick(&args.scopes, &file.scopes).unwrap_or_else(|| DEFAULT_SCOPES.to_owned()),
            redirect_uri: pick(&args.redirect_uri, &file.redirect_uri)
                .unwrap_or_else(|| DEFAULT_REDIRECT_URI.to_owned()),
            integration_id,
            key_scopes: pick(&args.key_scopes, &file.key_scopes),
            encryption_key: env_var("PLEO_ENCRYPTION_KEY")
                .or(file.encryption_key)
                .map(Secret),
            encryption_old_keys: env_var("PLEO_ENCRYPTION_OLD_KEYS")
                .or(file.encryption_old_keys)
                .map(Secret),
            opened: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Fails unless OAuth is configured.
    pub fn require_oauth(&self) -> Result<(), CliError> {
        match self.client_missing {
            Some(why) => Err(CliError::config(format!("OAuth is not configured: {why}"))
                .hint("the sandbox needs none (PLEO_ENV=sandbox); for staging, Pleo issues a client id and secret to partners")),
            None => Ok(()),
        }
    }

    /// Opens the store (and the lease that spans processes sharing it).
    pub async fn open_store(&self) -> Result<(DynSecretStore, DynLease), CliError> {
        let (store, lease) = open_store(&self.store).await?;
        let store = self.encrypt(store)?;
        let lease = lease.unwrap_or_else(|| Arc::new(StoreLease::new(store.clone())) as DynLease);
        Ok((store, lease))
    }

    #[cfg(feature = "encryption")]
    fn encrypt(&self, store: DynSecretStore) -> Result<DynSecretStore, CliError> {
        use pleo_auth::stores::encrypted::EncryptedStore;
        match self.encryption_keys()? {
            None => Ok(store),
            Some(keys) => Ok(Arc::new(EncryptedStore::new(store, keys))),
        }
    }

    /// The keys of `PLEO_ENCRYPTION_KEY` (`ID:BASE64`, or `BASE64` for the id `cli`) and
    /// `PLEO_ENCRYPTION_OLD_KEYS` (the same, separated by commas).
    #[cfg(feature = "encryption")]
    fn encryption_keys(
        &self,
    ) -> Result<Option<pleo_auth::stores::encrypted::EncryptionKeys>, CliError> {
        use pleo_auth::stores::encrypted::{EncryptionKey, EncryptionKeys};
        let parse = |text: &str, var: &str| {
            let (id, key) = text.trim().split_once(':').unwrap_or(("cli", text));
            EncryptionKey::from_base64(id, key)
                .map_err(|e| CliError::config(format!("{var} is unusable")).with_source(e))
        };
        let Some(primary) = &self.encryption_key else {
            return match self.encryption_old_keys {
                None => Ok(None),
                Some(_) => Err(CliError::config(
                    "PLEO_ENCRYPTION_OLD_KEYS needs PLEO_ENCRYPTION_KEY",
                )),
            };
        };
        let mut keys = EncryptionKeys::new(parse(primary.expose(), "PLEO_ENCRYPTION_KEY")?);
        if let Some(older) = &self.encryption_old_keys {
            for text in older.expose().split(',').filter(|t| !t.trim().is_empty()) {
                keys = keys
                    .with_older(parse(text, "PLEO_ENCRYPTION_OLD_KEYS")?)
                    .map_err(|e| {
                        CliError::config("PLEO_ENCRYPTION_OLD_KEYS is unusable").with_source(e)
                    })?;
            }
        }
        Ok(Some(keys))
    }

    /// The configured store behind the encryption wrapper, for `rewrap`.
    #[cfg(feature = "encryption")]
    pub async fn encrypted_store(
        &self,
    ) -> Result<
        pleo_auth::stores::encrypted::EncryptedStore<
            DynSecretStore,
            pleo_auth::stores::encrypted::EncryptionKeys,
        >,
        CliError,
    > {
        let keys = self.encryption_keys()?.ok_or_else(|| {
            CliError::config("rewrap needs PLEO_ENCRYPTION_KEY (and PLEO_ENCRYPTION_OLD_KEYS)")
        })?;
        let (store, _) = open_store(&self.store).await?;
        Ok(pleo_auth::stores::encrypted::EncryptedStore::new(
            store, keys,
        ))
    }

    #[cfg(not(feature = "encryption"))]
    fn encrypt(&self, store: DynSecretStore) -> Result<DynSecretStore, CliError> {
        if self.encryption_key.is_some() || self.encryption_old_keys.is_some() {
            return Err(not_built("PLEO_ENCRYPTION_KEY", "encryption"));
        }
        Ok(store)
    }

    /// Builds the facade: the store, OAuth (when configured, with `redirect_uri` if given),
    /// Integrated API keys, and the Standalone key of `PLEO_API_KEY` if set.
    pub async fn pleo_auth(&self, redirect_uri: Option<&str>) -> Result<PleoAuth, CliError> {
        let (store, lease) = self.open_store().await?;
        let environment = self.environment.clone();
        let mut builder = PleoAuth::builder()
            .environment(environment.clone())
            .store(store)
            .lease(lease);
        if let Some((client_id, secret)) = &self.client {
            let config = OAuthConfig::builder()
                .environment(environment.clone())
                .client_id(client_id.clone())
                .client_secret(ClientSecret::new(secret.expose()))
                .redirect_uri(redirect_uri.unwrap_or(&self.redirect_uri))
                .scopes(self.scopes.clone())
                .build()
                .map_err(|e| CliError::oauth("the OAuth configuration is refused", e))?;
            builder = builder.oauth(config);
        }
        let integration = ClientId::new(self.integration_id.clone())
            .map_err(|e| CliError::config("the integration id is refused").with_source(e))?;
        let mut keys = ApiKeyConfig::new(environment.clone(), integration);
        if let Some(scopes) = &self.key_scopes {
            keys = keys.with_required_scopes(
                scopes
                    .parse()
                    .map_err(|e| CliError::config("PLEO_KEY_SCOPES is refused").with_source(e))?,
            );
        }
        builder = builder.api_keys(keys);
        if env_var(pleo_auth::apikey::DEFAULT_ENV_VAR).is_some() {
            let key = StandaloneKey::from_env(environment)
                .map_err(|e| CliError::apikey("PLEO_API_KEY is refused", e))?;
            builder = builder.standalone_key(key);
        }
        let auth = builder
            .build()
            .map_err(|e| CliError::facade("setting up pleo-auth failed", e))?;
        if let Ok(manager) = auth.token_manager() {
            recovery::apply(&manager).await;
        }
        self.opened
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(auth.clone());
        Ok(auth)
    }

    /// Before the process exits: writes every rotated token pair still pending in memory to the
    /// store. Pairs the store does not take are saved to the recovery folder, and the run fails
    /// (exit 7) naming the store and the file, so no rotated pair dies with the process.
    pub async fn finish(&self) -> Result<(), CliError> {
        let opened = std::mem::take(&mut *self.opened.lock().unwrap_or_else(|e| e.into_inner()));
        for auth in opened {
            let Ok(manager) = auth.token_manager() else {
                continue;
            };
            let Err(err) = manager.flush().await else {
                continue;
            };
            let pairs = manager.pending_pairs();
            if pairs.is_empty() {
                continue;
            }
            let count = pairs.len();
            let store = &self.store;
            return Err(match recovery::save(&pairs) {
                Ok(file) => CliError::new(
                    Code::Store,
                    format!(
                        "the store {store} did not take the rotated tokens of {count} grant(s); they are saved in {}",
                        file.display()
                    ),
                )
                .hint("the next pleo-auth command writes them to the store first; run one once the store is back")
                .with_source(err),
                Err(save_error) => {
                    save_error.print();
                    CliError::new(
                    Code::Store,
                    format!(
                        "the store {store} did not take the rotated tokens of {count} grant(s), and saving them to the recovery folder failed: they are lost, and the grant(s) will need `pleo-auth login` again"
                    ),
                )
                .with_source(err)
                }
            });
        }
        Ok(())
    }
}

fn load_file(explicit: Option<PathBuf>) -> Result<FileConfig, CliError> {
    let (path, required) = match explicit {
        Some(path) => (path, true),
        None => match dirs::config_dir() {
            Some(dir) => (dir.join("pleo-auth").join("config.toml"), false),
            None => return Ok(FileConfig::default()),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => Zeroizing::new(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            return Ok(FileConfig::default());
        }
        Err(e) => {
            return Err(CliError::config(format!(
                "cannot read the config file {}",
                path.display()
            ))
            .with_source(e));
        }
    };
    let config: FileConfig = toml::from_str(&text).map_err(|e| {
        CliError::config(format!(
            "the config file {} is invalid: {}",
            path.display(),
            describe_toml_error(&text, &e)
        ))
        .hint("the keys are listed in `pleo-auth --help`; string values need double quotes")
    })?;
    check_permissions(&path, config.has_secret())?;
    Ok(config)
}

/// Where and what the TOML error is, without quoting the file: `line L, column C: what`. The
/// parser's message is kept only when it quotes nothing from the file (no value leaks), and
/// unknown keys are named (a key is not a secret).
fn describe_toml_error(text: &str, err: &toml::de::Error) -> String {
    let location = err.span().map(|span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        format!("line {line}, column {column}: ")
    });
    let message = err.message().trim();
    let what = if let Some(rest) = message.strip_prefix("unknown field `") {
        let key = rest.split('`').next().unwrap_or_default();
        if FileConfig::KEYS.contains(&key)
            || key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            format!("unknown key {key:?}")
        } else {
            "unknown key".to_owned()
        }
    } else if message.contains('`') || message.contains('"') || message.contains('\'') {
        // A type error or a syntax error that quotes the file: say what kind only.
        if message.starts_with("invalid type") {
            "a value has the wrong type (every value is a string in double quotes)".to_owned()
        } else {
            "a syntax error".to_owned()
        }
    } else {
        message
            .lines()
            .next()
            .unwrap_or("a syntax error")
            .to_owned()
    };
    format!("{}{what}", location.unwrap_or_default())
}

/// Like ssh with a private key: a config file holding a secret must not be readable by other
/// users (refused, exit 8); one without a secret that others can write gets a warning.
fn check_permissions(path: &Path, has_secret: bool) -> Result<(), CliError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let Ok(metadata) = std::fs::metadata(path) else {
            return Ok(());
        };
        let mode = metadata.permissions().mode() & 0o777;
        if has_secret && mode & 0o077 != 0 {
            return Err(CliError::config(format!(
                "the config file {} holds a secret and other users can access it (mode {mode:03o})",
                path.display()
            ))
            .hint(format!("chmod 600 {}", path.display())));
        }
        if mode & 0o022 != 0 {
            super::output::print_level(
                super::output::Level::Warning,
                &format!(
                    "other users can change the config file {} (mode {mode:03o}); chmod 600 it",
                    path.display()
                ),
            );
        }
    }
    #[cfg(not(unix))]
    let _ = (path, has_secret);
    Ok(())
}

/// The path of a `file:` store URL, by one rule; `None` for other schemes.
///
/// - `file:/abs/path` and `file:relative/path` (to the current directory);
/// - `file:~` and `file:~/in/home` (the user's home directory);
/// - RFC 8089 file URLs, `file:///abs/path` and `file://localhost/abs/path`, percent-decoded;
///   any other host is refused.
fn file_store_path(url: &str) -> Option<Result<PathBuf, CliError>> {
    let rest = url.strip_prefix("file:")?;
    Some(parse_file_path(rest))
}

fn parse_file_path(rest: &str) -> Result<PathBuf, CliError> {
    let refuse = |why: &str| {
        CliError::config(format!("the file store URL is refused: {why}")).hint(
            "use file:/absolute/path, file:~/path, file:relative/path or file:///absolute/path",
        )
    };
    let path = if rest.starts_with("//") {
        let url =
            url::Url::parse(&format!("file:{rest}")).map_err(|_| refuse("it is not a file URL"))?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(refuse("a file URL has no query or fragment"));
        }
        if url.path() == "/" {
            return Err(refuse("it names no path (or the root directory)"));
        }
        url.to_file_path()
            .map_err(|()| refuse("a file URL names no other host than localhost"))?
    } else if rest == "~" || rest.starts_with("~/") {
        let home = dirs::home_dir().ok_or_else(|| refuse("the home directory is unknown"))?;
        home.join(rest.trim_start_matches('~').trim_start_matches('/'))
    } else if rest.starts_with('~') {
        return Err(refuse("~user paths are not expanded"));
    } else if rest.is_empty() {
        return Err(refuse("it names no path"));
    } else {
        PathBuf::from(rest)
    };
    if path.is_absolute() {
        return Ok(path);
    }
    std::env::current_dir()
        .map(|dir| dir.join(path))
        .map_err(|e| refuse("the current directory is unknown").with_source(e))
}

/// `<data dir>/pleo-auth`, such as `~/.local/share/pleo-auth`.
fn default_store_dir() -> Result<PathBuf, CliError> {
    dirs::data_dir()
        .map(|dir| dir.join("pleo-auth"))
        .ok_or_else(|| {
            CliError::config("cannot find the user's data directory for the default file store")
                .hint("set PLEO_STORE=file:/some/private/directory")
        })
}

/// A store URL needs a feature this binary was built without.
#[cfg_attr(
    all(
        feature = "vault",
        feature = "aws",
        feature = "redis",
        feature = "encryption"
    ),
    expect(dead_code, reason = "every optional store is built in")
)]
/// The error of a setting or command whose feature this build lacks.
pub fn not_built(what: &str, feature: &str) -> CliError {
    CliError::config(format!(
        "{what} needs the `{feature}` feature, which this pleo-auth was built without"
    ))
    .hint(format!(
        "install it with `cargo install pleo-auth --features cli,{feature}`"
    ))
}

/// Opens the store named by `url`, with its own lease if it has one.
async fn open_store(url: &str) -> Result<(DynSecretStore, Option<DynLease>), CliError> {
    if let Some(path) = file_store_path(url) {
        return open_file(&path?).map(|store| (store, None));
    }
    let parsed = url::Url::parse(url).map_err(|_| {
        CliError::config("the store URL is not a URL")
            .hint("use file:PATH, vault://HOST:PORT/MOUNT/PREFIX, aws://REGION/PREFIX or redis://HOST:PORT")
    })?;
    match parsed.scheme() {
        "vault" | "vault+http" => open_vault(&parsed),
        "aws" => open_aws(&parsed).await,
        "redis" | "rediss" => open_redis(&parsed).await,
        other => Err(CliError::config(format!("unknown store URL scheme {other:?}")).hint(
            "use file:PATH, vault://HOST:PORT/MOUNT/PREFIX, aws://REGION/PREFIX or redis://HOST:PORT",
        )),
    }
}

fn open_file(path: &Path) -> Result<DynSecretStore, CliError> {
    let store = pleo_auth::stores::file::FileStore::open(path)
        .map_err(|e| CliError::core("opening the file store failed", e))?;
    Ok(Arc::new(store))
}

/// `vault://HOST:PORT/MOUNT[/PREFIX...][?namespace=NS]` (https) or `vault+http://` (http, for
/// a loopback dev server). The token comes from `VAULT_TOKEN`, or AppRole from `VAULT_ROLE_ID`
/// and `VAULT_SECRET_ID`.
#[cfg(feature = "vault")]
fn open_vault(url: &url::Url) -> Result<(DynSecretStore, Option<DynLease>), CliError> {
    use pleo_auth::stores::vault::VaultStore;
    let scheme = if url.scheme() == "vault+http" {
        "http"
    } else {
        "https"
    };
    let host = url
        .host_str()
        .ok_or_else(|| CliError::config("a vault:// store URL needs a host"))?;
    let address = match url.port() {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    };
    let mut segments = url
        .path_segments()
        .map(|s| s.filter(|s| !s.is_empty()).collect::<Vec<_>>())
        .unwrap_or_default();
    if segments.is_empty() {
        segments.push("secret");
    }
    let mut builder = VaultStore::builder(address).mount(segments[0]);
    if segments.len() > 1 {
        builder = builder.path_prefix(segments[1..].join("/"));
    }
    if let Some((_, namespace)) = url.query_pairs().find(|(k, _)| k == "namespace") {
        builder = builder.namespace(namespace.into_owned());
    }
    builder = match (
        env_var("VAULT_TOKEN"),
        env_var("VAULT_ROLE_ID"),
        env_var("VAULT_SECRET_ID"),
    ) {
        (Some(token), _, _) => builder.token(token),
        (None, Some(role), Some(secret)) => builder.approle(role, secret),
        _ => {
            return Err(CliError::config("a vault:// store needs credentials")
                .hint("set VAULT_TOKEN, or VAULT_ROLE_ID and VAULT_SECRET_ID"));
        }
    };
    let store = builder
        .build()
        .map_err(|e| CliError::core("opening the Vault store failed", e))?;
    Ok((Arc::new(store), None))
}

#[cfg(not(feature = "vault"))]
fn open_vault(_: &url::Url) -> Result<(DynSecretStore, Option<DynLease>), CliError> {
    Err(not_built("a vault:// store", "vault"))
}

/// `aws://[REGION]/[NAME PREFIX][?endpoint=URL]`; credentials come from the standard AWS chain.
#[cfg(feature = "aws")]
async fn open_aws(url: &url::Url) -> Result<(DynSecretStore, Option<DynLease>), CliError> {
    use pleo_auth::stores::aws::AwsStore;
    let mut builder = AwsStore::builder();
    if let Some(region) = url.host_str().filter(|h| !h.is_empty()) {
        builder = builder.region(region);
    }
    let prefix = url.path().trim_start_matches('/');
    if !prefix.is_empty() {
        builder = builder.name_prefix(prefix);
    }
    if let Some((_, endpoint)) = url.query_pairs().find(|(k, _)| k == "endpoint") {
        builder = builder.endpoint_url(endpoint.into_owned());
    }
    let store = builder
        .build()
        .await
        .map_err(|e| CliError::core("opening the AWS Secrets Manager store failed", e))?;
    Ok((Arc::new(store), None))
}

#[cfg(not(feature = "aws"))]
async fn open_aws(_: &url::Url) -> Result<(DynSecretStore, Option<DynLease>), CliError> {
    Err(not_built("an aws:// store", "aws"))
}

/// `redis://` or `rediss://`, as the redis crate reads it, plus `?prefix=KEY PREFIX`. The
/// Redis lease coordinates refreshes.
#[cfg(feature = "redis")]
async fn open_redis(url: &url::Url) -> Result<(DynSecretStore, Option<DynLease>), CliError> {
    use pleo_auth::stores::redis::RedisStore;
    let mut url = url.clone();
    let prefix = url
        .query_pairs()
        .find(|(k, _)| k == "prefix")
        .map(|(_, v)| v.into_owned());
    let rest: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != "prefix")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if rest.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(rest);
    }
    let mut builder = RedisStore::builder(url.as_str());
    if let Some(prefix) = prefix {
        builder = builder.key_prefix(prefix);
    }
    let store = builder
        .connect()
        .await
        .map_err(|e| CliError::core("opening the Redis store failed", e))?;
    let lease: DynLease = Arc::new(store.lease());
    Ok((Arc::new(store), Some(lease)))
}

#[cfg(not(feature = "redis"))]
async fn open_redis(_: &url::Url) -> Result<(DynSecretStore, Option<DynLease>), CliError> {
    Err(not_built("a redis:// store", "redis"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_follow_one_rule() {
        let home = dirs::home_dir().expect("a home directory");
        let cwd = std::env::current_dir().unwrap();
        let path = |url: &str| file_store_path(url).expect("a file: URL");
        assert_eq!(
            path("file:/var/lib/x").unwrap(),
            PathBuf::from("/var/lib/x")
        );
        assert_eq!(path("file:rel/x").unwrap(), cwd.join("rel/x"));
        assert_eq!(path("file:~").unwrap(), home);
        assert_eq!(path("file:~/x").unwrap(), home.join("x"));
        assert_eq!(
            path("file:///var/lib/x").unwrap(),
            PathBuf::from("/var/lib/x")
        );
        assert_eq!(
            path("file://localhost/var/lib/a%20b").unwrap(),
            PathBuf::from("/var/lib/a b")
        );
        assert_eq!(path("file://LOCALHOST/x").unwrap(), PathBuf::from("/x"));
        for refused in [
            "file:",
            "file://",
            "file://server/share",
            "file:~other/x",
            "file:///x?y=1",
        ] {
            let err = path(refused).unwrap_err();
            assert_eq!(err.code(), Code::Config, "{refused}");
        }
        assert!(file_store_path("redis://127.0.0.1").is_none());
    }

    #[test]
    fn toml_errors_point_at_the_place_and_quote_nothing() {
        let secret = "s3cr3t-value";
        for text in [
            format!("env = \"sandbox\"\nclient_secret = \"{secret}\n"),
            format!("env = \"sandbox\"\nclient_secret = {secret}\n"),
            format!("env = \"sandbox\"\nclient_secret = [\"{secret}\"]\n"),
            "env = \"sandbox\"\nclient_secret = 42\n".to_owned(),
        ] {
            let err = toml::from_str::<FileConfig>(&text).err().expect("invalid");
            let shown = describe_toml_error(&text, &err);
            assert!(shown.starts_with("line 2, column "), "{shown}");
            assert!(!shown.contains(secret) && !shown.contains("42"), "{shown}");
        }
        let text = "colour = \"blue\"\n";
        let err = toml::from_str::<FileConfig>(text).err().expect("invalid");
        assert_eq!(
            describe_toml_error(text, &err),
            "line 1, column 1: unknown key \"colour\""
        );
    }

    #[test]
    fn secrets_in_the_file_are_noticed() {
        let with = |text: &str| toml::from_str::<FileConfig>(text).unwrap().has_secret();
        assert!(with("client_secret = \"x\""));
        assert!(with("encryption_key = \"x\""));
        assert!(with("store = \"redis://u:p@127.0.0.1:6379\""));
        assert!(!with(
            "store = \"redis://127.0.0.1:6379\"\nclient_id = \"c\""
        ));
    }
}
