//! The `/_sandbox/` administration endpoints (JSON), for sandboxes in another process.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::admin::{
    AdminError, AdvanceClockRequest, AutoApproveRequest, ClientInfo, ClockResponse, FaultRequest,
    GrantIdRequest, GrantIdResponse, MintApiKeyRequest, MintApiKeyResponse, RevokeApiKeyRequest,
    RevokeRequest, RevokeResponse, RevokeWhat, SeedResponse,
};
use crate::state::Shared;
use crate::time::unix_secs;
use crate::{ClientRegistration, Fault, SandboxError, ServerShape};

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(AdminError {
            error: code.to_owned(),
            message,
        }),
    )
        .into_response()
}

fn sandbox_error(e: &SandboxError) -> Response {
    let code = match e {
        SandboxError::UnknownClient(_) => "unknown_client",
        SandboxError::UnknownSubject(_) => "unknown_subject",
        SandboxError::NotACompany(_) => "not_a_company",
        _ => "bad_request",
    };
    error(StatusCode::BAD_REQUEST, code, e.to_string())
}

/// A refused administration request.
struct Refused {
    status: StatusCode,
    message: String,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        error(self.status, "bad_request", self.message)
    }
}

fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, Refused> {
    let body = body.map_err(|r| Refused {
        status: r.status(),
        message: "the body could not be read".to_owned(),
    })?;
    serde_json::from_slice(&body).map_err(|e| Refused {
        status: StatusCode::BAD_REQUEST,
        message: format!("invalid JSON body: {e}"),
    })
}

type S = State<Arc<Shared>>;

/// `GET /_sandbox/stats`.
pub(crate) async fn stats(State(shared): S) -> Response {
    Json(shared.stats()).into_response()
}

/// `POST /_sandbox/stats/reset`.
pub(crate) async fn reset_stats(State(shared): S) -> StatusCode {
    shared.reset_stats();
    StatusCode::NO_CONTENT
}

/// `GET /_sandbox/requests`.
pub(crate) async fn requests(State(shared): S) -> Response {
    Json(shared.request_log()).into_response()
}

/// `DELETE /_sandbox/requests`.
pub(crate) async fn clear_requests(State(shared): S) -> StatusCode {
    shared.clear_request_log();
    StatusCode::NO_CONTENT
}

/// `POST /_sandbox/api-keys`.
pub(crate) async fn mint_api_key(
    State(shared): S,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request: MintApiKeyRequest = match parse(body) {
        Ok(r) => r,
        Err(refused) => return refused.into_response(),
    };
    let minted = match request {
        MintApiKeyRequest::Integrated { client_id, company } => {
            shared.mint_integrated_key(&client_id, company)
        }
        MintApiKeyRequest::Standalone {
            subject,
            scopes,
            expires_in_secs,
            name,
        } => shared.mint_standalone_key(
            subject,
            scopes,
            expires_in_secs.map(Duration::from_secs),
            name,
        ),
    };
    match minted {
        Ok(api_key) => (StatusCode::CREATED, Json(MintApiKeyResponse { api_key })).into_response(),
        Err(e) => sandbox_error(&e),
    }
}

/// `POST /_sandbox/api-keys/revoke`.
pub(crate) async fn revoke_api_key(
    State(shared): S,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match parse::<RevokeApiKeyRequest>(body) {
        Ok(r) => Json(RevokeResponse {
            revoked: usize::from(shared.revoke_api_key(&r.api_key)),
        })
        .into_response(),
        Err(refused) => refused.into_response(),
    }
}

/// `POST /_sandbox/faults`.
pub(crate) async fn inject_fault(
    State(shared): S,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request: FaultRequest = match parse(body) {
        Ok(r) => r,
        Err(refused) => return refused.into_response(),
    };
    let fault = Fault::from(request.fault);
    if let Fault::ServerError(status) = fault
        && !(500..=599).contains(&status)
    {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "server_error status must be 500 to 599".to_owned(),
        );
    }
    shared.inject_fault(request.endpoint, fault, request.count);
    StatusCode::NO_CONTENT.into_response()
}

