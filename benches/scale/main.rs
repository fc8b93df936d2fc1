//! pleo-auth against its baselines, each ratio measured in the same run (`cargo xtask bench`).
//!
//! - **Cache hit** of `TokenManager::access_token()` on one core and on all cores, against an
//!   `ArcSwap` load (the floor), a `tokio::sync::Mutex<Option<Token>>` cache (what hand-written
//!   integrations do) and yup-oauth2 (its token URI pointed at the sandbox).
//! - **Herd at expiry**: 10,000 concurrent callers of an expired token: refreshes and p50/p99
//!   wait, against the mutex cache and yup-oauth2.
//! - **Request overhead**: `PleoClient` GET against a raw reqwest GET of the same endpoint.
//! - **Stores**: our `get` and compare-and-swap `put` against the raw client's operation
//!   (redis-rs, vaultrs, the AWS SDK, sqlx running the same statements on PostgreSQL), and the
//!   commands one Redis compare-and-swap costs.
//! - **Envelope encryption**: a read through `EncryptedStore` with a KMS data key (moto's KMS)
//!   from the cache, and with a cold cache (one `Decrypt` per read), against the same read
//!   without encryption, on PostgreSQL.
//! - **Keep-alive sweep**: `TokenManager::keep_alive` over 10,000 grants on PostgreSQL and Redis
//!   (1,000 on moto), against the per-grant reads it made before batch reads: store calls and
//!   wall time.
//!
//! The sandbox runs in-process on a runtime of its own; OpenBao, moto, Redis and PostgreSQL come from
//! `cargo xtask services up`. After criterion's output the binary prints a summary of ratios read
//! from this run's criterion estimates; `BENCHMARKS.md` records it.

mod cache_hit;
mod contenders;
mod envelope;
mod herd;
mod request;
mod stores;
mod summary;
mod sweep;

// Each scenario is a module of its own; `main` runs them in order.
use cache_hit::*;
use contenders::*;
use envelope::*;
use herd::*;
use request::*;
use stores::*;
use summary::*;
use sweep::*;

use std::collections::HashMap;
use std::future::Future;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use aws_sdk_secretsmanager::primitives::Blob;
use criterion::Criterion;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pleo_auth_core::testing::service_env;
use pleo_auth_core::{
    ClientSecret, DynClock, DynCredentialProvider, Environment, ManualClock, MemoryStore,
    OAuthGrant, Precondition, RecordStoreExt, SecretBytes, SecretStore, StoreKey, Subject,
    SystemClock, Version, random_urlsafe,
};
use pleo_auth_http::PleoClient;
use pleo_auth_http::transport::{TransportConfig, http_client};
use pleo_auth_oauth::{AuthorizeOptions, OAuthClient, OAuthConfig, TokenManager};
use pleo_auth_sandbox::{ClientRegistration, Sandbox, SandboxHandle, Stats, harness, seed};
use pleo_auth_stores::aws::AwsStore;
use pleo_auth_stores::encrypted::EncryptedStore;
use pleo_auth_stores::kms::AwsKmsKeyProvider;
use pleo_auth_stores::postgres::PostgresStore;
use pleo_auth_stores::redis::RedisStore;
use pleo_auth_stores::vault::VaultStore;
use tokio::runtime::Runtime;
use yup_oauth2::authenticator::Authenticator;
use yup_oauth2::authenticator_delegate::InstalledFlowDelegate;
use yup_oauth2::storage::TokenInfo;
use yup_oauth2::{
    ApplicationSecret, CustomHyperClientBuilder, InstalledFlowAuthenticator,
    InstalledFlowReturnMethod,
};

pub(crate) const CLIENT_ID: &str = "bench";
pub(crate) const CLIENT_SECRET: &str = "bench-client-secret";
pub(crate) const REDIRECT_URI: &str = "http://127.0.0.1/callback";
pub(crate) const SCOPE: &str = "users:read";
/// The sandbox's default access-token lifetime.
pub(crate) const ACCESS_TTL: Duration = Duration::from_secs(15 * 60);
/// How early the mutex cache refreshes (pleo-auth's default margin; yup-oauth2's is fixed at 1 min).
pub(crate) const MUTEX_MARGIN: Duration = Duration::from_secs(60);
pub(crate) const HERD: usize = 10_000;
pub(crate) const HERD_ROUNDS: usize = 3;
/// The name of the single-flight floor in the herd results.
pub(crate) const ONCE_CELL: &str = "floor: one inline refresh in a tokio OnceCell";

fn main() {
    let started = SystemTime::now();
    let mut criterion = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_default();
    let fixture = Fixture::start();

    let mut summary = Summary::default();
    if "cache_hit".contains(filter.as_str()) || filter.contains("cache_hit") {
        cache_hit(&mut criterion, &fixture, &mut summary);
    }
    if "request".contains(filter.as_str()) || filter.contains("request") {
        request_overhead(&mut criterion, &fixture, &mut summary);
    }
    if "store".contains(filter.as_str()) || filter.contains("store") {
        stores(&mut criterion, &mut summary);
    }
    if "envelope".contains(filter.as_str()) || filter.contains("envelope") {
        envelope(&mut criterion, &mut summary);
    }
    criterion.final_summary();
    if "herd".contains(filter.as_str()) || filter.contains("herd") {
        herd(&fixture, &mut summary);
    }
    if "sweep".contains(filter.as_str()) || filter.contains("sweep") {
        sweep(&fixture, &mut summary);
    }
    summary.print(started);
}
