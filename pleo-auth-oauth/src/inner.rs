//! State shared by [`OAuthClient`](crate::OAuthClient) and [`TokenManager`](crate::TokenManager).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use pleo_auth_core::{
    CredentialKey, DynClock, DynLease, DynSecretStore, InProcessLease, Subject, SystemClock,
    TenantLinks, layout,
};
use pleo_auth_http::transport::{TransportConfig, http_client};

use crate::config::OAuthConfig;
use crate::error::{Error, Result};
use crate::events::{DynEventSink, OAuthEvent, TracingEvents};
use crate::manager::GrantCell;
use crate::policy::RefreshPolicy;
use crate::token::{OAuth2Client, oauth2_client};

/// Everything both halves need: configuration, store, lease, clock, HTTP, and the token cache.
pub(crate) struct Inner {
    pub(crate) config: OAuthConfig,
    pub(crate) oauth: OAuth2Client,
    pub(crate) http: reqwest::Client,
    pub(crate) transport: TransportConfig,
    pub(crate) store: DynSecretStore,
    pub(crate) lease: DynLease,
    pub(crate) clock: DynClock,
    pub(crate) policy: RefreshPolicy,
    pub(crate) events: DynEventSink,
    pub(crate) links: TenantLinks,
    /// The token cache: read without locks; replaced copy-on-write when a subject is added.
    pub(crate) cells: ArcSwap<HashMap<Subject, Arc<GrantCell>>>,
    cells_write: Mutex<()>,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner")
            .field("config", &self.config)
            .field("store", &self.store)
            .field("lease", &self.lease)
            .field("policy", &self.policy)
            .field("cached_grants", &self.cells.load().len())
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// The store key of `subject`'s grant.
    pub(crate) fn credential_key(&self, subject: Subject) -> CredentialKey {
        CredentialKey::new(
            self.config.environment().name().clone(),
            self.config.client_id().clone(),
            subject,
        )
    }

    /// The cached cell of `subject`, if any (lock-free).
    pub(crate) fn cell(&self, subject: &Subject) -> Option<Arc<GrantCell>> {
        self.cells.load().get(subject).cloned()
    }

    /// The cell of `subject`, created empty if missing.
    pub(crate) fn cell_or_insert(&self, subject: Subject) -> Arc<GrantCell> {
        if let Some(cell) = self.cell(&subject) {
            return cell;
        }
        let _writer = self.cells_write.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.cells.load();
        if let Some(cell) = current.get(&subject) {
            return cell.clone();
        }
        let key = layout::oauth_grant(&self.credential_key(subject));
        let cell = Arc::new(GrantCell::new(subject, key));
        let mut next = HashMap::clone(&current);
        next.insert(subject, cell.clone());
        self.cells.store(Arc::new(next));
        cell
    }

    /// Drops the cell of `subject` if it is still `cell` (used when nothing is stored for it).
    pub(crate) fn forget(&self, subject: &Subject, cell: &Arc<GrantCell>) {
        let _writer = self.cells_write.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.cells.load();
        if current.get(subject).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            let mut next = HashMap::clone(&current);
            next.remove(subject);
            self.cells.store(Arc::new(next));
        }
    }

    /// Sends an event to the sink.
    pub(crate) fn emit(&self, event: OAuthEvent) {
        self.events.emit(&event);
    }
}

/// Builds an [`OAuthClient`](crate::OAuthClient) and its [`TokenManager`](crate::TokenManager).
///
/// Only the configuration and the store are required. The default lease is an
/// [`InProcessLease`], which coordinates refreshes within this process only: replicas that
/// share a store should pass a lease that spans them (a
/// [`StoreLease`](pleo_auth_core::StoreLease) on the shared store, or a Redis lease).
pub struct OAuthClientBuilder {
    config: OAuthConfig,
    store: DynSecretStore,
    lease: Option<DynLease>,
    clock: Option<DynClock>,
    policy: RefreshPolicy,
    events: Option<DynEventSink>,
    transport: TransportConfig,
}

impl fmt::Debug for OAuthClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthClientBuilder")
            .field("config", &self.config)
            .field("store", &self.store)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl OAuthClientBuilder {
    pub(crate) fn new(config: OAuthConfig, store: DynSecretStore) -> Self {
        Self {
            config,
            store,
            lease: None,
            clock: None,
            policy: RefreshPolicy::default(),
            events: None,
            transport: TransportConfig::default(),
        }
    }

    /// The lease that lets one replica at a time refresh a grant (default: in-process).
    pub fn lease(mut self, lease: DynLease) -> Self {
        self.lease = Some(lease);
        self
    }

    /// The clock (default: the system clock). Tests pass a
    /// [`ManualClock`](pleo_auth_core::ManualClock).
    pub fn clock(mut self, clock: DynClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Refresh timing and retries (default [`RefreshPolicy::default`]).
    pub fn policy(mut self, policy: RefreshPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Where [`OAuthEvent`]s go (default [`TracingEvents`]).
    pub fn events(mut self, events: DynEventSink) -> Self {
        self.events = Some(events);
        self
    }

    /// Timeouts and user agent of the HTTP client (default [`TransportConfig::default`]).
    pub fn transport(mut self, transport: TransportConfig) -> Self {
        self.transport = transport;
        self
    }

    /// Validates the settings and builds the client.
    pub fn build(self) -> Result<crate::OAuthClient> {
        self.policy.validate()?;
        if self.policy.lease_ttl <= self.transport.timeout {
            return Err(Error::config(
                "the lease ttl must be longer than the http request timeout",
            ));
        }
        let http = http_client(&self.transport)
            .map_err(|e| Error::config("the http client could not be built").with_source(e))?;
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let lease = self
            .lease
            .unwrap_or_else(|| Arc::new(InProcessLease::with_clock(clock.clone())));
        let oauth = oauth2_client(
            self.config.environment(),
            self.config.client_id(),
            self.config.client_secret(),
        );
        let inner = Inner {
            oauth,
            http,
            transport: self.transport,
            links: TenantLinks::new(self.store.clone(), clock.clone()),
            store: self.store,
            lease,
            clock,
            policy: self.policy,
            events: self.events.unwrap_or_else(|| Arc::new(TracingEvents)),
            cells: ArcSwap::from_pointee(HashMap::new()),
            cells_write: Mutex::new(()),
            config: self.config,
        };
        Ok(crate::OAuthClient::from_inner(Arc::new(inner)))
    }
}