/// `DELETE /_sandbox/faults`.
pub(crate) async fn clear_faults(State(shared): S) -> StatusCode {
    shared.clear_faults();
    StatusCode::NO_CONTENT
}

fn clock_response(shared: &Shared) -> Json<ClockResponse> {
    let (now, offset) = shared.clock();
    Json(ClockResponse {
        now_unix: unix_secs(now),
        offset_millis: u64::try_from(offset.as_millis()).unwrap_or(u64::MAX),
    })
}

/// `GET /_sandbox/clock`.
pub(crate) async fn clock(State(shared): S) -> Response {
    clock_response(&shared).into_response()
}

/// `POST /_sandbox/clock/advance`.
pub(crate) async fn advance_clock(
    State(shared): S,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match parse::<AdvanceClockRequest>(body) {
        Ok(r) => {
            shared.advance_clock(Duration::from_secs(r.secs) + Duration::from_millis(r.millis));
            clock_response(&shared).into_response()
        }
        Err(refused) => refused.into_response(),
    }
}

/// `POST /_sandbox/revoke`.
pub(crate) async fn revoke(State(shared): S, body: Result<Bytes, BytesRejection>) -> Response {
    match parse::<RevokeRequest>(body) {
        Ok(r) => {
            let revoked = match r.what {
                RevokeWhat::Grant => shared.revoke_grants(&r.target),
                RevokeWhat::AccessTokens => shared.revoke_access_tokens(&r.target),
            };
            Json(RevokeResponse { revoked }).into_response()
        }
        Err(refused) => refused.into_response(),
    }
}

/// `POST /_sandbox/grant-id`.
pub(crate) async fn grant_id(State(shared): S, body: Result<Bytes, BytesRejection>) -> Response {
    match parse::<GrantIdRequest>(body) {
        Ok(r) => Json(GrantIdResponse {
            grant_id: shared.grant_id(&r.token),
        })
        .into_response(),
        Err(refused) => refused.into_response(),
    }
}

/// `PUT /_sandbox/auto-approve`.
pub(crate) async fn auto_approve(
    State(shared): S,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match parse::<AutoApproveRequest>(body) {
        Ok(r) => match shared.set_auto_approve(r.subject) {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => sandbox_error(&e),
        },
        Err(refused) => refused.into_response(),
    }
}

/// `POST /_sandbox/clients`.
pub(crate) async fn register_client(
    State(shared): S,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match parse::<ClientRegistration>(body) {
        Ok(client) => match shared.register_client(client) {
            Ok(()) => StatusCode::CREATED.into_response(),
            Err(e) => sandbox_error(&e),
        },
        Err(refused) => refused.into_response(),
    }
}

/// `GET /_sandbox/seed`.
pub(crate) async fn seed(State(shared): S) -> Response {
    let mut clients: Vec<ClientInfo> = shared
        .lock()
        .clients
        .values()
        .map(|c| ClientInfo {
            id: c.id.clone(),
            name: c.name.clone(),
            redirect_uris: c.redirect_uris.clone(),
            scopes: c.scopes.clone(),
            accept_client_secret_post: c.accept_client_secret_post,
        })
        .collect();
    clients.sort_by(|a, b| a.id.cmp(&b.id));
    Json(SeedResponse {
        environment_name: shared.config.environment_name.clone(),
        organisations: shared.config.organisations.clone(),
        companies: shared.config.companies.clone(),
        clients,
    })
    .into_response()
}

/// `GET /_sandbox/server-shape`.
pub(crate) async fn server_shape(State(shared): S) -> Response {
    Json(ServerShape::clone(&shared.shape())).into_response()
}

/// `PUT /_sandbox/server-shape`.
pub(crate) async fn set_server_shape(
    State(shared): S,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match parse::<ServerShape>(body) {
        Ok(shape) => match shared.set_shape(shape) {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => sandbox_error(&e),
        },
        Err(refused) => refused.into_response(),
    }
}
