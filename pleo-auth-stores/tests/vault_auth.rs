//! How `VaultStore` authenticates, against a real OpenBao dev server (`cargo xtask services up`):
//! a token file that changes, token renewal before expiry, expired tokens, and Kubernetes auth
//! against OpenBao's kubernetes method pointed at a small local stand-in for the Kubernetes
//! TokenReview API (there is no Kubernetes cluster here; the stand-in answers TokenReviews the
//! way the API server does, for one known service-account token).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pleo_auth_core::testing::{bytes, key, service_env};
use pleo_auth_core::{ErrorKind, Precondition, SecretStore, random_urlsafe};
use pleo_auth_stores::vault::VaultStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use vaultrs::api::token::requests::CreateTokenRequestBuilder;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};

fn addr() -> String {
    service_env("PLEO_AUTH_TEST_VAULT_ADDR")
}

fn client_with(token: &str) -> VaultClient {
    VaultClient::new(
        VaultClientSettingsBuilder::default()
            .address(addr())
            .token(token)
            .build()
            .unwrap(),
    )
    .unwrap()
}

fn root_client() -> VaultClient {
    client_with(&service_env("PLEO_AUTH_TEST_VAULT_TOKEN"))
}

/// A policy that may use `secret/.../pleo-auth-tests/*` (and the default policy's token calls).
async fn kv_policy() -> String {
    let name = format!("pleo-auth-tests-{}", random_urlsafe(6).replace('_', "x"));
    vaultrs::sys::policy::set(
        &root_client(),
        &name,
        r#"
path "secret/data/pleo-auth-tests/*" { capabilities = ["create", "read", "update", "delete"] }
path "secret/metadata/pleo-auth-tests/*" { capabilities = ["read", "list"] }
path "secret/destroy/pleo-auth-tests/*" { capabilities = ["update"] }
"#,
    )
    .await
    .unwrap();
    name
}

/// A child token of the root token with `policy`, a `ttl`, a max TTL and renewability.
async fn token(policy: &str, ttl: &str, max_ttl: &str, renewable: bool) -> String {
    let mut request = CreateTokenRequestBuilder::default();
    request
        .policies(vec![policy.to_owned(), "default".to_owned()])
        .ttl(ttl)
        .explicit_max_ttl(max_ttl)
        .renewable(renewable)
        .no_parent(true);
    vaultrs::token::new(&root_client(), Some(&mut request))
        .await
        .unwrap()
        .client_token
}

fn builder() -> pleo_auth_stores::vault::VaultStoreBuilder {
    VaultStore::builder(addr()).path_prefix(format!("pleo-auth-tests/{}", random_urlsafe(6)))
}

/// Writes `token` to `path` the way a Vault Agent sink does: a new file renamed over the old.
fn write_sink(path: &Path, token: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, format!("{token}\n")).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

#[tokio::test]
async fn a_token_file_is_read_again_when_it_changes() {
    let policy = kv_policy().await;
    let first = token(&policy, "1h", "2h", true).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("vault-token");
    write_sink(&sink, &first);
    let store = builder().token_file(&sink).build().unwrap();
    let k = key(&["grant"]);
    let v1 = store
        .put(&k, bytes("v1"), Precondition::Absent)
        .await
        .unwrap();

    // The agent replaces the token and revokes the old one: the store follows the file.
    let second = token(&policy, "1h", "2h", true).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    write_sink(&sink, &second);
    vaultrs::token::revoke(&root_client(), &first)
        .await
        .unwrap();
    let v2 = store
        .put(&k, bytes("v2"), Precondition::Version(v1))
        .await
        .expect("the store read the new token");

    // Revoked behind the file's back: the 403 reads the file again, then says what to fix.
    vaultrs::token::revoke(&root_client(), &second)
        .await
        .unwrap();
    let err = store.get(&k).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err:?}");
    assert!(
        err.to_string().contains("give the store a valid token"),
        "{err}"
    );
    assert!(!format!("{err:?} {store:?}").contains(&second));

    // A new token in the file heals it without a restart.
    let third = token(&policy, "1h", "2h", true).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    write_sink(&sink, &third);
    assert_eq!(store.get(&k).await.unwrap().unwrap().version, v2);

    let missing = builder()
        .token_file(dir.path().join("absent"))
        .build()
        .unwrap();
    let err = missing.get(&k).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("absent"), "{err}");
}

