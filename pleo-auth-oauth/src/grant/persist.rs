//! Writing what a cell's phase holds: a rotated pair installed before it is judged, the pending
//! write with compare-and-swap and its background retries, a refused grant's reauthorization
//! mark, and status changes.

use std::sync::{Arc, Weak};

use pleo_auth_core::{
    CredentialStatus, ErrorKind as CoreKind, OAuthGrant, Precondition, RecordStoreExt,
    RefreshToken, is_conflict,
};
use tracing::Instrument;

use crate::error::{Error, ErrorKind, Result};
use crate::events::OAuthEvent;
use crate::grant::cell::{FlightResult, GrantCell};
use crate::grant::lease::release_kept_lease;
use crate::grant::phase::{
    Installed, Phase, RefusalPlan, Trigger, WritePlan, needs_reauthorization, not_connected,
};
use crate::inner::Inner;
use crate::token::{Access, Answer};

/// How many times a compare-and-swap loop re-reads after a conflict before giving up.
pub(crate) const MAX_CAS_ROUNDS: usize = 8;

/// Install before judging: makes the answer's new refresh token (with its access token, if
/// the answer has a usable one) the pending phase and writes it, and only then sends events and
/// reports what was wrong with the answer. A refresh token the server rotated is never dropped.
pub(crate) async fn install(
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
        Ok(Access {
            access_token,
            expires_in,
            scopes,
        }) => {
            let lifetime = expires_in.unwrap_or(inner.policy.assumed_lifetime);
            (Some((access_token, lifetime, scopes)), None)
        }
        Err(err) => (None, Some(err)),
    };
    let now = inner.clock.timestamp();
    let installed = {
        let mut st = cell.lock();
        let generation = st.phase.answered(
            presented,
            Installed {
                refresh_token,
                access,
            },
            now,
        );
        if generation.is_some() {
            st.touched();
            let token = st
                .phase
                .record()
                .filter(|r| r.status == CredentialStatus::Active)
                .and_then(|record| {
                    let access = record.access_token.clone()?;
                    let lifetime = record.access_token_expires_at?.saturating_since(now);
                    Some(inner.new_token(record, access, lifetime, lifetime))
                });
            inner.set_token(cell, token);
        }
        generation
    };
    let Some(generation) = installed else {
        // Nothing to keep (the answer held no token), or the grant was replaced while we
        // refreshed and the answer belongs to the replaced lineage.
        return match judgement {
            Some(err) => Err(err),
            None => inner.current(cell, trigger),
        };
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

/// Writes the pending phase with compare-and-swap. On a store failure the phase stays pending,
/// a `PersistPending` event is emitted once, and a background task retries.
pub(crate) async fn persist(inner: &Arc<Inner>, cell: &Arc<GrantCell>) -> Result<()> {
    let _writer = cell.writer.lock().await;
    for _ in 0..MAX_CAS_ROUNDS {
        if !cell.pending() {
            return Ok(());
        }
        let read = match inner
            .store
            .get_record::<OAuthGrant>(&inner.grant_key(cell.subject))
            .await
        {
            Ok(read) => read,
            Err(e) => return Err(persist_failed(inner, cell, e)),
        };
        let plan = cell.lock().phase.write_plan(read);
        let (record, precondition) = match plan {
            WritePlan::Nothing => return Ok(()),
            WritePlan::Deleted => {
                // Deleted while we held tokens: someone removed the grant on purpose.
                tracing::warn!("the grant was deleted while its rotated tokens were pending");
                let mut st = cell.lock();
                inner.set_token(cell, None);
                st.set_phase(Phase::Unloaded);
                return Ok(());
            }
            WritePlan::Landed { record, version } => {
                mark_stored(inner, cell, &record, version);
                return Ok(());
            }
            WritePlan::Adopt { record, version } => {
                // Another writer won: its record is the truth.
                let event = {
                    let mut st = cell.lock();
                    inner.adopt(cell, &mut st, record, version)
                };
                if let Some(event) = event {
                    inner.emit(event);
                }
                return Ok(());
            }
            WritePlan::Write {
                record,
                precondition,
            } => (record, precondition),
        };
        // Failpoint (feature `failpoints`, tests only): the store write fails before it is sent.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("pleo_auth_oauth::persist::before_write", |_| Err(
            persist_failed(inner, cell, failpoint_store_error("before the store write"))
        ));
        match inner
            .store
            .put_record(&inner.grant_key(cell.subject), &record, precondition)
            .await
        {
            Ok(written) => {
                // Failpoint (feature `failpoints`, tests only): the write landed, its answer is lost.
                #[cfg(feature = "failpoints")]
                fail::fail_point!("pleo_auth_oauth::persist::after_write", |_| Err(
                    persist_failed(inner, cell, failpoint_store_error("after the store write"))
                ));
                mark_stored(inner, cell, &record, written);
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

/// Records that `written` is stored at `version`, if it is still the pending record.
fn mark_stored(
    inner: &Inner,
    cell: &GrantCell,
    written: &OAuthGrant,
    version: pleo_auth_core::Version,
) {
    let recovered = {
        let mut st = cell.lock();
        let outcome = st.phase.written(written, version);
        if outcome.is_some() {
            st.touched();
        }
        outcome
    };
    if recovered == Some(true) {
        inner.emit(OAuthEvent::PersistRecovered {
            subject: cell.subject,
            generation: written.generation,
        });
    }
}

/// A failed write of the pending phase: announced once (`PersistPending`), retried in the
/// background.
pub(crate) fn persist_failed(
    inner: &Arc<Inner>,
    cell: &Arc<GrantCell>,
    err: pleo_auth_core::Error,
) -> Error {
    let (announce, generation) = {
        let mut st = cell.lock();
        let generation = st.phase.record().map_or(0, |r| r.generation);
        (st.phase.announce(), generation)
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
pub(crate) fn ensure_persist_loop(inner: &Arc<Inner>, cell: &Arc<GrantCell>) {
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
    let done = !st.phase.is_pending();
    if done {
        st.persist_task = false;
    }
    done
}

/// The server refused the refresh token `presented`: unless another writer rotated first, mark
/// the grant as needing reauthorization (tokens discarded, record and settings kept).
pub(crate) async fn mark_needs_reauthorization(
    inner: &Arc<Inner>,
    cell: &Arc<GrantCell>,
    trigger: &Trigger,
    presented: &RefreshToken,
) -> FlightResult {
    let writer = cell.writer.lock().await;
    for _ in 0..MAX_CAS_ROUNDS {
        if !cell.lock().phase.holds(presented) {
            // Rotated, reconnected or disconnected meanwhile: what the phase holds stands.
            return inner.current(cell, trigger);
        }
        let now = inner.clock.timestamp();
        let read = inner
            .store
            .get_record::<OAuthGrant>(&inner.grant_key(cell.subject))
            .await;
        let read = match read {
            Ok(read) => read,
            Err(e) => {
                // Mark it in memory and let the write be retried; other replicas learn the same
                // from the server.
                {
                    let mut st = cell.lock();
                    if st.phase.record().is_none() {
                        return Err(not_connected());
                    }
                    st.phase.refused_unwritten(presented, now);
                    st.touched();
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
        let plan = cell.lock().phase.refusal_plan(presented, read, now);
        let (record, precondition) = match plan {
            RefusalPlan::NotOurs => return inner.current(cell, trigger),
            RefusalPlan::Deleted => {
                let mut st = cell.lock();
                inner.set_token(cell, None);
                st.set_phase(Phase::Unloaded);
                return Err(not_connected());
            }
            RefusalPlan::Adopt { record, version } => {
                let event = {
                    let mut st = cell.lock();
                    inner.adopt(cell, &mut st, record, version)
                };
                if let Some(event) = event {
                    inner.emit(event);
                }
                return inner.current(cell, trigger);
            }
            RefusalPlan::Mark {
                record,
                precondition,
            } => (record, precondition),
        };
        match inner
            .store
            .put_record(&inner.grant_key(cell.subject), &record, precondition)
            .await
        {
            Ok(written) => {
                {
                    let mut st = cell.lock();
                    inner.set_token(cell, None);
                    st.set_phase(Phase::Stored {
                        record,
                        version: written,
                    });
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
                    st.phase.refused_unwritten(presented, now);
                    st.touched();
                    inner.set_token(cell, None);
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

/// Writes a status change with compare-and-swap and makes it the phase.
pub(crate) async fn write_status(
    inner: &Arc<Inner>,
    cell: &Arc<GrantCell>,
    change: impl Fn(&mut OAuthGrant),
) -> Result<OAuthGrant> {
    let _writer = cell.writer.lock().await;
    for _ in 0..MAX_CAS_ROUNDS {
        let (mut record, version) = inner
            .store
            .get_record::<OAuthGrant>(&inner.grant_key(cell.subject))
            .await
            .map_err(|e| Error::store("reading the grant failed", e))?
            .ok_or_else(not_connected)?;
        change(&mut record);
        record.updated_at = inner.clock.timestamp();
        match inner
            .store
            .put_record(
                &inner.grant_key(cell.subject),
                &record,
                Precondition::Version(version),
            )
            .await
        {
            Ok(written) => {
                let mut st = cell.lock();
                st.set_phase(Phase::Stored {
                    record: record.clone(),
                    version: written,
                });
                inner.serve(cell, &st.phase);
                st.terminal_checked =
                    (record.status != CredentialStatus::Active).then(|| inner.clock.instant());
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
