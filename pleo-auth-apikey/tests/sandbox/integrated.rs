//! Integrated API keys against the sandbox.

use std::sync::Arc;
use std::time::Duration;

use pleo_auth_apikey::{
    ApiKeyConfig, ApiKeyEvent, ConnectOptions, ErrorKind as KeyKind, IntegratedKeys, masked,
};
use pleo_auth_core::testing::FaultyStore;
use pleo_auth_core::{
    ApiKey, ApiKeyCredential, ClientId, CredentialKey, CredentialProvider, CredentialStatus,
    DynSecretStore, Environment, ErrorKind, ManualClock, RecordStoreExt, ScopeSet, Subject,
    TenantId, TenantLinks, layout,
};
use pleo_auth_sandbox::{AuthMethod, seed};

use crate::common::*;

fn integration() -> ClientId {
    ClientId::new("acme-erp").unwrap()
}

fn required() -> ScopeSet {
    "export-jobs:read vendors:read".parse().unwrap()
}

struct Setup {
    pleo: Pleo,
    store: DynSecretStore,
    keys: IntegratedKeys,
    events: Events,
    clock: ManualClock,
}

fn keys_on(
    env: &Environment,
    store: &DynSecretStore,
    clock: &ManualClock,
    events: &Events,
    scopes: ScopeSet,
) -> IntegratedKeys {
    let config = ApiKeyConfig::new(env.clone(), integration())
        .with_required_scopes(scopes)
        .with_pleo_client_id(seed::DEMO_CLIENT_ID);
    IntegratedKeys::builder(config, store.clone())
        .clock(Arc::new(clock.clone()))
        .events(events.sink())
        .cache_ttl(Duration::from_secs(30))
        .build()
        .expect("provider builds")
}

async fn setup_with(scopes: ScopeSet) -> Setup {
    let pleo = sandbox().await;
    let store = memory_store();
    let clock = ManualClock::new();
    let events = Events::default();
    let keys = keys_on(&pleo.env, &store, &clock, &events, scopes);
    Setup {
        pleo,
        store,
        keys,
        events,
        clock,
    }
}

async fn setup() -> Setup {
    setup_with(required()).await
}

impl Setup {
    fn mint(&self, company: pleo_auth_core::CompanyId) -> ApiKey {
        ApiKey::new(
            self.pleo
                .sandbox
                .mint_integrated_key(seed::DEMO_CLIENT_ID, *company.as_uuid()),
        )
    }

    async fn record(&self, company: pleo_auth_core::CompanyId) -> Option<ApiKeyCredential> {
        let key = layout::api_key(&CredentialKey::new(
            self.pleo.env.name().clone(),
            integration(),
            Subject::Company(company),
        ));
        self.store
            .get_record::<ApiKeyCredential>(&key)
            .await
            .unwrap()
            .map(|(r, _)| r)
    }

    fn links(&self) -> TenantLinks {
        TenantLinks::new(self.store.clone(), Arc::new(self.clock.clone()))
    }

    /// Connects a key of Acme Denmark and returns a client on these keys, and the raw key.
    async fn connected_client(&self) -> (pleo_auth_http::PleoClient, String) {
        let key = self.mint(dk());
        let raw = key.expose_secret().to_owned();
        self.keys.connect(key, Some(dk())).await.unwrap();
        let client =
            pleo_auth_http::PleoClient::builder(self.pleo.env.clone(), Arc::new(self.keys.clone()))
                .build()
                .unwrap();
        (client, raw)
    }
}

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

