//! The entry point, `Sandbox::builder()`, and the builder that validates a configuration and
//! starts a server.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use uuid::Uuid;

use crate::config::{
    ClientRegistration, Company, Config, Employee, Organisation, Vendor, validate_client,
};
use crate::error::SandboxError;
use crate::handle::SandboxHandle;
use crate::secrets::{digest, random_uuid};
use crate::shape::ServerShape;
use crate::{seed, server};

/// Entry point: `Sandbox::builder()`.
#[derive(Debug, Clone, Copy)]
pub struct Sandbox;

impl Sandbox {
    /// A builder with the default seed data ([`seed`]) and default settings.
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder::default()
    }
}

/// Configures and starts a sandbox. Obtain one with [`Sandbox::builder`].
#[derive(Debug, Clone)]
pub struct SandboxBuilder {
    environment_name: String,
    bind: SocketAddr,
    clients: Vec<ClientRegistration>,
    organisations: Vec<Organisation>,
    companies: Vec<Company>,
    access_token_ttl: Duration,
    refresh_token_ttl: Duration,
    code_ttl: Duration,
    consent_ttl: Duration,
    auto_approve: Option<Uuid>,
    secret_prefix: String,
    max_body_bytes: usize,
    server_shape: ServerShape,
}

impl Default for SandboxBuilder {
    fn default() -> Self {
        Self {
            environment_name: "sandbox".to_owned(),
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            clients: vec![seed::demo_client()],
            organisations: seed::organisations(),
            companies: seed::companies(),
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(60 * 24 * 3600),
            code_ttl: Duration::from_secs(60),
            consent_ttl: Duration::from_secs(10 * 60),
            auto_approve: None,
            secret_prefix: String::new(),
            max_body_bytes: 64 * 1024,
            server_shape: ServerShape::pleo(),
        }
    }
}

impl SandboxBuilder {
    /// The environment name (default `"sandbox"`): 1 to 32 characters of `a-z`, `0-9`, `-`.
    /// API keys carry it, and a sandbox refuses keys minted under another name
    /// (like staging and production).
    pub fn environment_name(mut self, name: &str) -> Self {
        name.clone_into(&mut self.environment_name);
        self
    }

    /// The loopback address to listen on (default `127.0.0.1:0`, a free port).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Registers an OAuth client in addition to [`seed::DEMO_CLIENT_ID`]. A registration with the
    /// same ID replaces the earlier one (including the demo client).
    pub fn client(mut self, client: ClientRegistration) -> Self {
        self.clients.retain(|c| c.id != client.id);
        self.clients.push(client);
        self
    }

    /// Adds a company to the seed data. Its organisation, if any, must also be seeded.
    pub fn company(mut self, company: Company) -> Self {
        self.companies.push(company);
        self
    }

    /// Adds an organisation to the seed data; add its companies with [`Self::company`].
    pub fn organisation(mut self, organisation: Organisation) -> Self {
        self.organisations.push(organisation);
        self
    }

    /// Access-token lifetime (default 15 minutes), reported as `expires_in`.
    pub fn access_token_ttl(mut self, ttl: Duration) -> Self {
        self.access_token_ttl = ttl;
        self
    }

    /// Refresh-token lifetime (default 60 days). Each rotation starts a new lifetime.
    pub fn refresh_token_ttl(mut self, ttl: Duration) -> Self {
        self.refresh_token_ttl = ttl;
        self
    }

    /// Authorization-code lifetime (default 60 seconds).
    pub fn code_ttl(mut self, ttl: Duration) -> Self {
        self.code_ttl = ttl;
        self
    }

    /// How long a consent page stays valid before it must be reloaded (default 10 minutes).
    pub fn consent_ttl(mut self, ttl: Duration) -> Self {
        self.consent_ttl = ttl;
        self
    }

    /// Auto-approve mode: with `Some(id)` (a company or organisation), `GET /oauth/authorize`
    /// skips the consent page and redirects with a code at once. The subject is the one named by
    /// `urn_pleo_params_oauth_subject` if the request carries it, else `id`. Default `None`.
    pub fn auto_approve(mut self, subject: Option<Uuid>) -> Self {
        self.auto_approve = subject;
        self
    }

