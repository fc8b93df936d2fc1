//! What a cell can answer from what it knows: whether its token satisfies a trigger, and a
//! store read merged into its phase.

use std::sync::Arc;

use pleo_auth_core::{OAuthGrant, RecordStoreExt};

use crate::error::{Error, Result};
use crate::events::OAuthEvent;
use crate::grant::cell::{ActiveToken, CellState, FlightResult, GrantCell};
use crate::grant::phase::{Life, Phase, Read, Trigger, not_connected};
use crate::inner::Inner;

impl Inner {
    /// A token that satisfies `trigger` according to the state, if there is one.
    pub(crate) fn satisfied(
        &self,
        cell: &GrantCell,
        st: &CellState,
        trigger: &Trigger,
    ) -> Option<Arc<ActiveToken>> {
        let record = st.phase.record()?;
        let now = self.clock.instant();
        let active = st.phase.life() == Life::Active;
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
                let recent = record
                    .refresh_token_issued_at
                    .is_some_and(|issued| issued >= *threshold);
                if !(active && recent) {
                    return None;
                }
                cell.token
                    .load_full()
                    .filter(|t| now < t.expires_at)
                    .or_else(|| self.token_from_record(record, None))
            }
            Trigger::Revoke => {
                let token = self.token_from_record(record, None)?;
                (now + self.policy.refresh_margin < token.expires_at).then_some(token)
            }
        }
    }

    /// Merges a store read into the cell's phase and serves what it now holds. Returns an event
    /// to emit once the lock is released.
    pub(crate) fn merge(
        &self,
        cell: &GrantCell,
        st: &mut CellState,
        read: Option<(OAuthGrant, pleo_auth_core::Version)>,
    ) -> Option<OAuthEvent> {
        match st.phase.read(read) {
            Read::Unchanged | Read::OursNewer => None,
            Read::OursLanded => {
                st.touched();
                None
            }
            Read::NothingStored => {
                st.touched();
                self.set_token(cell, None);
                None
            }
            Read::Adopted { newer } => {
                st.touched();
                self.serve(cell, &st.phase);
                newer.map(|generation| OAuthEvent::Adopted {
                    subject: cell.subject,
                    generation,
                })
            }
        }
    }

    /// Makes a stored record the phase (another writer's word is final).
    pub(crate) fn adopt(
        &self,
        cell: &GrantCell,
        st: &mut CellState,
        record: OAuthGrant,
        version: pleo_auth_core::Version,
    ) -> Option<OAuthEvent> {
        let previous = st.phase.record().map(|r| r.generation);
        let newer = match previous {
            Some(g)
                if record.generation > g
                    && record.status == pleo_auth_core::CredentialStatus::Active =>
            {
                Some(record.generation)
            }
            _ => None,
        };
        st.set_phase(Phase::Stored { record, version });
        self.serve(cell, &st.phase);
        newer.map(|generation| OAuthEvent::Adopted {
            subject: cell.subject,
            generation,
        })
    }

    /// Reads the grant from the store and merges it. `NotConnected` when nothing is stored.
    pub(crate) async fn reconcile(&self, cell: &GrantCell) -> Result<()> {
        for _ in 0..3 {
            let epoch = cell.lock().epoch;
            let read = self
                .store
                .get_record::<OAuthGrant>(&self.grant_key(cell.subject))
                .await
                .map_err(|e| Error::store("reading the grant failed", e))?;
            let nothing = read.is_none();
            let event = {
                let mut st = cell.lock();
                if st.epoch != epoch {
                    // The phase changed while we read; the read may be stale.
                    continue;
                }
                self.merge(cell, &mut st, read)
            };
            if let Some(event) = event {
                self.emit(event);
            }
            return if nothing {
                Err(not_connected())
            } else {
                Ok(())
            };
        }
        Ok(())
    }

    /// The outcome for `trigger` from the state alone: a terminal error, a token, or `None`
    /// when work is needed.
    pub(crate) fn check(
        &self,
        cell: &GrantCell,
        trigger: &Trigger,
    ) -> Result<Option<Arc<ActiveToken>>> {
        let st = cell.lock();
        if let Some(err) = st.phase.refusal(trigger) {
            return Err(err);
        }
        Ok(self.satisfied(cell, &st, trigger))
    }

    /// The current token after work that may have changed the phase.
    pub(crate) fn current(&self, cell: &GrantCell, trigger: &Trigger) -> FlightResult {
        if let Some(token) = self.check(cell, trigger)? {
            return Ok(token);
        }
        let st = cell.lock();
        let record = st.phase.record().ok_or_else(not_connected)?;
        cell.token
            .load_full()
            .or_else(|| self.token_from_record(record, None))
            .ok_or_else(|| Error::unexpected("the grant has no access token"))
    }
}
