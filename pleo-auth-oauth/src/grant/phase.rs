//! The life of one grant in this process, as a pure state machine.
//!
//! [`Phase`] holds exactly what each phase needs: nothing while unloaded; the stored record
//! and its version while the store holds the newest record; the newest record and the refresh
//! tokens it superseded while a write is pending. Its methods are pure transitions from
//! (phase, event) to (phase, outcome): a store read, a token answer, a landed write, a refused
//! refresh token. The async shell (`flight`, `persist`) performs the I/O the outcomes ask for
//! (call the token endpoint, write with a precondition, emit an event) and feeds the results
//! back. The rules that keep rotated tokens safe live here, in one place:
//!
//! - **Install before judging**: an answer that carries a new refresh token becomes the pending
//!   record at once, whatever else is wrong with the answer ([`Phase::answered`]).
//! - **A pending pair is never dropped for an older record**: a read or a write conflict that
//!   finds a refresh token the pending pair superseded keeps the pair and writes over it
//!   ([`Phase::read`], [`Phase::write_plan`]).
//! - **Another writer's word is final**: a record that is not of our lineage (another replica's
//!   rotation, a reconnect, a tombstone, a reauthorization mark) is adopted, never overwritten.
//! - **A refused refresh token marks the grant only if it is still ours** ([`Phase::refusal_plan`]).

use std::time::Duration;

use pleo_auth_core::{
    AccessToken, CredentialStatus, OAuthGrant, Precondition, RefreshToken, ScopeSet, Timestamp,
    Version,
};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, ErrorKind};

/// `status_reason` of a disconnected grant whose revocation is still to be retried.
pub(crate) const REVOCATION_PENDING: &str = "revocation_pending";
/// `status_reason` of a grant disconnected for good.
pub(crate) const DISCONNECTED: &str = "disconnected";
/// `status_reason` of a grant the server refused.
pub(crate) const INVALID_GRANT: &str = "invalid_grant";

/// The SHA-256 of a refresh token: how pending pairs remember the tokens they superseded
/// without keeping them.
pub(crate) type TokenDigest = [u8; 32];

pub(crate) fn digest(token: &RefreshToken) -> TokenDigest {
    Sha256::digest(token.expose_secret().as_bytes()).into()
}

pub(crate) fn digest_of(token: Option<&RefreshToken>) -> Option<TokenDigest> {
    token.map(digest)
}

/// What this process knows of one grant.
#[derive(Clone, Default)]
pub(crate) enum Phase {
    /// Nothing read yet, or nothing stored.
    #[default]
    Unloaded,
    /// The store holds the newest record this process knows, at `version`.
    Stored {
        /// The record.
        record: OAuthGrant,
        /// Its store version.
        version: Version,
    },
    /// A record newer than the store's (a rotated pair, or a reauthorization mark) is being
    /// written. It is served meanwhile, and used for the next refresh.
    Pending {
        /// The record.
        record: OAuthGrant,
        /// Refresh tokens this record supersedes that the store may still hold.
        superseded: Vec<TokenDigest>,
        /// Whether the `PersistPending` event was sent for it.
        announced: bool,
    },
}

/// The life of a grant as callers see it, derived from the phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Life {
    /// Nothing is known.
    Unloaded,
    /// Usable.
    Active,
    /// The server refused the grant; the customer must consent again.
    NeedsReauthorization,
    /// Disconnected locally; the revocation is still to be done.
    RevocationPending,
    /// Disconnected.
    Revoked,
}

/// What a refresh flight must achieve.
#[derive(Debug, Clone)]
pub(crate) enum Trigger {
    /// A token that is not yet in its refresh window.
    Fresh,
    /// A token other than this one (which the server refused).
    Rejected(pleo_auth_core::CredentialId),
    /// A refresh token issued at or after this time.
    KeepAlive(Timestamp),
    /// A valid access token of a disconnected grant, to retry the revocation.
    Revoke,
}

impl Trigger {
    /// A short name for logs.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Trigger::Fresh => "expiry",
            Trigger::Rejected(_) => "rejected",
            Trigger::KeepAlive(_) => "keep_alive",
            Trigger::Revoke => "revoke",
        }
    }
}