#[tokio::test]
async fn connect_stores_the_key_under_its_company_and_creates_the_installation() {
    let s = setup().await;
    let key = s.mint(dk());
    let expected_mask = masked(&key);
    let raw = key.expose_secret().to_owned();

    let info = s.keys.connect(key, Some(dk())).await.expect("connect");
    assert_eq!(info.subject, Subject::Company(dk()));
    assert_eq!(info.company(), Some(dk()));
    assert_eq!(info.status, CredentialStatus::Active);
    assert_eq!(info.generation, 1);
    assert!(info.scopes.contains_all(&required()));
    assert_eq!(info.masked_key, expected_mask);
    assert_eq!(info.masked_key.len(), 8);
    assert!(raw.ends_with(&info.masked_key[4..]));
    assert!(!format!("{info:?}").contains(CANARY));
    assert!(!format!("{:?}", s.keys).contains(CANARY));

    // Stored under (environment, integration, company), with the key itself.
    let record = s.record(dk()).await.expect("stored under DK");
    assert_eq!(record.key.as_ref().unwrap().expose_secret(), raw);
    assert!(s.record(se()).await.is_none());
    assert_eq!(stored_keys(&s.store).await.len(), 1);
    assert_eq!(s.keys.get(dk()).await.unwrap(), Some(info.clone()));
    assert_eq!(s.keys.list().await.unwrap(), vec![info.clone()]);

    // Pleo saw the introspection and the installation call, both with the key.
    let log = s.pleo.sandbox.request_log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(
        log.iter()
            .all(|r| r.auth_method == Some(AuthMethod::ApiKey))
    );
    assert_eq!(requests_to(&s.pleo, "GET", "/v1/introspect"), 1);
    assert_eq!(requests_to(&s.pleo, "POST", "/v1/installations/me"), 1);

    // The provider hands out the key for DK only, and it works against the API.
    let credential = s
        .keys
        .credential_for(&Subject::Company(dk()))
        .await
        .expect("credential");
    assert_eq!(credential.subject, Subject::Company(dk()));
    assert_eq!(credential.environment, *s.pleo.env.name());
    let (status, body) = api_get(&s.pleo, &credential, "/v1/vendors", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["companyId"], seed::ACME_DK.to_string());
    let again = s
        .keys
        .credential_for(&Subject::Company(dk()))
        .await
        .unwrap();
    assert_eq!(again.id, credential.id, "served from the cache");
    let err = s
        .keys
        .credential_for(&Subject::Company(se()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);

    assert_eq!(
        s.events.all(),
        vec![ApiKeyEvent::Connected {
            environment: s.pleo.env.name().clone(),
            integration_id: integration(),
            subject: Subject::Company(dk()),
            tenant: None,
            generation: 1,
        }]
    );
    assert!(
        assert_logs_clean() > 0,
        "logs are captured, so the check means something"
    );
}

#[tokio::test]
async fn a_key_of_another_company_is_refused_and_nothing_is_stored() {
    let s = setup().await;
    let err = assert_clean(s.keys.connect(s.mint(dk()), Some(se())).await.unwrap_err());
    assert_eq!(err.kind().core_kind(), ErrorKind::WrongCompany);
    assert!(matches!(
        err.kind(),
        KeyKind::WrongCompany { expected, actual }
            if *expected == Subject::Company(se()) && *actual == Subject::Company(dk())
    ));
    assert!(err.to_string().contains(&seed::ACME_DK.to_string()));
    assert!(stored_keys(&s.store).await.is_empty());
    assert_eq!(requests_to(&s.pleo, "POST", "/v1/installations/me"), 0);
    assert!(s.events.all().is_empty());
    assert_logs_clean();
}

#[tokio::test]
async fn missing_scopes_are_named_and_nothing_is_activated() {
    let s = setup_with(
        "vendors:read accounts:write tax-codes:read"
            .parse()
            .unwrap(),
    )
    .await;
    let err = assert_clean(s.keys.connect(s.mint(dk()), None).await.unwrap_err());
    assert_eq!(err.kind().core_kind(), ErrorKind::PermissionDenied);
    let KeyKind::MissingScopes { missing, granted } = err.kind() else {
        panic!("{err:?}");
    };
    assert_eq!(missing.to_string(), "accounts:write tax-codes:read");
    assert!(granted.contains(&"vendors:read".parse().unwrap()));
    assert_eq!(
        err.to_string(),
        "the api key lacks the required scopes: accounts:write tax-codes:read"
    );
    assert!(stored_keys(&s.store).await.is_empty());
    assert_eq!(requests_to(&s.pleo, "POST", "/v1/installations/me"), 0);
    assert_logs_clean();
}

#[tokio::test]
async fn malformed_keys_are_refused_before_anything_is_sent() {
    let s = setup().await;
    let good = s.mint(dk());
    let cases = [
        format!("{}\n", good.expose_secret()),
        format!(" {}", good.expose_secret()),
        format!("{}\t", good.expose_secret()),
        good.expose_secret().replacen('_', " ", 1),
        good.expose_secret().replacen('_', "\u{0}", 1),
        good.expose_secret().replacen('_', "é", 1),
        "CANARY-short".to_owned(),
        format!("CANARY-{}", "x".repeat(600)),
        String::new(),
    ];
    for raw in cases {
        let err = assert_clean(
            s.keys
                .connect(ApiKey::new(raw), Some(dk()))
                .await
                .unwrap_err(),
        );
        assert_eq!(err.kind().core_kind(), ErrorKind::InvalidInput, "{err}");
        assert!(
            matches!(err.kind(), KeyKind::InvalidKeyFormat { .. }),
            "{err:?}"
        );
    }
    assert!(
        s.pleo.sandbox.request_log().is_empty(),
        "nothing reached Pleo"
    );
    assert!(stored_keys(&s.store).await.is_empty());
    assert_logs_clean();
}

#[tokio::test]
async fn unknown_keys_are_refused_and_nothing_is_stored() {
    let s = setup().await;
    let unknown = ApiKey::new("CANARY-ik_sandbox_this-key-was-never-minted-by-pleo");
    let err = assert_clean(s.keys.connect(unknown, None).await.unwrap_err());
    assert_eq!(err.kind().core_kind(), ErrorKind::Unauthenticated);
    assert!(!err.is_retryable());
    assert_eq!(err.kind(), &KeyKind::KeyRejected);
    assert!(std::error::Error::source(&err).is_some());
    assert!(
        err.to_string()
            .contains("unknown, revoked, expired or from another environment")
    );
    assert_eq!(requests_to(&s.pleo, "GET", "/v1/introspect"), 1);
    assert_eq!(requests_to(&s.pleo, "POST", "/v1/installations/me"), 0);
    assert!(stored_keys(&s.store).await.is_empty());
    assert_logs_clean();
}

#[tokio::test]
async fn an_oauth_access_token_passed_as_a_key_is_refused() {
    let s = setup().await;
    let token = oauth_access_token(&s.pleo, seed::ACME_DK).await;
    assert!(token.starts_with("CANARY-"));
    // The token is real: as a Bearer token Pleo accepts it.
    let bearer = pleo_auth_core::Credential {
        id: pleo_auth_core::CredentialId::next(),
        header: pleo_auth_core::AuthorizationHeader::bearer(&pleo_auth_core::AccessToken::new(
            token.clone(),
        )),
        subject: Subject::Company(dk()),
        environment: s.pleo.env.name().clone(),
        scopes: ScopeSet::new(),
        kind: pleo_auth_core::CredentialKind::OAuth,
    };
    let (status, body) = api_get(&s.pleo, &bearer, "/v1/introspect", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["authMethod"], "OAUTH2");

    let err = assert_clean(
        s.keys
            .connect(ApiKey::new(token), Some(dk()))
            .await
            .unwrap_err(),
    );
    assert!(
        matches!(err.kind(), KeyKind::KeyRejected | KeyKind::NotAnApiKey),
        "{err:?}"
    );
    assert!(stored_keys(&s.store).await.is_empty());
    assert_eq!(requests_to(&s.pleo, "POST", "/v1/installations/me"), 0);
    assert_logs_clean();
}

#[tokio::test]
async fn a_key_from_the_other_environment_is_refused() {
    let staging = sandbox_named("staging-sim").await;
    let production = sandbox_named("production-sim").await;
    let store = memory_store();
    let clock = ManualClock::new();
    let events = Events::default();
    let prod_keys = keys_on(&production.env, &store, &clock, &events, required());
    let staging_keys = keys_on(&staging.env, &store, &clock, &events, required());

    let staging_key = staging
        .sandbox
        .mint_integrated_key(seed::DEMO_CLIENT_ID, seed::ACME_DK);
    let err = assert_clean(
        prod_keys
            .connect(ApiKey::new(staging_key.clone()), Some(dk()))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.kind().core_kind(), ErrorKind::Unauthenticated);
    assert!(matches!(err.kind(), KeyKind::KeyRejected));
    assert!(stored_keys(&store).await.is_empty(), "nothing stored");
    assert_eq!(
        production.sandbox.request_log().last().map(|r| r.status),
        Some(401)
    );

    // The same key works in its own environment, and only there.
    let info = staging_keys
        .connect(ApiKey::new(staging_key), Some(dk()))
        .await
        .expect("the key works in staging-sim");
    assert_eq!(info.environment.as_str(), "staging-sim");
    let err = prod_keys
        .credential_for(&Subject::Company(dk()))
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::NotFound,
        "not visible to production-sim"
    );
    assert!(prod_keys.list().await.unwrap().is_empty());
    assert_eq!(staging_keys.list().await.unwrap().len(), 1);
    assert_logs_clean();
}

