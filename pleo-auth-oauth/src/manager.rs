//! The refresh manager: one refresh per grant, across tasks and replicas, and no token lost.
//!
//! # State of one grant in this process
//!
//! A [`GrantCell`] holds the *authority*: the newest grant record this process knows, with the
//! store version it is stored at, or `None` while a store write is pending. Beside it, the
//! current [`ActiveToken`] sits in an `ArcSwapOption`, which the hot path reads without a lock.
//!
//! ```text
//!   (not loaded) --load--> Active --refresh ok, write ok--> Active (generation + 1)
//!                            |  \--refresh ok, write failed--> PersistPending --write ok--> Active
//!                            |      (lease kept and renewed)    (lease released)
//!                            |--invalid_grant--> NeedsReauthorization --complete()--> Active
//!                            |--transient failure--> CoolingDown --cooldown over--> Active
//!                            \--disconnect()--> Revoked, or RevocationPending --retry ok--> Revoked
//! ```
//!
//! A refresh ("flight") runs in a spawned task; callers await a shared handle to it, so a
//! cancelled caller never drops a response that has arrived. The flight takes the lease,
//! re-reads the store (adopting another replica's rotation instead of calling Pleo), calls the
//! token endpoint, makes the new pair the in-memory authority, and only then writes it with
//! compare-and-swap. A failed write leaves the pair pending in memory: it is served, used for
//! the next refresh, and written again with backoff. `superseded` remembers which refresh
//! tokens the pending pair replaced, so a later read of the store can tell an older record of
//! ours (overwrite it) from another writer's newer one (adopt it).
//!
//! While it works, the flight renews the lease every third of its TTL, so a holder that is alive
//! keeps it however slow the token endpoint or the store answers; a paused or dead holder stops
//! renewing and loses it after the TTL. The flight gives the lease back when it ends, unless the
//! pair it made is still pending: then
//! the cell keeps the lease, a task renews it every third of its TTL, and it is released once
//! the pair is stored (or adopted over, or the manager is dropped). Meanwhile another replica,
//! which can only read the superseded refresh token from the store, waits at the lease instead
//! of presenting that token (which would make Pleo revoke the grant). The next flight of this
//! process takes the kept lease over instead of acquiring it again.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use futures::stream::{self, StreamExt};
use pleo_auth_core::{
    AccessToken, AuthorizationHeader, Credential, CredentialId, CredentialKind, CredentialProvider,
    CredentialStatus, EnvironmentName, ErrorKind as CoreKind, LeaseGuard, OAuthGrant, Precondition,
    Record, RecordStoreExt, RefreshToken, ScopeSet, StoreKey, Subject, TenantId, Timestamp,
    Version, is_conflict, layout,
};
use pleo_auth_http::api;
use sha2::{Digest as _, Sha256};
use tracing::Instrument;

use crate::dangling::{self, DanglingStatus, Swept};
use crate::error::{Error, ErrorKind, Result};
use crate::events::OAuthEvent;
use crate::inner::Inner;
use crate::token::{self, Access, Answer, MAX_TOKEN_LIFETIME};

/// `status_reason` of a disconnected grant whose revocation at Pleo is still to be retried.
pub(crate) const REVOCATION_PENDING: &str = "revocation_pending";
/// `status_reason` of a grant disconnected for good.
const DISCONNECTED: &str = "disconnected";
/// `status_reason` of a grant Pleo refused.
const INVALID_GRANT: &str = "invalid_grant";
/// How many times a compare-and-swap loop re-reads after a conflict before giving up.
const MAX_CAS_ROUNDS: usize = 8;
/// How long after its pending authorization expired a connection's held tokens are left to
/// the connection before keep-alive treats them as refused.
const CONNECT_GRACE: Duration = Duration::from_secs(5 * 60);

type TokenDigest = [u8; 32];

fn digest(token: &RefreshToken) -> TokenDigest {
    Sha256::digest(token.expose_secret().as_bytes()).into()
}

fn digest_of(token: Option<&RefreshToken>) -> Option<TokenDigest> {
    token.map(digest)
}

/// A usable access token of one grant, with the credential built from it.
///
/// `Debug` shows ids and times only.
pub struct ActiveToken {
    credential: Credential,
    access_token: AccessToken,
    expires_at: Instant,
    refresh_at: Instant,
    generation: u64,
}

impl ActiveToken {
    /// The credential to send: `Authorization: Bearer <token>`, its id, subject and scopes.
    pub fn credential(&self) -> &Credential {
        &self.credential
    }

    /// The access token.
    pub fn access_token(&self) -> &AccessToken {
        &self.access_token
    }

    /// The company or organisation the token acts for.
    pub fn subject(&self) -> &Subject {
        &self.credential.subject
    }

    /// When the token expires, on the manager's monotonic clock.
    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }

    /// When the manager starts refreshing it, on the manager's monotonic clock.
    pub fn refresh_at(&self) -> Instant {
        self.refresh_at
    }

    /// The grant's generation (rotation count) this token belongs to.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl fmt::Debug for ActiveToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActiveToken")
            .field("id", &self.credential.id)
            .field("subject", &self.credential.subject)
            .field("generation", &self.generation)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

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

/// What [`TokenManager::keep_alive`] did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct KeepAliveReport {
    /// Grants looked at.
    pub checked: usize,
    /// Grants whose old refresh token was rotated.
    pub refreshed: Vec<Subject>,
    /// Disconnected grants whose revocation at Pleo was retried and succeeded.
    pub revoked: Vec<Subject>,
    /// Grants that could not be refreshed or revoked, with the reason.
    pub failed: Vec<(Subject, Error)>,
    /// Dangling grants (refused or replaced, see [`TokenManager::dangling`]) revoked, or found
    /// to be kept after all, in this sweep.
    pub dangling_settled: usize,
    /// Dangling grants still dangling after this sweep.
    pub dangling: Vec<DanglingStatus>,
    /// Expired pending authorizations (abandoned consents) deleted in this sweep.
    pub pending_removed: usize,
}

/// What [`TokenManager::disconnect`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectOutcome {
    /// Pleo deleted the installation (revoking every token), or it was gone already; the record
    /// is marked revoked and its tokens are discarded.
    Revoked,
    /// Pleo could not be reached; the record is a tombstone (revoked locally, tokens kept) and
    /// the revocation is retried in the background and by [`TokenManager::keep_alive`].
    RevocationPending,
    /// Pleo could not be asked (the grant needed reauthorization, or Pleo refused its token);
    /// the record is marked revoked locally.
    LocalOnly,
}

/// What a refresh flight must achieve.
#[derive(Debug, Clone)]
pub(crate) enum Trigger {
    /// A token that is not yet in its refresh window.
    Fresh,
    /// A token other than this one (which the server refused).
    Rejected(CredentialId),
    /// A refresh token issued at or after this time.
    KeepAlive(Timestamp),
    /// A valid access token of a disconnected grant, to retry the revocation at Pleo.
    Revoke,
}

type FlightResult = Result<Arc<ActiveToken>>;
type SharedFlight = Shared<BoxFuture<'static, FlightResult>>;

struct Flight {
    id: u64,
    future: SharedFlight,
}

/// The newest grant record this process knows.
struct Authority {
    record: OAuthGrant,
    /// The store version `record` is stored at; `None` while a write is pending.
    stored: Option<Version>,
    /// While pending: refresh tokens that `record` supersedes and that may still be stored.
    superseded: Vec<TokenDigest>,
}

struct Cooldown {
    until: Instant,
    error: Error,
}

#[derive(Default)]
pub(crate) struct CellState {
    authority: Option<Authority>,
    /// Bumped on every change of `authority`, so a store read that raced with a change is not
    /// merged over newer knowledge.
    epoch: u64,
    flight: Option<Flight>,
    next_flight: u64,
    cooldown: Option<Cooldown>,
    /// When a terminal state (needs reauthorization, revoked) was last confirmed by the store.
    terminal_checked: Option<Instant>,
    pending_announced: bool,
    persist_task: bool,
    revoke_task: bool,
    /// Numbers the hand-offs of the refresh lease to [`GrantCell::kept_lease`].
    next_handoff: u64,
}

impl CellState {
    fn set_authority(&mut self, authority: Option<Authority>) {
        self.authority = authority;
        self.epoch += 1;
    }
}

/// The refresh lease, kept while the pair made under it is pending.
struct KeptLease {
    guard: LeaseGuard,
    /// The hand-off that put it here; the renewal task of that hand-off runs while it stays.
    handoff: u64,
}

/// One grant in the cache.
pub(crate) struct GrantCell {
    pub(crate) subject: Subject,
    key: StoreKey,
    lease_key: StoreKey,
    /// The token served, changed only by [`Inner::set_token`] (which copies it into the cache).
    pub(crate) token: ArcSwapOption<ActiveToken>,
    state: Mutex<CellState>,
    /// One store writer at a time for this grant within this process.
    writer: tokio::sync::Mutex<()>,
    /// The refresh lease while the authority is pending (boxed: most cells never keep one).
    /// Changed and checked against the state under this lock, so it is released once the pair
    /// is no longer pending.
    kept_lease: tokio::sync::Mutex<Option<Box<KeptLease>>>,
}

