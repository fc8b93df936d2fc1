//! `PleoAuth`: one store, the configured methods and the authenticated client, wired together.

use std::fmt;
use std::sync::Arc;

use pleo_auth_core::{
    DynClock, DynCredentialProvider, DynLease, DynSecretStore, Environment, SecretStore,
    SystemClock, TenantLinks,
};

use crate::error::{Error, Result};
use crate::events::{DEFAULT_EVENT_CAPACITY, DynPleoEventSink, EventHub, PleoEvent};
use crate::provider::CompositeProvider;

/// A customisation of the HTTP client, applied by [`PleoAuthBuilder::build`].
#[cfg(feature = "http")]
type ClientSettings =
    Box<dyn FnOnce(pleo_auth_http::PleoClientBuilder) -> pleo_auth_http::PleoClientBuilder + Send>;

/// Builds a [`PleoAuth`]. Obtain one with [`PleoAuth::builder`].
///
/// The environment and the store are required; each method (OAuth, Integrated API keys, a
/// Standalone API key) is optional, and every configured method must be for the builder's
/// environment.
#[must_use]
pub struct PleoAuthBuilder {
    environment: Option<Environment>,
    store: Option<std::result::Result<DynSecretStore, pleo_auth_core::Error>>,
    lease: Option<DynLease>,
    process_local_lease_accepted: bool,
    clock: Option<DynClock>,
    event_sinks: Vec<DynPleoEventSink>,
    event_capacity: usize,
    #[cfg(feature = "oauth")]
    oauth: Option<pleo_auth_oauth::OAuthConfig>,
    #[cfg(feature = "oauth")]
    refresh_policy: Option<pleo_auth_oauth::RefreshPolicy>,
    #[cfg(feature = "oauth")]
    oauth_events: Option<pleo_auth_oauth::DynEventSink>,
    #[cfg(feature = "apikey")]
    api_keys: Option<pleo_auth_apikey::ApiKeyConfig>,
    #[cfg(feature = "apikey")]
    standalone: Option<pleo_auth_apikey::StandaloneKey>,
    #[cfg(feature = "http")]
    client_settings: Option<ClientSettings>,
}

impl fmt::Debug for PleoAuthBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("PleoAuthBuilder");
        d.field("environment", &self.environment.as_ref().map(|e| e.name()))
            .field("store", &self.store)
            .field("lease", &self.lease);
        #[cfg(feature = "oauth")]
        d.field("oauth", &self.oauth);
        #[cfg(feature = "apikey")]
        d.field("api_keys", &self.api_keys)
            .field("standalone", &self.standalone);
        d.finish_non_exhaustive()
    }
}

impl PleoAuthBuilder {
    fn new() -> Self {
        Self {
            environment: None,
            store: None,
            lease: None,
            process_local_lease_accepted: false,
            clock: None,
            event_sinks: Vec::new(),
            event_capacity: DEFAULT_EVENT_CAPACITY,
            #[cfg(feature = "oauth")]
            oauth: None,
            #[cfg(feature = "oauth")]
            refresh_policy: None,
            #[cfg(feature = "oauth")]
            oauth_events: None,
            #[cfg(feature = "apikey")]
            api_keys: None,
            #[cfg(feature = "apikey")]
            standalone: None,
            #[cfg(feature = "http")]
            client_settings: None,
        }
    }

    /// The Pleo environment: [`Environment::production`], [`Environment::staging`], or a custom
    /// one such as the local sandbox. Required.
    pub fn environment(mut self, environment: Environment) -> Self {
        self.environment = Some(environment);
        self
    }

    /// The secret store that keeps grants, keys, pending authorizations and tenant links.
    /// Required (or [`file_store`](Self::file_store)).
    pub fn store(mut self, store: DynSecretStore) -> Self {
        self.store = Some(Ok(store));
        self
    }

    /// Like [`store`](Self::store), for a concrete store type.
    pub fn store_from<S: SecretStore>(self, store: S) -> Self {
        self.store(Arc::new(store))
    }

    /// Opens the embedded [`FileStore`](crate::stores::file::FileStore) in `root` (created
    /// `0700` if missing) as the store. An error opening it is reported by
    /// [`build`](Self::build).
    #[cfg(feature = "file")]
    #[cfg_attr(docsrs, doc(cfg(feature = "file")))]
    pub fn file_store(mut self, root: impl Into<std::path::PathBuf>) -> Self {
        self.store = Some(
            pleo_auth_stores::file::FileStore::open(root)
                .map(|store| Arc::new(store) as DynSecretStore),
        );
        self
    }

