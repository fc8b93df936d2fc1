//! Canary leak scan. Every secret in this test carries [`CANARY`] (the sandbox prefixes its
//! tokens, codes and keys with it; client secrets, store passwords and keys contain it). With a
//! TRACE subscriber for every target (the `log` records of reqwest, hyper-util and rustls
//! included), every flow runs: OAuth connect, refresh, rejections, rate limits, store failures,
//! reauthorization, disconnect; Integrated and Standalone API keys; callbacks, records and
//! store errors; deliberate panics that format secret-holding values. Every error produced is
//! formatted with `{}` and `{:?}`, its whole source chain too. Pass: the marker appears 0 times,
//! raw or encoded (base64 at every alignment, percent, JSON-escaped, hex; see
//! `pleo_auth_core::testing::find_leak`).

#![cfg(all(
    feature = "oauth",
    feature = "http",
    feature = "apikey",
    feature = "file"
))]

#[path = "reliability_support/mod.rs"]
mod support;

use std::fmt::Debug;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pleo_auth_apikey::{ApiKeyConfig, IntegratedKeys, StandaloneKey};
use pleo_auth_core::testing::assert_no_leak;
use pleo_auth_core::{
    ApiKey, ClientSecret, CompanyId, CredentialProvider, MemoryStore, OAuthGrant, Precondition,
    Record, SecretBytes, SecretStore,
};
use pleo_auth_http::PleoClient;
use pleo_auth_oauth::{AuthorizeOptions, OAuthClient, OAuthConfig};
use pleo_auth_sandbox::{Endpoint, Fault, seed};
use pleo_auth_stores::file::FileStore;
use support::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Everything shown to a person or a log: formatted errors and values.
#[derive(Default)]
struct Shown(Vec<String>);

impl Shown {
    fn error<E: std::error::Error>(&mut self, err: &E) {
        let mut out = format!("{err} | {err:?}");
        let mut source = err.source();
        while let Some(s) = source {
            out.push_str(&format!(" | {s} | {s:?}"));
            source = s.source();
        }
        self.0.push(out);
    }

    fn debug(&mut self, value: &impl Debug) {
        self.0.push(format!("{value:?}"));
    }

    fn count(&self) -> usize {
        self.0.len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_appears_nowhere() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .try_init()
        .expect("the only subscriber in this test binary");
    let panics = Captured::default();
    let panic_writer = panics.clone();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let mut w = panic_writer.clone();
        let _ = writeln!(w, "{info}");
        default_hook(info);
    }));

    let mut shown = Shown::default();
    oauth_flows(&mut shown).await;
    api_key_flows(&mut shown).await;
    record_and_store_errors(&mut shown).await;
    deliberate_panics().await;

    let _ = std::panic::take_hook();
    let logs = captured.text();
    let panic_text = panics.text();
    assert!(shown.count() >= 40, "many errors and values were formatted");
    assert!(
        logs.len() > 20_000,
        "TRACE output was captured: {} bytes",
        logs.len()
    );
    assert!(logs.contains("pleo_auth_refresh"), "our spans were seen");
    assert!(
        logs.contains("hyper_util") || logs.contains("reqwest") || logs.contains("rustls"),
        "records of the HTTP stack were seen"
    );
    assert!(
        panic_text.matches("panicked at").count() >= 5,
        "{panic_text}"
    );
    for text in &shown.0 {
        assert_no_leak("formatted output", text, &[CANARY]);
    }
    assert_no_leak("a panic message", &panic_text, &[CANARY]);
    assert_no_leak("the TRACE logs", &logs, &[CANARY]);
    eprintln!(
        "canary scan: {} formatted errors and values, {} bytes of TRACE logs, {} panics: 0 leaks",
        shown.count(),
        logs.len(),
        panic_text.matches("panicked at").count()
    );
}

