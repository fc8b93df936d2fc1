//! The file store: conformance, on-disk layout, permissions, corruption and locking.
#![cfg(all(feature = "file", unix))]

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pleo_auth_core::testing::bytes;
use pleo_auth_core::{
    ErrorKind, Precondition, SecretStore, StoreKey, StoreLease, Version, testing,
};
use pleo_auth_stores::file::FileStore;

fn key(raw: &str) -> StoreKey {
    StoreKey::parse(raw).unwrap()
}

fn open(dir: &tempfile::TempDir) -> FileStore {
    FileStore::open(dir.path().join("store")).expect("open store")
}

/// Every file and directory below `root`, relative to it.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path.clone());
            }
            out.push(path);
        }
    }
    out.sort();
    out
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_store_passes_the_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    testing::conformance(Arc::new(open(&dir))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_lease_on_file_passes_the_lease_suite() {
    let dir = tempfile::tempdir().unwrap();
    testing::lease_conformance(Arc::new(StoreLease::new(Arc::new(open(&dir))))).await;
}

#[tokio::test]
async fn keys_map_to_files_with_private_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("nested").join("store");
    let store = FileStore::open(&root).unwrap();
    assert_eq!(mode(&root), 0o700, "a created root is 0700");

    store
        .put(&key("a/b/c"), bytes("x"), Precondition::None)
        .await
        .unwrap();
    store
        .put(&key("a"), bytes("y"), Precondition::None)
        .await
        .unwrap();
    assert_eq!(store.path_of(&key("a/b/c")), root.join("a.d/b.d/c.v"));

    let entries: Vec<PathBuf> = walk(&root)
        .into_iter()
        .map(|p| p.strip_prefix(&root).unwrap().to_path_buf())
        .collect();
    let expected: Vec<PathBuf> = [".counter", ".lock", "a.d", "a.d/b.d", "a.d/b.d/c.v", "a.v"]
        .iter()
        .map(PathBuf::from)
        .collect();
    assert_eq!(entries, expected, "the store writes exactly these entries");
    for entry in &entries {
        let path = root.join(entry);
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&path), want, "mode of {}", entry.display());
    }
}

#[test]
fn open_refuses_a_root_that_others_can_access() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shared");
    fs::create_dir(&root).unwrap();
    for loose in [0o750, 0o705, 0o777] {
        fs::set_permissions(&root, fs::Permissions::from_mode(loose)).unwrap();
        let err = FileStore::open(&root).expect_err("a group/world-accessible root is refused");
        assert_eq!(err.kind(), ErrorKind::Config, "{err:?}");
        assert_eq!(err.backend(), Some("file"));
        assert!(err.to_string().contains("chmod 700"), "{err}");
    }
    fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
    FileStore::open(&root).expect("a private root is accepted");

    let file = dir.path().join("plain-file");
    fs::write(&file, b"").unwrap();
    let err = FileStore::open(&file).expect_err("a file is not a root");
    assert_eq!(err.kind(), ErrorKind::Config);
}

