//! The OAuth client's configuration, validated when built.

use std::fmt;
use std::time::Duration;

use pleo_auth_core::{ClientId, ClientSecret, Environment, ScopeSet, check_transport_security};
use url::Url;

use crate::error::{Error, Result};
use crate::server::AuthorizationServer;

/// Default lifetime of a pending authorization: how long the customer has to consent.
pub const DEFAULT_PENDING_TTL: Duration = Duration::from_secs(10 * 60);

/// What Pleo registered for this integration, and where it runs.
///
/// Build it with [`OAuthConfig::builder`]; an unusable setting is an
/// [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig) error from
/// [`OAuthConfigBuilder::build`]. `Debug` does not print the client secret.
///
/// ```
/// use pleo_auth_core::{ClientSecret, Environment};
/// use pleo_auth_oauth::OAuthConfig;
///
/// let config = OAuthConfig::builder()
///     .environment(Environment::staging())
///     .client_id("my-client")
///     .client_secret(ClientSecret::new("my-secret"))
///     .redirect_uri("https://integration.example/pleo/callback")
///     .scopes("users:read export-jobs:read")
///     .build()?;
/// assert_eq!(config.client_id().as_str(), "my-client");
/// assert!(!format!("{config:?}").contains("my-secret"));
///
/// // http is allowed for loopback redirect URIs only.
/// let err = OAuthConfig::builder()
///     .environment(Environment::staging())
///     .client_id("my-client")
///     .client_secret(ClientSecret::new("my-secret"))
///     .redirect_uri("http://integration.example/callback")
///     .scopes("users:read")
///     .build()
///     .unwrap_err();
/// assert_eq!(err.kind(), &pleo_auth_oauth::ErrorKind::InvalidConfig);
/// # Ok::<(), pleo_auth_oauth::Error>(())
/// ```
#[derive(Clone)]
pub struct OAuthConfig {
    environment: Environment,
    client_id: ClientId,
    client_secret: ClientSecret,
    redirect_uri: Url,
    scopes: ScopeSet,
    pending_ttl: Duration,
    server: AuthorizationServer,
}

impl OAuthConfig {
    /// A builder with no settings.
    pub fn builder() -> OAuthConfigBuilder {
        OAuthConfigBuilder::default()
    }

    /// The Pleo environment.
    pub fn environment(&self) -> &Environment {
        &self.environment
    }

    /// The OAuth client id issued by Pleo.
    pub fn client_id(&self) -> &ClientId {
        &self.client_id
    }

    /// The OAuth client secret, sent only to the token endpoint (HTTP Basic).
    pub fn client_secret(&self) -> &ClientSecret {
        &self.client_secret
    }

    /// The registered redirect URI.
    pub fn redirect_uri(&self) -> &Url {
        &self.redirect_uri
    }

    /// The scopes requested by default.
    pub fn scopes(&self) -> &ScopeSet {
        &self.scopes
    }

    /// How long a pending authorization stays valid.
    pub fn pending_ttl(&self) -> Duration {
        self.pending_ttl
    }

    /// The authorization server: Pleo's for the environment unless
    /// [`OAuthConfigBuilder::authorization_server`] named another.
    pub fn server(&self) -> &AuthorizationServer {
        &self.server
    }
}

impl fmt::Debug for OAuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthConfig")
            .field("environment", &self.environment.name())
            .field("client_id", &self.client_id)
            .field("redirect_uri", &self.redirect_uri.as_str())
            .field("scopes", &self.scopes)
            .field("pending_ttl", &self.pending_ttl)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// Builds an [`OAuthConfig`]; every setting except the pending TTL is required.
#[derive(Default)]
pub struct OAuthConfigBuilder {
    environment: Option<Environment>,
    client_id: Option<String>,
    client_secret: Option<ClientSecret>,
    redirect_uri: Option<String>,
    scopes: Option<String>,
    pending_ttl: Option<Duration>,
    server: Option<AuthorizationServer>,
}

