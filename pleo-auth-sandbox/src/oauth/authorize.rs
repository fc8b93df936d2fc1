//! The authorization endpoint: the authorization request, the consent page and its answer, and
//! the redirects back to the client.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use url::{Host, Url};

use super::pkce::is_valid_s256_challenge;
use crate::config::{ClientRegistration, Subject};
use crate::html::{ConsentPage, consent_page, error_page};
use crate::records::{CodeRecord, PendingConsent};
use crate::request::{Params, is_form, split_scopes};
use crate::secrets::{RandomUnavailable, digest, random_secret};
use crate::shape::ServerShape;
use crate::state::{Inner, Shared};

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
