//! Conformance suites that every [`SecretStore`] and [`Lease`](crate::Lease) must pass, ours or a user's, and
//! helpers for tests that need live services. Enabled by the `testing` feature.
//!
//! ```no_run
//! use std::sync::Arc;
//! use pleo_auth_core::{MemoryStore, testing};
//!
//! # async fn run() {
//! testing::conformance(Arc::new(MemoryStore::new())).await;
//! # }
//! ```
//!
//! Each suite uses a fresh random prefix, so it can run against a shared live server. The
//! suites panic with a message naming the failed check.

mod api_url;
mod fault_proxy;
mod faulty_store;
mod leak_scan;
mod tenant;
mod trace_capture;
mod values;

pub use api_url::check_api_url;
pub use fault_proxy::{FaultProxy, ProxyFault};
pub use faulty_store::{FaultyStore, StoreCalls};
pub use leak_scan::{Leak, LeakEncoding, MIN_SECRET_LEN, assert_no_leak, find_leak};
pub use tenant::tenant_links_conformance;
pub use trace_capture::{TraceCapture, assert_marker_absent, error_chain};
pub use values::{bytes, key};

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::ErrorKind;
use crate::key::StoreKey;
use crate::lease::DynLease;
use crate::secret::{SecretBytes, random_urlsafe};
use crate::store::{DynSecretStore, Precondition, SecretStore, Version};

async fn read(store: &DynSecretStore, key: &StoreKey) -> Option<(Vec<u8>, Version)> {
    store
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("get {key} failed: {e:?}"))
        .map(|v| (v.value.expose_secret().to_vec(), v.version))
}

/// A fresh prefix for one run of a suite.
pub fn unique_prefix(suite: &str) -> StoreKey {
    StoreKey::from_parts(["conformance", suite, &random_urlsafe(9)]).expect("valid prefix")
}

/// Runs every store check against `store`.
pub async fn conformance(store: DynSecretStore) {
    let root = unique_prefix("store");
    round_trip_and_versions(&store, &root).await;
    preconditions(&store, &root).await;
    delete_rules(&store, &root).await;
    list_isolation(&store, &root).await;
    batch_reads(&store, &root).await;
    race_compare_and_swap(&store, &root.child("cas-race").unwrap(), 16, 3).await;
    large_and_binary_values(&store, &root).await;
    hostile_key_parts(&store, &root).await;
}

async fn round_trip_and_versions(store: &DynSecretStore, root: &StoreKey) {
    let key = root.child("round-trip").unwrap();
    assert!(
        read(store, &key).await.is_none(),
        "a missing key reads as None"
    );
    let mut seen = HashSet::new();
    let mut version = store
        .put(&key, bytes("v1"), Precondition::Absent)
        .await
        .expect("create with Absent");
    seen.insert(version.clone());
    for i in 2..=5 {
        let value = format!("v{i}");
        version = store
            .put(&key, bytes(&value), Precondition::Version(version))
            .await
            .expect("compare-and-swap on the current version");
        assert!(
            seen.insert(version.clone()),
            "every put returns a new version"
        );
        let (got, got_version) = read(store, &key).await.expect("value present");
        assert_eq!(got, value.as_bytes(), "get returns the last value");
        assert_eq!(got_version, version, "get returns the last version");
    }
    let unconditional = store
        .put(&key, bytes("v6"), Precondition::None)
        .await
        .expect("unconditional put");
    assert!(
        seen.insert(unconditional),
        "unconditional put returns a new version"
    );
}

async fn preconditions(store: &DynSecretStore, root: &StoreKey) {
    let key = root.child("preconditions").unwrap();
    let v1 = store
        .put(&key, bytes("a"), Precondition::Absent)
        .await
        .unwrap();
    let err = store
        .put(&key, bytes("b"), Precondition::Absent)
        .await
        .expect_err("Absent on an existing key must fail");
    assert_eq!(
        err.kind(),
        ErrorKind::Conflict,
        "Absent conflict kind: {err:?}"
    );
    let v2 = store
        .put(&key, bytes("c"), Precondition::Version(v1.clone()))
        .await
        .unwrap();
    let err = store
        .put(&key, bytes("d"), Precondition::Version(v1))
        .await
        .expect_err("a stale version must fail");
    assert_eq!(
        err.kind(),
        ErrorKind::Conflict,
        "stale version kind: {err:?}"
    );
    assert_eq!(
        read(store, &key).await.unwrap().0,
        b"c",
        "a failed put changes nothing"
    );
    let missing = root.child("preconditions-missing").unwrap();
    let err = store
        .put(&missing, bytes("e"), Precondition::Version(v2))
        .await
        .expect_err("a version precondition on a missing key must fail");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(
        read(store, &missing).await.is_none(),
        "the failed put created nothing"
    );
}

