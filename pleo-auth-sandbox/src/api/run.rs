//! What every External API request goes through: authentication (401), scope (403), company
//! (403/400), the operation, then the request log.

use std::convert::Infallible;
use std::time::SystemTime;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::config::Subject;
use crate::records::{KeyKind, grant_label};
use crate::request::{Authorization, Params, authorization};
use crate::secrets::{RandomUnavailable, digest, token_fingerprint};
use crate::state::{Inner, Shared};
use crate::stats::{ApiRequestRecord, AuthMethod};

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
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            challenge: None,
        }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(super) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub(super) fn with_challenge(mut self, challenge: String) -> Self {
        self.challenge = Some(challenge);
        self
    }
}

impl From<RandomUnavailable> for ApiError {
    fn from(_: RandomUnavailable) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "randomness failed",
        )
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
pub(super) struct AuthContext {
    pub(super) method: AuthMethod,
    pub(super) client_id: Option<String>,
    pub(super) application_name: Option<String>,
    pub(super) subject: Subject,
    pub(super) scopes: Vec<String>,
    credential_id: String,
    /// The installation owner: the client ID, or `standalone-key:<key id>`.
    pub(super) owner: String,
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
pub(super) enum CompanyRule {
    /// Not used.
    Ignore,
    /// Optional; without it the request covers every company of the credential.
    AllCovered,
    /// Exactly one company: the parameter, or the credential's only company.
    One,
}

/// The companies a request acts on.
pub(super) enum Target {
    None,
    One(Uuid),
    All(Vec<Uuid>),
}

impl Target {
    pub(super) fn companies(&self) -> Vec<Uuid> {
        match self {
            Self::None => Vec::new(),
            Self::One(id) => vec![*id],
            Self::All(ids) => ids.clone(),
        }
    }

    pub(super) fn one(&self) -> Result<Uuid, ApiError> {
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

/// One API request, as the handlers see it (an extractor: the body is read up to the server's
/// limit, and a body that could not be read is an error only for handlers that want it).
pub(crate) struct ApiRequest {
    pub(super) method: Method,
    path: String,
    query: Params,
    headers: HeaderMap,
    body: Result<Bytes, StatusCode>,
}

impl<S: Send + Sync> FromRequest<S> for ApiRequest {
    type Rejection = Infallible;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let method = request.method().clone();
        let uri = request.uri().clone();
        let headers = request.headers().clone();
        let body = Bytes::from_request(request, state).await;
        Ok(Self::new(method, &uri, headers, body))
    }
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
    pub(super) fn json_object(&self) -> Result<Map<String, Value>, ApiError> {
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

pub(super) type ApiResult = Result<(StatusCode, Option<Value>), ApiError>;

/// Runs one API request: authentication (401), scope (403), company (403/400), the operation,
/// then the request log.
pub(super) fn run<F>(
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
}
