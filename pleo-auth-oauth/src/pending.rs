//! Pending authorizations after the fact: counting them and removing those that expired.
//!
//! A pending authorization is deleted when its callback arrives, whatever the outcome. One whose
//! customer never came back (an abandoned consent page) stays until it expires; the sweep
//! ([`OAuthClient::sweep_pending`](crate::OAuthClient::sweep_pending), also run by
//! [`TokenManager::keep_alive`](crate::TokenManager::keep_alive)) deletes it then, so the store
//! does not fill with litter (on AWS Secrets Manager each is a billed secret).

use pleo_auth_core::{
    ClientId, EnvironmentName, ErrorKind as CoreKind, Precondition, Record, RecordStoreExt,
    StoreKey, TenantId, Timestamp, Version, is_conflict, layout,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::inner::Inner;

/// Keys read per batch while sweeping.
const SWEEP_BATCH: usize = 500;

/// A pending authorization as `status` and the operator view show it, without secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingStatus {
    /// The tenant the flow is for, if it named one.
    pub tenant: Option<TenantId>,
    /// When the flow started.
    pub created_at: Timestamp,
    /// When it expires.
    pub expires_at: Timestamp,
    /// Whether it has expired (the sweep removes it).
    pub expired: bool,
}

/// What [`OAuthClient::sweep_pending`](crate::OAuthClient::sweep_pending) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingSweep {
    /// Expired pending authorizations deleted.
    pub removed: usize,
    /// Pending authorizations left: not expired yet, or changed while being swept.
    pub remaining: usize,
    /// Records that could not be read (a newer schema, another key); left alone and logged.
    pub unreadable: usize,
}

/// The part of a pending authorization the sweep needs: when it expires. Reading only this
/// keeps records of older schemas sweepable; nothing read here is used but the expiry, to
/// delete an expired record with a version check.
#[derive(Serialize, Deserialize)]
struct Expiry {
    environment: EnvironmentName,
    client_id: ClientId,
    #[serde(default)]
    tenant: Option<TenantId>,
    created_at: Timestamp,
    expires_at: Timestamp,
}

impl Record for Expiry {
    const KIND: &'static str = "pending_authorization";
    const SCHEMA: u32 = 2;

    /// Records of schema 1 carry no state digest, so the check is that the key is one digest
    /// directly below the prefix of the record's environment and client.
    fn belongs_at(&self, key: &StoreKey) -> bool {
        let prefix = layout::pending_authorizations(&self.environment, &self.client_id);
        key.starts_with(&prefix) && key.parts().len() == prefix.parts().len() + 1
    }
}

fn prefix(inner: &Inner) -> StoreKey {
    layout::pending_authorizations(inner.config.environment().name(), inner.config.client_id())
}

/// Whether a read failed because of the record itself rather than the store.
fn is_unreadable(kind: CoreKind) -> bool {
    matches!(
        kind,
        CoreKind::Corrupt | CoreKind::UnsupportedSchema | CoreKind::KeyMismatch
    )
}

/// Every pending authorization of this client and environment, with its key, version and
/// what the sweep needs. Unreadable records are counted, not returned.
async fn read_all(inner: &Inner) -> Result<(Vec<(StoreKey, Version, Expiry)>, usize)> {
    let keys = inner
        .store
        .list(&prefix(inner))
        .await
        .map_err(|e| Error::store("listing pending authorizations failed", e))?;
    let mut found = Vec::with_capacity(keys.len());
    let mut unreadable = 0;
    for chunk in keys.chunks(SWEEP_BATCH) {
        let reads = match inner.store.get_records::<Expiry>(chunk).await {
            Ok(reads) => reads.into_iter().map(Ok).collect::<Vec<_>>(),
            // One bad record fails a batch read: read that batch one by one instead.
            Err(e) if is_unreadable(e.kind()) => {
                let mut one_by_one = Vec::with_capacity(chunk.len());
                for key in chunk {
                    one_by_one.push(inner.store.get_record::<Expiry>(key).await);
                }
                one_by_one
            }
            Err(e) => return Err(Error::store("reading pending authorizations failed", e)),
        };
        for (key, read) in chunk.iter().zip(reads) {
            match read {
                Ok(Some((record, version))) => found.push((key.clone(), version, record)),
                Ok(None) => {}
                Err(e) if is_unreadable(e.kind()) => {
                    tracing::warn!(key = %key, kind = %e.kind(), "a pending authorization cannot be read; left alone");
                    unreadable += 1;
                }
                Err(e) => return Err(Error::store("reading a pending authorization failed", e)),
            }
        }
    }
    Ok((found, unreadable))
}

/// The pending authorizations of this client and environment.
pub(crate) async fn list(inner: &Inner) -> Result<Vec<PendingStatus>> {
    let now = inner.clock.timestamp();
    let (found, _) = read_all(inner).await?;
    Ok(found
        .into_iter()
        .map(|(_, _, record)| PendingStatus {
            tenant: record.tenant,
            created_at: record.created_at,
            expires_at: record.expires_at,
            expired: now >= record.expires_at,
        })
        .collect())
}

/// Deletes every expired pending authorization, each with a version check so a record that
/// changed meanwhile is left for the next sweep.
pub(crate) async fn sweep(inner: &Inner) -> Result<PendingSweep> {
    let now = inner.clock.timestamp();
    let (found, unreadable) = read_all(inner).await?;
    let mut report = PendingSweep {
        unreadable,
        ..PendingSweep::default()
    };
    for (key, version, record) in found {
        if now < record.expires_at {
            report.remaining += 1;
            continue;
        }
        match inner
            .store
            .delete(&key, Precondition::Version(version))
            .await
        {
            Ok(()) => report.removed += 1,
            Err(e) if is_conflict(&e) => report.remaining += 1,
            Err(e) => {
                return Err(Error::store(
                    "deleting an expired pending authorization failed",
                    e,
                ));
            }
        }
    }
    if report.removed > 0 {
        tracing::info!(
            removed = report.removed,
            remaining = report.remaining,
            "expired pending authorizations removed"
        );
    }
    Ok(report)
}
