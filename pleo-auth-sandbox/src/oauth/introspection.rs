//! The token introspection endpoint (RFC 7662).

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use uuid::Uuid;

use super::client_auth::{authenticate_client, read_form};
use super::error::OAuthError;
use crate::records::Grant;
use crate::request::{Params, is_form};
use crate::state::{Inner, Shared};
use crate::time::unix_secs;

/// The token introspection endpoint (RFC 7662).
pub(crate) async fn introspect(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut inner = shared.lock();
    let result =
        read_form(&body).and_then(|params| introspect_token(&shared, &inner, &headers, &params));
    inner
        .stats
        .introspection_requests
        .record(result.as_ref().map(|_| ()).map_err(|e| e.code));
    drop(inner);
    match result {
        Ok(value) => {
            let mut response = axum::Json(value).into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(e) => e.into_response(),
    }
}

fn introspect_token(
    shared: &Shared,
    inner: &Inner,
    headers: &HeaderMap,
    params: &Params,
) -> Result<Value, OAuthError> {
    if !is_form(headers) {
        return Err(OAuthError::invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let client_id = authenticate_client(inner, headers, params)?;
    let token = params
        .get("token")?
        .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
    let now = inner.now();
    let audience = shared.audience();
    let issuer = shared.issuer(&inner.shape);
    let describe =
        |grant: &Grant, scopes: &[String], iat: SystemTime, exp: SystemTime, jti: Uuid| {
            json!({
                "active": true,
                "scope": scopes.join(" "),
                "client_id": grant.client_id,
                "sub": grant.subject.id().to_string(),
                "aud": audience,
                "iss": issuer,
                "iat": unix_secs(iat),
                "exp": unix_secs(exp),
                "jti": jti.to_string(),
                "urn:pleo:params:oauth:subject_urn": grant.subject.urn(),
            })
        };
    if let Ok((record, grant)) = inner.live_access(token, now)
        && grant.client_id == client_id
    {
        let mut value = describe(
            grant,
            &record.scopes,
            record.issued_at,
            record.expires_at,
            record.jti,
        );
        value["token_type"] = json!("Bearer");
        return Ok(value);
    }
    if let Some((record, grant)) = inner.live_refresh(token, now)
        && grant.client_id == client_id
    {
        return Ok(describe(
            grant,
            &grant.scopes,
            record.issued_at,
            record.expires_at,
            record.jti,
        ));
    }
    Ok(json!({ "active": false }))
}
