//! [`OAuthClientBuilder`]: the one way to build an [`OAuthClient`] and its
//! [`TokenManager`](crate::TokenManager), with the safe defaults checked.

use std::fmt;
use std::sync::Arc;

use pleo_auth_core::{
    DynClock, DynLease, DynSecretStore, Sharing, SystemClock, TenantLinks, lease_for,
};
use pleo_auth_http::transport::{TransportConfig, http_client};

use crate::config::OAuthConfig;
use crate::connect::OAuthClient;
use crate::error::{Error, Result};
use crate::events::{DynEventSink, TracingEvents};
use crate::grant::cell::Cells;
use crate::inner::Inner;
use crate::policy::{RefreshPolicy, random_u64};
use crate::token::TokenEndpoint;

/// Builds an [`OAuthClient`](crate::OAuthClient) and its [`TokenManager`](crate::TokenManager).
///
/// Only the configuration and the store are required. The default lease spans every process
/// that can see the store ([`lease_for`]): the store's native lease (Redis), or a
/// [`StoreLease`](pleo_auth_core::StoreLease) on the store itself; an
/// [`InProcessLease`](pleo_auth_core::InProcessLease) only for a store no other process sees
/// ([`MemoryStore`](pleo_auth_core::MemoryStore)). A lease that spans fewer processes than the
/// store is refused by [`build`](Self::build) unless
/// [`danger_process_local_lease`](Self::danger_process_local_lease) is called.
pub struct OAuthClientBuilder {
    config: OAuthConfig,
    store: DynSecretStore,
    lease: Option<DynLease>,
    process_local_lease_accepted: bool,
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

impl OAuthClient {
    /// A builder for a client with `config`, keeping grants and pending authorizations in
    /// `store`.
    pub fn builder(config: OAuthConfig, store: DynSecretStore) -> OAuthClientBuilder {
        OAuthClientBuilder::new(config, store)
    }
}

impl OAuthClientBuilder {
    fn new(config: OAuthConfig, store: DynSecretStore) -> Self {
        Self {
            config,
            store,
            lease: None,
            process_local_lease_accepted: false,
            clock: None,
            policy: RefreshPolicy::default(),
            events: None,
            transport: TransportConfig::default(),
        }
    }

    /// The lease that lets one replica at a time refresh a grant (default: [`lease_for`] the
    /// store, which spans every process that sees it).
    pub fn lease(mut self, lease: DynLease) -> Self {
        self.lease = Some(lease);
        self
    }

    /// **Dangerous.** Accepts a lease that coordinates only this process's tasks
    /// ([`InProcessLease`](pleo_auth_core::InProcessLease)) with a store that other processes
    /// can see. Only sound when no other process ever refreshes these grants (one CLI on one
    /// machine, never replicas): two processes that refresh the same grant present the same
    /// refresh token, and Pleo then revokes the grant.
    pub fn danger_process_local_lease(mut self) -> Self {
        self.process_local_lease_accepted = true;
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

    /// Where [`OAuthEvent`](crate::OAuthEvent)s go (default [`TracingEvents`]).
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
    ///
    /// Refuses ([`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig)) a lease TTL
    /// that cannot hold one token request plus one store write (the fencing budget: a refresh
    /// token is only presented while the lease is confirmed to last that long), and a
    /// process-local lease with a store other processes see (unless
    /// [`danger_process_local_lease`](Self::danger_process_local_lease)).
    pub fn build(self) -> Result<OAuthClient> {
        self.policy.validate()?;
        if self.policy.lease_ttl <= self.transport.timeout + self.policy.store_timeout {
            return Err(Error::config(
                "the lease ttl must be longer than the http request timeout plus the store timeout",
            ));
        }
        let http = http_client(&self.transport)
            .map_err(|e| Error::config("the http client could not be built").with_source(e))?;
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let lease = match self.lease {
            Some(lease) => lease,
            None => lease_for(&self.store, clock.clone()),
        };
        if lease.sharing() == Sharing::ProcessLocal
            && self.store.sharing() == Sharing::CrossProcess
            && !self.process_local_lease_accepted
        {
            return Err(Error::config(
                "a process-local lease cannot coordinate refreshes of a store other processes see; \
                 use the default lease (or danger_process_local_lease for a single process)",
            ));
        }
        let server = self.config.server();
        let authorize = oauth2::basic::BasicClient::new(oauth2::ClientId::new(
            self.config.client_id().as_str().to_owned(),
        ))
        .set_auth_uri(oauth2::AuthUrl::from_url(
            server.authorization_endpoint().clone(),
        ));
        let token_endpoint = TokenEndpoint::new(
            server.token_endpoint().clone(),
            self.config.client_id(),
            self.config.client_secret(),
        );
        let inner = Inner {
            authorize,
            token_endpoint,
            jitter_seed: random_u64(),
            http,
            transport: self.transport,
            links: TenantLinks::new(self.store.clone(), clock.clone()),
            store: self.store,
            lease,
            clock,
            policy: self.policy,
            events: self.events.unwrap_or_else(|| Arc::new(TracingEvents)),
            cells: Cells::new(),
            config: self.config,
        };
        Ok(OAuthClient::from_inner(Arc::new(inner)))
    }
}