/// What a store read changed ([`Phase::read`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Read {
    /// Nothing is stored: the phase is now unloaded.
    NothingStored,
    /// The phase already knew this version.
    Unchanged,
    /// Our pending record is what the store holds: it is stored now.
    OursLanded,
    /// The store holds a record our pending one supersedes: ours stays pending.
    OursNewer,
    /// Another writer's record is the phase now; `newer` is its generation when it is an active
    /// grant newer than what the phase knew (a rotation adopted from another replica).
    Adopted {
        /// The adopted generation, if it is a newer active one.
        newer: Option<u64>,
    },
}

/// What to do with a pending record, given the store's current one ([`Phase::write_plan`]).
#[derive(Clone)]
pub(crate) enum WritePlan {
    /// Nothing is pending.
    Nothing,
    /// The grant was deleted meanwhile: someone removed it on purpose.
    Deleted,
    /// The store holds our pending record already (an earlier write landed).
    Landed {
        /// The stored record.
        record: OAuthGrant,
        /// Its version.
        version: Version,
    },
    /// Another writer's record wins; adopt it.
    Adopt {
        /// The stored record.
        record: OAuthGrant,
        /// Its version.
        version: Version,
    },
    /// Write this record (ours, rebased on the stored one's settings) over the stored version.
    Write {
        /// The record to write.
        record: OAuthGrant,
        /// The version it replaces.
        precondition: Precondition,
    },
}

/// What to do after the server refused the refresh token `presented`
/// ([`Phase::refusal_plan`]).
#[derive(Clone)]
pub(crate) enum RefusalPlan {
    /// The phase's token is not the refused one any more: serve what the phase holds.
    NotOurs,
    /// Nothing is stored: the grant was removed.
    Deleted,
    /// Another replica rotated first (which is why the token was refused), or the grant was
    /// reconnected or disconnected: adopt the stored record.
    Adopt {
        /// The stored record.
        record: OAuthGrant,
        /// Its version.
        version: Version,
    },
    /// Mark the stored record as needing reauthorization.
    Mark {
        /// The marked record.
        record: OAuthGrant,
        /// The version it replaces.
        precondition: Precondition,
    },
}

/// A token answer, as [`Phase::answered`] installs it.
pub(crate) struct Installed {
    /// The new refresh token, if the server sent one.
    pub(crate) refresh_token: Option<RefreshToken>,
    /// The usable access token with its lifetime and scopes, if the answer had one.
    pub(crate) access: Option<(AccessToken, Duration, Option<ScopeSet>)>,
}

/// Whether `ours` (pending) may replace `stored`: the store holds a token our record
/// superseded, and is either still active or in the same state as ours (a tombstone whose
/// tokens we refreshed). A tombstone or a reauthorization mark written by someone else is never
/// undone.
fn overwritable(stored: &OAuthGrant, ours: &OAuthGrant, superseded: &[TokenDigest]) -> bool {
    let from_our_lineage =
        digest_of(stored.refresh_token.as_ref()).is_some_and(|d| superseded.contains(&d));
    from_our_lineage && (stored.status == CredentialStatus::Active || stored.status == ours.status)
}

fn same_pair(a: &OAuthGrant, b: &OAuthGrant) -> bool {
    let digest = digest_of(a.refresh_token.as_ref());
    digest.is_some() && digest == digest_of(b.refresh_token.as_ref())
}

pub(crate) fn not_connected() -> Error {
    Error::new(
        ErrorKind::NotConnected,
        "no grant is stored for this subject",
    )
}

pub(crate) fn needs_reauthorization() -> Error {
    Error::new(
        ErrorKind::NeedsReauthorization,
        "the grant needs reauthorization",
    )
}

impl Phase {
    /// The record the phase holds.
    pub(crate) fn record(&self) -> Option<&OAuthGrant> {
        match self {
            Phase::Unloaded => None,
            Phase::Stored { record, .. } | Phase::Pending { record, .. } => Some(record),
        }
    }

    /// Whether the phase's current refresh token is `token`.
    pub(crate) fn holds(&self, token: &RefreshToken) -> bool {
        self.record()
            .is_some_and(|r| digest_of(r.refresh_token.as_ref()) == Some(digest(token)))
    }

    /// Whether a record is waiting for its write.
    pub(crate) fn is_pending(&self) -> bool {
        matches!(self, Phase::Pending { .. })
    }

    /// The grant's life.
    pub(crate) fn life(&self) -> Life {
        self.record().map_or(Life::Unloaded, Self::life_of)
    }

