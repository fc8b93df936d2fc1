//! The refresh lease around a flight: renewed while the flight works, and kept (renewed in the
//! background) while the pair it made is pending, so no other replica presents the refresh token
//! that pair superseded.

use std::sync::{Arc, Weak};
use std::time::Duration;

use pleo_auth_core::{ErrorKind as CoreKind, LeaseGuard};
use tracing::Instrument;

use crate::grant::cell::{GrantCell, KeptLease};
use crate::inner::Inner;

/// Runs `work` (the refresh and the first write of its pair) while renewing `guard` every third
/// of `ttl`, so that a holder that is alive and working keeps the lease however slow the token
/// endpoint or the store is; one that is paused or dead stops renewing and loses it after `ttl`.
/// The renewals run beside `work` in the same task and stop when it ends, or when the lease
/// implementation cannot renew.
pub(crate) async fn while_renewing<T>(
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
pub(crate) async fn release_lease(guard: LeaseGuard) {
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
pub(crate) async fn take_kept_lease(inner: &Inner, cell: &GrantCell) -> Option<LeaseGuard> {
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
pub(crate) async fn keep_or_release(inner: &Arc<Inner>, cell: &Arc<GrantCell>, guard: LeaseGuard) {
    let mut slot = cell.kept_lease.lock().await;
    let handoff = {
        let mut st = cell.lock();
        if st.phase.is_pending() {
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
    let span = tracing::info_span!("pleo_auth_lease", subject = %cell.subject);
    tokio::spawn(renew_loop(Arc::downgrade(inner), cell.clone(), handoff).instrument(span));
}

/// Releases the kept lease if the cell's pair is no longer pending, or unconditionally when
/// `always` (the manager is gone).
pub(crate) async fn release_kept_lease(cell: &GrantCell, always: bool) {
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
        CoreKind::Conflict => match inner
            .lease
            .acquire(&inner.lease_key(cell.subject), ttl)
            .await
        {
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
