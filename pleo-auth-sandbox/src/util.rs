//! Small helpers: randomness, digests, form and header parsing, HTML escaping.

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::alphabet;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

/// SHA-256 of a secret: the key under which the sandbox stores every secret it minted.
pub(crate) type Digest = [u8; 32];

/// The operating system's random number generator failed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the operating system random number generator failed")]
pub(crate) struct RandomUnavailable;

/// Standard base64 that accepts input with or without padding.
const BASIC_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn random_bytes<const N: usize>() -> Result<[u8; N], RandomUnavailable> {
    let mut buf = [0u8; N];
    getrandom::getrandom(&mut buf).map_err(|_| RandomUnavailable)?;
    Ok(buf)
}

/// A fresh secret: `prefix`, then `kind`, then 256 random bits in base64url.
pub(crate) fn random_secret(prefix: &str, kind: &str) -> Result<String, RandomUnavailable> {
    let bytes = random_bytes::<32>()?;
    Ok(format!("{prefix}{kind}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// A random (version 4) UUID.
pub(crate) fn random_uuid() -> Result<Uuid, RandomUnavailable> {
    Ok(uuid::Builder::from_random_bytes(random_bytes::<16>()?).into_uuid())
}

/// A UUID derived deterministically from some text (for seeded resource data).
pub(crate) fn derived_uuid(text: &str) -> Uuid {
    let d = digest(text);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&d[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// SHA-256 of a string.
pub(crate) fn digest(s: &str) -> Digest {
    Sha256::digest(s.as_bytes()).into()
}

/// A short, stable, non-secret fingerprint of a secret (the first 16 hex digits of its SHA-256).
///
/// The sandbox never reports a secret it minted or received; statistics and the request log name
/// credentials by this fingerprint instead. Tests compute the fingerprint of a token they hold with
/// this function to find it in [`Stats`](crate::Stats) or the [request log](crate::ApiRequestRecord).
pub fn token_fingerprint(secret: &str) -> String {
    hex::encode(&digest(secret)[..8])
}

/// The PKCE `S256` transformation: base64url(SHA-256(verifier)), no padding.
pub(crate) fn pkce_s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Whether a PKCE code verifier has the RFC 7636 shape: 43 to 128 unreserved characters.
pub(crate) fn is_valid_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// Whether a PKCE `S256` code challenge has the right shape: 43 base64url characters.
pub(crate) fn is_valid_s256_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

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

/// Escapes text for HTML element content and double-quoted attribute values.
pub(crate) fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
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
    fn s256_matches_rfc7636_appendix_b() {
        assert_eq!(
            pkce_s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

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
    fn html_is_escaped() {
        assert_eq!(
            escape_html(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
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
    fn fingerprint_is_short_and_stable() {
        assert_eq!(token_fingerprint("abc"), "ba7816bf8f01cfea");
    }

    #[test]
    fn scopes_are_deduplicated_in_order() {
        assert_eq!(split_scopes(" b a  b "), vec!["b", "a"]);
    }
}
