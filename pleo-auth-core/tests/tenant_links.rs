//! One tenant <-> one Pleo subject, enforced across concurrent writers.

use std::sync::Arc;
use std::time::Duration;

use pleo_auth_core::{
    ClientId, CompanyId, CredentialKind, DynSecretStore, EnvironmentName, Error, ErrorKind,
    LinkError, LinkRequest, ManualClock, MemoryStore, SecretStore, Subject, TenantId, TenantLinks,
    layout,
};

fn company(n: u8) -> Subject {
    Subject::Company(CompanyId::from_uuid(uuid::Uuid::from_bytes([n; 16])))
}

fn request(tenant: &str, subject: Subject) -> LinkRequest {
    LinkRequest {
        environment: EnvironmentName::new("staging").unwrap(),
        tenant: TenantId::new(tenant).unwrap(),
        subject,
        credential_kind: CredentialKind::OAuth,
        client_id: ClientId::new("client").unwrap(),
        relink: false,
    }
}

fn links() -> (TenantLinks, DynSecretStore, ManualClock) {
    let store: DynSecretStore = Arc::new(MemoryStore::new());
    let clock = ManualClock::new();
    (
        TenantLinks::new(store.clone(), Arc::new(clock.clone())),
        store,
        clock,
    )
}

#[tokio::test]
async fn link_is_readable_both_ways_and_idempotent() {
    let (links, _, _) = links();
    let env = EnvironmentName::new("staging").unwrap();
    let req = request("acme-gmbh", company(1));
    links.link(&req).await.unwrap();
    let by_tenant = links.subject_for(&env, &req.tenant).await.unwrap().unwrap();
    assert_eq!(by_tenant.subject, company(1));
    let by_subject = links.tenant_for(&env, &company(1)).await.unwrap().unwrap();
    assert_eq!(by_subject.tenant, req.tenant);
    let again = links
        .link(&req)
        .await
        .expect("reconnecting the same pair is fine");
    assert!(again.replaced.is_empty());
    assert_eq!(links.list(&env).await.unwrap().len(), 1);
}

