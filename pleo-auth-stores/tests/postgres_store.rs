//! `PostgresStore` and `PostgresLease` against a real PostgreSQL (`cargo xtask services up`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use pleo_auth_core::testing::{self, TraceCapture, bytes, key, service_env};
use pleo_auth_core::{
    DynSecretStore, ErrorKind, Lease, Precondition, SecretStore, Sharing, SystemClock, lease_for,
    random_urlsafe,
};
use pleo_auth_stores::postgres::PostgresStore;
use sqlx::Row as _;

fn url() -> String {
    service_env("PLEO_AUTH_TEST_POSTGRES_URL")
}

/// A schema of its own for each test, so tests never meet.
fn fresh_schema() -> String {
    format!("t_{}", random_urlsafe(9).to_lowercase().replace('-', "_"))
}

async fn store() -> PostgresStore {
    let store = PostgresStore::builder(url())
        .schema(fresh_schema())
        .connect()
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    store
}

async fn raw() -> sqlx::PgPool {
    sqlx::PgPool::connect(&url()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn passes_the_store_conformance_suite() {
    let started = Instant::now();
    testing::conformance(testing::dyn_store(store().await)).await;
    println!("postgres conformance suite: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_lease_passes_the_lease_conformance_suite() {
    let store = store().await;
    testing::lease_conformance(Arc::new(store.lease())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_refresh_managers_lease_is_the_native_cross_process_one() {
    let store: DynSecretStore = Arc::new(store().await);
    assert_eq!(store.sharing(), Sharing::CrossProcess);
    let lease = lease_for(&store, Arc::new(SystemClock));
    assert!(
        format!("{lease:?}").starts_with("PostgresLease"),
        "{lease:?}"
    );
    testing::lease_conformance(lease).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_writers_one_winner_per_version() {
    let store: DynSecretStore = Arc::new(store().await);
    testing::race_compare_and_swap(&store, &key(&["race", "grant"]), 8, 5).await;
}

#[tokio::test]
async fn rows_hold_key_generation_value_and_updated_at() {
    let store = store().await;
    let k = key(&["row", "shape"]);
    let version = store
        .put(&k, bytes("stored-bytes"), Precondition::Absent)
        .await
        .unwrap();
    let table = format!("{}.secrets", schema_of(&store));
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT generation, value, updated_at <= clock_timestamp() FROM {table} WHERE key = $1"
    )))
    .bind(k.as_str())
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(
        row.get::<i64, _>(0).to_string(),
        version.as_str(),
        "the version is the generation"
    );
    assert_eq!(row.get::<Vec<u8>, _>(1), b"stored-bytes");
    assert!(row.get::<bool, _>(2));
}

/// The schema a store of [`store`] uses, from its `Debug` (`table: "schema.secrets"`).
fn schema_of(store: &PostgresStore) -> String {
    let debug = format!("{store:?}");
    let start = debug.find("table: \"").unwrap() + "table: \"".len();
    let rest = &debug[start..];
    rest[..rest.find('.').unwrap()].to_owned()
}

#[tokio::test]
async fn migrate_is_explicit_idempotent_and_safe_to_race() {
    let schema = fresh_schema();
    let store = PostgresStore::builder(url())
        .schema(schema.clone())
        .connect()
        .await
        .expect("connecting creates nothing and needs no table");
    let err = store.get(&key(&["before"])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err:?}");
    assert!(
        err.to_string().contains(&format!("{schema}.secrets"))
            && err.to_string().contains("migrate"),
        "the error names the table and what to do: {err}"
    );
    let racers: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.migrate().await })
        })
        .collect();
    for racer in racers {
        racer.await.unwrap().expect("concurrent migrations");
    }
    store.migrate().await.expect("migrating again is a no-op");
    let applied: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{schema}\".\"secrets_migrations\""
    )))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(applied, 1);
    store
        .put(&key(&["after"]), bytes("x"), Precondition::Absent)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_table_of_another_shape_is_refused_and_left_alone() {
    let schema = fresh_schema();
    let pool = raw().await;
    for statement in [
        format!("CREATE SCHEMA \"{schema}\""),
        format!("CREATE TABLE \"{schema}\".secrets (key text PRIMARY KEY, payload text)"),
        format!("INSERT INTO \"{schema}\".secrets VALUES ('pleo-auth/a', 'keep me')"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&pool)
            .await
            .unwrap();
    }
    let err = PostgresStore::builder(url())
        .schema(schema.clone())
        .connect()
        .await
        .expect_err("a table of another shape is refused at connect");
    assert_eq!(err.kind(), ErrorKind::Config);
    let text = err.to_string();
    for needle in [
        format!("{schema}.secrets"),
        "column generation".to_owned(),
        "column value".to_owned(),
        "table".to_owned(),
    ] {
        assert!(text.contains(&needle), "{needle:?} in {text}");
    }
    // A store on another table of the schema connects; `migrate` of the misshapen one refuses.
    let other = PostgresStore::builder(url())
        .schema(schema.clone())
        .table("pleo_secrets")
        .connect()
        .await
        .unwrap();
    other.migrate().await.unwrap();
    let payload: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT payload FROM \"{schema}\".secrets"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(payload, "keep me", "nothing was overwritten");
    let wrong_type = fresh_schema();
    for statement in [
        format!("CREATE SCHEMA \"{wrong_type}\""),
        format!(
            "CREATE TABLE \"{wrong_type}\".secrets (key text PRIMARY KEY, generation integer, \
             value text, updated_at timestamptz)"
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&pool)
            .await
            .unwrap();
    }
    let err = PostgresStore::builder(url())
        .schema(wrong_type)
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(
        err.to_string().contains("column value is text, not bytea"),
        "{err}"
    );
}

