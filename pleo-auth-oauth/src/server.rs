//! Where the authorization server is, and how the connected company is learned.
//!
//! Pleo's endpoints are the default ([`AuthorizationServer::pleo`]). Any RFC 6749 server can be
//! named instead: its authorization and token endpoints, an RFC 7009 revocation endpoint, its
//! issuer identifier (RFC 9207), and how the subject of a new grant is found.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use pleo_auth_core::{AccessToken, Environment, Subject, check_transport_security};
use url::Url;

use crate::error::{Error, Result};

/// How [`OAuthClient::complete`](crate::OAuthClient::complete) learns which company or
/// organisation a new grant belongs to.
#[derive(Clone)]
#[non_exhaustive]
pub enum SubjectLookup {
    /// `GET {api}/v1/introspect` with the new access token (Pleo's External API; the default).
    PleoIntrospect,
    /// RFC 7662 token introspection at this endpoint (client authentication with HTTP Basic).
    /// The subject is the answer's `urn:pleo:params:oauth:subject_urn`, else its `sub`, and
    /// must be a Pleo subject URN; an answer with `"active": false` is refused.
    TokenIntrospection(Url),
    /// Your own resolver: a lookup in your system, or a call to another API.
    Custom(Arc<dyn ResolveSubject>),
}

impl SubjectLookup {
    /// RFC 7662 token introspection at `endpoint` (https, or http on a loopback host).
    pub fn token_introspection(endpoint: &str) -> Result<Self> {
        Ok(Self::TokenIntrospection(endpoint_url(endpoint)?))
    }

    /// A closure that maps the new access token to its subject.
    ///
    /// ```
    /// use pleo_auth_core::Subject;
    /// use pleo_auth_oauth::SubjectLookup;
    ///
    /// let lookup = SubjectLookup::from_fn(|_token| async {
    ///     "urn:pleo:company:0c000000-0000-4000-8000-000000000001".parse::<Subject>()
    /// });
    /// # let _ = lookup;
    /// ```
    pub fn from_fn<F, Fut>(resolve: F) -> Self
    where
        F: Fn(AccessToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = pleo_auth_core::Result<Subject>> + Send + 'static,
    {
        Self::Custom(Arc::new(FnResolver(resolve)))
    }
}

impl fmt::Debug for SubjectLookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PleoIntrospect => f.write_str("PleoIntrospect"),
            Self::TokenIntrospection(url) => f
                .debug_tuple("TokenIntrospection")
                .field(&url.as_str())
                .finish(),
            Self::Custom(resolver) => f.debug_tuple("Custom").field(resolver).finish(),
        }
    }
}

/// Finds the subject of a new access token (see [`SubjectLookup::Custom`]).
#[async_trait]
pub trait ResolveSubject: Send + Sync + fmt::Debug + 'static {
    /// The company or organisation `access_token` acts for. A retryable error is retried with
    /// backoff; any error refuses the connection (and the new grant is revoked).
    async fn resolve(&self, access_token: &AccessToken) -> pleo_auth_core::Result<Subject>;
}

struct FnResolver<F>(F);

impl<F> fmt::Debug for FnResolver<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnResolver")
    }
}

#[async_trait]
impl<F, Fut> ResolveSubject for FnResolver<F>
where
    F: Fn(AccessToken) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = pleo_auth_core::Result<Subject>> + Send + 'static,
{
    async fn resolve(&self, access_token: &AccessToken) -> pleo_auth_core::Result<Subject> {
        (self.0)(access_token.clone()).await
    }
}

/// The authorization server's endpoints and identity.
///
/// ```
/// use pleo_auth_core::Environment;
/// use pleo_auth_oauth::{AuthorizationServer, SubjectLookup};
///
/// // Pleo (the default of `OAuthConfig`):
/// let pleo = AuthorizationServer::pleo(&Environment::staging());
/// assert_eq!(pleo.token_endpoint().as_str(), "https://auth.staging.pleo.io/oauth/token");
///
/// // Another RFC 6749 server, with RFC 7009 revocation and RFC 9207 issuer checks:
/// let other = AuthorizationServer::custom(
///     "https://login.example/authorize",
///     "https://login.example/token",
/// )?
/// .with_revocation_endpoint("https://login.example/revoke")?
/// .with_issuer("https://login.example")
/// .with_subject_lookup(SubjectLookup::token_introspection("https://login.example/introspect")?);
/// assert!(other.revocation_endpoint().is_some());
/// # Ok::<(), pleo_auth_oauth::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct AuthorizationServer {
    authorization_endpoint: Url,
    token_endpoint: Url,
    revocation_endpoint: Option<Url>,
    issuer: Option<String>,
    subject_lookup: SubjectLookup,
}

impl AuthorizationServer {
    /// Pleo's authorization server for `environment`: `/oauth/authorize` and `/oauth/token` on
    /// its authorization server, the subject from `GET /v1/introspect`, no revocation endpoint
    /// (Pleo documents none; a disconnect deletes the installation instead), and no issuer
    /// identifier (Pleo documents none; see [`with_issuer`](Self::with_issuer)).
    pub fn pleo(environment: &Environment) -> Self {
        Self {
            authorization_endpoint: environment.authorize_endpoint(),
            token_endpoint: environment.token_endpoint(),
            revocation_endpoint: None,
            issuer: None,
            subject_lookup: SubjectLookup::PleoIntrospect,
        }
    }

