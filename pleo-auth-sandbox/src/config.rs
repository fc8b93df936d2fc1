//! Configuration: registered clients, companies, organisations and the fixed configuration of a
//! running sandbox.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;
use uuid::Uuid;

/// A registered OAuth 2.0 client.
///
/// `Debug` does not print the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRegistration {
    /// The client ID (`client_id`). It must not contain `:`.
    pub id: String,
    /// The client secret, checked with `client_secret_basic`.
    pub secret: String,
    /// The name shown on the consent page and returned as `applicationName` by `/v1/introspect`.
    pub name: String,
    /// Registered redirect URIs. Matching is exact, except that a loopback `http` URI
    /// (`127.0.0.1`, `localhost`, `[::1]`) matches any port (RFC 8252 §7.3).
    pub redirect_uris: Vec<String>,
    /// The scopes this client may request; Integrated API keys minted for it carry all of them.
    pub scopes: Vec<String>,
    /// Whether the token and introspection endpoints also accept `client_id` and
    /// `client_secret` in the form body (`client_secret_post`). Pleo documents Basic only, so
    /// the default is `false`: a body secret is refused with `invalid_client`.
    #[serde(default)]
    pub accept_client_secret_post: bool,
}

impl fmt::Debug for ClientRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientRegistration")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("redirect_uris", &self.redirect_uris)
            .field("scopes", &self.scopes)
            .field("accept_client_secret_post", &self.accept_client_secret_post)
            .finish_non_exhaustive()
    }
}

impl ClientRegistration {
    /// A client `id` (also its name) with `secret`, one redirect URI and `scopes`, that
    /// authenticates with `client_secret_basic` only.
    ///
    /// ```
    /// use pleo_auth_sandbox::ClientRegistration;
    ///
    /// let client = ClientRegistration::new("my-app", "my-secret", "http://127.0.0.1/cb", &["users:read"]);
    /// assert_eq!(client.name, "my-app");
    /// assert!(!client.accept_client_secret_post);
    /// ```
    pub fn new(id: &str, secret: &str, redirect_uri: &str, scopes: &[&str]) -> Self {
        Self {
            id: id.to_owned(),
            secret: secret.to_owned(),
            name: id.to_owned(),
            redirect_uris: vec![redirect_uri.to_owned()],
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            accept_client_secret_post: false,
        }
    }
}

/// A Pleo company, optionally part of an organisation (multi-entity).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Company {
    /// The company ID (`company_id`; subject URN `urn:pleo:company:<id>`).
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// The organisation the company belongs to, if any.
    pub organisation: Option<Uuid>,
}

impl Company {
    /// A company in no organisation.
    pub fn new(id: Uuid, name: impl Into<String>) -> Self {
        Self {
            id,
            name: name.into(),
            organisation: None,
        }
    }

    /// The same company, as a member of `organisation`.
    pub fn in_organisation(mut self, organisation: Uuid) -> Self {
        self.organisation = Some(organisation);
        self
    }
}

/// A Pleo organisation: a group of companies (subject URN `urn:pleo:organisation:<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Organisation {
    /// The organisation ID.
    pub id: Uuid,
    /// Display name.
    pub name: String,
}

impl Organisation {
    /// An organisation.
    pub fn new(id: Uuid, name: impl Into<String>) -> Self {
        Self {
            id,
            name: name.into(),
        }
    }
}

/// Who a credential belongs to: one company or a whole organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Subject {
    Company(Uuid),
    Organisation(Uuid),
}

impl Subject {
    pub(crate) fn id(self) -> Uuid {
        match self {
            Self::Company(id) | Self::Organisation(id) => id,
        }
    }

    pub(crate) fn urn(self) -> String {
        match self {
            Self::Company(id) => format!("urn:pleo:company:{id}"),
            Self::Organisation(id) => format!("urn:pleo:organisation:{id}"),
        }
    }

    /// Parses `urn:pleo:company:<uuid>` or `urn:pleo:organisation:<uuid>`.
    pub(crate) fn parse_urn(s: &str) -> Option<Self> {
        if let Some(id) = s.strip_prefix("urn:pleo:company:") {
            Uuid::parse_str(id).ok().map(Self::Company)
        } else if let Some(id) = s.strip_prefix("urn:pleo:organisation:") {
            Uuid::parse_str(id).ok().map(Self::Organisation)
        } else {
            None
        }
    }
}

