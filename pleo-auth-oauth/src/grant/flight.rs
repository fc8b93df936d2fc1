//! A refresh flight: one per grant at a time in this process, run in a task of its own so a
//! cancelled caller never drops an answer that has arrived; the refresh lease across replicas;
//! fencing before a refresh token is presented; the token request and its retries.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use pleo_auth_core::{Backoff, ErrorKind as CoreKind, LeaseGuard, RefreshToken, Subject};
use tracing::Instrument;

use crate::error::{Error, ErrorKind, Result};
use crate::events::OAuthEvent;
use crate::grant::cell::{
    ActiveToken, CellState, Cooldown, Flight, FlightResult, GrantCell, SharedFlight,
};
use crate::grant::lease::{keep_or_release, take_kept_lease, while_renewing};
use crate::grant::persist::{ensure_persist_loop, install, mark_needs_reauthorization};
use crate::grant::phase::{Trigger, not_connected};
use crate::inner::Inner;
use crate::token::{self, Answer};

/// How long a replica waits between looks at a refresh another replica holds the lease for:
/// 20 ms doubling up to 1 s.
const LEASE_FOLLOW_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(10), Duration::from_secs(1)).without_jitter();

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
            if st.phase.record().is_some() {
                let now = inner.clock.instant();
                match st.phase.refusal(&trigger) {
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
        trigger = trigger.name()
    );
    let task = tokio::spawn(run_flight(inner.clone(), cell.clone(), trigger, id).instrument(span));
    let future = async move {
        task.await
            .unwrap_or_else(|_| Err(Error::unexpected("the refresh task failed")))
    }
    .boxed()
    .shared();
    st.flight = Some(Box::new(Flight {
        id,
        future: future.clone(),
    }));
    future
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
            let unloaded = cell.lock().phase.record().is_none();
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
                cell.lock().cooldown = Some(Box::new(Cooldown {
                    until: inner.clock.instant() + length,
                    error: err.clone(),
                }));
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
    let reload = cell.lock().phase.refusal(trigger).is_some();
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
    if cell.pending() {
        ensure_persist_loop(inner, cell);
    }
    result
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
            .acquire(&inner.lease_key(cell.subject), inner.policy.lease_ttl)
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
        tokio::time::sleep(LEASE_FOLLOW_BACKOFF.delay(attempt.saturating_add(1))).await;
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
        let record = st.phase.record().ok_or_else(not_connected)?;
        record.refresh_token.clone()
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
        #[cfg(feature = "metrics")]
        let started = std::time::Instant::now();
        let answer = token::refresh(
            &inner.http,
            &inner.token_endpoint,
            inner.clock.now(),
            presented,
        )
        .await;
        // Feature `metrics`: the latency of each token-endpoint request, without any id.
        #[cfg(feature = "metrics")]
        metrics::histogram!(
            "pleo_auth_refresh_duration_seconds",
            "outcome" => if answer.is_ok() { "success" } else { "error" }
        )
        .record(started.elapsed().as_secs_f64());
        let err = match answer {
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
