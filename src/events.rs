//! One event stream for every credential: OAuth grants, Integrated keys and the Standalone key.
//!
//! The method crates emit their own events inline ([`OAuthEvent`], [`ApiKeyEvent`]); the hub
//! turns each into a [`PleoEvent`] on the spot (time, environment, method; a `Recovered` event
//! after a connection that needed attention works again), counts it in the metrics, and queues
//! it. A task delivers the queue: it adds the tenant (from the tenant links) and hands each
//! event to the broadcast channel ([`PleoAuth::subscribe`](crate::PleoAuth::subscribe)) and to
//! the closures and sinks given to the builder. The queue is bounded: when subscribers fall
//! behind, new events are dropped and counted ([`PleoAuth::events_lagged`](crate::PleoAuth::events_lagged)),
//! so a slow subscriber never holds up a refresh.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[cfg(feature = "apikey")]
use pleo_auth_apikey::ApiKeyEvent;
use pleo_auth_core::{
    CompanyId, CredentialKind, DynClock, EnvironmentName, Subject, TenantId, TenantLinks, Timestamp,
};
#[cfg(feature = "oauth")]
use pleo_auth_oauth::OAuthEvent;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

/// The default number of events queued for delivery, and kept for each broadcast receiver.
pub const DEFAULT_EVENT_CAPACITY: usize = 1024;

/// The most subjects whose tenant the delivery task remembers.
const TENANT_CACHE: usize = 10_000;

/// Something that happened to one credential. Events carry ids, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PleoEvent {
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
    /// Your tenant linked to the subject, if any.
    pub tenant: Option<TenantId>,
    /// The company or organisation, if known.
    pub subject: Option<Subject>,
    /// The environment.
    pub environment: EnvironmentName,
    /// OAuth, Integrated or Standalone API key (`oauth`, `integrated_api_key`,
    /// `standalone_api_key` in JSON).
    #[serde(serialize_with = "method_name")]
    pub method: CredentialKind,
    /// When it happened (the builder's clock).
    pub at: Timestamp,
}

fn method_name<S: serde::Serializer>(
    method: &CredentialKind,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(method.as_str())
}

impl PleoEvent {
    /// The company, if the subject is one.
    pub fn company(&self) -> Option<CompanyId> {
        self.subject.and_then(|s| s.company())
    }
}

/// What happened, in [`PleoEvent::kind`]. Serialized with the tag `event`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// A company was connected (an OAuth grant or an Integrated key stored).
    Connected {
        /// An earlier credential of the subject was replaced.
        reconnected: bool,
    },
    /// An OAuth grant's tokens were rotated by this process.
    Refreshed {
        /// The grant's generation after the rotation.
        generation: u64,
    },
    /// A refresh failed at Pleo (rate limited, unavailable, an answer not understood); the
    /// grant is unchanged and refreshes are retried.
    RefreshFailed {
        /// The error kind ([`ErrorKind::as_str`](crate::ErrorKind::as_str)).
        error: &'static str,
        /// Whether a later refresh may succeed.
        retryable: bool,
    },
    /// Pleo refused the OAuth grant: the customer must consent again.
    NeedsReauthorization,
    /// A connection that needed attention (a failed refresh, a refused grant, a rejected key,
    /// an unreadable record) works again.
    Recovered,
    /// Pleo rejected an API key: the customer must provide a new one.
    KeyNeedsReplacement,
    /// An Integrated key was replaced.
    KeyReplaced {
        /// The generation of the new key.
        generation: u64,
    },
    /// A connection was disconnected (an OAuth grant revoked, an Integrated key removed).
    Disconnected {
        /// Whether Pleo confirmed the revocation (always `false` for a removed key: Pleo has
        /// no revocation for keys).
        revoked_at_pleo: bool,
    },
    /// Rotated tokens are held in memory because the store refused them; the write is retried.
    PersistPending {
        /// The generation held in memory.
        generation: u64,
    },
    /// Tokens that were pending are now in the store.
    PersistRecovered {
        /// The generation written.
        generation: u64,
    },
    /// A grant Pleo issued is not kept (refused at connect, or replaced) and could not be
    /// revoked yet.
    RevocationDangling {
        /// Why it is not kept.
        reason: &'static str,
        /// Revoking it would end a kept grant, so it is left alone.
        unsafe_to_revoke: bool,
    },
    /// A stored record could not be read; keep-alive left it and went on.
    RecordUnreadable {
        /// The error kind.
        error: &'static str,
    },
}

impl EventKind {
    /// A short, stable, lowercase name (the `event` field of the JSON form).
    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::Connected { .. } => "connected",
            EventKind::Refreshed { .. } => "refreshed",
            EventKind::RefreshFailed { .. } => "refresh_failed",
            EventKind::NeedsReauthorization => "needs_reauthorization",
            EventKind::Recovered => "recovered",
            EventKind::KeyNeedsReplacement => "key_needs_replacement",
            EventKind::KeyReplaced { .. } => "key_replaced",
            EventKind::Disconnected { .. } => "disconnected",
            EventKind::PersistPending { .. } => "persist_pending",
            EventKind::PersistRecovered { .. } => "persist_recovered",
            EventKind::RevocationDangling { .. } => "revocation_dangling",
            EventKind::RecordUnreadable { .. } => "record_unreadable",
        }
    }
}

