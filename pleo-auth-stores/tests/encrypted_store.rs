//! The encryption wrapper: conformance, sealing, key rotation and failure modes.
#![cfg(all(feature = "encryption", feature = "file"))]

use std::sync::Arc;

use pleo_auth_core::testing::bytes as secret;
use pleo_auth_core::{
    ErrorKind, MemoryStore, Precondition, SecretBytes, SecretStore, StoreKey, StoreLease, testing,
};
use pleo_auth_stores::encrypted::{EncryptedStore, EncryptionKey, EncryptionKeys};
use pleo_auth_stores::file::FileStore;

const CANARY: &str = "CANARY-plaintext-7f3a";

fn key_a() -> EncryptionKey {
    EncryptionKey::new("key-a", [0xA1; 32]).unwrap()
}

fn key_b() -> EncryptionKey {
    EncryptionKey::new("key-b", [0xB2; 32]).unwrap()
}

fn sk(raw: &str) -> StoreKey {
    StoreKey::parse(raw).unwrap()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn memory_store(keys: EncryptionKeys) -> EncryptedStore<Arc<MemoryStore>> {
    EncryptedStore::new(Arc::new(MemoryStore::new()), keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn encrypted_memory_store_passes_the_store_suite() {
    testing::conformance(Arc::new(memory_store(EncryptionKeys::new(key_a())))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn encrypted_file_store_passes_the_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    let file = FileStore::open(dir.path().join("store")).unwrap();
    let keys = EncryptionKeys::new(key_b()).with_older(key_a()).unwrap();
    testing::conformance(Arc::new(EncryptedStore::new(file, keys))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_lease_on_encrypted_file_passes_the_lease_suite() {
    let dir = tempfile::tempdir().unwrap();
    let file = FileStore::open(dir.path().join("store")).unwrap();
    let store = Arc::new(EncryptedStore::new(file, EncryptionKeys::new(key_a())));
    testing::lease_conformance(Arc::new(StoreLease::new(store))).await;
}

#[tokio::test]
async fn files_on_disk_hold_only_ciphertext() {
    let dir = tempfile::tempdir().unwrap();
    let file = FileStore::open(dir.path().join("store")).unwrap();
    let store = EncryptedStore::new(file, EncryptionKeys::new(key_a()));
    let k = sk("tenants/acme");
    let version = store
        .put(&k, secret(CANARY), Precondition::Absent)
        .await
        .unwrap();

    let on_disk = std::fs::read(store.inner().path_of(&k)).unwrap();
    assert!(!contains(&on_disk, CANARY.as_bytes()), "plaintext on disk");
    assert!(
        !contains(&on_disk, b"CANARY"),
        "part of the plaintext on disk"
    );
    assert!(contains(&on_disk, b"key-a"), "the key id is stored");

    let opened = store.get(&k).await.unwrap().unwrap();
    assert_eq!(opened.value.expose_secret(), CANARY.as_bytes());
    assert_eq!(opened.version, version, "versions pass through");
    let sealed = store.inner().get(&k).await.unwrap().unwrap();
    assert_eq!(sealed.version, version);

    // Two writes of one value never produce the same bytes (a fresh nonce each time).
    store
        .put(&k, secret(CANARY), Precondition::None)
        .await
        .unwrap();
    let again = std::fs::read(store.inner().path_of(&k)).unwrap();
    assert_ne!(&on_disk[25..], &again[25..], "a new nonce per write");
}

#[tokio::test]
async fn values_round_trip() {
    let store = memory_store(EncryptionKeys::new(key_a()));
    let binary: Vec<u8> = (0..=255u8).chain([0, 0, 0xff]).collect();
    for (i, value) in [Vec::new(), b"x".to_vec(), binary, vec![7u8; 100_000]]
        .into_iter()
        .enumerate()
    {
        let k = sk(&format!("round-trip/{i}"));
        let v = store
            .put(&k, SecretBytes::new(value.clone()), Precondition::None)
            .await
            .unwrap();
        let got = store.get(&k).await.unwrap().unwrap();
        assert_eq!(got.value.expose_secret(), value.as_slice(), "value {i}");
        assert_eq!(got.version, v);
        let sealed = store.inner().get(&k).await.unwrap().unwrap();
        assert_eq!(
            sealed.value.len(),
            value.len() + 4 + 1 + 5 + 24 + 16,
            "overhead"
        );
    }
    assert!(store.get(&sk("round-trip/none")).await.unwrap().is_none());
}

#[tokio::test]
async fn a_wrong_key_is_corrupt_and_never_absent() {
    let inner = Arc::new(MemoryStore::new());
    let writer = EncryptedStore::new(inner.clone(), EncryptionKeys::new(key_a()));
    let k = sk("grants/one");
    writer
        .put(&k, secret(CANARY), Precondition::Absent)
        .await
        .unwrap();

    let same_id_other_bytes = EncryptionKey::new("key-a", [0xA2; 32]).unwrap();
    let reader = EncryptedStore::new(inner.clone(), EncryptionKeys::new(same_id_other_bytes));
    let err = reader.get(&k).await.expect_err("wrong key");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err:?}");
    assert_eq!(err.backend(), Some("encryption"));
    assert!(err.to_string().contains("grants/one"), "{err}");
    assert!(!format!("{err} {err:?}").contains("CANARY"));

    let reader = EncryptedStore::new(inner, EncryptionKeys::new(key_b()));
    let err = reader.get(&k).await.expect_err("unknown key id");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err:?}");
    assert!(err.to_string().contains("unknown key id key-a"), "{err}");
}

#[tokio::test]
async fn a_value_copied_to_another_key_does_not_open() {
    let store = memory_store(EncryptionKeys::new(key_a()));
    let from = sk("tenants/a");
    let to = sk("tenants/b");
    store
        .put(&from, secret(CANARY), Precondition::Absent)
        .await
        .unwrap();
    let sealed = store.inner().get(&from).await.unwrap().unwrap();
    store
        .inner()
        .put(&to, sealed.value, Precondition::Absent)
        .await
        .unwrap();
    let err = store.get(&to).await.expect_err("moved value");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err:?}");
    assert!(err.to_string().contains("tenants/b"), "{err}");
}

#[tokio::test]
async fn every_tampered_or_truncated_value_is_corrupt() {
    let store = memory_store(EncryptionKeys::new(key_a()));
    let k = sk("tamper");
    store
        .put(&k, secret(CANARY), Precondition::Absent)
        .await
        .unwrap();
    let good = store.inner().get(&k).await.unwrap().unwrap().value;
    let good = good.expose_secret().to_vec();

    let mut bad: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..good.len() {
        for flip in [0x01u8, 0x80] {
            let mut v = good.clone();
            v[i] ^= flip;
            bad.push((format!("byte {i} ^ {flip:#x}"), v));
        }
    }
    for len in 0..good.len() {
        bad.push((format!("truncated to {len}"), good[..len].to_vec()));
    }
    bad.push(("extended".into(), [good.as_slice(), b"\0"].concat()));
    for (name, value) in bad {
        store
            .inner()
            .put(&k, SecretBytes::new(value), Precondition::None)
            .await
            .unwrap();
        let err = store.get(&k).await.expect_err(&name);
        // Flipping the high bit of the format version names a newer format.
        let want = if name == "byte 3 ^ 0x80" {
            ErrorKind::UnsupportedSchema
        } else {
            ErrorKind::Corrupt
        };
        assert_eq!(err.kind(), want, "{name}: {err:?}");
        assert!(!format!("{err} {err:?}").contains("CANARY"), "{name} leaks");
    }
}

#[tokio::test]
async fn keys_rotate_without_losing_values() {
    let inner = Arc::new(MemoryStore::new());
    let old = sk("grants/old");
    let new = sk("grants/new");

    let before = EncryptedStore::new(inner.clone(), EncryptionKeys::new(key_a()));
    before
        .put(&old, secret("written with A"), Precondition::Absent)
        .await
        .unwrap();
    assert_eq!(before.key_id(&old).await.unwrap().as_deref(), Some("key-a"));

    let rotated = EncryptedStore::new(
        inner.clone(),
        EncryptionKeys::new(key_b()).with_older(key_a()).unwrap(),
    );
    let got = rotated.get(&old).await.unwrap().unwrap();
    assert_eq!(
        got.value.expose_secret(),
        b"written with A",
        "old values read"
    );
    rotated
        .put(&new, secret("written with B"), Precondition::Absent)
        .await
        .unwrap();
    assert_eq!(
        rotated.key_id(&new).await.unwrap().as_deref(),
        Some("key-b")
    );
    assert!(rotated.key_id(&sk("grants/none")).await.unwrap().is_none());

    let only_b = EncryptedStore::new(inner.clone(), EncryptionKeys::new(key_b()));
    let err = only_b.get(&old).await.expect_err("A was dropped");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err:?}");
    assert_eq!(
        only_b
            .get(&new)
            .await
            .unwrap()
            .unwrap()
            .value
            .expose_secret(),
        b"written with B"
    );

    // Re-encrypting moves old values to the primary key, after which A can go.
    let version = rotated.rewrap(&old).await.unwrap().expect("sealed again");
    assert_eq!(rotated.rewrap(&old).await.unwrap(), None, "already on B");
    assert_eq!(rotated.rewrap(&new).await.unwrap(), None, "already on B");
    let got = only_b.get(&old).await.unwrap().unwrap();
    assert_eq!(got.value.expose_secret(), b"written with A");
    assert_eq!(got.version, version);
}

#[tokio::test]
async fn inner_errors_pass_through_unchanged() {
    let store = memory_store(EncryptionKeys::new(key_a()));
    let k = sk("cas");
    let v1 = store
        .put(&k, secret("1"), Precondition::Absent)
        .await
        .unwrap();
    store
        .put(&k, secret("2"), Precondition::Version(v1.clone()))
        .await
        .unwrap();
    let err = store
        .put(&k, secret("3"), Precondition::Version(v1))
        .await
        .expect_err("stale version");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert_eq!(err.backend(), Some("memory"), "the inner store's error");
    assert_eq!(
        store.list(&sk("cas")).await.unwrap(),
        Vec::<StoreKey>::new()
    );
}

#[test]
fn keys_are_redacted_in_debug() {
    let canary_key = *b"CANARY-CANARY-CANARY-CANARY-0123";
    let key = EncryptionKey::new("k1", canary_key).unwrap();
    assert_eq!(format!("{key:?}"), r#"EncryptionKey { id: "k1", .. }"#);
    let keys = EncryptionKeys::new(key.clone())
        .with_older(EncryptionKey::new("k0", canary_key).unwrap())
        .unwrap();
    assert_eq!(
        format!("{keys:?}"),
        r#"EncryptionKeys { primary: "k1", older: ["k0"], .. }"#
    );
    let store = EncryptedStore::new(MemoryStore::new(), keys);
    let debug = format!("{store:?} {store:#?}");
    assert!(!debug.contains("CANARY"), "{debug}");
    assert!(!debug.contains("67, 65"), "no key bytes: {debug}");
    assert!(debug.contains("primary: \"k1\""), "{debug}");
}

#[test]
fn keys_parse_from_base64_text() {
    // 32 bytes 0x40..0x5f.
    let standard = "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8=";
    let want: Vec<u8> = (0x40..0x60).collect();
    for text in [
        standard,
        "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8",
        "  QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8=\n",
    ] {
        let key = EncryptionKey::from_base64("env", text).unwrap();
        assert_eq!(key.expose_secret().as_slice(), want.as_slice(), "{text:?}");
    }
    let url_safe =
        EncryptionKey::from_base64("env", "-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_8").unwrap();
    assert_eq!(url_safe.expose_secret()[0], 0xfb);

    for bad in [
        "CANARYshort",
        "CANARY!!not base64!!",
        "",
        &format!("{standard}QUFB"),
    ] {
        let err = EncryptionKey::from_base64("env", bad).expect_err(bad);
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}: {err:?}");
        assert!(
            !format!("{err} {err:?}").contains("CANARY"),
            "{bad:?} echoed"
        );
    }
    assert_eq!(
        EncryptionKey::from_slice("raw", &[1; 31])
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );
    for id in ["", "has space", "naïve", &"x".repeat(65)] {
        let err = EncryptionKey::new(id, [0; 32]).expect_err(id);
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }
    let err = EncryptionKeys::new(key_a())
        .with_older(key_a())
        .expect_err("duplicate id");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);

    let generated = EncryptionKey::generate("gen").unwrap();
    assert_ne!(
        generated.expose_secret(),
        EncryptionKey::generate("gen").unwrap().expose_secret()
    );
}