impl GrantCell {
    pub(crate) fn new(subject: Subject, key: StoreKey) -> Self {
        Self {
            subject,
            lease_key: layout::lease(&key),
            key,
            token: ArcSwapOption::empty(),
            state: Mutex::new(CellState::default()),
            writer: tokio::sync::Mutex::new(()),
            kept_lease: tokio::sync::Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, CellState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the authority is a pair (or mark) not yet written to the store.
    fn pending(&self) -> bool {
        self.lock()
            .authority
            .as_ref()
            .is_some_and(|a| a.stored.is_none())
    }
}

/// Whether `ours` (pending) may replace `stored`: the store holds a token our pair superseded,
/// and is either still active or in the same state as ours (a tombstone whose tokens we
/// refreshed). A tombstone or a reauthorization mark written by someone else is never undone.
fn overwritable(stored: &OAuthGrant, ours: &OAuthGrant, superseded: &[TokenDigest]) -> bool {
    let from_our_lineage =
        digest_of(stored.refresh_token.as_ref()).is_some_and(|d| superseded.contains(&d));
    from_our_lineage && (stored.status == CredentialStatus::Active || stored.status == ours.status)
}

/// A share in `[0, 1)` derived from this instance's random seed and the grant's subject and
/// generation: stable for one token in one process, spread across grants and across replicas.
fn jitter_share(seed: u64, record: &OAuthGrant) -> f64 {
    let mut hasher = Sha256::new();
    hasher.update(seed.to_le_bytes());
    hasher.update(record.subject.to_string().as_bytes());
    hasher.update(record.generation.to_le_bytes());
    let bytes: [u8; 32] = hasher.finalize().into();
    let mut head = [0u8; 8];
    head.copy_from_slice(&bytes[..8]);
    (u64::from_le_bytes(head) >> 11) as f64 / (1u64 << 53) as f64
}

fn not_connected() -> Error {
    Error::new(
        ErrorKind::NotConnected,
        "no grant is stored for this subject",
    )
}

fn needs_reauthorization() -> Error {
    Error::new(
        ErrorKind::NeedsReauthorization,
        "the grant needs reauthorization",
    )
}

/// Why a record cannot serve `trigger`, if it cannot.
fn terminal(trigger: &Trigger, record: &OAuthGrant) -> Option<Error> {
    match record.status {
        CredentialStatus::Active => None,
        CredentialStatus::NeedsReauthorization => Some(needs_reauthorization()),
        CredentialStatus::Revoked
            if matches!(trigger, Trigger::Revoke)
                && record.status_reason.as_deref() == Some(REVOCATION_PENDING) =>
        {
            None
        }
        CredentialStatus::Revoked | CredentialStatus::NeedsReplacement => {
            Some(Error::new(ErrorKind::Revoked, "the grant was disconnected"))
        }
    }
}

impl Inner {
    /// A token for `record` as received now; `existing` is kept when it is the same token.
    fn token_from_record(
        &self,
        record: &OAuthGrant,
        existing: Option<Arc<ActiveToken>>,
    ) -> Option<Arc<ActiveToken>> {
        let access = record.access_token.as_ref()?;
        let expires_at = record.access_token_expires_at?;
        if let Some(existing) = existing
            && existing.generation == record.generation
            && existing.access_token.expose_secret() == access.expose_secret()
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
    fn new_token(
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
            credential: Credential {
                id: CredentialId::next(),
                header: AuthorizationHeader::bearer(&access_token),
                subject: record.subject,
                environment: self.config.environment().name().clone(),
                scopes: record.scopes.clone(),
                kind: CredentialKind::OAuth,
            },
            access_token,
            expires_at,
            refresh_at,
            generation: record.generation,
        })
    }

    /// The fresh cached token of `subject`: no lock, no I/O, one `Arc` clone. Freshness is
    /// read on the coarse clock: `refresh_at` lies a margin of seconds before expiry, so a few
    /// milliseconds either way change nothing.
    fn fresh(&self, subject: &Subject) -> Option<Arc<ActiveToken>> {
        let shard = self.cells.shard(subject).load();
        let token = shard.get(subject)?.token.as_ref()?;
        (self.clock.coarse_instant() < token.refresh_at).then(|| Arc::clone(token))
    }

    /// A token that satisfies `trigger` according to the state, if there is one.
    fn satisfied(
        &self,
        cell: &GrantCell,
        st: &CellState,
        trigger: &Trigger,
    ) -> Option<Arc<ActiveToken>> {
        let auth = st.authority.as_ref()?;
        let now = self.clock.instant();
        let active = auth.record.status == CredentialStatus::Active;
        match trigger {
            Trigger::Fresh => cell
                .token
                .load_full()
                .filter(|t| active && now < t.refresh_at),
            Trigger::Rejected(id) => cell
                .token
                .load_full()
                .filter(|t| active && t.credential.id != *id && now < t.expires_at),
            Trigger::KeepAlive(threshold) => {
                let recent = auth
                    .record
                    .refresh_token_issued_at
                    .is_some_and(|issued| issued >= *threshold);
                if !(active && recent) {
                    return None;
                }
                cell.token
                    .load_full()
                    .filter(|t| now < t.expires_at)
                    .or_else(|| self.token_from_record(&auth.record, None))
            }
            Trigger::Revoke => {
                let token = self.token_from_record(&auth.record, None)?;
                (now + self.policy.refresh_margin < token.expires_at).then_some(token)
            }
        }
    }

    /// Merges a record read from the store at `version` into the cell. Returns an event to
    /// emit once the lock is released.
    fn merge(
        &self,
        cell: &GrantCell,
        st: &mut CellState,
        record: OAuthGrant,
        version: Version,
    ) -> Option<OAuthEvent> {
        if let Some(auth) = st.authority.as_mut() {
            if auth.stored.as_ref() == Some(&version) {
                return None;
            }
            if auth.stored.is_none() {
                let stored = digest_of(record.refresh_token.as_ref());
                let ours = digest_of(auth.record.refresh_token.as_ref());
                if stored.is_some() && stored == ours {
                    auth.stored = Some(version);
                    auth.superseded.clear();
                    st.epoch += 1;
                    return None;
                }
                if overwritable(&record, &auth.record, &auth.superseded) {
                    // The store still holds a token our pending pair replaced: ours is newer.
                    return None;
                }
            }
        }
        self.adopt(cell, st, record, version)
    }

    /// Makes a stored record the authority (another writer's word is final).
    fn adopt(
        &self,
        cell: &GrantCell,
        st: &mut CellState,
        record: OAuthGrant,
        version: Version,
    ) -> Option<OAuthEvent> {
        let previous = st.authority.as_ref().map(|a| a.record.generation);
        let token = if record.status == CredentialStatus::Active {
            self.token_from_record(&record, cell.token.load_full())
        } else {
            None
        };
        self.set_token(cell, token);
        let event = match previous {
            Some(g) if record.generation > g && record.status == CredentialStatus::Active => {
                Some(OAuthEvent::Adopted {
                    subject: cell.subject,
                    generation: record.generation,
                })
            }
            _ => None,
        };
        st.pending_announced = false;
        st.set_authority(Some(Authority {
            record,
            stored: Some(version),
            superseded: Vec::new(),
        }));
        event
    }

    /// Reads the grant from the store and merges it. `NotConnected` when nothing is stored.
    async fn reconcile(&self, cell: &GrantCell) -> Result<()> {
        for _ in 0..3 {
            let epoch = cell.lock().epoch;
            let read = self
                .store
                .get_record::<OAuthGrant>(&cell.key)
                .await
                .map_err(|e| Error::store("reading the grant failed", e))?;
            let event = {
                let mut st = cell.lock();
                if st.epoch != epoch {
                    // The authority changed while we read; the read may be stale.
                    continue;
                }
                match read {
                    None => {
                        self.set_token(cell, None);
                        st.set_authority(None);
                        return Err(not_connected());
                    }
                    Some((record, version)) => self.merge(cell, &mut st, record, version),
                }
            };
            if let Some(event) = event {
                self.emit(event);
            }
            return Ok(());
        }
        Ok(())
    }

    /// The outcome for `trigger` from the state alone: a terminal error, a token, or `None`
    /// when work is needed.
    fn check(&self, cell: &GrantCell, trigger: &Trigger) -> Result<Option<Arc<ActiveToken>>> {
        let st = cell.lock();
        let Some(auth) = st.authority.as_ref() else {
            return Err(not_connected());
        };
        if let Some(err) = terminal(trigger, &auth.record) {
            return Err(err);
        }
        Ok(self.satisfied(cell, &st, trigger))
    }

    /// The current token after work that may have changed the authority.
    fn current(&self, cell: &GrantCell, trigger: &Trigger) -> FlightResult {
        if let Some(token) = self.check(cell, trigger)? {
            return Ok(token);
        }
        let st = cell.lock();
        let auth = st.authority.as_ref().ok_or_else(not_connected)?;
        cell.token
            .load_full()
            .or_else(|| self.token_from_record(&auth.record, None))
            .ok_or_else(|| Error::unexpected("the grant has no access token"))
    }
}

/// Gets a token of `subject` that satisfies `trigger`, refreshing at most once per grant.
pub(crate) async fn obtain(
    inner: &Arc<Inner>,
    subject: Subject,
    trigger: Trigger,
) -> Result<Arc<ActiveToken>> {
    let cell = inner.cell_or_insert(subject);
    let mut last = None;
    for _ in 0..3 {
        let (future, started) = {
            let mut st = cell.lock();
            if let Some(auth) = st.authority.as_ref() {
                let now = inner.clock.instant();
                match terminal(&trigger, &auth.record) {
                    Some(err) => {
                        let confirmed = st
                            .terminal_checked
                            .is_some_and(|at| now < at + inner.policy.recheck_interval);
                        if confirmed {
                            return Err(err);
                        }
                        // Otherwise a flight re-reads the store: another replica may have
                        // reconnected the grant.
                    }
                    None => {
                        if let Some(token) = inner.satisfied(&cell, &st, &trigger) {
                            return Ok(token);
                        }
                        if let Some(cooldown) = &st.cooldown
                            && now < cooldown.until
                        {
                            if let Some(token) = still_valid(inner, &cell, &trigger) {
                                return Ok(token);
                            }
                            return Err(cooldown.error.clone());
                        }
                    }
                }
            }
            match &st.flight {
                Some(flight) => (flight.future.clone(), false),
                None => (start_flight(inner, &cell, &mut st, trigger.clone()), true),
            }
        };
        match future.await {
            Ok(token) if started => return Ok(token),
            Ok(token) => last = Some(token),
            Err(err) => {
                if err.is_retryable()
                    && let Some(token) = still_valid(inner, &cell, &trigger)
                {
                    return Ok(token);
                }
                return Err(err);
            }
        }
    }
    last.ok_or_else(|| Error::unexpected("the refresh did not produce a token"))
}

/// For a caller that only needs a working token: the current one while it has not expired.
fn still_valid(inner: &Inner, cell: &GrantCell, trigger: &Trigger) -> Option<Arc<ActiveToken>> {
    if !matches!(trigger, Trigger::Fresh) {
        return None;
    }
    cell.token
        .load_full()
        .filter(|t| inner.clock.instant() < t.expires_at)
}

fn start_flight(
    inner: &Arc<Inner>,
    cell: &Arc<GrantCell>,
    st: &mut CellState,
    trigger: Trigger,
) -> SharedFlight {
    st.next_flight += 1;
    let id = st.next_flight;
    let span = tracing::info_span!(
        "pleo_auth_refresh",
        subject = %cell.subject,
        flight = id,
        trigger = trigger_name(&trigger)
    );
    let task = tokio::spawn(run_flight(inner.clone(), cell.clone(), trigger, id).instrument(span));
    let future = async move {
        task.await
            .unwrap_or_else(|_| Err(Error::unexpected("the refresh task failed")))
    }
    .boxed()
    .shared();
    st.flight = Some(Flight {
        id,
        future: future.clone(),
    });
    future
}

fn trigger_name(trigger: &Trigger) -> &'static str {
    match trigger {
        Trigger::Fresh => "expiry",
        Trigger::Rejected(_) => "rejected",
        Trigger::KeepAlive(_) => "keep_alive",
        Trigger::Revoke => "revoke",
    }
}

/// Clears the flight slot when the flight ends, even by panic.
struct ClearFlight {
    cell: Arc<GrantCell>,
    id: u64,
}

impl Drop for ClearFlight {
    fn drop(&mut self) {
        let mut st = self.cell.lock();
        if st.flight.as_ref().is_some_and(|f| f.id == self.id) {
            st.flight = None;
        }
    }
}

