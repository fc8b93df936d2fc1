//! The server shape: how the authorization server presents itself. Pleo's shape is the default;
//! other shapes make the sandbox behave like an independent RFC 6749 authorization server.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use url::Url;

use crate::SandboxError;

/// How token responses write `expires_in` (RFC 6749 §5.1 makes it a recommended number).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpiresInFormat {
    /// A JSON number, `"expires_in": 900` (Pleo's and the default).
    #[default]
    Number,
    /// A numeric JSON string, `"expires_in": "900"`, as some servers send it.
    String,
    /// No `expires_in` member at all (RFC 6749 §5.1 allows it).
    Omitted,
}

/// The members of a token response that the sandbox always writes itself.
const STANDARD_TOKEN_MEMBERS: [&str; 5] = [
    "access_token",
    "token_type",
    "expires_in",
    "refresh_token",
    "scope",
];

/// How the authorization server presents itself: endpoint paths, scope names outside Pleo's
/// `resource:permission` form, extra token-response members, the `expires_in` format and an
/// issuer. [`ServerShape::default`] is Pleo's shape. Strict refresh-token rotation is on in every
/// shape.
///
/// Set it with [`SandboxBuilder::server_shape`](crate::SandboxBuilder::server_shape), at run
/// time with [`SandboxHandle::set_server_shape`](crate::SandboxHandle::set_server_shape), or from
/// another process with `PUT /_sandbox/server-shape` (a JSON object with any of these fields;
/// missing fields take their default).
///
/// ```
/// use pleo_auth_sandbox::{ExpiresInFormat, ServerShape};
///
/// let shape = ServerShape {
///     token_path: "/connect/token".to_owned(),
///     revocation_path: Some("/connect/revoke".to_owned()),
///     extra_scopes: vec!["openid".to_owned(), "offline_access".to_owned()],
///     expires_in: ExpiresInFormat::String,
///     ..ServerShape::default()
/// };
/// assert!(shape.validate().is_ok());
/// assert_eq!(ServerShape::default().token_path, "/oauth/token");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerShape {
    /// The authorization endpoint, `GET` (and the consent form's `POST`). Default
    /// `/oauth/authorize`.
    pub authorize_path: String,
    /// The token endpoint. Default `/oauth/token`.
    pub token_path: String,
    /// The token introspection endpoint (RFC 7662). Default `/oauth/token/introspect`.
    pub introspection_path: String,
    /// The token revocation endpoint (RFC 7009), if the server has one. Default `None`: Pleo
    /// documents none.
    pub revocation_path: Option<String>,
    /// Scope names outside the client's registered scopes (for example `openid`, `profile`,
    /// `offline_access`) that the authorization endpoint accepts from any client. A granted
    /// name is echoed in the token response's `scope` like any other. Default none.
    pub extra_scopes: Vec<String>,
    /// Scope names the server appends to every token response's `scope` on its own, whether or
    /// not they were requested. Default none.
    pub added_scopes: Vec<String>,
    /// Members added to every successful token response (for example an `id_token` or nested
    /// objects). They cannot replace a standard member (`access_token`, `token_type`,
    /// `expires_in`, `refresh_token`, `scope`). Default none.
    pub extra_token_fields: Map<String, Value>,
    /// How `expires_in` is written. Default a JSON number.
    pub expires_in: ExpiresInFormat,
    /// The issuer identifier (RFC 8414 form: an `http` or `https` URL without query or
    /// fragment). When set, every redirect from the authorization endpoint, success or error,
    /// carries it as `iss` (RFC 9207), and token introspection answers it as `iss`. Default
    /// `None`: no `iss` in redirects, and introspection's `iss` is the base URL without the
    /// trailing slash.
    pub issuer: Option<String>,
}

impl Default for ServerShape {
    fn default() -> Self {
        Self::pleo()
    }
}

impl ServerShape {
    /// Pleo's shape (the default): `/oauth/authorize`, `/oauth/token`,
    /// `/oauth/token/introspect`, no revocation endpoint, no extra scopes or members,
    /// `expires_in` as a number, no `iss` in redirects.
    pub fn pleo() -> Self {
        Self {
            authorize_path: "/oauth/authorize".to_owned(),
            token_path: "/oauth/token".to_owned(),
            introspection_path: "/oauth/token/introspect".to_owned(),
            revocation_path: None,
            extra_scopes: Vec::new(),
            added_scopes: Vec::new(),
            extra_token_fields: Map::new(),
            expires_in: ExpiresInFormat::Number,
            issuer: None,
        }
    }

