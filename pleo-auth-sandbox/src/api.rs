//! The External API: `/v1/introspect`, installations and a few resource endpoints.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::config::Subject;
use crate::state::{ExportJob, Inner, Installation, KeyKind, Shared, grant_label};
use crate::time::rfc3339;
use crate::util::{Authorization, Params, authorization, digest, random_uuid, token_fingerprint};
use crate::{ApiRequestRecord, AuthMethod};

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

/// An External API error: JSON `{"status","error","message"}`, plus `WWW-Authenticate` for 401
/// and for a Bearer token's missing scope.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    challenge: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            challenge: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    fn with_challenge(mut self, challenge: String) -> Self {
        self.challenge = Some(challenge);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = json_response(
            self.status,
            &json!({ "status": self.status.as_u16(), "error": self.code, "message": self.message }),
        );
        if let Some(challenge) = self.challenge
            && let Ok(value) = HeaderValue::from_str(&challenge)
        {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    let mut response = (status, Body::from(value.to_string())).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    response
}

/// A recognised API credential.
struct AuthContext {
    method: AuthMethod,
    client_id: Option<String>,
    application_name: Option<String>,
    subject: Subject,
    scopes: Vec<String>,
    credential_id: String,
    /// The installation owner: the client ID, or `standalone-key:<key id>`.
    owner: String,
}

/// The environment an API key minted by a sandbox with this prefix names, if it has that shape.
fn key_environment<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    let rest = key.strip_prefix(prefix)?;
    let rest = rest
        .strip_prefix("ik_")
        .or_else(|| rest.strip_prefix("sk_"))?;
    rest.split_once('_').map(|(env, _)| env)
}

/// Authenticates an API request; returns the presented credential's fingerprint too.
fn authenticate(
    shared: &Shared,
    inner: &Inner,
    headers: &HeaderMap,
    now: SystemTime,
) -> (Option<String>, Result<AuthContext, ApiError>) {
    let bearer_error = |reason: &str| {
        ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", reason).with_challenge(format!(
            "Bearer realm=\"pleo\", error=\"invalid_token\", error_description=\"{reason}\""
        ))
    };
    match authorization(headers) {
        Authorization::Absent => (
            None,
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "authentication is required",
            )
            .with_challenge("Bearer realm=\"pleo\"".to_owned())),
        ),
        Authorization::Malformed(reason) => (None, Err(bearer_error(reason))),
        Authorization::Bearer(token) => {
            let fingerprint = Some(token_fingerprint(&token));
            let result = match inner.live_access(&token, now) {
                Ok((record, grant)) => Ok(AuthContext {
                    method: AuthMethod::OAuth2,
                    client_id: Some(grant.client_id.clone()),
                    application_name: inner.clients.get(&grant.client_id).map(|c| c.name.clone()),
                    subject: grant.subject,
                    scopes: record.scopes.clone(),
                    credential_id: grant_label(record.grant),
                    owner: grant.client_id.clone(),
                }),
                Err(reason) => Err(bearer_error(reason)),
            };
            (fingerprint, result)
        }
        Authorization::Basic { user, password } => {
            let fingerprint = Some(token_fingerprint(&user));
            let basic_error = |reason: String| {
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_api_key", reason)
                    .with_challenge("Basic realm=\"pleo\"".to_owned())
            };
            let ours = &shared.config.environment_name;
            let result = if !password.is_empty() {
                Err(basic_error(
                    "send the API key as the Basic username with an empty password".to_owned(),
                ))
            } else {
                match inner.keys.get(&digest(&user)) {
                    None => Err(basic_error(
                        match key_environment(&shared.config.secret_prefix, &user) {
                            Some(env) if env != ours => {
                                format!("the API key belongs to environment {env}, not {ours}")
                            }
                            _ => "the API key is not known".to_owned(),
                        },
                    )),
                    Some(key) if key.revoked => {
                        Err(basic_error("the API key was revoked".to_owned()))
                    }
                    Some(key) if key.expires_at.is_some_and(|at| now >= at) => {
                        Err(basic_error("the API key expired".to_owned()))
                    }
                    Some(key) => Ok(AuthContext {
                        method: AuthMethod::ApiKey,
                        client_id: match &key.kind {
                            KeyKind::Integrated { client_id } => Some(client_id.clone()),
                            KeyKind::Standalone => None,
                        },
                        application_name: Some(key.name.clone()),
                        subject: key.subject,
                        scopes: key.scopes.clone(),
                        credential_id: key.id.clone(),
                        owner: match &key.kind {
                            KeyKind::Integrated { client_id } => client_id.clone(),
                            KeyKind::Standalone => format!("standalone-key:{}", key.id),
                        },
                    }),
                }
            };
            (fingerprint, result)
        }
    }
}

