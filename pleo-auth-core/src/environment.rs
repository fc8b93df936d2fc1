//! Pleo environments: where the authorization server and the External API live.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use url::{Host, Url};

use crate::error::{Error, Result};

/// The name of an environment: `staging`, `production`, or a custom name such as `sandbox`.
///
/// Credentials carry it; a credential is only ever sent to the environment it was issued in.
/// Names are 1 to 64 characters of `a-z`, `0-9` and `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EnvironmentName(String);

impl EnvironmentName {
    /// Pleo's staging environment.
    pub const STAGING: &'static str = "staging";
    /// Pleo's production environment.
    pub const PRODUCTION: &'static str = "production";

    /// Validates a name.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if valid {
            Ok(Self(name))
        } else {
            Err(Error::invalid_input(
                "environment name must be 1-64 characters of a-z, 0-9 and '-'",
            ))
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EnvironmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for EnvironmentName {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        Self::new(value)
    }
}

impl From<EnvironmentName> for String {
    fn from(value: EnvironmentName) -> Self {
        value.0
    }
}

/// A Pleo environment: its name, its authorization server and its External API base URL.
///
/// ```
/// use pleo_auth_core::Environment;
///
/// let staging = Environment::staging();
/// assert_eq!(staging.token_endpoint().as_str(), "https://auth.staging.pleo.io/oauth/token");
/// assert_eq!(staging.api_base().as_str(), "https://external.staging.pleo.io/");
///
/// // A local emulator: http is accepted on loopback only.
/// let local = Environment::custom("sandbox", "http://127.0.0.1:8080", "http://127.0.0.1:8080")?;
/// assert_eq!(local.name().as_str(), "sandbox");
/// assert!(Environment::custom("evil", "http://example.com", "http://example.com").is_err());
/// # Ok::<(), pleo_auth_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Environment {
    name: EnvironmentName,
    authorization_server: Url,
    api_base: Url,
}

impl Environment {
    /// Pleo's staging environment (`auth.staging.pleo.io`, `external.staging.pleo.io`).
    pub fn staging() -> Self {
        Self::known(
            EnvironmentName::STAGING,
            "https://auth.staging.pleo.io/",
            "https://external.staging.pleo.io/",
        )
    }

    /// Pleo's production environment (`auth.pleo.io`, `external.pleo.io`).
    pub fn production() -> Self {
        Self::known(
            EnvironmentName::PRODUCTION,
            "https://auth.pleo.io/",
            "https://external.pleo.io/",
        )
    }

    fn known(name: &str, auth: &str, api: &str) -> Self {
        Self {
            name: EnvironmentName(name.to_owned()),
            authorization_server: Url::parse(auth).expect("static URL is valid"),
            api_base: Url::parse(api).expect("static URL is valid"),
        }
    }

    /// A custom environment, such as the local sandbox.
    ///
    /// The name must not be `staging` or `production`, so a custom environment never shares
    /// credentials with Pleo's. Both URLs must be https, or http on a loopback host, with no
    /// credentials, query or fragment.
    pub fn custom(name: &str, authorization_server: &str, api_base: &str) -> Result<Self> {
        let name = EnvironmentName::new(name)?;
        if name.as_str() == EnvironmentName::STAGING || name.as_str() == EnvironmentName::PRODUCTION
        {
            return Err(Error::invalid_input(
                "a custom environment cannot be named 'staging' or 'production'",
            ));
        }
        Ok(Self {
            name,
            authorization_server: parse_base_url(authorization_server)?,
            api_base: parse_base_url(api_base)?,
        })
    }

    /// The environment's name.
    pub fn name(&self) -> &EnvironmentName {
        &self.name
    }

    /// Whether this is Pleo's production environment.
    pub fn is_production(&self) -> bool {
        self.name.as_str() == EnvironmentName::PRODUCTION
    }

    /// The authorization server's base URL.
    pub fn authorization_server(&self) -> &Url {
        &self.authorization_server
    }