#[tokio::test]
async fn a_wrong_password_is_a_config_error_without_the_password() {
    let good = url();
    let bad = good.replace("pleo-auth-dev-postgres", "CANARY-wrong-password");
    assert_ne!(good, bad);
    let err = PostgresStore::builder(bad)
        .acquire_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err:?}");
    let shown = format!("{err} {err:?} {}", testing::error_chain(&err));
    assert!(!shown.contains("CANARY"), "{shown}");
}

#[tokio::test]
async fn a_statement_past_its_timeout_is_unavailable() {
    let store = PostgresStore::builder(url())
        .schema(fresh_schema())
        .statement_timeout(Duration::from_millis(200))
        .max_connections(2)
        .connect()
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let k = key(&["locked"]);
    let v = store
        .put(&k, bytes("v1"), Precondition::Absent)
        .await
        .unwrap();
    // Another session holds the row lock; the store's compare-and-swap waits and times out.
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT 1 FROM {}.secrets WHERE key = $1 FOR UPDATE",
        schema_of(&store)
    )))
    .bind(k.as_str())
    .execute(&mut *tx)
    .await
    .unwrap();
    let err = store
        .put(&k, bytes("v2"), Precondition::Version(v))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");
    assert!(err.is_retryable());
    tx.rollback().await.unwrap();
    assert_eq!(
        store.get(&k).await.unwrap().unwrap().value.expose_secret(),
        b"v1",
        "the timed-out write changed nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_never_reach_the_logs() {
    let capture = TraceCapture::install();
    let store = store().await;
    testing::canary_operations(&store, &key(&["canary"])).await;
    let many = store
        .get_many(&[key(&["canary"]), key(&["other"])])
        .await
        .unwrap();
    assert!(many.iter().all(Option::is_none));
    capture.assert_absent("CANARY");
}

/// Expiry, fencing and a stale holder's release are the lease suite's checks (above); what is
/// PostgreSQL's own is that lease fencing numbers and store versions share one sequence.
#[tokio::test]
async fn lease_fencing_numbers_and_store_versions_never_repeat_between_them() {
    let store = store().await;
    let lease = store.lease();
    let mut last = 0;
    for step in ["first", "second"] {
        let held = lease
            .acquire(&key(&["lease", step]), Duration::from_secs(30))
            .await
            .unwrap()
            .expect("free");
        assert!(held.fencing() > last, "a fencing number after a version");
        last = held.fencing();
        let version = store
            .put(&key(&["value", step]), bytes("x"), Precondition::Absent)
            .await
            .unwrap();
        assert!(
            version.as_u64().unwrap() > last,
            "a version after a fencing number"
        );
        last = version.as_u64().unwrap();
        held.release().await.unwrap();
    }
}
