//! [`PendingPair`]: a rotated pair the store has not taken, moved out of one process (for a
//! recovery file) and into a later one.

use std::fmt;

use pleo_auth_core::{OAuthGrant, Record, SecretBytes, Subject};

use crate::error::{Error, Result};
use crate::grant::phase::{Phase, TokenDigest};

/// What [`TokenManager::recover`](crate::TokenManager::recover) did with one pair.
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
/// write it ([`TokenManager::pending_pairs`](crate::TokenManager::pending_pairs), [`TokenManager::recover`](crate::TokenManager::recover)).
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
    /// The pending record of `phase`, if it has one.
    pub(crate) fn of(phase: &Phase) -> Option<Self> {
        match phase {
            Phase::Pending {
                record, superseded, ..
            } => Some(Self {
                record: record.clone(),
                superseded: superseded.clone(),
            }),
            _ => None,
        }
    }

    /// The pair as a pending phase, as a recovering process takes it in.
    pub(crate) fn into_phase(self) -> Phase {
        Phase::Pending {
            record: self.record,
            superseded: self.superseded,
            announced: false,
        }
    }

    /// Whether the pair belongs to `environment` and `client`.
    pub(crate) fn is_for(
        &self,
        environment: &pleo_auth_core::EnvironmentName,
        client: &pleo_auth_core::ClientId,
    ) -> bool {
        self.record.environment == *environment && self.record.client_id == *client
    }

    /// The company or organisation.
    pub fn subject(&self) -> Subject {
        self.record.subject
    }

    /// The generation of the pair.
    pub fn generation(&self) -> u64 {
        self.record.generation
    }

    /// The pair as one line of JSON, secrets included.
    pub fn to_recovery_json(&self) -> Result<SecretBytes> {
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
            .map(SecretBytes::new)
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