async fn run_flight(
    inner: Arc<Inner>,
    cell: Arc<GrantCell>,
    trigger: Trigger,
    id: u64,
) -> FlightResult {
    let _clear = ClearFlight {
        cell: cell.clone(),
        id,
    };
    let result = flight(&inner, &cell, &trigger).await;
    match &result {
        Ok(_) => cell.lock().cooldown = None,
        Err(err)
            if matches!(
                err.kind(),
                ErrorKind::NeedsReauthorization | ErrorKind::Revoked
            ) =>
        {
            cell.lock().terminal_checked = Some(inner.clock.instant());
        }
        Err(err) if err.kind() == &ErrorKind::NotConnected => {
            let unloaded = cell.lock().authority.is_none();
            if unloaded {
                inner.forget(&cell.subject, &cell);
            }
        }
        Err(err) => {
            let from_pleo = matches!(
                err.kind(),
                ErrorKind::RateLimited { .. }
                    | ErrorKind::Unavailable
                    | ErrorKind::InvalidClient
                    | ErrorKind::UnexpectedResponse
            );
            if from_pleo {
                let length = inner
                    .policy
                    .cooldown
                    .max(err.retry_after().unwrap_or_default());
                cell.lock().cooldown = Some(Cooldown {
                    until: inner.clock.instant() + length,
                    error: err.clone(),
                });
                inner.emit(OAuthEvent::RefreshFailed {
                    subject: cell.subject,
                    kind: err.kind().clone(),
                    retryable: err.is_retryable(),
                });
            }
            tracing::debug!(kind = ?err.kind(), "refresh flight failed");
        }
    }
    result
}

async fn flight(inner: &Arc<Inner>, cell: &Arc<GrantCell>, trigger: &Trigger) -> FlightResult {
    let reload = cell
        .lock()
        .authority
        .as_ref()
        .is_none_or(|a| terminal(trigger, &a.record).is_some());
    if reload {
        inner.reconcile(cell).await?;
    }
    if let Some(token) = inner.check(cell, trigger)? {
        return Ok(token);
    }
    let guard = match take_kept_lease(inner, cell).await {
        Some(guard) => guard,
        None => match acquire_or_follow(inner, cell, trigger).await? {
            LeaseStep::Acquired(guard) => guard,
            LeaseStep::Satisfied(token) => return Ok(token),
        },
    };
    let leased_at = tokio::time::Instant::now();
    let result = while_renewing(
        &guard,
        inner.policy.lease_ttl,
        refresh_under_lease(inner, cell, trigger, &guard, leased_at),
    )
    .await;
    keep_or_release(inner, cell, guard).await;
    result
}

/// Runs `work` (the refresh and the first write of its pair) while renewing `guard` every third
/// of `ttl`, so that a holder that is alive and working keeps the lease however slow the token
/// endpoint or the store is; one that is paused or dead stops renewing and loses it after `ttl`.
/// The renewals run beside `work` in the same task and stop when it ends, or when the lease
/// implementation cannot renew.
async fn while_renewing<T>(
    guard: &LeaseGuard,
    ttl: Duration,
    work: impl std::future::Future<Output = T>,
) -> T {
    let period = ttl / 3;
    let renewals = async {
        loop {
            tokio::time::sleep(period).await;
            match tokio::time::timeout(period, guard.renew(ttl)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.kind() == CoreKind::Unsupported => return,
                Ok(Err(e)) => tracing::warn!(
                    kind = %e.kind(),
                    "renewing the refresh lease during a refresh failed; it may expire"
                ),
                Err(_) => tracing::warn!(
                    "renewing the refresh lease during a refresh timed out; it may expire"
                ),
            }
        }
    };
    tokio::pin!(work);
    tokio::select! {
        biased;
        out = &mut work => out,
        () = renewals => work.await,
    }
}

/// Gives the refresh lease back; a release that fails leaves it to expire by its TTL.
async fn release_lease(guard: LeaseGuard) {
    // Failpoint (feature `failpoints`, tests only): the release never reaches the lease backend.
    #[cfg(feature = "failpoints")]
    if fail::eval("pleo_auth_oauth::lease::release", |_| ()).is_some() {
        std::mem::forget(guard);
        return;
    }
    if let Err(e) = guard.release().await {
        tracing::debug!(error = %e, "releasing the refresh lease failed; it expires by ttl");
    }
}

/// The lease this process kept for its pending pair, renewed for a new flight; `None` if there
/// is none or it could not be renewed (then it is given back and the flight acquires anew).
async fn take_kept_lease(inner: &Inner, cell: &GrantCell) -> Option<LeaseGuard> {
    let kept = cell.kept_lease.lock().await.take()?;
    match kept.guard.renew(inner.policy.lease_ttl).await {
        Ok(()) => Some(kept.guard),
        Err(e) => {
            tracing::debug!(kind = %e.kind(), "the kept refresh lease could not be renewed; acquiring it anew");
            release_lease(kept.guard).await;
            None
        }
    }
}

/// After a flight: while the cell's pair is still pending, keeps the lease (renewed in the
/// background, released once the pair is stored); otherwise releases it.
async fn keep_or_release(inner: &Arc<Inner>, cell: &Arc<GrantCell>, guard: LeaseGuard) {
    let mut slot = cell.kept_lease.lock().await;
    let handoff = {
        let mut st = cell.lock();
        if st.authority.as_ref().is_some_and(|a| a.stored.is_none()) {
            st.next_handoff += 1;
            Some(st.next_handoff)
        } else {
            None
        }
    };
    let Some(handoff) = handoff else {
        drop(slot);
        release_lease(guard).await;
        return;
    };
    let replaced = slot.replace(Box::new(KeptLease { guard, handoff }));
    drop(slot);
    if let Some(old) = replaced {
        release_lease(old.guard).await;
    }
    ensure_persist_loop(inner, cell);
    let span = tracing::info_span!("pleo_auth_lease", subject = %cell.subject);
    tokio::spawn(renew_loop(Arc::downgrade(inner), cell.clone(), handoff).instrument(span));
}

/// Releases the kept lease if the cell's pair is no longer pending, or unconditionally when
/// `always` (the manager is gone).
async fn release_kept_lease(cell: &GrantCell, always: bool) {
    let mut slot = cell.kept_lease.lock().await;
    if !always && cell.pending() {
        return;
    }
    let kept = slot.take();
    drop(slot);
    if let Some(kept) = kept {
        release_lease(kept.guard).await;
    }
}

/// What one renewal of a kept lease came to.
enum Renewal {
    Renewed,
    /// The lease implementation cannot renew: the lease expires by its TTL.
    Unsupported,
    /// The lease had lapsed and nobody held it: this is the new one.
    Retaken(LeaseGuard),
    /// Not renewed (logged); tried again at the next interval.
    Failed,
}

/// Renews `guard`; if it lapsed, takes the lease again unless another holder has it.
async fn renew_or_retake(
    inner: &Inner,
    cell: &GrantCell,
    guard: &LeaseGuard,
    ttl: Duration,
) -> Renewal {
    let err = match guard.renew(ttl).await {
        Ok(()) => return Renewal::Renewed,
        Err(e) => e,
    };
    match err.kind() {
        CoreKind::Unsupported => {
            tracing::warn!(
                "the refresh lease cannot be renewed; it expires by its ttl while the rotated tokens are not stored"
            );
            Renewal::Unsupported
        }
        CoreKind::Conflict => match inner.lease.acquire(&cell.lease_key, ttl).await {
            Ok(Some(guard)) => {
                tracing::warn!(
                    "the refresh lease lapsed while the rotated tokens were not stored; took it again"
                );
                Renewal::Retaken(guard)
            }
            Ok(None) => {
                tracing::warn!(
                    "the refresh lease lapsed while the rotated tokens are not stored, and another holder took it"
                );
                Renewal::Failed
            }
            Err(e) => {
                tracing::warn!(
                    kind = %e.kind(),
                    "the refresh lease lapsed while the rotated tokens are not stored; taking it again failed"
                );
                Renewal::Failed
            }
        },
        kind => {
            tracing::warn!(
                %kind,
                "renewing the refresh lease failed while the rotated tokens are not stored; retrying"
            );
            Renewal::Failed
        }
    }
}

/// Renews the lease of hand-off `handoff` every third of its TTL while it stays kept; releases
/// it once the pair is no longer pending or the manager is dropped.
async fn renew_loop(inner: Weak<Inner>, cell: Arc<GrantCell>, handoff: u64) {
    loop {
        let Some(ttl) = inner.upgrade().map(|i| i.policy.lease_ttl) else {
            release_kept_lease(&cell, true).await;
            return;
        };
        let interval = ttl / 3;
        tokio::time::sleep(interval).await;
        let Some(strong) = inner.upgrade() else {
            release_kept_lease(&cell, true).await;
            return;
        };
        let mut slot = cell.kept_lease.lock().await;
        let Some(kept) = slot.as_mut().filter(|k| k.handoff == handoff) else {
            // A flight took the lease over (it hands it off anew), or it was released.
            return;
        };
        if !cell.pending() {
            let kept = slot.take();
            drop(slot);
            if let Some(kept) = kept {
                release_lease(kept.guard).await;
            }
            return;
        }
        let renewal = renew_or_retake(&strong, &cell, &kept.guard, ttl);
        match tokio::time::timeout(interval, renewal).await {
            Ok(Renewal::Renewed | Renewal::Failed) => {}
            Ok(Renewal::Unsupported) => return,
            Ok(Renewal::Retaken(guard)) => {
                let lost = std::mem::replace(&mut kept.guard, guard);
                drop(slot);
                release_lease(lost).await;
            }
            Err(_) => tracing::warn!(
                "renewing the refresh lease timed out while the rotated tokens are not stored; retrying"
            ),
        }
    }
}

enum LeaseStep {
    Acquired(LeaseGuard),
    Satisfied(Arc<ActiveToken>),
}

/// Takes the lease, or waits for its holder's result by polling the store, taking over if the
/// holder's lease expires.
async fn acquire_or_follow(
    inner: &Arc<Inner>,
    cell: &Arc<GrantCell>,
    trigger: &Trigger,
) -> Result<LeaseStep> {
    let deadline = tokio::time::Instant::now() + inner.policy.lease_wait;
    let mut attempt = 0u32;
    loop {
        // Failpoint (feature `failpoints`, tests only): the lease backend fails.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("pleo_auth_oauth::lease::acquire", |_| Err(Error::store(
            "taking the refresh lease failed",
            pleo_auth_core::Error::unavailable("failpoint: lease acquire failed"),
        )));
        match inner
            .lease
            .acquire(&cell.lease_key, inner.policy.lease_ttl)
            .await
        {
            Ok(Some(guard)) => return Ok(LeaseStep::Acquired(guard)),
            Ok(None) => {}
            Err(e) => {
                return Err(Error::new(
                    ErrorKind::Store(e.kind()),
                    "taking the refresh lease failed",
                )
                .with_source(e));
            }
        }
        if attempt > 0 {
            inner.reconcile(cell).await?;
            if let Some(token) = inner.check(cell, trigger)? {
                return Ok(LeaseStep::Satisfied(token));
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::new(
                ErrorKind::LeaseUnavailable,
                "another replica holds the refresh lease and did not finish in time",
            ));
        }
        attempt += 1;
        let delay = Duration::from_millis(10)
            .saturating_mul(1 << attempt.min(7))
            .min(Duration::from_secs(1));
        tokio::time::sleep(delay).await;
    }
}

