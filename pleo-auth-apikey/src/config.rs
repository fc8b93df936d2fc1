//! What an integration declares about its Integrated API keys.

use pleo_auth_core::{ClientId, Environment, ScopeSet};

/// The settings of one integration's Integrated API keys in one environment.
///
/// ```
/// use pleo_auth_apikey::ApiKeyConfig;
/// use pleo_auth_core::{ClientId, Environment};
///
/// let config = ApiKeyConfig::new(Environment::staging(), ClientId::new("acme-erp")?)
///     .with_required_scopes("export-jobs:read export-jobs:write".parse()?);
/// assert_eq!(config.required_scopes().len(), 2);
/// # Ok::<(), pleo_auth_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ApiKeyConfig {
    environment: Environment,
    integration_id: ClientId,
    required_scopes: ScopeSet,
    pleo_client_id: Option<String>,
}

impl ApiKeyConfig {
    /// Keys of `integration_id` (the integration's own id, used in store keys) in
    /// `environment`, with no required scopes.
    pub fn new(environment: Environment, integration_id: ClientId) -> Self {
        Self {
            environment,
            integration_id,
            required_scopes: ScopeSet::new(),
            pleo_client_id: None,
        }
    }

    /// The scopes every key must carry; a key without one of them is refused at connect and
    /// replace, naming the missing scopes.
    pub fn with_required_scopes(mut self, scopes: ScopeSet) -> Self {
        self.required_scopes = scopes;
        self
    }

    /// The client id Pleo reports in `/v1/introspect` for this integration's keys. When set,
    /// a key that Pleo reports for another client (another vendor's key, or a Standalone key)
    /// is refused.
    pub fn with_pleo_client_id(mut self, client_id: impl Into<String>) -> Self {
        self.pleo_client_id = Some(client_id.into());
        self
    }

    /// The environment the keys belong to.
    pub fn environment(&self) -> &Environment {
        &self.environment
    }

    /// The integration's id.
    pub fn integration_id(&self) -> &ClientId {
        &self.integration_id
    }

    /// The scopes every key must carry.
    pub fn required_scopes(&self) -> &ScopeSet {
        &self.required_scopes
    }

    /// The client id Pleo must report for a key, if configured.
    pub fn pleo_client_id(&self) -> Option<&str> {
        self.pleo_client_id.as_deref()
    }
}
