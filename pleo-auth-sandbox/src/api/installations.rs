//! The installation endpoints: `/v1/installations/me` and `/v1/installations/me:activate`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::run::{ApiError, ApiRequest, CompanyRule, run};
use crate::config::Subject;
use crate::records::Installation;
use crate::secrets::random_uuid;
use crate::state::Shared;
use crate::time::rfc3339;

/// Installation statuses Pleo documents.
const STATUSES: [&str; 5] = [
    "AUTHORIZED",
    "ACTIVATED",
    "PENDING_INTEGRATION",
    "INACTIVE",
    "ERROR",
];
/// Installation error codes Pleo documents.
const ERROR_CODES: [&str; 2] = ["NOT_ENTITLED", "AUTH_ERROR"];

fn installation_json(i: &Installation) -> Value {
    json!({
        "id": i.id,
        "clientId": i.client_id,
        "resource": Subject::Company(i.company).urn(),
        "status": i.status,
        "errorCode": i.error_code,
        "metadata": i.metadata,
        "createdAt": rfc3339(i.created_at),
        "updatedAt": rfc3339(i.updated_at),
    })
}

/// Validates installation metadata: at most 50 string pairs, keys up to 40 and values up to
/// 500 characters.
fn metadata(value: &Value) -> Result<Map<String, Value>, ApiError> {
    let Value::Object(map) = value else {
        return Err(ApiError::bad_request("metadata must be an object"));
    };
    if map.len() > 50 {
        return Err(ApiError::bad_request("metadata holds at most 50 pairs"));
    }
    for (k, v) in map {
        let Value::String(v) = v else {
            return Err(ApiError::bad_request("metadata values must be strings"));
        };
        if k.chars().count() > 40 || v.chars().count() > 500 {
            return Err(ApiError::bad_request(
                "metadata keys are at most 40 and values at most 500 characters",
            ));
        }
    }
    Ok(map.clone())
}

fn status_field(body: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    match body.get("status") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if STATUSES.contains(&s.as_str()) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_request(format!(
            "status must be one of {}",
            STATUSES.join(", ")
        ))),
    }
}

/// `GET`, `POST`, `PUT` and `DELETE /v1/installations/me`.
pub(crate) async fn installation(State(shared): State<Arc<Shared>>, req: ApiRequest) -> Response {
    run(
        &shared,
        &req,
        None,
        CompanyRule::One,
        |inner, ctx, target, now| {
            let company = target.one()?;
            let key = (ctx.owner.clone(), company);
            let missing = || ApiError::not_found("no installation for this credential and company");
            match req.method {
                Method::GET => {
                    let i = inner.installations.get(&key).ok_or_else(missing)?;
                    Ok((
                        StatusCode::OK,
                        Some(json!({ "data": installation_json(i) })),
                    ))
                }
                Method::POST => {
                    let body = req.json_object()?;
                    if inner.installations.contains_key(&key) {
                        return Err(ApiError::new(
                            StatusCode::CONFLICT,
                            "conflict",
                            "an installation already exists; use PUT to update it",
                        ));
                    }
                    let status = status_field(&body)?.unwrap_or_else(|| "ACTIVATED".to_owned());
                    let metadata = body
                        .get("metadata")
                        .map(metadata)
                        .transpose()?
                        .unwrap_or_default();
                    let installation = Installation {
                        id: random_uuid()?,
                        client_id: ctx.client_id.clone(),
                        company,
                        status,
                        error_code: None,
                        metadata,
                        created_at: now,
                        updated_at: now,
                    };
                    let value = installation_json(&installation);
                    inner.installations.insert(key, installation);
                    Ok((StatusCode::CREATED, Some(json!({ "data": value }))))
                }
                Method::PUT => {
                    let body = req.json_object()?;
                    let status = status_field(&body)?;
                    let error_code = match body.get("errorCode") {
                        None | Some(Value::Null) => None,
                        Some(Value::String(s)) if ERROR_CODES.contains(&s.as_str()) => {
                            Some(s.clone())
                        }
                        Some(_) => {
                            return Err(ApiError::bad_request(
                                "errorCode must be NOT_ENTITLED or AUTH_ERROR",
                            ));
                        }
                    };
                    let metadata = body.get("metadata").map(metadata).transpose()?;
                    let i = inner.installations.get_mut(&key).ok_or_else(missing)?;
                    let new_status = status.unwrap_or_else(|| i.status.clone());
                    if error_code.is_some() && new_status != "ERROR" {
                        return Err(ApiError::bad_request("errorCode requires status ERROR"));
                    }
                    if new_status != "ERROR" {
                        i.error_code = None;
                    } else if error_code.is_some() {
                        i.error_code = error_code;
                    }
                    i.status = new_status;
                    if let Some(m) = metadata {
                        i.metadata = m;
                    }
                    i.updated_at = now;
                    Ok((
                        StatusCode::OK,
                        Some(json!({ "data": installation_json(i) })),
                    ))
                }
                Method::DELETE => {
                    if inner.delete_installation(&shared.config, &ctx.owner, company) {
                        Ok((StatusCode::NO_CONTENT, None))
                    } else {
                        Err(missing())
                    }
                }
                _ => Err(ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "use GET, POST, PUT or DELETE",
                )),
            }
        },
    )
}

/// `POST /v1/installations/me:activate`.
pub(crate) async fn activate_installation(
    State(shared): State<Arc<Shared>>,
    req: ApiRequest,
) -> Response {
    run(
        &shared,
        &req,
        None,
        CompanyRule::One,
        |inner, ctx, target, now| {
            let company = target.one()?;
            let i = inner
                .installations
                .get_mut(&(ctx.owner.clone(), company))
                .ok_or_else(|| {
                    ApiError::not_found("no installation for this credential and company")
                })?;
            i.status = "ACTIVATED".to_owned();
            i.error_code = None;
            i.updated_at = now;
            Ok((
                StatusCode::OK,
                Some(json!({ "data": installation_json(i) })),
            ))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_limits_are_enforced() {
        assert!(metadata(&json!({"a": "b"})).is_ok());
        assert!(metadata(&json!({"a": 1})).is_err());
        assert!(metadata(&json!({"k".repeat(41): "v"})).is_err());
        assert!(metadata(&json!({"k": "v".repeat(501)})).is_err());
        let many: Map<String, Value> = (0..51).map(|i| (i.to_string(), json!("v"))).collect();
        assert!(metadata(&Value::Object(many)).is_err());
    }
}
