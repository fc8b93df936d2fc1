//! Memory per cached grant: a `TokenManager` loads 100,000 grants through its public API
//! (`access_token()` for each, from a `MemoryStore` holding 100,000 grant records), and a counting
//! global allocator reports the bytes that stay allocated. Goal: at most 1 KiB per grant.
//!
//! The store's own records are allocated before the first measurement, so only the manager's
//! cache is counted. Token strings have the sandbox's shape (`CANARY-at_` + 43 characters).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Instant, SystemTime};

use pleo_auth_core::{
    ClientSecret, Environment, EnvironmentName, MemoryStore, Precondition, RecordStoreExt, Subject,
    Timestamp,
};
use pleo_auth_oauth::{OAuthClient, OAuthConfig};
use support::{active_grant, company};

mod support;

const GRANTS: usize = 100_000;
const GOAL_BYTES: i64 = 1024;

/// Counts the bytes currently allocated.
struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: every method forwards to the system allocator with the caller's arguments; the counter
// is a static atomic, so counting neither allocates nor recurses.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> i64 {
    LIVE.load(Ordering::Relaxed)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let environment =
        Environment::custom("sandbox", "http://127.0.0.1:9/", "http://127.0.0.1:9/").unwrap();
    let config = OAuthConfig::builder()
        .environment(environment)
        .client_id("bench")
        .client_secret(ClientSecret::new("bench-client-secret"))
        .redirect_uri("http://127.0.0.1/callback")
        .scopes("users:read")
        .build()
        .unwrap();
    let store = Arc::new(MemoryStore::new());
    let now = Timestamp::from_system_time(SystemTime::now());
    let environment_name = EnvironmentName::new("sandbox").unwrap();
    for i in 0..GRANTS {
        let subject = company(i);
        let (key, record) = active_grant(&environment_name, subject, now);
        store
            .put_record(&key, &record, Precondition::Absent)
            .await
            .unwrap();
    }
    let manager = OAuthClient::builder(config, store.clone())
        .build()
        .unwrap()
        .token_manager();

    let subjects: Vec<Subject> = (0..GRANTS).map(company).collect();
    let before = live();
    let started = Instant::now();
    let mut per_block = Vec::new();
    let mut block_started = Instant::now();
    for (i, subject) in subjects.iter().enumerate() {
        let token = manager.access_token(subject).await.unwrap();
        assert_eq!(token.generation(), 1);
        if (i + 1) % (GRANTS / 10) == 0 {
            per_block.push(block_started.elapsed());
            block_started = Instant::now();
        }
    }
    let loaded_in = started.elapsed();
    let after = live();
    // Everything served from the cache now: no store reads, no new cells.
    let hits_started = Instant::now();
    for subject in &subjects {
        std::hint::black_box(manager.access_token(subject).await.unwrap());
    }
    let hits = hits_started.elapsed();
    let per_grant = (after - before) / GRANTS as i64;
    println!("memory_per_cached_grant: {GRANTS} grants cached");
    println!(
        "  bytes allocated by the cache: {} ({} per grant; goal <= {GOAL_BYTES}: {})",
        after - before,
        per_grant,
        if per_grant <= GOAL_BYTES {
            "met"
        } else {
            "NOT MET"
        }
    );
    println!(
        "  loading them (one store read each): {loaded_in:.2?}; per 10,000 grants: {:?}",
        per_block
            .iter()
            .map(|d| format!("{:.0?}", d))
            .collect::<Vec<_>>()
    );
    println!(
        "  a cache hit for each afterwards: {hits:.2?} ({:.0} ns per grant)",
        hits.as_nanos() as f64 / GRANTS as f64
    );
    drop(manager);
    drop(store);
}