async fn delete_rules(store: &DynSecretStore, root: &StoreKey) {
    let key = root.child("delete").unwrap();
    let v1 = store
        .put(&key, bytes("a"), Precondition::Absent)
        .await
        .unwrap();
    let v2 = store
        .put(&key, bytes("b"), Precondition::Version(v1.clone()))
        .await
        .unwrap();
    let err = store
        .delete(&key, Precondition::Version(v1.clone()))
        .await
        .expect_err("delete with a stale version must fail");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let err = store
        .delete(&key, Precondition::Absent)
        .await
        .expect_err("delete cannot require absence");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    store
        .delete(&key, Precondition::Version(v2.clone()))
        .await
        .expect("delete with the current version");
    assert!(
        read(store, &key).await.is_none(),
        "deleted key reads as None"
    );
    store
        .delete(&key, Precondition::None)
        .await
        .expect("unconditional delete of a missing key succeeds");
    let err = store
        .delete(&key, Precondition::Version(v2.clone()))
        .await
        .expect_err("delete with a version of a missing key must fail");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let again = store
        .put(&key, bytes("c"), Precondition::Absent)
        .await
        .expect("a deleted key can be created again");
    assert_eq!(
        read(store, &key).await.unwrap(),
        (b"c".to_vec(), again.clone())
    );
    // Versions are never reused, not even across a delete: a writer still holding a version
    // from before the delete must not overwrite the record made after it.
    assert_ne!(again, v1, "a version from before the delete is not reused");
    assert_ne!(again, v2, "a version from before the delete is not reused");
    for stale in [v1, v2] {
        let err = store
            .put(&key, bytes("stale"), Precondition::Version(stale))
            .await
            .expect_err("a version from before the delete never matches");
        assert_eq!(err.kind(), ErrorKind::Conflict);
    }
    assert_eq!(read(store, &key).await.unwrap(), (b"c".to_vec(), again));
}

async fn list_isolation(store: &DynSecretStore, root: &StoreKey) {
    let base = root.child("list").unwrap();
    let a = base.child("a").unwrap();
    let a_b = a.child("b").unwrap();
    let a_b_c = a_b.child("c").unwrap();
    let ab = base.child("ab").unwrap();
    let other = root.child("list-other").unwrap().child("a").unwrap();
    for key in [&a, &a_b, &a_b_c, &ab, &other] {
        store
            .put(key, bytes("x"), Precondition::None)
            .await
            .unwrap();
    }
    let sorted = |mut v: Vec<StoreKey>| {
        v.sort();
        v
    };
    let under_a = sorted(store.list(&a).await.expect("list"));
    assert_eq!(under_a, sorted(vec![a_b.clone(), a_b_c.clone()]), "list(a)");
    let under_base = sorted(store.list(&base).await.expect("list"));
    assert_eq!(
        under_base,
        sorted(vec![a.clone(), a_b.clone(), a_b_c.clone(), ab.clone()]),
        "list(base) holds every key below it and nothing else"
    );
    let empty = base.child("nothing-here").unwrap();
    assert!(
        store.list(&empty).await.unwrap().is_empty(),
        "list of an empty prefix"
    );
}

