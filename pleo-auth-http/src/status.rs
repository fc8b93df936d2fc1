//! Turning an API error response into an [`Error`]: status, capped server message, required
//! scope, `Retry-After`.

use std::time::SystemTime;

use pleo_auth_core::{ErrorKind, ScopeSet};
use reqwest::StatusCode;
use reqwest::header::{RETRY_AFTER, WWW_AUTHENTICATE};

use crate::error::{Error, Result, sanitize_server_message};
use crate::transport::{parse_retry_after, read_body_capped, status_kind};

/// Largest error body read to find the server's message.
const MAX_ERROR_BODY_BYTES: usize = 16 * 1024;

/// Returns a successful (2xx) response unchanged, and turns any other into an [`Error`] with
/// the status, what the server said (capped), the scope it asked for and its `Retry-After`.
///
/// [`PleoClient`](crate::PleoClient) applies it to every response; users of
/// [`PleoAuthMiddleware`](crate::PleoAuthMiddleware) may call it on theirs.
pub async fn error_for_status(response: reqwest::Response) -> Result<reqwest::Response> {
    if response.status().is_success() {
        return Ok(response);
    }
    Err(status_error(response, &ScopeSet::new(), &[]).await)
}

/// The error for a non-success response; `hints` are scopes the caller said the endpoint needs
/// and `secrets` are redacted from the server's message.
pub(crate) async fn status_error(
    response: reqwest::Response,
    hints: &ScopeSet,
    secrets: &[&str],
) -> Error {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let mut scopes = response
        .headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(challenge_scopes)
        .find(|s| !s.is_empty())
        .unwrap_or_default();
    if status == StatusCode::FORBIDDEN {
        for scope in hints.iter() {
            scopes.insert(scope.clone());
        }
    } else {
        scopes = ScopeSet::new();
    }
    let server_message = match read_body_capped(response, MAX_ERROR_BODY_BYTES).await {
        Ok(body) => server_message(&body, secrets),
        Err(_) => None,
    };
    let kind = status_kind(status);
    Error::new(kind, status_message(kind))
        .with_status(status.as_u16())
        .with_server_message(server_message)
        .with_required_scopes(scopes)
        .with_retry_after(retry_after)
}

fn status_message(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Unauthenticated => "the API rejected the credential",
        ErrorKind::PermissionDenied => "the API refused the request for lack of permission",
        ErrorKind::NotFound => "the API found no such resource",
        ErrorKind::Conflict => "the API reported a conflict",
        ErrorKind::RateLimited => "the API is rate limiting requests",
        ErrorKind::Unavailable => "the API is unavailable",
        _ => "the API answered with an error status",
    }
}

/// The server's words: the JSON `message` (or `error_description`, or `error`), else the text.
fn server_message(body: &[u8], secrets: &[&str]) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(body) {
        let text = ["message", "error_description", "error"]
            .iter()
            .find_map(|k| map.get(*k).and_then(serde_json::Value::as_str));
        return text.and_then(|t| sanitize_server_message(t, secrets));
    }
    sanitize_server_message(&String::from_utf8_lossy(body), secrets)
}

/// The `scope` parameter of a `WWW-Authenticate` challenge (RFC 6750 §3), if it parses.
pub(crate) fn challenge_scopes(header: &str) -> ScopeSet {
    let mut rest = header;
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        if rest.is_empty() {
            return ScopeSet::new();
        }
        let name_end = rest
            .find(|c: char| c == '=' || c == ',' || c.is_whitespace())
            .unwrap_or(rest.len());
        let name = &rest[..name_end];
        let after = rest[name_end..].trim_start();
        let Some(value) = after.strip_prefix('=') else {
            // A scheme name or token68: skip it (never empty, since separators were trimmed).
            rest = &rest[name_end..];
            continue;
        };
        let value = value.trim_start();
        let (parsed, remaining) = match value.strip_prefix('"') {
            Some(quoted) => unquote(quoted),
            None => {
                let end = value
                    .find(|c: char| c == ',' || c.is_whitespace())
                    .unwrap_or(value.len());
                (value[..end].to_owned(), &value[end..])
            }
        };
        if name.eq_ignore_ascii_case("scope") {
            return ScopeSet::from_server(&parsed).0;
        }
        rest = remaining;
    }
}

/// Reads a quoted-string body (after the opening quote): the value and what follows it.
fn unquote(s: &str) -> (String, &str) {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return (out, &s[i + 1..]),
            '\\' => {
                if let Some((_, escaped)) = chars.next() {
                    out.push(escaped);
                }
            }
            c => out.push(c),
        }
    }
    (out, "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn scope_is_read_from_bearer_challenges() {
        let s = challenge_scopes(
            r#"Bearer realm="pleo", error="insufficient_scope", scope="users:read""#,
        );
        assert_eq!(s.to_string(), "users:read");
        let s = challenge_scopes(r#"Basic realm="x", Bearer scope="a:b c:d", error=x"#);
        assert_eq!(s.to_string(), "a:b c:d");
        assert!(challenge_scopes(r#"Bearer realm="pleo""#).is_empty());
        assert_eq!(
            challenge_scopes(r#"Bearer scope="openid users:read \"q""#).to_string(),
            "openid users:read",
            "any scope names, the unreadable one dropped"
        );
        assert!(challenge_scopes("Basic abc==").is_empty());
        assert_eq!(
            challenge_scopes(r#"Bearer realm="a\"b", scope=x:y"#).to_string(),
            "x:y"
        );
    }

    #[test]
    fn server_message_prefers_json_message() {
        let body = br#"{"status":403,"error":"forbidden","message":"no access"}"#;
        assert_eq!(server_message(body, &[]).as_deref(), Some("no access"));
        let body = br#"{"error":"invalid_token","error_description":"expired"}"#;
        assert_eq!(server_message(body, &[]).as_deref(), Some("expired"));
        assert_eq!(
            server_message(b"plain words", &[]).as_deref(),
            Some("plain words")
        );
        assert_eq!(server_message(b"", &[]), None);
        assert_eq!(server_message(br#"{"data":1}"#, &[]), None);
    }

    proptest! {
        #[test]
        fn challenge_parser_never_panics(s in "\\PC{0,80}") {
            let _ = challenge_scopes(&s);
        }

        #[test]
        fn challenge_parser_never_panics_on_structured_input(
            s in "[a-zA-Z ,=\"\\\\:é]{0,60}"
        ) {
            let _ = challenge_scopes(&s);
        }
    }
}
