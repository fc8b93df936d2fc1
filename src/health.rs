//! [`PleoAuth::health`]: whether the store and the lease backend answer, and which
//! connections need a person.

use std::time::{Duration, Instant};

use pleo_auth_core::{StoreKey, layout};

use crate::PleoAuth;
use crate::connections::{ConnectionInfo, ConnectionState};

/// How long the health check holds its probe lease.
const PROBE_LEASE_TTL: Duration = Duration::from_secs(5);

/// Whether one backend answered a health probe.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Probe {
    /// Whether it answered.
    pub reachable: bool,
    /// How long the probe took.
    pub latency: Duration,
    /// Why it did not answer (an error message, without secrets).
    pub error: Option<String>,
}

impl Probe {
    fn of<T, E: std::fmt::Display>(started: Instant, result: Result<T, E>) -> Self {
        Self {
            reachable: result.is_ok(),
            latency: started.elapsed(),
            error: result.err().map(|e| e.to_string()),
        }
    }
}

/// What [`PleoAuth::health`] found.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Health {
    /// The secret store answered a read.
    pub store: Probe,
    /// The lease backend (the one keep-alive and refreshes use) granted and released a lease.
    pub lease: Probe,
    /// How many connections are stored, when they could be listed.
    pub connections: Option<usize>,
    /// Connections that need a person: the customer must consent again or provide a new key,
    /// or a revocation at Pleo is still pending.
    pub needing_attention: Vec<ConnectionInfo>,
    /// Grants Pleo issued that are not kept and are not revoked yet (keep-alive retries them).
    pub dangling_grants: usize,
    /// Why the connections could not be listed (an unreadable record, the store down).
    pub listing_error: Option<String>,
}

impl Health {
    /// Whether everything is in order: both backends answer, every connection could be read
    /// and none needs attention.
    pub fn is_healthy(&self) -> bool {
        self.store.reachable
            && self.lease.reachable
            && self.listing_error.is_none()
            && self.needing_attention.is_empty()
    }
}

impl PleoAuth {
    /// Checks the store (one read), the lease backend (takes and releases a probe lease) and
    /// the stored connections (those that need reauthorization, a new key, or a pending
    /// revocation; dangling grants). Never fails: what could not be checked is reported in the
    /// answer. The operator view (`admin_router`) and `pleo-auth status --check` show it.
    ///
    /// It reads every stored connection (like [`connections`](Self::connections)): with many
    /// thousands of companies, poll it every minute or so, not every second.
    pub async fn health(&self) -> Health {
        let environment = self.environment().name();
        let started = Instant::now();
        let store = Probe::of(
            started,
            self.store()
                .list_page(&layout::tenant_links(environment), None, 1)
                .await,
        );
        let started = Instant::now();
        let lease = Probe::of(started, self.probe_lease().await);
        let (connections, listing_error) = match self.connections().await {
            Ok(all) => (Some(all), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let dangling_grants = self.dangling_count().await;
        Health {
            store,
            lease,
            connections: connections.as_ref().map(Vec::len),
            needing_attention: connections
                .unwrap_or_default()
                .into_iter()
                .filter(|c| {
                    matches!(
                        c.state,
                        ConnectionState::NeedsReauthorization
                            | ConnectionState::NeedsReplacement
                            | ConnectionState::RevocationPending
                    )
                })
                .collect(),
            dangling_grants,
            listing_error,
        }
    }

    async fn probe_lease(&self) -> Result<(), pleo_auth_core::Error> {
        let key = StoreKey::from_parts([
            "pleo-auth",
            "v1",
            "health",
            self.environment().name().as_str(),
        ])?;
        // Another replica holding the probe lease right now answers too: the backend is up.
        if let Some(guard) = self
            .lease()
            .acquire(&layout::lease(&key), PROBE_LEASE_TTL)
            .await?
        {
            guard.release().await?;
        }
        Ok(())
    }

    async fn dangling_count(&self) -> usize {
        #[cfg(feature = "oauth")]
        if let Ok(manager) = self.token_manager() {
            return manager.dangling().await.map_or(0, |d| d.len());
        }
        0
    }
}