    /// A shape that differs from Pleo's wherever RFC 6749 allows: endpoints at `/authorize`,
    /// `/token`, `/introspect` and `/revoke`; `openid`, `profile`, `email` and `offline_access`
    /// accepted as extra scopes; `offline_access` added to every token response; an `id_token`
    /// and nested members in token responses; `expires_in` as a numeric string. The issuer stays
    /// unset, because the sandbox's URL is known only once it runs: set it to
    /// [`SandboxHandle::issuer`](crate::SandboxHandle::issuer) (or any URL) to get `iss`.
    pub fn generic() -> Self {
        let mut extra = Map::new();
        extra.insert(
            "id_token".to_owned(),
            Value::from("eyJhbGciOiJub25lIn0.eyJzdWIiOiJzYW5kYm94In0."),
        );
        extra.insert("refresh_expires_in".to_owned(), Value::from(5_184_000));
        extra.insert("not-before-policy".to_owned(), Value::from(0));
        extra.insert(
            "authorization_details".to_owned(),
            serde_json::json!([{ "type": "sandbox", "locations": ["https://example.invalid"] }]),
        );
        Self {
            authorize_path: "/authorize".to_owned(),
            token_path: "/token".to_owned(),
            introspection_path: "/introspect".to_owned(),
            revocation_path: Some("/revoke".to_owned()),
            extra_scopes: ["openid", "profile", "email", "offline_access"]
                .map(str::to_owned)
                .to_vec(),
            added_scopes: vec!["offline_access".to_owned()],
            extra_token_fields: extra,
            expires_in: ExpiresInFormat::String,
            issuer: None,
        }
    }

    /// Checks that the shape can be served.
    ///
    /// # Errors
    ///
    /// [`SandboxError::InvalidConfig`] naming the first problem: a path that is not absolute, contains characters
    /// other than `A-Z a-z 0-9 - . _ ~ / : @ ! $ & ' ( ) * + , ; =`, lies under `/_sandbox`,
    /// `/v1/` or `/v2/`, or equals another endpoint's path; a scope name that is not an RFC 6749
    /// scope token; an extra member that replaces a standard one; an issuer that is not an
    /// `http(s)` URL without query or fragment.
    pub fn validate(&self) -> Result<(), SandboxError> {
        self.check().map_err(SandboxError::InvalidConfig)
    }

    fn check(&self) -> Result<(), String> {
        let mut paths = vec![
            ("authorize_path", self.authorize_path.as_str()),
            ("token_path", self.token_path.as_str()),
            ("introspection_path", self.introspection_path.as_str()),
        ];
        if let Some(p) = &self.revocation_path {
            paths.push(("revocation_path", p.as_str()));
        }
        for (i, (name, path)) in paths.iter().enumerate() {
            check_path(name, path)?;
            if let Some((other, _)) = paths[..i].iter().find(|(_, p)| p == path) {
                return Err(format!("{name} {path:?} is also {other}"));
            }
        }
        for scope in self.extra_scopes.iter().chain(&self.added_scopes) {
            if !is_scope_token(scope) {
                return Err(format!(
                    "scope {scope:?} is not an RFC 6749 scope token (printable ASCII, no space, '\"' or '\\')"
                ));
            }
        }
        if let Some(member) = STANDARD_TOKEN_MEMBERS
            .iter()
            .find(|m| self.extra_token_fields.contains_key(**m))
        {
            return Err(format!(
                "extra_token_fields cannot replace the standard member {member:?}"
            ));
        }
        if let Some(issuer) = &self.issuer {
            let valid = Url::parse(issuer).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.query().is_none()
                    && u.fragment().is_none()
            });
            if !valid {
                return Err(format!(
                    "issuer {issuer:?} must be an http or https URL without query or fragment"
                ));
            }
        }
        Ok(())
    }

    /// Whether the authorization endpoint accepts `scope` for every client.
    pub(crate) fn is_extra_scope(&self, scope: &str) -> bool {
        self.extra_scopes.iter().any(|s| s == scope)
    }

    /// The `scope` member of a token response: the granted names, then the added ones.
    pub(crate) fn response_scope(&self, granted: &[String]) -> String {
        let mut names: Vec<&str> = granted.iter().map(String::as_str).collect();
        for added in &self.added_scopes {
            if !names.contains(&added.as_str()) {
                names.push(added);
            }
        }
        names.join(" ")
    }

    /// The body of a successful token response.
    pub(crate) fn token_response(
        &self,
        access_token: &str,
        refresh_token: &str,
        expires_in: u64,
        scopes: &[String],
    ) -> Value {
        let mut body = self.extra_token_fields.clone();
        body.insert("access_token".to_owned(), Value::from(access_token));
        body.insert("token_type".to_owned(), Value::from("Bearer"));
        match self.expires_in {
            ExpiresInFormat::Number => {
                body.insert("expires_in".to_owned(), Value::from(expires_in));
            }
            ExpiresInFormat::String => {
                body.insert("expires_in".to_owned(), Value::from(expires_in.to_string()));
            }
            ExpiresInFormat::Omitted => {}
        }
        body.insert("refresh_token".to_owned(), Value::from(refresh_token));
        body.insert("scope".to_owned(), Value::from(self.response_scope(scopes)));
        Value::Object(body)
    }
}

