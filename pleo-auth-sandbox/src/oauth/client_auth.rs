//! Reading the form of a token, introspection or revocation request and authenticating its
//! client (`client_secret_basic`, or `client_secret_post` where the client allows it).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;

use super::error::OAuthError;
use crate::request::{Authorization, Params, authorization, form_decode, is_form};
use crate::state::Inner;

/// Authenticates the client of a token or introspection request; returns its ID.
pub(super) fn authenticate_client(
    inner: &Inner,
    headers: &HeaderMap,
    params: &Params,
) -> Result<String, OAuthError> {
    let body_id = params.get("client_id")?;
    let body_secret = params.get("client_secret")?;
    let matches = |given: &str, expected: &str| {
        given == expected || form_decode(given).is_some_and(|d| d == expected)
    };
    let find = |given: &str| {
        inner
            .clients
            .values()
            .find(|c| matches(given, &c.id))
            .ok_or_else(|| OAuthError::invalid_client("client authentication failed"))
    };
    match authorization(headers) {
        Authorization::Basic { user, password } => {
            if body_secret.is_some() {
                return Err(OAuthError::invalid_request(
                    "use exactly one client authentication method",
                ));
            }
            let client = find(&user)?;
            if !matches(&password, &client.secret) {
                return Err(OAuthError::invalid_client("client authentication failed"));
            }
            if body_id.is_some_and(|id| id != client.id) {
                return Err(OAuthError::invalid_client(
                    "client_id does not match the authenticated client",
                ));
            }
            Ok(client.id.clone())
        }
        Authorization::Absent => match (body_id, body_secret) {
            (Some(id), Some(secret)) => {
                let client = find(id)?;
                if !client.accept_client_secret_post {
                    return Err(OAuthError::invalid_client(
                        "client_secret_post is not supported; authenticate with HTTP Basic (client_secret_basic)",
                    ));
                }
                if secret != client.secret {
                    return Err(OAuthError::invalid_client("client authentication failed"));
                }
                Ok(client.id.clone())
            }
            _ => Err(OAuthError::invalid_client(
                "client authentication is required (HTTP Basic)",
            )),
        },
        Authorization::Bearer(_) | Authorization::Malformed(_) => Err(OAuthError::invalid_client(
            "the Authorization header is not valid HTTP Basic client authentication",
        )),
    }
}

/// The form parameters of a request body, or the error for a body that could not be read.
pub(super) fn read_form(body: &Result<Bytes, BytesRejection>) -> Result<Params, OAuthError> {
    match body {
        Ok(body) => Ok(Params::parse(body)),
        Err(rejection) => Err(OAuthError::new(
            rejection.status(),
            "invalid_request",
            "the request body could not be read",
        )),
    }
}

/// Refuses a body that is not declared form-encoded or that repeats a parameter.
pub(super) fn require_form(headers: &HeaderMap, params: &Params) -> Result<(), OAuthError> {
    if !is_form(headers) {
        return Err(OAuthError::invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    match params.first_repeated() {
        Some(name) => Err(OAuthError::invalid_request(format!(
            "parameter {name} is repeated"
        ))),
        None => Ok(()),
    }
}
