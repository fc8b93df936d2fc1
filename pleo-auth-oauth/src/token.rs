//! Token endpoint calls (RFC 6749 §4.1.3 and §6) and a liberal reading of their answers.
//!
//! The requests are plain form posts with `client_secret_basic`, sent with pleo-auth's one HTTP
//! client (no redirects, capped bodies). The answers are read here rather than by the `oauth2`
//! crate, because a token response is the one message that must never be thrown away: once the
//! server answered with a new refresh token it has invalidated the old one, so a parse error
//! that drops the answer burns the grant. [`Answer`] therefore separates the new refresh token
//! (kept whenever the server sent one) from the judgement of the rest (access token, token type,
//! lifetime, scopes), and the callers store the first before they act on the second.
//!
//! What is accepted, as RFC 6749 allows or as servers are seen to do:
//! - any 2xx status with a JSON object, whatever the `Content-Type`;
//! - `scope` as a space-delimited string (any whitespace) or a JSON array of strings, with any
//!   scope names; names that are not scope-tokens are dropped and reported;
//! - `expires_in` as a number or a numeric string; absent, zero, negative or unreadable means
//!   "not said" (the policy's assumed lifetime applies); more than [`MAX_TOKEN_LIFETIME`] is
//!   capped to it;
//! - `token_type` absent (Pleo does not document it) or `Bearer` in any case;
//! - unknown fields, ignored.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use pleo_auth_core::{
    AccessToken, AuthorizationCode, ClientId, ClientSecret, PkceVerifier, RefreshToken, ScopeSet,
};
use pleo_auth_http::transport::{
    DEFAULT_MAX_BODY_BYTES, parse_retry_after, read_body_capped, transport_error,
};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde_json::{Map, Value};
use url::Url;
use url::form_urlencoded;
use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind, Result, sanitize};

/// The longest access-token lifetime believed: a longer `expires_in` is capped to this, so the
/// token is refreshed at least daily (harmless) and no clock arithmetic overflows.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// Longest refresh token or access token kept, in bytes; a longer one is not a token.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Where and as whom token requests are sent.
pub(crate) struct TokenEndpoint {
    url: Url,
    /// `Basic base64(urlencode(client_id) ":" urlencode(client_secret))` (RFC 6749 §2.3.1).
    basic: Zeroizing<String>,
}

impl TokenEndpoint {
    pub(crate) fn new(url: Url, client_id: &ClientId, secret: &ClientSecret) -> Self {
        Self {
            url,
            basic: basic_auth(client_id, secret),
        }
    }
}

/// The HTTP Basic client authentication of RFC 6749 §2.3.1.
pub(crate) fn basic_auth(client_id: &ClientId, secret: &ClientSecret) -> Zeroizing<String> {
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = Zeroizing::new(format!(
        "{}:{}",
        encode(client_id.as_str()),
        Zeroizing::new(encode(secret.expose_secret())).as_str()
    ));
    Zeroizing::new(format!("Basic {}", STANDARD.encode(pair.as_bytes())))
}

/// The usable part of a token response.
pub(crate) struct Access {
    pub(crate) access_token: AccessToken,
    /// `expires_in`, capped at [`MAX_TOKEN_LIFETIME`]; `None` when the server did not say.
    pub(crate) expires_in: Option<Duration>,
    /// The granted scopes, if the answer listed them.
    pub(crate) scopes: Option<ScopeSet>,
}

/// A successful (2xx) answer of the token endpoint.
pub(crate) struct Answer {
    /// The new refresh token, whenever the server sent one, even if the rest is unusable.
    pub(crate) refresh_token: Option<RefreshToken>,
    /// The access token and its details, or why the answer cannot be used.
    pub(crate) access: Result<Access>,
}

impl Answer {
    /// Reads a 2xx body. Never fails: what cannot be used is in [`Answer::access`].
    pub(crate) fn read(body: &[u8]) -> Self {
        let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
            return Self {
                refresh_token: None,
                access: Err(Error::unexpected("the token response is not a json object")),
            };
        };
        let refresh_token = token_field(&fields, "refresh_token").map(RefreshToken::new);
        Self {
            refresh_token,
            access: access(&fields),
        }
    }
}

