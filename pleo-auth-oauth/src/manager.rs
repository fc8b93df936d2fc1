//! [`TokenManager`]: the public face of the refresh manager. It hands out access tokens
//! (lock-free while they are fresh), refreshes each grant once per expiry across tasks and
//! replicas (`grant::flight`), keeps rotated pairs that the store has not taken yet
//! (`grant::persist`), disconnects (`grant::disconnect`), keeps idle grants alive, and moves
//! pending pairs between processes ([`PendingPair`]).
//!
//! How one grant lives in this process is [`Phase`](crate::grant::phase::Phase), a pure state
//! machine; see its module for the rules that keep rotated tokens safe.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pleo_auth_core::{
    Credential, CredentialId, CredentialProvider, EnvironmentName, OAuthGrant, RecordStoreExt,
    ScopeSet, Subject, TenantId, Timestamp, layout,
};

use crate::dangling::{self, DanglingStatus};
use crate::error::{Error, ErrorKind, Result};
use crate::grant::cell::ActiveToken;
use crate::grant::disconnect::{DisconnectOutcome, disconnect};
use crate::grant::flight::obtain;
use crate::grant::lease::release_kept_lease;
use crate::grant::persist::persist;
use crate::grant::phase::{Life, Phase, Trigger, not_connected};
use crate::inner::Inner;
use crate::recovery::{PendingPair, Recovered};

/// How many rounds [`TokenManager::flush`] tries a pending pair before it gives up.
pub const FLUSH_ROUNDS: u32 = 4;

/// The longest pause between two rounds of [`TokenManager::flush`], whatever the persist
/// backoff: a flush runs while a process is about to exit.
const FLUSH_MAX_PAUSE: Duration = Duration::from_secs(1);

/// The state of a grant as one replica sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GrantState {
    /// Usable.
    Active,
    /// A refresh is in flight.
    Refreshing,
    /// Rotated tokens are held in memory and served; the store write is being retried, and the
    /// refresh lease is kept (renewed) until it lands.
    PersistPending,
    /// A refresh failed recently; further refreshes fail fast until the cooldown ends.
    CoolingDown,
    /// Pleo refused the grant; the customer must consent again.
    NeedsReauthorization,
    /// Disconnected locally; the revocation at Pleo is being retried.
    RevocationPending,
    /// Disconnected.
    Revoked,
}

/// What a grant looks like, without secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GrantStatus {
    /// The company or organisation.
    pub subject: Subject,
    /// The state.
    pub state: GrantState,
    /// The linked tenant, if any.
    pub tenant: Option<TenantId>,
    /// The granted scopes.
    pub scopes: ScopeSet,
    /// The rotation count.
    pub generation: u64,
    /// When the access token expires (wall clock).
    pub access_token_expires_at: Option<Timestamp>,
    /// When the refresh token was issued (wall clock).
    pub refresh_token_issued_at: Option<Timestamp>,
    /// The integrator's settings of this connection.
    pub settings: BTreeMap<String, String>,
}

impl GrantState {
    /// The state a stored grant record is in, with nothing in flight in this process: how a
    /// tool that reads records itself (the CLI's `status`) names them.
    pub fn of_record(record: &OAuthGrant) -> Self {
        Self::of(Phase::life_of(record))
    }

    /// A short, stable, lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantState::Active => "active",
            GrantState::Refreshing => "refreshing",
            GrantState::PersistPending => "persist_pending",
            GrantState::CoolingDown => "cooling_down",
            GrantState::NeedsReauthorization => "needs_reauthorization",
            GrantState::RevocationPending => "revocation_pending",
            GrantState::Revoked => "revoked",
        }
    }

    /// The state of a grant in its `life`, with nothing in flight in this process.
    fn of(life: Life) -> Self {
        match life {
            Life::Unloaded | Life::Revoked => GrantState::Revoked,
            Life::Active => GrantState::Active,
            Life::NeedsReauthorization => GrantState::NeedsReauthorization,
            Life::RevocationPending => GrantState::RevocationPending,
        }
    }
}

