//! Raw calls to the Pleo External API that the connect flows need before a
//! [`CredentialProvider`](pleo_auth_core::CredentialProvider) exists: who does this credential
//! belong to (`GET /v1/introspect`), and the installation of the integration
//! (`/v1/installations/me`).

use pleo_auth_core::{
    AuthorizationHeader, CompanyId, Environment, Error, ErrorKind, Result, ScopeSet, Subject,
};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;

use crate::transport::{DEFAULT_MAX_BODY_BYTES, read_body_capped, status_kind, transport_error};

/// How the introspected credential authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// An OAuth access token.
    OAuth2,
    /// An API key.
    ApiKey,
}

/// What `GET /v1/introspect` says about a credential.
#[derive(Debug, Clone)]
pub struct Introspection {
    /// OAuth token or API key.
    pub auth_method: AuthMethod,
    /// The OAuth client or integration, when Pleo names one.
    pub client_id: Option<String>,
    /// The scopes the credential carries.
    pub scopes: ScopeSet,
    /// The application name, when Pleo names one.
    pub application_name: Option<String>,
    /// The company or organisation the credential acts for.
    pub subject: Subject,
}

#[derive(Deserialize)]
struct IntrospectBody {
    data: IntrospectData,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IntrospectData {
    auth_method: String,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    application_name: Option<String>,
    #[serde(rename = "subjectURN")]
    subject_urn: Option<String>,
}

/// The `Authorization` header as a sensitive header value (hidden from reqwest's `Debug`).
pub fn sensitive_header(auth: &AuthorizationHeader) -> Result<HeaderValue> {
    let mut value = HeaderValue::from_str(auth.expose_secret()).map_err(|_| {
        Error::invalid_input("credential contains characters not allowed in a header")
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// `GET {api}/v1/introspect` with `auth`: which subject, method and scopes the credential has.
pub async fn introspect(
    client: &reqwest::Client,
    environment: &Environment,
    auth: &AuthorizationHeader,
) -> Result<Introspection> {
    let url = environment.api_url("/v1/introspect")?;
    let response = client
        .get(url)
        .header(AUTHORIZATION, sensitive_header(auth)?)
        .send()
        .await
        .map_err(transport_error)?;
    let status = response.status();
    let body = read_body_capped(response, DEFAULT_MAX_BODY_BYTES).await?;
    if !status.is_success() {
        return Err(Error::new(
            status_kind(status),
            format!("introspection answered HTTP {}", status.as_u16()),
        ));
    }
    let parsed: IntrospectBody = serde_json::from_slice(&body).map_err(|_| {
        Error::new(
            ErrorKind::Unexpected,
            "introspection response is not the documented JSON",
        )
    })?;
    let data = parsed.data;
    let auth_method = match data.auth_method.as_str() {
        "OAUTH2" => AuthMethod::OAuth2,
        "API_KEY" => AuthMethod::ApiKey,
        _ => {
            return Err(Error::new(
                ErrorKind::Unauthenticated,
                "introspection reports no authentication method",
            ));
        }
    };
    let subject = data
        .subject_urn
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Unexpected,
                "introspection response has no subjectURN",
            )
        })?
        .parse::<Subject>()?;
    let (scopes, dropped) = ScopeSet::from_server(data.scope.as_deref().unwrap_or(""));
    if dropped > 0 {
        tracing::info!(
            dropped,
            "introspection listed scope names that are not OAuth scope-tokens; ignored"
        );
    }
    Ok(Introspection {
        auth_method,
        client_id: data.client_id,
        scopes,
        application_name: data.application_name,
        subject,
    })
}

/// `POST {api}/v1/installations/me`: records the installation, as Pleo asks when API keys are
/// used. An installation that already exists (HTTP 409) counts as success.
pub async fn create_installation(
    client: &reqwest::Client,
    environment: &Environment,
    auth: &AuthorizationHeader,
    company: Option<CompanyId>,
) -> Result<()> {
    let url = installation_url(environment, "/v1/installations/me", company)?;
    let request = client
        .post(url)
        .json(&serde_json::json!({ "status": "ACTIVATED" }));
    send_installation(request, auth, 409, "creating").await
}

/// `DELETE {api}/v1/installations/me`: deletes the installation, which revokes every access
/// and refresh token of the client for that company. A missing installation (404) counts as
/// already deleted.
pub async fn delete_installation(
    client: &reqwest::Client,
    environment: &Environment,
    auth: &AuthorizationHeader,
    company: Option<CompanyId>,
) -> Result<()> {
    let url = installation_url(environment, "/v1/installations/me", company)?;
    send_installation(client.delete(url), auth, 404, "deleting").await
}

/// Sends an installation call; a success status or `also_ok` (the state already reached) is Ok.
async fn send_installation(
    request: reqwest::RequestBuilder,
    auth: &AuthorizationHeader,
    also_ok: u16,
    doing: &str,
) -> Result<()> {
    let response = request
        .header(AUTHORIZATION, sensitive_header(auth)?)
        .send()
        .await
        .map_err(transport_error)?;
    let status = response.status();
    if status.is_success() || status.as_u16() == also_ok {
        return Ok(());
    }
    Err(Error::new(
        status_kind(status),
        format!("{doing} the installation answered HTTP {}", status.as_u16()),
    ))
}

fn installation_url(
    environment: &Environment,
    path: &str,
    company: Option<CompanyId>,
) -> Result<url::Url> {
    let mut url = environment.api_url(path)?;
    if let Some(company) = company {
        url.query_pairs_mut()
            .append_pair("company_id", &company.to_string());
    }
    Ok(url)
}
