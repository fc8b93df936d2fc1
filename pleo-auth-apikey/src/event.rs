//! Events about API keys, for the integrator's own alerting and user interface.

use pleo_auth_core::{ApiKeyKind, ClientId, EnvironmentName, Subject, TenantId};
use serde::Serialize;

/// Something happened to an API key. Events never carry a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ApiKeyEvent {
    /// A key was validated and stored for a company.
    Connected {
        /// The environment.
        environment: EnvironmentName,
        /// The integration.
        integration_id: ClientId,
        /// The company.
        subject: Subject,
        /// The tenant linked on connect, if any.
        tenant: Option<TenantId>,
        /// The generation of the stored key.
        generation: u64,
    },
    /// A company's key was swapped for a new one.
    Replaced {
        /// The environment.
        environment: EnvironmentName,
        /// The integration.
        integration_id: ClientId,
        /// The company.
        subject: Subject,
        /// The generation of the new key.
        generation: u64,
    },
    /// Pleo answered 401 to a key: it is marked `NeedsReplacement` and no longer sent. The
    /// customer must provide a new key.
    NeedsReplacement {
        /// The environment.
        environment: EnvironmentName,
        /// The integration, for a stored key.
        integration_id: Option<ClientId>,
        /// The company or organisation of the key.
        subject: Subject,
        /// Integrated or Standalone.
        kind: ApiKeyKind,
    },
    /// A company's key was removed from the store.
    Removed {
        /// The environment.
        environment: EnvironmentName,
        /// The integration.
        integration_id: ClientId,
        /// The company.
        subject: Subject,
    },
}

/// Receives [`ApiKeyEvent`]s. Called inline, so it should return quickly (hand the event to a
/// channel for slow work). Any `Fn(&ApiKeyEvent)` closure is a sink.
pub trait ApiKeyEventSink: Send + Sync + 'static {
    /// Handles one event.
    fn emit(&self, event: &ApiKeyEvent);
}

impl<F> ApiKeyEventSink for F
where
    F: Fn(&ApiKeyEvent) + Send + Sync + 'static,
{
    fn emit(&self, event: &ApiKeyEvent) {
        self(event);
    }
}