/// A non-empty string field of bounded length.
fn token_field(fields: &Map<String, Value>, name: &str) -> Option<String> {
    match fields.get(name) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_TOKEN_LEN => Some(s.clone()),
        _ => None,
    }
}

fn access(fields: &Map<String, Value>) -> Result<Access> {
    match fields.get("token_type") {
        None | Some(Value::Null) => {}
        Some(Value::String(kind)) if kind.eq_ignore_ascii_case("bearer") => {}
        Some(_) => {
            return Err(Error::unexpected(
                "the token response is not a bearer token",
            ));
        }
    }
    let access_token = token_field(fields, "access_token")
        .map(AccessToken::new)
        .ok_or_else(|| Error::unexpected("the token response has no access token"))?;
    Ok(Access {
        access_token,
        expires_in: expires_in(fields.get("expires_in")),
        scopes: scopes(fields.get("scope")),
    })
}

/// `expires_in` as a number or numeric string, capped; `None` when absent or meaningless.
pub(crate) fn expires_in(value: Option<&Value>) -> Option<Duration> {
    let seconds = match value? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    if !seconds.is_finite() || seconds < 1.0 {
        tracing::info!("the token response has an unusable expires_in; assuming the default");
        return None;
    }
    let lifetime = Duration::try_from_secs_f64(seconds.floor()).unwrap_or(MAX_TOKEN_LIFETIME);
    if lifetime > MAX_TOKEN_LIFETIME {
        tracing::info!("the token response's expires_in is longer than a day; capped to a day");
    }
    Some(lifetime.min(MAX_TOKEN_LIFETIME))
}

fn scopes(value: Option<&Value>) -> Option<ScopeSet> {
    let list = match value? {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        _ => return None,
    };
    let (set, dropped) = ScopeSet::from_server(&list);
    if dropped > 0 {
        tracing::info!(
            dropped,
            "the token response lists scope names that are not oauth scope-tokens; ignored"
        );
    }
    let unmodeled: Vec<&str> = set.unmodeled().map(|s| s.as_str()).collect();
    if !unmodeled.is_empty() {
        tracing::debug!(
            scopes = %unmodeled.join(" "),
            "the token response grants scopes outside pleo's resource:permission form; kept"
        );
    }
    Some(set)
}

/// An error answer of the token endpoint, read leniently (RFC 6749 §5.2).
struct Refusal {
    status: u16,
    retry_after: Option<Duration>,
    code: Option<String>,
}

impl Refusal {
    fn read(status: u16, retry_after: Option<Duration>, body: &[u8]) -> Self {
        let code = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(fields)) => match fields.get("error") {
                Some(Value::String(code)) => Some(sanitize(code)),
                _ => None,
            },
            _ => None,
        };
        Self {
            status,
            retry_after,
            code,
        }
    }

    /// What the refusal means: by status first (429, 408, 5xx), then by OAuth error code.
    fn classify(self, exchanging_code: bool) -> Error {
        match self.status {
            429 => {
                return Error::new(
                    ErrorKind::RateLimited {
                        retry_after: self.retry_after,
                    },
                    "the token endpoint asked to slow down",
                );
            }
            408 | 500..=599 => return unavailable(),
            _ => {}
        }
        match self.code.as_deref() {
            Some("invalid_client" | "unauthorized_client") => Error::new(
                ErrorKind::InvalidClient,
                "the authorization server refused the client credentials",
            ),
            Some("temporarily_unavailable" | "server_error") => unavailable(),
            Some("invalid_grant") if !exchanging_code => Error::new(
                ErrorKind::NeedsReauthorization,
                "the authorization server refused the refresh token",
            ),
            Some(code) if exchanging_code => Error::new(
                ErrorKind::CodeRejected {
                    code: code.to_owned(),
                },
                "the authorization server refused the authorization code",
            ),
            None if exchanging_code => Error::new(
                ErrorKind::CodeRejected {
                    code: format!("http_{}", self.status),
                },
                "the authorization server refused the authorization code",
            ),
            _ => Error::unexpected("the authorization server refused the refresh request"),
        }
    }
}