/// How an endpoint uses `company_id`.
#[derive(Debug, Clone, Copy)]
enum CompanyRule {
    /// Not used.
    Ignore,
    /// Optional; without it the request covers every company of the credential.
    AllCovered,
    /// Exactly one company: the parameter, or the credential's only company.
    One,
}

/// The companies a request acts on.
enum Target {
    None,
    One(Uuid),
    All(Vec<Uuid>),
}

impl Target {
    fn companies(&self) -> Vec<Uuid> {
        match self {
            Self::None => Vec::new(),
            Self::One(id) => vec![*id],
            Self::All(ids) => ids.clone(),
        }
    }

    fn one(&self) -> Result<Uuid, ApiError> {
        match self {
            Self::One(id) => Ok(*id),
            _ => Err(ApiError::bad_request("company_id is required")),
        }
    }
}

fn resolve_company(
    shared: &Shared,
    ctx: &AuthContext,
    param: Option<&str>,
    rule: CompanyRule,
) -> Result<Target, ApiError> {
    if matches!(rule, CompanyRule::Ignore) {
        return Ok(Target::None);
    }
    if let Some(raw) = param {
        let id =
            Uuid::parse_str(raw).map_err(|_| ApiError::bad_request("company_id must be a UUID"))?;
        if !shared.config.covers(ctx.subject, id) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("the credential does not cover company {id}"),
            ));
        }
        return Ok(Target::One(id));
    }
    let covered = shared.config.covered(ctx.subject);
    match (rule, covered.as_slice()) {
        (CompanyRule::AllCovered, _) => Ok(Target::All(covered)),
        (_, [only]) => Ok(Target::One(*only)),
        _ => Err(ApiError::bad_request(
            "company_id is required: the credential covers several companies",
        )),
    }
}

/// One API request, as the handlers see it.
struct ApiRequest {
    method: Method,
    path: String,
    query: Params,
    headers: HeaderMap,
    body: Result<Bytes, StatusCode>,
}

impl ApiRequest {
    fn new(
        method: Method,
        uri: &Uri,
        headers: HeaderMap,
        body: Result<Bytes, BytesRejection>,
    ) -> Self {
        Self {
            method,
            path: uri.path().to_owned(),
            query: Params::parse(uri.query().unwrap_or_default().as_bytes()),
            headers,
            body: body.map_err(|r| r.status()),
        }
    }

    /// The JSON object body (an empty body is an empty object).
    fn json_object(&self) -> Result<Map<String, Value>, ApiError> {
        let body = self.body.as_ref().map_err(|status| {
            ApiError::new(*status, "bad_request", "the body could not be read")
        })?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Map::new());
        }
        match serde_json::from_slice(body) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(ApiError::bad_request("the body must be a JSON object")),
        }
    }
}

type ApiResult = Result<(StatusCode, Option<Value>), ApiError>;

/// Runs one API request: authentication (401), scope (403), company (403/400), the operation,
/// then the request log.
fn run<F>(
    shared: &Shared,
    req: &ApiRequest,
    scope: Option<&str>,
    rule: CompanyRule,
    op: F,
) -> Response
where
    F: FnOnce(&mut Inner, &AuthContext, Target, SystemTime) -> ApiResult,
{
    let mut inner = shared.lock();
    let now = inner.now();
    let (fingerprint, auth) = authenticate(shared, &inner, &req.headers, now);
    let company_param = req.query.get("company_id");
    let mut record = ApiRequestRecord {
        method: req.method.to_string(),
        path: req.path.clone(),
        company_id: match &company_param {
            Ok(p) => p.map(str::to_owned),
            Err(_) => Some("<repeated>".to_owned()),
        },
        auth_method: None,
        credential_fingerprint: fingerprint,
        credential_id: None,
        client_id: None,
        subject_urn: None,
        covered_companies: Vec::new(),
        status: 0,
    };
    let result = auth.and_then(|ctx| {
        record.auth_method = Some(ctx.method);
        record.credential_id = Some(ctx.credential_id.clone());
        record.client_id.clone_from(&ctx.client_id);
        record.subject_urn = Some(ctx.subject.urn());
        record.covered_companies = shared.config.covered(ctx.subject);
        if let Some(scope) = scope
            && !ctx.scopes.iter().any(|s| s == scope)
        {
            let error = ApiError::new(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                format!("the credential lacks the scope {scope}"),
            );
            return Err(match ctx.method {
                AuthMethod::OAuth2 => error.with_challenge(format!(
                    "Bearer realm=\"pleo\", error=\"insufficient_scope\", scope=\"{scope}\""
                )),
                AuthMethod::ApiKey => error,
            });
        }
        let param = company_param.map_err(|_| ApiError::bad_request("company_id is repeated"))?;
        let target = resolve_company(shared, &ctx, param, rule)?;
        op(&mut inner, &ctx, target, now)
    });
    let response = match result {
        Ok((status, Some(body))) => json_response(status, &body),
        Ok((status, None)) => status.into_response(),
        Err(error) => error.into_response(),
    };
    record.status = response.status().as_u16();
    inner.stats.api_requests += 1;
    inner.log.push(record);
    response
}

