//! The `PleoAuth` facade against an in-process sandbox: the builder's checks, one client that
//! picks each company's method, rejections routed to the method that issued the credential, and
//! the connect flow behind the axum router.
#![cfg(all(
    feature = "oauth",
    feature = "apikey",
    feature = "http",
    feature = "file",
    feature = "sandbox",
    feature = "axum"
))]

use std::sync::Arc;

use pleo_auth::apikey::{ApiKeyConfig, ConnectOptions, StandaloneKey};
use pleo_auth::oauth::{AuthorizeOptions, OAuthConfig};
use pleo_auth::sandbox::{AuthMethod, SandboxHandle, harness, seed};
use pleo_auth::{
    ApiKey, ClientId, ClientSecret, CompanyId, ConnectionState, CredentialKind, Environment,
    ErrorKind, MemoryStore, PleoAuth, Subject, TenantId,
};

const CANARY: &str = "CANARY-";

async fn start_sandbox() -> (SandboxHandle, Environment) {
    let sandbox = harness::canary_sandbox()
        .auto_approve(Some(seed::ACME_DK))
        .start()
        .await
        .unwrap();
    let base = sandbox.base_url();
    let environment = pleo_auth_core::testing::environment_at("sandbox", &base);
    (sandbox, environment)
}

fn oauth_config(environment: &Environment, redirect_uri: &str) -> OAuthConfig {
    OAuthConfig::builder()
        .environment(environment.clone())
        .client_id(seed::DEMO_CLIENT_ID)
        .client_secret(ClientSecret::new(seed::DEMO_CLIENT_SECRET))
        .redirect_uri(redirect_uri)
        .scopes("users:read")
        .build()
        .unwrap()
}

fn key_config(environment: &Environment) -> ApiKeyConfig {
    ApiKeyConfig::new(
        environment.clone(),
        ClientId::new(seed::DEMO_CLIENT_ID).unwrap(),
    )
}

fn company(id: uuid::Uuid) -> CompanyId {
    CompanyId::from_uuid(id)
}

use harness::http as browser;

/// Connects the company the sandbox approves, as a browser would, through the OAuth client.
async fn connect_oauth(auth: &PleoAuth, tenant: &str) -> Subject {
    let oauth = auth.oauth().unwrap();
    let request = oauth
        .authorize(AuthorizeOptions::new().tenant(TenantId::new(tenant).unwrap()))
        .await
        .unwrap();
    let location = harness::follow_auto_approve(&browser(), &request.url).await;
    oauth.complete(location.as_str()).await.unwrap().subject
}

#[tokio::test]
async fn the_builder_checks_its_settings() {
    let staging = Environment::staging();
    let err = PleoAuth::builder()
        .store(Arc::new(MemoryStore::new()))
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("environment"), "{err}");

    let err = PleoAuth::builder()
        .environment(staging.clone())
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("store"), "{err}");

    // A store that cannot be opened is reported by build().
    let err = PleoAuth::builder()
        .environment(staging.clone())
        .file_store("/proc/pleo-auth-facade-test")
        .build()
        .unwrap_err();
    assert!(
        err.to_string().contains("opening the store failed"),
        "{err}"
    );

    // A method of another environment is refused.
    let config = OAuthConfig::builder()
        .environment(Environment::production())
        .client_id("client")
        .client_secret(ClientSecret::new("CANARY-client-secret"))
        .redirect_uri("https://app.example/callback")
        .scopes("users:read")
        .build()
        .unwrap();
    let err = PleoAuth::builder()
        .environment(staging.clone())
        .store_from(MemoryStore::new())
        .oauth(config.clone())
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongEnvironment);
    let err = PleoAuth::builder()
        .environment(staging.clone())
        .store_from(MemoryStore::new())
        .api_keys(key_config(&Environment::production()))
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongEnvironment);

    // Methods that were not configured say so.
    let bare = PleoAuth::builder()
        .environment(staging.clone())
        .store_from(MemoryStore::new())
        .build()
        .unwrap();
    assert_eq!(bare.oauth().unwrap_err().kind(), ErrorKind::Config);
    assert_eq!(bare.api_keys().unwrap_err().kind(), ErrorKind::Config);
    assert!(bare.connect_flow().is_err());
    assert!(bare.standalone_key().is_none());
    assert!(bare.credentials().is_empty());
    assert!(bare.connections().await.unwrap().is_empty());
    let nobody = bare
        .client()
        .get("/v2/employees")
        .company(company(seed::ACME_DK))
        .send()
        .await
        .unwrap_err();
    assert_eq!(nobody.kind(), ErrorKind::NotFound);

    // Debug shows the configuration, never the secret.
    let production = PleoAuth::builder()
        .environment(Environment::production())
        .store_from(MemoryStore::new())
        .oauth(config)
        .build()
        .unwrap();
    let shown = format!("{production:?} {:?}", PleoAuth::builder());
    assert!(shown.contains("production"), "{shown}");
    assert!(!shown.contains(CANARY), "{shown}");
}