fn unavailable() -> Error {
    Error::new(
        ErrorKind::Unavailable,
        "the token endpoint is temporarily unavailable",
    )
}

/// Posts a token request: `Ok` with the answer when the server answered 2xx (whatever its
/// body), `Err` when it refused or could not be reached.
async fn post(
    http: &reqwest::Client,
    endpoint: &TokenEndpoint,
    now: SystemTime,
    form: &[(&str, &str)],
    exchanging_code: bool,
) -> Result<Answer> {
    let body = Zeroizing::new(
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish(),
    );
    let mut authorization = HeaderValue::from_str(&endpoint.basic)
        .map_err(|_| Error::config("the client id or secret cannot be sent in a header"))?;
    authorization.set_sensitive(true);
    let response = http
        .post(endpoint.url.clone())
        .header(AUTHORIZATION, authorization)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(ACCEPT, "application/json")
        .body(body.as_str().to_owned())
        .send()
        .await
        .map_err(|e| request_failed(transport_error(e)))?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, now));
    let body = read_body_capped(response, DEFAULT_MAX_BODY_BYTES)
        .await
        .map_err(request_failed)?;
    if status.is_success() {
        Ok(Answer::read(&body))
    } else {
        Err(Refusal::read(status.as_u16(), retry_after, &body).classify(exchanging_code))
    }
}

fn request_failed(e: pleo_auth_core::Error) -> Error {
    let kind = if e.is_retryable() {
        ErrorKind::Unavailable
    } else {
        ErrorKind::UnexpectedResponse
    };
    Error::new(kind, "the token request failed").with_source(e)
}

/// Exchanges an authorization code (with its PKCE verifier and redirect URI) for tokens.
pub(crate) async fn exchange_code(
    http: &reqwest::Client,
    endpoint: &TokenEndpoint,
    now: SystemTime,
    code: &AuthorizationCode,
    verifier: &PkceVerifier,
    redirect_uri: &str,
) -> Result<Answer> {
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.expose_secret()),
        ("redirect_uri", redirect_uri),
        ("code_verifier", verifier.expose_secret()),
    ];
    post(http, endpoint, now, &form, true).await
}

