//! A store of your own: pleo-auth keeps credentials in any backend that implements
//! [`SecretStore`] (get, put with a precondition, delete, list) and passes the conformance suite.
//!
//! This example stands in for a table in your own database,
//! `credentials(key TEXT PRIMARY KEY, value BYTEA, version BIGINT)`; each method shows the SQL it
//! would run. It runs the store and lease conformance suites against it, then builds a
//! [`PleoAuth`] on it.
//!
//! ```text
//! cargo run --example custom_store --features testing
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pleo_auth::{
    CoreError, CoreResult, DynSecretStore, Environment, PleoAuth, Precondition, SecretBytes,
    SecretStore, StoreKey, StoreLease, Version, Versioned, check_precondition, testing,
};

/// The name errors carry, so operators see which backend failed.
const BACKEND: &str = "credentials-table";

/// A `credentials` table: one row per key, with a version that every write increases.
#[derive(Debug, Default)]
struct CredentialsTable {
    rows: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    /// A sequence, so that a key deleted and written again never gets an old version back.
    sequence: u64,
    rows: BTreeMap<StoreKey, (Vec<u8>, u64)>,
}

impl CredentialsTable {
    fn lock(&self) -> CoreResult<std::sync::MutexGuard<'_, Table>> {
        self.rows
            .lock()
            .map_err(|_| CoreError::unavailable("the table lock is poisoned").with_backend(BACKEND))
    }
}

#[async_trait]
impl SecretStore for CredentialsTable {
    /// `SELECT value, version FROM credentials WHERE key = $1`
    async fn get(&self, key: &StoreKey) -> CoreResult<Option<Versioned>> {
        let table = self.lock()?;
        Ok(table.rows.get(key).map(|(value, version)| Versioned {
            value: SecretBytes::new(value.clone()),
            version: Version::from_u64(*version),
        }))
    }

    /// `INSERT ... ON CONFLICT DO NOTHING` for `Absent`, `UPDATE ... WHERE version = $v` for
    /// `Version`, an upsert for `None`; zero rows touched is a conflict.
    async fn put(
        &self,
        key: &StoreKey,
        value: SecretBytes,
        precondition: Precondition,
    ) -> CoreResult<Version> {
        let mut table = self.lock()?;
        let current = table
            .rows
            .get(key)
            .map(|(_, version)| Version::from_u64(*version));
        check_precondition(current.as_ref(), &precondition, BACKEND)?;
        table.sequence += 1;
        let version = table.sequence;
        table
            .rows
            .insert(key.clone(), (value.expose_secret().to_vec(), version));
        Ok(Version::from_u64(version))
    }

    /// `DELETE FROM credentials WHERE key = $1 [AND version = $2]`
    async fn delete(&self, key: &StoreKey, precondition: Precondition) -> CoreResult<()> {
        if precondition == Precondition::Absent {
            return Err(
                CoreError::invalid_input("a delete cannot require absence").with_backend(BACKEND)
            );
        }
        let mut table = self.lock()?;
        let current = table
            .rows
            .get(key)
            .map(|(_, version)| Version::from_u64(*version));
        check_precondition(current.as_ref(), &precondition, BACKEND)?;
        table.rows.remove(key);
        Ok(())
    }

    /// `SELECT key FROM credentials WHERE key LIKE $1 || '/%'` (below the prefix, not the prefix)
    async fn list(&self, prefix: &StoreKey) -> CoreResult<Vec<StoreKey>> {
        let table = self.lock()?;
        Ok(table
            .rows
            .keys()
            .filter(|key| key.starts_with(prefix) && *key != prefix)
            .cloned()
            .collect())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store: DynSecretStore = Arc::new(CredentialsTable::default());

    // The same checks pleo-auth runs against its own file, Vault, AWS and Redis stores: atomic
    // compare-and-swap, versions that never repeat, prefix listing, hostile keys, concurrency.
    testing::conformance(store.clone()).await;
    println!("store conformance: passed");
    // Any store that passes gives a lease across processes through compare-and-swap.
    testing::lease_conformance(Arc::new(StoreLease::new(store.clone()))).await;
    println!("lease conformance: passed");

    // Use it: every grant, key, pending authorization and tenant link lives in your table.
    let auth = PleoAuth::builder()
        .environment(Environment::staging())
        // The store says nothing about sharing, so it is taken to be shared between processes
        // and refreshes are coordinated with a `StoreLease` on it (as checked above).
        .store(store)
        .build()?;
    println!(
        "PleoAuth on the custom store: {} connections in {}",
        auth.connections().await?.len(),
        auth.environment().name()
    );
    Ok(())
}
