//! Reading requests: form and query parameters, the `Authorization` header, scope strings.

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// Standard base64 that accepts input with or without padding.
const BASIC_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decoded `application/x-www-form-urlencoded` parameters, keeping repeats so they can be refused.
#[derive(Default)]
pub(crate) struct Params(Vec<(String, String)>);

/// A parameter that occurs more than once (RFC 6749 §3.1 forbids it).
#[derive(Debug)]
pub(crate) struct RepeatedParam(pub(crate) String);

impl Params {
    /// Parses a query string or a form body.
    pub(crate) fn parse(input: &[u8]) -> Self {
        Self(url::form_urlencoded::parse(input).into_owned().collect())
    }

    /// The value of `name`; `Err` when it is repeated, `Ok(None)` when it is absent.
    pub(crate) fn get(&self, name: &str) -> Result<Option<&str>, RepeatedParam> {
        let mut found = None;
        for (k, v) in &self.0 {
            if k == name {
                if found.is_some() {
                    return Err(RepeatedParam(name.to_owned()));
                }
                found = Some(v.as_str());
            }
        }
        Ok(found)
    }

    /// The first repeated parameter name, if any.
    pub(crate) fn first_repeated(&self) -> Option<&str> {
        self.0.iter().enumerate().find_map(|(i, (k, _))| {
            self.0[..i]
                .iter()
                .any(|(earlier, _)| earlier == k)
                .then_some(k.as_str())
        })
    }
}

/// What an `Authorization` header holds.
pub(crate) enum Authorization {
    /// No `Authorization` header.
    Absent,
    /// `Bearer <token>`.
    Bearer(String),
    /// `Basic <base64(user:password)>`, decoded.
    Basic { user: String, password: String },
    /// A header that cannot be read as either scheme.
    Malformed(&'static str),
}

/// Reads the `Authorization` header.
pub(crate) fn authorization(headers: &HeaderMap) -> Authorization {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Authorization::Absent;
    };
    if values.next().is_some() {
        return Authorization::Malformed("more than one Authorization header");
    }
    let Ok(value) = value.to_str() else {
        return Authorization::Malformed("the Authorization header is not visible ASCII");
    };
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() || rest.contains(' ') {
            return Authorization::Malformed("the Bearer credential is malformed");
        }
        Authorization::Bearer(rest.to_owned())
    } else if scheme.eq_ignore_ascii_case("basic") {
        let Ok(decoded) = BASIC_B64.decode(rest) else {
            return Authorization::Malformed("the Basic credential is not base64");
        };
        let Ok(decoded) = String::from_utf8(decoded) else {
            return Authorization::Malformed("the Basic credential is not UTF-8");
        };
        let Some((user, password)) = decoded.split_once(':') else {
            return Authorization::Malformed("the Basic credential has no ':' separator");
        };
        Authorization::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
        }
    } else {
        Authorization::Malformed("unsupported authorization scheme")
    }
}

/// Undoes `application/x-www-form-urlencoded` encoding of one value (RFC 6749 §2.3.1).
pub(crate) fn form_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// Whether the request body is declared as `application/x-www-form-urlencoded`.
pub(crate) fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// Splits a space-separated scope string into distinct scopes, keeping their order.
pub(crate) fn split_scopes(s: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for scope in s.split(' ').filter(|s| !s.is_empty()) {
        if !out.iter().any(|x| x == scope) {
            out.push(scope.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_parameters_are_detected() {
        let p = Params::parse(b"a=1&b=2&a=3");
        assert!(p.get("a").is_err());
        assert_eq!(p.get("b").unwrap(), Some("2"));
        assert_eq!(p.get("c").unwrap(), None);
        assert_eq!(p.first_repeated(), Some("a"));
        assert_eq!(Params::parse(b"a=1&b=2").first_repeated(), None);
    }

    #[test]
    fn basic_credentials_decode_with_and_without_padding() {
        for encoded in ["dXNlcjpwYXNz", "dXNlcjpwYXNzLg==", "dXNlcjpwYXNzLg"] {
            let mut h = HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                format!("Basic {encoded}").parse().unwrap(),
            );
            assert!(matches!(authorization(&h), Authorization::Basic { .. }));
        }
    }

    #[test]
    fn scopes_are_deduplicated_in_order() {
        assert_eq!(split_scopes(" b a  b "), vec!["b", "a"]);
    }
}