/// Receives [`PleoEvent`]s, on the delivery task (never on the refresh path). Any
/// `Fn(&PleoEvent)` closure is a sink. A sink that takes long delays the events after it; when
/// the queue is full, events are dropped and counted.
pub trait PleoEventSink: Send + Sync + 'static {
    /// Handles one event.
    fn emit(&self, event: &PleoEvent);
}

impl<F> PleoEventSink for F
where
    F: Fn(&PleoEvent) + Send + Sync + 'static,
{
    fn emit(&self, event: &PleoEvent) {
        self(event);
    }
}

/// A shared event sink.
pub type DynPleoEventSink = Arc<dyn PleoEventSink>;

/// What the delivery task needs; taken when it starts.
struct Delivery {
    queue: mpsc::Receiver<PleoEvent>,
    sinks: Vec<DynPleoEventSink>,
    broadcast: broadcast::Sender<PleoEvent>,
    links: TenantLinks,
}

/// Turns the method crates' events into [`PleoEvent`]s and delivers them.
pub(crate) struct EventHub {
    environment: EnvironmentName,
    clock: DynClock,
    queue: mpsc::Sender<PleoEvent>,
    broadcast: broadcast::Sender<PleoEvent>,
    delivery: Mutex<Option<Delivery>>,
    started: AtomicBool,
    attention: Mutex<HashSet<(CredentialKind, Option<Subject>)>>,
    lagged: AtomicU64,
}