    /// A prefix for every token, code, API key and consent ID the sandbox mints (default empty):
    /// up to 64 characters of `A-Z a-z 0-9 - . _ ~`. Tests put a canary marker here.
    pub fn secret_prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.secret_prefix);
        self
    }

    /// The largest request body accepted, in bytes (default 64 KiB). Larger bodies get 413.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// How the authorization server presents itself (default [`ServerShape::pleo`]): endpoint
    /// paths, a revocation endpoint, extra scope names and token-response members, the
    /// `expires_in` format and an issuer. It can be changed at run time with
    /// [`SandboxHandle::set_server_shape`].
    pub fn server_shape(mut self, shape: ServerShape) -> Self {
        self.server_shape = shape;
        self
    }

    /// Validates the configuration, binds the listening socket and starts serving on the
    /// current Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`SandboxError::InvalidConfig`] for an inconsistent configuration,
    /// [`SandboxError::NotLoopback`] for a non-loopback address, [`SandboxError::Bind`] when the
    /// socket cannot be bound, [`SandboxError::Random`] when no randomness is available.
    pub async fn start(self) -> Result<SandboxHandle, SandboxError> {
        self.validate()?;
        if !self.bind.ip().is_loopback() {
            return Err(SandboxError::NotLoopback(self.bind));
        }
        random_uuid().map_err(|_| SandboxError::Random)?;
        let (employees, vendors) = resources(&self.companies);
        let config = Config {
            environment_name: self.environment_name,
            access_ttl: self.access_token_ttl,
            refresh_ttl: self.refresh_token_ttl,
            code_ttl: self.code_ttl,
            consent_ttl: self.consent_ttl,
            secret_prefix: self.secret_prefix,
            organisations: self.organisations,
            companies: self.companies,
            employees,
            vendors,
        };
        server::start(
            config,
            self.clients,
            self.auto_approve,
            self.server_shape,
            self.bind,
            self.max_body_bytes,
        )
        .await
    }

    fn validate(&self) -> Result<(), SandboxError> {
        let invalid = |msg: String| Err(SandboxError::InvalidConfig(msg));
        let name = &self.environment_name;
        if name.is_empty()
            || name.len() > 32
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return invalid(format!(
                "environment name {name:?} must be 1 to 32 characters of a-z, 0-9 and -"
            ));
        }
        let prefix = &self.secret_prefix;
        if prefix.len() > 64
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        {
            return invalid(
                "the secret prefix must be up to 64 characters of A-Z a-z 0-9 - . _ ~".to_owned(),
            );
        }
        for (what, ttl) in [
            ("access token", self.access_token_ttl),
            ("refresh token", self.refresh_token_ttl),
            ("code", self.code_ttl),
            ("consent", self.consent_ttl),
        ] {
            if ttl < Duration::from_secs(1) {
                return invalid(format!("the {what} lifetime must be at least one second"));
            }
        }
        self.server_shape.validate()?;
        if self.max_body_bytes < 1024 {
            return invalid("the body limit must be at least 1024 bytes".to_owned());
        }
        let mut ids: Vec<Uuid> = self.organisations.iter().map(|o| o.id).collect();
        ids.extend(self.companies.iter().map(|c| c.id));
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != ids.len() {
            return invalid("company and organisation IDs must be distinct".to_owned());
        }
        for c in &self.companies {
            if let Some(org) = c.organisation
                && !self.organisations.iter().any(|o| o.id == org)
            {
                return invalid(format!("company {} names unknown organisation {org}", c.id));
            }
        }
        if let Some(id) = self.auto_approve
            && !ids.contains(&id)
        {
            return invalid(format!("auto-approve subject {id} is not seeded"));
        }
        for client in &self.clients {
            validate_client(client).map_err(SandboxError::InvalidConfig)?;
        }
        Ok(())
    }
}

/// Deterministic employees and vendors for every company.
fn resources(companies: &[Company]) -> (Vec<Employee>, Vec<Vendor>) {
    const PEOPLE: [(&str, &str); 3] =
        [("Ada", "Lovelace"), ("Alan", "Turing"), ("Grace", "Hopper")];
    const VENDORS: [&str; 2] = ["Office Supplies Co", "Cloud Hosting Ltd"];
    let mut employees = Vec::new();
    let mut vendors = Vec::new();
    for c in companies {
        let domain: String = c
            .name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_ascii_lowercase();
        for (first, last) in PEOPLE {
            employees.push(Employee {
                id: derived_uuid(&format!("employee:{}:{first}", c.id)),
                company: c.id,
                first_name: first,
                last_name: last,
                email: format!(
                    "{}.{}@{domain}.example",
                    first.to_ascii_lowercase(),
                    last.to_ascii_lowercase()
                ),
            });
        }
        for name in VENDORS {
            vendors.push(Vendor {
                id: derived_uuid(&format!("vendor:{}:{name}", c.id)),
                company: c.id,
                name,
            });
        }
    }
    (employees, vendors)
}

/// A UUID derived deterministically from some text (for seeded resource data).
fn derived_uuid(text: &str) -> Uuid {
    let d = digest(text);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&d[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_configurations_are_refused() {
        let b = Sandbox::builder().environment_name("Prod");
        assert!(b.validate().is_err());
        let b = Sandbox::builder().secret_prefix("a:b");
        assert!(b.validate().is_err());
        let b = Sandbox::builder().company(Company::new(seed::GLOBEX, "dup"));
        assert!(b.validate().is_err());
        let b =
            Sandbox::builder().company(Company::new(Uuid::nil(), "x").in_organisation(Uuid::max()));
        assert!(b.validate().is_err());
        assert!(Sandbox::builder().validate().is_ok());
    }
}
