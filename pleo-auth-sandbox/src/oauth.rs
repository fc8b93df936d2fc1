//! The authorization server: the authorization, token, introspection and revocation endpoints,
//! at the paths of the current [`ServerShape`](crate::ServerShape).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use url::{Host, Url};

use crate::config::Subject;
use crate::html::{ConsentPage, consent_page, error_page};
use crate::rewrite::IssuedTokenResponse;
use crate::state::{CodeRecord, Inner, IssuedTokens, PendingConsent, Shared, grant_label};
use crate::time::unix_secs;
use crate::util::{
    Authorization, Params, RandomUnavailable, authorization, digest, form_decode, is_form,
    is_valid_s256_challenge, is_valid_verifier, pkce_s256, random_secret, split_scopes,
    token_fingerprint,
};
use crate::{ClientRegistration, RevocationCause, ServerShape};

/// An RFC 6749 §5.2 error answer.
#[derive(Debug)]
pub(crate) struct OAuthError {
    status: StatusCode,
    code: &'static str,
    description: String,
}

impl OAuthError {
    fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            code,
            description: description.into(),
        }
    }

    fn invalid_request(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", d)
    }

    fn invalid_client(d: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", d)
    }

    fn invalid_grant(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", d)
    }

    fn server_error(_: RandomUnavailable) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "the random number generator failed",
        )
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            axum::Json(json!({ "error": self.code, "error_description": self.description })),
        )
            .into_response();
        let h = response.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"pleo\""),
            );
        }
        response
    }
}

impl From<crate::util::RepeatedParam> for OAuthError {
    fn from(p: crate::util::RepeatedParam) -> Self {
        Self::invalid_request(format!("parameter {} is repeated", p.0))
    }
}

/// Whether `requested` may be used as a redirect URI of a client registered with `registered`:
/// exact match, or for a loopback `http` URI the same URI with any port (RFC 8252 §7.3).
pub(crate) fn redirect_uri_matches(registered: &[String], requested: &str) -> bool {
    if registered.iter().any(|r| r == requested) {
        return true;
    }
    let Ok(req) = Url::parse(requested) else {
        return false;
    };
    if req.scheme() != "http"
        || !is_loopback(&req)
        || req.fragment().is_some()
        || !req.username().is_empty()
        || req.password().is_some()
    {
        return false;
    }
    registered.iter().any(|r| {
        Url::parse(r).is_ok_and(|reg| {
            reg.scheme() == "http"
                && is_loopback(&reg)
                && reg.username().is_empty()
                && reg.password().is_none()
                && reg.host() == req.host()
                && reg.path() == req.path()
                && reg.query() == req.query()
        })
    })
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d == "localhost",
        Some(Host::Ipv4(ip)) => ip == Ipv4Addr::LOCALHOST,
        Some(Host::Ipv6(ip)) => ip == Ipv6Addr::LOCALHOST,
        None => false,
    }
}

/// A 302 to `uri` with extra query parameters, and `iss` (RFC 9207) when the server has an
/// issuer. `uri` is always a registered redirect URI.
fn redirect_with(uri: &str, pairs: &[(&str, &str)], issuer: Option<&str>) -> Response {
    let Ok(mut url) = Url::parse(uri) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Invalid redirect URI",
            "The redirect URI cannot be parsed.",
        );
    };
    {
        let mut query = url.query_pairs_mut();
        for (k, v) in pairs {
            query.append_pair(k, v);
        }
        if let Some(issuer) = issuer {
            query.append_pair("iss", issuer);
        }
    }
    let Ok(location) = HeaderValue::from_str(url.as_str()) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Invalid redirect URI",
            "The redirect URI cannot be used in a header.",
        );
    };
    let mut response = StatusCode::FOUND.into_response();
    let h = response.headers_mut();
    h.insert(header::LOCATION, location);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// An error sent back to the client's redirect URI (RFC 6749 §4.1.2.1).
fn redirect_error(
    uri: &str,
    code: &str,
    description: &str,
    state: Option<&str>,
    issuer: Option<&str>,
) -> Response {
    let mut pairs = vec![("error", code), ("error_description", description)];
    if let Some(state) = state {
        pairs.push(("state", state));
    }
    redirect_with(uri, &pairs, issuer)
}

/// A validated authorization request.
struct Validated {
    state: String,
    challenge: String,
    scopes: Vec<String>,
    subject: Option<Subject>,
}