#[tokio::test]
async fn replace_refuses_a_key_of_another_company_and_keeps_the_old_key() {
    let s = setup().await;
    s.keys.connect(s.mint(dk()), Some(dk())).await.unwrap();
    let old = s
        .keys
        .credential_for(&Subject::Company(dk()))
        .await
        .unwrap();

    let err = assert_clean(s.keys.replace(dk(), s.mint(se())).await.unwrap_err());
    assert_eq!(err.kind().core_kind(), ErrorKind::WrongCompany);
    let record = s.record(dk()).await.unwrap();
    assert_eq!(record.generation, 1);
    let still = s
        .keys
        .credential_for(&Subject::Company(dk()))
        .await
        .unwrap();
    assert_eq!(still.id, old.id);
    assert_eq!(still.header.expose_secret(), old.header.expose_secret());
    assert!(s.record(se()).await.is_none());

    // A malformed or unknown replacement is refused too, the old key untouched.
    let err = assert_clean(
        s.keys
            .replace(dk(), ApiKey::new("CANARY bad"))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.kind().core_kind(), ErrorKind::InvalidInput);
    // Replacing a company that has no key is NotFound, without calling Pleo.
    let calls = s.pleo.sandbox.request_log().len();
    let err = assert_clean(s.keys.replace(se(), s.mint(se())).await.unwrap_err());
    assert_eq!(err.kind().core_kind(), ErrorKind::NotFound);
    assert_eq!(s.pleo.sandbox.request_log().len(), calls);

    // A new key of the same company swaps in (Pleo revokes the previous one when it mints).
    let info = s.keys.replace(dk(), s.mint(dk())).await.expect("replace");
    assert_eq!(info.generation, 2);
    let new = s
        .keys
        .credential_for(&Subject::Company(dk()))
        .await
        .unwrap();
    assert_ne!(new.id, old.id);
    assert_ne!(new.header.expose_secret(), old.header.expose_secret());
    assert_eq!(api_get(&s.pleo, &new, "/v1/vendors", None).await.0, 200);
    assert_eq!(api_get(&s.pleo, &old, "/v1/vendors", None).await.0, 401);
    // A late 401 for the old value does not mark the new key.
    assert!(
        s.keys
            .rejected(&Subject::Company(dk()), &old.id)
            .await
            .unwrap()
    );
    assert_eq!(
        s.record(dk()).await.unwrap().status,
        CredentialStatus::Active
    );
    assert!(s.events.all().contains(&ApiKeyEvent::Replaced {
        environment: s.pleo.env.name().clone(),
        integration_id: integration(),
        subject: Subject::Company(dk()),
        generation: 2,
    }));
    assert_logs_clean();
}