#[tokio::test]
async fn a_renewable_token_is_renewed_before_it_expires() {
    let policy = kv_policy().await;
    let short = token(&policy, "3s", "1m", true).await;
    let store = builder().token(&short).build().unwrap();
    let k = key(&["renewed"]);
    let mut version = store
        .put(&k, bytes("0"), Precondition::Absent)
        .await
        .unwrap();
    // Six seconds of use: twice the token's TTL.
    for i in 1..=12 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        version = store
            .put(&k, bytes(&i.to_string()), Precondition::Version(version))
            .await
            .unwrap_or_else(|e| panic!("write {i} after {}ms: {e:?}", i * 500));
    }
    let life = vaultrs::token::lookup(&root_client(), &short).await;
    assert!(
        life.is_ok(),
        "the token is alive past its first TTL: renewed"
    );
}

#[tokio::test]
async fn a_token_that_cannot_be_renewed_expires_with_a_config_error() {
    let policy = kv_policy().await;
    for (ttl, max_ttl, renewable, what) in [
        ("2s", "2s", true, "at its max TTL"),
        ("2s", "1m", false, "not renewable"),
    ] {
        let token = token(&policy, ttl, max_ttl, renewable).await;
        let store = builder().token(&token).build().unwrap();
        let k = key(&["expiring"]);
        let version = store
            .put(&k, bytes("kept"), Precondition::Absent)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(3000)).await;
        let err = store
            .put(&k, bytes("lost?"), Precondition::Version(version.clone()))
            .await
            .expect_err(what);
        assert_eq!(err.kind(), ErrorKind::Config, "{what}: {err:?}");
        assert!(!err.is_retryable());
        assert!(
            err.to_string().contains("new token") || err.to_string().contains("valid token"),
            "{what}: {err}"
        );
        let root_view = VaultStore::builder(addr())
            .token(service_env("PLEO_AUTH_TEST_VAULT_TOKEN"))
            .path_prefix(
                format!("{store:?}")
                    .split("path_prefix: Some(\"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .unwrap()
                    .to_owned(),
            )
            .build()
            .unwrap();
        let stored = root_view.get(&k).await.unwrap().unwrap();
        assert_eq!(stored.version, version, "{what}: nothing was overwritten");
    }
}

#[tokio::test]
async fn a_valid_token_without_the_capability_is_permission_denied() {
    let no_kv = token("default", "1h", "2h", true).await;
    let store = builder().token(&no_kv).build().unwrap();
    let err = store.get(&key(&["x"])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err:?}");
}

/// A self-signed CA certificate (its key was thrown away) for OpenBao's `kubernetes_ca_cert`.
const UNUSED_CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBozCCAUmgAwIBAgIUSeKb524lgRXfu2JdYtqMJU/TneEwCgYIKoZIzj0EAwIw\nJjEkMCIGA1UEAwwbcGxlby1hdXRoIHRlc3RzIHN0YW5kLWluIENBMCAXDTI2MTIw\nNjAyNTEzOVoYDzIxMjYxMTEyMDI1MTM5WjAmMSQwIgYDVQQDDBtwbGVvLWF1dGgg\ndGVzdHMgc3RhbmQtaW4gQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQkPJqY\nDEa4/gpTQ4mqZUYOyoYHCNH+oqUCYPh397lVeGGGjOfZDYweH1J6gSEsn5LIwLeY\nD4kRQupGOD0TCMq+o1MwUTAdBgNVHQ4EFgQUNkF4mOvUfkA7ER7N4UjJi+9TQdYw\nHwYDVR0jBBgwFoAUNkF4mOvUfkA7ER7N4UjJi+9TQdYwDwYDVR0TAQH/BAUwAwEB\n/zAKBggqhkjOPQQDAgNIADBFAiBFOUVU7iNchowunWEfDGiirHagv5Z4ad0xfk5e\n1AtGLwIhAIcfoMo2ArS//bTaNBN7MrChN2ZyCOFex80D269Mexo3\n-----END CERTIFICATE-----";

/// A stand-in for the Kubernetes API server's TokenReview endpoint: it authenticates exactly one
/// service-account token, as `system:serviceaccount:<namespace>:<name>`.
struct TokenReviewer {
    url: String,
    reviews: Arc<AtomicUsize>,
}