/// `GET /v1/introspect`.
pub(crate) async fn introspect(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let req = ApiRequest::new(method, &uri, headers, Ok(Bytes::new()));
    run(&shared, &req, None, CompanyRule::Ignore, |_, ctx, _, _| {
        let auth_method = match ctx.method {
            AuthMethod::OAuth2 => "OAUTH2",
            AuthMethod::ApiKey => "API_KEY",
        };
        Ok((
            StatusCode::OK,
            Some(json!({ "data": {
                "authMethod": auth_method,
                "clientId": ctx.client_id,
                "scope": ctx.scopes.join(" "),
                "applicationName": ctx.application_name,
                "subjectURN": ctx.subject.urn(),
            }})),
        ))
    })
}

/// `GET /v2/employees` (`users:read`).
pub(crate) async fn employees(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let req = ApiRequest::new(method, &uri, headers, Ok(Bytes::new()));
    run(
        &shared,
        &req,
        Some("users:read"),
        CompanyRule::AllCovered,
        |_, _, target, _| {
            let companies = target.companies();
            let data: Vec<Value> = shared
                .config
                .employees
                .iter()
                .filter(|e| companies.contains(&e.company))
                .map(|e| {
                    json!({
                        "id": e.id,
                        "companyId": e.company,
                        "firstName": e.first_name,
                        "lastName": e.last_name,
                        "email": e.email,
                    })
                })
                .collect();
            Ok((StatusCode::OK, Some(json!({ "data": data }))))
        },
    )
}

/// `GET /v1/vendors` (`vendors:read`).
pub(crate) async fn vendors(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let req = ApiRequest::new(method, &uri, headers, Ok(Bytes::new()));
    run(
        &shared,
        &req,
        Some("vendors:read"),
        CompanyRule::One,
        |_, _, target, _| {
            let company = target.one()?;
            let data: Vec<Value> = shared
                .config
                .vendors
                .iter()
                .filter(|v| v.company == company)
                .map(|v| json!({ "id": v.id, "companyId": v.company, "name": v.name }))
                .collect();
            Ok((StatusCode::OK, Some(json!({ "data": data }))))
        },
    )
}

fn export_job_json(job: &ExportJob) -> Value {
    json!({
        "id": job.id,
        "companyId": job.company,
        "status": "PENDING",
        "createdAt": rfc3339(job.created_at),
    })
}

/// `GET /v1/export-jobs` (`export-jobs:read`).
pub(crate) async fn list_export_jobs(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let req = ApiRequest::new(method, &uri, headers, Ok(Bytes::new()));
    run(
        &shared,
        &req,
        Some("export-jobs:read"),
        CompanyRule::One,
        |inner, _, target, _| {
            let company = target.one()?;
            let data: Vec<Value> = inner
                .export_jobs
                .iter()
                .filter(|j| j.company == company)
                .map(export_job_json)
                .collect();
            Ok((StatusCode::OK, Some(json!({ "data": data }))))
        },
    )
}

/// `POST /v1/export-jobs` (`export-jobs:write`).
pub(crate) async fn create_export_job(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req = ApiRequest::new(method, &uri, headers, body);
    run(
        &shared,
        &req,
        Some("export-jobs:write"),
        CompanyRule::One,
        |inner, _, target, now| {
            let company = target.one()?;
            req.json_object()?;
            let job = ExportJob {
                id: random_uuid().map_err(|_| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "server_error",
                        "randomness failed",
                    )
                })?,
                company,
                created_at: now,
            };
            let value = export_job_json(&job);
            inner.export_jobs.push(job);
            Ok((StatusCode::CREATED, Some(json!({ "data": value }))))
        },
    )
}

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
pub(crate) async fn installation(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req = ApiRequest::new(method, &uri, headers, body);
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
                        id: random_uuid().map_err(|_| {
                            ApiError::new(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "server_error",
                                "randomness failed",
                            )
                        })?,
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
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let req = ApiRequest::new(method, &uri, headers, Ok(Bytes::new()));
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
    fn key_environment_is_read_from_sandbox_keys() {
        assert_eq!(
            key_environment("X-", "X-sk_staging_abc_def"),
            Some("staging")
        );
        assert_eq!(
            key_environment("X-", "X-ik_production_abc"),
            Some("production")
        );
        assert_eq!(key_environment("X-", "Y-sk_staging_abc"), None);
        assert_eq!(key_environment("", "at_abc"), None);
    }

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
