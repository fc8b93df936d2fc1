//! Writing what a cell's phase holds: a rotated pair installed before it is judged, the pending
//! write with compare-and-swap and its background retries, a refused grant's reauthorization
//! mark, and status changes.

use std::sync::{Arc, Weak};

use pleo_auth_core::{
    Change, CredentialStatus, ErrorKind as CoreKind, OAuthGrant, Precondition, RecordStoreExt,
    RefreshToken, UpdateError, Updated,
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
    /// What the phase's write plan leaves to do once the store has answered.
    enum After {
        Nothing,
        Deleted,
        Landed(Box<OAuthGrant>, pleo_auth_core::Version),
        Adopt(Box<OAuthGrant>, pleo_auth_core::Version),
        Written,
    }
    let _writer = cell.writer.lock().await;
    if !cell.pending() {
        return Ok(());
    }
    let updated = inner
        .store
        .update::<OAuthGrant, _, pleo_auth_core::Error, _>(&inner.grant_key(cell.subject), |read| {
            if !cell.pending() {
                return Ok((Change::Keep, After::Nothing));
            }
            let read_at = version_of(&read);
            let plan = cell.lock().phase.write_plan(read);
            Ok(match plan {
                WritePlan::Nothing => (Change::Keep, After::Nothing),
                WritePlan::Deleted => (Change::Keep, After::Deleted),
                WritePlan::Landed { record, version } => {
                    (Change::Keep, After::Landed(Box::new(record), version))
                }
                WritePlan::Adopt { record, version } => {
                    (Change::Keep, After::Adopt(Box::new(record), version))
                }
                WritePlan::Write {
                    record,
                    precondition,
                } => {
                    if precondition != read_at {
                        return Err(plan_mismatch());
                    }
                    // Failpoint (feature `failpoints`, tests only): the store write fails
                    // before it is sent.
                    #[cfg(feature = "failpoints")]
                    fail::fail_point!("pleo_auth_oauth::persist::before_write", |_| Err(
                        failpoint_store_error("before the store write")
                    ));
                    (Change::Put(record), After::Written)
                }
            })
        })
        .await;
    let after = match updated {
        Ok((Updated::Written(record, written), _)) => {
            // Failpoint (feature `failpoints`, tests only): the write landed, its answer is lost.
            #[cfg(feature = "failpoints")]
            fail::fail_point!("pleo_auth_oauth::persist::after_write", |_| Err(
                persist_failed(inner, cell, failpoint_store_error("after the store write"))
            ));
            After::Landed(Box::new(record), written)
        }
        Ok((Updated::Deleted | Updated::Kept, after)) => after,
        Err(UpdateError::Rejected(e) | UpdateError::Read(e) | UpdateError::Write(e)) => {
            return Err(persist_failed(inner, cell, e));
        }
        Err(UpdateError::Contended) => {
            return Err(Error::new(
                ErrorKind::Store(CoreKind::Conflict),
                "the grant kept changing while its tokens were written",
            ));
        }
    };
    match after {
        After::Nothing | After::Written => {}
        After::Deleted => {
            // Deleted while we held tokens: someone removed the grant on purpose.
            tracing::warn!("the grant was deleted while its rotated tokens were pending");
            let mut st = cell.lock();
            inner.set_token(cell, None);
            st.set_phase(Phase::Unloaded);
        }
        After::Landed(record, version) => mark_stored(inner, cell, &record, version),
        After::Adopt(record, version) => {
            // Another writer won: its record is the truth.
            let event = {
                let mut st = cell.lock();
                inner.adopt(cell, &mut st, *record, version)
            };
            if let Some(event) = event {
                inner.emit(event);
            }
        }
    }
    Ok(())
}

/// The store error a failpoint injects (feature `failpoints`, tests only).
#[cfg(feature = "failpoints")]
fn failpoint_store_error(at: &'static str) -> pleo_auth_core::Error {
    pleo_auth_core::Error::unavailable(format!("failpoint: {at}")).with_backend("failpoint")
}

/// The precondition `update` writes against after reading `read`.
fn version_of(read: &Option<(OAuthGrant, pleo_auth_core::Version)>) -> Precondition {
    match read {
        Some((_, version)) => Precondition::Version(version.clone()),
        None => Precondition::Absent,
    }
}