async fn refresh_under_lease(
    inner: &Arc<Inner>,
    cell: &Arc<GrantCell>,
    trigger: &Trigger,
    guard: &LeaseGuard,
    leased_at: tokio::time::Instant,
) -> FlightResult {
    // Another replica may have rotated while we waited for the lease: adopt, do not call Pleo.
    inner.reconcile(cell).await?;
    if let Some(token) = inner.check(cell, trigger)? {
        return Ok(token);
    }
    let presented = {
        let st = cell.lock();
        let auth = st.authority.as_ref().ok_or_else(not_connected)?;
        auth.record.refresh_token.clone()
    };
    let Some(presented) = presented else {
        return Err(Error::new(
            ErrorKind::NeedsReauthorization,
            "the grant has no refresh token",
        ));
    };
    match request_refresh(inner, &presented, guard, leased_at).await {
        Ok(answer) => {
            // Failpoint (feature `failpoints`, tests only): the answer is lost after Pleo rotated.
            #[cfg(feature = "failpoints")]
            fail::fail_point!("pleo_auth_oauth::after_token_response", |_| Err(
                Error::new(
                    ErrorKind::Unavailable,
                    "failpoint: the token response was lost"
                )
            ));
            install(inner, cell, trigger, &presented, answer).await
        }
        Err(err) if err.kind() == &ErrorKind::NeedsReauthorization => {
            mark_needs_reauthorization(inner, cell, trigger, &presented).await
        }
        Err(err) => Err(err),
    }
}

/// Fencing: confirms, right before a refresh token is presented, that this holder still holds
/// the lease for a whole TTL (by renewing it), so the token request and the first write of its
/// answer, which the builder checked fit in a TTL, end before any other holder can take over.
/// `since` is when the lease was last known to be held for a whole TTL; it is moved forward on
/// success. A lease that cannot renew is confirmed by that time budget alone.
async fn confirm_lease(
    inner: &Inner,
    guard: &LeaseGuard,
    since: &mut tokio::time::Instant,
) -> Result<()> {
    let ttl = inner.policy.lease_ttl;
    let renewed = tokio::time::timeout(inner.policy.store_timeout, guard.renew(ttl)).await;
    match renewed {
        Ok(Ok(())) => {
            *since = tokio::time::Instant::now();
            Ok(())
        }
        Ok(Err(e)) if e.kind() == CoreKind::Unsupported => {
            let budget = inner.transport.timeout + inner.policy.store_timeout;
            if since.elapsed() + budget < ttl {
                Ok(())
            } else {
                Err(lease_lost())
            }
        }
        Ok(Err(e)) if e.kind() == CoreKind::Conflict => Err(lease_lost().with_source(e)),
        Ok(Err(e)) => Err(Error::new(
            ErrorKind::Store(e.kind()),
            "the refresh lease could not be confirmed before the refresh token was presented",
        )
        .with_source(e)),
        Err(_) => Err(Error::new(
            ErrorKind::Store(CoreKind::Unavailable),
            "confirming the refresh lease timed out before the refresh token was presented",
        )),
    }
}

fn lease_lost() -> Error {
    Error::new(
        ErrorKind::LeaseUnavailable,
        "the refresh lease was lost before the refresh token was presented",
    )
}

/// Calls the token endpoint, retrying transient failures with backoff. Every attempt is fenced
/// by [`confirm_lease`] first.
async fn request_refresh(
    inner: &Inner,
    presented: &RefreshToken,
    guard: &LeaseGuard,
    leased_at: tokio::time::Instant,
) -> Result<Answer> {
    let mut confirmed_at = leased_at;
    let mut attempt = 1;
    loop {
        // Failpoint (feature `failpoints`, tests only): the holder is held up for the given
        // milliseconds between reading the store and presenting the refresh token.
        #[cfg(feature = "failpoints")]
        if let Some(Some(millis)) = fail::eval("pleo_auth_oauth::before_token_request", |arg| {
            arg.and_then(|ms| ms.parse::<u64>().ok())
        }) {
            tokio::time::sleep(Duration::from_millis(millis)).await;
        }
        confirm_lease(inner, guard, &mut confirmed_at).await?;
        let err = match token::refresh(
            &inner.http,
            &inner.token_endpoint,
            inner.clock.now(),
            presented,
        )
        .await
        {
            Ok(answer) => return Ok(answer),
            Err(err) => err,
        };
        if !err.is_retryable() || attempt >= inner.policy.max_attempts {
            return Err(err);
        }
        let delay = match err.retry_after() {
            Some(wait) if wait > inner.policy.max_inline_retry_after => return Err(err),
            Some(wait) => wait.max(inner.policy.backoff(attempt)),
            None => inner.policy.backoff(attempt),
        };
        tracing::debug!(attempt, delay_ms = delay.as_millis() as u64, kind = ?err.kind(), "retrying the refresh");
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

/// Install before judging: makes the answer's new refresh token (with its access token, if
/// the answer has a usable one) the authority and writes it, and only then reports what was
/// wrong with the answer. A refresh token the server rotated is never dropped.
async fn install(
    inner: &Arc<Inner>,
    cell: &Arc<GrantCell>,
    trigger: &Trigger,
    presented: &RefreshToken,
    answer: Answer,
) -> FlightResult {
    let Answer {
        refresh_token,
        access,
    } = answer;
    let (access, judgement) = match access {
        Ok(access) => (Some(access), None),
        Err(err) => (None, Some(err)),
    };
    if refresh_token.is_none() && access.is_none() {
        // Nothing to keep: the server did not rotate (or we cannot tell that it did).
        return Err(judgement.unwrap_or_else(|| Error::unexpected("the token response is empty")));
    }
    let now = inner.clock.timestamp();
    let generation = {
        let mut st = cell.lock();
        let Some(auth) = st.authority.as_mut() else {
            return Err(not_connected());
        };
        if digest_of(auth.record.refresh_token.as_ref()) != Some(digest(presented)) {
            // The grant was replaced (reconnected or disconnected) while we refreshed; the new
            // pair belongs to the replaced lineage.
            drop(st);
            return match judgement {
                Some(err) => Err(err),
                None => inner.current(cell, trigger),
            };
        }
        let mut record = auth.record.clone();
        let mut superseded = std::mem::take(&mut auth.superseded);
        let token = match access {
            Some(Access {
                access_token,
                expires_in,
                scopes,
            }) => {
                let lifetime = expires_in.unwrap_or(inner.policy.assumed_lifetime);
                record.access_token = Some(access_token.clone());
                record.access_token_expires_at = Some(now.saturating_add(lifetime));
                if let Some(scopes) = scopes {
                    record.scopes = scopes;
                }
                Some((access_token, lifetime))
            }
            None => {
                // The server rotated but sent nothing usable to call the API with: keep the new
                // refresh token; the next call refreshes with it.
                record.access_token = None;
                record.access_token_expires_at = None;
                None
            }
        };
        if let Some(rotated) = refresh_token {
            record.refresh_token = Some(rotated);
            record.refresh_token_issued_at = Some(now);
            superseded.push(digest(presented));
        }
        record.generation += 1;
        record.updated_at = now;
        let token = token.map(|(access_token, lifetime)| {
            inner.new_token(&record, access_token, lifetime, lifetime)
        });
        let active = record.status == CredentialStatus::Active;
        inner.set_token(cell, token.filter(|_| active));
        let generation = record.generation;
        st.set_authority(Some(Authority {
            record,
            stored: None,
            superseded,
        }));
        generation
    };
    match tokio::time::timeout(inner.policy.store_timeout, persist(inner, cell)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tracing::warn!(kind = ?err.kind(), "rotated tokens are held in memory until the store accepts them");
        }
        Err(_) => {
            tracing::warn!(
                "writing rotated tokens timed out; they are held in memory until the store accepts them"
            );
            persist_failed(
                inner,
                cell,
                pleo_auth_core::Error::unavailable("the store did not answer within store_timeout"),
            );
        }
    }
    inner.emit(OAuthEvent::Refreshed {
        subject: cell.subject,
        generation,
    });
    match judgement {
        Some(err) => Err(err),
        None => inner.current(cell, trigger),
    }
}

/// Writes the pending authority with compare-and-swap. On a store failure the authority stays
/// pending, a `PersistPending` event is emitted once, and a background task retries.
pub(crate) async fn persist(inner: &Arc<Inner>, cell: &Arc<GrantCell>) -> Result<()> {
    let _writer = cell.writer.lock().await;
    for _ in 0..MAX_CAS_ROUNDS {
        let (record, superseded) = {
            let st = cell.lock();
            match st.authority.as_ref() {
                Some(auth) if auth.stored.is_none() => {
                    (auth.record.clone(), auth.superseded.clone())
                }
                _ => return Ok(()),
            }
        };
        let read = match inner.store.get_record::<OAuthGrant>(&cell.key).await {
            Ok(read) => read,
            Err(e) => return Err(persist_failed(inner, cell, e)),
        };
        let Some((stored, version)) = read else {
            // Deleted while we held tokens: someone removed the grant on purpose.
            let mut st = cell.lock();
            inner.set_token(cell, None);
            st.set_authority(None);
            return Ok(());
        };
        let stored_digest = digest_of(stored.refresh_token.as_ref());
        let ours = digest_of(record.refresh_token.as_ref());
        let ours_newer = overwritable(&stored, &record, &superseded);
        if stored_digest.is_some() && stored_digest == ours {
            mark_stored(inner, cell, &record, version);
            return Ok(());
        }
        if !ours_newer {
            // Another writer won: its record is the truth.
            let event = {
                let mut st = cell.lock();
                inner.adopt(cell, &mut st, stored, version)
            };
            if let Some(event) = event {
                inner.emit(event);
            }
            return Ok(());
        }
        let mut merged = record.clone();
        merged.settings = stored.settings.clone();
        merged.tenant = stored.tenant.clone().or(merged.tenant);
        merged.created_at = stored.created_at;
        merged.generation = merged.generation.max(stored.generation + 1);
        // Failpoint (feature `failpoints`, tests only): the store write fails before it is sent.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("pleo_auth_oauth::persist::before_write", |_| Err(
            persist_failed(inner, cell, failpoint_store_error("before the store write"))
        ));
        match inner
            .store
            .put_record(&cell.key, &merged, Precondition::Version(version))
            .await
        {
            Ok(written) => {
                // Failpoint (feature `failpoints`, tests only): the write landed, its answer is lost.
                #[cfg(feature = "failpoints")]
                fail::fail_point!("pleo_auth_oauth::persist::after_write", |_| Err(
                    persist_failed(inner, cell, failpoint_store_error("after the store write"))
                ));
                mark_stored(inner, cell, &merged, written);
                return Ok(());
            }
            Err(e) if is_conflict(&e) => continue,
            Err(e) => return Err(persist_failed(inner, cell, e)),
        }
    }
    Err(Error::new(
        ErrorKind::Store(CoreKind::Conflict),
        "the grant kept changing while its tokens were written",
    ))
}

