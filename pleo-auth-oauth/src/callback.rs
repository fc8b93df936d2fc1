//! Strict parsing of the OAuth callback query, before any network call.

use std::fmt;

use pleo_auth_core::AuthorizationCode;

use crate::error::{Error, ErrorKind, Result, sanitize};

/// Longest callback query accepted, in bytes.
pub(crate) const MAX_QUERY_LEN: usize = 8 * 1024;
/// Longest `state` accepted, in bytes (ours are 43).
const MAX_STATE_LEN: usize = 512;

/// What the callback says happened.
pub(crate) enum Outcome {
    /// Consent given: exchange this code.
    Code(AuthorizationCode),
    /// Consent refused or failed.
    Refused(Error),
}

/// A parsed callback: the state, the issuer it names (RFC 9207) and its outcome.
pub(crate) struct Callback {
    pub(crate) state: String,
    pub(crate) iss: Option<String>,
    pub(crate) outcome: Outcome,
}

impl fmt::Debug for Callback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Callback").finish_non_exhaustive()
    }
}

/// Parses the query of the redirect: the query string (with or without a leading `?`) or the
/// whole redirect URL.
///
/// Refused: queries longer than 8 KiB, any repeated parameter, both `code` and `error`,
/// neither of them, a missing or empty `state`, an empty `code`.
pub(crate) fn parse(raw: &str) -> Result<Callback> {
    if raw.len() > MAX_QUERY_LEN {
        return Err(Error::callback("the callback query is too long"));
    }
    let url;
    let query = if let Some(rest) = raw.strip_prefix('?') {
        rest
    } else if raw.contains("://") {
        url = url::Url::parse(raw).map_err(|_| Error::callback("the callback url is malformed"))?;
        url.query().unwrap_or_default()
    } else {
        raw
    };
    let mut state = None;
    let mut code = None;
    let mut error = None;
    let mut description = None;
    let mut iss = None;
    let mut seen: Vec<String> = Vec::new();
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if seen.iter().any(|n| *n == name) {
            return Err(Error::callback("a callback parameter is repeated"));
        }
        seen.push(name.clone().into_owned());
        match name.as_ref() {
            "state" => state = Some(value.into_owned()),
            "code" => code = Some(AuthorizationCode::new(value.into_owned())),
            "error" => error = Some(value.into_owned()),
            "error_description" => description = Some(value.into_owned()),
            "iss" => iss = Some(value.into_owned()),
            _ => {}
        }
    }
    let state = match state {
        Some(s) if !s.is_empty() && s.len() <= MAX_STATE_LEN => s,
        Some(_) => return Err(Error::callback("the callback state is empty or too long")),
        None => return Err(Error::callback("the callback has no state")),
    };
    let outcome = match (code, error) {
        (Some(_), Some(_)) => {
            return Err(Error::callback("the callback has both a code and an error"));
        }
        (None, None) => {
            return Err(Error::callback(
                "the callback has neither a code nor an error",
            ));
        }
        (Some(code), None) if code.expose_secret().is_empty() => {
            return Err(Error::callback("the callback code is empty"));
        }
        (Some(code), None) => Outcome::Code(code),
        (None, Some(error)) => Outcome::Refused(refusal(&error, description.as_deref())),
    };
    Ok(Callback {
        state,
        iss,
        outcome,
    })
}

/// The typed error for an `error` callback.
fn refusal(code: &str, description: Option<&str>) -> Error {
    let description = description.map(sanitize).filter(|d| !d.is_empty());
    if code == "access_denied" {
        Error::new(
            ErrorKind::AccessDenied { description },
            "the customer did not grant access",
        )
    } else {
        Error::new(
            ErrorKind::AuthorizationError {
                code: sanitize(code),
                description,
            },
            "the authorization server reported an error",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(raw: &str) -> ErrorKind {
        parse(raw).unwrap_err().kind().clone()
    }

    #[test]
    fn accepts_codes_and_errors() {
        let cb = parse("?code=CANARY-c&state=s1&iss=x").unwrap();
        assert_eq!(cb.state, "s1");
        assert!(matches!(cb.outcome, Outcome::Code(ref c) if c.expose_secret() == "CANARY-c"));
        let cb = parse(
            "https://app.example/cb?state=s2&error=access_denied&error_description=No%0Athanks",
        )
        .unwrap();
        let Outcome::Refused(err) = cb.outcome else {
            panic!("refusal expected")
        };
        assert_eq!(
            err.kind(),
            &ErrorKind::AccessDenied {
                description: Some("Nothanks".into())
            }
        );
        let cb = parse("state=s3&error=invalid_scope").unwrap();
        assert!(!format!("{cb:?}").contains("s3"));
        let Outcome::Refused(err) = cb.outcome else {
            panic!("refusal expected")
        };
        assert!(
            matches!(err.kind(), ErrorKind::AuthorizationError { code, .. } if code == "invalid_scope")
        );
    }

    #[test]
    fn rejects_malformed_callbacks() {
        for raw in [
            "code=a&state=s&state=s",
            "code=a&code=b&state=s",
            "code=a&error=access_denied&state=s",
            "code=a",
            "error=access_denied",
            "state=s",
            "code=&state=s",
            "code=a&state=",
            "",
        ] {
            assert_eq!(kind(raw), ErrorKind::InvalidCallback, "{raw}");
        }
        let long = format!("code=a&state={}", "s".repeat(MAX_QUERY_LEN));
        assert_eq!(kind(&long), ErrorKind::InvalidCallback);
        let long_state = format!("code=a&state={}", "s".repeat(600));
        assert_eq!(kind(&long_state), ErrorKind::InvalidCallback);
    }

    #[test]
    fn errors_never_echo_the_code() {
        for raw in [
            "code=CANARY&code=CANARY&state=s",
            "code=CANARY&error=x&state=s",
        ] {
            let err = parse(raw).unwrap_err();
            assert!(!format!("{err} {err:?}").contains("CANARY"));
        }
    }
}
