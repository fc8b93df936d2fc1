//! [`TokenManager::keep_alive`]: one sweep over every stored grant, page by page. It refreshes
//! grants that would otherwise go idle, retries pending and dangling revocations, and deletes
//! expired pending authorizations. A record that cannot be read or a grant that cannot be
//! refreshed is reported (and an [`OAuthEvent`] emitted) without stopping the sweep.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use pleo_auth_core::{
    ErrorKind as CoreKind, OAuthGrant, Record, SecretStore, StoreKey, Subject, Timestamp,
    Versioned, layout,
};

use crate::dangling::{self, DanglingStatus, Swept};
use crate::error::{Error, ErrorKind, Result};
use crate::events::OAuthEvent;
use crate::grant::disconnect::{DisconnectOutcome, retry_revocation};
use crate::grant::flight::obtain;
use crate::grant::phase::{Life, Phase, Trigger};
use crate::inner::Inner;
use crate::manager::{GrantState, TokenManager};

/// How long after its pending authorization expired a connection's held tokens are left to
/// the connection before keep-alive treats them as refused.
const CONNECT_GRACE: Duration = Duration::from_secs(5 * 60);

/// The default number of grant records [`TokenManager::keep_alive`] reads per page.
pub const KEEP_ALIVE_PAGE: usize = 1000;

/// How one [`TokenManager::keep_alive_with`] sweep runs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeepAliveOptions {
    /// Refresh every active grant whose refresh token is older than this. `None` takes
    /// [`RefreshPolicy::keep_alive_after`](crate::RefreshPolicy::keep_alive_after).
    pub older_than: Option<Duration>,
    /// Grant records read per page, with one batch read
    /// ([`get_many`](pleo_auth_core::SecretStore::get_many)) each.
    pub page_size: usize,
    /// Refreshes and revocations run at once.
    pub concurrency: usize,
}

impl Default for KeepAliveOptions {
    fn default() -> Self {
        Self {
            older_than: None,
            page_size: KEEP_ALIVE_PAGE,
            concurrency: 8,
        }
    }
}

impl KeepAliveOptions {
    /// Refreshes grants whose refresh token is older than `age`.
    #[must_use]
    pub fn older_than(mut self, age: Duration) -> Self {
        self.older_than = Some(age);
        self
    }

    /// Reads `size` records per page.
    #[must_use]
    pub fn page_size(mut self, size: usize) -> Self {
        self.page_size = size;
        self
    }

    /// Runs up to `n` refreshes at once (at least one).
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }
}

/// What [`TokenManager::keep_alive`] did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct KeepAliveReport {
    /// Grant records looked at (readable or not).
    pub checked: usize,
    /// Grants whose old refresh token was rotated.
    pub refreshed: Vec<Subject>,
    /// Disconnected grants whose revocation at Pleo was retried and succeeded.
    pub revoked: Vec<Subject>,
    /// Grants that could not be refreshed or revoked, with the reason.
    pub failed: Vec<(Subject, Error)>,
    /// Grant records that could not be read (corrupt, newer schema, stored at the wrong key),
    /// with the reason. They are left as they are.
    pub unreadable: Vec<(StoreKey, Error)>,
    /// Dangling grants (refused or replaced, see [`TokenManager::dangling`]) revoked, or found
    /// to be kept after all, in this sweep.
    pub dangling_settled: usize,
    /// Dangling grants still dangling after this sweep.
    pub dangling: Vec<DanglingStatus>,
    /// Expired pending authorizations (abandoned consents) deleted in this sweep.
    pub pending_removed: usize,
    /// Pages of grant records read.
    pub pages: usize,
    /// How many grant records are in each state ([`GrantState::as_str`], plus `unreadable`),
    /// as read by this sweep (before its refreshes).
    pub states: BTreeMap<&'static str, usize>,
}

impl KeepAliveReport {
    /// Records that failed in this sweep: grants not refreshed or revoked, and unreadable
    /// records.
    pub fn failures(&self) -> usize {
        self.failed.len() + self.unreadable.len()
    }
}

enum Job {
    Refresh(Subject),
    Revoke(Subject),
}

impl TokenManager {
    /// Refreshes every active grant whose refresh token is older than
    /// [`RefreshPolicy::keep_alive_after`](crate::RefreshPolicy::keep_alive_after), so grants of
    /// idle companies do not expire, retries pending revocations and dangling grants, and
    /// deletes expired pending authorizations. Call it periodically (for example daily) from
    /// one or more replicas; the lease keeps refreshes single. Same as
    /// [`keep_alive_with`](Self::keep_alive_with) with the default options.
    pub async fn keep_alive(&self) -> Result<KeepAliveReport> {
        self.keep_alive_with(&KeepAliveOptions::default()).await
    }

