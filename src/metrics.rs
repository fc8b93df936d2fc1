//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`): install
//! any exporter's recorder (Prometheus, StatsD, OpenTelemetry, ...) and these are collected.
//!
//! No label carries a company, tenant, token or key: labels take a few fixed values each, so
//! the number of series stays small and nothing about a customer leaves the process.
//!
//! | name | type | unit | labels |
//! |---|---|---|---|
//! | `pleo_auth_refreshes_total` | counter | refreshes | `outcome`: `success`, `failed`, `reauthorization_required` |
//! | `pleo_auth_refresh_duration_seconds` | histogram | seconds | `outcome`: `success`, `error` (one token-endpoint request) |
//! | `pleo_auth_reauthorizations_needed_total` | counter | grants | |
//! | `pleo_auth_keys_needing_replacement_total` | counter | keys | `method`: `integrated_api_key`, `standalone_api_key` |
//! | `pleo_auth_events_total` | counter | events | `event` ([`EventKind::as_str`](crate::EventKind::as_str)), `method` |
//! | `pleo_auth_events_lagged_total` | counter | events | |
//! | `pleo_auth_store_operations_total` | counter | operations | `backend`, `op`, `outcome`: `ok`, `conflict`, `error` |
//! | `pleo_auth_store_duration_seconds` | histogram | seconds | `backend`, `op` |
//! | `pleo_auth_leases_total` | counter | acquisitions, renewals | `outcome`: `acquired`, `busy`, `renewed`, `lost`, `error` |
//! | `pleo_auth_requests_total` | counter | API requests | `status_class`: `2xx` ... `5xx`, `error` |
//! | `pleo_auth_request_duration_seconds` | histogram | seconds | `status_class` |
//! | `pleo_auth_grants` | gauge | grants | `state` (`active`, `needs_reauthorization`, ..., `unreadable`), set by each keep-alive sweep |
//! | `pleo_auth_keep_alive_failures_total` | counter | records | `reason`: `grant` (a refresh or revocation failed), `unreadable` |
//!
//! `backend` is the store's type (`file`, `vault`, `aws`, `redis`, `postgres`, `memory`,
//! `encrypted`, or `custom` for a store of your own); `op` is `get`, `get_many`,
//! `put`, `delete`, `list` or `list_page`. A lease that is `lost` could not be renewed: it
//! expired, or another holder took it over after it expired (stolen).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use metrics::{counter, histogram};
use pleo_auth_core::{
    CredentialKind, DynLease, DynSecretStore, Lease, LeaseGuard, LeaseRelease, ListPage,
    Precondition, Result, SecretBytes, SecretStore, Sharing, StoreKey, Version, Versioned,
    is_conflict,
};

/// Refreshes by outcome.
pub const REFRESHES: &str = "pleo_auth_refreshes_total";
/// Token-endpoint latency (also recorded by `pleo-auth-oauth` with its `metrics` feature).
pub const REFRESH_DURATION: &str = "pleo_auth_refresh_duration_seconds";
/// Grants Pleo refused.
pub const REAUTHORIZATIONS_NEEDED: &str = "pleo_auth_reauthorizations_needed_total";
/// Keys Pleo rejected.
pub const KEYS_NEEDING_REPLACEMENT: &str = "pleo_auth_keys_needing_replacement_total";
/// Events by kind and method.
pub const EVENTS: &str = "pleo_auth_events_total";
/// Events dropped because delivery fell behind.
pub const EVENTS_LAGGED: &str = "pleo_auth_events_lagged_total";
/// Store operations by backend, operation and outcome.
pub const STORE_OPERATIONS: &str = "pleo_auth_store_operations_total";
/// Store latency by backend and operation.
pub const STORE_DURATION: &str = "pleo_auth_store_duration_seconds";
/// Lease acquisitions and renewals by outcome.
pub const LEASES: &str = "pleo_auth_leases_total";
/// API requests by status class (recorded by `pleo-auth-http`).
pub const REQUESTS: &str = "pleo_auth_requests_total";
/// API request latency by status class (recorded by `pleo-auth-http`).
pub const REQUEST_DURATION: &str = "pleo_auth_request_duration_seconds";
/// Grants by state, as the last keep-alive sweep found them.
pub const GRANTS: &str = "pleo_auth_grants";
/// Records that failed in keep-alive sweeps.
pub const KEEP_ALIVE_FAILURES: &str = "pleo_auth_keep_alive_failures_total";