    /// Another server's authorization and token endpoints (https, or http on a loopback host).
    /// The subject is still looked up with Pleo's `GET /v1/introspect` unless
    /// [`with_subject_lookup`](Self::with_subject_lookup) says otherwise.
    pub fn custom(authorization_endpoint: &str, token_endpoint: &str) -> Result<Self> {
        Ok(Self {
            authorization_endpoint: endpoint_url(authorization_endpoint)?,
            token_endpoint: endpoint_url(token_endpoint)?,
            revocation_endpoint: None,
            issuer: None,
            subject_lookup: SubjectLookup::PleoIntrospect,
        })
    }

    /// An RFC 7009 revocation endpoint. With one, a refused or replaced grant has exactly its
    /// refresh token revoked, and a disconnect revokes the grant's refresh token instead of
    /// deleting the Pleo installation.
    pub fn with_revocation_endpoint(mut self, endpoint: &str) -> Result<Self> {
        self.revocation_endpoint = Some(endpoint_url(endpoint)?);
        Ok(self)
    }

    /// The server's issuer identifier (RFC 9207). With it, every authorization response must
    /// carry `iss` equal to it. Without it, an `iss` that is present must name the
    /// authorization endpoint's origin. A mismatch is refused before any token request.
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// How the subject of a new grant is found (default [`SubjectLookup::PleoIntrospect`]).
    pub fn with_subject_lookup(mut self, lookup: SubjectLookup) -> Self {
        self.subject_lookup = lookup;
        self
    }

    /// The authorization endpoint.
    pub fn authorization_endpoint(&self) -> &Url {
        &self.authorization_endpoint
    }

    /// The token endpoint.
    pub fn token_endpoint(&self) -> &Url {
        &self.token_endpoint
    }

    /// The RFC 7009 revocation endpoint, if the server has one.
    pub fn revocation_endpoint(&self) -> Option<&Url> {
        self.revocation_endpoint.as_ref()
    }

    /// The configured issuer identifier, if any.
    pub fn issuer(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    /// How the subject of a new grant is found.
    pub fn subject_lookup(&self) -> &SubjectLookup {
        &self.subject_lookup
    }

    /// Checks the `iss` of an authorization response (RFC 9207).
    pub(crate) fn check_issuer(&self, iss: Option<&str>) -> Result<()> {
        let accepted = match (&self.issuer, iss) {
            (Some(expected), Some(got)) => expected == got,
            (Some(_), None) => false,
            (None, None) => true,
            (None, Some(got)) => {
                let origin = self.authorization_endpoint.origin().ascii_serialization();
                got.strip_suffix('/').unwrap_or(got) == origin
            }
        };
        if accepted {
            Ok(())
        } else {
            Err(Error::new(
                crate::ErrorKind::IssuerMismatch,
                "the authorization response names another issuer than the configured one",
            ))
        }
    }
}

/// An endpoint URL: absolute, https or http on loopback, no credentials or fragment.
fn endpoint_url(raw: &str) -> Result<Url> {
    let url = Url::parse(raw).map_err(|e| {
        Error::config("an authorization server endpoint is not a url").with_source(e)
    })?;
    check_transport_security(&url).map_err(|e| {
        Error::config("authorization server endpoints must be https, or http on a loopback host")
            .with_source(e)
    })?;
    if url.fragment().is_some() {
        return Err(Error::config(
            "authorization server endpoints must not have a fragment",
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn issuer_checks_follow_rfc_9207() {
        let pleo = AuthorizationServer::pleo(&Environment::staging());
        assert!(pleo.check_issuer(None).is_ok());
        assert!(
            pleo.check_issuer(Some("https://auth.staging.pleo.io"))
                .is_ok()
        );
        assert!(
            pleo.check_issuer(Some("https://auth.staging.pleo.io/"))
                .is_ok()
        );
        let mixup = pleo.check_issuer(Some("https://evil.example")).unwrap_err();
        assert_eq!(mixup.kind(), &ErrorKind::IssuerMismatch);

        let strict = pleo.with_issuer("https://auth.staging.pleo.io/tenant");
        assert!(
            strict
                .check_issuer(Some("https://auth.staging.pleo.io/tenant"))
                .is_ok()
        );
        assert!(
            strict.check_issuer(None).is_err(),
            "required once configured"
        );
        assert!(
            strict
                .check_issuer(Some("https://auth.staging.pleo.io"))
                .is_err()
        );
    }

    #[test]
    fn endpoints_must_be_secure_urls() {
        for bad in [
            "http://login.example/token",
            "not a url",
            "https://user:pw@login.example/token",
            "https://login.example/token#x",
        ] {
            let err =
                AuthorizationServer::custom("https://login.example/authorize", bad).unwrap_err();
            assert_eq!(err.kind(), &ErrorKind::InvalidConfig, "{bad}");
        }
        assert!(
            AuthorizationServer::custom("http://127.0.0.1:9/a", "http://localhost:9/t").is_ok()
        );
    }
}
