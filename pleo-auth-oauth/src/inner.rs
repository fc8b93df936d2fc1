//! State shared by [`OAuthClient`](crate::OAuthClient) and [`TokenManager`](crate::TokenManager):
//! configuration, store, lease, clock, HTTP, events and the token cache; and how a stored record
//! becomes the token a cell serves.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use oauth2::EndpointSet;
use pleo_auth_core::{
    AccessToken, AuthorizationHeader, Credential, CredentialId, CredentialKey, CredentialKind,
    DynClock, DynLease, DynSecretStore, OAuthGrant, StoreKey, Subject, TenantLinks, Version,
    layout,
};
use pleo_auth_http::transport::TransportConfig;
use sha2::{Digest as _, Sha256};

use crate::config::OAuthConfig;
use crate::events::{DynEventSink, OAuthEvent};
use crate::grant::cell::{ActiveToken, Cells, GrantCell};
use crate::grant::phase::Phase;
use crate::policy::RefreshPolicy;
use crate::token::{MAX_TOKEN_LIFETIME, TokenEndpoint};

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
    /// The token cache: read without locks.
    pub(crate) cells: Cells,
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

/// A share in `[0, 1)` derived from this instance's random seed and the grant's subject and
/// generation: stable for one token in one process, spread across grants and across replicas.
pub(crate) fn jitter_share(seed: u64, record: &OAuthGrant) -> f64 {
    let mut hasher = Sha256::new();
    hasher.update(seed.to_le_bytes());
    hasher.update(record.subject.to_string().as_bytes());
    hasher.update(record.generation.to_le_bytes());
    let bytes: [u8; 32] = hasher.finalize().into();
    let mut head = [0u8; 8];
    head.copy_from_slice(&bytes[..8]);
    (u64::from_le_bytes(head) >> 11) as f64 / (1u64 << 53) as f64
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

    /// The store key of `subject`'s grant (built when a store call needs it: a cell does not
    /// keep it, which saves about a tenth of a cached grant's memory).
    pub(crate) fn grant_key(&self, subject: Subject) -> StoreKey {
        layout::oauth_grant(&self.credential_key(subject))
    }

    /// The key of the refresh lease of `subject`'s grant.
    pub(crate) fn lease_key(&self, subject: Subject) -> StoreKey {
        layout::lease(&self.grant_key(subject))
    }

    /// The cached cell of `subject`, if any (lock-free).
    pub(crate) fn cell(&self, subject: &Subject) -> Option<Arc<GrantCell>> {
        self.cells.get(subject)
    }

    /// The cell of `subject`, created empty if missing.
    pub(crate) fn cell_or_insert(&self, subject: Subject) -> Arc<GrantCell> {
        self.cells
            .get_or_insert(subject, || GrantCell::new(subject))
    }

    /// Drops the cell of `subject` if it is still `cell` (used when nothing is stored for it).
    pub(crate) fn forget(&self, subject: &Subject, cell: &Arc<GrantCell>) {
        self.cells.remove(subject, cell);
    }

    /// Makes `token` the token `cell` serves; every change of a cell's token goes through here,
    /// so that the cache's copy of it stays the same.
    pub(crate) fn set_token(&self, cell: &GrantCell, token: Option<Arc<ActiveToken>>) {
        cell.token.store(token);
        self.cells.mirror(cell);
    }

    /// Serves what `phase` holds: its access token while the grant is active, nothing
    /// otherwise. The cell's current token is kept when it is the same one.
    pub(crate) fn serve(&self, cell: &GrantCell, phase: &Phase) {
        let token = phase
            .record()
            .filter(|r| r.status == pleo_auth_core::CredentialStatus::Active)
            .and_then(|record| self.token_from_record(record, cell.token.load_full()));
        self.set_token(cell, token);
    }

    /// A token for `record` as received now; `existing` is kept when it is the same token.
    pub(crate) fn token_from_record(
        &self,
        record: &OAuthGrant,
        existing: Option<Arc<ActiveToken>>,
    ) -> Option<Arc<ActiveToken>> {
        let access = record.access_token.as_ref()?;
        let expires_at = record.access_token_expires_at?;
        if let Some(existing) = existing
            && existing.generation == record.generation
            && existing.holds(access)
        {
            return Some(existing);
        }
        let now = self.clock.timestamp();
        let remaining = expires_at.saturating_since(now);
        let issued = record.refresh_token_issued_at.unwrap_or(record.updated_at);
        let lifetime = expires_at.saturating_since(issued).max(remaining);
        Some(self.new_token(record, access.clone(), remaining, lifetime))
    }

    /// A token that expires `remaining` from now and was issued with `lifetime` (both capped at
    /// [`MAX_TOKEN_LIFETIME`], so no clock arithmetic can overflow).
    pub(crate) fn new_token(
        &self,
        record: &OAuthGrant,
        access_token: AccessToken,
        remaining: Duration,
        lifetime: Duration,
    ) -> Arc<ActiveToken> {
        let now = self.clock.instant();
        let remaining = remaining.min(MAX_TOKEN_LIFETIME);
        let lifetime = lifetime.min(MAX_TOKEN_LIFETIME);
        let expires_at = now.checked_add(remaining).unwrap_or(now);
        let margin = self
            .policy
            .margin_for(lifetime, jitter_share(self.jitter_seed, record));
        let refresh_at = expires_at.checked_sub(margin).unwrap_or(now).max(now);
        Arc::new(ActiveToken {
            credential: Arc::new(Credential {
                id: CredentialId::next(),
                header: AuthorizationHeader::bearer(&access_token),
                subject: record.subject,
                environment: self.config.environment().name().clone(),
                scopes: record.scopes.clone(),
                kind: CredentialKind::OAuth,
            }),
            expires_at,
            refresh_at,
            generation: record.generation,
        })
    }

    /// Makes a freshly connected grant the phase of its cell (called by `complete()`).
    pub(crate) fn seed(&self, record: OAuthGrant, version: Version, lifetime: Duration) {
        let cell = self.cell_or_insert(record.subject);
        let token = record
            .access_token
            .clone()
            .map(|access| self.new_token(&record, access, lifetime, lifetime));
        let mut st = cell.lock();
        self.set_token(&cell, token);
        st.cooldown = None;
        st.set_phase(Phase::Stored { record, version });
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