    /// The External API's base URL.
    pub fn api_base(&self) -> &Url {
        &self.api_base
    }

    /// `{authorization server}/oauth/authorize`.
    pub fn authorize_endpoint(&self) -> Url {
        below(&self.authorization_server, "oauth/authorize")
    }

    /// `{authorization server}/oauth/token`.
    pub fn token_endpoint(&self) -> Url {
        below(&self.authorization_server, "oauth/token")
    }

    /// `{authorization server}/oauth/token/introspect`.
    pub fn introspection_endpoint(&self) -> Url {
        below(&self.authorization_server, "oauth/token/introspect")
    }

    /// The URL of an API path such as `/v1/introspect` or `/v2/employees?company_id=..`, below
    /// the API base URL: the result is always on the API host and under the base path.
    ///
    /// The path must be a plain absolute path: it starts with a single `/`, has no empty, `.`
    /// or `..` segment (also not percent-encoded, such as `%2e%2e`), and holds only URL path
    /// characters (`A-Z a-z 0-9 - . _ ~ ! $ & ' ( ) * + , ; = : @ /`) and `%` escapes of
    /// bytes other than `/`, `\`, `.` and control characters. An optional query follows a `?`
    /// and holds only visible ASCII other than `#`. Anything else, such as a backslash (which
    /// URL parsers read as `/`), a control character, a fragment or an absolute URL, is refused.
    ///
    /// ```
    /// use pleo_auth_core::{Environment, ErrorKind};
    ///
    /// let local = Environment::custom("sandbox", "http://127.0.0.1:8080", "http://127.0.0.1:8080/api")?;
    /// assert_eq!(
    ///     local.api_url("/v1/export-jobs?company_id=1")?.as_str(),
    ///     "http://127.0.0.1:8080/api/v1/export-jobs?company_id=1"
    /// );
    /// for hostile in ["/\\h:99999/x", "/%2e%2e/x", "//evil.example/x", "https://evil.example/x"] {
    ///     assert_eq!(local.api_url(hostile).unwrap_err().kind(), ErrorKind::InvalidInput);
    /// }
    /// # Ok::<(), pleo_auth_core::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for a path that is not a
    /// plain absolute path, or a query with characters outside visible ASCII.
    pub fn api_url(&self, path: &str) -> Result<Url> {
        let (path, query) = match path.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path, None),
        };
        let relative = path.strip_prefix('/').ok_or_else(|| {
            Error::invalid_input("API path must be an absolute path starting with '/'")
        })?;
        check_relative_path(relative)?;
        if let Some(query) = query {
            check_query(query)?;
        }
        let mut url = below(&self.api_base, relative);
        url.set_query(query);
        if url.origin() != self.api_base.origin()
            || !url.path().starts_with(self.api_base.path())
            || url.fragment().is_some()
        {
            return Err(Error::invalid_input(
                "API path must stay below the API base URL",
            ));
        }
        Ok(url)
    }

    /// Whether `url` points at this environment's API host (same scheme, host and port).
    pub fn is_api_url(&self, url: &Url) -> bool {
        url.origin() == self.api_base.origin()
    }
}

impl FromStr for Environment {
    type Err = Error;

    /// Parses `staging` or `production`. Custom environments need URLs: use [`Environment::custom`].
    fn from_str(s: &str) -> Result<Self> {
        match s {
            EnvironmentName::STAGING => Ok(Self::staging()),
            EnvironmentName::PRODUCTION => Ok(Self::production()),
            _ => Err(Error::invalid_input(
                "environment must be 'staging' or 'production'",
            )),
        }
    }
}

/// `base` (whose path ends with `/`) with `relative` appended to its path. `relative` is a
/// constant or has passed [`check_relative_path`], so it adds segments and never leaves the
/// base path.
fn below(base: &Url, relative: &str) -> Url {
    let mut url = base.clone();
    let path = format!("{}{relative}", base.path());
    url.set_path(&path);
    url
}

