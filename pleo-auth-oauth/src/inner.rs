//! State shared by [`OAuthClient`](crate::OAuthClient) and [`TokenManager`](crate::TokenManager).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use oauth2::EndpointSet;
use pleo_auth_core::{
    CredentialKey, DynClock, DynLease, DynSecretStore, Sharing, Subject, SystemClock, TenantLinks,
    layout, lease_for,
};
use pleo_auth_http::transport::{TransportConfig, http_client};

use crate::config::OAuthConfig;
use crate::error::{Error, Result};
use crate::events::{DynEventSink, OAuthEvent, TracingEvents};
use crate::manager::{ActiveToken, GrantCell};
use crate::policy::RefreshPolicy;
use crate::token::TokenEndpoint;

/// The `oauth2` client that builds authorization URLs (PKCE challenge, state, scopes).
pub(crate) type AuthorizeClient = oauth2::basic::BasicClient<EndpointSet>;

/// Everything both halves need: configuration, store, lease, clock, HTTP, and the token cache.
pub(crate) struct Inner {
    pub(crate) config: OAuthConfig,
    pub(crate) authorize: AuthorizeClient,
    pub(crate) token_endpoint: TokenEndpoint,
    pub(crate) http: reqwest::Client,
    pub(crate) transport: TransportConfig,
    pub(crate) store: DynSecretStore,
    pub(crate) lease: DynLease,
    pub(crate) clock: DynClock,
    pub(crate) policy: RefreshPolicy,
    pub(crate) events: DynEventSink,
    pub(crate) links: TenantLinks,
    /// This instance's random seed for refresh jitter, so replicas spread their refreshes.
    pub(crate) jitter_seed: u64,
    /// The token cache: read without locks; a shard is replaced copy-on-write when a subject
    /// is added to it or its token changes.
    pub(crate) cells: Cells,
}

/// Shards of the token cache. A change copies one shard, so caching `n` grants copies about
/// `n² / (2 * CELL_SHARDS)` map entries in all (100,000 grants: about 5 million), and a token
/// change copies about `n / CELL_SHARDS` (100,000 grants: about 100 entries, a few microseconds).
const CELL_SHARDS: usize = 1024;
const _: () = assert!(CELL_SHARDS.is_power_of_two());

/// One shard of the token cache, replaced copy-on-write. Hashed with foldhash (randomly seeded
/// per process): subjects are UUIDs that Pleo issues, and a lookup runs on every cache hit,
/// where SipHash would cost more than the rest of the lookup.
type Shard = ArcSwap<CellMap>;

/// The map inside a shard.
type CellMap = HashMap<Subject, Slot, foldhash::fast::RandomState>;

/// A subject's entry: its cell, and a copy of the cell's current token, so that a cache hit is
/// one shard load and one map lookup.
#[derive(Clone)]
pub(crate) struct Slot {
    pub(crate) cell: Arc<GrantCell>,
    pub(crate) token: Option<Arc<ActiveToken>>,
}

/// The token cache: one cell per subject, in [`CELL_SHARDS`] maps that are read without locks.
pub(crate) struct Cells {
    shards: Box<[Shard]>,
    write: Mutex<()>,
}

impl Cells {
    fn new() -> Self {
        Self {
            shards: (0..CELL_SHARDS)
                .map(|_| ArcSwap::from_pointee(CellMap::default()))
                .collect(),
            write: Mutex::new(()),
        }
    }

    /// The shard that holds `subject`'s cell (by its UUID, whose bits are random).
    pub(crate) fn shard(&self, subject: &Subject) -> &Shard {
        let id = match subject {
            Subject::Company(c) => c.as_uuid().as_u128(),
            Subject::Organisation(o) => o.as_uuid().as_u128(),
        };
        // Fibonacci hashing: the top bits of the product depend on every bit of the id.
        let mixed = id.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        &self.shards[(mixed >> (u128::BITS - CELL_SHARDS.trailing_zeros())) as usize]
    }