    /// The life of a stored `record`.
    pub(crate) fn life_of(record: &OAuthGrant) -> Life {
        match record.status {
            CredentialStatus::Active => Life::Active,
            CredentialStatus::NeedsReauthorization => Life::NeedsReauthorization,
            CredentialStatus::Revoked
                if record.status_reason.as_deref() == Some(REVOCATION_PENDING) =>
            {
                Life::RevocationPending
            }
            CredentialStatus::Revoked | CredentialStatus::NeedsReplacement => Life::Revoked,
        }
    }

    /// Why the phase cannot serve `trigger`, if it cannot: nothing is known, the grant needs
    /// reauthorization, or it was disconnected (a disconnected grant whose revocation is pending
    /// still serves [`Trigger::Revoke`]).
    pub(crate) fn refusal(&self, trigger: &Trigger) -> Option<Error> {
        match (self.life(), trigger) {
            (Life::Unloaded, _) => Some(not_connected()),
            (Life::Active, _) | (Life::RevocationPending, Trigger::Revoke) => None,
            (Life::NeedsReauthorization, _) => Some(needs_reauthorization()),
            (Life::RevocationPending | Life::Revoked, _) => {
                Some(Error::new(ErrorKind::Revoked, "the grant was disconnected"))
            }
        }
    }

    /// Merges a store read (`None`: nothing stored).
    pub(crate) fn read(&mut self, read: Option<(OAuthGrant, Version)>) -> Read {
        let Some((stored, version)) = read else {
            *self = Phase::Unloaded;
            return Read::NothingStored;
        };
        match self {
            Phase::Stored { version: known, .. } if *known == version => return Read::Unchanged,
            Phase::Pending {
                record: ours,
                superseded,
                ..
            } => {
                if same_pair(&stored, ours) {
                    *self = Phase::Stored {
                        record: stored,
                        version,
                    };
                    return Read::OursLanded;
                }
                if overwritable(&stored, ours, superseded) {
                    return Read::OursNewer;
                }
            }
            _ => {}
        }
        let previous = self.record().map(|r| r.generation);
        let newer = match previous {
            Some(g) if stored.generation > g && stored.status == CredentialStatus::Active => {
                Some(stored.generation)
            }
            _ => None,
        };
        *self = Phase::Stored {
            record: stored,
            version,
        };
        Read::Adopted { newer }
    }

    /// Installs a token answer to the refresh of `presented` (install before judging): the
    /// answer's refresh token (and access token, if usable) become a pending record at once.
    /// Returns the new generation, or `None` when the phase no longer holds `presented` (the
    /// grant was reconnected or disconnected meanwhile; the answer belongs to a replaced
    /// lineage) or the answer holds nothing to keep.
    pub(crate) fn answered(
        &mut self,
        presented: &RefreshToken,
        answer: Installed,
        now: Timestamp,
    ) -> Option<u64> {
        let current = self.record()?;
        if digest_of(current.refresh_token.as_ref()) != Some(digest(presented)) {
            return None;
        }
        if answer.refresh_token.is_none() && answer.access.is_none() {
            return None;
        }
        let mut record = current.clone();
        let (mut superseded, announced) = match self {
            Phase::Pending {
                superseded,
                announced,
                ..
            } => (std::mem::take(superseded), *announced),
            _ => (Vec::new(), false),
        };
        match answer.access {
            Some((access_token, lifetime, scopes)) => {
                record.access_token = Some(access_token);
                record.access_token_expires_at = Some(now.saturating_add(lifetime));
                if let Some(scopes) = scopes {
                    record.scopes = scopes;
                }
            }
            None => {
                // Rotated, but nothing usable to call the API with: the next call refreshes
                // with the new refresh token.
                record.access_token = None;
                record.access_token_expires_at = None;
            }
        }
        if let Some(rotated) = answer.refresh_token {
            record.refresh_token = Some(rotated);
            record.refresh_token_issued_at = Some(now);
            superseded.push(digest(presented));
        }
        record.generation += 1;
        record.updated_at = now;
        let generation = record.generation;
        *self = Phase::Pending {
            record,
            superseded,
            announced,
        };
        Some(generation)
    }

    /// How to write the pending record, given the store's current one.
    pub(crate) fn write_plan(&self, read: Option<(OAuthGrant, Version)>) -> WritePlan {
        let Phase::Pending {
            record: ours,
            superseded,
            ..
        } = self
        else {
            return WritePlan::Nothing;
        };
        let Some((stored, version)) = read else {
            return WritePlan::Deleted;
        };
        if same_pair(&stored, ours) {
            return WritePlan::Landed {
                record: stored,
                version,
            };
        }
        if !overwritable(&stored, ours, superseded) {
            return WritePlan::Adopt {
                record: stored,
                version,
            };
        }
        let mut merged = ours.clone();
        merged.settings = stored.settings.clone();
        merged.tenant = stored.tenant.clone().or(merged.tenant);
        merged.created_at = stored.created_at;
        merged.generation = merged.generation.max(stored.generation + 1);
        WritePlan::Write {
            record: merged,
            precondition: Precondition::Version(version),
        }
    }