impl TokenReviewer {
    async fn start(valid_jwt: String, namespace: &str, name: &str, uid: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let reviews = Arc::new(AtomicUsize::new(0));
        let counter = reviews.clone();
        let user = serde_json::json!({
            "username": format!("system:serviceaccount:{namespace}:{name}"),
            "uid": uid,
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{namespace}")],
        });
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let (valid_jwt, user, counter) = (valid_jwt.clone(), user.clone(), counter.clone());
                tokio::spawn(async move {
                    let Some(body) = read_request(&mut socket).await else {
                        return;
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    let review: serde_json::Value =
                        serde_json::from_slice(&body).unwrap_or_default();
                    let authenticated = review["spec"]["token"].as_str() == Some(&valid_jwt);
                    let mut status = serde_json::json!({ "authenticated": authenticated });
                    if authenticated {
                        status["user"] = user;
                    } else {
                        status["error"] = "invalid bearer token".into();
                    }
                    let answer = serde_json::json!({
                        "kind": "TokenReview",
                        "apiVersion": "authentication.k8s.io/v1",
                        "metadata": {},
                        "spec": review["spec"],
                        "status": status,
                    })
                    .to_string();
                    let response = format!(
                        "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                        answer.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        Self { url, reviews }
    }
}

/// Reads one HTTP request and returns its body.
async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buffer.len() < end + 4 + length {
            let n = socket.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buffer.extend_from_slice(&chunk[..n]);
        }
        return Some(buffer[end + 4..end + 4 + length].to_vec());
    }
}

/// A service-account JWT as Kubernetes issues it (the stand-in, not a signature, vouches for
/// it, as the API server's TokenReview does for OpenBao).
fn service_account_jwt(namespace: &str, name: &str, uid: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"pleo-auth-tests"}"#);
    let claims = URL_SAFE_NO_PAD.encode(
        serde_json::json!({
            "iss": "kubernetes/serviceaccount",
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "kubernetes.io/serviceaccount/namespace": namespace,
            "kubernetes.io/serviceaccount/service-account.name": name,
            "kubernetes.io/serviceaccount/service-account.uid": uid,
            "kubernetes.io/serviceaccount/secret.name": format!("{name}-token"),
        })
        .to_string(),
    );
    let signature = URL_SAFE_NO_PAD.encode(b"signature checked by the TokenReview stand-in");
    format!("{header}.{claims}.{signature}")
}

#[tokio::test]
async fn kubernetes_auth_logs_in_with_the_service_account_jwt() {
    let (namespace, name, uid) = (
        "billing",
        "pleo-auth",
        "5f1c2d3e-0000-4000-8000-000000000001",
    );
    let jwt = service_account_jwt(namespace, name, uid);
    let reviewer = TokenReviewer::start(jwt.clone(), namespace, name, uid).await;
    let root = root_client();
    let mount = format!("k8s-{}", random_urlsafe(6).to_lowercase().replace('_', "x"));
    vaultrs::sys::auth::enable(&root, &mount, "kubernetes", None)
        .await
        .unwrap();
    let mut config =
        vaultrs::api::auth::kubernetes::requests::ConfigureKubernetesAuthRequest::builder();
    // The stand-in speaks plain http, so the CA is never used; OpenBao still wants one.
    config
        .disable_local_ca_jwt(true)
        .kubernetes_ca_cert(UNUSED_CA_PEM);
    vaultrs::auth::kubernetes::configure(&root, &mount, &reviewer.url, Some(&mut config))
        .await
        .unwrap();
    let policy = kv_policy().await;
    let mut role = vaultrs::api::auth::kubernetes::requests::CreateKubernetesRoleRequest::builder();
    role.bound_service_account_names(vec![name.to_owned()])
        .bound_service_account_namespaces(vec![namespace.to_owned()])
        .token_policies(vec![policy])
        .token_ttl("1h");
    vaultrs::auth::kubernetes::role::create(&root, &mount, "pleo-auth", Some(&mut role))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let jwt_path = dir.path().join("token");
    std::fs::write(&jwt_path, &jwt).unwrap();
    let store = builder()
        .kubernetes("pleo-auth")
        .kubernetes_mount(&mount)
        .kubernetes_jwt_path(&jwt_path)
        .build()
        .unwrap();
    let k = key(&["k8s"]);
    store
        .put(&k, bytes("via kubernetes"), Precondition::Absent)
        .await
        .expect("logged in with the service-account JWT");
    assert!(store.get(&k).await.unwrap().is_some());
    assert!(
        reviewer.reviews.load(Ordering::SeqCst) >= 1,
        "OpenBao asked the TokenReview stand-in"
    );
    assert!(!format!("{store:?}").contains(&jwt));

    // A JWT the reviewer does not vouch for: the login is refused, a Config error.
    std::fs::write(
        &jwt_path,
        service_account_jwt(namespace, name, "another-uid"),
    )
    .unwrap();
    let stranger = builder()
        .kubernetes("pleo-auth")
        .kubernetes_mount(&mount)
        .kubernetes_jwt_path(&jwt_path)
        .build()
        .unwrap();
    let err = stranger.get(&k).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err:?}");
    assert!(err.to_string().contains("Kubernetes login"), "{err}");
}