impl fmt::Debug for EventHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventHub")
            .field("environment", &self.environment)
            .field("lagged", &self.lagged.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl EventHub {
    pub(crate) fn new(
        environment: EnvironmentName,
        clock: DynClock,
        links: TenantLinks,
        sinks: Vec<DynPleoEventSink>,
        capacity: usize,
    ) -> Arc<Self> {
        let capacity = capacity.max(1);
        let (queue, receiver) = mpsc::channel(capacity);
        let (broadcast, _) = broadcast::channel(capacity);
        Arc::new(Self {
            environment,
            clock,
            queue,
            broadcast: broadcast.clone(),
            delivery: Mutex::new(Some(Delivery {
                queue: receiver,
                sinks,
                broadcast,
                links,
            })),
            started: AtomicBool::new(false),
            attention: Mutex::new(HashSet::new()),
            lagged: AtomicU64::new(0),
        })
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<PleoEvent> {
        self.broadcast.subscribe()
    }

    pub(crate) fn lagged(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }

    /// Stamps, counts and queues one event; never blocks.
    fn publish(
        &self,
        kind: EventKind,
        method: CredentialKind,
        subject: Option<Subject>,
        tenant: Option<TenantId>,
    ) {
        let recovered = self.track(&kind, method, subject);
        for kind in std::iter::once(kind).chain(recovered.then_some(EventKind::Recovered)) {
            #[cfg(feature = "metrics")]
            crate::metrics::event(kind.as_str(), method);
            let event = PleoEvent {
                kind,
                tenant: tenant.clone(),
                subject,
                environment: self.environment.clone(),
                method,
                at: self.clock.timestamp(),
            };
            self.start();
            if self.queue.try_send(event).is_err() {
                self.lagged.fetch_add(1, Ordering::Relaxed);
                #[cfg(feature = "metrics")]
                crate::metrics::event_lagged();
            }
        }
    }

    /// Remembers connections that need attention; whether this event recovers one.
    fn track(&self, kind: &EventKind, method: CredentialKind, subject: Option<Subject>) -> bool {
        let mut attention = self
            .attention
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (method, subject);
        match kind {
            EventKind::RefreshFailed { .. }
            | EventKind::NeedsReauthorization
            | EventKind::KeyNeedsReplacement
            | EventKind::RecordUnreadable { .. } => {
                attention.insert(key);
                false
            }
            EventKind::Connected { .. }
            | EventKind::Refreshed { .. }
            | EventKind::KeyReplaced { .. } => attention.remove(&key),
            EventKind::Disconnected { .. } => {
                attention.remove(&key);
                false
            }
            _ => false,
        }
    }

    /// Starts the delivery task on the current Tokio runtime, once.
    fn start(&self) {
        if self.started.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let delivery = self
            .delivery
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(delivery) = delivery {
            self.started.store(true, Ordering::Release);
            runtime.spawn(deliver(delivery));
        }
    }

    #[cfg(feature = "oauth")]
    fn oauth(&self, event: &OAuthEvent) {
        use OAuthEvent as E;
        let oauth = CredentialKind::OAuth;
        let (kind, subject, tenant) = match event {
            E::Connected {
                subject,
                tenant,
                reconnected,
            } => (
                EventKind::Connected {
                    reconnected: *reconnected,
                },
                Some(*subject),
                tenant.clone(),
            ),
            E::Refreshed {
                subject,
                generation,
            } => (
                EventKind::Refreshed {
                    generation: *generation,
                },
                Some(*subject),
                None,
            ),
            E::RefreshFailed {
                subject,
                kind,
                retryable,
            } => (
                EventKind::RefreshFailed {
                    error: kind.core_kind().as_str(),
                    retryable: *retryable,
                },
                Some(*subject),
                None,
            ),
            E::ReauthorizationRequired { subject } => {
                (EventKind::NeedsReauthorization, Some(*subject), None)
            }
            E::PersistPending {
                subject,
                generation,
            } => (
                EventKind::PersistPending {
                    generation: *generation,
                },
                Some(*subject),
                None,
            ),
            E::PersistRecovered {
                subject,
                generation,
            } => (
                EventKind::PersistRecovered {
                    generation: *generation,
                },
                Some(*subject),
                None,
            ),
            E::GrantDangling {
                subject,
                reason,
                unsafe_to_revoke,
            } => (
                EventKind::RevocationDangling {
                    reason: reason.as_str(),
                    unsafe_to_revoke: *unsafe_to_revoke,
                },
                *subject,
                None,
            ),
            E::RecordUnreadable { subject, kind } => (
                EventKind::RecordUnreadable {
                    error: kind.core_kind().as_str(),
                },
                *subject,
                None,
            ),
            E::Disconnected {
                subject,
                revoked_at_pleo,
            } => (
                EventKind::Disconnected {
                    revoked_at_pleo: *revoked_at_pleo,
                },
                Some(*subject),
                None,
            ),
            // Adopting another replica's rotation is that replica's event.
            _ => return,
        };
        self.publish(kind, oauth, subject, tenant);
    }

    #[cfg(feature = "apikey")]
    fn api_key(&self, event: &ApiKeyEvent) {
        let integrated = CredentialKind::IntegratedApiKey;
        let (kind, method, subject, tenant) = match event {
            ApiKeyEvent::Connected {
                subject, tenant, ..
            } => (
                EventKind::Connected { reconnected: false },
                integrated,
                *subject,
                tenant.clone(),
            ),
            ApiKeyEvent::Replaced {
                subject,
                generation,
                ..
            } => (
                EventKind::KeyReplaced {
                    generation: *generation,
                },
                integrated,
                *subject,
                None,
            ),
            ApiKeyEvent::NeedsReplacement { subject, kind, .. } => (
                EventKind::KeyNeedsReplacement,
                kind.credential_kind(),
                *subject,
                None,
            ),
            ApiKeyEvent::Removed { subject, .. } => (
                EventKind::Disconnected {
                    revoked_at_pleo: false,
                },
                integrated,
                *subject,
                None,
            ),
            _ => return,
        };
        self.publish(kind, method, Some(subject), tenant);
    }
}

/// Delivers queued events: adds the tenant, then broadcasts and calls every sink (a panicking
/// sink is caught and logged).
async fn deliver(mut delivery: Delivery) {
    let mut tenants: HashMap<Subject, Option<TenantId>> = HashMap::new();
    while let Some(mut event) = delivery.queue.recv().await {
        if let Some(subject) = event.subject {
            match &event.tenant {
                Some(tenant) => {
                    tenants.insert(subject, Some(tenant.clone()));
                }
                None => {
                    if !tenants.contains_key(&subject) {
                        if tenants.len() >= TENANT_CACHE {
                            tenants.clear();
                        }
                        let link = delivery
                            .links
                            .tenant_for(&event.environment, &subject)
                            .await;
                        tenants.insert(subject, link.ok().flatten().map(|l| l.tenant));
                    }
                    event.tenant = tenants.get(&subject).cloned().flatten();
                }
            }
        }
        // No receiver is fine: nobody subscribed.
        let _ = delivery.broadcast.send(event.clone());
        for sink in &delivery.sinks {
            let called =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink.emit(&event)));
            if called.is_err() {
                tracing::error!(event = event.kind.as_str(), "an event sink panicked");
            }
        }
    }
}

/// The OAuth client's sink: the sink the builder was given (default `tracing`), then the hub.
#[cfg(feature = "oauth")]
pub(crate) struct OAuthBridge {
    pub(crate) first: pleo_auth_oauth::DynEventSink,
    pub(crate) hub: Arc<EventHub>,
}

#[cfg(feature = "oauth")]
impl fmt::Debug for OAuthBridge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthBridge")
            .field("first", &self.first)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "oauth")]
impl pleo_auth_oauth::EventSink for OAuthBridge {
    fn emit(&self, event: &OAuthEvent) {
        self.first.emit(event);
        self.hub.oauth(event);
    }
}

/// The API keys' sink: the hub.
#[cfg(feature = "apikey")]
pub(crate) struct ApiKeyBridge(pub(crate) Arc<EventHub>);

#[cfg(feature = "apikey")]
impl pleo_auth_apikey::ApiKeyEventSink for ApiKeyBridge {
    fn emit(&self, event: &ApiKeyEvent) {
        self.0.api_key(event);
    }
}
