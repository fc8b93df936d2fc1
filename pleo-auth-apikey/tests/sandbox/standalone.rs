//! Standalone API keys against the sandbox.

use std::sync::Arc;

use pleo_auth_apikey::{ApiKeyEvent, ErrorKind as KeyKind, StandaloneKey};
use pleo_auth_core::{
    ApiKey, ApiKeyCredential, ClientId, CredentialKey, CredentialProvider, CredentialStatus,
    ErrorKind, OrganisationId, RecordStoreExt, Subject, layout,
};
use pleo_auth_sandbox::seed;

use crate::common::*;

fn org() -> Subject {
    Subject::Organisation(OrganisationId::from_uuid(seed::ACME_ORG))
}

#[tokio::test]
async fn an_organisation_key_serves_each_of_its_companies_with_an_explicit_company_id() {
    let pleo = sandbox().await;
    let raw =
        pleo.sandbox
            .mint_standalone_key(seed::ACME_ORG, &["vendors:read", "users:read"], None);
    let key = StandaloneKey::new(pleo.env.clone(), ApiKey::new(raw)).unwrap();
    assert!(!format!("{key:?}").contains(CANARY));

    assert_eq!(key.subject().await.unwrap(), org());
    let credential = key.credential_for(&org()).await.expect("org credential");
    assert_eq!(credential.subject, org());
    assert_eq!(
        credential.kind,
        pleo_auth_core::CredentialKind::StandaloneApiKey
    );
    assert_eq!(credential.environment, *pleo.env.name());

    for company in [dk(), se()] {
        let (status, body) = api_get(&pleo, &credential, "/v1/vendors", Some(company)).await;
        assert_eq!(status, 200, "{body}");
        let data = body["data"].as_array().unwrap();
        assert!(!data.is_empty());
        assert!(
            data.iter().all(|v| v["companyId"] == company.to_string()),
            "{body}"
        );
    }
    // A company outside the organisation is refused by Pleo.
    let (status, _) = api_get(
        &pleo,
        &credential,
        "/v1/vendors",
        Some(company(seed::GLOBEX)),
    )
    .await;
    assert_eq!(status, 403);

    // The provider answers only for the key's own subject.
    for other in [
        Subject::Company(dk()),
        Subject::Company(company(seed::GLOBEX)),
    ] {
        let err = key.credential_for(&other).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WrongCompany, "{other}");
    }
    // The subject was learned once.
    assert_eq!(requests_to(&pleo, "GET", "/v1/introspect"), 1);
    assert_logs_clean();
}

#[tokio::test]
async fn a_company_key_is_bound_to_its_company() {
    let pleo = sandbox().await;
    let raw = pleo
        .sandbox
        .mint_standalone_key(seed::GLOBEX, &["vendors:read"], None);
    let key = StandaloneKey::new(pleo.env.clone(), ApiKey::new(raw)).unwrap();
    let globex = Subject::Company(company(seed::GLOBEX));
    let credential = key.credential_for(&globex).await.unwrap();
    assert_eq!(
        api_get(&pleo, &credential, "/v1/vendors", None).await.0,
        200
    );
    let err = assert_core_clean(
        key.credential_for(&Subject::Company(dk()))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.kind(), ErrorKind::WrongCompany);
    assert!(
        key.scopes()
            .await
            .unwrap()
            .contains(&"vendors:read".parse().unwrap())
    );
    assert_logs_clean();
}

fn assert_core_clean(err: pleo_auth_core::Error) -> pleo_auth_core::Error {
    let mut shown = format!("{err} | {err:?}");
    if let Some(source) = std::error::Error::source(&err) {
        shown.push_str(&format!(" | {source} | {source:?}"));
    }
    assert!(!shown.contains(CANARY), "{shown}");
    err
}

#[tokio::test]
async fn a_key_from_the_other_environment_is_never_accepted() {
    let staging = sandbox_named("staging-sim").await;
    let production = sandbox_named("production-sim").await;
    let raw = staging
        .sandbox
        .mint_standalone_key(seed::ACME_DK, &["vendors:read"], None);

    let key = StandaloneKey::new(production.env.clone(), ApiKey::new(raw.clone())).unwrap();
    let err = assert_clean(key.subject().await.unwrap_err());
    assert_eq!(err.kind().core_kind(), ErrorKind::Unauthenticated);
    assert!(matches!(err.kind(), KeyKind::KeyRejected));
    let err = assert_core_clean(
        key.credential_for(&Subject::Company(dk()))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.kind(), ErrorKind::Unauthenticated);
    assert_eq!(
        requests_to(&production, "GET", "/v1/introspect"),
        1,
        "a rejected key is not sent again"
    );
    assert!(
        staging.sandbox.request_log().is_empty(),
        "never sent to staging-sim by the production-sim key"
    );

    // In its own environment it works.
    let key = StandaloneKey::new(staging.env.clone(), ApiKey::new(raw)).unwrap();
    assert_eq!(key.subject().await.unwrap(), Subject::Company(dk()));
    assert_logs_clean();
}

#[tokio::test]
async fn an_oauth_token_is_not_a_standalone_key() {
    let pleo = sandbox().await;
    let token = oauth_access_token(&pleo, seed::ACME_DK).await;
    let key = StandaloneKey::new(pleo.env.clone(), ApiKey::new(token)).unwrap();
    let err = assert_clean(key.subject().await.unwrap_err());
    assert!(
        matches!(err.kind(), KeyKind::KeyRejected | KeyKind::NotAnApiKey),
        "{err:?}"
    );
    let again = key
        .credential_for(&Subject::Company(dk()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            again.kind(),
            ErrorKind::Unauthenticated | ErrorKind::InvalidInput
        ),
        "{again:?}"
    );
    assert_eq!(
        requests_to(&pleo, "GET", "/v1/introspect"),
        1,
        "a refused credential is not sent again"
    );
    assert_logs_clean();
}

