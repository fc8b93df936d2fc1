//! The revocation endpoint (RFC 7009), when the server shape has one.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::client_auth::{authenticate_client, read_form, require_form};
use super::error::OAuthError;
use crate::request::Params;
use crate::secrets::digest;
use crate::state::{Inner, Shared};
use crate::stats::RevocationCause;

/// The revocation endpoint (RFC 7009), when the shape has one.
pub(crate) async fn revoke(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut inner = shared.lock();
    let result = read_form(&body).and_then(|params| revoke_token(&mut inner, &headers, &params));
    inner
        .stats
        .revocation_requests
        .record(result.as_ref().map(|_| ()).map_err(|e| e.code));
    drop(inner);
    match result {
        Ok(()) => {
            let mut response = StatusCode::OK.into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(e) => e.into_response(),
    }
}

/// Revokes `token`: a live refresh token ends its whole grant, a live access token ends itself.
/// Unknown, spent, expired or already revoked tokens change nothing (RFC 7009 §2.2: still 200).
fn revoke_token(inner: &mut Inner, headers: &HeaderMap, params: &Params) -> Result<(), OAuthError> {
    require_form(headers, params)?;
    let client_id = authenticate_client(inner, headers, params)?;
    let token = params
        .get("token")?
        .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
    // `token_type_hint` needs no reading: both kinds of token are searched (RFC 7009 §2.1).
    let now = inner.now();
    let key = digest(token);
    let other_client = || {
        OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "the token was issued to another client",
        )
    };
    if let Some(record) = inner.refresh.get(&key) {
        let grant_id = record.grant;
        let Some(grant) = inner.grants.get(&grant_id) else {
            return Ok(());
        };
        if grant.client_id != client_id {
            return Err(other_client());
        }
        if inner.live_refresh(token, now).is_some() {
            inner.revoke_grant(grant_id, RevocationCause::RevocationEndpoint);
        }
        return Ok(());
    }
    if let Some(record) = inner.access.get(&key) {
        let Some(grant) = inner.grants.get(&record.grant) else {
            return Ok(());
        };
        if grant.client_id != client_id {
            return Err(other_client());
        }
        if inner.live_access(token, now).is_ok() {
            if let Some(record) = inner.access.get_mut(&key) {
                record.revoked = true;
            }
            inner.stats.access_tokens_revoked += 1;
        }
    }
    Ok(())
}