#[tokio::test]
async fn damaged_files_are_corrupt_errors_naming_the_key_never_absent() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let k = key("tenants/acme");
    let secret = "CANARY-file-value-0123456789";
    let version = store
        .put(&k, bytes(secret), Precondition::Absent)
        .await
        .unwrap();
    let path = store.path_of(&k);
    let good = fs::read(&path).unwrap();

    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("truncated header", good[..10].to_vec()),
        ("truncated value", good[..good.len() - 6].to_vec()),
        ("missing checksum", good[..good.len() - 4].to_vec()),
        ("trailing garbage", [good.as_slice(), b"x"].concat()),
    ];
    for (name, at) in [
        ("magic", 0),
        ("version", 7),
        ("value", 30),
        ("checksum", good.len() - 1),
    ] {
        let mut garbled = good.clone();
        garbled[at] ^= 0x20;
        cases.push((name, garbled));
    }
    for (name, content) in cases {
        fs::write(&path, &content).unwrap();
        let err = store.get(&k).await.expect_err(name);
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{name}: {err:?}");
        assert_eq!(err.backend(), Some("file"));
        assert!(err.to_string().contains("tenants/acme"), "{name}: {err}");
        assert!(!format!("{err} {err:?}").contains("CANARY"), "{name} leaks");
        let err = store
            .put(&k, bytes("new"), Precondition::Version(version.clone()))
            .await
            .expect_err("compare-and-swap on a damaged value fails");
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{name}: {err:?}");
        let err = store
            .delete(&k, Precondition::Version(version.clone()))
            .await
            .expect_err("a versioned delete of a damaged value fails");
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{name}: {err:?}");
    }

    let mut newer = good.clone();
    newer[4] = 2;
    fs::write(&path, &newer).unwrap();
    let err = store.get(&k).await.expect_err("newer format");
    assert_eq!(err.kind(), ErrorKind::UnsupportedSchema, "{err:?}");

    let repaired = store
        .put(&k, bytes("repaired"), Precondition::None)
        .await
        .expect("an unconditional put replaces a damaged value");
    let got = store.get(&k).await.unwrap().unwrap();
    assert_eq!(got.value.expose_secret(), b"repaired");
    assert_eq!(got.version, repaired);

    fs::write(&path, b"garbage").unwrap();
    store
        .delete(&k, Precondition::None)
        .await
        .expect("an unconditional delete removes a damaged value");
    assert!(store.get(&k).await.unwrap().is_none());
}

#[tokio::test]
async fn hostile_keys_stay_under_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let root = store.root().to_path_buf();
    let base = key("hostile");
    let long = "x/".repeat(600);
    let parts = [
        "..",
        ".",
        "../..",
        "/etc/passwd",
        "a/../../b",
        "~",
        "C:\\Windows",
        "a\0b",
        "%2e%2e",
        ".v",
        "x.d",
        "\u{202e}",
        &long,
    ];
    let mut expected = BTreeSet::new();
    for (i, part) in parts.iter().enumerate() {
        let k = base.child(part).unwrap();
        let path = store.path_of(&k);
        let relative = path.strip_prefix(&root).expect("path is below the root");
        assert!(
            relative
                .components()
                .all(|c| matches!(c, Component::Normal(_))),
            "{part:?} maps to plain names only: {relative:?}"
        );
        store
            .put(&k, bytes(&format!("v{i}")), Precondition::None)
            .await
            .unwrap();
        assert!(path.is_file(), "{part:?} is stored at its path");
        expected.insert(path);
    }
    let values: BTreeSet<PathBuf> = walk(&root)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "v"))
        .collect();
    assert_eq!(values, expected, "one file per key, nothing else");
    let beside: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, vec!["store"], "nothing is written outside the root");
}

#[tokio::test]
async fn versions_are_never_reused_across_deletes_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let k = key("grants/one");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let store = open(&dir);
        let v = store
            .put(&k, bytes("a"), Precondition::Absent)
            .await
            .unwrap();
        seen.push(v.as_u64().expect("a counter"));
        store
            .delete(&k, Precondition::Version(v.clone()))
            .await
            .unwrap();
        let other = store
            .put(&key("grants/two"), bytes("b"), Precondition::None)
            .await
            .unwrap();
        seen.push(other.as_u64().unwrap());
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "versions increase across deletes and reopens: {seen:?}"
    );

    let store = open(&dir);
    fs::write(store.root().join(".counter"), b"garbage").unwrap();
    let err = store
        .put(&k, bytes("c"), Precondition::None)
        .await
        .expect_err("a damaged counter stops writes");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err:?}");
    assert!(err.to_string().contains("version counter"), "{err}");
}