/// Checks everything after `client_id` and `redirect_uri`; errors go to the redirect URI.
fn validate_authorization(
    shared: &Shared,
    shape: &ServerShape,
    client: &ClientRegistration,
    params: &Params,
) -> Result<Validated, (&'static str, String)> {
    let invalid = |d: &str| Err(("invalid_request", d.to_owned()));
    if let Some(name) = params.first_repeated() {
        return Err(("invalid_request", format!("parameter {name} is repeated")));
    }
    let get = |name: &str| params.get(name).ok().flatten().filter(|v| !v.is_empty());
    match get("response_type") {
        None => return invalid("response_type is required"),
        Some("code") => {}
        Some(_) => {
            return Err((
                "unsupported_response_type",
                "only response_type=code is supported".to_owned(),
            ));
        }
    }
    let Some(state) = get("state") else {
        return invalid("state is required");
    };
    let Some(challenge) = get("code_challenge") else {
        return invalid("PKCE is required: code_challenge is missing");
    };
    match get("code_challenge_method") {
        Some("S256") => {}
        None => return invalid("PKCE is required: code_challenge_method must be S256"),
        Some("plain") => return invalid("PKCE method plain is not supported; use S256"),
        Some(_) => return invalid("code_challenge_method must be S256"),
    }
    if !is_valid_s256_challenge(challenge) {
        return invalid("code_challenge must be 43 base64url characters (S256)");
    }
    let Some(scope) = get("scope") else {
        return invalid("scope is required");
    };
    let scopes = split_scopes(scope);
    if scopes.is_empty() {
        return invalid("scope is required");
    }
    if let Some(bad) = scopes
        .iter()
        .find(|s| !client.scopes.contains(s) && !shape.is_extra_scope(s))
    {
        return Err((
            "invalid_scope",
            format!("scope {bad} is not allowed for this client"),
        ));
    }
    let subject = match get("urn_pleo_params_oauth_subject") {
        None => None,
        Some(urn) => match Subject::parse_urn(urn) {
            Some(s) if shared.config.knows(s) => Some(s),
            _ => {
                return invalid(
                    "urn_pleo_params_oauth_subject names no known company or organisation",
                );
            }
        },
    };
    Ok(Validated {
        state: state.to_owned(),
        challenge: challenge.to_owned(),
        scopes,
        subject,
    })
}

/// What an authorization code is issued for.
struct NewCode<'a> {
    client_id: &'a str,
    redirect_uri: &'a str,
    challenge: String,
    scopes: Vec<String>,
    subject: Subject,
}

/// Issues an authorization code.
fn issue_code(
    shared: &Shared,
    inner: &mut Inner,
    new: NewCode<'_>,
    now: SystemTime,
) -> Result<String, RandomUnavailable> {
    let code = random_secret(&shared.config.secret_prefix, "ac_")?;
    inner.codes.insert(
        digest(&code),
        CodeRecord {
            client_id: new.client_id.to_owned(),
            redirect_uri: new.redirect_uri.to_owned(),
            challenge: new.challenge,
            scopes: new.scopes,
            subject: new.subject,
            expires_at: now + shared.config.code_ttl,
            used: false,
            grant: None,
        },
    );
    inner.stats.codes_issued += 1;
    inner.prune(now);
    Ok(code)
}

fn random_failure_page() -> Response {
    error_page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Server error",
        "The random number generator failed.",
    )
}

/// The authorization endpoint, `GET`.
pub(crate) async fn authorize_get(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
    let params = Params::parse(uri.query().unwrap_or_default().as_bytes());
    let mut inner = shared.lock();
    inner.stats.authorization_requests += 1;
    let shape = Arc::clone(&inner.shape);
    let issuer = shape.issuer.as_deref();
    let client = match params.get("client_id") {
        Ok(Some(id)) => inner.clients.get(id).cloned(),
        _ => None,
    };
    let Some(client) = client else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Unknown client",
            "The client_id parameter is missing, repeated or names no registered client.",
        );
    };
    let redirect_uri = match params.get("redirect_uri") {
        Ok(Some(r)) if redirect_uri_matches(&client.redirect_uris, r) => r.to_owned(),
        _ => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "Invalid redirect URI",
                "The redirect_uri parameter is missing, repeated or not registered for this client.",
            );
        }
    };
    let state = params.get("state").ok().flatten().map(str::to_owned);
    let request = match validate_authorization(&shared, &shape, &client, &params) {
        Ok(v) => v,
        Err((code, description)) => {
            return redirect_error(&redirect_uri, code, &description, state.as_deref(), issuer);
        }
    };
    let now = inner.now();
    let auto = inner
        .auto_approve
        .and_then(|id| shared.config.subject(id))
        .map(|default| request.subject.unwrap_or(default));
    if let Some(subject) = auto {
        let new = NewCode {
            client_id: &client.id,
            redirect_uri: &redirect_uri,
            challenge: request.challenge,
            scopes: request.scopes,
            subject,
        };
        return match issue_code(&shared, &mut inner, new, now) {
            Ok(code) => redirect_with(
                &redirect_uri,
                &[("code", &code), ("state", &request.state)],
                issuer,
            ),
            Err(_) => random_failure_page(),
        };
    }
    let Ok(consent_id) = random_secret(&shared.config.secret_prefix, "cs_") else {
        return random_failure_page();
    };
    inner.consents.insert(
        digest(&consent_id),
        PendingConsent {
            client_id: client.id.clone(),
            redirect_uri,
            state: request.state,
            challenge: request.challenge,
            scopes: request.scopes.clone(),
            expires_at: now + shared.config.consent_ttl,
        },
    );
    inner.prune(now);
    drop(inner);
    consent_page(
        &shared.config,
        &ConsentPage {
            client_name: &client.name,
            scopes: &request.scopes,
            consent_id: &consent_id,
            preselect: request.subject,
            action: &shape.authorize_path,
        },
    )
}