/// Safe by default: a store other processes see refuses a lease that only coordinates this
/// process, unless that is asked for by name; the README's shape (a file store and nothing
/// else) builds with a lease that spans processes.
#[tokio::test]
async fn a_process_local_lease_with_a_shared_store_is_refused_unless_asked_for_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = OAuthConfig::builder()
        .environment(Environment::staging())
        .client_id("client")
        .client_secret(ClientSecret::new("CANARY-client-secret"))
        .redirect_uri("https://app.example/callback")
        .scopes("users:read")
        .build()
        .unwrap();
    let shared = || {
        PleoAuth::builder()
            .environment(Environment::staging())
            .file_store(dir.path().join("store"))
            .oauth(config.clone())
    };
    let err = shared()
        .lease(Arc::new(pleo_auth::InProcessLease::new()))
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    let chain = format!("{err} {:?}", std::error::Error::source(&err));
    assert!(chain.contains("process-local lease"), "{chain}");

    shared()
        .lease(Arc::new(pleo_auth::InProcessLease::new()))
        .danger_process_local_lease()
        .build()
        .expect("the loudly named opt-in");
    shared().build().expect("the README's shape builds");
    PleoAuth::builder()
        .environment(Environment::staging())
        .store_from(MemoryStore::new())
        .lease(Arc::new(pleo_auth::InProcessLease::new()))
        .oauth(config)
        .build()
        .expect("an in-memory store is seen by this process only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_uses_each_companys_own_method() {
    let (sandbox, environment) = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let standalone_key = sandbox.mint_standalone_key(seed::ACME_SE, &["users:read"], None);
    let auth = PleoAuth::builder()
        .environment(environment.clone())
        .file_store(dir.path().join("store"))
        .oauth(oauth_config(&environment, "http://127.0.0.1:1/callback"))
        .api_keys(key_config(&environment))
        .standalone_key(
            StandaloneKey::new(environment.clone(), ApiKey::new(standalone_key)).unwrap(),
        )
        .build()
        .unwrap();
    assert_eq!(auth.credentials().len(), 3);

    // Acme Denmark: OAuth. Globex: an Integrated key. Acme Sweden: the Standalone key.
    let acme = connect_oauth(&auth, "acme-dk").await;
    assert_eq!(acme, Subject::Company(company(seed::ACME_DK)));
    let key = sandbox.mint_integrated_key(seed::DEMO_CLIENT_ID, seed::GLOBEX);
    auth.api_keys()
        .unwrap()
        .connect_with(
            ApiKey::new(key.clone()),
            ConnectOptions::new().tenant(TenantId::new("globex").unwrap()),
        )
        .await
        .unwrap();

    let client = auth.client();
    for (tenant_or_company, expected, method) in [
        ("acme-dk", seed::ACME_DK, AuthMethod::OAuth2),
        ("globex", seed::GLOBEX, AuthMethod::ApiKey),
    ] {
        client
            .get("/v2/employees")
            .tenant(tenant_or_company)
            .send()
            .await
            .unwrap();
        let last = sandbox.request_log().pop().unwrap();
        assert_eq!(last.company_id, Some(expected.to_string()));
        assert_eq!(last.auth_method, Some(method));
        assert_eq!(
            last.subject_urn,
            Some(format!("urn:pleo:company:{expected}"))
        );
    }
    client
        .get("/v2/employees")
        .company(company(seed::ACME_SE))
        .send()
        .await
        .unwrap();
    let last = sandbox.request_log().pop().unwrap();
    assert_eq!(last.auth_method, Some(AuthMethod::ApiKey));
    assert_eq!(last.company_id, Some(seed::ACME_SE.to_string()));

    // No credential anywhere for a company outside the seed: NotFound, nothing sent.
    let before = sandbox.request_log().len();
    let err = client
        .get("/v2/employees")
        .company(company(uuid::Uuid::from_u128(7)))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(sandbox.request_log().len(), before);

    // The connections: one grant and one key, with their tenants.
    let connections = auth.connections().await.unwrap();
    let summary: Vec<_> = connections
        .iter()
        .map(|c| {
            (
                c.tenant.as_ref().map(|t| t.as_str().to_owned()),
                c.subject,
                c.method,
                c.state,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                Some("acme-dk".to_owned()),
                Subject::Company(company(seed::ACME_DK)),
                CredentialKind::OAuth,
                ConnectionState::Active
            ),
            (
                Some("globex".to_owned()),
                Subject::Company(company(seed::GLOBEX)),
                CredentialKind::IntegratedApiKey,
                ConnectionState::Active
            ),
        ]
    );
    let shown = format!("{connections:?} {auth:?}");
    assert!(!shown.contains(CANARY), "{shown}");

    // A rejected Integrated key: the 401 goes to the key provider, which marks the key
    // NeedsReplacement and declines a retry; the OAuth grant is not refreshed.
    let refreshes = sandbox.stats().refreshes;
    assert!(sandbox.revoke_api_key(&key));
    let err = client
        .get("/v2/employees")
        .tenant("globex")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated);
    assert_eq!(err.status(), Some(401));
    assert!(!format!("{err} {err:?}").contains(CANARY));
    assert_eq!(sandbox.stats().refreshes, refreshes);
    let states: Vec<_> = auth
        .connections()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.state)
        .collect();
    assert_eq!(
        states,
        vec![ConnectionState::Active, ConnectionState::NeedsReplacement]
    );
    let again = client
        .get("/v2/employees")
        .tenant("globex")
        .send()
        .await
        .unwrap_err();
    assert_eq!(again.kind(), ErrorKind::NeedsReplacement);
    // Acme Denmark still works.
    client
        .get("/v2/employees")
        .tenant("acme-dk")
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_access_token_is_refreshed_once_through_the_composite() {
    let (sandbox, environment) = start_sandbox().await;
    let auth = PleoAuth::builder()
        .environment(environment.clone())
        .store_from(MemoryStore::new())
        .oauth(oauth_config(&environment, "http://127.0.0.1:1/callback"))
        .api_keys(key_config(&environment))
        .build()
        .unwrap();
    let acme = connect_oauth(&auth, "acme-dk").await;
    let before = sandbox.stats().refreshes;
    // Pleo revokes the access tokens (not the grant): the 401 is routed to the token manager,
    // which refreshes once; the request is retried and succeeds.
    let company = acme.company().unwrap().to_string();
    sandbox.revoke_access_tokens(pleo_auth::sandbox::RevokeTarget::Client {
        client_id: seed::DEMO_CLIENT_ID.to_owned(),
        subject: company.parse().unwrap(),
    });
    auth.client()
        .get("/v2/employees")
        .tenant("acme-dk")
        .send()
        .await
        .unwrap();
    assert_eq!(sandbox.stats().refreshes, before + 1);
    let grant = auth.token_manager().unwrap().status(&acme).await.unwrap();
    assert_eq!(grant.generation, 2);
}