/// A seeded employee (served by `GET /v2/employees`).
#[derive(Debug, Clone)]
pub(crate) struct Employee {
    pub(crate) id: Uuid,
    pub(crate) company: Uuid,
    pub(crate) first_name: &'static str,
    pub(crate) last_name: &'static str,
    pub(crate) email: String,
}

/// A seeded vendor (served by `GET /v1/vendors`).
#[derive(Debug, Clone)]
pub(crate) struct Vendor {
    pub(crate) id: Uuid,
    pub(crate) company: Uuid,
    pub(crate) name: &'static str,
}

/// The fixed part of a running sandbox's configuration.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) environment_name: String,
    pub(crate) access_ttl: Duration,
    pub(crate) refresh_ttl: Duration,
    pub(crate) code_ttl: Duration,
    pub(crate) consent_ttl: Duration,
    pub(crate) secret_prefix: String,
    pub(crate) organisations: Vec<Organisation>,
    pub(crate) companies: Vec<Company>,
    pub(crate) employees: Vec<Employee>,
    pub(crate) vendors: Vec<Vendor>,
}

impl Config {
    /// The subject with this ID, if a company or organisation has it.
    pub(crate) fn subject(&self, id: Uuid) -> Option<Subject> {
        if self.companies.iter().any(|c| c.id == id) {
            Some(Subject::Company(id))
        } else if self.organisations.iter().any(|o| o.id == id) {
            Some(Subject::Organisation(id))
        } else {
            None
        }
    }

    /// Whether the subject exists.
    pub(crate) fn knows(&self, subject: Subject) -> bool {
        self.subject(subject.id()) == Some(subject)
    }

    /// The companies a credential for `subject` may act for.
    pub(crate) fn covered(&self, subject: Subject) -> Vec<Uuid> {
        match subject {
            Subject::Company(id) => vec![id],
            Subject::Organisation(org) => self
                .companies
                .iter()
                .filter(|c| c.organisation == Some(org))
                .map(|c| c.id)
                .collect(),
        }
    }

    /// Whether a credential for `subject` covers `company`.
    pub(crate) fn covers(&self, subject: Subject, company: Uuid) -> bool {
        match subject {
            Subject::Company(id) => id == company,
            Subject::Organisation(org) => self
                .companies
                .iter()
                .any(|c| c.id == company && c.organisation == Some(org)),
        }
    }
}

/// Checks one client registration.
pub(crate) fn validate_client(client: &ClientRegistration) -> Result<(), String> {
    if client.id.is_empty() || client.id.contains(':') {
        return Err(format!(
            "client ID {:?} must be non-empty and contain no ':'",
            client.id
        ));
    }
    if client.secret.is_empty() {
        return Err(format!("client {:?} needs a secret", client.id));
    }
    if client.redirect_uris.is_empty() {
        return Err(format!("client {:?} needs a redirect URI", client.id));
    }
    for uri in &client.redirect_uris {
        match Url::parse(uri) {
            Ok(u) if u.fragment().is_none() && !u.cannot_be_a_base() => {}
            _ => {
                return Err(format!(
                    "redirect URI {uri:?} of client {:?} must be an absolute URI without fragment",
                    client.id
                ));
            }
        }
    }
    if client
        .scopes
        .iter()
        .any(|s| s.is_empty() || s.contains(char::is_whitespace))
    {
        return Err(format!(
            "scopes of client {:?} must be non-empty and contain no whitespace",
            client.id
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_urns_round_trip() {
        let id = Uuid::from_u128(0x5e1f_0000_0000_4000_8000_0000_0000_0001);
        for s in [Subject::Company(id), Subject::Organisation(id)] {
            assert_eq!(Subject::parse_urn(&s.urn()), Some(s));
        }
        assert_eq!(Subject::parse_urn("urn:pleo:company:nope"), None);
        assert_eq!(Subject::parse_urn(&id.to_string()), None);
    }

    #[test]
    fn client_debug_hides_the_secret() {
        let client = ClientRegistration::new(
            "client-id",
            "client-secret-canary",
            "http://127.0.0.1/callback",
            &["users:read"],
        );
        let shown = format!("{client:?}");
        assert!(!shown.contains("client-secret-canary"));
        assert!(shown.contains("client-id"));
    }
}
