//! The conformance suites against the in-process implementations.

use std::sync::Arc;

use pleo_auth_core::{InProcessLease, MemoryStore, StoreLease, testing};

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