#[tokio::test]
async fn delete_removes_directories_it_empties() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let root = store.root().to_path_buf();
    for k in ["a/b/c", "a/x"] {
        store
            .put(&key(k), bytes("v"), Precondition::None)
            .await
            .unwrap();
    }
    store
        .delete(&key("a/b/c"), Precondition::None)
        .await
        .unwrap();
    assert!(
        !root.join("a.d/b.d").exists(),
        "an emptied directory is removed"
    );
    assert!(root.join("a.d/x.v").is_file(), "siblings stay");
    store.delete(&key("a/x"), Precondition::None).await.unwrap();
    assert!(!root.join("a.d").exists());
    assert!(store.list(&key("a")).await.unwrap().is_empty());
    store
        .put(&key("a/b/c"), bytes("again"), Precondition::Absent)
        .await
        .expect("writing below a removed directory creates it again");
}

#[tokio::test]
async fn list_ignores_temporary_and_foreign_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store
        .put(&key("p/a"), bytes("v"), Precondition::None)
        .await
        .unwrap();
    let p = store.root().join("p.d");
    for junk in [".x1.tmp", "notes.txt", "bad.name.v", "README", "e.d"] {
        fs::write(p.join(junk), b"junk").unwrap();
    }
    fs::create_dir(p.join("f.v")).unwrap();
    assert_eq!(store.list(&key("p")).await.unwrap(), vec![key("p/a")]);
}

#[tokio::test]
async fn a_held_lock_times_out_writes_but_not_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).with_lock_timeout(Duration::from_millis(200));
    let k = key("locked");
    store
        .put(&k, bytes("v1"), Precondition::None)
        .await
        .unwrap();

    // Another open file description, as another process would have.
    let holder = fs::File::open(store.root().join(".lock")).unwrap();
    holder.lock().unwrap();
    let err = store
        .put(&k, bytes("v2"), Precondition::None)
        .await
        .expect_err("the lock is held elsewhere");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");
    assert!(err.is_retryable());
    let err = store.delete(&k, Precondition::None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(
        store.get(&k).await.unwrap().unwrap().value.expose_secret(),
        b"v1",
        "reads need no lock"
    );
    holder.unlock().unwrap();
    let v = store
        .put(&k, bytes("v2"), Precondition::None)
        .await
        .unwrap();
    assert_ne!(v, Version::from_u64(0));
}

#[tokio::test]
async fn keys_too_long_for_the_file_system_are_invalid_input() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let k = StoreKey::from_parts(["long", &"y".repeat(5000)]).unwrap();
    let err = store
        .put(&k, bytes("v"), Precondition::None)
        .await
        .expect_err("a path over the OS limit");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err:?}");
    assert_eq!(err.backend(), Some("file"));
    assert!(
        store.list(&key("long")).await.unwrap().is_empty(),
        "nothing was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_links_stay_one_to_one_under_racing_linkers() {
    let dir = tempfile::tempdir().unwrap();
    testing::tenant_links_conformance(Arc::new(open(&dir)), 8, 5).await;
}

/// A store whose directory was removed or replaced by a file fails every call: a key must never
/// read as absent because the store itself is gone.
#[tokio::test]
async fn a_store_whose_directory_is_gone_fails_instead_of_reading_absent() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store
        .put(&key("pleo-auth/a"), bytes("v"), Precondition::Absent)
        .await
        .unwrap();
    let root = dir.path().join("store");
    let away = dir.path().join("away");
    fs::rename(&root, &away).unwrap();
    for replaced in [false, true] {
        if replaced {
            fs::write(&root, b"a file where the store was").unwrap();
        }
        let err = store.get(&key("pleo-auth/a")).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(err.is_retryable());
        assert!(store.list(&key("pleo-auth")).await.is_err());
        assert!(
            store
                .put(&key("pleo-auth/b"), bytes("v"), Precondition::Absent)
                .await
                .is_err()
        );
    }
    fs::remove_file(&root).unwrap();
    fs::rename(&away, &root).unwrap();
    assert!(store.get(&key("pleo-auth/a")).await.unwrap().is_some());
}