/// The store error a failpoint injects (feature `failpoints`, tests only).
#[cfg(feature = "failpoints")]
fn failpoint_store_error(at: &'static str) -> pleo_auth_core::Error {
    pleo_auth_core::Error::unavailable(format!("failpoint: {at}")).with_backend("failpoint")
}

/// Records that `written` is stored at `version`, if it is still the authority's pair.
fn mark_stored(inner: &Inner, cell: &GrantCell, written: &OAuthGrant, version: Version) {
    let recovered = {
        let mut st = cell.lock();
        let Some(auth) = st.authority.as_mut() else {
            return;
        };
        if digest_of(auth.record.refresh_token.as_ref())
            != digest_of(written.refresh_token.as_ref())
            || auth.record.status != written.status
        {
            // A newer pair was made meanwhile; it supersedes what we wrote, and its own
            // `superseded` list already names our token.
            return;
        }
        auth.record = written.clone();
        auth.stored = Some(version);
        auth.superseded.clear();
        st.epoch += 1;
        std::mem::take(&mut st.pending_announced)
    };
    if recovered {
        inner.emit(OAuthEvent::PersistRecovered {
            subject: cell.subject,
            generation: written.generation,
        });
    }
}

fn persist_failed(inner: &Arc<Inner>, cell: &Arc<GrantCell>, err: pleo_auth_core::Error) -> Error {
    let (announce, generation) = {
        let mut st = cell.lock();
        let generation = st.authority.as_ref().map_or(0, |a| a.record.generation);
        let announce = !std::mem::replace(&mut st.pending_announced, true);
        (announce, generation)
    };
    if announce {
        inner.emit(OAuthEvent::PersistPending {
            subject: cell.subject,
            generation,
        });
    }
    ensure_persist_loop(inner, cell);
    Error::store("writing the rotated tokens failed", err)
}

/// Starts the background retry of the pending write, unless it runs already.
fn ensure_persist_loop(inner: &Arc<Inner>, cell: &Arc<GrantCell>) {
    let spawn = !std::mem::replace(&mut cell.lock().persist_task, true);
    if spawn {
        let span = tracing::info_span!("pleo_auth_persist", subject = %cell.subject);
        tokio::spawn(persist_loop(Arc::downgrade(inner), cell.clone()).instrument(span));
    }
}

/// Retries the pending write with backoff until it lands or the manager is dropped; then gives
/// the kept refresh lease back.
async fn persist_loop(inner: Weak<Inner>, cell: Arc<GrantCell>) {
    let mut attempt = 0u32;
    loop {
        attempt = attempt.saturating_add(1);
        let Some(delay) = inner.upgrade().map(|i| i.policy.persist_backoff(attempt)) else {
            release_kept_lease(&cell, true).await;
            return;
        };
        tokio::time::sleep(delay).await;
        let Some(strong) = inner.upgrade() else {
            release_kept_lease(&cell, true).await;
            return;
        };
        if finish_persist_loop(&cell) {
            release_kept_lease(&cell, false).await;
            return;
        }
        match persist(&strong, &cell).await {
            Ok(()) => {
                if finish_persist_loop(&cell) {
                    release_kept_lease(&cell, false).await;
                    return;
                }
            }
            Err(err) => tracing::debug!(attempt, kind = ?err.kind(), "pending write failed again"),
        }
    }
}

/// Whether nothing is pending any more; then the persist loop ends (and says so in the state).
fn finish_persist_loop(cell: &GrantCell) -> bool {
    let mut st = cell.lock();
    let done = st.authority.as_ref().is_none_or(|a| a.stored.is_some());
    if done {
        st.persist_task = false;
    }
    done
}

/// Pleo refused the refresh token: unless another writer rotated first, mark the grant as
/// needing reauthorization (tokens discarded, record and settings kept).
async fn mark_needs_reauthorization(
    inner: &Arc<Inner>,
    cell: &Arc<GrantCell>,
    trigger: &Trigger,
    presented: &RefreshToken,
) -> FlightResult {
    let writer = cell.writer.lock().await;
    let presented_digest = digest(presented);
    for _ in 0..MAX_CAS_ROUNDS {
        let superseded = {
            let st = cell.lock();
            let auth = st.authority.as_ref().ok_or_else(not_connected)?;
            if digest_of(auth.record.refresh_token.as_ref()) != Some(presented_digest) {
                drop(st);
                return inner.current(cell, trigger);
            }
            auth.superseded.clone()
        };
        let now = inner.clock.timestamp();
        let dead = |mut record: OAuthGrant| {
            record.status = CredentialStatus::NeedsReauthorization;
            record.status_reason = Some(INVALID_GRANT.to_owned());
            record.access_token = None;
            record.access_token_expires_at = None;
            record.refresh_token = None;
            record.updated_at = now;
            record
        };
        let read = inner.store.get_record::<OAuthGrant>(&cell.key).await;
        let (stored, version) = match read {
            Ok(Some(found)) => found,
            Ok(None) => {
                let mut st = cell.lock();
                inner.set_token(cell, None);
                st.set_authority(None);
                return Err(not_connected());
            }
            Err(e) => {
                // Mark it in memory and let the write be retried; other replicas learn the same
                // from Pleo.
                {
                    let mut st = cell.lock();
                    let auth = st.authority.as_mut().ok_or_else(not_connected)?;
                    auth.record = dead(auth.record.clone());
                    auth.stored = None;
                    auth.superseded.push(presented_digest);
                    st.epoch += 1;
                    inner.set_token(cell, None);
                }
                inner.emit(OAuthEvent::ReauthorizationRequired {
                    subject: cell.subject,
                });
                drop(writer);
                persist_failed(inner, cell, e);
                return Err(needs_reauthorization());
            }
        };
        let stored_digest = digest_of(stored.refresh_token.as_ref());
        let ours = stored_digest == Some(presented_digest)
            || stored_digest.is_some_and(|d| superseded.contains(&d));
        if !ours || stored.status != CredentialStatus::Active {
            // Another replica rotated first (that is why Pleo refused our token), or the grant
            // was disconnected or reconnected: adopt what is stored.
            let event = {
                let mut st = cell.lock();
                inner.adopt(cell, &mut st, stored, version)
            };
            if let Some(event) = event {
                inner.emit(event);
            }
            return inner.current(cell, trigger);
        }
        let record = dead(stored);
        match inner
            .store
            .put_record(&cell.key, &record, Precondition::Version(version))
            .await
        {
            Ok(written) => {
                {
                    let mut st = cell.lock();
                    inner.set_token(cell, None);
                    st.set_authority(Some(Authority {
                        record,
                        stored: Some(written),
                        superseded: Vec::new(),
                    }));
                }
                inner.emit(OAuthEvent::ReauthorizationRequired {
                    subject: cell.subject,
                });
                return Err(needs_reauthorization());
            }
            Err(e) if is_conflict(&e) => continue,
            Err(e) => {
                {
                    let mut st = cell.lock();
                    inner.set_token(cell, None);
                    let mut superseded = superseded;
                    superseded.push(presented_digest);
                    st.set_authority(Some(Authority {
                        record,
                        stored: None,
                        superseded,
                    }));
                }
                inner.emit(OAuthEvent::ReauthorizationRequired {
                    subject: cell.subject,
                });
                drop(writer);
                persist_failed(inner, cell, e);
                return Err(needs_reauthorization());
            }
        }
    }
    Err(Error::new(
        ErrorKind::Store(CoreKind::Conflict),
        "the grant kept changing while it was marked as needing reauthorization",
    ))
}

