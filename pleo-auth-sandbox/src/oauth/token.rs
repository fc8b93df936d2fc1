//! The token endpoint: code exchange with PKCE, and refresh with strict rotation and reuse
//! detection.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::client_auth::{authenticate_client, read_form, require_form};
use super::error::OAuthError;
use super::pkce::{is_valid_verifier, pkce_s256};
use crate::records::{IssuedTokens, grant_label};
use crate::request::{Params, split_scopes};
use crate::rewrite::IssuedTokenResponse;
use crate::secrets::{digest, token_fingerprint};
use crate::state::{Inner, Shared};
use crate::stats::RevocationCause;

/// The token endpoint.
pub(crate) async fn token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut inner = shared.lock();
    let (label, result) = match read_form(&body) {
        Err(e) => ("unparsed", Err(e)),
        Ok(params) => {
            let label = match params.get("grant_type") {
                Ok(Some("authorization_code")) => "authorization_code",
                Ok(Some("refresh_token")) => "refresh_token",
                Ok(Some(_)) => "unsupported",
                Ok(None) => "missing",
                Err(_) => "unparsed",
            };
            (label, token_grant(&shared, &mut inner, &headers, &params))
        }
    };
    inner
        .stats
        .token_requests
        .entry(label.to_owned())
        .or_default()
        .record(result.as_ref().map(|_| ()).map_err(|e| e.code));
    let tokens = match result {
        Ok(tokens) => tokens,
        Err(e) => return e.into_response(),
    };
    let shape = Arc::clone(&inner.shape);
    let rewrite = inner.token_rewrite.0.clone();
    if rewrite.is_some() {
        inner.stats.token_responses_rewritten += 1;
    }
    drop(inner);
    let body = shape.token_response(
        &tokens.access_token,
        &tokens.refresh_token,
        tokens.expires_in,
        &tokens.scopes,
    );
    if let Some(rewrite) = rewrite {
        // The grant is already rotated: whatever the hook sends, the old refresh token is spent.
        return rewrite(IssuedTokenResponse {
            grant_type: label.to_owned(),
            grant_id: grant_label(tokens.grant),
            body,
        })
        .into_response();
    }
    let mut response = axum::Json(body).into_response();
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn token_grant(
    shared: &Shared,
    inner: &mut Inner,
    headers: &HeaderMap,
    params: &Params,
) -> Result<IssuedTokens, OAuthError> {
    require_form(headers, params)?;
    let client_id = authenticate_client(inner, headers, params)?;
    match params.get("grant_type")? {
        Some("authorization_code") => exchange_code(shared, inner, &client_id, params),
        Some("refresh_token") => refresh(shared, inner, &client_id, params),
        Some(_) => Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "supported grant types: authorization_code, refresh_token",
        )),
        None => Err(OAuthError::invalid_request("grant_type is required")),
    }
}

/// `grant_type=authorization_code`.
fn exchange_code(
    shared: &Shared,
    inner: &mut Inner,
    client_id: &str,
    params: &Params,
) -> Result<IssuedTokens, OAuthError> {
    let code = params
        .get("code")?
        .ok_or_else(|| OAuthError::invalid_request("code is required"))?;
    let redirect_uri = params.get("redirect_uri")?;
    let verifier = params.get("code_verifier")?;
    let now = inner.now();
    let Some(record) = inner.codes.get_mut(&digest(code)) else {
        return Err(OAuthError::invalid_grant(
            "the authorization code is not valid",
        ));
    };
    if record.client_id != client_id {
        return Err(OAuthError::invalid_grant(
            "the authorization code was issued to another client",
        ));
    }
    if record.used {
        if let Some(grant) = record.grant {
            inner.revoke_grant(grant, RevocationCause::CodeReplay);
        }
        return Err(OAuthError::invalid_grant(
            "the authorization code was already used; tokens issued from it are revoked",
        ));
    }
    record.used = true;
    if now >= record.expires_at {
        return Err(OAuthError::invalid_grant("the authorization code expired"));
    }
    let Some(redirect_uri) = redirect_uri else {
        return Err(OAuthError::invalid_request("redirect_uri is required"));
    };
    if redirect_uri != record.redirect_uri {
        return Err(OAuthError::invalid_grant(
            "redirect_uri does not match the authorization request",
        ));
    }
    let Some(verifier) = verifier else {
        return Err(OAuthError::invalid_request(
            "code_verifier is required (PKCE)",
        ));
    };
    if !is_valid_verifier(verifier) || pkce_s256(verifier) != record.challenge {
        return Err(OAuthError::invalid_grant(
            "code_verifier does not match the code_challenge",
        ));
    }
    let (subject, scopes) = (record.subject, record.scopes.clone());
    let grant = inner.new_grant(client_id, subject, scopes.clone());
    if let Some(record) = inner.codes.get_mut(&digest(code)) {
        record.grant = Some(grant);
    }
    for company in shared.config.covered(subject) {
        inner
            .ensure_installation(client_id, Some(client_id), company, now)
            .map_err(OAuthError::server_error)?;
    }
    inner
        .issue_tokens(&shared.config, grant, scopes, now)
        .map_err(OAuthError::server_error)
}

/// `grant_type=refresh_token`, with strict rotation and reuse detection.
fn refresh(
    shared: &Shared,
    inner: &mut Inner,
    client_id: &str,
    params: &Params,
) -> Result<IssuedTokens, OAuthError> {
    let token = params
        .get("refresh_token")?
        .ok_or_else(|| OAuthError::invalid_request("refresh_token is required"))?;
    let requested_scope = params.get("scope")?;
    let now = inner.now();
    let Some(record) = inner.refresh.get(&digest(token)) else {
        return Err(OAuthError::invalid_grant("the refresh token is not valid"));
    };
    let (grant_id, generation, expires_at) = (record.grant, record.generation, record.expires_at);
    *inner
        .stats
        .refresh_token_uses
        .entry(token_fingerprint(token))
        .or_default() += 1;
    let Some(grant) = inner.grants.get(&grant_id) else {
        return Err(OAuthError::invalid_grant("the refresh token is not valid"));
    };
    if grant.client_id != client_id {
        return Err(OAuthError::invalid_grant(
            "the refresh token was issued to another client",
        ));
    }
    if generation != grant.generation {
        inner.stats.refresh_token_reuses += 1;
        inner.revoke_grant(grant_id, RevocationCause::RefreshTokenReuse);
        return Err(OAuthError::invalid_grant(
            "the refresh token was already used; the whole grant is revoked",
        ));
    }
    if grant.revoked.is_some() {
        return Err(OAuthError::invalid_grant("the grant was revoked"));
    }
    if now >= expires_at {
        inner.revoke_grant(grant_id, RevocationCause::RefreshTokenExpired);
        return Err(OAuthError::invalid_grant("the refresh token expired"));
    }
    let scopes = match requested_scope {
        None => grant.scopes.clone(),
        Some(s) => {
            let requested = split_scopes(s);
            if let Some(bad) = requested.iter().find(|s| !grant.scopes.contains(s)) {
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    format!("scope {bad} was not granted"),
                ));
            }
            if requested.is_empty() {
                grant.scopes.clone()
            } else {
                requested
            }
        }
    };
    if let Some(grant) = inner.grants.get_mut(&grant_id) {
        grant.generation += 1;
        grant.access_valid = true;
        grant.refreshes += 1;
    }
    inner.stats.refreshes += 1;
    inner
        .issue_tokens(&shared.config, grant_id, scopes, now)
        .map_err(OAuthError::server_error)
}