#[tokio::test]
async fn both_one_to_one_violations_are_refused_naming_both_sides() {
    let (links, _, _) = links();
    links.link(&request("acme-gmbh", company(1))).await.unwrap();

    let err = links
        .link(&request("acme-gmbh", company(2)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let msg = err.to_string();
    assert!(
        msg.contains("acme-gmbh")
            && msg.contains(&company(1).to_string())
            && msg.contains(&company(2).to_string()),
        "{msg}"
    );

    let err = links
        .link(&request("globex", company(1)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let msg = err.to_string();
    assert!(msg.contains("globex") && msg.contains("acme-gmbh"), "{msg}");

    let env = EnvironmentName::new("staging").unwrap();
    assert!(
        links.tenant_for(&env, &company(2)).await.unwrap().is_none(),
        "nothing half-written"
    );
    assert!(
        links
            .subject_for(&env, &TenantId::new("globex").unwrap())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn explicit_relink_moves_the_link_and_reports_what_it_replaced() {
    let (links, store, _) = links();
    let env = EnvironmentName::new("staging").unwrap();
    links.link(&request("acme-gmbh", company(1))).await.unwrap();
    let mut req = request("acme-gmbh", company(2));
    req.relink = true;
    let outcome = links.link(&req).await.unwrap();
    assert_eq!(outcome.replaced.len(), 1);
    assert_eq!(outcome.replaced[0].subject, company(1));
    assert_eq!(
        links
            .subject_for(&env, &req.tenant)
            .await
            .unwrap()
            .unwrap()
            .subject,
        company(2)
    );
    assert!(
        links.tenant_for(&env, &company(1)).await.unwrap().is_none(),
        "old reverse link removed"
    );
    assert!(
        store
            .get(&layout::subject_link(&env, &company(1)))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_failed_credential_write_leaves_neither_half() {
    let (links, _, _) = links();
    let env = EnvironmentName::new("staging").unwrap();
    let req = request("acme-gmbh", company(1));
    let err = links
        .link_with(&req, async {
            Err::<(), _>(Error::unavailable("store down"))
        })
        .await
        .unwrap_err();
    let LinkError::Write(err) = err else {
        panic!("the write's own error comes back: {err:?}");
    };
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(
        links
            .subject_for(&env, &req.tenant)
            .await
            .unwrap()
            .is_none()
    );
    assert!(links.tenant_for(&env, &company(1)).await.unwrap().is_none());
    links
        .link(&req)
        .await
        .expect("the pair can be linked after the rollback");
}

#[tokio::test]
async fn a_stale_pending_claim_does_not_block_forever() {
    let (links, store, clock) = links();
    let env = EnvironmentName::new("staging").unwrap();
    // A writer claims and never settles: simulate by a credential write that never returns.
    let req = request("acme-gmbh", company(1));
    let stuck = links.link_with(&req, std::future::pending::<pleo_auth_core::Result<()>>());
    let _ = tokio::time::timeout(Duration::from_millis(50), stuck).await;
    assert!(
        store
            .get(&layout::tenant_link(&env, &req.tenant))
            .await
            .unwrap()
            .is_some(),
        "claim exists"
    );
    let other = request("acme-gmbh", company(2));
    assert_eq!(
        links.link(&other).await.unwrap_err().kind(),
        ErrorKind::Conflict,
        "fresh claim blocks"
    );
    clock.advance(Duration::from_secs(301));
    let other_company_tenant = request("globex", company(2));
    links.link(&other_company_tenant).await.unwrap();
    links
        .link(&request("acme-gmbh", company(3)))
        .await
        .expect("stale claim no longer blocks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_replicas_linking_different_companies_to_one_tenant_exactly_one_wins() {
    for round in 0..20u8 {
        let store: DynSecretStore = Arc::new(MemoryStore::new());
        let mut tasks = Vec::new();
        for replica in 0..8u8 {
            let links = TenantLinks::new(store.clone(), Arc::new(ManualClock::new()));
            tasks.push(tokio::spawn(async move {
                links
                    .link(&request("acme-gmbh", company(replica + 1)))
                    .await
            }));
        }
        let mut winners = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => winners += 1,
                Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict),
            }
        }
        assert_eq!(winners, 1, "round {round}");
    }
}

#[tokio::test]
async fn tenants_differing_only_in_case_are_two_tenants() {
    let (links, _, _) = links();
    let env = EnvironmentName::new("staging").unwrap();
    links.link(&request("Acme", company(1))).await.unwrap();
    links.link(&request("acme", company(2))).await.unwrap();
    let upper = TenantId::new("Acme").unwrap();
    let lower = TenantId::new("acme").unwrap();
    assert_eq!(
        links
            .subject_for(&env, &upper)
            .await
            .unwrap()
            .unwrap()
            .subject,
        company(1)
    );
    assert_eq!(
        links
            .subject_for(&env, &lower)
            .await
            .unwrap()
            .unwrap()
            .subject,
        company(2)
    );
    let upper_key = layout::tenant_link(&env, &upper);
    let lower_key = layout::tenant_link(&env, &lower);
    assert_ne!(
        upper_key.as_str().to_ascii_lowercase(),
        lower_key.as_str().to_ascii_lowercase(),
        "the keys stay apart on a backend that ignores case"
    );
}

#[tokio::test]
async fn a_link_stored_under_another_tenants_key_is_refused() {
    let (links, store, _) = links();
    let env = EnvironmentName::new("staging").unwrap();
    links
        .link(&request("other-tenant", company(7)))
        .await
        .unwrap();
    // A corrupted (or case-folded) store hands back the other tenant's link under acme's key.
    let other = store
        .get(&layout::tenant_link(
            &env,
            &TenantId::new("other-tenant").unwrap(),
        ))
        .await
        .unwrap()
        .unwrap();
    let acme = TenantId::new("acme").unwrap();
    store
        .put(
            &layout::tenant_link(&env, &acme),
            other.value,
            pleo_auth_core::Precondition::Absent,
        )
        .await
        .unwrap();
    let err = links.subject_for(&env, &acme).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyMismatch, "{err:?}");
    assert!(!err.is_retryable());
    // Listing refuses it too, rather than showing another tenant's company as acme's.
    let err = links.list(&env).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyMismatch);
}