/// The authorization endpoint, `POST`: the consent form's Allow or Deny.
pub(crate) async fn authorize_post(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Ok(body) = body else {
        return error_page(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request too large",
            "The form could not be read.",
        );
    };
    let mut inner = shared.lock();
    inner.stats.authorization_requests += 1;
    let shape = Arc::clone(&inner.shape);
    let issuer = shape.issuer.as_deref();
    if !is_form(&headers) {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Invalid form",
            "The consent form must be posted as application/x-www-form-urlencoded.",
        );
    }
    let params = Params::parse(&body);
    let now = inner.now();
    let pending = match params.get("consent_id") {
        Ok(Some(id)) => inner.consents.remove(&digest(id)),
        _ => None,
    };
    let Some(pending) = pending.filter(|p| p.expires_at > now) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Unknown consent request",
            "This consent request is unknown, was already answered or has expired. Start again from the application.",
        );
    };
    let fail = |code: &str, description: &str| {
        redirect_error(
            &pending.redirect_uri,
            code,
            description,
            Some(&pending.state),
            issuer,
        )
    };
    match params.get("decision") {
        Ok(Some("allow")) => {}
        Ok(Some("deny")) => return fail("access_denied", "the user denied the request"),
        _ => return fail("invalid_request", "the consent form carried no decision"),
    }
    let subject = match params.get("subject") {
        Ok(Some(urn)) => Subject::parse_urn(urn).filter(|s| shared.config.knows(*s)),
        _ => None,
    };
    let Some(subject) = subject else {
        return fail("invalid_request", "the consent form named no known company");
    };
    let new = NewCode {
        client_id: &pending.client_id,
        redirect_uri: &pending.redirect_uri,
        challenge: pending.challenge.clone(),
        scopes: pending.scopes.clone(),
        subject,
    };
    match issue_code(&shared, &mut inner, new, now) {
        Ok(code) => redirect_with(
            &pending.redirect_uri,
            &[("code", &code), ("state", &pending.state)],
            issuer,
        ),
        Err(_) => random_failure_page(),
    }
}

/// Authenticates the client of a token or introspection request; returns its ID.
fn authenticate_client(
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

/// The form parameters of a request body, or the error for a body that could not be read.
fn read_form(body: &Result<Bytes, BytesRejection>) -> Result<Params, OAuthError> {
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
fn require_form(headers: &HeaderMap, params: &Params) -> Result<(), OAuthError> {
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
    let describe = |grant: &crate::state::Grant,
                    scopes: &[String],
                    iat: SystemTime,
                    exp: SystemTime,
                    jti: uuid::Uuid| {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(uris: &[&str]) -> Vec<String> {
        uris.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn loopback_redirects_match_any_port_and_nothing_else() {
        let r = reg(&["http://127.0.0.1/callback", "https://app.example/cb"]);
        assert!(redirect_uri_matches(&r, "http://127.0.0.1/callback"));
        assert!(redirect_uri_matches(&r, "http://127.0.0.1:5555/callback"));
        assert!(redirect_uri_matches(&r, "https://app.example/cb"));
        for bad in [
            "http://127.0.0.1:5555/other",
            "http://127.0.0.1:5555/callback?x=1",
            "http://127.0.0.1:5555/callback#f",
            "http://evil@127.0.0.1:5555/callback",
            "http://127.0.0.1.evil.example/callback",
            "http://localhost:5555/callback",
            "https://127.0.0.1:5555/callback",
            "https://app.example:444/cb",
            "https://app.example/cb/",
            "https://evil.example/cb",
        ] {
            assert!(!redirect_uri_matches(&r, bad), "{bad} must not match");
        }
        let v6 = reg(&["http://[::1]/cb", "http://localhost/cb"]);
        assert!(redirect_uri_matches(&v6, "http://[::1]:8080/cb"));
        assert!(redirect_uri_matches(&v6, "http://localhost:8080/cb"));
    }

    #[test]
    fn error_redirect_keeps_existing_query_and_encodes() {
        let r = redirect_error(
            "http://127.0.0.1:9/cb?a=1",
            "access_denied",
            "no & no",
            Some("s t"),
            None,
        );
        let loc = r.headers()[header::LOCATION].to_str().unwrap();
        assert_eq!(
            loc,
            "http://127.0.0.1:9/cb?a=1&error=access_denied&error_description=no+%26+no&state=s+t"
        );
        assert_eq!(r.status(), StatusCode::FOUND);
    }

    #[test]
    fn redirects_carry_the_issuer_when_there_is_one() {
        let r = redirect_with(
            "http://127.0.0.1:9/cb",
            &[("code", "c")],
            Some("https://as.example"),
        );
        let loc = r.headers()[header::LOCATION].to_str().unwrap();
        assert_eq!(
            loc,
            "http://127.0.0.1:9/cb?code=c&iss=https%3A%2F%2Fas.example"
        );
    }
}