/// Makes a freshly connected grant the authority of its cell (called by `complete()`).
pub(crate) fn seed(inner: &Inner, record: OAuthGrant, version: Version, lifetime: Duration) {
    let cell = inner.cell_or_insert(record.subject);
    let token = record
        .access_token
        .clone()
        .map(|access| inner.new_token(&record, access, lifetime, lifetime));
    let mut st = cell.lock();
    inner.set_token(&cell, token);
    st.cooldown = None;
    st.pending_announced = false;
    st.set_authority(Some(Authority {
        record,
        stored: Some(version),
        superseded: Vec::new(),
    }));
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
        if let Some(token) = self.inner.fresh(subject) {
            return Ok(token);
        }
        obtain(&self.inner, *subject, Trigger::Fresh).await
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
        let auth = st.authority.as_ref().ok_or_else(not_connected)?;
        let cooling = st
            .cooldown
            .as_ref()
            .is_some_and(|c| self.inner.clock.instant() < c.until);
        let state = match auth.record.status {
            CredentialStatus::Active if auth.stored.is_none() => GrantState::PersistPending,
            CredentialStatus::Active if st.flight.is_some() => GrantState::Refreshing,
            CredentialStatus::Active if cooling => GrantState::CoolingDown,
            CredentialStatus::Active => GrantState::Active,
            CredentialStatus::NeedsReauthorization => GrantState::NeedsReauthorization,
            CredentialStatus::Revoked
                if auth.record.status_reason.as_deref() == Some(REVOCATION_PENDING) =>
            {
                GrantState::RevocationPending
            }
            CredentialStatus::Revoked | CredentialStatus::NeedsReplacement => GrantState::Revoked,
        };
        Ok(status_of(&auth.record, state))
    }

    /// Every grant of this client and environment in the store, without secrets.
    pub async fn list(&self) -> Result<Vec<GrantStatus>> {
        let mut out = Vec::new();
        for record in self.records().await? {
            let state = match record.status {
                CredentialStatus::Active => GrantState::Active,
                CredentialStatus::NeedsReauthorization => GrantState::NeedsReauthorization,
                CredentialStatus::Revoked
                    if record.status_reason.as_deref() == Some(REVOCATION_PENDING) =>
                {
                    GrantState::RevocationPending
                }
                CredentialStatus::Revoked | CredentialStatus::NeedsReplacement => {
                    GrantState::Revoked
                }
            };
            out.push(status_of(&record, state));
        }
        Ok(out)
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

    /// Refreshes every active grant whose refresh token is older than
    /// [`RefreshPolicy::keep_alive_after`](crate::RefreshPolicy::keep_alive_after), so grants of
    /// idle companies do not expire, retries pending revocations, and deletes expired pending
    /// authorizations. Call it periodically (for
    /// example daily) from one or more replicas; the lease keeps refreshes single.
    pub async fn keep_alive(&self) -> Result<KeepAliveReport> {
        let records = self.records().await?;
        let threshold = Timestamp::from_system_time(
            self.inner
                .clock
                .now()
                .checked_sub(self.inner.policy.keep_alive_after)
                .unwrap_or(std::time::UNIX_EPOCH),
        );
        let mut report = KeepAliveReport {
            checked: records.len(),
            ..KeepAliveReport::default()
        };
        enum Job {
            Refresh(Subject),
            Revoke(Subject),
        }
        let jobs: Vec<Job> = records
            .iter()
            .filter_map(|r| match r.status {
                CredentialStatus::Active
                    if r.refresh_token_issued_at.is_none_or(|t| t < threshold) =>
                {
                    Some(Job::Refresh(r.subject))
                }
                CredentialStatus::Revoked
                    if r.status_reason.as_deref() == Some(REVOCATION_PENDING) =>
                {
                    Some(Job::Revoke(r.subject))
                }
                _ => None,
            })
            .collect();
        let results: Vec<(Job, Result<()>)> = stream::iter(jobs)
            .map(|job| async move {
                let result =
                    match &job {
                        Job::Refresh(subject) => {
                            obtain(&self.inner, *subject, Trigger::KeepAlive(threshold))
                                .await
                                .map(drop)
                        }
                        Job::Revoke(subject) => retry_revocation(&self.inner, *subject)
                            .await
                            .and_then(|outcome| match outcome {
                                DisconnectOutcome::RevocationPending => Err(Error::new(
                                    ErrorKind::Unavailable,
                                    "pleo could not be reached to revoke the grant",
                                )),
                                _ => Ok(()),
                            }),
                    };
                (job, result)
            })
            .buffer_unordered(8)
            .collect()
            .await;
        for (job, result) in results {
            match (job, result) {
                (Job::Refresh(s), Ok(())) => report.refreshed.push(s),
                (Job::Revoke(s), Ok(())) => report.revoked.push(s),
                (Job::Refresh(s) | Job::Revoke(s), Err(e)) => report.failed.push((s, e)),
            }
        }
        self.sweep_dangling(&mut report).await;
        match crate::pending::sweep(&self.inner).await {
            Ok(swept) => report.pending_removed = swept.removed,
            Err(err) => {
                tracing::warn!(kind = ?err.kind(), "sweeping pending authorizations failed; retried at the next keep-alive");
            }
        }
        Ok(report)
    }

    /// Retries the revocation of every dangling grant (see [`dangling`](Self::dangling)).
    async fn sweep_dangling(&self, report: &mut KeepAliveReport) {
        let records = match dangling::list(&self.inner).await {
            Ok(records) => records,
            Err(err) => {
                tracing::warn!(kind = ?err.kind(), "listing dangling grants failed; retried at the next keep-alive");
                return;
            }
        };
        for (key, record, version) in records {
            let before = DanglingStatus::of(&record);
            match dangling::sweep_one(&self.inner, key, record, version, CONNECT_GRACE).await {
                Ok(Swept::Settled) => report.dangling_settled += 1,
                Ok(Swept::Young) => {}
                Ok(Swept::Left(now)) => report.dangling.push(now),
                Err(err) => {
                    tracing::warn!(kind = ?err.kind(), "a dangling grant could not be swept");
                    report.dangling.push(before);
                }
            }
        }
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
            .filter_map(|cell| {
                let st = cell.lock();
                let auth = st.authority.as_ref().filter(|a| a.stored.is_none())?;
                Some(PendingPair {
                    record: auth.record.clone(),
                    superseded: auth.superseded.clone(),
                })
            })
            .collect()
    }

    /// Writes pairs that an earlier process could not store (from its recovery file), with the
    /// same rules as its own pending pairs: a pair is written only over a record that still
    /// holds a refresh token it superseded; a newer record in the store wins and the pair is
    /// dropped. Pairs of another environment or client are skipped.
    pub async fn recover(&self, pairs: Vec<PendingPair>) -> Vec<(Subject, Result<Recovered>)> {
        let mut out = Vec::with_capacity(pairs.len());
        for pair in pairs {
            let subject = pair.record.subject;
            out.push((subject, self.recover_one(pair).await));
        }
        out
    }

    async fn recover_one(&self, pair: PendingPair) -> Result<Recovered> {
        let inner = &self.inner;
        if pair.record.environment != *inner.config.environment().name()
            || pair.record.client_id != *inner.config.client_id()
        {
            return Ok(Recovered::Skipped);
        }
        let cell = inner.cell_or_insert(pair.record.subject);
        if cell.pending() {
            // This process holds a pair of its own for the grant: newer than any recovered one.
            return Ok(Recovered::Dropped);
        }
        let ours = digest_of(pair.record.refresh_token.as_ref());
        {
            let mut st = cell.lock();
            let token = (pair.record.status == CredentialStatus::Active)
                .then(|| inner.token_from_record(&pair.record, None))
                .flatten();
            inner.set_token(&cell, token);
            st.set_authority(Some(Authority {
                record: pair.record,
                stored: None,
                superseded: pair.superseded,
            }));
        }
        persist(inner, &cell).await?;
        let st = cell.lock();
        Ok(match st.authority.as_ref() {
            Some(auth) if digest_of(auth.record.refresh_token.as_ref()) == ours => {
                Recovered::Stored
            }
            _ => Recovered::Dropped,
        })
    }
}

/// How many rounds [`TokenManager::flush`] tries a pending pair before it gives up.
pub const FLUSH_ROUNDS: u32 = 4;

/// The longest pause between two rounds of [`TokenManager::flush`], whatever the persist
/// backoff: a flush runs while a process is about to exit.
const FLUSH_MAX_PAUSE: Duration = Duration::from_secs(1);

/// What [`TokenManager::recover`] did with one pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recovered {
    /// Written to the store (or found there already).
    Stored,
    /// Not written: the store holds a newer record (another process rotated, or the grant was
    /// reconnected, disconnected or deleted), which stays.
    Dropped,
    /// Of another environment or client than this manager's; left for that manager.
    Skipped,
}

/// A rotated pair that the store has not taken yet, taken out of a process so a later one can
/// write it ([`TokenManager::pending_pairs`], [`TokenManager::recover`]).
///
/// It holds the grant's tokens: `Debug` shows none, and the only ways in and out are
/// [`to_recovery_json`](Self::to_recovery_json) and
/// [`from_recovery_json`](Self::from_recovery_json), for a file only its owner can read.
pub struct PendingPair {
    record: OAuthGrant,
    superseded: Vec<TokenDigest>,
}

impl fmt::Debug for PendingPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingPair")
            .field("record", &self.record)
            .field("superseded", &self.superseded.len())
            .finish()
    }
}

/// The recovery encoding of a [`PendingPair`].
#[derive(serde::Serialize, serde::Deserialize)]
struct RecoveryJson {
    /// The grant record in its store encoding.
    record: String,
    /// Hex SHA-256 digests of the refresh tokens the pair superseded.
    superseded: Vec<String>,
}

impl PendingPair {
    /// The company or organisation.
    pub fn subject(&self) -> Subject {
        self.record.subject
    }

    /// The generation of the pair.
    pub fn generation(&self) -> u64 {
        self.record.generation
    }

    /// The pair as one line of JSON, secrets included.
    pub fn to_recovery_json(&self) -> Result<pleo_auth_core::SecretBytes> {
        let record = self
            .record
            .encode()
            .map_err(|e| Error::unexpected("encoding a pending pair failed").with_source(e))?;
        let record = String::from_utf8(record.expose_secret().to_vec())
            .map_err(|_| Error::unexpected("a grant record is not utf-8"))?;
        let json = RecoveryJson {
            record,
            superseded: self.superseded.iter().map(hex_digest).collect(),
        };
        serde_json::to_vec(&json)
            .map(pleo_auth_core::SecretBytes::new)
            .map_err(|_| Error::unexpected("encoding a pending pair failed"))
    }

    /// Reads a pair written by [`to_recovery_json`](Self::to_recovery_json).
    pub fn from_recovery_json(bytes: &[u8]) -> Result<Self> {
        let malformed = || Error::unexpected("a recovery entry is malformed");
        let json: RecoveryJson = serde_json::from_slice(bytes).map_err(|_| malformed())?;
        let record = OAuthGrant::decode(json.record.as_bytes()).map_err(|_| malformed())?;
        let superseded = json
            .superseded
            .iter()
            .map(|hex| parse_digest(hex).ok_or_else(malformed))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { record, superseded })
    }
}

fn hex_digest(digest: &TokenDigest) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_digest(hex: &str) -> Option<TokenDigest> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
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

    async fn credential_for(&self, subject: &Subject) -> pleo_auth_core::Result<Credential> {
        Ok(self.access_token(subject).await?.credential.clone())
    }

    async fn rejected(&self, subject: &Subject, id: &CredentialId) -> pleo_auth_core::Result<bool> {
        obtain(&self.inner, *subject, Trigger::Rejected(id.clone())).await?;
        Ok(true)
    }
}

/// Writes a status change with compare-and-swap and makes it the authority.
async fn write_status(
    inner: &Arc<Inner>,
    cell: &Arc<GrantCell>,
    change: impl Fn(&mut OAuthGrant),
) -> Result<OAuthGrant> {
    let _writer = cell.writer.lock().await;
    for _ in 0..MAX_CAS_ROUNDS {
        let (mut record, version) = inner
            .store
            .get_record::<OAuthGrant>(&cell.key)
            .await
            .map_err(|e| Error::store("reading the grant failed", e))?
            .ok_or_else(not_connected)?;
        change(&mut record);
        record.updated_at = inner.clock.timestamp();
        match inner
            .store
            .put_record(&cell.key, &record, Precondition::Version(version))
            .await
        {
            Ok(written) => {
                let mut st = cell.lock();
                let token = if record.status == CredentialStatus::Active {
                    inner.token_from_record(&record, cell.token.load_full())
                } else {
                    None
                };
                inner.set_token(cell, token);
                st.pending_announced = false;
                st.terminal_checked =
                    (record.status != CredentialStatus::Active).then(|| inner.clock.instant());
                st.set_authority(Some(Authority {
                    record: record.clone(),
                    stored: Some(written),
                    superseded: Vec::new(),
                }));
                return Ok(record);
            }
            Err(e) if is_conflict(&e) => continue,
            Err(e) => return Err(Error::store("writing the grant failed", e)),
        }
    }
    Err(Error::new(
        ErrorKind::Store(CoreKind::Conflict),
        "the grant kept changing while it was being updated",
    ))
}

fn revoke_locally(record: &mut OAuthGrant) {
    record.status = CredentialStatus::Revoked;
    record.status_reason = Some(DISCONNECTED.to_owned());
    record.access_token = None;
    record.access_token_expires_at = None;
    record.refresh_token = None;
}

async fn disconnect(inner: &Arc<Inner>, subject: Subject) -> Result<DisconnectOutcome> {
    let cell = inner.cell_or_insert(subject);
    if let Err(err) = inner.reconcile(&cell).await {
        if err.kind() == &ErrorKind::NotConnected {
            inner.forget(&subject, &cell);
        }
        return Err(err);
    }
    let (status, reason) = {
        let st = cell.lock();
        let auth = st.authority.as_ref().ok_or_else(not_connected)?;
        (auth.record.status, auth.record.status_reason.clone())
    };
    match status {
        CredentialStatus::Revoked if reason.as_deref() == Some(REVOCATION_PENDING) => {
            return retry_revocation(inner, subject).await;
        }
        CredentialStatus::Revoked => return Ok(DisconnectOutcome::Revoked),
        CredentialStatus::NeedsReauthorization | CredentialStatus::NeedsReplacement => {
            return finish_locally(inner, &cell).await;
        }
        CredentialStatus::Active => {}
    }
    if inner.config.server().revocation_endpoint().is_some() {
        return revoke_at_endpoint(inner, &cell).await;
    }
    let token = match obtain(inner, subject, Trigger::Fresh).await {
        Ok(token) => token,
        Err(err) if err.kind() == &ErrorKind::NeedsReauthorization => {
            return finish_locally(inner, &cell).await;
        }
        Err(err) if err.is_retryable() => {
            return leave_tombstone(inner, &cell).await;
        }
        Err(err) => return Err(err),
    };
    revoke_at_pleo(inner, &cell, &token).await
}