/// A phase plan that asks for another precondition than the version read: refused, never
/// written under another condition than the one planned.
fn plan_mismatch() -> pleo_auth_core::Error {
    pleo_auth_core::Error::new(
        CoreKind::Unexpected,
        "the planned write is conditioned on another version than the one read",
    )
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
    /// What the refusal plan leaves to do once the store has answered.
    enum After {
        Current,
        Deleted,
        Adopt(Box<OAuthGrant>, pleo_auth_core::Version),
        Marked,
    }
    let writer = cell.writer.lock().await;
    if !cell.lock().phase.holds(presented) {
        // Rotated, reconnected or disconnected meanwhile: what the phase holds stands.
        return inner.current(cell, trigger);
    }
    let mut now = inner.clock.timestamp();
    let updated = inner
        .store
        .update::<OAuthGrant, _, pleo_auth_core::Error, _>(&inner.grant_key(cell.subject), |read| {
            if !cell.lock().phase.holds(presented) {
                // Rotated, reconnected or disconnected meanwhile: what the phase holds stands.
                return Ok((Change::Keep, After::Current));
            }
            now = inner.clock.timestamp();
            let read_at = version_of(&read);
            let plan = cell.lock().phase.refusal_plan(presented, read, now);
            Ok(match plan {
                RefusalPlan::NotOurs => (Change::Keep, After::Current),
                RefusalPlan::Deleted => (Change::Keep, After::Deleted),
                RefusalPlan::Adopt { record, version } => {
                    (Change::Keep, After::Adopt(Box::new(record), version))
                }
                RefusalPlan::Mark {
                    record,
                    precondition,
                } => {
                    if precondition != read_at {
                        return Err(plan_mismatch());
                    }
                    (Change::Put(record), After::Marked)
                }
            })
        })
        .await;
    let (failed, read_failed) = match updated {
        Ok((Updated::Written(record, written), _)) => {
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
        Ok((Updated::Deleted | Updated::Kept, after)) => {
            return match after {
                After::Current | After::Marked => inner.current(cell, trigger),
                After::Deleted => {
                    let mut st = cell.lock();
                    inner.set_token(cell, None);
                    st.set_phase(Phase::Unloaded);
                    Err(not_connected())
                }
                After::Adopt(record, version) => {
                    let event = {
                        let mut st = cell.lock();
                        inner.adopt(cell, &mut st, *record, version)
                    };
                    if let Some(event) = event {
                        inner.emit(event);
                    }
                    inner.current(cell, trigger)
                }
            };
        }
        Err(UpdateError::Read(e)) => (e, true),
        Err(UpdateError::Write(e) | UpdateError::Rejected(e)) => (e, false),
        Err(UpdateError::Contended) => {
            return Err(Error::new(
                ErrorKind::Store(CoreKind::Conflict),
                "the grant kept changing while it was marked as needing reauthorization",
            ));
        }
    };
    // Mark it in memory and let the write be retried; other replicas learn the same from the
    // server.
    {
        let mut st = cell.lock();
        if !st.phase.holds(presented) {
            drop(st);
            return inner.current(cell, trigger);
        }
        if read_failed && st.phase.record().is_none() {
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
    persist_failed(inner, cell, failed);
    Err(needs_reauthorization())
}

/// Writes a status change with compare-and-swap and makes it the phase.
pub(crate) async fn write_status(
    inner: &Arc<Inner>,
    cell: &Arc<GrantCell>,
    change: impl Fn(&mut OAuthGrant) + Send + Sync,
) -> Result<OAuthGrant> {
    let _writer = cell.writer.lock().await;
    let updated = inner
        .store
        .update::<OAuthGrant, _, Error, _>(&inner.grant_key(cell.subject), |read| {
            let (mut record, _) = read.ok_or_else(not_connected)?;
            change(&mut record);
            record.updated_at = inner.clock.timestamp();
            Ok((Change::Put(record), ()))
        })
        .await;
    let (record, written) = match updated {
        Ok((Updated::Written(record, written), ())) => (record, written),
        Ok((Updated::Deleted | Updated::Kept, ())) => {
            return Err(Error::unexpected(
                "the grant was not written, though every decision writes it",
            ));
        }
        Err(UpdateError::Rejected(e)) => return Err(e),
        Err(UpdateError::Read(e)) => return Err(Error::store("reading the grant failed", e)),
        Err(UpdateError::Write(e)) => return Err(Error::store("writing the grant failed", e)),
        Err(UpdateError::Contended) => {
            return Err(Error::new(
                ErrorKind::Store(CoreKind::Conflict),
                "the grant kept changing while it was being updated",
            ));
        }
    };
    let mut st = cell.lock();
    st.set_phase(Phase::Stored {
        record: record.clone(),
        version: written,
    });
    inner.serve(cell, &st.phase);
    st.terminal_checked =
        (record.status != CredentialStatus::Active).then(|| inner.clock.instant());
    Ok(record)
}