#[tokio::test]
async fn a_stored_key_loads_without_introspection_and_a_401_marks_it() {
    let pleo = sandbox().await;
    let store = memory_store();
    let tooling = ClientId::new("internal-tooling").unwrap();
    let raw = pleo
        .sandbox
        .mint_standalone_key(seed::ACME_DK, &["vendors:read"], None);
    let mut key = StandaloneKey::new(pleo.env.clone(), ApiKey::new(raw.clone())).unwrap();
    let info = key.save(store.clone(), tooling.clone()).await.unwrap();
    assert_eq!(info.subject, Subject::Company(dk()));
    assert_eq!(info.kind, pleo_auth_core::ApiKeyKind::Standalone);
    assert_eq!(info.masked_key, key.masked());

    let events = Events::default();
    let loaded = StandaloneKey::from_store(
        store.clone(),
        pleo.env.clone(),
        tooling.clone(),
        Subject::Company(dk()),
    )
    .await
    .unwrap()
    .with_events(events.sink());
    let introspections = requests_to(&pleo, "GET", "/v1/introspect");
    let credential = loaded
        .credential_for(&Subject::Company(dk()))
        .await
        .unwrap();
    assert_eq!(
        requests_to(&pleo, "GET", "/v1/introspect"),
        introspections,
        "the subject came from the store"
    );
    assert_eq!(
        api_get(&pleo, &credential, "/v1/vendors", None).await.0,
        200
    );

    // Loading it for another environment or subject finds nothing.
    let other_env = sandbox_named("production-sim").await;
    let err = assert_clean(
        StandaloneKey::from_store(
            store.clone(),
            other_env.env.clone(),
            tooling.clone(),
            Subject::Company(dk()),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.kind().core_kind(), ErrorKind::NotFound);

    // Revoked at Pleo: the 401 is reported once, no retry, the record is marked.
    assert!(pleo.sandbox.revoke_api_key(&raw));
    assert_eq!(
        api_get(&pleo, &credential, "/v1/vendors", None).await.0,
        401
    );
    assert!(
        !loaded
            .rejected(&Subject::Company(dk()), &credential.id)
            .await
            .unwrap()
    );
    assert!(
        !loaded
            .rejected(&Subject::Company(dk()), &credential.id)
            .await
            .unwrap()
    );
    let err = loaded
        .credential_for(&Subject::Company(dk()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NeedsReplacement);
    assert_eq!(
        events.all(),
        vec![ApiKeyEvent::NeedsReplacement {
            environment: pleo.env.name().clone(),
            integration_id: Some(tooling.clone()),
            subject: Subject::Company(dk()),
            kind: pleo_auth_core::ApiKeyKind::Standalone,
        }]
    );
    let record_key = layout::api_key(&CredentialKey::new(
        pleo.env.name().clone(),
        tooling.clone(),
        Subject::Company(dk()),
    ));
    let (record, _) = store
        .get_record::<ApiKeyCredential>(&record_key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, CredentialStatus::NeedsReplacement);
    let err = assert_clean(
        StandaloneKey::from_store(store, pleo.env.clone(), tooling, Subject::Company(dk()))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.kind().core_kind(), ErrorKind::NeedsReplacement);
    assert_logs_clean();
}

#[tokio::test]
async fn a_missing_environment_variable_is_a_config_error() {
    let pleo = sandbox().await;
    let err = assert_clean(
        StandaloneKey::from_env_var(pleo.env.clone(), "PLEO_AUTH_APIKEY_TEST_UNSET_VARIABLE")
            .unwrap_err(),
    );
    assert_eq!(err.kind().core_kind(), ErrorKind::Config);
    assert!(
        err.to_string()
            .contains("PLEO_AUTH_APIKEY_TEST_UNSET_VARIABLE")
    );
}

#[tokio::test]
async fn pleo_client_sends_an_organisation_key_for_two_companies() {
    let pleo = sandbox().await;
    let raw = pleo
        .sandbox
        .mint_standalone_key(seed::ACME_ORG, &["vendors:read"], None);
    let key = StandaloneKey::new(pleo.env.clone(), ApiKey::new(raw)).unwrap();
    let client = pleo_auth_http::PleoClient::builder(pleo.env.clone(), Arc::new(key))
        .build()
        .unwrap();
    let organisation = OrganisationId::from_uuid(seed::ACME_ORG);
    for company in [dk(), se()] {
        let body: serde_json::Value = client
            .get("/v1/vendors")
            .organisation(organisation)
            .company(company)
            .json()
            .await
            .expect("vendors of a company of the organisation");
        let data = body["data"].as_array().unwrap();
        assert!(!data.is_empty());
        assert!(data.iter().all(|v| v["companyId"] == company.to_string()));
    }
    let sent: Vec<_> = pleo
        .sandbox
        .request_log()
        .into_iter()
        .filter(|r| r.path == "/v1/vendors")
        .map(|r| r.company_id)
        .collect();
    assert_eq!(
        sent,
        vec![Some(dk().to_string()), Some(se().to_string())],
        "each request named its company explicitly"
    );

    // A request for a company alone asks the provider for that company: refused before sending.
    let err = client
        .get("/v1/vendors")
        .company(dk())
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongCompany, "{err}");
    assert!(!format!("{err} {err:?}").contains(CANARY));
    assert_eq!(
        requests_to(&pleo, "GET", "/v1/vendors"),
        2,
        "nothing more was sent"
    );
    assert_logs_clean();
}