    /// A write of `written` landed at `version`. The phase is stored if `written` is still its
    /// pending record (a newer one may have been made meanwhile; it names `written`'s token as
    /// superseded). Returns whether the pending record had been announced (so its recovery is
    /// to be announced too), or `None` when nothing changed.
    pub(crate) fn written(&mut self, written: &OAuthGrant, version: Version) -> Option<bool> {
        let Phase::Pending {
            record, announced, ..
        } = self
        else {
            return None;
        };
        if digest_of(record.refresh_token.as_ref()) != digest_of(written.refresh_token.as_ref())
            || record.status != written.status
        {
            return None;
        }
        let announced = *announced;
        *self = Phase::Stored {
            record: written.clone(),
            version,
        };
        Some(announced)
    }

    /// Marks the pending record as announced; returns whether it had not been.
    pub(crate) fn announce(&mut self) -> bool {
        match self {
            Phase::Pending { announced, .. } => !std::mem::replace(announced, true),
            _ => false,
        }
    }

    /// How to handle the server's refusal of `presented`, given the store's current record.
    pub(crate) fn refusal_plan(
        &self,
        presented: &RefreshToken,
        read: Option<(OAuthGrant, Version)>,
        now: Timestamp,
    ) -> RefusalPlan {
        let presented = digest(presented);
        let Some(current) = self.record() else {
            return RefusalPlan::Deleted;
        };
        if digest_of(current.refresh_token.as_ref()) != Some(presented) {
            return RefusalPlan::NotOurs;
        }
        let Some((stored, version)) = read else {
            return RefusalPlan::Deleted;
        };
        let superseded: &[TokenDigest] = match self {
            Phase::Pending { superseded, .. } => superseded,
            _ => &[],
        };
        let stored_digest = digest_of(stored.refresh_token.as_ref());
        let ours = stored_digest == Some(presented)
            || stored_digest.is_some_and(|d| superseded.contains(&d));
        if !ours || stored.status != CredentialStatus::Active {
            return RefusalPlan::Adopt {
                record: stored,
                version,
            };
        }
        RefusalPlan::Mark {
            record: needing_reauthorization(stored, now),
            precondition: Precondition::Version(version),
        }
    }

    /// The server refused `presented` and the store cannot be read: the phase's record is
    /// marked in memory, pending, to be written when the store is back.
    pub(crate) fn refused_unwritten(&mut self, presented: &RefreshToken, now: Timestamp) {
        let Some(current) = self.record().cloned() else {
            return;
        };
        let (mut superseded, announced) = match self {
            Phase::Pending {
                superseded,
                announced,
                ..
            } => (std::mem::take(superseded), *announced),
            _ => (Vec::new(), false),
        };
        superseded.push(digest(presented));
        *self = Phase::Pending {
            record: needing_reauthorization(current, now),
            superseded,
            announced,
        };
    }
}

/// `record` marked as needing reauthorization: tokens discarded, settings kept.
pub(crate) fn needing_reauthorization(mut record: OAuthGrant, now: Timestamp) -> OAuthGrant {
    record.status = CredentialStatus::NeedsReauthorization;
    record.status_reason = Some(INVALID_GRANT.to_owned());
    record.access_token = None;
    record.access_token_expires_at = None;
    record.refresh_token = None;
    record.updated_at = now;
    record
}

/// Disconnected for good: tokens discarded, settings kept.
pub(crate) fn revoke_locally(record: &mut OAuthGrant) {
    record.status = CredentialStatus::Revoked;
    record.status_reason = Some(DISCONNECTED.to_owned());
    record.access_token = None;
    record.access_token_expires_at = None;
    record.refresh_token = None;
}

/// A tombstone: unusable locally, tokens kept so the revocation can be retried.
pub(crate) fn tombstone(record: &mut OAuthGrant) {
    record.status = CredentialStatus::Revoked;
    record.status_reason = Some(REVOCATION_PENDING.to_owned());
}

#[cfg(test)]
#[path = "phase_tests.rs"]
mod tests;
