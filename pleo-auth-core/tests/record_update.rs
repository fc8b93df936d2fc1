//! `RecordStoreExt::update`, the one read-modify-CAS loop: it reads again after a conflict, gives
//! up after a bound, and passes deletes and the closure's refusals through. Rival writers are
//! made with the one store double, `FaultyStore`.

use pleo_auth_core::testing::FaultyStore;
use pleo_auth_core::{
    Change, ClientId, CredentialKind, EnvironmentName, Error, ErrorKind, LinkStatus,
    MAX_UPDATE_ROUNDS, Precondition, Record, RecordStoreExt, SecretStore, StoreKey, Subject,
    TenantId, TenantLink, Timestamp, UpdateError, Updated, layout,
};

fn link(at: u64) -> TenantLink {
    TenantLink {
        environment: EnvironmentName::new("sandbox").unwrap(),
        tenant: TenantId::new("t-1").unwrap(),
        subject: "urn:pleo:company:0c000000-0000-4000-8000-000000000001"
            .parse::<Subject>()
            .unwrap(),
        credential_kind: CredentialKind::OAuth,
        client_id: ClientId::new("c").unwrap(),
        status: LinkStatus::Active,
        created_at: Timestamp::from_millis(0),
        updated_at: Timestamp::from_millis(at),
    }
}

fn key() -> StoreKey {
    let l = link(0);
    layout::tenant_link(&l.environment, &l.tenant)
}

/// A memory store on which a rival writer lands just before each of the first `rivals` writes.
fn contested(rivals: usize) -> FaultyStore {
    let store = FaultyStore::default();
    for _ in 0..rivals {
        let bytes = link(999).encode().unwrap();
        store.rival_write_before_next_put(key(), bytes);
    }
    store
}

#[tokio::test]
async fn update_reads_again_after_a_conflict_and_returns_the_last_decision() {
    let store = contested(2);
    let mut seen = Vec::new();
    let (outcome, value) = store
        .update::<TenantLink, _, (), _>(&key(), |read| {
            seen.push(read.as_ref().map(|(l, _)| l.updated_at.as_millis()));
            Ok((Change::Put(link(1)), seen.len()))
        })
        .await
        .unwrap();
    // Absent, then the rival's record twice: three rounds, the third one landed.
    assert_eq!(seen, [None, Some(999), Some(999)]);
    assert_eq!(value, 3);
    let Updated::Written(written, version) = outcome else {
        panic!("{outcome:?}");
    };
    let (stored, stored_version) = store
        .get_record::<TenantLink>(&key())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.updated_at, written.updated_at);
    assert_eq!(stored_version, version);
}

#[tokio::test]
async fn update_keeps_deletes_and_passes_the_closures_error_through() {
    let store = contested(0);
    let (outcome, ()) = store
        .update::<TenantLink, _, (), _>(&key(), |_| Ok((Change::Delete, ())))
        .await
        .unwrap();
    assert!(matches!(outcome, Updated::Kept), "deleting nothing keeps");
    store
        .put_record(&key(), &link(5), Precondition::Absent)
        .await
        .unwrap();
    let (outcome, ()) = store
        .update::<TenantLink, _, (), _>(&key(), |_| Ok((Change::Keep, ())))
        .await
        .unwrap();
    assert!(matches!(outcome, Updated::Kept));
    let err = store
        .update::<TenantLink, (), _, _>(&key(), |_| Err("refused"))
        .await
        .unwrap_err();
    assert!(matches!(err, UpdateError::Rejected("refused")), "{err:?}");
    assert!(
        store.get(&key()).await.unwrap().is_some(),
        "nothing written"
    );
    let (outcome, ()) = store
        .update::<TenantLink, _, (), _>(&key(), |_| Ok((Change::Delete, ())))
        .await
        .unwrap();
    assert!(matches!(outcome, Updated::Deleted));
    assert!(store.get(&key()).await.unwrap().is_none());
}

#[tokio::test]
async fn update_gives_up_on_a_record_that_keeps_changing() {
    let store = contested(MAX_UPDATE_ROUNDS);
    let mut rounds = 0;
    let err = store
        .update::<TenantLink, _, (), _>(&key(), |_| {
            rounds += 1;
            Ok((Change::Put(link(1)), ()))
        })
        .await
        .unwrap_err();
    assert!(matches!(err, UpdateError::Contended), "{err:?}");
    assert_eq!(rounds, MAX_UPDATE_ROUNDS);
    let err = UpdateError::<Error>::Contended.into_error();
    assert_eq!(err.kind(), ErrorKind::Conflict);
}
