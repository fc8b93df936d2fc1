//! Learning which company or organisation a new access token acts for, as the configured
//! [`SubjectLookup`] says: Pleo's `GET /v1/introspect`, RFC 7662 token introspection, or the
//! integrator's own resolver.

use pleo_auth_core::{AccessToken, AuthorizationHeader, ErrorKind as CoreKind, ScopeSet, Subject};
use pleo_auth_http::api::{self, AuthMethod};
use url::Url;

use crate::error::{Error, ErrorKind, Result};
use crate::inner::Inner;
use crate::server::SubjectLookup;
use crate::token;

/// Learns the subject of a new access token (and the scopes, where the lookup reports them)
/// as the configured [`SubjectLookup`] says, retrying transient failures.
pub(crate) async fn resolve_subject(
    inner: &Inner,
    access: &AccessToken,
) -> Result<(Subject, Option<ScopeSet>)> {
    let mut attempt = 1;
    loop {
        let result = match inner.config.server().subject_lookup() {
            SubjectLookup::PleoIntrospect => pleo_introspect(inner, access).await,
            SubjectLookup::TokenIntrospection(endpoint) => {
                token_introspection(inner, endpoint, access).await
            }
            SubjectLookup::Custom(resolver) => resolver
                .resolve(access)
                .await
                .map(|subject| (subject, None))
                .map_err(|e| lookup_failed(&e).with_source(e)),
        };
        match result {
            Err(e) if e.is_retryable() && attempt < inner.policy.max_attempts => {
                tokio::time::sleep(inner.policy.backoff(attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

fn lookup_failed(e: &pleo_auth_core::Error) -> Error {
    let kind = match e.kind() {
        CoreKind::Unavailable => ErrorKind::Unavailable,
        CoreKind::RateLimited => ErrorKind::RateLimited { retry_after: None },
        _ => ErrorKind::UnexpectedResponse,
    };
    Error::new(kind, "learning the connected company failed")
}

/// `GET {api}/v1/introspect` with the new access token.
async fn pleo_introspect(
    inner: &Inner,
    access: &AccessToken,
) -> Result<(Subject, Option<ScopeSet>)> {
    let header = AuthorizationHeader::bearer(access);
    let introspection = api::introspect(&inner.http, inner.config.environment(), &header)
        .await
        .map_err(|e| lookup_failed(&e).with_source(e))?;
    if introspection.auth_method != AuthMethod::OAuth2 {
        return Err(Error::unexpected(
            "introspection does not describe an oauth token",
        ));
    }
    if let Some(client) = &introspection.client_id
        && client != inner.config.client_id().as_str()
    {
        return Err(Error::unexpected(
            "introspection names another client than ours",
        ));
    }
    Ok((introspection.subject, Some(introspection.scopes)))
}

/// RFC 7662 token introspection of the new access token.
async fn token_introspection(
    inner: &Inner,
    endpoint: &Url,
    access: &AccessToken,
) -> Result<(Subject, Option<ScopeSet>)> {
    let answer = post_introspection(inner, endpoint, access)
        .await
        .map_err(|e| lookup_failed(&e).with_source(e))?;
    let fields = match answer {
        serde_json::Value::Object(fields) => fields,
        _ => {
            return Err(Error::unexpected(
                "token introspection is not a json object",
            ));
        }
    };
    if fields.get("active") != Some(&serde_json::Value::Bool(true)) {
        return Err(Error::unexpected(
            "token introspection says the new token is not active",
        ));
    }
    if let Some(serde_json::Value::String(client)) = fields.get("client_id")
        && client != inner.config.client_id().as_str()
    {
        return Err(Error::unexpected(
            "token introspection names another client than ours",
        ));
    }
    let urn = ["urn:pleo:params:oauth:subject_urn", "sub"]
        .iter()
        .find_map(|name| fields.get(*name).and_then(serde_json::Value::as_str))
        .ok_or_else(|| Error::unexpected("token introspection names no subject"))?;
    let subject = urn.parse::<Subject>().map_err(|e| {
        Error::unexpected("token introspection names no pleo subject").with_source(e)
    })?;
    let scopes = fields
        .get("scope")
        .and_then(serde_json::Value::as_str)
        .map(|list| ScopeSet::from_server(list).0);
    Ok((subject, scopes))
}

async fn post_introspection(
    inner: &Inner,
    endpoint: &Url,
    access: &AccessToken,
) -> pleo_auth_core::Result<serde_json::Value> {
    use pleo_auth_http::transport::{
        DEFAULT_MAX_BODY_BYTES, read_body_capped, status_kind, transport_error,
    };
    let body = zeroize::Zeroizing::new(
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("token", access.expose_secret())
            .append_pair("token_type_hint", "access_token")
            .finish(),
    );
    let basic = token::basic_auth(inner.config.client_id(), inner.config.client_secret());
    let mut authorization = reqwest::header::HeaderValue::from_str(&basic).map_err(|_| {
        pleo_auth_core::Error::new(
            CoreKind::Config,
            "the client id or secret cannot be sent in a header",
        )
    })?;
    authorization.set_sensitive(true);
    let response = inner
        .http
        .post(endpoint.clone())
        .header(reqwest::header::AUTHORIZATION, authorization)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(body.as_str().to_owned())
        .send()
        .await
        .map_err(transport_error)?;
    let status = response.status();
    let bytes = read_body_capped(response, DEFAULT_MAX_BODY_BYTES).await?;
    if !status.is_success() {
        return Err(pleo_auth_core::Error::new(
            status_kind(status),
            format!("token introspection answered HTTP {}", status.as_u16()),
        ));
    }
    serde_json::from_slice(&bytes).map_err(|_| {
        pleo_auth_core::Error::new(CoreKind::Unexpected, "token introspection is not json")
    })
}