    /// The lease that lets one replica at a time refresh a grant. The default spans every
    /// process that can see the store ([`lease_for`](crate::lease_for)): the store's own lease
    /// (Redis), else a [`StoreLease`](crate::StoreLease) on the store; an in-process lease only
    /// for a store no other process sees ([`MemoryStore`](crate::MemoryStore)). Most
    /// integrations never call this.
    pub fn lease(mut self, lease: DynLease) -> Self {
        self.lease = Some(lease);
        self
    }

    /// **Dangerous.** Accepts a lease that coordinates only this process's tasks with a store
    /// that other processes can see. Only sound when no other process ever refreshes these
    /// grants: two processes that refresh one grant present the same refresh token, and Pleo
    /// revokes the grant. Without this, [`build`](Self::build) refuses that combination.
    pub fn danger_process_local_lease(mut self) -> Self {
        self.process_local_lease_accepted = true;
        self
    }

    /// The clock (default: the system clock). Tests pass a [`ManualClock`](crate::ManualClock).
    pub fn clock(mut self, clock: DynClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Calls `f` with every [`PleoEvent`] (connected, refreshed, needs reauthorization,
    /// recovered, key needs replacement, ...) of every method, on a delivery task: a slow
    /// closure never holds up a refresh (see [`event_capacity`](Self::event_capacity)).
    /// [`PleoAuth::subscribe`] gives a broadcast receiver instead.
    pub fn on_event(self, f: impl Fn(&PleoEvent) + Send + Sync + 'static) -> Self {
        self.event_sink(Arc::new(f))
    }

    /// Like [`on_event`](Self::on_event), for a [`PleoEventSink`](crate::PleoEventSink) trait
    /// object.
    pub fn event_sink(mut self, sink: DynPleoEventSink) -> Self {
        self.event_sinks.push(sink);
        self
    }

    /// How many events wait for delivery, and how many each broadcast receiver may fall
    /// behind, before new ones are dropped and counted
    /// ([`PleoAuth::events_lagged`]; default 1,024).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// Connects companies with OAuth 2.0 and keeps their grants fresh.
    #[cfg(feature = "oauth")]
    #[cfg_attr(docsrs, doc(cfg(feature = "oauth")))]
    pub fn oauth(mut self, config: pleo_auth_oauth::OAuthConfig) -> Self {
        self.oauth = Some(config);
        self
    }

    /// Refresh timing and retries of the OAuth grants (default
    /// [`RefreshPolicy::default`](crate::oauth::RefreshPolicy::default)).
    #[cfg(feature = "oauth")]
    #[cfg_attr(docsrs, doc(cfg(feature = "oauth")))]
    pub fn refresh_policy(mut self, policy: pleo_auth_oauth::RefreshPolicy) -> Self {
        self.refresh_policy = Some(policy);
        self
    }

    /// Where OAuth events (connected, refreshed, needs reauthorization, ...) go (default: the
    /// `tracing` log), besides the [event stream](Self::on_event) of every method.
    #[cfg(feature = "oauth")]
    #[cfg_attr(docsrs, doc(cfg(feature = "oauth")))]
    pub fn oauth_events(mut self, events: pleo_auth_oauth::DynEventSink) -> Self {
        self.oauth_events = Some(events);
        self
    }

    /// Accepts Integrated API keys for this integration (its id and the scopes every key must
    /// carry).
    #[cfg(feature = "apikey")]
    #[cfg_attr(docsrs, doc(cfg(feature = "apikey")))]
    pub fn api_keys(mut self, config: pleo_auth_apikey::ApiKeyConfig) -> Self {
        self.api_keys = Some(config);
        self
    }

    /// A Standalone API key, used for its subject when no OAuth grant or Integrated key is
    /// stored for it.
    #[cfg(feature = "apikey")]
    #[cfg_attr(docsrs, doc(cfg(feature = "apikey")))]
    pub fn standalone_key(mut self, key: pleo_auth_apikey::StandaloneKey) -> Self {
        self.standalone = Some(key);
        self
    }

    /// Adjusts the authenticated HTTP client (user agent, timeouts, retry policy) before it is
    /// built.
    ///
    /// ```
    /// # use pleo_auth::PleoAuth;
    /// let builder = PleoAuth::builder()
    ///     .configure_client(|client| client.user_agent_prefix("my-erp-sync/2.1"));
    /// # let _ = builder;
    /// ```
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    pub fn configure_client(
        mut self,
        settings: impl FnOnce(pleo_auth_http::PleoClientBuilder) -> pleo_auth_http::PleoClientBuilder
        + Send
        + 'static,
    ) -> Self {
        self.client_settings = Some(Box::new(settings));
        self
    }

    /// Checks the settings and builds the methods and the client.
    ///
    /// Fails with [`Config`](crate::ErrorKind::Config) when the environment or the store is
    /// missing or the store cannot be opened, and with
    /// [`WrongEnvironment`](crate::ErrorKind::WrongEnvironment) when a method is configured
    /// for another environment than the builder's.
    pub fn build(self) -> Result<PleoAuth> {
        let environment = self
            .environment
            .ok_or_else(|| Error::config("the environment is required"))?;
        let store = self
            .store
            .ok_or_else(|| Error::config("the store is required"))?
            .map_err(|e| Error::core("opening the store failed", e))?;
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        #[cfg(feature = "metrics")]
        let store = crate::metrics::MeteredStore::wrap(store);
        let tenant_links = TenantLinks::new(store.clone(), clock.clone());
        let lease = self
            .lease
            .clone()
            .unwrap_or_else(|| pleo_auth_core::lease_for(&store, clock.clone()));
        #[cfg(feature = "metrics")]
        let lease = crate::metrics::MeteredLease::wrap(lease);
        let events = EventHub::new(
            environment.name().clone(),
            clock.clone(),
            tenant_links.clone(),
            self.event_sinks,
            self.event_capacity,
        );
        #[cfg_attr(
            not(any(feature = "oauth", feature = "apikey")),
            expect(unused_mut, reason = "no method is compiled in to add a provider")
        )]
        let mut providers: Vec<DynCredentialProvider> = Vec::new();

        #[cfg(feature = "oauth")]
        let oauth = match self.oauth {
            None => None,
            Some(config) => {
                same_environment(
                    &environment,
                    config.environment(),
                    "the OAuth configuration",
                )?;
                let mut builder = pleo_auth_oauth::OAuthClient::builder(config, store.clone())
                    .clock(clock.clone());
                // The builder's lease, else the store's default: the same one keep-alive uses.
                builder = builder.lease(lease.clone());
                if self.process_local_lease_accepted {
                    builder = builder.danger_process_local_lease();
                }
                if let Some(policy) = self.refresh_policy {
                    builder = builder.policy(policy);
                }
                builder = builder.events(Arc::new(crate::events::OAuthBridge {
                    first: self
                        .oauth_events
                        .unwrap_or_else(|| Arc::new(pleo_auth_oauth::TracingEvents)),
                    hub: events.clone(),
                }));
                let client = builder
                    .build()
                    .map_err(|e| Error::oauth("building the OAuth client failed", e))?;
                providers.push(Arc::new(client.token_manager()));
                Some(client)
            }
        };

        #[cfg(feature = "apikey")]
        let api_keys = match self.api_keys {
            None => None,
            Some(config) => {
                same_environment(
                    &environment,
                    config.environment(),
                    "the API key configuration",
                )?;
                let keys = pleo_auth_apikey::IntegratedKeys::builder(config, store.clone())
                    .clock(clock.clone())
                    .events(crate::events::ApiKeyBridge(events.clone()))
                    .build()
                    .map_err(|e| Error::apikey("building the Integrated API keys failed", e))?;
                providers.push(Arc::new(keys.clone()));
                Some(keys)
            }
        };

        #[cfg(feature = "apikey")]
        let standalone = match self.standalone {
            None => None,
            Some(key) => {
                same_environment(&environment, key.environment(), "the Standalone API key")?;
                let key = Arc::new(
                    key.with_clock(clock.clone())
                        .with_events(crate::events::ApiKeyBridge(events.clone())),
                );
                providers.push(key.clone());
                Some(key)
            }
        };

        let provider = CompositeProvider::new(environment.name().clone(), providers)
            .map_err(|e| Error::core("combining the credential providers failed", e))?
            .with_clock(clock.clone());

        #[cfg(feature = "http")]
        let client = {
            let mut builder = pleo_auth_http::PleoClient::builder(
                environment.clone(),
                Arc::new(provider.clone()),
            )
            .tenant_links(tenant_links.clone());
            if let Some(settings) = self.client_settings {
                builder = settings(builder);
            }
            builder
                .build()
                .map_err(|e| Error::http("building the HTTP client failed", e))?
        };

        #[cfg(not(feature = "oauth"))]
        let _ = (self.lease, self.process_local_lease_accepted);

        Ok(PleoAuth {
            inner: Arc::new(Inner {
                environment,
                store,
                lease,
                clock,
                events,
                tenant_links,
                provider,
                #[cfg(feature = "oauth")]
                oauth,
                #[cfg(feature = "apikey")]
                api_keys,
                #[cfg(feature = "apikey")]
                standalone,
                #[cfg(feature = "http")]
                client,
            }),
        })
    }
}