impl fmt::Debug for OAuthConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthConfigBuilder")
            .field("environment", &self.environment.as_ref().map(|e| e.name()))
            .field("client_id", &self.client_id)
            .field("has_client_secret", &self.client_secret.is_some())
            .field("redirect_uri", &self.redirect_uri)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl OAuthConfigBuilder {
    /// The Pleo environment (staging, production, or a custom one such as the sandbox).
    pub fn environment(mut self, environment: Environment) -> Self {
        self.environment = Some(environment);
        self
    }

    /// The client id issued by Pleo.
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// The client secret issued by Pleo.
    pub fn client_secret(mut self, secret: ClientSecret) -> Self {
        self.client_secret = Some(secret);
        self
    }

    /// The redirect URI registered with Pleo: https, or http on a loopback host.
    pub fn redirect_uri(mut self, uri: impl Into<String>) -> Self {
        self.redirect_uri = Some(uri.into());
        self
    }

    /// The scopes to request, space-separated (`"users:read export-jobs:read"`). Any OAuth
    /// scope name is accepted, so scopes outside Pleo's `resource:permission` form (`openid`,
    /// `offline_access`) can be requested from servers that know them.
    pub fn scopes(mut self, scopes: impl Into<String>) -> Self {
        self.scopes = Some(scopes.into());
        self
    }

    /// How long a pending authorization stays valid (default 10 minutes; 10 s to 1 hour).
    pub fn pending_ttl(mut self, ttl: Duration) -> Self {
        self.pending_ttl = Some(ttl);
        self
    }

    /// Another authorization server than Pleo's (its endpoints, revocation, issuer and subject
    /// lookup). Default: [`AuthorizationServer::pleo`] of the environment.
    pub fn authorization_server(mut self, server: AuthorizationServer) -> Self {
        self.server = Some(server);
        self
    }

    /// Validates the settings.
    pub fn build(self) -> Result<OAuthConfig> {
        let environment = self
            .environment
            .ok_or_else(|| Error::config("the environment is required"))?;
        let client_id = ClientId::new(
            self.client_id
                .ok_or_else(|| Error::config("the client id is required"))?,
        )
        .map_err(|e| Error::config("the client id is invalid").with_source(e))?;
        let client_secret = self
            .client_secret
            .ok_or_else(|| Error::config("the client secret is required"))?;
        if client_secret.expose_secret().is_empty() {
            return Err(Error::config("the client secret is empty"));
        }
        let redirect_uri = parse_redirect_uri(
            &self
                .redirect_uri
                .ok_or_else(|| Error::config("the redirect uri is required"))?,
        )?;
        let scopes: ScopeSet = self
            .scopes
            .ok_or_else(|| Error::config("the scopes are required"))?
            .parse()
            .map_err(|e| Error::config("the scopes are invalid").with_source(e))?;
        if scopes.is_empty() {
            return Err(Error::config("at least one scope is required"));
        }
        let pending_ttl = self.pending_ttl.unwrap_or(DEFAULT_PENDING_TTL);
        if !(Duration::from_secs(10)..=Duration::from_secs(3600)).contains(&pending_ttl) {
            return Err(Error::config(
                "the pending authorization ttl must be between 10 seconds and 1 hour",
            ));
        }
        let server = self
            .server
            .unwrap_or_else(|| AuthorizationServer::pleo(&environment));
        Ok(OAuthConfig {
            server,
            environment,
            client_id,
            client_secret,
            redirect_uri,
            scopes,
            pending_ttl,
        })
    }
}

/// An absolute https URI (or http on loopback) without credentials or fragment.
fn parse_redirect_uri(raw: &str) -> Result<Url> {
    let url = Url::parse(raw)
        .map_err(|e| Error::config("the redirect uri is not a url").with_source(e))?;
    check_transport_security(&url).map_err(|e| {
        Error::config("the redirect uri must be https, or http on a loopback host").with_source(e)
    })?;
    if url.fragment().is_some() {
        return Err(Error::config("the redirect uri must not have a fragment"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn base() -> OAuthConfigBuilder {
        OAuthConfig::builder()
            .environment(Environment::staging())
            .client_id("client")
            .client_secret(ClientSecret::new("CANARY-secret"))
            .redirect_uri("https://app.example/cb")
            .scopes("users:read")
    }

    #[test]
    fn valid_configs_build() {
        assert!(base().build().is_ok());
        for uri in [
            "http://127.0.0.1:8080/cb",
            "http://localhost/cb",
            "http://[::1]:9/cb",
            "https://app.example/cb?tenant=1",
        ] {
            assert!(base().redirect_uri(uri).build().is_ok(), "{uri}");
        }
    }

    #[test]
    fn invalid_configs_are_typed_errors() {
        let cases = [
            base().redirect_uri("http://app.example/cb"),
            base().redirect_uri("https://app.example/cb#frag"),
            base().redirect_uri("https://user:pw@app.example/cb"),
            base().redirect_uri("ftp://app.example/cb"),
            base().redirect_uri("/relative"),
            base().scopes(""),
            base().scopes("users:read  openid"),
            base().client_id(""),
            base().client_secret(ClientSecret::new("")),
            base().pending_ttl(Duration::from_secs(1)),
            OAuthConfig::builder(),
        ];
        for case in cases {
            let err = case.build().unwrap_err();
            assert_eq!(err.kind(), &ErrorKind::InvalidConfig);
            assert!(!format!("{err} {err:?}").contains("CANARY"));
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        let config = base().build().unwrap();
        let shown = format!("{config:?} {:?}", base());
        assert!(!shown.contains("CANARY"), "{shown}");
        assert!(shown.contains("client"));
    }
}