/// RFC 7009: revokes the grant's refresh token at the configured revocation endpoint and
/// records the outcome. No access token is needed, so nothing is refreshed first.
async fn revoke_at_endpoint(
    inner: &Arc<Inner>,
    cell: &Arc<GrantCell>,
) -> Result<DisconnectOutcome> {
    match revoke_refresh_token(inner, cell).await {
        Ok(outcome) => Ok(outcome),
        Err(err) if err.is_retryable() => {
            tracing::debug!(error = %err, "revocation failed; leaving a tombstone");
            leave_tombstone(inner, cell).await
        }
        Err(err) => {
            tracing::warn!(error = %err, "the revocation endpoint refused to revoke the grant; disconnected locally");
            finish_locally(inner, cell).await
        }
    }
}

/// One RFC 7009 revocation of the grant's refresh token; on success the record is marked
/// revoked. A grant without a refresh token is finished locally.
async fn revoke_refresh_token(
    inner: &Arc<Inner>,
    cell: &Arc<GrantCell>,
) -> std::result::Result<DisconnectOutcome, pleo_auth_core::Error> {
    let Some(endpoint) = inner.config.server().revocation_endpoint() else {
        return Err(pleo_auth_core::Error::new(
            CoreKind::Config,
            "no revocation endpoint is configured",
        ));
    };
    let refresh = {
        let st = cell.lock();
        st.authority
            .as_ref()
            .and_then(|a| a.record.refresh_token.clone())
    };
    let Some(refresh) = refresh else {
        return finish_locally(inner, cell).await.map_err(Into::into);
    };
    crate::dangling::revoke_token(inner, endpoint, refresh.expose_secret(), "refresh_token")
        .await?;
    write_status(inner, cell, revoke_locally).await?;
    inner.emit(OAuthEvent::Disconnected {
        subject: cell.subject,
        revoked_at_pleo: true,
    });
    Ok(DisconnectOutcome::Revoked)
}

/// Calls `DELETE /v1/installations/me` with `token` and records the outcome.
async fn revoke_at_pleo(
    inner: &Arc<Inner>,
    cell: &Arc<GrantCell>,
    token: &ActiveToken,
) -> Result<DisconnectOutcome> {
    let result = api::delete_installation(
        &inner.http,
        inner.config.environment(),
        &token.credential.header,
        cell.subject.company(),
    )
    .await;
    match result {
        Ok(()) => {
            write_status(inner, cell, revoke_locally).await?;
            inner.emit(OAuthEvent::Disconnected {
                subject: cell.subject,
                revoked_at_pleo: true,
            });
            Ok(DisconnectOutcome::Revoked)
        }
        Err(err) if err.is_retryable() => {
            tracing::debug!(error = %err, "revocation at pleo failed; leaving a tombstone");
            leave_tombstone(inner, cell).await
        }
        Err(err)
            if matches!(
                err.kind(),
                CoreKind::Unauthenticated | CoreKind::PermissionDenied
            ) =>
        {
            finish_locally(inner, cell).await
        }
        Err(err) => {
            Err(Error::unexpected("pleo refused to delete the installation").with_source(err))
        }
    }
}

async fn finish_locally(inner: &Arc<Inner>, cell: &Arc<GrantCell>) -> Result<DisconnectOutcome> {
    write_status(inner, cell, revoke_locally).await?;
    inner.emit(OAuthEvent::Disconnected {
        subject: cell.subject,
        revoked_at_pleo: false,
    });
    Ok(DisconnectOutcome::LocalOnly)
}

async fn leave_tombstone(inner: &Arc<Inner>, cell: &Arc<GrantCell>) -> Result<DisconnectOutcome> {
    write_status(inner, cell, |record| {
        record.status = CredentialStatus::Revoked;
        record.status_reason = Some(REVOCATION_PENDING.to_owned());
    })
    .await?;
    inner.emit(OAuthEvent::Disconnected {
        subject: cell.subject,
        revoked_at_pleo: false,
    });
    let spawn = !std::mem::replace(&mut cell.lock().revoke_task, true);
    if spawn {
        let span = tracing::info_span!("pleo_auth_revoke", subject = %cell.subject);
        tokio::spawn(revoke_loop(Arc::downgrade(inner), cell.subject).instrument(span));
    }
    Ok(DisconnectOutcome::RevocationPending)
}

/// Retries the revocation of a tombstoned grant.
async fn retry_revocation(inner: &Arc<Inner>, subject: Subject) -> Result<DisconnectOutcome> {
    let cell = inner.cell_or_insert(subject);
    inner.reconcile(&cell).await?;
    let tombstone = {
        let st = cell.lock();
        st.authority.as_ref().is_some_and(|a| {
            a.record.status == CredentialStatus::Revoked
                && a.record.status_reason.as_deref() == Some(REVOCATION_PENDING)
        })
    };
    if !tombstone {
        return Ok(DisconnectOutcome::Revoked);
    }
    if inner.config.server().revocation_endpoint().is_some() {
        return match revoke_refresh_token(inner, &cell).await {
            Ok(outcome) => Ok(outcome),
            Err(err) if err.is_retryable() => Ok(DisconnectOutcome::RevocationPending),
            Err(_) => finish_locally(inner, &cell).await,
        };
    }
    let token = match obtain(inner, subject, Trigger::Revoke).await {
        Ok(token) => token,
        Err(err) if err.is_retryable() => return Ok(DisconnectOutcome::RevocationPending),
        Err(err) if err.kind() == &ErrorKind::NeedsReauthorization => {
            return finish_locally(inner, &cell).await;
        }
        Err(err) => return Err(err),
    };
    let result = api::delete_installation(
        &inner.http,
        inner.config.environment(),
        &token.credential.header,
        subject.company(),
    )
    .await;
    match result {
        Ok(()) => {
            write_status(inner, &cell, revoke_locally).await?;
            inner.emit(OAuthEvent::Disconnected {
                subject,
                revoked_at_pleo: true,
            });
            Ok(DisconnectOutcome::Revoked)
        }
        Err(err) if err.is_retryable() => Ok(DisconnectOutcome::RevocationPending),
        Err(err)
            if matches!(
                err.kind(),
                CoreKind::Unauthenticated | CoreKind::PermissionDenied
            ) =>
        {
            finish_locally(inner, &cell).await
        }
        Err(err) => {
            Err(Error::unexpected("pleo refused to delete the installation").with_source(err))
        }
    }
}