/// Checks the part of an API path after its leading `/`: non-empty segments of URL path
/// characters and `%` escapes, none of which is (or decodes to) `.` or `..`, and no escape of
/// `/`, `\`, `.` or a control character.
fn check_relative_path(relative: &str) -> Result<()> {
    let plain = |b: u8| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
            )
    };
    for segment in relative.split('/') {
        if segment.is_empty() {
            return Err(Error::invalid_input(
                "API path must not contain an empty segment ('//') or end with '/'",
            ));
        }
        let bytes = segment.as_bytes();
        let mut decoded_dots = 0;
        let mut only_dots = true;
        let mut i = 0;
        while i < bytes.len() {
            let byte = if bytes[i] == b'%' {
                let escaped = bytes
                    .get(i + 1..i + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .ok_or_else(|| {
                        Error::invalid_input("API path has a '%' that is not a two-digit escape")
                    })?;
                if matches!(escaped, b'/' | b'\\' | b'.') || escaped.is_ascii_control() {
                    return Err(Error::invalid_input(
                        "API path must not percent-encode '/', '\\', '.' or control characters",
                    ));
                }
                i += 3;
                escaped
            } else if plain(bytes[i]) {
                i += 1;
                bytes[i - 1]
            } else {
                return Err(Error::invalid_input(
                    "API path may hold only URL path characters and percent escapes",
                ));
            };
            if byte == b'.' {
                decoded_dots += 1;
            } else {
                only_dots = false;
            }
        }
        if only_dots && decoded_dots <= 2 {
            return Err(Error::invalid_input(
                "API path must not contain '.' or '..' segments",
            ));
        }
    }
    Ok(())
}

/// Checks an API query: visible ASCII other than `#` (so no fragment, space or control
/// character).
fn check_query(query: &str) -> Result<()> {
    if query.bytes().all(|b| b.is_ascii_graphic() && b != b'#') {
        Ok(())
    } else {
        Err(Error::invalid_input(
            "API query may hold only visible ASCII characters other than '#'",
        ))
    }
}

/// Parses a base URL and normalises it to end with `/`; see [`check_transport_security`].
pub fn parse_base_url(raw: &str) -> Result<Url> {
    let mut url =
        Url::parse(raw).map_err(|e| Error::invalid_input("invalid URL").with_source(e))?;
    check_transport_security(&url)?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Error::invalid_input(
            "base URL must not have a query or fragment",
        ));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// Refuses URLs that would expose credentials: anything but https, except http on a loopback
/// host (`127.0.0.0/8`, `::1`, `localhost`); and any URL with a user name or password.
pub fn check_transport_security(url: &Url) -> Result<()> {
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::invalid_input("URL must not contain credentials"));
    }
    match url.scheme() {
        "https" if url.host().is_some() => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        "http" => Err(Error::invalid_input(
            "http is allowed only for loopback hosts; use https",
        )),
        _ => Err(Error::invalid_input("URL scheme must be https")),
    }
}