/// Sends one refresh request.
pub(crate) async fn refresh(
    http: &reqwest::Client,
    endpoint: &TokenEndpoint,
    now: SystemTime,
    refresh_token: &RefreshToken,
) -> Result<Answer> {
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.expose_secret()),
    ];
    post(http, endpoint, now, &form, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(json: &str) -> Answer {
        Answer::read(json.as_bytes())
    }

    #[test]
    fn token_responses_are_read_as_rfc_6749_allows() {
        let answer = read(
            r#"{"access_token":"a","refresh_token":"r","expires_in":900,"scope":"users:read"}"#,
        );
        assert_eq!(answer.refresh_token.unwrap().expose_secret(), "r");
        let access = answer.access.unwrap();
        assert_eq!(access.access_token.expose_secret(), "a");
        assert_eq!(access.expires_in, Some(Duration::from_secs(900)));
        assert_eq!(access.scopes.unwrap().to_string(), "users:read");

        let foreign = read(
            r#"{"access_token":"a","token_type":"BEARER","expires_in":"3600","scope":"openid profile users:read","id_token":"x.y.z","extra":{"nested":[1,2]}}"#,
        )
        .access
        .unwrap();
        assert_eq!(foreign.expires_in, Some(Duration::from_secs(3600)));
        let scopes = foreign.scopes.unwrap();
        assert_eq!(scopes.to_string(), "openid profile users:read");
        assert_eq!(scopes.unmodeled().count(), 2);

        let array = read(r#"{"access_token":"a","scope":["a:b","offline_access"]}"#);
        assert_eq!(
            array.access.unwrap().scopes.unwrap().to_string(),
            "a:b offline_access"
        );
    }

    #[test]
    fn lifetimes_saturate_and_meaningless_ones_are_not_said() {
        let lifetime = |v: &str| expires_in(Some(&serde_json::from_str(v).unwrap()));
        assert_eq!(lifetime("1e300"), Some(MAX_TOKEN_LIFETIME));
        assert_eq!(lifetime("18446744073709551615"), Some(MAX_TOKEN_LIFETIME));
        assert_eq!(
            lifetime("\"99999999999999999999999\""),
            Some(MAX_TOKEN_LIFETIME)
        );
        assert_eq!(lifetime("59.9"), Some(Duration::from_secs(59)));
        for meaningless in [
            "0", "-5", "0.5", "\"soon\"", "null", "true", "[]", "\"NaN\"",
        ] {
            assert_eq!(lifetime(meaningless), None, "{meaningless}");
        }
        assert_eq!(expires_in(None), None);
    }

    #[test]
    fn the_refresh_token_survives_an_unusable_answer() {
        for (json, why) in [
            (r#"{"refresh_token":"r"}"#, "no access token"),
            (r#"{"refresh_token":"r","access_token":""}"#, "empty"),
            (r#"{"refresh_token":"r","access_token":7}"#, "not a string"),
            (
                r#"{"refresh_token":"r","access_token":"a","token_type":"mac"}"#,
                "not bearer",
            ),
            (
                r#"{"refresh_token":"r","access_token":"a","token_type":5}"#,
                "odd type",
            ),
        ] {
            let answer = read(json);
            assert_eq!(
                answer.refresh_token.as_ref().map(|t| t.expose_secret()),
                Some("r"),
                "{why}"
            );
            let err = answer.access.err().unwrap_or_else(|| panic!("{why}"));
            assert_eq!(err.kind(), &ErrorKind::UnexpectedResponse, "{why}");
        }
        for body in ["", "not json", "[1,2]", "\"r\"", "{"] {
            let answer = read(body);
            assert!(answer.refresh_token.is_none());
            assert!(answer.access.is_err());
        }
        let long = format!(r#"{{"refresh_token":"{}"}}"#, "x".repeat(MAX_TOKEN_LEN + 1));
        assert!(read(&long).refresh_token.is_none());
    }

    #[test]
    fn refusals_are_classified_by_status_first() {
        let refusal = |status, code: &str| {
            let body = format!(r#"{{"error":"{code}"}}"#);
            Refusal::read(status, Some(Duration::from_secs(7)), body.as_bytes())
        };
        let limited = refusal(429, "x").classify(false);
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(
            refusal(400, "invalid_grant").classify(false).kind(),
            &ErrorKind::NeedsReauthorization
        );
        assert_eq!(
            refusal(400, "invalid_grant").classify(true).kind(),
            &ErrorKind::CodeRejected {
                code: "invalid_grant".into()
            }
        );
        assert_eq!(
            refusal(401, "invalid_client").classify(false).kind(),
            &ErrorKind::InvalidClient
        );
        assert!(refusal(503, "invalid_grant").classify(false).is_retryable());
        assert!(
            refusal(400, "temporarily_unavailable")
                .classify(false)
                .is_retryable()
        );
        let garbage = Refusal::read(400, None, b"<html>").classify(false);
        assert_eq!(garbage.kind(), &ErrorKind::UnexpectedResponse);
    }

    #[test]
    fn basic_auth_url_encodes_both_parts() {
        let id = ClientId::new("id:with space").unwrap();
        let header = basic_auth(&id, &ClientSecret::new("s&cr=t"));
        let encoded = header.strip_prefix("Basic ").unwrap();
        let decoded = String::from_utf8(STANDARD.decode(encoded).unwrap()).unwrap();
        assert_eq!(decoded, "id%3Awith+space:s%26cr%3Dt");
    }
}