/// Registers the unit and description of every metric with the installed recorder (exporters
/// show them as `# HELP` lines). Call it once after installing the recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(REFRESHES, Unit::Count, "OAuth refreshes by outcome");
    describe_histogram!(
        REFRESH_DURATION,
        Unit::Seconds,
        "token-endpoint request latency"
    );
    describe_counter!(REAUTHORIZATIONS_NEEDED, Unit::Count, "grants Pleo refused");
    describe_counter!(
        KEYS_NEEDING_REPLACEMENT,
        Unit::Count,
        "API keys Pleo rejected"
    );
    describe_counter!(EVENTS, Unit::Count, "credential events by kind and method");
    describe_counter!(
        EVENTS_LAGGED,
        Unit::Count,
        "events dropped: delivery fell behind"
    );
    describe_counter!(STORE_OPERATIONS, Unit::Count, "secret store operations");
    describe_histogram!(
        STORE_DURATION,
        Unit::Seconds,
        "secret store operation latency"
    );
    describe_counter!(LEASES, Unit::Count, "lease acquisitions and renewals");
    describe_counter!(REQUESTS, Unit::Count, "Pleo API requests by status class");
    describe_histogram!(REQUEST_DURATION, Unit::Seconds, "Pleo API request latency");
    describe_gauge!(
        GRANTS,
        Unit::Count,
        "OAuth grants by state at the last sweep"
    );
    describe_counter!(
        KEEP_ALIVE_FAILURES,
        Unit::Count,
        "records that failed in keep-alive"
    );
}

/// Counts one event (called by the event hub, inline).
pub(crate) fn event(kind: &'static str, method: CredentialKind) {
    counter!(EVENTS, "event" => kind, "method" => method.as_str()).increment(1);
    match kind {
        "refreshed" => counter!(REFRESHES, "outcome" => "success").increment(1),
        "refresh_failed" => counter!(REFRESHES, "outcome" => "failed").increment(1),
        "needs_reauthorization" => {
            counter!(REFRESHES, "outcome" => "reauthorization_required").increment(1);
            counter!(REAUTHORIZATIONS_NEEDED).increment(1);
        }
        "key_needs_replacement" => {
            counter!(KEYS_NEEDING_REPLACEMENT, "method" => method.as_str()).increment(1);
        }
        _ => {}
    }
}

/// Counts one event dropped because delivery fell behind.
pub(crate) fn event_lagged() {
    counter!(EVENTS_LAGGED).increment(1);
}

/// Sets the grants-by-state gauges and counts the failed records of one sweep.
#[cfg(feature = "oauth")]
pub(crate) fn sweep(report: &pleo_auth_oauth::KeepAliveReport) {
    // Every state a stored grant can be in, so a state that emptied reads 0.
    for state in [
        "active",
        "needs_reauthorization",
        "revocation_pending",
        "revoked",
        "unreadable",
    ] {
        let count = report.states.get(state).copied().unwrap_or(0);
        metrics::gauge!(GRANTS, "state" => state).set(count as f64);
    }
    counter!(KEEP_ALIVE_FAILURES, "reason" => "grant").increment(report.failed.len() as u64);
    counter!(KEEP_ALIVE_FAILURES, "reason" => "unreadable")
        .increment(report.unreadable.len() as u64);
}

/// The `backend` label of a store: its type name without `Store`, lowercase (`FileStore` ->
/// `file`), from its `Debug` output's leading identifier, which never holds a secret.
fn backend_label(store: &dyn SecretStore) -> &'static str {
    let debug = format!("{store:?}");
    let name: String = debug
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(32)
        .collect();
    let name = name
        .strip_suffix("Store")
        .unwrap_or(&name)
        .to_ascii_lowercase();
    match name.as_str() {
        "file" => "file",
        "vault" => "vault",
        "aws" | "secretsmanager" => "aws",
        "redis" => "redis",
        "postgres" => "postgres",
        "memory" => "memory",
        "encrypted" => "encrypted",
        _ => "custom",
    }
}

/// A store that counts and times every operation of the store it wraps.
pub(crate) struct MeteredStore {
    inner: DynSecretStore,
    backend: &'static str,
}

