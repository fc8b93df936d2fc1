//! `RedisStore` and `RedisLease` against a real Redis (`cargo xtask services up`).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pleo_auth_core::testing::{self, bytes, key, service_env};
use pleo_auth_core::{ErrorKind, Lease, Precondition, SecretStore, StoreKey, random_urlsafe};
use pleo_auth_stores::redis::RedisStore;

fn url() -> String {
    service_env("PLEO_AUTH_TEST_REDIS_URL")
}

async fn store() -> RedisStore {
    RedisStore::builder(url())
        .key_prefix(format!("pleo-tests:{}:", random_urlsafe(6)))
        .connect()
        .await
        .unwrap()
}

async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn passes_the_store_conformance_suite() {
    let store = store().await;
    let started = Instant::now();
    testing::conformance(testing::dyn_store(store)).await;
    println!("redis conformance suite: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_lease_passes_the_lease_conformance_suite() {
    let store = store().await;
    let started = Instant::now();
    testing::lease_conformance(Arc::new(store.lease())).await;
    println!("redis lease conformance suite: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_writers_one_winner_per_version() {
    let store: pleo_auth_core::DynSecretStore = Arc::new(store().await);
    testing::race_compare_and_swap(&store, &key(&["race", "grant"]), 8, 5).await;
}

/// Expiry, fencing and a stale holder's release are the lease suite's checks (above); what is
/// the Redis lease's own is that dropping a guard inside the runtime releases it in the
/// background.
#[tokio::test]
async fn a_dropped_lease_guard_is_released_in_the_background() {
    let store = store().await;
    let lease = store.lease();
    let k = key(&["lease", "grant"]);
    let held = lease
        .acquire(&k, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("free");
    let fencing = held.fencing();
    drop(held);
    let mut next = None;
    for _ in 0..50 {
        next = lease.acquire(&k, Duration::from_secs(30)).await.unwrap();
        if next.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(next.expect("released on drop").fencing() > fencing);
}

#[tokio::test]
async fn the_lease_and_the_store_share_a_prefix_without_meeting() {
    let store = store().await;
    let k = key(&["shared"]);
    let guard = store
        .lease()
        .acquire(&k, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    store
        .put(&k, bytes("v"), Precondition::Absent)
        .await
        .unwrap();
    let child = k.child("c").unwrap();
    let _child_guard = store
        .lease()
        .acquire(&child, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store.get(&k).await.unwrap().unwrap().value.expose_secret(),
        b"v"
    );
    assert!(
        store.list(&k).await.unwrap().is_empty(),
        "lease keys are not listed"
    );
    guard.release().await.unwrap();
}

#[tokio::test]
async fn a_key_of_another_type_is_corrupt() {
    let prefix = format!("pleo-tests:{}:", random_urlsafe(6));
    let store = RedisStore::builder(url())
        .key_prefix(prefix.clone())
        .connect()
        .await
        .unwrap();
    let k = key(&["wrong-type"]);
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}{k}"))
        .arg("CANARY-plain-string")
        .query_async(&mut raw().await)
        .await
        .unwrap();
    let err = store.get(&k).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err:?}");
    let err = store
        .put(&k, bytes("CANARY-v"), Precondition::None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err:?}");
    assert!(!format!("{err} {err:?}").contains("CANARY"));
}

/// Creates an ACL user; returns the user's URL with its password.
async fn acl_user(name: &str, password: &str, rules: &[&str]) -> String {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg(name)
        .arg("reset")
        .arg("on")
        .arg(format!(">{password}"));
    for rule in rules {
        cmd.arg(*rule);
    }
    let _: () = cmd.query_async(&mut raw().await).await.unwrap();
    url().replacen("redis://", &format!("redis://{name}:{password}@"), 1)
}

async fn drop_acl_user(name: &str) {
    let _: u64 = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(name)
        .query_async(&mut raw().await)
        .await
        .unwrap();
}

#[tokio::test]
async fn acl_users_authenticate_through_the_url_and_never_leak_their_password() {
    let tag = random_urlsafe(6).replace(['-', '_'], "x");
    let prefix = format!("pleo-acl-{tag}:");
    let user = format!("pleo-{tag}");
    let password = format!("CANARY-{}", random_urlsafe(12));
    let user_url = acl_user(&user, &password, &[&format!("~{prefix}*"), "+@all"]).await;

    let store = RedisStore::builder(&user_url)
        .key_prefix(&prefix)
        .connect()
        .await
        .expect("the ACL user connects");
    assert!(!format!("{store:?}").contains("CANARY"));
    let k = key(&["tenant"]);
    let v = store
        .put(&k, bytes("x"), Precondition::Absent)
        .await
        .unwrap();
    assert_eq!(store.get(&k).await.unwrap().unwrap().version, v);
    assert_eq!(
        store.list(&key(&["tenant"])).await.unwrap(),
        Vec::<StoreKey>::new()
    );

    // Outside its key pattern the user lacks permission.
    let outside = RedisStore::builder(&user_url)
        .key_prefix(format!("elsewhere-{tag}:"))
        .connect()
        .await
        .unwrap();
    let err = outside.get(&k).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err:?}");
    assert!(!format!("{err} {err:?}").contains("CANARY"));

    let wrong_url = user_url.replace(&password, "CANARY-wrong-password");
    let err = RedisStore::builder(&wrong_url)
        .key_prefix(&prefix)
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err:?}");
    assert!(!err.is_retryable());
    let text = format!("{err} {err:?}");
    assert!(!text.contains("CANARY"), "{text}");
    drop_acl_user(&user).await;
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_and_retryable() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = RedisStore::builder(format!("redis://app:CANARY@127.0.0.1:{port}"))
        .connection_timeout(Duration::from_secs(1))
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");
    assert!(err.is_retryable());
    assert!(!format!("{err} {err:?}").contains("CANARY"));
}

/// A Redis server speaking only TLS, with a CA made for the test; stopped on drop.
struct TlsRedis {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success(), "openssl {args:?}");
}