async fn oauth_flows(shown: &mut Shown) {
    let flaky = Arc::new(FaultyStore::new(MemoryStore::new()));
    let h = Harness::new(SandboxSpec::default(), flaky.clone()).await;
    let client = h.replica();
    shown.debug(&client);
    shown.debug(client.config());
    shown.debug(
        &OAuthConfig::builder().client_secret(ClientSecret::new(format!("{CANARY}-builder"))),
    );
    let request = client.authorize(AuthorizeOptions::new()).await.unwrap();
    shown.debug(&request);
    h.connect(&client, acme()).await;
    let manager = client.token_manager();
    shown.debug(&manager);
    let token = manager.access_token(&acme()).await.unwrap();
    assert!(token.access_token().expose_secret().contains(CANARY));
    shown.debug(&token);
    shown.debug(token.credential());
    let api = PleoClient::builder(h.environment.clone(), Arc::new(manager.clone()))
        .build()
        .unwrap();
    shown.debug(&api);
    let acme_id: CompanyId = acme().company().unwrap();
    let response = api
        .get("/v1/export-jobs")
        .company(acme_id)
        .send()
        .await
        .unwrap();
    shown.debug(&response);

    // Callbacks that carry a code, a repeated code, an unknown state.
    for bad in [
        format!("code={CANARY}-a&code={CANARY}-b&state=s"),
        format!("code={CANARY}-a&error=access_denied&state=s"),
        format!("code={CANARY}-a&state={CANARY}-state"),
        format!("error=server_error&error_description={CANARY}-desc&state={CANARY}-s"),
    ] {
        shown.error(&client.complete(&bad).await.unwrap_err());
    }

    // A 401 (revoked access token), then a persistent 401 from another company's request.
    h.sandbox
        .revoke_access_tokens(token.access_token().expose_secret());
    api.get("/v1/export-jobs")
        .company(acme_id)
        .send()
        .await
        .unwrap();
    let other = CompanyId::from_uuid(seed::GLOBEX);
    shown.error(
        &api.get("/v1/export-jobs")
            .company(other)
            .send()
            .await
            .unwrap_err(),
    );

    // Transient failures, rate limits, a wrong client secret.
    h.sandbox
        .inject_fault(Endpoint::Token, Fault::ServerError(503), 3);
    h.advance(ACCESS_TTL);
    shown.error(&manager.access_token(&acme()).await.unwrap_err());
    h.advance(Duration::from_secs(60));
    h.sandbox.inject_fault(
        Endpoint::Token,
        Fault::TooManyRequests {
            retry_after_secs: 60,
        },
        1,
    );
    shown.error(&manager.access_token(&acme()).await.unwrap_err());
    shown.error(
        &api.get("/v1/export-jobs")
            .company(acme_id)
            .send()
            .await
            .unwrap_err(),
    );
    h.advance(Duration::from_secs(61));
    let wrong = OAuthClient::builder(
        OAuthConfig::builder()
            .environment(h.environment.clone())
            .client_id(client_id(0))
            .client_secret(ClientSecret::new(format!("{CANARY}-wrong-secret")))
            .redirect_uri(REDIRECT_URI)
            .scopes(SCOPES)
            .build()
            .unwrap(),
        h.store.clone(),
    )
    .clock(Arc::new(h.clock.clone()))
    .build()
    .unwrap()
    .token_manager();
    h.advance(ACCESS_TTL);
    shown.error(&wrong.access_token(&acme()).await.unwrap_err());
    manager.access_token(&acme()).await.unwrap();

    // The store fails while a rotated pair is written, then recovers.
    flaky.fail_writes.store(true, Ordering::SeqCst);
    h.advance(ACCESS_TTL);
    manager.access_token(&acme()).await.unwrap();
    shown.error(&manager.flush().await.unwrap_err());
    flaky.fail_writes.store(false, Ordering::SeqCst);
    manager.flush().await.unwrap();
    flaky.set_down(true);
    h.advance(ACCESS_TTL);
    shown.error(&manager.access_token(&acme()).await.unwrap_err());
    let core: pleo_auth_core::Error = manager.credential_for(&acme()).await.unwrap_err();
    shown.error(&core);
    shown.error(
        &api.get("/v1/export-jobs")
            .company(acme_id)
            .send()
            .await
            .unwrap_err(),
    );
    flaky.set_down(false);
    shown.debug(&manager.status(&acme()).await.unwrap());
    shown.debug(&manager.list().await.unwrap());
    shown.debug(&manager.keep_alive().await.unwrap());

    // Pleo revokes the grant: reauthorization, then disconnect.
    let current = manager.access_token(&acme()).await.unwrap();
    h.sandbox
        .revoke_grant(current.access_token().expose_secret());
    h.advance(ACCESS_TTL);
    shown.error(&manager.access_token(&acme()).await.unwrap_err());
    shown.error(
        &api.get("/v1/export-jobs")
            .company(acme_id)
            .send()
            .await
            .unwrap_err(),
    );
    shown.debug(&manager.disconnect(&acme()).await.unwrap());
    shown.debug(&h.events.events());
}