impl MeteredStore {
    pub(crate) fn wrap(inner: DynSecretStore) -> DynSecretStore {
        let backend = backend_label(inner.as_ref());
        Arc::new(Self { inner, backend })
    }

    fn record<T>(&self, op: &'static str, started: Instant, result: &Result<T>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) if is_conflict(e) => "conflict",
            Err(_) => "error",
        };
        let backend = self.backend;
        counter!(STORE_OPERATIONS, "backend" => backend, "op" => op, "outcome" => outcome)
            .increment(1);
        histogram!(STORE_DURATION, "backend" => backend, "op" => op)
            .record(started.elapsed().as_secs_f64());
    }
}

impl fmt::Debug for MeteredStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The wrapped store's own `Debug`, so the backend reads as before.
        self.inner.fmt(f)
    }
}

#[async_trait]
impl SecretStore for MeteredStore {
    async fn get(&self, key: &StoreKey) -> Result<Option<Versioned>> {
        let started = Instant::now();
        let result = self.inner.get(key).await;
        self.record("get", started, &result);
        result
    }

    async fn put(
        &self,
        key: &StoreKey,
        value: SecretBytes,
        precondition: Precondition,
    ) -> Result<Version> {
        let started = Instant::now();
        let result = self.inner.put(key, value, precondition).await;
        self.record("put", started, &result);
        result
    }

    async fn delete(&self, key: &StoreKey, precondition: Precondition) -> Result<()> {
        let started = Instant::now();
        let result = self.inner.delete(key, precondition).await;
        self.record("delete", started, &result);
        result
    }

    async fn list(&self, prefix: &StoreKey) -> Result<Vec<StoreKey>> {
        let started = Instant::now();
        let result = self.inner.list(prefix).await;
        self.record("list", started, &result);
        result
    }

    async fn get_many(&self, keys: &[StoreKey]) -> Result<Vec<Option<Versioned>>> {
        let started = Instant::now();
        let result = self.inner.get_many(keys).await;
        self.record("get_many", started, &result);
        result
    }

    async fn list_page(
        &self,
        prefix: &StoreKey,
        after: Option<&StoreKey>,
        limit: usize,
    ) -> Result<ListPage> {
        let started = Instant::now();
        let result = self.inner.list_page(prefix, after, limit).await;
        self.record("list_page", started, &result);
        result
    }

    fn sharing(&self) -> Sharing {
        self.inner.sharing()
    }

    fn native_lease(&self) -> Option<DynLease> {
        self.inner.native_lease()
    }
}

/// A lease that counts acquisitions and renewals of the lease it wraps.
#[derive(Debug)]
pub(crate) struct MeteredLease {
    inner: DynLease,
}

impl MeteredLease {
    pub(crate) fn wrap(inner: DynLease) -> DynLease {
        Arc::new(Self { inner })
    }
}

fn lease_outcome(outcome: &'static str) {
    counter!(LEASES, "outcome" => outcome).increment(1);
}

#[async_trait]
impl Lease for MeteredLease {
    async fn acquire(&self, key: &StoreKey, ttl: Duration) -> Result<Option<LeaseGuard>> {
        match self.inner.acquire(key, ttl).await {
            Ok(Some(guard)) => {
                lease_outcome("acquired");
                let (key, fencing) = (guard.key().clone(), guard.fencing());
                Ok(Some(LeaseGuard::new(key, fencing, MeteredRelease(guard))))
            }
            Ok(None) => {
                lease_outcome("busy");
                Ok(None)
            }
            Err(e) => {
                lease_outcome("error");
                Err(e)
            }
        }
    }

    fn sharing(&self) -> Sharing {
        self.inner.sharing()
    }
}

/// The wrapped lease's guard, counting renewals.
struct MeteredRelease(LeaseGuard);

#[async_trait]
impl LeaseRelease for MeteredRelease {
    async fn release(&self) -> Result<()> {
        self.0.release().await
    }

    async fn renew(&self, ttl: Duration) -> Result<()> {
        let result = self.0.renew(ttl).await;
        lease_outcome(match &result {
            Ok(()) => "renewed",
            Err(e) if is_conflict(e) => "lost",
            Err(_) => "error",
        });
        result
    }
}
