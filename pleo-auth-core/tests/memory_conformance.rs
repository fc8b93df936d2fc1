//! The conformance suites against the in-process implementations.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pleo_auth_core::{
    Error, InProcessLease, MemoryStore, Precondition, Result, SecretBytes, SecretStore, StoreKey,
    StoreLease, Version, Versioned, check_precondition, testing,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_passes_the_store_suite() {
    testing::conformance(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_process_lease_passes_the_lease_suite() {
    testing::lease_conformance(Arc::new(InProcessLease::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_lease_on_memory_passes_the_lease_suite() {
    let store = Arc::new(MemoryStore::new());
    testing::lease_conformance(Arc::new(StoreLease::new(store))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_passes_the_tenant_link_suite() {
    testing::tenant_links_conformance(Arc::new(MemoryStore::new()), 8, 10).await;
}

/// The store suite catches a store that numbers a key made again after a delete from the start:
/// a writer still holding a version from before the delete could overwrite the new record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[should_panic(expected = "a version from before the delete")]
async fn the_store_suite_refuses_versions_that_restart_after_a_delete() {
    testing::conformance(Arc::new(VersionsRestartAfterDelete::default())).await;
}

/// A broken store: each key counts its versions from 1, again after a delete.
#[derive(Debug, Default)]
struct VersionsRestartAfterDelete(Mutex<BTreeMap<StoreKey, (SecretBytes, u64)>>);

impl VersionsRestartAfterDelete {
    fn current(&self, key: &StoreKey) -> Option<u64> {
        self.0.lock().unwrap().get(key).map(|(_, n)| *n)
    }
}

#[async_trait]
impl SecretStore for VersionsRestartAfterDelete {
    async fn get(&self, key: &StoreKey) -> Result<Option<Versioned>> {
        Ok(self.0.lock().unwrap().get(key).map(|(value, n)| Versioned {
            value: value.clone(),
            version: Version::from_u64(*n),
        }))
    }

    async fn put(
        &self,
        key: &StoreKey,
        value: SecretBytes,
        precondition: Precondition,
    ) -> Result<Version> {
        let mut map = self.0.lock().unwrap();
        let current = map.get(key).map(|(_, n)| *n);
        check_precondition(
            current.map(Version::from_u64).as_ref(),
            &precondition,
            "broken",
        )?;
        let next = current.unwrap_or(0) + 1;
        map.insert(key.clone(), (value, next));
        Ok(Version::from_u64(next))
    }

    async fn delete(&self, key: &StoreKey, precondition: Precondition) -> Result<()> {
        if precondition == Precondition::Absent {
            return Err(Error::invalid_input("delete cannot require absence"));
        }
        let current = self.current(key).map(Version::from_u64);
        check_precondition(current.as_ref(), &precondition, "broken")?;
        self.0.lock().unwrap().remove(key);
        Ok(())
    }

    async fn list(&self, prefix: &StoreKey) -> Result<Vec<StoreKey>> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with(prefix) && *k != prefix)
            .cloned()
            .collect())
    }
}