/// Refuses a method configured for another environment than the builder's.
#[cfg(any(feature = "oauth", feature = "apikey"))]
fn same_environment(expected: &Environment, actual: &Environment, what: &str) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(Error::new(
            pleo_auth_core::ErrorKind::WrongEnvironment,
            format!(
                "{what} is for environment {}, but the builder's environment is {}",
                actual.name(),
                expected.name()
            ),
        ))
    }
}

/// An integration's authentication to Pleo: one store, the configured methods, and an
/// authenticated client whose credentials come from all of them.
///
/// Cheap to clone; clones share everything.
///
/// ```no_run
/// use pleo_auth::apikey::ApiKeyConfig;
/// use pleo_auth::oauth::OAuthConfig;
/// use pleo_auth::{ClientId, ClientSecret, CompanyId, Environment, PleoAuth};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let environment = Environment::staging();
/// let auth = PleoAuth::builder()
///     .environment(environment.clone())
///     .file_store("/var/lib/my-integration/pleo")
///     .oauth(
///         OAuthConfig::builder()
///             .environment(environment.clone())
///             .client_id("my-client-id")
///             .client_secret(ClientSecret::new(std::env::var("PLEO_CLIENT_SECRET")?))
///             .redirect_uri("https://my-integration.example/pleo/callback")
///             .scopes("users:read export-jobs:read")
///             .build()?,
///     )
///     .api_keys(ApiKeyConfig::new(environment, ClientId::new("my-integration")?))
///     .build()?;
///
/// let company: CompanyId = "0b6f1c7e-8a55-4c2e-9d43-0d8a2a7a1f10".parse()?;
/// let employees: serde_json::Value =
///     auth.client().get("/v2/employees").company(company).json().await?;
/// # let _ = employees;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PleoAuth {
    inner: Arc<Inner>,
}