fn check_path(name: &str, path: &str) -> Result<(), String> {
    let allowed = |b: u8| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'/'
                    | b':'
                    | b'@'
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
            )
    };
    if !path.starts_with('/') || path.len() < 2 || path.len() > 256 || !path.bytes().all(allowed) {
        return Err(format!(
            "{name} {path:?} must be an absolute path of 2 to 256 URL path characters"
        ));
    }
    if path.contains("//") || path.split('/').any(|s| s == "." || s == "..") {
        return Err(format!(
            "{name} {path:?} must not contain empty, '.' or '..' segments"
        ));
    }
    if path == "/_sandbox"
        || path.starts_with("/_sandbox/")
        || path.starts_with("/v1/")
        || path.starts_with("/v2/")
    {
        return Err(format!(
            "{name} {path:?} collides with the administration API or the External API"
        ));
    }
    Ok(())
}

/// RFC 6749 §3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_and_generic_shapes_are_valid() {
        assert_eq!(ServerShape::default(), ServerShape::pleo());
        ServerShape::pleo().validate().unwrap();
        ServerShape::generic().validate().unwrap();
    }

    #[test]
    fn unusable_shapes_are_refused() {
        let base = ServerShape::pleo;
        let bad = [
            ServerShape {
                token_path: "token".to_owned(),
                ..base()
            },
            ServerShape {
                token_path: "/oauth/authorize".to_owned(),
                ..base()
            },
            ServerShape {
                revocation_path: Some("/oauth/token".to_owned()),
                ..base()
            },
            ServerShape {
                token_path: "/_sandbox/token".to_owned(),
                ..base()
            },
            ServerShape {
                introspection_path: "/v1/introspect".to_owned(),
                ..base()
            },
            ServerShape {
                token_path: "/a/../token".to_owned(),
                ..base()
            },
            ServerShape {
                token_path: "/to ken".to_owned(),
                ..base()
            },
            ServerShape {
                token_path: "/token?x=1".to_owned(),
                ..base()
            },
            ServerShape {
                extra_scopes: vec!["open id".to_owned()],
                ..base()
            },
            ServerShape {
                added_scopes: vec![String::new()],
                ..base()
            },
            ServerShape {
                extra_token_fields: [("scope".to_owned(), Value::from("x"))]
                    .into_iter()
                    .collect(),
                ..base()
            },
            ServerShape {
                issuer: Some("https://issuer.example/?x=1".to_owned()),
                ..base()
            },
            ServerShape {
                issuer: Some("not a url".to_owned()),
                ..base()
            },
        ];
        for shape in bad {
            assert!(shape.validate().is_err(), "{shape:?}");
        }
    }

    #[test]
    fn token_responses_follow_the_shape() {
        let scopes = vec!["users:read".to_owned(), "openid".to_owned()];
        let pleo = ServerShape::pleo().token_response("a", "r", 900, &scopes);
        assert_eq!(
            pleo,
            serde_json::json!({
                "access_token": "a", "token_type": "Bearer", "expires_in": 900,
                "refresh_token": "r", "scope": "users:read openid"
            })
        );
        let generic = ServerShape::generic().token_response("a", "r", 900, &scopes);
        assert_eq!(generic["expires_in"], "900");
        assert_eq!(generic["scope"], "users:read openid offline_access");
        assert!(generic["id_token"].is_string());
        assert!(generic["authorization_details"][0]["locations"].is_array());
        let omitted = ServerShape {
            expires_in: ExpiresInFormat::Omitted,
            ..ServerShape::pleo()
        };
        assert!(
            omitted
                .token_response("a", "r", 900, &scopes)
                .get("expires_in")
                .is_none()
        );
    }

    #[test]
    fn partial_json_takes_defaults_and_unknown_fields_are_refused() {
        let shape: ServerShape = serde_json::from_str(r#"{"token_path":"/t"}"#).unwrap();
        assert_eq!(shape.token_path, "/t");
        assert_eq!(shape.authorize_path, "/oauth/authorize");
        assert!(serde_json::from_str::<ServerShape>(r#"{"tokn_path":"/t"}"#).is_err());
    }
}