#[cfg(feature = "axum")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_flow_serves_the_axum_routes() {
    let (sandbox, environment) = start_sandbox().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_url = format!("http://{}", listener.local_addr().unwrap());
    let auth = PleoAuth::builder()
        .environment(environment.clone())
        .store_from(MemoryStore::new())
        .oauth(oauth_config(&environment, &format!("{app_url}/callback")))
        .build()
        .unwrap();
    // The app's session says the signed-in user belongs to tenant erp-4711 (a stand-in).
    let signed_in = |_: &axum::http::request::Parts| -> Result<TenantId, pleo_auth::Rejection> {
        Ok(TenantId::new("erp-4711").expect("a tenant id"))
    };
    let app = pleo_auth::http::connect_router(auth.connect_flow().unwrap(), signed_in);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let browser = browser();
    let connect = browser
        .get(format!("{app_url}/connect"))
        .send()
        .await
        .unwrap();
    assert_eq!(connect.status(), 303);
    let flow_cookie = connect.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let authorize = connect.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        authorize.starts_with(sandbox.base_url().as_str()),
        "{authorize}"
    );
    let consent = browser.get(&authorize).send().await.unwrap();
    let callback = consent.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        callback.starts_with(&format!("{app_url}/callback?")),
        "{callback}"
    );
    let page = browser
        .get(&callback)
        .header("cookie", &flow_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains(&format!("Connected Pleo company {}", seed::ACME_DK)),
        "{html}"
    );
    assert!(!html.contains(CANARY));

    let connections = auth.connections().await.unwrap();
    assert_eq!(connections.len(), 1);
    assert_eq!(
        connections[0].tenant.as_ref().map(TenantId::as_str),
        Some("erp-4711")
    );
    auth.client()
        .get("/v2/employees")
        .tenant("erp-4711")
        .send()
        .await
        .unwrap();
    server.abort();
}