struct Inner {
    environment: Environment,
    store: DynSecretStore,
    lease: DynLease,
    clock: DynClock,
    events: Arc<EventHub>,
    tenant_links: TenantLinks,
    provider: CompositeProvider,
    #[cfg(feature = "oauth")]
    oauth: Option<pleo_auth_oauth::OAuthClient>,
    #[cfg(feature = "apikey")]
    api_keys: Option<pleo_auth_apikey::IntegratedKeys>,
    #[cfg(feature = "apikey")]
    standalone: Option<Arc<pleo_auth_apikey::StandaloneKey>>,
    #[cfg(feature = "http")]
    client: pleo_auth_http::PleoClient,
}

impl fmt::Debug for PleoAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        let mut d = f.debug_struct("PleoAuth");
        d.field("environment", inner.environment.name())
            .field("store", &inner.store);
        #[cfg(feature = "oauth")]
        d.field("oauth", &inner.oauth.as_ref().map(|o| o.config()));
        #[cfg(feature = "apikey")]
        d.field("api_keys", &inner.api_keys.as_ref().map(|k| k.config()))
            .field("standalone", &inner.standalone);
        d.finish_non_exhaustive()
    }
}

impl PleoAuth {
    /// A builder with nothing configured.
    pub fn builder() -> PleoAuthBuilder {
        PleoAuthBuilder::new()
    }

    /// The Pleo environment.
    pub fn environment(&self) -> &Environment {
        &self.inner.environment
    }

    /// The secret store.
    pub fn store(&self) -> &DynSecretStore {
        &self.inner.store
    }

    /// The lease that coordinates replicas: the one given to
    /// [`PleoAuthBuilder::lease`], else the store's default ([`lease_for`](crate::lease_for)).
    /// Keep-alive takes its sweep lease here.
    pub fn lease(&self) -> &DynLease {
        &self.inner.lease
    }