async fn api_key_flows(shown: &mut Shown) {
    let sandbox = start_sandbox(&SandboxSpec::default()).await;
    let environment = environment_at(sandbox.base_url().as_str());
    let store = Arc::new(MemoryStore::new());
    let keys = IntegratedKeys::new(
        ApiKeyConfig::new(environment.clone(), client_id(0).parse().unwrap()),
        store.clone(),
    )
    .unwrap();
    shown.debug(&keys);
    let acme_id = CompanyId::from_uuid(seed::ACME_DK);
    let minted = sandbox.mint_integrated_key(&client_id(0), seed::ACME_DK);
    assert!(minted.contains(CANARY));
    let info = keys
        .connect(ApiKey::new(minted.clone()), Some(acme_id))
        .await
        .unwrap();
    shown.debug(&info);
    // A key of another company than expected, a malformed key, a revoked key.
    let globex_key = sandbox.mint_integrated_key(&client_id(0), seed::GLOBEX);
    shown.error(
        &keys
            .connect(ApiKey::new(globex_key), Some(acme_id))
            .await
            .unwrap_err(),
    );
    shown.error(
        &keys
            .connect(ApiKey::new(format!("{CANARY} not a key")), None)
            .await
            .unwrap_err(),
    );
    let api = PleoClient::builder(environment.clone(), Arc::new(keys.clone()))
        .build()
        .unwrap();
    api.get("/v1/export-jobs")
        .company(acme_id)
        .send()
        .await
        .unwrap();
    assert!(sandbox.revoke_api_key(&minted));
    shown.error(
        &api.get("/v1/export-jobs")
            .company(acme_id)
            .send()
            .await
            .unwrap_err(),
    );
    shown.error(
        &api.get("/v1/export-jobs")
            .company(acme_id)
            .send()
            .await
            .unwrap_err(),
    );
    let replacement = sandbox.mint_integrated_key(&client_id(0), seed::ACME_DK);
    shown.debug(
        &keys
            .replace(acme_id, ApiKey::new(replacement))
            .await
            .unwrap(),
    );
    shown.debug(&keys.list().await.unwrap());
    shown.debug(&keys.remove(acme_id).await.unwrap());

    let standalone = sandbox.mint_standalone_key(seed::ACME_DK, &["export-jobs:read"], None);
    let key =
        Arc::new(StandaloneKey::new(environment.clone(), ApiKey::new(standalone.clone())).unwrap());
    shown.debug(&key);
    shown.debug(&key.subject().await.unwrap());
    assert!(sandbox.revoke_api_key(&standalone));
    let api = PleoClient::builder(environment.clone(), key)
        .build()
        .unwrap();
    shown.error(
        &api.get("/v1/export-jobs")
            .company(acme_id)
            .send()
            .await
            .unwrap_err(),
    );
    shown.error(
        &StandaloneKey::new(environment.clone(), ApiKey::new(format!("{CANARY}\n"))).unwrap_err(),
    );
}