/// Refreshes and revokes grants; hands out access tokens. Implements [`CredentialProvider`].
///
/// Cheap to clone; every clone shares one cache. Obtain it from
/// [`OAuthClient::token_manager`](crate::OAuthClient::token_manager). Needs a Tokio runtime:
/// refreshes and retried store writes run in spawned tasks.
#[derive(Clone)]
pub struct TokenManager {
    inner: Arc<Inner>,
}

impl fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenManager")
            .field("inner", &self.inner)
            .finish()
    }
}

impl TokenManager {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        Self { inner }
    }

    /// A usable access token of `subject`.
    ///
    /// While the cached token is fresh this takes no lock, does no I/O and allocates nothing
    /// beyond an `Arc` clone. Near expiry, exactly one refresh runs per grant and every caller
    /// awaits its result; if it fails transiently while the old token is still valid, the old
    /// token is returned.
    pub async fn access_token(&self, subject: &Subject) -> Result<Arc<ActiveToken>> {
        if let Some(token) = self
            .inner
            .cells
            .fresh(subject, self.inner.clock.coarse_instant())
        {
            return Ok(token);
        }
        // Boxed: the refresh path's future is large, and inline it would make every hit build
        // (and move) a future of its size.
        Box::pin(obtain(&self.inner, *subject, Trigger::Fresh)).await
    }

    /// The state of `subject`'s grant, after reading the store.
    pub async fn status(&self, subject: &Subject) -> Result<GrantStatus> {
        let cell = self.inner.cell_or_insert(*subject);
        if let Err(err) = self.inner.reconcile(&cell).await {
            if err.kind() == &ErrorKind::NotConnected {
                self.inner.forget(subject, &cell);
            }
            return Err(err);
        }
        let st = cell.lock();
        let record = st.phase.record().ok_or_else(not_connected)?;
        let cooling = st
            .cooldown
            .as_ref()
            .is_some_and(|c| self.inner.clock.instant() < c.until);
        let state = match st.phase.life() {
            Life::Active if st.phase.is_pending() => GrantState::PersistPending,
            Life::Active if st.flight.is_some() => GrantState::Refreshing,
            Life::Active if cooling => GrantState::CoolingDown,
            life => GrantState::of(life),
        };
        Ok(status_of(record, state))
    }

    /// Every grant of this client and environment in the store, without secrets.
    pub async fn list(&self) -> Result<Vec<GrantStatus>> {
        let mut out = Vec::new();
        for record in self.records().await? {
            let state = GrantState::of(Phase::life_of(&record));
            out.push(status_of(&record, state));
        }
        Ok(out)
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    async fn records(&self) -> Result<Vec<OAuthGrant>> {
        let prefix = layout::oauth_grants(
            self.inner.config.environment().name(),
            self.inner.config.client_id(),
        );
        let keys = self
            .inner
            .store
            .list(&prefix)
            .await
            .map_err(|e| Error::store("listing grants failed", e))?;
        // Batch reads: one `get_many` per 1,000 grants instead of one `get` per grant.
        let mut records = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(1000) {
            let reads = self
                .inner
                .store
                .get_records::<OAuthGrant>(chunk)
                .await
                .map_err(|e| Error::store("reading grants failed", e))?;
            records.extend(reads.into_iter().flatten().map(|(record, _)| record));
        }
        Ok(records)
    }

    /// Grants the authorization server issued that are not kept (refused when connecting, or
    /// replaced by a reconnect) and are not revoked yet, without secrets. Keep-alive retries
    /// their revocation; those whose revocation would end a kept grant are left alone.
    pub async fn dangling(&self) -> Result<Vec<DanglingStatus>> {
        Ok(dangling::list(&self.inner)
            .await?
            .iter()
            .map(|(_, record, _)| DanglingStatus::of(record))
            .collect())
    }

    /// Disconnects `subject`: `DELETE /v1/installations/me` at Pleo (which revokes every token
    /// of this client for the company), then marks the record revoked, discarding its tokens
    /// and keeping its settings. If Pleo cannot be reached, the record becomes a tombstone
    /// (unusable locally) and the revocation is retried.
    pub async fn disconnect(&self, subject: &Subject) -> Result<DisconnectOutcome> {
        disconnect(&self.inner, *subject).await
    }

    /// Writes every pending token pair now (for example before shutdown), in up to
    /// [`FLUSH_ROUNDS`] rounds with the persist backoff (at most a second) between them. Fails with the last store
    /// error when a pair is still pending after that; such pairs stay pending in memory, and
    /// [`pending_pairs`](Self::pending_pairs) exports them for a recovery file.
    pub async fn flush(&self) -> Result<()> {
        let mut last_error = None;
        for round in 1..=FLUSH_ROUNDS {
            last_error = None;
            for cell in self.inner.cells.all() {
                if !cell.pending() {
                    continue;
                }
                match persist(&self.inner, &cell).await {
                    Ok(()) => release_kept_lease(&cell, false).await,
                    Err(err) => last_error = Some(err),
                }
            }
            match &last_error {
                None => return Ok(()),
                Some(_) if round < FLUSH_ROUNDS => {
                    let pause = self
                        .inner
                        .policy
                        .persist_backoff(round)
                        .min(FLUSH_MAX_PAUSE);
                    tokio::time::sleep(pause).await;
                }
                Some(_) => {}
            }
        }
        last_error.map_or(Ok(()), Err)
    }

    /// The rotated pairs this process holds that the store has not taken yet, for a recovery
    /// file (see [`PendingPair`]). Empty after a successful [`flush`](Self::flush).
    pub fn pending_pairs(&self) -> Vec<PendingPair> {
        self.inner
            .cells
            .all()
            .iter()
            .filter_map(|cell| PendingPair::of(&cell.lock().phase))
            .collect()
    }

    /// Writes pairs that an earlier process could not store (from its recovery file), with the
    /// same rules as its own pending pairs: a pair is written only over a record that still
    /// holds a refresh token it superseded; a newer record in the store wins and the pair is
    /// dropped. Pairs of another environment or client are skipped.
    pub async fn recover(&self, pairs: Vec<PendingPair>) -> Vec<(Subject, Result<Recovered>)> {
        let mut out = Vec::with_capacity(pairs.len());
        for pair in pairs {
            let subject = pair.subject();
            out.push((subject, self.recover_one(pair).await));
        }
        out
    }

    async fn recover_one(&self, pair: PendingPair) -> Result<Recovered> {
        let inner = &self.inner;
        if !pair.is_for(inner.config.environment().name(), inner.config.client_id()) {
            return Ok(Recovered::Skipped);
        }
        let cell = inner.cell_or_insert(pair.subject());
        if cell.pending() {
            // This process holds a pair of its own for the grant: newer than any recovered one.
            return Ok(Recovered::Dropped);
        }
        let phase = pair.into_phase();
        let ours = phase.record().and_then(|r| r.refresh_token.clone());
        {
            let mut st = cell.lock();
            st.set_phase(phase);
            inner.serve(&cell, &st.phase);
        }
        persist(inner, &cell).await?;
        let st = cell.lock();
        Ok(match ours {
            Some(token) if st.phase.holds(&token) => Recovered::Stored,
            _ => Recovered::Dropped,
        })
    }
}

fn status_of(record: &OAuthGrant, state: GrantState) -> GrantStatus {
    GrantStatus {
        subject: record.subject,
        state,
        tenant: record.tenant.clone(),
        scopes: record.scopes.clone(),
        generation: record.generation,
        access_token_expires_at: record.access_token_expires_at,
        refresh_token_issued_at: record.refresh_token_issued_at,
        settings: record.settings.clone(),
    }
}

#[async_trait]
impl CredentialProvider for TokenManager {
    fn environment(&self) -> &EnvironmentName {
        self.inner.config.environment().name()
    }

    async fn credential_for(&self, subject: &Subject) -> pleo_auth_core::Result<Arc<Credential>> {
        Ok(self.access_token(subject).await?.credential.clone())
    }

    async fn rejected(&self, subject: &Subject, id: &CredentialId) -> pleo_auth_core::Result<bool> {
        obtain(&self.inner, *subject, Trigger::Rejected(id.clone())).await?;
        Ok(true)
    }
}
