//! `VaultStore` against a real OpenBao dev server (`cargo xtask services up`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pleo_auth_core::testing::{self, bytes, key, service_env};
use pleo_auth_core::{
    ErrorKind, ManualClock, Precondition, SecretStore, StoreLease, random_urlsafe,
};
use pleo_auth_stores::vault::VaultStore;
use vaultrs::api::auth::approle::requests::SetAppRoleRequestBuilder;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};

fn addr() -> String {
    service_env("PLEO_AUTH_TEST_VAULT_ADDR")
}

fn root_token() -> String {
    service_env("PLEO_AUTH_TEST_VAULT_TOKEN")
}

fn root_client() -> VaultClient {
    VaultClient::new(
        VaultClientSettingsBuilder::default()
            .address(addr())
            .token(root_token())
            .build()
            .unwrap(),
    )
    .unwrap()
}

/// A store on the root token below a fresh path prefix.
fn store() -> VaultStore {
    VaultStore::builder(addr())
        .token(root_token())
        .path_prefix(format!("pleo-tests/{}", random_urlsafe(6)))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn passes_the_store_conformance_suite() {
    let started = Instant::now();
    testing::conformance(testing::dyn_store(store())).await;
    println!("vault conformance suite: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_lease_passes_the_lease_conformance_suite() {
    let started = Instant::now();
    testing::lease_conformance(Arc::new(StoreLease::new(Arc::new(store())))).await;
    println!(
        "vault StoreLease conformance suite: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_writers_one_winner_per_version() {
    let store: pleo_auth_core::DynSecretStore = Arc::new(store());
    testing::race_compare_and_swap(&store, &key(&["race", "grant"]), 8, 5).await;
}

#[tokio::test]
async fn a_version_of_a_deleted_key_never_matches_its_next_incarnation() {
    let store = store();
    let k = key(&["incarnation"]);
    let old = store
        .put(&k, bytes("first life"), Precondition::Absent)
        .await
        .unwrap();
    store.delete(&k, Precondition::None).await.unwrap();
    let new = store
        .put(&k, bytes("second life"), Precondition::Absent)
        .await
        .unwrap();
    // The metadata outlived the delete, so the count went on (1, the tombstone 2, then 3).
    let number = |v: &pleo_auth_core::Version| -> u64 {
        v.as_str().split(':').next().unwrap().parse().unwrap()
    };
    assert_eq!((number(&old), number(&new)), (1, 3));
    let err = store
        .put(
            &k,
            bytes("stale writer"),
            Precondition::Version(old.clone()),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let err = store
        .delete(&k, Precondition::Version(old))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let read = store.get(&k).await.unwrap().unwrap();
    assert_eq!(read.value.expose_secret(), b"second life");
    assert_eq!(read.version, new);
}

#[tokio::test]
async fn a_delete_destroys_every_value_and_keeps_the_version_count() {
    let prefix = format!("pleo-tests/{}", random_urlsafe(6));
    let store = VaultStore::builder(addr())
        .token(root_token())
        .path_prefix(prefix.clone())
        .build()
        .unwrap();
    let path = format!("{prefix}/d/gone");
    let k = key(&["d", "gone"]);
    let v1 = store
        .put(&k, bytes("CANARY-first"), Precondition::Absent)
        .await
        .unwrap();
    let v2 = store
        .put(
            &k,
            bytes("CANARY-second"),
            Precondition::Version(v1.clone()),
        )
        .await
        .unwrap();
    store
        .delete(&k, Precondition::Version(v2.clone()))
        .await
        .unwrap();
    assert!(store.get(&k).await.unwrap().is_none());
    assert!(
        store.list(&key(&["d"])).await.unwrap().is_empty(),
        "not listed"
    );

    let meta = vaultrs::kv2::read_metadata(&root_client(), "secret", &path)
        .await
        .unwrap();
    assert_eq!(meta.current_version, 3, "the tombstone is version 3");
    for n in ["1", "2"] {
        assert!(meta.versions[n].destroyed, "version {n} is destroyed");
        let read: Result<serde_json::Value, _> =
            vaultrs::kv2::read_version(&root_client(), "secret", &path, n.parse().unwrap()).await;
        assert!(
            !format!("{read:?}").contains("CANARY"),
            "no value of version {n} is readable"
        );
    }

    // Created again, the key continues the count: no old version can match a new write.
    let v4 = store
        .put(&k, bytes("new life"), Precondition::Absent)
        .await
        .unwrap();
    assert_eq!(v4.as_str(), "4", "{v4:?}");
    for old in [v1, v2] {
        let err = store
            .put(&k, bytes("stale"), Precondition::Version(old.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict, "{old:?}");
    }
    assert_eq!(
        store.get(&k).await.unwrap().unwrap().value.expose_secret(),
        b"new life"
    );
}

#[tokio::test]
async fn a_tombstone_of_an_interrupted_delete_reads_as_absent_and_is_cleaned_up_by_a_create() {
    let prefix = format!("pleo-tests/{}", random_urlsafe(6));
    let store = VaultStore::builder(addr())
        .token(root_token())
        .path_prefix(prefix.clone())
        .build()
        .unwrap();
    let path = format!("{prefix}/d/half-deleted");
    let k = key(&["d", "half-deleted"]);
    let v1 = store
        .put(&k, bytes("CANARY-old"), Precondition::Absent)
        .await
        .unwrap();
    // What a delete leaves behind when it stops between its tombstone and its destroy.
    let number: u32 = v1.as_str().split(':').next().unwrap().parse().unwrap();
    vaultrs::kv2::set_with_options(
        &root_client(),
        "secret",
        &path,
        &serde_json::json!({ "deleted_at_ms": 1_000 }),
        vaultrs::api::kv2::requests::SetSecretRequestOptions { cas: number },
    )
    .await
    .unwrap();
    assert!(
        store.get(&k).await.unwrap().is_none(),
        "a tombstone reads as absent"
    );
    assert!(
        store.list(&key(&["d"])).await.unwrap().is_empty(),
        "not listed"
    );
    let err = store
        .put(&k, bytes("b"), Precondition::Version(v1.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let v2 = store
        .put(&k, bytes("b"), Precondition::Absent)
        .await
        .expect("a tombstone is written over at once");
    let read = store.get(&k).await.unwrap().unwrap();
    assert_eq!(read.value.expose_secret(), b"b");
    assert_eq!(read.version, v2);
    let meta = vaultrs::kv2::read_metadata(&root_client(), "secret", &path)
        .await
        .unwrap();
    assert!(meta.versions["1"].destroyed, "the old value is destroyed");
    assert!(!meta.versions["3"].destroyed, "the new value is not");
    assert_eq!(store.list(&key(&["d"])).await.unwrap(), vec![k]);
}

#[tokio::test]
async fn unconditional_writes_work_where_check_and_set_is_required() {
    let prefix = format!("pleo-tests/{}", random_urlsafe(6));
    let store = VaultStore::builder(addr())
        .token(root_token())
        .path_prefix(prefix.clone())
        .build()
        .unwrap();
    let k = key(&["strict"]);
    let path = format!("{prefix}/strict");
    let mut opts = vaultrs::api::kv2::requests::SetSecretMetadataRequest::builder();
    opts.cas_required(true);
    vaultrs::kv2::set_metadata(&root_client(), "secret", &path, Some(&mut opts))
        .await
        .unwrap();
    let v1 = store.put(&k, bytes("a"), Precondition::None).await.unwrap();
    let v2 = store.put(&k, bytes("b"), Precondition::None).await.unwrap();
    assert_ne!(v1, v2);
    let read = store.get(&k).await.unwrap().unwrap();
    assert_eq!((read.value.expose_secret(), read.version), (&b"b"[..], v2));
}

#[tokio::test]
async fn data_written_by_someone_else_is_corrupt_not_absent() {
    let prefix = format!("pleo-tests/{}", random_urlsafe(6));
    let store = VaultStore::builder(addr())
        .token(root_token())
        .path_prefix(prefix.clone())
        .build()
        .unwrap();
    vaultrs::kv2::set(
        &root_client(),
        "secret",
        &format!("{prefix}/foreign"),
        &serde_json::json!({ "password": "CANARY-foreign-value" }),
    )
    .await
    .unwrap();
    let err = store.get(&key(&["foreign"])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert_eq!(err.backend(), Some("vault"));
    assert!(!format!("{err} {err:?}").contains("CANARY"));
}

/// Sets up AppRole at a fresh mount with a 3 s token TTL; returns (mount, role name, role id).
async fn approle(role_id: &str) -> (String, String) {
    let root = root_client();
    let mount = format!("approle-{}", random_urlsafe(6).to_lowercase());
    let mount = mount.replace('_', "x");
    vaultrs::sys::auth::enable(&root, &mount, "approle", None)
        .await
        .unwrap();
    let policy = format!("pleo-tests-{}", random_urlsafe(6).replace('_', "x"));
    vaultrs::sys::policy::set(
        &root,
        &policy,
        r#"
path "secret/data/approle-tests/*" { capabilities = ["create", "read", "update", "delete"] }
path "secret/metadata/approle-tests/*" { capabilities = ["read", "list"] }
path "secret/destroy/approle-tests/*" { capabilities = ["update"] }
"#,
    )
    .await
    .unwrap();
    let role = "pleo-auth";
    let mut opts = SetAppRoleRequestBuilder::default();
    opts.token_ttl("3s")
        .token_max_ttl("3s")
        .token_policies(vec![policy]);
    vaultrs::auth::approle::role::set(&root, &mount, role, Some(&mut opts))
        .await
        .unwrap();
    vaultrs::auth::approle::role::update_id(&root, &mount, role, role_id)
        .await
        .unwrap();
    (mount, role.to_owned())
}

async fn custom_secret_id(mount: &str, role: &str, secret_id: &str) {
    vaultrs::auth::approle::role::secret::custom(&root_client(), mount, role, secret_id, None)
        .await
        .unwrap();
}

fn approle_store(
    mount: &str,
    role_id: &str,
    secret_id: &str,
    clock: Option<ManualClock>,
) -> VaultStore {
    let mut builder = VaultStore::builder(addr())
        .approle(role_id, secret_id)
        .approle_mount(mount)
        .path_prefix(format!("approle-tests/{}", random_urlsafe(6)));
    if let Some(clock) = clock {
        builder = builder.clock(Arc::new(clock));
    }
    builder.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approle_logs_in_again_after_the_token_ttl() {
    let role_id = format!("role-{}", random_urlsafe(8));
    let (mount, role) = approle(&role_id).await;
    let secret_id = format!("CANARY-secret-{}", random_urlsafe(8));
    custom_secret_id(&mount, &role, &secret_id).await;

    // Re-login on schedule: two thirds into the TTL on the system clock.
    let scheduled = approle_store(&mount, &role_id, &secret_id, None);
    // Re-login on 403: a clock that never moves never schedules one.
    let on_403 = approle_store(&mount, &role_id, &secret_id, Some(ManualClock::new()));
    // Re-login that must fail: its secret id is destroyed after the first login.
    let doomed_secret = format!("CANARY-doomed-{}", random_urlsafe(8));
    custom_secret_id(&mount, &role, &doomed_secret).await;
    let doomed = approle_store(&mount, &role_id, &doomed_secret, None);

    let k = key(&["tenant", "grant"]);
    let mut versions = Vec::new();
    for store in [&scheduled, &on_403, &doomed] {
        versions.push(
            store
                .put(&k, bytes("v1"), Precondition::Absent)
                .await
                .unwrap(),
        );
    }
    vaultrs::auth::approle::role::secret::delete(&root_client(), &mount, &role, &doomed_secret)
        .await
        .unwrap();

    tokio::time::sleep(Duration::from_secs(4)).await;

    for (store, version) in [&scheduled, &on_403].into_iter().zip(&versions) {
        let read = store
            .get(&k)
            .await
            .expect("a new token after the TTL")
            .unwrap();
        assert_eq!(&read.version, version);
        store
            .put(&k, bytes("v2"), Precondition::Version(version.clone()))
            .await
            .expect("writes work with the new token");
        assert_eq!(
            store.list(&key(&["tenant"])).await.unwrap(),
            vec![k.clone()]
        );
    }
    let err = doomed.get(&k).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err:?}");
    assert_eq!(err.backend(), Some("vault"));
    let text = format!("{err} {err:?} {doomed:?}");
    assert!(!text.contains("CANARY"), "{text}");
    assert!(!text.contains(&role_id), "{text}");
}

#[tokio::test]
async fn a_rejected_token_is_a_config_error_and_never_shown() {
    let store = VaultStore::builder(addr())
        .token("hvs.CANARY-not-a-token")
        .build()
        .unwrap();
    let err = store.get(&key(&["x"])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err:?}");
    assert!(
        err.to_string().contains("give the store a valid token"),
        "{err}"
    );
    assert!(!err.is_retryable());
    let text = format!("{err} {err:?} {store:?}");
    assert!(!text.contains("CANARY"), "{text}");
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_and_retryable() {
    let port = free_port();
    let store = VaultStore::builder(format!("http://127.0.0.1:{port}"))
        .token("CANARY-token")
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let err = store
        .put(&key(&["x"]), bytes("CANARY-value"), Precondition::None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");
    assert!(err.is_retryable());
    let text = format!("{err} {err:?}");
    assert!(!text.contains("CANARY"), "{text}");
}

fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // OpenBao also binds the next port; make sure it is free too.
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// An OpenBao dev server with a generated CA, stopped on drop.
struct TlsServer {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsServer {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("bao")
            .args([
                "server",
                "-dev",
                "-dev-tls",
                &format!("-dev-tls-cert-dir={}", dir.path().display()),
                &format!("-dev-listen-address=127.0.0.1:{port}"),
                "-dev-root-token-id=pleo-auth-tls-root",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("`bao` runs (installed by `cargo xtask services up`)");
        let server = TlsServer { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(server.ca_path().is_file()
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
        {
            assert!(Instant::now() < deadline, "OpenBao with TLS did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.path().join("vault-ca.pem")
    }
}

#[tokio::test]
async fn tls_with_a_custom_ca() {
    let server = TlsServer::start().await;
    let address = format!("https://127.0.0.1:{}", server.port);
    let ca = std::fs::read(server.ca_path()).unwrap();
    let store = VaultStore::builder(&address)
        .token("pleo-auth-tls-root")
        .ca_cert_pem(ca)
        .build()
        .unwrap();
    let k = key(&["over", "tls"]);
    let mut result = store.put(&k, bytes("x"), Precondition::Absent).await;
    // The dev server may need a moment after it starts listening.
    for _ in 0..50 {
        match &result {
            Err(e) if e.kind() == ErrorKind::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                result = store.put(&k, bytes("x"), Precondition::Absent).await;
            }
            _ => break,
        }
    }
    let version = result.expect("write over TLS with the custom CA");
    assert_eq!(store.get(&k).await.unwrap().unwrap().version, version);

    let untrusting = VaultStore::builder(&address)
        .token("pleo-auth-tls-root")
        .build()
        .unwrap();
    let err = untrusting.get(&k).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err:?}");
    assert!(!err.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_output_never_contains_a_secret() {
    let captured = testing::TraceCapture::install();
    let store = store();
    let k = key(&["traced"]);
    testing::canary_operations(&store, &k).await;

    let role_id = format!("CANARY-role-{}", random_urlsafe(8));
    let (mount, role) = approle(&role_id).await;
    let secret_id = format!("CANARY-secret-{}", random_urlsafe(8));
    custom_secret_id(&mount, &role, &secret_id).await;
    let approle = approle_store(&mount, &role_id, &secret_id, None);
    approle
        .put(&k, bytes("CANARY-value-4"), Precondition::None)
        .await
        .unwrap();
    let rejected = VaultStore::builder(addr())
        .token("hvs.CANARY-bad-token")
        .build()
        .unwrap();
    let err = rejected.get(&k).await.unwrap_err();
    assert!(!format!("{err} {err:?}").contains("CANARY"));

    let text = captured.contents();
    assert!(
        text.contains("TRACE"),
        "the subscriber captured TRACE output"
    );
    assert!(text.contains("vault"), "the store's spans were captured");
    testing::assert_no_leak(
        "the TRACE logs",
        &text,
        &["CANARY".to_owned(), root_token()],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_links_stay_one_to_one_under_racing_linkers() {
    testing::tenant_links_conformance(Arc::new(store()), 8, 5).await;
}

/// A fresh KV v2 mount whose versions Vault deletes `after` their write.
async fn mount_with_delete_version_after(after: &str) -> String {
    let root = root_client();
    let mount = format!(
        "kv-dva-{}",
        random_urlsafe(6).to_lowercase().replace('_', "x")
    );
    vaultrs::sys::mount::enable(&root, &mount, "kv-v2", None)
        .await
        .unwrap();
    // A new KV v2 mount upgrades itself for a moment ("Upgrading from non-versioned to
    // versioned data"); until then it answers 400.
    let started = std::time::Instant::now();
    loop {
        let mut config = vaultrs::api::kv2::requests::SetConfigurationRequest::builder();
        config.delete_version_after(after);
        match vaultrs::kv2::config::set(&root, &mount, Some(&mut config)).await {
            Ok(_) => break,
            Err(e) if started.elapsed() < std::time::Duration::from_secs(10) => {
                eprintln!("the new mount is not ready yet: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the mount never got ready: {e}"),
        }
    }
    mount
}

fn store_on(mount: &str) -> VaultStore {
    VaultStore::builder(addr())
        .token(root_token())
        .mount(mount)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_future_deletion_time_is_live_and_delete_destroy_undelete_are_honoured() {
    let mount = mount_with_delete_version_after("1h").await;
    let store = store_on(&mount);
    let k = key(&["grant", "live"]);
    let version = store
        .put(&k, bytes("still-here"), Precondition::Absent)
        .await
        .unwrap();
    let root = root_client();
    let read = vaultrs::kv2::read_metadata(&root, &mount, k.as_str())
        .await
        .unwrap();
    let latest = read.versions.get("1").unwrap();
    assert!(
        !latest.deletion_time.is_empty(),
        "the mount puts a future deletion time on live versions"
    );
    let got = store
        .get(&k)
        .await
        .unwrap()
        .expect("a future deletion time is live");
    assert_eq!(got.value.expose_secret(), b"still-here");
    assert_eq!(got.version, version);
    assert_eq!(store.list(&key(&["grant"])).await.unwrap(), vec![k.clone()]);
    let next = store
        .put(&k, bytes("v2"), Precondition::Version(version))
        .await
        .expect("compare-and-swap on a version with a future deletion time");

    // `kv delete` of the latest version: absent, and a stale write is still refused.
    vaultrs::kv2::delete_latest(&root, &mount, k.as_str())
        .await
        .unwrap();
    assert!(
        store.get(&k).await.unwrap().is_none(),
        "a deleted version reads as absent"
    );
    assert!(store.list(&key(&["grant"])).await.unwrap().is_empty());

    // `kv undelete` brings it back, with the same version.
    vaultrs::kv2::undelete_versions(&root, &mount, k.as_str(), vec![2])
        .await
        .unwrap();
    let back = store.get(&k).await.unwrap().expect("undeleted");
    assert_eq!(back.value.expose_secret(), b"v2");
    assert_eq!(back.version, next);

    // `kv destroy` removes it for good.
    vaultrs::kv2::destroy_versions(&root, &mount, k.as_str(), vec![2])
        .await
        .unwrap();
    assert!(
        store.get(&k).await.unwrap().is_none(),
        "a destroyed version reads as absent"
    );
    store
        .put(&k, bytes("v3"), Precondition::Absent)
        .await
        .expect("a destroyed key can be created again");
}

#[tokio::test]
async fn a_deletion_time_that_passed_reads_as_absent() {
    let mount = mount_with_delete_version_after("1s").await;
    let store = store_on(&mount);
    let k = key(&["grant", "expiring"]);
    store
        .put(&k, bytes("short-lived"), Precondition::Absent)
        .await
        .unwrap();
    assert!(
        store.get(&k).await.unwrap().is_some(),
        "live before its deletion time"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        store.get(&k).await.unwrap().is_none(),
        "absent once its deletion time passed"
    );
    store
        .put(&k, bytes("again"), Precondition::Absent)
        .await
        .expect("created again over the deleted version");
}