async fn record_and_store_errors(shown: &mut Shown) {
    // Records that do not decode.
    let bad = format!(
        r#"{{"schema":1,"kind":"oauth_grant","refresh_token":"{CANARY}-rt","generation":"{CANARY}"}}"#
    );
    shown.error(&OAuthGrant::decode(bad.as_bytes()).unwrap_err());
    let newer = format!(r#"{{"schema":7,"kind":"oauth_grant","refresh_token":"{CANARY}-rt"}}"#);
    shown.error(&OAuthGrant::decode(newer.as_bytes()).unwrap_err());

    // A damaged file in the file store.
    let dir = tempfile::tempdir().unwrap();
    let files = FileStore::open(dir.path().join("store")).unwrap();
    let key = pleo_auth_core::StoreKey::from_parts(["canary", "x"]).unwrap();
    files
        .put(
            &key,
            SecretBytes::new(format!("{CANARY}-value").into_bytes()),
            Precondition::None,
        )
        .await
        .unwrap();
    let path = files.path_of(&key);
    std::fs::write(&path, format!("{CANARY} damaged")).unwrap();
    shown.error(&files.get(&key).await.unwrap_err());
    shown.debug(&files);

    #[cfg(feature = "encryption")]
    {
        use pleo_auth_stores::encrypted::{EncryptedStore, EncryptionKey, EncryptionKeys};
        let inner = Arc::new(MemoryStore::new());
        let a = EncryptedStore::new(
            inner.clone(),
            EncryptionKeys::new(EncryptionKey::generate("a").unwrap()),
        );
        a.put(
            &key,
            SecretBytes::new(format!("{CANARY}-sealed").into_bytes()),
            Precondition::None,
        )
        .await
        .unwrap();
        shown.debug(&a);
        let b = EncryptedStore::new(
            inner,
            EncryptionKeys::new(EncryptionKey::generate("b").unwrap()),
        );
        shown.error(&b.get(&key).await.unwrap_err());
    }
    #[cfg(feature = "redis")]
    {
        use pleo_auth_stores::redis::RedisStore;
        let wrong = RedisStore::builder(format!("redis://user:{CANARY}-password@127.0.0.1:1"))
            .connection_timeout(Duration::from_millis(200))
            .connect()
            .await
            .unwrap_err();
        shown.error(&wrong);
        shown.debug(&RedisStore::builder(format!(
            "redis://u:{CANARY}-pw@127.0.0.1:1"
        )));
    }
    #[cfg(feature = "vault")]
    {
        use pleo_auth_stores::vault::VaultStore;
        let store = VaultStore::builder("http://127.0.0.1:1")
            .token(format!("{CANARY}-vault-token"))
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        shown.debug(&store);
        shown.error(&store.get(&key).await.unwrap_err());
    }
    #[cfg(feature = "aws")]
    {
        use pleo_auth_stores::aws::AwsStore;
        let store = AwsStore::builder()
            .endpoint_url("http://127.0.0.1:1")
            .region("eu-west-1")
            .static_credentials("AKIDRELIABILITYSCAN", format!("{CANARY}-aws-secret"))
            .timeout(Duration::from_millis(300))
            .connect_timeout(Duration::from_millis(300))
            .build()
            .await
            .unwrap();
        shown.debug(&store);
        shown.error(&store.get(&key).await.unwrap_err());
    }
}

/// Panics that format secret-holding values, on this thread and in spawned tasks.
async fn deliberate_panics() {
    let grant = OAuthGrant::decode(
        format!(
            r#"{{"schema":1,"kind":"oauth_grant","environment":"sandbox","client_id":"c","subject":"urn:pleo:company:0c000000-0000-4000-8000-000000000001","status":"active","access_token":"{CANARY}-at","refresh_token":"{CANARY}-rt","scopes":"users:read","generation":1,"created_at":0,"updated_at":0}}"#
        )
        .as_bytes(),
    )
    .unwrap();
    let key = ApiKey::new(format!("{CANARY}-api-key"));
    let secret = ClientSecret::new(format!("{CANARY}-client-secret"));
    let bytes = SecretBytes::new(format!("{CANARY}-bytes").into_bytes());
    let outcomes = [
        std::panic::catch_unwind(|| panic!("grant {grant:?}")).is_err(),
        std::panic::catch_unwind(|| panic!("key {key:?}")).is_err(),
        std::panic::catch_unwind(|| panic!("secret {secret:?}")).is_err(),
        std::panic::catch_unwind(|| panic!("bytes {bytes:?}")).is_err(),
    ];
    assert!(outcomes.iter().all(|p| *p));
    let task = tokio::spawn(async move {
        let held = (grant, key);
        panic!("in a task: {held:?}");
    });
    assert!(task.await.unwrap_err().is_panic());
}