#[tokio::test]
async fn a_revoked_key_is_marked_needs_replacement_once_without_retry() {
    let s = setup().await;
    let key = s.mint(dk());
    let raw = key.expose_secret().to_owned();
    s.keys.connect(key, Some(dk())).await.unwrap();
    let subject = Subject::Company(dk());
    let credential = s.keys.credential_for(&subject).await.unwrap();

    assert!(s.pleo.sandbox.revoke_api_key(&raw));
    assert_eq!(
        api_get(&s.pleo, &credential, "/v1/vendors", None).await.0,
        401
    );
    let calls = s.pleo.sandbox.request_log().len();

    // Many concurrent rejections of the same value: Pleo is asked once (it rejects the key
    // too), one mark, no retry.
    let results = reject_concurrently(&s.keys, &subject, &credential.id).await;
    assert!(results.iter().all(|r| !r), "no retry can help: {results:?}");
    let log = s.pleo.sandbox.request_log();
    assert_eq!(log.len(), calls + 1, "one re-validation, no retry loop");
    assert_eq!(log.last().unwrap().path, "/v1/introspect");

    let record = s.record(dk()).await.unwrap();
    assert_eq!(record.status, CredentialStatus::NeedsReplacement);
    assert!(
        record
            .status_reason
            .as_deref()
            .is_some_and(|why| why.contains("/v1/introspect") && why.contains("401")),
        "the mark says why: {:?}",
        record.status_reason
    );
    assert!(record.key.is_some(), "the record is kept for replace");
    let info = s.keys.get(dk()).await.unwrap().unwrap();
    assert_eq!(info.status, CredentialStatus::NeedsReplacement);
    let err = s.keys.credential_for(&subject).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NeedsReplacement);
    assert!(!err.is_retryable());
    let needs: Vec<_> = s
        .events
        .all()
        .into_iter()
        .filter(|e| matches!(e, ApiKeyEvent::NeedsReplacement { .. }))
        .collect();
    assert_eq!(
        needs,
        vec![ApiKeyEvent::NeedsReplacement {
            environment: s.pleo.env.name().clone(),
            integration_id: Some(integration()),
            subject,
            kind: pleo_auth_core::ApiKeyKind::Integrated,
        }]
    );

    // Another replica (same store, its own cache) sees the mark once its cache is stale.
    let replica = keys_on(
        &s.pleo.env,
        &s.store,
        &s.clock,
        &Events::default(),
        required(),
    );
    assert_eq!(
        replica.credential_for(&subject).await.unwrap_err().kind(),
        ErrorKind::NeedsReplacement
    );

    // The customer pastes a new key: usable again.
    s.keys.replace(dk(), s.mint(dk())).await.unwrap();
    let fresh = s.keys.credential_for(&subject).await.unwrap();
    assert_eq!(api_get(&s.pleo, &fresh, "/v1/vendors", None).await.0, 200);
    assert_logs_clean();
}