    /// [`keep_alive`](Self::keep_alive) with `options`. Lists the grants once and reads them
    /// page by page (one batch read each), refreshing each page's grants before the next; a
    /// record that cannot be read or a grant that cannot be refreshed is reported in the
    /// answer (and emitted as [`OAuthEvent::RecordUnreadable`] or
    /// [`OAuthEvent::RefreshFailed`]) and the sweep goes on. Fails only when the store cannot
    /// list or read the grants at all.
    pub async fn keep_alive_with(&self, options: &KeepAliveOptions) -> Result<KeepAliveReport> {
        let inner = self.inner();
        let age = options.older_than.unwrap_or(inner.policy.keep_alive_after);
        let threshold = Timestamp::from_system_time(
            inner
                .clock
                .now()
                .checked_sub(age)
                .unwrap_or(std::time::UNIX_EPOCH),
        );
        let prefix =
            layout::oauth_grants(inner.config.environment().name(), inner.config.client_id());
        let mut report = KeepAliveReport::default();
        // One listing (most backends list everything per call anyway: paging the listing would
        // repeat it per page), then the records page by page: one batch read per page.
        let keys = inner
            .store
            .list(&prefix)
            .await
            .map_err(|e| Error::store("listing grants failed", e))?;
        report.checked = keys.len();
        for page in keys.chunks(options.page_size.max(1)) {
            report.pages += 1;
            let jobs = read_page(inner, page, threshold, &mut report).await?;
            run_jobs(inner, jobs, threshold, options.concurrency, &mut report).await;
        }
        sweep_dangling(inner, &mut report).await;
        match crate::pending::sweep(inner).await {
            Ok(swept) => report.pending_removed = swept.removed,
            Err(err) => {
                tracing::warn!(kind = ?err.kind(), "sweeping pending authorizations failed; retried at the next keep-alive");
            }
        }
        Ok(report)
    }
}

/// Reads one page of grant records and decides what to do with each; unreadable records go
/// to the report.
async fn read_page(
    inner: &Inner,
    keys: &[StoreKey],
    threshold: Timestamp,
    report: &mut KeepAliveReport,
) -> Result<Vec<Job>> {
    let reads = read_many(&inner.store, keys).await?;
    let mut jobs = Vec::new();
    for (key, read) in keys.iter().zip(reads) {
        let record = match read {
            Ok(None) => continue,
            Ok(Some(v)) => OAuthGrant::decode_at(v.value.expose_secret(), key),
            Err(e) => Err(e),
        };
        let state = match &record {
            Ok(r) => GrantState::of_record(r).as_str(),
            Err(_) => "unreadable",
        };
        *report.states.entry(state).or_default() += 1;
        match record {
            Ok(r) => match Phase::life_of(&r) {
                Life::Active if r.refresh_token_issued_at.is_none_or(|t| t < threshold) => {
                    jobs.push(Job::Refresh(r.subject));
                }
                Life::RevocationPending => jobs.push(Job::Revoke(r.subject)),
                _ => {}
            },
            Err(e) if e.is_retryable() => return Err(Error::store("reading grants failed", e)),
            Err(e) => {
                let err = Error::store("a grant record is unreadable", e);
                inner.emit(OAuthEvent::RecordUnreadable {
                    subject: key.parts().get(5).and_then(|s| s.parse().ok()),
                    kind: err.kind().clone(),
                });
                report.unreadable.push((key.clone(), err));
            }
        }
    }
    Ok(jobs)
}

/// Reads `keys` with one batch read; if the batch fails because of one bad value, reads them
/// one by one so that value fails alone.
async fn read_many(
    store: &pleo_auth_core::DynSecretStore,
    keys: &[StoreKey],
) -> Result<Vec<pleo_auth_core::Result<Option<Versioned>>>> {
    match store.get_many(keys).await {
        Ok(values) => Ok(values.into_iter().map(Ok).collect()),
        Err(e) if e.is_retryable() || e.kind() == CoreKind::Config => {
            Err(Error::store("reading grants failed", e))
        }
        Err(_) => {
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                out.push(store.get(key).await);
            }
            Ok(out)
        }
    }
}

async fn run_jobs(
    inner: &Arc<Inner>,
    jobs: Vec<Job>,
    threshold: Timestamp,
    concurrency: usize,
    report: &mut KeepAliveReport,
) {
    let results: Vec<(Job, Result<()>)> = stream::iter(jobs)
        .map(|job| async move {
            let result = match &job {
                Job::Refresh(subject) => obtain(inner, *subject, Trigger::KeepAlive(threshold))
                    .await
                    .map(drop),
                Job::Revoke(subject) => {
                    retry_revocation(inner, *subject)
                        .await
                        .and_then(|outcome| match outcome {
                            DisconnectOutcome::RevocationPending => Err(Error::new(
                                ErrorKind::Unavailable,
                                "pleo could not be reached to revoke the grant",
                            )),
                            _ => Ok(()),
                        })
                }
            };
            (job, result)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    for (job, result) in results {
        match (job, result) {
            (Job::Refresh(s), Ok(())) => report.refreshed.push(s),
            (Job::Revoke(s), Ok(())) => report.revoked.push(s),
            (Job::Refresh(s) | Job::Revoke(s), Err(e)) => report.failed.push((s, e)),
        }
    }
}

/// Retries the revocation of every dangling grant (see [`TokenManager::dangling`]).
async fn sweep_dangling(inner: &Inner, report: &mut KeepAliveReport) {
    let records = match dangling::list(inner).await {
        Ok(records) => records,
        Err(err) => {
            tracing::warn!(kind = ?err.kind(), "listing dangling grants failed; retried at the next keep-alive");
            return;
        }
    };
    for (key, record, version) in records {
        let before = DanglingStatus::of(&record);
        match dangling::sweep_one(inner, key, record, version, CONNECT_GRACE).await {
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
