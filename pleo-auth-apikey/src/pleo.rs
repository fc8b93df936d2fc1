//! The Pleo calls both key kinds make: `/v1/introspect` and `/v1/installations/me`.

use std::fmt;

use pleo_auth_core::{
    ApiKey, AuthorizationHeader, CompanyId, Environment, ErrorKind as CoreKind, ScopeSet, Subject,
};
use pleo_auth_http::api::{self, AuthMethod, Introspection};
use pleo_auth_http::transport::{TransportConfig, http_client};

use crate::error::{Error, ErrorKind, Result};

/// An HTTP client bound to one environment.
#[derive(Clone)]
pub(crate) struct PleoApi {
    http: reqwest::Client,
    environment: Environment,
}

impl fmt::Debug for PleoApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PleoApi")
            .field("environment", self.environment.name())
            .field("api_base", &self.environment.api_base().as_str())
            .finish_non_exhaustive()
    }
}

impl PleoApi {
    /// Uses `http` if given, else the shared transport's client (no redirects, timeouts).
    pub(crate) fn new(environment: Environment, http: Option<reqwest::Client>) -> Result<Self> {
        let http = match http {
            Some(http) => http,
            None => http_client(&TransportConfig::default())
                .map_err(|source| Error::new(ErrorKind::Config).with_source(source))?,
        };
        Ok(Self { http, environment })
    }

    pub(crate) fn environment(&self) -> &Environment {
        &self.environment
    }

    /// Asks Pleo who the key belongs to. A 401 (or `authMethod: NONE`) is
    /// [`ErrorKind::KeyRejected`]; a credential that is not an API key is [`ErrorKind::NotAnApiKey`].
    pub(crate) async fn introspect_key(&self, key: &ApiKey) -> Result<Introspection> {
        let header = AuthorizationHeader::basic_api_key(key);
        let info = api::introspect(&self.http, &self.environment, &header)
            .await
            .map_err(|source| match source.kind() {
                CoreKind::Unauthenticated => Error::new(ErrorKind::KeyRejected).with_source(source),
                _ => Error::introspection(source),
            })?;
        if info.auth_method != AuthMethod::ApiKey {
            return Err(Error::new(ErrorKind::NotAnApiKey));
        }
        Ok(info)
    }

    /// Creates the installation for the key's company (an existing one counts as created).
    pub(crate) async fn create_installation(&self, key: &ApiKey) -> Result<()> {
        let header = AuthorizationHeader::basic_api_key(key);
        api::create_installation(&self.http, &self.environment, &header, None)
            .await
            .map_err(Error::installation)
    }
}

/// What an Integrated key must satisfy, checked against Pleo's introspection answer.
pub(crate) struct Expectations<'a> {
    pub(crate) company: Option<CompanyId>,
    pub(crate) required_scopes: &'a ScopeSet,
    pub(crate) pleo_client_id: Option<&'a str>,
}

/// Checks, in order: one company, the expected company, the expected client, the scopes.
/// Returns the key's company.
pub(crate) fn check_integrated(
    info: &Introspection,
    expect: &Expectations<'_>,
) -> Result<CompanyId> {
    // An Integrated key is issued to an integration; Pleo names none for a Standalone key.
    if info.client_id.is_none() {
        return Err(Error::new(ErrorKind::NotAnIntegratedKey));
    }
    let Subject::Company(company) = info.subject else {
        return Err(Error::new(ErrorKind::NotACompanyKey {
            subject: info.subject,
        }));
    };
    if let Some(expected) = expect.company
        && expected != company
    {
        return Err(Error::new(ErrorKind::WrongCompany {
            expected: Subject::Company(expected),
            actual: info.subject,
        }));
    }
    if let Some(expected) = expect.pleo_client_id
        && info.client_id.as_deref() != Some(expected)
    {
        return Err(Error::new(ErrorKind::WrongIntegration {
            expected: expected.to_owned(),
            actual: info.client_id.clone(),
        }));
    }
    if !info.scopes.contains_all(expect.required_scopes) {
        return Err(Error::new(ErrorKind::MissingScopes {
            missing: info.scopes.missing(expect.required_scopes),
            granted: info.scopes.clone(),
        }));
    }
    Ok(company)
}
