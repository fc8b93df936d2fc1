//! Tenant-link checks that every store must pass: the one-to-one rule holds on it across
//! concurrent linkers.

use std::sync::Arc;

use crate::clock::SystemClock;
use crate::environment::EnvironmentName;
use crate::error::ErrorKind;
use crate::key::{ClientId, TenantId};
use crate::record::CredentialKind;
use crate::secret::random_urlsafe;
use crate::store::DynSecretStore;
use crate::subject::{CompanyId, Subject};
use crate::tenant::{LinkRequest, TenantLinks};

fn company(n: u8, salt: &[u8; 8]) -> Subject {
    let mut bytes = [n; 16];
    bytes[..8].copy_from_slice(salt);
    Subject::Company(CompanyId::from_uuid(uuid::Uuid::from_bytes(bytes)))
}

/// Runs the tenant-link checks on `store`: link and read both ways, both one-to-one violations
/// refused with nothing half-written, explicit relink, and `linkers` replicas racing to link
/// different companies to one tenant `rounds` times (exactly one wins each round).
///
/// Each run uses a fresh environment name, so it can run against a shared live server.
///
/// # Panics
///
/// When a check fails, or when `rounds * linkers` exceeds 240.
pub async fn tenant_links_conformance(store: DynSecretStore, linkers: u8, rounds: u8) {
    assert!(
        u16::from(rounds) * u16::from(linkers) <= 240,
        "at most 240 racing linkers in all"
    );
    let env = EnvironmentName::new(format!(
        "t-{}",
        random_urlsafe(6).to_ascii_lowercase().replace('_', "-")
    ))
    .expect("valid environment name");
    let mut salt = [0u8; 8];
    salt.copy_from_slice(&random_urlsafe(6).as_bytes()[..8]);
    let links = TenantLinks::new(store.clone(), Arc::new(SystemClock));
    let request = |tenant: &str, subject: Subject, relink: bool| LinkRequest {
        environment: env.clone(),
        tenant: TenantId::new(tenant).expect("valid tenant"),
        subject,
        credential_kind: CredentialKind::OAuth,
        client_id: ClientId::new("conformance").expect("valid client"),
        relink,
    };
    let (a, b, c) = (company(1, &salt), company(2, &salt), company(3, &salt));

    links
        .link(&request("acme/gmbh", a, false))
        .await
        .expect("first link");
    let linked = links
        .subject_for(&env, &TenantId::new("acme/gmbh").unwrap())
        .await
        .expect("lookup")
        .expect("linked");
    assert_eq!(linked.subject, a, "tenant -> subject");
    let back = links
        .tenant_for(&env, &a)
        .await
        .expect("lookup")
        .expect("linked");
    assert_eq!(back.tenant.as_str(), "acme/gmbh", "subject -> tenant");

    let err = links
        .link(&request("acme/gmbh", b, false))
        .await
        .expect_err("a tenant linked to another company is refused");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let err = links
        .link(&request("globex", a, false))
        .await
        .expect_err("a company linked to another tenant is refused");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(
        links.tenant_for(&env, &b).await.expect("lookup").is_none(),
        "a refused link leaves nothing behind"
    );

    let outcome = links
        .link(&request("acme/gmbh", c, true))
        .await
        .expect("explicit relink");
    assert_eq!(outcome.replaced.len(), 1, "relink reports what it replaced");
    assert!(
        links.tenant_for(&env, &a).await.expect("lookup").is_none(),
        "old reverse link gone"
    );
    assert_eq!(links.list(&env).await.expect("list").len(), 1);

    for round in 0..rounds {
        let tenant = format!("race-{round}");
        let mut tasks = Vec::new();
        for linker in 0..linkers {
            let links = TenantLinks::new(store.clone(), Arc::new(SystemClock));
            // Fresh companies each round: a company linked in an earlier round would rightly refuse.
            let req = request(
                &tenant,
                company(10 + round * linkers + linker, &salt),
                false,
            );
            tasks.push(tokio::spawn(async move { links.link(&req).await }));
        }
        let mut winners = 0;
        for task in tasks {
            match task.await.expect("linker task") {
                Ok(_) => winners += 1,
                Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "losers see Conflict: {e:?}"),
            }
        }
        assert_eq!(
            winners, 1,
            "exactly one of {linkers} racing linkers wins round {round}"
        );
    }
}