impl TlsRedis {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=pleo-test-ca",
        ]);
        openssl(d, &ca);
        let mut csr = vec!["req"];
        csr.extend(ec);
        csr.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        openssl(d, &csr);
        std::fs::write(
            d.join("san.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "1",
                "-extfile",
                "san.ext",
            ],
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                "server.pem",
                "--tls-key-file",
                "server.key",
                "--tls-ca-cert-file",
                "ca.pem",
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (installed by `cargo xtask services up`)");
        let server = TlsRedis { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "Redis with TLS did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }
}

#[tokio::test]
async fn rediss_with_a_custom_ca() {
    let server = TlsRedis::start().await;
    let address = format!("rediss://127.0.0.1:{}", server.port);
    let ca = std::fs::read(server.dir.path().join("ca.pem")).unwrap();
    let store = RedisStore::builder(&address)
        .ca_cert_pem(ca)
        .connect()
        .await
        .expect("TLS with the custom CA");
    let k = key(&["over", "tls"]);
    let v = store
        .put(&k, bytes("x"), Precondition::Absent)
        .await
        .unwrap();
    assert_eq!(store.get(&k).await.unwrap().unwrap().version, v);

    let err = RedisStore::builder(&address)
        .connect()
        .await
        .expect_err("the system roots do not trust the test CA");
    assert_eq!(err.kind(), ErrorKind::Config, "{err:?}");
    assert!(!err.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_output_never_contains_a_secret() {
    let captured = testing::TraceCapture::install();
    let tag = random_urlsafe(6).replace(['-', '_'], "x");
    let prefix = format!("pleo-trace-{tag}:");
    let user = format!("pleo-trace-{tag}");
    let password = format!("CANARY-{}", random_urlsafe(12));
    let user_url = acl_user(&user, &password, &[&format!("~{prefix}*"), "+@all"]).await;
    let store = RedisStore::builder(&user_url)
        .key_prefix(&prefix)
        .connect()
        .await
        .unwrap();
    let k = key(&["traced"]);
    testing::canary_operations(&store, &k).await;
    let guard = store
        .lease()
        .acquire(&k, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    guard.release().await.unwrap();
    let wrong = user_url.replace(&password, "CANARY-wrong");
    let err = RedisStore::builder(&wrong).connect().await.unwrap_err();
    assert!(!format!("{err} {err:?}").contains("CANARY"));
    drop_acl_user(&user).await;

    let text = captured.contents();
    assert!(text.contains("redis"), "the store's spans were captured");
    testing::assert_no_leak("the TRACE logs", &text, &["CANARY", password.as_str()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_links_stay_one_to_one_under_racing_linkers() {
    testing::tenant_links_conformance(Arc::new(store().await), 8, 5).await;
}