/// Whether the URL's host is a loopback address or `localhost`.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pleo_environments_use_documented_urls() {
        let prod = Environment::production();
        assert_eq!(
            prod.authorize_endpoint().as_str(),
            "https://auth.pleo.io/oauth/authorize"
        );
        assert_eq!(
            prod.introspection_endpoint().as_str(),
            "https://auth.pleo.io/oauth/token/introspect"
        );
        assert_eq!(
            prod.api_url("/v1/introspect").unwrap().as_str(),
            "https://external.pleo.io/v1/introspect"
        );
        assert!(prod.is_production());
        assert!(!Environment::staging().is_production());
    }

    #[test]
    fn custom_environment_rules() {
        assert!(Environment::custom("sandbox", "http://localhost:1", "http://[::1]:2").is_ok());
        assert!(Environment::custom("sandbox", "https://a.example", "https://b.example").is_ok());
        for bad in [
            "http://10.0.0.1",
            "ftp://127.0.0.1",
            "https://user:pw@a.example",
            "https://a.example/?x=1",
            "not a url",
        ] {
            assert!(
                Environment::custom("x", bad, "https://b.example").is_err(),
                "{bad}"
            );
        }
        assert!(Environment::custom("staging", "https://a.example", "https://b.example").is_err());
        assert!(Environment::custom("Bad Name", "https://a.example", "https://b.example").is_err());
    }

    #[test]
    fn api_paths_cannot_leave_the_api_host() {
        let env =
            Environment::custom("sandbox", "http://127.0.0.1:9", "http://127.0.0.1:9/api").unwrap();
        assert_eq!(
            env.api_url("/v1/introspect").unwrap().as_str(),
            "http://127.0.0.1:9/api/v1/introspect"
        );
        for bad in ["//evil.example/x", "v1/x", "/../x", "/a/../../x"] {
            assert!(env.api_url(bad).is_err(), "{bad}");
        }
    }

    fn sandbox_with_base_path() -> Environment {
        Environment::custom("sandbox", "http://127.0.0.1:9", "http://127.0.0.1:9/api").unwrap()
    }

    #[test]
    fn hostile_api_paths_are_refused_with_a_typed_error() {
        let env = sandbox_with_base_path();
        for bad in [
            "/\\\\h:99999/x",
            "/\\h:99999/x",
            "/v1\\..\\..\\x",
            "/%2e%2e/x",
            "/%2E%2E/x",
            "/.%2e/x",
            "/%2e./x",
            "/v1/%2e/x",
            "/v1/./x",
            "/v1/..",
            "/v1/.",
            "/v1//x",
            "/v1/x/",
            "/",
            "",
            "v1/x",
            "//evil.example/x",
            "https://evil.example/x",
            "/https://evil.example/x",
            "/v1/x#frag",
            "/v1/x?a=1#frag",
            "/v1/x?a b",
            "/v1/x?a=\u{7f}",
            "/v1/\u{0}x",
            "/v1/\tx",
            "/v1/\nx",
            "/v1/x y",
            "/v1/ü",
            "/v1/%2fx",
            "/v1/%2F..%2Fx",
            "/v1/%5cx",
            "/v1/%00x",
            "/v1/%0ax",
            "/v1/%",
            "/v1/%g0",
            "/v1/%2",
            "/v1/[::1]",
            "/v1/x|y",
            "/v1/{x}",
        ] {
            let err = env.api_url(bad).expect_err(bad);
            assert_eq!(err.kind(), crate::ErrorKind::InvalidInput, "{bad}");
        }
    }

    #[test]
    fn plain_api_paths_stay_below_the_base() {
        let env = sandbox_with_base_path();
        for (path, expected) in [
            ("/v1/introspect", "http://127.0.0.1:9/api/v1/introspect"),
            (
                "/v1/installations/me:activate",
                "http://127.0.0.1:9/api/v1/installations/me:activate",
            ),
            (
                "/v2/employees?company_id=0c000000&x=%20",
                "http://127.0.0.1:9/api/v2/employees?company_id=0c000000&x=%20",
            ),
            ("/v1/x?", "http://127.0.0.1:9/api/v1/x?"),
            ("/v1/...", "http://127.0.0.1:9/api/v1/..."),
            ("/v1/a.b/.x", "http://127.0.0.1:9/api/v1/a.b/.x"),
            ("/v1/%41%c3%bc", "http://127.0.0.1:9/api/v1/%41%c3%bc"),
        ] {
            assert_eq!(env.api_url(path).unwrap().as_str(), expected, "{path}");
        }
        assert_eq!(
            Environment::staging().authorize_endpoint().as_str(),
            "https://auth.staging.pleo.io/oauth/authorize"
        );
        let nested =
            Environment::custom("sandbox", "http://127.0.0.1:9/as/", "http://127.0.0.1:9").unwrap();
        assert_eq!(
            nested.token_endpoint().as_str(),
            "http://127.0.0.1:9/as/oauth/token"
        );
    }
}