/// Retries a pending revocation with backoff until it succeeds, fails for good, or the manager
/// is dropped.
async fn revoke_loop(inner: Weak<Inner>, subject: Subject) {
    let mut attempt = 0u32;
    loop {
        attempt = attempt.saturating_add(1);
        let Some(delay) = inner.upgrade().map(|i| i.policy.persist_backoff(attempt)) else {
            return;
        };
        tokio::time::sleep(delay).await;
        let Some(strong) = inner.upgrade() else {
            return;
        };
        match retry_revocation(&strong, subject).await {
            Ok(DisconnectOutcome::RevocationPending) => {}
            Err(err) if err.is_retryable() => {}
            other => {
                if let Err(err) = &other {
                    tracing::warn!(kind = ?err.kind(), "pending revocation failed for good");
                }
                if let Some(cell) = strong.cell(&subject) {
                    cell.lock().revoke_task = false;
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use pleo_auth_core::{
        ClientSecret, Environment, LeaseRelease, ManualClock, Record, SecretBytes, SecretStore,
        Versioned,
    };
    use pleo_auth_http::transport::TransportConfig;

    use super::*;
    use crate::{EventSink, OAuthClient, OAuthConfig, RefreshPolicy};

    mockall::mock! {
        Store {}
        #[async_trait]
        impl SecretStore for Store {
            async fn get(&self, key: &StoreKey) -> pleo_auth_core::Result<Option<Versioned>>;
            async fn put(
                &self,
                key: &StoreKey,
                value: SecretBytes,
                precondition: Precondition,
            ) -> pleo_auth_core::Result<Version>;
            async fn delete(&self, key: &StoreKey, precondition: Precondition) -> pleo_auth_core::Result<()>;
            async fn list(&self, prefix: &StoreKey) -> pleo_auth_core::Result<Vec<StoreKey>>;
        }
    }

    impl fmt::Debug for MockStore {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("MockStore")
        }
    }

    #[derive(Debug, Default)]
    struct Events(StdMutex<Vec<OAuthEvent>>);

    impl EventSink for Events {
        fn emit(&self, event: &OAuthEvent) {
            self.0.lock().unwrap().push(event.clone());
        }
    }

    fn subject() -> Subject {
        "urn:pleo:company:0c000000-0000-4000-8000-000000000001"
            .parse()
            .unwrap()
    }

    fn grant(refresh: &str, generation: u64) -> OAuthGrant {
        OAuthGrant {
            environment: EnvironmentName::new("staging").unwrap(),
            client_id: "client".parse().unwrap(),
            subject: subject(),
            tenant: None,
            status: CredentialStatus::Active,
            status_reason: None,
            access_token: Some(AccessToken::new(format!("CANARY-at-{generation}"))),
            access_token_expires_at: Some(Timestamp::from_millis(u64::MAX / 2)),
            refresh_token: Some(RefreshToken::new(refresh)),
            refresh_token_issued_at: Some(Timestamp::from_millis(0)),
            scopes: "users:read".parse().unwrap(),
            generation,
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
            settings: BTreeMap::new(),
        }
    }

    fn stored(record: &OAuthGrant, version: u64) -> pleo_auth_core::Result<Option<Versioned>> {
        Ok(Some(Versioned {
            value: record.encode().unwrap(),
            version: Version::from_u64(version),
        }))
    }

    fn written(value: &SecretBytes) -> OAuthGrant {
        OAuthGrant::decode(value.expose_secret()).unwrap()
    }

    /// A manager over `store` with a cell holding a rotated pair (generation 2, `CANARY-rt-2`)
    /// that is not yet written and supersedes `CANARY-rt-1`.
    fn pending(store: MockStore) -> (Arc<Inner>, Arc<GrantCell>, Arc<Events>) {
        pending_with(store, RefreshPolicy::default(), TransportConfig::default())
    }

    /// [`pending`] with `policy` (its persist backoffs shortened) and `transport`.
    fn pending_with(
        store: MockStore,
        policy: RefreshPolicy,
        transport: TransportConfig,
    ) -> (Arc<Inner>, Arc<GrantCell>, Arc<Events>) {
        let config = OAuthConfig::builder()
            .environment(Environment::staging())
            .client_id("client")
            .client_secret(ClientSecret::new("CANARY-secret"))
            .redirect_uri("https://app.example/cb")
            .scopes("users:read")
            .build()
            .unwrap();
        let events = Arc::new(Events::default());
        let client = OAuthClient::builder(config, Arc::new(store))
            .clock(Arc::new(ManualClock::new()))
            .events(events.clone())
            .policy(RefreshPolicy {
                persist_initial_backoff: Duration::from_millis(5),
                persist_max_backoff: Duration::from_millis(5),
                ..policy
            })
            .transport(transport)
            .build()
            .unwrap();
        let inner = client.inner.clone();
        let cell = inner.cell_or_insert(subject());
        cell.lock().set_authority(Some(Authority {
            record: grant("CANARY-rt-2", 2),
            stored: None,
            superseded: vec![digest(&RefreshToken::new("CANARY-rt-1"))],
        }));
        (inner, cell, events)
    }

    fn stored_version(cell: &GrantCell) -> Option<Version> {
        cell.lock()
            .authority
            .as_ref()
            .and_then(|a| a.stored.clone())
    }

    #[tokio::test]
    async fn a_refused_write_stays_pending_and_is_retried_with_compare_and_swap() {
        let mut store = MockStore::new();
        store
            .expect_get()
            .returning(|_| stored(&grant("CANARY-rt-1", 1), 7));
        let mut calls = 0;
        store
            .expect_put()
            .times(2)
            .returning(move |_, value, precondition| {
                calls += 1;
                assert_eq!(precondition, Precondition::Version(Version::from_u64(7)));
                let record = written(&value);
                assert_eq!(record.generation, 2);
                assert_eq!(record.refresh_token.unwrap().expose_secret(), "CANARY-rt-2");
                if calls == 1 {
                    Err(pleo_auth_core::Error::unavailable("disk full").with_backend("mock"))
                } else {
                    Ok(Version::from_u64(8))
                }
            });
        let (inner, cell, events) = pending(store);

        let err = persist(&inner, &cell).await.unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::Store(CoreKind::Unavailable));
        assert!(err.is_retryable());
        assert!(!format!("{err} {err:?}").contains("CANARY"));
        assert_eq!(stored_version(&cell), None, "still pending in memory");

        // The background retry lands it.
        for _ in 0..200 {
            if stored_version(&cell).is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(stored_version(&cell), Some(Version::from_u64(8)));
        let seen = events.0.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                OAuthEvent::PersistPending {
                    subject: subject(),
                    generation: 2
                },
                OAuthEvent::PersistRecovered {
                    subject: subject(),
                    generation: 2
                },
            ]
        );
    }

    #[tokio::test]
    async fn a_conflict_rereads_and_rebases_onto_the_newer_settings() {
        let mut store = MockStore::new();
        let mut reads = 0;
        store.expect_get().times(2).returning(move |_| {
            reads += 1;
            let mut record = grant("CANARY-rt-1", 1);
            if reads == 2 {
                record.settings.insert("ledger".into(), "4000".into());
                return stored(&record, 9);
            }
            stored(&record, 7)
        });
        let mut writes = 0;
        store
            .expect_put()
            .times(2)
            .returning(move |_, value, precondition| {
                writes += 1;
                if writes == 1 {
                    return Err(pleo_auth_core::Error::conflict("version moved"));
                }
                assert_eq!(precondition, Precondition::Version(Version::from_u64(9)));
                let record = written(&value);
                assert_eq!(
                    record.settings.get("ledger").map(String::as_str),
                    Some("4000")
                );
                assert_eq!(record.refresh_token.unwrap().expose_secret(), "CANARY-rt-2");
                Ok(Version::from_u64(10))
            });
        let (inner, cell, events) = pending(store);
        persist(&inner, &cell).await.unwrap();
        assert_eq!(stored_version(&cell), Some(Version::from_u64(10)));
        assert!(events.0.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn another_writers_newer_pair_is_adopted_without_writing() {
        let mut store = MockStore::new();
        store
            .expect_get()
            .returning(|_| stored(&grant("CANARY-rt-elsewhere", 5), 11));
        store.expect_put().never();
        let (inner, cell, events) = pending(store);
        persist(&inner, &cell).await.unwrap();
        assert_eq!(stored_version(&cell), Some(Version::from_u64(11)));
        let token = cell.token.load_full().unwrap();
        assert_eq!(token.generation(), 5);
        assert_eq!(token.access_token().expose_secret(), "CANARY-at-5");
        assert_eq!(
            events.0.lock().unwrap().clone(),
            vec![OAuthEvent::Adopted {
                subject: subject(),
                generation: 5
            }]
        );
    }

    #[tokio::test]
    async fn a_tombstone_written_meanwhile_is_never_overwritten() {
        let mut store = MockStore::new();
        store.expect_get().returning(|_| {
            let mut record = grant("CANARY-rt-1", 1);
            record.status = CredentialStatus::Revoked;
            record.status_reason = Some(REVOCATION_PENDING.to_owned());
            stored(&record, 12)
        });
        store.expect_put().never();
        let (inner, cell, _) = pending(store);
        persist(&inner, &cell).await.unwrap();
        let err = inner.check(&cell, &Trigger::Fresh).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::Revoked);
        assert!(cell.token.load_full().is_none());
    }

    /// A lease handle that logs its renewals and release.
    struct LoggedLease {
        log: Arc<StdMutex<Vec<&'static str>>>,
        held: Arc<AtomicBool>,
    }

    #[async_trait]
    impl LeaseRelease for LoggedLease {
        async fn release(&self) -> pleo_auth_core::Result<()> {
            self.held.store(false, Ordering::SeqCst);
            self.log.lock().unwrap().push("release");
            Ok(())
        }

        async fn renew(&self, _ttl: Duration) -> pleo_auth_core::Result<()> {
            if !self.held.load(Ordering::SeqCst) {
                return Err(pleo_auth_core::Error::conflict("not held"));
            }
            self.log.lock().unwrap().push("renew");
            Ok(())
        }
    }

    /// A pending cell whose store write fails until `healed` is set, with a 300 ms lease, and
    /// the log of a lease guard handed to it as a flight would.
    async fn pending_with_kept_lease(
        healed: Arc<AtomicBool>,
    ) -> (Arc<Inner>, Arc<GrantCell>, Arc<StdMutex<Vec<&'static str>>>) {
        let mut store = MockStore::new();
        store
            .expect_get()
            .returning(|_| stored(&grant("CANARY-rt-1", 1), 7));
        store.expect_put().returning(move |_, _, _| {
            if healed.load(Ordering::SeqCst) {
                Ok(Version::from_u64(8))
            } else {
                Err(pleo_auth_core::Error::unavailable("partitioned").with_backend("mock"))
            }
        });
        let policy = RefreshPolicy {
            lease_ttl: Duration::from_millis(300),
            lease_wait: Duration::from_millis(300),
            store_timeout: Duration::from_millis(50),
            ..RefreshPolicy::default()
        };
        let transport = TransportConfig {
            timeout: Duration::from_millis(200),
            ..TransportConfig::default()
        };
        let (inner, cell, _) = pending_with(store, policy, transport);
        persist(&inner, &cell).await.unwrap_err();
        let log = Arc::new(StdMutex::new(Vec::new()));
        let guard = LeaseGuard::new(
            cell.lease_key.clone(),
            1,
            LoggedLease {
                log: log.clone(),
                held: Arc::new(AtomicBool::new(true)),
            },
        );
        keep_or_release(&inner, &cell, guard).await;
        (inner, cell, log)
    }

    fn count(log: &StdMutex<Vec<&'static str>>, what: &str) -> usize {
        log.lock().unwrap().iter().filter(|e| **e == what).count()
    }

    #[tokio::test]
    async fn a_pending_pair_keeps_the_lease_renewed_until_it_is_stored() {
        let healed = Arc::new(AtomicBool::new(false));
        let (_inner, cell, log) = pending_with_kept_lease(healed.clone()).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(count(&log, "renew") >= 4, "renewed every ttl/3: {log:?}");
        assert_eq!(count(&log, "release"), 0, "kept while pending");
        assert_eq!(stored_version(&cell), None);

        healed.store(true, Ordering::SeqCst);
        for _ in 0..200 {
            if count(&log, "release") > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(stored_version(&cell), Some(Version::from_u64(8)));
        assert_eq!(count(&log, "release"), 1, "released once stored: {log:?}");
        let renewals = count(&log, "renew");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            count(&log, "renew"),
            renewals,
            "no renewal after the release"
        );
        assert!(cell.kept_lease.lock().await.is_none());
    }

    #[tokio::test]
    async fn a_kept_lease_is_released_when_the_manager_is_dropped() {
        let (inner, cell, log) = pending_with_kept_lease(Arc::new(AtomicBool::new(false))).await;
        drop(inner);
        for _ in 0..100 {
            if count(&log, "release") > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(count(&log, "release"), 1, "{log:?}");
        assert_eq!(stored_version(&cell), None, "the pair was never stored");
    }

    #[tokio::test]
    async fn the_next_flight_takes_the_kept_lease_over() {
        let (inner, cell, log) = pending_with_kept_lease(Arc::new(AtomicBool::new(false))).await;
        let guard = take_kept_lease(&inner, &cell)
            .await
            .expect("the kept lease, renewed");
        assert_eq!(count(&log, "renew"), 1, "{log:?}");
        assert!(cell.kept_lease.lock().await.is_none());
        // Handed back while still pending: kept again, renewed by a new task.
        keep_or_release(&inner, &cell, guard).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(count(&log, "renew") >= 2, "{log:?}");
        assert_eq!(count(&log, "release"), 0, "{log:?}");
    }

    #[test]
    fn jitter_is_stable_per_instance_and_spread_across_instances_and_grants() {
        let a = jitter_share(1, &grant("CANARY-rt-a", 1));
        assert_eq!(
            a,
            jitter_share(1, &grant("CANARY-rt-b", 1)),
            "tokens do not matter"
        );
        assert_ne!(
            a,
            jitter_share(1, &grant("CANARY-rt-a", 2)),
            "generations spread"
        );
        assert_ne!(
            a,
            jitter_share(2, &grant("CANARY-rt-a", 1)),
            "instances spread"
        );
        assert!((0.0..1.0).contains(&a));
    }

    #[test]
    fn terminal_states_refuse_tokens_except_to_finish_a_revocation() {
        let mut record = grant("rt", 1);
        assert!(terminal(&Trigger::Fresh, &record).is_none());
        record.status = CredentialStatus::NeedsReauthorization;
        assert_eq!(
            terminal(&Trigger::Fresh, &record).unwrap().kind(),
            &ErrorKind::NeedsReauthorization
        );
        record.status = CredentialStatus::Revoked;
        record.status_reason = Some(REVOCATION_PENDING.to_owned());
        assert!(terminal(&Trigger::Revoke, &record).is_none());
        assert_eq!(
            terminal(&Trigger::Fresh, &record).unwrap().kind(),
            &ErrorKind::Revoked
        );
        record.status_reason = Some(DISCONNECTED.to_owned());
        assert!(terminal(&Trigger::Revoke, &record).is_some());
    }
}