    /// The clock.
    pub fn clock(&self) -> &DynClock {
        &self.inner.clock
    }

    /// A receiver of every [`PleoEvent`] from now on. A receiver that falls more than
    /// [`event_capacity`](PleoAuthBuilder::event_capacity) events behind gets
    /// [`RecvError::Lagged`](tokio::sync::broadcast::error::RecvError::Lagged) with the count
    /// it missed; it never holds up anyone else.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<PleoEvent> {
        self.inner.events.subscribe()
    }

    /// Events dropped because delivery fell behind by more than
    /// [`event_capacity`](PleoAuthBuilder::event_capacity), since this was built.
    pub fn events_lagged(&self) -> u64 {
        self.inner.events.lagged()
    }

    /// The links between your tenants and Pleo companies, in the store.
    pub fn tenant_links(&self) -> &TenantLinks {
        &self.inner.tenant_links
    }

    /// The provider that hands out each subject's credential: its OAuth grant if one exists,
    /// else its Integrated key, else the Standalone key.
    pub fn credentials(&self) -> &CompositeProvider {
        &self.inner.provider
    }

    /// [`credentials`](Self::credentials), type-erased, for a client or middleware you build
    /// yourself.
    pub fn credential_provider(&self) -> DynCredentialProvider {
        Arc::new(self.inner.provider.clone())
    }

    /// The OAuth client: authorization URLs, callbacks, and its token manager.
    ///
    /// Fails with [`Config`](crate::ErrorKind::Config) if OAuth was not configured.
    #[cfg(feature = "oauth")]
    #[cfg_attr(docsrs, doc(cfg(feature = "oauth")))]
    pub fn oauth(&self) -> Result<&pleo_auth_oauth::OAuthClient> {
        self.inner
            .oauth
            .as_ref()
            .ok_or_else(|| Error::not_configured("OAuth"))
    }

    /// The refresh manager of the OAuth grants (status, refresh, keep-alive, disconnect).
    ///
    /// Fails with [`Config`](crate::ErrorKind::Config) if OAuth was not configured.
    #[cfg(feature = "oauth")]
    #[cfg_attr(docsrs, doc(cfg(feature = "oauth")))]
    pub fn token_manager(&self) -> Result<pleo_auth_oauth::TokenManager> {
        self.oauth()
            .map(pleo_auth_oauth::OAuthClient::token_manager)
    }

    /// The Integrated API keys: connect, replace, remove, list.
    ///
    /// Fails with [`Config`](crate::ErrorKind::Config) if API keys were not configured.
    #[cfg(feature = "apikey")]
    #[cfg_attr(docsrs, doc(cfg(feature = "apikey")))]
    pub fn api_keys(&self) -> Result<&pleo_auth_apikey::IntegratedKeys> {
        self.inner
            .api_keys
            .as_ref()
            .ok_or_else(|| Error::not_configured("Integrated API keys"))
    }

    /// The Standalone API key, if one was configured.
    #[cfg(feature = "apikey")]
    #[cfg_attr(docsrs, doc(cfg(feature = "apikey")))]
    pub fn standalone_key(&self) -> Option<&pleo_auth_apikey::StandaloneKey> {
        self.inner.standalone.as_deref()
    }

    /// The authenticated client of the External API: every request names its company (or
    /// tenant), gets that subject's credential from [`credentials`](Self::credentials), and is
    /// refused before sending if the credential belongs to another company or environment.
    /// Requests may name a tenant: the client resolves it through
    /// [`tenant_links`](Self::tenant_links).
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    pub fn client(&self) -> &pleo_auth_http::PleoClient {
        &self.inner.client
    }

    /// The OAuth connect flow for `pleo_auth::http::connect_router` (feature `axum`) or your
    /// own routes.
    ///
    /// Fails with [`Config`](crate::ErrorKind::Config) if OAuth was not configured.
    #[cfg(all(feature = "oauth", feature = "http"))]
    #[cfg_attr(docsrs, doc(cfg(all(feature = "oauth", feature = "http"))))]
    pub fn connect_flow(&self) -> Result<pleo_auth_http::DynConnectFlow> {
        Ok(Arc::new(crate::OAuthConnectFlow::new(
            self.oauth()?.clone(),
        )))
    }
}