    /// Every cached cell.
    pub(crate) fn all(&self) -> Vec<Arc<GrantCell>> {
        self.shards
            .iter()
            .flat_map(|shard| {
                shard
                    .load()
                    .values()
                    .map(|slot| slot.cell.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.load().len()).sum()
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Copies `cell`'s current token into its slot, if the cell is still the cached one.
    ///
    /// Reads the token under the writer lock, so of two racing calls the later one copies the
    /// latest token: once every call has returned, the slot holds what the cell holds.
    fn mirror(&self, cell: &GrantCell) {
        let _writer = self.writer();
        let shard = self.shard(&cell.subject);
        let current = shard.load();
        let Some(slot) = current.get(&cell.subject) else {
            return;
        };
        if !std::ptr::eq(Arc::as_ptr(&slot.cell), cell) {
            return;
        }
        let token = cell.token.load_full();
        let same = match (&slot.token, &token) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            let mut next = CellMap::clone(&current);
            next.insert(
                cell.subject,
                Slot {
                    cell: slot.cell.clone(),
                    token,
                },
            );
            shard.store(Arc::new(next));
        }
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner")
            .field("config", &self.config)
            .field("store", &self.store)
            .field("lease", &self.lease)
            .field("policy", &self.policy)
            .field("cached_grants", &self.cells.len())
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
        self.cells
            .shard(subject)
            .load()
            .get(subject)
            .map(|slot| slot.cell.clone())
    }

    /// Makes `token` the token `cell` serves; every change of a cell's token goes through here,
    /// so that the cache's copy of it stays the same.
    pub(crate) fn set_token(&self, cell: &GrantCell, token: Option<Arc<ActiveToken>>) {
        cell.token.store(token);
        self.cells.mirror(cell);
    }

    /// The cell of `subject`, created empty if missing.
    pub(crate) fn cell_or_insert(&self, subject: Subject) -> Arc<GrantCell> {
        if let Some(cell) = self.cell(&subject) {
            return cell;
        }
        let _writer = self.cells.writer();
        let shard = self.cells.shard(&subject);
        let current = shard.load();
        if let Some(slot) = current.get(&subject) {
            return slot.cell.clone();
        }
        let key = layout::oauth_grant(&self.credential_key(subject));
        let cell = Arc::new(GrantCell::new(subject, key));
        let mut next = CellMap::clone(&current);
        next.insert(
            subject,
            Slot {
                cell: cell.clone(),
                token: None,
            },
        );
        shard.store(Arc::new(next));
        cell
    }

    /// Drops the cell of `subject` if it is still `cell` (used when nothing is stored for it).
    pub(crate) fn forget(&self, subject: &Subject, cell: &Arc<GrantCell>) {
        let _writer = self.cells.writer();
        let shard = self.cells.shard(subject);
        let current = shard.load();
        if current
            .get(subject)
            .is_some_and(|slot| Arc::ptr_eq(&slot.cell, cell))
        {
            let mut next = CellMap::clone(&current);
            next.remove(subject);
            shard.store(Arc::new(next));
        }
    }

    /// Sends an event to the sink. A sink that panics is logged and otherwise ignored: events
    /// are sent after the state they report is stored, and must never undo it.
    pub(crate) fn emit(&self, event: OAuthEvent) {
        let sink = &self.events;
        let sent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink.emit(&event)));
        if sent.is_err() {
            tracing::error!("the oauth event sink panicked; the event was dropped");
        }
    }
}

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

impl OAuthClientBuilder {
    pub(crate) fn new(config: OAuthConfig, store: DynSecretStore) -> Self {
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
    ///
    /// Refuses ([`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig)) a lease TTL
    /// that cannot hold one token request plus one store write (the fencing budget: a refresh
    /// token is only presented while the lease is confirmed to last that long), and a
    /// process-local lease with a store other processes see (unless
    /// [`danger_process_local_lease`](Self::danger_process_local_lease)).
    pub fn build(self) -> Result<crate::OAuthClient> {
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
            jitter_seed: crate::policy::random_u64(),
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
        Ok(crate::OAuthClient::from_inner(Arc::new(inner)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn subjects_spread_over_the_shards() {
        let cells = Cells::new();
        let mut used = HashSet::new();
        for i in 0..(8 * CELL_SHARDS) as u64 {
            // Sequential ids differ in their low bits only; they must still spread.
            let subject: Subject = format!("urn:pleo:company:0e000000-0000-4000-8000-{i:012}")
                .parse()
                .unwrap();
            used.insert(std::ptr::from_ref(cells.shard(&subject)));
            assert!(std::ptr::eq(cells.shard(&subject), cells.shard(&subject)));
        }
        assert!(
            used.len() > CELL_SHARDS * 3 / 4,
            "{} shards used",
            used.len()
        );
        assert_eq!(cells.len(), 0);
        assert!(cells.all().is_empty());
    }
}