/// Sends 16 rejections of `id` at once.
async fn reject_concurrently(
    keys: &IntegratedKeys,
    subject: &Subject,
    id: &pleo_auth_core::CredentialId,
) -> Vec<bool> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (keys, subject, id) = (keys.clone(), *subject, id.clone());
        tasks.spawn(async move { keys.rejected(&subject, &id).await.unwrap() });
    }
    tasks.join_all().await
}

#[tokio::test]
async fn other_replicas_see_a_replacement_after_the_cache_lifetime() {
    let s = setup().await;
    s.keys.connect(s.mint(dk()), Some(dk())).await.unwrap();
    let subject = Subject::Company(dk());
    let replica = keys_on(
        &s.pleo.env,
        &s.store,
        &s.clock,
        &Events::default(),
        required(),
    );
    let before = replica.credential_for(&subject).await.unwrap();

    s.keys.replace(dk(), s.mint(dk())).await.unwrap();
    let cached = replica.credential_for(&subject).await.unwrap();
    assert_eq!(
        cached.id, before.id,
        "fresh cache entries are served from memory"
    );

    s.clock.advance(Duration::from_secs(31));
    let after = replica.credential_for(&subject).await.unwrap();
    assert_ne!(after.id, before.id);
    assert_eq!(api_get(&s.pleo, &after, "/v1/vendors", None).await.0, 200);

    // The old value's 401 on the replica: a newer key is current, so a retry helps and
    // nothing is marked.
    assert!(replica.rejected(&subject, &before.id).await.unwrap());
    assert_eq!(
        s.record(dk()).await.unwrap().status,
        CredentialStatus::Active
    );
    assert_logs_clean();
}