/// `get_many` answers what `get` answers, in the order asked; `list_page` pages through what
/// `list` returns.
async fn batch_reads(store: &DynSecretStore, root: &StoreKey) {
    let base = root.child("batch").unwrap();
    let mut written = Vec::new();
    for i in 0..5 {
        let key = base.child(&format!("k{i}")).unwrap();
        let version = store
            .put(&key, bytes(&format!("batch-{i}")), Precondition::None)
            .await
            .expect("put");
        written.push((key, version));
    }
    let nested = base.child("k1").unwrap().child("inner").unwrap();
    store
        .put(&nested, bytes("nested"), Precondition::None)
        .await
        .expect("put");
    let missing = base.child("missing").unwrap();
    let asked = vec![
        written[3].0.clone(),
        missing.clone(),
        written[0].0.clone(),
        written[3].0.clone(),
        nested.clone(),
    ];
    let got = store.get_many(&asked).await.expect("get_many");
    assert_eq!(got.len(), asked.len(), "get_many answers every key asked");
    for (key, answer) in asked.iter().zip(&got) {
        let single = read(store, key).await;
        let batch = answer
            .as_ref()
            .map(|v| (v.value.expose_secret().to_vec(), v.version.clone()));
        assert_eq!(batch, single, "get_many answers what get answers for {key}");
    }
    assert!(got[1].is_none(), "a missing key reads as None in a batch");
    assert_eq!(got[2].as_ref().unwrap().version, written[0].1);
    assert!(
        store.get_many(&[]).await.expect("empty batch").is_empty(),
        "an empty batch answers nothing"
    );

    let mut all = store.list(&base).await.expect("list");
    all.sort();
    for limit in [1, 2, 4, 100] {
        let mut paged = Vec::new();
        let mut after: Option<StoreKey> = None;
        let mut pages = 0;
        loop {
            let page = store
                .list_page(&base, after.as_ref(), limit)
                .await
                .expect("list_page");
            pages += 1;
            assert!(
                page.keys.len() <= limit,
                "a page holds at most `limit` keys"
            );
            assert!(
                page.keys.windows(2).all(|w| w[0] < w[1]),
                "a page is in ascending order"
            );
            paged.extend(page.keys);
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
            assert!(pages <= all.len() + 1, "paging ends");
        }
        assert_eq!(
            paged, all,
            "pages of {limit} hold exactly what list returns"
        );
    }
    let err = store
        .list_page(&base, None, 0)
        .await
        .expect_err("a page of no keys is refused");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

/// Runs each store operation on `key` with values that contain the canary `CANARY`: a create,
/// a compare-and-swap put, a stale one (which must be refused with `Conflict`), a get, a list
/// below `key` and a delete by version. For tests that capture the logs (see [`TraceCapture`])
/// and then check that no value reached them; returns with `key` deleted.
pub async fn canary_operations(store: &dyn SecretStore, key: &StoreKey) {
    let v1 = store
        .put(key, bytes("CANARY-value-1"), Precondition::Absent)
        .await
        .expect("create");
    let v2 = store
        .put(
            key,
            bytes("CANARY-value-2"),
            Precondition::Version(v1.clone()),
        )
        .await
        .expect("compare-and-swap put");
    let stale = store
        .put(key, bytes("CANARY-value-3"), Precondition::Version(v1))
        .await
        .expect_err("a stale put is refused");
    assert_eq!(stale.kind(), ErrorKind::Conflict, "{stale:?}");
    assert!(store.get(key).await.expect("get").is_some());
    store.list(key).await.expect("list");
    store
        .delete(key, Precondition::Version(v2))
        .await
        .expect("delete");
}

/// `writers` tasks race a compare-and-swap on `key`, `rounds` times: exactly one wins each
/// round, the losers see `Conflict`, and the winner's value and version are what `get` returns.
pub async fn race_compare_and_swap(
    store: &DynSecretStore,
    key: &StoreKey,
    writers: usize,
    rounds: usize,
) {
    let mut version = store
        .put(key, bytes("0"), Precondition::None)
        .await
        .expect("initial put");
    for round in 1..=rounds {
        let mut tasks = Vec::new();
        for writer in 0..writers {
            let store = store.clone();
            let key = key.clone();
            let version = version.clone();
            tasks.push(tokio::spawn(async move {
                let value = format!("round{round}-writer{writer}");
                let result = store
                    .put(&key, bytes(&value), Precondition::Version(version))
                    .await;
                (value, result)
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            let (value, result) = task.await.expect("writer task");
            match result {
                Ok(v) => winners.push((value, v)),
                Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "losers see Conflict: {e:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "exactly one writer wins round {round}");
        let (value, new_version) = winners.pop().unwrap();
        let (stored, stored_version) = read(store, key).await.unwrap();
        assert_eq!(stored, value.as_bytes(), "the winner's value is stored");
        assert_eq!(stored_version, new_version);
        version = new_version;
    }
}

async fn large_and_binary_values(store: &DynSecretStore, root: &StoreKey) {
    let large: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(31) % 251) as u8)
        .collect();
    let key = root.child("large").unwrap();
    store
        .put(&key, SecretBytes::new(large.clone()), Precondition::None)
        .await
        .expect("64 KiB value");
    assert_eq!(
        read(store, &key).await.unwrap().0,
        large,
        "64 KiB round trip"
    );

    let binary: Vec<u8> = (0..=255u8).chain([0, 0, b'\n', 0xff]).collect();
    let key = root.child("binary").unwrap();
    store
        .put(&key, SecretBytes::new(binary.clone()), Precondition::None)
        .await
        .expect("binary value");
    assert_eq!(
        read(store, &key).await.unwrap().0,
        binary,
        "binary round trip"
    );
}

async fn hostile_key_parts(store: &DynSecretStore, root: &StoreKey) {
    let base = root.child("hostile").unwrap();
    let long = "L".repeat(1000);
    let parts = [
        "..",
        ".",
        "a/b",
        "a",
        "b",
        "%2F",
        "a%2Fb",
        "a:b",
        "a\0b",
        "ünïcødé",
        "+",
        "%",
        &long,
    ];
    let mut keys = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let key = base.child(part).unwrap();
        store
            .put(&key, bytes(&format!("value-{i}")), Precondition::None)
            .await
            .unwrap_or_else(|e| panic!("put hostile part {part:?}: {e:?}"));
        keys.push(key);
    }
    for (i, key) in keys.iter().enumerate() {
        let (got, _) = read(store, key).await.expect("hostile key present");
        assert_eq!(
            got,
            format!("value-{i}").as_bytes(),
            "no cross-talk for {:?}",
            parts[i]
        );
    }
    let mut listed = store.list(&base).await.unwrap();
    listed.sort();
    keys.sort();
    assert_eq!(listed, keys, "hostile keys list exactly under their prefix");
}

/// Runs every lease check against `lease`.
pub async fn lease_conformance(lease: DynLease) {
    let root = unique_prefix("lease");
    let key = root.child("exclusive").unwrap();
    let ttl = Duration::from_secs(30);

    let first = lease
        .acquire(&key, ttl)
        .await
        .expect("acquire")
        .expect("a free lease is granted");
    assert!(
        lease.acquire(&key, ttl).await.expect("acquire").is_none(),
        "a held lease is not granted again"
    );
    let f1 = first.fencing();
    first.release().await.expect("release");
    let second = lease
        .acquire(&key, ttl)
        .await
        .expect("acquire")
        .expect("a released lease is granted");
    assert!(second.fencing() > f1, "fencing numbers increase");
    let f2 = second.fencing();
    second.release().await.expect("release");

    let contended = root.child("contended").unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let lease = lease.clone();
        let key = contended.clone();
        tasks.push(tokio::spawn(async move { lease.acquire(&key, ttl).await }));
    }
    let mut holders = Vec::new();
    for task in tasks {
        if let Some(guard) = task.await.expect("contender task").expect("acquire") {
            holders.push(guard);
        }
    }
    assert_eq!(
        holders.len(),
        1,
        "exactly one of 16 contenders holds the lease"
    );
    holders.pop().unwrap().release().await.expect("release");

    let short = Duration::from_millis(400);
    let expiring = lease
        .acquire(&key, short)
        .await
        .expect("acquire")
        .expect("granted");
    let f3 = expiring.fencing();
    assert!(f3 > f2, "fencing numbers increase");
    // Simulate a holder that stops without releasing: the guard is never dropped.
    std::mem::forget(expiring);
    assert!(
        lease.acquire(&key, ttl).await.expect("acquire").is_none(),
        "held until expiry"
    );
    tokio::time::sleep(short + Duration::from_millis(400)).await;
    let after = lease
        .acquire(&key, ttl)
        .await
        .expect("acquire")
        .expect("an expired lease is granted to the next holder");
    assert!(
        after.fencing() > f3,
        "the next holder gets a larger fencing number"
    );
    after.release().await.expect("release");

    lease_renewal(&lease, &root).await;
}

/// Renewal: it keeps a lease past its first TTL, and fails with `Conflict` once the holder no
/// longer holds the lease (expired, taken over, or released).
async fn lease_renewal(lease: &DynLease, root: &StoreKey) {
    let ttl = Duration::from_secs(30);
    let short = Duration::from_millis(400);
    let acquire = |key: StoreKey, ttl: Duration| {
        let lease = lease.clone();
        async move { lease.acquire(&key, ttl).await.expect("acquire") }
    };

    let key = root.child("renewed").unwrap();
    let first_ttl = Duration::from_secs(1);
    let held = acquire(key.clone(), first_ttl).await.expect("granted");
    let fencing = held.fencing();
    tokio::time::sleep(Duration::from_millis(100)).await;
    held.renew(Duration::from_secs(4))
        .await
        .expect("the holder renews its lease");
    assert_eq!(held.fencing(), fencing, "renewal keeps the fencing number");
    tokio::time::sleep(first_ttl + Duration::from_millis(300)).await;
    assert!(
        acquire(key.clone(), ttl).await.is_none(),
        "a renewed lease is held past its first ttl"
    );
    held.renew(short).await.expect("renewed again");
    held.release().await.expect("release");
    let next = acquire(key.clone(), ttl)
        .await
        .expect("a released lease is granted");
    assert!(next.fencing() > fencing, "fencing numbers increase");
    next.release().await.expect("release");

    let key = root.child("lapsed").unwrap();
    let lapsed = acquire(key.clone(), short).await.expect("granted");
    tokio::time::sleep(short + Duration::from_millis(400)).await;
    let err = lapsed
        .renew(ttl)
        .await
        .expect_err("an expired lease is not renewed");
    assert_eq!(err.kind(), ErrorKind::Conflict, "expired: {err:?}");
    let taken = acquire(key.clone(), ttl)
        .await
        .expect("an expired lease is granted to the next holder");
    let err = lapsed
        .renew(ttl)
        .await
        .expect_err("a lease taken over is not renewed by its old holder");
    assert_eq!(err.kind(), ErrorKind::Conflict, "taken over: {err:?}");
    lapsed.release().await.expect("release of a lost lease");
    assert!(
        acquire(key.clone(), ttl).await.is_none(),
        "the old holder neither renewed nor released its successor's lease"
    );
    taken.renew(ttl).await.expect("the new holder renews");
    taken.release().await.expect("release");
    let err = taken
        .renew(ttl)
        .await
        .expect_err("a released lease is not renewed");
    assert_eq!(err.kind(), ErrorKind::Conflict, "released: {err:?}");
    let again = acquire(key, ttl)
        .await
        .expect("a renewal after release did not take the lease back");
    again.release().await.expect("release");
}

/// The environment named `name` whose authorization server and API are both the server at
/// `base` (a sandbox on loopback, or a proxy in front of one): the setup every test against
/// the sandbox starts with.
///
/// # Panics
///
/// When `base` is not a usable loopback base URL.
pub fn environment_at(name: &str, base: impl AsRef<str>) -> crate::Environment {
    let base = base.as_ref();
    crate::Environment::custom(name, base, base).expect("a loopback environment")
}

/// The value of a live-service setting such as `PLEO_AUTH_TEST_REDIS_URL`, from the environment
/// or from the `.services/env` file that `cargo xtask services up` writes at the workspace root.
///
/// # Panics
///
/// When the setting is missing: a test that needs a server fails, it never skips.
pub fn service_env(var: &str) -> String {
    if let Ok(value) = std::env::var(var)
        && !value.is_empty()
    {
        return value;
    }
    if let Some(value) = services_env_file().and_then(|text| {
        text.lines()
            .filter_map(|line| line.split_once('='))
            .find(|(k, _)| k.trim() == var)
            .map(|(_, v)| v.trim().to_owned())
    }) {
        return value;
    }
    panic!("{var} is not set and .services/env does not name it: run `cargo xtask services up`");
}

fn services_env_file() -> Option<String> {
    let start: PathBuf = std::env::current_dir().ok()?;
    start
        .ancestors()
        .map(|dir| dir.join(".services").join("env"))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::read_to_string(p).ok())
}

/// Wraps a concrete store for the suites.
pub fn dyn_store<S: crate::SecretStore>(store: S) -> DynSecretStore {
    Arc::new(store)
}