#[tokio::test]
async fn connect_links_the_tenant_and_refuses_a_second_tenant_for_the_company() {
    let s = setup().await;
    let env = s.pleo.env.name().clone();
    let links = s.links();

    let connected = s
        .keys
        .connect_with(s.mint(dk()), ConnectOptions::new().tenant(tenant("erp-1")))
        .await
        .expect("connect with tenant");
    assert_eq!(connected.key.tenant, Some(tenant("erp-1")));
    assert!(connected.replaced_links.is_empty());
    let link = links
        .subject_for(&env, &tenant("erp-1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(link.subject, Subject::Company(dk()));
    assert_eq!(link.client_id, integration());

    // A second tenant for the same company: refused, naming both sides; nothing changes.
    let before = s.record(dk()).await.unwrap();
    let err = assert_clean(
        s.keys
            .connect_with(s.mint(dk()), ConnectOptions::new().tenant(tenant("erp-2")))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.kind().core_kind(), ErrorKind::Conflict);
    assert!(
        matches!(err.kind(), KeyKind::TenantConflict { .. }),
        "{err:?}"
    );
    let shown = err.to_string();
    assert!(
        shown.contains("erp-2") && shown.contains(&seed::ACME_DK.to_string()),
        "{shown}"
    );
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(
        cause.contains("erp-1"),
        "the cause names the existing link: {cause}"
    );
    assert!(
        links
            .subject_for(&env, &tenant("erp-2"))
            .await
            .unwrap()
            .is_none()
    );
    let after = s.record(dk()).await.unwrap();
    assert_eq!(after.generation, before.generation);
    assert_eq!(after.tenant, Some(tenant("erp-1")));
    assert_eq!(
        after.key.unwrap().expose_secret(),
        before.key.unwrap().expose_secret(),
        "the stored key is untouched"
    );

    // A tenant already linked to another company: refused too.
    let err = assert_clean(
        s.keys
            .connect_with(s.mint(se()), ConnectOptions::new().tenant(tenant("erp-1")))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.kind().core_kind(), ErrorKind::Conflict);
    assert!(s.record(se()).await.is_none(), "no half-connected company");
    assert_logs_clean();
}

#[tokio::test]
async fn an_explicit_relink_moves_the_tenant() {
    let s = setup().await;
    let env = s.pleo.env.name().clone();
    let links = s.links();
    s.keys
        .connect_with(s.mint(dk()), ConnectOptions::new().tenant(tenant("erp-1")))
        .await
        .unwrap();

    // The company moves to a new tenant.
    let moved = s
        .keys
        .connect_with(
            s.mint(dk()),
            ConnectOptions::new().tenant(tenant("erp-2")).relink(true),
        )
        .await
        .expect("relink");
    assert_eq!(moved.replaced_links.len(), 1);
    assert_eq!(moved.replaced_links[0].tenant, tenant("erp-1"));
    assert_eq!(moved.key.tenant, Some(tenant("erp-2")));
    assert!(
        links
            .subject_for(&env, &tenant("erp-1"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        links
            .tenant_for(&env, &Subject::Company(dk()))
            .await
            .unwrap()
            .unwrap()
            .tenant,
        tenant("erp-2")
    );

    // The tenant moves to another company: the old company's record forgets it.
    let moved = s
        .keys
        .connect_with(
            s.mint(se()),
            ConnectOptions::new().tenant(tenant("erp-2")).relink(true),
        )
        .await
        .expect("relink to SE");
    assert_eq!(moved.replaced_links.len(), 1);
    assert_eq!(
        links
            .subject_for(&env, &tenant("erp-2"))
            .await
            .unwrap()
            .unwrap()
            .subject,
        Subject::Company(se())
    );
    assert!(
        links
            .tenant_for(&env, &Subject::Company(dk()))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(s.record(dk()).await.unwrap().tenant, None);
    assert_eq!(s.record(se()).await.unwrap().tenant, Some(tenant("erp-2")));
    assert_logs_clean();
}

#[tokio::test]
async fn a_failed_key_write_leaves_no_tenant_link_behind() {
    let pleo = sandbox().await;
    // A backend outage at the worst moment: writes of API key records fail, the rest goes to
    // memory.
    let failing = FaultyStore::default().writes_failing_only_under("pleo-auth/v1/apikey/");
    failing
        .fail_writes
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let store: DynSecretStore = Arc::new(failing);
    let clock = ManualClock::new();
    let keys = keys_on(&pleo.env, &store, &clock, &Events::default(), required());
    let key = ApiKey::new(
        pleo.sandbox
            .mint_integrated_key(seed::DEMO_CLIENT_ID, seed::ACME_DK),
    );
    let err = assert_clean(
        keys.connect_with(key, ConnectOptions::new().tenant(tenant("erp-1")))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.kind().core_kind(), ErrorKind::Unavailable);
    assert!(err.is_retryable());
    assert!(matches!(err.kind(), KeyKind::Store(_)), "{err:?}");
    assert!(
        stored_keys(&store).await.is_empty(),
        "the link claim was rolled back"
    );
    assert_logs_clean();
}

#[tokio::test]
async fn remove_deletes_the_key_and_its_tenant_link() {
    let s = setup().await;
    let env = s.pleo.env.name().clone();
    s.keys
        .connect_with(s.mint(dk()), ConnectOptions::new().tenant(tenant("erp-1")))
        .await
        .unwrap();
    let subject = Subject::Company(dk());
    s.keys.credential_for(&subject).await.unwrap();

    let removed = s.keys.remove(dk()).await.unwrap().expect("was stored");
    assert_eq!(removed.subject, subject);
    assert!(
        stored_keys(&s.store).await.is_empty(),
        "record and both link halves gone"
    );
    assert!(
        s.links()
            .subject_for(&env, &tenant("erp-1"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        s.keys.credential_for(&subject).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(s.keys.remove(dk()).await.unwrap(), None);
    assert!(s.events.all().contains(&ApiKeyEvent::Removed {
        environment: env,
        integration_id: integration(),
        subject,
    }));
    assert_logs_clean();
}

#[tokio::test]
async fn transient_pleo_failures_are_retryable_and_store_nothing() {
    let s = setup().await;
    s.pleo.sandbox.inject_fault(
        pleo_auth_sandbox::Endpoint::Api,
        pleo_auth_sandbox::Fault::ServerError(503),
        1,
    );
    let err = assert_clean(s.keys.connect(s.mint(dk()), None).await.unwrap_err());
    assert!(matches!(err.kind(), KeyKind::Introspection(_)), "{err:?}");
    assert_eq!(err.kind().core_kind(), ErrorKind::Unavailable);
    assert!(err.is_retryable());
    let core: pleo_auth_core::Error = err.into();
    assert!(core.is_retryable());
    assert!(stored_keys(&s.store).await.is_empty());
    assert_logs_clean();
}

#[tokio::test]
async fn a_failed_installation_call_stores_nothing() {
    let s = setup().await;
    // The introspection passes (a zero delay), the installation call gets a 502.
    s.pleo.sandbox.inject_fault(
        pleo_auth_sandbox::Endpoint::Api,
        pleo_auth_sandbox::Fault::Delay(Duration::ZERO),
        1,
    );
    s.pleo.sandbox.inject_fault(
        pleo_auth_sandbox::Endpoint::Api,
        pleo_auth_sandbox::Fault::ServerError(502),
        1,
    );
    let err = assert_clean(
        s.keys
            .connect_with(s.mint(dk()), ConnectOptions::new().tenant(tenant("erp-1")))
            .await
            .unwrap_err(),
    );
    assert!(matches!(err.kind(), KeyKind::Installation(_)), "{err:?}");
    assert!(err.is_retryable());
    assert!(
        stored_keys(&s.store).await.is_empty(),
        "neither key nor link"
    );
    s.keys
        .connect_with(s.mint(dk()), ConnectOptions::new().tenant(tenant("erp-1")))
        .await
        .expect("a retry succeeds");
    assert_logs_clean();
}

#[tokio::test]
async fn standalone_keys_are_not_accepted_as_integrated_keys() {
    let s = setup().await;
    let org_key = s.pleo.sandbox.mint_standalone_key(
        seed::ACME_ORG,
        &["export-jobs:read", "vendors:read"],
        None,
    );
    let err = assert_clean(
        s.keys
            .connect(ApiKey::new(org_key), None)
            .await
            .unwrap_err(),
    );
    assert!(matches!(err.kind(), KeyKind::NotAnIntegratedKey), "{err:?}");
    assert_eq!(err.kind().core_kind(), ErrorKind::InvalidInput);

    // A company-level Standalone key carries no client id either: Pleo names no integration.
    let company_key = s.pleo.sandbox.mint_standalone_key(
        seed::ACME_DK,
        &["export-jobs:read", "vendors:read"],
        None,
    );
    let err = assert_clean(
        s.keys
            .connect(ApiKey::new(company_key), Some(dk()))
            .await
            .unwrap_err(),
    );
    assert!(matches!(err.kind(), KeyKind::NotAnIntegratedKey), "{err:?}");
    assert!(err.to_string().contains("standalone"), "{err}");
    assert!(stored_keys(&s.store).await.is_empty());
    assert_eq!(requests_to(&s.pleo, "POST", "/v1/installations/me"), 0);
    assert_logs_clean();
}

#[tokio::test]
async fn pleo_client_turns_a_revoked_key_into_needs_replacement_without_a_retry_loop() {
    let s = setup().await;
    let (client, raw) = s.connected_client().await;
    let body: serde_json::Value = client
        .get("/v1/vendors")
        .company(dk())
        .json()
        .await
        .expect("the connected key works");
    assert_eq!(body["data"][0]["companyId"], seed::ACME_DK.to_string());

    assert!(s.pleo.sandbox.revoke_api_key(&raw));
    s.pleo.sandbox.clear_request_log();
    let err = client
        .get("/v1/vendors")
        .company(dk())
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
    assert!(!format!("{err} {err:?}").contains(CANARY));
    assert_eq!(requests_to(&s.pleo, "GET", "/v1/vendors"), 1, "no retry");
    assert_eq!(
        s.keys.get(dk()).await.unwrap().unwrap().status,
        CredentialStatus::NeedsReplacement
    );

    let err = client
        .get("/v1/vendors")
        .company(dk())
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NeedsReplacement, "{err}");
    assert_eq!(
        requests_to(&s.pleo, "GET", "/v1/vendors"),
        1,
        "not sent again"
    );
    assert_logs_clean();
}

/// A store that counts writes of API key records (to see a mark written once).
#[derive(Debug, Default)]
struct CountingStore {
    inner: pleo_auth_core::MemoryStore,
    key_writes: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl pleo_auth_core::SecretStore for CountingStore {
    async fn get(
        &self,
        key: &pleo_auth_core::StoreKey,
    ) -> pleo_auth_core::Result<Option<pleo_auth_core::Versioned>> {
        self.inner.get(key).await
    }

    async fn put(
        &self,
        key: &pleo_auth_core::StoreKey,
        value: pleo_auth_core::SecretBytes,
        precondition: pleo_auth_core::Precondition,
    ) -> pleo_auth_core::Result<pleo_auth_core::Version> {
        let written = self.inner.put(key, value, precondition).await?;
        if key.as_str().starts_with("pleo-auth/v1/apikey/") {
            self.key_writes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(written)
    }

    async fn delete(
        &self,
        key: &pleo_auth_core::StoreKey,
        precondition: pleo_auth_core::Precondition,
    ) -> pleo_auth_core::Result<()> {
        self.inner.delete(key, precondition).await
    }

    async fn list(
        &self,
        prefix: &pleo_auth_core::StoreKey,
    ) -> pleo_auth_core::Result<Vec<pleo_auth_core::StoreKey>> {
        self.inner.list(prefix).await
    }
}

#[tokio::test]
async fn a_gateway_401_leaves_the_key_valid_and_the_request_succeeds() {
    let s = setup().await;
    let (client, _) = s.connected_client().await;
    // Something in front of the API answers 401 to the next request, without asking Pleo.
    s.pleo.sandbox.inject_fault(
        pleo_auth_sandbox::Endpoint::Api,
        pleo_auth_sandbox::Fault::Unauthorized,
        1,
    );
    s.pleo.sandbox.clear_request_log();
    let body: serde_json::Value = client
        .get("/v1/vendors")
        .company(dk())
        .json()
        .await
        .expect("re-validated, retried once, answered");
    assert_eq!(body["data"][0]["companyId"], seed::ACME_DK.to_string());
    assert_eq!(
        requests_to(&s.pleo, "GET", "/v1/introspect"),
        1,
        "asked Pleo once"
    );
    let record = s.record(dk()).await.unwrap();
    assert_eq!(record.status, CredentialStatus::Active);
    assert_eq!(record.status_reason, None);
    assert!(
        !s.events
            .all()
            .iter()
            .any(|e| matches!(e, ApiKeyEvent::NeedsReplacement { .. }))
    );

    // A burst of such 401s for the same key asks Pleo once more at most.
    let subject = Subject::Company(dk());
    let credential = s.keys.credential_for(&subject).await.unwrap();
    s.clock.advance(pleo_auth_apikey::REVALIDATION_MEMO);
    let results = reject_concurrently(&s.keys, &subject, &credential.id).await;
    assert!(results.iter().all(|r| *r), "a retry can help: {results:?}");
    assert_eq!(requests_to(&s.pleo, "GET", "/v1/introspect"), 2);
    assert_eq!(
        s.record(dk()).await.unwrap().status,
        CredentialStatus::Active
    );
    assert_logs_clean();
}

#[tokio::test]
async fn a_401_whose_recheck_fails_transiently_marks_nothing() {
    let s = setup().await;
    let (client, _) = s.connected_client().await;
    // A 401 from the gateway, then Pleo is unavailable when the key is checked again.
    let sandbox = &s.pleo.sandbox;
    sandbox.inject_fault(
        pleo_auth_sandbox::Endpoint::Api,
        pleo_auth_sandbox::Fault::Unauthorized,
        1,
    );
    sandbox.inject_fault(
        pleo_auth_sandbox::Endpoint::Api,
        pleo_auth_sandbox::Fault::ServerError(503),
        1,
    );
    let err = client
        .get("/v1/vendors")
        .company(dk())
        .send()
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert_ne!(err.kind(), ErrorKind::NeedsReplacement);
    let record = s.record(dk()).await.unwrap();
    assert_eq!(record.status, CredentialStatus::Active);
    // The key still works.
    let credential = s
        .keys
        .credential_for(&Subject::Company(dk()))
        .await
        .unwrap();
    assert_eq!(
        api_get(&s.pleo, &credential, "/v1/vendors", None).await.0,
        200
    );
    assert_logs_clean();
}

#[tokio::test]
async fn a_real_revocation_is_marked_once_across_replicas() {
    let pleo = sandbox().await;
    let counting = Arc::new(CountingStore::default());
    let store: DynSecretStore = counting.clone();
    let clock = ManualClock::new();
    let events = Events::default();
    let first = keys_on(&pleo.env, &store, &clock, &events, required());
    let second = keys_on(&pleo.env, &store, &clock, &events, required());
    let key = ApiKey::new(
        pleo.sandbox
            .mint_integrated_key(seed::DEMO_CLIENT_ID, seed::ACME_DK),
    );
    let raw = key.expose_secret().to_owned();
    first.connect(key, Some(dk())).await.unwrap();
    let subject = Subject::Company(dk());
    let (a, b) = (
        first.credential_for(&subject).await.unwrap(),
        second.credential_for(&subject).await.unwrap(),
    );
    let writes = counting
        .key_writes
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(pleo.sandbox.revoke_api_key(&raw));
    let (ra, rb) = tokio::join!(
        first.rejected(&subject, &a.id),
        second.rejected(&subject, &b.id)
    );
    assert!(!ra.unwrap() && !rb.unwrap(), "no retry can help");
    assert_eq!(
        counting
            .key_writes
            .load(std::sync::atomic::Ordering::SeqCst),
        writes + 1,
        "the mark is written once"
    );
    let marks = events
        .all()
        .into_iter()
        .filter(|e| matches!(e, ApiKeyEvent::NeedsReplacement { .. }))
        .count();
    assert_eq!(marks, 1);
    for replica in [&first, &second] {
        assert_eq!(
            replica.credential_for(&subject).await.unwrap_err().kind(),
            ErrorKind::NeedsReplacement
        );
    }
    assert_logs_clean();
}
